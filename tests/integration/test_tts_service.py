"""The TTS service over real grpc.aio on loopback, on the tiny pack (TTS LM + token2wav)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.serving.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

from services.common.errors import code_from_rpc_error
from services.common.grpc_client import check_health
from services.lm_engine.engine import AsyncLlmEngine
from services.models.audio_tokens import AUDIO_ID_OFFSET, GROUP_SIZE
from services.tts.config import TtsSettings
from services.tts.server import TTS_SERVICE_NAME, TtsService
from tests.helpers.grpc import (
    TEST_SERVER_SETTINGS,
    RunningService,
    metric,
    pcm_chunks,
    read_wav,
    running_service,
)
from tests.helpers.waits import eventually

pytestmark = pytest.mark.integration

BUILTINS = ["Tingting", "TingtingRAP", "Tingting哼唱"]
F32 = audio_pb2.AUDIO_ENCODING_PCM_F32LE
PROMPT_WAV = Path(__file__).resolve().parents[2] / "services/models/tiny/assets"


def tts_settings(root: Path, voices: Path, **overrides: object) -> TtsSettings:
    # ignore_eos: the tiny LM stops after a handful of ids; a fixed length makes tests exact
    base = {"model_dir": root, "voices_dir": voices, "ignore_eos": True, "max_audio_tokens": 100}
    return TtsSettings(**{**TEST_SERVER_SETTINGS, **base, **overrides})


@pytest.fixture
async def tts(tiny_pack: Path, tmp_path: Path) -> AsyncIterator[RunningService]:
    settings = tts_settings(tiny_pack, tmp_path / "voices")
    async with running_service(TtsService(settings), settings) as running:
        yield running


def stub(running: RunningService) -> tts_pb2_grpc.TtsServiceStub:
    return tts_pb2_grpc.TtsServiceStub(running.channel)


def service_of(running: RunningService) -> TtsService:
    service = running.handle.service
    assert isinstance(service, TtsService)
    return service


async def synthesize(
    running: RunningService, text: str = "你好，世界", **options: object
) -> list[tts_pb2.SynthesizeResponse]:
    request = tts_pb2.SynthesizeRequest(
        text=text,
        voice=str(options.pop("voice", "")),
        options=tts_pb2.SynthesisOptions(**options),  # type: ignore[arg-type]
    )
    return [reply async for reply in stub(running).Synthesize(request, timeout=60)]


def pcm16(replies: Sequence[tts_pb2.SynthesizeResponse]) -> np.ndarray:
    return np.frombuffer(b"".join(r.audio.data for r in replies), "<i2")


def ids_of(replies: Sequence[tts_pb2.SynthesizeResponse]) -> list[int]:
    return [i for reply in replies for i in reply.token_ids]


def expected_samples(running: RunningService, n_ids: int) -> int:
    vocoder = service_of(running).require_engine().models.vocoder
    return vocoder.mel_frames(n_ids) * vocoder.hift.samples_per_frame


def assert_finals(replies: Sequence[tts_pb2.SynthesizeResponse]) -> None:
    assert [r.final for r in replies] == [False] * (len(replies) - 1) + [True]


async def expect_error(awaitable: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await awaitable  # type: ignore[misc]
    return error.value


async def test_health_and_builtin_voices(tts: RunningService) -> None:
    assert await check_health(tts.channel, TTS_SERVICE_NAME)
    reply = await stub(tts).ListVoices(tts_pb2.ListVoicesRequest(), timeout=10)
    assert [(v.name, v.builtin) for v in reply.voices] == [(name, True) for name in BUILTINS]
    assert reply.voices[0].prompt_seconds == pytest.approx(3.23, abs=0.01)


async def test_pcm_length_follows_the_audio_ids(tts: RunningService) -> None:
    replies = await synthesize(tts, seed=3)
    assert_finals(replies)
    assert len(replies) >= 2  # streamed: a chunk before the LM finished
    ids = ids_of(replies)
    assert all(AUDIO_ID_OFFSET <= i < AUDIO_ID_OFFSET + 5120 for i in ids)
    assert all(len(r.token_ids) % GROUP_SIZE == 0 for r in replies[:-1])
    fmt = replies[0].audio.format
    assert (fmt.sample_rate_hz, fmt.encoding, fmt.channels) == (22050, 1, 1)
    samples = pcm16(replies)
    assert samples.size == expected_samples(tts, len(ids))  # 22050 / 41.67 per id, whole frames
    assert samples.size == pytest.approx(len(ids) / (GROUP_SIZE / 0.12) * 22050, abs=256)
    assert replies[-1].audio_seconds == pytest.approx(samples.size / 22050)
    assert metric(tts, "stepaudio_tts_first_chunk_seconds_count") == 1
    assert metric(tts, "stepaudio_tts_requests_total", reason="length") == 1
    assert metric(tts, "stepaudio_tts_realtime_factor_count") == 1
    dropped = metric(tts, "stepaudio_tts_dropped_tokens_total")
    assert len(ids) + dropped == 100  # every LM id is either audio or counted as dropped


async def test_seeded_synthesis_repeats(tts: RunningService) -> None:
    first, second = [await synthesize(tts, seed=11) for _ in range(2)]
    assert ids_of(first) == ids_of(second)
    assert pcm16(first).tobytes() == pcm16(second).tobytes()
    other = await synthesize(tts, seed=12)
    assert ids_of(other) != ids_of(first)


async def test_output_rate_and_float_encoding(tts: RunningService) -> None:
    replies = await synthesize(tts, seed=3, output_sample_rate_hz=16_000, encoding=F32)
    fmt = replies[0].audio.format
    assert (fmt.sample_rate_hz, fmt.encoding) == (16_000, F32)
    samples = np.frombuffer(b"".join(r.audio.data for r in replies), "<f4")
    native = expected_samples(tts, len(ids_of(replies)))
    assert samples.size == pytest.approx(native * 16_000 / 22_050, abs=2)
    assert np.abs(samples).max() <= 1.0


BAD_SYNTHESIZE = [
    ("", {}, "empty_text"),
    ("  ", {}, "empty_text"),
    ("字" * 1001, {}, "text_too_long"),
    ("hi", {"voice": "nobody"}, "unknown_voice"),
    ("hi", {"speed": 5.0}, "invalid_argument"),
    ("hi", {"output_sample_rate_hz": 96_000}, "unsupported_sample_rate"),
]


async def test_bad_synthesize_is_invalid_argument(tts: RunningService) -> None:
    for text, options, code in BAD_SYNTHESIZE:  # one server for all cases: start-up is the cost
        error = await expect_error(synthesize(tts, text, **options))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, code
        assert code_from_rpc_error(error) == code
    assert metric(tts, "stepaudio_tts_errors_total", code="empty_text") == 2
    assert metric(tts, "stepaudio_tts_errors_total", code="unknown_voice") == 1
    assert metric(tts, "stepaudio_tts_requests_total", reason="error") == len(BAD_SYNTHESIZE)


async def test_music_text_uses_the_music_vocoder(tts: RunningService) -> None:
    engine = service_of(tts).require_engine()
    plan = engine.plan("（RAP）我踏上自由的征途", "Tingting")
    assert plan.music and plan.vocoder is engine.models.music_vocoder
    assert plan.prompt_voice.name == "TingtingRAP"
    replies = await synthesize(tts, "（RAP）我踏上自由的征途", seed=1)
    assert pcm16(replies).size == expected_samples(tts, len(ids_of(replies)))


async def test_cancel_mid_stream_aborts_the_lm(tiny_pack: Path, tmp_path: Path) -> None:
    settings = tts_settings(tiny_pack, tmp_path, max_audio_tokens=5000)
    async with running_service(TtsService(settings), settings) as running:
        call = stub(running).Synthesize(tts_pb2.SynthesizeRequest(text="很长的一段话"), timeout=60)
        first = await call.read()
        assert first.audio.data and not first.final
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
        await eventually(
            lambda: metric(running, "stepaudio_tts_requests_total", reason="cancelled") == 1
        )
        lm = service_of(running).require_engine().models.lm
        assert isinstance(lm, AsyncLlmEngine)
        await eventually(lambda: lm.engine.num_running == 0 and not lm.engine.has_work())
        assert metric(running, "stepaudio_tts_active_streams") == 0


# ----- voices --------------------------------------------------------------------------------


def prompt_chunk(samples: np.ndarray, rate: int) -> audio_pb2.AudioChunk:
    (chunk,) = pcm_chunks(samples, rate, chunk_ms=60_000)
    return chunk


def register(
    running: RunningService, name: str, samples: np.ndarray, rate: int, **fields: object
) -> object:
    request = tts_pb2.RegisterVoiceRequest(
        name=name,
        prompt_text=str(fields.pop("prompt_text", "A prompt for a test voice.")),
        prompt_audio=prompt_chunk(samples, rate),
        **fields,  # type: ignore[arg-type]
    )
    return stub(running).RegisterVoice(request, timeout=60)


async def voice_names(running: RunningService) -> list[str]:
    reply = await stub(running).ListVoices(tts_pb2.ListVoicesRequest(), timeout=10)
    return [voice.name for voice in reply.voices]


async def test_voice_register_persist_delete(tiny_pack: Path, tmp_path: Path) -> None:
    settings = tts_settings(tiny_pack, tmp_path / "voices", max_audio_tokens=60)
    wav, rate = read_wav(PROMPT_WAV / "default_voice_prompt.wav")
    async with running_service(TtsService(settings), settings) as running:
        voice = await register(running, "alice", wav, rate)
        assert (voice.name, voice.builtin) == ("alice", False)  # type: ignore[attr-defined]
        assert voice.prompt_seconds == pytest.approx(wav.size / rate, abs=0.05)  # type: ignore[attr-defined]
        assert await voice_names(running) == ["Tingting", "TingtingRAP", "Tingting哼唱", "alice"]
        replies = await synthesize(running, "Hello there", voice="alice", seed=2)
        assert pcm16(replies).size == expected_samples(running, len(ids_of(replies)))
        error = await expect_error(register(running, "alice", wav, rate))
        assert "already exists" in error.details()
        await register(running, "alice", wav, rate, overwrite=True)
        error = await expect_error(register(running, "Tingting", wav, rate, overwrite=True))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "built in" in error.details()
    async with running_service(TtsService(settings), settings) as restarted:
        assert "alice" in await voice_names(restarted)
        delete = stub(restarted).DeleteVoice
        await delete(tts_pb2.DeleteVoiceRequest(name="alice"), timeout=10)
        assert "alice" not in await voice_names(restarted)
        error = await expect_error(delete(tts_pb2.DeleteVoiceRequest(name="alice"), timeout=10))
        assert code_from_rpc_error(error) == "unknown_voice"
        error = await expect_error(delete(tts_pb2.DeleteVoiceRequest(name="Tingting"), timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "built in" in error.details()


BAD_PROMPTS = [  # (seconds, silent, name, prompt_text, part of the message)
    (0.02, False, "bob", "text", "needs at least 0.025 s"),
    (2.0, True, "bob", "text", "silent"),
    (31.0, False, "bob", "text", "frame_too_large: chunk is longer than 30000 ms"),
    (2.0, False, "bad name", "text", "letters, digits"),
    (2.0, False, "bob", "  ", "prompt_text"),
]


async def test_bad_voice_prompt_is_invalid_argument(tts: RunningService) -> None:
    wav, rate = read_wav(PROMPT_WAV / "default_voice_prompt.wav")
    for seconds, silent, name, text, message in BAD_PROMPTS:
        clip = np.resize(wav, int(seconds * rate)) * (0.0 if silent else 1.0)
        error = await expect_error(register(tts, name, clip, rate, prompt_text=text))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in error.details()
    assert "bob" not in await voice_names(tts)


# ----- vocode --------------------------------------------------------------------------------


def vocode_requests(
    batches: Sequence[Sequence[int]], **config: object
) -> list[tts_pb2.VocodeRequest]:
    first = tts_pb2.VocodeRequest(config=tts_pb2.VocodeRequest.VocodeConfig(**config))  # type: ignore[arg-type]
    tokens = tts_pb2.VocodeRequest.AudioTokens
    return [first] + [tts_pb2.VocodeRequest(tokens=tokens(token_ids=list(b))) for b in batches]


async def vocode(
    running: RunningService, requests: Sequence[tts_pb2.VocodeRequest]
) -> list[tts_pb2.SynthesizeResponse]:
    """Write every request (after admission: no write/abort race), half-close, read all."""
    call = stub(running).Vocode(timeout=60)
    await call.initial_metadata()
    try:
        for request in requests:
            await call.write(request)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server ended the call early; reading below raises its status
    return [reply async for reply in call]


def audio_ids(count: int, seed: int = 0) -> list[int]:
    return (AUDIO_ID_OFFSET + np.random.default_rng(seed).integers(0, 5120, count)).tolist()


async def test_vocode_holds_partial_groups_and_decodes_the_rest(tts: RunningService) -> None:
    ids = audio_ids(63)
    cuts = [7, 3, 11, 26, 16]  # none a multiple of 5 except by accident of the sum
    batches = [ids[sum(cuts[:i]) : sum(cuts[: i + 1])] for i in range(len(cuts))]
    options = tts_pb2.SynthesisOptions(seed=5)
    replies = await vocode(tts, vocode_requests(batches, voice="Tingting", options=options))
    assert_finals(replies)
    assert len(replies) >= 2
    assert all(len(r.token_ids) % GROUP_SIZE == 0 for r in replies[:-1])  # whole groups
    assert ids_of(replies) == ids  # the trailing 3 ids are decoded at the end
    assert pcm16(replies).size == expected_samples(tts, len(ids))


async def test_vocode_without_config_uses_the_default_voice(tts: RunningService) -> None:
    requests = vocode_requests([audio_ids(12)])[1:]
    replies = await vocode(tts, requests)
    assert replies[-1].final and pcm16(replies).size == expected_samples(tts, 12)


@pytest.mark.parametrize("bad", [AUDIO_ID_OFFSET - 1, AUDIO_ID_OFFSET + 5120, 7])
async def test_vocode_rejects_non_audio_ids(tts: RunningService, bad: int) -> None:
    batches = [audio_ids(10), [*audio_ids(3), bad, bad]]
    error = await expect_error(vocode(tts, vocode_requests(batches)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the audio range" in error.details()
    assert metric(tts, "stepaudio_tts_invalid_tokens_total") == 2


async def test_too_many_streams_is_resource_exhausted(tiny_pack: Path, tmp_path: Path) -> None:
    settings = tts_settings(tiny_pack, tmp_path, max_streams=1)
    async with running_service(TtsService(settings), settings) as running:
        held = stub(running).Vocode(timeout=30)
        await held.initial_metadata()
        error = await expect_error(vocode(running, vocode_requests([audio_ids(5)])))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert code_from_rpc_error(error) == "overloaded"
        await held.done_writing()
        assert [r.final async for r in held] == [True]


async def test_a_full_vocoder_refuses_before_any_work(tiny_pack: Path, tmp_path: Path) -> None:
    # room for 4 calls, but one stream per device in the batched vocoder
    settings = tts_settings(tiny_pack, tmp_path, max_streams=4, vocoder={"max_streams": 1})
    async with running_service(TtsService(settings), settings) as running:
        engine = service_of(running).require_engine()
        held = stub(running).Vocode(timeout=60)
        await held.initial_metadata()
        await held.write(vocode_requests([])[0])  # config: the engine admits the stream
        await eventually(lambda: engine.vocoder_loop.active == 1)

        refused = stub(running).Vocode(timeout=60)
        await refused.write(vocode_requests([])[0])  # refused once the config is read
        assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "vocoder is full" in await refused.details()
        lm = engine.models.lm
        assert isinstance(lm, AsyncLlmEngine)
        error = await expect_error(synthesize(running, seed=1))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert lm.engine.num_running == 0 and not lm.engine.has_work()  # the LM never started
        assert metric(running, "stepaudio_tts_errors_total", code="overloaded") == 2

        ids = audio_ids(60)
        await held.write(vocode_requests([ids])[1])
        await held.done_writing()
        replies = [reply async for reply in held]
        assert ids_of(replies) == ids and replies[-1].final
        await eventually(lambda: engine.vocoder_loop.active == 0)
        replies = await synthesize(running, seed=1)  # the place is free again
        assert replies[-1].final and pcm16(replies).size
        assert metric(running, "stepaudio_tts_vocoder_batch_streams_count") > 0
