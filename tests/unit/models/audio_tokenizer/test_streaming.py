"""Streaming sessions vs the offline result (the relation documented in docs/audio-tokenizer.md).

R1  normalize=False: stream ids == offline ids. vq02 always; vq06 when the model's receptive
    field fits the window margins (the tiny model's does) and the piece's log-mel maximum is
    reached before each window runs (whisper's max - 8 floor).
R2  normalize=True: stream ids == offline ids of the waveform with the stream's gain schedule
    (each 240 ms stride scaled by 0.999 / max(0.01, peak received so far)), same conditions.
R3  normalize=True vs offline normalize=True: same length; codes differ only where the running
    peak was below the clip peak (demo clip: >= 90 % agreement asserted, ~95 % measured).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from services.common.audio import AudioError, resample
from services.models.audio_tokenizer import AudioTokenizer, SemanticStreamOptions, preprocess
from services.models.audio_tokenizer.linguistic import CHUNK_SAMPLES
from tests.unit.models.audio_tokenizer.helpers import feed_in_chunks, split_ids

CHUNK_20MS = 320


def stream_schedule_waveform(samples: np.ndarray, feed: int) -> np.ndarray:
    """The waveform a 16 kHz stream fed ``feed`` samples at a time actually tokenises (R2)."""
    strides = []
    for start in range(0, len(samples), CHUNK_SAMPLES):
        end = min(start + CHUNK_SAMPLES, len(samples))
        # processed in the feed() that completed it (or in finish() for the last, short one)
        received = (
            min(len(samples), -(-end // feed) * feed) if end % CHUNK_SAMPLES == 0 else len(samples)
        )
        reference = preprocess.peak_reference(np.abs(samples[:received]).max())
        strides.append(preprocess.apply_gain(samples[start:end], reference))
    return np.concatenate(strides)


def test_r1_unnormalised_stream_equals_offline(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    during, tail = feed_in_chunks(tokenizer.stream(rate, normalize=False), samples, CHUNK_20MS)
    assert during + tail == tokenizer.tokenize(samples, rate, normalize=False)


def test_stream_emits_groups_while_audio_arrives(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    stream = tokenizer.stream(rate)
    first_ids_at = None
    for start in range(0, len(samples), CHUNK_20MS):
        if stream.feed(samples[start : start + CHUNK_20MS]) and first_ids_at is None:
            first_ids_at = stream.audio_seconds
    tail = stream.finish()
    total = len(tokenizer.tokenize(samples, rate))
    assert first_ids_at is not None and first_ids_at <= 1.8  # 240 ms stride + 1.44 s window
    # at end of speech only the last window's worth of groups (<= 1.7 s) is left
    assert len(tail) / 5 * 0.12 <= 1.7
    assert len(tail) < total
    assert stream.audio_seconds == pytest.approx(len(samples) / rate)


def test_r2_normalised_stream_equals_offline_of_its_gain_schedule(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    during, tail = feed_in_chunks(tokenizer.stream(rate), samples, CHUNK_20MS)
    scheduled = stream_schedule_waveform(samples, CHUNK_20MS)
    assert during + tail == tokenizer.tokenize(scheduled, rate, normalize=False)


def test_r3_normalised_stream_agrees_with_offline(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    during, tail = feed_in_chunks(tokenizer.stream(rate), samples, CHUNK_20MS)
    offline = tokenizer.tokenize(samples, rate)
    assert len(during + tail) == len(offline)
    stream_02, stream_06 = split_ids(during + tail)
    offline_02, offline_06 = split_ids(offline)
    assert (stream_02 == offline_02).mean() >= 0.9
    assert (stream_06 == offline_06).mean() >= 0.9


def test_one_feed_with_the_whole_clip_equals_offline(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    stream = tokenizer.stream(rate)
    assert stream.feed(samples) + stream.finish() == tokenizer.tokenize(samples, rate)


@pytest.mark.parametrize("chunk", [1, 123, 3840, 5000])
def test_chunking_does_not_matter_without_normalisation(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int], chunk: int
) -> None:
    samples, rate = demo_audio
    samples = samples[: 2 * rate]
    during, tail = feed_in_chunks(tokenizer.stream(rate, normalize=False), samples, chunk)
    assert during + tail == tokenizer.tokenize(samples, rate, normalize=False)


@pytest.mark.parametrize("rate", [8_000, 48_000])
def test_resampled_stream_equals_offline(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int], rate: int
) -> None:
    samples, _ = demo_audio
    at_rate = resample(samples, 16_000, rate)
    during, tail = feed_in_chunks(tokenizer.stream(rate, normalize=False), at_rate, rate // 50)
    assert during + tail == tokenizer.tokenize(at_rate, rate, normalize=False)


def test_stream_across_a_30_second_piece_boundary(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    long = np.tile(samples, 10)[: 31 * rate + 1234]  # two vq06 pieces: 30 s + 1.08 s
    during, tail = feed_in_chunks(tokenizer.stream(rate, normalize=False), long, rate)
    assert during + tail == tokenizer.tokenize(long, rate, normalize=False)


def test_short_trailing_piece_is_dropped_like_offline(tokenizer: AudioTokenizer) -> None:
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.standard_normal(30 * 16_000 + 300)).astype(np.float32)
    during, tail = feed_in_chunks(tokenizer.stream(16_000, normalize=False), audio, 16_000)
    assert during + tail == tokenizer.tokenize(audio, 16_000, normalize=False)


def test_window_geometry_is_configurable(
    tiny_tokenizer_dir: Path, demo_audio: tuple[np.ndarray, int]
) -> None:
    options = SemanticStreamOptions(hop_codes=4, context_codes=8, lookahead_codes=2)
    tokenizer = AudioTokenizer.from_pretrained(tiny_tokenizer_dir, stream_options=options)
    samples, rate = demo_audio
    # a noise floor keeps whisper's (max - 8) floor from binding, so the running maximum of
    # early windows cannot matter; then only the window margins could, and the tiny model sees
    # 3 mel frames (< 1 code) each side, so 2 codes of look-ahead keep vq06 exact
    noise = np.random.default_rng(5).standard_normal(len(samples)).astype(np.float32)
    noisy = samples + np.float32(0.01) * noise
    during, tail = feed_in_chunks(tokenizer.stream(rate, normalize=False), noisy, CHUNK_20MS)
    assert during + tail == tokenizer.tokenize(noisy, rate, normalize=False)
    assert len(tail) <= 5 * 5  # hop + look-ahead + one stride: ~0.6 s left at the end


def test_running_floor_only_differs_on_digital_silence(
    tiny_tokenizer_dir: Path, demo_audio: tuple[np.ndarray, int]
) -> None:
    """Small first windows over digital silence see a lower log-mel maximum than the piece."""
    options = SemanticStreamOptions(hop_codes=4, context_codes=8, lookahead_codes=2)
    tokenizer = AudioTokenizer.from_pretrained(tiny_tokenizer_dir, stream_options=options)
    samples, rate = demo_audio
    during, tail = feed_in_chunks(tokenizer.stream(rate, normalize=False), samples, CHUNK_20MS)
    stream_02, stream_06 = split_ids(during + tail)
    offline_02, offline_06 = split_ids(tokenizer.tokenize(samples, rate, normalize=False))
    assert np.array_equal(stream_02, offline_02)
    assert (stream_06 == offline_06).mean() >= 0.8
    assert (stream_06 != offline_06).any()


def test_streams_are_independent_when_interleaved(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    other = samples[::-1].copy()
    first, second = tokenizer.stream(rate), tokenizer.stream(rate)
    ids_first: list[int] = []
    ids_second: list[int] = []
    for start in range(0, len(samples), CHUNK_20MS):
        ids_first += first.feed(samples[start : start + CHUNK_20MS])
        ids_second += second.feed(other[start : start + CHUNK_20MS])
    ids_first += first.finish()
    ids_second += second.finish()
    assert ids_first == sum(feed_in_chunks(tokenizer.stream(rate), samples, CHUNK_20MS), [])
    assert ids_second == sum(feed_in_chunks(tokenizer.stream(rate), other, CHUNK_20MS), [])


def test_streams_in_parallel_threads(
    tokenizer: AudioTokenizer, demo_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = demo_audio
    expected = tokenizer.tokenize(samples, rate, normalize=False)
    results: list[list[int]] = []

    def run() -> None:
        results.append(
            sum(feed_in_chunks(tokenizer.stream(rate, normalize=False), samples, 800), [])
        )

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 3


def test_finished_stream_refuses_more_audio(tokenizer: AudioTokenizer) -> None:
    stream = tokenizer.stream(16_000)
    stream.feed(np.zeros(100, dtype=np.float32))
    assert stream.finish() == []
    with pytest.raises(RuntimeError):
        stream.feed(np.zeros(100, dtype=np.float32))
    with pytest.raises(RuntimeError):
        stream.finish()


def test_empty_feeds_are_harmless(tokenizer: AudioTokenizer) -> None:
    stream = tokenizer.stream(16_000)
    assert stream.feed(np.zeros(0, dtype=np.float32)) == []
    assert stream.finish() == []
    assert stream.audio_seconds == 0.0


def test_bad_chunks_raise_audio_errors(tokenizer: AudioTokenizer) -> None:
    stream = tokenizer.stream(16_000)
    with pytest.raises(AudioError) as nan:
        stream.feed(np.array([0.0, np.nan], dtype=np.float32))
    assert nan.value.code == "invalid_audio"
    with pytest.raises(AudioError) as fmt:
        stream.feed(np.zeros(10, dtype=np.uint8))
    assert fmt.value.code == "invalid_audio"
    with pytest.raises(AudioError) as rate:
        tokenizer.stream(96_000)
    assert rate.value.code == "unsupported_sample_rate"
