"""Offline decoding: rate, dtype, length from the token count, determinism, controls, batch."""

from __future__ import annotations

import numpy as np
import pytest

from services.models.audio_tokens import TOKENS_PER_SECOND
from services.models.token2wav import SpeakerPrompt, Token2Wav
from services.models.token2wav.controls import apply_volume
from tests.unit.models.token2wav.helpers import random_codes, seeded

STEPS = 3  # fewer Euler steps keep the suite fast; the default (10) is used once below


@pytest.fixture(scope="module")
def reference(model: Token2Wav, speaker: SpeakerPrompt) -> np.ndarray:
    return model.synthesize(random_codes(90), speaker, generator=seeded(7), n_timesteps=STEPS)


@pytest.mark.parametrize("n_codes", [5, 42, 125])
def test_length_follows_the_token_count(
    model: Token2Wav, speaker: SpeakerPrompt, n_codes: int
) -> None:
    wav = model.synthesize(random_codes(n_codes), speaker, generator=seeded(0), n_timesteps=1)
    frames = int(n_codes / model.config.flow.input_frame_rate * 22050 / 256)
    assert model.sample_rate_hz == 22050
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == frames * 256 == model.mel_frames(n_codes) * 256
    # 41.67 tokens per second of speech (the 25 Hz semantic rate, interleaved 2+3)
    assert len(wav) / 22050 == pytest.approx(n_codes / TOKENS_PER_SECOND, abs=256 / 22050)


def test_default_steps_give_audible_unclipped_audio(
    model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    wav = model.synthesize(random_codes(60), speaker, generator=seeded(3))
    assert np.isfinite(wav).all()
    assert 1e-3 < float(np.sqrt(np.mean(wav**2))) < 0.5
    assert np.mean(np.abs(wav) >= 0.989) < 0.01
    assert np.abs(wav).max() <= 0.99


def test_same_generator_seed_same_audio(
    model: Token2Wav, speaker: SpeakerPrompt, reference: np.ndarray
) -> None:
    again = model.synthesize(random_codes(90), speaker, generator=seeded(7), n_timesteps=STEPS)
    other = model.synthesize(random_codes(90), speaker, generator=seeded(8), n_timesteps=STEPS)
    np.testing.assert_array_equal(again, reference)
    assert not np.allclose(other, reference)


def test_generator_state_advances_so_successive_calls_differ(
    model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    generator = seeded(5)
    first = model.synthesize(random_codes(30), speaker, generator=generator, n_timesteps=1)
    second = model.synthesize(random_codes(30), speaker, generator=generator, n_timesteps=1)
    assert not np.array_equal(first, second)


def test_mel_is_the_flow_half_of_synthesize(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    mel = model.generate_mel(random_codes(40), speaker, generator=seeded(2), n_timesteps=STEPS)
    assert mel.shape == (model.mel_frames(40), 80) and np.isfinite(mel).all()


def test_cfg_rate_and_steps_change_the_output(
    model: Token2Wav, speaker: SpeakerPrompt, reference: np.ndarray
) -> None:
    no_cfg = model.synthesize(
        random_codes(90), speaker, generator=seeded(7), n_timesteps=STEPS, cfg_rate=0.0
    )
    assert no_cfg.shape == reference.shape and not np.allclose(no_cfg, reference)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_scales_the_flow_length(
    model: Token2Wav, speaker: SpeakerPrompt, speed: float
) -> None:
    wav = model.synthesize(
        random_codes(60), speaker, generator=seeded(1), n_timesteps=1, speed=speed
    )
    assert len(wav) == model.mel_frames(60, speed) * 256
    assert len(wav) == pytest.approx(model.mel_frames(60) * 256 / speed, abs=512)


def test_volume_is_a_gain_with_clipping(
    model: Token2Wav, speaker: SpeakerPrompt, reference: np.ndarray
) -> None:
    quiet = model.synthesize(
        random_codes(90), speaker, generator=seeded(7), n_timesteps=STEPS, volume=0.5
    )
    loud = model.synthesize(
        random_codes(90), speaker, generator=seeded(7), n_timesteps=STEPS, volume=10.0
    )
    np.testing.assert_allclose(quiet, reference * 0.5, atol=1e-6)
    np.testing.assert_allclose(loud, np.clip(reference * 10, -0.99, 0.99), atol=1e-6)


def test_volume_clips_instead_of_wrapping() -> None:
    wav = np.array([0.5, -0.6, 0.1], dtype=np.float32)
    np.testing.assert_allclose(apply_volume(wav, 4.0), [0.99, -0.99, 0.4], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"speed": 3.0}, "speed"), ({"volume": -1.0}, "volume"), ({"n_timesteps": 0}, "n_timesteps")],
)
def test_bad_controls_are_refused(
    model: Token2Wav, speaker: SpeakerPrompt, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        model.synthesize([1, 2, 3], speaker, **kwargs)


def test_codes_outside_the_vocabulary_are_refused(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        model.synthesize([1, model.config.flow.vocab_size], speaker)


def test_empty_codes_give_empty_audio_and_negative_codes_clamp(
    model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    assert model.synthesize([], speaker).shape == (0,)
    negative = model.synthesize([-5] * 20, speaker, generator=seeded(1), n_timesteps=1)
    zero = model.synthesize([0] * 20, speaker, generator=seeded(1), n_timesteps=1)
    np.testing.assert_array_equal(negative, zero)  # upstream clamps ids below 0 to 0


def test_decode_batch_matches_single_calls(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    codes = [random_codes(50, seed=s) for s in (1, 2, 3)]
    batch = model.decode_batch(
        codes, [speaker] * 3, generators=[seeded(s) for s in (1, 2, 3)], n_timesteps=STEPS
    )
    for item, seed, wav in zip(codes, (1, 2, 3), batch, strict=True):
        single = model.synthesize(item, speaker, generator=seeded(seed), n_timesteps=STEPS)
        np.testing.assert_allclose(wav, single, atol=1e-4)


def test_decode_batch_refuses_unequal_lengths(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    with pytest.raises(ValueError, match="equal code counts"):
        model.decode_batch([random_codes(10), random_codes(12)], [speaker, speaker])
