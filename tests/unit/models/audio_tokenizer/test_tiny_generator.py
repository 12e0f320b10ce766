"""The tiny tokenizer generator: real layout, small, same bytes for the same seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnxruntime as ort

from services.models import layout
from services.models.tiny.audio_tokenizer import write_tiny_audio_tokenizer


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_bytes(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again" / layout.TOKENIZER_DIR
    write_tiny_audio_tokenizer(again)
    assert digest(again) == digest(tiny_tokenizer_dir)
    other = tmp_path / "other" / layout.TOKENIZER_DIR
    write_tiny_audio_tokenizer(other, seed=1)
    assert (
        digest(other)[layout.SEMANTIC_TOKENIZER_FILE]
        != digest(again)[layout.SEMANTIC_TOKENIZER_FILE]
    )


def test_real_layout_and_size(tiny_tokenizer_dir: Path) -> None:
    files = set(digest(tiny_tokenizer_dir))
    paraformer = layout.PARAFORMER_DIR
    assert {
        f"{paraformer}/config.yaml",
        f"{paraformer}/configuration.json",
        f"{paraformer}/model.pt",
        f"{paraformer}/am.mvn",
        layout.LINGUISTIC_CODEBOOK_FILE,
        layout.SEMANTIC_TOKENIZER_FILE,
    } <= files
    size = sum(p.stat().st_size for p in tiny_tokenizer_dir.rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024


def test_onnx_signature_matches_speech_tokenizer_v1(tiny_tokenizer_dir: Path) -> None:
    session = ort.InferenceSession(str(tiny_tokenizer_dir / layout.SEMANTIC_TOKENIZER_FILE))
    feats, length = session.get_inputs()
    assert (feats.name, feats.type, feats.shape[:2]) == ("feats", "tensor(float)", [1, 128])
    assert (length.name, length.type, length.shape) == ("feats_length", "tensor(int32)", [1])
    assert len(session.get_outputs()[0].shape) == 3
