"""Caffe's `time` command: average forward and backward time per layer and for the whole net."""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch

from .cliargs import add_gpu_arg, add_state_args, int_flag_error, state_from_args
from .device import device_from_gpu_flag
from .errors import NetcompressError
from .proto import caffe_pb2 as pb

from .log import get_logger, stop_if_reader_gone

log = get_logger("time")

__all__ = ["time_net", "forward_pass", "backward_pass", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _has_per_forward_steps(net) -> bool:
    """Whether a layer of `net` acts on the solver iteration in its TRAIN forwards (its `set_iteration` or
    `before_train_forward` hook: DNS surgery, INQ stages), which `time` runs at one iteration; the hint about
    that iteration is only worth giving for such nets."""
    from .layers.base import Layer

    return any(type(layer).set_iteration is not Layer.set_iteration
               or type(layer).before_train_forward is not Layer.before_train_forward
               for layer in net.layers.values())


def time_net(net, iterations: int = 50, iteration: int = 0) -> dict:
    """Time `iterations` forward+backward passes, then each layer's forward and backward.

    A TRAIN-phase net runs its layers' per-forward state changes inside each timed forward, as
    Caffe's fork does inside Layer::Forward (a DNS layer's statistics and surgery, an INQ layer's
    quantization at iteration 0, a quantizer's refit), at the solver iteration `iteration` (the
    reference reads an uninitialised counter there; reference-semantics 2.2: take it explicitly,
    default 0, where a DNS surgery runs at every forward).

    Per-layer backward times come from `torch.autograd.grad` over that layer alone, with ones as the
    incoming gradient, as Caffe times each Layer::Backward: for its parameters, and for the bottoms
    that get a diff in the net's own backward (Caffe's bottom_need_backward: not the data, not a
    `propagate_down: false` bottom, unless `force_backward`), so a first convolution is not timed
    for an input gradient that training never computes. Returns the averages in milliseconds: the
    passes' (`forward_ms`, `backward_ms`, `forward_backward_ms`, `total_ms`) and each layer's
    (`layers[name]["forward_ms"]`, `layers[name]["backward_ms"]`; the k-th of several layers of one name,
    which Caffe allows and times each, as `name#k` from k = 2).
    """
    dev = net.device
    train = net.phase == pb.TRAIN
    if train:
        net.set_iteration(iteration)

    log.info("Performing Forward")
    try:
        forward_pass(net, train)
    except NetcompressError as e:
        if train and e.args and isinstance(e.args[0], str) and _has_per_forward_steps(net):
            e.args = (f"{e.args[0]} [time runs a TRAIN net's per-forward steps at solver iteration {iteration}, as "
                      "Caffe's fork does in Forward: give --weights of a trained model, --iteration N past the "
                      "layer's step, or --phase TEST]",) + e.args[1:]
        raise
    initial = net.loss if net.loss is not None else torch.zeros(())
    log.info("Initial loss: %g", float(initial.detach()))
    log.info("Performing Backward")
    backward_pass(net, train)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    names = net.layer_names  # by position: Caffe lets layers share a name, and times each
    fwd = [0.0] * len(names)
    bwd = [0.0] * len(names)
    total_f = total_b = 0.0
    t_all = time.perf_counter()
    with stop_if_reader_gone() as gone:  # (`netcompress time ... 2>&1 | head`: its lines are its output)
        for j in range(iterations):
            gone(f"timing stopped after iteration {j}")
            t0 = time.perf_counter()
            forward_pass(net, train)
            _sync(dev)
            t1 = time.perf_counter()
            backward_pass(net, train)
            _sync(dev)
            t2 = time.perf_counter()
            total_f += t1 - t0
            total_b += t2 - t1
            log.info("Iteration: %d forward-backward time: %g ms.", j + 1, (t2 - t0) * 1e3)
        gone(f"timing stopped after iteration {iterations}, before the layers' times")
    total = time.perf_counter() - t_all
    # Per-layer times: re-run each layer on the blobs of the last pass. A bottom gets a gradient
    # where it had one in that pass (net.blobs holds its tensors). One untimed pass first: the
    # layer-alone calls can differ from the net's (an incoming gradient of another layout), and
    # oneDNN builds a primitive on its first call of a kind (about 0.3 s for conv1's weight
    # gradient), which would otherwise land in one layer's average.
    force = net.param.force_backward
    need = [[(pd or force) and net.blobs[b].requires_grad for b, pd in zip(net._bottoms[li], net._prop_down[li])]
            for li in range(len(names))]
    _layer_pass(net, need, dev, list(fwd), list(bwd), train)
    for _ in range(iterations):
        _layer_pass(net, need, dev, fwd, bwd, train)
    log.info("Average time per layer: ")
    for li, n in enumerate(names):
        log.info("%10s\tforward: %g ms.", n, fwd[li] / iterations * 1e3)
        log.info("%10s\tbackward: %g ms.", n, bwd[li] / iterations * 1e3)
    res = {"forward_ms": total_f / iterations * 1e3, "backward_ms": total_b / iterations * 1e3,
           "forward_backward_ms": (total_f + total_b) / iterations * 1e3, "total_ms": total * 1e3,
           "layers": {label: {"forward_ms": fwd[li] / iterations * 1e3,
                              "backward_ms": bwd[li] / iterations * 1e3}
                      for li, (label, _) in enumerate(net.labelled_layers())}}
    log.info("Average Forward pass: %g ms.", res["forward_ms"])
    log.info("Average Backward pass: %g ms.", res["backward_ms"])
    log.info("Average Forward-Backward: %g ms.", res["forward_backward_ms"])
    log.info("Total Time: %g ms.", res["total_ms"])
    log.info("*** Benchmark ends ***")
    return res


def _layer_pass(net, need: list[list[bool]], dev: torch.device, fwd: list[float], bwd: list[float],
                train: bool) -> None:
    """Each layer's forward (with its TRAIN-phase state change), then its backward alone, in order; adds
    the seconds to fwd/bwd (by layer position)."""
    blobs = {}
    for li, (_, layer) in enumerate(net.named_layers()):
        if layer.type_name == "Input":
            xs = []
        else:
            xs = [blobs[b].detach().requires_grad_(n and blobs[b].is_floating_point())
                  for b, n in zip(net._bottoms[li], need[li])]
        t0 = time.perf_counter()
        if train:
            layer.before_train_forward()
        out = layer(*xs)
        _sync(dev)
        fwd[li] += time.perf_counter() - t0
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        for t, y in zip(net._tops[li], outs):
            blobs[t] = y
        wrt = [x for x in xs if x.requires_grad] + [p for p in layer.parameters() if p.requires_grad]
        diffable = [y for y in outs if y.requires_grad]
        if wrt and diffable:
            t0 = time.perf_counter()
            torch.autograd.grad(diffable, wrt, [torch.ones_like(y) for y in diffable], allow_unused=True)
            _sync(dev)
            bwd[li] += time.perf_counter() - t0


def forward_pass(net, train: bool) -> None:
    """One forward of the whole net as `time` runs it: for a TRAIN net (`train`), the layers' per-forward
    state changes first (Caffe's fork makes them inside Layer::Forward), at the iteration the net was given."""
    if train:
        net.before_train_forward()
    net()


def backward_pass(net, train: bool) -> None:
    """The backward matching forward_pass (for a TRAIN net inside the layers' per-call gradient rule, as the
    solver's step runs it); the gradients are then cleared."""
    if train:
        net.before_backward()  # the layers' per-call gradient rule, as in the solver's step
    _loss_backward(net)
    if train:
        net.after_backward()
    net.zero_grad(set_to_none=True)


def _loss_backward(net) -> None:
    loss = net.loss
    if loss is None:
        outs = [b for b in net.blobs.values() if b.requires_grad]
        if not outs:
            return
        loss = sum(o.sum() for o in outs[-1:])
    if loss.requires_grad:
        loss.backward()


def main(argv: Sequence[str] | None = None) -> int:
    """`netcompress time`: Caffe's time verb."""
    p = argparse.ArgumentParser(prog="netcompress time",
                                description="Benchmark forward and backward, layer by layer (caffe time).")
    p.add_argument("--model", "-model", required=True, help="net prototxt")
    p.add_argument("--weights", "-weights", default=None, help="optional .caffemodel")
    p.add_argument("--iterations", "-iterations", type=int, default=50, help="timed iterations (default 50)")
    p.add_argument("--iteration", type=int, default=0,
                   help="the solver iteration a TRAIN net's layers see (DNS surgery odds, INQ stage; default 0)")
    p.add_argument("--strict", action="store_true",
                   help="a learnable layer that the weights do not fill is an error (default: a warning)")
    add_gpu_arg(p)
    add_state_args(p)
    a = p.parse_args(argv)
    for value, flag, least in ((a.iterations, "--iterations", 1), (a.iteration, "--iteration", 0)):
        message = int_flag_error(value, flag, least)
        if message:
            p.error(message)
    from .net import Net, check_memory

    device = device_from_gpu_flag(a.gpu)
    phase, level, stages = state_from_args(a, pb.TRAIN)
    net = Net(a.model, phase=phase, level=level, stages=stages, device=device)
    check_memory([net])
    if a.weights:
        net.copy_from(a.weights, strict=a.strict)
    time_net(net, a.iterations, a.iteration)
    return 0
