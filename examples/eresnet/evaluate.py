#!/usr/bin/env python3
"""Compare a trained ε-ResNet with its compressed deploy net on the TEST digits.

    python examples/eresnet/evaluate.py <train_val.prototxt> <weights.caffemodel> \
        <deploy.prototxt> <deploy.caffemodel> [--iterations 10]

Runs the uncompressed TEST net (gates computed per batch, as in training) for `--iterations` batches,
feeds the same images to the deploy net, and prints, for each: the residual blocks it has, its
learnable parameters and its accuracy, plus the largest logit difference. Run from the repository
root (the prototxt's data paths are relative to it).
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import netcompress  # noqa: F401
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch

from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools.eresnet import count_parameters, find_blocks, layer_ancestors, layer_producers


def main_path_parameters(net: Net, logits: str) -> int:
    """Learnable values of the layers the logits depend on (the side branch left out)."""
    prod = layer_producers(net.param)
    last = max(i for i, l in enumerate(net.param.layer) if logits in l.top)
    names = {net.param.layer[i].name for i in layer_ancestors(prod, last)}
    return int(sum(e.tensor.numel() for e in net.learnable_params()
                   if e.learnable and e.lr_mult != 0 and e.layer in names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net")
    p.add_argument("weights")
    p.add_argument("deploy")
    p.add_argument("deploy_weights")
    p.add_argument("--iterations", type=int, default=10, help="TEST batches (default 10: 1,000 digits)")
    p.add_argument("--logits", default="linear", help="the logits blob (default linear)")
    a = p.parse_args(argv)
    test = Net(a.net, phase=pb.TEST, weights=a.weights, verbose=False)
    deploy = Net(a.deploy, weights=a.deploy_weights, verbose=False)
    gates = [n for n, l in test.named_layers() if l.type_name == "StrictIdentity"
             and n in {test.param.layer[b.gate].name for b in find_blocks(test.param)}]
    closed = {g: 0 for g in gates}
    right_test = right_deploy = total = 0
    worst = 0.0
    with torch.no_grad():
        for _ in range(a.iterations):
            test()
            x, y = test.blobs["data"], test.blobs["label"].long()
            ref = test.blobs[a.logits]
            deploy(x)
            out = deploy.blobs[a.logits]
            for g in gates:
                closed[g] += test.layer(g).last_gate == 0.0
            right_test += int((ref.argmax(1) == y).sum())
            right_deploy += int((out.argmax(1) == y).sum())
            total += len(y)
            worst = max(worst, float((out - ref).abs().max()))
    kept = sum(1 for _, l in deploy.named_layers() if l.type_name == "Eltwise")
    print(f"TEST batches: {a.iterations} ({total} digits)")
    print("gate closed on (batches): " + ", ".join(f"{g.removesuffix('_gate')} {c}" for g, c in closed.items()))
    print(f"| uncompressed (TEST net) | {len(gates)} | {main_path_parameters(test, a.logits):,} "
          f"({count_parameters(test):,} with the side branch) | {right_test / total:.4f} |")
    print(f"| compressed deploy net   | {kept} | {count_parameters(deploy):,} | {right_deploy / total:.4f} |")
    print(f"largest |logit difference|: {worst:.3g}")
    warning = mismatch_warning(closed, a.iterations, worst, float(ref.abs().max()))
    if warning:
        print(warning)
    return 0


def mismatch_warning(closed: dict[str, int], batches: int, worst: float, scale: float) -> str | None:
    """The warning for a deploy net whose logits differ from the TEST net's by more than 1e-3 of their
    magnitude, naming the gates behind it (`closed`: gate layer -> TEST batches on which it was closed)."""
    if worst <= 1e-3 * max(1.0, scale):
        return None
    mixed = [g.removesuffix("_gate") for g, c in closed.items() if 0 < c < batches]
    shut = [g.removesuffix("_gate") for g, c in closed.items() if c == batches]
    return ("WARNING: the deploy net computes another function than the TEST net. "
            + (f"Gates closed on some TEST batches and open on others: {', '.join(mixed)}. " if mixed else "")
            + f"Gates closed on every TEST batch: {', '.join(shut) or 'none'}; compress_epsilon_resnet drops a "
            "block only where the training log's is_discarded average reads 1 at --iter, so a gate closed here "
            "but not on every training batch keeps its block. Compress at an epoch end where every gate's "
            "average is 0 or 1, or train longer.")


if __name__ == "__main__":
    sys.exit(main())
