"""Settings for the whole stack on one host: `stepaudio serve --profile gpu|cpu`.

``gpu``: every service on one GPU host (VAD on the CPU, the tokenizer's Paraformer, the Chat
LM and the TTS LM on vLLM, token2wav on the GPU), limits sized for ``max_sessions`` live voice
sessions, and the GPU memory split between the two vLLM engines. ``cpu``: the same limits with
the torch engines on the CPU (the dry run of the ``gpu`` profile; the tiny pack).

A profile only fills in what the environment leaves unset, and only variables that a service's
settings class declares: a setting that a branch of the code does not have yet (say the batched
vocoder's ``TTS_VOCODER__*``) is dropped and reported, never passed to a service that would
refuse to start on an unknown variable.
"""

from __future__ import annotations

from collections.abc import Mapping

PROFILES = ("gpu", "cpu")

# The GPU's memory, as vLLM's fractions of the whole card. vLLM sizes its KV cache to fill its
# fraction; the rest (about 60 % of an H200, 84 GiB) is the tokenizer's and token2wav's (CUDA
# graphs per batch bucket) and the processes' CUDA contexts. Chat stand-in (4 layers at Chat
# width): 15.5 GB of weights, 16 KiB of KV cache per token, so 0.22 of 140 GiB leaves ~14 GiB
# of KV (900 k tokens); TTS-3B: 7.1 GB of weights, 32 KiB per token, 0.18 leaves ~16 GiB
# (500 k tokens: 256 streams of 2 000).
CHAT_GPU_SHARE = 0.22
TTS_GPU_SHARE = 0.18


def _settings_classes() -> list[type]:
    from services.controller.config import ControllerSettings
    from services.llm.config import LlmSettings
    from services.tokenizer.config import TokenizerSettings
    from services.tts.config import TtsSettings
    from services.vad.config import VadSettings

    return [ControllerSettings, VadSettings, TokenizerSettings, LlmSettings, TtsSettings]


def declared_variables() -> set[str]:
    """Every environment variable the controller's and the services' settings read."""
    from services.common.settings import env_vars

    return {name for cls in _settings_classes() for name, *_ in env_vars(cls)}


def profile_env(profile: str, max_sessions: int) -> dict[str, str]:
    """The profile's settings for ``max_sessions`` concurrent sessions (before filtering)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    if max_sessions < 1:
        raise ValueError("max_sessions must be at least 1")
    n = max_sessions
    # per session: one VAD stream, one tokenizer stream per turn (two while a speculation's
    # audio is tokenized beside the turn's), one reply plus a speculation or a transcription
    # in the Chat LM, one TTS stream per reply clause in flight
    streams = 2 * n + 16
    rpcs = str(2 * streams + 16)
    queue = str(max(256, 2 * streams))
    env = {
        "CONTROLLER_LIMITS__MAX_SESSIONS": str(n),
        "VAD_MAX_STREAMS": str(n + 16),
        "VAD_MAX_BATCH": str(min(1024, max(64, n))),
        "TOKENIZER_MAX_STREAMS": str(streams),
        "TTS_MAX_STREAMS": str(streams),
        "TTS_VOCODER__MAX_STREAMS": str(streams),
        "LLM_MAX_WAITING": str(4 * n),
        "TTS_MAX_WAITING": str(4 * n),
    }
    for prefix in ("VAD", "TOKENIZER", "LLM", "TTS"):
        env[f"{prefix}_GRPC_MAX_CONCURRENT_RPCS"] = rpcs
        env[f"{prefix}_ENGINE_QUEUE_SIZE"] = queue
    if profile == "cpu":
        return env
    seqs = str(min(512, max(64, n)))
    return env | {
        "VAD_ENGINE_THREADS": "2",
        "TOKENIZER_DEVICE": "cuda",
        "TOKENIZER_ENGINE_THREADS": "6",  # vq06 ONNX runs on the CPU (onnxruntime without CUDA)
        "LLM_ENGINE": "vllm",
        "LLM_DEVICE": "cuda",
        "LLM_VLLM__GPU_MEMORY_UTILIZATION": str(CHAT_GPU_SHARE),
        "LLM_VLLM__MAX_NUM_SEQS": seqs,
        "LLM_VLLM__MAX_WAITING": str(4 * n),
        "LLM_VLLM__REPETITION_AWARE": "false",  # Chat: vLLM's faster runner (no RAS processor)
        "TTS_ENGINE": "vllm",
        "TTS_DEVICE": "cuda",
        "TTS_VLLM__GPU_MEMORY_UTILIZATION": str(TTS_GPU_SHARE),
        "TTS_VLLM__MAX_NUM_SEQS": seqs,
        "TTS_VLLM__MAX_WAITING": str(4 * n),
        "TTS_VOCODER__COMPILE": "true",  # token2wav's CUDA graphs (the batched vocoder loop)
        # the devpack has no FlashInfer: vLLM's own sampler
        "VLLM_USE_FLASHINFER_SAMPLER": "0",
    }


def resolve_profile(
    profile: str, max_sessions: int, environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """(settings to add, names dropped): the environment's own values win; variables no
    settings class declares are dropped (vLLM's own ``VLLM_*`` pass through)."""
    known = declared_variables()
    added: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in profile_env(profile, max_sessions).items():
        if name in environ:
            continue
        if name in known or name.startswith("VLLM_"):
            added[name] = value
        else:
            dropped.append(name)
    return added, dropped
