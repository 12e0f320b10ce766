"""Step-Audio's dual-codebook audio tokenizer: public API.

``AudioTokenizer.tokenize`` reproduces the reference ``wav2token`` (whole clip). A stream
(``AudioTokenizer.stream``) emits 2+3 groups while audio arrives; docs/audio-tokenizer.md states
how its output relates to the offline result.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from services.common.audio import as_float_mono, check_sample_rate
from services.common.resample import SincStreamResampler
from services.models import layout
from services.models.audio_tokenizer import preprocess
from services.models.audio_tokenizer.batching import Steps, run_alone
from services.models.audio_tokenizer.errors import CheckpointError
from services.models.audio_tokenizer.linguistic import CHUNK_SAMPLES, LinguisticTokenizer
from services.models.audio_tokenizer.semantic import SemanticStreamOptions, SemanticTokenizer
from services.models.audio_tokens import GROUP_LINGUISTIC, GROUP_SEMANTIC, interleave


@dataclass(frozen=True)
class TokenizerCodes:
    """Raw codes of both codebooks: linguistic in [0, 1024), semantic in [0, 4096)."""

    linguistic: list[int]
    semantic: list[int]

    @property
    def ids(self) -> list[int]:
        """Interleaved LLM ids (65536 + ...), whole 2+3 groups only."""
        return interleave(self.linguistic, self.semantic)


def resolve_tokenizer_dir(path: Path | str) -> Path:
    """Accept a model root (holding Step-Audio-Tokenizer/) or the tokenizer folder itself."""
    try:
        return layout.resolve_component(path, layout.TOKENIZER_DIR)
    except layout.ModelDirError as exc:
        problem = f"neither a model root with {layout.TOKENIZER_DIR}/ nor a tokenizer folder"
        raise CheckpointError(Path(path), problem) from exc


class AudioTokenizer:
    """Loaded once, shared by any number of streams and threads (it holds no per-call state)."""

    def __init__(
        self,
        linguistic: LinguisticTokenizer,
        semantic: SemanticTokenizer,
        stream_options: SemanticStreamOptions | None = None,
    ) -> None:
        self.linguistic = linguistic
        self.semantic = semantic
        self.stream_options = stream_options or SemanticStreamOptions()

    @classmethod
    def from_pretrained(
        cls,
        folder: Path | str,
        *,
        num_threads: int | None = None,
        device: str = "cpu",
        stream_options: SemanticStreamOptions | None = None,
        semantic_batch: bool = False,
    ) -> AudioTokenizer:
        """Load ``<root>/Step-Audio-Tokenizer`` (the Hugging Face repo layout).

        ``num_threads`` sets ONNX Runtime's intra-op threads (default 1, as upstream); torch's
        thread count is process-wide and left alone. ``device`` ("cpu", "cuda", "cuda:1") places
        the Paraformer encoder, and the ONNX model when onnxruntime has the CUDA provider.
        ``semantic_batch`` opens a second vq06 session with an open batch axis, used when it
        reproduces single calls exactly (`semantic.batch_runner`), for batching loops.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(folder, "tokenizer folder does not exist")
        if (folder / layout.TOKENIZER_DIR).is_dir():
            raise CheckpointError(
                folder, f"this is a model root; pass {folder / layout.TOKENIZER_DIR}"
            )
        torch_device = torch.device(device)
        linguistic = LinguisticTokenizer.load(
            folder / layout.PARAFORMER_DIR, folder / layout.LINGUISTIC_CODEBOOK_FILE, torch_device
        )
        semantic = SemanticTokenizer.load(
            folder / layout.SEMANTIC_TOKENIZER_FILE,
            num_threads=num_threads,
            providers=_onnx_providers(torch_device),
            batch=semantic_batch,
        )
        return cls(linguistic, semantic, stream_options)

    def preprocess(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        *,
        trim: bool = False,
        normalize: bool = True,
    ) -> np.ndarray:
        """16 kHz float32 audio as the models see it."""
        audio = preprocess.to_16k(as_float_mono(samples), sample_rate_hz)
        if normalize:
            audio = preprocess.normalize_energy(audio)
        if trim:
            audio = preprocess.trim_silence(audio)
        return audio

    def codes(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        *,
        trim: bool = False,
        normalize: bool = True,
    ) -> TokenizerCodes:
        return run_alone(
            self, self.codes_steps(samples, sample_rate_hz, trim=trim, normalize=normalize)
        )

    def codes_steps(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        *,
        trim: bool = False,
        normalize: bool = True,
    ) -> Steps[TokenizerCodes]:
        """`codes` as a step generator (batching.py), for a batching loop."""
        audio = self.preprocess(samples, sample_rate_hz, trim=trim, normalize=normalize)
        linguistic = yield from self.linguistic.tokenize_steps(audio)
        semantic = yield from self.semantic.tokenize_steps(audio)
        return TokenizerCodes(linguistic, semantic)

    def tokenize_steps(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        *,
        trim: bool = False,
        normalize: bool = True,
    ) -> Steps[list[int]]:
        """`tokenize` as a step generator."""
        codes = yield from self.codes_steps(samples, sample_rate_hz, trim=trim, normalize=normalize)
        return codes.ids

    def tokenize(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        *,
        trim: bool = False,
        normalize: bool = True,
    ) -> list[int]:
        """Interleaved LLM ids (65536 + code) of a whole clip, as upstream ``wav2token``.

        Upstream's Chat path uses trim=False; TTS speaker prompts use trim=True.
        """
        return self.codes(samples, sample_rate_hz, trim=trim, normalize=normalize).ids

    def stream(self, sample_rate_hz: int, *, normalize: bool = True) -> AudioTokenizerStream:
        """A new streaming session; any number may run at once."""
        return AudioTokenizerStream(self, sample_rate_hz, normalize=normalize)


def _onnx_providers(device: torch.device) -> list[str]:
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class AudioTokenizerStream:
    """Tokenises one live utterance; feed it from one thread at a time.

    Audio is processed in 240 ms strides. With ``normalize`` each stride gets the gain
    0.999 / max(peak so far, 0.01), the peak taken over all audio received up to that moment
    (the offline path uses the whole-clip peak instead).
    """

    def __init__(self, tokenizer: AudioTokenizer, sample_rate_hz: int, *, normalize: bool) -> None:
        self._tokenizer = tokenizer
        self._rate = check_sample_rate(sample_rate_hz)
        # in chunks, the same samples as the offline path's one-shot resampling
        self._resampler = SincStreamResampler(self._rate, preprocess.SAMPLE_RATE_HZ)
        self._normalize = normalize
        self._pending = np.zeros(0, dtype=np.float32)
        self._peak = 0.0
        self._linguistic_state = tokenizer.linguistic.new_state()
        self._semantic = tokenizer.semantic.stream(tokenizer.stream_options)
        self._linguistic_codes: list[int] = []  # produced, not yet emitted
        self._semantic_codes: list[int] = []
        self._input_samples = 0
        self._finished = False
        self._lock = threading.Lock()  # cheap guard against accidental concurrent use

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio fed so far (at the stream's input rate)."""
        return self._input_samples / self._rate

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    def feed(self, samples: np.ndarray) -> list[int]:
        """Take mono audio at the stream's rate (any length); return ids of completed groups."""
        return run_alone(self._tokenizer, self.feed_steps(samples))

    def finish(self) -> list[int]:
        """End of speech: process the tail and return the remaining ids (whole groups only)."""
        return run_alone(self._tokenizer, self.finish_steps())

    def feed_steps(self, samples: np.ndarray) -> Steps[list[int]]:
        """`feed` as a step generator (batching.py): its model calls batch with other
        streams' in a loop; resume it from one thread at a time."""
        with self._lock:
            self._check_open()
            audio = as_float_mono(samples, allow_empty=True)
            self._input_samples += len(audio)
            self._receive(self._resample(audio, last=False))
            while len(self._pending) >= CHUNK_SAMPLES:
                yield from self._process(self._take(CHUNK_SAMPLES), final=False)
            return self._complete_groups()

    def finish_steps(self) -> Steps[list[int]]:
        """`finish` as a step generator."""
        with self._lock:
            self._check_open()
            self._finished = True
            self._receive(self._resample(np.zeros(0, dtype=np.float32), last=True))
            while len(self._pending) >= CHUNK_SAMPLES:
                yield from self._process(self._take(CHUNK_SAMPLES), final=False)
            if len(self._pending):
                yield from self._process(self._take(len(self._pending)), final=True)
            self._semantic_codes += yield from self._semantic.finish_steps()
            return self._complete_groups()

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the stream is finished; start a new one")

    def _resample(self, audio: np.ndarray, *, last: bool) -> np.ndarray:
        return self._resampler.process(audio, last=last)

    def _receive(self, audio: np.ndarray) -> None:
        if len(audio):
            self._peak = max(self._peak, float(np.abs(audio).max()))
            self._pending = np.concatenate([self._pending, audio])

    def _take(self, count: int) -> np.ndarray:
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken

    def _process(self, stride: np.ndarray, *, final: bool) -> Steps[None]:
        if self._normalize:
            stride = preprocess.apply_gain(stride, preprocess.peak_reference(self._peak))
        linguistic = self._tokenizer.linguistic
        self._linguistic_codes += yield from linguistic.encode_chunk_steps(
            self._linguistic_state, stride, is_final=final
        )
        self._semantic_codes += yield from self._semantic.push_steps(stride)

    def _complete_groups(self) -> list[int]:
        groups = min(
            len(self._linguistic_codes) // GROUP_LINGUISTIC,
            len(self._semantic_codes) // GROUP_SEMANTIC,
        )
        ids = interleave(
            self._linguistic_codes[: groups * GROUP_LINGUISTIC],
            self._semantic_codes[: groups * GROUP_SEMANTIC],
        )
        del self._linguistic_codes[: groups * GROUP_LINGUISTIC]
        del self._semantic_codes[: groups * GROUP_SEMANTIC]
        return ids
