"""The sinc resampler against torchaudio's own Resample output (tests/fixtures/resample/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.resample import SincStreamResampler, resample_sinc, sinc_kernel

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "resample"
SOURCE_RATES = (8_000, 22_050, 24_000, 44_100, 48_000)
TARGET_RATES = (16_000, 22_050)
PAIRS = [(source, target) for source in SOURCE_RATES for target in TARGET_RATES]


def fixture(rate: int) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"rate_{rate}.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_matches_torchaudio_resample(source: int, target: int) -> None:
    data = fixture(source)
    expected = data[f"to_{target}"]
    got = resample_sinc(data["input"], source, target)
    assert got.dtype == np.float32
    assert len(got) == len(expected)
    assert float(np.abs(got - expected).max()) <= 1e-6


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_stream_in_chunks_matches_one_call(source: int, target: int) -> None:
    signal = fixture(source)["input"]
    resampler = SincStreamResampler(source, target)
    rng = np.random.default_rng(source + target)
    pieces, start = [], 0
    while start < len(signal):
        size = int(rng.integers(1, 700))
        pieces.append(resampler.process(signal[start : start + size]))
        start += size
    pieces.append(resampler.process(np.zeros(0, dtype=np.float32), last=True))
    streamed, whole = np.concatenate(pieces), resample_sinc(signal, source, target)
    assert len(streamed) == len(whole)
    assert float(np.abs(streamed - whole).max()) <= 1e-6  # float32 summation order only


def test_output_length_rounds_the_ratio_in_float32_as_torchaudio() -> None:
    kernel = sinc_kernel(44_100, 16_000)  # 441 → 160 after the gcd
    assert (kernel.orig, kernel.new) == (441, 160)
    assert kernel.output_length(441) == 160
    assert kernel.output_length(442) == 161
    # torchaudio takes ceil(torch.as_tensor(160 · length / 441)), a float32: for very long
    # inputs that differs from the exact count, and the project follows torchaudio
    length = 441 * 16_777_217
    assert kernel.output_length(length) == int(np.float32(160 * 16_777_217))
    assert kernel.output_length(length) != 160 * 16_777_217


def test_kernels_are_cached_per_rate_pair_and_dtype() -> None:
    assert sinc_kernel(48_000, 16_000) is sinc_kernel(48_000, 16_000)
    assert sinc_kernel(48_000, 16_000, torch.float64) is not sinc_kernel(48_000, 16_000)


def test_same_rate_and_empty_input() -> None:
    signal = fixture(24_000)["input"]
    np.testing.assert_array_equal(resample_sinc(signal, 24_000, 24_000), signal)
    assert resample_sinc(np.zeros(0, dtype=np.float32), 48_000, 16_000).size == 0
    stream = SincStreamResampler(48_000, 16_000)
    assert stream.process(np.zeros(0, dtype=np.float32), last=True).size == 0


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        resample_sinc(np.zeros(10, dtype=np.float32), 0, 16_000)
