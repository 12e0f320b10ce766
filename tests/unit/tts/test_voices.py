from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.models.token2wav import Speaker, SpeakerStore
from services.tts.voices import (
    Voice,
    VoiceError,
    VoiceRegistry,
    check_prompt_text,
    check_voice_name,
)

FRAME_S = 256 / 22050


def speaker(name: str, frames: int = 100) -> Speaker:
    return Speaker(
        name=name,
        prompt_text=f"text of {name}",
        prompt_ids=[65536 + 1, 65536 + 2, 65536 + 1030, 65536 + 1031, 65536 + 1032],
        prompt_mel=np.zeros((frames, 80), np.float32),
        embedding=np.ones(192, np.float32),
    )


def builtin(name: str) -> Voice:
    s = speaker(name)
    return Voice(name, s.prompt_text, s.prompt_ids, s.to_prompt(), 3.0, builtin=True)


def registry(tmp_path: Path, *, override: bool = False) -> VoiceRegistry:
    voices = VoiceRegistry(
        SpeakerStore(tmp_path),
        [builtin("Tingting"), builtin("TingtingRAP")],
        seconds_per_frame=FRAME_S,
        allow_builtin_override=override,
    )
    voices.load()
    return voices


def add(voices: VoiceRegistry, name: str) -> None:
    s = speaker(name)
    voices.store.put(s)
    voices.add_user(voices.user_voice(s))


@pytest.mark.parametrize("name", ["alice", "Tingting哼唱", "a-b_c9", "x" * 64])
def test_good_names(name: str) -> None:
    assert check_voice_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a/b", "../x", "x" * 65, "tab\t"])
def test_bad_names(name: str) -> None:
    with pytest.raises(VoiceError) as error:
        check_voice_name(name)
    assert error.value.code == "invalid_argument"


def test_prompt_text_checks() -> None:
    assert check_prompt_text("  hi ") == "hi"
    with pytest.raises(VoiceError, match="empty"):
        check_prompt_text(" ")
    with pytest.raises(VoiceError) as error:
        check_prompt_text("x" * 1001)
    assert error.value.code == "text_too_long"


def test_user_voices_persist_and_list_after_builtins(tmp_path: Path) -> None:
    voices = registry(tmp_path)
    add(voices, "alice")
    reloaded = registry(tmp_path)
    assert [(v.name, v.builtin) for v in reloaded.list()] == [
        ("Tingting", True),
        ("TingtingRAP", True),
        ("alice", False),
    ]
    alice = reloaded.get("alice")
    assert alice.prompt_seconds == pytest.approx(100 * FRAME_S)
    assert alice.lm_speaker == "" and reloaded.get("Tingting").lm_speaker == "Tingting"


def test_register_rules(tmp_path: Path) -> None:
    voices = registry(tmp_path)
    voices.check_can_register("alice", overwrite=False)
    add(voices, "alice")
    with pytest.raises(VoiceError, match="already exists"):
        voices.check_can_register("alice", overwrite=False)
    voices.check_can_register("alice", overwrite=True)
    for overwrite in (False, True):
        with pytest.raises(VoiceError, match="built in"):
            voices.check_can_register("Tingting", overwrite=overwrite)


def test_builtin_override_shadows_until_deleted(tmp_path: Path) -> None:
    voices = registry(tmp_path, override=True)
    with pytest.raises(VoiceError, match="overwrite"):
        voices.check_can_register("Tingting", overwrite=False)
    voices.check_can_register("Tingting", overwrite=True)
    add(voices, "Tingting")
    assert not voices.get("Tingting").builtin
    voices.check_can_delete("Tingting")
    voices.remove_user("Tingting")
    assert voices.get("Tingting").builtin


def test_delete_rules_and_unknown(tmp_path: Path) -> None:
    voices = registry(tmp_path)
    with pytest.raises(VoiceError, match="cannot be deleted"):
        voices.check_can_delete("Tingting")
    for call in (lambda: voices.check_can_delete("nobody"), lambda: voices.get("nobody")):
        with pytest.raises(VoiceError) as error:
            call()
        assert error.value.code == "unknown_voice"


def test_instruction_variant(tmp_path: Path) -> None:
    voices = registry(tmp_path)
    add(voices, "alice")
    tingting, alice = voices.get("Tingting"), voices.get("alice")
    assert voices.for_instruction(tingting, "RAP").name == "TingtingRAP"
    assert voices.for_instruction(tingting, "哼唱") is tingting  # no such entry
    assert voices.for_instruction(alice, "RAP") is alice


def test_unreadable_voice_file_is_skipped(tmp_path: Path) -> None:
    voices = registry(tmp_path)
    add(voices, "alice")
    (tmp_path / "junk-0000000000000000.speaker.npz").write_bytes(b"not a zip")
    assert [v.name for v in registry(tmp_path).list()] == ["Tingting", "TingtingRAP", "alice"]
