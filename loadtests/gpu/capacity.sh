#!/usr/bin/env bash
# The whole stack on one GPU host and its capacity curve: one device call, repeatable.
#   bash loadtests/gpu/capacity.sh [loadtests.gpu.capacity options]
# From the project root on the device machine (docs/gpu-results.md, "Whole stack on one GPU:
# procedure"). Each step runs once per machine and is skipped when already done:
#   1. the vLLM devpack's stage 2 (.devpack/b carried; stage 1 ran in the call before)
#   2. the carried .gpustack/: wheels into /tmp/site, redis-server, clips, gRPC stubs
#   3. python3 -m loadtests.gpu.capacity: pack, stack (outlives the call), sweep within budget
# Exit 3: points remain, make the same call again.
set -euo pipefail
export GPUSTACK_CALL_START=${GPUSTACK_CALL_START:-$(date +%s)}
cd "$(dirname "$0")/../.."
work=${GPUSTACK_WORK:-/tmp/gpustack}
python=${PYTHON:-python3}
cpu=0; case " $* " in *" --cpu "*) cpu=1 ;; esac  # the CPU dry run: no vLLM, no cp312 wheels
mkdir -p "$work"
if [ $cpu = 0 ] && [ ! -d /tmp/site/vllm ]; then
  [ -f .devpack/b/unpack.sh ] || { echo "no vLLM at /tmp/site and no .devpack/b carried" >&2; exit 2; }
  echo "unpacking the vLLM devpack (stage 2)"
  bash .devpack/b/unpack.sh stage2
fi
if [ ! -f "$work/installed" ]; then
  [ -d .gpustack/wheels ] || { echo "no .gpustack carried (loadtests/gpu/prepare_stack.py)" >&2; exit 2; }
  if [ $cpu = 0 ]; then
    echo "installing $(ls .gpustack/wheels | wc -l) carried wheels into /tmp/site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .gpustack/wheels/*.whl
  fi
  tar -xJf .gpustack/redis.tar.xz -C "$work"
  rm -rf "$work/clips" "$work/proto" && cp -r .gpustack/clips .gpustack/proto "$work/"
  cp .gpustack/COMMIT "$work/COMMIT"
  touch "$work/installed"
fi
export PATH="$work/redis/bin:$PATH"
export PYTHONPATH="/tmp/site:$work/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
# nothing outside the machine can be reached: no hub look-ups, no usage reports
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
redis-server --version
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
exec "$python" -m loadtests.gpu.capacity --work "$work" --clips-dir "$work/clips" "$@"
