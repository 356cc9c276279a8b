"""Bad input (issue 22): each kind of malformed or hostile input, with the exact message it gets.

Hangs, tracebacks, vague messages and silently accepted input, then interrupted writers and the
command line's error boundary. The fuzz test (test_bad_input_fuzz.py) runs generated mutations.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from netcompress import cli
from netcompress import io as ncio
from netcompress.errors import FileError, NetDefinitionError, ProtoParseError, WeightLoadError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.rng import CaffeRNG

REPO = Path(__file__).resolve().parents[1]
LENET = (REPO / "examples/mnist/lenet.prototxt").read_text()
LENET_DNS = (REPO / "examples/mnist/lenet_train_test_DNS.prototxt").read_text()


def lenet(tmp_path: Path, old: str = "", new: str = "", name: str = "net.prototxt", text: str = LENET) -> str:
    """The LeNet deploy net (Input 64x1x28x28) with `old` replaced by `new`, as a file."""
    if old:
        assert old in text, old
        text = text.replace(old, new, 1)
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def dns_deploy(tmp_path: Path, old: str = "", new: str = "") -> str:
    """The DNS LeNet with an Input layer instead of its data layers."""
    text = LENET_DNS.split('layer {\n  name: "conv1"', 1)[1]
    text = ('name: "LeNet"\nlayer { name: "data" type: "Input" top: "data" top: "label" input_param { '
            'shape { dim: 2 dim: 1 dim: 28 dim: 28 } shape { dim: 2 } } }\nlayer {\n  name: "conv1"' + text)
    return lenet(tmp_path, old, new, "dns.prototxt", text)


def error_of(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as ei:
        fn(*args, **kwargs)
    return str(ei.value)


def printed(err: str) -> list[str]:
    """The lines of `err` that are not glog records (the command's own output)."""
    return [l for l in err.splitlines() if l.strip() and not re.match(r"[IWEF]\d{4} ", l)]


def cli_error(capsys, argv: list[str]) -> str:
    """The one line `netcompress ...` prints for an error (exit 1)."""
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err
    return lines[-1]


# ----------------------------------------------------------------------------------------------
# Hangs
# ----------------------------------------------------------------------------------------------

def test_uniform_filler_with_min_above_max_is_refused_at_set_up(tmp_path):
    with pytest.raises(ValueError, match=r"uniform: need finite a <= b, got a = 1.0, b = -1.0"):
        CaffeRNG(1).uniform(5, 1.0, -1.0)  # returned never before
    path = lenet(tmp_path, 'weight_filler {\n      type: "xavier"\n    }',
                 'weight_filler {\n      type: "uniform"\n      min: 1\n      max: -1\n    }')
    assert error_of(NetDefinitionError, Net, path) == \
        f"{path}: layer 'conv1': uniform filler: min (1) must not exceed max (-1)"


def test_a_fifo_is_refused_before_it_is_opened(tmp_path, capsys):
    fifo = tmp_path / "net.fifo"
    os.mkfifo(fifo)
    assert cli_error(capsys, ["time", "--model", str(fifo)]) == (
        f"netcompress time: error: {fifo}: is a FIFO (named pipe), expected a text prototxt: netcompress reads "
        "only regular files (a pipe or a device may block or never end)")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_endless_devices_are_refused(device, capsys):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    assert cli_error(capsys, ["train", "--solver", device]) == (
        f"netcompress train: error: {device}: is a character device, expected a text prototxt: netcompress "
        "reads only regular files (a pipe or a device may block or never end)")


def test_a_text_prototxt_larger_than_the_limit_is_refused_unread(tmp_path, monkeypatch):
    big = tmp_path / "big.prototxt"
    with open(big, "wb") as f:
        f.truncate(50 << 20)  # a 50 MB (sparse) one-line file
    assert error_of(ProtoParseError, ncio.read_net, str(big)) == (
        f"{big}: is 52,428,800 bytes; a text prototxt may have at most 16,777,216 bytes "
        "(set NETCOMPRESS_MAX_PROTOTXT_BYTES to raise the limit)")
    monkeypatch.setenv("NETCOMPRESS_MAX_PROTOTXT_BYTES", "100")
    small = lenet(tmp_path)
    assert error_of(ProtoParseError, ncio.read_net, small).startswith(f"{small}: is {len(LENET):,} bytes; a text "
                                                                     "prototxt may have at most 100 bytes")
    monkeypatch.setenv("NETCOMPRESS_MAX_PROTOTXT_BYTES", str(64 << 20))
    assert ncio.read_net(small).name == "LeNet"


# ----------------------------------------------------------------------------------------------
# Tracebacks, now one-line errors naming file, layer and field
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, message", [
    ("num_output: 20\n    kernel_size: 5", "num_output: 20\n    kernel_size: 5\n    group: 0",
     "layer 'conv1' (type Convolution): convolution_param.group must be at least 1, got 0"),
    ("num_output: 20\n    kernel_size: 5", "num_output: 20\n    kernel_size: 5\n    dilation: 0",
     "layer 'conv1' (type Convolution): convolution_param.dilation must be positive, got [0, 0]"),
    ("num_output: 20\n    kernel_size: 5", "num_output: 20\n    kernel_size: 5\n    pad: 4294967295",
     "layer 'conv1' (type Convolution): output size 8589934614 along spatial axis 0 is larger than a blob can "
     "hold (input 28, kernel 5, pad 4294967295, stride 1, dilation 1)"),
    ("dim: 28 dim: 28", "dim: -1 dim: 28",
     "layer 'data' (type Input): input_param.shape of top 'data' would have shape [64, 1, -1, 28], with a "
     "negative dimension"),
    ("num_output: 500", "num_output: 2000000000",
     "layer 'ip1' (type InnerProduct): the weight blob would have shape [2000000000, 800], "
     "1,600,000,000,000 values; a blob holds at most 2,147,483,647 (Caffe's limit)"),
])
def test_layer_parameters_that_crashed(tmp_path, capsys, old, new, message):
    path = lenet(tmp_path, old, new)
    assert error_of(NetDefinitionError, Net, path) == f"{path}: {message}"
    assert cli_error(capsys, ["time", "--model", path]) == f"netcompress time: error: {path}: {message}"


def test_a_memory_data_net_on_the_command_line_says_where_its_data_comes_from(tmp_path, capsys):
    # MemoryData is fed from Python (pycaffe); the commands have nothing to give it (it was a RuntimeError
    # reported as a bug in netcompress)
    path = tmp_path / "memory.prototxt"
    path.write_text('layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 '
                    'channels: 1 height: 3 width: 3 } }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
                    'num_output: 3 } }\n'
                    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{path}" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot_prefix: "{tmp_path}/s"\n')
    for command, argv in (("time", ["--model", str(path), "--iterations", "1"]), ("train", ["--solver", str(solver)])):
        said = cli_error(capsys, [command, *argv])
        assert said.startswith(f"netcompress {command}: error: ") and \
            "layer 'm' (type MemoryData) holds no data: its arrays come from Python (pycaffe's " \
            "net.set_input_arrays(data, labels)" in said, said


def test_plot_of_a_log_without_curves_and_of_a_zero_loss(tmp_path, capsys):
    import warnings

    (tmp_path / "empty.log").write_text("hello\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend" was one
        assert cli_error(capsys, ["plot", "--out", str(tmp_path / "e.png"), str(tmp_path / "empty.log")]) == (
            f"netcompress plot: error: {tmp_path / 'empty.log'}: no training loss, test output or learning rate "
            "lines to plot (not a Caffe or netcompress training log?)")
        (tmp_path / "zero.log").write_text("I1207 00:00:00.000000 1 solver.cpp:218] Iteration 0, lr = 0.01\n"
                                           "I1207 00:00:00.000000 1 solver.cpp:218] Iteration 0, loss = 0\n")
        assert cli.main(["plot", "--out", str(tmp_path / "z.png"), str(tmp_path / "zero.log")]) == 0
    assert (tmp_path / "z.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "e.png").exists()
    os.mkfifo(tmp_path / "pipe.log")  # (was "no such log file")
    assert cli_error(capsys, ["plot", "--out", str(tmp_path / "p.png"), str(tmp_path / "pipe.log")]).startswith(
        f"netcompress plot: error: {tmp_path / 'pipe.log'}: is a FIFO (named pipe), expected a training log")


def test_a_damaged_solver_state_sidecar_leaves_no_file_open(tmp_path):
    import gc
    import warnings

    from netcompress.solvers.state import load_state, save_state

    path = tmp_path / "s_iter_2.solverstate.nc.npz"
    save_state(str(path), {"history": np.zeros(64, np.float32), "it": 2})
    path.write_bytes(path.read_bytes()[:300])  # the zip's directory cut off
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception):
            load_state(str(path))
        gc.collect()
    # numpy's np.load(path) kept the file open when the zip inside was damaged
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_a_damaged_solver_state_sidecar_names_no_raw_os_error(tmp_path):
    """A zip directory whose offset points before the file's start made zipfile seek there: the error was
    "(OSError: [Errno 22] Invalid argument)" (found by the CLI fuzz, seed 792)."""
    from netcompress.errors import NetcompressError
    from netcompress.solvers.solver import _load_sidecar
    from netcompress.solvers.state import save_state

    path = tmp_path / "s_iter_2.solverstate.nc.npz"
    save_state(str(path), {"history": np.zeros(64, np.float32), "it": 2})
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")  # the end-of-directory record; +16: the directory's offset
    data[end + 16] ^= 2
    path.write_bytes(bytes(data))
    message = error_of(NetcompressError, _load_sidecar, str(path))
    assert message.startswith(f"{path}: not a usable netcompress solver state (") and "Errno" not in message


def test_binary_protos_past_2_gib_are_refused(tmp_path, capsys, monkeypatch):
    """protobuf cannot encode a message past 2 GiB (an unexpected EncodeError, "Failed to serialize proto"), nor
    Caffe read one: writing one is refused naming the file, and training refuses at set-up a net whose binary
    snapshot would be one (the limit is lowered here: the tiny net's caffemodel has 32 bytes of values)."""
    monkeypatch.setattr(ncio, "MAX_BINARY_PROTO_BYTES", 40)
    net = pb.NetParameter(name="n" * 50)
    out = tmp_path / "big.caffemodel"
    assert error_of(FileError, ncio.write_caffemodel, str(out), net) == (
        f"{out}: cannot write: the NetParameter has more than 40 bytes, the most a binary proto may have (protobuf's "
        "limit; Caffe could not read it either)")
    assert not out.exists() and not list(tmp_path.iterdir())
    snap = f'snapshot: 1\nsnapshot_prefix: "{tmp_path}/s"\n'
    for extra, what in (("snapshot_diff: true\n", "a caffemodel of"), ('type: "Adam"\n', "a solver state of")):
        solver = solver_file(tmp_path, snap + extra)
        said = cli_error(capsys, ["train", "--solver", solver])
        assert said.startswith(f"netcompress train: error: {solver}: a binary snapshot of this net would have {what} "
                               "0.0 GiB, more than the 40 bytes a binary proto may have"), said
        assert said.endswith("set snapshot_format: HDF5, which has none, or snapshot: 0 and snapshot_after_train: "
                             "false")
    assert not list(tmp_path.glob("s_iter*"))
    for extra in ("snapshot_diff: true\nsnapshot_format: HDF5\n", 'type: "Adam"\nsnapshot_format: HDF5\n'):
        assert cli.main(["train", "--solver", solver_file(tmp_path, snap + extra)]) == 0  # HDF5 has no such limit
    assert cli.main(["train", "--solver", solver_file(tmp_path, 'type: "Adam"\nsnapshot_after_train: false\n')]) == 0


def test_nets_that_cannot_fit_in_memory_are_refused_before_they_run(tmp_path, capsys, monkeypatch):
    """Each blob may fit while all of them do not (a forward keeps every top): the kernel's out-of-memory killer
    ended such a run without a word. train, test and time now refuse it at set-up, naming the net and Caffe's
    "Memory required for data" (the memory is lowered here: the tiny nets need a few hundred bytes)."""
    import netcompress.net as ncnet

    monkeypatch.setattr(ncnet, "device_memory", lambda device: 1024)
    net = tmp_path / "wide.prototxt"
    net.write_text('name: "wide"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 8 dim: 16 } } }\n'
                   + "".join(f'layer {{ name: "r{i}" type: "Sigmoid" bottom: "{"x" if i == 0 else f"y{i - 1}"}" '
                             f'top: "y{i}" }}\n' for i in range(3)))
    said = cli_error(capsys, ["time", "--model", str(net), "--iterations", "1"])
    assert said == (f"netcompress time: error: {net}: the TRAIN net needs 0.0 GiB for its blobs and weights (Memory "
                    "required for data: 2,048 bytes), more than this machine's 0.0 GiB of memory: lower the batch size "
                    "(the data layers' batch_size, or an Input's first dimension)")
    model = tmp_path / "none.caffemodel"
    ncio.write_caffemodel(str(model), pb.NetParameter())
    assert cli_error(capsys, ["test", "--model", str(net), "--weights", str(model), "--iterations", "1"]).startswith(
        f"netcompress test: error: {net}: the TEST net needs 0.0 GiB for its blobs and weights (Memory required for "
        "data: 2,048 bytes), more than")
    solver = solver_file(tmp_path, "test_iter: 1\ntest_interval: 1\n")  # two nets of 100 bytes of blobs and 32 of weights
    monkeypatch.setattr(ncnet, "device_memory", lambda device: 200)
    said = cli_error(capsys, ["train", "--solver", solver])
    assert said.startswith(f"netcompress train: error: {solver} (net_param): the TRAIN net and its 1 other net(s) need "
                           "0.0 GiB for their blobs and weights (TRAIN 0.0 GiB, TEST 0.0 GiB), more than"), said
    monkeypatch.setattr(ncnet, "device_memory", lambda device: 4096)
    assert cli.main(["time", "--model", str(net), "--iterations", "1"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # (torchrun's, and --cpu-procs'): four processes share the machine
    assert cli_error(capsys, ["time", "--model", str(net), "--iterations", "1"]).endswith(
        "more than this process's 0.0 GiB of memory (its share of this machine's memory, with 4 processes on it): "
        "lower the batch size (the data layers' batch_size, or an Input's first dimension)")


def test_the_memory_a_process_may_use_is_its_containers(tmp_path, monkeypatch):
    """A cgroup's (container's) memory limit below the machine's memory is the ceiling: the kernel kills the
    process there; "max" (v2) and v1's ~2^63 mean no limit."""
    from netcompress.layers import base

    machine = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(base, "_CGROUP_LIMITS", (str(v2), str(v1)))
    assert base.physical_memory() == machine  # neither file
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")
    assert base.physical_memory() == machine
    v2.write_text("1073741824\n")
    assert base.physical_memory() == 1 << 30
    v2.write_text("max\n")
    v1.write_text("536870912\n")
    assert base.physical_memory() == 1 << 29


def test_pipeline_folders_that_are_files(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for option in ("--out", "--data"):  # (was "afile: already exists", from makedirs)
        other = [] if option == "--out" else ["--out", str(tmp_path / "run")]
        assert cli_error(capsys, ["pipeline", option, str(tmp_path / "afile"), *other, "--ref-iters", "1"]) == (
            f"netcompress pipeline: error: {tmp_path / 'afile'}: is a file; {option} names a folder (made if missing)")


def test_dns_gamma_below_zero_is_refused(tmp_path):
    path = dns_deploy(tmp_path, "gamma: 1e-05", "gamma: -1")
    assert error_of(NetDefinitionError, Net, path, phase="train") == (
        f"{path}: layer 'conv1' (type DNSConvolution): dns_convolution_param.gamma must be >= 0 (the surgery "
        "probability is (1 + gamma*iter)^-power), got -1")


def _lenet_model(tmp_path: Path) -> tuple[str, pb.NetParameter]:
    net = Net(lenet(tmp_path), seed=1, verbose=False)
    return str(tmp_path / "net.prototxt"), net.to_proto()


def test_a_blob_whose_values_do_not_fill_its_shape(tmp_path, capsys):
    net_path, param = _lenet_model(tmp_path)
    del param.layer[1].blobs[0].data[-1]
    model = tmp_path / "short.caffemodel"
    ncio.write_caffemodel(str(model), param)
    message = (f"{model}: layer 'conv1', param 0: blob has 499 values but its shape [20, 1, 5, 5] holds 500 "
               "(a corrupted model)")
    net = Net(net_path, verbose=False)
    assert error_of(WeightLoadError, net.copy_from, str(model)) == message
    assert cli_error(capsys, ["test", "--model", net_path, "--weights", str(model)]) == \
        f"netcompress test: error: {message}"  # the converters caught it, `test` did not


def test_a_layer_name_that_is_not_utf8(tmp_path):
    _, param = _lenet_model(tmp_path)
    param.layer[1].name = "conv@"
    model = tmp_path / "utf8.caffemodel"
    model.write_bytes(param.SerializeToString().replace(b"conv@", b"conv\xff"))
    said = error_of(ProtoParseError, ncio.read_caffemodel, str(model))  # (protobuf 3.x: the field's name)
    assert said in (f"{model}: {where} is not valid UTF-8 text (b'conv\\xff'): the file is corrupted"
                    for where in ("layer[1].name", "caffe.LayerParameter.name")), said
    text = tmp_path / "utf8.prototxt"
    text.write_bytes(LENET.encode().replace(b'"conv1"', b'"conv\xff"', 1))
    head = LENET[:LENET.index('"conv1"')]
    line, column = head.count("\n") + 1, len(head) - head.rfind("\n") + 5  # the column of \xff, from 1
    assert error_of(ProtoParseError, ncio.read_net, str(text)) == (
        f"{text}:{line}:{column}: byte 0xFF is not UTF-8 text; outside its # comments a prototxt must be UTF-8 "
        "(save the file as UTF-8)")
    binary = tmp_path / "model.prototxt"  # a caffemodel given as a net: it holds NUL bytes
    binary.write_bytes(model.read_bytes())
    nul = model.read_bytes().index(b"\0")
    kind = ("it is a caffemodel (a net of 9 layers): give weights with Net(..., weights=...) or copy_from, and resume "
            "from a .solverstate with Solver.restore")
    if ncio._parses_as(model.read_bytes(), pb.NetParameter()) is None:  # (protobuf 3.x's parser refuses the name)
        kind = "is it a binary .caffemodel?"
    assert error_of(ProtoParseError, ncio.read_net, str(binary)) == (
        f"{binary}: not a text prototxt (byte {nul} is a NUL byte); {kind}")
    binary.write_bytes(b"\x93\x00\xff\x12" * 8)  # binary of no known kind
    assert error_of(ProtoParseError, ncio.read_net, str(binary)) == (
        f"{binary}: not a text prototxt (byte 1 is a NUL byte); is it a binary .caffemodel?")
    # UTF-16 (Windows' "Unicode"), with or without its byte-order mark: its NULs are valid UTF-8, so it parsed
    # into "has no field named 'n'" or "Expected identifier or number, got \0"
    for codec in ("utf-16", "utf-16-le", "utf-16-be"):
        utf16 = tmp_path / f"{codec}.prototxt"
        utf16.write_bytes(LENET.encode(codec))
        assert error_of(ProtoParseError, ncio.read_net, str(utf16)) == (
            f"{utf16}: not a text prototxt: it is UTF-16 text (what Windows editors call 'Unicode'); save it as "
            "UTF-8, which Caffe's protobuf reads"), codec


def test_a_misspelt_field_or_enum_value_gets_a_suggestion(tmp_path):
    for old, new, said in (
            ("kernel_size: 5", "kernal_size: 5", 'has no field named "kernal_size". Did you mean kernel_size? (while'),
            ("convolution_param {", "convolutoin_param {", 'named "convolutoin_param". Did you mean convolution_param?'),
            ("pool: MAX", "pool: MAXX", "has no value named MAXX. Its values: MAX (0), AVE (1), STOCHASTIC (2). (while"),
            ("pool: MAX", "pool: 7", "has no value with number 7. Its values: MAX (0), AVE (1), STOCHASTIC (2)."),
            ("kernel_size: 5", "zzz: 5", 'has no field named "zzz". (while parsing a caffe.NetParameter)')):
        path = tmp_path / "typo.prototxt"
        path.write_text(LENET.replace(old, new, 1))
        assert said in error_of(ProtoParseError, ncio.read_net, str(path)), new


def test_a_net_and_a_solver_given_in_each_others_place_say_what_they_are(tmp_path):
    """A net prototxt given as a solver (or as weights), a solver as a net (or as weights or a solver state):
    the parse error says what the file is and which command or flag takes it (it said only 'has no field named
    "name"', or for a binary read 'Wire format was corrupt')."""
    net = tmp_path / "lenet.prototxt"
    net.write_text(LENET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "lenet.prototxt"\nbase_lr: 0.01\n')
    # (called from Python the errors name the calls; a command line's, below, its flags)
    assert error_of(ProtoParseError, ncio.read_solver, str(net)).endswith(
        "It is a net prototxt (9 layers): a solver names it in its net: field, and Net(...) takes it. (while parsing "
        "a caffe.SolverParameter)")
    assert error_of(ProtoParseError, ncio.read_net, str(solver)).endswith(
        "It is a solver prototxt: get_solver(...) takes it. (while parsing a caffe.NetParameter)")
    with ncio.advice_for("command line"):
        assert error_of(ProtoParseError, ncio.read_solver, str(net)) == (
            f'{net}:1:1: Message type "caffe.SolverParameter" has no field named "name". It is a net prototxt (9 layers): '
            "a solver names it in its net: field, and test and time take it with --model. (while parsing a "
            "caffe.SolverParameter)")
        assert error_of(ProtoParseError, ncio.read_net, str(solver)) == (
            f'{solver}:1:1: Message type "caffe.NetParameter" has no field named "net". It is a solver prototxt: train '
            "takes it with --solver. (while parsing a caffe.NetParameter)")
        assert error_of(ProtoParseError, ncio.read_caffemodel, str(net)).endswith(
            "; it is a net prototxt (9 layers), a text file: a solver names it in its net: field, and test and time take "
            "it with --model")
        assert error_of(ProtoParseError, ncio.read_binary_proto, str(solver), pb.SolverState()).endswith(
            "; it is a solver prototxt, a text file: train takes it with --solver")
        model = tmp_path / "m.caffemodel"  # a caffemodel as a mean file parsed as an empty blob: "shape [0]"
        ncio.write_caffemodel(str(model), ncio.parse_text_proto('layer { name: "ip" type: "InnerProduct" }',
                                                                pb.NetParameter()))
        assert error_of(ProtoParseError, ncio.read_binaryproto_array, str(model)) == (
            f"{model}: not a .binaryproto blob; it is a caffemodel (a net of 1 layer): give weights with --weights, "
            "and resume from a .solverstate with --snapshot")
    other = tmp_path / "other.prototxt"  # (text of neither kind keeps the plain error, and its suggestion)
    other.write_text('name: "x"\nlayr { }\n')
    assert error_of(ProtoParseError, ncio.read_solver, str(other)).endswith(
        'has no field named "name". (while parsing a caffe.SolverParameter)')
    assert "Did you mean layer?" in error_of(ProtoParseError, ncio.read_net, str(other))


def test_empty_nets_solvers_and_solver_states_are_named(tmp_path, capsys):
    """A 0-byte (or comments-only) file is a valid empty message to protobuf: as a net it ran as a net of no layers
    (`time` printed a benchmark of nothing), as a solver it failed on "lr_policy is not set", and as a solver state
    on "Incorrect length of history blobs: the file has 0". Each now says the file is empty."""
    empty = tmp_path / "empty.prototxt"
    empty.write_bytes(b"")
    comments = tmp_path / "comments.prototxt"
    comments.write_text("# LeNet, to be written\n\n")
    assert cli_error(capsys, ["time", "--model", str(empty)]) == (
        f"netcompress time: error: {empty}: is empty, expected a net prototxt (a copy or a write that did not "
        "finish?)")
    assert cli_error(capsys, ["time", "--model", str(comments)]).endswith(
        f"{comments}: is empty but for comments, expected a net prototxt (a copy or a write that did not finish?)")
    assert cli_error(capsys, ["train", "--solver", str(empty)]).endswith(
        f"{empty}: is empty, expected a solver prototxt (a copy or a write that did not finish?)")
    state = tmp_path / "s_iter_5.solverstate"
    state.write_bytes(b"")
    assert cli_error(capsys, ["train", "--solver", solver_file(tmp_path), "--snapshot", str(state)]).endswith(
        f"{state}: is empty (0 bytes), expected a binary caffe.SolverState (a copy or a write that did not finish?)")


def test_an_os_error_reads_as_one_clause():
    """errno's known reasons in words; an OSError holding bytes (plyvel's IOError, which LevelDB raises for a
    full disk) decoded, where it printed as "b'io error: ...'"."""
    from netcompress.errors import describe_os_error

    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device"), "write") == (
        "cannot write: no space left on the device")
    assert describe_os_error(OSError(b"IO error: db/000003.log: No space left on device")) == (
        "io error: db/000003.log: no space left on device")


def test_a_prototxt_read_as_caffes_tokenizer_reads_it(tmp_path):
    """A byte-order mark is skipped and comments may hold any bytes (GBK, Latin-1), as protobuf's C++
    tokenizer allows; the net read is the same as from the clean file."""
    clean = ncio.read_net(str(REPO / "examples/mnist/lenet.prototxt"))
    lines = LENET.encode().split(b"\n")
    lines[0] += " # 卷积网络 (LeNet)".encode("gbk")
    lines.insert(1, "# café, naïve 'quoted # text'".encode("latin-1"))
    variants = {
        "bom.prototxt": b"\xef\xbb\xbf" + LENET.encode(),
        "gbk.prototxt": b"\n".join(lines),
        "crlf_gbk.prototxt": b"\xef\xbb\xbf" + b"\r\n".join(lines),
        "hash_in_string.prototxt": LENET.encode().replace(b'name: "LeNet"', b'name: "Le#Net" # \xe9', 1),
    }
    for name, data in variants.items():
        path = tmp_path / name
        path.write_bytes(data)
        net = ncio.read_net(str(path))
        if name == "hash_in_string.prototxt":
            assert net.name == "Le#Net"
            net.name = clean.name
        assert net == clean, name
    # A '#' inside a quoted string does not start a comment: the byte after it is in the string.
    path = tmp_path / "in_string.prototxt"
    path.write_bytes(LENET.encode().replace(b'name: "LeNet"', b"name: 'Le#N\xe9t'", 1))
    assert error_of(ProtoParseError, ncio.read_net, str(path)) == (
        f"{path}:1:12: byte 0xE9 is not UTF-8 text; outside its # comments a prototxt must be UTF-8 "
        "(save the file as UTF-8)")


TINY_SOLVER = """
net_param {
  name: "tiny"
  layer { name: "data" type: "DummyData" top: "x" top: "y"
          dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } data_filler { type: "gaussian" }
                             data_filler { type: "constant" value: 1 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }
}
base_lr: 0.1
lr_policy: "fixed"
max_iter: 2
display: 0
random_seed: 3
solver_mode: CPU
"""


def solver_file(tmp_path: Path, extra: str = "", name: str = "solver.prototxt") -> str:
    p = tmp_path / name
    p.write_text(TINY_SOLVER + extra)
    return str(p)


def test_a_read_only_snapshot_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = solver_file(tmp_path, f'snapshot_prefix: "{folder}/s"\n')
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root writes anywhere: the file system's answer is simulated
        import netcompress.solvers.solver as solver_mod

        def refuse(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(solver_mod.tempfile, "mkstemp", refuse)
    try:
        assert cli_error(capsys, ["train", "--solver", path]) == (
            f"netcompress train: error: {path}: Cannot write to snapshot prefix '{folder}/s': cannot write in "
            f"{folder}: permission denied. Make sure that the folder exists and is writable (or set snapshot: 0 "
            "and snapshot_after_train: false).")
    finally:
        folder.chmod(0o755)


def test_a_full_disk_at_the_snapshot_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    path = solver_file(tmp_path, f'snapshot_prefix: "{tmp_path}/s"\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ncio.os, "fsync", full)
    assert cli_error(capsys, ["train", "--solver", path]) == (
        f"netcompress train: error: {tmp_path}/s_iter_2.caffemodel: cannot write: no space left on the device")
    assert sorted(os.listdir(tmp_path)) == ["solver.prototxt"]


def test_symlink_loops_long_names_and_trailing_slashes(tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    assert cli_error(capsys, ["time", "--model", str(loop)]) == (
        f"netcompress time: error: {loop}: cannot read: too many levels of symbolic links (a symlink loop?)")
    long = tmp_path / ("n" * 300)
    assert cli_error(capsys, ["time", "--model", str(long)]) == (
        f"netcompress time: error: {long}: cannot read: file name too long (a name may have at most 255 bytes "
        "on most file systems)")
    net = lenet(tmp_path)
    assert cli_error(capsys, ["time", "--model", net + "/"]) == (
        f"netcompress time: error: {net}/: cannot read: a part of the path is not a folder (a '/' after a file "
        "name?)")
    _, param = _lenet_model(tmp_path)
    for out, message in ((str(long), f"{long}: cannot write: the file name has 300 bytes, the file system "
                                     "allows at most 255"),
                         (str(tmp_path / "out") + "/", f"{tmp_path}/out/: ends with a folder separator or names a "
                                                       "folder; expected a file name"),
                         (str(loop), f"{loop}: cannot write: too many levels of symbolic links (a symlink loop?)")):
        assert error_of(FileError, ncio.write_caffemodel, out, param) == message
    assert sorted(os.listdir(tmp_path)) == ["loop", "net.prototxt"]


# ----------------------------------------------------------------------------------------------
# Vague: a net error names the prototxt file as well as the layer
# ----------------------------------------------------------------------------------------------

def test_net_errors_name_the_file_once(tmp_path, capsys):
    path = lenet(tmp_path, "kernel_size: 2", "kernel_size: 0")
    message = (f"{path}: layer 'pool1' (type Pooling): kernel dimensions must be positive, got [0, 0]")
    assert error_of(NetDefinitionError, Net, path) == message
    # (the include/exclude rules are read before the layers are built: that error named no file)
    path = lenet(tmp_path, 'name: "pool1"', 'name: "pool1"\n  include { phase: TEST } exclude { stage: "x" }',
                 name="rules.prototxt")
    assert error_of(NetDefinitionError, Net, path) == (
        f"{path}: layer 'pool1' (type Pooling) specifies both include and exclude; specify at most one of them")
    # a net inside a solver is named by the solver file and field
    solver = solver_file(tmp_path, "", "s.prototxt")
    text = Path(solver).read_text().replace("num_output: 2", "num_output: 0")
    Path(solver).write_text(text)
    assert cli_error(capsys, ["train", "--solver", solver]) == (
        f"netcompress train: error: {solver} (net_param): layer 'ip' (type InnerProduct): "
        "inner_product_param.num_output must be positive")


@pytest.mark.parametrize("env, value", [("NETCOMPRESS_SIMD", "foo"), ("NETCOMPRESS_CPU_MATMUL", "mkl")])
def test_a_misspelt_switch_met_in_a_nets_set_up_blames_no_file(tmp_path, monkeypatch, env, value):
    # (it read "net.prototxt: NETCOMPRESS_SIMD must be ...", as if the net were at fault)
    from netcompress.errors import SettingError

    path = lenet(tmp_path)
    monkeypatch.setenv(env, value)
    assert error_of(SettingError, Net, path).startswith(f"{env} must be ")


def test_tool_errors_name_the_files_once_and_no_placeholder(tmp_path, capsys):
    # The tools build nets and load models from messages they made; the errors still name the user's
    # files (not "<NetParameter>"), each once, and the layer once.
    net_path, param = _lenet_model(tmp_path)
    model = str(tmp_path / "lenet.caffemodel")
    ncio.write_caffemodel(model, param)
    padded = lenet(tmp_path, "kernel_size: 5", "kernel_size: 5 pad: 1", "padded.prototxt")
    astray = lenet(tmp_path, 'bottom: "pool2"', 'bottom: "nowhere"', "astray.prototxt")
    two_tops = lenet(tmp_path, 'top: "conv1"', 'top: "conv1" top: "extra"', "two_tops.prototxt")
    out = [str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")]
    unknown = "Unknown bottom blob 'nowhere' (layer 'ip1', bottom index 0)"
    for argv, expected in (
            (["net2wider", "--layer", "ip1", "--width", "30", padded, model, *out],
             f"{model} does not load into {padded}: Cannot copy param 0 weights from layer 'ip1'; shape mismatch"),
            (["net2deeper", "--after", "ip1", astray, model, *out],
             f"cannot build the TEST-phase net of {astray} (data layers open their sources, relative to the "
             f"current folder): {unknown}"),
            (["snip_prune", "--keep-ratio", "0.5", astray, model, *out],
             f"cannot build the TRAIN net of {astray} (its layers conv1, conv2, ip1, ip2 masked): {unknown}"),
            (["micronet_score", two_tops, model],
             f"{two_tops}: layer 'conv1' (type Convolution): needs as many tops as bottoms, got 1 bottoms and 2 tops"),
            (["dns_to_normal", dns_deploy(tmp_path), model, astray, out[1]],
             f"cannot build the net of {astray} (TEST phase, as pycaffe did; data layers open their sources): "
             f"{unknown}")):
        said = cli_error(capsys, argv)
        assert said.startswith(f"Error: {expected}"), (argv[0], said)
        assert "<NetParameter>" not in said and said.count(astray) <= 1, said


# ----------------------------------------------------------------------------------------------
# Accepted but wrong
# ----------------------------------------------------------------------------------------------

def test_models_that_fill_no_layer_are_errors(tmp_path, capsys):
    net_path, param = _lenet_model(tmp_path)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    assert cli_error(capsys, ["test", "--model", net_path, "--weights", str(empty)]) == (
        f"netcompress test: error: {empty}: the model holds no layers (an empty or truncated file?); the net "
        f"{net_path} has 4 layer(s) with weights to fill")
    assert cli_error(capsys, ["test", "--model", net_path, "--weights", "/dev/null"]) == (
        "netcompress test: error: /dev/null: is a character device, expected a caffemodel: netcompress reads only "
        "regular files (a pipe or a device may block or never end)")
    for lp in param.layer:
        lp.name = "old_" + lp.name
    other = tmp_path / "other.caffemodel"
    ncio.write_caffemodel(str(other), param)
    message = (f"{other}: no layer of the model matches a layer of the net {net_path} by name (the model has "
               "'old_conv1', 'old_conv2', 'old_ip1', 'old_ip2'; the net has 'conv1', 'conv2', 'ip1', 'ip2'), so no "
               "weight would be loaded; are the model and the net from the same training?")
    assert cli_error(capsys, ["test", "--model", net_path, "--weights", str(other)]) == \
        f"netcompress test: error: {message}"
    solver = solver_file(tmp_path)
    assert cli_error(capsys, ["train", "--solver", solver, "--weights", str(other)]).endswith(
        f"{other}: no layer of the model matches a layer of the net {solver} (net_param) by name (the model has "
        "'old_conv1', 'old_conv2', 'old_ip1', 'old_ip2'; the net has 'ip'), so no weight would be loaded; are "
        "the model and the net from the same training?")


def test_an_empty_net_does_not_train(tmp_path, capsys):
    net = tmp_path / "empty.prototxt"
    net.write_text('name: "empty"\n')
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{net}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 0\n')
    message = (f"netcompress train: error: {net}: the TRAIN net has no loss (no *Loss layer and no loss_weight; it "
               "has no layers at all): nothing to train")
    assert cli_error(capsys, ["train", "--solver", str(solver)]) == message  # was "Iteration 0, loss = 0"
    assert cli_error(capsys, ["train", "--solver", str(solver), "--iterations", "5"]) == message
    assert sorted(os.listdir(tmp_path)) == ["empty.prototxt", "s.prototxt"]


def test_a_net_whose_losses_all_weigh_zero_says_so(tmp_path, capsys):
    net = tmp_path / "zero.prototxt"
    net.write_text('name: "zero"\nlayer { name: "data" type: "DummyData" top: "data" top: "t" dummy_data_param { '
                   'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }\nlayer { name: "l2" type: "EuclideanLoss" '
                   'bottom: "data" bottom: "t" top: "l2" loss_weight: 0 }\n')
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{net}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n')
    assert cli_error(capsys, ["train", "--solver", str(solver)]) == (  # (it said "no *Loss layer" only)
        f"netcompress train: error: {net}: the TRAIN net has no loss (no *Loss layer and no loss_weight; its loss "
        "layers (l2) all have loss_weight: 0): nothing to train")


@pytest.mark.parametrize("line, message", [
    ("base_lr: -0.01", "base_lr must be >= 0, got -0.01"),
    ("base_lr: -inf", "base_lr must be a finite number, got -inf"),
    ('lr_policy: "multistep" stepvalue: 20 stepvalue: 10', "stepvalue must be in increasing order, got 20 then "
                                                           "10 (stepvalue[0], stepvalue[1])"),
    ('lr_policy: "multistep" stepvalue: -5', "stepvalue must be >= 0, got stepvalue[0] = -5"),
    ("max_iter: -1", "max_iter must be >= 0, got -1"),
    ("momentum: 2", "momentum must be in [0, 1), got 2"),
    ("test_iter: -1", "test_iter must be positive, got -1"),
])
def test_solver_values_that_were_accepted(tmp_path, capsys, line, message):
    keys = {k.strip() for k in line.replace('"', " ").split() if k.endswith(":")}
    text = "\n".join(l for l in TINY_SOLVER.splitlines() if l.split(":")[0] + ":" not in keys)
    path = tmp_path / "s.prototxt"
    path.write_text(text + "\n" + line + ("\ntest_net_param { name: 't' }" if "test_iter" in line else "") + "\n")
    assert cli_error(capsys, ["train", "--solver", str(path)]) == f"netcompress train: error: {path}: {message}"


def test_negative_iterations_are_refused(tmp_path, capsys):
    path = solver_file(tmp_path)
    assert cli_error(capsys, ["train", "--solver", path, "--iterations", "-1"]) == \
        "netcompress train: error: --iterations must be at least 0, got -1"


def test_duplicate_singular_fields_are_refused_as_caffe_does(tmp_path, capsys):
    path = solver_file(tmp_path, "base_lr: 0.5\n")
    line = TINY_SOLVER.count("\n") + 1
    assert cli_error(capsys, ["train", "--solver", path]) == (
        f"netcompress train: error: {path}:{line}:10: Message type \"caffe.SolverParameter\" should not have "
        "multiple \"base_lr\" fields. (while parsing a caffe.SolverParameter)")
    repeated = solver_file(tmp_path, "", "ok.prototxt")  # repeated fields repeat, as ever
    assert ncio.read_solver(repeated).max_iter == 2


@pytest.mark.parametrize("old, new, message", [
    ("c_rate: 0.4", "c_rate: nan", "dns_convolution_param.c_rate must be a finite number, got nan"),
    ("c_rate: 0.4", "c_rate: inf", "dns_convolution_param.c_rate must be a finite number, got inf"),
    ("power: 1.0", "power: 0", "dns_convolution_param.power must be > 0 (the surgery probability is "
                               "(1 + gamma*iter)^-power), got 0"),
    ("power: 1.0", "power: -2", "dns_convolution_param.power must be > 0 (the surgery probability is "
                                "(1 + gamma*iter)^-power), got -2"),
    ("c_rate: 0.4", "c_rate: 0.4 alpha_low: 1.2 alpha_high: 1.1",
     "dns_convolution_param: expected 0 <= alpha_low <= alpha_high (prune at |w| <= alpha_low*T, splice at "
     "|w| > alpha_high*T), got alpha_low 1.2, alpha_high 1.1"),
])
def test_dns_parameters_that_were_accepted(tmp_path, old, new, message):
    path = dns_deploy(tmp_path, old, new)
    assert error_of(NetDefinitionError, Net, path) == f"{path}: layer 'conv1' (type DNSConvolution): {message}"


def test_negative_c_rate_stays_accepted(tmp_path):
    # The reference's AlexNet DNS nets use c_rate -0.8 ... (reference-semantics 2.3): T = max(mu + c*std, 0).
    net = Net(dns_deploy(tmp_path, "c_rate: 0.4", "c_rate: -1"), phase="train", verbose=False)
    assert net.layer("conv1").c_rate == -1.0


def _dns_model(tmp_path: Path) -> tuple[str, pb.NetParameter, pb.LayerParameter]:
    """The DNS deploy net's file, its model as a NetParameter (Split layers included), and that model's conv1."""
    path = dns_deploy(tmp_path)
    param = Net(path, seed=1, verbose=False).to_proto()
    return path, param, next(lp for lp in param.layer if lp.name == "conv1")


def test_nan_weights_and_odd_masks_load_with_warnings(tmp_path, caplog):
    path, param, conv1 = _dns_model(tmp_path)
    conv1.blobs[0].data[3] = float("nan")
    conv1.blobs[2].data[7] = 0.5
    model = tmp_path / "odd.caffemodel"
    ncio.write_caffemodel(str(model), param)
    net = Net(path, verbose=False)
    with caplog.at_level("WARNING", logger="netcompress"):
        net.copy_from(str(model))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"{model}: layer 'conv1' blob 0 (weight) holds 1 NaN or infinite value(s) of 500: the net's outputs will "
        "not be finite (a diverged training's snapshot?)",
        "layer 'conv1' (DNSConvolution): the model's weight_mask holds 1 value(s) other than 0 and 1 (e.g. 0.5) "
        "of 500; masks should hold only 0 and 1 (the layer uses them as they are)"]


def test_converters_warn_about_odd_values_and_model2inq_refuses_them(tmp_path, capsys):
    path, param, conv1 = _dns_model(tmp_path)
    conv1.blobs[2].data[7] = 0.5
    model = tmp_path / "odd.caffemodel"
    ncio.write_caffemodel(str(model), param)
    normal = lenet(tmp_path, "64 dim: 1 dim: 28", "2 dim: 1 dim: 28", "normal.prototxt")
    capsys.readouterr()
    assert cli.main(["dns_to_normal", path, str(model), normal, str(tmp_path / "n.caffemodel")]) == 0
    assert printed(capsys.readouterr().err) == [
        f"Warning: {model}: layer 'conv1': W_mask holds 1 value(s) other than 0 and 1"]
    inq = lenet(tmp_path, "", "", "inq.prototxt", text=Path(normal).read_text().replace(
        'type: "Convolution"', 'type: "INQConvolution"').replace(
        "convolution_param {", "inq_convolution_param { portion: 0 portion: 0.5 }\n  convolution_param {"))
    assert cli_error(capsys, ["model2INQ_raw", path, str(model), inq, str(tmp_path / "i.caffemodel")]) == (
        f"Error: {model}: layer 'conv1': W_mask holds 1 value(s) other than 0 and 1: an INQ raw model cannot be "
        "made from it (INQ quantizes the weights to powers of two and needs 0/1 masks)")


def test_decode_compact_refuses_a_net_of_other_shapes(tmp_path, capsys):
    from netcompress.tools.compact import encode_compact

    normal = lenet(tmp_path, "64 dim: 1 dim: 28", "2 dim: 1 dim: 28", "normal.prototxt")
    param = Net(normal, seed=1, verbose=False).to_proto()
    for lp in param.layer:
        for b in lp.blobs:
            a = ncio.blob_to_array(b)
            ncio.array_to_blob(np.where(a > 0, 0.125, np.where(a < 0, -0.25, 0)).astype(np.float32), b)
    model = tmp_path / "pow2.caffemodel"
    ncio.write_caffemodel(str(model), param)
    binary = tmp_path / "m.binary"
    encode_compact(normal, str(model), str(binary), quiet=True)
    wider = lenet(tmp_path, "num_output: 500", "num_output: 600", "wider.prototxt",
                  text=Path(normal).read_text())
    assert cli_error(capsys, ["decode_compact", wider, str(binary), str(tmp_path / "d.caffemodel")]) == (
        f"Error: {binary}: layer 3 ('ip1') was encoded with weight shape [500, 800] ({binary}.shapes.json), the "
        f"net {wider} has [600, 800] for its layer 'ip1': the file does not match the net")
    assert cli.main(["decode_compact", normal, str(binary), str(tmp_path / "d.caffemodel")]) == 0


def test_parse_model_refuses_to_overwrite_its_input(tmp_path, capsys):
    _, param = _lenet_model(tmp_path)
    model = tmp_path / "m.caffemodel"
    ncio.write_caffemodel(str(model), param)
    before = model.read_bytes()
    assert cli_error(capsys, ["parse_model", str(model), str(model)]) == (
        f"Error: {model} is also the binary model ({model}): writing the output there would destroy the input; "
        "give another output file")
    link = tmp_path / "link.txt"
    os.symlink(model, link)
    assert cli_error(capsys, ["parse_model", str(model), str(link)]).startswith(f"Error: {link} is also the binary")
    assert model.read_bytes() == before


@pytest.mark.parametrize("argv, what", [
    # (each wrote its result over the input it was given as the output, as parse_model had)
    (["net2wider", "P", "M", "o.prototxt", "M", "--layer", "ip1", "--width", "600"], "input model"),
    (["net2deeper", "P", "M", "P", "o.caffemodel", "--after", "ip1"], "input prototxt"),
    (["rename_layers", "P", "M", "o.prototxt", "M"], "input model"),
    (["snip_prune", "P", "M", "o.prototxt", "M", "--keep-ratio", "0.5"], "weights"),
    (["bn_reestimate", "P", "M", "M"], "weights"),
    (["dump_logits", "P", "M", "P", "--blob", "ip2", "--out", "M"], "weights 1"),
    (["micronet_merge", "P", "M", "P", "o.caffemodel"], "student prototxt"),
    (["compress_epsilon_resnet", "P", "M", "o.prototxt", "M", "--solverstate", "M"], "weights"),
    (["import_pth", "M", "P", "M", "--map", "micronet-densenet-final"], "state dict"),
    (["make_sdn_net", "P", "--ics", "1", "--out", "P"], "template"),
    (["net2net_mutate", "N", "M", "."], "input prototxt"),  # (a mutant mutated in its own folder)
])
def test_recipe_tools_refuse_to_overwrite_their_inputs(tmp_path, capsys, argv, what):
    net_path, param = _lenet_model(tmp_path)
    model = tmp_path / "m.caffemodel"
    ncio.write_caffemodel(str(model), param)
    files = {"P": net_path, "M": str(model)}  # (net_path is tmp_path/net.prototxt: net2net_mutate's output name)
    before = {p: Path(p).read_bytes() for p in files.values()}
    names = {**files, "N": net_path, ".": str(tmp_path)}
    err = cli_error(capsys, [names.get(x, str(tmp_path / x) if x.startswith("o.") else x) for x in argv])
    assert f"is also the {what} (" in err and "writing the output there would destroy the input" in err, err
    assert {p: Path(p).read_bytes() for p in files.values()} == before


@pytest.mark.parametrize("argv, said", [
    # (each wrote its first output, then the second over it: the net was lost, or the logits under their list)
    (["rename_layers", "P", "M", "o.x", "o.x"], "o.x is given for two outputs: the second would replace the first"),
    (["net2wider", "P", "M", "o.x", "o.x", "--layer", "ip1", "--width", "600"], "o.x is given for two outputs"),
    (["snip_prune", "P", "M", "o.x", "o.x", "--keep-ratio", "0.5"], "o.x is given for two outputs"),
    (["dump_logits", "P", "M", "P", "--blob", "ip2", "--out", "o.h5", "--list", "o.h5"],
     "o.h5 is given for two outputs (the logits and the list file)"),
    (["dump_logits", "P", "M", "P", "--blob", "ip2", "--out", "o.txt"],
     "the list file's default name (the output's, ending .txt) is the output itself; name the HDF5 file .h5, or "
     "give --list"),
])
def test_two_outputs_given_one_file_are_refused(tmp_path, capsys, argv, said):
    net_path, param = _lenet_model(tmp_path)
    model = tmp_path / "m.caffemodel"
    ncio.write_caffemodel(str(model), param)
    names = {"P": net_path, "M": str(model)}
    err = cli_error(capsys, [names.get(x, str(tmp_path / x) if x.startswith("o.") else x) for x in argv])
    assert said in err, err
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize("argv, said", [
    # (each wrote its output over the file it was given: a training log replaced by its chart or seconds, images
    # by their predictions, a net by its drawing; or over a net or solver definition given out of order)
    (["plot", "L", "--out", "L"], "is also the training log ("),
    (["plot", "L", "L2", "--out", "L2"], "is also the training log 2 ("),
    (["plot", "L", "--out", "P"], "is a net prototxt (9 layers), which writing the chart there would replace"),
    (["extract_seconds", "L", "L"], "is also the input file ("),
    (["plot_training_log", "0", "L", "L"], "is also the training log ("),
    (["plot_training_log", "0", "S", "L"], "is a solver prototxt, which writing the chart there would replace"),
    (["draw_net", "P", "P"], "is also the input net proto file ("),
    (["draw_net", "P", "S"], "is a solver prototxt, which writing the drawing there would replace"),
    (["classify", "--model_def", "P", "--pretrained_model", "M", "I", "I"], "is also the input file ("),
    (["classify", "--model_def", "P", "--pretrained_model", "M", "I", "I0"], "is also the input file ("),  # (+ .npy)
    (["detect", "--model_def", "P", "--pretrained_model", "M", "W", "W"], "is also the input file ("),
    (["detect", "--model_def", "P", "--pretrained_model", "M", "W", "S"], "is a solver prototxt, which writing the "
                                                                          "detections there would replace"),
    # (and the JSON and plot outputs of the reports: `report net model --json model` replaced the model)
    (["report", "P", "M", "--json", "M"], "is also the model ("),
    (["sdn_early_exit", "P", "M", "--outputs", "ip2", "--json", "M"], "is also the weights ("),
    (["sdn_early_exit", "P", "M", "--outputs", "ip2", "--json", "L", "--plot", "L"],
     "is given for two outputs (the JSON table and the plot)"),
    (["micronet_score", "P", "M", "--json", "P"], "is also the prototxt ("),
])
def test_the_caffe_tools_refuse_to_overwrite_their_inputs(tmp_path, capsys, argv, said):
    net_path, param = _lenet_model(tmp_path)
    files = {"P": net_path, "M": str(tmp_path / "m.caffemodel"), "L": str(tmp_path / "train.log"),
             "L2": str(tmp_path / "train2.log"), "S": str(tmp_path / "solver.prototxt"),
             "I": str(tmp_path / "images.npy"), "W": str(tmp_path / "windows.csv")}
    ncio.write_caffemodel(files["M"], param)
    for log in ("L", "L2"):
        Path(files[log]).write_text("I1207 10:00:00.000000 1 solver.py:1] Iteration 0, loss = 2.3\n")
    Path(files["S"]).write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n')
    np.save(files["I"], np.zeros((1, 28, 28, 1), np.float32))
    Path(files["W"]).write_text("filename,ymin,xmin,ymax,xmax\n")
    before = {p: Path(p).read_bytes() for p in files.values()}
    err = cli_error(capsys, [files.get(x, str(tmp_path / "images") if x == "I0" else x) for x in argv])
    assert said in err, err
    assert {p: Path(p).read_bytes() for p in files.values()} == before


# ----------------------------------------------------------------------------------------------
# Interrupted writers and symlinked outputs
# ----------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, sys, time
    from netcompress import io as ncio

    def stall(fd):  # the write is done; the writer is about to rename: a signal arrives now
        print("writing", flush=True)
        time.sleep(120)
    os.fsync = stall
    ncio.atomic_write(sys.argv[1], b"new")
""")


def _start_writer(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "writing"
    return p


def _temporaries(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sigterm_while_saving_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "m.caffemodel"
    out.write_bytes(b"old")
    p = _start_writer(out)
    assert len(_temporaries(tmp_path)) == 1
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == -signal.SIGTERM  # still dies of the signal
    assert _temporaries(tmp_path) == [] and out.read_bytes() == b"old"


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "m.caffemodel"
    out.write_bytes(b"old")
    p = _start_writer(out)
    p.kill()
    assert p.wait(timeout=60) == -signal.SIGKILL
    [left] = _temporaries(tmp_path)
    assert left.startswith(".m.caffemodel.") and len(left) == len(".m.caffemodel.") + 8 + len(".tmp")
    ncio.atomic_write(out, b"next")  # too young to be judged stale: kept
    assert _temporaries(tmp_path) == [left]
    _age(tmp_path / left, ncio.STALE_TMP_SECONDS + 1)
    others = [tmp_path / ".other.bin.abcdefgh.tmp", tmp_path / ".m.caffemodel.notmine.tmp"]
    for f in others:  # another file's temporary, and a name not of the writer's pattern
        f.write_bytes(b"")
        _age(f, 3600)
    ncio.atomic_write(out, b"next")
    assert out.read_bytes() == b"next"
    assert _temporaries(tmp_path) == sorted(f.name for f in others)


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    out = tmp_path / "m.caffemodel"
    p = _start_writer(out)
    try:
        [live] = _temporaries(tmp_path)
        _age(tmp_path / live, 3600)  # old, but its writer holds it
        ncio.atomic_write(out, b"mine")
        assert _temporaries(tmp_path) == [live] and out.read_bytes() == b"mine"
    finally:
        p.kill()
        p.wait(timeout=60)
    ncio.atomic_write(out, b"again")  # its writer is gone now
    assert _temporaries(tmp_path) == []


def test_an_output_symlink_is_written_through(tmp_path):
    target = tmp_path / "models" / "m.caffemodel"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "latest.caffemodel"
    os.symlink(os.path.relpath(target, tmp_path), link)
    ncio.atomic_write(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    dangling = tmp_path / "next.caffemodel"
    os.symlink(tmp_path / "models" / "n.caffemodel", dangling)
    ncio.atomic_write(dangling, b"made")
    assert dangling.is_symlink() and (tmp_path / "models" / "n.caffemodel").read_bytes() == b"made"


# ----------------------------------------------------------------------------------------------
# The error boundary
# ----------------------------------------------------------------------------------------------

def test_an_error_is_printed_once(tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["time", "--model", str(tmp_path / "none.prototxt")]) == 1
    err = capsys.readouterr().err
    # the log's own lines (Caffe's, e.g. "Use CPU.") come first; the error comes once, last
    assert [l for l in err.splitlines() if "none.prototxt" in l] == [
        f"netcompress time: error: {tmp_path}/none.prototxt: no such file"]
    assert err.endswith("no such file\n")


def _boom(argv):
    raise ZeroDivisionError("division by zero")


def _denied(argv):
    raise PermissionError(errno.EACCES, "Permission denied", "/some/where")


def test_a_bug_prints_one_line_and_saves_its_traceback(capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_command", lambda name: _boom)
    monkeypatch.delenv("NETCOMPRESS_DEBUG", raising=False)
    assert cli.main(["time"]) == 1
    err = capsys.readouterr().err
    [line] = printed(err)
    prefix = "netcompress time: error: unexpected ZeroDivisionError: division by zero (a bug in netcompress; " \
             "the traceback is in "
    assert line.startswith(prefix) and line.endswith("; --debug prints it)")
    saved = line[len(prefix):-len("; --debug prints it)")]
    text = Path(saved).read_text()
    os.unlink(saved)
    assert text.startswith("Traceback (most recent call last):") and "_boom" in text
    assert cli.main(["time", "--debug"]) == 1
    err = "\n".join(printed(capsys.readouterr().err))
    assert err.startswith("Traceback (most recent call last):") and err.splitlines()[-1] == (
        "netcompress time: error: unexpected ZeroDivisionError: division by zero (a bug in netcompress; the "
        "traceback is above)")
    monkeypatch.setattr(cli, "load_command", lambda name: _denied)
    assert cli.main(["time"]) == 1
    assert printed(capsys.readouterr().err) == ["netcompress time: error: /some/where: permission denied"]


@pytest.mark.parametrize("exc, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1099511628800 bytes. Error code 12 (Cannot allocate memory)"),
     "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
     "allocate 1099511628800 bytes. Error code 12 (Cannot allocate memory)"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total capacity)\nmore"),
     "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total capacity)"),
    (MemoryError(), "MemoryError"),
])
def test_running_out_of_memory_is_one_line_not_a_bug(capsys, monkeypatch, exc, said):
    # (it was reported as "unexpected ... (a bug in netcompress ...)", with a saved traceback)
    def oom(argv):
        raise exc
    monkeypatch.setattr(cli, "load_command", lambda name: oom)
    monkeypatch.delenv("NETCOMPRESS_DEBUG", raising=False)
    assert cli.main(["time"]) == 1
    assert printed(capsys.readouterr().err) == [
        f"netcompress time: error: out of memory: {said} (more than the machine or GPU has: lower a net's "
        "batch_size, or check the layers' sizes and the sizes the command was given)"]


def test_the_scripts_share_the_boundary(tmp_path, capsys, monkeypatch):
    from netcompress.tools._common import run_main

    monkeypatch.setenv("NETCOMPRESS_DEBUG", "1")  # inline: no saved file to clean up
    assert run_main(lambda args: _boom(args), "usage", [], None) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "Error: unexpected ZeroDivisionError: division by zero (a bug in netcompress; the traceback is above)")
    monkeypatch.delenv("NETCOMPRESS_DEBUG")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fifo = tmp_path / "m.fifo"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, str(REPO / "compression_scripts" / "parse_model.py"), str(fifo),
                        str(tmp_path / "o.txt")], env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (1, f"Error: {fifo}: is a FIFO (named pipe), expected a file: netcompress "
                                           "reads only regular files (a pipe or a device may block or never end)\n")
    r = subprocess.run([sys.executable, "-m", "netcompress", "test", "--model", str(fifo), "--weights", str(fifo)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr.splitlines()[-1] + "\n") == (1, f"netcompress test: error: {fifo}: is a FIFO (named pipe), expected a "
                                           "text prototxt: netcompress reads only regular files (a pipe or a "
                                           "device may block or never end)\n")


@pytest.mark.parametrize("argv", [
    ["net2wider", "a.prototxt", "a.caffemodel", "b.prototxt", "b.caffemodel", "--layer", "ip1", "--width", "9"],
    ["net2deeper", "a.prototxt", "a.caffemodel", "b.prototxt", "b.caffemodel", "--after", "ip1"],
    ["net2net_mutate", "a.prototxt", "a.caffemodel", "out"],
    ["net2net_search", "a.prototxt", "a.caffemodel", "solver.prototxt", "out"],
    ["snip_prune", "a.prototxt", "b.prototxt", "b.caffemodel", "--keep-ratio", "0.5"],
    ["bn_reestimate", "a.prototxt", "a.caffemodel", "b.caffemodel"],
    ["convert_mnist_siamese", "images", "labels", "db"],
    ["convert_imageset", "root/", "list.txt", "db", "--shuffle"],
    ["pipeline", "--out", "run"],
])
def test_a_seed_out_of_range_is_a_usage_error(tmp_path, monkeypatch, capsys, argv):
    # (a negative --seed was numpy's "expected non-negative integer" and one past 2^63 torch's "Overflow when
    # unpacking long long", both as unexpected errors, or the pipeline's parse error in a solver it wrote)
    monkeypatch.chdir(tmp_path)
    for seed in (["-1"] if argv[0] != "pipeline" else []) + [str(2**63)]:
        try:
            rc = cli.main(argv + ["--seed", seed])
        except SystemExit as e:  # (the core commands leave argparse's exit to the process)
            rc = e.code
        assert rc == 2, seed
        assert "argument --seed: a seed is an integer from " in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, said", [
    # (protobuf's range error: in a solver the pipeline wrote, or unexpected for --level)
    (["pipeline", "--out", "run", "--ref-iters", str(2**31)],
     "--ref-iters takes at most 2147483647 (a solver's int max_iter), got 2147483648"),
    (["test", "--model", "n.prototxt", "--weights", "w.caffemodel", "--level", str(2**31)],
     "argument --level/-level: NetState's level is a 32-bit integer (-2147483648 to 2147483647), got 2147483648"),
])
def test_integers_past_a_caffe_int_are_named(tmp_path, monkeypatch, capsys, argv, said):
    monkeypatch.chdir(tmp_path)
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc in (1, 2) and said in capsys.readouterr().err


def test_fewer_test_iter_values_than_test_nets_is_refused(tmp_path, capsys):
    """Two test_net files and one test_iter beside a general net made a negative count of general test nets:
    the second test net's run was an IndexError (found by the CLI fuzz, seed 840). Caffe's CHECK_GE."""
    net = tmp_path / "net.prototxt"
    net.write_text('name: "t"\n')  # (refused before any test net is built)
    solver = solver_file(tmp_path, f'test_net: "{net}"\ntest_net: "{net}"\ntest_iter: 1\ntest_interval: 1\n')
    said = cli_error(capsys, ["train", "--solver", solver])
    assert said == (f"netcompress train: error: {solver}: test_iter must be specified for each test network (2 test "
                    "nets, 1 test_iter values)"), said
