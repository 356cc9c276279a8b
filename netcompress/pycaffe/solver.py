"""pycaffe's solvers (`caffe.SGDSolver(path)`, ..., `caffe.get_solver(path)`) over netcompress's Solver.

The training itself is netcompress's Solver (Caffe's loop, update rules and snapshots); these classes give it
pycaffe's interface: `net` and `test_nets` are `caffe.Net`s (blobs and params as numpy arrays), `step(n)`,
`solve(resume_file)`, `iter`, `restore`, `snapshot`, `apply_update`, `param`, `lr`, `add_callback`,
`share_weights`; and `NCCL`, which averages the gradients of solvers in separate processes, as BVLC's
python/train.py uses it. As in pycaffe, the class decides the update rule (`caffe.AdamSolver(path)` runs Adam
whatever the file's `type`); `get_solver` takes the file's. The device is the module's mode
(`caffe.set_mode_gpu()`), not the file's `solver_mode`, as pycaffe's.

Around every call the nets' numpy side is made coherent: what a script wrote into an input blob, a DummyData
constant top or (on a GPU) a parameter reaches the nets first, and afterwards the blobs hold the last forward's
values. The solver's backward keeps only the parameters' gradients, so after `step` the activations' `.diff`
arrays are not those of the last iteration (run `net.backward()` for them).
"""
from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any, Callable

from ..proto import caffe_pb2 as pb
from . import _base
from .net import Net, _check_file

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "get_solver", "NCCL"]


class Solver:
    """A solver from a solver prototxt (see the module docstring)."""

    _solver_type: str | None = None  # the update rule this class runs; None: the file's `type`

    def __init__(self, solver_file):
        from .. import io as ncio
        from ..solvers import Solver as CoreSolver

        if isinstance(solver_file, pb.SolverParameter):
            sp, source = solver_file, None
        else:
            source = _check_file(solver_file)
            sp = ncio.read_solver(source)
        if self._solver_type is not None:
            sp.type = self._solver_type
        # One of solver_count() solvers (python/train.py sets the count and rank first): its share of the data,
        # and only rank 0 tests, logs and snapshots, as Caffe's root solver.
        rank, count = _base.solver_rank(), _base.solver_count()
        if rank >= count:
            raise ValueError(f"caffe.set_solver_rank({rank}) is not below caffe.set_solver_count({count})")
        self._core = CoreSolver(sp, device=_base.device(), source=source, rank=rank, world_size=count)
        self._wrappers: dict[int, tuple[Any, Net]] = {}

    # -- nets ---------------------------------------------------------------------------------------------------
    def _wrap(self, core_net) -> Net:
        held = self._wrappers.get(id(core_net))
        if held is None or held[0] is not core_net:
            held = (core_net, Net(None, _core=core_net, _owner=self))
            self._wrappers[id(core_net)] = held
        return held[1]

    @property
    def net(self) -> Net:
        """The TRAIN net."""
        return self._wrap(self._core.net)

    @property
    def test_nets(self) -> list[Net]:
        """The TEST nets, which share the TRAIN net's weights."""
        return [self._wrap(n) for n in self._core.test_nets]

    def _nets(self) -> list[Net]:
        return [self.net, *self.test_nets]

    def _before(self) -> None:
        for net in self._nets():
            if any(net._callbacks.values()):
                raise NotImplementedError(
                    "net callbacks (before_forward, after_forward, before_backward, after_backward) run in "
                    "net.forward() and net.backward() here; the solver's own iterations do not call them")
            net._flush()
            net._feed_inputs()

    def _after(self) -> None:
        for net in self._nets():
            net._after_core_run()

    # -- pycaffe's Solver -----------------------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        return self._core.iter

    @property
    def param(self) -> pb.SolverParameter:
        """The SolverParameter in use (changes, e.g. to base_lr, apply from the next iteration)."""
        return self._core.param

    @property
    def lr(self) -> float:
        """The current iteration's learning rate (SGDSolver::GetLearningRate)."""
        return self._core.learning_rate()

    def step(self, iters: int) -> None:
        """Run `iters` iterations (tests and snapshots at their intervals, as in Caffe)."""
        iters = _base._non_negative(iters, "Solver.step")  # (past Caffe's int counter: the native step refuses)
        self._before()
        try:
            self._core.step(iters)
        finally:
            self._after()

    def solve(self, resume_file: str | None = None) -> None:
        """Train to max_iter, first restoring `resume_file` (a .solverstate) if given."""
        self._before()
        try:
            self._core.solve(None if resume_file is None else os.fsdecode(os.fspath(resume_file)))
        finally:
            self._after()

    def restore(self, state_file) -> None:
        """Resume from a .solverstate: the weights, the iteration and the update history."""
        self._before()
        self._core.restore(_check_file(state_file))
        self._after()

    def snapshot(self) -> None:
        """Write <snapshot_prefix>_iter_<iter>.caffemodel and .solverstate."""
        self._before()
        self._core.snapshot()

    def apply_update(self) -> None:
        """Caffe's ApplyUpdate on the current parameter diffs: the rate, clipping, regularization, the rule's
        update value, w -= update (the iteration is not advanced)."""
        self._before()
        self._core.apply_update()
        self._after()

    def share_weights(self, net: Net) -> None:
        """`net` shares this solver's TRAIN-net weights (by layer name)."""
        if not isinstance(net, Net):
            raise TypeError(f"share_weights takes a caffe.Net, got {type(net).__name__}")
        net.share_with(self.net)

    def add_callback(self, on_start: "Callable[[], Any] | NCCL", on_gradients_ready: Callable[[], Any] | None = None
                     ) -> None:
        """`on_start()` when training starts, `on_gradients_ready()` after each iteration's backward passes,
        before the update; or `add_callback(nccl)`: that NCCL averages the gradients there."""
        from ..solvers.callbacks import TrainingCallback

        if isinstance(on_start, NCCL):
            if on_gradients_ready is not None:
                raise TypeError("add_callback(nccl) takes the NCCL alone")
            on_start.attach(self)
            return
        if on_gradients_ready is None:
            raise TypeError("add_callback takes on_start and on_gradients_ready, or an NCCL")

        class _Callback(TrainingCallback):
            def on_start(self, solver) -> None:
                on_start()

            def before_update(self, solver) -> None:
                on_gradients_ready()

        self._core.add_callback(_Callback())

    @property
    def netcompress_solver(self):
        """The netcompress Solver underneath."""
        return self._core


class SGDSolver(Solver):
    _solver_type = "SGD"


class NesterovSolver(SGDSolver):
    _solver_type = "Nesterov"


class AdaGradSolver(SGDSolver):
    _solver_type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    _solver_type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    _solver_type = "AdaDelta"


class AdamSolver(SGDSolver):
    _solver_type = "Adam"


_BY_TYPE = {cls._solver_type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                               AdaDeltaSolver, AdamSolver)}


def get_solver(solver_file) -> Solver:
    """The solver of the file's `type` (SolverRegistry::CreateSolver)."""
    from .. import io as ncio

    path = _check_file(solver_file)
    sp = ncio.read_solver(path)

    return _BY_TYPE.get(sp.type, Solver)(path)


_UID_PREFIX = b"netcompress-nccl:"


class NCCL:
    """pycaffe's NCCL: the solvers of separate processes train as one, their gradients averaged before each
    update (Caffe's NCCL::on_gradients_ready: the sum over the solvers, divided by their count).

    As in BVLC's python/train.py: the parent takes `uid = caffe.NCCL.new_uid()` and starts one process per solver;
    each calls `caffe.set_solver_count(n)`, `caffe.set_solver_rank(r)` (before creating its solver: the count
    and rank decide its share of the data), creates its solver, then `nccl = caffe.NCCL(solver, uid)`,
    `nccl.bcast()` (every solver takes rank 0's weights) and `solver.add_callback(nccl)`; with
    `layer_wise_reduce` (the default) also `solver.net.after_backward(nccl)`, which Caffe uses to reduce each
    layer's gradients as soon as its backward ends: here they are averaged together, before the update, with
    the same result. The processes meet through torch.distributed (the uid names the rendezvous): NCCL between
    GPUs, gloo between CPU processes, as `netcompress train --gpu 0,1` or `--cpu-procs 2`.
    """

    def __init__(self, solver: Solver, uid: bytes):
        import torch.distributed as dist

        from ..distributed import DataParallel

        if not isinstance(solver, Solver):
            raise TypeError(f"caffe.NCCL takes a caffe solver and a uid, got {type(solver).__name__}")
        core = solver._core
        count, rank = _base.solver_count(), _base.solver_rank()
        if (core.rank, core.world_size) != (rank, count):
            raise ValueError(f"caffe.NCCL: the solver was created as rank {core.rank} of {core.world_size}, but "
                             f"caffe.solver_rank() / solver_count() are now {rank} / {count}; call "
                             "caffe.set_solver_count and caffe.set_solver_rank before creating the solver, as "
                             "python/train.py does")
        _base.set_multiprocess(True)
        if dist.is_initialized():
            if (dist.get_rank(), dist.get_world_size()) != (rank, count):
                raise ValueError(f"caffe.NCCL: torch.distributed is already set up as rank {dist.get_rank()} of "
                                 f"{dist.get_world_size()}, not rank {rank} of {count}")
        else:
            if core.device.type == "cuda":
                import torch

                torch.cuda.set_device(core.device)
            dist.init_process_group("nccl" if core.device.type == "cuda" else "gloo",
                                    init_method=_init_method(uid), world_size=count, rank=rank)
            import atexit

            atexit.register(_destroy_group)
        self._solver = solver
        self._parallel = DataParallel(core.device)
        self._attached = False

    @staticmethod
    def new_uid() -> bytes:
        """A new rendezvous for the solvers of one run (bytes, as Caffe's Python 3 binding returns): a file
        path in the temporary folder that the processes' torch.distributed store shares (one machine, or
        machines sharing that folder)."""
        folder = tempfile.gettempdir()
        path = os.path.join(folder, f"netcompress-nccl-{os.getpid()}-{uuid.uuid4().hex}")
        # The solvers' processes leave the file behind (they exit without tearing their group down, as
        # multiprocessing's children skip atexit); the process that made the uid removes it when it exits.
        import atexit

        atexit.register(_remove_quietly, path)
        return _UID_PREFIX + path.encode()

    def bcast(self) -> None:
        """Every solver takes rank 0's weights (and DNS/INQ masks): Caffe's NCCL::Broadcast."""
        core = self._solver._core
        self._solver._before()
        self._parallel.broadcast([e.tensor for e in core.params])
        self._solver._after()

    def attach(self, solver: Solver) -> None:
        """Average `solver`'s gradients before each update (`solver.add_callback(nccl)`; once however often it
        is asked, also through `net.after_backward(nccl)`)."""
        if solver is not self._solver:
            raise ValueError("caffe.NCCL: add_callback(nccl) on a solver other than the one it was created for")
        if not self._attached:
            self._solver._core.add_callback(self._parallel)
            self._attached = True


def _init_method(uid) -> str:
    if isinstance(uid, str):
        uid = uid.encode()
    if not isinstance(uid, (bytes, bytearray)) or not uid.startswith(_UID_PREFIX):
        raise ValueError(f"caffe.NCCL: {uid!r} is not a uid from caffe.NCCL.new_uid()")
    return "file://" + bytes(uid[len(_UID_PREFIX):]).decode()


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _destroy_group() -> None:
    from ..distributed import destroy_process_group

    destroy_process_group()  # (its docstring: why not torch's alone)
