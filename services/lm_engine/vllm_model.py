"""The project's Step1ForCausalLM for vLLM 0.26, plus the RAS logits processor vLLM loads.

Imported only on GPU hosts by ``services.lm_engine.vllm_engine`` (and by vLLM's own processes); it
imports vllm at module level. Why a class of our own instead of vLLM's ``step1.py``:

- vLLM 0.26's ``Step1ForCausalLM.forward`` has no default for ``intermediate_tensors``, so CUDA
  graph capture (which calls ``forward`` without it) fails; here it defaults to None.
- its decoder is not wrapped in ``@support_torch_compile``; here it is, so vLLM's compiled
  piecewise graphs and full CUDA graphs both apply (docs: gpu.md has the measured effect).
- ``lm_head`` is never tied to the embeddings: the released checkpoints store both, and vLLM's
  class ties them unless the config says otherwise.

Attention stays vLLM's ``Attention`` with ALiBi-sqrt, which only the TRITON_ATTN backend has.

vLLM finds these classes by name: ``services.lm_engine.vllm_engine.register_vllm_step1``
registers the model as ``services.lm_engine.vllm_model:VllmStep1ForCausalLM`` (in every vLLM
process, as a vLLM plugin) and the engine names the processor in ``logits_processors``.
"""

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import (
    get_pp_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    WeightsMapper,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as VllmLogitsProcessor

from services.lm_engine.ras import RasBatchState, ras_requested
from services.models.step1.model import alibi_slopes


class Step1Attention(nn.Module):
    """Grouped-query attention; position enters only through the ALiBi-sqrt bias."""

    def __init__(
        self, vllm_config: VllmConfig, quant_config: QuantizationConfig | None, prefix: str
    ) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        tp_size = get_tensor_model_parallel_world_size()
        total_heads, total_groups = config.num_attention_heads, config.num_attention_groups
        if total_heads % tp_size or (total_groups % tp_size and tp_size % total_groups):
            raise ValueError(
                f"{total_heads} heads / {total_groups} KV groups do not split over TP {tp_size}"
            )
        self.num_heads = total_heads // tp_size
        self.num_kv_heads = max(1, total_groups // tp_size)  # replicated when TP > groups
        self.head_dim = config.hidden_size // total_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            total_heads,
            total_groups,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            total_heads * self.head_dim,
            config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        first_head = get_tensor_model_parallel_rank() * self.num_heads
        slopes = alibi_slopes(total_heads)[first_head : first_head + self.num_heads]
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            quant_config=quant_config,
            alibi_slopes=slopes.tolist(),
            use_alibi_sqrt=True,
            prefix=f"{prefix}.attn",
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        output, _ = self.o_proj(self.attn(q, k, v))
        return output


class Step1MLP(nn.Module):
    def __init__(
        self, vllm_config: VllmConfig, quant_config: QuantizationConfig | None, prefix: str
    ) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [config.intermediate_size] * 2,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size,
            config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.down_proj",
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        output, _ = self.down_proj(self.act_fn(gate_up))
        return output


class Step1DecoderLayer(nn.Module):
    """Pre-norm block; vLLM's fused add+RMSNorm carries the residual between sub-blocks."""

    def __init__(self, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Step1Attention(vllm_config, quant_config, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = Step1MLP(vllm_config, quant_config, f"{prefix}.mlp")

    def forward(
        self, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": 0,
        "positions": 0,
        "intermediate_tensors": 0,
        "inputs_embeds": 0,
    }
)
class Step1Model(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        pp_group = get_pp_group()
        self.embed_tokens = (
            VocabParallelEmbedding(
                config.vocab_size, config.hidden_size, quant_config=vllm_config.quant_config
            )
            if pp_group.is_first_rank
            else PPMissingLayer()
        )
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: Step1DecoderLayer(vllm_config, prefix),
            prefix=maybe_prefix(prefix, "layers"),
        )
        self.norm = (
            RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            if pp_group.is_last_rank
            else PPMissingLayer()
        )
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        del positions  # ALiBi: the attention kernel takes positions from its own metadata
        if get_pp_group().is_first_rank:
            if inputs_embeds is None:
                assert input_ids is not None  # vLLM passes ids or embeddings
                hidden_states = self.embed_input_ids(input_ids)
            else:
                hidden_states = inputs_embeds
            residual = None
        else:
            assert intermediate_tensors is not None
            hidden_states = intermediate_tensors["hidden_states"]
            residual = intermediate_tensors["residual"]
        for layer in self.layers[self.start_layer : self.end_layer]:
            hidden_states, residual = layer(hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class VllmStep1ForCausalLM(nn.Module, SupportsPP):
    """What vLLM instantiates for ``architectures: ["Step1ForCausalLM"]`` once registered."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_stacked={
            ".q_proj": (".qkv_proj", "q"),
            ".k_proj": (".qkv_proj", "k"),
            ".v_proj": (".qkv_proj", "v"),
            ".gate_proj": (".gate_up_proj", 0),
            ".up_proj": (".gate_up_proj", 1),
        }
    )
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = Step1Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(
                config.vocab_size,
                config.hidden_size,
                quant_config=vllm_config.quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            self.logits_processor = LogitsProcessor(config.vocab_size)
        else:
            self.lm_head = PPMissingLayer()
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        if not get_pp_group().is_last_rank:
            return None
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


class RepetitionAwareLogitsProcessor(VllmLogitsProcessor):
    """Step-Audio's repetition-aware rule for requests with ``extra_args["repetition_aware"]``.

    vLLM loads it by name (``logits_processors``) in the engine core; the state and the masking
    live in ``services.lm_engine.ras.RasBatchState`` (tested on the CPU).
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        del vllm_config, device, is_pin_memory  # the mask is built on the logits' own device
        self.state = RasBatchState()

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        ras_requested(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # it bans ids, so greedy requests need it too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.state.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.state.apply(logits)
