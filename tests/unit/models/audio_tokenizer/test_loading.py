"""Loading the tokenizer folder: layout, strict checks and messages that name the culprit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from services.models import layout
from services.models.audio_tokenizer import AudioTokenizer, CheckpointError, resolve_tokenizer_dir

PARAFORMER = layout.PARAFORMER_DIR


@pytest.fixture
def folder(tiny_tokenizer_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny tokenizer folder to break."""
    copy = tmp_path / layout.TOKENIZER_DIR
    shutil.copytree(tiny_tokenizer_dir, copy)
    return copy


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / PARAFORMER / "model.pt", weights_only=True)


def save_state(folder: Path, state: object) -> None:
    torch.save(state, folder / PARAFORMER / "model.pt")


def test_loads_real_layout_and_ignores_decoder_and_predictor(tiny_tokenizer_dir: Path) -> None:
    state = load_state(tiny_tokenizer_dir)
    assert any(k.startswith("decoder.") for k in state)
    assert any(k.startswith("predictor.") for k in state)
    tokenizer = AudioTokenizer.from_pretrained(tiny_tokenizer_dir, num_threads=1)
    encoder_keys = {f"encoder.{k}" for k in tokenizer.linguistic.encoder.state_dict()}
    assert encoder_keys == {k for k in state if k.startswith("encoder.")}
    assert tokenizer.linguistic.config.encoder.num_blocks == 3


@pytest.mark.parametrize(
    "relative",
    [
        f"{PARAFORMER}/config.yaml",
        f"{PARAFORMER}/model.pt",
        f"{PARAFORMER}/am.mvn",
        layout.LINGUISTIC_CODEBOOK_FILE,
        layout.SEMANTIC_TOKENIZER_FILE,
    ],
)
def test_missing_file_is_named(folder: Path, relative: str) -> None:
    (folder / relative).unlink()
    with pytest.raises(CheckpointError) as error:
        AudioTokenizer.from_pretrained(folder)
    assert error.value.path == folder / relative
    assert relative.split("/")[-1] in str(error.value) and "missing" in str(error.value)


def test_renamed_tensor_is_named(folder: Path) -> None:
    state = load_state(folder)
    name = "encoder.encoders.1.self_attn.fsmn_block.weight"
    state["encoder.encoders.1.self_attn.fsmn.weight"] = state.pop(name)
    save_state(folder, state)
    with pytest.raises(CheckpointError) as error:
        AudioTokenizer.from_pretrained(folder)
    assert error.value.tensor == name
    assert name in str(error.value) and "model.pt" in str(error.value)


def test_wrong_shape_is_named(folder: Path) -> None:
    state = load_state(folder)
    name = "encoder.encoders0.0.self_attn.linear_q_k_v.weight"
    state[name] = state[name][:, :100]
    save_state(folder, state)
    with pytest.raises(CheckpointError, match=r"linear_q_k_v\.weight.*\(96, 100\)"):
        AudioTokenizer.from_pretrained(folder)


def test_config_size_mismatch_reports_the_tensor(folder: Path) -> None:
    config_path = folder / PARAFORMER / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["encoder_conf"]["num_blocks"] = 4
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"encoder\.encoders\.2\..*missing tensor"):
        AudioTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_and_ddp_prefixed_state_dicts_load(folder: Path, wrapper: str) -> None:
    state = {f"module.{k}": v for k, v in load_state(folder).items()}
    save_state(folder, {wrapper: state, "epoch": 3})
    tokenizer = AudioTokenizer.from_pretrained(folder)
    assert len(tokenizer.tokenize(np.full(16_000, 0.1, np.float32), 16_000)) > 0


def test_unsupported_encoder_type_is_refused(folder: Path) -> None:
    config_path = folder / PARAFORMER / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["encoder"] = "ConformerEncoder"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match="config.yaml.*ConformerEncoder"):
        AudioTokenizer.from_pretrained(folder)


def test_codebook_shape_must_match_encoder(folder: Path) -> None:
    np.save(folder / layout.LINGUISTIC_CODEBOOK_FILE, np.zeros((1024, 8), np.float32))
    with pytest.raises(CheckpointError, match=r"linguistic_tokenizer\.npy.*\(1024, 8\)"):
        AudioTokenizer.from_pretrained(folder)


def test_cmvn_dimension_must_match_features(folder: Path) -> None:
    path = folder / PARAFORMER / "am.mvn"
    path.write_text(path.read_text().replace("560 560", "80 80"))
    with pytest.raises(CheckpointError, match=r"am\.mvn.*AddShift"):
        AudioTokenizer.from_pretrained(folder)


def test_corrupt_checkpoint_is_named(folder: Path) -> None:
    (folder / PARAFORMER / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"model\.pt.*cannot load"):
        AudioTokenizer.from_pretrained(folder)


def test_corrupt_onnx_is_named(folder: Path) -> None:
    (folder / layout.SEMANTIC_TOKENIZER_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"speech_tokenizer_v1\.onnx.*cannot load"):
        AudioTokenizer.from_pretrained(folder)


def test_configuration_json_file_map_is_followed(folder: Path) -> None:
    paraformer = folder / PARAFORMER
    (paraformer / "model.pt").rename(paraformer / "weights.pt")
    configuration = (paraformer / "configuration.json").read_text()
    (paraformer / "configuration.json").write_text(configuration.replace("model.pt", "weights.pt"))
    AudioTokenizer.from_pretrained(folder)


def test_model_root_is_resolved_but_not_loaded_directly(tiny_model_root: Path) -> None:
    assert resolve_tokenizer_dir(tiny_model_root) == tiny_model_root / layout.TOKENIZER_DIR
    assert (
        resolve_tokenizer_dir(tiny_model_root / layout.TOKENIZER_DIR).name == layout.TOKENIZER_DIR
    )
    with pytest.raises(CheckpointError, match="model root"):
        AudioTokenizer.from_pretrained(tiny_model_root)
    with pytest.raises(CheckpointError, match="does not exist"):
        AudioTokenizer.from_pretrained(tiny_model_root / "nowhere")


def test_configured_dither_is_read_logged_and_not_applied(
    folder: Path, demo_audio: tuple[np.ndarray, int], caplog: pytest.LogCaptureFixture
) -> None:
    """The tiny config states dither 0 (so FunASR is deterministic on it too); a configured
    non-zero dither is reported at load, and the codes stay those of dither 0."""
    samples, rate = demo_audio
    config_path = folder / PARAFORMER / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["frontend_conf"]["dither"] == 0.0
    without = AudioTokenizer.from_pretrained(folder)
    assert without.linguistic.config.frontend.dither == 0.0
    config["frontend_conf"]["dither"] = 1.0
    config_path.write_text(yaml.safe_dump(config))
    with caplog.at_level("INFO", logger="services.models.audio_tokenizer.linguistic"):
        dithered = AudioTokenizer.from_pretrained(folder)
    assert dithered.linguistic.config.frontend.dither == 1.0
    assert "dither is 1" in caplog.text
    assert dithered.tokenize(samples, rate) == without.tokenize(samples, rate)
