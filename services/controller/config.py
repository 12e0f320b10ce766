"""Controller settings (env prefix ``CONTROLLER_``, nested with ``__``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import (
    ClientTlsSettings,
    KeepaliveSettings,
    LogFormat,
    StrictEnvSettings,
)
from services.common.tracing import TracingSettings
from services.controller.voices import DEFAULT_ALIASES

Pipeline = Literal["cascade", "end_to_end"]
OUTPUT_RATES_HZ = (16_000, 22_050, 24_000)


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for session context.")
    session_ttl_s: int = Field(3600, ge=10, le=30 * 86_400, description="Session context TTL (s).")
    socket_timeout_s: float = Field(2.0, gt=0, le=60, description="Redis socket timeout (s).")
    max_stored_turns: int = Field(64, ge=2, le=10_000, description="Turns kept per session.")


class ServiceTargets(BaseModel):
    vad: str = Field("127.0.0.1:50051", description="VAD service address.")
    tokenizer: str = Field("127.0.0.1:50052", description="Tokenizer service address.")
    llm: str = Field("127.0.0.1:50053", description="LLM (Chat) service address.")
    tts: str = Field("127.0.0.1:50054", description="TTS service address.")
    e2e_llm: str = Field(
        "", description="End-to-end (AQAA-style) LLM service address; empty = cascade only."
    )


class TurnSettings(BaseModel):
    """Defaults of a session; a client changes its own with session.update."""

    silence_ms: int = Field(600, ge=100, le=5000, description="Silence that ends a turn (ms).")
    min_speech_ms: int = Field(250, ge=30, le=5000, description="Shortest speech that counts (ms).")
    vad_threshold: float = Field(0.5, ge=0.05, le=0.95, description="VAD speech threshold.")
    speculate_after_ms: int = Field(
        250, ge=50, le=5000, description="Pause that starts a speculative reply (ms)."
    )
    speculative: bool = Field(True, description="Speculative replies during pauses.")
    pipeline: Pipeline = Field("cascade", description="cascade or end_to_end.")
    voice: str = Field("Tingting", description="Default TTS voice.")
    system_prompt: str = Field(
        "适配用户的语言，用简短口语化的文字回答",
        description="Default system prompt (upstream's demo prompt).",
    )
    output_sample_rate_hz: int = Field(
        24_000, description="Default output PCM16 rate: 16000, 22050 or 24000."
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Chat sampling temperature.")
    max_reply_tokens: int = Field(512, ge=1, le=8192, description="Longest reply (tokens).")
    audio_turns_kept: int = Field(
        1, ge=0, le=64, description="Newest user turns kept as audio tokens; older ones as text."
    )
    context_token_budget: int = Field(
        3000, ge=64, le=1_000_000, description="Prompt budget for history (tokens)."
    )
    transcribe: bool = Field(True, description="Transcribe user audio turns with the Chat model.")
    seed: int | None = Field(
        None, ge=0, le=2**62, description="Fixed sampling seed for replies (reproducible runs)."
    )


class LimitSettings(BaseModel):
    max_sessions: int = Field(64, ge=1, le=100_000, description="Concurrent realtime sessions.")
    max_frame_bytes: int = Field(
        64 * 1024, ge=1024, le=4 * 1024 * 1024, description="Largest audio frame (bytes)."
    )
    ws_max_message_bytes: int = Field(
        512 * 1024, ge=4096, le=16 * 1024 * 1024, description="WebSocket protocol frame cap."
    )
    max_text_chars: int = Field(2000, ge=1, le=100_000, description="Longest text input (chars).")
    max_turn_s: float = Field(60, ge=1, le=3600, description="Longest user turn (s).")
    max_protocol_errors: int = Field(
        20, ge=1, le=10_000, description="Consecutive protocol errors before close 1008."
    )
    max_voice_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024, description="Voice upload size cap."
    )
    output_lead_ms: int = Field(
        400, ge=0, le=10_000, description="Audio sent ahead of real-time playback (ms)."
    )
    idle_timeout_s: float = Field(120, ge=1, le=86_400, description="Close idle sockets (s).")
    outbound_queue_events: int = Field(
        512, ge=4, le=100_000, description="Events queued for a client (audio: 100 ms each)."
    )
    slow_consumer_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description=(
            "A full queue this long closes the socket 1008 slow_consumer; a socket the server "
            "closes is aborted if its client has not taken the close frame within this (s)."
        ),
    )
    drain_timeout_s: float = Field(
        20, ge=0, le=3600, description="Drain: how long replies in progress may finish (s)."
    )
    max_session_s: float = Field(
        3600,
        ge=1,
        le=7 * 86_400,
        description=(
            "Longest WebSocket session (s): then a reply in progress may finish (within "
            "drain_timeout_s), session_too_long, close 1008; the client resumes by session_id."
        ),
    )
    max_speculations: int = Field(
        16, ge=0, le=10_000, description="Speculative replies running at once (all sessions)."
    )


class AuthSettings(BaseModel):
    """API keys (hashed at rest) and their limits; see docs/security.md."""

    enabled: bool = Field(
        True, description="Require API keys; false only for a loopback demo (logged loudly)."
    )
    keys: str = Field(
        "",
        description='API keys as JSON: [{"id", "sha256", "role": user|admin|metrics, limits}].',
    )
    keys_file: str = Field(
        "", description="File with the same JSON (a mounted Kubernetes Secret); read at start."
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated browser Origins allowed besides the controller's own.",
    )
    metrics_key: bool = Field(False, description="/metrics needs a metrics or admin key.")
    client_secret_ttl_s: int = Field(
        600, ge=10, le=7200, description="Default lifetime of a minted client secret (s)."
    )
    max_sessions_per_key: int = Field(
        8, ge=1, le=100_000, description="Default concurrent realtime sessions per key."
    )
    requests_per_minute: int = Field(
        600, ge=1, le=10**6, description="Default requests (REST, WS connects) per key a minute."
    )
    audio_minutes_per_day: float = Field(
        1440, gt=0, le=10_000_000, description="Default audio minutes (in + out) per key per day."
    )


class HttpSettings(BaseModel):
    """HTTP server limits against slow and greedy clients (slowloris, huge bodies)."""

    header_timeout_s: float = Field(
        10, gt=0, le=600, description="A request's headers must arrive within this (s)."
    )
    body_timeout_s: float = Field(
        60, gt=0, le=3600, description="A request's body must arrive within this (s)."
    )
    keepalive_timeout_s: float = Field(5, gt=0, le=600, description="Idle keep-alive close (s).")
    max_connections: int = Field(
        1000, ge=1, le=1_000_000, description="Open HTTP connections; beyond it 503."
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=1024**3, description="Largest request body (not voice uploads)."
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024, description="Largest request head (bytes)."
    )
    send_buffer_bytes: int = Field(
        0,
        ge=0,
        le=64 * 1024 * 1024,
        description=(
            "SO_SNDBUF of each connection (0: the kernel's autotuning, up to 4 MiB). Bounds "
            "kernel memory per socket at thousands of sessions, and lets a client that stops "
            "reading be found (slow_consumer) within seconds instead of after megabytes."
        ),
    )


class ControllerSettings(StrictEnvSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONTROLLER_", extra="forbid", env_nested_delimiter="__"
    )

    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        "text", description="text (one line, key=value) or json (one object per line)."
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings, description="OpenTelemetry trace export."
    )
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Session store.")
    services: ServiceTargets = Field(default_factory=ServiceTargets, description="gRPC targets.")
    turn: TurnSettings = Field(default_factory=TurnSettings, description="Session defaults.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Limits.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP server limits.")
    keepalive: KeepaliveSettings = Field(
        default_factory=KeepaliveSettings, description="gRPC client keepalive."
    )
    tls: ClientTlsSettings = Field(
        default_factory=ClientTlsSettings, description="TLS to the gRPC services."
    )
    grpc_max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="gRPC client message cap."
    )
    rpc_timeout_s: float = Field(
        60, gt=0, le=3600, description="Deadline of one streaming call to a service (s)."
    )
    voice_aliases: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ALIASES),
        description="OpenAI voice name → registered voice (JSON; default: all → Tingting).",
    )
