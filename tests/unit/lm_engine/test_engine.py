"""The torch LLM engine: continuous batching, abort, admission, async streaming."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from services.lm_engine.engine import (
    AsyncLlmEngine,
    EngineOverloaded,
    FinishReason,
    GenerationRequest,
    TorchLlmEngine,
)
from services.models.step1 import TTS_DEFAULTS, SamplingParams, Step1ForCausalLM, generate
from services.models.tiny.lm import tts_spec, write_tiny_step1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Step1ForCausalLM:
    folder = tmp_path_factory.mktemp("llm") / "tts"
    write_tiny_step1(folder, tts_spec(), seed=2)
    return Step1ForCausalLM.from_pretrained(folder)


PROMPTS = [[1, 4, 10, 11, 12, 3, 4, 13], [1, 4, 20, 3, 4], [1, 4, 30, 31, 32, 33, 34, 35, 36, 3, 4]]


def params(seed: int, max_tokens: int = 30) -> SamplingParams:
    return dataclasses.replace(TTS_DEFAULTS, seed=seed, max_tokens=max_tokens)


def run_to_completion(engine: TorchLlmEngine) -> dict[str, list]:
    outputs: dict[str, list] = {}
    while engine.has_work():
        for output in engine.step():
            outputs.setdefault(output.request_id, []).append(output)
    return outputs


def test_batched_generation_equals_generating_each_alone(model: Step1ForCausalLM) -> None:
    engine = TorchLlmEngine(model, max_running=2)  # 3 requests, 2 slots: one waits for a slot
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(GenerationRequest(f"r{index}", prompt, params(index)))
    outputs = run_to_completion(engine)
    for index, prompt in enumerate(PROMPTS):
        ids = [t for o in outputs[f"r{index}"] for t in o.token_ids]
        assert ids == list(generate(model, prompt, params(index)))
        assert outputs[f"r{index}"][-1].finished
    assert engine.num_running == 0 and sorted(engine._free_slots) == [0, 1]


def test_max_tokens_ends_with_length(model: Step1ForCausalLM) -> None:
    engine = TorchLlmEngine(model)
    request = GenerationRequest("r", PROMPTS[0], dataclasses.replace(params(5), max_tokens=3))
    engine.add_request(request)
    outputs = run_to_completion(engine)["r"]
    expected = list(generate(model, PROMPTS[0], request.params))
    assert [t for o in outputs for t in o.token_ids] == expected
    if len(expected) == 3:
        assert outputs[-1].finish_reason is FinishReason.LENGTH


def test_abort_frees_the_slot_and_reports_cancelled(model: Step1ForCausalLM) -> None:
    engine = TorchLlmEngine(model, max_running=1)
    engine.add_request(GenerationRequest("a", PROMPTS[0], params(1, 1000)))
    engine.add_request(GenerationRequest("b", PROMPTS[1], params(2, 1000)))
    engine.step()
    engine.abort("a")
    engine.abort("b")  # still waiting
    outputs = engine.step()
    reasons = {o.request_id: o.finish_reason for o in outputs if o.finished}
    assert reasons == {"a": FinishReason.CANCELLED, "b": FinishReason.CANCELLED}
    assert not engine.has_work() and engine._free_slots == [0]


def test_admission_limit_and_validation(model: Step1ForCausalLM) -> None:
    engine = TorchLlmEngine(model, max_running=1, max_waiting=1)
    engine.add_request(GenerationRequest("a", PROMPTS[0], params(1)))  # for the free slot
    engine.add_request(GenerationRequest("b", PROMPTS[0], params(1)))  # waits
    with pytest.raises(EngineOverloaded):
        engine.add_request(GenerationRequest("c", PROMPTS[0], params(1)))
    with pytest.raises(ValueError, match="empty"):
        engine.validate(GenerationRequest("c", [], params(1)))
    with pytest.raises(ValueError, match="prompt ids must be in"):
        engine.validate(GenerationRequest("c", [80000], params(1)))


async def test_async_engine_streams_and_cancels(model: Step1ForCausalLM) -> None:
    engine = AsyncLlmEngine(TorchLlmEngine(model, max_running=4))
    await engine.start()
    try:
        request = GenerationRequest("x", PROMPTS[2], params(7))
        ids = [t async for out in engine.generate(request) for t in out.token_ids]
        assert ids == list(generate(model, PROMPTS[2], params(7)))

        long_request = GenerationRequest("y", PROMPTS[0], params(3, 10_000))
        stream = engine.generate(long_request)
        await anext(stream)
        assert await engine.abort("y")
        rest = [out async for out in stream]
        assert rest[-1].finished and rest[-1].finish_reason is FinishReason.CANCELLED

        # a consumer that walks away (client disconnect) aborts its request in the engine
        stream = engine.generate(GenerationRequest("z", PROMPTS[1], params(4, 10_000)))
        await anext(stream)
        await stream.aclose()
        for _ in range(100):
            if engine.engine.num_running == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.engine.num_running == 0
    finally:
        await engine.close()


def test_failed_step_fails_every_request(model: Step1ForCausalLM) -> None:
    engine = TorchLlmEngine(model, max_running=1)
    engine.add_request(GenerationRequest("a", PROMPTS[0], params(1)))
    engine.add_request(GenerationRequest("b", PROMPTS[1], params(1)))
    engine.step()
    outputs = engine.fail_all("boom")
    assert {o.request_id for o in outputs} == {"a", "b"}
    assert all(o.finished and o.error == "boom" for o in outputs)
    assert not engine.has_work()


def test_engine_from_pretrained_folder(tmp_path: Path) -> None:
    write_tiny_step1(tmp_path / "m", tts_spec(), seed=2)
    engine = TorchLlmEngine.from_pretrained(tmp_path / "m", max_running=2)
    assert engine.cache.slots == 2


def test_without_a_queue_free_slots_still_admit(model: Step1ForCausalLM) -> None:
    engine = TorchLlmEngine(model, max_running=1, max_waiting=0)
    engine.add_request(GenerationRequest("a", PROMPTS[0], params(1)))  # takes the free slot
    with pytest.raises(EngineOverloaded):
        engine.add_request(GenerationRequest("b", PROMPTS[0], params(1)))
    engine.step()
    with pytest.raises(EngineOverloaded):  # the slot is busy and nothing may wait
        engine.add_request(GenerationRequest("b", PROMPTS[0], params(1)))
