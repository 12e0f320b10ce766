"""Whole-clip tokenisation: id layout, rates, counts, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import resample
from services.common.resample import resample_sinc
from services.models.audio_tokenizer import AudioTokenizer, preprocess
from services.models.audio_tokenizer.linguistic import CHUNK_SAMPLES
from services.models.audio_tokens import GROUP_SECONDS, TOKENS_PER_SECOND
from tests.unit.models.audio_tokenizer.helpers import split_ids


def test_demo_clip_gives_41_67_ids_per_second_in_2_3_groups(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    ids = tokenizer.tokenize(samples, rate)
    seconds = len(samples) / rate
    assert len(ids) % 5 == 0
    assert abs(len(ids) / 5 - seconds / GROUP_SECONDS) <= 2
    assert abs(len(ids) - seconds * TOKENS_PER_SECOND) <= 2 * 5
    groups = np.asarray(ids).reshape(-1, 5)
    assert ((groups[:, :2] >= 65536) & (groups[:, :2] < 65536 + 1024)).all()
    assert ((groups[:, 2:] >= 65536 + 1024) & (groups[:, 2:] < 65536 + 5120)).all()


def test_codes_match_ids_and_rates(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    codes = tokenizer.codes(samples, rate)
    seconds = len(samples) / rate
    assert abs(len(codes.semantic) - seconds * 25) <= 2  # upstream's own sanity bound
    assert abs(len(codes.linguistic) - seconds * 50 / 3) <= 2
    linguistic, semantic = split_ids(codes.ids)
    groups = len(codes.ids) // 5
    assert linguistic.tolist() == codes.linguistic[: 2 * groups]
    assert semantic.tolist() == codes.semantic[: 3 * groups]


def test_tiny_models_emit_varied_codes(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    codes = tokenizer.codes(*demo_audio)
    assert len(set(codes.linguistic)) >= 15
    assert len(set(codes.semantic)) >= 15


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.0, 5.0])
def test_token_count_tracks_duration(tokenizer: AudioTokenizer, seconds: float) -> None:
    rng = np.random.default_rng(7)
    samples = (0.3 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
    ids = tokenizer.tokenize(samples, 16_000)
    assert abs(len(ids) / 5 - seconds / GROUP_SECONDS) <= 2


def test_full_strides_give_four_linguistic_codes_each(tokenizer: AudioTokenizer) -> None:
    rng = np.random.default_rng(8)
    samples = (0.2 * rng.standard_normal(5 * CHUNK_SAMPLES)).astype(np.float32)
    assert len(tokenizer.codes(samples, 16_000).linguistic) == 20


def test_very_short_clip_gives_no_groups(tokenizer: AudioTokenizer) -> None:
    assert tokenizer.tokenize(np.full(1000, 0.1, dtype=np.float32), 16_000) == []


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_other_rates_are_resampled_first(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int], rate: int
) -> None:
    samples, _ = demo_audio
    at_rate = resample(samples, 16_000, rate)
    ids = tokenizer.tokenize(at_rate, rate)
    assert abs(len(ids) / 5 - len(samples) / 16_000 / GROUP_SECONDS) <= 2
    # rates other than 16 kHz (below it too) go through upstream's sinc filter to 16 kHz first
    assert ids == tokenizer.tokenize(resample_sinc(at_rate, rate, 16_000), 16_000)


def test_int16_and_stereo_input_are_accepted(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    pcm = np.round(samples * 32767).astype(np.int16)
    stereo = np.stack([pcm, pcm], axis=1)
    assert tokenizer.tokenize(stereo, rate) == tokenizer.tokenize(pcm, rate)
    assert len(tokenizer.tokenize(pcm, rate)) == len(tokenizer.tokenize(samples, rate))


def test_normalisation_makes_output_independent_of_level(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    quiet = (samples * np.float32(0.25)).astype(np.float32)
    audio, quiet_audio = tokenizer.preprocess(samples, rate), tokenizer.preprocess(quiet, rate)
    assert np.abs(audio).max() == pytest.approx(0.999, abs=1e-6)
    assert np.abs(quiet_audio - audio).max() < 1e-6
    assert tokenizer.tokenize(quiet, rate, normalize=False) != tokenizer.tokenize(quiet, rate)


def test_energy_norm_floor_limits_gain() -> None:
    silence = np.full(100, 0.001, dtype=np.float32)
    assert preprocess.normalize_energy(silence).max() == pytest.approx(0.0999, rel=1e-5)


def test_trim_keeps_speech_with_upstream_margins(tokenizer: AudioTokenizer) -> None:
    rate = 16_000
    tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    padded = np.concatenate([np.zeros(rate, np.float32), tone, np.zeros(rate, np.float32)])
    start, end = preprocess.nonsilent_span(padded)
    assert abs(start - rate) <= 256 and abs(end - 2 * rate) <= 256
    trimmed = preprocess.trim_silence(padded)
    expected = int(np.ceil((end - start) / 240)) * 240 + 4320
    assert len(trimmed) == expected
    # 50 ms kept before the detected start
    assert np.array_equal(trimmed[:800], padded[start - 800 : start])
    with_trim = tokenizer.tokenize(padded, rate, trim=True)
    assert abs(len(with_trim) / 5 - expected / rate / GROUP_SECONDS) <= 2


def test_trim_pads_front_when_speech_starts_immediately() -> None:
    tone = (0.5 * np.sin(np.arange(8000) * 0.1)).astype(np.float32)
    trimmed = preprocess.trim_silence(tone)
    assert np.all(trimmed[:800] == 0) and np.array_equal(trimmed[800:1000], tone[:200])
