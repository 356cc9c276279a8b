"""netcompress device_query (caffe device_query): Caffe's DeviceQuery lines from torch's device properties."""
from __future__ import annotations

import logging
import types

import pytest
import torch

from netcompress import device
from netcompress.errors import NetcompressError


def test_lines_in_caffes_columns():
    props = types.SimpleNamespace(major=9, minor=0, name="NVIDIA H200", total_memory=150_000_000_000,
                                  warp_size=32, multi_processor_count=132)
    assert device.device_query_lines(1, props) == [
        "Device id:                     1",
        "Major revision number:         9",
        "Minor revision number:         0",
        "Name:                          NVIDIA H200",
        "Total global memory:           150000000000",
        "Warp size:                     32",
        "Number of multiprocessors:     132",
    ]


def test_query_on_fake_devices_and_errors(monkeypatch, caplog):
    props = types.SimpleNamespace(major=8, minor=0, name="fake", total_memory=1, multi_processor_count=2)
    monkeypatch.setattr(device, "_cuda_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        assert device.device_query_main(["--gpu", "all"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "Querying GPUs all"
    assert [m for m in messages if m.startswith("Device id:")] == ["Device id:                     0",
                                                                  "Device id:                     1"]
    with pytest.raises(NetcompressError, match="device 2 does not exist"):
        device.device_query_main(["--gpu", "2"])
    with pytest.raises(NetcompressError, match=r"--gpu cpu: name GPU ids to query"):
        device.device_query_main(["--gpu", "cpu"])
    with pytest.raises(NetcompressError, match="Need a device ID to query"):
        device.device_query_main([])
    monkeypatch.setattr(device, "_cuda_count", lambda: 0)
    with pytest.raises(NetcompressError, match="no CUDA device is available to query"):
        device.device_query_main(["-gpu", "0"])
