"""`stepaudio tokenize` smoke tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.cli import main
from services.models.audio_tokenizer import AudioTokenizer
from tests.unit.models.audio_tokenizer.helpers import DEMO_CLIP


def test_prints_ids_for_a_model_root(
    tiny_model_root: Path, tokenizer: AudioTokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tokenize", str(DEMO_CLIP), "--model-dir", str(tiny_model_root)]) == 0
    printed = [int(x) for x in capsys.readouterr().out.split()]
    samples, rate = sf.read(DEMO_CLIP, dtype="float32")
    assert printed == tokenizer.tokenize(samples, rate)


def test_json_for_a_stereo_32k_file_and_the_tokenizer_folder(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples, _ = sf.read(DEMO_CLIP, dtype="float32")
    wav = tmp_path / "stereo.wav"
    stereo = np.stack([samples, samples], axis=1)
    sf.write(wav, np.repeat(stereo, 2, axis=0)[: len(samples) * 2], 32_000, subtype="PCM_16")
    assert main(["tokenize", str(wav), "--model-dir", str(tiny_tokenizer_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"token_ids", "seconds", "groups"}
    assert report["groups"] == len(report["token_ids"]) // 5 > 20
    assert report["seconds"] == pytest.approx(len(samples) / 16_000, abs=1e-3)


def test_errors_are_one_line(
    tiny_model_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["tokenize", str(tmp_path / "missing.wav"), "--model-dir", str(tiny_model_root)]) == 2
    )
    assert "no such audio file" in capsys.readouterr().err
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....")
    assert main(["tokenize", str(bad), "--model-dir", str(tiny_model_root)]) == 2
    assert "cannot decode audio" in capsys.readouterr().err
    assert main(["tokenize", str(DEMO_CLIP), "--model-dir", str(tmp_path)]) == 2
    assert "Step-Audio-Tokenizer" in capsys.readouterr().err
