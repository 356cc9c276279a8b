"""A DNS and an INQ LeNet train on CUDA as on the CPU: same weights within float tolerance, same masks.

The two devices run the same recipe from the same seed (fillers and the DNS surgery draws use CPU generators),
so they differ only by the order of the float sums inside convolutions and matrix products; TF32 is off and
cuDNN deterministic for the comparison. The compression ops themselves agree bit for bit (tests/ops).
"""
from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format

from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

BATCH = 16
ITERS = 4

# LeNet (examples/mnist/lenet_train_test.prototxt) on an Input layer, with @CONV@ / @IP@ layer types and @EXTRA@
# compression parameters.
LENET = """
name: "lenet_@VARIANT@"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: @B@ dim: 1 dim: 28 dim: 28 } shape { dim: @B@ } } }
layer { name: "conv1" type: "@CONV@" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" }
                            bias_filler { type: "constant" value: 0.1 } } @CONVEXTRA@ }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "@CONV@" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" }
                            bias_filler { type: "constant" value: 0.1 } } @CONVEXTRA@ }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "@IP@" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500 weight_filler { type: "xavier" }
                              bias_filler { type: "constant" value: 0.1 } } @IPEXTRA@ }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "@IP@" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" }
                              bias_filler { type: "constant" value: 0.1 } } @IPEXTRA@ }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

MASKS = ('weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 }')
VARIANTS = {
    # c_rate 0.5 and (1 + 1e-5·iter)^-1 ≈ 1: a surgery at every forward, pruning a good part of each layer.
    "dns": ("DNSConvolution", "DNSInnerProduct",
            "dns_convolution_param { gamma: 0.00001 power: 1 c_rate: 0.5 " + MASKS + " }",
            "dns_inner_product_param { gamma: 0.00001 power: 1 c_rate: 0.5 " + MASKS + " }"),
    # Half of every blob quantized at iteration 0; the masked update then freezes it.
    "inq": ("INQConvolution", "INQInnerProduct",
            "inq_convolution_param { portion: 0 portion: 0.5 num_quantum_values: 7 " + MASKS + " }",
            "inq_inner_product_param { portion: 0 portion: 0.5 num_quantum_values: 7 " + MASKS + " }"),
}


def make_solver(variant: str, device: str) -> Solver:
    conv, ip, conv_extra, ip_extra = VARIANTS[variant]
    text = (LENET.replace("@VARIANT@", variant).replace("@B@", str(BATCH)).replace("@CONV@", conv)
            .replace("@IP@", ip).replace("@CONVEXTRA@", conv_extra).replace("@IPEXTRA@", ip_extra))
    sp = pb.SolverParameter(base_lr=0.01, lr_policy="inv", gamma=1e-4, power=0.75, momentum=0.9,
                            weight_decay=5e-4, max_iter=1000, random_seed=7, type="SGD")
    text_format.Parse(text, sp.net_param)
    solver = Solver(sp, device=device, verbose=False)
    g = torch.Generator().manual_seed(3)
    data = torch.rand(BATCH, 1, 28, 28, generator=g)
    label = torch.randint(0, 10, (BATCH,), generator=g).float()
    solver.net.set_input(data=data, label=label)
    return solver


def train_state(variant: str, device: str) -> dict[str, torch.Tensor]:
    """Parameters and masks (CPU copies) after ITERS steps."""
    solver = make_solver(variant, device)
    solver.step(ITERS)
    state = {k: v.detach().cpu() for k, v in solver.net.state_dict().items()}
    state["loss"] = solver.net.loss.detach().cpu().reshape(1)
    return state


@pytest.fixture
def exact_cuda_math():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


@pytest.mark.cuda
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lenet_step_on_cuda_matches_cpu(variant, exact_cuda_math):
    cpu, gpu = train_state(variant, "cpu"), train_state(variant, "cuda")
    assert cpu.keys() == gpu.keys()
    masks = [k for k in cpu if "mask" in k]
    assert len(masks) == 8  # weight and bias masks of the four layers
    for k in masks:
        kept = int((cpu[k] == 1).sum())
        assert 0 < kept < cpu[k].numel() or "bias" in k, f"{k}: the recipe changed no mask ({kept} kept)"
        if variant == "inq":
            # chosen once, at iteration 0, from identical weights: the same entries on both devices
            assert torch.equal(gpu[k], cpu[k]), k
        else:
            # DNS thresholds follow weights that differ by float rounding: a weight within that rounding of
            # the threshold may flip. Expected: none in this run; a handful would still be the same recipe.
            flips = int((gpu[k] != cpu[k]).sum())
            assert flips <= max(2, cpu[k].numel() // 100000), f"{k}: {flips} of {cpu[k].numel()} entries differ"
    for k in cpu:
        if "mask" not in k:
            torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
