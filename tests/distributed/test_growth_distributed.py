"""Growth and snip_schedule in a data-parallel run (gloo, 2 CPU processes): every rank takes rank 0's
grown layers and masks, so the ranks end with identical blobs."""
from __future__ import annotations

import numpy as np

import dist_workers
from netcompress.distributed import launch
from netcompress.proto import caffe_pb2 as pb

MASKS = 'weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 }'
NET = f"""
name: "grown_dp"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "@TRAIN@" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv0" type: "MaskedConvolution" bottom: "data" top: "conv0"
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }}
        dns_convolution_param {{ {MASKS} }} }}
layer {{ name: "act0" type: "TanH" bottom: "conv0" top: "conv0" }}
layer {{ name: "out0" type: "MaskedInnerProduct" bottom: "conv0" top: "out0" include {{ stage: "grow0" }}
        inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} dns_inner_product_param {{ {MASKS} }} }}
layer {{ name: "conv1" type: "MaskedConvolution" bottom: "conv0" top: "conv1" include {{ stage: "grow1" }}
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }}
        dns_convolution_param {{ {MASKS} }} }}
layer {{ name: "out1" type: "MaskedInnerProduct" bottom: "conv1" top: "out1" include {{ stage: "grow1" }}
        inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} dns_inner_product_param {{ {MASKS} }} }}
layer {{ name: "loss0" type: "SoftmaxWithLoss" bottom: "out0" bottom: "label" top: "loss"
        include {{ stage: "grow0" not_stage: "grow1" }} }}
layer {{ name: "loss1" type: "SDNLoss" bottom: "out0" bottom: "out1" bottom: "label" top: "loss"
        include {{ stage: "grow1" }} sdn_loss_param {{ policy: INRIA ramp_epochs: 4 }} }}
"""


def test_two_processes_grow_and_prune_identically(tmp_path, lmdb_writer, band_digits):
    imgs, labels = band_digits(40, 8, seed=1)
    lmdb_writer(tmp_path / "train", imgs, labels)
    net = tmp_path / "net.prototxt"
    net.write_text(NET.replace("@TRAIN@", str(tmp_path / "train")))
    sp = pb.SolverParameter(net=str(net), base_lr=0.05, lr_policy="fixed", momentum=0.9, max_iter=8, display=0,
                            random_seed=3, epoch_iters=2, snapshot=4, snapshot_prefix=str(tmp_path / "run"))
    sp.growth.epoch.append(2)
    sp.snip_schedule.epoch.extend([2, 3])
    sp.snip_schedule.policy = pb.SnipScheduleParameter.ITERATIVE
    sp.snip_schedule.keep_ratio.append(0.7)
    sp.snip_schedule.batch_size = 4
    out = tmp_path / "dump"
    out.mkdir()
    launch(dist_workers.train_and_dump, 2, (sp.SerializeToString(), str(out)))
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    assert "conv1.weight" in ranks[0] and ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=f"rank 1's {k}")
    m = ranks[0]["conv1.weight_mask"]
    assert 0 < m.sum() < m.size
