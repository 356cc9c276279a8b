"""`netcompress train` (caffe train), `netcompress test` (caffe test) and `netcompress plot`."""
from __future__ import annotations

import argparse
import math
import os
from typing import Sequence

import torch

from ..cliargs import add_gpu_arg, add_state_args, int32_arg, require_int_flag, state_from_args
from ..device import device_for, device_from_gpu_flag
from ..errors import NetcompressError
from ..log import get_logger
from ..options import add_option_args, options_from_args
from ..proto import caffe_pb2 as pb
from . import step as _step  # noqa: F401  (registers the step_mode option, --step-mode)

log = get_logger("train")


def train_main(argv: Sequence[str] | None = None) -> int:
    """`netcompress train`: Caffe's train verb, on one process or data-parallel."""
    p = argparse.ArgumentParser(prog="netcompress train", description="Train a model (caffe train).")
    p.add_argument("--solver", "-solver", required=True, help="solver prototxt")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", "-weights", default=None,
                   help="comma-separated .caffemodel files to fine-tune from")
    g.add_argument("--snapshot", "-snapshot", default=None, help=".solverstate to resume from")
    p.add_argument("--gpu", "-gpu", default=None,
                   help="GPU id(s), comma-separated, or 'all': several GPUs train data-parallel, one "
                        "process each (default: the solver's solver_mode)")
    p.add_argument("--iterations", "-iterations", type=int, default=None, help="override max_iter")
    p.add_argument("--sigint_effect", "-sigint_effect", default="stop", choices=["stop", "snapshot", "none"],
                   help="what Ctrl-C does (default: stop, which snapshots first)")
    p.add_argument("--sighup_effect", "-sighup_effect", default="snapshot",
                   choices=["stop", "snapshot", "none"], help="what SIGHUP does (default: snapshot)")
    p.add_argument("--strict", action="store_true",
                   help="a learnable layer that --weights do not fill is an error (default: a warning)")
    p.add_argument("--level", "-level", type=int32_arg("NetState's level"), default=None,
                   help="the training net's NetState level (the solver's train_state; default: the solver's)")
    p.add_argument("--stage", "-stage", default="",
                   help="comma-separated NetState stages added to the training net's (the solver's train_state)")
    add_option_args(p)  # the recipes' options (netcompress.options)
    p.add_argument("--cpu-procs", type=int, default=None,
                   help="data-parallel training on N CPU processes (gloo), for testing and CPU clusters")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="distributed runs: how long a process waits for the others (default 1800; "
                        "rank 0 tests while the others wait)")
    a = p.parse_args(argv)
    from .. import io as ncio
    from ..distributed import launcher_env
    from .solver import Solver

    if a.iterations is not None:
        require_int_flag(a.iterations, "--iterations", 0)
    if a.cpu_procs is not None and a.cpu_procs < 1:
        raise NetcompressError(f"--cpu-procs must be at least 1, got {a.cpu_procs}")
    most = 4 * (os.cpu_count() or 1)  # (each process holds a net, a solver and gloo's sockets)
    if a.cpu_procs is not None and a.cpu_procs > most:  # (100,000 ran for minutes, then died in gloo)
        raise NetcompressError(f"--cpu-procs {a.cpu_procs} is more processes than this machine's "
                               f"{os.cpu_count() or 1} CPUs can run (at most {most}, four to a CPU)")
    if a.dist_timeout is not None and not (math.isfinite(a.dist_timeout) and a.dist_timeout > 0):
        raise NetcompressError(f"--dist-timeout takes a positive number of seconds, got {a.dist_timeout:g}")
    if a.cpu_procs and a.gpu:
        raise NetcompressError("--cpu-procs and --gpu exclude each other: --cpu-procs trains on CPU "
                               "processes, --gpu on GPUs")
    sp = ncio.read_solver(a.solver)
    if a.level is not None:  # (Caffe's train sets train_state from --level and --stage, as here)
        sp.train_state.level = a.level
    stages = [s for s in dict.fromkeys(a.stage.split(",")) if s and s not in sp.train_state.stage]
    if stages:  # (extending by nothing would mark an empty train_state as set, and the log would show it)
        sp.train_state.stage.extend(stages)
    launched = launcher_env() is not None  # torchrun (WORLD_SIZE > 1) or an srun step of > 1 tasks
    device, ids = (torch.device("cpu"), None) if a.cpu_procs else device_for(a.gpu, sp)
    if launched or (a.cpu_procs or 1) > 1 or (ids and len(ids) > 1):
        from ..distributed import train_distributed
        return train_distributed(a, sp, ids)
    solver = Solver(sp, device=device, weights=a.weights, max_iter=a.iterations,
                    sigint_effect=a.sigint_effect, sighup_effect=a.sighup_effect,
                    options=options_from_args(a), source=a.solver, strict=a.strict)
    solver.run_train(a.snapshot)
    return 0


def plot_main(argv: Sequence[str] | None = None) -> int:
    """`netcompress plot`: curves of Caffe/netcompress training logs."""
    p = argparse.ArgumentParser(prog="netcompress plot",
                                description="Plot training logs (Caffe's or netcompress's) to a PNG: "
                                            "training loss, each test output, learning rate.")
    p.add_argument("logs", nargs="+", help="training log file(s); several are overlaid")
    p.add_argument("--out", "-o", required=True, help="output PNG")
    p.add_argument("--labels", default=None, help="comma-separated legend labels")
    a = p.parse_args(argv)
    from .logparse import plot_logs

    labels = a.labels.split(",") if a.labels else None
    if labels and len(labels) != len(a.logs):
        raise NetcompressError(f"--labels has {len(labels)} names for {len(a.logs)} logs")
    from ..io import check_input_file

    for path in a.logs:  # (a FIFO, a folder or a device is named as such: it was "no such log file")
        check_input_file(path, "training log")
    from ..tools._common import numbered_inputs, refuse_overwrites

    # (`netcompress plot train.log --out train.log` replaced the log by its chart)
    refuse_overwrites([a.out], writes=["the chart"], **numbered_inputs("training log", a.logs))
    logs = plot_logs(a.logs, a.out, labels)
    for lg in logs:
        if not lg.train_loss and not lg.test:
            log.warning("%s: no training or test lines found (is it a Caffe/netcompress log?)", lg.path)
    log.info("Wrote %s", a.out)
    return 0


def test_main(argv: Sequence[str] | None = None) -> int:
    """`netcompress test`: Caffe's test verb."""
    p = argparse.ArgumentParser(prog="netcompress test",
                                description="Score a model on its TEST-phase data (caffe test).")
    p.add_argument("--model", "-model", required=True, help="net prototxt")
    p.add_argument("--weights", "-weights", required=True, help=".caffemodel to score")
    p.add_argument("--iterations", "-iterations", type=int, default=50, help="number of batches (default 50)")
    p.add_argument("--strict", action="store_true",
                   help="a learnable layer that the weights do not fill is an error (default: a warning)")
    p.add_argument("--verbose", action="store_true", help="also log the net's set-up (layers, top shapes)")
    add_gpu_arg(p)
    add_state_args(p)
    a = p.parse_args(argv)
    from ..net import Net, check_memory
    from .evaluate import test_net

    require_int_flag(a.iterations, "--iterations", 1)
    device = device_from_gpu_flag(a.gpu)
    phase, level, stages = state_from_args(a, pb.TEST)
    net = Net(a.model, phase=phase, level=level, stages=stages, device=device, verbose=a.verbose)
    check_memory([net])
    net.copy_from(a.weights, strict=a.strict)
    log.info("Running for %d iterations.", a.iterations)
    scores = test_net(net, a.iterations, log_batches=True)
    log.info("Loss: %g", scores.loss)
    for name, value, weight in scores.outputs:
        if weight:
            log.info("%s = %g (* %g = %g loss)", name, value, weight, weight * value)
        else:
            log.info("%s = %g", name, value)
    return 0
