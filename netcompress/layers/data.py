"""Caffe's data layers: Data (LMDB or LevelDB), ImageData, WindowData, HDF5Data and MemoryData; and
HDF5Output, which writes.

Each prefetching layer reads records on a background thread (`netcompress.data.prefetch`), up to
`data_param.prefetch` batches ahead (0 loads synchronously in `forward`), and wraps to the first
record at the end of its source, logging Caffe's "Restarting data prefetching from start.".

**Batches are a pure function of (seed, batch index).** Batch b takes the records at stream
positions ``skip + (b * batch_size + i) * W + r`` (i < batch_size): W and r are the world size
and rank when the layer is sharded (TRAIN with `ctx.world_size > 1`, as Caffe's `Skip()`, which
leaves TEST unsharded: only rank 0 tests), else 1 and 0, and `skip` is the `rand_skip` draw. A
position q is record ``q mod N`` of epoch ``q // N``; with `shuffle` that record goes through the
permutation of that epoch, drawn from (seed, epoch) and identical on every rank, so ranks read
disjoint records. Mirror, crop and augmentation draws (`transform_param` autoaugment, pad_crop,
cutout_size) come from a generator seeded with (seed, layer, rank, b).
The seed is the net's `seed` (the solver's random_seed), or a random one when there is none.

**Resume.** `get_extra_state()` (stored in the net's state_dict under `<layer>._extra_state`)
holds the number of batches consumed and the seed; `set_extra_state()` restarts the prefetch
thread at the next batch, so a resumed run sees exactly the batches an uninterrupted one would.
A state saved with another batch size or number of processes resumes at the same position of
the global record stream (batches x batch_size x world_size records), with a warning when that is
not a whole number of the new batches.
"""
from __future__ import annotations

import math
import os
import secrets
import threading
import weakref
import zlib
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from google.protobuf.message import DecodeError

from ..data.db import LEVELDB, DataError, LeveldbReader, LmdbReader, open_reader, resolve_backend
from ..errors import FileError
from ..io import TextDecodeError, atomic_file, check_input_file, decode_text, is_hdf5, read_input_bytes
from ..data.image import decode_image, read_image, resize_linear
from ..data.prefetch import LoadFailure, Prefetcher
from ..data.transformer import DataTransformer, TransformError, parse_datum
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ..rng import transform_setup_draws
from .base import Layer, LayerContext, Shape, register_layer

log = get_logger("data")

__all__ = ["BasePrefetchingDataLayer", "DataLayer", "ImageDataLayer", "WindowDataLayer", "HDF5DataLayer",
           "HDF5OutputLayer", "MemoryDataLayer", "DataError", "resolve_seed", "read_image_list", "read_window_file"]

_RESTART = "Restarting data prefetching from start."
# Stream tags keep the generators of different purposes apart.
_TAG_TRANSFORM, _TAG_SHUFFLE, _TAG_SKIP, _TAG_ROWS = 0, 1, 2, 3


def resolve_seed(ctx: LayerContext) -> int:
    """The solver's random_seed, or (as Caffe does without one) a random seed."""
    if ctx.seed is not None and int(ctx.seed) >= 0:
        return int(ctx.seed)
    return secrets.randbits(63)


class _Stream:
    """Position arithmetic and generators shared by the prefetching layers (pure functions)."""

    def __init__(self, num_records: int, batch_size: int, seed: int, tag: int, rank: int,
                 world_size: int, rand_skip: int, shuffle: bool):
        self.n = int(num_records)
        self.batch_size = int(batch_size)
        self.seed, self.tag = int(seed), int(tag)
        self.rank, self.world_size = int(rank), int(world_size)
        self.rand_skip = int(rand_skip)
        self.shuffle = bool(shuffle)
        self._perm_cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._lock = threading.Lock()

    @property
    def skip(self) -> int:
        """Records skipped at the start: Caffe's `rand() % rand_skip`, drawn from the seed."""
        if not self.rand_skip:
            return 0
        return int(self.generator(_TAG_SKIP).integers(self.rand_skip))

    def generator(self, kind: int, a: int = 0, b: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.tag, kind, a, b])

    def positions(self, batch: int) -> list[int]:
        base = self.skip + batch * self.batch_size * self.world_size + self.rank
        return [base + i * self.world_size for i in range(self.batch_size)]

    def restarts(self, batch: int) -> int:
        """How many times the global stream wraps while batch `batch` is read."""
        start = self.skip + batch * self.batch_size * self.world_size
        end = start + self.batch_size * self.world_size
        return end // self.n - start // self.n

    def locate(self, q: int) -> tuple[int, int]:
        return divmod(q, self.n)

    def permutation(self, epoch: int) -> np.ndarray:
        key = (self.seed, epoch)
        with self._lock:
            if self._perm_cache is None or self._perm_cache[0] != key:
                self._perm_cache = (key, self.generator(_TAG_SHUFFLE, epoch).permutation(self.n))
            return self._perm_cache[1]

    def record(self, q: int) -> int:
        epoch, k = self.locate(q)
        return int(self.permutation(epoch)[k]) if self.shuffle else k

    def transform_rng(self, batch: int) -> np.random.Generator:
        return self.generator(_TAG_TRANSFORM, self.rank, batch)


def _stack(records: list[np.ndarray], names: list[str], who: str) -> np.ndarray:
    first = records[0].shape
    for r, n in zip(records, names):
        if r.shape != first:
            raise DataError(f"{who}: record {n} is {'x'.join(map(str, r.shape))}, the batch's first "
                            f"record is {'x'.join(map(str, first))}; all records of a batch must "
                            "have one size (resize them, or use batch_size 1)")
    return np.stack(records)


class _Reader:
    """Loads batch b as a list of numpy arrays, one per top. Holds no reference to its layer."""

    who = ""
    stream: _Stream

    def load(self, batch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def log_restarts(self, batch: int) -> None:
        if self.stream.rank == 0:
            for _ in range(self.stream.restarts(batch)):
                log.info(_RESTART)


def _load_tensors(reader: _Reader, pin: bool, batch: int) -> list[torch.Tensor]:
    arrays = reader.load(batch)
    reader.log_restarts(batch)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if pin:
        tensors = [t.pin_memory() for t in tensors]
    return tensors


def _sharded(ctx: LayerContext) -> bool:
    """Whether a data layer reads its share of the records: TRAIN in a data-parallel run (Caffe's Skip();
    only rank 0 tests)."""
    return int(ctx.world_size) > 1 and ctx.phase == pb.TRAIN


class BasePrefetchingDataLayer(Layer):
    """Common machinery: seed, sharding, prefetch thread, extra state (see the module docstring).

    Subclasses set `self.source`, build `self.reader` (a `_Reader` over a stream from
    `self._make_stream(...)`) and set `self._shapes` (one shape per possible top) in `__init__`.
    """

    is_data = True
    min_bottoms = max_bottoms = 0
    min_tops, max_tops = 1, 2
    source: str = ""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.seed = resolve_seed(ctx)
        self.prefetch_depth = int(param.data_param.prefetch)
        self.rank, self.world_size = int(ctx.rank), int(ctx.world_size)
        if not 0 <= self.rank < max(1, self.world_size):
            raise self.error(f"rank {self.rank} is outside world_size {self.world_size}")
        self.sharded = _sharded(ctx)
        self._batches = 0
        self._prefetcher: Prefetcher | None = None
        self._finalizer: weakref.finalize | None = None
        self._tag = zlib.crc32(param.name.encode("utf-8"))
        self._shapes: list[Shape] = []
        self.reader: _Reader

    @property
    def who(self) -> str:
        return f"layer '{self.name}' (type {self.type_name})"

    def _warn_deprecated(self, sub) -> None:
        # Caffe ignores the pre-2014 transformation fields of data_param/image_data_param.
        old = [f for f in ("scale", "mean_file", "crop_size", "mirror") if sub.HasField(f)]
        if old:
            log.warning("%s: %s in %s are deprecated and ignored (as in Caffe); move them to "
                        "transform_param", self.who, ", ".join(old), sub.DESCRIPTOR.name)

    def _make_stream(self, num_records: int, batch_size: int, rand_skip: int = 0,
                     shuffle: bool = False) -> _Stream:
        if batch_size <= 0:
            raise self.error("batch_size must be positive")
        if num_records <= 0:
            raise DataError(f"{self.who}: source '{self.source}' holds no records")
        r, w = (self.rank, self.world_size) if self.sharded else (0, 1)
        stream = _Stream(num_records, batch_size, self.seed, self._tag, r, w, rand_skip, shuffle)
        if rand_skip:
            log.info("Skipping first %d data points.", stream.skip)
        return stream

    # -- shapes and state ------------------------------------------------------------------
    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        n = len(self.layer_param.top)
        return list(self._shapes[:n])

    @property
    def batch_size(self) -> int:
        return self.reader.stream.batch_size

    @property
    def batches_consumed(self) -> int:
        """How many batches `forward` has returned (the next batch's index)."""
        return self._batches

    def get_extra_state(self) -> dict[str, Any]:
        s = self.reader.stream
        return {"batches_consumed": int(self._batches), "seed": int(self.seed),
                "batch_size": s.batch_size, "world_size": s.world_size, "rank": s.rank}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "batches_consumed" not in state:
            raise DataError(f"{self.who}: unrecognised data-layer state {state!r}")
        s = self.reader.stream
        batches = int(state["batches_consumed"])
        old_b, old_w = int(state.get("batch_size", s.batch_size)), int(state.get("world_size", s.world_size))
        if (old_b, old_w) != (s.batch_size, s.world_size):
            # A snapshot of a W-process run resumes on any number of processes: what the runs
            # share is the global record stream (batch b of every rank together covers stream
            # positions b*B*W .. (b+1)*B*W - 1), so keep the position in that stream.
            consumed = batches * old_b * old_w
            per_batch = s.batch_size * s.world_size
            batches, rest = divmod(consumed, per_batch)
            if rest:
                log.warning("%s: the saved state is for batch_size %d x %d processes (%d records "
                            "read), this layer reads %d x %d per batch; %d records is not a whole "
                            "number of batches, so the run continues at batch %d and reads the last "
                            "%d records again", self.who, old_b, old_w, consumed, s.batch_size,
                            s.world_size, consumed, batches, rest)
            else:
                log.info("%s: the saved state is for batch_size %d x %d processes, this layer reads "
                         "%d x %d; continuing at record %d of the stream (batch %d)", self.who,
                         old_b, old_w, s.batch_size, s.world_size, consumed, batches)
        if "seed" in state:
            # The saved seed wins: it decided the skip, the shuffles and the draws so far.
            self.seed = s.seed = int(state["seed"])
        self.seek(batches)

    def rank0_state(self) -> torch.Tensor:
        # Shuffles and rand_skip come from the seed: ranks must agree to read disjoint records
        # (they do when random_seed is set; without one each drew its own).
        return torch.tensor([int(self.seed)], dtype=torch.int64)

    def set_rank0_state(self, state: torch.Tensor) -> None:
        seed = int(state[0])
        if seed != self.seed:
            self.close()
            self.seed = self.reader.stream.seed = seed

    def epoch_size(self) -> tuple[int, int]:
        """(records in the source, records per batch of this process)."""
        return self.reader.stream.n, self.reader.stream.batch_size

    def seek(self, batch: int) -> None:
        """Make batch `batch` the next one `forward` returns (restarts the prefetch thread)."""
        self.close()
        self._batches = int(batch)

    def set_shard(self, rank: int, world_size: int) -> None:
        """Read only records r, r + W, ... (r = rank, W = world_size); W = 1 turns sharding off."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"{self.who}: need 0 <= rank < world_size, got {rank}, {world_size}")
        self.close()
        self.rank, self.world_size = int(rank), int(world_size)
        self.sharded = world_size > 1
        s = self.reader.stream
        s.rank, s.world_size = (self.rank, self.world_size) if self.sharded else (0, 1)

    # -- loading ---------------------------------------------------------------------------
    def load_batch(self, batch: int) -> list[np.ndarray]:
        """Batch `batch` as numpy arrays (one per top), synchronously, without moving the position."""
        return self.reader.load(batch)[: len(self.layer_param.top)]

    def _pin(self) -> bool:
        return self.ctx.device.type == "cuda" and torch.cuda.is_available()

    def _start(self) -> None:
        reader, pin = self.reader, self._pin()
        self._prefetcher = Prefetcher(lambda b: _load_tensors(reader, pin, b), self._batches,
                                      self.prefetch_depth, name=f"prefetch:{self.name}")
        self._finalizer = weakref.finalize(self, self._prefetcher.close)

    def _next_tensors(self) -> list[torch.Tensor]:
        b = self._batches
        if self.prefetch_depth <= 0:
            try:
                out = _load_tensors(self.reader, False, b)
            except Exception as e:
                raise self._load_error(b, e) from e
        else:
            if self._prefetcher is None:
                self._start()
            got, out = self._prefetcher.get()
            if isinstance(out, LoadFailure):
                self.close()  # the next forward retries this batch on a fresh thread
                raise self._load_error(out.batch, out.exc) from out.exc
            if got != b:  # cannot happen unless the queue was tampered with
                raise DataError(f"{self.who}: prefetch returned batch {got}, expected {b}")
        self._batches = b + 1
        return out

    def _load_error(self, batch: int, exc: BaseException) -> DataError:
        if isinstance(exc, DataError):
            msg = _unowned(exc, self.who)
        else:
            msg = f"{type(exc).__name__}: {exc}"
        return DataError(f"{self.who}: loading batch {batch} from '{self.source}' failed: {msg}")

    def forward(self):
        tops = self._next_tensors()[: len(self.layer_param.top)]
        dev, dt = self.ctx.device, self.ctx.dtype
        tops = [t.to(device=dev, dtype=dt, non_blocking=True) for t in tops]
        return tops[0] if len(tops) == 1 else tuple(tops)

    def close(self) -> None:
        """Stop the prefetch thread (it restarts at the current position on the next forward)."""
        if self._finalizer is not None:
            self._finalizer()  # calls Prefetcher.close once
            self._finalizer = None
        self._prefetcher = None

    def extra_repr(self) -> str:
        return f"name={self.name!r}, source={self.source!r}, batch_size={self.batch_size}"


# ----------------------------------------------------------------------------------------------
# Data (LMDB or LevelDB)
# ----------------------------------------------------------------------------------------------

def _unowned(e: BaseException, owner: str) -> str:
    """`e`'s message without its owner's name in front (the transformer's and readers' messages start with their
    layer's name, which the caller that wraps them names already)."""
    msg = str(e)
    while msg.startswith(f"{owner}: "):
        msg = msg[len(owner) + 2:]
    return msg


def _record_message(e: BaseException, owner: str, name: str) -> str:
    """What went wrong with the record `name`, said once (the decoder's messages hold the record's name)."""
    msg = _unowned(e, owner)
    return msg if name in msg else f"{name}: {msg}"


class _DatumReader(_Reader):
    def __init__(self, db: LmdbReader | LeveldbReader, transformer: DataTransformer, stream: _Stream,
                 who: str):
        self.db, self.transformer, self.stream, self.who = db, transformer, stream, who

    def record(self, index: int) -> tuple[str, pb.Datum]:
        key, value = self.db.item_at(index)
        return key.decode("utf-8", "replace"), parse_datum(value, f"record {key!r} of {self.db.kind} '{self.db.path}'")

    def load(self, batch: int) -> list[np.ndarray]:
        rng = self.stream.transform_rng(batch)
        records = [self.record(self.stream.record(q)) for q in self.stream.positions(batch)]
        raw = self._raw_batch([datum for _, datum in records])
        if raw is not None:  # the common case (MNIST, scale only): one pass over the batch
            return [self.transformer.scale_batch(raw),
                    np.asarray([datum.label for _, datum in records], dtype=np.float32)]
        data, labels, names = [], [], []
        for key, datum in records:
            name = f"{key!r} of '{self.db.path}'"
            try:
                data.append(self.transformer.transform_datum(datum, rng, name=name))
            except (TransformError, ValueError) as e:
                msg = _record_message(e, self.transformer.name, name)
                raise DataError(f"record {msg}" if msg.startswith(name) else msg) from None
            labels.append(datum.label)
            names.append(repr(key))
        return [_stack(data, names, self.who), np.asarray(labels, dtype=np.float32)]

    def _raw_batch(self, datums: list[pb.Datum]) -> np.ndarray | None:
        """The batch's pixels as one N x C x H x W uint8 array where the transformation is the scale alone and
        every record holds raw bytes of one shape; else None (each record then goes through the transformer,
        which also says what is wrong with a bad one)."""
        if not self.transformer.scale_only or not datums:
            return None
        d0 = datums[0]
        shape = (int(d0.channels), int(d0.height), int(d0.width))
        count = shape[0] * shape[1] * shape[2]
        if count == 0:
            return None
        for d in datums:
            if (d.encoded or len(d.data) != count or d.channels != shape[0] or d.height != shape[1]
                    or d.width != shape[2]):
                return None
        return np.frombuffer(b"".join(d.data for d in datums), dtype=np.uint8).reshape(len(datums), *shape)


@register_layer("Data")
class DataLayer(BasePrefetchingDataLayer):
    """Caffe's Data layer on an LMDB or a LevelDB of Datum records (tops: data, and optionally label).

    `data_param`: source, batch_size, rand_skip, backend (LMDB or LEVELDB; left unset, the folder
    says which), prefetch. `transform_param` as in `DataTransformer`.
    """

    @classmethod
    def setup_draws(cls, param: pb.LayerParameter, phase: int) -> int:
        return transform_setup_draws(param.transform_param, phase) + 1  # + the prefetch thread's seed

    @classmethod
    def construct(cls, param: pb.LayerParameter, ctx: LayerContext):
        """Caffe's DataLayer constructor: open the database (logged before the net's "Creating Layer")."""
        dp = param.data_param
        who = f"layer '{param.name}' (type {param.type})"
        backend = resolve_backend(dp.source, dp.backend if dp.HasField("backend") else None, who)
        if backend == LEVELDB and _sharded(ctx):
            raise DataError(f"{who}: the {ctx.world_size} processes of a data-parallel run cannot "
                            f"share the LevelDB '{dp.source}' (LevelDB admits one process at a time); "
                            f"copy it to an LMDB, which they can: netcompress convert_db {dp.source} "
                            "<new lmdb folder>")
        db = open_reader(dp.source, backend, who)
        if backend == LEVELDB or ctx.rank == 0:  # db_lmdb.cpp logs on the root solver only, db_leveldb.cpp always
            log.info("Opened %s %s", db.kind.lower(), dp.source)
        return db

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        dp = param.data_param
        self.source = dp.source
        self._warn_deprecated(dp)
        db = ctx.take_constructed(param.name)
        if db is None:  # built outside a Net (create_layer): open here
            db = self.construct(param, ctx)
        self.transformer = DataTransformer(param.transform_param, ctx.phase, name=self.who)
        stream = self._make_stream(db.num_records, dp.batch_size, dp.rand_skip)
        self.reader = _DatumReader(db, self.transformer, stream, self.who)
        # Shapes from the first record, as Caffe's DataLayerSetUp reads it.
        first = pb.Datum()
        name = f"first record of '{dp.source}'"
        try:
            first.ParseFromString(db.first_value())
            c, h, w = self.transformer.output_shape(self.transformer.datum_array(first, name).shape)
        except (TransformError, ValueError, DecodeError) as e:
            raise DataError(f"{self.who}: {_record_message(e, self.who, name)}") from None
        b = int(dp.batch_size)
        self._shapes = [(b, c, h, w), (b,)]
        if ctx.rank == 0:  # Caffe's root solver
            log.info("output data size: %d,%d,%d,%d", b, c, h, w)


# ----------------------------------------------------------------------------------------------
# ImageData
# ----------------------------------------------------------------------------------------------

def read_image_list(path: str) -> list[tuple[str, int]]:
    """Caffe's image list: one `path label` per line, the label after the last space."""
    try:
        lines = decode_text(read_input_bytes(path, "image list")).splitlines()
    except FileError as e:
        raise DataError(f"cannot open image list: {e}") from None
    except TextDecodeError as e:
        raise DataError(f"image list '{path}': {e}") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, sep, label = line.rstrip().rpartition(" ")
        if not sep:
            raise DataError(f"{path}:{i}: expected 'path label', got {line!r}")
        try:
            out.append((name, int(label)))
        except ValueError:
            raise DataError(f"{path}:{i}: the label {label!r} is not an integer") from None
    return out


class _ImageListReader(_Reader):
    def __init__(self, lines, root: str, new_h: int, new_w: int, is_color: bool,
                 transformer: DataTransformer, stream: _Stream, who: str):
        self.lines, self.root = lines, root
        self.new_h, self.new_w, self.is_color = new_h, new_w, is_color
        self.transformer, self.stream, self.who = transformer, stream, who

    def image(self, index: int) -> np.ndarray:
        name = self.lines[index][0]
        path = self.root + name
        try:
            img = read_image(path, self.new_h, self.new_w, self.is_color)
        except FileNotFoundError as e:
            hint = ""
            if self.root and not self.root.endswith(("/", os.sep)):
                hint = f" (root_folder '{self.root}' is prepended as is: end it with '/')"
            elif name != name.rstrip():
                hint = (" (the name ends in spaces: a list line is split at its last space, as in Caffe, so the "
                        "spaces before the label belong to the name)")
            raise DataError(f"{e}{hint}") from None
        except ValueError as e:
            raise DataError(str(e)) from None
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def load(self, batch: int) -> list[np.ndarray]:
        rng = self.stream.transform_rng(batch)
        data, labels, names = [], [], []
        for q in self.stream.positions(batch):
            k = self.stream.record(q)
            x = self.image(k)
            try:
                data.append(self.transformer.transform(x, rng))
            except TransformError as e:
                raise DataError(f"image {self.root + self.lines[k][0]}: {_unowned(e, self.transformer.name)}") from None
            labels.append(self.lines[k][1])
            names.append(self.root + self.lines[k][0])
        return [_stack(data, names, self.who), np.asarray(labels, dtype=np.float32)]


@register_layer("ImageData")
class ImageDataLayer(BasePrefetchingDataLayer):
    """Caffe's ImageData layer: images listed in a text file (`path label` lines); tops data, label.

    `image_data_param`: source, root_folder (prepended as is), batch_size, new_height/new_width
    (both or neither; OpenCV-style bilinear resize), is_color (false: one gray channel),
    shuffle (a new permutation every epoch), rand_skip.
    """

    min_tops = max_tops = 2

    @classmethod
    def setup_draws(cls, param: pb.LayerParameter, phase: int) -> int:
        ip = param.image_data_param
        return (transform_setup_draws(param.transform_param, phase) + int(ip.shuffle) + int(ip.rand_skip > 0)
                + 1)  # + the prefetch thread's seed

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.image_data_param
        self.source = ip.source
        self._warn_deprecated(ip)
        nh, nw = int(ip.new_height), int(ip.new_width)
        if (nh == 0) != (nw == 0) or nh < 0 or nw < 0:
            raise self.error("new_height and new_width must be set together (both > 0) or not at all")
        log.info("Opening file %s", ip.source)
        try:
            lines = read_image_list(ip.source)
        except DataError as e:
            raise DataError(f"{self.who}: {e}") from None
        if not lines:
            raise DataError(f"{self.who}: File is empty: {ip.source}")
        if ip.shuffle:
            log.info("Shuffling data")
        log.info("A total of %d images.", len(lines))
        self.transformer = DataTransformer(param.transform_param, ctx.phase, name=self.who)
        stream = self._make_stream(len(lines), ip.batch_size, ip.rand_skip, ip.shuffle)
        if stream.skip >= len(lines):
            raise self.error(f"Not enough points to skip: rand_skip drew {stream.skip}, the list "
                             f"holds {len(lines)} images")
        self.reader = _ImageListReader(lines, ip.root_folder, nh, nw, bool(ip.is_color),
                                       self.transformer, stream, self.who)
        try:
            first = self.reader.image(stream.record(stream.positions(0)[0]))
            c, h, w = self.transformer.output_shape(first.shape)
        except (DataError, TransformError) as e:
            raise DataError(f"{self.who}: {_unowned(e, self.who)}") from None
        b = int(ip.batch_size)
        self._shapes = [(b, c, h, w), (b,)]
        log.info("output data size: %d,%d,%d,%d", b, c, h, w)


# ----------------------------------------------------------------------------------------------
# WindowData
# ----------------------------------------------------------------------------------------------

_WINDOW_CHANNELS = 3  # WindowData reads every image in colour (cv::imread's CV_LOAD_IMAGE_COLOR)


class _Window(NamedTuple):
    image: int
    label: int
    x1: int
    y1: int
    x2: int
    y2: int
    line: int


def read_window_file(path: str, root_folder: str, fg_threshold: float, bg_threshold: float
                     ) -> tuple[list[str], list[_Window], list[_Window], dict[int, int]]:
    """R-CNN's window file, as Caffe's WindowData reads it: per image `# index`, its path (root_folder
    prepended as is), channels (3: WindowData reads images in colour), height, width, the number of windows,
    then `label overlap x1 y1 x2 y2` per window. Returns the images' paths, the foreground windows (overlap
    >= fg_threshold; label > 0), the background windows (overlap < bg_threshold; label set to 0) and the
    label histogram. Windows in between are dropped, as in Caffe. One pass over the tokens, line by line."""
    try:
        text = decode_text(read_input_bytes(path, "window file"))
    except FileError as e:
        raise DataError(f"Failed to open window file {e}") from None
    except TextDecodeError as e:
        raise DataError(f"window file '{path}': {e}") from None
    tokens = ((tok, n) for n, line in enumerate(text.splitlines(), 1) for tok in line.split())
    last_line = 1

    def take(what: str, kind: type = str):
        nonlocal last_line
        try:
            tok, last_line = next(tokens)
        except StopIteration:
            raise DataError(f"window file '{path}' ends at line {last_line} where {what} was expected") from None
        try:
            return kind(tok), last_line
        except ValueError:
            raise DataError(f"window file '{path}', line {last_line}: expected {what}, got '{tok}'") from None

    images: list[str] = []
    fg: list[_Window] = []
    bg: list[_Window] = []
    hist = {0: 0}
    for tag, line in tokens:
        if tag != "#":
            raise DataError(f"window file '{path}', line {line}: expected '#' before an image's index, got '{tag}'")
        index, line = take("the image index", int)
        if index != len(images):
            raise DataError(f"window file '{path}', line {line}: image index {index}, expected {len(images)} (Caffe "
                            "looks images up by this index: they must be numbered 0, 1, ... in order)")
        name, _ = take("the image path")
        channels, line = take("the image's channels", int)
        if channels != _WINDOW_CHANNELS:
            raise DataError(f"window file '{path}', line {line}: {channels} channels; WindowData reads every "
                            "image in colour (3 channels), as Caffe's does")
        height, _ = take("the image's height", int)
        width, _ = take("the image's width", int)
        count, line = take("the number of windows", int)
        if count < 0:
            raise DataError(f"window file '{path}', line {line}: a negative number of windows ({count})")
        images.append(root_folder + name)
        for _ in range(count):
            label, line = take("a window's class label", int)
            overlap, _ = take("a window's overlap", float)
            x1, _ = take("a window's x1", int)
            y1, _ = take("a window's y1", int)
            x2, _ = take("a window's x2", int)
            y2, _ = take("a window's y2", int)
            if x2 < x1 or y2 < y1:
                raise DataError(f"window file '{path}', line {line}: window ({x1}, {y1}, {x2}, {y2}) has x2 < x1 "
                                "or y2 < y1")
            if np.float32(overlap) >= np.float32(fg_threshold):
                if label <= 0:
                    raise DataError(f"window file '{path}', line {line}: a foreground window (overlap {overlap} >= "
                                    f"fg_threshold {fg_threshold}) has class label {label}; it must be > 0 (0 is "
                                    "the background)")
                fg.append(_Window(index, label, x1, y1, x2, y2, line))
                hist[label] = hist.get(label, 0) + 1
            elif np.float32(overlap) < np.float32(bg_threshold):
                bg.append(_Window(index, 0, x1, y1, x2, y2, line))
                hist[0] += 1
        if index % 100 == 0:
            log.info("num: %d %s %d %d %d windows to process: %d", index, root_folder + name, channels, height,
                     width, count)
    if not images:
        raise DataError(f"Window file is empty: '{path}'")
    return images, fg, bg, hist


def _round(v: np.float32) -> int:
    """C's round() of a float: half away from zero."""
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))


class _WindowReader(_Reader):
    """Batch b: num_bg background windows, then num_fg foreground ones, drawn with replacement from the
    batch's generator; each cropped (with context padding or as a square), warped to crop_size and
    mirrored as Caffe's WindowDataLayer::load_batch does."""

    def __init__(self, images: list[str], fg: list[_Window], bg: list[_Window], *, batch_size: int,
                 crop: int, num_fg: int, mirror: bool, scale: float, context_pad: int,
                 square: bool, mean: np.ndarray | None, mean_values: np.ndarray | None, cache: bool,
                 stream: _Stream, who: str, source: str):
        self.images, self.fg, self.bg = images, fg, bg
        self.batch_size, self.crop, self.num_fg = batch_size, crop, num_fg
        self.mirror, self.scale = mirror, np.float32(scale)
        self.context_pad, self.square = context_pad, square
        self.mean, self.mean_values = mean, mean_values
        self.stream, self.who, self.source = stream, who, source
        self._cache: list[bytes] | None = None
        if cache:
            self._cache = [self._read(i) for i in range(len(images))]

    def log_restarts(self, batch: int) -> None:  # windows are sampled, not read in order
        pass

    def _read(self, index: int) -> bytes:
        path = self.images[index]
        try:
            return read_input_bytes(path, "image")
        except FileError as e:
            raise DataError(f"Could not open or find file {path} ({str(e)[len(path) + 2:]})") from None

    def image(self, index: int) -> np.ndarray:
        data = self._cache[index] if self._cache is not None else self._read(index)
        try:
            return decode_image(data, "color", name=self.images[index])
        except ValueError as e:
            raise DataError(str(e)) from None

    def geometry(self, w: _Window, rows: int, cols: int, do_mirror: bool) -> tuple[int, int, int, int, int, int,
                                                                                    int, int]:
        """(x1, y1, x2, y2) of the region to crop, the (height, width) to warp it to, and the (pad_h, pad_w)
        at which it lands in the crop_size x crop_size output: Caffe's arithmetic, in float."""
        x1, y1, x2, y2 = w.x1, w.y1, w.x2, w.y2
        crop = self.crop
        height = width = crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            f = np.float32
            context_scale = f(crop) / f(crop - 2 * self.context_pad)
            half_h, half_w = f((y2 - y1 + 1) / 2.0), f((x2 - x1 + 1) / 2.0)
            cx, cy = f(x1) + half_w, f(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _round(cx - half_w * context_scale), _round(cx + half_w * context_scale)
            y1, y2 = _round(cy - half_h * context_scale), _round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            if x1 > x2 or y1 > y2:
                raise DataError(f"{self.who}: the window of line {w.line} of '{self.source}' lies outside its "
                                f"{cols}x{rows} image {self.images[w.image]}")
            scale_x, scale_y = f(crop) / f(unclipped_w), f(crop) / f(unclipped_h)
            width, height = _round(f(x2 - x1 + 1) * scale_x), _round(f(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _round(f(pad_x1) * scale_x), _round(f(pad_x2) * scale_x)
            pad_y1 = _round(f(pad_y1) * scale_y)
            pad_h = pad_y1
            pad_w = pad_x2 if do_mirror else pad_x1  # the padding is mirrored too
            height, width = min(height, crop - pad_h), min(width, crop - pad_w)
        elif x1 < 0 or y1 < 0 or x2 >= cols or y2 >= rows:
            raise DataError(f"{self.who}: the window ({w.x1}, {w.y1}, {w.x2}, {w.y2}) of line {w.line} of "
                            f"'{self.source}' lies outside its {cols}x{rows} image {self.images[w.image]} "
                            "(without context_pad or crop_mode square the window is cropped as it is)")
        if height <= 0 or width <= 0:
            raise DataError(f"{self.who}: the window of line {w.line} of '{self.source}' warps to {width}x{height} "
                            "pixels")
        return x1, y1, x2, y2, height, width, pad_h, pad_w

    def load(self, batch: int) -> list[np.ndarray]:
        rng = self.stream.transform_rng(batch)
        crop = self.crop
        data = np.zeros((self.batch_size, _WINDOW_CHANNELS, crop, crop), np.float32)
        labels = np.empty(self.batch_size, np.float32)
        item = 0
        for pool, count in ((self.bg, self.batch_size - self.num_fg), (self.fg, self.num_fg)):
            for _ in range(count):
                w = pool[int(rng.integers(1 << 32)) % len(pool)]
                do_mirror = self.mirror and int(rng.integers(1 << 32)) % 2 == 1
                img = self.image(w.image)
                x1, y1, x2, y2, h, wd, pad_h, pad_w = self.geometry(w, img.shape[0], img.shape[1], do_mirror)
                patch = resize_linear(img[y1:y2 + 1, x1:x2 + 1], h, wd)
                if do_mirror:
                    patch = patch[:, ::-1]
                x = patch.transpose(2, 0, 1).astype(np.float32)
                if self.mean is not None:
                    off = (self.mean.shape[2] - crop) // 2
                    x = x - self.mean[:, off + pad_h:off + pad_h + h, off + pad_w:off + pad_w + wd]
                elif self.mean_values is not None:
                    x = x - self.mean_values
                data[item, :, pad_h:pad_h + h, pad_w:pad_w + wd] = x * self.scale
                labels[item] = w.label
                item += 1
        return [data, labels]


@register_layer("WindowData")
class WindowDataLayer(BasePrefetchingDataLayer):
    """Caffe's WindowData layer (R-CNN's fine-tuning data): windows of the images a window file lists,
    a batch drawn as `fg_fraction` foreground windows (overlap >= fg_threshold, their class label) and the
    rest background ones (overlap < bg_threshold, label 0), each cropped with `context_pad` pixels of
    context (or as a square, `crop_mode: "square"`) and warped to `transform_param.crop_size`, mirrored at
    random with `transform_param.mirror` (in either phase, as Caffe), less `transform_param.mean_file` or
    `mean_value`, times `window_data_param.scale`. Draws come from the batch's generator (the module
    docstring), not from Caffe's stream."""

    min_tops = max_tops = 2

    @classmethod
    def setup_draws(cls, param: pb.LayerParameter, phase: int) -> int:
        # the transformer's seed, the layer's own generator (drawn for mirror or a crop_size, which WindowData
        # needs), the prefetch thread's seed
        return transform_setup_draws(param.transform_param, phase) + 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        wp, tp = param.window_data_param, param.transform_param
        self.source = wp.source
        ignored = [f for f in ("mean_file", "crop_size", "mirror") if wp.HasField(f)]
        if ignored:
            log.warning("%s: %s in window_data_param are ignored (as in Caffe); WindowData reads them from "
                        "transform_param", self.who, ", ".join(ignored))
        if tp.HasField("scale"):
            log.warning("%s: transform_param.scale is ignored (as in Caffe); WindowData scales by "
                        "window_data_param.scale", self.who)
        crop_mode = wp.crop_mode
        if crop_mode not in ("warp", "square"):
            raise self.error(f"crop_mode must be \"warp\" or \"square\", got \"{crop_mode}\"")
        crop = int(tp.crop_size)
        if crop <= 0:
            raise self.error("transform_param.crop_size must be set (> 0): the size windows are warped to")
        if 2 * int(wp.context_pad) >= crop:
            raise self.error(f"context_pad {wp.context_pad} leaves no window in a crop of {crop} pixels")
        log.info("Window data layer:\n  foreground (object) overlap threshold: %g\n  background (non-object) "
                 "overlap threshold: %g\n  foreground sampling fraction: %g\n  cache_images: %d\n  root_folder: %s",
                 wp.fg_threshold, wp.bg_threshold, wp.fg_fraction, int(wp.cache_images), wp.root_folder)
        try:
            images, fg, bg, hist = read_window_file(wp.source, wp.root_folder, wp.fg_threshold, wp.bg_threshold)
        except DataError as e:
            raise DataError(f"{self.who}: {e}") from None
        log.info("Number of images: %d", len(images))
        for label in sorted(hist):
            log.info("class %d has %d samples", label, hist[label])
        log.info("Amount of context padding: %d", wp.context_pad)
        log.info("Crop mode: %s", crop_mode)
        if not fg or not bg:
            raise DataError(f"{self.who}: window file '{wp.source}' has {len(fg)} foreground and {len(bg)} "
                            "background windows; WindowData needs both (Caffe CHECKs both at every batch)")
        b = int(wp.batch_size)
        channels = _WINDOW_CHANNELS
        # The mean file or values as every data layer reads them (the transformer's checks); WindowData
        # subtracts them itself, at its own offsets.
        means = DataTransformer(tp, ctx.phase, name=self.who)
        mean, mean_values = means.mean, None
        if mean is not None:
            off = (mean.shape[2] - crop) // 2
            if mean.shape[0] != channels or off < 0 or off + crop > mean.shape[1]:
                raise self.error(f"mean_file '{tp.mean_file}' has shape {list(mean.shape)}; WindowData needs "
                                 f"{channels} channels and at least {crop}x{crop} pixels around the centre column "
                                 "offset (Caffe reads its rows and columns at (width - crop_size) / 2)")
        elif means.mean_values.size:
            if means.mean_values.size not in (1, channels):
                raise self.error(f"Specify either 1 mean_value or as many as channels: {channels}")
            mean_values = np.broadcast_to(means.mean_values, (channels,))[:, None, None]
        num_fg = int(np.float32(b) * np.float32(wp.fg_fraction))
        stream = self._make_stream(len(fg) + len(bg), b)
        self.reader = _WindowReader(images, fg, bg, batch_size=b, crop=crop, num_fg=num_fg,
                                    mirror=bool(tp.mirror), scale=wp.scale, context_pad=int(wp.context_pad),
                                    square=crop_mode == "square", mean=mean, mean_values=mean_values,
                                    cache=bool(wp.cache_images), stream=stream, who=self.who, source=wp.source)
        self._shapes = [(b, channels, crop, crop), (b,)]
        log.info("output data size: %d,%d,%d,%d", b, channels, crop, crop)


# ----------------------------------------------------------------------------------------------
# HDF5Data
# ----------------------------------------------------------------------------------------------

def _h5py(who: str = "HDF5Data"):
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a declared dependency
        raise DataError(f"{who} needs the 'h5py' package: pip install h5py") from e
    return h5py


class _HDF5Reader(_Reader):
    """Rows of a list of HDF5 files; with shuffle, file order and rows are permuted per epoch."""

    def __init__(self, files: list[str], sizes: list[int], datasets: list[str], stream: _Stream,
                 who: str):
        self.files, self.sizes, self.datasets = files, np.asarray(sizes, dtype=np.int64), datasets
        self.stream, self.who = stream, who
        self._cache: tuple[str, list[np.ndarray]] | None = None
        self._order_cache: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def read_file(self, path: str) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1]
        h5py = _h5py()
        try:
            check_input_file(path, "HDF5 file")
            with h5py.File(path, "r") as f:
                arrays = []
                for name in self.datasets:
                    if name not in f:
                        raise DataError(f"Failed to find HDF5 dataset '{name}' in {path} "
                                        f"(datasets: {', '.join(sorted(f.keys()))})")
                    ds = f[name]
                    if ds.dtype.kind not in "fiub":
                        raise DataError(f"HDF5 dataset '{name}' in {path} has unsupported type {ds.dtype}")
                    arrays.append(np.asarray(ds, dtype=np.float32))
        except (OSError, FileError) as e:
            raise DataError(f"Failed opening HDF5 file {path}: {e}") from None
        n = arrays[0].shape[0] if arrays[0].ndim else 0
        for name, a in zip(self.datasets, arrays):
            if a.ndim < 1 or a.shape[0] != n:
                raise DataError(f"HDF5 file {path}: dataset '{name}' has {a.shape[0] if a.ndim else 0} "
                                f"rows, '{self.datasets[0]}' has {n}")
        self._cache = (path, arrays)
        return arrays

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        key = (self.stream.seed, epoch)
        cache = self._order_cache
        if cache is None or cache[0] != key:
            order = (self.stream.generator(_TAG_SHUFFLE, epoch).permutation(len(self.files))
                     if self.stream.shuffle else np.arange(len(self.files)))
            cache = self._order_cache = (key, order, np.cumsum(self.sizes[order]))
        return cache[1], cache[2]

    def locate(self, q: int) -> tuple[int, int]:
        """(file index, row) of stream position q."""
        epoch, k = self.stream.locate(q)
        order, cum = self._epoch_order(epoch)
        slot = int(np.searchsorted(cum, k, side="right"))
        row = k - (int(cum[slot - 1]) if slot else 0)
        f = int(order[slot])
        if self.stream.shuffle:
            row = int(self.stream.generator(_TAG_ROWS, epoch, slot).permutation(int(self.sizes[f]))[row])
        return f, row

    def load(self, batch: int) -> list[np.ndarray]:
        picks = [self.locate(q) for q in self.stream.positions(batch)]
        out: list[list[np.ndarray]] = [[] for _ in self.datasets]
        for f, row in picks:
            arrays = self.read_file(self.files[f])
            if arrays[0].shape[0] != self.sizes[f]:
                raise DataError(f"HDF5 file {self.files[f]} changed: {arrays[0].shape[0]} rows, "
                                f"{self.sizes[f]} when the layer was set up")
            for j, a in enumerate(arrays):
                out[j].append(a[row])
        return [np.stack(o) for o in out]


@register_layer("HDF5Data")
class HDF5DataLayer(BasePrefetchingDataLayer):
    """Caffe's HDF5Data: `hdf5_data_param.source` lists .h5 files; top i is the dataset named top i.

    Values are converted to float32 (Caffe's blobs). No `transform_param` (Caffe refuses it).
    """

    min_tops, max_tops = 1, None

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        hp = param.hdf5_data_param
        self.source = hp.source
        if param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        log.info("Loading list of HDF5 filenames from: %s", hp.source)
        try:
            names = decode_text(read_input_bytes(hp.source, "list of HDF5 files")).split()
        except FileError as e:
            raise DataError(f"{self.who}: Failed to open source file: {e}") from None
        except TextDecodeError as e:
            use = (": hdf5_data_param.source is a text file listing HDF5 files, one path a line (Caffe's); write "
                   "this file's path into one and give that") if is_hdf5(hp.source) else ""
            raise DataError(f"{self.who}: {hp.source}: {e}{use}") from None
        if not names:
            raise DataError(f"{self.who}: Must have at least 1 HDF5 filename listed in {hp.source}")
        log.info("Number of HDF5 files: %d", len(names))
        base = os.path.dirname(hp.source)
        # Caffe opens the names as given (relative to the working directory); a name found only
        # next to the list file is taken from there.
        files = [n if os.path.exists(n) or not os.path.exists(os.path.join(base, n))
                 else os.path.join(base, n) for n in names]
        tops = list(param.top)
        h5py = _h5py()
        sizes, shapes = [], None
        for path in files:
            try:
                check_input_file(path, "HDF5 file")
                with h5py.File(path, "r") as f:
                    missing = [t for t in tops if t not in f]
                    if missing:
                        raise DataError(f"{self.who}: Failed to find HDF5 dataset '{missing[0]}' in {path} "
                                        f"(datasets: {', '.join(sorted(f.keys()))})")
                    dims = [tuple(int(d) for d in f[t].shape) for t in tops]
            except (OSError, FileError) as e:
                raise DataError(f"{self.who}: Failed opening HDF5 file {path}: {e}") from None
            for t, d in zip(tops, dims):
                if len(d) < 1 or d[0] != dims[0][0]:
                    raise DataError(f"{self.who}: HDF5 file {path}: dataset '{t}' has shape {list(d)}; every "
                                    f"dataset needs {dims[0][0]} rows like '{tops[0]}'")
            if shapes is None:
                shapes = [d[1:] for d in dims]
            elif [d[1:] for d in dims] != shapes:
                raise DataError(f"{self.who}: HDF5 file {path}: dataset shapes "
                                f"{[list(d) for d in dims]} differ "
                                f"from the first file's (rows x {[list(s) for s in shapes]})")
            sizes.append(dims[0][0])
        stream = self._make_stream(sum(sizes), hp.batch_size, 0, hp.shuffle)
        self.reader = _HDF5Reader(files, sizes, tops, stream, self.who)
        self.files = files
        b = int(hp.batch_size)
        self._shapes = [(b,) + tuple(s) for s in shapes]


# ----------------------------------------------------------------------------------------------
# HDF5Output
# ----------------------------------------------------------------------------------------------

@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Caffe's HDF5Output: writes its two bottoms to `hdf5_output_param.file_name` as the datasets "data"
    and "label", in the net's float type, each in Caffe's legacy 4-D shape (N, C, H, W): missing trailing
    axes are 1 (a label of shape (N,) is written as (N, 1, 1, 1)); a bottom of more than 4 axes is an
    error. It has no tops and passes no gradient back.

    As in Caffe, set-up creates the file, empty (an existing file is truncated; the empty file is written to a
    temporary name and renamed), and every forward writes the rows it was given. Caffe can do that only once: a
    second forward fails to create the datasets again. Here every forward appends its rows to the datasets in
    place (resizable, chunked), so the file holds the rows of every forward since set-up, in order (e.g. a whole
    test set's features dumped over test iterations), at a cost proportional to the rows written and with nothing
    kept in memory; all forwards must give the same item shape. A write that fails is undone (the datasets are
    cut back to their earlier length), and the file is closed after every forward, so it can be read between
    forwards. Only the process of rank 0 writes (in a distributed run only rank 0 tests).
    """

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 0
    dataset_names = ("data", "label")  # Caffe's HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.file_name = param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name must name the HDF5 file to write")
        self._legacy_shapes(*self.bottom_shapes)  # validate now
        self._dtype = np.float64 if ctx.dtype == torch.float64 else np.float32
        if ctx.rank == 0:  # Caffe's H5Fcreate(H5F_ACC_TRUNC) at set-up: the file, empty
            h5py = _h5py("HDF5Output")
            try:
                with atomic_file(self.file_name) as f, h5py.File(f, "w"):
                    pass
            except FileError as e:  # its message starts with the path
                raise self.error(f"Failed to write HDF5 file: {e}") from None
            except OSError as e:
                raise self.error(f"Failed to write HDF5 file {self.file_name}: {e}") from None

    def _legacy_shapes(self, data: Shape, label: Shape) -> tuple[Shape, Shape]:
        """Both bottoms' shapes as Caffe's 4-D num/channels/height/width, with the batch check."""
        out = []
        for what, s in (("data", data), ("label", label)):
            if len(s) > 4:
                raise self.error(f"writes blobs of at most 4 axes (Caffe's N x C x H x W datasets); the {what} "
                                 f"bottom has shape {list(s)}")
            out.append(tuple(s) + (1,) * (4 - len(s)))
        if out[0][0] != out[1][0]:
            raise self.error(f"data blob and label blob must have the same batch size, got shapes {list(data)} "
                             f"and {list(label)}")
        return out[0], out[1]

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._legacy_shapes(tuple(bottom_shapes[0]), tuple(bottom_shapes[1]))
        return []

    def forward(self, data: torch.Tensor, label: torch.Tensor):
        shapes = self._legacy_shapes(tuple(data.shape), tuple(label.shape))
        if data.device.type == "meta" or self.ctx.rank != 0:
            return ()
        dtype = torch.float64 if self._dtype is np.float64 else torch.float32
        rows = [t.detach().to(device="cpu", dtype=dtype).reshape(s).numpy()
                for t, s in zip((data, label), shapes)]
        log.info("Saving HDF5 file %s", self.file_name)
        self._append(rows)
        log.info("Successfully saved %d rows", shapes[0][0])
        return ()

    def _append(self, rows: list[np.ndarray]) -> None:
        """Append `rows` (data, label) to the file's datasets (created at the first forward); undone on failure."""
        h5py = _h5py("HDF5Output")
        try:
            with h5py.File(self.file_name, "a") as h:
                for name, r in zip(self.dataset_names, rows):
                    ds = h.get(name)
                    if ds is not None and ds.shape[1:] != r.shape[1:]:
                        items = [list(x.shape[1:]) for x in rows]
                        held = [list(h[n].shape[1:]) for n in self.dataset_names if n in h]
                        raise self.error(f"cannot append items of shapes {items} to the datasets of "
                                         f"{self.file_name}, whose items have shapes {held}")
                lengths = {n: h[n].shape[0] for n in self.dataset_names if n in h}
                try:
                    for name, r in zip(self.dataset_names, rows):
                        ds = h.get(name)
                        if ds is None:
                            ds = h.create_dataset(name, shape=(0, *r.shape[1:]), maxshape=(None, *r.shape[1:]),
                                                  dtype=self._dtype, chunks=True)
                        n = ds.shape[0]
                        ds.resize(n + r.shape[0], axis=0)
                        ds[n:] = r
                except BaseException:
                    for name in self.dataset_names:  # the rows of this forward are not left half-written
                        if name in h:
                            h[name].resize(lengths.get(name, 0), axis=0)
                    raise
        except OSError as e:
            raise self.error(f"Failed to write HDF5 file {self.file_name}: {e}") from None


# ----------------------------------------------------------------------------------------------
# MemoryData
# ----------------------------------------------------------------------------------------------

@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """Caffe's MemoryData: batches from arrays the caller hands over (pycaffe's set_input_arrays).

    `memory_data_param`: batch_size, channels, height, width. Arrays given to `set_input_arrays`
    / `reset` are used as they are (Caffe does not transform them); `add_datum_vector` applies
    `transform_param`. Each forward returns the next batch_size rows, wrapping at the end.
    """

    is_data = True
    min_bottoms = max_bottoms = 0
    min_tops = max_tops = 2

    @classmethod
    def setup_draws(cls, param: pb.LayerParameter, phase: int) -> int:
        return transform_setup_draws(param.transform_param, phase)  # no prefetch thread

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.memory_data_param
        self.batch_size = int(mp.batch_size)
        self.channels, self.height, self.width = int(mp.channels), int(mp.height), int(mp.width)
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and "
                             "positive in memory_data_param")
        self.has_transform = param.HasField("transform_param")
        self.seed = resolve_seed(ctx)
        self.transformer = DataTransformer(param.transform_param, ctx.phase,
                                           name=f"layer '{self.name}' (type MemoryData)")
        self._data: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._pos = 0
        self._adds = 0

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [(self.batch_size, self.channels, self.height, self.width), (self.batch_size,)]

    def set_input_arrays(self, data, labels) -> None:
        """Use `data` (N x C x H x W) and `labels` (N, or N x 1 x 1 x 1); N a multiple of batch_size.

        The arrays are copied to the layer's device and dtype once; they are not transformed.
        """
        self._set(data, labels, transformed=False)

    def _set(self, data, labels, transformed: bool) -> None:
        d = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
        l = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        want = (self.channels, self.height, self.width)
        if d.dim() != 4 or tuple(d.shape[1:]) != want:
            raise ValueError(f"{self.name}: data array must be N x {want[0]} x {want[1]} x {want[2]}, "
                             f"got {list(d.shape)}")
        if l.dim() == 0 or (l.dim() > 1 and l[0].numel() != 1):
            raise ValueError(f"{self.name}: labels must be N or N x 1 x 1 x 1, got {list(l.shape)}")
        l = l.reshape(l.shape[0])
        if d.shape[0] != l.shape[0]:
            raise ValueError(f"{self.name}: data and labels must have the same first dimension, "
                             f"got {d.shape[0]} and {l.shape[0]}")
        if d.shape[0] == 0 or d.shape[0] % self.batch_size:
            raise ValueError(f"{self.name}: first dimensions of input arrays must be a multiple of "
                             f"batch size {self.batch_size}, got {d.shape[0]}")
        if self.has_transform and not transformed:
            log.warning("MemoryData does not transform array data on Reset()")
        self._data = d.to(device=self.ctx.device, dtype=self.ctx.dtype)
        self._labels = l.to(device=self.ctx.device, dtype=self.ctx.dtype)
        self._pos = 0

    def reset(self, data=None, labels=None) -> None:
        """Caffe's Reset: new arrays (when given) and back to the first row."""
        if data is not None or labels is not None:
            if data is None or labels is None:
                raise ValueError(f"{self.name}: reset needs both data and labels, or neither")
            self.set_input_arrays(data, labels)
        self._pos = 0

    def add_datum_vector(self, datums: Sequence[pb.Datum]) -> None:
        """Transform Datums with `transform_param` and use them (Caffe's AddDatumVector).

        Mirror/crop draws come from (seed, number of earlier calls), so they are reproducible.
        """
        if not datums or len(datums) % self.batch_size:
            raise ValueError(f"{self.name}: The added data must be a multiple of the batch size "
                             f"{self.batch_size}, got {len(datums)}")
        rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), _TAG_TRANSFORM, 0,
                                     self._adds])
        self._adds += 1
        x = np.stack([self.transformer.transform_datum(d, rng, name=f"Datum {i} of the {len(datums)} added")
                      for i, d in enumerate(datums)])
        y = np.asarray([d.label for d in datums], dtype=np.float32)
        self._set(x, y, transformed=True)

    def forward(self):
        if self._data is None:  # (Caffe: a failed CHECK, "MemoryDataLayer needs to be initialized by calling Reset")
            raise DataError(f"layer '{self.name}' (type MemoryData) holds no data: its arrays come from Python "
                            "(pycaffe's net.set_input_arrays(data, labels) or add_datum_vector, called before the "
                            "forward pass); the command line has none to give it (use a Data, HDF5Data or Input layer "
                            "there)")
        p, b = self._pos, self.batch_size
        x, y = self._data[p:p + b], self._labels[p:p + b]
        self._pos = (p + b) % self._data.shape[0]
        return x, y

    def get_extra_state(self) -> dict[str, Any]:
        return {"pos": int(self._pos)}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and "pos" in state:
            self._pos = int(state["pos"])
