#!/usr/bin/env bash
# Every GPU check and benchmark, from the project root on a GPU host:
#   loadtests/gpu/run_all.sh [--only equivalence,lm,token2wav] [--out DIR]
# vLLM 0.26 must be importable; with the devpack unpacked to /tmp/site that is PYTHONPATH=/tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -d /tmp/site/vllm ]; then export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; fi
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
exec python3 -m loadtests.gpu.bench "$@"
