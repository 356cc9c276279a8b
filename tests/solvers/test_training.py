"""The training loop's guarantees: bit-identical resume, signals, NaN stop, Caffe's log lines."""
from __future__ import annotations

import csv
import math
import logging
import os
import io
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import torch
import pytest

from netcompress.solvers.callbacks import AfterIteration
from netcompress import io as ncio
from netcompress import log
from netcompress.log import setup_logging
from netcompress.cli import main as cli_main
from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver
from netcompress.solvers.logparse import parse_log

from small_net import solver_param, workdir  # noqa: F401 (workdir: a fixture)


@pytest.mark.parametrize("variant", ["plain", "dns", "inq"])
@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_resume_is_bit_identical(workdir, variant, solver_type):
    full = Solver(solver_param(workdir, variant, type=solver_type), verbose=False)
    full.solve()
    a_model = (workdir / f"run_{variant}_iter_12.caffemodel").read_bytes()
    a_state = (workdir / f"run_{variant}_iter_12.solverstate").read_bytes()
    if variant == "dns":
        assert full.net.layer("ip1").surgeries > 1
        assert int(full.net.layer("ip1").weight_mask.sum()) < full.net.layer("ip1").weight.numel()
    if variant == "inq":
        assert int(full.net.layer("conv1").weight_mask.sum()) < full.net.layer("conv1").weight.numel()
    sp = solver_param(workdir, variant, type=solver_type, snapshot_prefix=str(workdir / f"resumed_{variant}"))
    resumed = Solver(sp, verbose=False)
    resumed.solve(resume_file=str(workdir / f"run_{variant}_iter_5.solverstate"))
    assert resumed.iter == 12
    b_model = (workdir / f"resumed_{variant}_iter_12.caffemodel").read_bytes()
    b_state = (workdir / f"resumed_{variant}_iter_12.solverstate").read_bytes()
    assert a_model == b_model, "resumed weights/masks differ from the uninterrupted run"
    # the solverstates differ only in learned_net (the path); compare the history
    sa = pb.SolverState.FromString(a_state)
    sb = pb.SolverState.FromString(b_state)
    assert sa.iter == sb.iter == 12 and sa.current_step == sb.current_step
    assert [h.SerializeToString() for h in sa.history] == [h.SerializeToString() for h in sb.history]


@pytest.mark.parametrize("policy", [dict(lr_policy="cosine", rampup_interval=3, rampup_lr=0.001),
                                    dict(lr_policy="multistep", stepvalue=[4, 8], stepgamma=[0.1, 0.5])])
def test_resume_is_bit_identical_with_the_recipe_solver_fields(workdir, policy):
    # momentum_form LR_OUTSIDE, the float64 recipe lr policies and the epoch length: same bytes after a resume.
    kw = dict(momentum_form=pb.SolverParameter.LR_OUTSIDE, epoch_iters=3, **policy)
    full = Solver(solver_param(workdir, "dns", **kw), verbose=False)
    epochs = []
    full.add_callback(AfterIteration(lambda s: epochs.append(s.epoch)))
    full.solve()
    assert epochs == [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5]  # after iterations 1..12, 3 iterations an epoch
    sp = solver_param(workdir, "dns", snapshot_prefix=str(workdir / "resumed"), **kw)
    resumed = Solver(sp, verbose=False)
    resumed.solve(resume_file=str(workdir / "run_dns_iter_5.solverstate"))
    assert (workdir / "resumed_iter_12.caffemodel").read_bytes() == (workdir / "run_dns_iter_12.caffemodel").read_bytes()


def test_resume_from_a_caffe_style_solverstate_warns(workdir, caplog):
    Solver(solver_param(workdir, "dns"), verbose=False).solve()
    os.remove(workdir / "run_dns_iter_5.solverstate.nc.npz")  # as if Caffe had written it
    sp = solver_param(workdir, "dns", snapshot_prefix=str(workdir / "again"))
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        s = Solver(sp, verbose=False)
        s.solve(resume_file=str(workdir / "run_dns_iter_5.solverstate"))
    assert "has no netcompress state" in caplog.text
    assert "no DNS statistics at iteration 5" in caplog.text
    assert s.iter == 12


def test_a_negative_iteration_in_a_solverstate_is_refused(workdir):
    # (it trained on from iteration -1, the warm-up's rate then 0 / 0)
    Solver(solver_param(workdir), verbose=False).solve()
    path = workdir / "run_plain_iter_5.solverstate"
    state = pb.SolverState.FromString(path.read_bytes())
    state.iter = -1
    path.write_bytes(state.SerializeToString())
    s = Solver(solver_param(workdir, snapshot_prefix=str(workdir / "x")), verbose=False)
    with pytest.raises(NetcompressError, match=r"run_plain_iter_5.solverstate: the solver state's iteration is -1; "
                                               r"expected 0 or more"):
        s.solve(resume_file=str(path))


def test_history_length_mismatch_is_clear(workdir):
    Solver(solver_param(workdir, type="Adam"), verbose=False).solve()
    s = Solver(solver_param(workdir, type="SGD", snapshot_prefix=str(workdir / "x")), verbose=False)
    with pytest.raises(Exception, match="Incorrect length of history blobs: the file has 8, this SGD solver"):
        s.restore(str(workdir / "run_plain_iter_5.solverstate"))


def test_a_caffemodel_a_solver_state_and_the_sidecar_given_in_each_others_place_are_named(workdir, capsys):
    """Binary protos carry no type: a caffemodel given to --snapshot parsed as an empty SolverState (protobuf keeps
    fields of unexpected wire types as unknown) and failed as "Incorrect length of history blobs: the file has 0";
    a solver state or the .nc.npz sidecar given as weights was only "Wire format was corrupt". Each now says what
    the file is and which flag takes it."""
    def cli_error(argv):
        capsys.readouterr()
        assert cli_main(argv) == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    Solver(solver_param(workdir), verbose=False).solve()
    model, state = workdir / "run_plain_iter_5.caffemodel", workdir / "run_plain_iter_5.solverstate"
    s = Solver(solver_param(workdir, snapshot_prefix=str(workdir / "x")), verbose=False)
    with pytest.raises(NetcompressError) as e:
        s.restore(str(model))
    layers = len(pb.NetParameter.FromString(model.read_bytes()).layer)
    assert str(e.value) == (f"{model}: not a solver state; it is a caffemodel (a net of {layers} layers): give weights "
                            "with Net(..., weights=...) or copy_from, and resume from a .solverstate with Solver.restore")
    # (the command line names its flags instead)
    path = workdir / "solver.prototxt"
    ncio.write_text_proto(str(path), solver_param(workdir, snapshot_prefix=str(workdir / "y")))
    assert cli_error(["train", "--solver", str(path), "--snapshot", str(model)]) == (
        f"netcompress train: error: {model}: not a solver state; it is a caffemodel (a net of {layers} layers): give "
        "weights with --weights, and resume from a .solverstate with --snapshot")
    assert cli_error(["train", "--solver", str(path), "--snapshot", str(model), "--cpu-procs", "2"]).endswith(
        "give weights with --weights, and resume from a .solverstate with --snapshot")  # (in its spawned processes)
    assert cli_error(["test", "--model", str(workdir / "net_plain.prototxt"), "--weights", str(state)]).endswith(
        f"; it is a solver state (iteration 5, model \"{model}\"): resume from it with --snapshot, or give its model "
        "with --weights")
    with pytest.raises(NetcompressError, match=r"run_plain_iter_5.solverstate.nc.npz: not a binary caffe.SolverState "
                                               r"\(.*\); it is a zip file \(a numpy .npz, such as netcompress's "
                                               r".solverstate.nc.npz sidecar\): give the .caffemodel or the "
                                               r".solverstate itself"):
        s.restore(str(state) + ".nc.npz")
    with pytest.raises(NetcompressError) as e:
        s.net.copy_from(str(state))
    assert str(e.value).endswith(f"; it is a solver state (iteration 5, model \"{model}\"): resume from it with "
                                 "Solver.restore, or give its model to copy_from"), str(e.value)
    with pytest.raises(NetcompressError, match=r"; it is a zip file"):
        s.net.copy_from(str(state) + ".nc.npz")
    s.net.copy_from(str(model))  # (the right files still load)
    s.restore(str(state))
    assert s.iter == 5


def test_sigint_snapshots_then_stops(workdir, caplog):
    sp = solver_param(workdir, snapshot=0, max_iter=50)
    s = Solver(sp, verbose=False)
    s.add_callback(AfterIteration(lambda solver: os.kill(os.getpid(), signal.SIGINT) if solver.iter == 3 else None))
    old = signal.getsignal(signal.SIGINT)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s.solve()
    assert signal.getsignal(signal.SIGINT) is old  # handlers restored
    assert s.iter == 3
    assert (workdir / "run_plain_iter_3.caffemodel").is_file()
    assert (workdir / "run_plain_iter_3.solverstate").is_file()
    assert "Optimization stopped early." in caplog.text
    assert "Optimization Done." not in caplog.text


def test_a_second_ctrl_c_aborts_at_once_and_the_handlers_are_restored(workdir):
    def twice(solver):
        if solver.iter == 3:
            os.kill(os.getpid(), signal.SIGINT)  # (asks for the stop)
            os.kill(os.getpid(), signal.SIGINT)  # (the second one aborts inside the same iteration)

    s = Solver(solver_param(workdir, snapshot=0, max_iter=50), verbose=False)
    s.add_callback(AfterIteration(twice))
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGHUP)
    with pytest.raises(KeyboardInterrupt):
        s.solve()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGHUP)) == old
    assert not list(workdir.glob("run_plain_iter_*"))  # (aborted, no snapshot: Caffe's second Ctrl-C kills it)


def _status_after_reading_to(mark: bytes, argv, cwd) -> int:
    """Run `netcompress argv`, read its log until a line holding `mark`, close the pipe (`... 2>&1 | head`): the
    command's exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "netcompress", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(cwd))
    watchdog = threading.Timer(300, proc.kill)  # (no such line would leave the loop below reading for hours)
    watchdog.start()
    try:
        for line in proc.stderr:
            if mark in line:
                break
        proc.stderr.close()
        return proc.wait(timeout=120)
    finally:
        watchdog.cancel()
        proc.kill()


@pytest.mark.parametrize("how", ["one_process", "two_processes", "pycaffe_script"])
def test_a_log_reader_gone_snapshots_then_stops_quietly(workdir, how):
    """`netcompress train ... 2>&1 | head`: once the log's reader has gone, training stops after the iteration and
    snapshots, as Ctrl-C does, and the command ends quietly with SIGPIPE's status (it trained on unseen to its end,
    holding the shell, or died at its first progress line with "error: broken pipe" and no snapshot)."""
    sp = solver_param(workdir, snapshot=0, display=1, test_interval=0, max_iter=10 ** 6)
    del sp.test_iter[:]
    path = workdir / "solver.prototxt"
    ncio.write_text_proto(str(path), sp)
    (workdir / "script.py").write_text("import sys\nimport caffe\ncaffe.get_solver(sys.argv[1]).solve()\n")
    argv = {"one_process": ["train", "--solver", str(path)],
            "two_processes": ["train", "--solver", str(path), "--cpu-procs", "2"],
            "pycaffe_script": ["pycaffe", str(workdir / "script.py"), str(path)]}[how]
    assert _status_after_reading_to(b"Iteration 2, ", argv, workdir) == 141
    models = sorted(workdir.glob("run_plain_iter_*.caffemodel"))
    assert len(models) == 1, models
    stopped = int(re.search(r"_iter_(\d+)\.", models[0].name).group(1))
    assert 2 <= stopped < 1000
    assert (workdir / f"run_plain_iter_{stopped}.solverstate").is_file()
    resumed = Solver(solver_param(workdir, max_iter=stopped + 1, snapshot=0), verbose=False)
    resumed.solve(resume_file=str(workdir / f"run_plain_iter_{stopped}.solverstate"))
    assert resumed.iter == stopped + 1
    assert not list(workdir.glob(".*.tmp"))


@pytest.mark.parametrize("verb", ["test", "time"])
def test_test_and_time_stop_when_their_log_reader_has_gone(workdir, verb):
    # (`netcompress test ... 2>&1 | head`: they scored or timed on unseen to the last of --iterations, holding the
    # shell; Caffe dies of SIGPIPE at the next line)
    sp = solver_param(workdir, snapshot=0, max_iter=1, test_interval=0)
    Solver(sp, verbose=False).solve()
    argv = [verb, "--model", sp.net, "--weights", str(workdir / "run_plain_iter_1.caffemodel"),
            "--iterations", str(10 ** 8)]
    mark = {"test": b"Batch 2, acc = ", "time": b"Iteration: 3 forward-backward time"}[verb]
    assert _status_after_reading_to(mark, argv, workdir) == 141


def test_a_log_reader_gone_in_process_raises_after_the_snapshot(workdir):
    # (pycaffe's solve() in a script whose log stream closed: the same stop, then the pipe's error to the script)
    class Closing(io.StringIO):  # its reader goes after iteration 3
        gone = False

        def write(self, text):
            if self.gone:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    stream = Closing()
    setup_logging(stream=stream)
    try:
        s = Solver(solver_param(workdir, snapshot=0, max_iter=50), verbose=False)
        s.add_callback(AfterIteration(lambda solver: setattr(stream, "gone", solver.iter == 3) or
                                      log.get_logger("t").info("x")))
        with pytest.raises(BrokenPipeError, match="the log's reader has gone: training stopped at iteration 3"):
            s.solve()
    finally:
        setup_logging()
    assert (workdir / "run_plain_iter_3.caffemodel").is_file()
    assert (workdir / "run_plain_iter_3.solverstate").is_file()
    again = Solver(solver_param(workdir, snapshot=0, max_iter=5, snapshot_prefix=str(workdir / "again")), verbose=False)
    again.solve()  # (the stop was that solve's: a later one runs to its end)
    assert again.iter == 5


def test_sighup_snapshots_and_continues(workdir):
    sp = solver_param(workdir, snapshot=0, max_iter=6)
    s = Solver(sp, verbose=False)
    s.add_callback(AfterIteration(lambda solver: os.kill(os.getpid(), signal.SIGHUP) if solver.iter == 2 else None))
    s.solve()
    assert s.iter == 6
    assert (workdir / "run_plain_iter_2.caffemodel").is_file()
    assert (workdir / "run_plain_iter_6.caffemodel").is_file()  # snapshot_after_train


def test_sigint_effect_none_is_ignored(workdir):
    sp = solver_param(workdir, snapshot=0, max_iter=5)
    s = Solver(sp, verbose=False, sigint_effect="none")
    s.add_callback(AfterIteration(lambda solver: os.kill(os.getpid(), signal.SIGINT) if solver.iter == 2 else None))
    s.solve()
    assert s.iter == 5


def test_nan_loss_stops_and_keeps_last_good_snapshot(workdir, capsys):
    sp = solver_param(workdir, base_lr=1e6, lr_policy="fixed", momentum=0.0, snapshot=1, max_iter=40,
                      test_interval=0)
    del sp.test_iter[:]
    path = workdir / "nan_solver.prototxt"
    ncio.write_text_proto(str(path), sp)
    rc = cli_main(["train", "--solver", str(path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "the loss is not finite, training stopped" in err
    m = re.search(r"Iteration (\d+), loss = (nan|inf)", err)
    bad = int(m.group(1))
    assert bad >= 1
    last = workdir / f"run_plain_iter_{bad}.caffemodel"
    assert last.is_file() and f"Last good snapshot: {last}" in err
    assert not (workdir / f"run_plain_iter_{bad + 1}.caffemodel").exists()
    # the last snapshot holds finite weights
    model = ncio.read_caffemodel(str(last))
    assert all(np.isfinite(ncio.blob_to_array(b)).all() for l in model.layer for b in l.blobs)


def test_caffe_log_lines_and_parser(workdir, tmp_path, capsys):
    sp = solver_param(workdir, max_iter=8, snapshot=0, display=2, test_interval=4)
    path = tmp_path / "solver.prototxt"
    ncio.write_text_proto(str(path), sp)
    assert cli_main(["train", "--solver", str(path)]) == 0
    err = capsys.readouterr().err
    log_file = tmp_path / "train.log"
    log_file.write_text(err)
    assert re.search(r"\] Iteration 2 \([\d.e+-]+ iter/s, [\d.]+s/2 iters\), loss = [\d.e+-]+\n", err)
    assert re.search(r"\]     Train net output #0: loss = ([\d.e+-]+) \(\* 1 = \1 loss\)\n", err)
    assert re.search(r"\] Iteration 2, lr = 0\.0499", err)
    assert "] Iteration 0, Testing net (#0)\n" in err and "] Iteration 8, Testing net (#0)\n" in err
    assert re.search(r"\]     Test net output #0: acc = [\d.]+\n", err)
    assert re.search(r"\]     Test net output #1: loss = ([\d.e+-]+) \(\* 1 = \1 loss\)\n", err)
    assert f"Snapshotting to binary proto file {workdir}/run_plain_iter_8.caffemodel" in err
    assert f"Snapshotting solver state to binary proto file {workdir}/run_plain_iter_8.solverstate" in err
    assert err.rstrip().endswith("Optimization Done.")
    # caffe.cpp's own lines around Solver::Solve's: "Starting Optimization" before "Solving", and its
    # "Optimization Done." after the solver's
    assert err.index("] Starting Optimization\n") < err.index("] Solving small\n")
    assert err.count("] Optimization Done.\n") == 2
    # resuming: caffe.cpp's "Resuming from" and the restore come before "Starting Optimization"
    capsys.readouterr()
    assert cli_main(["train", "--solver", str(path), "--snapshot", str(workdir / "run_plain_iter_8.solverstate")]) == 0
    err2 = capsys.readouterr().err
    assert err2.index("] Resuming from ") < err2.index("] SGDSolver: restoring history") < \
        err2.index("] Starting Optimization\n") < err2.index("] Solving small\n")
    # order: the test at iteration 4 comes before iteration 4's display line
    assert err.index("Iteration 4, Testing net") < err.index("Iteration 4 (")
    lg = parse_log(str(log_file))
    assert [it for it, _ in lg.train_loss] == [0, 2, 4, 6, 8]
    assert [it for it, _ in lg.test[0]["acc"]] == [0, 4, 8]
    assert [it for it, _ in lg.lr] == [0, 2, 4, 6]
    # Caffe's parse_log.py tables (netcompress parse_log) of the same log: one row per display and per test
    assert cli_main(["parse_log", str(log_file), str(tmp_path)]) == 0
    with open(tmp_path / "train.log.train", newline="") as f:
        train_rows = list(csv.DictReader(f))
    with open(tmp_path / "train.log.test", newline="") as f:
        test_rows = list(csv.DictReader(f))
    # (the final "Iteration 8, loss = X" line has no "Train net output" line, so no row, as in Caffe's script)
    assert [r["NumIters"] for r in train_rows] == ["0.0", "2.0", "4.0", "6.0"]
    assert [float(r["loss"]) for r in train_rows] == [v for _, v in lg.train_loss[:4]]
    assert [r["NumIters"] for r in test_rows] == ["0.0", "4.0", "8.0"]
    assert [float(r["acc"]) for r in test_rows] == [v for _, v in lg.test[0]["acc"]]
    assert float(train_rows[2]["LearningRate"]) == lg.lr[1][1]  # the rate logged before iteration 4's outputs
    out_png = tmp_path / "curves.png"
    assert cli_main(["plot", str(log_file), "--out", str(out_png)]) == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_test_nets_and_no_initial_test(workdir, caplog):
    sp = solver_param(workdir, max_iter=4, snapshot=0, test_interval=2, test_initialization=False)
    netp = ncio.read_net(sp.net)
    sp.ClearField("net")
    sp.net_param.CopyFrom(netp)
    sp.test_iter[:] = [1, 2]
    sp.test_state.add(stage=["a"])
    sp.test_state.add(stage=["b"])
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s = Solver(sp, verbose=False)
        s.solve()
    assert len(s.test_nets) == 2
    text = caplog.text
    assert "Iteration 0, Testing net" not in text
    assert "Iteration 2, Testing net (#0)" in text and "Iteration 2, Testing net (#1)" in text
    assert "Iteration 4, Testing net (#1)" in text


def test_average_loss_smoothing():
    s = Solver.__new__(Solver)
    s.param = pb.SolverParameter(average_loss=3)
    from collections import deque
    s._losses, s.smoothed_loss = deque(), 0.0
    seen = []
    for it, loss in enumerate([3.0, 6.0, 9.0, 12.0, 0.0]):
        s.iter = it
        s._update_smoothed_loss(loss, 0)
        seen.append(s.smoothed_loss)
    assert seen == pytest.approx([3.0, 4.5, 6.0, 9.0, 7.0])


def test_weights_and_snapshot_are_exclusive(workdir, tmp_path, capsys):
    path = tmp_path / "s.prototxt"
    ncio.write_text_proto(str(path), solver_param(workdir))
    with pytest.raises(SystemExit):
        cli_main(["train", "--solver", str(path), "--weights", "a", "--snapshot", "b"])


def test_train_takes_caffes_level_and_stage_flags_for_the_training_net(workdir, caplog):
    # (`caffe train -stage noisy -level 2` set the solver's train_state; here the flags were refused)
    sp = solver_param(workdir, max_iter=1, test_interval=0, snapshot=0, snapshot_after_train=False)
    del sp.test_iter[:]
    net = pb.NetParameter()
    with open(sp.net) as f:
        from google.protobuf import text_format
        text_format.Parse(f.read(), net)
    drop = [lp for lp in net.layer if lp.type == "Dropout"][0]
    drop.include.add(stage=["noisy"], min_level=2)
    ncio.write_text_proto(sp.net, net)
    path = workdir / "solver.prototxt"
    ncio.write_text_proto(str(path), sp)

    def created(*flags):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="netcompress"):
            assert cli_main(["train", "--solver", str(path), *flags]) == 0
        return "Creating Layer drop" in caplog.text

    assert not created()
    assert "train_state {" not in caplog.text  # (no flags: the solver's parameters as written)
    assert not created("--stage", "noisy")
    assert created("-stage", "other,noisy", "-level", "2")
    assert created("--stage=noisy", "--level=3")
    sp.train_state.level = 2
    ncio.write_text_proto(str(path), sp)
    assert created("--stage", "noisy")  # (the solver's train_state.level stands without --level)
    assert not created("--stage", "noisy", "--level", "1")


def test_missing_solver_file_is_clear(tmp_path, capsys):
    assert cli_main(["train", "--solver", str(tmp_path / "nope.prototxt")]) == 1
    assert "nope.prototxt: no such file" in capsys.readouterr().err


def test_train_command_names_the_solver_file_and_defaults_the_prefix(workdir, tmp_path, capsys):
    """`netcompress train` without snapshot_prefix snapshots beside the solver file, as later BVLC
    Caffe does, and solver errors name the file."""
    sp = solver_param(workdir, max_iter=2, snapshot=2, test_interval=0)
    sp.ClearField("snapshot_prefix")
    del sp.test_iter[:]
    path = tmp_path / "my_solver.prototxt"
    ncio.write_text_proto(str(path), sp)
    assert cli_main(["train", "--solver", str(path)]) == 0
    assert (tmp_path / "my_solver_iter_2.caffemodel").is_file()
    assert (tmp_path / "my_solver_iter_2.solverstate").is_file()
    sp.ClearField("lr_policy")
    bad = tmp_path / "no_policy.prototxt"
    ncio.write_text_proto(str(bad), sp)
    assert cli_main(["train", "--solver", str(bad)]) == 1
    assert f"{bad}: lr_policy is not set" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [True, False])
def test_a_net_whose_loss_reaches_no_learnable_parameter_trains(tmp_path, frozen):
    """Every lr_mult 0 (a frozen net), or no parameters at all: Caffe runs no layer's backward and the update
    changes nothing; it was torch's 'element 0 of tensors does not require grad' (found by a Python-layer fuzz)."""
    ip = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" param { lr_mult: 0 } '
          'param { lr_mult: 0 } inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n'
          if frozen else "")
    (tmp_path / "net.prototxt").write_text(
        'name: "still"\nlayer { name: "data" type: "DummyData" top: "data" top: "t" dummy_data_param { '
        'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } data_filler { type: "gaussian" std: 1 } } }\n' + ip +
        f'layer {{ name: "loss" type: "EuclideanLoss" bottom: "{"ip" if frozen else "data"}" bottom: "t" '
        'top: "loss" }\n')
    sp = pb.SolverParameter(net=str(tmp_path / "net.prototxt"), base_lr=0.1, lr_policy="fixed", max_iter=3,
                            display=1, momentum=0.9, weight_decay=0.01, snapshot_prefix=str(tmp_path / "s"))
    solver = Solver(sp)
    before = {k: v.clone() for k, v in solver.net.state_dict().items()}
    solver.solve()
    assert solver.iter == 3 and math.isfinite(solver.smoothed_loss)
    after = solver.net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "s_iter_3.caffemodel").exists()


def test_an_output_of_many_values_logs_its_first_thousand_then_one_line(tmp_path, caplog):
    """A blob no layer takes is a net output; Caffe logs each of its values at every display and test (2M lines
    for a 2x2^20 blob took a minute here). The first 1,000 are logged, then one line; the indices after it go on
    as Caffe's, and the test scores keep every value."""
    (tmp_path / "net.prototxt").write_text(
        'name: "wide"\nlayer { name: "data" type: "DummyData" top: "data" top: "t" top: "wide" dummy_data_param { '
        'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } shape { dim: 3 dim: 1000 } '
        'data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } '
        'data_filler { type: "constant" value: 0.5 } } }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "data" bottom: "t" top: "loss" }\n')
    sp = pb.SolverParameter(net=str(tmp_path / "net.prototxt"), base_lr=0.1, lr_policy="fixed", max_iter=1,
                            display=1, test_iter=[2], test_interval=1, test_initialization=False, snapshot=0,
                            snapshot_prefix=str(tmp_path / "s"))
    solver = Solver(sp)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        solver.solve()
    lines = [r.getMessage() for r in caplog.records]
    for net in ("Train", "Test"):
        outs = [l for l in lines if f"{net} net output #" in l]
        assert len(outs) == 1001, net  # (loss, then wide's first 1,000: Caffe's outputs in name order)
        assert outs[0].startswith(f"    {net} net output #0: loss = 1.5")
        assert outs[1].endswith("#1: wide = 0.5") and outs[1000].endswith("#1000: wide = 0.5")
        assert f"    {net} net outputs #1001 to #3000: wide: 2000 more values not logged (an output of 3000 " \
               "values; Caffe logs each" in "\n".join(lines)
    assert len(solver.last_test_scores) == 3001 and solver.last_test_scores[3000] == ("wide", 0.5)
