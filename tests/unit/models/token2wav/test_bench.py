"""The token2wav benchmark runs end to end on the tiny pack."""

from __future__ import annotations

from pathlib import Path

from loadtests.bench_token2wav import resolve_vocoder_dir, run


def test_benchmark_reports_rtf_and_first_chunk(tts_folder: Path) -> None:
    results = run(tts_folder, seconds=1.2, repeats=1)  # 50 codes: one chunk + rest
    assert results["stream_samples_equal_offline"] is True
    assert results["offline_rtf"] > 0 and results["streaming_rtf"] > 0
    assert results["first_chunk_codes"] == 45 and results["first_chunk_compute_ms"] > 0


def test_vocoder_dir_is_found_from_any_level(tts_folder: Path) -> None:
    vocoder = tts_folder / "CosyVoice-300M-25Hz"
    assert resolve_vocoder_dir(vocoder) == vocoder
    assert resolve_vocoder_dir(tts_folder) == vocoder
