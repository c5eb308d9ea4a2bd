#!/usr/bin/env bash
# The SD-scale benchmark for real on a CUDA machine, and the README table regenerated from it.
#
#   benchmarks/gpu_check.sh                       # CUDA: SD 1.5 (512) + SD 2.1 (768), T = 50, h = 1..4, fp16
#   benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/x   # CPU smoke test of the same code (tests use it)
#   benchmarks/gpu_check.sh --head FILE           # the LAION head file when ../shared/data is not beside the checkout
#
# Writes <out>/gpu.json (CUDA peak memory, seconds per estimate (rlr h = 1..4 and the baselines) and per plain sampling pass,
# measured and predicted graph memory) and rewrites <out>/sd_scale.md with the measured column;
# with --tiny it writes <out>/gpu_tiny.json only. Random-init SD folders are written once under
# $RLR_SD_ARCH_DIR (default /tmp/rlr-sd-arch); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=""
OUT=benchmarks/results/sd-scale
STEPS=50
HEAD_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY="--tiny"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --head) HEAD_ARGS=(--head "$2"); shift 2 ;;
    *) echo "unknown argument $1 (allowed: --device cuda|cpu, --tiny, --out DIR, --steps T, --head FILE)" >&2; exit 2 ;;
  esac
done
export HF_HUB_OFFLINE=1
if [ "$DEVICE" = cuda ]; then
  "${PYTHON:-python3}" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "no CUDA device here: the GPU column stays pending (smoke test: --device cpu --tiny)" >&2; exit 3; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
"${PYTHON:-python3}" benchmarks/sd_scale.py --measure --baselines --device "$DEVICE" $TINY --out "$OUT" --steps "$STEPS" "${HEAD_ARGS[@]}"
if [ -n "$TINY" ]; then
  echo "wrote $OUT/gpu_tiny.json"
else
  echo "wrote $OUT/gpu.json and $OUT/sd_scale.md (GPU column measured)"
fi
