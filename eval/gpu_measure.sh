#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one command: `python -m eval.benchmark` on the
# SD-2.1-base architecture at 512x512 with random weights (no downloads), raw JSON and logs
# written to OUT_DIR. Run from the repository root on a machine with one CUDA GPU and CUDA builds
# of jax, flax, optax and torch installed:
#
#   eval/gpu_measure.sh OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR holds wheels of the project's other dependencies where the machine lacks them: the
# PyTorch reference's diffusers (>= 0.42) and the prompt tokenizer's transformers (>= 5), with
# their companions (made where a package index is reachable: pip download -d WHEEL_DIR
# "diffusers>=0.42" "transformers>=5" with --no-deps for each and its missing requirements); they
# are installed into OUT_DIR/site with --no-deps --target and put on PYTHONPATH, so the machine's
# own jax / torch stay as they are. Without WHEEL_DIR the installed packages are used.
#
# Runs, each a separate process writing OUT_DIR/<name>.json (and <name>.log):
#   restore   our compiled fixed-schedule restore at batch 1, 2, 4, 8 (90 of 450 steps, scaled),
#             with peak memory after each batch: images/min per batch size;
#   latency   the same at batch 1 with all 450 steps: seconds per image;
#   steps     step times at batch 1 and 4 with XLA flops (batch scaling) and a profile by part;
#   variants  batch-1 step variants: cuDNN attention, bf16, bf16 + cuDNN attention;
#   xla_*     the batch-1 restore under XLA GPU flags (XLA_FLAGS), one run per flag set.
# RUNS="restore steps" (environment) runs only the named ones, e.g. to split them over sessions.
set -uo pipefail
OUT=${1:?usage: eval/gpu_measure.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-}
PY=${PYTHON:-python}
mkdir -p "$OUT"
if [[ -n "$WHEELS" ]]; then
  "$PY" -m pip install -q --no-deps --target "$OUT/site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import jax, flax, torch, diffusers; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT/versions.txt" || true

bench() {  # bench NAME FLAGS...: one benchmark process; a failure is logged and the next runs.
  local name=$1; shift
  if [[ -n "${RUNS:-}" && " $RUNS " != *" $name "* ]]; then return 0; fi
  echo "== $name: python -m eval.benchmark $*"
  "$PY" -m eval.benchmark --size=sd21 --device_check --out="$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1 || echo "$name failed: see $OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}

bench restore --parts=restore --restore_batches=1,2,4,8 --restore_scale=0.2
bench latency --parts=restore --restore_batches=1
bench steps --parts=step,batch --batches=1,4 --profile
bench variants --parts=step --variants=cudnn,bfloat16,bfloat16+cudnn
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false \
  bench xla_no_triton_gemm --parts=restore --restore_batches=1 --restore_scale=0.2
XLA_FLAGS=--xla_gpu_enable_command_buffer= \
  bench xla_no_command_buffer --parts=restore --restore_batches=1 --restore_scale=0.2
echo "raw results in $OUT"
