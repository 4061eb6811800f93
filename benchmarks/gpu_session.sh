#!/usr/bin/env bash
# The accelerator benchmark on a lent GPU machine, in one command of under 10 minutes.
#
# That machine (/work/.library/device/KINDS.md) has python3 3.12 with jax 0.11 + its CUDA 13
# plugin, flax, optax, orbax-checkpoint, chex, torch and torchvision, but no TensorFlow,
# tensorflow-datasets, ml_collections or clu, and no network. ml_collections (pure Python) travels
# as a wheel; without CLU and TensorFlow the trainer writes metrics.jsonl only.
#
# Here, once:   bash benchmarks/gpu_session.sh --fetch   (the wheel into .whl/, ignored by git)
# There:        the device tool's run with command 'bash benchmarks/gpu_session.sh',
#               carry ['.whl'], timeout_s 600; the JSON, markdown and log come back from $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == --fetch ]]; then
  grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >>"$(git rev-parse --git-common-dir)/info/exclude"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
  exit
fi

OUT="${OUT:-/tmp/accelerator}"
mkdir -p "$OUT"
if compgen -G '.whl/*.whl' >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
python3 -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)'
set -o pipefail
timeout 570 python3 -m benchmarks.accelerator --json "$OUT/accelerator_gpu.json" \
  --markdown "$OUT/accelerator_gpu.md" "$@" 2>&1 | tee "$OUT/accelerator.log"
