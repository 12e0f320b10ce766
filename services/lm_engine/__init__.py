"""Step1 LM engines shared by the LLM and TTS services.

The torch continuous-batching engine (``engine``), the vLLM adapter (``vllm_engine``) with its
settings (``vllm_settings``), the repetition-aware sampling state (``ras``) and the vLLM model
class registered as a plugin (``vllm_model``). Knows no gRPC; imports no service package.
"""
