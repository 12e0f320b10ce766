"""A model folder given as the model root or as one of its component folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.models import layout


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The folder skeleton of a model pack (what the resolver looks at, no weights)."""
    root = tmp_path / "pack"
    (root / layout.CHAT_DIR).mkdir(parents=True)
    (root / layout.TTS_DIR / layout.VOCODER_DIR).mkdir(parents=True)
    (root / layout.TOKENIZER_DIR).mkdir()
    (root / layout.TOKENIZER_DIR / layout.LINGUISTIC_CODEBOOK_FILE).write_bytes(b"")
    (root / layout.SPEAKERS_DIR).mkdir()
    return root


@pytest.mark.parametrize("component", [layout.TOKENIZER_DIR, layout.TTS_DIR, layout.CHAT_DIR])
def test_a_component_is_found_from_the_root_or_itself(root: Path, component: str) -> None:
    assert layout.resolve_component(root, component) == root / component
    assert layout.resolve_component(root / component, component) == root / component


def test_a_renamed_component_folder_is_recognised_by_its_contents(root: Path) -> None:
    renamed = root.parent / "my-tokenizer"
    (root / layout.TOKENIZER_DIR).rename(renamed)
    assert layout.resolve_component(renamed, layout.TOKENIZER_DIR) == renamed


@pytest.mark.parametrize(
    "given", ["", layout.CHAT_DIR, layout.TTS_DIR, layout.TOKENIZER_DIR, layout.SPEAKERS_DIR]
)
def test_the_root_is_found_from_itself_or_any_of_its_folders(root: Path, given: str) -> None:
    assert layout.resolve_root(root / given, layout.TTS_DIR) == root
    assert layout.resolve_root(root / given, layout.CHAT_DIR) == root


def test_folders_that_are_neither_form_are_named(root: Path, tmp_path: Path) -> None:
    with pytest.raises(layout.ModelDirError, match="has no Step-Audio-Tokenizer/"):
        layout.resolve_component(root / layout.CHAT_DIR, layout.TOKENIZER_DIR)
    with pytest.raises(layout.ModelDirError, match="has no Step-Audio-TTS-3B/"):
        layout.resolve_root(tmp_path / "elsewhere", layout.TTS_DIR)
    (root / layout.CHAT_DIR).rename(tmp_path / "chat-only")
    with pytest.raises(layout.ModelDirError, match="has no Step-Audio-Chat/"):
        layout.resolve_root(root / layout.TTS_DIR, layout.CHAT_DIR)  # a root without Chat
