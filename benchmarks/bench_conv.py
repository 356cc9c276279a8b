"""Convolution benchmark: CPU Convolution layers by ATen (oneDNN, with the channels-last layout rule) and by NNPACK
(the FFT rule, netcompress.layers.vision.cpu_fft_conv), at 1 and 2 threads.

For each shape (a Caffe Convolution layer: batch, input channels, input size, outputs, kernel, pad; stride 1) two
float32 layers with the same weights are built as a net builds them: one with NETCOMPRESS_CONV_ALGO=aten, one
with the rule as it stands (`rule` says whether the FFT rule takes the shape; where it does not, the second layer
is forced onto NNPACK, to show why the rule leaves the shape out). Each is timed, in rotation with the other, for
  fwd      the layer's forward (TEST: no graph)
  fwd+bwd  forward and backward of its top with a fixed gradient: data gradient, weight and bias gradients
and `x` is ATen's time over NNPACK's for fwd+bwd (> 1: NNPACK faster). Before timing, `err` is the larger of the two
layers' deviation from the float64 convolution, relative to the top's largest magnitude (both are a few float32
ulps of it; they differ from each other by about as much, never bit for bit).
The shapes are the ones the rule was set from (benchmarks/RESULTS.md): LeNet's conv2 (the rule's reason), kernels
5-8 on 12-16 inputs (and 4x4), CIFAR-10's conv2 and conv3, a ResNet 3x3 and a wider 3x3 layer (the last five
outside the rule).

A second table, single-channel inputs (the direct rule, netcompress.layers.vision.cpu_direct_conv: LeNet's conv1):
the ATen layer against the rule's direct sums (forced outside the rule), forward and forward+backward without a
data gradient (a first layer's). A third table, pruned kernels (the sparse rule,
netcompress.layers.vision.SPARSE_MAX_DENSITY): the FFT-rule shapes whose shifted input fits the rule, with each
weight kept at random with probability `kept` (as DNS leaves a kernel), both layers given the same pruned
weights: `path` is what the rule layer's forward took (sparse: the sum over the nonzero weights,
ops.sparse_conv2d, and its data gradient ops.sparse_conv2d_input; aten: ATen's forward and NNPACK's gradients),
timed against the ATen layer's fwd and fwd+bwd.

A fourth table, NNPACK's workspace (1 thread): the three NNPACK convolutions of a FFT-rule layer's training step
(forward, data gradient, weight gradient; LeNet's conv2 and the other rule shapes) called in turn, through ATen's
`_nnpack_spatial_convolution` (one workspace per thread for every call) and through `ops.nnpack_conv2d` (which calls
NNPACK itself with a workspace per call shape where libtorch exports NNPACK: `ops.nnpack_calls()`), and each call
repeated on its own (`alone`, the sum). One thread only: ATen's entry would run on NNPACK's one-thread pool.

    python benchmarks/bench_conv.py                  # ~2 minutes on 2 cores
    python benchmarks/bench_conv.py --quick --json /tmp/c.json
"""
from __future__ import annotations

import os
import sys

import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common as C  # noqa: E402

# name: (batch, channels, input size, num_output, kernel, pad)
SHAPES = {
    "lenet-conv2": (64, 20, 12, 50, 5, 0),
    "k5-c32-p2": (64, 32, 12, 32, 5, 2),
    "k5-c64": (64, 64, 12, 64, 5, 0),
    "k4-c20": (64, 20, 11, 50, 4, 0),
    "k7-c20": (64, 20, 14, 50, 7, 0),
    "k8-c20": (64, 20, 15, 50, 8, 0),
    "k5-c8": (64, 8, 12, 16, 5, 0),
    "cifar-conv3": (100, 32, 8, 64, 5, 2),
    "cifar-conv2": (100, 32, 16, 32, 5, 2),
    "resnet-3x3-c64": (128, 64, 8, 64, 3, 1),
    "3x3-c128": (64, 128, 12, 128, 3, 1),
}
QUICK_SHAPES = ("lenet-conv2", "cifar-conv2")
KEPT = (0.1, 0.2, 0.4, 0.6)  # fractions of weights kept in the pruned-kernel table
# single-channel inputs (the direct rule, cpu_direct_conv): LeNet's conv1, the SDN and eps-ResNet examples' first
# layer (3x3, 8 outputs), a wider 3x3, and a padded 5x5 (outside the rule)
DIRECT_SHAPES = {"lenet-conv1": (64, 1, 28, 20, 5, 0), "k3-c1-8": (64, 1, 28, 8, 3, 1),
                 "k3-c1-32": (64, 1, 28, 32, 3, 1), "k5-c1-16-p2": (64, 1, 28, 16, 5, 2)}


def _layer(shape, algo: str | None):
    """A float32 Convolution layer as the net builds it, with NETCOMPRESS_CONV_ALGO=algo while it is built."""
    from google.protobuf import text_format

    from netcompress.layers import LayerContext, create_layer
    from netcompress.layers.vision import CONV_ALGO_ENV
    from netcompress.proto import caffe_pb2 as pb
    from netcompress.rng import CaffeRNG

    n, c, size, o, k, pad = shape
    p = text_format.Parse(f'name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                          f'num_output: {o} kernel_size: {k} pad: {pad} weight_filler {{ type: "xavier" }} '
                          f'bias_filler {{ type: "constant" value: 0.1 }} }}', pb.LayerParameter())
    with C.environ(CONV_ALGO_ENV, algo):
        ctx = LayerContext(phase=pb.TRAIN, dtype=torch.float32, generator=CaffeRNG(1), seed=1, rank=0)
        return create_layer(p, [(n, c, size, size)], ctx)


def _error(layer, x) -> float:
    with torch.no_grad():
        y = layer(x).double()
        want = torch.nn.functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=layer.pad)
    return (y - want).abs().max().item() / want.abs().max().item()


def _time_layers(row: dict, layers: dict, x: torch.Tensor, gy: torch.Tensor, min_time: float,
                 data_grad: bool = True) -> None:
    """Fill `row` with each layer's error (`<key>_err`) and its fwd and fwd+bwd times (`<key>_fwd_ms`,
    `<key>_fwd_bwd_ms` and their iqr), the layers timed in turn for each kind. Without `data_grad` the input
    needs no gradient (a net's first layer)."""
    xg = x.clone().requires_grad_(data_grad)

    def fwd(layer):
        with torch.no_grad():
            layer(x)

    def fwd_bwd(layer):
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        layer(xg).backward(gy)

    for key, layer in layers.items():
        row[f"{key}_err"] = _error(layer, x)
    for kind, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        for key, layer in layers.items():
            t = C.time_fn(lambda: fn(layer), "cpu", min_time=min_time)
            row[f"{key}_{kind}_ms"] = t["s"] * 1e3
            row[f"{key}_{kind}_iqr"] = t["iqr_rel"]


def _setup(shape, threads: int, seed: int):
    """Threads set; a random input and output gradient; the ATen layer and the rule's layer (the layer as the net
    builds it) with the same weights."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    n, c, size = shape[:3]
    x = torch.randn(n, c, size, size, generator=g)
    aten, rule = _layer(shape, "aten"), _layer(shape, None)
    with torch.no_grad():
        rule.weight.copy_(aten.weight)
        rule.bias.copy_(aten.bias)
    gy = torch.randn(aten.top_shapes([tuple(x.shape)])[0], generator=g)
    return g, x, gy, aten, rule


def _nnpack_takes(shape) -> bool:
    """Whether NNPACK can run the shape at all (here, and padding below the kernel), inside the FFT rule or not."""
    from netcompress import ops

    return ops.nnpack_available() and shape[5] < shape[4]


def measure(name: str, threads: int, min_time: float) -> dict:
    shape = SHAPES[name]
    _, x, gy, aten, fft = _setup(shape, threads, 0)
    row = {"shape": name, "threads": threads, "rule": bool(fft._fft)}
    layers = {"aten": aten}
    if _nnpack_takes(shape):
        # outside the rule: the same layer forced onto NNPACK, to show why it is outside
        fft._fft, fft._channels_last = True, False
        layers["nnpack"] = fft
    _time_layers(row, layers, x, gy, min_time)
    if "nnpack" in layers:
        row["speedup"] = row["aten_fwd_bwd_ms"] / row["nnpack_fwd_bwd_ms"]
    return row


def measure_pruned(name: str, kept: float, threads: int, min_time: float) -> dict:
    from netcompress.layers.vision import SPARSE_MAX_DENSITY

    g, x, gy, aten, rule = _setup(SHAPES[name], threads, 1)
    with torch.no_grad():
        aten.weight.mul_(torch.rand(aten.weight.shape, generator=g) < kept)
        rule.weight.copy_(aten.weight)
    density = float(torch.count_nonzero(rule.weight)) / rule.weight.numel()
    row = {"shape": name, "threads": threads, "kept": kept, "density": density,
           "path": "sparse" if density <= SPARSE_MAX_DENSITY else "aten"}
    _time_layers(row, {"aten": aten, "rule": rule}, x, gy, min_time)
    row["speedup_fwd"] = row["aten_fwd_ms"] / row["rule_fwd_ms"]
    row["speedup"] = row["aten_fwd_bwd_ms"] / row["rule_fwd_bwd_ms"]
    return row


def measure_direct(name: str, threads: int, min_time: float) -> dict:
    """A single-channel shape (cpu_direct_conv): the ATen layer against the rule's direct sums."""
    _, x, gy, aten, rule = _setup(DIRECT_SHAPES[name], threads, 2)
    row = {"shape": name, "threads": threads, "rule": bool(rule._direct)}
    rule._direct = True  # outside the rule: forced, to show why it is outside
    _time_layers(row, {"aten": aten, "direct": rule}, x, gy, min_time, data_grad=False)  # a first layer
    row["speedup_fwd"] = row["aten_fwd_ms"] / row["direct_fwd_ms"]
    row["speedup"] = row["aten_fwd_bwd_ms"] / row["direct_fwd_bwd_ms"]
    return row


def pruned_names(names) -> list[str]:
    """The shapes of `names` that the FFT rule takes and whose shifted input fits the sparse rule."""
    from netcompress.layers.vision import cpu_fft_conv, sparse_conv_fits

    out = []
    for name in names:
        n, c, size, o, k, pad = SHAPES[name]
        if (cpu_fft_conv(c, 1, (k, k), (1, 1), (pad, pad), (1, 1), (size, size))
                and sparse_conv_fits(c, (k, k), (pad, pad), (size, size))):
            out.append(name)
    return out


def measure_workspace(name: str, min_time: float) -> dict:
    """The three NNPACK calls of an FFT-rule layer's step in turn, by ATen's entry and by ops.nnpack_conv2d, on one
    thread; and each call repeated alone through the op."""
    from netcompress import ops

    n, c, size, o, k, pad = SHAPES[name]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(n, c, size, size, generator=g), torch.randn(o, c, k, k, generator=g)
    out = size + 2 * pad - k + 1
    gy = torch.randn(n, o, out, out, generator=g)
    # as _FftConv's backward calls them: the flipped kernel with its channel axes swapped; the batch as channels
    calls = [(x, w, (pad, pad)), (gy, w.flip(2, 3).transpose(0, 1).contiguous(), (k - 1 - pad, k - 1 - pad)),
             (x.transpose(0, 1).contiguous(), gy.transpose(0, 1).contiguous(), (pad, pad))]
    for a, b, p in calls:  # the same bits both ways
        assert torch.equal(ops.nnpack_conv2d(a, b, None, p), torch._nnpack_spatial_convolution(a, b, None, p))
    row = {"shape": name, "calls": ops.nnpack_calls()}
    for key, conv in (("aten", torch._nnpack_spatial_convolution), ("op", ops.nnpack_conv2d)):
        row[f"{key}_ms"] = C.time_fn(lambda: [conv(a, b, None, p) for a, b, p in calls], "cpu",
                                     min_time=min_time)["s"] * 1e3
    row["alone_ms"] = sum(C.time_fn(lambda: ops.nnpack_conv2d(a, b, None, p), "cpu", min_time=min_time)["s"] * 1e3
                          for a, b, p in calls)
    return row


def report(result: dict) -> str:
    rows = []
    for r in result["runs"]:
        rows.append({"shape": r["shape"], "t": r["threads"], "rule": "fft" if r["rule"] else "- (forced)",
                     "af": C.fmt(r["aten_fwd_ms"]), "ab": C.fmt(r["aten_fwd_bwd_ms"]),
                     "nf": C.fmt(r.get("nnpack_fwd_ms")), "nb": C.fmt(r.get("nnpack_fwd_bwd_ms")),
                     "x": f"{r['speedup']:.2f}x" if "speedup" in r else None,
                     "err": " / ".join(f"{r[k]:.1e}" for k in ("aten_err", "nnpack_err") if k in r)})
    head = ("shapes: batch x channels x size -> outputs, kernel, pad (stride 1); ms per call, median; "
            "x = ATen fwd+bwd / NNPACK fwd+bwd (rule: the FFT rule takes the shape, or NNPACK forced for this table)")
    out = head + "\n" + C.format_table(rows, [("shape", "shape"), ("t", "threads"), ("rule", "rule"),
                                              ("af", "ATen fwd"), ("ab", "ATen fwd+bwd"), ("nf", "NNPACK fwd"),
                                              ("nb", "NNPACK fwd+bwd"), ("x", "x"), ("err", "err ATen / NNPACK")])
    direct = result.get("direct", [])
    if direct:
        rows = [{"shape": r["shape"], "t": r["threads"], "rule": "direct" if r["rule"] else "- (forced)",
                 "af": C.fmt(r["aten_fwd_ms"]), "df": C.fmt(r["direct_fwd_ms"]), "xf": f"{r['speedup_fwd']:.2f}x",
                 "ab": C.fmt(r["aten_fwd_bwd_ms"]), "db": C.fmt(r["direct_fwd_bwd_ms"]), "x": f"{r['speedup']:.2f}x",
                 "err": f"{r['aten_err']:.1e} / {r['direct_err']:.1e}"} for r in direct]
        out += ("\n\nsingle-channel inputs (the direct rule; fwd+bwd without a data gradient, as a first layer); "
                "x = ATen / direct\n"
                + C.format_table(rows, [("shape", "shape"), ("t", "threads"), ("rule", "rule"),
                                        ("af", "ATen fwd"), ("df", "direct fwd"), ("xf", "x fwd"),
                                        ("ab", "ATen fwd+bwd"), ("db", "direct fwd+bwd"), ("x", "x"),
                                        ("err", "err ATen / direct")]))
    pruned = result.get("pruned", [])
    if pruned:
        rows = [{"shape": r["shape"], "t": r["threads"], "kept": f"{r['density']:.0%}", "path": r["path"],
                 "af": C.fmt(r["aten_fwd_ms"]), "rf": C.fmt(r["rule_fwd_ms"]), "xf": f"{r['speedup_fwd']:.2f}x",
                 "ab": C.fmt(r["aten_fwd_bwd_ms"]), "rb": C.fmt(r["rule_fwd_bwd_ms"]), "x": f"{r['speedup']:.2f}x",
                 "err": f"{r['aten_err']:.1e} / {r['rule_err']:.1e}"} for r in pruned]
        out += ("\n\npruned kernels (weights kept at random; path: the rule layer's forward, sparse = over the nonzero "
                "weights with the data gradient too); x = ATen / rule\n"
                + C.format_table(rows, [("shape", "shape"), ("t", "threads"), ("kept", "nonzero"), ("path", "path"),
                                        ("af", "ATen fwd"), ("rf", "rule fwd"), ("xf", "x fwd"),
                                        ("ab", "ATen fwd+bwd"), ("rb", "rule fwd+bwd"), ("x", "x"),
                                        ("err", "err ATen / rule")]))
    workspace = result.get("workspace", [])
    if workspace:
        rows = [{"shape": r["shape"], "calls": r["calls"], "a": C.fmt(r["aten_ms"]), "o": C.fmt(r["op_ms"]),
                 "x": f"{r['aten_ms'] / r['op_ms']:.2f}x", "alone": C.fmt(r["alone_ms"])} for r in workspace]
        out += ("\n\nNNPACK's workspace, 1 thread: forward, data gradient and weight gradient in turn, ms; x = ATen's "
                "entry / the op; alone = the op's three calls each repeated on its own, summed\n"
                + C.format_table(rows, [("shape", "shape"), ("calls", "op calls NNPACK"), ("a", "ATen's entry"),
                                        ("o", "op"), ("x", "x"), ("alone", "alone")]))
    return out


def run(args) -> dict:
    from netcompress import ops

    names = list(QUICK_SHAPES if args.quick else (args.shapes or SHAPES))
    threads = [1] if args.quick else (args.threads or [1, 2])
    result = {"benchmark": "bench_conv", "machine": C.machine_info(["cpu"]), "nnpack": ops.nnpack_available(),
              "shapes": {k: SHAPES[k] for k in names}, "runs": []}
    old = torch.get_num_threads()
    try:
        for th in threads:
            for name in names:
                r = measure(name, th, 0.0 if args.quick else 0.4)
                result["runs"].append(r)
                C.progress(args, f"[cpu x{th}] {name:16s} aten {r['aten_fwd_bwd_ms']:.3g} ms"
                           + (f"  nnpack {r['nnpack_fwd_bwd_ms']:.3g} ms  {r['speedup']:.2f}x"
                              if "speedup" in r else "")
                           + ("" if r["rule"] else "  (not in the FFT rule)"))
        result["direct"] = []
        for th in threads:
            for name in (list(DIRECT_SHAPES)[:1] if args.quick else DIRECT_SHAPES):
                r = measure_direct(name, th, 0.0 if args.quick else 0.4)
                result["direct"].append(r)
                C.progress(args, f"[cpu x{th}] {name:16s} aten {r['aten_fwd_bwd_ms']:.3g} ms  direct "
                           f"{r['direct_fwd_bwd_ms']:.3g} ms  {r['speedup']:.2f}x")
        result["pruned"] = []
        for th in threads:
            for name in pruned_names(names):
                for kept in (KEPT[1:2] if args.quick else KEPT):
                    r = measure_pruned(name, kept, th, 0.0 if args.quick else 0.4)
                    result["pruned"].append(r)
                    C.progress(args, f"[cpu x{th}] {name:16s} {r['density']:.0%} nonzero ({r['path']}): aten "
                               f"{r['aten_fwd_bwd_ms']:.3g} ms  rule {r['rule_fwd_bwd_ms']:.3g} ms  "
                               f"{r['speedup']:.2f}x")
        result["workspace"] = []
        for name in filter(lambda n: _nnpack_takes(SHAPES[n]), names):
            r = measure_workspace(name, 0.0 if args.quick else 0.4)
            result["workspace"].append(r)
            C.progress(args, f"[cpu x1] {name:16s} NNPACK step: ATen's entry {r['aten_ms']:.3g} ms  op "
                       f"{r['op_ms']:.3g} ms  alone {r['alone_ms']:.3g} ms")
    finally:
        torch.set_num_threads(old)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.argument_parser(__doc__, "a smoke run: two shapes, 1 thread, a few calls")
    p.add_argument("--shapes", type=lambda s: s.split(","), help=f"comma-separated, of {','.join(SHAPES)}")
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], help="thread counts (default 1,2)")
    args = p.parse_args(argv)
    for s in args.shapes or []:
        if s not in SHAPES:
            p.error(f"--shapes: unknown {s!r}; known: {', '.join(SHAPES)}")
    if args.device == "cuda":
        p.error("--device cuda: this benchmark compares CPU convolution algorithms")
    result = run(args)
    print(report(result))
    if args.json:
        C.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
