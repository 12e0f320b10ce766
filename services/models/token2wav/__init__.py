"""token2wav: Step-Audio's CosyVoice-300M-25Hz flow-matching decoder + HiFT vocoder.

Audio codes (LLM id − 65536, 41.67 per second) + a speaker prompt → 22.05 kHz audio, offline
(`Token2Wav.synthesize`, `decode_batch`) or chunked as codes arrive (`Token2Wav.stream`).
See docs/token2wav.md.
"""

from services.models.token2wav.accel import AccelOptions
from services.models.token2wav.batching import StreamStep, step_streams
from services.models.token2wav.checkpoint import CheckpointError
from services.models.token2wav.config import Token2WavConfig, load_config
from services.models.token2wav.model import Token2Wav
from services.models.token2wav.speakers import (
    Speaker,
    SpeakerPrompt,
    SpeakerStore,
    UnknownSpeakerError,
    load_upstream_speakers,
)
from services.models.token2wav.streaming import StreamOptions, Token2WavStream
from services.models.token2wav.yaml_loader import YamlCall, YamlConfigError, load_hyperpyyaml_safe

__all__ = [
    "AccelOptions",
    "CheckpointError",
    "Speaker",
    "SpeakerPrompt",
    "SpeakerStore",
    "StreamOptions",
    "StreamStep",
    "Token2Wav",
    "Token2WavConfig",
    "Token2WavStream",
    "UnknownSpeakerError",
    "YamlCall",
    "YamlConfigError",
    "load_config",
    "load_hyperpyyaml_safe",
    "load_upstream_speakers",
    "step_streams",
]
