"""The dummy pack: every Step-Audio folder at the released sizes, random weights.

``write_dummy_pack(root)`` writes the same layout as the tiny pack (services/models/tiny),
loadable by the same loaders as the real checkpoints, at the sizes of the released models:

    Step-Audio-TTS-3B/      Step1, 3072 hidden, 32 layers, 48 heads, 4 KV groups, FFN 8192,
                            vocab 74 752, untied lm_head (3.53 B parameters, 7.06 GB bf16)
      CosyVoice-300M-25Hz{,-Music}/  flow 105 M + HiFT 20.5 M parameters (the recipe sizes),
                            campplus.onnx (a 6.6 M-parameter convolutional stand-in with CAM++'s
                            input and output), speech_tokenizer_v1.onnx (small; TTS never runs it)
    Step-Audio-Chat/        a stand-in at Step-Audio-Chat's width (12 288 hidden, 96 heads,
                            8 KV groups, FFN 31 232) with `chat_layers` layers (88 in the release)
    Step-Audio-Tokenizer/   Paraformer-large SANM encoder (512 wide, 4 heads, FFN 2048,
                            50 blocks), linguistic_tokenizer.npy (1024 × 512), and a
                            speech_tokenizer_v1-size ONNX (whisper-like: 2 convs + 6 layers at
                            1280 wide, 130 M parameters)
    speakers/               the bundled prompt clip, as the tiny pack

Random weights are fan-in scaled so activations keep their scale; the LMs get the tiny pack's
steering (one hidden dimension constant, `lm_head` column 0 favouring the ids the model emits),
so they emit audio ids (TTS) or text pieces (Chat) rather than any id. Large tensors are drawn
on `device` (a GPU writes the pack in seconds; the disk is then the limit). `DummySizes.shrunk()`
gives the same writers small sizes, for tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from services.models import layout
from services.models.step1.config import CHAT_130B_SHAPE, TTS_3B_SHAPE, Step1Config
from services.models.step1.model import Step1ForCausalLM
from services.models.tiny import audio_tokenizer as tiny_tokenizer
from services.models.tiny import token2wav as tiny_vocoder
from services.models.tiny import write_speakers
from services.models.tiny.lm import (
    CONFIGURATION_STEP1,
    EOT_ID,
    TinyLmSpec,
    _favoured_ids,
    _write_shards,
    chat_spec,
    tts_spec,
)
from services.models.tiny.text_tokenizer import write_text_tokenizer
from services.models.token2wav.config import parse_config
from services.models.token2wav.flow import MaskedDiffWithXvec
from services.models.token2wav.hift import HiFTGenerator
from services.models.token2wav.yaml_loader import load_hyperpyyaml_safe

CHAT_LAYERS_DEFAULT = 4
SHARD_BYTES = 5 * 2**30  # safetensors shards of at most ~5 GiB, as the released repos

# tiny vocoder yaml → CosyVoice-300M recipe sizes (the released cosyvoice.yaml's values)
VOCODER_RELEASED = (
    ("text_encoder_input_size: 32", "text_encoder_input_size: 512"),
    ("output_size: 32\n", "output_size: 512\n"),
    ("attention_heads: 2\n", "attention_heads: 8\n"),
    ("linear_units: 64\n", "linear_units: 2048\n"),
    ("num_blocks: 2\n", "num_blocks: 6\n"),
    ("sampling_ratios: [1, 1]", "sampling_ratios: [1, 1, 1, 1]"),
    ("channels: [32, 32]", "channels: [256, 256]"),
    ("attention_head_dim: 16", "attention_head_dim: 64"),
    ("n_blocks: 1\n", "n_blocks: 4\n"),
    ("num_mid_blocks: 1\n", "num_mid_blocks: 12\n"),
    ("num_heads: 2\n", "num_heads: 8\n"),
    ("base_channels: 32", "base_channels: 512"),
    ("cond_channels: 32", "cond_channels: 512"),
)


@dataclass(frozen=True)
class SemanticSize:
    """speech_tokenizer_v1 (S3Tokenizer v1, 25 Hz): whisper-like encoder + nearest code."""

    width: int = 1280
    heads: int = 20
    layers: int = 6
    codes: int = 4096


@dataclass(frozen=True)
class CampplusSize:
    channels: int = 512
    layers: int = 8


@dataclass(frozen=True)
class DummySizes:
    tts: dict[str, int] = field(default_factory=lambda: dict(TTS_3B_SHAPE))
    chat: dict[str, int] = field(
        default_factory=lambda: CHAT_130B_SHAPE | {"num_hidden_layers": CHAT_LAYERS_DEFAULT}
    )
    vocoder: tuple[tuple[str, str], ...] = VOCODER_RELEASED
    paraformer: tiny_tokenizer.ParaformerSize = tiny_tokenizer.ParaformerSize(
        output_size=512, heads=4, linear_units=2048, num_blocks=50, kernel_size=11
    )
    semantic: SemanticSize = SemanticSize()
    campplus: CampplusSize = CampplusSize()

    def with_chat_layers(self, layers: int) -> DummySizes:
        if layers < 1:
            raise ValueError("the Chat stand-in needs at least one layer")
        return dataclasses.replace(self, chat=self.chat | {"num_hidden_layers": layers})

    @classmethod
    def shrunk(cls) -> DummySizes:
        """Small sizes through the same writers (tests): every field differs from the tiny
        pack's where the tiny pack has one, so the size plumbing is exercised."""
        step1 = {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_attention_heads": 4,
            "num_attention_groups": 2,
            "num_hidden_layers": 2,
            "vocab_size": TTS_3B_SHAPE["vocab_size"],
        }
        vocoder = tuple(
            (old, new)
            for old, new in zip(
                (old for old, _ in VOCODER_RELEASED),
                (
                    "text_encoder_input_size: 48",
                    "output_size: 48\n",
                    "attention_heads: 4\n",
                    "linear_units: 96\n",
                    "num_blocks: 3\n",
                    "sampling_ratios: [1, 1, 1]",
                    "channels: [48, 48]",
                    "attention_head_dim: 12",
                    "n_blocks: 2\n",
                    "num_mid_blocks: 2\n",
                    "num_heads: 4\n",
                    "base_channels: 64",
                    "cond_channels: 48",
                ),
                strict=True,
            )
        )
        return cls(
            tts=step1,
            chat=step1 | {"num_hidden_layers": 1, "hidden_size": 96, "intermediate_size": 128},
            vocoder=vocoder,
            paraformer=tiny_tokenizer.ParaformerSize(48, 4, 96, 3, 11),
            semantic=SemanticSize(width=64, heads=4, layers=2, codes=4096),
            campplus=CampplusSize(channels=32, layers=2),
        )


def write_dummy_pack(
    root: Path,
    sizes: DummySizes | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Write the pack under `root`; returns seconds per part (and the bytes written)."""
    import time

    sizes = sizes or DummySizes()
    device = torch.device(device)
    root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        fn(*args)
        seconds[name] = time.perf_counter() - started

    timed("tts_lm", write_step1, layout.tts_dir(root), sizes.tts, tts_spec(), seed + 2, device)
    timed("vocoders", write_vocoders, layout.tts_dir(root), sizes, seed + 3)
    timed("tokenizer", write_tokenizer, layout.tokenizer_dir(root), sizes, seed + 4, device)
    timed("speakers", write_speakers, layout.speakers_dir(root))
    timed("chat_lm", write_step1, layout.chat_dir(root), sizes.chat, chat_spec(), seed + 1, device)
    seconds["bytes"] = float(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()))
    return seconds


# --- Step1 LMs ---------------------------------------------------------------------------------


def write_step1(
    folder: Path, shape: dict[str, Any], spec: TinyLmSpec, seed: int, device: torch.device
) -> None:
    """config.json, configuration_step1.py, sharded bf16 safetensors + index, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    config = Step1Config(**shape, max_seq_len=spec.config.max_seq_len)
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    (folder / "configuration_step1.py").write_text(CONFIGURATION_STEP1)
    state = step1_state(config, dataclasses.replace(spec, config=config), seed, device)
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_shards(folder, state, shards=max(1, math.ceil(total / SHARD_BYTES)))
    write_text_tokenizer(folder, model_max_length=config.max_seq_len)


def step1_state(
    config: Step1Config, spec: TinyLmSpec, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Fan-in scaled bf16 weights drawn on `device`, steered as the tiny pack's (see module
    docstring); returned on the CPU (safetensors writes from host memory)."""
    generator = torch.Generator(device).manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Step1ForCausalLM(config).state_dict().items()}
    hidden = config.hidden_size
    embed_std = 0.02
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            tensor = torch.ones(shape, device=device)
        else:
            std = embed_std if name == "model.embed_tokens.weight" else 1 / math.sqrt(shape[-1])
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std *= 0.2 / math.sqrt(config.num_hidden_layers)  # small residual branches
            tensor = torch.randn(shape, generator=generator, device=device) * std
        state[name] = tensor
    state["model.embed_tokens.weight"][:, 0] = 1.0
    # after RMSNorm, dimension 0 carries about 1 / rms ≈ sqrt(hidden / (1 + hidden · std²))
    carrier = math.sqrt(hidden / (1 + hidden * embed_std**2))
    favoured = _favoured_ids(spec).to(device)
    head = state["lm_head.weight"]
    head[:, 0] = torch.where(favoured, 1.0, -1.0) * (8.0 / carrier)  # ≈ ±8 logits apart
    # EOT about 1 in 400 steps against ~5 000 favoured ids: margin ln(5 000 / 400) ≈ 2.5
    head[EOT_ID, 0] = (8.0 + 2.5) / carrier
    head[EOT_ID, 1:] = 0.0
    return {k: v.to(torch.bfloat16).cpu().contiguous() for k, v in state.items()}


# --- vocoder folders -----------------------------------------------------------------------------


def vocoder_yaml(folder_name: str, replacements: tuple[tuple[str, str], ...]) -> str:
    text = tiny_vocoder.TINY_YAML.format(folder=folder_name)
    for old, new in replacements:
        if old not in text:
            raise RuntimeError(f"the tiny vocoder yaml changed: {old!r} not found")
        text = text.replace(old, new)
    return text.replace("Tiny random-weight stand-in", "Random-weight stand-in")


def write_vocoders(tts_folder: Path, sizes: DummySizes, seed: int) -> None:
    for offset, name in enumerate((layout.VOCODER_DIR, layout.MUSIC_VOCODER_DIR)):
        write_vocoder(tts_folder / name, sizes, seed * 2 + offset)


def write_vocoder(folder: Path, sizes: DummySizes, seed: int) -> dict[str, float]:
    """cosyvoice.yaml, flow.pt, hift.pt (fp32, as released), campplus.onnx,
    speech_tokenizer_v1.onnx (the tiny one: TTS loads none of it) and the version marker;
    returns M parameters of flow and HiFT."""
    folder.mkdir(parents=True, exist_ok=True)
    text = vocoder_yaml(folder.name, sizes.vocoder)
    (folder / "cosyvoice.yaml").write_text(text, encoding="utf-8")
    config = parse_config(load_hyperpyyaml_safe(text))
    generator = torch.Generator().manual_seed(10_000 + seed)
    flow_state = tiny_vocoder._random_state(MaskedDiffWithXvec(config.flow), generator)
    hift_state = tiny_vocoder._random_state(HiFTGenerator(config.hift), generator)
    tiny_vocoder._shape_hift(hift_state)
    torch.save(flow_state, folder / "flow.pt")
    torch.save(hift_state, folder / "hift.pt")
    rng = np.random.default_rng(20_000 + seed)
    onnx.save(campplus_model(rng, sizes.campplus), str(folder / "campplus.onnx"))
    onnx.save(tiny_vocoder._speech_tokenizer_model(rng), str(folder / "speech_tokenizer_v1.onnx"))
    (folder / tiny_vocoder.VERSION_MARKER).write_bytes(b"")
    return {
        "flow_m_params": sum(t.numel() for t in flow_state.values()) / 1e6,
        "hift_m_params": sum(t.numel() for t in hift_state.values()) / 1e6,
    }


def campplus_model(rng: np.random.Generator, size: CampplusSize) -> onnx.ModelProto:
    """(1, T, 80) fbank → conv stack (k5 then k3 residual, ReLU) → mean over time → (1, 192)."""
    c = size.channels
    weights = {
        "conv0.w": _normal(rng, (c, 80, 5), 1 / math.sqrt(80 * 5)),
        "conv0.b": np.zeros(c, np.float32),
        "proj.w": _normal(rng, (c, 192), 1 / math.sqrt(c)),
        "proj.b": _normal(rng, (192,), 0.1),
    }
    node = helper.make_node
    nodes = [
        node("Transpose", ["input"], ["x.t"], perm=[0, 2, 1]),
        node("Conv", ["x.t", "conv0.w", "conv0.b"], ["c0"], pads=[2, 2]),
        node("Relu", ["c0"], ["h0"]),
    ]
    for i in range(size.layers):
        weights[f"conv{i + 1}.w"] = _normal(rng, (c, c, 3), 0.5 / math.sqrt(c * 3))
        weights[f"conv{i + 1}.b"] = np.zeros(c, np.float32)
        nodes += [
            node("Conv", [f"h{i}", f"conv{i + 1}.w", f"conv{i + 1}.b"], [f"c{i + 1}"], pads=[1, 1]),
            node("Relu", [f"c{i + 1}"], [f"r{i + 1}"]),
            node("Add", [f"h{i}", f"r{i + 1}"], [f"h{i + 1}"]),
        ]
    nodes += [
        node("ReduceMean", [f"h{size.layers}"], ["pooled"], axes=[2], keepdims=0),
        node("MatMul", ["pooled", "proj.w"], ["projected"]),
        node("Add", ["projected", "proj.b"], ["shifted"]),
        node("Tanh", ["shifted"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dummy_campplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return _finish(graph)


# --- tokenizer folder ----------------------------------------------------------------------------


def write_tokenizer(folder: Path, sizes: DummySizes, seed: int, device: torch.device) -> None:
    """Paraformer folder (encoder at `sizes.paraformer`, plus a few decoder/predictor tensors
    the tokenizer ignores), linguistic codebook, speech_tokenizer_v1-size ONNX."""
    rng = np.random.default_rng(seed)
    size = sizes.paraformer
    paraformer = tiny_tokenizer.write_paraformer_files(folder, size, rng)
    generator = torch.Generator(device).manual_seed(seed)
    state = {
        f"encoder.{name}": _encoder_parameter(name, shape, generator, device)
        for name, shape in tiny_tokenizer.encoder_shapes(size).items()
    }
    out = size.output_size
    for name, shape in {
        "decoder.output_layer.weight": (8404, out),
        "predictor.cif_output.weight": (1, out),
    }.items():
        state[name] = _encoder_parameter(name, shape, generator, device)
    torch.save(state, paraformer / "model.pt")
    codebook = tiny_tokenizer.sphere(rng, tiny_tokenizer.LINGUISTIC_CODES, out)
    np.save(folder / layout.LINGUISTIC_CODEBOOK_FILE, codebook)
    onnx.save(semantic_model(rng, sizes.semantic), str(folder / layout.SEMANTIC_TOKENIZER_FILE))


def _encoder_parameter(
    name: str, shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator, device=device)
    if "norm" in name:
        values = (1.0 if name.endswith("weight") else 0.0) + 0.1 * noise
    elif name.endswith("bias"):
        values = 0.02 * noise
    else:
        values = noise / math.sqrt(math.prod(shape[1:]))
    return values.float().cpu().contiguous()


def semantic_model(rng: np.random.Generator, size: SemanticSize) -> onnx.ModelProto:
    """feats (1, 128, T) + feats_length (1,) → indices (1, 1, T / 4): whisper-like encoder
    (two stride-2 convs, pre-norm transformer layers), then the nearest of `codes` codes."""
    d, heads = size.width, size.heads
    mels = tiny_tokenizer.WHISPER_MELS
    codebook = tiny_tokenizer.sphere(rng, size.codes, d)
    weights: dict[str, np.ndarray] = {
        "conv1.weight": _normal(rng, (d, mels, 3), 1 / math.sqrt(mels * 3)),
        "conv1.bias": np.zeros(d, np.float32),
        "conv2.weight": _normal(rng, (d, d, 3), 1 / math.sqrt(d * 3)),
        "conv2.bias": np.zeros(d, np.float32),
        "ln_post.w": np.ones(d, np.float32),
        "ln_post.b": np.zeros(d, np.float32),
        "codebook.t": np.ascontiguousarray(codebook.T),
        "codebook.half_norm": (0.5 * (codebook**2).sum(axis=1)).astype(np.float32),
        "zero": np.array(0, dtype=np.int64),
        "one": np.array(1, dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "axes1": np.array([1], dtype=np.int64),
        "sqrt_half": np.array(np.sqrt(0.5), dtype=np.float32),
        "half": np.array(0.5, dtype=np.float32),
        "heads_shape": np.array([0, 0, heads, d // heads], dtype=np.int64),
        "model_shape": np.array([0, 0, d], dtype=np.int64),
        "scale": np.array(1 / math.sqrt(d // heads), dtype=np.float32),
    }
    node = helper.make_node
    # the tiny model's masking and conv front end; its projection + lookup are replaced
    nodes = tiny_tokenizer._semantic_nodes()
    nodes = nodes[: [n.output[0] for n in nodes].index("h2.t") + 1]
    x = "h2.t"
    for i in range(size.layers):
        p = f"l{i}"
        weights |= {
            f"{p}.ln1.w": np.ones(d, np.float32),
            f"{p}.ln1.b": np.zeros(d, np.float32),
            f"{p}.ln2.w": np.ones(d, np.float32),
            f"{p}.ln2.b": np.zeros(d, np.float32),
            f"{p}.fc1.b": np.zeros(4 * d, np.float32),
            f"{p}.fc2.b": np.zeros(d, np.float32),
            f"{p}.out.b": np.zeros(d, np.float32),
        }
        for name in ("q", "k", "v", "out"):
            weights[f"{p}.{name}.w"] = _normal(rng, (d, d), 1 / math.sqrt(d))
        weights[f"{p}.fc1.w"] = _normal(rng, (d, 4 * d), 1 / math.sqrt(d))
        weights[f"{p}.fc2.w"] = _normal(rng, (4 * d, d), 0.5 / math.sqrt(4 * d))
        ln = [f"{p}.n1"]
        nodes.append(node("LayerNormalization", [x, f"{p}.ln1.w", f"{p}.ln1.b"], ln, axis=-1))
        for name in ("q", "k", "v"):
            nodes += [
                node("MatMul", [ln[0], f"{p}.{name}.w"], [f"{p}.{name}"]),
                node("Reshape", [f"{p}.{name}", "heads_shape"], [f"{p}.{name}.h"]),
            ]
        nodes += [
            node("Transpose", [f"{p}.q.h"], [f"{p}.qt"], perm=[0, 2, 1, 3]),
            node("Transpose", [f"{p}.k.h"], [f"{p}.kt"], perm=[0, 2, 3, 1]),
            node("Transpose", [f"{p}.v.h"], [f"{p}.vt"], perm=[0, 2, 1, 3]),
            node("MatMul", [f"{p}.qt", f"{p}.kt"], [f"{p}.s"]),
            node("Mul", [f"{p}.s", "scale"], [f"{p}.ss"]),
            node("Softmax", [f"{p}.ss"], [f"{p}.a"], axis=-1),
            node("MatMul", [f"{p}.a", f"{p}.vt"], [f"{p}.o"]),
            node("Transpose", [f"{p}.o"], [f"{p}.ot"], perm=[0, 2, 1, 3]),
            node("Reshape", [f"{p}.ot", "model_shape"], [f"{p}.om"]),
            node("MatMul", [f"{p}.om", f"{p}.out.w"], [f"{p}.proj"]),
            node("Add", [f"{p}.proj", f"{p}.out.b"], [f"{p}.projb"]),
            node("Add", [x, f"{p}.projb"], [f"{p}.r1"]),
            node("LayerNormalization", [f"{p}.r1", f"{p}.ln2.w", f"{p}.ln2.b"], [f"{p}.n2"]),
            node("MatMul", [f"{p}.n2", f"{p}.fc1.w"], [f"{p}.f1"]),
            node("Add", [f"{p}.f1", f"{p}.fc1.b"], [f"{p}.f1b"]),
            *tiny_tokenizer._gelu(f"{p}.f1b", f"{p}.g"),
            node("MatMul", [f"{p}.g", f"{p}.fc2.w"], [f"{p}.f2"]),
            node("Add", [f"{p}.f2", f"{p}.fc2.b"], [f"{p}.f2b"]),
            node("Add", [f"{p}.r1", f"{p}.f2b"], [f"{p}.r2"]),
        ]
        x = f"{p}.r2"
    nodes += [
        node("LayerNormalization", [x, "ln_post.w", "ln_post.b"], ["z"], axis=-1),
        node("MatMul", ["z", "codebook.t"], ["dots"]),
        node("Sub", ["dots", "codebook.half_norm"], ["scores"]),
        node("ArgMax", ["scores"], ["codes"], axis=2, keepdims=0),
        node("Unsqueeze", ["codes", "axes1"], ["indices"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dummy_speech_tokenizer_v1",
        inputs=[
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, mels, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        outputs=[helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 1, "T_codes"])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    return _finish(graph)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        producer_name="stepaudio-dummy",
        opset_imports=[helper.make_opsetid("", tiny_tokenizer.ONNX_OPSET)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
