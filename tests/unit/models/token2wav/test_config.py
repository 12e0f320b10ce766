"""cosyvoice.yaml → typed config: values from the yaml, upstream defaults, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.models.tiny.token2wav import TINY_YAML
from services.models.token2wav import Token2WavConfig, YamlConfigError, load_config
from services.models.token2wav.config import parse_config
from services.models.token2wav.yaml_loader import load_hyperpyyaml_safe


def _parse(text: str) -> Token2WavConfig:
    return parse_config(load_hyperpyyaml_safe(text))


def test_tiny_yaml_fields_reach_the_config(vocoder_dir: Path) -> None:
    config = load_config(vocoder_dir)
    flow = config.flow
    assert config.sample_rate_hz == 22050
    assert flow.vocab_size >= 5120 and flow.input_frame_rate == pytest.approx(5 / 0.12)
    assert flow.encoder.pos_enc_layer_type == "rel_pos_espnet"
    assert not flow.encoder.use_cnn_module and not flow.encoder.macaron_style
    assert flow.cfm.t_scheduler == "cosine" and flow.cfm.inference_cfg_rate == pytest.approx(0.7)
    assert flow.estimator.channels == (32, 32) and flow.estimator.act_fn == "gelu"
    assert config.hift.samples_per_frame == 256 and config.hift.istft_n_fft == 16
    assert config.feat_extractor.fmax == 8000 and not config.feat_extractor.center


def test_missing_values_take_upstream_class_defaults() -> None:
    text = TINY_YAML.format(folder="x").replace("            num_mid_blocks: 1\n", "")
    rate_line = "    input_frame_rate: 41.666666666666664  # 5 mixed tokens per 120 ms\n"
    assert rate_line in text
    text = text.replace(rate_line, "")
    config = _parse(text)
    assert config.flow.estimator.num_mid_blocks == 2  # ConditionalDecoder's default
    assert config.flow.input_frame_rate == 50  # MaskedDiffWithXvec's default
    assert config.flow.mel_hop_size == 256 and config.flow.mel_sample_rate_hz == 22050


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("encoder.ConformerEncoder", "encoder.TransformerEncoder", "unsupported"),
        ("input_layer: 'linear'", "input_layer: 'conv2d'", "input_layer"),
        ("t_scheduler: 'cosine'", "nothing: 0", "t_scheduler"),
        ("feat_extractor: !name:", "feat_extractor: !new:", "expected a !name: node"),
    ],
)
def test_unsupported_or_incomplete_yaml_is_refused(old: str, new: str, message: str) -> None:
    text = TINY_YAML.format(folder="x")
    assert old in text
    with pytest.raises(YamlConfigError, match=message):
        _parse(text.replace(old, new))


def test_missing_yaml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cosyvoice.yaml"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "target",
    [
        "cosyvoice.matcha.audio.mel_spectrogram",  # upstream Step-Audio ships it (tiny pack)
        "cosyvoice.utils.audio.mel_spectrogram",  # the same function, also in Step-Audio
        "matcha.utils.audio.mel_spectrogram",  # CosyVoice-300M recipes (matcha-tts package)
    ],
)
def test_feat_extractor_paths_of_released_folders_are_accepted(target: str) -> None:
    text = TINY_YAML.format(folder="x")
    written = "!name:cosyvoice.matcha.audio.mel_spectrogram"
    assert written in text
    config = _parse(text.replace(written, f"!name:{target}"))
    assert config.feat_extractor == _parse(text).feat_extractor
    assert config.feat_extractor.n_fft == 1024 and config.feat_extractor.hop_size == 256
