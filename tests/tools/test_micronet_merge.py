"""`micronet_merge` (recipes-spec §4.9, §5.5): the quantized DenseNet student into the integer deploy net, checked
against the student's TEST logits, against §4.9's formulas computed here from the student's blobs, against the
layout of the source's densenet_final (`make_densenet --form deploy`), and by micronet_score."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netcompress import io as ncio
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools.densenet import DenseNetConfig, densenet_net
from netcompress.tools.micronet import micronet_score
from netcompress.tools.micronet_merge import main, merge_micronet

MNIST = DenseNetConfig(depth=10, growth=4, num_classes=10, input_shape=(1, 28, 28))


def make_student(tmp_path, fc_type="QuantInnerProduct", seed=0, calibrate=True) -> tuple[str, str]:
    """A DenseNet student with random BN statistics, γ (one negative) and β, half of every weight pruned, w_alpha
    fitted to W⊙M and ActQuant calibrated on a batch of random digits (the SCRIPT calibration pass)."""
    param = densenet_net(MNIST, "student", fc_type=fc_type)
    proto = str(tmp_path / "student.prototxt")
    ncio.write_text_proto(proto, param)
    net = Net(param, phase=pb.TEST, seed=1, verbose=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, l in net.named_layers():
            if l.type_name == "BatchNorm":
                c = l.mean.numel()
                l.mean.copy_(0.6 * torch.randn(c, generator=g))
                l.variance.copy_(2 * (0.5 + torch.rand(c, generator=g)))
                l.scale_factor.fill_(2.0)  # statistics = blob / 2
            elif l.type_name == "Scale":
                gamma, beta = l.blobs()
                gamma.copy_(0.5 + torch.rand(gamma.shape, generator=g))
                gamma[0] = -0.7
                beta.copy_(0.2 * torch.randn(beta.shape, generator=g))
            elif hasattr(l, "weight_mask"):
                l.weight_mask.copy_((torch.rand(l.weight_mask.shape, generator=g) > 0.5).float())
                if l.bias_term:
                    l.bias.copy_(0.1 * torch.randn(l.bias.shape, generator=g))
                if hasattr(l, "fit_alpha"):
                    l.fit_alpha()
        if calibrate:
            for _, l in net.named_layers():
                if l.type_name == "ActQuant":
                    l.request_calibration()
            net(data=torch.rand(16, 1, 28, 28, generator=g))
    model = str(tmp_path / "student.caffemodel")
    net.save(model)
    return proto, model


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    proto, model = make_student(tmp)
    r = merge_micronet(proto, model)
    dproto, dmodel = str(tmp / "deploy.prototxt"), str(tmp / "deploy.caffemodel")
    ncio.write_text_proto(dproto, r.deploy)
    ncio.write_caffemodel(dmodel, r.model)
    return proto, model, dproto, dmodel, r


def blobs(path):
    return {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in ncio.read_caffemodel(path).layer}


def test_deploy_reproduces_the_students_test_logits(merged):
    proto, model, dproto, dmodel, _ = merged
    student = Net(proto, phase=pb.TEST, weights=model, verbose=False)
    deploy = Net(dproto, phase=pb.TEST, weights=dmodel, verbose=False)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = student(data=x)["fc"], deploy(data=x)["fc"]
    assert float(a.abs().max()) > 0.1
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_layout_is_the_sources_densenet_final(merged):
    *_, r = merged
    final = densenet_net(MNIST, "deploy")
    deploy = Net(final, verbose=False)
    assert [l.type for l in r.deploy.layer] == [l.type for l in final.layer]
    shapes = [[tuple(ncio.blob_shape(b)) for b in l.blobs] for l in r.model.layer]
    assert shapes == [[tuple(t.shape) for t in deploy.layer(l.name).blobs()] for l in final.layer]
    assert [l.int_quant_param.high for l in r.deploy.layer if l.type == "IntQuant"] == [15] * 8
    assert [l.int_quant_param.low for l in r.deploy.layer if l.type == "IntQuant"] == [0] * 8
    names = [l.name for l in r.deploy.layer]
    assert names[:10] == ["data", "conv1", "conv1_scale", "dense1.0_bn1_scale", "dense1.0_act1", "dense1.0_conv1",
                          "dense1.0_bn2_scale", "dense1.0_act2", "dense1.0_conv2", "dense1.0_conv2_scale"]
    assert names[-5:] == ["bn_scale", "relu", "avgpool", "fc", "fc_scale"]
    assert not any(l.convolution_param.bias_term for l in r.deploy.layer if l.type == "Convolution")


def test_section_4_9_formulas(merged):
    proto, model, dproto, dmodel, _ = merged
    s, d = blobs(model), blobs(dmodel)

    def bn(name):
        mean, var, sf = s[name]
        mu, v = mean.astype(np.float64) / sf[0], var.astype(np.float64) / sf[0]
        gamma, beta = (a.astype(np.float64) for a in s[name + "_scale"])
        return gamma, beta, mu, np.sqrt(v + 1e-5)

    def codes(name, bits):
        b = s[name]  # [W, (b), W_mask, (b_mask), w_alpha]
        w, wm, alpha = b[0], b[2] if len(b) == 5 else b[1], b[-1]
        v = (w * wm).reshape(len(alpha), -1).astype(np.float32)
        q = np.clip(np.rint(v / alpha[:, None].astype(np.float32)), -2 ** (bits - 1), 2 ** (bits - 1) - 1)
        return q.reshape(w.shape), alpha.astype(np.float64)

    a1 = float(s["dense1.0_act1"][0][0])
    a2 = float(s["dense1.0_act2"][0][0])
    g1, b1, m1, s1 = bn("dense1.0_bn1")
    g2, b2, m2, s2 = bn("dense1.0_bn2")
    q1, w1 = codes("dense1.0_conv1", 4)
    q2, w2 = codes("dense1.0_conv2", 4)
    close = dict(rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(d["dense1.0_bn1_scale"][0], g1 / (a1 * s1), **close)          # scale1
    np.testing.assert_allclose(d["dense1.0_bn1_scale"][1], (b1 - g1 * m1 / s1) / a1, **close)  # bias1
    np.testing.assert_array_equal(d["dense1.0_conv1"][0], q1)
    np.testing.assert_allclose(d["dense1.0_bn2_scale"][0], g2 * a1 * w1 / (a2 * s2), **close)  # scale2
    np.testing.assert_allclose(d["dense1.0_bn2_scale"][1], (b2 - g2 * m2 / s2) / a2, **close)  # bias2
    np.testing.assert_array_equal(d["dense1.0_conv2"][0], q2)
    np.testing.assert_allclose(d["dense1.0_conv2_scale"][0], a2 * w2, **close)                 # scale3
    np.testing.assert_array_equal(d["dense1.0_conv2_scale"][1], 0)
    _, w0 = codes("conv1", 4)
    np.testing.assert_allclose(d["conv1_scale"][0], w0, **close)                                # first conv
    at = float(s["trans1_act1"][0][0])
    _, wt = codes("trans1_conv1", 4)
    np.testing.assert_allclose(d["trans1_pool_scale"][0], at * wt, **close)                     # transition
    gh, bh, mh, sh = bn("bn")
    np.testing.assert_allclose(d["bn_scale"][0], gh / sh, **close)                              # head
    np.testing.assert_allclose(d["bn_scale"][1], bh - gh * mh / sh, **close)
    qf, wf = codes("fc", 6)
    np.testing.assert_array_equal(d["fc"][0], qf)
    assert qf.min() >= -32 and qf.max() <= 31
    np.testing.assert_allclose(d["fc_scale"][0], wf, **close)
    np.testing.assert_allclose(d["fc_scale"][1], s["fc"][1] * s["fc"][3], **close)            # b ⊙ b_mask


def test_micronet_score_scores_the_merged_net(merged):
    *_, dproto, dmodel, _ = merged
    r = micronet_score(dproto, dmodel)
    kinds = r.by_kind()
    assert set(kinds) >= {"Conv", "Scale", "IntQuant", "AvgPool", "ReLU", "Linear"}
    conv = [l for l in r.layers if l.kind == "Conv"]
    assert conv[0].a_bits == 32 and all(l.a_bits == 4 and l.w_bits == 4 for l in conv[1:])
    assert [(l.a_bits, l.w_bits) for l in r.layers if l.kind == "Linear"] == [(32, 6)]
    assert 0 < r.score < 1e-3


def test_post_training_quantization_of_a_float_fc(tmp_path):
    proto, model = make_student(tmp_path, fc_type="InnerProduct", seed=3)
    r = merge_micronet(proto, model, fc_bits=5)
    fc = [ncio.blob_to_array(b) for l in r.model.layer if l.name == "fc" for b in l.blobs][0]
    assert fc.min() >= -16 and fc.max() <= 15 and np.all(fc == np.rint(fc))
    assert any("fc: 5-bit integer weights" in line and "post-training" in line for line in r.lines)


@pytest.mark.parametrize("kw, edit, match", [
    ({"weight_bits": 6}, None, r"'conv1' \(QuantConvolution\) was trained with 4-bit weights .* --weight-bits says 6"),
    ({}, "uncalibrated", r"layer 'dense1.0_act1' \(ActQuant\): alpha is 0 in the weights: the layer was never calibrated"),
    ({}, "batch_stats", r"layer 'dense1.0_bn1' \(BatchNorm\) uses batch statistics in the TEST phase"),
    ({"output": "nope"}, None, "no layer of the TEST net produces the output blob 'nope'"),
    # (numpy's sqrt of a negative: a RuntimeWarning and NaN weights in the deploy net before; found by the fuzz)
    ({}, "negative_eps", r"layer 'dense1.0_bn2' \(BatchNorm\): cannot fold channel 0: its mean .* variance \+ eps "
                         r".* must be finite and the sum positive"),
    # (a KeyError before; found by the CLI fuzz, seed 777)
    ({}, "shapeless_input", r"the Input layer 'dense1.0_relu2' gives no shape for its top 'dense1.0_relu2' "
                            r"\(0 input_param.shape for 1 top\(s\)\)"),
])
def test_errors_name_the_layer(tmp_path, kw, edit, match):
    from netcompress.errors import NetcompressError

    proto, model = make_student(tmp_path, calibrate=edit != "uncalibrated")
    if edit == "batch_stats":
        p = ncio.read_net(proto)
        next(l for l in p.layer if l.name == "dense1.0_bn1").batch_norm_param.use_global_stats = False
        ncio.write_text_proto(proto, p)
    if edit == "negative_eps":
        p = ncio.read_net(proto)
        next(l for l in p.layer if l.name == "dense1.0_bn2").batch_norm_param.eps = -1e30
        ncio.write_text_proto(proto, p)
    if edit == "shapeless_input":
        p = ncio.read_net(proto)
        next(l for l in p.layer if l.name == "dense1.0_relu2").type = "Input"
        ncio.write_text_proto(proto, p)
    with pytest.raises(NetcompressError, match=match):
        merge_micronet(proto, model, **kw)


def test_command(merged, tmp_path, capsys):
    proto, model, *_ = merged
    out_p, out_m = str(tmp_path / "d.prototxt"), str(tmp_path / "d.caffemodel")
    assert main([proto, model, out_p, out_m, "--weight-bits", "4", "--fc-bits", "6"]) == 0
    out = capsys.readouterr().out
    assert "dense1.0_conv1: 4-bit integer weights in [-8, 7]" in out and "(quantized in training)" in out
    assert "dense1.0_act1: ActQuant -> IntQuant [0, 15]" in out
    assert f"Wrote {out_p} and {out_m}" in out
    assert ncio.read_net(out_p).layer[0].type == "Input"
    assert main([proto, str(tmp_path / "missing.caffemodel"), out_p, out_m]) == 1
    assert "missing.caffemodel does not exist!" in capsys.readouterr().err


def test_report_checks_the_bit_budgets_of_student_and_deploy(merged, capsys):
    from netcompress.tools import report

    proto, model, dproto, dmodel, _ = merged
    r = report.model_report(dproto, dmodel, check="")
    assert all(b["ok"] and b["how"] == "integers" for b in r["bits"])
    assert [b["bits"] for b in r["bits"]] == [4] * 9 + [6]
    s = report.model_report(proto, model, check="")
    assert all(b["ok"] for b in s["bits"]) and [l["counted_by"] for l in s["layers"]] == ["quantized"] * 10
    # the same non-zero weights: the deploy net's integer codes are the student's
    assert [l["w_kept"] for l in r["layers"]] == [l["w_kept"] for l in s["layers"]]
