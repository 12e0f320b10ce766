"""The vLLM engine's CPU-testable parts: settings, kwargs mapping, admission, stream handling
(over a fake AsyncLLM), and the repetition-aware logits processor's state and masking.
None of this needs vllm installed."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings
from services.lm_engine.engine import (
    EngineClosed,
    EngineOverloaded,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
)
from services.lm_engine.ras import RAS_EXTRA_ARG, RasBatchState, RasRow, ras_requested
from services.lm_engine.vllm_engine import (
    RAS_PROCESSOR,
    AdmissionLimit,
    DeltaConverter,
    VllmEngineSettings,
    VllmLlmEngine,
    engine_kwargs,
    expose_vllm_plugin,
    sampling_kwargs,
    validate_prompt,
)
from services.models.step1 import TTS_DEFAULTS, SamplingParams, repetition_banned_token
from services.models.tiny.lm import tts_spec, write_tiny_step1

# -- settings ---------------------------------------------------------------------------------


def test_default_settings_are_valid_and_use_the_compiled_step1() -> None:
    settings = VllmEngineSettings()
    assert settings.compile and not settings.enforce_eager
    assert settings.attention_backend == "TRITON_ATTN"
    assert settings.distributed_executor_backend == "mp"


@pytest.mark.parametrize(
    "field, value",
    [
        ("tensor_parallel_size", 0),
        ("tensor_parallel_size", 17),
        ("pipeline_parallel_size", 0),
        ("gpu_memory_utilization", 0.99),
        ("gpu_memory_utilization", 0.05),
        ("max_num_seqs", 0),
        ("max_model_len", 8),
        ("max_model_len", 65536),
        ("max_waiting", -1),
        ("seed", -1),
        ("quantization", "int4"),
        ("distributed_executor_backend", "external_launcher"),
        ("attention_backend", "FLASH_ATTN"),  # no ALiBi-sqrt there
        ("dtype", "float32"),
        ("no_such_field", 1),
    ],
)
def test_out_of_bounds_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        VllmEngineSettings(**{field: value})


def test_stock_step1_requires_eager_mode() -> None:
    with pytest.raises(ValidationError, match="enforce_eager"):
        VllmEngineSettings(compile=False)
    assert VllmEngineSettings(compile=False, enforce_eager=True).enforce_eager


class _LlmLikeSettings(BaseServiceSettings):
    """How the LLM service nests these settings (env LLM_VLLM__<FIELD>)."""

    model_config = SettingsConfigDict(env_prefix="LLM_")
    vllm: VllmEngineSettings = Field(default_factory=VllmEngineSettings)


def test_settings_nest_under_llm_vllm_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_VLLM__MAX_NUM_SEQS", "64")
    monkeypatch.setenv("LLM_VLLM__QUANTIZATION", "fp8")
    monkeypatch.setenv("LLM_VLLM__TENSOR_PARALLEL_SIZE", "4")
    settings = _LlmLikeSettings()
    assert settings.vllm.max_num_seqs == 64
    assert settings.vllm.quantization == "fp8"
    assert settings.vllm.tensor_parallel_size == 4


# -- engine and sampling arguments ------------------------------------------------------------


def test_engine_kwargs_untie_lm_head_and_pin_the_alibi_backend() -> None:
    kwargs = engine_kwargs(VllmEngineSettings(max_num_seqs=32), Path("/m"))
    assert kwargs["hf_overrides"] == {"tie_word_embeddings": False}
    assert kwargs["attention_backend"] == "TRITON_ATTN"
    assert kwargs["skip_tokenizer_init"] and kwargs["trust_remote_code"]
    assert kwargs["logits_processors"] == [RAS_PROCESSOR]
    assert kwargs["max_cudagraph_capture_size"] == 32
    assert kwargs["model"] == "/m" and kwargs["max_model_len"] is None
    assert kwargs["distributed_executor_backend"] is None  # one GPU: in-process worker


def test_executor_backend_applies_to_several_gpus() -> None:
    ray = VllmEngineSettings(tensor_parallel_size=4, distributed_executor_backend="ray")
    assert engine_kwargs(ray, Path("/m"))["distributed_executor_backend"] == "ray"
    pipeline = VllmEngineSettings(pipeline_parallel_size=2)
    assert engine_kwargs(pipeline, Path("/m"))["distributed_executor_backend"] == "mp"


def test_engine_kwargs_without_ras_or_graphs() -> None:
    settings = VllmEngineSettings(repetition_aware=False, compile=False, enforce_eager=True)
    kwargs = engine_kwargs(settings, Path("/m"))
    assert "logits_processors" not in kwargs
    assert "max_cudagraph_capture_size" not in kwargs
    assert kwargs["enforce_eager"]


def test_sampling_kwargs_map_every_field() -> None:
    params = SamplingParams(
        temperature=0.7, top_p=0.9, top_k=50, max_tokens=100, seed=7, stop_token_ids=(9, 3)
    )
    kwargs = sampling_kwargs(params, prompt_len=10, max_len=4096)
    assert kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9 and kwargs["top_k"] == 50
    assert kwargs["seed"] == 7 and kwargs["max_tokens"] == 100
    assert kwargs["stop_token_ids"] == [3, 9]
    assert kwargs["ignore_eos"]  # the tokenizer's </s> must not stop Step1
    assert not kwargs["detokenize"]
    assert "extra_args" not in kwargs


def test_sampling_kwargs_for_tts_greedy_and_ignore_eos() -> None:
    ras = sampling_kwargs(TTS_DEFAULTS, prompt_len=10, max_len=8192)
    assert ras["extra_args"] == {RAS_EXTRA_ARG: True} and ras["top_k"] == 50
    greedy = sampling_kwargs(SamplingParams(temperature=0.0, top_k=0), 10, 8192)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 0
    assert sampling_kwargs(SamplingParams(ignore_eos=True), 10, 8192)["stop_token_ids"] == []


def test_max_tokens_is_clipped_to_the_model_length() -> None:
    assert sampling_kwargs(SamplingParams(max_tokens=5000), 100, 4096)["max_tokens"] == 3996


@pytest.mark.parametrize(
    "prompt, message",
    [([], "empty"), ([1, 74752], r"\[0, 74752\)"), ([-1], r"\[0, 74752\)"), ([1] * 64, "room")],
)
def test_prompt_validation(prompt: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_prompt(prompt, vocab_size=74752, max_len=64)


# -- admission and output conversion ----------------------------------------------------------


def test_admission_limit_counts_requests_in_flight() -> None:
    limit = AdmissionLimit(2)
    limit.acquire("a")
    limit.acquire("b")
    with pytest.raises(EngineOverloaded):
        limit.acquire("c")
    with pytest.raises(ValueError, match="already running"):
        limit.acquire("a")
    limit.release("a")
    limit.release("a")  # releasing twice is harmless
    limit.acquire("c")
    assert len(limit) == 2 and "c" in limit and "a" not in limit


def test_delta_converter_drops_the_stop_id_and_counts() -> None:
    converter = DeltaConverter("r", prompt_tokens=5, stops=frozenset({3}))
    first = converter.convert([10, 11], finished=False, finish_reason=None)
    last = converter.convert([12, 3], finished=True, finish_reason="stop")
    assert first == GenerationOutput("r", [10, 11], prompt_tokens=5, completion_tokens=2)
    assert last.token_ids == [12] and last.finish_reason is FinishReason.STOP
    assert last.finished and last.completion_tokens == 3


def test_delta_converter_keeps_ids_at_length_and_maps_abort() -> None:
    length = DeltaConverter("r", 1, frozenset({3})).convert([3], True, "length")
    assert length.token_ids == [3] and length.finish_reason is FinishReason.LENGTH
    aborted = DeltaConverter("r", 1, frozenset({3})).convert([], True, "abort")
    assert aborted.finish_reason is FinishReason.CANCELLED


# -- the engine over a fake AsyncLLM ----------------------------------------------------------


class FakeAsyncLlm:
    """Yields scripted DELTA outputs; records aborts and closed streams like AsyncLLM."""

    def __init__(self, script: list[tuple[list[int], bool, str | None]], gate: bool = False):
        self.script = script
        self.aborted: list[str] = []
        self.closed: list[str] = []
        self.gate = asyncio.Event()
        if not gate:
            self.gate.set()

    async def generate(self, prompt: dict, sampling: dict, request_id: str) -> AsyncIterator[Any]:
        assert prompt["prompt_token_ids"] and sampling["max_tokens"] >= 1
        try:
            for ids, finished, reason in self.script:
                await self.gate.wait()
                completion = SimpleNamespace(token_ids=ids, finish_reason=reason)
                yield SimpleNamespace(outputs=[completion], finished=finished)
        except GeneratorExit:
            self.closed.append(request_id)  # AsyncLLM aborts the request here
            raise

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        pass


@pytest.fixture(scope="module")
def tiny_tts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vllm-engine") / "tts"
    write_tiny_step1(folder, tts_spec(), seed=2)
    return folder


def fake_engine(folder: Path, fake: FakeAsyncLlm, **settings: Any) -> VllmLlmEngine:
    engine = VllmLlmEngine(folder, VllmEngineSettings(**settings))
    engine._llm = fake  # what start() would build on a GPU host
    engine.vllm_sampling_params = lambda params, n: sampling_kwargs(params, n, 8192)  # type: ignore[method-assign]
    return engine


def request(request_id: str = "r", **params: Any) -> GenerationRequest:
    return GenerationRequest(request_id, [1, 4, 10, 11], SamplingParams(**params))


async def collect(engine: VllmLlmEngine, req: GenerationRequest) -> list[GenerationOutput]:
    return [output async for output in engine.generate(req)]


def test_engine_reads_the_checkpoint_config_without_vllm(tiny_tts: Path) -> None:
    engine = VllmLlmEngine(tiny_tts, VllmEngineSettings(max_model_len=2048))
    assert engine.vocab_size == 74752 and engine.max_seq_len == 2048
    assert VllmLlmEngine(tiny_tts, VllmEngineSettings()).max_seq_len == 8192
    assert engine.engine_name == "vllm"


async def test_engine_refuses_work_before_start(tiny_tts: Path) -> None:
    engine = VllmLlmEngine(tiny_tts, VllmEngineSettings())
    with pytest.raises(EngineClosed):
        await collect(engine, request())
    assert not await engine.abort("r")


async def test_streamed_deltas_end_without_the_stop_id(tiny_tts: Path) -> None:
    fake = FakeAsyncLlm([([20], False, None), ([21, 22], False, None), ([3], True, "stop")])
    engine = fake_engine(tiny_tts, fake)
    outputs = await collect(engine, request())
    assert [o.token_ids for o in outputs] == [[20], [21, 22], []]
    assert outputs[-1].finish_reason is FinishReason.STOP and outputs[-1].completion_tokens == 3
    assert engine.num_in_flight == 0 and not fake.closed


async def test_a_stream_that_ends_early_reports_cancelled(tiny_tts: Path) -> None:
    engine = fake_engine(tiny_tts, FakeAsyncLlm([([20], False, None)]))
    outputs = await collect(engine, request())
    assert outputs[-1].finished and outputs[-1].finish_reason is FinishReason.CANCELLED


async def test_closing_the_iterator_aborts_in_vllm(tiny_tts: Path) -> None:
    fake = FakeAsyncLlm([([20], False, None), ([21], False, None), ([3], True, "stop")])
    engine = fake_engine(tiny_tts, fake)
    stream = engine.generate(request("gone"))
    assert (await anext(stream)).token_ids == [20]
    await stream.aclose()
    assert fake.closed == ["gone"] and engine.num_in_flight == 0


async def test_admission_limit_applies_to_running_plus_waiting(tiny_tts: Path) -> None:
    fake = FakeAsyncLlm([([20], True, "length")], gate=True)
    engine = fake_engine(tiny_tts, fake, max_num_seqs=1, max_waiting=1)
    first, second = engine.generate(request("a")), engine.generate(request("b"))
    pending = [asyncio.ensure_future(anext(first)), asyncio.ensure_future(anext(second))]
    await asyncio.sleep(0)
    assert engine.num_in_flight == 2
    with pytest.raises(EngineOverloaded):
        await collect(engine, request("c"))
    assert await engine.abort("a") and fake.aborted == ["a"]
    assert not await engine.abort("unknown")
    fake.gate.set()
    await asyncio.gather(*pending)
    await first.aclose()
    await second.aclose()
    assert engine.num_in_flight == 0


async def test_ras_requests_need_an_engine_with_the_processor(tiny_tts: Path) -> None:
    engine = VllmLlmEngine(tiny_tts, VllmEngineSettings(repetition_aware=False))
    with pytest.raises(ValueError, match="repetition-aware"):
        engine.vllm_sampling_params(TTS_DEFAULTS, 10)


def test_plugin_entry_point_is_discoverable(tmp_path: Path) -> None:
    from importlib.metadata import entry_points

    root = expose_vllm_plugin(tmp_path / "plugin")
    try:
        # the installed project declares it too (pyproject); both name the same function
        plugins = [e for e in entry_points(group="vllm.general_plugins") if "stepaudio" in e.name]
        assert plugins
        assert {p.value for p in plugins} == {"services.lm_engine.vllm_engine:register_vllm_step1"}
    finally:
        sys.path.remove(str(root))


def test_the_cpu_path_never_imports_vllm() -> None:
    code = (
        "import sys, services.lm_engine.vllm_engine, services.lm_engine.ras, services.llm.server;"
        "assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- the repetition-aware logits processor ----------------------------------------------------


def added(index: int, prompt: list[int], output: list[int], ras: bool = True) -> tuple:
    params = SimpleNamespace(extra_args={RAS_EXTRA_ARG: True} if ras else None)
    return (index, params, prompt, output)


def batch_update(added=(), removed=(), moved=()) -> SimpleNamespace:  # noqa: ANN001
    return SimpleNamespace(added=list(added), removed=list(removed), moved=list(moved))


def test_ras_request_flag_must_be_a_bool() -> None:
    assert ras_requested({RAS_EXTRA_ARG: True}) and not ras_requested(None)
    with pytest.raises(ValueError, match="bool"):
        ras_requested({RAS_EXTRA_ARG: "yes"})


def test_window_reaches_into_the_prompt() -> None:
    row = RasRow(prompt_tail=list(range(10)), output_ids=[7, 7])
    assert row.window() == [2, 3, 4, 5, 6, 7, 8, 9, 7, 7]
    assert row.banned_token() == 7  # prompt boundary case: the window holds prompt ids
    assert RasRow([1, 2], [5, 5]).banned_token() is None  # fewer than 10 ids: no rule


def test_bans_equal_the_reference_rule_on_random_histories() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        prompt = [rng.randrange(6) for _ in range(rng.randrange(1, 14))]
        output = [rng.randrange(6) for _ in range(rng.randrange(0, 14))]
        state = RasBatchState()
        state.update(batch_update(added=[added(0, prompt, output)]))
        rows, tokens = state.bans()
        expected = repetition_banned_token(prompt + output)
        assert (tokens[0] if rows else None) == expected


def test_output_list_is_read_live() -> None:
    output: list[int] = []
    state = RasBatchState()
    state.update(batch_update(added=[added(0, list(range(100, 110)), output)]))
    assert state.bans() == ([], [])
    output.extend([5, 5])  # vLLM appends sampled ids to the same list object
    assert state.bans() == ([0], [5])


def test_batch_updates_follow_vllm_semantics() -> None:
    rep = [1] * 10
    state = RasBatchState()
    state.update(batch_update(added=[added(0, rep, []), added(1, [2] * 10, []), added(2, rep, [])]))
    state.update(batch_update(added=[added(1, rep, [], ras=False)]))  # row 1 taken by a non-RAS
    assert sorted(state.rows) == [0, 2]
    state.update(batch_update(removed=[0]))
    assert sorted(state.rows) == [2]
    state.update(batch_update(moved=[(2, 0, SimpleNamespace(name="UNIDIRECTIONAL"))]))
    assert sorted(state.rows) == [0]
    state.update(batch_update(added=[added(3, [4] * 10, [])]))
    state.update(batch_update(moved=[(0, 3, SimpleNamespace(name="SWAP"))]))
    assert state.rows[0].prompt_tail == [4] * 10 and state.rows[3].prompt_tail == rep
    state.update(None)
    assert sorted(state.rows) == [0, 3]


def test_apply_masks_only_the_banned_cells() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=generator)
    original = logits.clone()
    state = RasBatchState()
    state.update(
        batch_update(
            added=[added(0, [1] * 10, []), added(2, [0] * 8 + [9, 9], []), added(3, [1] * 10, [])]
        )
    )
    state.update(batch_update(added=[added(3, [1] * 10, [], ras=False)]))
    result = state.apply(logits)
    assert result is logits
    assert torch.isneginf(logits[0, 1]) and torch.isneginf(logits[2, 9])
    changed = (logits != original).nonzero().tolist()
    assert changed == [[0, 1], [2, 9]]


def test_greedy_choice_with_ras_matches_the_torch_sampler() -> None:
    """The processor then argmax picks what ``select_token`` picks for a greedy RAS request."""
    from services.models.step1 import select_token

    generator = torch.Generator().manual_seed(3)
    histories = [[4] * 9 + [7], [5] * 10, list(range(10))]
    logits = torch.randn(3, 20, generator=generator)
    for row, history in enumerate(histories):
        logits[row, history[-1]] = 50.0  # the repeated id would win without the rule
    state = RasBatchState()
    state.update(batch_update(added=[added(i, h, []) for i, h in enumerate(histories)]))
    chosen = state.apply(logits.clone()).argmax(dim=-1).tolist()
    greedy = dataclasses.replace(TTS_DEFAULTS, temperature=0.0)
    expected = [select_token(logits[i], greedy, generator, h) for i, h in enumerate(histories)]
    assert chosen == expected


def test_aqaa_style_checkpoints_are_served_as_step1(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["StepOmniForCausalLM"]}')
    overrides = engine_kwargs(VllmEngineSettings(), tmp_path)["hf_overrides"]
    assert overrides == {"tie_word_embeddings": False, "architectures": ["Step1ForCausalLM"]}
    (tmp_path / "config.json").write_text('{"architectures": ["Step1ForCausalLM"]}')
    overrides = engine_kwargs(VllmEngineSettings(), tmp_path)["hf_overrides"]
    assert overrides == {"tie_word_embeddings": False}
