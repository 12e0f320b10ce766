"""Folder and file names of the real Step-Audio checkpoints (the tiny pack mirrors them).

A model root holds the three Hugging Face repos side by side, as upstream's `--model-path`:
    <root>/Step-Audio-Chat/          Step1ForCausalLM (130B), tokenizer.model
    <root>/Step-Audio-TTS-3B/        Step1ForCausalLM (3B), tokenizer.model,
                                     CosyVoice-300M-25Hz/ and CosyVoice-300M-25Hz-Music/
    <root>/Step-Audio-Tokenizer/     Paraformer folder, linguistic_tokenizer.npy,
                                     speech_tokenizer_v1.onnx
    <root>/speakers/                 upstream's speakers/ folder: speakers_info.json + *_prompt.wav

A `--model-dir` may name the root or one of these component folders (``resolve_component``,
``resolve_root``): users point at whichever folder they downloaded.
"""

from __future__ import annotations

from pathlib import Path

CHAT_DIR = "Step-Audio-Chat"
TTS_DIR = "Step-Audio-TTS-3B"
TOKENIZER_DIR = "Step-Audio-Tokenizer"
SPEAKERS_DIR = "speakers"
AQAA_DIR = "Step-Audio-AQAA"

VOCODER_DIR = "CosyVoice-300M-25Hz"
MUSIC_VOCODER_DIR = "CosyVoice-300M-25Hz-Music"

PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
LINGUISTIC_CODEBOOK_FILE = "linguistic_tokenizer.npy"
SEMANTIC_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"

SPEAKERS_INFO_FILE = "speakers_info.json"


def chat_dir(root: Path) -> Path:
    return root / CHAT_DIR


def tts_dir(root: Path) -> Path:
    return root / TTS_DIR


def tokenizer_dir(root: Path) -> Path:
    return root / TOKENIZER_DIR


def vocoder_dir(root: Path, music: bool = False) -> Path:
    return root / TTS_DIR / (MUSIC_VOCODER_DIR if music else VOCODER_DIR)


def speakers_dir(root: Path) -> Path:
    return root / SPEAKERS_DIR


COMPONENT_DIRS = (CHAT_DIR, TTS_DIR, TOKENIZER_DIR, AQAA_DIR, SPEAKERS_DIR)
# what a component folder holds, so a renamed copy is still recognised
_MARKERS = {
    TOKENIZER_DIR: (LINGUISTIC_CODEBOOK_FILE, PARAFORMER_DIR),
    TTS_DIR: (VOCODER_DIR,),
    SPEAKERS_DIR: (SPEAKERS_INFO_FILE,),
}


class ModelDirError(ValueError):
    """A model folder that is neither the model root nor the component folder asked for."""


def is_component_dir(path: Path, component: str) -> bool:
    """``path`` is ``component``'s folder: named so, or holding what that folder holds."""
    if not path.is_dir():
        return False
    return path.name == component or any((path / m).exists() for m in _MARKERS.get(component, ()))


def resolve_component(path: Path | str, component: str) -> Path:
    """``component``'s folder, from the model root or from that folder itself."""
    path = Path(path)
    if (path / component).is_dir():
        return path / component
    if is_component_dir(path, component):
        return path
    raise ModelDirError(
        f"{path} has no {component}/ (as a model root would) and is not that folder itself"
    )


def resolve_root(path: Path | str, component: str) -> Path:
    """The model root (which must hold ``component``/), from the root itself or from any of
    its component folders: a command that needs the root's siblings takes either."""
    path = Path(path)
    if (path / component).is_dir():
        return path
    inside = any(is_component_dir(path, c) for c in COMPONENT_DIRS)
    if inside and (path.parent / component).is_dir():
        return path.parent
    raise ModelDirError(
        f"{path} has no {component}/ and is not a folder of a model root that has one"
    )
