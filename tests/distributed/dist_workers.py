"""Worker functions for the distributed tests, importable by spawned processes (not tests)."""
from __future__ import annotations

import os

import numpy as np
import torch

from netcompress.solvers.callbacks import AfterIteration
from netcompress.distributed import data_parallel_solver
from netcompress.proto import caffe_pb2 as pb


def blobs_of(net) -> dict[str, np.ndarray]:
    """Every blob of every layer (weights, biases, masks) by 'layer.blob' name."""
    return {f"{name}.{bn}": getattr(layer, bn).detach().cpu().numpy().copy()
            for name, layer in net.named_layers() for bn in layer.blob_names}


def train_and_dump(info, solver_bytes: bytes, outdir: str) -> None:
    """Train data-parallel, then save this rank's blobs (to compare the ranks' masks)."""
    sp = pb.SolverParameter.FromString(solver_bytes)
    solver = data_parallel_solver(sp, device=info.device, verbose=False)
    solver.solve()
    surgeries = {n: l.surgeries for n, l in solver.net.named_layers() if hasattr(l, "surgeries")}
    np.savez(os.path.join(outdir, f"rank{info.rank}.npz"), **blobs_of(solver.net))
    np.save(os.path.join(outdir, f"surgeries{info.rank}.npy"), np.asarray(list(surgeries.values())))


def inject_fault(info, solver_bytes: bytes, mode: str, at_iter: int) -> None:
    """Train data-parallel and break something on rank 1 after iteration `at_iter`:
    'mask' flips one conv1 mask entry, 'nan' puts a NaN into ip1's weights, 'stop' asks to stop."""
    sp = pb.SolverParameter.FromString(solver_bytes)
    solver = data_parallel_solver(sp, device=info.device, verbose=False)

    def hook(s) -> None:
        if info.rank != 1 or s.iter != at_iter:
            return
        with torch.no_grad():
            if mode == "mask":
                m = s.net.layer("conv1").weight_mask.view(-1)
                m[0] = 1.0 - m[0]
            elif mode == "nan":
                s.net.layer("ip1").weight.view(-1)[0] = float("nan")
            elif mode == "stop":
                s.request("stop")

    solver.add_callback(AfterIteration(hook))
    solver.solve()
    with open(os.path.join(os.path.dirname(sp.snapshot_prefix), f"done{info.rank}.txt"), "w") as f:
        f.write(str(solver.iter))


def report_threads(info, outdir: str) -> None:
    """This rank's CPU thread count."""
    with open(os.path.join(outdir, f"threads{info.rank}.txt"), "w") as f:
        f.write(str(torch.get_num_threads()))


def report_malloc(info, outdir: str) -> None:
    """Whether this rank runs with the commands' malloc settings: a 30 MiB block from the brk heap."""
    from netcompress.memory import current_memory

    block = torch.empty(30 << 18)
    heap = False
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                heap = lo <= block.data_ptr() < hi
    with open(os.path.join(outdir, f"rank{info.rank}.txt"), "w") as f:
        f.write(f"{current_memory().keep} {heap}")


def watch_teardown(info, outdir: str, fail: bool) -> None:
    """One all-reduce, with torch's destroy_process_group wrapped to leave a file if this rank calls it;
    then return, or raise (fail) on rank 1."""
    import torch.distributed as dist

    real = dist.destroy_process_group

    def recorded(*args, **kwargs):
        with open(os.path.join(outdir, f"teardown{info.rank}"), "w") as f:
            f.write("called")
        return real(*args, **kwargs)

    dist.destroy_process_group = recorded
    t = torch.ones(3)
    dist.all_reduce(t)
    with open(os.path.join(outdir, f"done{info.rank}"), "w") as f:
        f.write(str(int(t.sum())))
    if fail and info.rank == 1:
        raise ValueError("rank 1 fails on purpose")
