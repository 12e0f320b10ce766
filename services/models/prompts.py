"""Prompt formats of Step-Audio-Chat and the Step-Audio-TTS-3B LM.

Chat: ``<|BOT|>{role}\\n{content}<|EOT|>`` per message (role ``user`` → ``human``), audio content
as ``<audio_N>`` pieces, ending with ``<|BOT|>assistant\\n``; the string is encoded once with
BOS, as upstream's ``StepAudio.apply_chat_template`` + ``encode``.

TTS: the exact id layout of upstream's ``StepAudioTTS.tokenize``: a system turn (one of four
fixed prompts), the speaker's prompt text as a human turn, the speaker's prompt audio ids as
the assistant's answer, the target text as a human turn, then an open assistant turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.models.audio_tokens import ids_to_text
from services.models.text_tokenizer import BOS_ID, BOT_ID, EOT_ID, TextTokenizer

# The shared opening of the two voice-actor prompts (they differ only in their last line).
_VOICE_ACTOR_TAGS = (
    "作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、语音调整等标签，以丰富细腻的情感和自然顺畅的语调来朗读文本。\n"
    "# 情感标签涵盖了多种情绪状态，包括但不限于：\n"
    '- "高兴1"\n'
    '- "高兴2"\n'
    '- "生气1"\n'
    '- "生气2"\n'
    '- "悲伤1"\n'
    '- "撒娇1"\n'
    "\n"
    "# 语种或方言标签包含多种语言或方言，包括但不限于：\n"
    '- "中文"\n'
    '- "英文"\n'
    '- "韩语"\n'
    '- "日语"\n'
    '- "四川话"\n'
    '- "粤语"\n'
    '- "广东话"\n'
    "\n"
    "# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n"
    '- "RAP"\n'
    '- "哼唱"\n'
    "\n"
    "# 语音调整标签，包括但不限于：\n"
    '- "慢速1"\n'
    '- "慢速2"\n'
    '- "快速1"\n'
    '- "快速2"\n'
    "\n"
)

# The system prompts of upstream tts.py, byte for byte (checked by SHA-256 in the tests).
TTS_SYSTEM_PROMPTS: dict[str, str] = {
    "sys_prompt_for_rap": ("请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"),
    "sys_prompt_for_vocal": ("请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"),
    "sys_prompt_wo_spk": _VOICE_ACTOR_TAGS
    + (
        "请在朗读时，根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，以确保文本的情感和意义得到准确而生动的传达，如果没有()或（）括号，则根据文本语义内容自由演绎。"
    ),
    "sys_prompt_with_spk": _VOICE_ACTOR_TAGS
    + (
        "请在朗读时，使用[{}]的声音，根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，以确保文本的情感和意义得到准确而生动的传达，如果没有()或（）括号，则根据文本语义内容自由演绎。"
    ),
}

MUSIC_INSTRUCTIONS = ("RAP", "哼唱")
_LEADING_INSTRUCTION = re.compile(r"^([（(][^()（）]*[）)]).*$", re.DOTALL)

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class AudioContent:
    token_ids: Sequence[int]  # 65536-based audio ids


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | AudioContent | Sequence[str | AudioContent] | None


def _content_text(content: str | AudioContent | Sequence[str | AudioContent]) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, AudioContent):
        return ids_to_text(content.token_ids)
    return "".join(_content_text(part) for part in content)


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """The chat prompt string of upstream's apply_chat_template."""
    text = ""
    for message in messages:
        role = "human" if message.role == "user" else message.role
        if role not in ("system", "human", "assistant"):
            raise ValueError(f"unknown chat role {message.role!r}")
        if message.content is None:  # an open turn
            text += f"<|BOT|>{role}\n"
        else:
            text += f"<|BOT|>{role}\n{_content_text(message.content)}<|EOT|>"
    if not text.endswith("<|BOT|>assistant\n"):
        text += "<|BOT|>assistant\n"
    return text


def build_chat_prompt(tokenizer: TextTokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    return tokenizer.encode(render_chat(messages))


def detect_instruction(text: str) -> str:
    """The leading parenthesised instruction (``(RAP)``, ``（哼唱）``, ``(高兴1)``…), or ''."""
    match = _LEADING_INSTRUCTION.match(text)
    return match.group(1).strip("()（）") if match else ""


@dataclass(frozen=True)
class TtsPlan:
    """What the text asks of the TTS: the system prompt and which vocoder speaks it."""

    system_prompt: str
    music: bool  # RAP / humming use the CosyVoice-300M-25Hz-Music vocoder
    instruction: str


def plan_tts(text: str, speaker: str) -> TtsPlan:
    """Upstream's prompt choice: music instructions win; else named speaker or clone mode."""
    instruction = detect_instruction(text)
    if instruction in MUSIC_INSTRUCTIONS:
        key = "sys_prompt_for_vocal" if "哼唱" in text else "sys_prompt_for_rap"
        return TtsPlan(TTS_SYSTEM_PROMPTS[key], True, instruction)
    if speaker:
        return TtsPlan(
            TTS_SYSTEM_PROMPTS["sys_prompt_with_spk"].format(speaker), False, instruction
        )
    return TtsPlan(TTS_SYSTEM_PROMPTS["sys_prompt_wo_spk"], False, instruction)


def build_tts_prompt(
    tokenizer: TextTokenizer,
    text: str,
    *,
    speaker: str,
    prompt_text: str,
    prompt_ids: Sequence[int],
) -> list[int]:
    """Ids for the TTS LM. ``speaker`` '' selects clone mode (the prompt without a name)."""
    plan = plan_tts(text, speaker)
    human = tokenizer.encode("human\n")
    assistant = tokenizer.encode("assistant\n")
    # upstream starts with a hard-coded BOS and each encode() adds its own BOS again
    ids = [BOS_ID, BOT_ID, *tokenizer.encode(f"system\n{plan.system_prompt}"), EOT_ID]
    ids += [BOT_ID, *human, *tokenizer.encode_continuation(prompt_text), EOT_ID]
    ids += [BOT_ID, *assistant, *prompt_ids, EOT_ID]
    ids += [BOT_ID, *human, *tokenizer.encode_continuation(text), EOT_ID]
    ids += [BOT_ID, *assistant]
    return ids
