"""Typed view of `cosyvoice.yaml`: the hyper-parameters token2wav builds its modules from.

Every value comes from the yaml; where the yaml leaves a constructor argument out, the default
is the one upstream's class signature has (Step-Audio `cosyvoice/**`), because that is what
hyperpyyaml would have passed. Class names are checked against the ones this package implements;
nothing named in the yaml is ever imported.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from services.models.token2wav.yaml_loader import (
    YamlCall,
    YamlConfigError,
    load_hyperpyyaml_safe,
)

CONFIG_FILE = "cosyvoice.yaml"


@dataclass(frozen=True)
class EncoderConfig:
    """wenet/espnet `ConformerEncoder` as CosyVoice constructs it."""

    input_size: int
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    input_layer: str = "conv2d"
    pos_enc_layer_type: str = "rel_pos"
    normalize_before: bool = True
    static_chunk_size: int = 0
    use_dynamic_chunk: bool = False
    macaron_style: bool = True
    selfattention_layer_type: str = "rel_selfattn"
    activation_type: str = "swish"
    use_cnn_module: bool = True
    cnn_module_kernel: int = 15
    causal: bool = False
    cnn_module_norm: str = "batch_norm"
    key_bias: bool = True


@dataclass(frozen=True)
class RegulatorConfig:
    """`InterpolateRegulator`: conv stack applied after interpolation to mel rate."""

    channels: int
    sampling_ratios: tuple[int, ...]
    out_channels: int | None = None
    groups: int = 1


@dataclass(frozen=True)
class EstimatorConfig:
    """Matcha-style `ConditionalDecoder` (1-D U-Net with transformer blocks)."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 1
    num_mid_blocks: int = 2
    num_heads: int = 4
    act_fn: str = "snake"


@dataclass(frozen=True)
class CfmConfig:
    """`ConditionalCFM` plus its `cfm_params`."""

    in_channels: int
    n_spks: int
    spk_emb_dim: int
    t_scheduler: str
    inference_cfg_rate: float
    sigma_min: float
    solver: str


@dataclass(frozen=True)
class FlowConfig:
    """`MaskedDiffWithXvec`."""

    input_size: int
    output_size: int
    spk_embed_dim: int
    vocab_size: int
    input_frame_rate: float
    mel_sample_rate_hz: int  # mel_feat_conf.sampling_rate: converts token counts to mel frames
    mel_hop_size: int  # mel_feat_conf.hop_size
    encoder: EncoderConfig
    length_regulator: RegulatorConfig
    cfm: CfmConfig
    estimator: EstimatorConfig


@dataclass(frozen=True)
class F0PredictorConfig:
    num_class: int = 1
    in_channels: int = 80
    cond_channels: int = 512


@dataclass(frozen=True)
class HiftConfig:
    """`HiFTGenerator` (NSF + iSTFT vocoder)."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    istft_n_fft: int = 16
    istft_hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_predictor: F0PredictorConfig = F0PredictorConfig()

    @property
    def samples_per_frame(self) -> int:
        total = self.istft_hop_len
        for rate in self.upsample_rates:
            total *= rate
        return total


@dataclass(frozen=True)
class MelConfig:
    """Matcha `mel_spectrogram` arguments (the yaml's `feat_extractor`)."""

    n_fft: int
    num_mels: int
    sampling_rate: int
    hop_size: int
    win_size: int
    fmin: float
    fmax: float | None
    center: bool = False


@dataclass(frozen=True)
class Token2WavConfig:
    sample_rate_hz: int
    flow: FlowConfig
    hift: HiftConfig
    feat_extractor: MelConfig


# --- parsing ---------------------------------------------------------------------------------

_FLOW_CLASSES = {"MaskedDiffWithXvec"}
_ENCODER_CLASSES = {"ConformerEncoder"}
_REGULATOR_CLASSES = {"InterpolateRegulator"}
_CFM_CLASSES = {"ConditionalCFM"}
_ESTIMATOR_CLASSES = {"ConditionalDecoder"}
_HIFT_CLASSES = {"HiFTGenerator"}
_F0_CLASSES = {"ConvRNNF0Predictor"}
_MEL_FUNCTIONS = {"mel_spectrogram"}

# MaskedDiffWithXvec's own defaults (used when the yaml does not set them)
_FLOW_DEFAULTS = {
    "input_size": 512,
    "output_size": 80,
    "spk_embed_dim": 192,
    "vocab_size": 4096,
    "input_frame_rate": 50,
}
_MEL_FEAT_DEFAULTS = {"sampling_rate": 22050, "hop_size": 256}


def load_config(folder: Path) -> Token2WavConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (token2wav needs {CONFIG_FILE} in {folder})")
    try:
        return parse_config(load_hyperpyyaml_safe(path.read_text(encoding="utf-8")))
    except YamlConfigError as exc:
        raise YamlConfigError(f"{path}: {exc}") from exc


def parse_config(tree: dict[str, Any]) -> Token2WavConfig:
    for key in ("flow", "hift", "feat_extractor"):
        if key not in tree:
            raise YamlConfigError(f"missing top-level key {key!r}")
    hift = _parse_hift(tree["hift"])
    sample_rate = int(tree.get("sample_rate", hift.sampling_rate))
    return Token2WavConfig(
        sample_rate_hz=sample_rate,
        flow=_parse_flow(tree["flow"]),
        hift=hift,
        feat_extractor=_parse_mel(tree["feat_extractor"]),
    )


def _expect_call(value: Any, where: str, kind: str, names: set[str]) -> YamlCall:
    if not isinstance(value, YamlCall) or value.kind != kind:
        raise YamlConfigError(f"{where}: expected a !{kind}: node, got {type(value).__name__}")
    if value.class_name not in names:
        raise YamlConfigError(
            f"{where}: unsupported {value.target} (token2wav implements {sorted(names)})"
        )
    if value.args:
        raise YamlConfigError(f"{where}: positional arguments are not supported")
    return value


def _build(cls: type, kwargs: dict[str, Any], where: str, **fixed: Any) -> Any:
    """Instantiate a config dataclass from yaml kwargs, ignoring training-only arguments."""
    known = {f.name for f in fields(cls)}
    picked = {k: _freeze(v) for k, v in kwargs.items() if k in known}
    picked.update(fixed)
    try:
        return cls(**picked)
    except TypeError as exc:
        raise YamlConfigError(f"{where}: {exc}") from exc


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _parse_flow(node: Any) -> FlowConfig:
    call = _expect_call(node, "flow", "new", _FLOW_CLASSES)
    kw = {**_FLOW_DEFAULTS, **call.kwargs}
    for key in ("encoder", "length_regulator", "decoder"):
        if key not in kw:
            raise YamlConfigError(f"flow: missing {key}")
    mel_conf = {**_MEL_FEAT_DEFAULTS, **(kw.get("mel_feat_conf") or {})}
    cfm_call = _expect_call(kw["decoder"], "flow.decoder", "new", _CFM_CLASSES)
    estimator_call = _expect_call(
        cfm_call.kwargs.get("estimator"), "flow.decoder.estimator", "new", _ESTIMATOR_CLASSES
    )
    return FlowConfig(
        input_size=int(kw["input_size"]),
        output_size=int(kw["output_size"]),
        spk_embed_dim=int(kw["spk_embed_dim"]),
        vocab_size=int(kw["vocab_size"]),
        input_frame_rate=float(kw["input_frame_rate"]),
        mel_sample_rate_hz=int(mel_conf["sampling_rate"]),
        mel_hop_size=int(mel_conf["hop_size"]),
        encoder=_parse_encoder(kw["encoder"]),
        length_regulator=_build(
            RegulatorConfig,
            _expect_call(
                kw["length_regulator"], "flow.length_regulator", "new", _REGULATOR_CLASSES
            ).kwargs,
            "flow.length_regulator",
        ),
        cfm=_parse_cfm(cfm_call),
        estimator=_build(EstimatorConfig, estimator_call.kwargs, "flow.decoder.estimator"),
    )


def _parse_encoder(node: Any) -> EncoderConfig:
    call = _expect_call(node, "flow.encoder", "new", _ENCODER_CLASSES)
    config: EncoderConfig = _build(EncoderConfig, call.kwargs, "flow.encoder")
    supported = {
        "input_layer": {"linear", "linear_legacy"},
        "pos_enc_layer_type": {"rel_pos_espnet", "rel_pos", "abs_pos", "no_pos"},
        "selfattention_layer_type": {"rel_selfattn", "selfattn"},
        "activation_type": {"swish", "relu", "gelu", "tanh"},
        "cnn_module_norm": {"batch_norm", "layer_norm"},
    }
    for name, allowed in supported.items():
        if getattr(config, name) not in allowed:
            raise YamlConfigError(
                f"flow.encoder.{name}={getattr(config, name)!r} is not supported "
                f"({sorted(allowed)})"
            )
    if config.static_chunk_size > 0 or config.use_dynamic_chunk or config.causal:
        raise YamlConfigError("flow.encoder: chunked/causal encoders are not supported")
    return config


def _parse_cfm(call: YamlCall) -> CfmConfig:
    params = call.kwargs.get("cfm_params")
    if isinstance(params, YamlCall):  # !new:omegaconf.DictConfig {content: {...}}
        params = params.kwargs.get("content", params.kwargs)
    if not isinstance(params, dict):
        raise YamlConfigError("flow.decoder.cfm_params: expected a mapping")
    for key in ("t_scheduler", "inference_cfg_rate"):
        if key not in params:
            raise YamlConfigError(f"flow.decoder.cfm_params: missing {key}")
    if "in_channels" not in call.kwargs:
        raise YamlConfigError("flow.decoder: missing in_channels")
    return CfmConfig(
        in_channels=int(call.kwargs["in_channels"]),
        n_spks=int(call.kwargs.get("n_spks", 1)),
        spk_emb_dim=int(call.kwargs.get("spk_emb_dim", 64)),
        t_scheduler=str(params["t_scheduler"]),
        inference_cfg_rate=float(params["inference_cfg_rate"]),
        sigma_min=float(params.get("sigma_min", 1e-4)),
        solver=str(params.get("solver", "euler")),
    )


def _parse_hift(node: Any) -> HiftConfig:
    call = _expect_call(node, "hift", "new", _HIFT_CLASSES)
    kw = dict(call.kwargs)
    istft = kw.pop("istft_params", None) or {"n_fft": 16, "hop_len": 4}
    f0_node = kw.pop("f0_predictor", None)
    if f0_node is None:
        raise YamlConfigError("hift: missing f0_predictor")
    f0 = _build(
        F0PredictorConfig,
        _expect_call(f0_node, "hift.f0_predictor", "new", _F0_CLASSES).kwargs,
        "hift.f0_predictor",
    )
    return _build(
        HiftConfig,
        kw,
        "hift",
        istft_n_fft=int(istft["n_fft"]),
        istft_hop_len=int(istft["hop_len"]),
        f0_predictor=f0,
    )


def _parse_mel(node: Any) -> MelConfig:
    call = _expect_call(node, "feat_extractor", "name", _MEL_FUNCTIONS)
    required = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax")
    missing = [k for k in required if k not in call.kwargs]
    if missing:
        raise YamlConfigError(f"feat_extractor: missing {missing}")
    return _build(MelConfig, call.kwargs, "feat_extractor")
