"""GPU checks and benchmarks; GPU hosts with vLLM only, never CI (python -m loadtests.gpu.bench)."""
