"""gRPC front of the LLM engine: prompt rendering, validation, streaming, cancel, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable

import grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from stepaudio.serving.v1 import llm_pb2, llm_pb2_grpc

from services.common.errors import ErrorCode, abort, abort_for_exception
from services.common.metrics import ServiceMetrics
from services.llm.config import LlmSettings
from services.lm_engine.engine import (
    AsyncLlmEngine,
    EngineClosed,
    EngineOverloaded,
    FinishReason,
    GenerationRequest,
    LlmEngine,
    TorchLlmEngine,
)
from services.models.audio_tokens import (
    AUDIO_CODES,
    AUDIO_ID_OFFSET,
    GROUP_SIZE,
    in_audio_block,
    is_audio_id,
)
from services.models.prompts import AudioContent, ChatMessage, build_chat_prompt
from services.models.step1 import SamplingParams
from services.models.text_tokenizer import IncrementalDecoder, TextTokenizer

log = logging.getLogger(__name__)

LLM_SERVICE_NAME: str = llm_pb2.DESCRIPTOR.services_by_name["LlmService"].full_name
_FINISH: dict[FinishReason, llm_pb2.FinishReason.ValueType] = {
    FinishReason.STOP: llm_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: llm_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: llm_pb2.FINISH_REASON_CANCELLED,
}
MAX_REQUEST_ID_CHARS = 128


def build_engine(settings: LlmSettings) -> LlmEngine:
    """The configured engine; vLLM is imported only when asked for."""
    if settings.engine == "vllm":
        from services.lm_engine.vllm_engine import VllmLlmEngine  # GPU hosts only

        return VllmLlmEngine(settings.model_path, settings.vllm)
    torch_engine = TorchLlmEngine.from_pretrained(
        settings.model_path,
        device=settings.device,
        max_running=settings.max_running,
        max_waiting=settings.max_waiting,
        cache_capacity=settings.cache_capacity,
    )
    return AsyncLlmEngine(torch_engine, name="llm-engine")


def audio_ids(token_ids: Iterable[int]) -> list[int]:
    """An audio part's ids, each one of the 5120 audio codes: any other id would be rendered
    as an ``<audio_N>`` string the model never saw (API10: validate before use)."""
    ids = list(token_ids)
    outside = [i for i in ids if not is_audio_id(i)]
    if outside:
        raise ValueError(
            f"{len(outside)} audio ids outside {AUDIO_ID_OFFSET}.."
            f"{AUDIO_ID_OFFSET + AUDIO_CODES - 1}, e.g. {outside[0]}"
        )
    return ids


def chat_messages(prompt: llm_pb2.ChatPrompt) -> list[ChatMessage]:
    messages = []
    for message in prompt.messages:
        parts: list[str | AudioContent] = []
        for part in message.content:
            if part.HasField("audio"):
                parts.append(AudioContent(audio_ids(part.audio.token_ids)))
            else:
                parts.append(part.text)
        messages.append(ChatMessage(message.role, parts))
    return messages


def fit_chat_prompt(
    tokenizer: TextTokenizer, messages: list[ChatMessage], max_tokens: int
) -> tuple[list[int], int]:
    """Drop the oldest non-system messages until the prompt has at most ``max_tokens`` ids."""
    dropped = 0
    ids = build_chat_prompt(tokenizer, messages)
    while max_tokens and len(ids) > max_tokens:
        droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
        if not droppable:
            raise ValueError(
                f"the prompt needs {len(ids)} tokens even without history "
                f"(max_prompt_tokens {max_tokens})"
            )
        del messages[droppable[0]]
        dropped += 1
        ids = build_chat_prompt(tokenizer, messages)
    return ids, dropped


class PieceSplitter:
    """Sorts one stream's ids into pieces: text deltas and whole audio groups, in order.

    Text vs audio is read from each id, never from an assumed interleave ratio. Audio-block ids
    outside the audio codes are skipped and an incomplete last group is dropped; the end piece
    names both (``invalid_audio_tokens``) so the consumer needs no id ranges.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._group: list[int] = []
        self._skipped = 0

    def push(self, ids: Iterable[int]) -> list[llm_pb2.StreamPiece]:
        pieces: list[llm_pb2.StreamPiece] = []
        text_ids: list[int] = []
        for token_id in ids:
            if not in_audio_block(token_id):
                text_ids.append(token_id)
                continue
            self._add_text(pieces, text_ids)
            text_ids = []
            if not is_audio_id(token_id):
                self._skipped += 1
                continue
            self._group.append(token_id)
            if len(self._group) == GROUP_SIZE:
                pieces.append(
                    llm_pb2.StreamPiece(audio_group=llm_pb2.AudioTokens(token_ids=self._group))
                )
                self._group = []
        self._add_text(pieces, text_ids)
        return pieces

    def end(self, finish_reason: llm_pb2.FinishReason.ValueType) -> list[llm_pb2.StreamPiece]:
        """The held-back text, then the end piece."""
        pieces: list[llm_pb2.StreamPiece] = []
        if text := self._decoder.flush():
            pieces.append(llm_pb2.StreamPiece(text=text))
        end = llm_pb2.StreamEnd(finish_reason=finish_reason, malformed_audio=self._malformed())
        pieces.append(llm_pb2.StreamPiece(end=end))
        return pieces

    def _add_text(self, pieces: list[llm_pb2.StreamPiece], text_ids: list[int]) -> None:
        if text_ids and (text := self._decoder.push(text_ids)):
            pieces.append(llm_pb2.StreamPiece(text=text))

    def _malformed(self) -> llm_pb2.MalformedAudio | None:
        problems = []
        if self._skipped:
            problems.append(
                f"{self._skipped} id(s) outside the {AUDIO_CODES} audio codes were skipped"
            )
        if leftover := len(self._group):
            problems.append(
                f"an incomplete audio group ({leftover} of {GROUP_SIZE} ids) was dropped"
            )
        if not problems:
            return None
        return llm_pb2.MalformedAudio(
            code=ErrorCode.INVALID_AUDIO_TOKENS,
            message="the end-to-end model's audio tokens were malformed: " + "; ".join(problems),
            invalid_ids=self._skipped + leftover,
        )


def response_text(pieces: Iterable[llm_pb2.StreamPiece]) -> str:
    return "".join(piece.text for piece in pieces if piece.WhichOneof("kind") == "text")


class LlmService:
    """Engine, tokenizer and metrics of the LLM service (a ``GrpcService``)."""

    name = "llm"
    service_names = (LLM_SERVICE_NAME,)

    def __init__(self, settings: LlmSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(self.name, registry)
        self.registry = self.metrics.registry
        self.time_to_first_token = self.metrics.histogram(
            "time_to_first_token", "Request arrival to its first generated token."
        )
        self.request_seconds = self.metrics.histogram("request", "Whole Generate call duration.")
        self.generated_tokens = self.metrics.counter("generated_tokens", "Tokens generated.")
        self.finished = self.metrics.counter(
            "requests", "Finished Generate requests by reason.", ["reason"]
        )
        self.cancel_calls = self.metrics.counter(
            "cancel_calls", "Cancel RPCs, by whether the request was found.", ["found"]
        )
        self.engine: LlmEngine | None = None
        self.tokenizer: TextTokenizer | None = None

    def register(self, server: grpc.aio.Server) -> None:
        llm_pb2_grpc.add_LlmServiceServicer_to_server(LlmServicer(self), server)

    async def start(self) -> None:
        self.tokenizer = await asyncio.to_thread(
            TextTokenizer.from_folder, self.settings.model_path
        )
        self.engine = await asyncio.to_thread(build_engine, self.settings)
        await self.engine.start()
        log.info("llm engine=%s model=%s", self.engine.engine_name, self.settings.model_path)

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()

    def sampling_params(self, sampling: llm_pb2.SamplingParams) -> SamplingParams:
        s = self.settings
        max_tokens = sampling.max_tokens or s.max_tokens
        return SamplingParams(
            temperature=sampling.temperature if sampling.HasField("temperature") else s.temperature,
            top_p=sampling.top_p or s.top_p,
            top_k=sampling.top_k or s.top_k,
            max_tokens=min(max_tokens, s.max_tokens),
            repetition_aware=sampling.repetition_aware,
            seed=sampling.seed if sampling.HasField("seed") else None,
            stop_token_ids=tuple(sampling.stop_token_ids),
            ignore_eos=sampling.ignore_eos,
        )

    def prompt_ids(self, request: llm_pb2.GenerateRequest) -> tuple[list[int], int]:
        """The prompt ids and how many chat messages were dropped to fit the budget."""
        assert self.tokenizer is not None
        which = request.WhichOneof("prompt")
        if which == "chat":
            if not request.chat.messages:
                raise ValueError("chat prompt has no messages")
            return fit_chat_prompt(
                self.tokenizer, chat_messages(request.chat), request.max_prompt_tokens
            )
        if which == "tokens":
            return list(request.tokens.token_ids), 0
        raise ValueError("GenerateRequest needs a chat or tokens prompt")


class LlmServicer(llm_pb2_grpc.LlmServiceServicer):
    def __init__(self, service: LlmService) -> None:
        self._service = service

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.GenerateResponse]:
        service = self._service
        engine, tokenizer = service.engine, service.tokenizer
        assert engine is not None and tokenizer is not None
        request_id = request.request_id or uuid.uuid4().hex
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            await abort(context, ErrorCode.INVALID_ARGUMENT, "request_id is too long")
        trace.get_current_span().set_attribute("stepaudio.request_id", request_id)
        try:
            params = service.sampling_params(request.sampling)
            prompt, dropped = service.prompt_ids(request)
            generation = GenerationRequest(request_id, prompt, params)
            if isinstance(engine, AsyncLlmEngine):
                engine.engine.validate(generation)
        except ValueError as exc:
            service.metrics.record_error(ErrorCode.INVALID_ARGUMENT)
            await abort(context, ErrorCode.INVALID_ARGUMENT, str(exc))
        started = time.perf_counter()
        splitter = PieceSplitter(tokenizer)
        first = True
        try:
            # aclosing: however the call ends (cancel, client gone), the engine request is
            # aborted now, not when the generator is collected
            async with contextlib.aclosing(engine.generate(generation)) as outputs:
                async for output in outputs:
                    if output.error:
                        raise RuntimeError(output.error)
                    if output.token_ids and first:
                        service.time_to_first_token.observe(time.perf_counter() - started)
                        first = False
                    service.generated_tokens.inc(len(output.token_ids))
                    finish_reason = llm_pb2.FINISH_REASON_UNSPECIFIED
                    if output.finish_reason:
                        finish_reason = _FINISH.get(output.finish_reason, finish_reason)
                    pieces = splitter.push(output.token_ids)
                    if output.finished:
                        pieces += splitter.end(finish_reason)
                        service.finished.labels(reason=str(output.finish_reason)).inc()
                    yield llm_pb2.GenerateResponse(
                        token_ids=output.token_ids,
                        text=response_text(pieces),
                        finished=output.finished,
                        finish_reason=finish_reason,
                        prompt_tokens=output.prompt_tokens,
                        completion_tokens=output.completion_tokens,
                        dropped_messages=dropped,
                        pieces=pieces,
                    )
        except (asyncio.CancelledError, GeneratorExit):
            # the client cancelled, its deadline passed, or grpc closed this response stream
            # (a cancelled client): closing the engine stream aborted the request
            service.finished.labels(reason=str(FinishReason.CANCELLED)).inc()
            raise
        except (EngineOverloaded, EngineClosed) as exc:
            service.metrics.record_error(exc.code)
            await abort_for_exception(context, exc)
        except ValueError as exc:
            service.metrics.record_error(ErrorCode.INVALID_ARGUMENT)
            await abort(context, ErrorCode.INVALID_ARGUMENT, str(exc))
        except RuntimeError as exc:
            service.metrics.record_error(ErrorCode.INTERNAL_ERROR)
            await abort_for_exception(context, exc)
        finally:
            service.request_seconds.observe(time.perf_counter() - started)

    async def Cancel(  # noqa: N802 - gRPC method name
        self, request: llm_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb2.CancelResponse:
        assert self._service.engine is not None
        found = await self._service.engine.abort(request.request_id)
        self._service.cancel_calls.labels(found=str(found).lower()).inc()
        return llm_pb2.CancelResponse(found=found)

    async def Info(  # noqa: N802 - gRPC method name
        self, request: llm_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb2.InfoResponse:
        engine = self._service.engine
        assert engine is not None
        return llm_pb2.InfoResponse(
            model_name=self._service.settings.model_name,
            engine=engine.engine_name,
            vocab_size=engine.vocab_size,
            max_seq_len=engine.max_seq_len,
        )
