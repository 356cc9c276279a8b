"""compression_scripts/*.py shims and the `netcompress <command>` subcommands."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from netcompress import cli
from netcompress.commands import COMMANDS, load_command

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ("dns_to_normal", "inq_to_normal", "model2INQ_raw", "parse_model", "encode_compact",
           "decode_compact", "encode_compact48", "decode_compact48")


def test_every_script_has_a_shim_and_a_subcommand():
    for name in SCRIPTS + ("report",):
        assert name in COMMANDS, name
        assert callable(load_command(name)), name
    for name in SCRIPTS:
        assert (REPO / "compression_scripts" / f"{name}.py").is_file(), name


def test_shim_runs_from_anywhere_without_caffe_root(models, blobs_of, tmp_path):
    src = models.build("dns", seed=31)
    target = models.proto("normal")
    out = tmp_path / "n.caffemodel"
    env = {k: v for k, v in os.environ.items() if k not in ("CAFFE_ROOT", "PYTHONPATH")}
    script = str(REPO / "compression_scripts" / "dns_to_normal.py")
    r = subprocess.run([sys.executable, script, src.prototxt, src.model, target, str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [f"Model has been converted from DNS to normal, saved as {out}", " "]
    d = src.blobs["hidden"]
    np.testing.assert_array_equal(blobs_of(str(out))["hidden"][0], np.where(d["weight_mask"] == 1, d["weight"], 0))
    r = subprocess.run([sys.executable, script, "only-one"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Usage:" in r.stderr and "dns_to_normal.py <dns_model.prototxt>" in r.stderr


def test_subcommands_through_the_cli(models, capsys, tmp_path):
    src = models.build("inq", seed=32, pow2=True, mask="zeros")
    binary = str(tmp_path / "m.binary")
    assert cli.main(["encode_compact48", src.prototxt, src.model, binary]) == 0
    out = str(tmp_path / "m.caffemodel")
    assert cli.main(["decode_compact48", models.proto("normal"), binary, out]) == 0
    assert cli.main(["report", models.proto("normal"), out, "--compact", binary]) == 0
    assert cli.main(["parse_model", str(tmp_path / "missing"), str(tmp_path / "t.txt")]) == 1
    assert "does not exist!" in capsys.readouterr().err
