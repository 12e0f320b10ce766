#!/usr/bin/env bash
# The whole stack on one GPU host and its capacity curve: one device call, repeatable.
#   bash loadtests/gpu/capacity.sh [loadtests.gpu.capacity options]
# From the project root on the device machine (docs/gpu-results.md, "Whole stack on one GPU:
# procedure"). Each step runs once per machine and is skipped when already done:
#   1. the vLLM devpack's stage 2 (.devpack/b carried; stage 1 ran in the call before)
#   2. the carried .gpustack/ and .gpustack-extra/: wheels into /tmp/site.gpustack[-extra],
#      redis-server, clips, gRPC stubs
#   3. python3 -m loadtests.gpu.capacity: pack, stack (outlives the call), sweep within budget
#      (--prepare-only: the pack, then exit: the call that carries .devpack/b and .gpustack)
# Exit 3: points remain, make the same call again.
set -euo pipefail
export GPUSTACK_CALL_START=${GPUSTACK_CALL_START:-$(date +%s)}
cd "$(dirname "$0")/../.."
work=${GPUSTACK_WORK:-/tmp/gpustack}
python=${PYTHON:-python3}
cpu=0; case " $* " in *" --cpu "*) cpu=1 ;; esac  # the CPU dry run: no vLLM, no cp312 wheels
install_only=0; case " $* " in *" --install-only "*) install_only=1 ;; esac
prepare_only=0; case " $* " in *" --prepare-only "*) prepare_only=1 ;; esac  # no .gpustack-extra yet
mkdir -p "$work"
# vLLM and what the devpack brings (pydantic, fastapi, ...): even writing the pack needs it
if [ $cpu = 0 ] && [ ! -d /tmp/site/vllm ]; then
  if [ -f .devpack/b/unpack.sh ]; then
    echo "unpacking the vLLM devpack (stage 2)"
    bash .devpack/b/unpack.sh stage2
  elif [ $install_only = 0 ]; then
    echo "no vLLM at /tmp/site and no .devpack/b carried (stage 1 first, then .devpack/b)" >&2
    exit 2
  fi
fi
# the carried wheel parts, each into a folder of its own: pip --target --upgrade replaces a
# whole top-level folder, and opentelemetry/ (the devpack's API and SDK, the exporter here) and
# google/ are namespaces shared between packages; on PYTHONPATH they merge
for part in .gpustack .gpustack-extra; do
  if [ $cpu = 0 ] && [ -d $part/wheels ] && [ ! -f "$work/installed$part" ]; then
    echo "installing $(ls $part/wheels | wc -l) carried wheels from $part into /tmp/site$part"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site$part $part/wheels/*.whl
    touch "$work/installed$part"
  fi
done
[ $install_only = 1 ] && exit 0
if [ ! -f "$work/unpacked" ]; then
  [ -d .gpustack/clips ] || { echo "no .gpustack carried (loadtests/gpu/prepare_stack.py)" >&2; exit 2; }
  tar -xJf .gpustack/redis.tar.xz -C "$work"
  rm -rf "$work/clips" "$work/proto" && cp -r .gpustack/clips .gpustack/proto "$work/"
  cp .gpustack/COMMIT "$work/COMMIT"
  touch "$work/unpacked"
fi
export PATH="$work/redis/bin:$PATH"
export PYTHONPATH="/tmp/site:/tmp/site.gpustack:/tmp/site.gpustack-extra:$work/proto:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
# nothing outside the machine can be reached: no hub look-ups, no usage reports
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
redis-server --version
# every module a service imports at start, so that a missing wheel shows here, by name
[ $prepare_only = 1 ] || "$python" -c "import services.controller.app, services.vad.server, \
services.tokenizer.server, services.llm.server, services.tts.server, loadtests.realtime_load"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
exec "$python" -m loadtests.gpu.capacity --work "$work" --clips-dir "$work/clips" "$@"
