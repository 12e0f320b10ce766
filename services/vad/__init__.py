"""Streaming voice activity detection service (silero-vad, batched across sessions)."""
