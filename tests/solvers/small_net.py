"""The small trainable net the solver tests share: conv + pool + (dropout) + inner product on 12x12 LMDB
digits-like blobs, as plain, DNS or INQ layers (`VARIANTS`), with its LMDBs (`workdir`) and solver."""
from __future__ import annotations

import pytest

from netcompress.proto import caffe_pb2 as pb

NET = """
name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 crop_size: 10 mirror: true }
        data_param { source: "@TRAIN@" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 crop_size: 10 }
        data_param { source: "@TEST@" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "@CONV@" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2@BIASDECAY@ }
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "xavier" }
                            bias_filler { type: "uniform" min: -0.1 max: 0.1 } }
        @CONVEXTRA@ }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
@DROP@
layer { name: "ip1" type: "@IP@" bottom: "pool1" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
        @IPEXTRA@ }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""
DROP = 'layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.3 } }'
DNS_CONV = ('dns_convolution_param { gamma: 0.05 power: 1 c_rate: 0.2 '
            'weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } }')
DNS_IP = DNS_CONV.replace("dns_convolution_param", "dns_inner_product_param").replace("0.2", "0.5")
INQ_CONV = ('inq_convolution_param { portion: 0 portion: 0.5 num_quantum_values: 7 '
            'weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } }')
INQ_IP = INQ_CONV.replace("inq_convolution_param", "inq_inner_product_param")
VARIANTS = {
    "plain": ("Convolution", "", "InnerProduct", ""),
    "dns": ("DNSConvolution", DNS_CONV, "DNSInnerProduct", DNS_IP),
    "inq": ("INQConvolution", INQ_CONV, "INQInnerProduct", INQ_IP),
}


@pytest.fixture
def workdir(tmp_path, lmdb_writer, band_digits):
    """A folder with train_lmdb (40 images) and test_lmdb (20): class-dependent bands, so the task is learnable."""
    imgs, labels = band_digits(60, 12, step=3, width=3)
    lmdb_writer(tmp_path / "train_lmdb", imgs[:40], labels[:40])
    lmdb_writer(tmp_path / "test_lmdb", imgs[40:], labels[40:])
    return tmp_path


def solver_param(workdir, variant="plain", prefix="run", dropout=True, conv_bias_decay=True,
                 **kw) -> pb.SolverParameter:
    """The net of `variant` written into `workdir`, and its solver (snapshots `<prefix>_<variant>_iter_N`);
    `kw` sets or extends solver fields."""
    conv, conv_extra, ip, ip_extra = VARIANTS[variant]
    text = (NET.replace("@TRAIN@", str(workdir / "train_lmdb")).replace("@TEST@", str(workdir / "test_lmdb"))
            .replace("@CONV@", conv).replace("@CONVEXTRA@", conv_extra).replace("@IP@", ip)
            .replace("@IPEXTRA@", ip_extra).replace("@DROP@", DROP if dropout else "")
            .replace("@BIASDECAY@", "" if conv_bias_decay else " decay_mult: 0"))
    netfile = workdir / f"net_{variant}.prototxt"
    netfile.write_text(text)
    sp = pb.SolverParameter(net=str(netfile), base_lr=0.05, lr_policy="inv", gamma=1e-3, power=0.75,
                            momentum=0.9, weight_decay=5e-4, max_iter=12, display=2, test_interval=4,
                            test_iter=[2], snapshot=5, random_seed=3, solver_mode=pb.SolverParameter.CPU,
                            snapshot_prefix=str(workdir / f"{prefix}_{variant}"))
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(sp, k).extend(v)
        else:
            setattr(sp, k, v)
    return sp
