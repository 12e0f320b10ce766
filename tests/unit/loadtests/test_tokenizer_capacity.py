"""The tokenizer capacity bench on the tiny pack: callers fed at real time through the
service's loop pool get the ids they would get alone, and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.gpu.tokenizer_capacity import main


def test_callers_on_two_loops_get_the_ids_of_a_caller_alone(
    tiny_pack: Path, tmp_path: Path
) -> None:
    out = tmp_path / "points.json"
    args = ["--model-dir", str(tiny_pack), "--workers", "1,2", "--streams", "3",
            "--seconds", "1.5", "--device", "cpu", "--keep-going", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    points = json.loads(out.read_text())
    assert [(p["workers"], p["streams"]) for p in points] == [(1, 3), (2, 3)]
    for point in points:
        assert point["codes_equal"], point
        assert point["rounds"] > 0 and point["jobs_per_round"] >= 1
        assert 0 <= point["lag_ms"]["p50"] <= point["lag_ms"]["p95"] <= point["lag_ms"]["max"]
        assert point["tail_ms"]["p50"] > 0  # the finish call runs after the speech ends
