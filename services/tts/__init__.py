"""TTS gRPC service: Step-Audio-TTS-3B LM + CosyVoice token2wav, streaming, with voices."""
