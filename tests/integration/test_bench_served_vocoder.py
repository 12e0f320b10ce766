"""The served-vocoder benchmark runs end to end on the tiny pack (CPU smoke run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.bench_served_vocoder import _underruns, run

pytestmark = pytest.mark.integration


async def test_bench_runs_concurrent_vocode_streams(tiny_pack: Path) -> None:
    result = await run([1, 3], method="vocode", n_ids=60, model_dir=tiny_pack)
    one, three = result["levels"]
    assert one["errors"] == {} and three["errors"] == {}
    seconds_per_call = 60 * 0.12 / 5  # 60 ids at 41.67 ids/s, whole mel frames
    assert one["audio_s"] == pytest.approx(seconds_per_call, abs=0.02)
    assert three["audio_s"] == pytest.approx(3 * seconds_per_call, abs=0.06)
    assert three["first_audio_p50_ms"] > 0 and three["audio_s_per_wall_s"] > 0
    assert three["vocoder_streams_per_step"] >= 1


def test_underruns_count_chunks_arriving_after_the_buffer_ran_dry() -> None:
    assert _underruns([]) == 0
    assert _underruns([(0.0, 1.0), (0.5, 1.0), (1.9, 1.0)]) == 0  # 2 s buffered by 1.9 s
    assert _underruns([(0.0, 1.0), (1.5, 1.0), (2.0, 1.0), (4.0, 1.0)]) == 2
