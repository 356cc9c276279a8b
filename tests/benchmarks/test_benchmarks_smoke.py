"""The benchmark scripts run (--quick, in process) and write valid JSON. Benchmarks measure speed; these
tests only check that the scripts work and what their output holds, never a timing."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _strict_json(path) -> dict:
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=no_constants)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def kernels_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "kernels.json"
    bk = _load("bench_kernels")
    assert bk.main(["--quick", "--device", "cpu", "--silent", "--json", str(out)]) == 0
    return bk, _strict_json(out)


def test_kernels_quick_json(kernels_result, capsys):
    bk, r = kernels_result
    assert r["benchmark"] == "bench_kernels" and r["config"]["quick"] is True
    m = r["machine"]
    assert m["torch"] and m["logical_cpus"] >= 1 and "cpu_model" in m and "load_average_start" in m
    sizes, dtypes = r["config"]["sizes"], r["config"]["dtypes"]
    assert {(c["dtype"], c["n"]) for c in r["copy"]} == {(d, n) for d in dtypes for n in sizes}
    assert all(_positive(c["s"]) and _positive(c["gbps"]) for c in r["copy"])
    names = {o["name"] for o in r["ops"]}
    assert names == {o.name for o in bk.OPS}
    for o in r["ops"]:
        assert o["bytes_per_element"] >= 2 and o["bytes_model"] and o["eager"]
    expected = {(o.name, d, n) for o in bk.OPS for d in o.dtypes if d in dtypes for n in sizes}
    assert {(x["op"], x["dtype"], x["n"]) for x in r["results"]} == expected
    for x in r["results"]:
        assert x["check"] == "ok", x  # the op and its eager composition agree before anything is timed
        assert x["bytes"] == next(o for o in r["ops"] if o["name"] == x["op"])["bytes_per_element"] * x["n"] * (
            4 if x["dtype"] == "float32" else 2)
        for label in ("op", "eager"):
            v = x["variants"][label]
            assert _positive(v["s"]) and _positive(v["gbps"]) and _positive(v["copy_ratio"]) and v["reps"] >= 3
        c = x["variants"]["compile"]
        assert ("s" in c and _positive(c["s"])) or c.get("skipped")
        assert _positive(x["speedup_vs_eager"])
    # --quick compiles the first op only; its compiled timings are there.
    first = [x for x in r["results"] if x["op"] == bk.OPS[0].name]
    assert all("s" in x["variants"]["compile"] for x in first)
    assert r["targets"] == []  # no size reaches 1e6 in a quick run
    # Issue 20's floor over the sizes from 1e4 up (1e5 in a quick run): one row per op and dtype.
    floor = {(f["op"], f["dtype"]): f for f in r["eager_floor"]}
    assert set(floor) == {(x["op"], x["dtype"]) for x in r["results"]}
    for (op, dtype), f in floor.items():
        at = next(x for x in r["results"] if (x["op"], x["dtype"], x["n"]) == (op, dtype, f["at_n"]))
        assert f["at_n"] >= bk.EAGER_FLOOR_MIN_SIZE and f["worst_vs_eager"] == at["speedup_vs_eager"]
        assert f["pass"] == (f["worst_vs_eager"] >= bk.EAGER_FLOOR_TOLERANCE)


def test_kernels_table_printed(kernels_result):
    bk, r = kernels_result
    text = bk.tables(r)
    assert "copy" in text and "dns_update_mask_" in text and "inq_threshold" in text
    assert "no op slower than its eager composition at >= 1e+04 elements" in text


def test_training_quick_json(tmp_path):
    bt = _load("bench_training")
    out = tmp_path / "training.json"
    assert bt.main(["--quick", "--device", "cpu", "--silent", "--json", str(out)]) == 0
    r = _strict_json(out)
    assert r["benchmark"] == "bench_training" and r["config"]["quick"] is True
    runs = r["runs"]
    # the netcompress variants in the CPU's default step mode (eager), then the hand-written PyTorch baseline
    assert [(x["net"], x["variant"], x["step_mode"]) for x in runs] == \
        [("lenet", v, "eager") for v in bt.VARIANTS] + [("lenet", "pytorch", "eager")]
    for x in runs:
        assert x["device"] == "cpu" and x["threads"] == 1 and x["batch"] == 64 and x["block"] == 1
        assert _positive(x["train"]["it_s"]) and _positive(x["train"]["s"]) and x["train"]["iters"] >= 3
        assert set(x["fwd_bwd"]) == {"64"} and _positive(x["fwd_bwd"]["64"]["ms"])
        assert _positive(x["state_mb"]) and math.isfinite(x["loss"])
    # masks double the parameter memory of the compressed variants; the baseline holds params + momentum, as plain
    state = {x["variant"]: x["state_mb"] for x in runs}
    assert state["dns"] > state["plain"] and state["inq"] > state["plain"]
    assert state["pytorch"] == pytest.approx(state["plain"], rel=1e-6)
    assert {(o["variant"]) for o in r["overhead"]} == {"dns", "inq"}
    assert {v["variant"] for v in r["vs_caffe"]} == set(bt.VARIANTS)
    assert all(_positive(v["train_speedup"]) for v in r["vs_caffe"])
    # Caffe's three `time` figures: forward, backward (CPU: timed inside each pass) and forward+backward
    for v in r["vs_caffe"]:
        f = v["fwd_bwd"]["64"]
        assert _positive(f["forward_ms"]) and _positive(f["backward_ms"])
        assert f["forward_ms"] + f["backward_ms"] == pytest.approx(f["ms"], rel=0.5)
        # the compute bound: LeNet's FLOP, its rate, the sgemm rate of the same rotation, Caffe's time over the bound
        assert f["gflop"] == pytest.approx(0.843648) and _positive(f["sgemm_gflops"])
        assert f["gflops"] == pytest.approx(f["gflop"] / f["ms"] * 1e3)
        caffe = 22.4 if v["variant"] == "dns" else 20.7  # the DNS rows against Caffe's DNS LeNet
        assert f["caffe_ms"] == caffe and f["speedup"] == pytest.approx(caffe / f["ms"])
        assert f["max_speedup"] == pytest.approx(caffe / (f["gflop"] / f["sgemm_gflops"] * 1e3))
    for x in runs:  # the hand-written baseline is timed whole
        assert ("forward_ms" in x["fwd_bwd"]["64"]) == (x["variant"] != "pytorch")
    # ratios against the baseline, from the same rotation
    assert [(v["variant"], v["step_mode"]) for v in r["vs_pytorch"]] == [(v, "eager") for v in bt.VARIANTS]
    base = next(x for x in runs if x["variant"] == "pytorch")["train"]["it_s"]
    for v in r["vs_pytorch"]:
        assert v["pytorch_it_s"] == base and v["speed_vs_pytorch"] == pytest.approx(v["it_s"] / base)
    # host work per step at batch 1: op calls counted for every variant and the baseline (no CUDA: no launches)
    host = r["host"]
    assert [(h["variant"], h["step_mode"]) for h in host] == [(v, "eager") for v in bt.VARIANTS] + [("pytorch", "eager")]
    for h in host:
        assert h["batch"] == 1 and h["launches_per_step"] is None and _positive(h["host"]["ms"])
        assert h["dispatches_per_step"] >= 20
    ops = {h["variant"]: h["dispatches_per_step"] for h in host}
    assert ops["dns"] > ops["plain"]  # the surgery's mask updates and masked weights
    text = bt.tables(r)
    assert "== against hand-written PyTorch" in text and "== host work per training step" in text
    assert re.search(r"\nplain +1 +\S+ +\S+x +\S+ ms@64 \(\S+x\) +\S+ \+ \S+@64\n", text)
    assert re.search(r"\ndns +eager +cpu +%.0f +- " % ops["dns"], text)
    assert re.search(r"== LeNet's compute bound .*\n.*\n.*\nplain +1 +64 +0\.844 +\S+ +\S+ +\d+% +\S+ ms +\S+x\n", text)
    # the KD row: the student alone and with its frozen teacher, one ratio from one run
    [kd] = r["kd"]
    assert (kd["net"], kd["device"], kd["threads"], kd["batch"]) == ("lenet", "cpu", 1, 64)
    assert _positive(kd["plain"]["it_s"]) and _positive(kd["kd"]["it_s"]) and _positive(kd["kd_time_vs_plain"])
    assert kd["teacher_frozen"] is True and math.isfinite(kd["loss"])


def test_fwd_bwd_flop_counts_the_lenet_layers():
    # LeNet at batch 64, multiply-accumulates per sample: conv1 20*24*24*25, conv2 50*8*8*500, ip1 800*500, ip2
    # 500*10; forward + weight gradient for all four, the bottom gradient for all but conv1 (its bottom is the data).
    bt = _load("bench_training")
    macs = {"conv1": 20 * 24 * 24 * 25, "conv2": 50 * 8 * 8 * 500, "ip1": 800 * 500, "ip2": 500 * 10}
    expected = 64 * 2 * (3 * sum(macs.values()) - macs["conv1"])
    for variant in bt.VARIANTS:
        assert bt.fwd_bwd_flop(bt.make_solver("lenet", variant, 64, "cpu").net) == expected == 843_648_000


def test_training_step_modes_and_baseline_options(tmp_path):
    # --step-modes runs each netcompress variant in each mode (the deferred one on the CPU too); --no-host and
    # --no-baseline leave those parts out.
    bt = _load("bench_training")
    out = tmp_path / "training.json"
    assert bt.main(["--quick", "--device", "cpu", "--silent", "--variants", "plain", "--step-modes", "auto,deferred",
                    "--no-host", "--no-baseline", "--json", str(out)]) == 0
    r = _strict_json(out)
    assert [(x["variant"], x["step_mode"], x["step_mode_asked"]) for x in r["runs"]] == \
        [("plain", "eager", "auto"), ("plain", "deferred", "deferred")]
    assert r["host"] == [] and r["vs_pytorch"] == []
    with pytest.raises(SystemExit):
        bt.parse_args(["--step-modes", "sometimes"])


def test_training_nets_build():
    # Every net and variant of the full run builds (shapes only; no training).
    bt = _load("bench_training")
    for name in bt.NETS:
        for variant in bt.VARIANTS:
            p = bt.build_net_param(name, variant, 2)
            types = [lp.type for lp in p.layer]
            assert types[0] == "Input" and types[-1] == "SoftmaxWithLoss"
            if variant == "dns":
                assert "DNSConvolution" in types and "Convolution" not in types and "InnerProduct" not in types
            if variant == "inq":
                assert "INQInnerProduct" in types and "Convolution" not in types
    kd = bt.build_kd_net_param("lenet", 2)
    names = [lp.name for lp in kd.layer]
    assert names[-1] == "kd" and "t_conv1" in names and "loss" not in names and "t_loss" not in names
    assert all(s.lr_mult == 0 for lp in kd.layer if lp.name.startswith("t_") for s in lp.param)


def test_eager_compositions_agree_with_the_ops():
    # The compositions the kernel benchmark times in place of per-element or CPU-bound references (the CUDA
    # path among them) compute the ops' results; checked here on the CPU, where CI runs.
    import torch

    from netcompress import ops
    from netcompress.ops import reference as ref

    bk = _load("bench_kernels")
    g = torch.Generator().manual_seed(0)
    w = (0.1 * torch.randn(5000, generator=g))
    m = (torch.rand(5000, generator=g) < 0.7).float()
    torch.testing.assert_close(bk.dns_stats_device(w, m), ops.dns_stats(w, m), rtol=1e-12, atol=0)
    m1, m2, o1, o2 = m.clone(), m.clone(), torch.empty_like(w), torch.empty_like(w)
    ops.dns_update_mask_(w, m1, 0.076, 0.084, o1)
    bk.dns_update_mask_device_(w, m2, 0.076, 0.084, o2)
    assert torch.equal(m1, m2) and torch.equal(o1, o2)
    m3 = torch.randint(0, 3, (5000,), generator=g).float()
    assert torch.equal(bk.inq_mask_stats_device(w, m3), ref.inq_mask_stats(w, m3))
    k = 1234
    assert bk.inq_threshold_sort(w, m, k).item() == ref.inq_threshold(w, m, k).item()
    thr = float(ops.inq_threshold(w, m, k))
    w1, m4, w2, m5 = w.clone(), m.clone(), w.clone(), m.clone()
    ref.inq_quantize_(w1, m4, thr, -7)
    bk.inq_quantize_eager_(w2, m5, thr, -7)
    assert torch.equal(w1, w2) and torch.equal(m4, m5)


def test_cross_device_checks_run():
    # On CUDA every row also compares the op with the CPU op on copies of its inputs (Case.cross); here, where
    # CI runs, both sides are the CPU: the comparison code runs and finds them equal.
    bk = _load("bench_kernels")
    for spec in bk.OPS:
        for dname in spec.dtypes:
            case = spec.make(1000, bk.DTYPES[dname], "cpu", bk._gen("cpu", 1234))  # the quick run's inputs
            assert case.cross is not None and case.cross() == "", (spec.name, dname)


def test_training_rule_variants_build_their_convolutions(monkeypatch):
    """`plain-nchw` (and dns-nchw, inq-nchw) builds its net with NETCOMPRESS_CONV_LAYOUT=nchw, `-aten` with
    NETCOMPRESS_CONV_ALGO=aten, both suffixes both, and only that net: the same rotation then measures a rule's
    gain. Unknown variants are refused."""
    bt = _load("bench_training")
    from netcompress import ops
    from netcompress.layers.vision import CONV_ALGO_ENV, CONV_LAYOUT_ENV
    monkeypatch.delenv(CONV_LAYOUT_ENV, raising=False)
    monkeypatch.delenv(CONV_ALGO_ENV, raising=False)
    names = ["plain", "plain-nchw", "dns-nchw", "plain-aten", "inq-aten-nchw"]
    assert bt.parse_args(["--variants", ",".join(names)]).variants == names
    for bad in ("plain-nhwc", "aten", "plain-aten-x"):
        with pytest.raises(SystemExit):
            bt.parse_args(["--variants", bad])
    conv2 = {v: bt.make_solver("lenet", v, 64, "cpu").net.layer("conv2") for v in names}
    fft = ops.nnpack_available()
    onednn = torch.backends.mkldnn.is_available()
    assert conv2["plain"]._fft == fft and conv2["plain-nchw"]._fft == fft and conv2["dns-nchw"]._fft == fft
    assert not conv2["plain-aten"]._fft and conv2["plain-aten"]._channels_last == onednn
    assert not conv2["inq-aten-nchw"]._fft and not conv2["inq-aten-nchw"]._channels_last
    assert not conv2["plain-nchw"]._channels_last and not conv2["dns-nchw"]._channels_last
    assert type(conv2["dns-nchw"]).__name__ == "DNSConvolution"
    assert type(conv2["inq-aten-nchw"]).__name__ == "INQConvolution"
    assert CONV_LAYOUT_ENV not in os.environ and CONV_ALGO_ENV not in os.environ  # put back as they were


def test_conv_benchmark_quick(tmp_path, capsys):
    """bench_conv --quick: LeNet's conv2 in the FFT rule and CIFAR-10's conv2 outside it, both timed by ATen and
    (where NNPACK runs here) by NNPACK, each within float32 rounding of the float64 convolution."""
    bc = _load("bench_conv")
    from netcompress import ops
    out = tmp_path / "conv.json"
    assert bc.main(["--quick", "--silent", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lenet-conv2" in text and "cifar-conv2" in text
    result = _strict_json(out)
    runs = {r["shape"]: r for r in result["runs"]}
    assert set(runs) == {"lenet-conv2", "cifar-conv2"} and result["nnpack"] == ops.nnpack_available()
    assert runs["lenet-conv2"]["rule"] == ops.nnpack_available() and runs["cifar-conv2"]["rule"] is False
    for r in runs.values():
        keys = ["aten"] + (["nnpack"] if result["nnpack"] else [])
        for k in keys:
            assert _positive(r[f"{k}_fwd_ms"]) and _positive(r[f"{k}_fwd_bwd_ms"])
            assert 0 <= r[f"{k}_err"] < 1e-5
        assert ("speedup" in r) == result["nnpack"]
    # the single-channel table: LeNet's conv1 by the direct rule, within float32 rounding
    (d,) = result["direct"]
    assert d["shape"] == "lenet-conv1" and d["rule"] is True and "single-channel inputs" in text
    assert all(_positive(d[k]) for k in ("aten_fwd_ms", "direct_fwd_ms", "aten_fwd_bwd_ms", "direct_fwd_bwd_ms"))
    assert 0 <= d["aten_err"] < 1e-5 and 0 <= d["direct_err"] < 1e-5
    # the pruned-kernel table: LeNet's conv2 (in the FFT rule where NNPACK runs) with 20 % of its weights kept takes
    # the sum over the nonzero weights, within float32 rounding too
    pruned = result["pruned"]
    assert [(r["shape"], r["kept"]) for r in pruned] == ([("lenet-conv2", 0.2)] if result["nnpack"] else [])
    for r in pruned:
        assert r["path"] == "sparse" and 0.1 < r["density"] < 0.3 and "pruned kernels" in text
        assert all(_positive(r[k]) for k in ("aten_fwd_ms", "rule_fwd_ms", "aten_fwd_bwd_ms", "rule_fwd_bwd_ms"))
        assert 0 <= r["aten_err"] < 1e-5 and 0 <= r["rule_err"] < 1e-5
    # the workspace table: NNPACK's calls of a step by ATen's entry and by the op (same bits: checked before timing)
    workspace = result["workspace"]
    assert [r["shape"] for r in workspace] == (["lenet-conv2", "cifar-conv2"] if result["nnpack"] else [])
    for r in workspace:
        assert r["calls"] == ops.nnpack_calls() and "NNPACK's workspace" in text
        assert all(_positive(r[k]) for k in ("aten_ms", "op_ms", "alone_ms"))
    with pytest.raises(SystemExit):
        bc.main(["--shapes", "nope"])


def test_data_benchmark_quick(tmp_path, capsys):
    """bench_data --quick: each backend here (LMDB; LevelDB with plyvel) timed through the library, the reader and
    a Data layer, a positive figure each, the library row the ratios' base."""
    bd = _load("bench_data")
    out = tmp_path / "data.json"
    assert bd.main(["--quick", "--silent", "--records", "300", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = _strict_json(out)
    backends = ["lmdb"] + (["leveldb"] if importlib.util.find_spec("plyvel") else [])
    assert result["benchmark"] == "bench_data" and result["config"]["backends"] == backends
    rows = result["results"]
    assert [(r["backend"], r["path"]) for r in rows] == [(b, p) for b in backends
                                                          for p in ("library", "reader", "layer")]
    for r in rows:
        assert _positive(r["us_per_record"]) and _positive(r["x_library"]) and r["threads"] == 1
        assert r["records"] == (64 if r["path"] == "layer" else 300)
        assert (r["x_library"] == 1.0) == (r["path"] == "library")
    assert "us/record" in text and all(b in text for b in backends)


def test_model_io_benchmark_quick(tmp_path, capsys):
    """bench_model_io --quick: LeNet's caffemodel written both ways and read, a positive figure each, the list-filled
    write the ratios' base; the file it times is the one the packed path writes."""
    bm = _load("bench_model_io")
    out = tmp_path / "io.json"
    assert bm.main(["--quick", "--silent", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = _strict_json(out)
    assert result["benchmark"] == "bench_model_io" and result["config"]["net"] == "lenet"
    rows = result["results"]
    assert [r["variant"] for r in rows] == ["write-py", "write", "read"]
    for r in rows:
        assert r["values"] == 431080 and _positive(r["s"]) and _positive(r["mib_per_s"]) and _positive(r["x_py"])
    assert rows[0]["x_py"] == 1.0 and "MiB/s" in text
