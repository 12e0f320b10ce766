"""Speaker prompts from audio, bad prompt audio, the persistent store, upstream's folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.common.audio import AudioError
from services.models.audio_tokens import AUDIO_ID_OFFSET
from services.models.token2wav import (
    Speaker,
    SpeakerPrompt,
    SpeakerStore,
    Token2Wav,
    UnknownSpeakerError,
    load_upstream_speakers,
)
from services.models.token2wav.speakers import speaker_file_name
from tests.unit.models.token2wav.helpers import (
    PROMPT_SAMPLE_RATE_HZ,
    audio_ids,
    random_codes,
    seeded,
    voiced_wav,
)


def _speaker(name: str, prompt: SpeakerPrompt) -> Speaker:
    return Speaker.from_prompt(name, "那等我们到海洋馆之后", audio_ids(50), prompt)


def test_prepared_prompt_has_mel_embedding_and_codes(
    model: Token2Wav, speaker: SpeakerPrompt, prompt_wav: np.ndarray
) -> None:
    seconds = prompt_wav.size / PROMPT_SAMPLE_RATE_HZ
    assert speaker.prompt_mel.dtype == np.float32 and speaker.prompt_mel.shape[1] == 80
    assert abs(speaker.prompt_mel.shape[0] - seconds * 22050 / 256) <= 1
    assert speaker.embedding.shape == (192,) and speaker.embedding.dtype == np.float32
    np.testing.assert_array_equal(speaker.prompt_codes, np.asarray(audio_ids(50)) - AUDIO_ID_OFFSET)


def test_prompt_depends_on_the_voice(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    other = model.prepare_speaker(
        voiced_wav(1.5, 16000, seed=3) * 0.3, 16000, audio_ids(60, seed=3)
    )
    assert not np.allclose(other.embedding, speaker.embedding)


@pytest.mark.parametrize(
    ("wav", "rate", "code"),
    [
        (np.zeros(24000 // 50, np.float32) + 0.1, 24000, "audio_too_short"),  # 20 ms
        (np.zeros(48000, np.float32), 24000, "silent_audio"),
        (np.full(48000, np.nan, np.float32), 24000, "invalid_audio"),
        (np.zeros((2, 2, 24000), np.float32), 24000, "invalid_audio"),
        (np.array(["a"] * 48000), 24000, "invalid_audio"),
        (np.zeros(0, np.float32), 24000, "empty_audio"),
        (voiced_wav(2.0, 8000), 8000, "unsupported_sample_rate"),
        (voiced_wav(31.0, 16000), 16000, "audio_too_long"),
    ],
)
def test_bad_prompt_audio_is_refused_with_a_code(
    model: Token2Wav, wav: np.ndarray, rate: int, code: str
) -> None:
    with pytest.raises(AudioError) as info:
        model.prepare_speaker(wav, rate, audio_ids(50))
    assert info.value.code == code and "prompt" in str(info.value)


def test_prompt_ids_must_be_audio_ids(model: Token2Wav, prompt_wav: np.ndarray) -> None:
    with pytest.raises(ValueError, match="not an audio id"):
        model.prepare_speaker(prompt_wav, PROMPT_SAMPLE_RATE_HZ, [12, 13])
    with pytest.raises(ValueError, match="empty"):
        model.prepare_speaker(prompt_wav, PROMPT_SAMPLE_RATE_HZ, [])


def test_int16_and_stereo_prompts_are_accepted(model: Token2Wav, prompt_wav: np.ndarray) -> None:
    pcm = (np.stack([prompt_wav, prompt_wav], axis=1) * 32767).astype(np.int16)
    prompt = model.prepare_speaker(pcm, PROMPT_SAMPLE_RATE_HZ, audio_ids(50))
    assert prompt.embedding.shape == (192,)


def test_store_round_trips_through_a_new_instance(tmp_path: Path, speaker: SpeakerPrompt) -> None:
    store = SpeakerStore(tmp_path / "voices")
    store.put(_speaker("Tingting哼唱", speaker))
    store.put(_speaker("Tingting", speaker))

    reopened = SpeakerStore(tmp_path / "voices")
    assert reopened.list() == ["Tingting", "Tingting哼唱"]
    loaded = reopened.get("Tingting哼唱")
    assert loaded.name == "Tingting哼唱" and loaded.prompt_text == "那等我们到海洋馆之后"
    assert loaded.prompt_ids == audio_ids(50)
    np.testing.assert_array_equal(loaded.prompt_mel, speaker.prompt_mel)
    np.testing.assert_array_equal(loaded.embedding, speaker.embedding)
    np.testing.assert_array_equal(loaded.to_prompt().prompt_codes, speaker.prompt_codes)


def test_stored_speaker_decodes_like_the_prepared_prompt(
    tmp_path: Path, model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    store = SpeakerStore(tmp_path)
    store.put(_speaker("Tingting", speaker))
    codes = random_codes(20)
    from_store = model.synthesize(
        codes, store.get("Tingting").to_prompt(), generator=seeded(1), n_timesteps=1
    )
    direct = model.synthesize(codes, speaker, generator=seeded(1), n_timesteps=1)
    np.testing.assert_array_equal(from_store, direct)


def test_unknown_speaker_and_delete(tmp_path: Path, speaker: SpeakerPrompt) -> None:
    store = SpeakerStore(tmp_path)
    store.put(_speaker("a", speaker))
    store.delete("a")
    assert store.list() == [] and "a" not in store
    with pytest.raises(UnknownSpeakerError, match="unknown speaker 'a'") as info:
        store.get("a")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownSpeakerError):
        store.delete("a")


def test_file_names_are_safe_and_distinct() -> None:
    names = ["Tingting哼唱", "Tingting唱哼", "../etc/passwd", "a b", "a_b"]
    files = [speaker_file_name(n) for n in names]
    assert len(set(files)) == len(files)
    assert all("/" not in f and f.isascii() for f in files)


def test_writes_are_atomic(
    tmp_path: Path, speaker: SpeakerPrompt, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SpeakerStore(tmp_path)
    store.put(_speaker("Tingting", speaker))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    broken = Speaker("Tingting", "new text", audio_ids(5), speaker.prompt_mel, speaker.embedding)
    with pytest.raises(OSError, match="disk full"):
        store.put(broken)
    assert store.get("Tingting").prompt_text == "那等我们到海洋馆之后"  # the old file survived
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "", "non-empty"),
        ("prompt_ids", [5], "not an audio id"),
        ("prompt_mel", np.zeros((0, 80), np.float32), "prompt_mel"),
        ("embedding", np.full(192, np.nan, np.float32), "NaN"),
    ],
)
def test_store_refuses_invalid_speakers(
    tmp_path: Path, speaker: SpeakerPrompt, field: str, value: object, message: str
) -> None:
    fields = {
        "name": "x",
        "prompt_text": "",
        "prompt_ids": audio_ids(3),
        "prompt_mel": speaker.prompt_mel,
        "embedding": speaker.embedding,
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        SpeakerStore(tmp_path).put(Speaker(**fields))


def test_upstream_speakers_folder_is_read(tmp_path: Path) -> None:
    info = {"Tingting": "那等我们到海洋馆之后", "Tingting哼唱": "（哼唱）你从一座叫 我 的小镇经过"}
    (tmp_path / "speakers_info.json").write_text(json.dumps(info, ensure_ascii=False), "utf-8")
    sf.write(tmp_path / "Tingting_prompt.wav", voiced_wav(1.5, 44100), 44100, subtype="PCM_16")
    stereo = np.stack([voiced_wav(1.2, 48000)] * 2, axis=1)
    sf.write(tmp_path / "Tingting哼唱_prompt.wav", stereo, 48000, subtype="PCM_24")

    speakers = load_upstream_speakers(tmp_path)
    assert [(n, t, r) for n, t, _, r in speakers] == [
        ("Tingting", info["Tingting"], 44100),
        ("Tingting哼唱", info["Tingting哼唱"], 48000),
    ]
    assert all(w.dtype == np.float32 and w.ndim == 1 for _, _, w, _ in speakers)


def test_upstream_speakers_missing_wav_is_named(tmp_path: Path) -> None:
    (tmp_path / "speakers_info.json").write_text(json.dumps({"Nobody": "text"}), "utf-8")
    with pytest.raises(FileNotFoundError, match="Nobody_prompt.wav"):
        load_upstream_speakers(tmp_path)
