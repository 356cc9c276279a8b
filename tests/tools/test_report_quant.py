"""`report` on quantized models: a raw Quant model ([W, (b), W_mask, (b_mask), w_alpha]), an imported integer
deploy net (T2's facts as `report` prints them: weights kept per layer type) and the bit-budget check
`--check-bits`, against counts and codes computed here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netcompress import io as ncio
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools import convert, report
from netcompress.tools.densenet import DenseNetConfig, densenet_net
from netcompress.tools.micronet import import_pth

QUANT = """
name: "q"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "feat" type: "QuantConvolution" bottom: "data" top: "feat"
        convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } }
        weight_quant_param { bitwidth: 4 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "score" type: "QuantInnerProduct" bottom: "feat" top: "score"
        inner_product_param { num_output: 7 bias_term: false weight_filler { type: "gaussian" std: 0.1 } @T@ }
        weight_quant_param { bitwidth: 6 } }
"""
NORMAL = QUANT.replace("QuantConvolution", "Convolution").replace("QuantInnerProduct", "InnerProduct") \
    .replace("weight_quant_param { bitwidth: 4 }", "").replace("weight_quant_param { bitwidth: 6 }", "")


def codes(w, m, alpha, bits, transpose=False):
    clip = 2 ** (bits - 1)
    v = (w * m).astype(np.float32)
    rows = v.T if transpose else v.reshape(len(alpha), -1)
    a = alpha.astype(np.float32)[:, None]
    q = np.where(a != 0, np.clip(np.rint(rows / np.where(a != 0, a, 1)), -clip, clip - 1), 0)
    return (q.T if transpose else q).reshape(w.shape)


@pytest.fixture(params=[False, True], ids=["ip", "ip-transposed"])
def quant_model(request, tmp_path):
    t = "transpose: true" if request.param else ""
    proto = tmp_path / "q.prototxt"
    proto.write_text(QUANT.replace("@T@", t))
    net = Net(str(proto), seed=3, verbose=False)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in ("feat", "score"):
            l = net.layer(name)
            l.weight_mask.copy_((torch.rand(l.weight_mask.shape, generator=g) > 0.4).float())
            if l.bias_term:
                l.bias_mask.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
            l.fit_alpha()
    model = tmp_path / "q.caffemodel"
    net.save(str(model))
    return str(proto), str(model), net, request.param


def test_raw_quant_model_counts_non_zero_quantized_weights(quant_model, tmp_path, capsys):
    proto, model, net, transpose = quant_model
    js = tmp_path / "r.json"
    assert report.main([proto, model, "--json", str(js), "--check-bits"]) == 0
    r = json.loads(js.read_text())
    feat, score = net.layer("feat"), net.layer("score")
    qf = codes(feat.weight.detach().numpy(), feat.weight_mask.numpy(), feat.w_alpha.numpy(), 4)
    qs = codes(score.weight.detach().numpy(), score.weight_mask.numpy(), score.w_alpha.numpy(), 6, transpose)
    assert [(l["name"], l["counted_by"], l["w_kept"], l["w_count"], l["b_kept"]) for l in r["layers"]] == [
        ("feat", "quantized", int(np.count_nonzero(qf)), qf.size, 3),
        ("score", "quantized", int(np.count_nonzero(qs)), qs.size, None)]
    assert np.count_nonzero(qf) < feat.weight_mask.sum()  # some kept weights round to the code 0
    assert r["weights_by_type"] == {"QuantConvolution": {"kept": int(np.count_nonzero(qf)), "count": qf.size},
                                    "QuantInnerProduct": {"kept": int(np.count_nonzero(qs)), "count": qs.size}}
    assert [(b["name"], b["bits"], b["ok"]) for b in r["bits"]] == [("feat", 4, True), ("score", 6, True)]
    out = capsys.readouterr().out
    assert "Weights kept by layer type:" in out and "  QuantConvolution: %d/%d" % (np.count_nonzero(qf), qf.size) in out
    assert "feat    4 bits [-8, 7]  ok: codes in [" in out
    # a tighter budget than the layer was trained for: the 4-bit codes do not fit 3 bits
    assert report.main([proto, model, "--check-bits", "feat=3"]) == 1
    cap = capsys.readouterr()
    assert "feat    3 bits [-4, 3]  EXCEEDED in" in cap.out
    assert "the bit budget is exceeded in layer 'feat' (QuantConvolution, 3 bits" in cap.err


def test_converted_float_model_has_its_scales_found(quant_model, tmp_path, capsys):
    # dns_to_normal writes the quantized weights α_c·q of a raw Quant model; report finds each channel's scale
    proto, model, net, transpose = quant_model
    normal_proto = tmp_path / "n.prototxt"
    normal_proto.write_text(NORMAL.replace("@T@", "transpose: true" if transpose else ""))
    normal = str(tmp_path / "n.caffemodel")
    assert convert.dns_to_normal_main([proto, model, str(normal_proto), normal]) == 0
    w = ncio.blob_to_array(next(l for l in ncio.read_caffemodel(normal).layer if l.name == "feat").blobs[0])
    feat = net.layer("feat")
    q = codes(feat.weight.detach().numpy(), feat.weight_mask.numpy(), feat.w_alpha.numpy(), 4)
    np.testing.assert_array_equal(w, (q * feat.w_alpha.numpy()[:, None, None, None]).astype(np.float32))
    capsys.readouterr()
    js = tmp_path / "r.json"
    assert report.main([str(normal_proto), normal, "--check-bits", "default=4,last=6", "--json", str(js)]) == 0
    bits = json.loads(js.read_text())["bits"]
    assert [(b["ok"], b["how"]) for b in bits] == [(True, "a per-channel scale found from the values")] * 2
    # at 3 bits those values are not a scale times integers in [-4, 3]; random float weights fit no budget
    assert report.main([str(normal_proto), normal, "--check-bits", "default=3,last=6"]) == 1
    Net(str(normal_proto), seed=9, verbose=False).save(str(tmp_path / "f.caffemodel"))
    assert report.main([str(normal_proto), str(tmp_path / "f.caffemodel"), "--check-bits"]) == 1
    assert "layer 'feat' (Convolution, 4 bits: 5 of 5 channels); layer 'score' (InnerProduct, 6 bits" in \
        capsys.readouterr().err


def test_t2_facts_on_an_imported_integer_checkpoint(tmp_path, capsys):
    # A state dict in the source's densenet_final names (as `import_pth` reads the released checkpoint):
    # integer conv weights in [-8, 7] and a 6-bit FC; report prints the kept weights per layer type and
    # checks the budgets; one weight of 9 is named.
    cfg = DenseNetConfig(depth=16, growth=6, num_classes=12, input_shape=(3, 32, 32))
    deploy = densenet_net(cfg, "deploy")
    proto = str(tmp_path / "final.prototxt")
    ncio.write_text_proto(proto, deploy)
    net = Net(deploy, verbose=False)
    rng = np.random.default_rng(5)
    state, conv_nz, conv_n = {}, 0, 0
    for name, layer in net.named_layers():
        for i, bname in enumerate(layer.blob_names):
            shape = tuple(getattr(layer, bname).shape)
            if layer.type_name == "Convolution":
                a = rng.integers(-8, 8, size=shape) * (rng.random(shape) < 0.25)
                conv_nz += int(np.count_nonzero(a))
                conv_n += a.size
            elif layer.type_name == "InnerProduct":
                a = rng.integers(-32, 32, size=shape) * (rng.random(shape) < 0.5)
                fc = a
            else:
                a = rng.standard_normal(shape)
                shape = (1, shape[0], 1) if layer.type_name == "Scale" else shape  # the source's (1, C, 1)
            head, sep, tail = name.rpartition("_")
            module = f"{head}.{tail}" if sep else name
            state[f"{module}.{['weight', 'bias'][i]}"] = torch.tensor(a, dtype=torch.float32).reshape(shape)
    pth = str(tmp_path / "final.pth")
    torch.save({"state_dict": state}, pth)
    model = str(tmp_path / "final.caffemodel")
    import_pth(pth, proto, model)
    js = tmp_path / "r.json"
    assert report.main([proto, model, "--check-bits", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["weights_by_type"] == {"Convolution": {"kept": conv_nz, "count": conv_n},
                                    "InnerProduct": {"kept": int(np.count_nonzero(fc)), "count": fc.size}}
    assert all(b["ok"] and b["how"] == "integers" for b in r["bits"])
    assert [b["bits"] for b in r["bits"]] == [4] * (len(r["bits"]) - 1) + [6]
    out = capsys.readouterr().out
    assert "  Convolution: %d/%d (" % (conv_nz, conv_n) in out
    assert "  InnerProduct: %d/%d (" % (np.count_nonzero(fc), fc.size) in out
    state["dense2.1.conv2.weight"].view(-1)[3] = 9.0
    torch.save(state, pth)
    import_pth(pth, proto, model)
    assert report.main([proto, model, "--check-bits"]) == 1
    cap = capsys.readouterr()
    assert "dense2.1_conv2" in cap.out and "EXCEEDED in 1 of 6 channels (0; integers)" in cap.out
    assert "layer 'dense2.1_conv2' (Convolution, 4 bits: 1 of 6 channels)" in cap.err
    assert report.main([proto, model, "--check-bits", "nope=4"]) == 1
    assert "--check-bits: nope is not a weight layer of the net" in capsys.readouterr().err
