#!/usr/bin/env bash
# The whole stack on one GPU host and its capacity curve: one device call, repeatable.
#   bash loadtests/gpu/capacity.sh [loadtests.gpu.capacity options]
# From the project root on the device machine (docs/gpu-results.md, "Whole stack on one GPU:
# procedure"). Each step runs once per machine and is skipped when already done:
#   1. the vLLM devpack's stage 2 (.devpack/b carried; stage 1 ran in the call before)
#   2. the carried .gpustack-extra/ and .gpustack/: wheels into /tmp/site, redis-server, clips,
#      gRPC stubs (--prepare-only: these and the model pack, in a call before .devpack/b's)
#   3. python3 -m loadtests.gpu.capacity: pack, stack (outlives the call), sweep within budget
# Exit 3: points remain, make the same call again.
set -euo pipefail
export GPUSTACK_CALL_START=${GPUSTACK_CALL_START:-$(date +%s)}
cd "$(dirname "$0")/../.."
work=${GPUSTACK_WORK:-/tmp/gpustack}
python=${PYTHON:-python3}
cpu=0; case " $* " in *" --cpu "*) cpu=1 ;; esac  # the CPU dry run: no vLLM, no cp312 wheels
install_only=0; case " $* " in *" --install-only "*) install_only=1 ;; esac
prepare_only=0; case " $* " in *" --prepare-only "*) prepare_only=1 ;; esac  # no vLLM yet
mkdir -p "$work"
# the carried wheel parts: .gpustack-extra (its own call, the largest wheels) and .gpustack
for part in .gpustack-extra .gpustack; do
  if [ $cpu = 0 ] && [ -d $part/wheels ] && [ ! -f "$work/installed$part" ]; then
    echo "installing $(ls $part/wheels | wc -l) carried wheels from $part into /tmp/site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site $part/wheels/*.whl
    touch "$work/installed$part"
  fi
done
[ $install_only = 1 ] && exit 0
if [ $cpu = 0 ] && [ $prepare_only = 0 ] && [ ! -d /tmp/site/vllm ]; then
  [ -f .devpack/b/unpack.sh ] || { echo "no vLLM at /tmp/site and no .devpack/b carried" >&2; exit 2; }
  echo "unpacking the vLLM devpack (stage 2)"
  bash .devpack/b/unpack.sh stage2
fi
if [ ! -f "$work/unpacked" ]; then
  [ -d .gpustack/clips ] || { echo "no .gpustack carried (loadtests/gpu/prepare_stack.py)" >&2; exit 2; }
  tar -xJf .gpustack/redis.tar.xz -C "$work"
  rm -rf "$work/clips" "$work/proto" && cp -r .gpustack/clips .gpustack/proto "$work/"
  cp .gpustack/COMMIT "$work/COMMIT"
  touch "$work/unpacked"
fi
export PATH="$work/redis/bin:$PATH"
export PYTHONPATH="/tmp/site:$work/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
# nothing outside the machine can be reached: no hub look-ups, no usage reports
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
redis-server --version
# every module a service imports at start, so that a missing wheel shows here, by name
[ $prepare_only = 1 ] || "$python" -c "import services.controller.app, services.vad.server, \
services.tokenizer.server, services.llm.server, services.tts.server, loadtests.realtime_load"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
exec "$python" -m loadtests.gpu.capacity --work "$work" --clips-dir "$work/clips" "$@"
