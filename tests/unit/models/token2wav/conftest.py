"""Fixtures: the tiny vocoder folders (written once per session), a loaded model, a speaker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.models.layout import MUSIC_VOCODER_DIR, VOCODER_DIR
from services.models.tiny.token2wav import write_tiny_token2wav
from services.models.token2wav import SpeakerPrompt, Token2Wav
from tests.unit.models.token2wav.helpers import (
    PROMPT_SAMPLE_RATE_HZ,
    PROMPT_SECONDS,
    audio_ids,
    voiced_wav,
)


@pytest.fixture(scope="session")
def tts_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("Step-Audio-TTS-3B")
    write_tiny_token2wav(folder)
    return folder


@pytest.fixture(scope="session")
def vocoder_dir(tts_folder: Path) -> Path:
    return tts_folder / VOCODER_DIR


@pytest.fixture(scope="session")
def music_dir(tts_folder: Path) -> Path:
    return tts_folder / MUSIC_VOCODER_DIR


@pytest.fixture(scope="session")
def model(vocoder_dir: Path) -> Token2Wav:
    return Token2Wav.from_pretrained(vocoder_dir)


@pytest.fixture(scope="session")
def prompt_wav() -> np.ndarray:
    return voiced_wav(PROMPT_SECONDS, PROMPT_SAMPLE_RATE_HZ)


@pytest.fixture(scope="session")
def speaker(model: Token2Wav, prompt_wav: np.ndarray) -> SpeakerPrompt:
    return model.prepare_speaker(prompt_wav, PROMPT_SAMPLE_RATE_HZ, audio_ids(50))
