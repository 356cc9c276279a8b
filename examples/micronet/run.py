#!/usr/bin/env python3
"""The MicroNet Challenge pipeline (recipes-spec 4.1) on the embedded MNIST digits with a small DenseNet-BC:
teacher, KD student, 75 % global pruning, 4-bit weights and activations, BN re-estimation, integer merge, score.

Run from the repository root (the nets read data/mnist5k_*_lmdb, written there if missing, as Caffe resolves
paths; --data names another folder):

    OMP_NUM_THREADS=1 python examples/micronet/run.py [--out runs/micronet] [--epochs-scale 1] [--smoke]

Every step is a `netcompress` command, run in this process through the command table and printed as the shell
line that does the same; the prototxts and solvers it writes to OUT are those a user would write by hand:

1. `make_densenet` the teacher (plain, depth 16, growth 6) and train it with cross-entropy (`train`);
2. the student (plain, depth 10, growth 6) trained with KD from the teacher: the teacher's layers prefixed t_ and
   frozen (`rename_layers --freeze`) next to the student's, a `KnowledgeDistillationLoss` with mode KL_REVERSE
   (MicroNet's `kldiv:1`, T = 1) plus the cross-entropy with the labels (hard_weight 1; the source trained its
   student with cross-entropy alone), the teacher's BatchNorm in train mode (Q16);
3. global magnitude pruning of every convolution to 75 % (`MaskedConvolution` + solver `global_prune { rate: 0.75
   }`: iterations 0, 49, 99, ...), with KD (KL_REVERSE alone, as in every later stage: no hard-label term);
4. 4-bit activations (ActQuant before every convolution but the first, calibrated on the first batch) and 4-bit
   per-channel weights (QuantConvolution) with a 6-bit fc (QuantInnerProduct), the masks fixed, with KD;
5. `bn_reestimate`: TRAIN-phase forwards with the student's own prototxt, best test accuracy kept;
6. `micronet_merge` into the integer deploy net (Scale + IntQuant), whose test accuracy is measured by feeding it
   the test digits; `report --check-bits` on the quantized student and on the deploy net (every weight an integer
   in [-8, 7], [-32, 31] for the fc, times a per-channel scale; the script fails otherwise);
7. `micronet_score` of the deploy net (type 0, faithful count).

The solvers follow MicroNet (4.10): SGD with the learning rate outside the momentum (momentum_form LR_OUTSIDE,
momentum 0.9), weight decay 1e-4, lr_policy "cosine" per stage, batch 64 (63 iterations per epoch of the 4,000
training digits); few epochs instead of 300, so that the whole run takes minutes. The table (results.md,
results.json in OUT) has one row per stage.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's netcompress

from google.protobuf import text_format  # noqa: E402

from netcompress import io as ncio  # noqa: E402
from netcompress.commands import load_command  # noqa: E402
from netcompress.data.mnist5k import ensure_mnist5k  # noqa: E402
from netcompress.proto import caffe_pb2 as pb  # noqa: E402
from netcompress.tools.densenet import DataSpec, DenseNetConfig, densenet_net  # noqa: E402
from netcompress.tools.kd import rename_net  # noqa: E402
from netcompress.tools.net2net import training_log  # noqa: E402

EPOCH = 63          # ceil(4,000 / 64)
TEST_ITERS = 10     # 1,000 test digits in batches of 100
TEACHER = DenseNetConfig(depth=16, growth=6, num_classes=10, input_shape=(1, 28, 28))
STUDENT = DenseNetConfig(depth=10, growth=6, num_classes=10, input_shape=(1, 28, 28))

# stage -> (epochs, base_lr)
SCHEDULE = {"teacher": (6, 0.1), "student": (6, 0.1), "prune": (4, 0.05), "quant": (3, 0.01), "bn": (2, None)}
SMOKE_ITERS = 6     # --smoke: iterations per training stage (a check of the pipeline, not of accuracy)


class Runner:
    def __init__(self, out: str):
        self.out = out
        self.rows: list[dict] = []

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def command(self, name: str, args: list[str], log: str) -> str:
        """Run `netcompress name args` in this process, its log and output to `log`; returns its stdout."""
        print("  $ netcompress " + " ".join([name] + [shlex.quote(a) for a in args]), flush=True)
        buf = io.StringIO()
        with training_log(log), contextlib.redirect_stdout(buf):
            rc = load_command(name)(args)
        with open(log, "a") as f:
            f.write(buf.getvalue())
        if rc != 0:
            raise SystemExit(f"netcompress {name} failed (exit {rc}); see {log}")
        return buf.getvalue()


def data_spec(folder: str) -> DataSpec:
    train, test = ensure_mnist5k(folder)
    return DataSpec(train, test, batch_size=64, test_batch_size=100, scale=0.00390625)


def student_net(data: DataSpec, form: str, conv_type: str | None = None, fc_type: str | None = None,
                act_quant: bool | None = None) -> pb.NetParameter:
    return densenet_net(STUDENT, form, conv_type=conv_type, fc_type=fc_type, act_quant=act_quant, data=data,
                        name="student")


def kd_net(student: pb.NetParameter, teacher_t: pb.NetParameter, hard: bool) -> pb.NetParameter:
    """The student's layers, then the frozen t_ teacher (TRAIN only), and the KD loss in place of the
    student's SoftmaxWithLoss; the TEST net is the student alone with its accuracy. `hard` adds the
    cross-entropy with the labels (hard_weight 1)."""
    net = pb.NetParameter(name=student.name + "-kd")
    for lp in student.layer:
        if lp.name != "loss":
            net.layer.add().CopyFrom(lp)
    for lp in teacher_t.layer:
        if lp.type in ("Data", "SoftmaxWithLoss", "Accuracy"):
            continue
        q = net.layer.add()
        q.CopyFrom(lp)
        q.include.add().phase = pb.TRAIN
    kd = net.layer.add(name="kd", type="KnowledgeDistillationLoss", bottom=["fc", "t_fc"], top=["loss"])
    kd.kd_param.mode = pb.KDParameter.KL_REVERSE
    if hard:
        kd.bottom.append("label")
        kd.kd_param.hard_weight = 1.0
    kd.include.add().phase = pb.TRAIN
    return net


def solver(path: str, net: str, prefix: str, iters: int, base_lr: float, extra: str = "") -> str:
    sp = pb.SolverParameter(net=net, base_lr=base_lr, lr_policy="cosine", momentum=0.9,
                            momentum_form=pb.SolverParameter.LR_OUTSIDE, weight_decay=1e-4,
                            max_iter=iters, display=EPOCH, snapshot_prefix=prefix, random_seed=1,
                            solver_mode=pb.SolverParameter.CPU)
    if extra:
        text_format.Parse(extra, sp)
    ncio.write_text_proto(path, sp)
    return path


def accuracy(prototxt: str, weights: str) -> float:
    from netcompress.net import Net
    from netcompress.solvers.evaluate import test_net

    net = Net(prototxt, phase=pb.TEST, weights=weights, verbose=False)
    s = test_net(net, TEST_ITERS)
    return float(next(v for n, v, _ in s.outputs if n == "accuracy"))


def deploy_accuracy(student_proto: str, student_w: str, deploy_proto: str, deploy_w: str) -> tuple[float, float]:
    """(accuracy of the deploy net on the test digits, max |logit difference| to the student's TEST net)."""
    import torch

    from netcompress.net import Net

    student = Net(student_proto, phase=pb.TEST, weights=student_w, verbose=False)
    deploy = Net(deploy_proto, phase=pb.TEST, weights=deploy_w, verbose=False)
    right, n, diff = 0, 0, 0.0
    with torch.no_grad():
        for _ in range(TEST_ITERS):
            student()
            x, y, s = student.blobs["data"], student.blobs["label"], student.blobs["fc"]
            d = deploy(data=x)["fc"]
            right += int((d.argmax(1) == y.long()).sum())
            n += len(y)
            diff = max(diff, float((d - s).abs().max()))
    return right / n, diff


def nonzeros(prototxt: str, weights: str) -> tuple[int, int]:
    from netcompress.tools.report import model_report

    r = model_report(prototxt, weights)
    by = r["weights_by_type"]
    return sum(c["kept"] for c in by.values()), sum(c["count"] for c in by.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/micronet", help="run folder (default runs/micronet)")
    p.add_argument("--epochs-scale", type=float, default=1.0,
                   help="multiply every stage's epochs (default 1: about 10 minutes on one core)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--data", default="data", help="folder of the digit LMDBs, written if missing (default data)")
    p.add_argument("--smoke", action="store_true",
                   help=f"{SMOKE_ITERS} iterations per training stage and 3 TRAIN forwards of BN re-estimation: "
                        "checks the pipeline (commands, bit budgets, merge), not the accuracy (used by the tests)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    t_all = time.time()
    os.makedirs(a.out, exist_ok=True)
    data = data_spec(a.data)
    r = Runner(a.out)
    ep = {k: max(1, round(e * a.epochs_scale)) for k, (e, _) in SCHEDULE.items()}
    iters = {k: SMOKE_ITERS if a.smoke else e * EPOCH for k, e in ep.items()}

    def row(stage, proto, weights, acc, bits, t0, cmd, score=None):
        nz, total = nonzeros(proto, weights)
        r.rows.append({"stage": stage, "accuracy": acc, "nonzero": nz, "weights": total, "bits": bits,
                       "score": score, "command": cmd, "seconds": round(time.time() - t0, 1)})
        print(f"  -> {stage}: accuracy {acc:.3f}, non-zero weights {nz}/{total}, bits {bits}"
              + (f", MicroNet score {score:.6g}" if score is not None else "")
              + f" ({time.time() - t0:.0f} s)", flush=True)

    # 1. teacher ---------------------------------------------------------------------------------------------
    print("1. teacher", flush=True)
    t0 = time.time()
    teacher = densenet_net(TEACHER, "plain", data=data, name="teacher")
    ncio.write_text_proto(r.path("teacher.prototxt"), teacher)
    s = solver(r.path("teacher_solver.prototxt"), r.path("teacher.prototxt"), r.path("teacher"), iters["teacher"],
               SCHEDULE["teacher"][1])
    args = ["--solver", s]
    r.command("train", args, r.path("teacher.log"))
    teacher_w = r.path(f"teacher_iter_{iters['teacher']}.caffemodel")
    row("teacher (DenseNet-BC 16, growth 6)", r.path("teacher.prototxt"), teacher_w,
        accuracy(r.path("teacher.prototxt"), teacher_w), "32/32", t0, "netcompress train " + " ".join(args))

    # the frozen t_ teacher for the KD nets
    r.command("rename_layers", [r.path("teacher.prototxt"), teacher_w, r.path("teacher_t.prototxt"),
                                r.path("teacher_t.caffemodel"), "--prefix", "t_", "--freeze"],
              r.path("rename.log"))
    teacher_t = ncio.read_net(r.path("teacher_t.prototxt"))

    def kd_stage(name: str, title: str, student: pb.NetParameter, weights: str | None, bits: str,
                 extra: str = "", hard: bool = False) -> str:
        print(title, flush=True)
        t0 = time.time()
        own = r.path(f"{name}.prototxt")                     # the student alone (TEST, report, bn_reestimate)
        ncio.write_text_proto(own, student)
        kd = r.path(f"{name}_kd.prototxt")
        ncio.write_text_proto(kd, kd_net(student, teacher_t, hard))
        s = solver(r.path(f"{name}_solver.prototxt"), kd, r.path(name), iters[name], SCHEDULE[name][1], extra)
        args = ["--solver", s, "--weights", ",".join(([weights] if weights else []) + [r.path("teacher_t.caffemodel")])]
        r.command("train", args, r.path(f"{name}.log"))
        w = r.path(f"{name}_iter_{iters[name]}.caffemodel")
        row(title.split(". ", 1)[1], own, w, accuracy(own, w), bits, t0, "netcompress train " + " ".join(args))
        return w

    # 2.-4. student with KD, pruned, quantized ------------------------------------------------------------------
    student_w = kd_stage("student", "2. KD student (DenseNet-BC 10, growth 6)", student_net(data, "plain"), None,
                         "32/32", hard=True)
    prune_w = kd_stage("prune", "3. 75 % global pruning + KD",
                       student_net(data, "plain", conv_type="MaskedConvolution"), student_w, "32/32",
                       "global_prune { rate: 0.75 interval: 50 stop_iter: 5000 }")
    quant = student_net(data, "student", conv_type="QuantConvolution", fc_type="QuantInnerProduct", act_quant=True)
    quant_w = kd_stage("quant", "4. 4-bit weights (fc 6) and activations + KD", quant, prune_w, "w4 (fc 6)/a4")

    # 5. BN re-estimation -------------------------------------------------------------------------------------
    print("5. BN re-estimation", flush=True)
    t0 = time.time()
    bn_w = r.path("bn.caffemodel")
    args = [r.path("quant.prototxt"), quant_w, bn_w, "--epochs", str(ep["bn"]), "--select", "best-test",
            "--seed", "1"] + (["--iters", "3"] if a.smoke else [])
    out = r.command("bn_reestimate", args, r.path("bn.log"))
    print("    " + "\n    ".join(out.strip().splitlines()[1:-1]), flush=True)
    row("BN re-estimation", r.path("quant.prototxt"), bn_w, accuracy(r.path("quant.prototxt"), bn_w),
        "w4 (fc 6)/a4", t0, "netcompress bn_reestimate " + " ".join(args))
    r.command("report", [r.path("quant.prototxt"), bn_w, "--check-bits"], r.path("report_student.log"))

    # 6. merge ------------------------------------------------------------------------------------------------
    print("6. integer merge", flush=True)
    t0 = time.time()
    dp, dw = r.path("deploy.prototxt"), r.path("deploy.caffemodel")
    args = [r.path("quant.prototxt"), bn_w, dp, dw, "--weight-bits", "4", "--fc-bits", "6"]
    r.command("micronet_merge", args, r.path("merge.log"))
    r.command("report", [dp, dw, "--check-bits"], r.path("report_deploy.log"))
    acc, diff = deploy_accuracy(r.path("quant.prototxt"), bn_w, dp, dw)
    print(f"    deploy logits vs the student's: max |difference| {diff:.3g}", flush=True)

    # 7. score ------------------------------------------------------------------------------------------------
    from netcompress.tools.micronet import micronet_score

    r.command("micronet_score", [dp, dw], r.path("score.log"))
    sc = micronet_score(dp, dw)
    row("integer deploy net (merge + score)", dp, dw, acc, "w4 (fc 6)/a4", t0,
        "netcompress micronet_merge " + " ".join(args) + f"; netcompress micronet_score {dp} {dw}", sc.score)

    # results ---------------------------------------------------------------------------------------------------
    total = time.time() - t_all
    lines = ["| stage | test accuracy | non-zero weights | bits (w/a) | MicroNet score | time |",
             "|---|---:|---:|---|---:|---:|"]
    for x in r.rows:
        score = "–" if x["score"] is None else f"{x['score']:.4g}"
        lines.append(f"| {x['stage']} | {x['accuracy']:.3f} | {x['nonzero']:,} / {x['weights']:,} | {x['bits']} | "
                     f"{score} | {x['seconds']:.0f} s |")
    lines.append("")
    lines.append(f"Score of the deploy net: {sc.ops:.1f} ops, {sc.params:.2f} params "
                 f"(op score {sc.op_score:.6g}, param score {sc.param_score:.6g}); deploy logits within "
                 f"{diff:.2g} of the quantized student's. Total wall time {total:.0f} s.")
    text = "\n".join(lines) + "\n"
    ncio.atomic_write(r.path("results.md"), text)
    ncio.atomic_write(r.path("results.json"), json.dumps({"rows": r.rows, "deploy_logit_diff": diff,
                                                          "seconds": round(total, 1)}, indent=2) + "\n")
    print()
    print(text)
    for x in r.rows:
        print(f"{x['stage']}: {x['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
