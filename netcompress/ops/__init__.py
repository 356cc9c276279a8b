"""netcompress ops: DNS surgery, INQ quantization and the freezing SGD update, as `torch.ops.netcompress.*`.

The kernels live in the compiled extension `netcompress._C` (csrc/); this package loads it and holds, one
module per op family (`dns`, `inq`, `solver`, `pool`, `quant`, `layout`, `conv`), each op's typed wrapper next to its
fake (meta) kernel and autograd formula. Pure-PyTorch versions of every op live in `netcompress.ops.reference`
as the test oracle; nothing falls back to them. Algorithms built on the ops live with the layers that use them
(the INQ stage in `netcompress.layers.inq`).

Thresholds that come from another op (DNS `low`/`high`, the INQ selection threshold) are one-element
tensors, on the weight's device or the CPU, so a whole DNS step (`dns_stats` -> `dns_thresholds` ->
`dns_update_mask_`) runs on the device without a host sync. Python floats are accepted as well.
"""
from __future__ import annotations

import torch

try:
    from .. import _C
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "netcompress._C is not built: run `pip install --no-build-isolation -e .` in the netcompress "
        f"checkout (it compiles the extension against the installed torch {torch.__version__}); "
        f"the import failed with: {e}"
    ) from e

from .conv import (direct_conv2d_weight, nnpack_available, nnpack_conv2d, sparse_conv2d,  # noqa: E402
                   sparse_conv2d_input)
from .dns import dns_masked_weight, dns_splice_grad_, dns_stats, dns_thresholds, dns_update_mask_  # noqa: E402
from .inq import inq_mask_stats, inq_quantize_, inq_threshold  # noqa: E402
from .layout import to_channels_last, to_contiguous  # noqa: E402
from .pool import max_pool2d  # noqa: E402
from .quant import (act_quant, act_quant_range, int_quant, quant_weight, quant_weight_codes,  # noqa: E402
                    quant_weight_fit, weight_quant_range)
from .solver import sgd_momentum_update_  # noqa: E402

__all__ = [
    "WITH_CUDA",
    "direct_sum_simd",
    "nnpack_calls",
    "dns_masked_weight",
    "dns_stats",
    "dns_thresholds",
    "dns_update_mask_",
    "dns_splice_grad_",
    "inq_mask_stats",
    "inq_threshold",
    "inq_quantize_",
    "sgd_momentum_update_",
    "max_pool2d",
    "to_channels_last",
    "to_contiguous",
    "nnpack_available",
    "nnpack_conv2d",
    "sparse_conv2d",
    "sparse_conv2d_input",
    "direct_conv2d_weight",
    "act_quant",
    "act_quant_range",
    "int_quant",
    "quant_weight",
    "quant_weight_codes",
    "quant_weight_fit",
    "weight_quant_range",
]

#: Whether the extension was compiled with its CUDA kernels.
WITH_CUDA: bool = bool(_C.with_cuda)


def nnpack_calls() -> str:
    """How nnpack_conv2d reaches NNPACK: "direct" (its own calls, with a workspace per thread and call shape:
    csrc/cpu/nnpack_conv_kernel.cpp), "aten" (ATen's `_nnpack_spatial_convolution`, where libtorch does not export
    NNPACK's functions) or "none" (this PyTorch has no NNPACK). The same bits either way."""
    return _C.nnpack_calls()


def direct_sum_simd() -> str:
    """The vector instructions the CPU direct-sum convolutions (sparse_conv2d, sparse_conv2d_input,
    direct_conv2d_weight) run with now: "avx512", "avx2" or "baseline", the widest the CPU has unless
    NETCOMPRESS_SIMD caps it. Every choice gives the same bits. RuntimeError for a bad NETCOMPRESS_SIMD."""
    return _C.direct_sum_simd()
