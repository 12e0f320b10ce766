"""Folder and file names of the real Step-Audio checkpoints (the tiny pack mirrors them).

A model root holds the three Hugging Face repos side by side, as upstream's `--model-path`:
    <root>/Step-Audio-Chat/          Step1ForCausalLM (130B), tokenizer.model
    <root>/Step-Audio-TTS-3B/        Step1ForCausalLM (3B), tokenizer.model,
                                     CosyVoice-300M-25Hz/ and CosyVoice-300M-25Hz-Music/
    <root>/Step-Audio-Tokenizer/     Paraformer folder, linguistic_tokenizer.npy,
                                     speech_tokenizer_v1.onnx
    <root>/speakers/                 upstream's speakers/ folder: speakers_info.json + *_prompt.wav
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
