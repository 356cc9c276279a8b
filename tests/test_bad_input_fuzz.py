"""Fuzz: generated mutations of the example nets, solvers, models and data sources, run through the command
line in process: training, testing, timing and the conversion, recipe, log and net tools (and a few hostile
paths in subprocesses).

Every case must end with exit 0, 1 (an error the input caused, one line) or 2 (a usage error), never
with a traceback ("unexpected ..." from the error boundary), never past its time limit, never with a Python
warning, never with an error line that names a net "<NetParameter>", names a layer twice or holds an OS error's
raw text, and never leave a temporary file behind. Mutations known to be invalid (the parameters of issue 22) must be
refused with exit 1 and their message. Deterministic: fixed seeds, no dependence on time.

A deeper campaign, by hand: NETCOMPRESS_FUZZ_SEED=N (default 22) draws other cases, NETCOMPRESS_FUZZ_SCALE=K
(default 1) draws K times as many, e.g. `for n in $(seq 100 110); do NETCOMPRESS_FUZZ_SEED=$n
NETCOMPRESS_FUZZ_SCALE=2 python -m pytest -q tests/test_bad_input_fuzz.py; done` (about 40 s a seed on
2 cores); a case it finds belongs in a test of its own.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import random
import re
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from db_helpers import write_datum_lmdb
from netcompress import cli
from netcompress import io as ncio
from netcompress.proto import caffe_pb2 as pb, is_repeated


REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("NETCOMPRESS_FUZZ_SEED", "22"))
HAVE_PLYVEL = importlib.util.find_spec("plyvel") is not None  # (LevelDB cases only where it is installed)
SCALE = float(os.environ.get("NETCOMPRESS_FUZZ_SCALE", "1"))
CASE_SECONDS = 20.0  # a case past this is a hang (the slowest legitimate case takes ~1 s)


# ----------------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past its limit (a BaseException, so that no error
    boundary turns it into an ordinary error)."""


@contextlib.contextmanager
def _chdir(path):
    """contextlib.chdir, which is Python 3.11+."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Case:
    kind: str                     # "net", "solver", "model", "compact", "text", ...
    label: str                    # what was mutated
    argv: list[str]
    refuse: str | None = None     # a fragment the error line must hold (an invalid parameter)


@dataclass
class Outcome:
    case: Case
    rc: int | None
    err: str
    problem: str = ""


@contextlib.contextmanager
def seeded():
    """Unseeded nets and data layers draw from fixed streams here (they use os.urandom, secrets and
    torch's initial seed), so every case computes the same values on every run."""
    import torch
    from unittest import mock

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    with mock.patch("netcompress.rng.os.urandom", lambda n: bytes(range(1, n + 1))), \
            mock.patch("netcompress.layers.data.secrets.randbits", lambda k: SEED):
        yield


def run_case(case: Case) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    rc: int | None = None
    problem = ""
    try:
        with time_limit(CASE_SECONDS), seeded(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc = cli.main(case.argv)
    except CaseTimeout:
        problem = f"hang (over {CASE_SECONDS:g} s)"
    except SystemExit as e:  # argparse's usage errors
        rc = int(e.code or 0)
    text = err.getvalue()
    if not problem:
        if rc not in (0, 1, 2):
            problem = f"exit {rc}"
        elif "Traceback" in text or "unexpected " in text and "(a bug in netcompress" in text:
            problem = "traceback"
        elif caught:  # numpy's, torch's or matplotlib's warning, printed to the user as it is
            problem = f"a Python warning: {caught[0].category.__name__}: {caught[0].message} ({caught[0].filename}:" \
                      f"{caught[0].lineno})"
        elif _muddled(text):
            problem = f"a muddled message ({_muddled(text)})"
        elif case.refuse is not None and (rc != 1 or case.refuse not in text):
            problem = f"accepted or vague (exit {rc}; expected the error to say {case.refuse!r})"
    return Outcome(case, rc, text, problem)


def _muddled(text: str) -> str:
    """What makes the error line hard to read: a net or record named by a placeholder instead of its file,
    the same layer named twice with its type, or an OS error's raw text ("[Errno 2] No such file ...")."""
    said = [l for l in text.splitlines() if l.startswith("Error: ") or " error: " in l]
    if not said:
        return ""
    if "<NetParameter>" in said[-1] or "<datum>" in said[-1]:
        return "a placeholder for the file"
    if "[Errno " in said[-1]:
        return "an OS error's raw text"
    m = re.search(r"(layer '[^']*') \(.*\1 \(", said[-1])  # "layer 'x' (type T): ... layer 'x' (..."
    return f"{m.group(1)} named twice" if m else ""


def check_outcomes(outcomes: list[Outcome], folder: Path) -> None:
    leftovers = [str(p) for p in folder.rglob("*.tmp")]
    bad = [o for o in outcomes if o.problem]
    lines = []
    for o in bad[:25]:
        tail = [l for l in o.err.strip().splitlines() if l.strip()][-3:]
        lines.append(f"[{o.case.kind}] {o.case.label}: {o.problem}\n    argv: {o.case.argv}\n    "
                     + "\n    ".join(tail))
    assert not bad, f"{len(bad)} of {len(outcomes)} cases failed:\n" + "\n".join(lines)
    assert not leftovers, f"temporary files left behind: {leftovers}"


def run_and_check(cases: list, work: Path, folder: Path | None = None, ends: tuple[int, int] | None = None) -> None:
    """Run `cases` in `folder` (default `work`; a case given as (folder, case) runs in its own), check their
    outcomes, and with `ends` = (a, b) that more than a ran (exit 0) and more than b were refused (exit 1):
    the fuzz reaches both ends."""
    outcomes = []
    for case in cases:
        where, case = case if isinstance(case, tuple) else (folder or work, case)
        with _chdir(where):
            outcomes.append(run_case(case))
    check_outcomes(outcomes, work)
    if ends is not None:
        rcs = [o.rc for o in outcomes]
        assert rcs.count(0) > ends[0] and rcs.count(1) > ends[1], (rcs.count(0), rcs.count(1))


# ----------------------------------------------------------------------------------------------
# A working folder like the examples expect (tiny LMDBs at data/mnist5k_*_lmdb)
# ----------------------------------------------------------------------------------------------

NET_FILES = ["examples/mnist/lenet_train_test.prototxt", "examples/mnist/lenet_train_test_DNS.prototxt",
             "examples/mnist/lenet_train_test_inq_60.prototxt", "examples/mnist/lenet.prototxt",
             "examples/cifar10/cifar10_quick.prototxt", "examples/kd/lenet_student_kd_train_test.prototxt",
             "examples/eresnet/eresnet20_mnist.prototxt"]


# Every layer type whose parameters the example nets leave out, each with its parameters set (so
# that mutations reach them): builds, runs forward and backward, and trains.
ZOO = """
name: "zoo"
layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "dummy" type: "DummyData" top: "noise" dummy_data_param { shape { dim: 2 dim: 4 } data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 dilation: 1 group: 1 weight_filler { type: "msra" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv" convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 2 weight_filler { type: "bilinear" } } }
layer { name: "pool0" type: "Pooling" bottom: "deconv" top: "pool0" pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 0 } }
layer { name: "bn" type: "BatchNorm" bottom: "pool0" top: "bn" batch_norm_param { use_global_stats: false moving_average_fraction: 0.999 eps: 1e-5 } }
layer { name: "scale" type: "Scale" bottom: "bn" top: "scale" scale_param { axis: 1 num_axes: 1 bias_term: true filler { type: "constant" value: 1 } } }
layer { name: "prelu" type: "PReLU" bottom: "scale" top: "prelu" prelu_param { channel_shared: false filler { type: "constant" value: 0.25 } } }
layer { name: "elu" type: "ELU" bottom: "prelu" top: "elu" elu_param { alpha: 1 } }
layer { name: "lrn" type: "LRN" bottom: "elu" top: "lrn" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 1 norm_region: ACROSS_CHANNELS } }
layer { name: "mvn" type: "MVN" bottom: "lrn" top: "mvn" mvn_param { normalize_variance: true across_channels: false eps: 1e-9 } }
layer { name: "slice" type: "Slice" bottom: "mvn" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 2 } }
layer { name: "concat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" concat_param { axis: 1 } }
layer { name: "eltwise" type: "Eltwise" bottom: "cat" bottom: "mvn" top: "elt" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "power" type: "Power" bottom: "elt" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "pow" top: "exp" exp_param { base: -1 scale: 0.1 shift: 0 } }
layer { name: "log" type: "Log" bottom: "exp" top: "log" log_param { base: -1 scale: 1 shift: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "log" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "mixpool" type: "MixedPooling" bottom: "log" top: "mixpool" mixed_pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "log" bottom: "pool1" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "reshape" type: "Reshape" bottom: "tile" top: "reshape" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "flatten" type: "Flatten" bottom: "pool1" top: "flat" flatten_param { axis: 1 end_axis: -1 } }
layer { name: "actq" type: "ActQuant" bottom: "reshape" top: "actq" act_quant_param { bitwidth: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "actq" top: "ip" inner_product_param { num_output: 5 axis: 1 weight_filler { type: "xavier" variance_norm: AVERAGE } bias_filler { type: "constant" } } }
layer { name: "qip" type: "QuantInnerProduct" bottom: "flat" top: "qip" inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } weight_quant_param { bitwidth: 4 } }
layer { name: "thresh" type: "Threshold" bottom: "ip" top: "th" threshold_param { threshold: 0 } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "drop" dropout_param { dropout_ratio: 0.5 } }
layer { name: "reduction" type: "Reduction" bottom: "mixpool" top: "red" reduction_param { operation: SUMSQ axis: 1 coeff: 1 } }
layer { name: "argmax" type: "ArgMax" bottom: "drop" top: "argmax" argmax_param { top_k: 1 axis: 1 } }
layer { name: "softmax" type: "Softmax" bottom: "drop" top: "prob" softmax_param { axis: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "th" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "qip" top: "tanh" }
layer { name: "absval" type: "AbsVal" bottom: "tanh" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "abs" top: "bnll" }
layer { name: "relu" type: "ReLU" bottom: "bnll" top: "relu" relu_param { negative_slope: 0.1 } }
layer { name: "embed" type: "Embed" bottom: "label" top: "emb" embed_param { input_dim: 10 num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bias" type: "Bias" bottom: "emb" top: "biased" bias_param { axis: 1 num_axes: 1 filler { type: "constant" } } }
layer { name: "param" type: "Parameter" top: "pblob" parameter_param { shape { dim: 2 dim: 5 } } }
layer { name: "eltwise2" type: "Eltwise" bottom: "biased" bottom: "pblob" top: "elt2" eltwise_param { operation: PROD } }
layer { name: "eltwise3" type: "Eltwise" bottom: "elt2" bottom: "relu" top: "elt3" eltwise_param { operation: MAX } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "drop" bottom: "label" top: "loss" loss_param { normalization: VALID ignore_label: -1 } }
layer { name: "eucl" type: "EuclideanLoss" bottom: "elt3" bottom: "prob" top: "eucl" loss_weight: 0.1 }
layer { name: "hinge" type: "HingeLoss" bottom: "ip" bottom: "label" top: "hinge" hinge_loss_param { norm: L2 } loss_weight: 0.1 }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "ip" bottom: "prob" top: "sce" loss_weight: 0.1 }
layer { name: "acc" type: "Accuracy" bottom: "drop" bottom: "label" top: "acc" accuracy_param { top_k: 2 } }
layer { name: "silence" type: "Silence" bottom: "argmax" bottom: "red" bottom: "noise" bottom: "sig" }
"""

# The remaining layer types (recurrent, compression and recipe layers, the rarer losses), likewise.
ZOO2 = """
name: "zoo2"
layer { name: "in" type: "Input" top: "data" top: "label" top: "seq" top: "cont" top: "sim" top: "H" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } shape { dim: 2 dim: 2 dim: 4 } shape { dim: 2 dim: 2 } shape { dim: 2 } shape { dim: 5 dim: 5 } } }
layer { name: "cconv" type: "CConvolution" bottom: "data" top: "cconv" convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } cconvolution_param { gamma: 0.0001 power: 1 c_rate: 1 iter_stop: 100 } }
layer { name: "mconv" type: "MaskedConvolution" bottom: "cconv" top: "mconv" convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "qconv" type: "QuantConvolution" bottom: "mconv" top: "qconv" convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } weight_quant_param { bitwidth: 4 } }
layer { name: "swish" type: "Swish" bottom: "qconv" top: "swish" swish_param { beta: 1 } }
layer { name: "clip" type: "Clip" bottom: "swish" top: "clip" clip_param { min: -1 max: 1 } }
layer { name: "iq" type: "IntQuant" bottom: "clip" top: "iq" int_quant_param { low: 0 high: 15 } }
layer { name: "spp" type: "SPP" bottom: "iq" top: "spp" spp_param { pyramid_height: 2 pool: MAX } }
layer { name: "im2col" type: "Im2col" bottom: "iq" top: "cols" convolution_param { kernel_size: 2 stride: 2 } }
layer { name: "cip" type: "CInnerProduct" bottom: "spp" top: "cip" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } cinner_product_param { gamma: 0.0001 power: 1 c_rate: 1 } }
layer { name: "mip" type: "MaskedInnerProduct" bottom: "cols" top: "mip" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "lstm" type: "LSTM" bottom: "seq" bottom: "cont" top: "h" recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "rnn" type: "RNN" bottom: "seq" bottom: "cont" top: "hr" recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "hsum" type: "Eltwise" bottom: "h" bottom: "hr" top: "hsum" }
layer { name: "hip" type: "InnerProduct" bottom: "hsum" top: "hip" inner_product_param { num_output: 1 axis: 2 weight_filler { type: "xavier" } } }
layer { name: "hloss" type: "EuclideanLoss" bottom: "hip" bottom: "cont" top: "hloss" loss_weight: 0.1 }
layer { name: "reidx" type: "BatchReindex" bottom: "mip" bottom: "label" top: "reidx" }
layer { name: "filt" type: "Filter" bottom: "cip" bottom: "sim" top: "filt" }
layer { name: "prob" type: "Softmax" bottom: "reidx" top: "prob" }
layer { name: "contrast" type: "ContrastiveLoss" bottom: "cip" bottom: "mip" bottom: "sim" top: "contrast" contrastive_loss_param { margin: 1 } loss_weight: 0.1 }
layer { name: "mlog" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "mlog" loss_weight: 0.1 }
layer { name: "info" type: "InfogainLoss" bottom: "cip" bottom: "label" bottom: "H" top: "info" loss_weight: 0.1 }
layer { name: "kd" type: "KDLoss" bottom: "cip" bottom: "mip" bottom: "label" top: "kd" kd_param { mode: HINTON temperature: 2 hard_weight: 0.5 } }
layer { name: "sdn" type: "SDNLoss" bottom: "mip" bottom: "cip" bottom: "label" top: "sdn" sdn_loss_param { epoch_iters: 2 } }
layer { name: "silence" type: "Silence" bottom: "filt" }
"""


def _small_batches(param: pb.NetParameter) -> pb.NetParameter:
    """The example net with batches of 2 (data layers and Input layers) and at most 20 outputs per
    inner product (LeNet's ip1 has 500), so a case runs in milliseconds."""
    for lp in param.layer:
        if lp.HasField("inner_product_param") and lp.inner_product_param.num_output > 20:
            lp.inner_product_param.num_output = 20
        if lp.HasField("data_param"):
            lp.data_param.batch_size = 2
        for s in lp.input_param.shape:
            if len(s.dim):
                s.dim[0] = min(s.dim[0], 2)
    return param


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    (root / "data").mkdir()
    for split in ("train", "test"):
        images = rng.integers(0, 256, size=(8, 1, 28, 28), dtype=np.uint8)
        write_datum_lmdb(root / "data" / f"mnist5k_{split}_lmdb", images, np.arange(8) % 10)
    for f in NET_FILES:
        param = _small_batches(ncio.read_net(str(REPO / f)))
        (root / Path(f).name).write_text(text_format.MessageToString(param))
    (root / "zoo.prototxt").write_text(ZOO)
    (root / "zoo2.prototxt").write_text(ZOO2)
    return root


@pytest.fixture(scope="module")
def models(work: Path) -> dict[str, Path]:
    """Trained-looking models of the example nets: normal, raw DNS (0/1 masks) and raw INQ."""
    from netcompress.net import Net

    torch_seed = 5
    out = {}
    with _chdir(work):
        for key, f in (("normal", "lenet_train_test.prototxt"), ("dns", "lenet_train_test_DNS.prototxt"),
                       ("inq", "lenet_train_test_inq_60.prototxt")):
            net = Net(f, phase=pb.TEST, seed=torch_seed, verbose=False)
            param = net.to_proto()
            rng = np.random.default_rng(SEED)
            for lp in param.layer:
                if key != "normal" and len(lp.blobs) == 4:
                    for b in lp.blobs[2:]:
                        b.ClearField("data")
                        shape = ncio.blob_shape(b)
                        b.data.extend(rng.integers(0, 2, size=int(np.prod(shape))).astype(np.float32).tolist())
            path = work / f"{key}.caffemodel"
            ncio.write_caffemodel(str(path), param)
            out[key] = path
    return out


def test_the_checks_catch_what_they_look_for(monkeypatch):
    """run_case's own verdicts, on commands that misbehave on purpose."""
    def command(said: str = "", warn: bool = False):
        def main(argv):
            if warn:
                warnings.warn("invalid value encountered in divide", RuntimeWarning)
            if said:
                print(said, file=sys.stderr)
            return 1 if said else 0
        return main

    for kw, problem in (({}, ""),
                        ({"warn": True}, "a Python warning: RuntimeWarning: invalid value encountered in divide"),
                        ({"said": "Error: <NetParameter>: Unknown bottom blob 'x'"}, "a placeholder for the file"),
                        ({"said": "Error: n.prototxt: layer 'c' (Convolution): layer 'c' (type Convolution): bad"},
                         "layer 'c' named twice"),
                        ({"said": "x: error: [Errno 2] No such file or directory: 'y'"}, "an OS error's raw text"),
                        ({"said": "Error: n.prototxt: Unknown bottom blob 'a' (layer 'ip1', bottom index 0)"}, "")):
        monkeypatch.setattr(cli, "main", command(**kw))
        got = run_case(Case("check", "", [])).problem
        assert (problem in got) if problem else got == "", (kw, got)


# ----------------------------------------------------------------------------------------------
# Mutating messages
# ----------------------------------------------------------------------------------------------

INT_POOL = [0, -1, 1, 2, 3, -2147483648, 2147483647]
UINT_POOL = [0, 1, 2, 3, 2147483647, 4294967295]
FLOAT_POOL = [0.0, -1.0, 1.0, 0.5, 2.0, 1e30, -1e30, float("nan"), float("inf"), float("-inf")]
STR_POOL = ["", "x", "data", "conv1", "ip2", "label", "ReLU", "Convolution", "InnerProduct", "Pooling",
            "Ü-ñame", "a" * 300, "constant", "uniform", "gaussian", "xavier", "msra", "bilinear", "bogus"]


def _value_for(fd, rng: random.Random):
    t = fd.type
    if t == fd.TYPE_BOOL:
        return rng.choice([True, False])
    if t == fd.TYPE_ENUM:
        return rng.choice([v.number for v in fd.enum_type.values])
    if t in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        return rng.choice(FLOAT_POOL)
    if t in (fd.TYPE_UINT32, fd.TYPE_UINT64, fd.TYPE_FIXED32, fd.TYPE_FIXED64):
        return rng.choice(UINT_POOL)
    if t in (fd.TYPE_INT32, fd.TYPE_INT64, fd.TYPE_SINT32, fd.TYPE_SINT64, fd.TYPE_SFIXED32, fd.TYPE_SFIXED64):
        return rng.choice(INT_POOL)
    if t == fd.TYPE_STRING:
        return rng.choice(STR_POOL)
    return None


def _scalar_slots(msg, depth: int = 0) -> list[tuple[object, object]]:
    """(message, field) for every scalar field of `msg` and of its set sub-messages."""
    slots = []
    for fd in msg.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_MESSAGE:
            if depth < 3:
                if is_repeated(fd):
                    for sub in getattr(msg, fd.name):
                        slots += _scalar_slots(sub, depth + 1)
                elif msg.HasField(fd.name):
                    slots += _scalar_slots(getattr(msg, fd.name), depth + 1)
        elif fd.type != fd.TYPE_BYTES:
            slots.append((msg, fd))
    return slots


def _set(msg, fd, value, rng: random.Random) -> None:
    if is_repeated(fd):
        field = getattr(msg, fd.name)
        if len(field) and rng.random() < 0.6:
            field[rng.randrange(len(field))] = value
        else:
            field.append(value)
    else:
        setattr(msg, fd.name, value)


def mutate_layer_field(param: pb.NetParameter, rng: random.Random) -> str:
    lp = rng.choice(list(param.layer))
    # Prefer the fields a layer reads: its own sub-messages (set or not) and fillers.
    slots = _scalar_slots(lp)
    msg, fd = rng.choice(slots)
    value = _value_for(fd, rng)
    _set(msg, fd, value, rng)
    return f"layer '{lp.name}' {msg.DESCRIPTOR.name}.{fd.name} = {value!r}"


def mutate_structure(param: pb.NetParameter, rng: random.Random) -> str:
    layers = list(param.layer)
    op = rng.choice(["drop", "dup", "swap", "bottom", "top", "clear_tops", "type", "all_types"])
    i = rng.randrange(len(layers))
    lp = param.layer[i]
    if op == "drop":
        del param.layer[i]
        return f"drop layer '{lp.name}'"
    if op == "dup":
        param.layer.add().CopyFrom(lp)
        return f"duplicate layer '{lp.name}'"
    if op == "swap":
        j = rng.randrange(len(layers))
        a, b = pb.LayerParameter(), pb.LayerParameter()
        a.CopyFrom(param.layer[i])
        b.CopyFrom(param.layer[j])
        param.layer[i].CopyFrom(b)
        param.layer[j].CopyFrom(a)
        return f"swap layers {i} and {j}"
    if op == "bottom":
        lp.bottom.append(rng.choice(["nowhere", "data", "label", lp.name]))
        return f"layer '{lp.name}' gets bottom {lp.bottom[-1]!r}"
    if op == "top":
        lp.top.append(rng.choice(["data", "extra", lp.name]))
        return f"layer '{lp.name}' gets top {lp.top[-1]!r}"
    if op == "clear_tops":
        del lp.top[:]
        return f"layer '{lp.name}' loses its tops"
    from netcompress.layers.base import known_layer_types

    types = known_layer_types()
    if op == "type":
        lp.type = rng.choice(types)
        return f"layer '{lp.name}' becomes a {lp.type}"
    for lp in param.layer:
        if lp.type in ("Convolution", "InnerProduct"):
            lp.type = rng.choice(types)
    return "every weight layer gets a random type"


def write_mutant(base: pb.NetParameter, path: Path, label: str, rng: random.Random) -> str:
    """`base` with a field or its structure mutated (85 % of the time), written to `path`; returns the label."""
    param = copy.deepcopy(base)
    if rng.random() < 0.85:
        label += ": " + (mutate_layer_field if rng.random() < 0.7 else mutate_structure)(param, rng)
    path.write_text(text_format.MessageToString(param))
    return label


def mutate_text(text: str, rng: random.Random) -> tuple[bytes, str]:
    op = rng.choice(["truncate", "delete", "insert", "dup_line", "utf8", "nul", "brace"])
    b = text.encode()
    k = rng.randrange(max(1, len(b)))
    if op == "truncate":
        return b[:k], f"truncated at byte {k}"
    if op == "delete":
        return b[:k] + b[k + 1 + rng.randrange(20):], f"bytes deleted at {k}"
    if op == "insert":
        return b[:k] + bytes([rng.choice(b'{}:"#\n 9-.e')]) + b[k:], f"a byte inserted at {k}"
    if op == "dup_line":
        lines = [l for l in text.splitlines() if re.match(r"\s*\w+:\s*\S", l)] or \
            [l for l in text.splitlines() if l.strip()]  # a text that is not a prototxt (a window file)
        line = rng.choice(lines)
        return text.replace(line, line + "\n" + line, 1).encode(), f"line {line.strip()!r} given twice"
    if op == "utf8":
        return b[:k] + b"\xff\xfe" + b[k:], f"invalid UTF-8 at byte {k}"
    if op == "nul":
        return b[:k] + b"\x00" + b[k:], f"a NUL byte at {k}"
    return b[:k] + b"}" + b[k:], f"a stray brace at {k}"


# ----------------------------------------------------------------------------------------------
# Net cases: `time` (TRAIN forward and backward) and `test` (TEST) on mutated example nets
# ----------------------------------------------------------------------------------------------

def net_cases(work: Path, models: dict[str, Path], n: int, rng: random.Random) -> list[Case]:
    cases = []
    files = NET_FILES + ["zoo.prototxt"] * 3 + ["zoo2.prototxt"] * 2
    bases = {f: ncio.read_net(str(work / Path(f).name)) for f in files}
    mdir = work / "mutants"
    mdir.mkdir(exist_ok=True)
    for k in range(n):
        f = rng.choice(files)
        param = copy.deepcopy(bases[f])
        r = rng.random()
        if r < 0.08:
            data, label = mutate_text(text_format.MessageToString(param), rng)
        else:
            label = (mutate_layer_field if r < 0.75 else mutate_structure)(param, rng)
            for _ in range(rng.choice([0, 0, 1, 2])):
                label += "; " + mutate_layer_field(param, rng)
            data = text_format.MessageToString(param).encode()
        path = mdir / f"net{k}.prototxt"
        path.write_bytes(data)
        if rng.random() < 0.7 or f.startswith("zoo"):
            argv = ["time", "--model", str(path), "--iterations", "1"]
        else:
            weights = models["dns" if "DNS" in f else "inq" if "inq" in f else "normal"]
            argv = ["test", "--model", str(path), "--weights", str(weights), "--iterations", "1"]
        cases.append(Case("net", f"{Path(f).name}: {label}", argv))
    return cases


def test_fuzz_nets(work, models):
    run_and_check(net_cases(work, models, round(260 * SCALE), random.Random(SEED)), work, ends=(30, 30))


# The invalid parameters of issue 22, each placed in an example net: (net, layer, setter, message).
def _set_path(lp: pb.LayerParameter, path: str, value) -> None:
    *parents, last = path.split(".")
    msg = lp
    for p in parents:
        m = re.fullmatch(r"(\w+)\[(\d+)\]", p)
        msg = getattr(msg, m.group(1))[int(m.group(2))] if m else getattr(msg, p)
    fd = msg.DESCRIPTOR.fields_by_name[last]
    if is_repeated(fd):
        del getattr(msg, last)[:]
        getattr(msg, last).extend(value if isinstance(value, list) else [value])
    else:
        setattr(msg, last, value)


NAN, INF = float("nan"), float("inf")
NET_REFUSALS = [
    ("lenet_train_test", "conv1", "convolution_param.group", 0, "convolution_param.group must be at least 1, got 0"),
    ("lenet_train_test", "conv2", "convolution_param.dilation", 0, "convolution_param.dilation must be positive"),
    ("lenet_train_test", "conv1", "convolution_param.pad", 4294967295, "is larger than a blob can hold"),
    ("lenet", "data", "input_param.shape[0].dim", [2, 1, -1, 28], "with a negative dimension"),
    ("lenet", "ip1", "inner_product_param.num_output", 2000000000, "a blob holds at most 2,147,483,647"),
    ("lenet_train_test", "conv1", "convolution_param.weight_filler.type", "uniform", None),
    ("lenet_train_test_DNS", "conv1", "dns_convolution_param.gamma", -1.0, "dns_convolution_param.gamma must be >= 0"),
    ("lenet_train_test_DNS", "ip1", "dns_inner_product_param.c_rate", NAN, "c_rate must be a finite number"),
    ("lenet_train_test_DNS", "ip2", "dns_inner_product_param.c_rate", INF, "c_rate must be a finite number"),
    ("lenet_train_test_DNS", "conv2", "dns_convolution_param.power", 0.0, "power must be > 0"),
    ("lenet_train_test_DNS", "conv2", "dns_convolution_param.power", -1.0, "power must be > 0"),
    ("lenet_train_test_DNS", "ip1", "dns_inner_product_param.alpha_low", 2.0, "alpha_low <= alpha_high"),
    ("lenet_train_test_DNS", "conv1", "dns_convolution_param.iter_stop", NAN, "iter_stop must be a finite number"),
    ("lenet_train_test_inq_60", "ip1", "inq_inner_product_param.portion", [0.3, NAN], "portion must be finite"),
]


def refusal_cases(work: Path, rng: random.Random) -> list[Case]:
    cases = []
    mdir = work / "refusals"
    mdir.mkdir(exist_ok=True)
    for k, (net, layer, path, value, fragment) in enumerate(NET_REFUSALS):
        param = ncio.read_net(str(work / f"{net}.prototxt"))
        lp = next(l for l in param.layer if l.name == layer)
        _set_path(lp, path, value)
        if path.endswith("weight_filler.type"):  # the hang: a uniform filler with min > max
            lp.convolution_param.weight_filler.min, lp.convolution_param.weight_filler.max = 1.0, -1.0
            fragment = "uniform filler: min (1) must not exceed max (-1)"
        f = mdir / f"{net}_{k}.prototxt"
        f.write_text(text_format.MessageToString(param))
        argv = ["time", "--model", str(f), "--iterations", "1"] if k % 2 else ["test", "--model", str(f),
                                                                                "--weights", "none", "--iterations", "1"]
        cases.append(Case("refusal", f"{net}: {layer} {path} = {value!r}", argv, refuse=fragment))
    return cases


def test_fuzz_refuses_the_invalid_parameters(work):
    cases = refusal_cases(work, random.Random(SEED))
    with _chdir(work):
        outcomes = [run_case(c) for c in cases]
    check_outcomes(outcomes, work)
    for o in outcomes:  # the file is named as well as the layer
        assert str(work / "refusals") in o.err, o.err


# ----------------------------------------------------------------------------------------------
# Solver cases: `train` on mutated solvers of the LeNet example (2 iterations at most)
# ----------------------------------------------------------------------------------------------

BASE_SOLVER = """net: "lenet_train_test.prototxt"
test_iter: 1
test_interval: 2
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 1
max_iter: 2
snapshot: 0
snapshot_prefix: "snap/lenet"
solver_mode: CPU
random_seed: 1
"""

COUNT_POOL = [-2147483648, -1, 0, 1, 2, 3]
SOLVER_STRINGS = {
    "lr_policy": ["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine", "bogus", ""],
    "type": ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "LarsSGD", "Bogus", ""],
    "regularization_type": ["L1", "L2", "L3", ""],
    "snapshot_prefix": ["", "snap/x", "snap/", "a" * 300, "/proc/nope/x"],
    "net": ["", "missing.prototxt", "lenet.prototxt", "/dev/null", "data", "lenet_train_test_DNS.prototxt"],
    "train_net": ["lenet_train_test.prototxt", "missing.prototxt"],
    "test_net": ["lenet_train_test.prototxt", "lenet.prototxt", "missing.prototxt"],
}
# The solver fields of issue 22 that must be refused, with the message.
SOLVER_REFUSALS = [
    ("base_lr: -0.01", "base_lr must be >= 0, got -0.01"),
    ("base_lr: -inf", "base_lr must be a finite number, got -inf"),
    ("base_lr: nan", "base_lr must be a finite number, got nan"),
    ('lr_policy: "multistep" stepvalue: 2 stepvalue: 1', "stepvalue must be in increasing order, got 2 then 1"),
    ('lr_policy: "multistep" stepvalue: -1', "stepvalue must be >= 0, got stepvalue[0] = -1"),
    ("max_iter: -1", "max_iter must be >= 0, got -1"),
    ("momentum: 2", "momentum must be in [0, 1), got 2"),
    ("test_iter: -1", "test_iter must be positive, got -1"),
    ("base_lr: 0.02", "should not have multiple \"base_lr\" fields"),
    ("max_iter: 3", "should not have multiple \"max_iter\" fields"),
]


def _without(text: str, fields: list[str]) -> str:
    return "\n".join(l for l in text.splitlines() if l.split(":")[0].strip() not in fields) + "\n"


def solver_cases(work: Path, models: dict[str, Path], n: int, rng: random.Random) -> list[Case]:
    cases = []
    sdir = work / "solvers"
    sdir.mkdir(exist_ok=True)
    base = ncio.parse_text_proto(BASE_SOLVER, pb.SolverParameter())
    for k, (line, fragment) in enumerate(SOLVER_REFUSALS):
        duplicate = "multiple" in fragment
        keys = [] if duplicate else re.findall(r"(\w+):", line)
        text = _without(BASE_SOLVER, keys) + line + "\n"
        f = sdir / f"refuse{k}.prototxt"
        f.write_text(text)
        cases.append(Case("solver", f"refused: {line}", ["train", "--solver", str(f)], refuse=fragment))
    f = sdir / "iterations.prototxt"
    f.write_text(BASE_SOLVER)
    cases.append(Case("solver", "--iterations -1", ["train", "--solver", str(f), "--iterations", "-1"],
                      refuse="--iterations must be at least 0, got -1"))
    scalars = [fd for fd in pb.SolverParameter.DESCRIPTOR.fields if fd.type != fd.TYPE_MESSAGE]
    for k in range(n):
        sp = copy.deepcopy(base)
        labels = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            fd = rng.choice(scalars)
            if fd.name in SOLVER_STRINGS:
                value = rng.choice(SOLVER_STRINGS[fd.name])
            elif fd.name == "stepvalue":
                value = rng.choice([[2, 1], [-1], [0, 1, 2], [1, 1], [5]])
            elif fd.name == "random_seed":
                value = rng.choice([-1, 0, 2**63 - 1, 7])  # -1: unseeded, i.e. seeded() here
            elif fd.type in (fd.TYPE_INT32, fd.TYPE_INT64):
                value = rng.choice(COUNT_POOL)
            else:
                value = _value_for(fd, rng)
            if value is None:
                continue
            if is_repeated(fd):
                del getattr(sp, fd.name)[:]
                getattr(sp, fd.name).extend(value if isinstance(value, list) else [value])
            else:
                if fd.name in ("net", "train_net", "net_param", "train_net_param"):
                    for other in ("net", "train_net", "net_param", "train_net_param"):
                        sp.ClearField(other)
                setattr(sp, fd.name, value)
            labels.append(f"{fd.name} = {value!r}")
        if rng.random() < 0.15:  # the recipes' solver messages
            m = getattr(sp, rng.choice(["adaptive_lr", "growth", "snip_schedule", "global_prune"]))
            m.SetInParent()
            for fd in rng.sample([f for f in m.DESCRIPTOR.fields if f.type != f.TYPE_MESSAGE], 2):
                value = rng.choice(COUNT_POOL) if fd.type == fd.TYPE_INT32 else _value_for(fd, rng)
                _set(m, fd, value, rng)
                labels.append(f"{m.DESCRIPTOR.name}.{fd.name} = {value!r}")
            sp.epoch_iters = 1
        text = text_format.MessageToString(sp)
        if rng.random() < 0.1:
            data, what = mutate_text(text, rng)
            labels.append(what)
        else:
            data = text.encode()
        f = sdir / f"solver{k}.prototxt"
        f.write_bytes(data)
        argv = ["train", "--solver", str(f)]
        r = rng.random()
        if r < 0.1:
            argv += ["--iterations", str(rng.choice([-1, 0, 1, 2]))]
        elif r < 0.2:
            argv += ["--weights", str(models["normal"])]
        cases.append(Case("solver", "; ".join(labels), argv))
    return cases


def test_fuzz_solvers(work, models):
    run_and_check(solver_cases(work, models, round(110 * SCALE), random.Random(SEED + 1)), work, ends=(10, 10))


# ----------------------------------------------------------------------------------------------
# Model cases: corrupted and altered caffemodels through `test`, the converters, parse_model, report
# ----------------------------------------------------------------------------------------------

def _mutate_model_proto(param: pb.NetParameter, rng: random.Random) -> str:
    layers = [l for l in param.layer if len(l.blobs)]
    lp = rng.choice(layers)
    b = rng.choice(list(lp.blobs))
    op = rng.choice(["rename_all", "rename_one", "drop_blob", "add_blob", "shape", "neg_shape", "huge_shape",
                     "count", "nan", "inf", "mask", "utf8", "no_layers", "dup_layer", "legacy", "double",
                     "empty_blob", "no_blobs"])
    if op == "rename_all":
        for l in param.layer:
            l.name = "other_" + l.name
        return "every layer renamed"
    if op == "rename_one":
        lp.name += "_x"
        return f"layer '{lp.name}' renamed"
    if op == "drop_blob":
        del lp.blobs[-1]
        return f"layer '{lp.name}' loses its last blob"
    if op == "add_blob":
        lp.blobs.add().CopyFrom(b)
        return f"layer '{lp.name}' gets one more blob"
    if op == "shape":
        d = rng.randrange(len(b.shape.dim))
        b.shape.dim[d] += rng.choice([-1, 1])
        return f"layer '{lp.name}' blob shape changed"
    if op == "neg_shape":
        b.shape.dim[0] = -b.shape.dim[0]
        return f"layer '{lp.name}' blob with a negative dimension"
    if op == "huge_shape":
        b.shape.dim[0] = 2**40
        return f"layer '{lp.name}' blob with a huge dimension"
    if op == "count":
        del b.data[rng.randrange(len(b.data)):]
        return f"layer '{lp.name}': data count does not match the shape"
    if op in ("nan", "inf"):
        b.data[rng.randrange(len(b.data))] = float(op)
        return f"layer '{lp.name}': a {op} weight"
    if op == "mask":
        if len(lp.blobs) >= 3:
            m = lp.blobs[2]
            m.data[rng.randrange(len(m.data))] = rng.choice([0.5, 2.0, -1.0, float("nan")])
            return f"layer '{lp.name}': a mask value other than 0/1"
        b.data[0] = 0.5
        return f"layer '{lp.name}': a value 0.5"
    if op == "utf8":
        lp.name = "conv@@1"  # replaced by invalid UTF-8 bytes below
        return "a layer name that is not UTF-8"
    if op == "no_layers":
        del param.layer[:]
        return "no layers"
    if op == "dup_layer":
        param.layer.add().CopyFrom(lp)
        return f"layer '{lp.name}' twice"
    if op == "legacy":
        dims = list(b.shape.dim)
        b.ClearField("shape")
        b.num, b.channels, b.height, b.width = (dims + [1, 1, 1, 1])[:4] if rng.random() < 0.5 else (1, 2, 3, 4)
        return f"layer '{lp.name}': a legacy 4-D shape"
    if op == "double":
        vals = list(b.data)
        b.ClearField("data")
        b.double_data.extend(vals[:-1] if rng.random() < 0.5 else vals)
        return f"layer '{lp.name}': double_data"
    if op == "empty_blob":
        b.Clear()
        return f"layer '{lp.name}': an empty blob"
    for l in param.layer:
        del l.blobs[:]
    return "no blobs at all"


def _serialize(param: pb.NetParameter) -> bytes:
    data = param.SerializeToString()
    return data.replace(b"conv@@1", b"conv\xff\xfe")


def _mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    op = rng.choice(["truncate", "flip", "append", "zeros", "empty", "text"])
    k = rng.randrange(max(1, len(data)))
    if op == "truncate":
        return data[:k], f"truncated at byte {k}"
    if op == "flip":
        b = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b), "bits flipped"
    if op == "append":
        return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), "garbage appended"
    if op == "zeros":
        return bytes(rng.randrange(1, 4096)), "zero bytes"
    if op == "empty":
        return b"", "a 0-byte file"
    return (REPO / "examples/mnist/lenet.prototxt").read_bytes(), "a text prototxt"


MODEL_NETS = {"normal": "lenet_train_test.prototxt", "dns": "lenet_train_test_DNS.prototxt",
              "inq": "lenet_train_test_inq_60.prototxt"}


def model_cases(work: Path, models: dict[str, Path], n: int, rng: random.Random) -> list[Case]:
    cases = []
    mdir = work / "models"
    mdir.mkdir(exist_ok=True)
    bases = {k: ncio.read_caffemodel(str(p)) for k, p in models.items()}
    for k in range(n):
        key = rng.choice(list(bases))
        param = copy.deepcopy(bases[key])
        if rng.random() < 0.25:
            data, label = _mutate_bytes(param.SerializeToString(), rng)
        else:
            label = _mutate_model_proto(param, rng)
            data = _serialize(param)
        m = mdir / f"m{k}.caffemodel"
        m.write_bytes(data)
        out = mdir / f"out{k}"
        net = MODEL_NETS[key]
        cmd = rng.choice(["test", "test", "convert", "parse_model", "report", "encode_compact", "train"])
        if cmd == "test":
            argv = ["test", "--model", net, "--weights", str(m), "--iterations", "1"]
        elif cmd == "convert":
            conv = {"normal": ["model2INQ_raw", net, str(m), MODEL_NETS["inq"]],
                    "dns": [rng.choice(["dns_to_normal", "model2INQ_raw"]), net, str(m),
                            MODEL_NETS["normal"]],
                    "inq": ["inq_to_normal", net, str(m), MODEL_NETS["normal"]]}[key]
            if conv[0] == "model2INQ_raw" and key == "dns":
                conv[3] = MODEL_NETS["inq"]
            argv = conv + [str(out) + ".caffemodel"]
        elif cmd == "parse_model":
            argv = ["parse_model", str(m), str(out) + ".txt"]
        elif cmd == "report":
            argv = ["report", net, str(m)]
        elif cmd == "encode_compact":
            argv = ["encode_compact", net, str(m), str(out) + ".binary"]
        else:
            solver = mdir / f"s{k}.prototxt"
            solver.write_text(BASE_SOLVER.replace("lenet_train_test.prototxt", net)
                              .replace("max_iter: 2", "max_iter: 1"))
            argv = ["train", "--solver", str(solver), "--weights", str(m)]
        cases.append(Case("model", f"{key} model: {label} -> {cmd}", argv))
    return cases


def test_fuzz_models(work, models):
    run_and_check(model_cases(work, models, round(200 * SCALE), random.Random(SEED + 2)), work, ends=(10, 10))


# ----------------------------------------------------------------------------------------------
# Compact cases: corrupted compact files and nets that do not match them, through decode_compact
# ----------------------------------------------------------------------------------------------

def _pow2(a: np.ndarray) -> np.ndarray:
    """0 or ±2^e with e among the 7 exponents below the blob's largest (what the format stores)."""
    mag = np.abs(a)
    if not mag.any():
        return np.zeros_like(a, dtype=np.float32)
    e = np.round(np.log2(np.where(mag > 0, mag, 1))).astype(np.int64)
    top = int(e[mag > 0].max())
    keep = (mag > 0) & (e >= top - 6)
    return np.where(keep, np.sign(a) * np.ldexp(1.0, e), 0).astype(np.float32)


@pytest.fixture(scope="module")
def compact(work: Path, models: dict[str, Path]) -> Path:
    from netcompress.tools.compact import encode_compact

    param = ncio.read_caffemodel(str(models["normal"]))
    for lp in param.layer:
        for b in lp.blobs:
            a = _pow2(ncio.blob_to_array(b))
            ncio.array_to_blob(a, b)
    ncio.write_caffemodel(str(work / "pow2.caffemodel"), param)
    out = work / "lenet.binary"
    with _chdir(work), contextlib.redirect_stdout(io.StringIO()):
        encode_compact("lenet_train_test.prototxt", "pow2.caffemodel", str(out))
    return out


def compact_cases(work: Path, compact: Path, n: int, rng: random.Random) -> list[Case]:
    cases = []
    cdir = work / "compact"
    cdir.mkdir(exist_ok=True)
    data = compact.read_bytes()
    base = ncio.read_net(str(work / "lenet_train_test.prototxt"))
    # The net differs from the encoded one: refused by the shapes record (issue 22).
    for k, (layer, n_out) in enumerate((("ip1", 600), ("conv2", 60), ("ip2", 12), ("conv1", 25))):
        param = copy.deepcopy(base)
        lp = next(l for l in param.layer if l.name == layer)
        (lp.inner_product_param if lp.type == "InnerProduct" else lp.convolution_param).num_output = n_out
        net = cdir / f"wider{k}.prototxt"
        net.write_text(text_format.MessageToString(param))
        cases.append(Case("compact", f"{layer} num_output {n_out}",
                          ["decode_compact", str(net), str(compact), str(cdir / f"w{k}.caffemodel")],
                          refuse="the file does not match the net"))
    for k in range(n):
        f = cdir / f"c{k}.binary"
        mutated, label = _mutate_bytes(data, rng)
        f.write_bytes(mutated)
        if rng.random() < 0.5:
            (cdir / f"c{k}.binary.shapes.json").write_bytes(Path(str(compact) + ".shapes.json").read_bytes())
        net = work / "lenet_train_test.prototxt"
        if rng.random() < 0.3:
            param = copy.deepcopy(base)
            label += "; " + mutate_layer_field(param, rng)
            net = cdir / f"n{k}.prototxt"
            net.write_text(text_format.MessageToString(param))
        cmd = rng.choice(["decode_compact", "decode_compact", "decode_compact48", "report"])
        if cmd == "report":
            argv = ["report", str(net), str(work / "pow2.caffemodel"), "--compact", str(f)]
        else:
            argv = [cmd, str(net), str(f), str(cdir / f"d{k}.caffemodel")]
        cases.append(Case("compact", label, argv))
    return cases


def test_fuzz_compact_files(work, compact):
    run_and_check(compact_cases(work, compact, round(80 * SCALE), random.Random(SEED + 3)), work)


# ----------------------------------------------------------------------------------------------
# Hostile paths: FIFOs, devices, symlink loops, long names, trailing slashes, folders, as every
# kind of input and output
# ----------------------------------------------------------------------------------------------

def hostile_paths(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, a fragment of the error it must give as an input)."""
    folder.mkdir(exist_ok=True)
    fifo = folder / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    loop = folder / "loop"
    if not loop.is_symlink():
        os.symlink(loop, loop)
    dangling = folder / "dangling"
    if not dangling.is_symlink():
        os.symlink(folder / "nowhere", dangling)
    plain = folder / "plain.caffemodel"
    plain.write_bytes(b"")
    return {
        "fifo": (str(fifo), "is a FIFO (named pipe)"),
        "/dev/zero": ("/dev/zero", "is a character device"),
        "/dev/urandom": ("/dev/urandom", "is a character device"),
        "/dev/null": ("/dev/null", "is a character device"),
        "symlink loop": (str(loop), "too many levels of symbolic links"),
        "dangling symlink": (str(dangling), "no such file"),
        "folder": (str(folder), "is a directory"),
        "long name": (str(folder / ("n" * 300)), "file name too long"),
        "trailing slash": (str(plain) + "/", "a part of the path is not a folder"),
    }


def hostile_cases(work: Path, models: dict[str, Path]) -> list[Case]:
    paths = hostile_paths(work / "hostile")
    net, model = "lenet_train_test.prototxt", str(models["normal"])
    solver = work / "hostile_solver.prototxt"
    solver.write_text(BASE_SOLVER)
    out = str(work / "hostile" / "out.caffemodel")
    cases = []
    for name, (p, fragment) in paths.items():
        dangling = name == "dangling symlink"
        positions = {
            "test --model": (["test", "--model", p, "--weights", model, "--iterations", "1"], fragment),
            "test --weights": (["test", "--model", net, "--weights", p, "--iterations", "1"], fragment),
            "train --solver": (["train", "--solver", p], fragment),
            "train --weights": (["train", "--solver", str(solver), "--weights", p],
                                {"folder": "is a folder", "dangling symlink": "does not exist"}.get(name, fragment)),
            "time --model": (["time", "--model", p, "--iterations", "1"], fragment),
            "parse_model": (["parse_model", p, out + ".txt"], "does not exist" if dangling else fragment),
            "dns_to_normal": (["dns_to_normal", net, p, net, out], "does not exist" if dangling else fragment),
            "decode_compact": (["decode_compact", net, p, out], "does not exist" if dangling else fragment),
            "report": (["report", net, p], "does not exist" if dangling else fragment),
            "summarize": (["summarize", p], fragment),
            "parse_log": (["parse_log", p, str(work)], fragment),
            "extract_seconds": (["extract_seconds", p, out + ".txt"], fragment),
            "detect": (["detect", p, out + ".csv", "--model_def", net, "--pretrained_model", model], fragment),
            "pycaffe": (["pycaffe", p], fragment),
        }
        for where, (argv, frag) in positions.items():
            cases.append(Case("path", f"{name} as {where}", argv, refuse=frag))
    # ... and as outputs
    plain = work / "hostile" / "plain.caffemodel"
    for name, p, fragment in (
            ("folder", str(work / "hostile"), "is a directory, expected a file name to write"),
            ("trailing slash", str(work / "hostile" / "new") + "/", "ends with a folder separator"),
            ("long name", str(work / "hostile" / ("n" * 300)), "the file name has 300 bytes"),
            ("symlink loop", paths["symlink loop"][0], "too many levels of symbolic links"),
            ("/dev/null", "/dev/null", "is a character device: netcompress writes only regular files"),
            ("fifo", paths["fifo"][0], "is a FIFO (named pipe): netcompress writes only regular files"),
            ("the input itself", model, "would destroy the input")):
        cases.append(Case("path", f"{name} as parse_model's output", ["parse_model", model, p], refuse=fragment))
        cases.append(Case("path", f"{name} as dns_to_normal's output",
                          ["dns_to_normal", net, model, net, p], refuse=fragment))
    assert plain.read_bytes() == b""
    return cases


def test_fuzz_hostile_paths(work, models):
    run_and_check(hostile_cases(work, models), work)
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


# ----------------------------------------------------------------------------------------------
# Resume cases: corrupted .solverstate files and their netcompress sidecars, through `train --snapshot`
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def snapshot(work: Path) -> Path:
    solver = work / "resume_solver.prototxt"
    solver.write_text(BASE_SOLVER.replace("snapshot: 0", "snapshot: 2").replace("snap/lenet", "resume/lenet"))
    with _chdir(work), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["train", "--solver", str(solver)]) == 0
    return work / "resume" / "lenet_iter_2.solverstate"


def resume_cases(work: Path, snapshot: Path, n: int, rng: random.Random) -> list[Case]:
    from netcompress.solvers.state import SIDECAR_SUFFIX

    cases = []
    rdir = work / "resumes"
    rdir.mkdir(exist_ok=True)
    solver = str(work / "resume_solver.prototxt")
    state = ncio.read_binary_proto(str(snapshot), pb.SolverState())
    side = Path(str(snapshot) + SIDECAR_SUFFIX).read_bytes()
    for k in range(n):
        s = copy.deepcopy(state)
        side_bytes, label = side, ""
        op = rng.choice(["state_bytes", "side_bytes", "no_side", "history", "learned_net", "iter", "blob"])
        if op == "history":
            del s.history[rng.randrange(len(s.history))]
            label = "one history blob less"
        elif op == "learned_net":
            s.learned_net = rng.choice(["", "missing.caffemodel", str(work / "dns.caffemodel"), "/dev/null"])
            label = f"learned_net {s.learned_net!r}"
        elif op == "iter":
            s.iter = rng.choice([-1, 0, 2**31 - 1, 5])
            label = f"iter {s.iter}"
        elif op == "blob":
            b = s.history[rng.randrange(len(s.history))]
            del b.data[rng.randrange(len(b.data) or 1):]
            label = "a history blob with too few values"
        data = s.SerializeToString()
        if op == "state_bytes":
            data, label = _mutate_bytes(data, rng)
        elif op == "side_bytes":
            side_bytes, label = _mutate_bytes(side, rng)
            label = "sidecar " + label
        f = rdir / f"r{k}.solverstate"
        f.write_bytes(data)
        if op != "no_side":
            Path(str(f) + SIDECAR_SUFFIX).write_bytes(side_bytes)
        else:
            label = "no sidecar"
        cases.append(Case("resume", label, ["train", "--solver", solver, "--snapshot", str(f)]))
    return cases


def test_fuzz_resumes(work, snapshot):
    run_and_check(resume_cases(work, snapshot, round(50 * SCALE), random.Random(SEED + 4)), work)


# ----------------------------------------------------------------------------------------------
# Tool cases: mutated LeNet nets through the conversion, recipe and net tools, with their models
# ----------------------------------------------------------------------------------------------

TOOL_NETS = {"lenet_train_test.prototxt": "normal", "lenet_train_test_DNS.prototxt": "dns",
             "lenet_train_test_inq_60.prototxt": "inq", "lenet.prototxt": "normal"}


def tool_cases(work: Path, models: dict[str, Path], n: int, rng: random.Random) -> list[Case]:
    bases = {f: ncio.read_net(str(work / f)) for f in TOOL_NETS}
    tdir = work / "tools"
    tdir.mkdir(exist_ok=True)
    cases = []
    for k in range(n):
        f = rng.choice(list(bases))
        label = write_mutant(bases[f], tdir / f"t{k}.prototxt", f, rng)
        net, model, out = str(tdir / f"t{k}.prototxt"), str(models[TOOL_NETS[f]]), str(tdir / f"o{k}")
        name = rng.choice(["conv1", "conv2", "ip1", "ip2", "pool1", "relu1", "nope"])
        plain, inq = str(work / "lenet_train_test.prototxt"), str(work / "lenet_train_test_inq_60.prototxt")
        argv = rng.choice([
            ["net2wider", "--layer", name, net, model, f"{out}.prototxt", f"{out}.caffemodel"]
            + rng.choice([["--width", str(rng.choice([1, 30, 0, -3, 2**31, 3 * 10**6]))],
                          ["--ratio", rng.choice(["1.5", "0.5", "nan", "inf", "1e300"])]])
            + rng.choice([[], [], ["--noise", rng.choice(["0", "nan", "inf", "-1"])],
                          ["--incoming-noise", rng.choice(["0.1", "nan", "inf"])]]),
            ["net2deeper", "--after", name, net, model, f"{out}.prototxt", f"{out}.caffemodel"]
            + rng.choice([[], [], ["--kernel", rng.choice(["5", "2", "-1", "99999", str(2**33)])],
                          ["--name", rng.choice(["", "conv1", "new"])]]),
            ["snip_prune", "--keep-ratio", str(rng.choice([0.1, 0.0, 1.0, 1.5, -1])), net, model, f"{out}.prototxt",
             f"{out}.caffemodel"],
            ["rename_layers", "--prefix", rng.choice(["t_", ""]), net, model, f"{out}.prototxt", f"{out}.caffemodel"],
            ["report", net, model],
            ["micronet_score", net, model],
            ["summarize", net],
            ["upgrade", net, f"{out}.prototxt"],
            ["dns_to_normal", net, model, rng.choice([plain, net]), f"{out}.caffemodel"],
            ["inq_to_normal", net, model, rng.choice([plain, net]), f"{out}.caffemodel"],
            ["model2INQ_raw", net, model, rng.choice([inq, net]), f"{out}.caffemodel"],
            ["draw_net", net, f"{out}.dot", "--display_lrm"],
        ])
        cases.append(Case("tool", f"{label} | {argv[0]}", argv))
    return cases


def test_fuzz_tools(work, models):
    run_and_check(tool_cases(work, models, round(150 * SCALE), random.Random(SEED + 6)), work, ends=(30, 30))


# ----------------------------------------------------------------------------------------------
# Recipe and log tools the tool cases above leave out, each on a base it accepts (an SDN net, a
# calibrated MicroNet student and its integer deploy net, a trained ε-ResNet with its solverstate, a
# training log, a PyTorch state dict), then mutated
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipe_bases(work: Path) -> Path:
    folder = work / "recipes"
    folder.mkdir(exist_ok=True)

    def ok(argv):
        o = run_case(Case("base", argv[0], argv))
        assert o.rc == 0 and not o.problem, (argv, o.err[-3000:])
        return o

    def solver(name, net):
        (folder / f"{name}_solver.prototxt").write_text(
            f'net: "recipes/{net}" base_lr: 0.01 lr_policy: "fixed" max_iter: 2 display: 1 test_iter: 1 '
            f'test_interval: 2 snapshot: 0 snapshot_prefix: "recipes/{name}"\n')
        return ok(["train", "--solver", f"recipes/{name}_solver.prototxt"])

    with _chdir(work), seeded():
        r = folder
        ok(["make_sdn_net", str(REPO / "examples/sdn/cells.prototxt-template"), "--ics", "0,1,0,1,0,1,0",
            "--feature-size", "14", "--out", str(r / "sdn.prototxt")])
        sdn = _small_batches(ncio.read_net(str(r / "sdn.prototxt")))
        (r / "sdn.prototxt").write_text(text_format.MessageToString(sdn))
        solver("sdn", "sdn.prototxt")
        ok(["make_densenet", "--form", "student", "--depth", "10", "--growth", "2", "--input", "1,28,28",
            "--train-source", "data/mnist5k_train_lmdb", "--test-source", "data/mnist5k_test_lmdb",
            "--batch-size", "2", "--test-batch-size", "2", str(r / "student.prototxt")])
        solver("student", "student.prototxt")  # calibrates the ActQuant layers
        ok(["micronet_merge", str(r / "student.prototxt"), str(r / "student_iter_2.caffemodel"),
            str(r / "deploy.prototxt"), str(r / "deploy.caffemodel")])
        (r / "eres.prototxt").write_text((work / "eresnet20_mnist.prototxt").read_text())
        (r / "train.log").write_text(solver("eres", "eres.prototxt").err)
        (r / "lenet.prototxt").write_text((work / "lenet.prototxt").read_text())
        (r / "lenet_tt.prototxt").write_text((work / "lenet_train_test.prototxt").read_text())
    return folder


def _state_dict_mutant(model: pb.NetParameter, path: Path, rng: random.Random) -> str:
    """deploy.caffemodel as the state dict import_pth reads back (its map's names), often damaged."""
    import torch

    from netcompress.tools.micronet import MAPS

    name_of = MAPS["micronet-densenet-final"][1]
    sd = {name_of(lp.name, i): torch.from_numpy(ncio.blob_to_array(b).copy())
          for lp in model.layer for i, b in enumerate(lp.blobs)}
    keys = list(sd)
    op = rng.choice(["none", "drop", "extra", "shape", "int", "nan", "not a tensor", "wrapped", "module.",
                     "list", "short list", "tensor", "garbage", "empty"])
    k = rng.choice(keys)
    if op == "drop":
        del sd[k]
    elif op == "extra":
        sd[rng.choice(["nowhere.weight", "conv1.running_mean", "x", k.replace("weight", "bias")])] = torch.ones(2)
    elif op == "shape":
        sd[k] = torch.zeros(*[d + rng.choice([0, 1]) for d in sd[k].shape], 1)
    elif op == "int":
        sd[k] = sd[k].to(torch.int64)
    elif op == "nan":
        sd[k] = torch.full_like(sd[k], float("nan"))
    elif op == "not a tensor":
        sd[k] = rng.choice([1.5, "w", [1, 2]])
    obj = {"wrapped": {"state_dict": sd}, "module.": {"module." + k: v for k, v in sd.items()},
           "list": list(sd.values()), "short list": list(sd.values())[:-1], "tensor": torch.zeros(3)}.get(op, sd)
    if op in ("garbage", "empty"):
        path.write_bytes(b"PK\x03\x04 garbage" if op == "garbage" else b"")
    else:
        torch.save(obj, path)
    return f"state dict: {op}" + (f" ({k})" if op in ("drop", "shape", "int", "nan", "not a tensor") else "")


def _log_mutant(text: str, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        return mutate_text(text, rng)
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    j = rng.randrange(max(1, len(lines[i])))
    lines[i] = lines[i][:j] + rng.choice(["9999999999", "-1", "nan", "inf", "", " ", "x", "e+99", "=", ":"]) + \
        lines[i][j + 1:]
    return "\n".join(lines).encode(), f"line {i + 1} now {lines[i]!r}"


def recipe_cases(work: Path, bases: Path, n: int, rng: random.Random) -> list[Case]:
    nets = {f: ncio.read_net(str(bases / f)) for f in ("sdn.prototxt", "student.prototxt", "deploy.prototxt",
                                                       "eres.prototxt", "lenet.prototxt", "lenet_tt.prototxt")}
    deploy_model = ncio.read_caffemodel(str(bases / "deploy.caffemodel"))
    log = (bases / "train.log").read_text()
    template = (REPO / "examples/sdn/cells.prototxt-template").read_text()
    rdir = bases / "cases"
    rdir.mkdir(exist_ok=True)
    cases = []

    def mutant(f: str, k: int) -> tuple[str, str]:
        return str(rdir / f"{k}_{f}"), write_mutant(nets[f], rdir / f"{k}_{f}", f, rng)

    def pick(valid, *other, p=0.8):
        return valid if rng.random() < p else rng.choice(other)

    b = str(bases)
    for k in range(n):
        tool = rng.choice(["sdn_early_exit", "micronet_merge", "bn_reestimate", "micronet_score",
                           "compress_epsilon_resnet", "dump_logits", "extract_features", "net2net_mutate",
                           "make_sdn_net", "import_pth", "parse_log", "extract_seconds", "plot_training_log", "plot"])
        out = str(rdir / f"o{k}")
        if tool == "sdn_early_exit":
            net, label = mutant("sdn.prototxt", k)
            argv = [tool, net, f"{b}/sdn_iter_2.caffemodel", "--outputs",
                    pick("ic1,ic2,ic3,fc", "ic3,fc", "fc", "nope,fc", "ic1,ic1", ""), "--iterations",
                    pick("1", "2", "0"), "--json", f"{out}.json", "--plot", f"{out}.png"]
            if rng.random() < 0.15:
                argv += ["--thresholds", rng.choice(["0.5", "", "nan", "2", "-1,0.5", "x"])]
            if rng.random() < 0.15:
                argv += ["--ops-per-output", rng.choice(["auto", "1,2,3,4", "1", "-1,2,3,4", "nan,1,1,1"])]
        elif tool == "micronet_merge":
            net, label = mutant("student.prototxt", k)
            argv = [tool, net, f"{b}/student_iter_2.caffemodel", f"{out}.prototxt", f"{out}.caffemodel"]
            if rng.random() < 0.2:
                argv += ["--weight-bits", rng.choice(["0", "1", "8", "33", "-1"])]
            if rng.random() < 0.2:
                argv += ["--input", rng.choice(["1,28,28", "0,0,0", "1,2", "1,1,1"])]
        elif tool == "bn_reestimate":
            net, label = mutant("student.prototxt", k)
            argv = [tool, net, f"{b}/student_iter_2.caffemodel", f"{out}.caffemodel", "--epochs", pick("1", "0", "2"),
                    "--iters", pick("1", "0", "2"), "--test-iter", pick("1", "0"),
                    "--momentum", pick("0.1", "0", "1", "-1", "nan")]
        elif tool == "micronet_score":
            net, label = mutant("deploy.prototxt", k)
            argv = [tool, net, f"{b}/deploy.caffemodel"]
        elif tool == "compress_epsilon_resnet":
            net, label = mutant("eres.prototxt", k)
            argv = [tool, net, f"{b}/eres_iter_2.caffemodel", f"{out}.prototxt", f"{out}.caffemodel",
                    "--solverstate", f"{b}/eres_iter_2.solverstate", "--cfg", f"{out}.cfg"]
            if rng.random() < 0.5:
                argv += ["--criterion", "gate", "--gate-iters", pick("1", "0", "2")]
        elif tool == "dump_logits":
            net, label = mutant("lenet.prototxt", k)
            source = pick(f"{b}/lenet_tt.prototxt", "data/mnist5k_test_lmdb", mutant("lenet_tt.prototxt", n + k)[0])
            argv = [tool, net, str(work / "normal.caffemodel"), source, "--blob", pick("ip2", "prob", "nope", "data"),
                    "--out", f"{out}.h5", "--rows", pick("3", "1", "0", "100")]
            argv += rng.choice([[], [], ["--batch", rng.choice(["1", "0", "3"])], ["--no-data"]])
        elif tool == "extract_features":
            net, label = mutant("lenet_tt.prototxt", k)
            argv = [tool, str(work / "normal.caffemodel"), net, pick("ip2", "ip2,conv1", "nope", "ip2,ip2"),
                    pick(f"{out}_db", f"{out}_a,{out}_b", ""), pick("1", "0", "2"), pick("lmdb", "leveldb", "x")]
        elif tool == "net2net_mutate":
            net, label = mutant("lenet_tt.prototxt", k)
            argv = [tool, net, str(work / "normal.caffemodel"), out, "--seed",
                    rng.choice([str(rng.randrange(100))] * 6 + ["-1", str(2**63), "x"])]
            if rng.random() < 0.3:
                argv += ["--ops", rng.choice(["deeper", "wider", "skip", "group", "deeper_pool", "x", ""])]
            if rng.random() < 0.2:
                argv += ["--max-width", rng.choice(["1", "0", "-1", "2"])]
        elif tool == "make_sdn_net":
            data, label = mutate_text(template, rng) if rng.random() < 0.6 else (template.encode(), "the template")
            path = rdir / f"{k}.prototxt-template"
            path.write_bytes(data)
            argv = [tool, str(path), "--ics", pick("0,1,0,1,0,1,0", "1", "", "2,1,0,1,0,1,0", "x"),
                    "--out", f"{out}.prototxt", "--feature-size", pick("14", "0", "1", "14,14")]
            argv += rng.choice([[], ["--growth"], ["--dense"], ["--num-classes", rng.choice(["0", "1"])],
                                ["--ramp-epochs", rng.choice(["0", "-1"])]])
        elif tool == "import_pth":
            label = _state_dict_mutant(deploy_model, rdir / f"{k}.pth", rng)
            argv = [tool, str(rdir / f"{k}.pth"), f"{b}/deploy.prototxt", f"{out}.caffemodel",
                    "--map", "micronet-densenet-final"]
        else:
            data, label = _log_mutant(log, rng)
            path = rdir / f"{k}.log"
            path.write_bytes(data)
            argv = {"parse_log": [tool, str(path), str(rdir)],
                    "extract_seconds": [tool, str(path), f"{out}.txt"],
                    "plot_training_log": [tool, str(rng.randrange(8)), f"{out}.png", str(path)],
                    "plot": [tool, "--out", f"{out}.png", str(path)] + rng.choice([[], [f"{b}/train.log"]])}[tool]
        cases.append(Case("recipe", f"{label} | {tool}", argv))
    return cases


def test_fuzz_recipe_tools(work, models, recipe_bases):
    run_and_check(recipe_cases(work, recipe_bases, round(120 * SCALE), random.Random(SEED + 7)), work, ends=(20, 20))


# ----------------------------------------------------------------------------------------------
# Data cases: damaged records of a Data layer's LMDB, an ImageData list and its images, HDF5Data files,
# WindowData's window files
# ----------------------------------------------------------------------------------------------

DATA_TAIL = """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
DATA_SOLVER = 'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 display: 1 snapshot: 0\n'


def _datum_mutant(d: pb.Datum, rng: random.Random) -> tuple[bytes, str]:
    op = rng.choice(["truncated", "a byte changed", "dims", "encoded", "float_data", "empty", "label", "short data",
                     "data and float_data", "zero dims"])
    if op == "truncated":
        b = d.SerializeToString()
        return b[:rng.randrange(len(b))], op
    if op == "a byte changed":
        b = bytearray(d.SerializeToString())
        b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), op
    if op == "dims":
        field = rng.choice(["channels", "height", "width"])
        setattr(d, field, rng.choice([0, 2, 3, 5, 7, -1, 2**31 - 1]))
        op = f"{field} {getattr(d, field)}"
    elif op == "encoded":
        d.encoded = True
        d.data = rng.choice([b"", b"garbage", b"\x89PNG\r\n\x1a\n" + b"x" * 30, d.data])
    elif op == "float_data":
        d.ClearField("data")
        d.float_data.extend(rng.choice([[0.5] * 36, [0.5] * 5, [float("nan")] * 36, []]))
    elif op == "empty":
        return b"", op
    elif op == "label":
        d.label = rng.choice([-1, 3, 2**31 - 1, -2**31])
    elif op == "short data":
        d.data = d.data[:rng.randrange(len(d.data))]
    elif op == "data and float_data":
        d.float_data.extend([0.5] * 36)
    else:
        d.channels = d.height = d.width = 0
        d.data = b""
    return d.SerializeToString(), op


def _write_damaged_lmdb(path: Path, n: int, side: int, classes: int, np_rng, rng: random.Random,
                        damage: float = 0.35) -> list[str]:
    """An LMDB of n one-channel side x side Datums (label i % classes), each damaged with probability `damage`;
    returns what was done to which record."""
    import lmdb

    said = []
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(n):
            pixels = np_rng.integers(0, 256, side * side, dtype=np.uint8).tobytes()
            d = pb.Datum(channels=1, height=side, width=side, data=pixels, label=i % classes)
            value = d.SerializeToString()
            if rng.random() < damage:
                value, op = _datum_mutant(d, rng)
                said.append(f"record {i}: {op}")
            txn.put(b"%08d" % i, value)
    env.close()
    return said


def _damage_db_file(db: Path, rng: random.Random) -> str:
    """The LMDB's data.mdb itself damaged (a copy cut short, a page zeroed or overwritten, bytes changed, the
    file missing or grown); liblmdb aborted or the process died of SIGBUS on some of these."""
    data = db / "data.mdb"
    raw = bytearray(data.read_bytes())
    pages = len(raw) // 4096
    op = rng.choice(["cut", "page zeroed", "page overwritten", "bytes changed", "meta byte", "no data.mdb",
                     "no lock.mdb", "grown"])
    if op == "cut":
        raw = raw[:rng.randrange(len(raw))]
    elif op in ("page zeroed", "page overwritten"):
        p = rng.randrange(pages)
        raw[p * 4096:(p + 1) * 4096] = bytes(4096) if op == "page zeroed" else rng.randbytes(4096)
        op += f" ({p} of {pages})"
    elif op == "bytes changed":
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    elif op == "meta byte":
        raw[rng.randrange(2 * 4096)] = rng.randrange(256)
    elif op == "grown":
        raw += rng.randbytes(rng.randrange(1, 9000))
    if op == "no data.mdb":
        data.unlink()
    elif op == "no lock.mdb":
        (db / "lock.mdb").unlink(missing_ok=True)
    else:
        data.write_bytes(bytes(raw))
    return f"data.mdb: {op}"


def _damaged_leveldb(db: Path, n: int, side: int, classes: int, np_rng, rng: random.Random) -> str:
    """A LevelDB of n Datums in a few tables (compacted below level 0 or not) with one of its files damaged: a
    table cut short, its bytes or its magic changed, or missing; the manifest, CURRENT or the log damaged; a
    stray file. plyvel read a database whose last table was cut as one of fewer records."""
    import plyvel

    parts = rng.randint(1, 4)  # (each reopening writes the log so far as a table: a few small tables)
    for part in range(parts):
        ldb = plyvel.DB(str(db), create_if_missing=True)
        for i in range(part * n // parts, (part + 1) * n // parts):
            pixels = np_rng.integers(0, 256, side * side, dtype=np.uint8).tobytes()
            ldb.put(b"%08d" % i, pb.Datum(channels=1, height=side, width=side, data=pixels,
                                          label=i % classes).SerializeToString())
        if part == parts - 1 and rng.random() < 0.5:
            ldb.compact_range()
        ldb.close()
    files = sorted(p.name for p in db.iterdir() if p.name not in ("LOCK", "LOG", "LOG.old"))
    op = rng.choice(["table cut", "table bytes", "table magic", "table missing", "manifest", "CURRENT", "log",
                     "stray"])
    kind = {"manifest": "MANIFEST-", "CURRENT": "CURRENT", "log": ".log"}.get(op, ".ldb")
    name = rng.choice([f for f in files if kind in f] or files)
    victim = db / name
    raw = bytearray(victim.read_bytes())
    if op == "table cut" or (op in ("manifest", "log") and rng.random() < 0.3):
        raw = raw[:rng.randrange(len(raw) + 1)]
    elif op == "table magic" and raw:
        raw[-rng.randint(1, min(8, len(raw)))] ^= rng.randrange(1, 256)
    elif op == "CURRENT":
        raw = rng.choice([b"", b"MANIFEST-999999\n", bytes(raw[:-1]), rng.randbytes(12)])
    elif op == "stray":
        (db / rng.choice(["000999.ldb", "000999.log", "MANIFEST-000999"])).write_bytes(rng.randbytes(100))
    else:
        for _ in range(rng.randint(1, 6)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
    if op == "table missing":
        victim.unlink()
    elif op != "stray":
        victim.write_bytes(bytes(raw))
    return f"LevelDB {name}: {op}"


def _lmdb_case(folder: Path, rng: random.Random) -> str:
    np_rng = np.random.default_rng(rng.randrange(2**32))
    backend = "LMDB"
    if rng.random() < 0.3:  # a database of a few pages, its file damaged
        _write_damaged_lmdb(folder / "db", 60, 12, 3, np_rng, rng, damage=0)
        labels = [_damage_db_file(folder / "db", rng)]
    elif rng.random() < 0.2 and HAVE_PLYVEL:  # a LevelDB of a few tables, one of its files damaged
        labels, backend = [_damaged_leveldb(folder / "db", 60, 12, 3, np_rng, rng)], "LEVELDB"
    else:
        labels = _write_damaged_lmdb(folder / "db", 5, 6, 3, np_rng, rng)
    tp = rng.choice(["", "crop_size: 4", "crop_size: 9", "mirror: true", "mean_value: 3", "scale: 0.1"])
    (folder / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ {tp} }} '
        f'data_param {{ source: "db" batch_size: 2 backend: {backend} }} }}' + DATA_TAIL)
    return "Data: " + ("; ".join(labels) or "no record changed") + (f"; {tp}" if tp else "")


def _image_list_case(folder: Path, rng: random.Random) -> str:
    from PIL import Image

    np_rng = np.random.default_rng(rng.randrange(2**32))
    lines = []
    for i in range(4):
        size = (6, 6 + rng.choice([0, 0, 0, 2]))
        Image.fromarray(np_rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"im {i}.png")
        lines.append(f"im {i}.png {i % 3}")
    op = rng.choice(["a missing image", "a corrupt image", "no label", "a bad label", "an empty list",
                     "an empty image", "blank lines", "spaces before the label", "a huge label", "a gray image",
                     "nothing"])
    if op == "a missing image":
        lines[rng.randrange(4)] = "gone.png 1"
    elif op == "a corrupt image":
        (folder / "im 1.png").write_bytes(b"\x89PNG garbage")
    elif op == "no label":
        lines[rng.randrange(4)] = "im0.png"
    elif op == "a bad label":
        lines[rng.randrange(4)] = "im 0.png x1"
    elif op == "an empty list":
        lines = []
    elif op == "an empty image":
        (folder / "im 2.png").write_bytes(b"")
    elif op == "blank lines":
        lines[1:1] = ["", "   "]
    elif op == "spaces before the label":
        lines[0] = "im 0.png    2"
    elif op == "a huge label":
        lines[0] = "im 0.png -99999999999"
    elif op == "a gray image":
        Image.fromarray(np.zeros((6, 6), np.uint8)).save(folder / "im 3.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    extra = rng.choice(["", "new_height: 5 new_width: 5", "shuffle: true", "is_color: false",
                        "new_height: 0 new_width: 5", "rand_skip: 7", 'root_folder: "/nonexistent"'])
    if "root_folder" not in extra:
        extra += f' root_folder: "{folder}/"'
    tp = rng.choice(["", "crop_size: 4", "crop_size: 20", "mirror: true", "mean_value: 1 mean_value: 2"])
    (folder / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" transform_param {{ {tp} }} '
        f'image_data_param {{ source: "list.txt" batch_size: 2 {extra} }} }}' + DATA_TAIL)
    return f"ImageData: {op}; {extra}; {tp}"


def _hdf5_case(folder: Path, rng: random.Random) -> str:
    import h5py

    n = rng.choice([0, 1, 3, 4])
    op = rng.choice(["nothing", "no label", "integer data", "2-D data", "fewer labels", "a missing file",
                     "not HDF5", "a scalar label", "an empty list", "NaN data", "1-D data"])
    data = np.random.default_rng(n).random((n, 2, 3, 3)).astype(np.float32)
    label = (np.arange(n) % 3).astype(np.float32)
    if op == "integer data":
        data = data.astype(np.int64)
    elif op == "2-D data":
        data = data.reshape(n, 18)
    elif op == "fewer labels":
        label = label[:-1] if n else np.zeros(2, np.float32)
    elif op == "NaN data":
        data[...] = np.nan
    elif op == "1-D data":
        data = np.zeros(n, np.float32)
    with h5py.File(folder / "a.h5", "w") as f:
        f["data"] = data
        if op == "a scalar label":
            f["label"] = 1.0
        elif op != "no label":
            f["label"] = label
    if op == "not HDF5":
        (folder / "a.h5").write_text("hello")
    listed = {"a missing file": "zz.h5\n", "an empty list": ""}.get(op, "a.h5\n")
    (folder / "list.txt").write_text(listed)
    shuffle = rng.choice(["", "shuffle: true"])
    (folder / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" '
        f'hdf5_data_param {{ source: "list.txt" batch_size: 2 {shuffle} }} }}' + DATA_TAIL)
    return f"HDF5Data: {op}, {n} rows {shuffle}"


def _window_case(folder: Path, rng: random.Random) -> str:
    """WindowData (R-CNN window files): two images and their windows, the file's text or a value damaged."""
    from PIL import Image

    np_rng = np.random.default_rng(rng.randrange(2**32))
    for i in range(2):
        Image.fromarray(np_rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    text = ("# 0\nim0.png\n3\n10\n12\n3\n1 0.9 0 0 6 6\n2 0.7 3 2 11 9\n0 0.1 1 1 5 5\n"
            "# 1\nim1.png\n3\n10\n12\n2\n3 0.8 5 4 11 9\n0 0.0 0 0 11 9\n")
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    op = rng.choice(["nothing", "nothing", "a value", "a value", "a line dropped", "a line given twice", "text"])
    if op == "a value":
        tokens = lines[i].split()
        j = rng.randrange(len(tokens))
        tokens[j] = rng.choice(["-1", "0", "999", "2147483648", "nan", "x", "1e30", "0.5", "#", "im9.png", ""])
        lines[i] = " ".join(tokens)
        op = f"line {i + 1} now {lines[i]!r}"
    elif op == "a line dropped":
        del lines[i]
        op += f" ({i + 1})"
    elif op == "a line given twice":
        lines.insert(i, lines[i])
        op += f" ({i + 1})"
    data = "\n".join(lines).encode() + b"\n"
    if op == "text":
        data, op = mutate_text(text, rng)
    (folder / "windows.txt").write_bytes(data)
    extra = rng.choice(["", "context_pad: 1", "context_pad: 3", 'crop_mode: "square"', "fg_fraction: 1",
                        "fg_fraction: 0", "cache_images: true", "fg_threshold: 0.95", "bg_threshold: 0",
                        "mean_file: \"nope.binaryproto\""])
    tp = rng.choice(["crop_size: 4", "crop_size: 4 mirror: true", "crop_size: 4 mean_value: 1 mean_value: 2 "
                     "mean_value: 3", "crop_size: 30", "crop_size: 4 scale: 0.5"])
    (folder / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "WindowData" top: "data" top: "label" transform_param {{ {tp} }} '
        f'window_data_param {{ source: "windows.txt" root_folder: "{folder}/" batch_size: 2 {extra} }} }}'
        + DATA_TAIL.replace("num_output: 3", "num_output: 4"))
    return f"WindowData: {op}; {extra}; {tp}"


def data_cases(work: Path, n: int, rng: random.Random) -> list[tuple[Path, Case]]:
    cases = []
    for k in range(n):
        folder = work / "datafuzz" / f"c{k}"
        folder.mkdir(parents=True)
        label = rng.choice([_lmdb_case, _image_list_case, _hdf5_case, _window_case])(folder, rng)
        (folder / "solver.prototxt").write_text(DATA_SOLVER + f'snapshot_prefix: "{folder}/s"\n')
        argv = rng.choice([["time", "--model", "net.prototxt", "--iterations", "2"],
                           ["train", "--solver", "solver.prototxt"]])
        cases.append((folder, Case("data", label, argv)))
    return cases


def test_fuzz_data_sources(work):
    run_and_check(data_cases(work, round(120 * SCALE), random.Random(SEED + 5)), work, ends=(5, 40))


# ----------------------------------------------------------------------------------------------
# Caffe's data tools on damaged inputs: MNIST IDX files (plain or gzip), CIFAR-10 batches, image lists,
# databases of damaged Datums
# ----------------------------------------------------------------------------------------------

def _idx(kind: str, n: int, np_rng) -> bytes:
    import struct

    if kind == "images":
        return struct.pack(">IIII", 2051, n, 4, 4) + np_rng.integers(0, 256, n * 16, dtype=np.uint8).tobytes()
    return struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes()


def data_tool_cases(work: Path, n: int, rng: random.Random) -> list[tuple[Path, Case]]:
    import gzip

    from PIL import Image

    cases = []
    for k in range(n):
        folder = work / "datatools" / f"c{k}"
        folder.mkdir(parents=True)
        np_rng = np.random.default_rng(rng.randrange(2**32))
        tool = rng.choice(["convert_mnist", "convert_mnist_siamese", "convert_cifar", "convert_imageset",
                           "compute_image_mean", "convert_db"])
        said = []

        def damaged(data: bytes) -> bytes:
            if rng.random() < 0.6:
                data, op = _mutate_bytes(data, rng)
                said.append(op)
            return data

        if tool.startswith("convert_mnist"):
            m = rng.choice([0, 1, 3, 10])
            images, labels = _idx("images", m, np_rng), _idx("labels", rng.choice([m, m, m + 1, max(0, m - 1)]), np_rng)
            if rng.random() < 0.5:
                images = damaged(images)
            else:
                labels = damaged(labels)
            name = "images.gz" if rng.random() < 0.2 else "images"
            (folder / name).write_bytes(gzip.compress(images) if name.endswith(".gz") else images)
            (folder / "labels").write_bytes(labels)
            argv = [tool, name, "labels", "db"] + rng.choice([[], ["--backend", "leveldb"], ["--backend", "x"]])
        elif tool == "convert_cifar":
            (folder / "in").mkdir()
            (folder / "out").mkdir()
            names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
            for name in names:
                (folder / "in" / name).write_bytes(b"".join(bytes([i]) + np_rng.integers(0, 256, 3072, dtype=np.uint8)
                                                            .tobytes() for i in range(2)))
            victim = folder / "in" / rng.choice(names)
            if rng.random() < 0.2:
                victim.unlink()
                said.append(f"{victim.name} missing")
            else:
                victim.write_bytes(damaged(victim.read_bytes()))
                said.append(victim.name)
            argv = [tool, "in", "out"] + rng.choice([[], ["leveldb"], ["x"]])
        elif tool == "convert_imageset":
            for i in range(3):
                size = (5, 6 + (i == 2 and rng.random() < 0.3), 3)
                Image.fromarray(np_rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"i{i}.png")
            if rng.random() < 0.4:
                victim = folder / f"i{rng.randrange(3)}.png"
                victim.write_bytes(damaged(victim.read_bytes()))
            text = "".join(f"i{i}.png {i}\n" for i in range(3))
            data = text.encode()
            if rng.random() < 0.4:
                data, op = mutate_text(text, rng)
                said.append(op)
            (folder / "list.txt").write_bytes(data)
            argv = [tool, f"{folder}/", "list.txt", "db"] + rng.sample(
                ["--gray", "--shuffle", "--check_size", "--encoded", "--encode_type=png", "--encode_type=bogus",
                 "--resize_width=3", "--resize_height=0", "--resize_width=-1", "--seed=3"], rng.randint(0, 3))
        elif rng.random() < 0.3:
            _write_damaged_lmdb(folder / "db", 60, 12, 10, np_rng, rng, damage=0)
            said.append(_damage_db_file(folder / "db", rng))
            argv = [tool, "db", "mean.binaryproto" if tool == "compute_image_mean" else "out"]
        elif rng.random() < 0.2 and HAVE_PLYVEL:
            said.append(_damaged_leveldb(folder / "db", 60, 12, 10, np_rng, rng))
            argv = [tool, "db", "mean.binaryproto" if tool == "compute_image_mean" else "out"] + \
                rng.choice([[], ["--backend", "leveldb"], ["--backend", "lmdb"]])
        else:
            said += _write_damaged_lmdb(folder / "db", 4, 3, 10, np_rng, rng)
            argv = [tool, "db", "mean.binaryproto" if tool == "compute_image_mean" else "out"] + \
                rng.choice([[], ["--backend", "leveldb"], ["--backend", "lmdb"]])
        cases.append((folder, Case("data tool", "; ".join(said) or "intact", argv)))
    return cases


def test_fuzz_data_tools(work):
    run_and_check(data_tool_cases(work, round(100 * SCALE), random.Random(SEED + 8)), work, ends=(20, 20))


# ----------------------------------------------------------------------------------------------
# classify and detect (Caffe's python/classify.py and detect.py): damaged images, arrays, means, label and
# window files, odd preprocessing options
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classify_bases(work: Path) -> Path:
    from PIL import Image

    from netcompress.net import Net

    folder = work / "classify"
    (folder / "imgs").mkdir(parents=True)
    (folder / "deploy.prototxt").write_text((REPO / "examples/mnist/lenet.prototxt").read_text().replace("dim: 64",
                                                                                                         "dim: 1"))
    with seeded():
        ncio.write_caffemodel(str(folder / "m.caffemodel"),
                              Net(str(folder / "deploy.prototxt"), seed=1, verbose=False).to_proto())
    np_rng = np.random.default_rng(SEED)
    for i, shape in enumerate([(28, 28), (29, 28, 3), (30, 31, 3)]):
        Image.fromarray(np_rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / "imgs" / f"{i}.png")
    np.save(folder / "good.npy", np_rng.random((2, 28, 28, 1)).astype(np.float32))
    np.save(folder / "mean.npy", np.zeros((1, 28, 28), np.float32))
    (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    (folder / "windows.csv").write_text(f"filename,ymin,xmin,ymax,xmax\n{folder}/imgs/0.png,0,0,20,20\n"
                                        f"{folder}/imgs/1.png,2,3,27,25\n")
    return folder


def classify_cases(bases: Path, n: int, rng: random.Random) -> list[Case]:
    cases = []
    for k in range(n):
        tool = rng.choice(["classify", "detect"])
        swap, label = {}, "intact"
        if rng.random() < 0.5:
            victim = rng.choice(["imgs/0.png", "imgs/1.png", "good.npy", "mean.npy", "windows.csv", "labels.txt",
                                 "deploy.prototxt"])
            data = (bases / victim).read_bytes()
            data, op = mutate_text(data.decode(), rng) if victim.endswith(("csv", "txt", "prototxt")) else \
                _mutate_bytes(data, rng)
            swap[victim] = str(bases / f"{k}_{Path(victim).name}")
            Path(swap[victim]).write_bytes(data)
            label = f"{victim}: {op}"

        def file(name: str) -> str:
            return swap.get(name, str(bases / name))

        source = rng.choice(["imgs/0.png", "imgs/1.png", "good.npy", "imgs"]) if tool == "classify" else "windows.csv"
        argv = [tool, file(source), str(bases / f"o{k}.{'npy' if tool == 'classify' else 'csv'}"),
                "--model_def", file("deploy.prototxt"), "--pretrained_model", str(bases / "m.caffemodel")]
        if rng.random() < 0.4:
            argv += ["--mean_file", rng.choice([file("mean.npy"), "", str(bases / "nope.npy"),
                                                str(bases / "m.caffemodel")])]
        if rng.random() < 0.3:
            argv += ["--channel_swap", rng.choice(["2,1,0", "0", "x", "0,0,0", "5,1,0", ""])]
        if rng.random() < 0.3:
            argv += ["--raw_scale", rng.choice(["255", "0", "nan", "-1"])]
        if rng.random() < 0.3:
            argv += ["--input_scale", rng.choice(["1", "0", "inf"])]
        if tool == "classify":
            argv += rng.choice([[], ["--center_only"]])
            if rng.random() < 0.3:
                argv += ["--images_dim", rng.choice(["28,28", "32,30", "0,0", "1,1", "x", "30"])]
            if rng.random() < 0.3:
                argv += ["--labels", file("labels.txt"), "--top_k", rng.choice(["5", "0", "100"])]
            if source == "imgs":
                argv += ["--ext", rng.choice(["png", "png", "jpg"])]
        else:
            argv += ["--context_pad", rng.choice(["0", "1", "4", "4", "16", "-1"])]
        cases.append(Case(tool, label, argv))
    return cases


def test_fuzz_classify_and_detect(work, classify_bases):
    run_and_check(classify_cases(classify_bases, round(80 * SCALE), random.Random(SEED + 9)), work, classify_bases,
                  ends=(15, 15))


# ----------------------------------------------------------------------------------------------
# A few cases in real processes: what blocks or never ends must not hang the command line either
# ----------------------------------------------------------------------------------------------

def test_fuzz_blocking_inputs_in_a_process(work):
    import subprocess

    fifo = work / "hostile" / "proc.fifo"
    fifo.parent.mkdir(exist_ok=True)
    if not fifo.exists():
        os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for argv, fragment in ((["time", "--model", str(fifo)], "is a FIFO (named pipe)"),
                           (["train", "--solver", "/dev/zero"], "is a character device"),
                           (["test", "--model", "lenet.prototxt", "--weights", "/dev/urandom"],
                            "is a character device")):
        r = subprocess.run([sys.executable, "-m", "netcompress", *argv], cwd=work, env=env, capture_output=True,
                           text=True, timeout=120)
        errors = [l for l in r.stderr.splitlines() if " error: " in l]
        assert r.returncode == 1 and len(errors) == 1 and fragment in errors[0], (argv, r.stderr[-2000:])
        assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------
# Python layers (python_param) that misbehave: set-up, reshape, forward and backward snippets a user may
# write wrongly (raising, reshaping tops, bottoms or the layer's own blobs at the wrong time, writing
# NaN, strings or complex numbers, replacing self.blobs), as a middle layer or as the data layer feeding
# a loss (labels out of range, NaN, of other shapes). The layer's own errors and warnings are the user's
# (named with the layer and class); what netcompress does with what the layer did must be an error that
# names it, never a traceback or a hang.
# ----------------------------------------------------------------------------------------------

PY_MIDDLE = {
    "setup": ["pass", "raise ValueError('bad param_str')", "self.blobs.add_blob(3, 4); self.blobs[0].data[...] = 0.1",
              "self.blobs.add_blob(0)", "self.blobs.add_blob(-1)", "self.blobs.append(3)", "self.blobs = None",
              "import json; self.p = json.loads(self.param_str)", "top[0].reshape(2, 5)", "self.blobs.add_blob(2, 48)",
              "self.blobs.add_blob(5); self.blobs[0].data[...] = np.nan", "top.append(top[0])", "del top[0]",
              "bottom[0].reshape(1)", "self.blobs.add_blob(3); self.blobs.add_blob(3)"],
    "reshape": ["top[0].reshape(*bottom[0].data.shape)", "top[0].reshape(bottom[0].num, 5)", "top[0].reshape(2.5)",
                "top[0].reshape()", "top[0].reshape(0, 5)", "pass", "top[0].reshape(*bottom[0].data.shape[::-1])",
                "bottom[0].reshape(1)", "top[1].reshape(1)", "top[0].reshape(2, 2**20)", "top[0].reshape(1, 48)",
                "top[0].reshape(*bottom[0].shape)", "top[0].reshape(bottom[0].count)"],
    "forward": ["top[0].data[...] = bottom[0].data", "top[0].data[...] = np.nan",
                "top[0].reshape(3, 7); top[0].data[...] = 1", "top[0].data = bottom[0].data", "pass",
                "top[0].data[...] = self.blobs[0].data.sum()", "return 5", "self.blobs[0].reshape(7)",
                "bottom[0].data[...] = 0", "top[0].data[...] = bottom[0].data.reshape(top[0].data.shape)",
                "top[0].reshape(2, 48); top[0].data[...] = bottom[0].data.reshape(2, 48)", "top[0].data[...] = np.inf",
                "bottom[0].reshape(7)", "top[0].data[...] = 1e39", "top[0].data[...] = 'x'", "top[0].data[...] = 1j",
                "self.blobs.add_blob(1)"],
    "backward": ["pass", "bottom[0].diff[...] = top[0].diff", "bottom[0].diff[...] = np.inf", "bottom[0].reshape(5)",
                 "self.blobs[0].diff[...] = 1", "self.blobs[0].reshape(2)", "raise RuntimeError('no backward')",
                 "top[0].reshape(1)", "bottom[0].diff[...] = top[0].diff.reshape(bottom[0].diff.shape)",
                 "bottom[0].diff[...] = np.nan", "self.blobs[0].diff[...] = np.nan", "bottom[0].reshape(2, 48)"],
}
PY_SOURCE = {
    "setup": ["pass", "top[0].reshape(2, 3, 4, 4); top[1].reshape(2)", "top[0].reshape(2, 3, 4, 4)",
              "self.n = int(self.param_str)", "top[0].reshape(2, 48); top[1].reshape(3)"],
    "reshape": ["top[0].reshape(2, 3, 4, 4); top[1].reshape(2)", "pass", "top[0].reshape(2, 48); top[1].reshape(2, 1)",
                "top[0].reshape(3, 48); top[1].reshape(2)", "top[1].reshape(2, 3)",
                "top[0].reshape(0, 48); top[1].reshape(0)"],
    "forward": ["top[0].data[...] = np.random.rand(*top[0].shape); top[1].data[...] = np.arange(top[1].count) % 3",
                "top[1].data[...] = 7", "top[1].data[...] = -1", "top[1].data[...] = np.nan", "top[1].data[...] = 1.5",
                "top[1].data[...] = 2**40", "top[0].data[...] = np.nan", "top[1].data[...] = np.inf", "pass",
                "top[0].reshape(5, 48); top[1].reshape(5)", "top[1].data[...] = 255", "top[1].data[...] = -0.0"],
    "backward": ["pass"],
}
PY_DUMMY = ('layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param { shape { dim: 2 dim: 3 '
            'dim: 4 dim: 4 } shape { dim: 2 } data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" '
            'value: 1 } } }\n')
PY_TAILS = {
    "middle": ['layer { name: "ip" type: "InnerProduct" bottom: "py" top: "ip" inner_product_param { num_output: 3 '
               'weight_filler { type: "xavier" } } }\nlayer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" '
               'bottom: "label" top: "loss" }\n',
               'layer { name: "silence" type: "Silence" bottom: "label" }\n',
               'layer { name: "loss" type: "EuclideanLoss" bottom: "py" bottom: "data" top: "loss" }\n'],
    "source": ['layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 '
               'weight_filler { type: "xavier" } } }\n'],
}
PY_LOSSES = ['layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }',
             'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" '
             'loss_param { ignore_label: 7 } }',
             'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" '
             'loss_param { ignore_label: -1 normalization: VALID } }',
             'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\nlayer { name: "loss" '
             'type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "loss" }',
             'layer { name: "loss" type: "HingeLoss" bottom: "ip" bottom: "label" top: "loss" }',
             'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" accuracy_param { top_k: 2 '
             'ignore_label: 7 } }\nlayer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
             'top: "loss" }']


def python_layer_cases(work: Path, n: int, rng: random.Random) -> list[tuple[Path, Case]]:
    cases = []
    for k in range(n):
        folder = work / "pylayers" / f"c{k}"
        folder.mkdir(parents=True)
        role = rng.choice(["middle", "source"])
        snippets = PY_MIDDLE if role == "middle" else PY_SOURCE
        body = {m: rng.choice(options) for m, options in snippets.items()}
        if rng.random() < 0.5:  # (most layers set up and reshape as they should: the faults further on are reached)
            body["setup"] = "pass"
        if rng.random() < 0.4:
            body["reshape"] = snippets["reshape"][0]
        module = f"fuzz_pylayer_{SEED}_{k}"
        src = "import numpy as np\nimport caffe\n\n\nclass L(caffe.Layer):\n"
        for method, code in body.items():
            args = "top, propagate_down, bottom" if method == "backward" else "bottom, top"
            src += f"    def {method}(self, {args}):\n        {code}\n\n"
        (folder / f"{module}.py").write_text(src)
        param = rng.choice(['""', '"{}"', '"3"', '"not json"'])
        python = f'python_param {{ module: "{module}" layer: "L" param_str: {param} }}'
        tail = rng.choice(PY_TAILS[role])
        if role == "middle":
            weight = "loss_weight: 1 " if "Silence" in tail else ""
            net = PY_DUMMY + f'layer {{ name: "py" type: "Python" bottom: "data" top: "py" {weight}{python} }}\n' + tail
        else:
            net = (f'layer {{ name: "py" type: "Python" top: "data" top: "label" {python} }}\n' + tail
                   + rng.choice(PY_LOSSES) + "\n")
        (folder / "net.prototxt").write_text('name: "pylayer"\n' + net)
        (folder / "solver.prototxt").write_text(DATA_SOLVER + f'snapshot_prefix: "{folder}/s"\n')
        argv = rng.choice([["time", "--model", "net.prototxt", "--iterations", "2"],
                           ["train", "--solver", "solver.prototxt"]])
        cases.append((folder, Case("python layer", f"{role}: {body}; {tail[:40]}", argv)))
    return cases


def test_fuzz_python_layers(work):
    cases = python_layer_cases(work, round(120 * SCALE), random.Random(SEED + 10))
    outcomes = []
    try:
        for where, case in cases:
            with _chdir(where):
                o = run_case(case)
            if o.problem.startswith("a Python warning") and f"/{where.name}/fuzz_pylayer_" in o.problem:
                o.problem = ""  # (numpy's warning at the layer's own line: the user's code, as in Caffe)
            outcomes.append(o)
    finally:
        for name in [m for m in sys.modules if m.startswith("fuzz_pylayer_")]:
            del sys.modules[name]
    check_outcomes(outcomes, work)
    rcs = [o.rc for o in outcomes]
    assert rcs.count(0) > 10 and rcs.count(1) > 40, (rcs.count(0), rcs.count(1))


# ----------------------------------------------------------------------------------------------
# pycaffe's API misused by a script: odd arguments to Net, blobs, params, solvers, caffe.io, net_spec,
# coord_map and Classifier. A call may return or raise; what it raises must be deliberate: a `raise` in
# netcompress (or Python's own TypeError of a wrong argument type, protobuf's DecodeError of bytes that
# are no message, Pillow's error naming a file that is no image), never an error that happened on the way
# (numpy's broadcast error, an IndexError, a KeyError of a missing name inside netcompress), a warning
# or a hang.
# ----------------------------------------------------------------------------------------------

PY_TRAIN = """name: "t" force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 1 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


class _PyFuzz:
    """The random arguments and actions of one campaign, over the files in `folder`."""

    def __init__(self, folder: Path, rng: random.Random):
        import netcompress.pycaffe as caffe

        self.caffe, self.rng, self.folder = caffe, rng, folder
        self.train, self.solver = str(folder / "train.prototxt"), str(folder / "solver.prototxt")
        self.garbage, self.empty, self.text = str(folder / "garbage.bin"), str(folder / "empty"), str(folder / "t.txt")
        self.deploy, self.weights = str(REPO / "examples/mnist/lenet.prototxt"), str(folder / "lenet.caffemodel")
        self.actions = [getattr(self, n) for n in sorted(dir(self)) if n.startswith("a_")]

    def value(self):
        return self.rng.choice([0, -1, 1, 3, 10**12, 2**31, 1.5, float("nan"), float("inf"), None, "a", "", b"x", [],
                                [1], (2, 3), {}, True, np.int64(2), np.float32(0.5), np.array([1, 2]), object(),
                                "data", "conv", "nope", self.garbage, self.empty, self.text, str(self.folder),
                                "/nonexistent/x"])

    def array(self):
        rng = self.rng
        shape = rng.choice([(4, 1, 8, 8), (4, 1, 8, 8), (1, 1, 8, 8), (4, 1, 9, 8), (4, 8, 8), (), (0,), (5, 1, 8, 8),
                            (4, 3, 8, 8), (4,), (2,), (4, 1)])
        dtype = rng.choice([np.float32, np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64, object])
        a = np.zeros(shape, dtype=dtype)
        if dtype in (np.float32, np.float64) and a.size and rng.random() < 0.3:
            a.flat[0] = rng.choice([np.nan, np.inf, 1e38])
        return a if rng.random() > 0.05 else rng.choice([[1, 2], "x", None, 3])

    def arg(self):
        return self.array() if self.rng.random() < 0.4 else self.value()

    def a_forward(self, net):
        rng = self.rng
        kw = {rng.choice(["data", "label", "conv", "nope"]): self.array() for _ in range(rng.randint(0, 2))}
        kw.update({k: self.value() for k in ("start", "end") if rng.random() < 0.3})
        if rng.random() < 0.2:
            kw["blobs"] = rng.choice([["conv"], ["nope"], "conv", [1], None])
        net.forward(**kw)

    def a_backward(self, net):
        rng = self.rng
        kw = {rng.choice(["loss", "ip", "data", "nope"]): self.array() for _ in range(rng.randint(0, 2))}
        kw.update({k: self.value() for k in ("start", "end") if rng.random() < 0.3})
        if rng.random() < 0.2:
            kw["diffs"] = rng.choice([["conv"], ["nope"], "conv", [1], None])
        net.forward()
        net.backward(**kw)

    def a_reshape(self, net):
        blob = net.blobs[self.rng.choice(list(net.blobs))]
        blob.reshape(*[self.value() if self.rng.random() < 0.4 else self.rng.randint(0, 9)
                       for _ in range(self.rng.randint(0, 5))])
        net.reshape()
        net.forward()

    def a_blob_values(self, net):
        blob = net.blobs[self.rng.choice(list(net.blobs))]
        try:
            getattr(blob, self.rng.choice(["data", "diff"]))[...] = self.arg()
        except (ValueError, TypeError):  # numpy's own refusal, in the script's line
            return
        net.forward()
        net.backward()

    def a_params(self, net):
        p = net.params[self.rng.choice(list(net.params))][self.rng.randint(0, 1)]
        if self.rng.random() < 0.5:
            p.reshape(*[self.rng.randint(0, 5) for _ in range(self.rng.randint(0, 4))])
        else:
            try:
                p.data[...] = self.arg()
            except (ValueError, TypeError):
                return
        net.forward()
        net.backward()

    def a_files(self, net):
        rng = self.rng
        what = rng.choice(["copy_from", "save", "save_hdf5", "load_hdf5", "share_with"])
        other = self.caffe.Net(self.train, self.caffe.TRAIN) if what == "share_with" else self.garbage
        getattr(net, what)(rng.choice([self.value(), str(self.folder / "out.caffemodel"),
                                       str(self.folder / "sub" / "x.h5"), other]))

    def a_forward_all(self, net):
        rng = self.rng
        kw = {rng.choice(["data", "label", "nope"]): self.array() for _ in range(rng.randint(0, 2))}
        if rng.random() < 0.5:
            net.forward_all(blobs=rng.choice([None, ["conv"], ["nope"]]), **kw)
        else:
            net.forward_backward_all(blobs=rng.choice([None, ["conv"]]), diffs=rng.choice([None, ["data"], ["nope"]]),
                                     **kw)

    def a_construct(self, net):
        rng = self.rng
        args = [rng.choice([self.train, self.deploy, self.garbage, self.empty, self.text, self.value()])]
        args += [self.value() if rng.random() < 0.5 else rng.choice([0, 1, self.garbage, "train"])
                 for _ in range(rng.randint(0, 3))]
        kw = {k: v() for k, v in (("weights", lambda: rng.choice([self.garbage, self.empty, self.value()])),
                                  ("level", self.value), ("stages", lambda: rng.choice([self.value(), ["a"], [1]])),
                                  ("phase", self.value)) if rng.random() < 0.25}
        self.caffe.Net(*args, **kw)

    def a_solver(self, net):
        rng = self.rng
        s = self.caffe.get_solver(rng.choice([self.solver, self.solver, self.garbage, self.empty, self.text,
                                              self.value()]))
        what = rng.choice(["step", "solve", "restore", "snapshot", "apply_update", "share_weights"])
        if what == "step":
            s.step(rng.choice([0, 1, 2, -1, 1.5, "2", 2**31, None]))
        elif what == "solve":
            s.solve(rng.choice([None, self.garbage, self.empty, self.value()]))
        elif what == "restore":
            s.restore(rng.choice([self.garbage, self.empty, self.value()]))
        elif what == "snapshot":
            s.step(1)
            s.snapshot()
            s.restore(str(self.folder / "snap_iter_1.solverstate"))
        elif what == "apply_update":
            try:
                s.net.params["conv"][0].diff[...] = self.arg()
            except (ValueError, TypeError):
                return
            s.apply_update()
        else:
            s.share_weights(rng.choice([net, self.value()]))

    def a_io(self, net):
        rng, io_ = self.rng, self.caffe.io
        what = rng.choice(["load_image", "resize_image", "oversample", "blobproto", "datum", "vector",
                           "transformer"])
        if what == "load_image":
            io_.load_image(rng.choice([self.garbage, self.empty, self.text, self.value()]),
                           color=rng.choice([True, False]))
        elif what == "resize_image":
            io_.resize_image(self.array(), rng.choice([(4, 4), (0, 3), (-1, 2), self.value()]),
                             interp_order=rng.choice([0, 1, 3]))
        elif what == "oversample":
            io_.oversample(rng.choice([[self.array()], self.array(), self.value()]),
                           rng.choice([(4, 4), (9, 9), (0, 0), self.value()]))
        elif what == "blobproto":
            io_.blobproto_to_array(io_.array_to_blobproto(self.array(), rng.choice([None, self.array()])),
                                   return_diff=rng.choice([True, False]))
        elif what == "datum":
            io_.datum_to_array(io_.array_to_datum(self.array(), rng.choice([None, 1, 2**40])))
        elif what == "vector":
            io_.blobprotovector_str_to_arraylist(rng.choice([b"", b"\x0a\x05\x12\x03abc", b"\xff" * 9]))
        else:
            t = io_.Transformer(rng.choice([{"data": (4, 3, 8, 8)}, {"data": (4, 3, 8, 8)}, {"data": self.value()}]))
            for _ in range(rng.randint(1, 4)):
                getattr(t, rng.choice(["set_transpose", "set_channel_swap", "set_raw_scale", "set_mean",
                                       "set_input_scale"]))(rng.choice(["data", "nope"]),
                                                            rng.choice([(2, 0, 1), (2, 1, 0), self.value(),
                                                                        self.array()]))
            t.deprocess("data", t.preprocess("data", rng.choice([np.zeros((6, 6, 3)), self.array()])))

    def a_memory_data(self, net):
        path = self.folder / "memory.prototxt"
        if not path.exists():
            path.write_text('layer { name: "d" type: "MemoryData" top: "data" top: "label" '
                            'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }')
        mem = self.caffe.Net(str(path), self.caffe.TEST)
        mem.set_input_arrays(self.rng.choice([np.zeros((4, 1, 2, 2), np.float32), self.array(), self.value()]),
                             self.rng.choice([np.zeros(4, np.float32), self.array(), self.value()]))
        mem.forward()

    def a_net_spec(self, net):
        L = self.caffe.layers
        n = self.caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[self.rng.choice([1, 2, self.value()]), 1, 8, 8]))
        n.c = L.Convolution(n.data, num_output=self.rng.choice([2, self.value()]),
                            kernel_size=self.rng.choice([3, self.value()]))
        if self.rng.random() < 0.5:
            n.x = getattr(L, self.rng.choice(["Bogus", "ReLU", "Pooling"]))(
                n.c, **{self.rng.choice(["pool", "foo", "kernel_size", "negative_slope"]): self.value()})
        path = self.folder / "ns.prototxt"
        path.write_text(str(n.to_proto()))
        self.caffe.Net(str(path), self.caffe.TEST).forward()

    def a_coord_map(self, net):
        from netcompress.pycaffe import coord_map

        L, rng = self.caffe.layers, self.rng
        n = self.caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
        n.c = L.Convolution(n.data, num_output=2, kernel_size=rng.choice([1, 3]), stride=rng.choice([1, 2]),
                            pad=rng.choice([0, 1]))
        n.p = L.Pooling(n.c, kernel_size=2, stride=2)
        n.d = L.Deconvolution(n.p, convolution_param=dict(num_output=2, kernel_size=rng.choice([2, 4]), stride=2))
        n.r = L.ReLU(n.data)
        a, b = rng.choice([(n.d, n.data), (n.data, n.d), (n.d, n.r), (n.r, n.data), (n.c, n.c), (self.value(), n.d)])
        coord_map.crop(a, b)

    def a_classifier(self, net):
        rng = self.rng
        if not os.path.exists(self.weights):
            self.caffe.Net(self.deploy, self.caffe.TEST).save(self.weights)
        kw = {k: rng.choice([self.value(), self.array(), (28, 28), (10, 10), (30, 30), np.zeros(1), 255])
              for k in rng.sample(["image_dims", "mean", "input_scale", "raw_scale", "channel_swap"], rng.randint(0, 2))}
        c = self.caffe.Classifier(self.deploy, rng.choice([self.weights, self.weights, self.empty]), **kw)
        c.predict(rng.choice([[np.random.default_rng(0).random((28, 28, 1))], [self.array()], [], self.value()]),
                  oversample=rng.choice([True, False]))


def _pycaffe_verdict(e: BaseException) -> str:
    """'' for a deliberate error (see the section's comment), else what is wrong with it."""
    import traceback

    from google.protobuf.message import DecodeError
    from PIL import UnidentifiedImageError

    frames = traceback.extract_tb(e.__traceback__)
    last = frames[-1]
    ours = str(REPO / "netcompress")
    if last.filename == __file__ or isinstance(e, (DecodeError, UnidentifiedImageError)) or \
            isinstance(e, OSError) and e.filename is not None:
        return ""  # the script's own line (numpy refusing its assignment), a file that is no message or image,
        # or Python's error naming a file that is missing or a folder
    if last.filename.startswith(ours):
        if (last.line or "").lstrip().startswith("raise") or type(e) is TypeError:
            return ""
        where = f"{os.path.relpath(last.filename, REPO)}:{last.lineno}"
        return f"{type(e).__name__} on the way, at {where}: {e}"
    if isinstance(e, TypeError) and any(f.filename.startswith(ours) for f in frames):
        return ""  # a library's TypeError of an argument's type (os.fspath(3), protobuf's field types)
    return f"{type(e).__name__} from {last.filename}:{last.lineno}: {e}"


def test_fuzz_pycaffe_api(tmp_path, monkeypatch):
    import netcompress.pycaffe as caffe

    monkeypatch.chdir(tmp_path)  # (a save to "conv" writes there)

    (tmp_path / "train.prototxt").write_text(PY_TRAIN)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path}/train.prototxt" base_lr: 0.01 lr_policy: "fixed" '
                                              f'momentum: 0.9 max_iter: 3 display: 0 snapshot_prefix: "{tmp_path}/snap"')
    (tmp_path / "garbage.bin").write_bytes(random.Random(SEED).randbytes(300))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "t.txt").write_text("hello\n")
    rng = random.Random(SEED + 11)
    fz = _PyFuzz(tmp_path, rng)
    bad, outcomes = [], []
    seed_state = caffe._base._state.copy()
    try:
        for k in range(round(300 * SCALE)):
            action = rng.choice(fz.actions)
            caffe.set_mode_cpu()
            net = caffe.Net(fz.train, caffe.TRAIN)
            problem = ""
            try:
                with time_limit(CASE_SECONDS), warnings.catch_warnings(record=True) as caught, \
                        contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("always")
                    try:
                        action(net)
                        outcomes.append("ok")
                    except CaseTimeout:
                        raise
                    except Exception as e:  # noqa: BLE001 (judged below)
                        outcomes.append("refused")
                        problem = _pycaffe_verdict(e)
                caught = [w for w in caught if w.filename != __file__]  # (numpy's, at the script's own line)
                if caught:
                    problem = problem or f"a Python warning: {caught[0].category.__name__}: {caught[0].message} " \
                                         f"({caught[0].filename}:{caught[0].lineno})"
            except CaseTimeout:
                problem = f"hang (over {CASE_SECONDS:g} s)"
            if problem:
                bad.append(f"case {k} {action.__name__}: {problem}")
    finally:
        caffe._base._state.update(seed_state)
        caffe.set_mode_cpu()
    assert not bad, f"{len(bad)} of {len(outcomes)} calls:\n" + "\n".join(bad)
    assert outcomes.count("ok") > 20 * SCALE and outcomes.count("refused") > 60 * SCALE, \
        (outcomes.count("ok"), outcomes.count("refused"))


def test_the_pycaffe_verdict_tells_a_deliberate_error_from_one_on_the_way():
    import netcompress.pycaffe as caffe

    def raised(fn) -> BaseException:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("no error")

    ours = str(REPO / "netcompress" / "pycaffe" / "net.py")  # (line 1 of it is no `raise`)
    assert _pycaffe_verdict(raised(lambda: caffe.io.resize_image(np.zeros((3, 3)), (2, 2)))) == ""
    assert _pycaffe_verdict(raised(lambda: np.zeros(2)[5])) == ""  # the script's own line
    assert _pycaffe_verdict(raised(lambda: caffe.io.load_image(str(REPO / "no such.png")))) == ""
    assert _pycaffe_verdict(raised(lambda: exec(compile("[][1]", ours, "exec")))).startswith(
        "IndexError on the way, at netcompress/pycaffe/net.py:1")
    assert _pycaffe_verdict(raised(lambda: exec(compile("import numpy; numpy.split(numpy.zeros(3), 2)", ours,
                                                        "exec")))).startswith("ValueError from ")  # numpy's
    assert _pycaffe_verdict(raised(lambda: exec(compile("len(3)", ours, "exec")))) == ""  # a TypeError of a type
