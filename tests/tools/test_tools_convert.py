"""dns_to_normal, inq_to_normal, model2INQ_raw and parse_model (reference-semantics 5.1-5.4)."""
from __future__ import annotations


import numpy as np
import pytest
from google.protobuf import text_format

from netcompress.proto import caffe_pb2 as pb
from netcompress.tools import convert

LAYERS = ("feat", "hidden", "score")


def block(name, wm, bm):
    """The reference's per-layer lines (5.1), written out from the spec."""
    wk, wn = int((wm == 1).sum()), wm.size
    sp = " " * len(name)
    lines = ["=" * 55, "%s layer w: %d/%d (%f %%) kept" % (name, wk, wn, 100.0 * wk / wn)]
    if bm is None:
        return lines + ["%s   total: %d/%d (%f %%) kept" % (sp, wk, wn, 100.0 * wk / wn)], wk, wn
    bk, bn = int((bm == 1).sum()), bm.size
    lines.append("%s       b: %d/%d (%f %%) kept" % (sp, bk, bn, 100.0 * bk / bn))
    lines.append("%s   total: %d/%d (%f %%) kept" % (sp, wk + bk, wn + bn, 100.0 * (wk + bk) / (wn + bn)))
    return lines, wk + bk, wn + bn


def final(kept, total):
    return [" ", "*" * 55, " ", "Final Statistics: %d/ %d (%f %%) kept" % (kept, total, 100.0 * kept / total),
            "Compression Rate: %f" % (total / kept), " ", "*" * 55]


def expected_stats(built, layers=LAYERS):
    lines, kept, total = [], 0, 0
    for name in layers:
        d = built.blobs[name]
        l, k, t = block(name, d["weight_mask"], d.get("bias_mask"))
        lines += l
        kept += k
        total += t
    return lines, kept, total


def masked(w, m):
    return np.where(m == 1, w, 0).astype(np.float32)


@pytest.mark.parametrize("flavour", ["dns", "guo", "masked"])
@pytest.mark.parametrize("bias", [True, False])
def test_dns_to_normal_lines_and_blobs(models, blobs_of, capsys, tmp_path, flavour, bias):
    src = models.build(flavour, bias=bias, seed=1)
    target = models.proto("normal", bias)
    out = str(tmp_path / "normal.caffemodel")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, out]) == 0
    lines, kept, total = expected_stats(src)
    expected = lines + final(kept, total) + [
        f"Model has been converted from DNS to normal, saved as {out}", " "]
    assert capsys.readouterr().out.splitlines() == expected
    got = blobs_of(out)
    for name in LAYERS:
        d = src.blobs[name]
        np.testing.assert_array_equal(got[name][0], masked(d["weight"], d["weight_mask"]))
        if bias:
            assert len(got[name]) == 2
            np.testing.assert_array_equal(got[name][1], masked(d["bias"], d["bias_mask"]))
        else:
            assert len(got[name]) == 1


def test_dns_to_normal_mask_values_other_than_one_prune(models, blobs_of, capsys, tmp_path):
    src = models.build("dns", seed=2, mask="odd")  # masks in {0, 0.5, 1, 2}
    target = models.proto("normal")
    out = str(tmp_path / "n.caffemodel")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, out]) == 0
    got = blobs_of(out)
    d = src.blobs["hidden"]
    np.testing.assert_array_equal(got["hidden"][0], masked(d["weight"], d["weight_mask"]))
    # kept counts are mask == 1 entries
    lines, kept, total = expected_stats(src)
    assert capsys.readouterr().out.splitlines()[: len(lines)] == lines


def test_dns_to_normal_copies_plain_layers_without_statistics(models, blobs_of, capsys, tmp_path):
    # A DNS net whose "score" layer stayed a plain InnerProduct: copied as it is, not counted.
    src = models.build("dns", seed=3, plain=("score",))
    target = models.proto("normal")
    out = str(tmp_path / "n.caffemodel")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, out]) == 0
    lines, kept, total = expected_stats(src, ("feat", "hidden"))
    assert capsys.readouterr().out.splitlines()[:-2] == lines + final(kept, total)
    got = blobs_of(out)
    np.testing.assert_array_equal(got["score"][0], src.blobs["score"]["weight"])
    np.testing.assert_array_equal(got["score"][1], src.blobs["score"]["bias"])


def test_dns_to_normal_all_pruned_prints_no_final_statistics(models, capsys, tmp_path):
    src = models.build("dns", seed=4, mask="zeros")
    target = models.proto("normal")
    out = str(tmp_path / "n.caffemodel")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any(l.startswith("Final Statistics") for l in lines)
    assert lines[-2:] == [f"Model has been converted from DNS to normal, saved as {out}", " "]


def test_dns_to_normal_reproduces_the_reference_output(in_fixture_workdir, capsys):
    """The fixture's raw DNS LeNet: what the reference dns_to_normal.py printed, line for line."""
    out = "c_dns2normal/lenet_DNS_normal.caffemodel"
    rc = convert.dns_to_normal_main(["dns/lenet_train_test_DNS.prototxt", "dns/lenet_DNS_iter_5000.caffemodel",
                                     "lenet/lenet_train_test.prototxt", out])
    assert rc == 0
    expected = (in_fixture_workdir / "dns" / "dns_to_normal_output.txt").read_text().splitlines()
    got = capsys.readouterr().out.splitlines()
    assert got == expected  # same output path as the reference run
    from netcompress.net import Net
    src = Net("dns/lenet_train_test_DNS.prototxt", phase="test", verbose=False)
    src.copy_from("dns/lenet_DNS_iter_5000.caffemodel")
    dst = Net("lenet/lenet_train_test.prototxt", phase="test", verbose=False)
    dst.copy_from(out)
    for name in ("conv1", "conv2", "ip1", "ip2"):
        s, d = src.layer(name), dst.layer(name)
        for blob, mask in (("weight", "weight_mask"), ("bias", "bias_mask")):
            expected = masked(getattr(s, blob).detach().numpy(), getattr(s, mask).numpy())
            np.testing.assert_array_equal(getattr(d, blob).detach().numpy(), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_inq_to_normal_copies_weights_and_prints_reference_lines(models, blobs_of, capsys, tmp_path, bias):
    src = models.build("inq", bias=bias, seed=5, pow2=True)
    target = models.proto("normal", bias)
    out = str(tmp_path / "n.caffemodel")
    assert convert.inq_to_normal_main([src.prototxt, src.model, target, out]) == 0
    # Python 2's `print "...", pad,` + `print "[done]"`: one space, max(0, 20-len) spaces, one space.
    expected = [""] + ["converting layer [%s] ...%s[done]" % (n, " " * (max(0, 20 - len(n)) + 2)) for n in LAYERS]
    expected += ["", f"Success: Model has been converted from INQ to normal, saved as {out}", " "]
    assert capsys.readouterr().out.splitlines() == expected
    assert expected[1] == "converting layer [feat] ..." + " " * 18 + "[done]"
    got = blobs_of(out)
    for name in LAYERS:
        d = src.blobs[name]
        np.testing.assert_array_equal(got[name][0], d["weight"])  # not masked: INQ masks mark quantized
        if bias:
            np.testing.assert_array_equal(got[name][1], d["bias"])


def test_inq_to_normal_long_names_get_no_padding(models, capsys, tmp_path):
    long = "a_layer_name_of_21_ch"
    assert len(long) == 21
    text = models.text("inq").replace('"score"', f'"{long}"')
    src_proto = models.write_prototxt(text)
    from netcompress.net import Net
    net = Net(src_proto, phase="test", verbose=False)
    model = str(tmp_path / "inq.caffemodel")
    net.save(model)
    target = models.write_prototxt(models.text("normal").replace('"score"', f'"{long}"'))
    assert convert.inq_to_normal_main([src_proto, model, target, str(tmp_path / "o.caffemodel")]) == 0
    assert f"converting layer [{long}] ...  [done]" in capsys.readouterr().out.splitlines()


def test_model2inq_raw_from_dns(models, blobs_of, capsys, tmp_path):
    src = models.build("dns", seed=6)
    target = models.proto("inq")
    out = str(tmp_path / "inq_raw.caffemodel")
    assert convert.model2INQ_raw_main([src.prototxt, src.model, target, out]) == 0
    lines, kept, total = expected_stats(src)
    expected = lines + final(kept, total) + [
        f"Model({src.model}) has been converted to INQ raw model, saved as {out}", " ",
        f"Model {out} is ready for INQ training.", " "]
    assert capsys.readouterr().out.splitlines() == expected
    got = blobs_of(out)
    for name in LAYERS:
        d = src.blobs[name]
        w, b, wm, bm = got[name]
        np.testing.assert_array_equal(w, masked(d["weight"], d["weight_mask"]))
        np.testing.assert_array_equal(b, masked(d["bias"], d["bias_mask"]))
        np.testing.assert_array_equal(wm, d["weight_mask"])
        np.testing.assert_array_equal(bm, d["bias_mask"])


@pytest.mark.parametrize("bias", [True, False])
def test_model2inq_raw_from_normal_sets_masks_to_one(models, blobs_of, capsys, tmp_path, bias):
    src = models.build("normal", bias=bias, seed=7)
    target = models.proto("inq", bias)
    out = str(tmp_path / "inq_raw.caffemodel")
    assert convert.model2INQ_raw_main([src.prototxt, src.model, target, out]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Model({src.model}) has been converted to INQ raw model, saved as {out}", " ",
        f"Model {out} is ready for INQ training.", " "]
    got = blobs_of(out)
    for name in LAYERS:
        d = src.blobs[name]
        blobs = got[name]
        assert len(blobs) == (4 if bias else 2)
        np.testing.assert_array_equal(blobs[0], d["weight"])
        if bias:
            np.testing.assert_array_equal(blobs[1], d["bias"])
        for m in blobs[len(blobs) // 2:]:
            assert m.dtype == np.float32 and np.all(m == 1)


def test_model2inq_raw_refuses_an_inq_raw_source(models, capsys, tmp_path):
    src = models.build("inq", seed=8, pow2=True)
    target = models.proto("inq")
    out = tmp_path / "x.caffemodel"
    assert convert.model2INQ_raw_main([src.prototxt, src.model, target, str(out)]) == 1
    err = capsys.readouterr().err
    assert "INQ raw model" in err and "'feat'" in err and "INQConvolution" in err
    assert not out.exists()


def test_dns_to_normal_refuses_an_inq_source(models, capsys, tmp_path):
    src = models.build("inq", seed=8, pow2=True)
    target = models.proto("normal")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "x")]) == 1
    assert "inq_to_normal" in capsys.readouterr().err


def test_inq_to_normal_refuses_a_dns_raw_source(models, capsys, tmp_path):
    src = models.build("dns", seed=8)
    target = models.proto("normal")
    assert convert.inq_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "x")]) == 1
    assert "dns_to_normal" in capsys.readouterr().err


def test_parse_model_writes_protobuf_text(models, capsys, tmp_path):
    src = models.build("dns", seed=9)
    out = str(tmp_path / "model.txt")
    assert convert.parse_model_main([src.model, out]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Parsing binary caffemodel ...", f"Saving file: {out} ...", f"Success: file saved as {out}"]
    text = open(out).read()
    assert text.endswith("\n")
    parsed = text_format.Parse(text, pb.NetParameter())
    original = pb.NetParameter()
    original.ParseFromString(open(src.model, "rb").read())
    assert parsed == original


# ----------------------------------------------------------------------------------------------
# Errors: non-zero exit, a message naming the file / layer and what was expected
# ----------------------------------------------------------------------------------------------

MAINS = [convert.dns_to_normal_main, convert.inq_to_normal_main, convert.model2INQ_raw_main]


@pytest.mark.parametrize("main", MAINS)
def test_missing_files(main, models, capsys, tmp_path):
    src = models.build("dns", seed=10)
    target = models.proto("normal")
    args = [src.prototxt, src.model, target, str(tmp_path / "out.caffemodel")]
    for i in range(3):
        bad = list(args)
        bad[i] = str(tmp_path / "nope.file")
        assert main(bad) == 1
        assert capsys.readouterr().err.strip() == f"Error: {bad[i]} does not exist!"
    assert not (tmp_path / "out.caffemodel").exists()


@pytest.mark.parametrize("main,n", [(m, 4) for m in MAINS] + [(convert.parse_model_main, 2)])
def test_wrong_argument_count_prints_usage(main, n, capsys):
    assert main(["a"] * (n - 1)) == 2
    err = capsys.readouterr().err
    assert "Usage:" in err and f"expected {n} arguments, got {n - 1}" in err
    assert main(["a"] * (n + 1)) == 2
    assert main(["--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


def test_an_output_that_is_a_net_or_solver_definition_is_not_replaced(models, capsys, tmp_path):
    """`parse_model model.caffemodel net.prototxt` (the output given where the user thought an input went)
    replaced the net definition by the model's text dump; a weights-writing tool given a solver or a net as its
    output likewise. Refused, naming what the file is; an earlier dump or model is replaced as before."""
    src = models.build("dns", seed=9)
    net = tmp_path / "net.prototxt"
    net.write_text(models.text("normal"))
    kept = net.read_bytes()
    assert convert.parse_model_main([src.model, str(net)]) == 1
    n = len(pb.NetParameter.FromString(open(src.model, "rb").read()).layer)
    assert capsys.readouterr().err.strip() == (
        f"Error: {net} is a net prototxt ({len(text_format.Parse(models.text('normal'), pb.NetParameter()).layer)} "
        "layers), which writing the model's text dump there would replace (are the arguments in order?); give "
        "another output file, or remove it first if that is meant")
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "net.prototxt"\nbase_lr: 0.01\n')
    assert convert.dns_to_normal_main([src.prototxt, src.model, models.proto("normal"), str(solver)]) == 1
    assert "is a solver prototxt, which writing the converted caffemodel there would replace" in \
        capsys.readouterr().err
    assert net.read_bytes() == kept and solver.read_text() == 'net: "net.prototxt"\nbase_lr: 0.01\n'
    dump = tmp_path / "dump.txt"  # (a dump holds weights: re-running over it is fine)
    assert convert.parse_model_main([src.model, str(dump)]) == 0
    assert convert.parse_model_main([src.model, str(dump)]) == 0
    assert len(text_format.Parse(dump.read_text(), pb.NetParameter()).layer) == n


def test_parse_model_missing_file(capsys, tmp_path):
    assert convert.parse_model_main([str(tmp_path / "none.caffemodel"), str(tmp_path / "o.txt")]) == 1
    assert "does not exist!" in capsys.readouterr().err


def test_mismatched_target_shapes(models, capsys, tmp_path):
    src = models.build("dns", seed=11)
    target = models.proto("normal", outputs={"hidden": 41})
    out = tmp_path / "o.caffemodel"
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(out)]) == 1
    err = capsys.readouterr().err
    assert "layer 'hidden'" in err and "[41, 100]" in err and "[40, 100]" in err
    assert not out.exists()


def test_target_layer_that_receives_nothing_is_an_error(models, capsys, tmp_path):
    src = models.build("dns", seed=12)
    extra = ('layer { name: "extra" type: "InnerProduct" bottom: "score" top: "extra" '
             'inner_product_param { num_output: 3 } }')
    target = models.proto("normal", extra_layers=extra)
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "'extra'" in err and "initial values" in err


def test_source_layer_missing_from_target_is_an_error(models, capsys, tmp_path):
    src = models.build("dns", seed=13)
    text = models.text("normal").replace('"score"', '"logits"')
    target = models.write_prototxt(text)
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no layer 'score'" in err


def test_target_with_masked_layers_is_an_error_for_dns_to_normal(models, capsys, tmp_path):
    src = models.build("dns", seed=14)
    target = models.proto("dns")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "o")]) == 1
    assert "normal net's prototxt" in capsys.readouterr().err


def test_raw_model_with_the_normal_prototxt_is_an_error(models, capsys, tmp_path):
    src = models.build("dns", seed=15)
    normal = models.proto("normal")
    assert convert.dns_to_normal_main([normal, src.model, normal, str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "stores 4 blob(s)" in err and "'feat'" in err


def test_model_that_lacks_a_layer_of_its_prototxt_is_an_error(models, capsys, tmp_path):
    src = models.build("dns", seed=16)
    proto = models.write_prototxt(models.text("dns").replace('"hidden"', '"hidden2"'))
    target = models.proto("normal")
    assert convert.dns_to_normal_main([proto, src.model, target, str(tmp_path / "o")]) == 1
    assert "stores no blobs for layer 'hidden2'" in capsys.readouterr().err


def test_no_bias_source_into_biased_target_is_an_error(models, capsys, tmp_path):
    src = models.build("dns", bias=False, seed=17)
    target = models.proto("normal", bias=True)
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "[weight, bias]" in err and "expected [weight]" in err


def test_unbuildable_target_names_the_data_source(models, capsys, tmp_path):
    src = models.build("dns", seed=18)
    text = models.text("normal").replace(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 12 dim: 12 } } }',
        'layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "no_such_lmdb" '
        'batch_size: 2 backend: LMDB } }')
    target = models.write_prototxt(text)
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no_such_lmdb" in err and target in err


def test_layers_without_weights_layout_are_copied_verbatim(models, blobs_of, capsys, tmp_path):
    bn = 'layer { name: "norm" type: "BatchNorm" bottom: "score" top: "norm" }'
    src = models.build("dns", seed=19, extra_layers=bn)
    target = models.proto("normal", extra_layers=bn)
    out = str(tmp_path / "n.caffemodel")
    assert convert.dns_to_normal_main([src.prototxt, src.model, target, out]) == 0
    got = blobs_of(out)["norm"]
    assert len(got) == 3
    for a, name in zip(got, ("mean", "variance", "scale_factor")):
        np.testing.assert_array_equal(a, src.blobs["norm"][name])


def test_masked_layer_with_an_unexpected_blob_count_is_an_error(models, capsys, tmp_path):
    src = models.build("dns", seed=20)
    p = pb.NetParameter()
    p.ParseFromString(open(src.model, "rb").read())
    layer = next(l for l in p.layer if l.name == "hidden")
    del layer.blobs[3]  # [W, b, W_mask]
    bad = tmp_path / "three.caffemodel"
    bad.write_bytes(p.SerializeToString())
    target = models.proto("normal")
    assert convert.dns_to_normal_main([src.prototxt, str(bad), target, str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "layer 'hidden' (DNSInnerProduct" in err and "stores 3 blob(s)" in err
    assert "expected 4 [W, b, W_mask, b_mask] for a raw model or 2 [W, b] for a normal one" in err
