#!/usr/bin/env bash
# Everything that needs a GPU, in at most 5 minutes, with one summary at the end:
#
#   1. the CUDA-marked tests (pytest -m cuda: every path that branches on the device)
#   2. bench_meta_step.py on CUDA: the sinusoid MLP and the Omniglot conv-4 (the engine's autograd path there),
#      against a per-task autograd loop and `higher`
#   3. a 51x51 meta-objective landscape on CUDA (bench_landscape.py)
#   4. the app's --screenshot with --device cuda (offscreen)
#   5. time to accuracy on CUDA (time_to_accuracy.py, one seed, training capped in time)
#   6. a one-process torchrun job whose Trainer all-reduces its meta-gradients with NCCL
#
#   benchmarks/gpu_check.sh     # PYTHON=... the interpreter (default .venv/bin/python), GPU_CHECK_DATA=... small1 zip
#
# Each step runs under its own time limit (the limits add up to 290 s); logs and the screenshot go to
# $GPU_CHECK_OUT (default: a new temporary folder). Without CUDA it says so in one line and exits 0; with CUDA
# it exits 1 when a step failed or ran out of time.
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False with $PY): nothing to measure"
    exit 0
fi
OUT_DIR=${GPU_CHECK_OUT:-$(mktemp -d -t maml-lab-gpu-check-XXXXXX)}
mkdir -p "$OUT_DIR"
export QT_QPA_PLATFORM=offscreen MAML_LAB_RUNS="$OUT_DIR/runs"
SUMMARY=()
FAILED=0
T0=$(date +%s)

# step NAME LIMIT_S FILTER COMMAND...: run COMMAND under a time limit into $OUT_DIR/NAME.log; the lines of the log
# matching the extended regex FILTER go into the summary
step() {
    local name=$1 limit=$2 filter=$3
    shift 3
    local start rc status secs
    start=$(date +%s.%N)
    timeout --kill-after=5 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMED OUT after ${limit} s"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    SUMMARY+=("== $name: $status, ${secs} s (log: $OUT_DIR/$name.log)")
    while IFS= read -r line; do SUMMARY+=("   $line"); done < <(grep -E "$filter" "$OUT_DIR/$name.log" | tail -n 12)
    if [ "$rc" -ne 0 ]; then
        while IFS= read -r line; do SUMMARY+=("   | $line"); done < <(tail -n 5 "$OUT_DIR/$name.log")
    fi
}

DEVICE_NAME=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')")
echo "gpu_check: $DEVICE_NAME; logs in $OUT_DIR"

step cuda-tests 60 "passed|failed|error|skipped" \
    "$PY" -m pytest -m cuda -q -p no:cacheprovider tests
step meta-step-mlp 25 "t/s|threads" \
    "$PY" benchmarks/bench_meta_step.py --model mlp --device cuda --rounds 3 --steps 20
step meta-step-conv4 50 "t/s|ms|threads" \
    "$PY" benchmarks/bench_meta_step.py --model conv4 --device cuda --rounds 3 --steps 3
step landscape-51 30 "grid|engine" \
    "$PY" benchmarks/bench_landscape.py --resolution 51 --rounds 2 --loop-points 10 --device cuda
step app-screenshot 45 "saved|error|warning" \
    "$PY" main.py --screenshot "$OUT_DIR/screenshot-cuda.png" --device cuda --iterations 500
DATA=${GPU_CHECK_DATA:-../shared/omniglot/images_background_small1.zip}
if [ -f "$DATA" ]; then
    step time-to-accuracy 60 "seeds|speed-up|yes|no |card|device" \
        "$PY" benchmarks/time_to_accuracy.py --data "$DATA" --device cuda --threads 4 --seeds 0 --check-every 50 \
        --max-seconds 15
else
    SUMMARY+=("== time-to-accuracy: skipped, no image set at $DATA (GPU_CHECK_DATA=path/to/images_background_small1.zip)")
fi

NCCL_SCRIPT="$OUT_DIR/nccl_one_process.py"
cat >"$NCCL_SCRIPT" <<'EOF'
"""Under torchrun --nproc-per-node 1: a Trainer in an NCCL process group of one, against the same run without it."""
import datetime
import os
import time

import torch
import torch.distributed as dist

from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.distributed import World
from maml_lab.core.training.trainer import Trainer

local = int(os.environ.get("LOCAL_RANK", "0"))
device = torch.device("cuda", local)
torch.cuda.set_device(device)
dist.init_process_group("nccl", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                        timeout=datetime.timedelta(seconds=60), device_id=device)
world = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, backend="nccl", device=device)
config = dict(iterations=200, meta_batch_size=25, val_every=0, seed=1)
nccl = Trainer(ExperimentConfig(**config), world=world, record_every=0)
torch.cuda.synchronize()
t0 = time.perf_counter()
nccl.run()
torch.cuda.synchronize()
seconds = time.perf_counter() - t0
plain = Trainer(ExperimentConfig(**config, device=str(device)), record_every=0)
plain.run()
diff = max(float((a - b).abs().max()) for a, b in zip(nccl.runs["maml"].params.values(),
                                                       plain.runs["maml"].params.values()))
print(f"NCCL world of {world.size}: {nccl.iteration} sinusoid MAML iterations in {seconds:.2f} s "
      f"({nccl.iteration / seconds:.0f} it/s); max |difference| to the run without torch.distributed {diff:.1e}")
dist.destroy_process_group()
assert diff < 1e-4, diff
EOF
TORCHRUN=$(dirname "$PY")/torchrun
[ -x "$TORCHRUN" ] || TORCHRUN=$(command -v torchrun || echo torchrun)
step torchrun-nccl 20 "NCCL|Error" \
    "$TORCHRUN" --standalone --nproc-per-node 1 "$NCCL_SCRIPT"

echo
echo "gpu_check summary ($DEVICE_NAME), $(($(date +%s) - T0)) s in all:"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
