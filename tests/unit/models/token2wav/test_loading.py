"""from_pretrained: both folders load; broken checkpoints name the file and the tensor."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from services.models.token2wav import CheckpointError, SpeakerPrompt, Token2Wav


@pytest.fixture
def broken_copy(tmp_path: Path, vocoder_dir: Path) -> Path:
    target = tmp_path / "CosyVoice-300M-25Hz"
    shutil.copytree(vocoder_dir, target)
    return target


def _rewrite(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_music_folder_loads_with_its_own_weights(model: Token2Wav, music_dir: Path) -> None:
    music = Token2Wav.from_pretrained(music_dir)
    assert music.sample_rate_hz == 22050
    a = model.flow.state_dict()["encoder_proj.weight"]
    b = music.flow.state_dict()["encoder_proj.weight"]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("file", ["flow.pt", "hift.pt", "campplus.onnx", "cosyvoice.yaml"])
def test_missing_file_is_named(broken_copy: Path, file: str) -> None:
    (broken_copy / file).unlink()
    with pytest.raises(FileNotFoundError, match=file.replace(".", r"\.")):
        Token2Wav.from_pretrained(broken_copy)


def test_renamed_tensor_names_file_and_both_names(broken_copy: Path) -> None:
    def rename(state: dict) -> None:
        state["encoder.embed.out.0.weight_renamed"] = state.pop("encoder.embed.out.0.weight")

    _rewrite(broken_copy / "flow.pt", rename)
    with pytest.raises(CheckpointError) as info:
        Token2Wav.from_pretrained(broken_copy)
    message = str(info.value)
    assert "flow.pt" in message
    assert "missing tensors encoder.embed.out.0.weight" in message
    assert "unexpected tensors encoder.embed.out.0.weight_renamed" in message


def test_wrong_shape_names_file_tensor_and_shapes(broken_copy: Path) -> None:
    def shrink(state: dict) -> None:
        state["f0_predictor.classifier.weight"] = state["f0_predictor.classifier.weight"][:, :3]

    _rewrite(broken_copy / "hift.pt", shrink)
    with pytest.raises(
        CheckpointError, match=r"hift\.pt.*f0_predictor\.classifier\.weight.*\(1, 3\)"
    ):
        Token2Wav.from_pretrained(broken_copy)


def test_corrupt_checkpoint_is_named(broken_copy: Path) -> None:
    (broken_copy / "hift.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"hift\.pt"):
        Token2Wav.from_pretrained(broken_copy)


def test_flow_can_run_in_bfloat16(vocoder_dir: Path, speaker: SpeakerPrompt) -> None:
    bf16 = Token2Wav.from_pretrained(vocoder_dir, dtype=torch.bfloat16)
    assert bf16.flow.dtype == torch.bfloat16
    assert next(bf16.hift.parameters()).dtype == torch.float32  # HiFT stays fp32, as upstream
    short = SpeakerPrompt(speaker.prompt_codes[:10], speaker.prompt_mel[:20], speaker.embedding)
    generator = torch.Generator().manual_seed(0)
    wav = bf16.synthesize(list(range(20)), short, generator=generator, n_timesteps=1, cfg_rate=0)
    assert wav.dtype.name == "float32" and len(wav) == bf16.mel_frames(20) * 256
    assert np.isfinite(wav).all()
