"""Speech clips made at run time with espeak-ng (installed here and in CI by .ci/run).

``phrase(text)`` is one utterance at 16 kHz with espeak's leading and trailing silence cut off
(espeak ends every clip with ~390 ms of silence, which would add to any pause placed after
it). ``with_pauses([...], pause_s)`` joins phrases with digital silence of exactly
``pause_s``: e.g. 0.35 s is a mid-sentence pause — longer than the controller's speculation
pause (250 ms), shorter than the VAD's end-of-turn silence (600 ms). Used by the speculation
tests and by ``loadtests.bench_dialogue``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.common.audio import decode_audio_file, resample

RATE_HZ = 16_000
TRIM_THRESHOLD = 0.01  # |sample| above this counts as sound when trimming
TRIM_MARGIN_S = 0.01  # kept either side of the sound


def silence(seconds: float, rate_hz: int = RATE_HZ) -> np.ndarray:
    return np.zeros(round(seconds * rate_hz), dtype=np.float32)


def trim_silence(samples: np.ndarray, rate_hz: int = RATE_HZ) -> np.ndarray:
    """Cut leading and trailing near-silence (keeps ``TRIM_MARGIN_S`` either side)."""
    loud = np.flatnonzero(np.abs(samples) > TRIM_THRESHOLD)
    if not loud.size:
        return samples[:0]
    margin = round(TRIM_MARGIN_S * rate_hz)
    return samples[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


@functools.lru_cache(maxsize=64)
def _espeak(text: str, voice: str, words_per_minute: int) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phrase.wav"
        args = [binary, "-v", voice, "-s", str(words_per_minute), "-w", str(out), text]
        subprocess.run(args, check=True, capture_output=True)
        samples, rate = decode_audio_file(out)
    clip = trim_silence(resample(samples, rate, RATE_HZ).astype(np.float32))
    clip.setflags(write=False)  # cached: callers get a shared read-only array
    return clip


def phrase(text: str, *, voice: str = "en-us", words_per_minute: int = 150) -> np.ndarray:
    """One spoken phrase, 16 kHz float32, without leading/trailing silence."""
    return _espeak(text, voice, words_per_minute)


def with_pauses(
    phrases: Sequence[str], pause_s: float = 0.35, *, voice: str = "en-us"
) -> np.ndarray:
    """The phrases spoken one after another with ``pause_s`` of silence between them."""
    parts: list[np.ndarray] = []
    for index, text in enumerate(phrases):
        if index:
            parts.append(silence(pause_s))
        parts.append(phrase(text, voice=voice))
    return np.concatenate(parts)
