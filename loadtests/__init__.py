"""Benchmarks and load tests (run as modules: python -m loadtests.<name>)."""
