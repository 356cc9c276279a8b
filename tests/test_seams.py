"""The seams recipes build on (docs/architecture.md): the core knows no recipe by name, DNS trains
through the fused ops, and training callbacks run at their documented points."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver
from netcompress.solvers.callbacks import TrainingCallback

REPO = Path(__file__).resolve().parents[1]
CORE = ["netcompress/net.py", "netcompress/distributed.py", "netcompress/cli.py",
        *sorted(str(p.relative_to(REPO)) for p in (REPO / "netcompress" / "solvers").glob("*.py"))]
# Every recipe of the toolbox by the words its code uses: DNS/INQ, KD, Net2Net, SNIP/Shallow-Deep/growth,
# epsilon-ResNet, MicroNet (pruning, quantization). Docstrings and comments count too: the core describes
# its mechanisms (masks, update masks, layer state, callbacks), the recipe modules say who uses them.
RECIPE_WORDS = re.compile(r"dns|inq|surgery|splic|snip|sdn|shallow.deep|growth|eresnet|epsilon|ε|micronet|"
                          r"net2net|net2wider|net2deeper|distill|\bkd\b|kd_|teacher|prune|pruning|quant|inria",
                          re.I)


def test_the_core_names_no_recipe():
    found = [f"{f}:{n}: {line.strip()}" for f in CORE
             for n, line in enumerate((REPO / f).read_text(encoding="utf-8").splitlines(), 1)
             if RECIPE_WORDS.search(line)]
    assert not found, "recipe names in the core (move them into the recipe's layer, callback or command):\n" + \
        "\n".join(found)


def test_the_recipe_words_catch_a_recipe_name():
    # the scan above can fail: each recipe's own modules are full of its words
    for f in ("netcompress/layers/dns.py", "netcompress/layers/inq.py", "netcompress/layers/distill.py",
              "netcompress/recipes/snip.py", "netcompress/recipes/eresnet.py", "netcompress/layers/quant.py"):
        assert RECIPE_WORDS.search((REPO / f).read_text(encoding="utf-8")), f


NET = """
name: "dnsnet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } shape { dim: 4 } } }
layer { name: "conv" type: "DNSConvolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } }
        dns_convolution_param { gamma: 0.1 power: 1 c_rate: 0.5
          weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "DNSInnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } }
        dns_inner_product_param { gamma: 0.1 power: 1 c_rate: 0.5
          weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _dns_solver(iter_size: int) -> Solver:
    sp = pb.SolverParameter(base_lr=0.01, lr_policy="fixed", momentum=0.9, max_iter=4, display=0,
                            random_seed=3, iter_size=iter_size, snapshot_after_train=False)
    sp.net_param.CopyFrom(_net_param())
    s = Solver(sp, verbose=False)
    g = torch.Generator().manual_seed(0)
    s.net.set_input(data=torch.randn(4, 1, 6, 6, generator=g), label=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    return s


def _net_param() -> pb.NetParameter:
    from google.protobuf import text_format

    return text_format.Parse(NET, pb.NetParameter())


def test_dns_training_goes_through_the_fused_ops():
    for iter_size in (1, 2):
        s = _dns_solver(iter_size)
        s.step(1)  # iteration 0: statistics, first surgery
        with _CountOps() as mode:
            s.step(1)
        c = mode.counts
        # each of the 2 DNS layers: W⊙M and b⊙m per forward from exactly one fused op: the surgery's pass where
        # one ran before the forward (CPU: the forward takes what it wrote), else dns_masked_weight
        assert c.get("netcompress.dns_masked_weight", 0) + c.get("netcompress.dns_update_mask_", 0) == \
            2 * 2 * iter_size, c
        # the per-call gradient rule diff <- m⊙diff + g: from the second backward of an iteration on
        assert c.get("netcompress.dns_splice_grad_", 0) == 2 * 2 * (iter_size - 1), c
        # surgery: at most once per layer, blob and forward ((1 + 0.1)^-1 > r is likely, not certain)
        assert c.get("netcompress.dns_update_mask_", 0) <= 2 * 2 * iter_size
        assert not any(k.startswith("aten.mul") and "dns" in k for k in c)
    # the DNS layers' weights pass through no Python autograd.Function of netcompress but the CPU-only one that
    # hands the surgery's W⊙M to the forward (a view, no tensor op; DNSLayer._masked)
    import netcompress.layers.dns as dns
    import netcompress.layers.masked as masked
    assert "autograd.Function" not in Path(masked.__file__).read_text()
    assert Path(dns.__file__).read_text().count("autograd.Function") == 1  # (on CUDA: tests/test_compression_layers)


class _Trace(TrainingCallback):
    state_key = "trace"

    def __init__(self):
        self.events: list[str] = []
        self.epochs: list[int] = []
        self.restored = None

    def on_start(self, solver):
        self.events.append("start")

    def before_iteration(self, solver):
        self.events.append(f"iter{solver.iter}")

    def before_forward(self, solver):
        self.events.append("fwd")

    def before_backward(self, solver):
        self.events.append("bwd")

    def after_backward(self, solver):
        self.events.append("/bwd")

    def before_update(self, solver):
        self.events.append("update")

    def learning_rate(self, solver, rate):
        return rate * 0.5  # a callback may replace the rate

    def after_iteration(self, solver):
        self.events.append("done")

    def on_epoch_end(self, solver, epoch):
        self.epochs.append(epoch)

    def state_dict(self):
        return {"n": len(self.events)}

    def load_state_dict(self, state):
        self.restored = state


def test_callbacks_run_at_their_points_and_keep_state(tmp_path):
    sp = pb.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=4, display=0, random_seed=3,
                            iter_size=2, epoch_iters=2, snapshot=4, snapshot_prefix=str(tmp_path / "s"))
    sp.net_param.CopyFrom(_net_param())
    trace = _Trace()
    s = Solver(sp, verbose=False, callbacks=[trace])
    s.net.set_input(data=torch.randn(4, 1, 6, 6), label=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert s.learning_rate() == pytest.approx(0.005)
    s.solve()
    assert trace.events[:9] == ["start", "iter0", "fwd", "bwd", "/bwd", "fwd", "bwd", "/bwd", "update"]
    assert trace.events[9:11] == ["done", "iter1"]
    assert trace.epochs == [1, 2]
    again = _Trace()
    r = Solver(sp, verbose=False, callbacks=[again])
    r.restore(str(tmp_path / "s_iter_4.solverstate"))
    assert again.restored == {"n": len(trace.events)}
