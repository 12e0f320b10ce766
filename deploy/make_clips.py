"""Regenerate the bundled speech clips in services/models/tiny/assets/ with espeak-ng.

The clips are committed (small 16 kHz PCM16 WAVs) so that `make demo` and the tests work on a
machine without espeak-ng; rebuild them with: python -m deploy.make_clips
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

from services.common.audio import decode_audio_file, resample

ASSETS = Path(__file__).resolve().parents[1] / "services" / "models" / "tiny" / "assets"
CLIPS = {
    # name: (espeak voice, text)
    "default_voice_prompt": ("en-us", "This is the default voice of the tiny test pack."),
    "demo_question": ("en-us", "Hello there. What is the weather like today?"),
}


def synthesize(voice: str, text: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        samples, rate = decode_audio_file(raw)
    sf.write(str(out), resample(samples, rate, 16_000), 16_000, subtype="PCM_16")


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    for name, (voice, text) in CLIPS.items():
        synthesize(voice, text, ASSETS / f"{name}.wav")
        (ASSETS / f"{name}.txt").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
