"""Controller metrics (``stepaudio_controller_*``); names are stable and documented."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.common.metrics import ServiceMetrics


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        base = ServiceMetrics("controller", registry)
        self.registry = base.registry
        self.errors = base.errors
        self.record_error = base.record_error
        self.active_sessions = base.gauge("active_sessions", "Open realtime WebSocket sessions.")
        self.sessions_rejected = base.counter(
            "sessions_rejected", "Realtime connects refused at admission, by reason.", ["reason"]
        )
        self.time_to_first_audio = base.histogram(
            "time_to_first_audio",
            "End of user speech to the first reply audio byte sent, by pipeline.",
            labels=["pipeline"],
        )
        self.tokenizer_tail = base.histogram(
            "tokenizer_tail", "End of speech to the utterance's final audio tokens."
        )
        self.llm_first_token = base.histogram(
            "llm_first_token", "End of speech to the LLM's first token."
        )
        self.tts_first_chunk = base.histogram(
            "tts_first_chunk", "End of speech to the TTS service's first audio chunk."
        )
        self.speech_seconds = base.histogram("rest_speech", "POST /v1/audio/speech duration.")
        self.responses = base.counter("responses", "Finished responses by status.", ["status"])
        self.speculations = base.counter(
            "speculations", "Speculative responses by outcome.", ["outcome"]
        )
        self.speculative_first_audio = base.histogram(
            "speculative_time_to_first_audio",
            "End of speech to first audio, turns answered by a committed speculation.",
        )
        self.context_audio_tokens_replaced = base.counter(
            "context_audio_tokens_replaced", "User audio tokens replaced by transcripts in prompts."
        )
        self.context_transcript_tokens = base.counter(
            "context_transcript_tokens", "Transcript tokens that replaced them."
        )
        self.transcriptions = base.counter(
            "transcriptions", "Input transcriptions by outcome.", ["outcome"]
        )
        # every label value exported at 0 from the start: rates and ratios over them then read
        # 0 on a quiet system instead of returning nothing (dashboards, alerts)
        for status in ("completed", "failed", "cancelled"):
            self.responses.labels(status=status)
        for outcome in ("started", "committed", "discarded", "shed"):
            self.speculations.labels(outcome=outcome)
        for outcome in ("completed", "failed"):
            self.transcriptions.labels(outcome=outcome)
        self.errors.labels(code="unavailable")  # the session store (Redis) was unreachable
