"""The tiny Step1 pack parts: layout, determinism, size, behaviour."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from services.models.prompts import ChatMessage, build_chat_prompt, build_tts_prompt
from services.models.step1 import CHAT_DEFAULTS, TTS_DEFAULTS, Step1ForCausalLM, generate
from services.models.text_tokenizer import TextTokenizer
from services.models.tiny.lm import tts_spec, write_tiny_step1


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_lm_is_byte_identical_across_runs(tmp_path: Path) -> None:
    write_tiny_step1(tmp_path / "a", tts_spec(), seed=2)
    write_tiny_step1(tmp_path / "b", tts_spec(), seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert set(digest(tmp_path / "a")) == {
        "config.json",
        "configuration_step1.py",
        "model-00001.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
    }
    size = sum(p.stat().st_size for p in (tmp_path / "a").iterdir())
    assert size < 20e6  # hidden 48 (6 heads × 8): embed_tokens + lm_head are 2 × 7.2 MB in bf16


def test_tiny_tts_lm_emits_audio_ids_and_stops(tiny_tts_lm: Path) -> None:
    model = Step1ForCausalLM.from_pretrained(tiny_tts_lm)
    tokenizer = TextTokenizer.from_folder(tiny_tts_lm)
    prompt = build_tts_prompt(
        tokenizer, "Hello", speaker="Tingting", prompt_text="hi", prompt_ids=[65540] * 20
    )
    lengths = []
    for seed in range(4):
        params = dataclasses.replace(TTS_DEFAULTS, seed=seed, max_tokens=1000)
        ids = list(generate(model, prompt, params))
        assert all(65536 <= i < 65536 + 5120 for i in ids)
        lengths.append(len(ids))
    assert max(lengths) < 1000  # every run stopped at <|EOT|>


def test_tiny_chat_lm_emits_text_and_stops(tiny_chat_lm: Path) -> None:
    model = Step1ForCausalLM.from_pretrained(tiny_chat_lm)
    tokenizer = TextTokenizer.from_folder(tiny_chat_lm)
    prompt = build_chat_prompt(tokenizer, [ChatMessage("user", "What is the weather?")])
    for seed in range(4):
        ids = list(generate(model, prompt, dataclasses.replace(CHAT_DEFAULTS, seed=seed)))
        assert len(ids) < CHAT_DEFAULTS.max_tokens
        assert all(5 <= i < 65536 for i in ids)
