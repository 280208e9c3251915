#!/usr/bin/env bash
# One measurement session on a GPU machine (issue: throughput). Run from the repo root:
#
#     bash benchmarks/gpu_session.sh            # the GPU run, about 7 minutes (BENCH_BUDGET_S)
#     JAX_PLATFORMS=cpu bash benchmarks/gpu_session.sh --smoke   # the same steps, tiny, on CPU
#
# Everything lands in $OUT (default ./bench_out): results.jsonl (every JSON line),
# train_throughput.csv, infer_latency.csv, infer_table.md, summary.md, session.log and
# profiles.tar.gz (optimized HLO and per-op device times of each profiled program, for study
# on a machine without a GPU: `python benchmarks/analysis/gpu_hlo.py report`); one
# NAME.out / NAME.err per step go to BENCH_SCRATCH (default $OUT/steps). Steps run in priority order, each under its own `timeout`,
# and a step that would start after BENCH_BUDGET_S seconds (default 390) is skipped.
# ONLY="step names" or SKIP="step names" select steps (e.g. for a second attempt).
# Compiles are cached in BENCH_CACHE (default: the user cache dir), so a rerun on the same
# machine skips them; the cold/warm step uses a fresh cache of its own. Never imports
# tensorflow. Set PYTHON to choose the interpreter (default python3).
set -u
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; fi
OUT=${OUT:-./bench_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$(dirname "$HERE")${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2
BUDGET=${BENCH_BUDGET_S:-390}
CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flaxcls/bench-jax}
JSONL="$OUT/results.jsonl"
LOG="$OUT/session.log"
# Per-step output and the cold-start cache go to SCRATCH, so that $OUT holds only the few
# summary files (some runners bring back a handful of files only).
SCRATCH=${BENCH_SCRATCH:-$OUT/steps}
mkdir -p "$SCRATCH"
START=$(date +%s)
TRAIN_CSV="$OUT/train_throughput.csv"
INFER_CSV="$OUT/infer_latency.csv"

if [ $SMOKE = 1 ]; then
  R50=ResNet18; VD=ResNet18_vd; MOBILE=MobileNetV2; R18=ResNet18
  B=8; B2=16; IMG="--image-size 32"; BUDGET=${BENCH_BUDGET_S:-1500}
  CACHE=${BENCH_CACHE:-$SCRATCH/cache}
  TIMING="--steps 2 --warmup 1 --repeats 2"
  ITIMING="--iters 2 --repeats 2 --latency-iters 5"
else
  R50=ResNet50; VD=ResNet50_vd; MOBILE=MobileNetV2; R18=ResNet18
  B=256; B2=512; IMG=""
  TIMING="--steps 20 --warmup 3 --repeats 5"
  ITIMING="--iters 20 --repeats 5 --latency-iters 200"
fi
TRAIN="$PY $HERE/train_throughput.py --csv $TRAIN_CSV $IMG"
INFER="$PY $HERE/infer_latency.py --csv $INFER_CSV $IMG"

log() { echo "$*" | tee -a "$LOG"; }

# run NAME TIMEOUT_S COMMAND...: one step, its own timeout, JSON lines collected.
run() {
  local name=$1 limit=$2; shift 2
  if [ $SMOKE = 1 ]; then limit=$(( limit * 3 )); fi  # a 2-core CPU compiles far slower
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  if [[ " ${SKIP:-} " == *" $name "* ]]; then log "--- $name: skipped (SKIP)"; return 0; fi
  local used=$(( $(date +%s) - START )) left
  left=$(( BUDGET - used ))
  if [ $left -lt 30 ]; then log "--- $name: skipped, budget spent (${used}s of ${BUDGET}s)"; return 0; fi
  if [ $limit -gt $left ]; then limit=$left; fi
  log "--- $name (limit ${limit}s, at ${used}s): $*"
  local t0=$(date +%s) rc
  timeout -k 10 "$limit" "$@" > "$SCRATCH/$name.out" 2> "$SCRATCH/$name.err"
  rc=$?
  grep '^{' "$SCRATCH/$name.out" >> "$JSONL"
  cat "$SCRATCH/$name.out" | tee -a "$LOG" > /dev/null
  grep '^{' "$SCRATCH/$name.out" | cut -c1-400
  grep -h "skipped" "$SCRATCH/$name.err" | tee -a "$LOG"
  if [ $rc -ne 0 ]; then
    log "!!! $name exit $rc$( [ $rc = 124 ] && echo ' (timeout)')"; tail -n 15 "$SCRATCH/$name.err" | tee -a "$LOG"
  fi
  log "--- $name done in $(( $(date +%s) - t0 ))s (rc $rc)"
}

: > "$LOG"
touch "$JSONL"
# launch.py needs ml_collections and absl (config files and flags), which a bare GPU image may
# lack: installed from the wheels in WHEELS (default ./wheels, an ignored folder that can
# travel with the tree; `pip download --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 ml_collections absl-py PyYAML -d wheels`) into SCRATCH.
WHEELS=${WHEELS:-wheels}
if ! "$PY" -c "import ml_collections, absl, yaml" 2>/dev/null && [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" --target "$SCRATCH/pylib" \
    ml_collections absl-py PyYAML 2>&1 | tail -n 3 | tee -a "$LOG"
  export PYTHONPATH="$PYTHONPATH:$SCRATCH/pylib"
fi
log "=== flaxcls GPU session $(date -u +%FT%TZ) smoke=$SMOKE budget=${BUDGET}s out=$OUT cache=$CACHE"
(nvidia-smi -L 2>&1 || echo "no nvidia-smi") | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null | tee -a "$LOG"
timeout 120 "$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import importlib, platform, sys
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "ml_collections"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "missing:", type(e).__name__)
import jax
print("devices", jax.devices())
print("tensorflow imported:", "tensorflow" in sys.modules)
PYEOF
# torch in its own process: its CUDA libraries never meet jax's.
timeout 120 "$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
for name in ("torch", "torchvision"):
    try:
        m = __import__(name)
        print(name, m.__version__)
    except Exception as e:
        print(name, "missing:", type(e).__name__)
PYEOF

# Order: the new levers first (the baselines of session 2 are in results/), each
# measured beside its baseline in the same process; then the rest of the issue's table.
# 1. The hand-written BatchNorm backward (bn_impl=fused) against flax's, ResNet50 bf16.
run lever_fused 200 $TRAIN --setting "$R50:$B:bfloat16:optimizer:0:plain:flax" \
  --setting "$R50:$B:bfloat16:optimizer:0:plain:fused" $TIMING --compile-cache "$CACHE"
# The BatchNorm that ran faster there goes into the combined levers and the other models
# (flax when lever_fused did not run or failed). Compiled for an H200 without a GPU
# (analysis/gpu_hlo.py), MobileNetV2 bf16 batch 256 moves 53.2 GB per step fused against
# 60.1 GB with Flax's BatchNorm.
BN=$("$PY" - "$SCRATCH/lever_fused.out" <<'PYEOF'
import json, sys
best = {}
try:
    for line in open(sys.argv[1]):
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("images_per_sec"):
                best[r.get("bn_impl")] = r["images_per_sec"]
except OSError:
    pass
print(max(best, key=best.get) if best else "flax")
PYEOF
)
log "--- BatchNorm for the levers below: $BN"
# 2. Where the time goes, and where batch-1 inference time goes (device vs wall).
PROFILES="$SCRATCH/profiles"
# The default step (flax BatchNorm): per-kernel device times and the optimized HLO, for
# `analysis/gpu_hlo.py report --ops` (achieved bandwidth per kernel) on any machine afterwards.
run profile_flax 150 $PY $HERE/profile_step.py --model "$R50" --batch "$B" --dtype bfloat16 \
  --bn-impl flax --top 15 --dump "$PROFILES" $IMG
run profile_infer_b1 120 $PY $HERE/profile_step.py --infer --model "$R50" --batch 1 \
  --dtype bfloat16 --steps 20 --top 15 --dump "$PROFILES" $IMG
# Inference weights placed once in the compiler's layouts (now the default of infer_latency.py)
# against the plain jit program that re-lays-out every convolution kernel on every call
# (compiled for an H100 without a GPU, ResNet50 batch 1: 58 kernels instead of 111).
run lever_infer_layout 150 $INFER --models "$R50" --batch "1,$B" --dtype bfloat16 $ITIMING \
  --weights-layout compiler,default --tag layout
# 3. Everything that paid, together: space-to-depth stem at the larger batches, bf16 and fp16,
# with the BatchNorm that won lever_fused. Compiled for an H200 without a GPU
# (analysis/gpu_hlo.py), ResNet50 bf16 batch 256 moves 88.8 GB per step fused (BatchNorm,
# shortcut add and ReLU as one op) against 96.1 GB with Flax's BatchNorm.
run lever_combined 300 $TRAIN --setting "$R50:$B:bfloat16:optimizer:0:s2d:$BN" \
  --setting "$R50:$((2 * B2)):bfloat16:optimizer:0:s2d:$BN" \
  --setting "$R50:$B:float16:optimizer:0:s2d:$BN" \
  --setting "$R50:$((2 * B2)):float16:optimizer:0:s2d:$BN" $TIMING --compile-cache "$CACHE"
# 4. XLA flags (a flag this XLA does not know fails the step at once, nothing else).
run lever_xla_cudnn 120 $TRAIN --setting "$R50:$B:bfloat16:optimizer:0:plain:flax" $TIMING \
  --tag xla_cudnn "--xla-flags=${LEVER_XLA_FLAGS:---xla_gpu_cudnn_gemm_fusion_level=2}"
# The train step is about 1,080 kernels (analysis/gpu_hlo.py), 315 of them tiny second stages
# of the BatchNorm reductions: CUDA graphs that also take in the cuDNN convolutions, so the
# launches of a whole step go out as a few graphs.
run lever_train_graphs 120 $TRAIN --setting "$R50:$B:bfloat16:optimizer:0:plain:flax" $TIMING \
  --tag graphs_cudnn "--xla-flags=${TRAIN_GRAPH_FLAGS:---xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1}"
# Batch 1: cuDNN convolutions inside XLA's CUDA graphs too, so one graph covers the forward
# (session 2: short graphs alone, --xla_gpu_graph_min_graph_size=1, gave 1.37 ms vs 1.48).
run lever_infer_graphs 120 $INFER --models "$R50" --batch 1 --dtype bfloat16 $ITIMING \
  --tag graphs_cudnn "--xla-flags=${INFER_XLA_FLAGS:---xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1}"
# fp16 beside bf16 at batch 1 and 256. Compiled for an H100 without a GPU both are the same
# 58 kernels (bias, ReLU and residual add fused into the cuDNN convolutions), so this times
# only cuDNN's kernels for the two dtypes.
run lever_infer_fp16 120 $INFER --models "$R50" --batch "1,$B" --dtype float16 $ITIMING --tag fp16
# The fused BatchNorm's step: HLO and op times beside the flax one's.
run profile_fused 150 $PY $HERE/profile_step.py --model "$R50" --batch "$B" --dtype bfloat16 \
  --bn-impl fused --top 15 --dump "$PROFILES" $IMG
# 5. The torchvision peer (torch.compile, bf16 autocast, channels_last) and the other models.
torch_peer() {
  run torch_train 200 $TRAIN --peer-only --batch "$B" --dtype bfloat16 $TIMING
  run torch_infer 150 $INFER --peer-only --batch "1,$B" --dtype bfloat16 $ITIMING
}
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if [[ "$GPU_NAME" != *H200* ]]; then torch_peer; fi
run train_models 300 $TRAIN --setting "$VD:$B:bfloat16:optimizer:0:s2d:$BN" \
  --setting "$MOBILE:$B:bfloat16:optimizer:0:plain:$BN" \
  --setting "$R18:$B:bfloat16:optimizer:0:s2d:$BN" $TIMING --compile-cache "$CACHE"
# 6. The rest of the issue's table, as in session 2 (skipped when the budget is spent).
run infer_jax 150 $INFER --models "$R50" --batch "1,$B" --dtype bfloat16 $ITIMING \
  --markdown "$OUT/infer_table.md"
rm -rf "$SCRATCH/cc_cold"
run train_cold 200 $TRAIN --setting "$R50:$B:bfloat16" $TIMING --compile-cache "$SCRATCH/cc_cold" --tag cold
run train_warm 90 $TRAIN --setting "$R50:$B:bfloat16" --steps 2 --warmup 1 --repeats 1 \
  --compile-cache "$SCRATCH/cc_cold" --tag warm
if [[ "$GPU_NAME" == *H200* ]]; then torch_peer; fi
run infer_s2d 90 $INFER --models "$R50" --batch "1,$B" --dtype bfloat16 $ITIMING --stem-space-to-depth --tag s2d
run infer_models 150 $INFER --models "$VD,$MOBILE,$R18" --batch "1,$B" --dtype bfloat16 $ITIMING
run train_batch_fp16 200 $TRAIN --setting "$R50:$B2:bfloat16" --setting "$R50:$B:float16" \
  $TIMING --compile-cache "$CACHE"
# 7. The second wave's costs (issues: augmentation, faults), each beside a ResNet50 bf16 step:
# the on-device augmentation ops per batch (erasing, mixup, CutMix and the three auto_augment
# policies of auto_augment_on=device), and a checkpoint's checksums, save and restore.
run augment_cost 260 $PY $HERE/augment_cost.py --model "$R50" --batch "$B" $IMG --dtype bfloat16 \
  --with-step --csv "$OUT/augment_cost.csv"
run checkpoint_cost 120 $PY $HERE/checkpoint_cost.py --model "$R50" --csv "$OUT/checkpoint_cost.csv"
# 8. The optimisation issue's costs: peak device memory (XLA's memory analysis) and step time of
# ResNet50 bf16 with the batch as 1, 2 and 4 micro-batches (grad_accum_steps), and the teacher's
# throughput cost (student MobileNetV2, teacher ResNet50_vd, random weights).
run accum_memory 240 $TRAIN --setting "$R50:$B:bfloat16" --grad-accum-steps 1,2,4 $TIMING \
  --compile-cache "$CACHE"
run teacher_cost 240 $TRAIN --setting "$MOBILE:$B:bfloat16" --teacher "none,$VD" $TIMING \
  --compile-cache "$CACHE"
# The longer real-data comparison (momentum vs adamw, with and without EMA, then distillation)
# needs tf.data, which the GPU image lacks until small data sets live on the device (issue:
# small data sets); it runs where tensorflow imports and CIFAR10_DATA names the JPEG tarball.
if [ -n "${CIFAR10_DATA:-}" ] && "$PY" -c "import tensorflow" 2>/dev/null; then
  run recipe_compare 600 $PY $HERE/recipe_compare.py --data-dir "$CIFAR10_DATA" --epochs 30 \
    --batch 512 --dtype bfloat16 --variant momentum --variant adamw --variant momentum_ema \
    --variant adamw_ema --variant distill --csv "$OUT/recipe_compare.csv"
else
  log "--- recipe_compare: skipped (needs tensorflow and CIFAR10_DATA)"
fi

# 9. Small data sets on the device (issue: CIFAR-10 time to accuracy): configs/cifar10.py
# (SpeedNet_cifar, device-resident, decoded with Pillow: no tensorflow) 5 seeds, then the
# airbench94 peer on the same decoded JPEGs in its own processes, then the ResNet-18 recipe
# once. After steps 1-8 the default budget is spent: a session for this issue runs
# ONLY="cifar_speed cifar_peer cifar_resnet18 resident_cost" BENCH_BUDGET_S=560.
# CIFAR10_DATA: the JPEG class folders or their tarball (default data/cifar10-jpeg.tar.gz in
# the repo, an ignored path that can travel with the tree); AIRBENCH_DIR: a checkout of
# github KellerJordan/cifar10-airbench (default peers/cifar10-airbench, ignored: the peer's
# code is not part of this project). Then the device-resident input cost: the CIFAR step on
# resident data against the same step on synthetic device data (train_throughput.py).
CIFAR=${CIFAR10_DATA:-data/cifar10-jpeg.tar.gz}
AIRBENCH=${AIRBENCH_DIR:-peers/cifar10-airbench}
if [ -e "$CIFAR" ]; then
  if [ $SMOKE = 1 ]; then
    TTA_SMOKE="--override model=SpeedNet_cifar_x0_5 --override dtype=float32 \
      --override num_train_steps=3 --override batch_size=64 --override test_batch_size=500"
    TTA_RUNS=2; R18_SMOKE="--override num_train_steps=2 --override batch_size=32 --override dtype=float32"
  else
    TTA_SMOKE=""; TTA_RUNS=5; R18_SMOKE=""
  fi
  run cifar_speed 300 $PY $HERE/time_to_accuracy.py --config configs/cifar10.py --data-dir "$CIFAR" \
    --runs $TTA_RUNS $TTA_SMOKE --workdir-root "$SCRATCH/cifar" --csv "$OUT/time_to_accuracy.csv"
  # The peer as published (torch.compile max-autotune: minutes of compiling in its warm-up
  # run, which it does not time), 5 runs, on the same decoded JPEGs.
  if [ -d "$AIRBENCH" ]; then
    run cifar_peer 480 $PY $HERE/time_to_accuracy.py --runs 0 --data-dir "$CIFAR" \
      --peer airbench94 --peer-dir "$AIRBENCH" --peer-runs $TTA_RUNS \
      --workdir-root "$SCRATCH/cifar_peer" --csv "$OUT/time_to_accuracy.csv"
  else
    log "--- cifar_peer: skipped (no airbench checkout at $AIRBENCH)"
  fi
  run cifar_resnet18 300 $PY $HERE/time_to_accuracy.py --config configs/cifar10_resnet18.py \
    --data-dir "$CIFAR" --runs 1 $R18_SMOKE --workdir-root "$SCRATCH/cifar" \
    --csv "$OUT/time_to_accuracy.csv"
else
  log "--- cifar_speed, cifar_resnet18: skipped (no CIFAR-10 JPEGs at $CIFAR)"
fi
CIFAR_SETTING="SpeedNet_cifar:1024:bfloat16"
[ $SMOKE = 1 ] && CIFAR_SETTING="SpeedNet_cifar_x0_5:16:float32"
run resident_cost 180 $TRAIN --setting "$CIFAR_SETTING" --image-size 32 --device-data 0,50000 \
  $TIMING --compile-cache "$CACHE"

if [ -d "$PROFILES" ]; then
  tar -czf "$OUT/profiles.tar.gz" -C "$SCRATCH" profiles && log "profiles: $(ls "$PROFILES" | tr '\n' ' ')"
fi
"$PY" "$HERE/summarize.py" "$JSONL" > "$OUT/summary.md" 2>> "$LOG"
cat "$OUT/summary.md"
[ -f "$OUT/infer_table.md" ] && cat "$OUT/infer_table.md"
log "=== session done in $(( $(date +%s) - START ))s; results in $OUT"
