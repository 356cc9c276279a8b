"""`micronet_score` (recipes-spec 4.12, 5.5, Q15, T1) on deploy nets built here.

The released checkpoint is not a fixture (no licence), so the counts are checked two ways:
- a tiny integer net with hand-worked per-layer numbers, and every score type in both count modes
  against formulas written here from the words of section 4.12;
- the released net's *shapes* (DenseNet-BC 100/12, made by make_densenet) with synthetic weights
  that have the published non-zero counts (conv 177,806 with 427 in the first convolution; FC
  17,099). Everything section 4.12 publishes that does not depend on the per-channel pattern of
  the convolution weights must come out: #Params 49,805.5625 (faithful) and 62,203.0625
  (corrected), the Scale / AvgPool / ReLU / Linear breakdown, the differences between score types,
  and the fractional parts of the totals. The per-type Conv ops (24,900,511.6296) and the full
  totals need the checkpoint's per-channel sparsity, which the spec does not give.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.proto import caffe_pb2 as pb
from netcompress.commands import load_command
from netcompress.tools._common import ToolError
from netcompress.tools.densenet import DenseNetConfig, densenet_net
from netcompress.tools.micronet import deploy_layers, micronet_score, score_main

TINY = """
name: "tiny_final"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "b_scale1" type: "Scale" bottom: "conv1" top: "b_s1" scale_param { bias_term: true } }
layer { name: "b_quant1" type: "IntQuant" bottom: "b_s1" top: "b_s1" int_quant_param { low: 0 high: 15 } }
layer { name: "b_conv1" type: "Convolution" bottom: "b_s1" top: "b_c1"
        convolution_param { num_output: 6 kernel_size: 1 bias_term: false } }
layer { name: "b_scale2" type: "Scale" bottom: "b_c1" top: "b_c1" scale_param { bias_term: true } }
layer { name: "b_quant2" type: "IntQuant" bottom: "b_c1" top: "b_c1" int_quant_param { low: 0 high: 15 } }
layer { name: "b_conv2" type: "Convolution" bottom: "b_c1" top: "b_c2"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "b_scale3" type: "Scale" bottom: "b_c2" top: "b_c2" scale_param { bias_term: true } }
layer { name: "concat" type: "Concat" bottom: "conv1" bottom: "b_c2" top: "cat" }
layer { name: "t_scale1" type: "Scale" bottom: "cat" top: "t_s1" scale_param { bias_term: true } }
layer { name: "t_quant1" type: "IntQuant" bottom: "t_s1" top: "t_s1" int_quant_param { low: 0 high: 15 } }
layer { name: "t_conv1" type: "Convolution" bottom: "t_s1" top: "t_c1"
        convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
layer { name: "t_pool" type: "Pooling" bottom: "t_c1" top: "t" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "t_scale2" type: "Scale" bottom: "t" top: "t" scale_param { bias_term: true } }
layer { name: "scale2" type: "Scale" bottom: "t" top: "s2" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "s2" top: "s2" }
layer { name: "avgpool" type: "Pooling" bottom: "s2" top: "pool" pooling_param { pool: AVE kernel_size: 4 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5 bias_term: false } }
layer { name: "scale3" type: "Scale" bottom: "fc" top: "fc" scale_param { bias_term: true } }
"""

# weight layer -> (shape, non-zeros per output channel)
TINY_WEIGHTS = {
    "conv1": ((4, 3, 3, 3), [27, 13, 5, 1]),
    "b_conv1": ((6, 4, 1, 1), [4, 3, 2, 1, 0, 4]),
    "b_conv2": ((2, 6, 3, 3), [54, 17]),
    "t_conv1": ((3, 6, 1, 1), [6, 0, 3]),
    "fc": ((5, 3), [3, 2, 1, 0, 3]),
}
# Scale -> (channels, bias): "zero", "set" (all non-zero) or "first0" (bias[0] == 0, the rest not)
TINY_SCALES = {"scale1": (4, "zero"), "b_scale1": (4, "set"), "b_scale2": (6, "first0"),
               "b_scale3": (2, "zero"), "t_scale1": (6, "set"), "t_scale2": (3, "zero"),
               "scale2": (3, "set"), "scale3": (5, "set")}


def sparse_rows(shape, row_nnz, rng, low=-8, high=8) -> np.ndarray:
    """Integer weights with exactly row_nnz[c] non-zeros in output channel c."""
    c, k = shape[0], int(np.prod(shape[1:]))
    w = np.zeros((c, k), np.float32)
    for r, n in enumerate(row_nnz):
        vals = rng.integers(low, high - 1, n)
        vals[vals >= 0] += 1  # skip 0: values in [low, high) without 0
        w[r, rng.permutation(k)[:n]] = vals
    return w.reshape(shape)


def scale_blobs(c: int, bias: str, rng) -> list[np.ndarray]:
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    b = rng.uniform(0.5, 2, c).astype(np.float32) * rng.choice([-1, 1], c)
    if bias == "zero":
        b[:] = 0
    elif bias == "first0":
        b[0] = 0
    return [gamma, b]


def write_model(path, prototxt_text: str, blobs: dict[str, list[np.ndarray]]) -> None:
    net = text_format.Parse(prototxt_text, pb.NetParameter())
    model = pb.NetParameter(name=net.name)
    for lp in net.layer:
        if lp.name in blobs:
            l = model.layer.add(name=lp.name, type=lp.type)
            for a in blobs[lp.name]:
                ncio.array_to_blob(a, l.blobs.add())
    ncio.write_caffemodel(str(path), model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    blobs = {n: [sparse_rows(s, r, rng)] for n, (s, r) in TINY_WEIGHTS.items()}
    blobs.update({n: scale_blobs(c, b, rng) for n, (c, b) in TINY_SCALES.items()})
    (d / "deploy.prototxt").write_text(TINY)
    write_model(d / "m.caffemodel", TINY, blobs)
    return str(d / "deploy.prototxt"), str(d / "m.caffemodel"), blobs


def by_name(r):
    return {l.name: l for l in r.layers}


# -- hand-worked numbers ------------------------------------------------------------------------

def test_tiny_net_type0_faithful_by_hand(tiny):
    proto, model, _ = tiny
    r = by_name(micronet_score(proto, model, 0))
    # b_conv1: 6 x 4 weights, 14 non-zero, 8x8 outputs, a = w = 4. Multiplications 14*64*4/32 = 112.
    # Adder trees of 4+4 = 8 bits over rows of 4, 3, 2, 1, 0, 4 terms: 25 + 17 + 8 + 0 + 0 + 25 = 75
    # (4 terms: 2 adds of 8 bits + 1 of 9), times 64 / 32 = 150. Params (24 + 14*4)/32 = 2.5.
    assert (r["b_conv1"].ops, r["b_conv1"].params) == (262.0, 2.5)
    # conv1, the first layer: 32-bit activations. 46 of 108 non-zero: mult 46*64*32/32 = 2944,
    # adds 46/108 * 64 * 4 * 26 (K - 1 = 26 per output), params (108 + 46*4)/32 = 9.125.
    assert r["conv1"].ops == pytest.approx(2944 + 46 / 108 * 64 * 4 * 26, rel=1e-15)
    assert r["conv1"].params == 9.125 and (r["conv1"].a_bits, r["conv1"].w_bits) == (32, 4)
    # fc, the last: a = 32, w = 6, 9 of 15 non-zero: mult 9*32/32 = 9, adds 9/15*5*2 = 6.
    assert (r["fc"].ops, r["fc"].params) == (pytest.approx(15.0, rel=1e-15), 69 / 32)
    assert (r["fc"].a_bits, r["fc"].w_bits) == (32, 6)
    # Scale on 4x8x8 with a bias: 256 ops, 1 parameter (the batch, not the 4 channels)
    assert (r["b_scale1"].ops, r["b_scale1"].params) == (256.0, 1.0)
    # bias[0] == 0 reads as "no bias": 6*64/2 ops, 0.5 parameter
    assert (r["b_scale2"].ops, r["b_scale2"].params) == (192.0, 0.5)
    assert (r["scale1"].ops, r["scale1"].params) == (128.0, 0.5)
    # 2x2 pooling over 3x4x4 outputs: (k + ...) with k = 2, not 4: 2 * 48 / 2; the final 4x4: 4 * 3 / 2
    assert r["t_pool"].ops == 48.0 and r["avgpool"].ops == 6.0
    assert r["relu"].ops == 24.0 and r["b_quant1"].ops == 0.0 and r["concat"].ops == 0.0


def test_tiny_net_corrected_by_hand(tiny):
    proto, model, _ = tiny
    r = by_name(micronet_score(proto, model, 0, count="corrected"))
    assert (r["b_scale1"].ops, r["b_scale1"].params) == (256.0, 4.0)
    assert (r["b_scale2"].ops, r["b_scale2"].params) == (384.0, 6.0)  # a bias, though bias[0] is 0
    assert (r["scale1"].ops, r["scale1"].params) == (128.0, 2.0)
    assert r["t_pool"].ops == 96.0 and r["avgpool"].ops == 24.0  # k x k: 4 * 48 / 2, 16 * 3 / 2


def test_tiny_net_fixed_width_by_hand(tiny):
    proto, model, _ = tiny
    f = by_name(micronet_score(proto, model, 1))
    c = by_name(micronet_score(proto, model, 1, count="corrected"))
    # b_conv1, K = 4: floor(log2(15 * 7 * 4 = 420)) + 1 = 9 bits per addition, (n - 1) per row:
    # 3 + 2 + 1 + 0 - 1 + 3 = 8 (the empty row counts -1), times 64 / 32: 144; corrected 9 x 9 x 2.
    assert f["b_conv1"].ops == 112 + 144 and c["b_conv1"].ops == 112 + 162
    assert f["b_conv1"].rule == "fixed 9b"
    # conv1 (a = 32): the fixed-width hook divides its 32-bit additions by 32 once more
    full = 46 / 108 * 64 * 4 * 26
    assert f["conv1"].ops == pytest.approx(2944 + full / 32, rel=1e-15)
    assert c["conv1"].ops == pytest.approx(2944 + full, rel=1e-15)
    # FP32 Scale / AvgPool rules (type 3): a biased Scale numel/2 + numel; pooling (k-1) n + n/2
    s = by_name(micronet_score(proto, model, 3))
    assert s["b_scale1"].ops == 128 + 256 and s["b_scale2"].ops == 192.0
    assert s["t_pool"].ops == 1 * 48 + 24 and s["avgpool"].ops == 3 * 3 + 1.5


# -- every type and both modes, against the rules written out here ------------------------------

RULES = {0: ("tree", "fp16", "fp16"), 1: ("fixed", "fp16", "fp16"), 2: ("fp32", "fp32", "fp32"),
         3: ("fixed", "fp32", "fp32"), 4: ("tree", "fp32", "fp32"), 5: ("tree", "fp16", "fp32"),
         6: ("fixed", "fp16", "fp32")}


def tree(base: int, n: int) -> int:
    """Section 4.12: per level floor(len/2) additions of base_level bits, len <- ceil(len/2)."""
    total = 0
    while n > 1:
        total += (n // 2) * base
        n = math.ceil(n / 2)
        base += 1
    return total


def expected_weight_layer(w, hw, a, b, rule, faithful, linear):
    rows = np.count_nonzero(w.reshape(w.shape[0], -1), axis=1)
    n_all, nnz, C = w.size, int(rows.sum()), w.shape[0]
    K = n_all / C
    ops = nnz * hw * max(a, b) / 32
    if linear or rule == "fp32" or a == 32:
        add = nnz / n_all * hw * C * (K - 1)
        if a == 32 and rule == "fixed" and not linear and faithful:
            add /= 32
    elif rule == "tree":
        add = sum(tree(a + b, int(n)) for n in rows) * hw / 32
    else:
        bits = math.floor(math.log2((2 ** a - 1) * (2 ** (a - 1) - 1) * K)) + 1
        add = sum(bits * ((n - 1) if faithful else max(n - 1, 0)) for n in rows) * hw / 32
    return ops + add, (n_all + nnz * b) / 32


def expected_tiny(blobs, score_type, faithful):
    conv_rule, scale_rule, pool_rule = RULES[score_type]
    ops = params = 0.0
    hw = {"conv1": 64, "b_conv1": 64, "b_conv2": 64, "t_conv1": 64, "fc": 1}
    bits = {"conv1": (32, 4), "b_conv1": (4, 4), "b_conv2": (4, 4), "t_conv1": (4, 4), "fc": (32, 6)}
    for name in TINY_WEIGHTS:
        o, p = expected_weight_layer(blobs[name][0], hw[name], *bits[name], conv_rule, faithful, name == "fc")
        ops, params = ops + o, params + p
    numel = {"scale1": 256, "b_scale1": 256, "b_scale2": 384, "b_scale3": 128, "t_scale1": 384,
             "t_scale2": 48, "scale2": 48, "scale3": 5}
    for name, (c, _) in TINY_SCALES.items():
        bias = blobs[name][1]
        zero = bias[0] == 0 if faithful else not bias.any()
        cc = 1 if faithful else c
        n = numel[name]
        if zero:
            ops, params = ops + n / 2, params + cc / 2
        else:
            ops, params = ops + (n if scale_rule == "fp16" else 1.5 * n), params + cc
    for k, out in ((2, 48), (4, 3)):
        kk = k if faithful else k * k
        ops += kk * out / 2 if pool_rule == "fp16" else (kk - 1) * out + out / 2
    ops += 48 / 2  # ReLU
    return ops, params


@pytest.mark.parametrize("count", ["faithful", "corrected"])
@pytest.mark.parametrize("score_type", range(7))
def test_tiny_net_every_type_and_mode(tiny, score_type, count):
    proto, model, blobs = tiny
    r = micronet_score(proto, model, score_type, count=count)
    ops, params = expected_tiny(blobs, score_type, count == "faithful")
    assert r.ops == pytest.approx(ops, rel=1e-12)
    assert r.params == pytest.approx(params, rel=1e-12)
    assert r.op_score == pytest.approx(ops / 10.49e9, rel=1e-12)
    assert r.param_score == pytest.approx(params / 36.5e6, rel=1e-12)
    assert r.score == r.op_score + r.param_score


def test_bits_reference_and_input_options(tiny):
    proto, model, _ = tiny
    base = by_name(micronet_score(proto, model, 0))
    r = micronet_score(proto, model, 0, act_bits="b_conv1=8", weight_bits="default=4,b_conv2=2",
                       reference="imagenet")
    l = by_name(r)
    assert (l["b_conv1"].a_bits, l["b_conv1"].w_bits) == (8, 4)
    assert (l["b_conv2"].a_bits, l["b_conv2"].w_bits) == (4, 2)
    assert (l["conv1"].a_bits, l["fc"].w_bits) == (32, 6)  # the defaults still apply elsewhere
    assert l["b_conv2"].params == (108 + 71 * 2) / 32 != base["b_conv2"].params
    assert r.op_score == pytest.approx(r.ops / 1170e6) and r.param_score == pytest.approx(r.params / 6.9e6)


def test_input_option_sets_the_shape(tmp_path):
    text = TINY.split('layer { name: "b_scale1"')[0]  # Input, conv1, scale1
    (tmp_path / "n.prototxt").write_text(text)
    rng = np.random.default_rng(1)
    write_model(tmp_path / "n.caffemodel", text, {"conv1": [sparse_rows((4, 3, 3, 3), [27, 13, 5, 1], rng)],
                                                    "scale1": scale_blobs(4, "set", rng)})
    small = by_name(micronet_score(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel")))
    big = by_name(micronet_score(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"), input_shape=(3, 16, 16)))
    assert small["scale1"].ops == 256 and big["scale1"].ops == 1024
    assert big["scale1"].shape == (1, 4, 16, 16) and big["conv1"].ops == pytest.approx(4 * small["conv1"].ops)


# -- the released net's shapes (section 4.12's published numbers) ------------------------------

PUBLISHED = {  # type: #ops of Score.md
    0: 29_420_863.632553607, 1: 40_589_889.9288, 2: 75_308_930.8408, 3: 42_748_064.9288,
    4: 31_579_038.6326, 5: 29_440_684.6326, 6: 40_609_710.9288,
}


@pytest.fixture(scope="module")
def released_shapes(tmp_path_factory):
    """make_densenet's deploy DenseNet-BC 100/12 with weights of the released model's counts."""
    d = tmp_path_factory.mktemp("released")
    text = text_format.MessageToString(densenet_net(DenseNetConfig(100, 12, num_classes=100), "deploy"))
    (d / "deploy.prototxt").write_text(text)
    _, layers = deploy_layers(str(d / "deploy.prototxt"))
    rng = np.random.default_rng(7)
    convs = [dl for dl in layers if dl.type == "Convolution"]
    assert sum(math.prod(dl.blob_shapes[0]) for dl in convs) == 741_744  # section 4.9
    blobs: dict[str, list[np.ndarray]] = {}
    # conv1: 427 of 648 non-zero (65.9 %); the rest 177,806 - 427 spread at random
    first = np.zeros(648, np.float32)
    first[rng.permutation(648)[:427]] = rng.choice([-8, -3, 1, 7], 427)
    blobs["conv1"] = [first.reshape(convs[0].blob_shapes[0])]
    rest = sum(math.prod(dl.blob_shapes[0]) for dl in convs[1:])
    flat = np.zeros(rest, np.float32)
    flat[rng.permutation(rest)[:177_806 - 427]] = rng.choice([-8, -5, -1, 2, 7], 177_806 - 427)
    at = 0
    for dl in convs[1:]:
        n = math.prod(dl.blob_shapes[0])
        blobs[dl.name] = [flat[at:at + n].reshape(dl.blob_shapes[0])]
        at += n
    fc = np.zeros(34_200, np.float32)
    fc[rng.permutation(34_200)[:17_099]] = rng.choice([-29, -4, 3, 31], 17_099)
    blobs["fc"] = [fc.reshape(100, 342)]
    zero_bias = 0
    for dl in layers:
        if dl.type == "Scale":
            # 4.9: the first conv's scale, every bottleneck's scale3 and every transition's scale2
            # de-quantize with bias 0; the other 100 fold a BatchNorm and have one.
            zero = (dl.name == "scale1" or dl.name.endswith("_scale3")
                    or dl.name.startswith("trans") and dl.name.endswith("_scale2"))
            kind = "zero" if zero else "set"
            zero_bias += zero
            blobs[dl.name] = scale_blobs(dl.blob_shapes[0][0], kind, rng)
    assert zero_bias == 51 and sum(dl.type == "Scale" for dl in layers) == 151  # section 4.9
    write_model(d / "m.caffemodel", text, blobs)
    results = {t: micronet_score(str(d / "deploy.prototxt"), str(d / "m.caffemodel"), t) for t in range(7)}
    results["corrected"] = micronet_score(str(d / "deploy.prototxt"), str(d / "m.caffemodel"), 0,
                                          count="corrected")
    return results


def test_t1_params_faithful_and_corrected(released_shapes):
    for t in range(7):
        assert released_shapes[t].params == 49_805.5625  # exactly, every type
    assert released_shapes["corrected"].params == 62_203.0625
    assert released_shapes[0].param_score == pytest.approx(0.001365, abs=5e-7)


def test_t1_type0_breakdown_by_layer_type(released_shapes):
    k = released_shapes[0].by_kind()
    assert k["Conv"][1] == 45_405.25
    assert k["Scale"] == (4_436_644.0, 125.5)
    assert k["AvgPool"] == (38_616.0, 0.0)
    assert k["ReLU"] == (10_944.0, 0.0)
    assert k["Linear"][0] == pytest.approx(34_148.0029, abs=1e-4)
    assert k["Linear"][1] == 4_274.8125
    assert k["IntQuant"] == (0.0, 0.0)


def test_t1_differences_between_score_types(released_shapes):
    ops = {t: released_shapes[t].ops for t in range(7)}
    # types differing only in the Scale and AvgPool rules differ by what the shapes decide
    for a, b in ((0, 5), (0, 4), (1, 6), (1, 3), (5, 4)):
        assert ops[b] - ops[a] == pytest.approx(PUBLISHED[b] - PUBLISHED[a], abs=2e-3), (a, b)
    assert ops[5] - ops[0] == pytest.approx(19_821, abs=1e-6)
    assert ops[4] - ops[0] == pytest.approx(2_158_175, abs=1e-6)


@pytest.mark.parametrize("score_type", [0, 1, 4, 5, 6])
def test_t1_fractional_parts_pin_the_first_conv_and_fc_rules(released_shapes, score_type):
    """All other terms are whole numbers here, so the fraction of #OPs comes from the first conv's
    32-bit additions (427 x 26624 / 27, divided again by 32 in the fixed types) and the FC's
    (17099 x 341 / 342): it must equal the published one."""
    got = released_shapes[score_type].ops % 1
    want = PUBLISHED[score_type] % 1
    assert got == pytest.approx(want, abs=1e-4 if score_type else 1e-7)


def test_t1_published_score_arithmetic():
    # the final score is ops / 10.49e9 + params / 36.5e6 (T1: 0.0041691940744954924 for type 0)
    from netcompress.tools.micronet import REFERENCES

    ref_ops, ref_params = REFERENCES["cifar100"]
    assert PUBLISHED[0] / ref_ops + 49_805.5625 / ref_params == 0.0041691940744954924


# -- command line and errors -------------------------------------------------------------------

def test_command_prints_the_sources_lines_and_json(tiny, tmp_path, capsys):
    proto, model, _ = tiny
    out = tmp_path / "score.json"
    assert load_command("micronet_score") is score_main
    assert score_main([proto, model, "--score-type", "2", "--count", "corrected", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = micronet_score(proto, model, 2, count="corrected")
    for line in (f"#OPs: {r.ops!r}", f"#Params: {r.params!r}", f"OP score: {r.op_score!r}",
                 f"Param score: {r.param_score!r}", f"Final score: {r.score!r}"):
        assert line in text.splitlines()
    assert "b_conv1" in text and "per layer type" in text
    doc = json.loads(out.read_text())
    assert doc["score"] == r.score and doc["by_type"]["Scale"]["params"] == r.by_kind()["Scale"][1]


def _variant(tmp_path, old: str, new: str) -> str:
    p = tmp_path / "v.prototxt"
    p.write_text(TINY.replace(old, new))
    return str(p)


@pytest.mark.parametrize("old, new, match", [
    ('type: "ReLU"', 'type: "Sigmoid"', "layer 'relu' \\(Sigmoid\\): no MicroNet counting rule"),
    ("pool: AVE kernel_size: 4", "pool: MAX kernel_size: 4", "layer 'avgpool'.*only average pooling"),
    ("num_output: 6 kernel_size: 1 bias_term: false", "num_output: 6 kernel_size: 1",
     "layer 'b_conv1' \\(Convolution\\) has a bias"),
])
def test_unscorable_layers_are_named(tiny, tmp_path, old, new, match):
    _, model, _ = tiny
    with pytest.raises(ToolError, match=match):
        micronet_score(_variant(tmp_path, old, new), model)


def test_errors_name_what_is_wrong(tiny, tmp_path, capsys):
    proto, model, _ = tiny
    with pytest.raises(ToolError, match="b_conv9 is not a Convolution or InnerProduct layer"):
        micronet_score(proto, model, act_bits="b_conv9=8")
    with pytest.raises(ToolError, match="expected KEY=BITS"):
        micronet_score(proto, model, weight_bits="default=four")
    other = tmp_path / "other.caffemodel"
    write_model(other, TINY, {"conv1": [np.ones((4, 3, 3, 3), np.float32)]})
    with pytest.raises(ToolError, match="stores no blobs for layer 'scale1'"):
        micronet_score(proto, str(other))
    assert score_main([proto, str(tmp_path / "missing.caffemodel")]) == 1
    assert "missing.caffemodel does not exist" in capsys.readouterr().err
