"""The tiny model pack: every Step-Audio folder in its real layout, tiny and seeded.

``write_tiny_pack(root)`` writes
    Step-Audio-Chat/        Step1 (text out)
    Step-Audio-TTS-3B/      Step1 (audio ids out) + CosyVoice-300M-25Hz{,-Music}/
    Step-Audio-Tokenizer/   Paraformer folder, linguistic_tokenizer.npy, speech_tokenizer_v1.onnx
    speakers/               speakers_info.json + {name}_prompt.wav (upstream's speakers/ layout)
and, for ``variant="aqaa"``, also ``Step-Audio-AQAA/`` (an end-to-end Step1 emitting text and
audio ids, with its own vocoder folder). Same bytes on every run for the same seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from services.models import layout

ASSETS = Path(__file__).with_name("assets")
DEFAULT_VOICE = "Tingting"
VARIANTS = ("default", "aqaa")


def write_speakers(folder: Path) -> None:
    """Upstream's speakers/ layout with the bundled prompt clip for each entry."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (ASSETS / "default_voice_prompt.txt").read_text(encoding="utf-8").strip()
    entries = {
        DEFAULT_VOICE: text,
        f"{DEFAULT_VOICE}RAP": f"（RAP）{text}",
        f"{DEFAULT_VOICE}哼唱": f"（哼唱）{text}",
    }
    for name in entries:
        shutil.copyfile(ASSETS / "default_voice_prompt.wav", folder / f"{name}_prompt.wav")
    info = json.dumps(entries, ensure_ascii=False, indent=4) + "\n"
    (folder / layout.SPEAKERS_INFO_FILE).write_text(info, encoding="utf-8")


def write_tiny_pack(root: Path, *, variant: str = "default", seed: int = 0) -> Path:
    from services.models.tiny.audio_tokenizer import write_tiny_audio_tokenizer
    from services.models.tiny.lm import chat_spec, tts_spec, write_tiny_step1
    from services.models.tiny.token2wav import write_tiny_token2wav

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny pack variant {variant!r}; choose from {VARIANTS}")
    root.mkdir(parents=True, exist_ok=True)
    write_tiny_step1(layout.chat_dir(root), chat_spec(), seed + 1)
    write_tiny_step1(layout.tts_dir(root), tts_spec(), seed + 2)
    write_tiny_token2wav(layout.tts_dir(root), seed + 3)
    write_tiny_audio_tokenizer(layout.tokenizer_dir(root), seed + 4)
    write_speakers(layout.speakers_dir(root))
    if variant == "aqaa":
        from services.models.tiny.lm import aqaa_spec

        aqaa = root / layout.AQAA_DIR
        write_tiny_step1(aqaa, aqaa_spec(), seed + 5)
        write_tiny_token2wav(aqaa, seed + 6)
    return root
