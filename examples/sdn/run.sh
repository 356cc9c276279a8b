#!/usr/bin/env bash
# A Shallow-Deep net grown and pruned during training, then run with confidence early exit, on the
# embedded MNIST digits (README.md here). Run from the repository root:
#   bash examples/sdn/run.sh
# NC names the command (default: netcompress; e.g. NC="python -m netcompress" in a checkout).
set -euo pipefail
NC=${NC:-netcompress}
mkdir -p runs/sdn
$NC mnist5k data

# 1. The net: 7 residual cells with internal classifiers after cells 2, 4 and 6, in 4 growth stages,
#    one SDNLoss per stage (INRIA's coefficients, ramped over 10 epochs).
$NC make_sdn_net examples/sdn/cells.prototxt-template --ics 0,1,0,1,0,1,0 --growth --feature-size 14 \
    --policy INRIA --ramp-epochs 10 --out runs/sdn/sdn_train_val.prototxt

# 2. Training: growth at epochs 2, 4, 6 and iterative SNIP pruning at epochs 3, 5, 7, 9 (solver.prototxt).
$NC train --solver examples/sdn/solver.prototxt 2>runs/sdn/train.log
grep -E "Growth:|snip_schedule:" runs/sdn/train.log | sed 's/^.*\] //'

# 3. Kept weights: the fully grown net (all stages) against the raw model.
{ cat runs/sdn/sdn_train_val.prototxt
  echo 'state { stage: "grow0" stage: "grow1" stage: "grow2" stage: "grow3" }'; } > runs/sdn/sdn_grown.prototxt
$NC report runs/sdn/sdn_grown.prototxt runs/sdn/sdn_iter_630.caffemodel | grep -E "Final|Compression"

# 4. Early exit on the 1,000 test digits: accuracy, exits per IC and average multiply-accumulates
#    per threshold (masked layers counted dense).
$NC sdn_early_exit runs/sdn/sdn_train_val.prototxt runs/sdn/sdn_iter_630.caffemodel --outputs ic1,ic2,ic3,fc \
    --iterations 10 --json runs/sdn/early_exit.json --plot runs/sdn/early_exit.png
