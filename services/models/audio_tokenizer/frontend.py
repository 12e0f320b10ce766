"""Paraformer's online frontend: Kaldi fbank, low-frame-rate (LFR) stacking, CMVN.

Mirrors FunASR ``WavFrontendOnline`` as the reference drives it: each call gets the next piece
of 16 kHz audio; samples that do not fill a whole 10 ms shift are carried over; fbank frames
that cannot yet complete a 7-frame LFR window are carried in a splice cache. At stream start the
first fbank frame is replicated (lfr_m-1)//2 times as left context; on the final call the last
frame is replicated to complete the last window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import kaldi_native_fbank as knf
import numpy as np

from services.models.audio_tokenizer.checkpoint import Cmvn
from services.models.audio_tokenizer.config import FrontendConfig

PCM16_SCALE = 32768.0  # the reference feeds fbank with the waveform scaled to 16-bit range


class KaldiFbank:
    """Kaldi-compatible log mel filterbank (kaldi-native-fbank), dither 0.

    Same settings as the reference's ``torchaudio.compliance.kaldi.fbank`` call: pre-emphasis
    0.97, DC removal, snip_edges, power spectrum, 20 Hz..Nyquist, log with float eps floor.
    """

    def __init__(self, config: FrontendConfig) -> None:
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(config.sample_rate_hz)
        opts.frame_opts.frame_length_ms = float(config.frame_length_ms)
        opts.frame_opts.frame_shift_ms = float(config.frame_shift_ms)
        opts.frame_opts.window_type = config.window
        opts.frame_opts.dither = 0.0  # reference default is 1.0 (random); see docs
        opts.frame_opts.snip_edges = True
        opts.mel_opts.num_bins = config.n_mels
        opts.energy_floor = 0.0
        self._opts = opts
        self._config = config

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """(frames, n_mels) float32 for float audio in [-1, 1]; frames as snip_edges counts."""
        fbank = knf.OnlineFbank(self._opts)
        fbank.accept_waveform(float(self._config.sample_rate_hz), samples * PCM16_SCALE)
        fbank.input_finished()
        count = fbank.num_frames_ready
        if count == 0:
            return np.zeros((0, self._config.n_mels), dtype=np.float32)
        return np.stack([fbank.get_frame(i) for i in range(count)]).astype(np.float32, copy=False)


@dataclass
class FrontendState:
    """Per-stream carry-over between calls."""

    residue: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    splice: np.ndarray | None = None  # fbank frames waiting for a complete LFR window


def count_frames(samples: int, frame_length: int, frame_shift: int) -> int:
    """Number of whole frames with snip_edges (0 when shorter than one frame)."""
    if samples < frame_length:
        return 0
    return (samples - frame_length) // frame_shift + 1


def stack_lfr(
    frames: np.ndarray, lfr_m: int, lfr_n: int, is_final: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Stack lfr_m frames every lfr_n frames; returns (lfr frames, frames to carry over).

    ``frames`` already holds the left context. Not final: stop at the first window that runs
    past the available frames. Final: complete such windows by repeating the last frame.
    """
    total, dim = frames.shape
    wanted = max(0, math.ceil((total - (lfr_m - 1) // 2) / lfr_n))
    rows: list[np.ndarray] = []
    for i in range(wanted):
        start = i * lfr_n
        window = frames[start : start + lfr_m]
        if len(window) < lfr_m:
            if not is_final:
                break
            padding = np.repeat(frames[-1:], lfr_m - len(window), axis=0)
            window = np.concatenate([window, padding])
        rows.append(window.reshape(-1))
    carry_from = min(total - 1, len(rows) * lfr_n)
    stacked = np.stack(rows) if rows else np.zeros((0, dim * lfr_m), dtype=np.float32)
    return stacked.astype(np.float32, copy=False), frames[carry_from:]


class ParaformerFrontend:
    """Turns 16 kHz audio pieces into CMVN-normalised LFR features (n, n_mels*lfr_m)."""

    def __init__(self, config: FrontendConfig, cmvn: Cmvn) -> None:
        self.config = config
        self.cmvn = cmvn
        self.fbank = KaldiFbank(config)

    def process(self, state: FrontendState, samples: np.ndarray, *, is_final: bool) -> np.ndarray:
        cfg = self.config
        wave = np.concatenate([state.residue, samples.astype(np.float32, copy=False)])
        frame_count = count_frames(len(wave), cfg.frame_length_samples, cfg.frame_shift_samples)
        state.residue = wave[frame_count * cfg.frame_shift_samples :]
        if frame_count == 0:
            return self._flush(state) if is_final else self._empty()
        used = (frame_count - 1) * cfg.frame_shift_samples + cfg.frame_length_samples
        frames = self.fbank(wave[:used])
        if state.splice is None:
            state.splice = np.repeat(frames[:1], (cfg.lfr_m - 1) // 2, axis=0)
        frames = np.concatenate([state.splice, frames])
        if len(frames) < cfg.lfr_m:
            # not enough for one window, even on the final call (the reference drops them too)
            state.splice = frames
            return self._empty()
        stacked, state.splice = stack_lfr(frames, cfg.lfr_m, cfg.lfr_n, is_final)
        return self.cmvn.apply(stacked)

    def _flush(self, state: FrontendState) -> np.ndarray:
        """Final call without new frames: complete what the splice cache holds."""
        if state.splice is None:
            return self._empty()
        stacked, state.splice = stack_lfr(state.splice, self.config.lfr_m, self.config.lfr_n, True)
        return self.cmvn.apply(stacked)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.config.feature_dim), dtype=np.float32)
