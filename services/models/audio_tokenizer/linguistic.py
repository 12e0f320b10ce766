"""vq02: linguistic codes (16.67 Hz, 1024 codes) from the streaming Paraformer encoder + k-means.

The reference (``infer_encoder`` with chunk_size [0, 4, 5]) walks the 16 kHz waveform in
3 840-sample (240 ms) strides; every full stride yields 4 LFR frames, the final partial stride
is flushed with ``is_final``. Offline and streaming both go through :meth:`encode_chunk`, so a
stream fed the same waveform produces the same codes bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.models.audio_tokenizer import checkpoint, sanm
from services.models.audio_tokenizer.batching import EncoderJob, drive
from services.models.audio_tokenizer.config import ParaformerConfig, load_paraformer_config
from services.models.audio_tokenizer.frontend import FrontendState, ParaformerFrontend
from services.models.audio_tokens import LINGUISTIC_CODES

log = logging.getLogger(__name__)

SAMPLES_PER_LFR_FRAME = 960  # 60 ms at 16 kHz
CHUNK_SAMPLES = sanm.CHUNK_SIZE[1] * SAMPLES_PER_LFR_FRAME  # 3 840 = 240 ms


@dataclass
class LinguisticState:
    """Per-stream carry-over: frontend caches and the encoder's overlap/k-v caches."""

    frontend: FrontendState
    encoder: sanm.EncoderState


class LinguisticTokenizer:
    def __init__(
        self,
        config: ParaformerConfig,
        frontend: ParaformerFrontend,
        encoder: sanm.SanmEncoder,
        centroids: np.ndarray,
        device: torch.device,
    ) -> None:
        self.config = config
        self.frontend = frontend
        self.encoder = encoder.to(device)
        self.centroids = torch.from_numpy(centroids)  # quantised on the CPU, as upstream
        self.device = device

    @classmethod
    def load(
        cls, paraformer_dir: Path, codebook_file: Path, device: torch.device
    ) -> LinguisticTokenizer:
        config = load_paraformer_config(paraformer_dir)
        if config.frontend.dither:
            log.info(
                "%s: frontend_conf.dither is %g (FunASR adds random noise); the tokenizer "
                "extracts fbank with dither 0 so that codes are reproducible (docs/models.md)",
                paraformer_dir,
                config.frontend.dither,
            )
        cmvn = checkpoint.load_cmvn(config.cmvn_file, config.frontend.feature_dim)
        tensors = checkpoint.load_encoder_state(config.model_file)
        checkpoint.check_tensors(config.model_file, sanm.expected_shapes(config.encoder), tensors)
        encoder = sanm.build_encoder(config.encoder, tensors)
        centroids = checkpoint.load_codebook(
            codebook_file, LINGUISTIC_CODES, config.encoder.output_size
        )
        return cls(config, ParaformerFrontend(config.frontend, cmvn), encoder, centroids, device)

    def new_state(self) -> LinguisticState:
        return LinguisticState(FrontendState(), self.encoder.new_state())

    def encode_chunk(
        self, state: LinguisticState, samples: np.ndarray, *, is_final: bool
    ) -> list[int]:
        """Codes for one stride (<= 3 840 samples of 16 kHz audio, already normalised)."""
        return drive(self.encode_chunk_steps(state, samples, is_final=is_final), self._encode_one)

    def encode_chunk_steps(
        self, state: LinguisticState, samples: np.ndarray, *, is_final: bool
    ) -> Generator[EncoderJob, list[int], list[int]]:
        """`encode_chunk` as a step generator (batching.py): yields the encoder job."""
        features = self.frontend.process(state.frontend, samples, is_final=is_final)
        if len(features) == 0:
            return []
        codes = yield EncoderJob(state.encoder, features)
        return codes

    def encode_jobs(self, jobs: Sequence[EncoderJob]) -> list[list[int]]:
        """Encoder chunks of many streams in stacked batches; codes per job."""
        features = [torch.from_numpy(job.features)[None].to(self.device) for job in jobs]
        frames = self.encoder.forward_chunks(features, [job.state for job in jobs])
        return [self.quantize(f[0]) for f in frames]

    def _encode_one(self, job: EncoderJob) -> list[int]:
        return self.encode_jobs([job])[0]

    def quantize(self, frames: torch.Tensor) -> list[int]:
        """Nearest centroid by Euclidean distance (upstream: CPU fp32 torch.cdist + argmin)."""
        with torch.inference_mode():
            distances = torch.cdist(frames.float().cpu(), self.centroids)
            return distances.argmin(dim=1).tolist()

    def tokenize(self, samples: np.ndarray) -> list[int]:
        """All codes of a whole clip: full strides, then the remainder as the final stride."""
        return drive(self.tokenize_steps(samples), self._encode_one)

    def tokenize_steps(self, samples: np.ndarray) -> Generator[EncoderJob, list[int], list[int]]:
        """`tokenize` as a step generator."""
        state = self.new_state()
        codes: list[int] = []
        full_strides = len(samples) // CHUNK_SAMPLES
        for index in range(full_strides):
            chunk = samples[index * CHUNK_SAMPLES : (index + 1) * CHUNK_SAMPLES]
            codes += yield from self.encode_chunk_steps(state, chunk, is_final=False)
        remainder = samples[full_strides * CHUNK_SAMPLES :]
        if len(remainder):
            codes += yield from self.encode_chunk_steps(state, remainder, is_final=True)
        return codes
