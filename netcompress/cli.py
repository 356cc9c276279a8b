"""The `netcompress` command: Caffe's tool verbs (train, test, time, upgrade, ...) and more.

Every subcommand is `main(argv) -> int`, testable in process; output follows Caffe's log format.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

import torch

from .errors import NetcompressError
from .log import get_logger, setup_logging
from .proto import caffe_pb2 as pb

log = get_logger("cli")

__all__ = ["main", "device_from_gpu_flag", "register_command"]


def device_from_gpu_flag(gpu: str | None) -> torch.device:
    """Caffe's -gpu flag: None/"" means CPU, "0" the first GPU; "all" is handled by the trainer."""
    if gpu is None or gpu == "" or gpu.lower() == "cpu":
        log.info("Use CPU.")
        return torch.device("cpu")
    ids = [g for g in gpu.split(",") if g]
    if not torch.cuda.is_available():
        raise NetcompressError(f"--gpu {gpu} was given but no CUDA device is available "
                               "(this torch build has CUDA: %s)" % (torch.version.cuda is not None))
    first = 0 if ids[0] == "all" else int(ids[0])
    if first >= torch.cuda.device_count():
        raise NetcompressError(f"--gpu {first}: only {torch.cuda.device_count()} CUDA device(s) exist")
    log.info("Use GPU with device ID %d", first)
    return torch.device("cuda", first)


def _add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default=None,
                   help="network phase (default: TEST for test, TRAIN for time)")
    p.add_argument("--level", type=int, default=0, help="NetState level")
    p.add_argument("--stage", default="", help="comma-separated NetState stages")


# ----------------------------------------------------------------------------------------------
# test
# ----------------------------------------------------------------------------------------------

def cmd_test(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="netcompress test",
                                description="Score a model on its TEST-phase data (caffe test).")
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel to score")
    p.add_argument("--iterations", type=int, default=50, help="number of batches (default 50)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    _add_state_args(p)
    a = p.parse_args(argv)
    from .net import Net

    device = device_from_gpu_flag(a.gpu)
    phase = pb.TRAIN if a.phase == "TRAIN" else pb.TEST
    stages = [s for s in a.stage.split(",") if s]
    net = Net(a.model, phase=phase, level=a.level, stages=stages, device=device)
    net.copy_from(a.weights)
    log.info("Running for %d iterations.", a.iterations)
    scores = test_net(net, a.iterations, log_batches=True)
    log.info("Loss: %g", scores.loss)
    for name, value, weight in scores.outputs:
        if weight:
            log.info("%s = %g (* %g = %g loss)", name, value, weight, weight * value)
        else:
            log.info("%s = %g", name, value)
    return 0


class TestScores:
    def __init__(self, loss: float, outputs: list[tuple[str, float, float]]):
        self.loss = loss
        self.outputs = outputs  # (name, mean value, loss weight), one per output element

    def __getitem__(self, name: str) -> float:
        for n, v, _ in self.outputs:
            if n == name:
                return v
        raise KeyError(name)


def test_net(net, iterations: int, log_batches: bool = False) -> TestScores:
    """Caffe's `test` loop: forward `iterations` batches, average each output element."""
    sums: list[float] = []
    names: list[tuple[str, float]] = []
    total_loss = 0.0
    with torch.no_grad():
        for i in range(iterations):
            outputs = net()
            iter_loss = float(net.loss) if net.loss is not None else 0.0
            total_loss += iter_loss
            idx = 0
            for name, blob in outputs.items():
                vals = blob.detach().reshape(-1).double().cpu().tolist()
                weight = net.loss_weights.get(name, 0.0)
                for v in vals:
                    if i == 0:
                        sums.append(v)
                        names.append((name, weight))
                    else:
                        sums[idx] += v
                    idx += 1
                    if log_batches:
                        log.info("Batch %d, %s = %g", i, name, v)
    n = max(1, iterations)
    return TestScores(total_loss / n, [(nm, s / n, w) for (nm, w), s in zip(names, sums)])


# ----------------------------------------------------------------------------------------------
# time
# ----------------------------------------------------------------------------------------------

def cmd_time(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="netcompress time",
                                description="Benchmark forward and backward, layer by layer (caffe time).")
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", default=None, help="optional .caffemodel")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    _add_state_args(p)
    a = p.parse_args(argv)
    from .net import Net
    from .timing import time_net

    device = device_from_gpu_flag(a.gpu)
    phase = pb.TEST if a.phase == "TEST" else pb.TRAIN
    stages = [s for s in a.stage.split(",") if s]
    net = Net(a.model, phase=phase, level=a.level, stages=stages, device=device)
    if a.weights:
        net.copy_from(a.weights)
    time_net(net, a.iterations)
    return 0


# ----------------------------------------------------------------------------------------------
# upgrade
# ----------------------------------------------------------------------------------------------

def cmd_upgrade(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="netcompress upgrade",
        description="Upgrade a legacy net (V0/V1 layers, input fields, old BatchNorm) or solver "
                    "(solver_type) to the current format, like Caffe's upgrade_net_proto_text/binary "
                    "and upgrade_solver_proto_text.")
    p.add_argument("input", help="legacy prototxt, caffemodel or solver prototxt")
    p.add_argument("output", help="where to write the upgraded file")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--binary", action="store_true", help="input and output are binary caffemodels")
    kind.add_argument("--solver", action="store_true", help="input is a solver prototxt")
    a = p.parse_args(argv)
    from . import io as ncio

    if a.solver:
        ncio.write_text_proto(a.output, ncio.read_solver(a.input))
    elif a.binary:
        ncio.write_caffemodel(a.output, ncio.read_caffemodel(a.input))
    else:
        ncio.write_text_proto(a.output, ncio.read_net(a.input))
    log.info("Wrote upgraded %s to %s", "solver" if a.solver else "NetParameter", a.output)
    return 0


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------

_COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "test": (cmd_test, "score a model on its TEST data (caffe test)"),
    "time": (cmd_time, "benchmark a net layer by layer (caffe time)"),
    "upgrade": (cmd_upgrade, "upgrade legacy net/solver/caffemodel files"),
}


def cmd_pipeline(argv: Sequence[str]) -> int:
    from .pipeline import main as pipeline_main
    return pipeline_main(list(argv))


_COMMANDS["pipeline"] = (cmd_pipeline, "the LeNet compression pipeline end to end on the embedded digits")


def register_command(name: str, func: Callable[[Sequence[str]], int], help_text: str) -> None:
    _COMMANDS[name] = (func, help_text)


def _load_commands() -> None:
    # Subcommands that live with their feature register themselves on import.
    import importlib

    for mod in ("netcompress.solvers.cli", "netcompress.tools.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise
    from .data.tools import MAINS

    helps = {"convert_mnist": "convert MNIST IDX files to an LMDB (Caffe's convert_mnist_data)",
             "convert_imageset": "convert an image list to an LMDB (Caffe's convert_imageset)",
             "compute_image_mean": "compute the mean image of an LMDB (Caffe's compute_image_mean)",
             "mnist5k": "write the embedded 5,000 real MNIST digits as train/test LMDBs"}
    for name, func in MAINS.items():
        _COMMANDS.setdefault(name, (func, helps.get(name, name)))


def _usage() -> str:
    lines = ["usage: netcompress <command> [args]", "", "commands:"]
    for name, (_, h) in sorted(_COMMANDS.items()):
        lines.append(f"  {name:<20} {h}")
    lines.append("")
    lines.append("`netcompress <command> --help` describes each command.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    _load_commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "version"):
        from . import __version__
        print(f"netcompress {__version__} (torch {torch.__version__})")
        return 0
    cmd = argv[0]
    if cmd not in _COMMANDS:
        print(f"netcompress: unknown command '{cmd}'\n\n{_usage()}", file=sys.stderr)
        return 2
    func = _COMMANDS[cmd][0]
    try:
        return int(func(argv[1:]) or 0)
    except NetcompressError as e:
        log.error("%s", e)
        print(f"netcompress {cmd}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))  # e.g. a distributed worker's own exit code
    except KeyboardInterrupt:
        print(f"netcompress {cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
