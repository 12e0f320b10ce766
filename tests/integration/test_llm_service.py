"""The LLM gRPC service on the tiny Chat checkpoint: streaming, cancel, limits, health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from stepaudio.serving.v1 import llm_pb2, llm_pb2_grpc

from services.llm.config import LlmSettings
from services.llm.server import LLM_SERVICE_NAME, LlmService
from services.models.tiny.lm import chat_spec, write_tiny_step1
from tests.helpers.grpc import TEST_SERVER_SETTINGS, RunningService, running_service
from tests.helpers.waits import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm-root")
    write_tiny_step1(root / "Step-Audio-Chat", chat_spec(), seed=1)
    return root


@pytest.fixture
async def llm(model_root: Path) -> AsyncIterator[tuple[RunningService, LlmService]]:
    settings = LlmSettings(
        **TEST_SERVER_SETTINGS, model_dir=model_root, max_running=2, max_waiting=1
    )
    service = LlmService(settings, CollectorRegistry())
    async with running_service(service, settings) as running:
        yield running, service


def chat_request(request_id: str, text: str, **sampling: float) -> llm_pb2.GenerateRequest:
    message = llm_pb2.ChatMessage(role="user", content=[llm_pb2.ContentPart(text=text)])
    audio = llm_pb2.ContentPart(audio=llm_pb2.AudioTokens(token_ids=[65536 + 3, 65536 + 1030]))
    message.content.append(audio)
    return llm_pb2.GenerateRequest(
        request_id=request_id,
        chat=llm_pb2.ChatPrompt(messages=[message]),
        sampling=llm_pb2.SamplingParams(**sampling),
    )


def counter(service: LlmService, name: str, **labels: str) -> float:
    value = service.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def test_health_and_info(llm: tuple[RunningService, LlmService]) -> None:
    running, _ = llm
    health = health_pb2_grpc.HealthStub(running.channel)
    for name in ("", LLM_SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    info = await llm_pb2_grpc.LlmServiceStub(running.channel).Info(llm_pb2.InfoRequest())
    assert (info.engine, info.vocab_size) == ("torch", 74752)


async def test_generate_streams_text_until_stop(llm: tuple[RunningService, LlmService]) -> None:
    running, service = llm
    stub = llm_pb2_grpc.LlmServiceStub(running.channel)
    replies = [r async for r in stub.Generate(chat_request("a", "Hi", temperature=0.7, seed=3))]
    assert replies[-1].finished
    assert replies[-1].finish_reason == llm_pb2.FINISH_REASON_STOP
    ids = [i for r in replies for i in r.token_ids]
    assert ids and replies[-1].completion_tokens == len(ids)
    assert "".join(r.text for r in replies) == service.tokenizer.decode(ids)
    again = [r async for r in stub.Generate(chat_request("b", "Hi", temperature=0.7, seed=3))]
    assert [i for r in again for i in r.token_ids] == ids  # seeded: same reply


async def test_client_cancel_reaches_the_engine(llm: tuple[RunningService, LlmService]) -> None:
    running, service = llm
    stub = llm_pb2_grpc.LlmServiceStub(running.channel)
    long = llm_pb2.GenerateRequest(
        request_id="long",
        tokens=llm_pb2.TokenPrompt(token_ids=[1, 4, 600, 601, 3, 4]),
        sampling=llm_pb2.SamplingParams(max_tokens=2000, ignore_eos=True, seed=1),
    )
    call = stub.Generate(long)
    await call.read()
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    await eventually(
        lambda: counter(service, "stepaudio_llm_requests_total", reason="cancelled") >= 1,
        what="the cancelled request counted",
    )
    await eventually(
        lambda: service.engine.engine.num_running == 0,  # type: ignore[union-attr]
        what="the request aborted in the engine",
    )


async def test_cancel_rpc_ends_a_running_request(llm: tuple[RunningService, LlmService]) -> None:
    running, _ = llm
    stub = llm_pb2_grpc.LlmServiceStub(running.channel)
    call = stub.Generate(
        llm_pb2.GenerateRequest(
            request_id="victim",
            tokens=llm_pb2.TokenPrompt(token_ids=[1, 4, 600, 3, 4]),
            sampling=llm_pb2.SamplingParams(max_tokens=5000, seed=2, ignore_eos=True),
        )
    )
    await call.read()
    assert (await stub.Cancel(llm_pb2.CancelRequest(request_id="victim"))).found
    replies = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)
    assert replies[-1].finish_reason == llm_pb2.FINISH_REASON_CANCELLED
    assert not (await stub.Cancel(llm_pb2.CancelRequest(request_id="victim"))).found


async def test_bad_requests_are_invalid_argument(llm: tuple[RunningService, LlmService]) -> None:
    running, _ = llm
    stub = llm_pb2_grpc.LlmServiceStub(running.channel)
    bad = [
        llm_pb2.GenerateRequest(request_id="x"),  # no prompt
        llm_pb2.GenerateRequest(tokens=llm_pb2.TokenPrompt(token_ids=[1, 99999])),
        llm_pb2.GenerateRequest(chat=llm_pb2.ChatPrompt()),
        llm_pb2.GenerateRequest(
            tokens=llm_pb2.TokenPrompt(token_ids=[1]),
            sampling=llm_pb2.SamplingParams(temperature=-2),
        ),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            [r async for r in stub.Generate(request)]
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("invalid_argument: ")


async def test_overload_is_resource_exhausted(llm: tuple[RunningService, LlmService]) -> None:
    running, service = llm
    stub = llm_pb2_grpc.LlmServiceStub(running.channel)

    def endless(index: int) -> llm_pb2.GenerateRequest:
        return llm_pb2.GenerateRequest(
            request_id=f"busy{index}",
            tokens=llm_pb2.TokenPrompt(token_ids=[1, 4, 600 + index, 3, 4]),
            sampling=llm_pb2.SamplingParams(max_tokens=5000, seed=index, ignore_eos=True),
        )

    calls = []
    for index in range(2):  # two running requests fill both slots
        calls.append(stub.Generate(endless(index)))
        await calls[-1].read()
    calls.append(stub.Generate(endless(2)))  # the one allowed waiter
    await eventually(
        lambda: service.engine.engine.num_waiting == 1,  # type: ignore[union-attr]
        what="the third request waiting in the engine",
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        [r async for r in stub.Generate(endless(9))]
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in calls:
        call.cancel()
        await call.code()


async def test_history_is_trimmed_to_the_prompt_budget(
    llm: tuple[RunningService, LlmService],
) -> None:
    running, service = llm
    stub = llm_pb2_grpc.LlmServiceStub(running.channel)

    def message(role: str, text: str) -> llm_pb2.ChatMessage:
        return llm_pb2.ChatMessage(role=role, content=[llm_pb2.ContentPart(text=text)])

    history = [message("system", "Be brief.")]
    for index in range(6):
        history += [message("user", f"question {index} " * 5), message("assistant", "an answer")]
    history.append(message("user", "last question"))
    request = llm_pb2.GenerateRequest(
        chat=llm_pb2.ChatPrompt(messages=history),
        sampling=llm_pb2.SamplingParams(max_tokens=2, seed=1),
        max_prompt_tokens=80,
    )
    replies = [r async for r in stub.Generate(request)]
    assert replies[-1].prompt_tokens <= 80
    assert replies[-1].dropped_messages > 0
    request.max_prompt_tokens = 5  # not even the system prompt and the question fit
    with pytest.raises(grpc.aio.AioRpcError) as error:
        [r async for r in stub.Generate(request)]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "even without history" in error.value.details()
    assert service.tokenizer is not None
