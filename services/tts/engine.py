"""TTS engine: Step-Audio-TTS-3B LM → audio ids → streaming CosyVoice token2wav (no grpc here).

``TtsEngine.synthesize`` follows upstream's ``StepAudioTTS.__call__``: ``plan_tts`` picks the
system prompt and the vocoder (RAP / humming → ``CosyVoice-300M-25Hz-Music`` and the voice's
``{name}{instruction}`` prompt when it exists), ``build_tts_prompt`` lays out the ids, the LM
samples with the repetition-aware rule, and its audio ids are decoded as they arrive by a
``Token2WavStream`` (in whole 5-id groups). Built-in voices are named in the system prompt;
user voices use clone mode (no name), as upstream does for cloned speakers.

``TtsEngine.vocode`` decodes audio ids that a client streams in (an end-to-end LLM's output).

Work off the event loop: the LM runs on its own engine thread (``AsyncLlmEngine``; or vLLM),
token2wav on the device's ``VocoderLoop`` thread (vocoder_loop.py: every active stream's due
chunks decoded together each tick; admission of at most ``vocoder.max_streams`` streams), and
voice preparation (audio tokenizer + speaker features + the file write) on a worker thread, so
a registration never stalls streaming audio. Per request, a feeder task moves the LM's ids into
the vocoder stream while the request's iterator yields the audio that comes back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

import numpy as np
import torch

from services.common.audio import AudioError, as_float_mono, check_sample_rate
from services.common.worker import EngineWorker
from services.lm_engine.engine import (
    AsyncLlmEngine,
    FinishReason,
    GenerationRequest,
    LlmEngine,
    TorchLlmEngine,
)
from services.models import layout
from services.models.audio_tokenizer import AudioTokenizer
from services.models.audio_tokens import AUDIO_CODES, AUDIO_ID_OFFSET, GROUP_SIZE, is_audio_id
from services.models.prompts import build_tts_prompt, plan_tts
from services.models.step1 import SamplingParams
from services.models.text_tokenizer import TextTokenizer
from services.models.token2wav import (
    Speaker,
    SpeakerStore,
    Token2Wav,
    Token2WavStream,
    UnknownSpeakerError,
    load_upstream_speakers,
)
from services.models.token2wav.controls import check_controls
from services.tts.config import TtsSettings
from services.tts.vocoder_loop import VocoderLoop, VocoderStream
from services.tts.voices import Voice, VoiceError, VoiceRegistry, check_prompt_text

log = logging.getLogger(__name__)

T = TypeVar("T")
# AudioError codes that the shared error vocabulary knows; token2wav's finer ones
# (audio_too_short, audio_too_long, silent_audio) are reported as invalid_audio.
_KNOWN_AUDIO_CODES = frozenset({"invalid_audio", "empty_audio", "unsupported_sample_rate"})
VOICE_QUEUE = 8  # registrations waiting for the voice worker before "overloaded"
WARMUP_IDS = 60  # enough audio ids for one streamed chunk and a finish


class TtsError(ValueError):
    """A request the engine refuses; ``code`` is a stable error code (INVALID_ARGUMENT)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidTokensError(TtsError):
    """Vocode ids outside the audio range; ``count`` of them in the offending message."""

    def __init__(self, count: int, example: int) -> None:
        last = AUDIO_ID_OFFSET + AUDIO_CODES - 1
        super().__init__(
            "invalid_argument",
            f"{count} token id(s) outside the audio range {AUDIO_ID_OFFSET}..{last} "
            f"(first: {example})",
        )
        self.count = count


class EngineUnavailable(RuntimeError):
    """The LM engine stopped under a request (shutdown)."""

    code = "unavailable"


@dataclass(frozen=True)
class SynthesisOptions:
    output_sample_rate_hz: int = 0  # 0 = token2wav's native rate (22050)
    speed: float = 1.0
    volume: float = 1.0
    seed: int | None = None  # seeds the LM sampling and token2wav's noise

    def checked(self, native_rate_hz: int) -> SynthesisOptions:
        """Validated, with the output rate resolved (TtsError / AudioError when invalid)."""
        try:
            check_controls(self.speed, self.volume)
        except ValueError as exc:
            raise TtsError("invalid_argument", str(exc)) from exc
        rate = check_sample_rate(self.output_sample_rate_hz or native_rate_hz)
        return replace(self, output_sample_rate_hz=rate)


@dataclass(frozen=True)
class AudioPiece:
    """Decoded audio and the ids behind it (ids fed since the previous piece)."""

    samples: np.ndarray  # float32 mono at sample_rate_hz
    sample_rate_hz: int
    token_ids: list[int]
    final: bool = False
    dropped_ids: int = 0  # non-audio LM ids dropped since the previous piece
    finish_reason: str | None = None  # final piece of Synthesize: "stop" or "length"


@dataclass(frozen=True)
class SynthesisPlan:
    prompt_ids: list[int]  # the TTS LM prompt
    voice: Voice  # the requested voice
    prompt_voice: Voice  # whose prompt conditions LM and token2wav (``TingtingRAP`` for RAP)
    music: bool
    vocoder: Token2Wav  # CosyVoice-300M-25Hz or its -Music sibling


@dataclass(frozen=True)
class _IdBatch:
    ids: list[int]
    dropped: int = 0
    finish_reason: str | None = None


class GroupBuffer:
    """Holds audio ids until whole 5-id groups (2 linguistic + 3 semantic) are complete."""

    def __init__(self) -> None:
        self._pending: list[int] = []

    def push(self, ids: Sequence[int]) -> list[int]:
        """Add ids; returns the whole groups now complete (possibly none)."""
        self._pending.extend(ids)
        whole = len(self._pending) - len(self._pending) % GROUP_SIZE
        groups, self._pending = self._pending[:whole], self._pending[whole:]
        return groups

    def rest(self) -> list[int]:
        """End of input: the incomplete trailing group (decoded too, like upstream's offline
        path decodes every id the LM produced)."""
        rest, self._pending = self._pending, []
        return rest


def split_audio_ids(ids: Sequence[int]) -> tuple[list[int], int]:
    """LM output → (its audio ids, how many other ids were dropped)."""
    audio = [int(i) for i in ids if is_audio_id(i)]
    return audio, len(ids) - len(audio)


def check_audio_ids(ids: Sequence[int]) -> list[int]:
    bad = [int(i) for i in ids if not is_audio_id(i)]
    if bad:
        raise InvalidTokensError(len(bad), bad[0])
    return [int(i) for i in ids]


@dataclass(frozen=True)
class _VocoderPlan:
    """How to open one utterance's stream in the vocoder loop."""

    model: Token2Wav
    open_stream: Callable[[], Token2WavStream]  # called on the loop thread
    output_hz: int


class _FeedState:
    """What the feeder task learnt from the LM (read by the consumer when it yields)."""

    def __init__(self) -> None:
        self.ids: list[int] = []  # every audio id handed to the vocoder, in order
        self.dropped = 0  # non-audio ids not yet reported
        self.finish_reason: str | None = None

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped


async def _feed(stream: VocoderStream, batches: AsyncIterator[_IdBatch], state: _FeedState) -> None:
    """The feeder task: LM (or Vocode) ids → whole groups → the vocoder stream; an error
    (bad ids, LM failure) ends the stream and reaches the consumer."""
    groups = GroupBuffer()
    try:
        async for batch in batches:
            state.dropped += batch.dropped
            state.finish_reason = batch.finish_reason or state.finish_reason
            whole = groups.push(batch.ids)
            state.ids += whole
            await stream.push([i - AUDIO_ID_OFFSET for i in whole])
        rest = groups.rest()
        state.ids += rest
        await stream.finish([i - AUDIO_ID_OFFSET for i in rest])
    except Exception as exc:
        stream.abort(exc)


async def _once(item: T) -> AsyncIterator[T]:
    yield item


# ----- loading -------------------------------------------------------------------------------


def build_lm(settings: TtsSettings) -> LlmEngine:
    """The TTS LM engine (torch reference or vLLM), as the LLM service selects its engine."""
    folder = layout.tts_dir(settings.model_dir)
    if settings.engine == "vllm":
        from services.lm_engine.vllm_engine import VllmLlmEngine  # GPU hosts only

        return VllmLlmEngine(folder, settings.vllm)
    torch_engine = TorchLlmEngine.from_pretrained(
        folder,
        device=settings.device,
        max_running=settings.max_running,
        max_waiting=settings.max_waiting,
        cache_capacity=settings.cache_capacity,
    )
    return AsyncLlmEngine(torch_engine, name="tts-lm")


def prepare_speaker(
    tokenizer: AudioTokenizer,
    vocoder: Token2Wav,
    name: str,
    prompt_text: str,
    wav: np.ndarray,
    rate: int,
) -> Speaker:
    """Upstream's registration: ids from the trimmed clip, mel + x-vector from the whole clip.

    Raises VoiceError (invalid_audio, unsupported_sample_rate, ...) with token2wav's message.
    """
    try:
        ids = tokenizer.tokenize(wav, rate, trim=True)
        if not ids:
            raise AudioError("invalid_audio", "speaker prompt: too little speech to tokenize")
        prompt = vocoder.prepare_speaker(wav, rate, ids)
    except AudioError as exc:
        code = exc.code if exc.code in _KNOWN_AUDIO_CODES else "invalid_audio"
        raise VoiceError(code, str(exc)) from exc
    return Speaker.from_prompt(name, prompt_text, ids, prompt)


def builtin_voices(
    settings: TtsSettings, tokenizer: AudioTokenizer, vocoder: Token2Wav
) -> list[Voice]:
    """Voices of ``<model root>/speakers/`` (none when the folder is missing)."""
    folder = layout.speakers_dir(settings.model_dir)
    if not folder.is_dir():
        log.warning("no built-in voices: %s is missing", folder)
        return []
    voices = []
    for name, text, wav, rate in load_upstream_speakers(folder):
        speaker = prepare_speaker(tokenizer, vocoder, name, text, wav, rate)
        voices.append(
            Voice(name, text, speaker.prompt_ids, speaker.to_prompt(), wav.size / rate, True)
        )
    return voices


@dataclass
class TtsModels:
    """Everything the engine loads once (blocking; call ``load`` off the event loop)."""

    lm: LlmEngine
    text_tokenizer: TextTokenizer
    audio_tokenizer: AudioTokenizer
    vocoder: Token2Wav
    music_vocoder: Token2Wav
    voices: VoiceRegistry

    @classmethod
    def load(cls, settings: TtsSettings) -> TtsModels:
        root, device = settings.model_dir, settings.device
        dtype = torch.float32 if device == "cpu" else torch.bfloat16  # upstream: bf16 flow on GPU
        audio_tokenizer = AudioTokenizer.from_pretrained(
            layout.tokenizer_dir(root), num_threads=settings.tokenizer_threads, device=device
        )
        accel = settings.vocoder.compile
        vocoder = Token2Wav.from_pretrained(
            layout.vocoder_dir(root), device=device, dtype=dtype, compile=accel
        )
        music = Token2Wav.from_pretrained(
            layout.vocoder_dir(root, music=True), device=device, dtype=dtype, compile=accel
        )
        mel = vocoder.config.feat_extractor
        voices = VoiceRegistry(
            SpeakerStore(settings.voices_dir),
            builtin_voices(settings, audio_tokenizer, vocoder),
            seconds_per_frame=mel.hop_size / mel.sampling_rate,
            allow_builtin_override=settings.allow_builtin_override,
        )
        voices.load()
        if settings.default_voice not in voices:
            raise ValueError(f"default voice {settings.default_voice!r} is not a known voice")
        return cls(
            lm=build_lm(settings),
            text_tokenizer=TextTokenizer.from_folder(layout.tts_dir(root)),
            audio_tokenizer=audio_tokenizer,
            vocoder=vocoder,
            music_vocoder=music,
            voices=voices,
        )


# ----- the engine ----------------------------------------------------------------------------


class TtsEngine:
    """Synthesis, vocoding and voices over loaded ``TtsModels``; see the module docstring."""

    def __init__(
        self,
        models: TtsModels,
        settings: TtsSettings,
        *,
        on_vocoder_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.models = models
        self.settings = settings
        stream = settings.stream_options()
        # (streams, seconds) of each batched token2wav step; called on the vocoder thread
        self.vocoder_loop = VocoderLoop(
            max_streams=settings.vocoder.max_streams,
            max_inbox_codes=stream.max_hop_tokens + stream.overlap_tokens,
            max_undelivered=settings.vocoder.max_undelivered,
            on_step=on_vocoder_step,
        )
        self._voice_worker = EngineWorker("tts-voices", VOICE_QUEUE)
        self._voice_lock = asyncio.Lock()  # check-then-write of one voice at a time

    @property
    def voices(self) -> VoiceRegistry:
        return self.models.voices

    @property
    def sample_rate_hz(self) -> int:
        return self.models.vocoder.sample_rate_hz

    async def start(self) -> None:
        await self.models.lm.start()
        self.vocoder_loop.start()
        self._voice_worker.start()

    async def close(self) -> None:
        await self.vocoder_loop.aclose()
        await self._voice_worker.aclose()
        await self.models.lm.close()

    async def warm_up(self) -> None:
        """One short LM generation and one streamed decode per vocoder, before SERVING.

        The first call of each model pays one-off costs (CUDA kernels and cuBLAS handles, ONNX
        sessions, allocator growth): about 10 s per vocoder on an H100, which a first user
        would otherwise wait for.
        """
        voice = self.voice("")
        params = replace(self.sampling(0), max_tokens=GROUP_SIZE, ignore_eos=True)
        request = GenerationRequest(f"tts-warmup-{uuid.uuid4().hex}", voice.prompt_ids, params)
        async with aclosing(self.models.lm.generate(request)) as outputs:
            async for _ in outputs:
                pass
        options = SynthesisOptions(seed=0).checked(self.sample_rate_hz)
        ids = voice.prompt_ids[:WARMUP_IDS]
        for vocoder in (self.models.vocoder, self.models.music_vocoder):
            plan = self._vocoder_plan(vocoder, voice, options)
            async with aclosing(self._decode(plan, _once(_IdBatch(ids)))) as pieces:
                async for _ in pieces:
                    pass
            # GPU fast path: capture every streaming HiFT window shape now, not mid-stream
            # (the first pass of each H200 run lost 2x to captures; none on the CPU)
            await asyncio.to_thread(vocoder.warm_up_hift, self.settings.stream_options())

    # -- synthesis -----------------------------------------------------------------------------

    def check_text(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise TtsError("empty_text", "text is empty")
        if len(text) > self.settings.max_text_chars:
            raise TtsError(
                "text_too_long",
                f"text has {len(text)} characters; at most {self.settings.max_text_chars}",
            )
        return text

    def voice(self, name: str) -> Voice:
        return self.voices.get(name or self.settings.default_voice)

    def sampling(self, seed: int | None) -> SamplingParams:
        s = self.settings
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_audio_tokens,
            repetition_aware=True,  # upstream's RepetitionAwareLogitsProcessor
            seed=seed,
            ignore_eos=s.ignore_eos,
        )

    async def synthesize(
        self, text: str, voice_name: str, options: SynthesisOptions, *, request_id: str = ""
    ) -> AsyncGenerator[AudioPiece, None]:
        """Audio pieces as the LM's ids are decoded; the last one has ``final`` set.

        Closing the iterator (or cancelling its consumer) aborts the LM request; token2wav
        stops after the call it is running.
        """
        options = options.checked(self.sample_rate_hz)
        plan = self.plan(text, voice_name)
        lm_request = GenerationRequest(
            f"tts-{uuid.uuid4().hex}", plan.prompt_ids, self.sampling(options.seed)
        )
        log.debug(
            "synthesize request_id=%s lm_id=%s voice=%s music=%s prompt_ids=%d",
            request_id, lm_request.request_id, plan.prompt_voice.name, plan.music,
            len(plan.prompt_ids),
        )  # fmt: skip
        vocoder = self._vocoder_plan(plan.vocoder, plan.prompt_voice, options)
        async with (
            aclosing(self._lm_audio(lm_request)) as batches,
            aclosing(self._decode(vocoder, batches)) as pieces,
        ):
            async for piece in pieces:
                yield piece

    def plan(self, text: str, voice_name: str) -> SynthesisPlan:
        """Upstream's choices for one text: system prompt, speaker prompt, vocoder."""
        text = self.check_text(text)
        voice = self.voice(voice_name)
        tts_plan = plan_tts(text, voice.lm_speaker)
        prompt_voice = voice
        if tts_plan.music:
            prompt_voice = self.voices.for_instruction(voice, tts_plan.instruction)
        prompt_ids = build_tts_prompt(
            self.models.text_tokenizer,
            text,
            speaker=voice.lm_speaker,
            prompt_text=prompt_voice.prompt_text,
            prompt_ids=prompt_voice.prompt_ids,
        )
        vocoder = self.models.music_vocoder if tts_plan.music else self.models.vocoder
        return SynthesisPlan(prompt_ids, voice, prompt_voice, tts_plan.music, vocoder)

    async def _lm_audio(self, request: GenerationRequest) -> AsyncGenerator[_IdBatch, None]:
        """The LM's audio ids; other ids are dropped (and counted)."""
        outputs = self.models.lm.generate(request)
        async with aclosing(outputs):
            try:
                async for output in outputs:
                    if output.error:
                        raise RuntimeError(f"TTS LM failed: {output.error}")
                    if output.finished and output.finish_reason == FinishReason.CANCELLED:
                        raise EngineUnavailable("the TTS LM stopped (shutting down)")
                    audio, dropped = split_audio_ids(output.token_ids)
                    reason = str(output.finish_reason) if output.finished else None
                    yield _IdBatch(audio, dropped, reason)
            except ValueError as exc:  # the LM refused the prompt (too long for max_seq_len)
                raise TtsError("invalid_argument", f"TTS LM: {exc}") from exc

    async def vocode(
        self, batches: AsyncIterator[Sequence[int]], voice_name: str, options: SynthesisOptions
    ) -> AsyncGenerator[AudioPiece, None]:
        """Decode streamed audio ids (whole groups as they complete; the remainder at the end).

        Ids outside the audio range raise InvalidTokensError before any of that message is
        decoded; more than ``max_audio_tokens`` in all raise TtsError.
        """
        options = options.checked(self.sample_rate_hz)
        voice = self.voice(voice_name)
        plan = self._vocoder_plan(self.models.vocoder, voice, options)
        async with (
            aclosing(self._checked_batches(batches)) as checked,
            aclosing(self._decode(plan, checked)) as pieces,
        ):
            async for piece in pieces:
                yield piece

    async def _checked_batches(
        self, batches: AsyncIterator[Sequence[int]]
    ) -> AsyncGenerator[_IdBatch, None]:
        total, limit = 0, self.settings.max_audio_tokens
        async for ids in batches:
            checked = check_audio_ids(ids)
            total += len(checked)
            if total > limit:
                raise TtsError("invalid_argument", f"more than {limit} audio ids in one Vocode")
            yield _IdBatch(checked)

    async def _decode(
        self, plan: _VocoderPlan, batches: AsyncIterator[_IdBatch]
    ) -> AsyncGenerator[AudioPiece, None]:
        """Stream ids into the vocoder loop (a feeder task, whole groups as they complete)
        while yielding its audio; admission happens here, before the first id is read."""
        stream = self.vocoder_loop.open(plan.model, plan.open_stream, plan.output_hz)
        state = _FeedState()
        feeder = asyncio.create_task(_feed(stream, batches, state))
        try:
            reported = 0  # ids already attached to a piece
            while True:
                output = await stream.get()
                if not (output.samples.size or output.final):
                    continue
                ids, reported = state.ids[reported : output.codes_used], output.codes_used
                if output.final:
                    yield AudioPiece(
                        output.samples,
                        plan.output_hz,
                        ids,
                        True,
                        state.take_dropped(),
                        state.finish_reason,
                    )
                    return
                dropped = state.take_dropped()
                yield AudioPiece(output.samples, plan.output_hz, ids, dropped_ids=dropped)
        finally:
            stream.close()
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    def _vocoder_plan(
        self, vocoder: Token2Wav, voice: Voice, options: SynthesisOptions
    ) -> _VocoderPlan:
        stream_options = replace(
            self.settings.stream_options(), speed=options.speed, volume=options.volume
        )
        generator = None
        if options.seed is not None:
            generator = torch.Generator().manual_seed(options.seed)

        def open_stream() -> Token2WavStream:
            return vocoder.stream(voice.prompt, generator=generator, **asdict(stream_options))

        return _VocoderPlan(vocoder, open_stream, options.output_sample_rate_hz)

    # -- voices --------------------------------------------------------------------------------

    def list_voices(self) -> list[Voice]:
        return self.voices.list()

    async def register_voice(
        self, name: str, prompt_text: str, samples: np.ndarray, rate: int, *, overwrite: bool
    ) -> Voice:
        """Tokenize (trimmed) + speaker features, persist, then serve it (VoiceError if bad)."""
        text = check_prompt_text(prompt_text)
        wav = as_float_mono(samples)
        seconds, limit = wav.size / rate, self.settings.max_prompt_s
        if seconds > limit:
            raise VoiceError(
                "invalid_audio", f"speaker prompt is {seconds:.1f} s; at most {limit:.0f} s"
            )
        async with self._voice_lock:
            self.voices.check_can_register(name, overwrite)
            speaker = await self._voice_worker.run(
                prepare_speaker,
                self.models.audio_tokenizer,
                self.models.vocoder,
                name,
                text,
                wav,
                rate,
            )
            await self._voice_worker.run(self.voices.store.put, speaker)
            voice = self.voices.user_voice(speaker)
            self.voices.add_user(voice)
        log.info("voice registered name=%r prompt_s=%.2f", name, voice.prompt_seconds)
        return voice

    async def delete_voice(self, name: str) -> None:
        async with self._voice_lock:
            self.voices.check_can_delete(name)
            try:
                await self._voice_worker.run(self.voices.store.delete, name)
            except UnknownSpeakerError:  # the file is already gone; forget it anyway
                pass
            self.voices.remove_user(name)
        log.info("voice deleted name=%r", name)
