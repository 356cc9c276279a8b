"""The README's main job, `netcompress pipeline`, with short stages (the default run is in README)."""
from __future__ import annotations

import json

import pytest

from netcompress.cli import main as cli_main


def test_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["pipeline", "--out", str(out), "--data", str(tmp_path / "data"),
                   "--ref-iters", "300", "--dns-iters", "300", "--inq-iters", "60"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    stages = [r["stage"] for r in summary["stages"]]
    assert stages == ["reference", "DNS", "INQ 30%", "INQ 60%", "INQ 80%", "INQ 90%", "INQ 100%", "decoded"]
    rows = {r["stage"]: r for r in summary["stages"]}
    # a real net trained on real digits
    assert rows["reference"]["accuracy"] > 0.9
    # DNS pruned most weights; INQ keeps the pruning; the decoded model is the INQ-100% model
    assert rows["DNS"]["kept_pct"] < 10
    assert rows["decoded"]["accuracy"] == rows["INQ 100%"]["accuracy"]
    assert rows["decoded"]["loss"] == rows["INQ 100%"]["loss"]
    assert summary["decoded_matches_inq100"] is True
    assert summary["compact_ratio_vs_caffemodel"] >= 40
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    for stage in ("lenet", "lenet_DNS", "lenet_inq_30", "lenet_inq_100"):
        assert "Optimization Done." in (out / "logs" / f"{stage}.log").read_text()
    assert "compact file:" in printed and "matches the INQ-100% accuracy" in printed
    assert f"compact {summary['compact_bytes']:,} B" in printed


SHORT = dict(ref_iters=30, dns_iters=30, inq_iters=6)


def _table(printed: str) -> str:
    """The final table and the compact line (not the time)."""
    return printed[printed.index("stage       iters"):printed.index("total time")]


def _rows(summary: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in summary["stages"]]


@pytest.mark.slow  # two short pipeline runs and a resumed one: about a minute on 2 shared cores
def test_interrupted_pipeline_resumes_to_the_same_table(tmp_path, capsys, monkeypatch):
    """Issue 21, points 2, 3 and 7: Ctrl-C (SIGINT from a training callback) in the DNS stage stops
    with its stage and iteration; the same command again keeps the finished stages, resumes DNS from
    its snapshot and ends with the uninterrupted run's table and byte-identical models, although the
    two runs lie in different folders. Without a terminal every training stage prints progress lines
    (fake clock: 31 s pass at each look)."""
    import os
    import signal

    from netcompress import log as nclog
    from netcompress.pipeline import PipelineInterrupted, run_pipeline
    from netcompress.solvers.callbacks import TrainingCallback

    ticks = iter(range(10**9))
    monkeypatch.setattr(nclog, "progress_clock", lambda: 31.0 * next(ticks))
    whole = run_pipeline(str(tmp_path / "a"), **SHORT)
    printed = capsys.readouterr()
    table = _table(printed.out)
    progress = [l.split("] ")[1] for l in printed.err.splitlines() if "] progress " in l]
    for label, iters in (("lenet", 30), ("lenet_DNS", 30), ("lenet_inq_30", 6), ("lenet_inq_90", 6),
                         ("lenet_inq_100", 1)):
        assert f"progress {label}: iteration {iters}/{iters} (100%)" in "\n".join(progress), label
    assert all(", loss " in l and " it/s, ETA " in l for l in progress)

    class CtrlC(TrainingCallback):
        def after_iteration(self, solver):
            if solver.iter == 13:
                os.kill(os.getpid(), signal.SIGINT)

    def on_solver(stage, solver):
        if stage == "DNS":
            solver.add_callback(CtrlC())

    with pytest.raises(PipelineInterrupted, match=r"interrupted at stage DNS, iteration 13 of 30 \(snapshot "
                                                  r".*models/lenet_DNS_iter_13\.solverstate\)") as e:
        run_pipeline(str(tmp_path / "b"), **SHORT, on_solver=on_solver)
    assert e.value.exit_code == 130
    assert "[reference]" in capsys.readouterr().out
    again = run_pipeline(str(tmp_path / "b"), **SHORT)
    out = capsys.readouterr().out
    assert "finished by an earlier run)" in out.splitlines()[1]  # [reference]
    assert "[      DNS] resuming from models/lenet_DNS_iter_13.solverstate" in out
    assert _table(out) == table
    assert _rows(again) == _rows(whole)
    for row in whole["stages"]:  # relative paths: the same bytes in either folder
        assert (tmp_path / "a" / row["model"]).read_bytes() == (tmp_path / "b" / row["model"]).read_bytes()
    # the folder's nets and solvers hold no absolute path; the data went inside it
    for f in (tmp_path / "b" / "nets").iterdir():
        assert str(tmp_path) not in f.read_text() and '"/' not in f.read_text(), f.name
    assert (tmp_path / "b" / "data" / "mnist5k_train_lmdb").is_dir()
    # a run with other settings in the same folder is refused, --restart starts over
    from netcompress.errors import NetcompressError
    with pytest.raises(NetcompressError, match="holds a pipeline run with other settings"):
        run_pipeline(str(tmp_path / "b"), ref_iters=31, dns_iters=30, inq_iters=6)


def test_a_moved_run_folder_still_runs(tmp_path, capsys):
    """The nets of a run folder are relative to it: move the folder, run `test` from inside it."""
    import os
    import shutil

    from netcompress.cli import main as cli_main
    from netcompress.pipeline import run_pipeline

    s = run_pipeline(str(tmp_path / "a"), ref_iters=5, dns_iters=2, inq_iters=1)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "moved"))
    capsys.readouterr()
    old = os.getcwd()
    os.chdir(tmp_path / "moved")
    try:
        assert cli_main(["test", "--model", "nets/lenet.prototxt", "--weights", "models/lenet_iter_5.caffemodel",
                         "--iterations", "10"]) == 0
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert f"accuracy = {s['stages'][0]['accuracy']:g}\n" in err


def test_summary_plot_shows_the_full_accuracy_scale_and_every_bar():
    """Issue 21, point 8: accuracy on 0-100 % (not a 0.3-point zoom), and a size axis that starts
    below the compact file, whose bar is drawn and labelled."""
    import matplotlib.pyplot as plt

    from netcompress.pipeline import _figure

    rows = [{"stage": s, "accuracy": a, "model_bytes": b, "kept_pct": k}
            for s, a, b, k in (("reference", 0.968, 1_724_998, 100.0), ("DNS", 0.967, 3_449_662, 1.05),
                               ("INQ 100%", 0.965, 3_449_629, 1.05))]
    rows.append({"stage": "decoded", "accuracy": 0.965, "model_bytes": 1_724_998, "compact_bytes": 30_586,
                 "kept_pct": 1.05})
    fig = _figure({"stages": rows})
    acc_ax, size_ax = fig.axes[0], fig.axes[1]
    assert acc_ax.get_ylim() == (0, 105)
    assert [t.get_text() for t in acc_ax.texts] == ["96.8", "96.7", "96.5", "96.5"]
    bottom, top = size_ax.get_ylim()
    assert bottom <= 30_586 / 10 and top > 3_449_662
    heights = [p.get_height() for p in size_ax.patches]
    assert heights == [1_724_998, 3_449_662, 3_449_629, 30_586]
    assert [t.get_text() for t in size_ax.texts][-1] == "30,586"
    plt.close(fig)


def test_a_second_pipeline_in_a_running_ones_folder_is_refused(tmp_path, capsys):
    """Two runs in one folder (the command again in another shell) each trained every unfinished stage, replacing the
    other's files; the second now says the folder is busy, and runs once the first has ended."""
    fcntl = pytest.importorskip("fcntl")
    import os

    out = tmp_path / "run"
    out.mkdir()
    held = os.open(out / ".pipeline.lock", os.O_RDWR | os.O_CREAT)  # (what a running pipeline holds)
    fcntl.flock(held, fcntl.LOCK_EX)
    os.write(held, b"4242")
    argv = ["pipeline", "--out", str(out), "--data", str(tmp_path / "data"), "--ref-iters", "2", "--dns-iters", "2",
            "--inq-iters", "1"]
    try:
        assert cli_main(argv) == 1
    finally:
        os.close(held)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"netcompress pipeline: error: {out}: another `netcompress pipeline` is running in this folder (process "
        "4242); wait for it to end (a later run keeps its finished stages), or choose another --out")
    assert not (out / "pipeline.json").exists() and not (out / "models").exists()
    assert cli_main(argv) == 0  # (the first has ended: its lock went with it)
    assert json.loads((out / "summary.json").read_text())["stages"][0]["stage"] == "reference"
