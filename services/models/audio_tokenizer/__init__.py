"""Step-Audio-Tokenizer: audio -> interleaved linguistic (vq02) + semantic (vq06) LLM ids."""

from services.models.audio_tokenizer.errors import CheckpointError
from services.models.audio_tokenizer.semantic import SemanticStreamOptions
from services.models.audio_tokenizer.tokenizer import (
    AudioTokenizer,
    AudioTokenizerStream,
    TokenizerCodes,
    resolve_tokenizer_dir,
)

__all__ = [
    "AudioTokenizer",
    "AudioTokenizerStream",
    "CheckpointError",
    "SemanticStreamOptions",
    "TokenizerCodes",
    "resolve_tokenizer_dir",
]
