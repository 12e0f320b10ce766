"""Streaming: chunk timing, length, closeness to offline, seams without clicks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.models.token2wav import SpeakerPrompt, StreamOptions, Token2Wav
from services.models.token2wav.streaming import _StreamingVocoder
from tests.unit.models.token2wav.helpers import random_codes, seeded, snr_db

STEPS = 2
N_CODES = 260  # 6.2 s: chunks of 45, then hops of 60 and 120 tokens, then the rest


def _stream_all(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int], step: int, seed: int = 11, **opts
) -> tuple[list[np.ndarray], object]:
    stream = model.stream(speaker, generator=seeded(seed), n_timesteps=STEPS, **opts)
    pieces = [stream.feed(codes[i : i + step]) for i in range(0, len(codes), step)]
    pieces.append(stream.finish())
    return pieces, stream


@pytest.fixture(scope="module")
def codes() -> list[int]:
    return random_codes(N_CODES, seed=4)


@pytest.fixture(scope="module")
def offline(model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]) -> np.ndarray:
    return model.synthesize(codes, speaker, generator=seeded(11), n_timesteps=STEPS)


@pytest.fixture(scope="module")
def streamed(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]
) -> tuple[list[np.ndarray], object]:
    return _stream_all(model, speaker, codes, step=5, record_mel=True)


def test_first_chunk_arrives_once_hop_plus_overlap_tokens_are_in(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]
) -> None:
    stream = model.stream(speaker, generator=seeded(1), n_timesteps=1)
    need = stream.first_chunk_tokens
    assert need == StreamOptions().first_hop_tokens + StreamOptions().overlap_tokens == 45
    assert stream.feed(codes[: need - 1]).size == 0
    first = stream.feed(codes[need - 1 : need])
    # the first hop's frames minus the vocoder's held-back crossfade
    expected = (model.mel_frames(30) - StreamOptions().hift_crossfade_frames) * 256
    assert first.dtype == np.float32 and first.size == expected


def test_stream_is_as_long_as_offline_and_chunks_grow(
    streamed: tuple[list[np.ndarray], object], offline: np.ndarray
) -> None:
    pieces, stream = streamed
    assert sum(p.size for p in pieces) == offline.size
    assert stream.chunks_decoded == 4  # 45 | +60 | +120 | rest (35 tokens)


def test_finish_right_after_a_chunk_flushes_the_held_tail(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]
) -> None:
    stream = model.stream(speaker, generator=seeded(2), n_timesteps=1)
    first = stream.feed(codes[:45])  # exactly one chunk; its 15-code tail is held back
    rest = stream.finish()  # a final chunk made of the held overlap only
    assert first.size and rest.size
    assert first.size + rest.size == model.mel_frames(45) * 256


def test_short_stream_equals_offline_exactly(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]
) -> None:
    short = codes[:40]  # below the first chunk: one final call, the offline path
    pieces, _ = _stream_all(model, speaker, short, step=7)
    offline = model.synthesize(short, speaker, generator=seeded(11), n_timesteps=STEPS)
    np.testing.assert_array_equal(np.concatenate(pieces), offline)


def test_streamed_flow_mel_stays_close_to_offline(
    model: Token2Wav,
    speaker: SpeakerPrompt,
    codes: list[int],
    streamed: tuple[list[np.ndarray], object],
) -> None:
    """The chunked flow changes the mel (full attention and GroupNorm see less context), but
    far less than the model's own seed-to-seed variation: bound 0.35× (measured ≈ 0.15-0.2×)."""
    _, stream = streamed
    offline_mel = model.generate_mel(codes, speaker, generator=seeded(11), n_timesteps=STEPS)
    other_seed = model.generate_mel(codes, speaker, generator=seeded(12), n_timesteps=STEPS)
    assert stream.mel.shape == offline_mel.shape
    streaming_error = np.abs(stream.mel - offline_mel).mean()
    seed_spread = np.abs(other_seed - offline_mel).mean()
    assert streaming_error < 0.35 * seed_spread


def test_streaming_vocoder_matches_offline_on_the_same_mel(model: Token2Wav) -> None:
    """HiFT overlap-save (left context + cached source + phase carry + crossfade) vs one call."""
    mel = torch.randn(1, 80, 230, generator=seeded(3)) * 1.5 - 5
    randomness = model.new_randomness(seeded(4))
    with torch.inference_mode():
        offline = model.vocode(mel, [randomness])[0].numpy()
        vocoder = _StreamingVocoder(model, randomness, StreamOptions())
        pieces, start = [], 0
        for size in (62, 58, 70, 40):
            stop = start + size
            final = stop == mel.shape[2]
            right = None if final else mel[:, :, stop : stop + 31]
            pieces.append(vocoder.push(mel[:, :, start:stop], right, final))
            start = stop
    assert snr_db(offline, np.concatenate(pieces)) > 50


def test_no_click_at_chunk_edges(
    streamed: tuple[list[np.ndarray], object], offline: np.ndarray
) -> None:
    pieces, _ = streamed
    audio = np.concatenate(pieces)
    edges = np.cumsum([p.size for p in pieces if p.size])[:-1]
    assert len(edges) >= 3
    largest_offline_step = np.abs(np.diff(offline)).max()
    for edge in edges:
        window = audio[max(edge - 256, 0) : edge + 256]
        assert np.abs(np.diff(window)).max() <= largest_offline_step, f"step at sample {edge}"


def test_stream_is_reproducible_and_independent_of_feed_sizes(
    model: Token2Wav,
    speaker: SpeakerPrompt,
    codes: list[int],
    streamed: tuple[list[np.ndarray], object],
) -> None:
    pieces, _ = _stream_all(model, speaker, codes, step=33)
    np.testing.assert_array_equal(np.concatenate(pieces), np.concatenate(streamed[0]))


def test_speed_and_volume_apply_to_streams(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]
) -> None:
    pieces, _ = _stream_all(model, speaker, codes[:120], step=40, speed=1.5, volume=0.5)
    audio = np.concatenate(pieces)
    assert audio.size == model.mel_frames(120, 1.5) * 256
    assert np.abs(audio).max() <= 0.5


def test_finished_stream_refuses_more_and_empty_stream_is_silent(
    model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    stream = model.stream(speaker, generator=seeded(1))
    assert stream.finish().size == 0
    with pytest.raises(RuntimeError, match="finished"):
        stream.feed([1, 2, 3])


def test_bad_stream_options_are_refused(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    with pytest.raises(ValueError, match="overlap"):
        model.stream(speaker, overlap_tokens=2)
    with pytest.raises(TypeError):
        model.stream(speaker, not_an_option=1)
