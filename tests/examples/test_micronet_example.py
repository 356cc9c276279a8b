"""examples/micronet/run.py, the MicroNet pipeline on the embedded digits, in its --smoke form (a few iterations
per stage): every stage runs through the command table, the pruned and quantized student and the merged integer
deploy net keep every weight within its bit budget (report --check-bits, which the script also runs), and the
deploy net reproduces the student's logits."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from netcompress.tools.report import model_report

RUN = Path(__file__).resolve().parents[2] / "examples" / "micronet" / "run.py"


def test_micronet_example_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("micronet_example_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--smoke", "--out", str(out), "--data", str(tmp_path / "data")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["stage"].split(" (")[0] for r in rows] == [
        "teacher", "KD student", "75 % global pruning + KD", "4-bit weights", "BN re-estimation",
        "integer deploy net"]
    conv, fc = 4935, 130  # the student's convolution and fc weights
    assert [r["weights"] for r in rows[1:]] == [conv + fc] * 5
    # 75 % of the convolutions pruned globally (num_remain - 1 kept, strict >), the fc dense
    assert rows[2]["nonzero"] == conv - -(-conv * 3 // 4) - 1 + fc
    assert rows[-1]["score"] is not None and rows[-1]["score"] > 0
    assert json.loads((out / "results.json").read_text())["deploy_logit_diff"] < 1e-4
    for proto, model in (("quant.prototxt", "bn.caffemodel"), ("deploy.prototxt", "deploy.caffemodel")):
        r = model_report(str(out / proto), str(out / model), check="")
        assert r["bits"] and all(b["ok"] for b in r["bits"]), proto
        assert {b["bits"] for b in r["bits"]} == {4, 6}
    deploy = model_report(str(out / "deploy.prototxt"), str(out / "deploy.caffemodel"))
    assert deploy["weights_by_type"]["Convolution"]["kept"] <= conv // 4
