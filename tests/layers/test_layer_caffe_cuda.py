"""BVLC Caffe's later layer types on CUDA: the same nets built on the CPU and on a GPU from the same seed give the
same tops and gradients (`cuda` marker: conftest.py skips these without a GPU; benchmarks/gpu_check.sh runs them).

The layers are compositions of ATen ops (and, for the Python layer, numpy through the host), so CUDA's values
agree with the CPU's to float rounding, not bit for bit.
"""
from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format

from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb

NETS = {
    "lstm_rnn": """
        layer { name: "in" type: "Input" top: "x" top: "cont" top: "s"
                input_param { shape { dim: 6 dim: 3 dim: 5 } shape { dim: 6 dim: 3 } shape { dim: 3 dim: 4 } } }
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "s" top: "h"
                recurrent_param { num_output: 7 weight_filler { type: "uniform" min: -0.3 max: 0.3 }
                                  bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
        layer { name: "rnn" type: "RNN" bottom: "h" bottom: "cont" top: "o"
                recurrent_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
        """,
    "spp_im2col": """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 11 dim: 9 } } }
        layer { name: "spp" type: "SPP" bottom: "x" top: "spp" spp_param { pyramid_height: 3 pool: AVE } }
        layer { name: "spp_max" type: "SPP" bottom: "x" top: "spp_max" spp_param { pyramid_height: 2 } }
        layer { name: "cols" type: "Im2col" bottom: "x" top: "cols"
                convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 2 } }
        """,
    "reindex_filter_clip_swish": """
        layer { name: "in" type: "Input" top: "x" top: "idx" top: "sel"
                input_param { shape { dim: 5 dim: 4 } shape { dim: 7 } shape { dim: 5 } } }
        layer { name: "re" type: "BatchReindex" bottom: "x" bottom: "idx" top: "re" }
        layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "f" }
        layer { name: "clip" type: "Clip" bottom: "re" top: "c" clip_param { min: -0.5 max: 0.6 } }
        layer { name: "sw" type: "Swish" bottom: "f" top: "sw" swish_param { beta: 1.5 } }
        """,
}

INPUTS = {
    "lstm_rnn": lambda g: {"x": torch.randn(6, 3, 5, generator=g),
                           "cont": torch.tensor([[0.0, 0, 0]] + [[1.0, 1, 0]] * 2 + [[1.0, 1, 1]] * 3),
                           "s": torch.randn(3, 4, generator=g)},
    "spp_im2col": lambda g: {"x": torch.randn(2, 3, 11, 9, generator=g)},
    "reindex_filter_clip_swish": lambda g: {"x": torch.randn(5, 4, generator=g),
                                            "idx": torch.tensor([4.0, 0, 0, 2, 3, 4, 1]),
                                            "sel": torch.tensor([1.0, 0, 1, 1, 0])},
}


def _run(name: str, device: str):
    net = Net(text_format.Parse('force_backward: true\n' + NETS[name], pb.NetParameter()), phase=pb.TRAIN,
              device=device, seed=3, verbose=False)
    feed = {k: v.to(device) for k, v in INPUTS[name](torch.Generator().manual_seed(0)).items()}
    outs = net(**feed)
    total = sum((o.float() * (i + 1)).sum() for i, o in enumerate(outs.values()) if o.is_floating_point())
    total.backward()
    grads = {n: p.grad.detach().cpu() for n, p in net.named_parameters() if p.grad is not None}
    grads.update({f"input {k}": net.blobs[k].grad.detach().cpu() for k in feed
                  if net.blobs[k].grad is not None})
    return {k: v.detach().cpu() for k, v in outs.items()}, grads


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(NETS))
def test_later_caffe_layers_on_cuda_match_the_cpu(name):
    cpu_tops, cpu_grads = _run(name, "cpu")
    gpu_tops, gpu_grads = _run(name, "cuda")
    assert cpu_tops.keys() == gpu_tops.keys() and cpu_grads.keys() == gpu_grads.keys() and cpu_grads
    for k in cpu_tops:
        torch.testing.assert_close(gpu_tops[k], cpu_tops[k], rtol=1e-5, atol=1e-5, msg=f"top {k}")
    for k in cpu_grads:
        torch.testing.assert_close(gpu_grads[k], cpu_grads[k], rtol=1e-4, atol=1e-5, msg=f"gradient {k}")


def test_the_nets_run_on_the_cpu():
    """The same nets on the CPU (so a GPU session does not meet them for the first time): tops and gradients."""
    for name in NETS:
        tops, grads = _run(name, "cpu")
        assert tops and grads and all(torch.isfinite(t).all() for t in tops.values())
