"""The model commands of the CLI on the tiny pack."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import soundfile as sf

from services.cli import build_parser, main
from services.models.audio_tokens import TOKENS_PER_SECOND
from services.models.tiny import ASSETS


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_models_tiny_writes_the_real_layout_reproducibly(tmp_path: Path) -> None:
    assert main(["models", "tiny", "--out", str(tmp_path / "a")]) == 0
    assert main(["models", "tiny", "--out", str(tmp_path / "b")]) == 0
    first = digest_tree(tmp_path / "a")
    assert first == digest_tree(tmp_path / "b")  # same bytes every run
    for folder in ("Step-Audio-Chat", "Step-Audio-TTS-3B"):
        config = json.loads((tmp_path / "a" / folder / "config.json").read_text())
        assert config["architectures"] == ["Step1ForCausalLM"]
    assert "Step-Audio-Tokenizer/linguistic_tokenizer.npy" in first
    assert "Step-Audio-TTS-3B/CosyVoice-300M-25Hz/flow.pt" in first
    assert "speakers/speakers_info.json" in first
    size = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert size < 50e6


def test_tts_command_writes_audio_that_follows_the_token_count(
    tiny_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.wav"
    args = ["tts", "Hello there, how are you?", "-o", str(out), "--model-dir", str(tiny_pack)]
    assert main([*args, "--seed", "0", "--voices-dir", str(tmp_path / "voices")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 22_050 and audio.size / rate == pytest.approx(summary["audio_seconds"], abs=1e-3)
    expected_s = summary["audio_ids"] / TOKENS_PER_SECOND
    assert summary["audio_ids"] > 0
    assert abs(audio.size / rate - expected_s) <= 256 / 22_050  # within one mel hop


def test_tts_command_names_a_missing_model_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["tts", "hi", "-o", str(tmp_path / "x.wav"), "--model-dir", str(tmp_path)])
    assert code == 2 and "has no Step-Audio-TTS-3B" in capsys.readouterr().err


def test_tts_command_takes_the_tts_folder_too(
    tiny_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.wav"
    folder = str(tiny_pack / "Step-Audio-TTS-3B")
    args = ["tts", "Hello there", "-o", str(out), "--model-dir", folder, "--seed", "0"]
    assert main([*args, "--voices-dir", str(tmp_path / "voices")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    audio, rate = sf.read(out, dtype="float32")
    assert summary["audio_ids"] > 0 and audio.size / rate == pytest.approx(
        summary["audio_seconds"], abs=1e-3
    )


def test_tokenize_command_takes_the_model_root_or_the_tokenizer_folder(
    tiny_pack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = str(ASSETS / "demo_question.wav")
    ids = []
    for model_dir in (tiny_pack, tiny_pack / "Step-Audio-Tokenizer"):
        assert main(["tokenize", clip, "--json", "--model-dir", str(model_dir)]) == 0
        ids.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert ids[0] and ids[0] == ids[1]
    assert main(["tokenize", clip, "--model-dir", str(tiny_pack / "Step-Audio-Chat")]) == 2
    assert "has no Step-Audio-Tokenizer/" in capsys.readouterr().err


def test_serve_names_a_folder_that_is_no_model_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model-dir", str(tmp_path)]) == 2
    assert "has no Step-Audio-Chat/" in capsys.readouterr().err


def test_every_model_dir_option_says_both_forms_are_accepted() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {
        name: action.help
        for name, command in commands.choices.items()
        for action in command._actions
        if "--model-dir" in action.option_strings
    }
    assert set(helps) >= {"tokenize", "tts", "serve"}
    for text in helps.values():
        assert "the model root" in text and "folder" in text
