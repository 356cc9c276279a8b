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


def measure(name: str, threads: int, min_time: float) -> dict:
    from netcompress import ops

    shape = SHAPES[name]
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    n, c, size = shape[:3]
    x = torch.randn(n, c, size, size, generator=g)
    aten = _layer(shape, "aten")
    fft = _layer(shape, None)
    row = {"shape": name, "threads": threads, "rule": bool(fft._fft)}
    layers = {"aten": aten}
    if ops.nnpack_available() and shape[5] < shape[4]:
        # outside the rule: the same layer forced onto NNPACK, to show why it is outside
        fft._fft, fft._channels_last = True, False
        fft.weight.data.copy_(aten.weight.data)
        fft.bias.data.copy_(aten.bias.data)
        layers["nnpack"] = fft
    gy = torch.randn(aten.top_shapes([tuple(x.shape)])[0], generator=g)
    xg = x.clone().requires_grad_()

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
    if "nnpack" in layers:
        row["speedup"] = row["aten_fwd_bwd_ms"] / row["nnpack_fwd_bwd_ms"]
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
    return head + "\n" + C.format_table(rows, [("shape", "shape"), ("t", "threads"), ("rule", "rule"),
                                               ("af", "ATen fwd"), ("ab", "ATen fwd+bwd"), ("nf", "NNPACK fwd"),
                                               ("nb", "NNPACK fwd+bwd"), ("x", "x"), ("err", "err ATen / NNPACK")])


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
