"""`bn_reestimate`: MicroNet's BatchNorm re-estimation (recipes-spec §4.7, §5.5, step 6 of §4.1).

    bn_reestimate <train.prototxt> <weights> <out.caffemodel> [--epochs 10] [--select best-test|last]
                  [--momentum 0.1]

1. Test the model as loaded (the TEST phase of the same prototxt, sharing the weights); it is the best so far.
2. `--epochs` times: one epoch of TRAIN-phase forwards over the training data, augmentation included, with no
   backward and no update, then a test.
3. Write the state with the best test score (`--select best-test`, the source's rule: an epoch replaces the best
   only when strictly better) or the last one (`--select last`).

During the TRAIN forwards every BatchNorm that uses batch statistics in the TRAIN phase (no `use_global_stats:
true`) normalises with the batch's statistics, as PyTorch's train mode does, and its running statistics follow
PyTorch's exponential average from the loaded ones: mean ← (1 − m)·mean + m·batch_mean, var ← (1 − m)·var +
m·batch_var·n/(n − 1) (the unbiased batch variance, n values per channel), m = `--momentum` (PyTorch's 0.1).
BatchNorm layers with `use_global_stats: true` in TRAIN are frozen and left alone. ActQuant calibration is off:
every ActQuant must hold a calibrated α (the source's `set_quant_upalpha(False)`), and Quant layers keep their
stored `w_alpha` (no solver runs, so nothing refits).

Caffe's BatchNorm stores (mean·s, var·s, s) and normalises with blob/s. The result is written with the loaded
scale factor s (1 where it was 0), so Caffe's BatchNorm computes with the re-estimated statistics, and a later
Caffe training with moving_average_fraction 0.9 and the steady-state s = 10 would continue PyTorch's average.

The epoch length is ceil(N / batch) of the TRAIN data layer (`--iters` overrides it), the test length that of the
TEST data layer (`--test-iter`); the test score is the TEST output named by `--metric` (accuracy).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import torch

from ..cliargs import seed_arg
from ..errors import NetcompressError
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ._common import ToolError, refuse_overwrites, require_files, run_tool

log = get_logger("tools")

__all__ = ["bn_reestimate", "main"]


def _epoch_iters(net, what: str, prototxt: str) -> int:
    for _, layer in net.named_layers():
        size = layer.epoch_size()
        if size is not None:
            records, batch = size
            return max(1, -(-records // batch))
    raise ToolError(f"{prototxt}: the {what} net has no data layer that knows its source's size; give "
                    f"--{'iters' if what == 'TRAIN' else 'test-iter'}")


class _EMA:
    """PyTorch-style running statistics of one BatchNorm layer, fed by a forward pre-hook."""

    def __init__(self, layer, momentum: float):
        self.layer = layer
        self.momentum = momentum
        s = float(layer.scale_factor.reshape(-1)[0])
        self.s = s if s > 0 else 1.0
        factor = 0.0 if s == 0 else 1.0 / s
        self.mean = (layer.mean.detach().double() * factor).to(layer.mean.dtype)
        self.var = (layer.variance.detach().double() * factor).to(layer.variance.dtype)
        self.handle = layer.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        x = args[0].detach()
        with torch.no_grad():
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() >= 2 else [0]
            n = x.numel() // max(1, self.layer.channels)
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape((1, -1) + (1,) * (x.dim() - 2))) ** 2).mean(dim=dims)
            if n > 1:
                var = var * (n / (n - 1))
            m = self.momentum
            self.mean = ((1 - m) * self.mean + m * mean.to(self.mean.dtype))
            self.var = ((1 - m) * self.var + m * var.to(self.var.dtype))

    def write(self) -> None:
        """(mean·s, var·s, s) into the layer's blobs."""
        with torch.no_grad():
            self.layer.mean.copy_((self.mean.double() * self.s).to(self.layer.mean.dtype))
            self.layer.variance.copy_((self.var.double() * self.s).to(self.layer.variance.dtype))
            self.layer.scale_factor.fill_(self.s)

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.clone(), self.var.clone()

    def load(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.mean, self.var = state[0].clone(), state[1].clone()


def _test(net, iters: int, metric: str) -> float | None:
    total, seen = 0.0, False
    with torch.no_grad():
        for _ in range(iters):
            out = net()
            if metric in out:
                total += float(out[metric].reshape(-1)[0])
                seen = True
    return total / iters if seen else None


def bn_reestimate(prototxt: str, weights: str, out: str, *, epochs: int = 10, select: str = "best-test",
                  momentum: float = 0.1, iters: int | None = None, test_iter: int | None = None,
                  metric: str = "accuracy", seed: int | None = None, device: str = "cpu") -> dict:
    """Re-estimate the BatchNorm statistics of `weights` and write `out` (see the module docstring).

    Returns {"scores": [test score after epoch 0 (as loaded), 1, ...] (None without a TEST net), "selected":
    epoch written, "layers": names re-estimated, "iters": per epoch, "out": out}.
    """
    from ..net import Net, check_memory

    require_files(prototxt, weights)
    refuse_overwrites((out,), writes=("the caffemodel",), prototxt=prototxt, weights=weights)
    if epochs < 0:
        raise ToolError(f"--epochs must be >= 0, got {epochs}")
    if not 0 < momentum <= 1:
        raise ToolError(f"--momentum must be in (0, 1], got {momentum:g}")
    if select not in ("best-test", "last"):
        raise ToolError(f"--select must be best-test or last, got '{select}'")
    train = Net(prototxt, phase=pb.TRAIN, seed=seed, device=device, verbose=False)
    check_memory([train])
    train.copy_from(weights)
    ems: list[_EMA] = []
    frozen = []
    for name, layer in train.named_layers():
        if layer.type_name == "BatchNorm":
            if layer.use_global_stats:
                frozen.append(name)
            else:
                ems.append(_EMA(layer, momentum))
        elif layer.type_name == "ActQuant":
            if not layer.calibrated:
                raise ToolError(f"{weights}: ActQuant layer '{name}' holds no calibrated alpha; calibration is off "
                                "during BatchNorm re-estimation (recipes-spec 4.7): re-estimate a model trained "
                                "with its activations quantized")
            layer.calibrate_mode = "NONE"
    if not ems:
        raise ToolError(f"{prototxt}: the TRAIN net has no BatchNorm layer that uses batch statistics"
                        + (f" ({', '.join(frozen)} set use_global_stats: true)" if frozen else ""))
    if frozen:
        log.info("bn_reestimate: BatchNorm layers with use_global_stats: true in TRAIN are left alone: %s",
                 ", ".join(frozen))
    n_iter = iters if iters is not None else _epoch_iters(train, "TRAIN", prototxt)
    test = None
    try:
        test = Net(prototxt, phase=pb.TEST, seed=seed, device=device, verbose=False)
    except NetcompressError as e:
        if select == "best-test":
            raise ToolError(f"{prototxt}: --select best-test needs the TEST net: {e}") from None
    if test is not None:
        test.share_weights_with(train)
        has_data = any(l.is_data and not l.is_input for _, l in test.named_layers())
        if not has_data:
            if select == "best-test":
                raise ToolError(f"{prototxt}: --select best-test needs a TEST-phase data layer")
            test = None
    n_test = 0
    if test is not None:
        n_test = test_iter if test_iter is not None else _epoch_iters(test, "TEST", prototxt)
        if select == "best-test" and metric not in test.output_names:
            raise ToolError(f"{prototxt}: the TEST net has no output '{metric}' to select by (outputs: "
                            f"{', '.join(test.output_names)}); give --metric or --select last")

    def score() -> float | None:
        return _test(test, n_test, metric) if test is not None else None

    scores = [score()]
    log.info("bn_reestimate: as loaded, %s = %s", metric, scores[0])
    best, best_epoch = [e.state() for e in ems], 0
    with torch.no_grad():
        for epoch in range(1, epochs + 1):
            for _ in range(n_iter):
                train()
            for e in ems:
                e.write()  # the TEST net shares these blobs
            scores.append(score())
            log.info("bn_reestimate: epoch %d (%d TRAIN forwards): %s = %s", epoch, n_iter, metric, scores[-1])
            if select == "last" or (scores[-1] is not None and scores[-1] > scores[best_epoch]):
                best, best_epoch = [e.state() for e in ems], epoch
    for e, st in zip(ems, best):
        e.load(st)
        e.write()
        e.handle.remove()
    train.save(out)
    return {"scores": scores, "selected": best_epoch, "layers": [e.layer.name for e in ems], "iters": n_iter,
            "test_iters": n_test, "out": out, "metric": metric}


def main(argv: Sequence[str] | None = None) -> int:
    """`bn_reestimate <train.prototxt> <weights> <out.caffemodel> [--epochs 10] [--select best-test|last] ...`"""
    p = argparse.ArgumentParser(
        prog="netcompress bn_reestimate",
        description="Re-estimate BatchNorm statistics with TRAIN-phase forwards over the (augmented) training "
                    "data, no update, ActQuant calibration off, PyTorch's running average (recipes-spec 4.7).")
    p.add_argument("prototxt", help="the train/test prototxt (TRAIN data for the forwards, TEST data to select)")
    p.add_argument("weights", help="the .caffemodel to re-estimate")
    p.add_argument("out", help="the .caffemodel to write")
    p.add_argument("--epochs", type=int, default=10, help="epochs of TRAIN forwards (default 10)")
    p.add_argument("--select", choices=("best-test", "last"), default="best-test",
                   help="write the state with the best test score (default; the loaded state competes) or the "
                        "last one")
    p.add_argument("--momentum", type=float, default=0.1, help="PyTorch BatchNorm momentum (default 0.1)")
    p.add_argument("--iters", type=int, default=None, help="TRAIN forwards per epoch (default ceil(N / batch))")
    p.add_argument("--test-iter", type=int, default=None, help="TEST batches per test (default ceil(N / batch))")
    p.add_argument("--metric", default="accuracy", help="the TEST output to select by (default accuracy)")
    p.add_argument("--seed", type=seed_arg(), default=None, help="seeds the TRAIN augmentation and data order")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")

    def run(a: argparse.Namespace) -> int:
        from ..device import device_from_gpu_flag

        for what, v in (("--iters", a.iters), ("--test-iter", a.test_iter)):
            if v is not None and v < 1:
                raise ToolError(f"{what} must be at least 1, got {v}")
        r = bn_reestimate(a.prototxt, a.weights, a.out, epochs=a.epochs, select=a.select, momentum=a.momentum,
                          iters=a.iters, test_iter=a.test_iter, metric=a.metric, seed=a.seed,
                          device=str(device_from_gpu_flag(a.gpu)))
        print(f"re-estimated {len(r['layers'])} BatchNorm layers, {r['iters']} TRAIN forwards per epoch")
        for epoch, s in enumerate(r["scores"]):
            label = "as loaded" if epoch == 0 else f"epoch {epoch}"
            val = "-" if s is None else f"{s:.6g}"
            print(f"  {label}: {r['metric']} = {val}" + ("  <- written" if epoch == r["selected"] else ""))
        print(f"Wrote {r['out']}")
        return 0
    return run_tool(p, argv, run)
