"""TtsEngine pieces and its synthesis loop over a scripted LM (real tiny token2wav)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from pathlib import Path

import pytest

from services.common.audio import AudioError, decode_audio_file
from services.lm_engine.engine import FinishReason, GenerationOutput, GenerationRequest
from services.models import layout
from services.models.audio_tokenizer import AudioTokenizer
from services.models.text_tokenizer import TextTokenizer
from services.models.tiny import ASSETS
from services.models.token2wav import SpeakerStore, Token2Wav
from services.tts.config import TtsSettings
from services.tts.engine import (
    AudioPiece,
    EngineUnavailable,
    GroupBuffer,
    InvalidTokensError,
    SynthesisOptions,
    TtsEngine,
    TtsError,
    TtsModels,
    check_audio_ids,
    split_audio_ids,
)
from services.tts.voices import Voice, VoiceRegistry

A = 65536  # first audio id


def test_group_buffer_holds_partial_groups() -> None:
    groups = GroupBuffer()
    assert groups.push([A] * 3) == []
    assert groups.push([A + 1] * 4) == [A] * 3 + [A + 1] * 2
    assert groups.push([A + 2] * 11) == [A + 1] * 2 + [A + 2] * 8
    assert groups.rest() == [A + 2] * 3
    assert groups.rest() == []


def test_audio_id_checks() -> None:
    assert split_audio_ids([A, 5, A + 5119, A + 5120, 3]) == ([A, A + 5119], 3)
    assert check_audio_ids([A, A + 5119]) == [A, A + 5119]
    with pytest.raises(InvalidTokensError) as error:
        check_audio_ids([A, A - 1, A + 5120])
    assert error.value.count == 2 and error.value.code == "invalid_argument"


def test_options_are_checked() -> None:
    assert SynthesisOptions().checked(22050).output_sample_rate_hz == 22050
    assert (
        SynthesisOptions(output_sample_rate_hz=16000).checked(22050).output_sample_rate_hz == 16000
    )
    with pytest.raises(TtsError):
        SynthesisOptions(speed=3.0).checked(22050)
    with pytest.raises(TtsError):
        SynthesisOptions(volume=-1.0).checked(22050)
    with pytest.raises(AudioError):
        SynthesisOptions(output_sample_rate_hz=4000).checked(22050)


class ScriptedLm:
    """An LlmEngine that replays outputs; records whether a request was closed unfinished."""

    engine_name = "scripted"
    vocab_size = 74752
    max_seq_len = 8192

    def __init__(self, script: Sequence[list[int]], finish: FinishReason = FinishReason.STOP):
        self.script, self.finish = list(script), finish
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.error: str | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def abort(self, request_id: str) -> bool:
        return False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        self.requests.append(request)
        finished = False
        try:
            for ids in self.script:
                yield GenerationOutput(request.request_id, ids)
            finished = True
            yield GenerationOutput(request.request_id, [], True, self.finish, error=self.error)
        finally:
            if not finished:
                self.aborted.append(request.request_id)


@pytest.fixture(scope="module")
def parts(tiny_pack: Path) -> tuple[TextTokenizer, AudioTokenizer, Token2Wav, Token2Wav, Voice]:
    vocoder = Token2Wav.from_pretrained(layout.vocoder_dir(tiny_pack))
    music = Token2Wav.from_pretrained(layout.vocoder_dir(tiny_pack, music=True))
    wav, rate = decode_audio_file(ASSETS / "default_voice_prompt.wav")
    ids = [A + (i * 37) % 5120 for i in range(60)]  # any audio ids: the tokenizer is not needed
    prompt = vocoder.prepare_speaker(wav, rate, ids)
    voice = Voice("Tingting", "prompt text", ids, prompt, wav.size / rate, builtin=True)
    return (
        TextTokenizer.from_folder(layout.tts_dir(tiny_pack)),
        AudioTokenizer.from_pretrained(layout.tokenizer_dir(tiny_pack)),
        vocoder,
        music,
        voice,
    )


@pytest.fixture
async def engine_and_lm(
    parts: tuple[TextTokenizer, AudioTokenizer, Token2Wav, Token2Wav, Voice],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[TtsEngine, ScriptedLm]]:
    text, audio_tokenizer, vocoder, music, voice = parts
    lm = ScriptedLm(getattr(request, "param", [[A + i for i in range(7)]] * 10))
    voices = VoiceRegistry(SpeakerStore(tmp_path), [voice], seconds_per_frame=256 / 22050)
    models = TtsModels(lm, text, audio_tokenizer, vocoder, music, voices)
    engine = TtsEngine(models, TtsSettings(voices_dir=tmp_path))
    await engine.start()
    yield engine, lm
    await engine.close()


async def collect(pieces: AsyncIterator[AudioPiece]) -> list[AudioPiece]:
    return [piece async for piece in pieces]


def samples_for(engine: TtsEngine, n_ids: int, speed: float = 1.0) -> int:
    vocoder = engine.models.vocoder
    return vocoder.mel_frames(n_ids, speed) * vocoder.hift.samples_per_frame


MIXED = [[A, A + 1, 5, A + 2], [3000, A + 3, A + 4, A + 5]] * 12  # 2 text ids per 6 audio ids


@pytest.mark.parametrize("engine_and_lm", [MIXED], indirect=True)
async def test_non_audio_ids_are_dropped_and_counted(
    engine_and_lm: tuple[TtsEngine, ScriptedLm],
) -> None:
    engine, lm = engine_and_lm
    pieces = await collect(engine.synthesize("你好", "", SynthesisOptions(seed=1)))
    assert [p.final for p in pieces][-1] and not any(p.final for p in pieces[:-1])
    ids = [i for p in pieces for i in p.token_ids]
    assert len(ids) == 72 and all(i >= A for i in ids)
    assert sum(p.dropped_ids for p in pieces) == 24
    assert pieces[-1].finish_reason == "stop"
    assert sum(p.samples.size for p in pieces) == samples_for(engine, 72)
    assert lm.requests[0].params.repetition_aware and lm.requests[0].params.seed == 1
    assert not lm.aborted


# long enough that the LM is still running when the first audio arrives: the feeder hands the
# vocoder at most one chunk of ids ahead of the loop
@pytest.mark.parametrize("engine_and_lm", [[[A + i for i in range(7)]] * 100], indirect=True)
async def test_closing_the_iterator_aborts_the_lm(
    engine_and_lm: tuple[TtsEngine, ScriptedLm],
) -> None:
    engine, lm = engine_and_lm
    async with aclosing(engine.synthesize("你好", "Tingting", SynthesisOptions())) as pieces:
        first = await anext(pieces)
        assert first.samples.size and not first.final
    assert lm.aborted == [lm.requests[0].request_id]


async def test_speed_shortens_and_rate_resamples(
    engine_and_lm: tuple[TtsEngine, ScriptedLm],
) -> None:
    engine, _ = engine_and_lm
    fast = await collect(engine.synthesize("hi", "", SynthesisOptions(speed=2.0, seed=1)))
    n = sum(len(p.token_ids) for p in fast)
    assert sum(p.samples.size for p in fast) == samples_for(engine, n, speed=2.0)
    low = await collect(engine.synthesize("hi", "", SynthesisOptions(output_sample_rate_hz=11025)))
    assert {p.sample_rate_hz for p in low} == {11025}
    assert sum(p.samples.size for p in low) == pytest.approx(samples_for(engine, n) / 2, abs=2)


async def test_lm_failures_surface(engine_and_lm: tuple[TtsEngine, ScriptedLm]) -> None:
    engine, lm = engine_and_lm
    lm.error = "boom"
    with pytest.raises(RuntimeError, match="boom"):
        await collect(engine.synthesize("hi", "", SynthesisOptions()))
    lm.error, lm.finish = None, FinishReason.CANCELLED  # what a closing engine sends
    with pytest.raises(EngineUnavailable):
        await collect(engine.synthesize("hi", "", SynthesisOptions()))


def batches(sizes: Sequence[int]) -> Iterator[list[int]]:
    start = 0
    for size in sizes:
        yield [A + (start + i) % 5120 for i in range(size)]
        start += size


async def aiter_of(items: Iterator[list[int]]) -> AsyncIterator[list[int]]:
    for item in items:
        yield item


async def test_vocode_groups_and_remainder(engine_and_lm: tuple[TtsEngine, ScriptedLm]) -> None:
    engine, _ = engine_and_lm
    pieces = await collect(engine.vocode(aiter_of(batches([3, 9, 40, 1])), "", SynthesisOptions()))
    assert all(len(p.token_ids) % 5 == 0 for p in pieces[:-1])
    assert sum(len(p.token_ids) for p in pieces) == 53
    assert sum(p.samples.size for p in pieces) == samples_for(engine, 53)


async def test_vocode_refuses_bad_ids_and_too_many(
    engine_and_lm: tuple[TtsEngine, ScriptedLm],
) -> None:
    engine, _ = engine_and_lm
    with pytest.raises(InvalidTokensError):
        await collect(engine.vocode(aiter_of(iter([[A, 12]])), "", SynthesisOptions()))
    limit = engine.settings.max_audio_tokens
    with pytest.raises(TtsError, match="more than"):
        await collect(engine.vocode(aiter_of(batches([5, limit])), "", SynthesisOptions()))


async def test_unknown_voice_and_text_checks(engine_and_lm: tuple[TtsEngine, ScriptedLm]) -> None:
    engine, lm = engine_and_lm
    for text, voice, code in [("hi", "nobody", "unknown_voice"), (" ", "", "empty_text")]:
        with pytest.raises(ValueError) as error:
            await collect(engine.synthesize(text, voice, SynthesisOptions()))
        assert getattr(error.value, "code", None) == code
    assert not lm.requests  # refused before the LM saw anything


async def test_vocode_of_nothing_gives_one_empty_final(
    engine_and_lm: tuple[TtsEngine, ScriptedLm],
) -> None:
    engine, _ = engine_and_lm
    options = SynthesisOptions(output_sample_rate_hz=16000)
    (piece,) = await collect(engine.vocode(aiter_of(iter([])), "", options))
    assert piece.final and piece.samples.size == 0 and piece.token_ids == []
