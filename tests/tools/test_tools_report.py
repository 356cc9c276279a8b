"""`netcompress report`: its figures agree with dns_to_normal's; sizes of the stored forms."""
from __future__ import annotations

import json
import os

import pytest

from netcompress.tools import compact, convert, report


def contains(lines, sub):
    return any(lines[i:i + len(sub)] == sub for i in range(len(lines) - len(sub) + 1))


@pytest.mark.parametrize("flavour", ["dns", "masked"])
@pytest.mark.parametrize("bias", [True, False])
def test_report_agrees_with_dns_to_normal(models, capsys, tmp_path, bias, flavour):
    src = models.build(flavour, bias=bias, seed=21)
    normal_proto = models.proto("normal", bias)
    normal = str(tmp_path / "normal.caffemodel")
    assert convert.dns_to_normal_main([src.prototxt, src.model, normal_proto, normal]) == 0
    figures = capsys.readouterr().out.splitlines()[:-2]  # blocks and final statistics
    assert figures[-3].startswith("Compression Rate: ")

    js = tmp_path / "raw.json"
    assert report.main([src.prototxt, src.model, "--json", str(js)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert contains(out, figures)  # raw model: masks counted
    r = json.loads(js.read_text())
    assert [l["counted_by"] for l in r["layers"]] == ["mask"] * 3
    kept = int(figures[-4].split()[2].rstrip("/"))
    total = int(figures[-4].split()[3])
    assert (r["total"]["kept"], r["total"]["count"]) == (kept, total)
    assert f"{r['total']['compression_rate']:f}" == figures[-3].split()[-1]
    assert r["sizes"]["dense_bytes"] == 4 * total
    assert r["sizes"]["caffemodel_bytes"] == os.path.getsize(src.model)

    # the converted normal model: nonzeros counted, same figures
    assert report.main([normal_proto, normal]) == 0
    assert contains(capsys.readouterr().out.splitlines(), figures)


def test_report_sizes_of_compact_files(models, capsys, tmp_path):
    src = models.build("inq", seed=22, pow2=True, mask="zeros")
    b44, b48 = str(tmp_path / "m44.binary"), str(tmp_path / "m48.binary")
    assert compact.encode_compact_main([src.prototxt, src.model, b44]) == 0
    assert compact.encode_compact48_main([src.prototxt, src.model, b48]) == 0
    capsys.readouterr()
    js = tmp_path / "r.json"
    assert report.main([src.prototxt, src.model, "--compact", b44, b48, "--json", str(js)]) == 0
    out = capsys.readouterr().out
    r = json.loads(js.read_text())
    assert [l["counted_by"] for l in r["layers"]] == ["nonzero"] * 3  # INQ masks are not pruning masks
    c = r["sizes"]["compact"]
    assert [x["formats"] for x in c] == [["4/4"], ["4/8"]]
    assert [x["bytes"] for x in c] == [os.path.getsize(b44), os.path.getsize(b48)]
    dense = r["sizes"]["dense_bytes"]
    assert c[0]["ratio"] == pytest.approx(dense / c[0]["bytes"])
    assert f"compact {b44} (4/4)" in out and f"compact {b48} (4/8)" in out
    assert f"dense float32 ({r['total']['count']} x 4 bytes)" in out


def test_report_on_the_fixture_agrees_with_the_reference_output(in_fixture_workdir, capsys):
    assert report.main(["dns/lenet_train_test_DNS.prototxt", "dns/lenet_DNS_iter_5000.caffemodel"]) == 0
    reference = (in_fixture_workdir / "dns" / "dns_to_normal_output.txt").read_text().splitlines()[:-2]
    out = capsys.readouterr().out.splitlines()
    assert contains(out, reference)
    assert "Compression Rate: 95.477298" in out


def test_report_errors(models, capsys, tmp_path):
    src = models.build("dns", seed=23)
    assert report.main([src.prototxt, str(tmp_path / "none.caffemodel")]) == 1
    assert "none.caffemodel does not exist!" in capsys.readouterr().err
    assert report.main([src.prototxt]) == 2  # argparse usage error
    assert "usage:" in capsys.readouterr().err
    assert report.main([models.proto("normal"), src.model]) == 1
    assert "stores 4 blob(s)" in capsys.readouterr().err


def test_layers_of_other_types_are_listed_as_not_counted(models, capsys, tmp_path):
    bn = 'layer { name: "norm" type: "BatchNorm" bottom: "score" top: "norm" }'
    src = models.build("normal", seed=24, extra_layers=bn)
    js = tmp_path / "r.json"
    assert report.main([src.prototxt, src.model, "--json", str(js)]) == 0
    assert "not counted: layer 'norm' (BatchNorm, 21 values)" in capsys.readouterr().out
    r = json.loads(js.read_text())
    assert [l["name"] for l in r["layers"]] == ["feat", "hidden", "score"]
    assert r["total"]["count"] == sum(b.size for n in ("feat", "hidden", "score")
                                      for b in src.blobs[n].values())
