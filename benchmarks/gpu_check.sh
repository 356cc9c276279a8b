#!/usr/bin/env bash
# gpu_check.sh: one prepared run of everything that needs a GPU, for a fresh GPU machine (issues #17, #20).
#
#   bash benchmarks/gpu_check.sh            # from the repository root; writes ${OUT:-gpu_check_out}/
#
# Steps, each under its own time limit and all within BUDGET_S seconds (default 450: the machine's lease is
# short), continuing past failures:
#   env            the machine, torch, nvcc and the GPU (in summary.txt)
#   build          python setup.py build_ext --inplace, with TORCH_CUDA_ARCH_LIST for the present GPU and
#                  MAX_JOBS = the core count; prints setup.py's build configuration; checks ops.WITH_CUDA
#   ptx            tests/ops/test_cuda_ptx.py: the element-wise kernels' PTX has no FMA (needs nvcc only)
#   cuda-tests     python -m pytest -q -m cuda tests: the CPU/CUDA parity tests of every op (equality for the
#                  element-wise ops), the radix-select threshold, and a DNS and an INQ LeNet training step on
#                  CUDA equal to the CPU within tolerance (tests/solvers/test_cuda_training_step.py)
#   cli            python -m netcompress train (--gpu 0) and test (--gpu 0) on a tiny DNS + INQ net (HDF5 data); on
#                  a GPU the training must run as a CUDA graph (the log's step-mode line, no capture-failed warning)
#   nccl           the same training on 2 GPUs (--gpu 0,1: 2 ranks, NCCL), only where 2 GPUs are present
#   bench-kernels  benchmarks/bench_kernels.py --device cuda (sizes 1e4..1e8, float32 and float16)
#   bench-training benchmarks/bench_training.py --device cuda (LeNet, CIFAR-10 full, AlexNet)
# Output (8 files at most, the device tool's limit): summary.txt (PASS/FAIL/SKIP per step, times, the
# environment), build.log, tests.log, cli.log, bench_kernels.{txt,json}, bench_training.{txt,json}.
#
# Without a GPU (torch.cuda.is_available() false) the script says so, skips every step that needs one, runs the
# ones that do not (ptx where nvcc exists; cuda-tests, which then only collects and skips; cli on the CPU, so
# the tiny net and its commands are exercised) and builds the extension only if netcompress/_C is missing.
# It exits 0 when every step that ran passed, 1 when one failed, timed out or was left out for lack of budget.
# Nothing is installed: the machine has no registry.
#
# Environment: OUT (output folder), PYTHON (default python3), BUDGET_S (default 450), BENCH_SIZES (default
# 1e4,1e5,1e6,1e7,1e8), TRAIN_NETS (default lenet,cifar10_full,alexnet).
set -u

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
BENCH_SIZES=${BENCH_SIZES:-1e4,1e5,1e6,1e7,1e8}
TRAIN_NETS=${TRAIN_NETS:-lenet,cifar10_full,alexnet}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
FAILED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME CAP_S LOG COMMAND...: runs COMMAND (a bash -c string) with a limit of min(CAP_S, budget left),
# appending its output to LOG; records PASS/FAIL/TIMEOUT and the seconds taken in the summary.
run_step() {
  local name=$1 cap=$2 log=$3 cmd=$4
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if ((left < 15)); then
    say "$(printf '%-15s SKIP   (the %ss budget is spent: counted as a failure)' "$name" "$BUDGET_S")"
    FAILED=1
    return 0
  fi
  local limit=$((cap < left ? cap : left))
  echo "== $name (limit ${limit}s): $cmd" | tee -a "$log"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$cmd" >>"$log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0))
  local status=PASS
  if ((rc == 124 || rc == 137)); then
    status="TIMEOUT"
  elif ((rc != 0)); then
    status="FAIL"
  fi
  [[ $status == PASS ]] || FAILED=1
  say "$(printf '%-15s %-7s %4ss  rc=%s  log: %s' "$name" "$status" "$dt" "$rc" "$(basename "$log")")"
  return 0
}

skip() { say "$(printf '%-15s SKIP   (%s)' "$1" "$2")"; }

# ---- env ----
say "gpu_check.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ), repository $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo '+dirty')"
say "host: $(uname -srm), $(getconf _NPROCESSORS_ONLN) cores"
ENV_INFO=$("$PY" - 2>&1 <<'EOF'
import platform, shutil, subprocess, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cudnn {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
nvcc = shutil.which("nvcc")
if nvcc:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    print(f"nvcc: {nvcc}: {out[-1] if out else '?'}")
else:
    print("nvcc: not found")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.1f} GiB")
else:
    print("GPU: none (torch.cuda.is_available() is False)")
EOF
)
say "$ENV_INFO"
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
HAVE_NVCC=0
command -v nvcc >/dev/null 2>&1 && HAVE_NVCC=1
if ((GPUS == 0)); then
  say "NO GPU: the steps that need one are skipped; the others run (see the top of this script)."
fi
say ""
say "step            status  time  exit  log"

# ---- build ----
if ((GPUS > 0)); then
  ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
  run_step build 300 "$OUT/build.log" \
    "TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$(getconf _NPROCESSORS_ONLN) $PY setup.py build_ext --inplace && \
     $PY -c 'import netcompress.ops as o; assert o.WITH_CUDA, \"the extension was built without its CUDA kernels\"; print(\"netcompress._C with_cuda:\", o.WITH_CUDA)'"
elif ls netcompress/_C*.so >/dev/null 2>&1; then
  skip build "no GPU, and netcompress/_C is already built"
else
  run_step build 600 "$OUT/build.log" "MAX_JOBS=$(getconf _NPROCESSORS_ONLN) $PY setup.py build_ext --inplace"
fi

# ---- ptx ----
if ((HAVE_NVCC)); then
  run_step ptx 120 "$OUT/tests.log" "$PY -m pytest -q -p no:cacheprovider tests/ops/test_cuda_ptx.py"
else
  skip ptx "nvcc not found"
fi

# ---- cuda-tests ----
# --continue-on-collection-errors: a test module that cannot be imported here (a missing optional package)
# must not stop the cuda-marked tests of the others.
run_step cuda-tests 240 "$OUT/tests.log" \
  "$PY -m pytest -q -p no:cacheprovider -m cuda -rs --continue-on-collection-errors tests"

# ---- cli: a tiny DNS + INQ net, trained and tested with the command line ----
cat >"$WORK/make_tiny.py" <<'EOF'
import sys, numpy as np, h5py
work = sys.argv[1]
rs = np.random.RandomState(0)
for split, n in (("train", 64), ("test", 32)):
    labels = rs.randint(0, 4, n)
    x = rs.rand(n, 1, 12, 12).astype(np.float32) * 0.3
    for i, c in enumerate(labels):
        x[i, 0, 3 * c:3 * c + 3, :] += 0.7  # a learnable band per class
    with h5py.File(f"{work}/{split}.h5", "w") as f:
        f["data"], f["label"] = x, labels.astype(np.float32)
    open(f"{work}/{split}.txt", "w").write(f"{work}/{split}.h5\n")
masks = 'weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 }'
net = f"""name: "tiny"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
        hdf5_data_param {{ source: "{work}/train.txt" batch_size: 8 }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
        hdf5_data_param {{ source: "{work}/test.txt" batch_size: 8 }} }}
layer {{ name: "conv1" type: "DNSConvolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 6 kernel_size: 3 weight_filler {{ type: "xavier" }}
                             bias_filler {{ type: "constant" value: 0.1 }} }}
        dns_convolution_param {{ gamma: 0.0001 power: 1 c_rate: 0.3 {masks} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "INQInnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }}
        inq_inner_product_param {{ portion: 0 portion: 0.5 num_quantum_values: 7 {masks} }} }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }}
"""
open(f"{work}/net.prototxt", "w").write(net)
solver = f"""net: "{work}/net.prototxt"
base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.0005
max_iter: 40 display: 10 test_interval: 20 test_iter: 4 snapshot: 40 random_seed: 1
snapshot_prefix: "{work}/tiny"
"""
open(f"{work}/solver.prototxt", "w").write(solver)
open(f"{work}/solver2.prototxt", "w").write(solver.replace(f'"{work}/tiny"', f'"{work}/tiny2"'))  # 2 ranks
print("wrote the tiny net, its solver and HDF5 data to", work)
EOF
# On a GPU the training must run as a CUDA graph (step mode auto), captured without the fallback's warning.
if ((GPUS > 0)); then
  GPU_FLAG="--gpu 0"
  GRAPH_CHECK="grep -q 'Training step: CUDA graph' $WORK/train.log && ! grep -q 'CUDA graph capture failed' $WORK/train.log && echo 'the iteration ran as a CUDA graph' &&"
else
  GPU_FLAG=""
  GRAPH_CHECK=""
fi
run_step cli 150 "$OUT/cli.log" \
  "$PY $WORK/make_tiny.py $WORK && $PY -m netcompress train --solver $WORK/solver.prototxt $GPU_FLAG 2>&1 | tee $WORK/train.log && \
   test \${PIPESTATUS[0]} -eq 0 && test -s $WORK/tiny_iter_40.caffemodel && $GRAPH_CHECK \
   $PY -m netcompress test --model $WORK/net.prototxt --weights $WORK/tiny_iter_40.caffemodel --iterations 4 $GPU_FLAG"

# ---- nccl ----
if ((GPUS >= 2)); then
  run_step nccl 150 "$OUT/cli.log" \
    "$PY -m netcompress train --solver $WORK/solver2.prototxt --gpu 0,1 && test -s $WORK/tiny2_iter_40.caffemodel"
else
  skip nccl "$GPUS GPU(s): the 2-rank NCCL run needs 2"
fi

# ---- benchmarks ----
if ((GPUS > 0)); then
  run_step bench-kernels 240 "$OUT/bench_kernels.txt" \
    "$PY benchmarks/bench_kernels.py --device cuda --sizes $BENCH_SIZES --min-time 0.05 --compile off \
       --json $OUT/bench_kernels.json"
  run_step bench-training 200 "$OUT/bench_training.txt" \
    "$PY benchmarks/bench_training.py --device cuda --nets $TRAIN_NETS --iters 20 --json $OUT/bench_training.json"
else
  skip bench-kernels "no GPU"
  skip bench-training "no GPU"
fi

say ""
say "total $(($(date +%s) - START))s of a ${BUDGET_S}s budget; $( ((FAILED)) && echo 'SOME STEPS FAILED (or ran out of time)' || echo 'every step that ran passed')"
say "outputs in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f\n' | sort | tr '\n' ' ')"
exit "$FAILED"
