"""Token2Wav: Step-Audio's CosyVoice-300M-25Hz decoder (flow + HiFT), offline and batched.

Loads the real folder layout (`cosyvoice.yaml`, `flow.pt`, `hift.pt`, `campplus.onnx`) and turns
audio codes (LLM id − 65536, 41.67 per second) plus a speaker prompt into 22.05 kHz audio.
Streaming lives in streaming.py and reuses the pieces here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.audio import AudioError, as_float_mono, check_sample_rate
from services.common.resample import resample_sinc
from services.models.audio_tokens import ids_to_codes
from services.models.token2wav.accel import AccelOptions, FlowSolver, HiftGraphs, freeze_hift
from services.models.token2wav.checkpoint import FLOW_FILE, HIFT_FILE, load_strict
from services.models.token2wav.config import Token2WavConfig, load_config
from services.models.token2wav.controls import (
    DEFAULT_N_TIMESTEPS,
    apply_volume,
    check_controls,
    model_codes,
)
from services.models.token2wav.features import (
    CAMPPLUS_FILE,
    CAMPPLUS_SAMPLE_RATE_HZ,
    SpeakerEncoder,
    log_mel_spectrogram,
)
from services.models.token2wav.flow import MaskedDiffWithXvec
from services.models.token2wav.hift import HiFTGenerator, SourceRandomness
from services.models.token2wav.noise import Randomness
from services.models.token2wav.speakers import SpeakerPrompt
from services.models.token2wav.streaming import StreamOptions, Token2WavStream

# Upstream sets no limits (docs/models.md, "Speaker prompt length"). The minimum is what its
# pipeline needs to run at all: one 25 ms Kaldi fbank window for CAM++ (the prompt mel's reflect
# padding needs 17.4 ms). The maximum is the project's: streaming re-runs the flow over the
# whole prompt mel for every chunk, so per-chunk cost grows with the prompt.
MIN_PROMPT_SECONDS = 0.025
MAX_PROMPT_SECONDS = 30.0
SILENCE_PEAK = 1e-4  # a prompt whose peak stays below this is treated as silent


class Token2Wav:
    """Offline/streaming token → waveform decoder for one vocoder folder."""

    def __init__(
        self,
        config: Token2WavConfig,
        flow: MaskedDiffWithXvec,
        hift: HiFTGenerator,
        speaker_encoder: SpeakerEncoder,
        device: torch.device,
    ) -> None:
        self.config = config
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.speaker_encoder = speaker_encoder
        self.device = device
        self.sample_rate_hz = config.sample_rate_hz
        self.solver: FlowSolver | None = None  # set by compile_for_gpu
        self.hift_graphs: HiftGraphs | None = None  # set by compile_for_gpu

    def compile_for_gpu(self, options: AccelOptions | None = None, **overrides: Any) -> Token2Wav:
        """Switch to the fast path (accel.py): padded, bucketed flow calls replayed as CUDA
        graphs (on CUDA), cross-stream batching in `decode_chunks`, HiFT weights computed once
        and streaming HiFT windows of recurring shapes replayed as CUDA graphs.

        Results stay within bf16 tolerance of the eager path (padding changes only float
        summation order). Graphs are captured on first use of each shape; call `warm_up` (or
        run a few calls) before serving. On the CPU it runs the same padded path eagerly.
        Options: `AccelOptions` fields, as an object or keywords. Returns self.
        """
        options = options or AccelOptions()
        if overrides:
            options = AccelOptions(**{**options.__dict__, **overrides})
        self.solver = FlowSolver(self.flow, options)
        if options.freeze_hift_weights:
            freeze_hift(self.hift)
        self.hift_graphs = HiftGraphs(self.hift, options) if options.hift_graphs else None
        return self

    def warm_up_hift(self, options: StreamOptions | None = None, tokens: int = 5000) -> int:
        """Capture the streaming HiFT graphs of every non-final window shape that streams with
        `options` make over `tokens` codes (default 2 minutes), for every batch bucket, before
        serving (after `compile_for_gpu`; with it `solver.warm_up` for the flow). Returns how
        many graphs were captured; 0 without HiFT graphs or on the CPU."""
        from services.models.token2wav.streaming import hift_window_shapes

        if self.hift_graphs is None:
            return 0
        shapes = hift_window_shapes(self, options or StreamOptions(), tokens)
        with torch.inference_mode():
            return self.hift_graphs.warm_up(shapes)

    # --- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: Path | str,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool | AccelOptions = False,
    ) -> Token2Wav:
        """Load `CosyVoice-300M-25Hz/` (or `-Music/`). The flow runs in `dtype` (upstream uses
        bf16 on GPU); HiFT always runs in float32, as upstream. `compile=True` (or options)
        calls `compile_for_gpu`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a directory")
        config = load_config(folder)
        flow = MaskedDiffWithXvec(config.flow)
        load_strict(flow, folder / FLOW_FILE)
        hift = HiFTGenerator(config.hift)
        load_strict(hift, folder / HIFT_FILE)
        torch_device = torch.device(device)
        speaker_encoder = SpeakerEncoder(folder / CAMPPLUS_FILE)
        model = cls(
            config,
            flow.to(torch_device, dtype),
            hift.to(torch_device, torch.float32),
            speaker_encoder,
            torch_device,
        )
        if compile:
            model.compile_for_gpu(compile if isinstance(compile, AccelOptions) else None)
        return model

    # --- speakers ---------------------------------------------------------------------------

    def prepare_speaker(
        self, prompt_wav: np.ndarray, sample_rate_hz: int, prompt_ids: Sequence[int]
    ) -> SpeakerPrompt:
        """Prompt mel from the wav at 22.05 kHz, x-vector from it at 16 kHz, codes from the
        LLM audio ids the tokenizer produced for the same clip (upstream's registration)."""
        wav = _checked_prompt_audio(prompt_wav, sample_rate_hz)
        codes = np.asarray(ids_to_codes(prompt_ids), dtype=np.int64)
        if codes.size == 0:
            raise ValueError("prompt_ids is empty: the flow needs the prompt's audio codes")
        mel_config = self.config.feat_extractor
        # upstream resamples the original wav to each rate (torchaudio Resample)
        wav_mel = resample_sinc(wav, sample_rate_hz, mel_config.sampling_rate)
        wav_16k = resample_sinc(wav, sample_rate_hz, CAMPPLUS_SAMPLE_RATE_HZ)
        return SpeakerPrompt(
            prompt_codes=codes,
            prompt_mel=log_mel_spectrogram(wav_mel, mel_config).astype(np.float32),
            embedding=self.speaker_encoder.embed(wav_16k),
        )

    # --- offline ----------------------------------------------------------------------------

    def mel_frames(self, n_codes: int, speed: float = 1.0) -> int:
        return self.flow.mel_frames(n_codes, speed)

    @torch.inference_mode()
    def synthesize(
        self,
        codes: Sequence[int],
        speaker: SpeakerPrompt,
        *,
        generator: torch.Generator | None = None,
        n_timesteps: int | None = None,
        cfg_rate: float | None = None,
        speed: float = 1.0,
        volume: float = 1.0,
    ) -> np.ndarray:
        """Codes (0..5119) → float32 waveform at `sample_rate_hz`, mel_frames(n) · 256 long.

        `speed` scales the flow's output length (pitch kept); `volume` is a gain followed by
        clipping at the vocoder's ±0.99 limit.
        """
        return self.decode_batch(
            [codes],
            [speaker],
            generators=[generator],
            n_timesteps=n_timesteps,
            cfg_rate=cfg_rate,
            speed=speed,
            volume=volume,
        )[0]

    @torch.inference_mode()
    def decode_batch(
        self,
        codes: Sequence[Sequence[int]],
        speakers: Sequence[SpeakerPrompt],
        *,
        generators: Sequence[torch.Generator | None] | None = None,
        n_timesteps: int | None = None,
        cfg_rate: float | None = None,
        speed: float = 1.0,
        volume: float = 1.0,
    ) -> list[np.ndarray]:
        """Decode B utterances with one flow call and one HiFT call.

        All items need the same number of codes and equal prompt lengths (codes and mel
        frames); nothing is padded, so each item gets what `synthesize` would give it with the
        same generator (up to float summation order).
        """
        mel, randomness = self._flow_batch(
            codes, speakers, generators, n_timesteps, cfg_rate, speed, volume
        )
        if mel.shape[2] == 0:
            return [np.zeros(0, dtype=np.float32) for _ in codes]
        wav = self.vocode(mel, randomness)
        return [apply_volume(w, volume) for w in wav.cpu().numpy()]

    @torch.inference_mode()
    def generate_mel(
        self,
        codes: Sequence[int],
        speaker: SpeakerPrompt,
        *,
        generator: torch.Generator | None = None,
        n_timesteps: int | None = None,
        cfg_rate: float | None = None,
        speed: float = 1.0,
    ) -> np.ndarray:
        """The flow half of `synthesize`: the (frames, 80) log-mel it would vocode."""
        mel, _ = self._flow_batch([codes], [speaker], [generator], n_timesteps, cfg_rate, speed)
        return mel[0].T.cpu().numpy()

    def _flow_batch(
        self,
        codes: Sequence[Sequence[int]],
        speakers: Sequence[SpeakerPrompt],
        generators: Sequence[torch.Generator | None] | None,
        n_timesteps: int | None,
        cfg_rate: float | None,
        speed: float,
        volume: float = 1.0,
    ) -> tuple[torch.Tensor, list[Randomness]]:
        check_controls(speed, volume, n_timesteps)
        batch = _BatchInputs.build(self, codes, speakers)
        gens = list(generators) if generators is not None else [None] * len(codes)
        if len(gens) != len(codes):
            raise ValueError("generators must match codes one to one")
        randomness = [self.new_randomness(g) for g in gens]
        frames = self.mel_frames(batch.n_codes, speed)
        if frames == 0:
            return torch.zeros(len(codes), self.config.flow.output_size, 0), randomness
        conditions = self.flow.conditions(
            batch.codes,
            batch.prompt_codes,
            batch.prompt_mel,
            batch.embedding,
            [(batch.n_codes, frames)],
        )
        noise = torch.stack([r.flow_noise(batch.prompt_frames, 0, frames) for r in randomness])
        steps = n_timesteps or DEFAULT_N_TIMESTEPS
        if self.solver is None:
            mel = self.flow.sample(conditions, noise.to(self.device), steps, cfg_rate)
            return mel, randomness
        c = conditions
        rate = self.flow.decoder.inference_cfg_rate if cfg_rate is None else cfg_rate
        lengths = [c.mu.shape[2]] * c.mu.shape[0]
        x = self.solver.solve(noise.to(self.device), c.mu, c.spks, c.cond, lengths, steps, rate)
        return x[:, :, c.prompt_frames :].float(), randomness

    def new_randomness(self, generator: torch.Generator | None) -> Randomness:
        return Randomness.from_generator(
            generator, self.config.flow.output_size, self.config.hift.nb_harmonics + 1
        )

    def vocode(self, mel: torch.Tensor, randomness: Sequence[Randomness]) -> torch.Tensor:
        """Offline HiFT over whole utterances: mel (B, 80, T) → (B, T · 256)."""
        samples = mel.shape[2] * self.hift.samples_per_frame
        source_random = SourceRandomness(
            phases=torch.stack([r.harmonic_phases for r in randomness]).to(self.device),
            noise=torch.stack([r.source_rows(0, samples) for r in randomness]).to(self.device),
        )
        wav, _ = self.hift(mel.to(self.device, torch.float32), source_random)
        return wav

    # --- streaming --------------------------------------------------------------------------

    def stream(
        self, speaker: SpeakerPrompt, *, generator: torch.Generator | None = None, **options: Any
    ) -> Token2WavStream:
        """A chunked decoder for codes that arrive over time (see streaming.py for options)."""
        return Token2WavStream(self, speaker, generator=generator, options=StreamOptions(**options))


@dataclass
class _BatchInputs:
    """Tensors for a batch of equal-length items."""

    codes: torch.Tensor
    prompt_codes: torch.Tensor
    prompt_mel: torch.Tensor
    embedding: torch.Tensor
    n_codes: int
    prompt_frames: int

    @classmethod
    def build(
        cls, model: Token2Wav, codes: Sequence[Sequence[int]], speakers: Sequence[SpeakerPrompt]
    ) -> _BatchInputs:
        if not codes or len(codes) != len(speakers):
            raise ValueError("decode_batch needs one speaker per code sequence (and at least one)")
        arrays = [model_codes(model.config.flow.vocab_size, c) for c in codes]
        shapes = {
            (a.size, s.prompt_codes.size, s.prompt_mel.shape)
            for a, s in zip(arrays, speakers, strict=True)
        }
        if len(shapes) != 1:
            raise ValueError(
                "decode_batch items must have equal code counts and prompt lengths; "
                f"got (codes, prompt codes, prompt mel) {sorted(shapes)}"
            )
        device, dtype = model.device, model.flow.dtype
        return cls(
            codes=torch.from_numpy(np.stack(arrays)).to(device),
            prompt_codes=torch.from_numpy(np.stack([s.prompt_codes for s in speakers])).to(device),
            prompt_mel=torch.from_numpy(np.stack([s.prompt_mel for s in speakers])).to(device),
            embedding=torch.from_numpy(np.stack([s.embedding for s in speakers])).to(device, dtype),
            n_codes=int(arrays[0].size),
            prompt_frames=int(speakers[0].prompt_mel.shape[0]),
        )


def _checked_prompt_audio(prompt_wav: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    try:
        wav = as_float_mono(prompt_wav)
    except AudioError as exc:
        raise AudioError(exc.code, f"speaker prompt: {exc}") from exc
    rate = check_sample_rate(sample_rate_hz)
    if rate < CAMPPLUS_SAMPLE_RATE_HZ:
        raise AudioError(
            "unsupported_sample_rate",
            f"speaker prompt at {rate} Hz: needs at least {CAMPPLUS_SAMPLE_RATE_HZ} Hz",
        )
    seconds = wav.size / rate
    if seconds < MIN_PROMPT_SECONDS:
        raise AudioError(
            "audio_too_short",
            f"speaker prompt is {seconds:.3f} s; needs at least {MIN_PROMPT_SECONDS:g} s",
        )
    if seconds > MAX_PROMPT_SECONDS:
        raise AudioError(
            "audio_too_long",
            f"speaker prompt is {seconds:.1f} s; at most {MAX_PROMPT_SECONDS:.0f} s",
        )
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise AudioError("silent_audio", "speaker prompt is silent")
    return wav
