"""The safe hyperpyyaml reader: tags become records, refs resolve, nothing is imported."""

from __future__ import annotations

import pytest

from services.models.token2wav import YamlCall, YamlConfigError, load_hyperpyyaml_safe

DOC = """
__set_seed: !apply:torch.manual_seed [1986]
sample_rate: 22050
hop: 256
frames_per_second: !ref <sample_rate> / <hop>
name_prefix: !ref <sample_rate>_hz
sigma: 1e-06
model: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    output_size: 80
    rate: !ref <sample_rate>
    inner: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: !ref <model[output_size]>
        sampling_ratios: [1, 1]
    conf: !new:omegaconf.DictConfig
        content:
            t_scheduler: 'cosine'
feat: !name:matcha.utils.audio.mel_spectrogram
    hop_size: !ref <hop>
kernels: !tuple [3, 5]
copied: !copy <kernels>
danger: !new:os.system ["echo never"]
"""


def test_new_name_apply_become_records_with_arguments() -> None:
    doc = load_hyperpyyaml_safe(DOC)
    model, feat, seed = doc["model"], doc["feat"], doc["__set_seed"]
    assert isinstance(model, YamlCall) and model.kind == "new"
    assert model.target == "cosyvoice.flow.flow.MaskedDiffWithXvec"
    assert model.class_name == "MaskedDiffWithXvec"
    assert isinstance(feat, YamlCall) and feat.kind == "name" and feat.kwargs == {"hop_size": 256}
    assert isinstance(seed, YamlCall) and seed.kind == "apply" and seed.args == [1986]
    assert model.kwargs["conf"].kwargs["content"] == {"t_scheduler": "cosine"}


def test_refs_resolve_plain_nested_arithmetic_and_text() -> None:
    doc = load_hyperpyyaml_safe(DOC)
    assert doc["model"].kwargs["rate"] == 22050
    assert doc["model"].kwargs["inner"].kwargs["channels"] == 80
    assert doc["frames_per_second"] == pytest.approx(22050 / 256)
    assert doc["name_prefix"] == "22050_hz"
    assert doc["kernels"] == (3, 5) and doc["copied"] == (3, 5)


def test_exponent_without_dot_is_a_float() -> None:
    assert load_hyperpyyaml_safe(DOC)["sigma"] == pytest.approx(1e-6)


def test_named_classes_are_never_built() -> None:
    danger = load_hyperpyyaml_safe(DOC)["danger"]
    assert isinstance(danger, YamlCall) and danger.args == ["echo never"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !ref <missing>", "names no top-level key"),
        ("a: !ref <a>", "refers to itself"),
        ("a: !include:other.yaml", "!include"),
        ("a: [unclosed", "not valid YAML"),
        ("- just a list", "mapping at the top level"),
    ],
)
def test_bad_documents_raise_clear_errors(text: str, message: str) -> None:
    with pytest.raises(YamlConfigError, match=message):
        load_hyperpyyaml_safe(text)
