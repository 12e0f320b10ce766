"""The tokenizer benchmark runs on the tiny pack and reports sane numbers."""

from __future__ import annotations

from pathlib import Path

import torch

from loadtests.bench_tokenizer import run


def test_bench_reports_rtf(tiny_model_root: Path) -> None:
    threads_before = torch.get_num_threads()
    results = run(tiny_model_root, audio_seconds=1.0, repeats=1)
    assert results["audio_seconds"] == 1.0
    assert 0 < results["offline_rtf"] < 5 and 0 < results["stream_rtf"] < 5
    assert results["tokens"] > 0 and results["stream_finish_ms"] >= 0
    assert torch.get_num_threads() == threads_before
