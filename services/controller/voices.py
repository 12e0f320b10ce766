"""OpenAI voice names and speech ``instructions`` → Step-Audio voices and instruction tags.

Voices: an alias table (``CONTROLLER_VOICE_ALIASES``) maps OpenAI's names (alloy, ash…) to
registered voices; a name that is not an alias is used as is (a registered or cloned voice).

Instructions: Step-Audio-TTS-3B takes its style from a parenthesised tag at the start of the
text — ``(高兴1)今天天气真好`` — with emotions, languages/dialects, speaking rates and the music
modes RAP and humming (the tag list of its system prompt, services/models/prompts.py).
OpenAI's free-text ``instructions`` ("Speak in a cheerful tone, slowly") are matched against
the keyword table below, and each matched tag is put in front of the text, a music tag first
(the TTS picks its music vocoder from the first tag). A tag written out in parentheses in the
instructions (``(粤语)``) is taken as is. docs/protocol.md lists the table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
    "verse", "marin", "cedar",
)  # fmt: skip
DEFAULT_VOICE = "Tingting"  # the built-in speaker of Step-Audio-TTS-3B (and the tiny pack)
DEFAULT_ALIASES: dict[str, str] = dict.fromkeys(OPENAI_VOICES, DEFAULT_VOICE)

# (tag, keywords) — checked in order; within a group the first match wins
MUSIC_TAGS = (("RAP", ("rap", "说唱")), ("哼唱", ("hum", "humming", "sing", "哼唱", "唱")))
EMOTION_TAGS = (
    ("高兴2", ("very happy", "excited", "ecstatic", "thrilled", "非常高兴")),
    ("高兴1", ("happy", "cheerful", "joyful", "upbeat", "glad", "高兴", "开心")),
    ("生气2", ("furious", "very angry", "enraged", "非常生气")),
    ("生气1", ("angry", "annoyed", "irritated", "mad", "生气")),
    ("悲伤1", ("sad", "sorrowful", "melancholy", "gloomy", "悲伤", "难过")),
    ("撒娇1", ("coquettish", "cute", "sweet", "playful", "affectionate", "撒娇")),
)
LANGUAGE_TAGS = (
    ("四川话", ("sichuan", "四川")),
    ("粤语", ("cantonese", "粤语", "广东话")),
    ("日语", ("japanese", "日语")),
    ("韩语", ("korean", "韩语")),
    ("英文", ("in english", "english", "英文", "英语")),
    ("中文", ("mandarin", "chinese", "中文", "普通话")),
)
SPEED_TAGS = (
    ("慢速2", ("very slow", "very slowly", "非常慢")),
    ("慢速1", ("slow", "slowly", "慢")),
    ("快速2", ("very fast", "very quickly", "非常快")),
    ("快速1", ("fast", "quick", "quickly", "rapid", "快")),
)
KNOWN_TAGS = frozenset(
    tag for group in (MUSIC_TAGS, EMOTION_TAGS, LANGUAGE_TAGS, SPEED_TAGS) for tag, _ in group
)
_EXPLICIT_TAG = re.compile(r"[（(]([^()（）]+)[)）]")


def resolve_voice(name: str, aliases: Mapping[str, str]) -> str:
    """An OpenAI voice name → the configured voice; other names pass through."""
    return aliases.get(name.lower(), name) if name else name


def _mentions(text: str, keyword: str) -> bool:
    if keyword.isascii():  # whole words, so "mad" does not match "made"
        return re.search(rf"\b{re.escape(keyword)}\b", text) is not None
    return keyword in text


def _first_match(text: str, group: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for tag, keywords in group:
        if any(_mentions(text, keyword) for keyword in keywords):
            return tag
    return None


def instruction_tags(instructions: str) -> list[str]:
    """Step-Audio tags for OpenAI-style instructions, music first; [] if none apply."""
    explicit = [t.strip() for t in _EXPLICIT_TAG.findall(instructions) if t.strip() in KNOWN_TAGS]
    if explicit:
        return sorted(set(explicit), key=lambda t: (t not in ("RAP", "哼唱"), explicit.index(t)))
    text = instructions.lower()
    groups = (MUSIC_TAGS, EMOTION_TAGS, LANGUAGE_TAGS, SPEED_TAGS)
    tags = [_first_match(text, group) for group in groups]
    return [tag for tag in tags if tag]


def apply_instructions(text: str, instructions: str | None) -> str:
    """The TTS input: the instruction tags, then the text."""
    tags = instruction_tags(instructions or "")
    return "".join(f"({tag})" for tag in tags) + text
