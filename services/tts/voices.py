"""The TTS service's voices: built-in speakers (upstream's ``speakers/``) + persisted user voices.

Built-in voices are computed at start-up from ``<model root>/speakers/`` (speakers_info.json +
``{name}_prompt.wav``) and live in memory only. User voices (RegisterVoice) are kept in a
``SpeakerStore`` directory and survive restarts. A user voice may not take a built-in's name
unless ``allow_builtin_override`` is set; then it shadows the built-in until it is deleted.
Built-in voices cannot be deleted.

No I/O happens on the caller's thread except ``VoiceRegistry.load`` (start-up); writes go
through ``store`` from a worker thread, then ``add_user`` / ``remove_user`` update the index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.models.token2wav import Speaker, SpeakerPrompt, SpeakerStore
from services.models.token2wav.speakers import STORE_SUFFIX

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 64
MAX_PROMPT_TEXT_CHARS = 1000
# letters (any script: built-ins include "Tingting哼唱"), digits, "_" and "-"
_NAME = re.compile(r"[\w-]+")  # always fullmatch: "$" would let "name\n" through


class VoiceError(ValueError):
    """A voice request that cannot be served; ``code`` is a stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Voice:
    name: str
    prompt_text: str
    prompt_ids: list[int]  # LLM audio ids of the (trimmed) prompt clip
    prompt: SpeakerPrompt  # what token2wav conditions on
    prompt_seconds: float
    builtin: bool

    @property
    def lm_speaker(self) -> str:
        """Name for the TTS LM's system prompt: built-ins by name, user voices in clone mode
        (empty name), as upstream does for cloned speakers."""
        return self.name if self.builtin else ""

    def to_speaker(self) -> Speaker:
        return Speaker.from_prompt(self.name, self.prompt_text, self.prompt_ids, self.prompt)


def check_voice_name(name: str) -> str:
    if not name:
        raise VoiceError("invalid_argument", "voice name is empty")
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise VoiceError(
            "invalid_argument",
            f"voice name {name[:MAX_NAME_CHARS]!r} must be 1..{MAX_NAME_CHARS} letters, digits, "
            "'_' or '-'",
        )
    return name


def check_prompt_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise VoiceError("empty_text", "prompt_text (the transcript of the prompt audio) is empty")
    if len(text) > MAX_PROMPT_TEXT_CHARS:
        raise VoiceError(
            "text_too_long", f"prompt_text is longer than {MAX_PROMPT_TEXT_CHARS} characters"
        )
    return text


class VoiceRegistry:
    """Name → Voice for built-ins and user voices; user voices persisted in ``store``."""

    def __init__(
        self,
        store: SpeakerStore,
        builtins: Sequence[Voice],
        *,
        seconds_per_frame: float,
        allow_builtin_override: bool = False,
    ) -> None:
        self.store = store
        self.seconds_per_frame = seconds_per_frame  # prompt mel frame → seconds
        self.allow_builtin_override = allow_builtin_override
        self._builtins = {voice.name: voice for voice in builtins}
        self._users: dict[str, Voice] = {}

    def load(self) -> None:
        """Read every user voice in the store (start-up; blocking file I/O).

        File by file rather than ``store.list()``, which fails on the first unreadable file:
        one corrupt voice must not keep the service from starting.
        """
        for path in sorted(self.store.directory.glob(f"*{STORE_SUFFIX}")):
            try:
                speaker = SpeakerStore._read(path)  # private: no public per-file reader
                self._users[speaker.name] = self.user_voice(speaker)
            except (ValueError, KeyError) as exc:
                log.error("skipping unreadable voice file %s: %s", path, exc)

    def user_voice(self, speaker: Speaker) -> Voice:
        return Voice(
            name=speaker.name,
            prompt_text=speaker.prompt_text,
            prompt_ids=list(speaker.prompt_ids),
            prompt=speaker.to_prompt(),
            prompt_seconds=speaker.prompt_mel.shape[0] * self.seconds_per_frame,
            builtin=False,
        )

    def get(self, name: str) -> Voice:
        voice = self._users.get(name) or self._builtins.get(name)
        if voice is None:
            raise VoiceError("unknown_voice", f"unknown voice {name!r}")
        return voice

    def __contains__(self, name: str) -> bool:
        return name in self._users or name in self._builtins

    def for_instruction(self, voice: Voice, instruction: str) -> Voice:
        """The ``{voice}{instruction}`` variant (``TingtingRAP``) when there is one."""
        variant = f"{voice.name}{instruction}"
        return self.get(variant) if instruction and variant in self else voice

    def list(self) -> list[Voice]:
        merged = {**self._builtins, **self._users}
        return [merged[name] for name in sorted(merged)]

    def check_can_register(self, name: str, overwrite: bool) -> None:
        check_voice_name(name)
        if name in self._builtins and not self.allow_builtin_override:
            raise VoiceError("invalid_argument", f"voice {name!r} is built in")
        if name in self._users and not overwrite:
            raise VoiceError(
                "invalid_argument", f"voice {name!r} already exists; set overwrite to replace it"
            )
        if name in self._builtins and not overwrite:
            raise VoiceError(
                "invalid_argument", f"voice {name!r} is built in; set overwrite to shadow it"
            )

    def check_can_delete(self, name: str) -> None:
        if name in self._users:
            return
        if name in self._builtins:
            raise VoiceError(
                "invalid_argument", f"voice {name!r} is built in; it cannot be deleted"
            )
        raise VoiceError("unknown_voice", f"unknown voice {name!r}")

    def add_user(self, voice: Voice) -> None:
        self._users[voice.name] = voice

    def remove_user(self, name: str) -> None:
        self._users.pop(name, None)
