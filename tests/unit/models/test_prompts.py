"""Prompt formats and the text tokenizer against fixed goldens (tiny tokenizer)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.models.checkpoint import CheckpointError
from services.models.prompts import (
    TTS_SYSTEM_PROMPTS,
    AudioContent,
    ChatMessage,
    build_chat_prompt,
    build_tts_prompt,
    detect_instruction,
    plan_tts,
    render_chat,
)
from services.models.text_tokenizer import TextTokenizer

# SHA-256 of upstream tts.py's prompts at a52b94d (docs/upstream notes §6.1)
PROMPT_SHA256 = {
    "sys_prompt_for_rap": "94e57ef98fca7e17c6b2cc8b68a6144284f75170ca4c958c3b67670959393ca8",
    "sys_prompt_for_vocal": "fe285fced376165407bb5cb87ac96dc7e947c207ed3166f5ed22458931277cf1",
    "sys_prompt_wo_spk": "fbfae76f256390123e00e65ebf99dc0f615f0b8e8727d24ff66083aeb6e90602",
    "sys_prompt_with_spk": "f18b3010e2b1bdcb402eaafbaf8c20a03ba0201e04c237f387f1391fc6d3c52e",
}


def test_tts_system_prompts_are_upstreams_byte_for_byte() -> None:
    digests = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in TTS_SYSTEM_PROMPTS.items()}
    assert digests == PROMPT_SHA256


@pytest.fixture(scope="module")
def tokenizer(tiny_tts_lm: Path) -> TextTokenizer:
    return TextTokenizer.from_folder(tiny_tts_lm)


def test_special_and_audio_pieces_are_single_ids(tokenizer: TextTokenizer) -> None:
    assert tokenizer.vocab_size == 74752
    ids = tokenizer.encode("<|BOT|>x<|EOT|><audio_0><audio_1024><audio_5119>", add_bos=False)
    assert 4 in ids and 3 in ids
    assert ids[-3:] == [65536, 65536 + 1024, 65536 + 5119]
    assert tokenizer.decode(tokenizer.encode("Hello there, 你好!")) == "Hello there, 你好!"


def test_chat_template_string() -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", AudioContent([65536 + 7, 65536 + 1024 + 9])),
        ChatMessage("assistant", "Hello there."),
        ChatMessage("user", ["Look: ", AudioContent([65536 + 1])]),
    ]
    assert render_chat(messages) == (
        "<|BOT|>system\nBe brief.<|EOT|>"
        "<|BOT|>human\n<audio_7><audio_1033><|EOT|>"
        "<|BOT|>assistant\nHello there.<|EOT|>"
        "<|BOT|>human\nLook: <audio_1><|EOT|>"
        "<|BOT|>assistant\n"
    )
    # an open assistant turn is not closed and not duplicated
    assert render_chat([ChatMessage("user", "hi"), ChatMessage("assistant", None)]).endswith(
        "<|EOT|><|BOT|>assistant\n"
    )
    with pytest.raises(ValueError, match="unknown chat role"):
        render_chat([ChatMessage("tool", "x")])


def test_chat_prompt_ids_golden(tokenizer: TextTokenizer) -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", AudioContent([65536 + 7, 65536 + 1024 + 9])),
        ChatMessage("assistant", "Hello there."),
        ChatMessage("user", "你好"),
    ]
    assert build_chat_prompt(tokenizer, messages) == [
        1, 962, 4, 973, 618, 15, 71, 965, 562, 978, 478, 1019, 3,
        4, 972, 589, 15, 65543, 66569, 3,
        4, 971, 497, 637, 15, 466, 551, 649, 1019, 3,
        4, 972, 589, 15, 766, 3,
        4, 971, 497, 637, 15,
    ]  # fmt: skip


def test_tts_prompt_ids_golden(tokenizer: TextTokenizer) -> None:
    ids = build_tts_prompt(
        tokenizer, "Hello", speaker="", prompt_text="a prompt", prompt_ids=[65541, 66566]
    )
    system = tokenizer.encode(f"system\n{TTS_SYSTEM_PROMPTS['sys_prompt_wo_spk']}")
    human, assistant = tokenizer.encode("human\n"), tokenizer.encode("assistant\n")
    assert human == [1, 642, 15] and assistant == [1, 666, 15]
    assert ids[:3] == [1, 4, 1] and ids[2 : 2 + len(system)] == system
    assert ids[2 + len(system) :] == [
        3, 4, 1, 642, 15, 971, 749, 717, 708, 967, 3,
        4, 1, 666, 15, 65541, 66566, 3,
        4, 1, 642, 15, 466, 551, 3,
        4, 1, 666, 15,
    ]  # fmt: skip


def test_instruction_detection_and_routing() -> None:
    assert detect_instruction("(RAP)yo") == "RAP"
    assert detect_instruction("（哼唱）啦啦") == "哼唱"
    assert detect_instruction("(高兴1)你好") == "高兴1"
    assert detect_instruction("你好(RAP)") == ""  # only a leading tag counts
    assert detect_instruction("((RAP))x") == ""
    assert plan_tts("(RAP)yo", "Tingting").music
    assert plan_tts("(RAP)yo", "Tingting").system_prompt == TTS_SYSTEM_PROMPTS["sys_prompt_for_rap"]
    vocal = plan_tts("（哼唱）啦啦", "")
    assert vocal.music and vocal.system_prompt == TTS_SYSTEM_PROMPTS["sys_prompt_for_vocal"]
    named = plan_tts("(高兴1)hi", "Tingting")
    assert not named.music and "[Tingting]" in named.system_prompt
    assert plan_tts("hi", "").system_prompt == TTS_SYSTEM_PROMPTS["sys_prompt_wo_spk"]


def test_tokenizer_folder_errors(tmp_path: Path, tiny_tts_lm: Path) -> None:
    with pytest.raises(CheckpointError, match="tokenizer.model is missing"):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        TextTokenizer.from_folder(tmp_path)
