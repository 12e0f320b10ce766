"""The TTS vocoder loop on the CPU (tiny pack): streams decoded together, tick by tick, give
each stream the audio it gets decoded alone; streams join, finish and leave mid-way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.audio import decode_audio_file
from services.common.worker import Overloaded, WorkerClosed
from services.models import layout
from services.models.tiny import ASSETS
from services.models.token2wav import SpeakerPrompt, Token2Wav, Token2WavStream
from services.tts.vocoder_loop import VocoderLoop, VocoderOutput, VocoderStream
from tests.helpers.grpc import eventually

STEPS = 2  # Euler steps: enough to exercise the solver, quick on the CPU
GROUP = 5
NATIVE_HZ = 22050
# Measured on the CPU (fp32, tiny pack, commit of this test): a stream alone in its model's
# step is bit-identical; batched with others its flow runs padded (masked GroupNorm and
# attention), which changes only float summation order: max |diff| 1.6e-5 .. 6.4e-5 of a
# ±0.99 signal, SNR 66..75 dB. Which streams share a tick depends on timing, so with margin:
MAX_ABS_DIFF = 5e-4
MIN_SNR_DB = 50.0


@dataclass
class Voice:
    model: Token2Wav
    prompt: SpeakerPrompt


@dataclass
class Spec:
    """One test utterance: who, how long, and how it is decoded."""

    voice: str
    n_codes: int
    seed: int
    speed: float = 1.0
    volume: float = 1.0
    options: dict[str, float] = field(default_factory=dict)


def codes_for(spec: Spec) -> list[int]:
    return np.random.default_rng(spec.seed).integers(0, 5120, spec.n_codes).tolist()


def open_stream(voices: dict[str, Voice], spec: Spec) -> Token2WavStream:
    voice = voices[spec.voice]
    return voice.model.stream(
        voice.prompt,
        generator=torch.Generator().manual_seed(spec.seed),
        n_timesteps=STEPS,
        speed=spec.speed,
        volume=spec.volume,
    )


def alone(voices: dict[str, Voice], spec: Spec) -> np.ndarray:
    """The reference: the stream decoded by itself, its own feed/finish."""
    stream = open_stream(voices, spec)
    return np.concatenate([stream.feed(codes_for(spec)), stream.finish()])


@pytest.fixture(scope="module")
def voices(tiny_pack: Path) -> dict[str, Voice]:
    normal = Token2Wav.from_pretrained(layout.vocoder_dir(tiny_pack))
    music = Token2Wav.from_pretrained(layout.vocoder_dir(tiny_pack, music=True))
    wav, rate = decode_audio_file(ASSETS / "default_voice_prompt.wav")
    rng = np.random.default_rng(7)
    ids = [65536 + int(c) for c in rng.integers(0, 5120, 60)]
    short = wav[: int(1.5 * rate)]  # a second voice: other prompt mel and code lengths
    return {
        "long": Voice(normal, normal.prepare_speaker(wav, rate, ids)),
        "short": Voice(normal, normal.prepare_speaker(short, rate, ids[:40])),
        "music": Voice(music, music.prepare_speaker(wav, rate, ids[:50])),
    }


@pytest.fixture
async def loop() -> AsyncIterator[tuple[VocoderLoop, list[int]]]:
    sizes: list[int] = []
    vocoder = VocoderLoop(
        max_streams=8,
        max_inbox_codes=20,
        max_undelivered=2,
        on_step=lambda streams, _: sizes.append(streams),
    )
    yield vocoder, sizes
    await vocoder.aclose()


async def produce(
    loop: VocoderLoop,
    voices: dict[str, Voice],
    spec: Spec,
    first_audio: asyncio.Event | None = None,
) -> list[VocoderOutput]:
    """Push the codes group by group (yielding in between), read until the final output."""
    voice = voices[spec.voice]
    stream = loop.open(voice.model, lambda: open_stream(voices, spec), NATIVE_HZ)
    codes = codes_for(spec)

    async def feed() -> None:
        for start in range(0, len(codes), GROUP):
            await stream.push(codes[start : start + GROUP])
            await asyncio.sleep(0.001)  # pacing only: lets other streams and ticks interleave
        await stream.finish()

    feeder = asyncio.create_task(feed())
    outputs: list[VocoderOutput] = []
    try:
        while not (outputs and outputs[-1].final):
            outputs.append(await stream.get())
            if first_audio is not None and outputs[-1].samples.size:
                first_audio.set()
    finally:
        stream.close()
        await feeder
    return outputs


def assert_close_to_alone(got: np.ndarray, want: np.ndarray) -> None:
    assert got.size == want.size
    error = got.astype(np.float64) - want
    snr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / max(np.sum(error**2), 1e-30))
    assert np.abs(error).max() <= MAX_ABS_DIFF
    assert snr >= MIN_SNR_DB


async def test_streams_joining_and_leaving_get_their_audio_alone(
    loop: tuple[VocoderLoop, list[int]], voices: dict[str, Voice]
) -> None:
    vocoder, sizes = loop
    first = [
        Spec("long", 200, seed=1),
        Spec("short", 100, seed=2, volume=2.0),  # finishes early and leaves
        Spec("music", 150, seed=3),  # the other model, same loop
    ]
    later = [
        Spec("short", 150, seed=4, speed=1.5),
        Spec("long", 40, seed=5),  # below the first chunk: one final decode
    ]
    specs = [*first, *later]
    wanted = [alone(voices, spec) for spec in specs]

    first_audio = asyncio.Event()
    tasks = [asyncio.create_task(produce(vocoder, voices, first[0], first_audio))]
    tasks += [asyncio.create_task(produce(vocoder, voices, spec)) for spec in first[1:]]
    # the thread starts once all three have codes waiting: its first tick takes them together
    await eventually(lambda: vocoder.active == 3 and all(s._inbox for s in vocoder._streams))
    vocoder.start()
    await first_audio.wait()  # mid-way: the first streams have audio out, more to come
    tasks += [asyncio.create_task(produce(vocoder, voices, spec)) for spec in later]
    results = [await task for task in tasks]

    for spec, outputs, want in zip(specs, results, wanted, strict=True):
        assert [o.final for o in outputs] == [False] * (len(outputs) - 1) + [True]
        assert outputs[-1].codes_used == spec.n_codes
        assert_close_to_alone(np.concatenate([o.samples for o in outputs]), want)
    assert sizes[0] == 3  # decoded together
    assert vocoder.active == 0


async def test_a_cancelled_stream_leaves_at_once_and_others_are_unaffected(
    loop: tuple[VocoderLoop, list[int]], voices: dict[str, Voice]
) -> None:
    vocoder, _ = loop
    vocoder.start()
    kept, left = Spec("long", 150, seed=11), Spec("short", 400, seed=12)
    want = alone(voices, kept)
    kept_task = asyncio.create_task(produce(vocoder, voices, kept))
    voice = voices[left.voice]
    leaving = vocoder.open(voice.model, lambda: open_stream(voices, left), NATIVE_HZ)
    codes = codes_for(left)
    await leaving.push(codes[:60])  # enough for its first chunk
    first = await leaving.get()
    assert first.samples.size and not first.final
    assert vocoder.active == 2
    leaving.close()  # the client left
    assert vocoder.active == 1
    with pytest.raises(WorkerClosed):
        await leaving.push(codes[60:])
    assert_close_to_alone(np.concatenate([o.samples for o in await kept_task]), want)


async def test_admission_refuses_past_max_streams(voices: dict[str, Voice]) -> None:
    vocoder = VocoderLoop(max_streams=2, max_inbox_codes=20, max_undelivered=2)
    vocoder.start()
    spec = Spec("long", 10, seed=1)
    model = voices[spec.voice].model

    def admit() -> VocoderStream:
        return vocoder.open(model, lambda: open_stream(voices, spec), NATIVE_HZ)

    held, other = admit(), admit()
    with pytest.raises(Overloaded, match="2 streams"):
        admit()
    held.close()  # a stream that leaves frees its place at once
    third = admit()
    await third.finish(codes_for(spec))
    final = await third.get()
    assert final.final and final.codes_used == 10 and final.samples.size
    await vocoder.aclose()
    with pytest.raises(WorkerClosed):  # open streams end when the loop shuts down
        await other.get()
    with pytest.raises(WorkerClosed):
        admit()
