"""Cross-stream batching and the padded (GPU) path, checked on the CPU with the tiny pack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.models.token2wav import SpeakerPrompt, Token2Wav
from services.models.token2wav.accel import AccelOptions, FlowSolver, frame_mask
from services.models.token2wav.batching import StreamStep, step_streams
from services.models.token2wav.estimator import masked_group_norm
from services.models.token2wav.hift import WeightNormConv
from services.models.token2wav.streaming import decode_chunks
from tests.unit.models.token2wav.helpers import (
    PROMPT_SAMPLE_RATE_HZ,
    audio_ids,
    random_codes,
    seeded,
    snr_db,
    voiced_wav,
)

STEPS = 2
GROUP = 5


@pytest.fixture(scope="module")
def other_speaker(model: Token2Wav) -> SpeakerPrompt:
    """A second voice with a longer prompt (different prompt codes and mel frames)."""
    wav = voiced_wav(2.0, PROMPT_SAMPLE_RATE_HZ, seed=3)
    return model.prepare_speaker(wav, PROMPT_SAMPLE_RATE_HZ, audio_ids(83, seed=2))


@pytest.fixture(scope="module")
def padded_model(vocoder_dir: object) -> Token2Wav:
    """The same weights with compile_for_gpu (on the CPU: the padded path, run eagerly)."""
    return Token2Wav.from_pretrained(vocoder_dir, compile=AccelOptions(frame_bucket=16))


def _fed(model: Token2Wav, speaker: SpeakerPrompt, codes: list[int], seed: int) -> np.ndarray:
    stream = model.stream(speaker, generator=seeded(seed), n_timesteps=STEPS)
    pieces = [stream.feed(codes[i : i + GROUP]) for i in range(0, len(codes), GROUP)]
    return np.concatenate([*pieces, stream.finish()])


def test_batched_steps_equal_per_stream_feeding(
    model: Token2Wav, speaker: SpeakerPrompt, other_speaker: SpeakerPrompt
) -> None:
    # two voices (different prompt lengths), lengths below the first chunk, at a hop, beyond
    lengths, voices = [260, 200, 40, 130], [speaker, other_speaker, speaker, other_speaker]
    codes = [random_codes(n, seed=k) for k, n in enumerate(lengths)]
    expected = [
        _fed(model, v, c, seed=5 + k) for k, (v, c) in enumerate(zip(voices, codes, strict=True))
    ]

    streams = [
        model.stream(v, generator=seeded(5 + k), n_timesteps=STEPS) for k, v in enumerate(voices)
    ]
    got: list[list[np.ndarray]] = [[] for _ in streams]
    for start in range(0, max(lengths), GROUP):
        live = [i for i, s in enumerate(streams) if not s.done]
        steps = [
            StreamStep(streams[i], codes[i][start : start + GROUP], start + GROUP >= lengths[i])
            for i in live
        ]
        for i, audio in zip(live, step_streams(model, steps), strict=True):
            got[i].append(audio)
    assert all(s.done for s in streams)
    for want, pieces in zip(expected, got, strict=True):
        audio = np.concatenate(pieces)
        assert audio.size == want.size
        assert snr_db(want, audio) > 50  # float summation order only (≈ 70-80 dB measured)


def test_bulk_codes_decode_every_due_chunk_in_rounds(
    model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    codes = random_codes(230, seed=8)
    want = _fed(model, speaker, codes, seed=3)
    stream = model.stream(speaker, generator=seeded(3), n_timesteps=STEPS)
    reported: list[tuple[int, int, bool]] = []
    (audio,) = step_streams(
        model,
        [StreamStep(stream, codes, finish=True)],
        on_chunk=lambda i, job, _: reported.append((i, job.stop, job.final)),
    )
    # 45 → 105 → 225 (hops 30, 60, 120), then the rest in the final chunk
    assert reported == [(0, 45, False), (0, 105, False), (0, 225, False), (0, 230, True)]
    assert audio.size == want.size and snr_db(want, audio) > 50


def test_padded_path_matches_the_unpadded_model(
    model: Token2Wav, padded_model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    codes = random_codes(150, seed=2)
    mel = model.generate_mel(codes, speaker, generator=seeded(1), n_timesteps=STEPS)
    mel_padded = padded_model.generate_mel(codes, speaker, generator=seeded(1), n_timesteps=STEPS)
    assert np.abs(mel - mel_padded).max() < 1e-4
    fed = _fed(model, speaker, codes, seed=4)
    fed_padded = _fed(padded_model, speaker, codes, seed=4)
    assert fed.size == fed_padded.size and snr_db(fed, fed_padded) > 50


def test_padded_decode_batch_equals_synthesize(
    padded_model: Token2Wav, speaker: SpeakerPrompt
) -> None:
    codes = [random_codes(60, seed=s) for s in (1, 2, 3)]
    batch = padded_model.decode_batch(
        codes, [speaker] * 3, generators=[seeded(s) for s in (1, 2, 3)], n_timesteps=STEPS
    )
    for c, s, audio in zip(codes, (1, 2, 3), batch, strict=True):
        alone = padded_model.synthesize(c, speaker, generator=seeded(s), n_timesteps=STEPS)
        assert snr_db(alone, audio) > 50


def test_masked_group_norm_equals_group_norm_on_valid_frames() -> None:
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(1, 16, 23)
    full = masked_group_norm(norm, x, torch.ones(1, 1, 23))
    torch.testing.assert_close(full, norm(x), atol=1e-5, rtol=1e-5)
    padded = torch.cat([x, torch.randn(1, 16, 9) * 50], dim=2)  # garbage after frame 23
    out = masked_group_norm(norm, padded, frame_mask([23], 32, x.device, x.dtype))
    torch.testing.assert_close(out[:, :, :23], norm(x), atol=1e-5, rtol=1e-5)
    empty = masked_group_norm(norm, padded, torch.zeros(1, 1, 32))  # a batch-padding row
    assert torch.isfinite(empty).all()


def test_mu_padded_matches_per_item_conditions(
    model: Token2Wav, speaker: SpeakerPrompt, other_speaker: SpeakerPrompt
) -> None:
    flow = model.flow
    items = [(speaker, random_codes(45, seed=1)), (other_speaker, random_codes(75, seed=2))]
    rows, segments, alone = [], [], []
    for voice, codes in items:
        prompt = torch.from_numpy(voice.prompt_codes).long()
        frames = model.mel_frames(len(codes))
        segs = [(len(codes), frames)]
        conditions = flow.conditions(
            torch.tensor(codes)[None],
            prompt[None],
            torch.from_numpy(voice.prompt_mel)[None],
            torch.from_numpy(voice.embedding)[None],
            segs,
        )
        alone.append(conditions.mu[0])
        rows.append(torch.cat([prompt, torch.tensor(codes)]))
        segments.append([(prompt.numel(), voice.prompt_mel.shape[0]), *segs])
    mu, lengths = flow.mu_padded(rows, segments)
    for i, want in enumerate(alone):
        assert lengths[i] == want.shape[1]
        torch.testing.assert_close(mu[i, :, : lengths[i]], want, atol=1e-5, rtol=1e-4)
        assert not mu[i, :, lengths[i] :].any()


def test_solver_splits_batches_above_the_largest_bucket(model: Token2Wav) -> None:
    torch.manual_seed(1)
    b, t = 5, 40
    mu, noise, cond = torch.randn(b, 80, t), torch.randn(b, 80, t), torch.randn(b, 80, t)
    spks, lengths = torch.randn(b, 80), [40, 33, 17, 40, 25]
    wide = FlowSolver(model.flow, AccelOptions(frame_bucket=8, batch_buckets=(1, 8)))
    narrow = FlowSolver(model.flow, AccelOptions(frame_bucket=8, batch_buckets=(1, 2)))
    with torch.inference_mode():
        a = wide.solve(noise, mu, spks, cond, lengths, 2, 0.7)
        c = narrow.solve(noise, mu, spks, cond, lengths, 2, 0.7)
    assert a.shape == c.shape == (b, 80, t)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(a[i, :, :n], c[i, :, :n], atol=1e-5, rtol=1e-4)


def test_accel_options_buckets() -> None:
    options = AccelOptions(frame_bucket=64, batch_buckets=(1, 4, 16))
    assert options.frames_for(351) == 384 and options.frames_for(384) == 384
    assert [options.batch_for(b) for b in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    with pytest.raises(ValueError):
        options.batch_for(17)
    with pytest.raises(ValueError):
        AccelOptions(batch_buckets=(4, 2))
    with pytest.raises(ValueError):
        AccelOptions(frame_bucket=0)


def test_frozen_weight_norm_is_bit_identical() -> None:
    conv = WeightNormConv(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 10)
    before = conv(x)
    conv.freeze()
    assert torch.equal(conv(x), before)


def test_jobs_and_steps_refuse_two_per_stream(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    stream = model.stream(speaker, generator=seeded(0), n_timesteps=1)
    stream.push(random_codes(120, seed=1))
    first, second = stream.next_job(), stream.next_job()
    assert first is not None and second is not None
    with pytest.raises(ValueError):
        decode_chunks(model, [first, second])
    with pytest.raises(ValueError):
        step_streams(model, [StreamStep(stream), StreamStep(stream)])


def test_finishing_an_empty_stream_makes_no_job(model: Token2Wav, speaker: SpeakerPrompt) -> None:
    stream = model.stream(speaker, generator=seeded(0), n_timesteps=1)
    (audio,) = step_streams(model, [StreamStep(stream, [], finish=True)])
    assert audio.size == 0 and stream.done
    with pytest.raises(RuntimeError):
        stream.push([1, 2, 3])


def test_small_groups_join_a_longer_call_when_padding_is_cheap(
    vocoder_dir: object, speaker: SpeakerPrompt
) -> None:
    from services.models.token2wav.streaming import _flow_groups

    def jobs_for(model: Token2Wav) -> list:
        first = model.stream(speaker, generator=seeded(0), n_timesteps=1)
        first.push(random_codes(45, seed=1))
        second = model.stream(speaker, generator=seeded(1), n_timesteps=1)
        second.push(random_codes(105, seed=2))
        second.next_job()  # tokens [0, 45) done: the next job is [30, 105), longer
        return [first.next_job(), second.next_job()]

    def load(**options: object) -> Token2Wav:
        return Token2Wav.from_pretrained(
            vocoder_dir, compile=AccelOptions(frame_bucket=16, **options)
        )

    merging = load(first_chunks_apart=False)
    separate = load(merge_frames=0, first_chunks_apart=False)
    assert _flow_groups(merging, jobs_for(merging)) == [[1, 0]]
    assert _flow_groups(separate, jobs_for(separate)) == [[0], [1]]
    # by default a first chunk (job 0) gets its own call, ahead of the merged rest
    apart = load()
    assert _flow_groups(apart, jobs_for(apart)) == [[0], [1]]
    later = [job for job in jobs_for(apart) if job.start > 0]
    assert _flow_groups(apart, later) == [[0]]


def test_overlap_add_istft_equals_torch_istft(model: Token2Wav) -> None:
    from services.models.token2wav.hift import istft_overlap_add

    window = model.hift.stft_window
    spectrum = torch.randn(3, 9, 40, dtype=torch.complex64, generator=seeded(2))
    want = torch.istft(spectrum, 16, 4, 16, window=window)
    torch.testing.assert_close(istft_overlap_add(spectrum, 16, 4, window), want)
    mel = torch.randn(2, 80, 12, generator=seeded(3)) - 5
    source = torch.randn(2, 1, 12 * 256, generator=seeded(4)) * 0.1
    with torch.inference_mode():
        a, b = model.hift.decode(mel, source), model.hift.decode(mel, source, True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_hift_graphs_stay_out_of_the_way_on_the_cpu(padded_model: Token2Wav) -> None:
    graphs = padded_model.hift_graphs
    assert graphs is not None
    window = torch.zeros(1, 80, 10)
    assert (
        graphs.run(
            window, torch.zeros(1, 1, 0), torch.zeros(1, 9), torch.zeros(1, 9, 2560), None, 0, 2560
        )
        is None
    )


def test_hift_window_shapes_are_those_a_stream_makes(
    model: Token2Wav, speaker: SpeakerPrompt, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HiFT warm-up's shape list is what a real stream asks HiFT for (non-final chunks)."""
    from services.models.token2wav import streaming

    seen: set[tuple[int, int, int]] = set()
    original = streaming._push_group

    def spy(vocoders, new_mels, rights, finals):  # type: ignore[no-untyped-def]
        for vocoder, mel, right, final in zip(vocoders, new_mels, rights, finals, strict=True):
            if not final:
                shape = (vocoder.mel_tail.shape[2], mel.shape[2])
                seen.add((*shape, vocoder._right(right, final).shape[2]))
        return original(vocoders, new_mels, rights, finals)

    monkeypatch.setattr(streaming, "_push_group", spy)
    tokens = 420
    stream = model.stream(speaker, generator=seeded(0), n_timesteps=1)
    for start in range(0, tokens, 5):
        stream.feed(random_codes(5, seed=start))
    stream.finish()
    options = streaming.StreamOptions(n_timesteps=1)
    assert seen == streaming.hift_window_shapes(model, options, tokens)
    assert len(seen) == 3  # first, second, steady
    # longer utterances add a steady chunk one frame longer (frames round per absolute token)
    longer = streaming.hift_window_shapes(model, options, 5000)
    assert seen < longer and {new for _, new, _ in longer - seen} == {249}
    assert model.warm_up_hift(options) == 0  # no HiFT graphs (and no GPU) here: nothing to do
