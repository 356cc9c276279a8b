"""The README's main job, `netcompress pipeline`, with short stages (the default run is in README)."""
from __future__ import annotations

import json

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
