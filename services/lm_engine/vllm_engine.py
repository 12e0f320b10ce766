"""The vLLM engine behind ``LlmEngine``: in-process ``AsyncLLM`` (vLLM 0.26) for Step1 models.

GPU hosts only. vllm is imported only inside functions and methods that need it (and by the
modules vLLM itself loads), so the CPU path imports this module for its settings and helpers.

Semantics match the torch engine (services/lm_engine/engine.py): prompts are token ids, outputs are
the new ids since the previous output, the stop id is not part of the output, a consumer that
closes its iterator aborts the request, and more than ``max_num_seqs + max_waiting`` requests in
flight raise ``EngineOverloaded``. Step1 specifics (docs: upstream.md section 9): the TRITON_ATTN
backend (the only one with ALiBi-sqrt), an untied ``lm_head`` (``tie_word_embeddings`` false,
else vLLM silently ties it to the embeddings), stop id 3 given explicitly (the tokenizer's eos is
``</s>``), and the repetition-aware rule as a logits processor.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.lm_engine.engine import (
    EngineClosed,
    EngineOverloaded,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
)
from services.lm_engine.ras import RAS_EXTRA_ARG
from services.lm_engine.vllm_settings import VllmEngineSettings
from services.models.step1 import SamplingParams, Step1Config

log = logging.getLogger(__name__)

STEP1_EOS_ID = 3  # <|EOT|>; config.json's eos_token_id
STEP1_ARCHITECTURE = "Step1ForCausalLM"
VLLM_STEP1_CLASS = "services.lm_engine.vllm_model:VllmStep1ForCausalLM"
RAS_PROCESSOR = "services.lm_engine.vllm_model:RepetitionAwareLogitsProcessor"
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "stepaudio_step1"  # list it in VLLM_PLUGINS where that allowlist is set
_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.CANCELLED,
}


def step1_overrides(model_dir: Path) -> dict[str, Any]:
    """Config overrides: lm_head stays untied; a Step1-compatible checkpoint published under
    another architecture name (AQAA-style, docs/models.md) is served as Step1ForCausalLM."""
    overrides: dict[str, Any] = {"tie_word_embeddings": False}
    config_path = model_dir / "config.json"
    if config_path.is_file():
        archs = json.loads(config_path.read_text()).get("architectures") or []
        if "Step1ForCausalLM" not in archs:
            overrides["architectures"] = ["Step1ForCausalLM"]
    return overrides


def engine_kwargs(settings: VllmEngineSettings, model_dir: Path) -> dict[str, Any]:
    """Keyword arguments for vLLM's ``AsyncEngineArgs`` (and ``LLM``)."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "skip_tokenizer_init": True,  # prompts and outputs are ids
        "trust_remote_code": True,  # configuration_step1.py (model_type step1)
        "hf_overrides": step1_overrides(model_dir),
        "generation_config": "vllm",  # every sampling value comes from the request
        "dtype": settings.dtype,
        "quantization": settings.quantization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        # one GPU: vLLM's worker inside the engine-core process ("mp" would add a process
        # hop to every step); several GPUs: worker processes (mp) or a Ray cluster
        "distributed_executor_backend": settings.distributed_executor_backend
        if settings.tensor_parallel_size * settings.pipeline_parallel_size > 1
        else None,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "max_model_len": settings.max_model_len,
        "enforce_eager": settings.enforce_eager,
        "attention_backend": settings.attention_backend,
        "seed": settings.seed,
        "disable_log_stats": True,
    }
    if settings.repetition_aware:
        kwargs["logits_processors"] = [RAS_PROCESSOR]
    if not settings.enforce_eager:
        # graphs for every batch size the scheduler can form, and no larger
        kwargs["max_cudagraph_capture_size"] = settings.max_num_seqs
    return kwargs


def stop_ids(params: SamplingParams) -> list[int]:
    eos = set() if params.ignore_eos else {STEP1_EOS_ID}
    return sorted(eos | set(params.stop_token_ids))


def sampling_kwargs(params: SamplingParams, prompt_len: int, max_len: int) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` equal in meaning to the torch sampler's."""
    kwargs: dict[str, Any] = {
        "temperature": params.temperature,  # 0 → greedy in both
        "top_p": params.top_p,
        "top_k": params.top_k,  # 0 → off in both
        "seed": params.seed,
        "max_tokens": min(params.max_tokens, max_len - prompt_len),
        "stop_token_ids": stop_ids(params),
        "ignore_eos": True,  # vLLM's eos is the tokenizer's </s>; Step1 stops at stop_ids only
        "detokenize": False,
        "skip_special_tokens": False,
    }
    if params.repetition_aware:
        kwargs["extra_args"] = {RAS_EXTRA_ARG: True}
    return kwargs


def validate_prompt(prompt_ids: Sequence[int], vocab_size: int, max_len: int) -> None:
    """The torch engine's checks, so both engines refuse the same requests."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if max(prompt_ids) >= vocab_size or min(prompt_ids) < 0:
        raise ValueError(f"prompt ids must be in [0, {vocab_size})")
    if len(prompt_ids) >= max_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room under {max_len}")


def register_vllm_step1() -> None:
    """Serve ``Step1ForCausalLM`` checkpoints with the project's class (a vLLM general plugin).

    By name, so loading this plugin imports no model code (vLLM loads plugins early in each of
    its processes); the class is imported where vLLM builds the model.
    """
    from vllm import ModelRegistry

    ModelRegistry.register_model(STEP1_ARCHITECTURE, VLLM_STEP1_CLASS)


def expose_vllm_plugin(root: Path | None = None) -> Path:
    """Make ``register_vllm_step1`` a vLLM plugin for this process and the ones vLLM starts.

    vLLM's engine core and workers may be spawned, not forked, and then miss a registration
    made in this process; vLLM loads ``vllm.general_plugins`` entry points in every process.
    Until the project's package metadata declares that entry point (pyproject), this writes a
    metadata-only distribution declaring it and puts its folder on ``sys.path`` (spawned
    children inherit it) and ``PYTHONPATH`` (other subprocesses).
    """
    root = root or Path(tempfile.gettempdir()) / "stepaudio-vllm-plugin"
    dist_info = root / "stepaudio_vllm_plugin-0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: stepaudio-vllm-plugin\nVersion: 0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\n{PLUGIN_NAME} = {__name__}:register_vllm_step1\n"
    )
    if str(root) not in sys.path:
        sys.path.append(str(root))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(root)])
    return root


class AdmissionLimit:
    """Bounds requests in flight (running + waiting in vLLM's scheduler) by a count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: set[str] = set()

    def __len__(self) -> int:
        return len(self._in_flight)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._in_flight

    def acquire(self, request_id: str) -> None:
        if request_id in self._in_flight:
            raise ValueError(f"request id {request_id!r} is already running")
        if len(self._in_flight) >= self.limit:
            raise EngineOverloaded(f"{len(self._in_flight)} requests already in flight")
        self._in_flight.add(request_id)

    def release(self, request_id: str) -> None:
        self._in_flight.discard(request_id)


@dataclass
class DeltaConverter:
    """Turns one request's vLLM DELTA outputs into ``GenerationOutput``s (stop id dropped)."""

    request_id: str
    prompt_tokens: int
    stops: frozenset[int]
    completion_tokens: int = 0

    def convert(
        self, new_ids: Sequence[int], finished: bool, finish_reason: str | None
    ) -> GenerationOutput:
        ids = list(new_ids)
        reason = _FINISH_REASONS.get(finish_reason or "", FinishReason.CANCELLED)
        if finished and reason is FinishReason.STOP and ids and ids[-1] in self.stops:
            ids.pop()  # vLLM keeps the stop id in token_ids; the interface never shows it
        self.completion_tokens += len(ids)
        return GenerationOutput(
            self.request_id,
            ids,
            finished=finished,
            finish_reason=reason if finished else None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )

    def cancelled(self, error: str | None = None) -> GenerationOutput:
        return GenerationOutput(
            self.request_id,
            [],
            finished=True,
            finish_reason=FinishReason.CANCELLED,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            error=error,
        )


class VllmLlmEngine:
    """``LlmEngine`` over vLLM's ``AsyncLLM``; one instance serves one Step1 checkpoint."""

    engine_name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        settings: VllmEngineSettings,
        *,
        extra_engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        """``extra_engine_args`` go to ``AsyncEngineArgs`` as they are (benchmarks and tests:
        ``load_format="dummy"``, ``logprobs_mode``)."""
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.config = Step1Config.from_folder(self.model_dir)
        self._max_len = settings.max_model_len or self.config.max_seq_len
        self._extra_engine_args = dict(extra_engine_args or {})
        self._admission = AdmissionLimit(settings.max_num_seqs + settings.max_waiting)
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self._max_len

    @property
    def num_in_flight(self) -> int:
        return len(self._admission)

    @property
    def async_llm(self) -> Any:
        """The underlying ``AsyncLLM`` (benchmarks and equivalence checks read logprobs)."""
        if self._llm is None:
            raise EngineClosed("the engine is not running")
        return self._llm

    async def start(self) -> None:
        """Build ``AsyncLLM``: loads weights, compiles and captures graphs (blocks for a while;
        called once at service start, before any request)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.settings.compile:
            register_vllm_step1()  # this process (model inspection, forked children)
            expose_vllm_plugin()  # spawned engine-core and worker processes
        kwargs = engine_kwargs(self.settings, self.model_dir) | self._extra_engine_args
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        log.info("vLLM engine started: %s compile=%s", self.model_dir, self.settings.compile)

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

    def vllm_sampling_params(self, params: SamplingParams, prompt_len: int) -> Any:
        if params.repetition_aware and not self.settings.repetition_aware:
            raise ValueError("this engine was started without the repetition-aware processor")
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            **sampling_kwargs(params, prompt_len, self._max_len),
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        llm = self.async_llm
        prompt = list(request.prompt_ids)
        validate_prompt(prompt, self.vocab_size, self._max_len)
        sampling = self.vllm_sampling_params(request.params, len(prompt))
        converter = DeltaConverter(
            request.request_id, len(prompt), frozenset(stop_ids(request.params))
        )
        self._admission.acquire(request.request_id)
        stream = llm.generate({"prompt_token_ids": prompt}, sampling, request.request_id)
        finished = False
        try:
            async for output in stream:
                completion = output.outputs[0]
                result = converter.convert(
                    completion.token_ids, output.finished, completion.finish_reason
                )
                finished = result.finished
                yield result
            if not finished:  # the stream ended without a final output (aborted)
                finished = True
                yield converter.cancelled()
        except ValueError:
            raise  # vLLM refused the request: the caller's error
        except Exception as exc:  # the engine failed this request (or died)
            if finished:
                raise
            log.exception("vLLM request %s failed", request.request_id)
            finished = True
            yield converter.cancelled(f"vLLM engine error: {type(exc).__name__}: {exc}")
        finally:
            self._admission.release(request.request_id)
            await stream.aclose()  # aborts in vLLM when the consumer left mid-stream

    async def abort(self, request_id: str) -> bool:
        if self._llm is None or request_id not in self._admission:
            return False
        await self._llm.abort(request_id)
        return True
