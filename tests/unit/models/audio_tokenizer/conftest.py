"""Fixtures: the tiny tokenizer folder (written once per session), the loaded tokenizer, audio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.audio import decode_audio_file
from services.models import layout
from services.models.audio_tokenizer import AudioTokenizer
from services.models.tiny.audio_tokenizer import write_tiny_audio_tokenizer
from tests.unit.models.audio_tokenizer.helpers import DEMO_CLIP


@pytest.fixture(scope="package", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and OpenMP spin-waiting on a busy 2-core
    runner made this package 20x slower; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokenizer-root")
    write_tiny_audio_tokenizer(layout.tokenizer_dir(root))
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_model_root: Path) -> Path:
    return layout.tokenizer_dir(tiny_model_root)


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer_dir: Path) -> AudioTokenizer:
    return AudioTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def demo_audio() -> tuple[np.ndarray, int]:
    """3.4 s of 16 kHz espeak speech with digital silence around it."""
    samples, rate = decode_audio_file(DEMO_CLIP)
    assert rate == 16_000
    return samples, rate
