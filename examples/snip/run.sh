#!/usr/bin/env bash
# SNIP at 98 % sparsity of LeNet, from scratch, on the embedded MNIST digits (README.md here).
# Run from the repository root:
#   bash examples/snip/run.sh              # 2,000 iterations; ITERS=5000 for the fixture solver's full run
# NC names the command (default: netcompress; e.g. NC="python -m netcompress" in a checkout).
set -euo pipefail
NC=${NC:-netcompress}
ITERS=${ITERS:-2000}
KEEP=${KEEP:-0.02}
mkdir -p runs/snip
$NC mnist5k data

# 1. SNIP at initialisation: LeNet's fillers drawn with seed 1 (the solvers' random_seed, so both runs
#    start from the same weights), every Convolution/InnerProduct weight scored by |g * w| on the first
#    TRAIN batch (64 digits) with Xavier-normal draws on a copy (mil-ad/snip), the global top 2 % kept.
$NC snip_prune examples/mnist/lenet_train_test.prototxt runs/snip/lenet_snip_train_test.prototxt \
    runs/snip/lenet_snip_init.caffemodel --keep-ratio "$KEEP" --seed 1 | tee runs/snip/snip_prune.txt

# 2. The dense LeNet and 3. the pruned one, trained identically.
$NC train --solver examples/snip/dense_solver.prototxt --iterations "$ITERS" 2>runs/snip/dense.log
$NC train --solver examples/snip/snip_solver.prototxt --weights runs/snip/lenet_snip_init.caffemodel \
    --iterations "$ITERS" 2>runs/snip/snip.log

# 4. The pruned model as a normal caffemodel (pruned weights 0), and both scores on the 1,000 test digits.
$NC dns_to_normal runs/snip/lenet_snip_train_test.prototxt "runs/snip/snip_iter_$ITERS.caffemodel" \
    examples/mnist/lenet_train_test.prototxt runs/snip/snip_normal.caffemodel | grep -E "Final|Compression"
score() { $NC test --model examples/mnist/lenet_train_test.prototxt --weights "$1" --iterations 10 2>&1 \
          | grep -o "accuracy = .*" | tail -1; }
echo "dense LeNet            $(score "runs/snip/dense_iter_$ITERS.caffemodel")"
echo "SNIP, keep $KEEP        $(score runs/snip/snip_normal.caffemodel)"
