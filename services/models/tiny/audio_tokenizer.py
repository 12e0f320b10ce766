"""A tiny, seeded Step-Audio-Tokenizer folder in the real layout (random weights, real formats).

    <folder>/dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
        config.yaml          FunASR config with the real field names (SANMEncoderChunkOpt)
        configuration.json   FunASR file map
        model.pt             torch state dict with FunASR names: encoder.* plus decoder/predictor
                             tensors the tokenizer must ignore
        am.mvn               Kaldi nnet text CMVN, 560-dim <AddShift>/<Rescale>
        tokens.json          ASR vocabulary (unused by the tokenizer)
    <folder>/linguistic_tokenizer.npy   (1024, output_size) float32 k-means centroids
    <folder>/speech_tokenizer_v1.onnx   whisper-like: 2 stride-2 convs (100 Hz -> 25 Hz),
                                        projection, nearest of 4096 codes

Tensor names are written out here from FunASR's SANM encoder, independently of the loader, so
loading the tiny folder checks the loader's naming. The same seed gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

from services.models import layout

N_MELS = 80
LFR_M, LFR_N = 7, 6
FEATURE_DIM = N_MELS * LFR_M  # 560
OUTPUT_SIZE = 32
HEADS = 2
LINEAR_UNITS = 64
NUM_BLOCKS = 3
KERNEL_SIZE = 11
LINGUISTIC_CODES = 1024

WHISPER_MELS = 128
SEMANTIC_CHANNELS = 48
SEMANTIC_DIM = 16
SEMANTIC_CODES = 4096
ONNX_OPSET = 17


@dataclass(frozen=True)
class ParaformerSize:
    """SANM encoder sizes (tiny by default; Paraformer-large: 512, 4, 2048, 50 blocks)."""

    output_size: int = OUTPUT_SIZE
    heads: int = HEADS
    linear_units: int = LINEAR_UNITS
    num_blocks: int = NUM_BLOCKS
    kernel_size: int = KERNEL_SIZE


TINY_PARAFORMER = ParaformerSize()


def write_tiny_audio_tokenizer(folder: Path, seed: int = 0) -> None:
    """Write the tiny tokenizer folder (``<root>/Step-Audio-Tokenizer``); < 1 MB, deterministic."""
    rng = np.random.default_rng(seed)
    paraformer = write_paraformer_files(folder, TINY_PARAFORMER, rng)
    torch.save(_state_dict(rng), paraformer / "model.pt")
    np.save(folder / layout.LINGUISTIC_CODEBOOK_FILE, sphere(rng, LINGUISTIC_CODES, OUTPUT_SIZE))
    onnx.save(_semantic_model(rng), folder / layout.SEMANTIC_TOKENIZER_FILE)


def write_paraformer_files(folder: Path, size: ParaformerSize, rng: np.random.Generator) -> Path:
    """config.yaml, configuration.json, tokens.json and am.mvn of the Paraformer folder (not
    model.pt); returns the folder."""
    paraformer = folder / layout.PARAFORMER_DIR
    paraformer.mkdir(parents=True, exist_ok=True)
    (paraformer / "config.yaml").write_text(_config_yaml(size), encoding="utf-8")
    (paraformer / "configuration.json").write_text(_configuration_json(), encoding="utf-8")
    (paraformer / "tokens.json").write_text(
        json.dumps(["<blank>", "<s>", "</s>", "你", "好", "hello", "<unk>"], ensure_ascii=False),
        encoding="utf-8",
    )
    (paraformer / "am.mvn").write_text(_am_mvn(rng), encoding="utf-8")
    return paraformer


def _config_yaml(size: ParaformerSize) -> str:
    config = {
        "model": "ParaformerStreaming",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "predictor_bias": 1},
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": size.output_size,
            "attention_heads": size.heads,
            "linear_units": size.linear_units,
            "num_blocks": size.num_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe_online",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": size.kernel_size,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": size.heads,
            "linear_units": size.linear_units,
            "num_blocks": 1,
            "kernel_size": size.kernel_size,
            "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": size.output_size,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": LFR_M,
            "lfr_n": LFR_N,
            # explicit, so FunASR (default 1.0: random dither) gives reproducible codes too
            "dither": 0.0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "input_size": FEATURE_DIM,
        "normalize": None,
    }
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _configuration_json() -> str:
    configuration = {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"token_list": "tokens.json"},
            "frontend_conf": {"cmvn_file": "am.mvn"},
        },
    }
    return json.dumps(configuration, indent=2) + "\n"


def _am_mvn(rng: np.random.Generator) -> str:
    """Kaldi nnet CMVN with fbank-like statistics (log-mel means ~8..13, std ~2.5..4)."""
    shift = np.tile(-rng.uniform(8.0, 13.0, N_MELS), LFR_M)
    scale = np.tile(1.0 / rng.uniform(2.5, 4.0, N_MELS), LFR_M)

    def vector(values: np.ndarray) -> str:
        return " ".join(f"{v:.6f}" for v in values)

    return (
        "<Nnet>\n"
        f"<Splice> {FEATURE_DIM} {FEATURE_DIM}\n[ 0 ]\n"
        f"<AddShift> {FEATURE_DIM} {FEATURE_DIM}\n<LearnRateCoef> 0 [ {vector(shift)} ]\n"
        f"<Rescale> {FEATURE_DIM} {FEATURE_DIM}\n<LearnRateCoef> 0 [ {vector(scale)} ]\n"
        "</Nnet>\n"
    )


def encoder_shapes(size: ParaformerSize = TINY_PARAFORMER) -> dict[str, tuple[int, ...]]:
    """FunASR SANMEncoderChunkOpt parameter names and shapes (encoders0 + encoders + after_norm)."""
    out, units, kernel = size.output_size, size.linear_units, size.kernel_size
    shapes: dict[str, tuple[int, ...]] = {}
    layers = [("encoders0.0", FEATURE_DIM)] + [
        (f"encoders.{i}", out) for i in range(size.num_blocks - 1)
    ]
    for prefix, in_size in layers:
        shapes |= {
            f"{prefix}.self_attn.linear_out.weight": (out, out),
            f"{prefix}.self_attn.linear_out.bias": (out,),
            f"{prefix}.self_attn.linear_q_k_v.weight": (3 * out, in_size),
            f"{prefix}.self_attn.linear_q_k_v.bias": (3 * out,),
            f"{prefix}.self_attn.fsmn_block.weight": (out, 1, kernel),
            f"{prefix}.feed_forward.w_1.weight": (units, out),
            f"{prefix}.feed_forward.w_1.bias": (units,),
            f"{prefix}.feed_forward.w_2.weight": (out, units),
            f"{prefix}.feed_forward.w_2.bias": (out,),
            f"{prefix}.norm1.weight": (in_size,),
            f"{prefix}.norm1.bias": (in_size,),
            f"{prefix}.norm2.weight": (out,),
            f"{prefix}.norm2.bias": (out,),
        }
    return shapes | {"after_norm.weight": (out,), "after_norm.bias": (out,)}


def _parameter(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if "norm" in name:  # LayerNorm: weight near 1, bias near 0
        base = 1.0 if name.endswith("weight") else 0.0
        values = base + 0.1 * rng.standard_normal(shape)
    elif name.endswith("bias"):
        values = 0.02 * rng.standard_normal(shape)
    else:  # fan-in scaled, so activations keep unit scale through the layers
        values = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    return torch.from_numpy(values.astype(np.float32))


def _state_dict(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    state = {f"encoder.{n}": _parameter(rng, n, s) for n, s in encoder_shapes().items()}
    # parts of the ASR model the tokenizer never runs; present to prove they are ignored
    extras = {
        "decoder.embed.0.weight": (7, OUTPUT_SIZE),
        "decoder.decoders.0.self_attn.fsmn_block.weight": (OUTPUT_SIZE, 1, KERNEL_SIZE),
        "decoder.output_layer.weight": (7, OUTPUT_SIZE),
        "predictor.cif_conv1d.weight": (OUTPUT_SIZE, OUTPUT_SIZE, 3),
        "predictor.cif_output.weight": (1, OUTPUT_SIZE),
    }
    state |= {name: _parameter(rng, name, shape) for name, shape in extras.items()}
    return state


def sphere(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """Points of norm sqrt(dim): where layer-normalised vectors live, so every code is reachable."""
    points = rng.standard_normal((count, dim))
    points *= np.sqrt(dim) / np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def _semantic_model(rng: np.random.Generator) -> onnx.ModelProto:
    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    codebook = sphere(rng, SEMANTIC_CODES, SEMANTIC_DIM)
    weights = {
        "conv1.weight": normal((SEMANTIC_CHANNELS, WHISPER_MELS, 3), 1 / np.sqrt(WHISPER_MELS * 3)),
        "conv1.bias": normal((SEMANTIC_CHANNELS,), 0.1),
        "conv2.weight": normal(
            (SEMANTIC_CHANNELS, SEMANTIC_CHANNELS, 3), 1 / np.sqrt(SEMANTIC_CHANNELS * 3)
        ),
        "conv2.bias": normal((SEMANTIC_CHANNELS,), 0.1),
        "proj.weight": normal((SEMANTIC_CHANNELS, SEMANTIC_DIM), 1 / np.sqrt(SEMANTIC_CHANNELS)),
        "codebook.t": np.ascontiguousarray(codebook.T),
        "codebook.half_norm": (0.5 * (codebook**2).sum(axis=1)).astype(np.float32),
        "zero": np.array(0, dtype=np.int64),
        "one": np.array(1, dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "axes1": np.array([1], dtype=np.int64),
        "sqrt_half": np.array(np.sqrt(0.5), dtype=np.float32),
        "half": np.array(0.5, dtype=np.float32),
    }
    graph = helper.make_graph(
        _semantic_nodes(),
        "tiny_speech_tokenizer_v1",
        inputs=[
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, WHISPER_MELS, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        outputs=[helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 1, "T_codes"])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph,
        producer_name="stepaudio-tiny",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _gelu(x: str, out: str) -> list[onnx.NodeProto]:
    """Exact GELU from Erf (the Gelu op needs opset 20)."""
    return [
        helper.make_node("Mul", [x, "sqrt_half"], [f"{out}.s"]),
        helper.make_node("Erf", [f"{out}.s"], [f"{out}.e"]),
        helper.make_node("Add", [f"{out}.e", "one_f"], [f"{out}.p"]),
        helper.make_node("Mul", [x, f"{out}.p"], [f"{out}.xp"]),
        helper.make_node("Mul", [f"{out}.xp", "half"], [out]),
    ]


def _semantic_nodes() -> list[onnx.NodeProto]:
    node = helper.make_node
    return [
        node("Constant", [], ["one_f"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
        # zero frames at or beyond feats_length, as a padded batch would need
        node("Shape", ["feats"], ["feats.shape"]),
        node("Gather", ["feats.shape", "axis2"], ["frames.1d"], axis=0),
        node("Squeeze", ["frames.1d", "axes0"], ["frames"]),
        node("Range", ["zero", "frames", "one"], ["positions"]),
        node("Cast", ["feats_length"], ["length"], to=TensorProto.INT64),
        node("Less", ["positions", "length"], ["valid"]),
        node("Cast", ["valid"], ["valid.f"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["valid.f", "axes0"], ["valid.1t"]),
        node("Unsqueeze", ["valid.1t", "axes1"], ["mask"]),
        node("Mul", ["feats", "mask"], ["x0"]),
        node("Conv", ["x0", "conv1.weight", "conv1.bias"], ["c1"], strides=[2], pads=[1, 1]),
        *_gelu("c1", "h1"),
        node("Conv", ["h1", "conv2.weight", "conv2.bias"], ["c2"], strides=[2], pads=[1, 1]),
        *_gelu("c2", "h2"),
        node("Transpose", ["h2"], ["h2.t"], perm=[0, 2, 1]),
        node("MatMul", ["h2.t", "proj.weight"], ["z"]),
        # nearest code: argmin |z - c|^2 = argmax (z.c - |c|^2 / 2)
        node("MatMul", ["z", "codebook.t"], ["dots"]),
        node("Sub", ["dots", "codebook.half_norm"], ["scores"]),
        node("ArgMax", ["scores"], ["codes"], axis=2, keepdims=0),
        node("Unsqueeze", ["codes", "axes1"], ["indices"]),
    ]
