"""Step1 configuration, read from a Hugging Face ``config.json`` (model_type "step1")."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.models.checkpoint import CheckpointError

CONFIG_FILE = "config.json"
ARCHITECTURE = "Step1ForCausalLM"
MODEL_TYPE = "step1"

# Shapes of the released checkpoints (upstream config.json), for docs, benchmarks and checks.
TTS_3B_SHAPE = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_attention_heads": 48,
    "num_attention_groups": 4,
    "num_hidden_layers": 32,
    "vocab_size": 74752,
}
CHAT_130B_SHAPE = {
    "hidden_size": 12288,
    "intermediate_size": 31232,
    "num_attention_heads": 96,
    "num_attention_groups": 8,
    "num_hidden_layers": 88,
    "vocab_size": 74752,
}


@dataclass(frozen=True)
class Step1Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_attention_groups: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    max_seq_len: int = 32768
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0
    torch_dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_attention_groups",
            "num_hidden_layers",
            "vocab_size",
            "max_seq_len",
        ):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % max(self.num_attention_heads, 1):
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % max(self.num_attention_groups, 1):
            problems.append(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_attention_groups {self.num_attention_groups}"
            )
        if not 0 < self.rms_norm_eps < 1:
            problems.append(f"rms_norm_eps must be in (0, 1), got {self.rms_norm_eps}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                problems.append(f"{name} {getattr(self, name)} is outside the vocabulary")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Step1Config:
        """Parse a Step1 config; also AQAA-style (Step-Omni) ones, see ``_normalise``."""
        data = _normalise(data, source)
        required = (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_attention_groups",
            "num_hidden_layers",
            "vocab_size",
        )
        missing = [key for key in required if key not in data]
        if missing:
            raise CheckpointError(f"{source}: missing config field(s) {missing}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        values = {key: data[key] for key in known if key in data}
        # transformers writes eos as a list for some models; Step1 uses one id
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = values["eos_token_id"][0]
        try:
            return cls(**values, extra={k: v for k, v in data.items() if k not in known})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    @classmethod
    def from_folder(cls, folder: Path) -> Step1Config:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (a Step1 checkpoint folder needs it)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json content, in the upstream field names and order."""
        data = {
            "architectures": [ARCHITECTURE],
            # the real folders also map AutoModelForCausalLM to their modeling_step1.py; the
            # project serves Step1 with its own code (torch here, vLLM on GPU), so only the
            # config class is shipped with generated packs
            "auto_map": {"AutoConfig": "configuration_step1.Step1Config"},
            "model_type": MODEL_TYPE,
        }
        values = asdict(self)
        values.pop("extra")
        data.update(values)
        return data


# Field names other Step checkpoints use for the same quantities (Step-Audio-2/R1 configs carry
# both spellings); an AQAA-style config is read through these. [unverified for AQAA]
FIELD_ALIASES = {
    "num_key_value_heads": "num_attention_groups",
    "max_position_embeddings": "max_seq_len",
}
ROTARY_FIELDS = ("rope_theta", "rope_scaling")


def _normalise(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept Step1 configs and Step1-compatible ones (AQAA's Step-Omni decoder).

    A config qualifies when it is model_type "step1" / Step1ForCausalLM, or when it uses Step's
    own ``num_attention_groups`` field; a nested ``text_config`` is flattened. Rotary position
    settings mean the checkpoint is not an ALiBi Step1 model: refused, never guessed.
    """
    if isinstance(data.get("text_config"), dict):
        data = {**data, **data["text_config"]}
    archs = data.get("architectures") or []
    is_step1 = data.get("model_type") == MODEL_TYPE or ARCHITECTURE in archs
    if not is_step1 and "num_attention_groups" not in data:
        raise CheckpointError(
            f"{source}: expected model_type {MODEL_TYPE!r} and architectures "
            f"[{ARCHITECTURE!r}] (or a Step1-compatible config), got "
            f"{data.get('model_type')!r} / {archs}"
        )
    rotary = [key for key in ROTARY_FIELDS if data.get(key) is not None]
    if rotary:
        raise CheckpointError(
            f"{source}: {rotary} set: this checkpoint uses rotary positions, while Step1 "
            "attention is ALiBi-sqrt; it cannot be served by the Step1 runtime"
        )
    for alias, name in FIELD_ALIASES.items():
        if alias in data and name not in data:
            data = {**data, name: data[alias]}
    return data
