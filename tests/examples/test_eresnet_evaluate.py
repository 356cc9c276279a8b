"""examples/eresnet/evaluate.py's warning when the compressed deploy net and the TEST net disagree."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "eresnet" / "evaluate.py"


def _evaluate():
    spec = importlib.util.spec_from_file_location("eresnet_evaluate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_warning_when_the_nets_agree():
    ev = _evaluate()
    closed = {"res1.0_gate": 0, "res1.1_gate": 10}
    assert ev.mismatch_warning(closed, 10, 0.0, 30.0) is None
    assert ev.mismatch_warning(closed, 10, 0.02, 30.0) is None  # within 1e-3 of the logits' magnitude


def test_warning_names_the_undecided_and_the_closed_gates():
    ev = _evaluate()
    # the seed-1 run of the README: res2.1 closed on every TEST batch but kept (training average 0.99983)
    closed = {"res1.0_gate": 0, "res1.1_gate": 10, "res2.1_gate": 10, "res3.1_gate": 4}
    text = ev.mismatch_warning(closed, 10, 4.54e3, 60.0)
    assert text.startswith("WARNING: the deploy net computes another function than the TEST net.")
    assert "open on others: res3.1." in text
    assert "closed on every TEST batch: res1.1, res2.1;" in text
    assert "is_discarded average reads 1" in text
    text = ev.mismatch_warning({"res1.0_gate": 0}, 10, 1.0, 1.0)
    assert "open on others" not in text and "closed on every TEST batch: none;" in text
