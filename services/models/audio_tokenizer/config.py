"""The Paraformer folder's FunASR configuration: which files to read and the model shapes.

FunASR resolves files through ``configuration.json`` (``file_path_metas``) and takes the model
hyper-parameters from ``config.yaml`` (``encoder_conf``, ``frontend_conf``). Only what the
streaming encoder needs is read; decoder/predictor settings are ignored like the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.models.audio_tokenizer.errors import CheckpointError, require_file

CONFIGURATION_FILE = "configuration.json"
DEFAULT_CONFIG_FILE = "config.yaml"
DEFAULT_MODEL_FILE = "model.pt"
DEFAULT_CMVN_FILE = "am.mvn"

SUPPORTED_ENCODER = "SANMEncoderChunkOpt"
SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class FrontendConfig:
    """WavFrontendOnline settings (Kaldi fbank, low frame rate stacking)."""

    sample_rate_hz: int = SAMPLE_RATE_HZ
    window: str = "hamming"
    n_mels: int = 80
    frame_length_ms: int = 25
    frame_shift_ms: int = 10
    lfr_m: int = 7
    lfr_n: int = 6
    dither: float = 1.0  # as configured; the tokenizer always extracts with dither 0

    @property
    def frame_length_samples(self) -> int:
        return self.frame_length_ms * self.sample_rate_hz // 1000

    @property
    def frame_shift_samples(self) -> int:
        return self.frame_shift_ms * self.sample_rate_hz // 1000

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m


@dataclass(frozen=True)
class EncoderConfig:
    """SANMEncoderChunkOpt hyper-parameters (FunASR ``encoder_conf``)."""

    input_size: int
    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    kernel_size: int
    sanm_shift: int
    normalize_before: bool


@dataclass(frozen=True)
class ParaformerConfig:
    folder: Path
    config_file: Path
    model_file: Path
    cmvn_file: Path
    frontend: FrontendConfig
    encoder: EncoderConfig


def load_paraformer_config(folder: Path) -> ParaformerConfig:
    metas = _file_path_metas(folder)
    config_file = require_file(folder / metas.get("config", DEFAULT_CONFIG_FILE))
    config = _read_yaml(config_file)
    frontend = _frontend_config(config, config_file)
    cmvn_name = (metas.get("frontend_conf") or {}).get("cmvn_file") or (
        config.get("frontend_conf") or {}
    ).get("cmvn_file")
    return ParaformerConfig(
        folder=folder,
        config_file=config_file,
        model_file=require_file(folder / metas.get("init_param", DEFAULT_MODEL_FILE)),
        cmvn_file=require_file(folder / Path(cmvn_name or DEFAULT_CMVN_FILE).name),
        frontend=frontend,
        encoder=_encoder_config(config, config_file, frontend.feature_dim),
    )


def _file_path_metas(folder: Path) -> dict[str, Any]:
    """File names from configuration.json; FunASR falls back to the defaults without it."""
    path = folder / CONFIGURATION_FILE
    if not path.is_file():
        return {}
    try:
        metas = json.loads(path.read_text(encoding="utf-8")).get("file_path_metas", {})
    except (OSError, UnicodeError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(path, f"cannot read FunASR configuration: {exc}") from exc
    if not isinstance(metas, dict):
        raise CheckpointError(path, "file_path_metas must be an object")
    return metas


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError) as exc:
        raise CheckpointError(path, f"cannot parse YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a YAML mapping at the top level")
    return data


def _section(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, dict):
        raise CheckpointError(path, f"missing section '{name}'")
    return section


def _field(section: dict[str, Any], name: str, path: Path, kind: type, default: Any = None) -> Any:
    value = section.get(name, default)
    if value is None:
        raise CheckpointError(path, f"missing field '{name}'")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"field '{name}' is not a {kind.__name__}: {value!r}") from exc


def _frontend_config(config: dict[str, Any], path: Path) -> FrontendConfig:
    conf = _section(config, "frontend_conf", path)
    frontend = FrontendConfig(
        sample_rate_hz=_field(conf, "fs", path, int, SAMPLE_RATE_HZ),
        window=_field(conf, "window", path, str, "hamming"),
        n_mels=_field(conf, "n_mels", path, int, 80),
        frame_length_ms=_field(conf, "frame_length", path, int, 25),
        frame_shift_ms=_field(conf, "frame_shift", path, int, 10),
        lfr_m=_field(conf, "lfr_m", path, int, 1),
        lfr_n=_field(conf, "lfr_n", path, int, 1),
        dither=_field(conf, "dither", path, float, 1.0),
    )
    if frontend.sample_rate_hz != SAMPLE_RATE_HZ:
        raise CheckpointError(path, f"frontend_conf.fs must be {SAMPLE_RATE_HZ}")
    return frontend


def _encoder_config(config: dict[str, Any], path: Path, feature_dim: int) -> EncoderConfig:
    if config.get("encoder") != SUPPORTED_ENCODER:
        raise CheckpointError(
            path, f"encoder is {config.get('encoder')!r}; only {SUPPORTED_ENCODER} is supported"
        )
    conf = _section(config, "encoder_conf", path)
    _expect(conf, "input_layer", "pe_online", path)
    _expect(conf, "selfattention_layer_type", "sanm", path)
    _expect(conf, "positionwise_layer_type", "linear", path)
    _expect(conf, "concat_after", False, path)
    encoder = EncoderConfig(
        input_size=_field(config, "input_size", path, int, feature_dim),
        output_size=_field(conf, "output_size", path, int),
        attention_heads=_field(conf, "attention_heads", path, int),
        linear_units=_field(conf, "linear_units", path, int),
        num_blocks=_field(conf, "num_blocks", path, int),
        kernel_size=_field(conf, "kernel_size", path, int, 11),
        sanm_shift=_field(conf, "sanm_shfit", path, int, 0),  # FunASR's spelling
        normalize_before=_field(conf, "normalize_before", path, bool, True),
    )
    if encoder.input_size != feature_dim:
        raise CheckpointError(
            path, f"input_size {encoder.input_size} != n_mels*lfr_m = {feature_dim}"
        )
    if encoder.output_size % encoder.attention_heads or encoder.num_blocks < 1:
        raise CheckpointError(path, "output_size must divide by attention_heads; num_blocks >= 1")
    return encoder


def _expect(conf: dict[str, Any], name: str, wanted: Any, path: Path) -> None:
    """Reject settings this implementation does not cover instead of silently mis-computing."""
    if name in conf and conf[name] != wanted:
        raise CheckpointError(path, f"encoder_conf.{name}={conf[name]!r} is not supported")
