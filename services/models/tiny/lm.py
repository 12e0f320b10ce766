"""Tiny Step1 checkpoints in the exact Hugging Face layout of Step-Audio-Chat / TTS-3B.

Files: config.json (architectures Step1ForCausalLM, model_type step1), configuration_step1.py
(the remote-code config class), sharded bf16 safetensors with model.safetensors.index.json,
tokenizer.model and tokenizer_config.json. Real tensor names, tiny shapes, seeded weights.

Random weights would babble forever, so the generator shapes the output distribution: one
hidden dimension carries a constant (embedding column 0), residual branches are small, and
``lm_head`` column 0 favours the ids the model should emit (text pieces for Chat, audio ids
for TTS, both for the end-to-end variant) with an end-of-turn rate that gives short replies.
The network still computes everything it would with real weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from services.models.audio_tokens import AUDIO_CODES, AUDIO_ID_OFFSET
from services.models.step1.config import Step1Config
from services.models.step1.model import Step1ForCausalLM
from services.models.tiny.text_tokenizer import TEXT_PIECES, VOCAB_SIZE, write_text_tokenizer

FIRST_TEXT_PIECE = 5  # after <unk> <s> </s> <|EOT|> <|BOT|>
EOT_ID = 3


@dataclass(frozen=True)
class TinyLmSpec:
    config: Step1Config
    emits_text: bool
    emits_audio: bool
    eot_margin: float  # lm_head column-0 offset of EOT above the favoured ids
    shards: int


def _tiny_config(max_seq_len: int) -> Step1Config:
    # 6 heads (head_dim 8): not a power of two, so the second ALiBi slope series that the real
    # models' 48 and 96 heads need is exercised too
    return Step1Config(
        hidden_size=48,
        intermediate_size=64,
        num_attention_heads=6,
        num_attention_groups=2,
        num_hidden_layers=2,
        vocab_size=VOCAB_SIZE,
        max_seq_len=max_seq_len,
    )


def chat_spec() -> TinyLmSpec:
    config = _tiny_config(max_seq_len=4096)
    return TinyLmSpec(config, emits_text=True, emits_audio=False, eot_margin=0.15, shards=2)


def tts_spec() -> TinyLmSpec:
    config = _tiny_config(max_seq_len=8192)
    return TinyLmSpec(config, emits_text=False, emits_audio=True, eot_margin=0.15, shards=1)


def aqaa_spec() -> TinyLmSpec:
    config = _tiny_config(max_seq_len=8192)
    return TinyLmSpec(config, emits_text=True, emits_audio=True, eot_margin=0.17, shards=2)


def _favoured_ids(spec: TinyLmSpec) -> torch.Tensor:
    mask = torch.zeros(spec.config.vocab_size, dtype=torch.bool)
    if spec.emits_text:
        mask[FIRST_TEXT_PIECE:TEXT_PIECES] = True
    if spec.emits_audio:
        mask[AUDIO_ID_OFFSET : AUDIO_ID_OFFSET + AUDIO_CODES] = True
    return mask


def tiny_state_dict(spec: TinyLmSpec, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # random logit spread grows with sqrt(hidden): keep it at its hidden-32 value, so the EOT
    # margin gives the same short replies
    scale = math.sqrt(32 / spec.config.hidden_size)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Step1ForCausalLM(spec.config).state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            state[name] = torch.ones(shape)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            state[name] = torch.randn(shape, generator=generator) * 0.02 * scale  # small branches
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.1 * scale
    state["model.embed_tokens.weight"][:, 0] = 1.0
    favoured = _favoured_ids(spec)
    head = state["lm_head.weight"]
    head[:, 0] = torch.where(favoured, 1.0, -1.0)
    head[EOT_ID, 0] = 1.0 + spec.eot_margin
    head[EOT_ID, 1:] = 0.0
    return {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}


def _write_shards(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    names = list(state)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    if shards == 1:
        files = ["model-00001.safetensors"]  # the TTS-3B naming
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index, file in enumerate(files):
        chunk = {n: state[n] for n in names[index * per_shard : (index + 1) * per_shard]}
        save_file(chunk, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")


CONFIGURATION_STEP1 = '''"""Step1 configuration (remote code named by config.json's auto_map)."""

from transformers.configuration_utils import PretrainedConfig


class Step1Config(PretrainedConfig):
    model_type = "step1"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        hidden_size=5120,
        intermediate_size=13312,
        num_attention_heads=40,
        num_attention_groups=8,
        num_hidden_layers=48,
        max_seq_len=4096,
        vocab_size=65536,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=3,
        pad_token_id=0,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_groups = num_attention_groups
        self.num_hidden_layers = num_hidden_layers
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        super().__init__(
            bos_token_id=bos_token_id,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
'''


def write_tiny_step1(folder: Path, spec: TinyLmSpec, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec.config.to_hf_dict(), indent=2) + "\n")
    (folder / "configuration_step1.py").write_text(CONFIGURATION_STEP1)
    _write_shards(folder, tiny_state_dict(spec, seed), spec.shards)
    write_text_tokenizer(folder, model_max_length=spec.config.max_seq_len)
