"""Fixtures for model tests: tiny Step1 folders written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.models.tiny.lm import chat_spec, tts_spec, write_tiny_step1


@pytest.fixture(scope="session")
def tiny_tts_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm") / "Step-Audio-TTS-3B"
    write_tiny_step1(folder, tts_spec(), seed=2)
    return folder


@pytest.fixture(scope="session")
def tiny_chat_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm") / "Step-Audio-Chat"
    write_tiny_step1(folder, chat_spec(), seed=1)
    return folder
