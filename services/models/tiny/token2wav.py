"""Tiny, seeded stand-ins for Step-Audio-TTS-3B's vocoder folders (tests and demos).

`write_tiny_token2wav(tts_folder)` writes `CosyVoice-300M-25Hz/` and `CosyVoice-300M-25Hz-Music/`
in the released layout: `cosyvoice.yaml` (hyperpyyaml, upstream's class paths and fields, tiny
sizes, 41.67 Hz tokens), `flow.pt` / `hift.pt` (state dicts with upstream's tensor names, random
weights), `campplus.onnx` (mean-pool + projection → 192), a small valid
`speech_tokenizer_v1.onnx` (inputs feats / feats_length) and the `VERSION_Vq0206Vocoder_1202`
marker. Same seed → same bytes. The weights are random but scaled so the vocoder produces
audible, mostly unclipped audio around a 150 Hz pitch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from services.models.layout import MUSIC_VOCODER_DIR, VOCODER_DIR
from services.models.token2wav.config import parse_config
from services.models.token2wav.flow import MaskedDiffWithXvec
from services.models.token2wav.hift import HiFTGenerator
from services.models.token2wav.yaml_loader import load_hyperpyyaml_safe

VERSION_MARKER = "VERSION_Vq0206Vocoder_1202"
_ONNX_OPSET = 17
_ONNX_IR_VERSION = 8

TINY_YAML = """\
# Tiny random-weight stand-in for Step-Audio-TTS-3B/{folder}/cosyvoice.yaml.
# Same classes and fields as the released CosyVoice-300M-25Hz recipe, tiny sizes.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]

sample_rate: 22050
text_encoder_input_size: 32
spk_embed_dim: 192

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: !ref <text_encoder_input_size>
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 5121
    input_frame_rate: 41.666666666666664  # 5 mixed tokens per 120 ms
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: 32
        attention_heads: 2
        linear_units: 64
        num_blocks: 2
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: !ref <text_encoder_input_size>
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [32, 32]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 1
            num_heads: 2
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 32
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 32

# upstream Step-Audio ships Matcha's mel under cosyvoice.matcha (no top-level matcha package)
feat_extractor: !name:cosyvoice.matcha.audio.mel_spectrogram
    n_fft: 1024
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 256
    win_size: 1024
    fmin: 0
    fmax: 8000
    center: False
"""


def write_tiny_token2wav(tts_folder: Path, seed: int = 0) -> None:
    """Write both tiny vocoder folders under `tts_folder` (the Step-Audio-TTS-3B folder)."""
    for offset, name in enumerate((VOCODER_DIR, MUSIC_VOCODER_DIR)):
        _write_folder(Path(tts_folder) / name, seed * 2 + offset)


def _write_folder(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    yaml_text = TINY_YAML.format(folder=folder.name)
    (folder / "cosyvoice.yaml").write_text(yaml_text, encoding="utf-8")
    config = parse_config(load_hyperpyyaml_safe(yaml_text))
    generator = torch.Generator().manual_seed(10_000 + seed)
    flow_state = _random_state(MaskedDiffWithXvec(config.flow), generator)
    hift_state = _random_state(HiFTGenerator(config.hift), generator)
    _shape_hift(hift_state)
    torch.save(flow_state, folder / "flow.pt")
    torch.save(hift_state, folder / "hift.pt")
    rng = np.random.default_rng(20_000 + seed)
    onnx.save(_campplus_model(rng), str(folder / "campplus.onnx"))
    onnx.save(_speech_tokenizer_model(rng), str(folder / "speech_tokenizer_v1.onnx"))
    (folder / VERSION_MARKER).write_bytes(b"")


def _random_state(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fan-in scaled normal weights, small biases, unit norms, weight_g = ‖weight_v‖."""
    template = module.state_dict()
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d)
    norm_weights = {
        f"{name}.weight" for name, sub in module.named_modules() if isinstance(sub, norm_types)
    }
    state: dict[str, torch.Tensor] = {}
    for name in sorted(template):
        tensor, leaf = template[name], name.rsplit(".", 1)[-1]
        if leaf == "weight_g":
            continue  # derived from weight_v below
        if leaf == "num_batches_tracked":
            state[name] = torch.zeros_like(tensor)
        elif leaf in ("running_var", "alpha") or name in norm_weights:
            state[name] = torch.ones_like(tensor)
        elif tensor.dim() < 2:
            state[name] = torch.randn(tensor.shape, generator=generator) * 0.02
        else:
            state[name] = torch.randn(tensor.shape, generator=generator) / math.sqrt(
                tensor[0].numel()
            )
    for name in template:
        if name.endswith("weight_g"):
            v = state[name.removesuffix("weight_g") + "weight_v"]
            state[name] = v.norm(dim=(1, 2), keepdim=True)
    return {name: state[name].contiguous() for name in template}


def _shape_hift(state: dict[str, torch.Tensor]) -> None:
    """Steer random HiFT weights to sensible audio: f0 near 150 Hz, magnitudes ≈ e^-2."""
    state["f0_predictor.classifier.bias"] = torch.full_like(
        state["f0_predictor.classifier.bias"], 150.0
    )
    state["f0_predictor.classifier.weight"] = state["f0_predictor.classifier.weight"] * 20.0
    state["conv_post.weight_g"] = state["conv_post.weight_g"] * 0.3
    bias = state["conv_post.bias"].clone()
    n_mag = bias.numel() // 2
    bias[:n_mag] = -2.0
    state["conv_post.bias"] = bias


def _campplus_model(rng: np.random.Generator) -> onnx.ModelProto:
    """(1, T, 80) fbank → mean over time → 80×192 projection → tanh → (1, 192)."""
    weight = (rng.standard_normal((80, 192)) / math.sqrt(80)).astype(np.float32)
    bias = (rng.standard_normal(192) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "proj_w"], ["projected"]),
        helper.make_node("Add", ["projected", "proj_b"], ["shifted"]),
        helper.make_node("Tanh", ["shifted"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_campplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
        initializer=[
            numpy_helper.from_array(weight, "proj_w"),
            numpy_helper.from_array(bias, "proj_b"),
        ],
    )
    return _finish_model(graph)


def _speech_tokenizer_model(rng: np.random.Generator) -> onnx.ModelProto:
    """feats (1, 128, T) + feats_length (1,) → indices (1, T) int32 (argmax of a projection)."""
    weight = rng.standard_normal((128, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["feats"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["frames", "codebook"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["argmax"], axis=2, keepdims=0),
        helper.make_node("Cast", ["argmax"], ["indices"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_speech_tokenizer_v1",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT32, [1, "T"])],
        initializer=[numpy_helper.from_array(weight, "codebook")],
    )
    return _finish_model(graph)


def _finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _ONNX_OPSET)],
        producer_name="stepaudio-tiny",
    )
    model.ir_version = _ONNX_IR_VERSION
    onnx.checker.check_model(model)
    return model
