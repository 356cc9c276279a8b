#!/usr/bin/env python3
"""Net2Net on the embedded MNIST digits: grow a LeNet teacher and compare the Net2Net
initialisations with their random baselines, as the Keras `mnist_net2net` example does
(recipes-spec 1.6), with netcompress's net2wider / net2deeper and its Caffe solver.

Run from the repository root (the nets read data/mnist5k_*_lmdb, as Caffe resolves paths):

    python examples/net2net/run.py [--out runs/net2net] [--epochs 3] [--threads 1]

1. writes the 5,000 embedded digits as LMDBs under data/ (`netcompress mnist5k data`);
2. trains the teacher with examples/net2net/teacher_solver.prototxt (BVLC LeNet, lr 0.01,
   momentum 0.9, 3 epochs of 63 batches of 64);
3. grows it: wider ip1 500 -> 1000, wider conv1 20 -> 40, deeper after conv2 (no ReLU there),
   deeper after ip1 (its ReLU copied), and the Keras example's two students (wider conv1 + ip1;
   deeper after conv2 + ip1), each with the Net2Net initialisation and its random baseline;
4. fine-tunes every student and the teacher itself with examples/net2net/student_solver.prototxt
   (lr 0.001, momentum 0.9), testing on the 1,000 test digits before and after every epoch;
5. prints the table and writes OUT/results.md, results.json and results.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's netcompress

from netcompress import io as ncio  # noqa: E402
from netcompress.data.mnist5k import ensure_mnist5k  # noqa: E402
from netcompress.tools import net2net  # noqa: E402

LENET = "examples/mnist/lenet_train_test.prototxt"
EPOCH = 63  # 4,000 training digits in batches of 64

# name -> (description, [surgery, ...]); a surgery is ("wider", layer, width) or ("deeper", after)
STUDENTS = {
    "wider ip1": [("wider", "ip1", 1000)],
    "wider conv1": [("wider", "conv1", 40)],
    "deeper conv2": [("deeper", "conv2")],
    "deeper ip1": [("deeper", "ip1")],
    "wider conv1+ip1": [("wider", "conv1", 40), ("wider", "ip1", 1000)],
    "deeper conv2+ip1": [("deeper", "conv2"), ("deeper", "ip1")],
}


def train(template: str, net: str, weights: str | None, prefix: str, epochs: int, log: str) -> dict:
    """Train `net` with the solver `template` for `epochs` epochs; test before and after each."""
    from netcompress.solvers import Solver

    sp = ncio.read_solver(template)
    sp.net = net
    sp.max_iter = epochs * EPOCH
    sp.snapshot_prefix = prefix
    sp.test_interval = 0  # tested below, after each epoch
    sp.snapshot = 0
    with net2net.training_log(log):
        s = Solver(sp, weights=weights, verbose=False, source=template)
        scores = [dict(s.test(0))]
        for _ in range(epochs):
            s.step(EPOCH)
            scores.append(dict(s.test(0)))
        model = s.snapshot()
    return {"loss": [r["loss"] for r in scores], "accuracy": [r["accuracy"] for r in scores], "model": model}


def grow(teacher: str, surgeries, init_kind: str, folder: str, name: str, seed: int) -> tuple[str, str]:
    proto, weights = LENET, teacher
    for k, op in enumerate(surgeries):
        out_p = os.path.join(folder, f"{name}_{k}.prototxt")
        out_w = os.path.join(folder, f"{name}_{k}.caffemodel")
        if op[0] == "wider":
            net2net.net2wider(proto, weights, out_p, out_w, op[1], width=op[2], seed=seed + k,
                              init="net2wider" if init_kind == "net2net" else "random-pad", quiet=True)
        else:
            net2net.net2deeper(proto, weights, out_p, out_w, op[1], seed=seed + k,
                               init="net2deeper" if init_kind == "net2net" else "random-init", quiet=True)
        proto, weights = out_p, out_w
    return proto, weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/net2net", help="run folder (default runs/net2net)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of each student (default 3)")
    p.add_argument("--seed", type=int, default=1, help="surgery seed (default 1; the solvers' random_seed is 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: LeNet gains little from more, and on a shared machine "
                        "two busy threads can run several times slower than one)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if not os.path.isfile(LENET):
        p.error(f"run from the repository root ({LENET} not found in {os.getcwd()})")
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    folder = os.path.join(a.out, "students")
    os.makedirs(folder, exist_ok=True)
    ensure_mnist5k("data")

    print("teacher: LeNet, lr 0.01, 3 epochs ...", flush=True)
    t = time.time()
    tr = train(os.path.join(HERE, "teacher_solver.prototxt"), LENET, None, os.path.join(a.out, "teacher"), 3,
               os.path.join(a.out, "teacher.log"))
    teacher = tr["model"]
    print(f"  test loss {tr['loss'][-1]:.4f}, accuracy {tr['accuracy'][-1]:.4f} ({time.time() - t:.0f} s)")

    student_solver = os.path.join(HERE, "student_solver.prototxt")
    rows = []
    t = time.time()
    r = train(student_solver, LENET, teacher, os.path.join(folder, "teacher_ft"), a.epochs,
              os.path.join(folder, "teacher_ft.log"))
    rows.append({"student": "teacher, fine-tuned as the students", "init": "-", "params": 431_080, **r,
                 "seconds": round(time.time() - t, 1)})
    print(f"  {rows[-1]['student']}: loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f} ({time.time() - t:.0f} s)",
          flush=True)
    for name, surgeries in STUDENTS.items():
        for kind in ("net2net", "random"):
            t = time.time()
            tag = name.replace(" ", "_").replace("+", "_") + "_" + kind
            proto, weights = grow(teacher, surgeries, kind, folder, tag, a.seed)
            m = net2net.load_model(proto, weights)
            r = train(student_solver, proto, weights, os.path.join(folder, tag), a.epochs,
                      os.path.join(folder, tag + ".log"))
            init = ("net2wider" if surgeries[0][0] == "wider" else "net2deeper") if kind == "net2net" else \
                ("random-pad" if surgeries[0][0] == "wider" else "random-init")
            rows.append({"student": name, "init": init, "params": net2net.count_params(m), **r,
                         "seconds": round(time.time() - t, 1)})
            print(f"  {name}, {init}: loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f} ({time.time() - t:.0f} s)",
                  flush=True)
    total = time.time() - t0
    head = ("| student | init | parameters | " + " | ".join(f"test loss, epoch {e}" for e in range(a.epochs + 1))
            + f" | accuracy, epoch 0 | accuracy, epoch {a.epochs} |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['student']} | {r['init']} | {r['params']:,} | "
                     + " | ".join(f"{x:.4f}" for x in r["loss"])
                     + f" | {r['accuracy'][0]:.3f} | {r['accuracy'][-1]:.3f} |")
    table = "\n".join(lines)
    print()
    print(f"teacher (LeNet, 3 epochs at lr 0.01): test loss {tr['loss'][-1]:.4f}, accuracy {tr['accuracy'][-1]:.3f}")
    print(table)
    print(f"\ntotal time {total:.0f} s")
    ncio.atomic_write(os.path.join(a.out, "results.md"), table + "\n")
    ncio.atomic_write(os.path.join(a.out, "results.json"), json.dumps(
        {"teacher": tr, "students": rows, "seconds": round(total, 1), "epochs": a.epochs, "seed": a.seed},
        indent=2) + "\n")
    plot(rows, os.path.join(a.out, "results.png"))
    return 0


def plot(rows, path: str) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, kind in zip(axes, ("wider", "deeper")):
        for r in rows:
            if not (r["student"].startswith(kind) or r["init"] == "-"):
                continue
            style = "-" if r["init"].startswith("net2") else "--" if r["init"] != "-" else ":"
            ax.plot(range(len(r["loss"])), r["loss"], style, marker="o",
                    label=f"{r['student']} ({r['init']})" if r["init"] != "-" else "teacher, fine-tuned")
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning epoch")
        ax.set_title(f"{kind}: Net2Net (solid) vs random (dashed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test loss (1,000 digits)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    ncio.atomic_write(path, buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
