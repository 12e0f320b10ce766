"""Tokenizer gRPC service: audio → Step-Audio dual-codebook LLM ids, streamed or whole-clip."""
