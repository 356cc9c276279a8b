"""LMDB access for Caffe databases: a positional reader and an atomic, growing writer.

Caffe's Data layer walks its database with a cursor in key order and wraps to the first record at
the end; `LmdbReader.value_at(i)` reads the i-th record in that order, moving a cursor forward
(or back to the start), so reading consecutive or strided positions costs one step each.
`LmdbWriter` builds a new database in a temporary sibling folder, doubling LMDB's map size
whenever it fills (as Caffe's LMDB transaction does), and renames the folder into place on
`close`, so a database that exists is complete.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref

from ..errors import NetcompressError
from ..log import get_logger
from ..proto import caffe_pb2 as pb

log = get_logger("data")

__all__ = ["DataError", "lmdb_module", "open_lmdb", "is_lmdb", "is_leveldb", "check_backend",
           "LmdbReader", "LmdbWriter", "lmdb_entries"]


class DataError(NetcompressError):
    """A data source could not be read (missing file, corrupt record, unsupported format)."""


def lmdb_module():
    try:
        import lmdb
    except ImportError as e:  # pragma: no cover - lmdb is a declared dependency
        raise DataError("reading or writing LMDB needs the 'lmdb' package: pip install lmdb") from e
    return lmdb


def is_lmdb(path: str) -> bool:
    """Whether `path` is an LMDB environment (a folder with data.mdb, or the data file itself)."""
    return os.path.isfile(os.path.join(path, "data.mdb")) or (
        os.path.isfile(path) and path.endswith(".mdb"))


def is_leveldb(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "CURRENT")) and not is_lmdb(path)


def check_backend(source: str, backend: int | None, who: str) -> None:
    """Refuse LevelDB clearly. `backend` is None when the prototxt leaves it unset.

    Caffe's default backend is LEVELDB; a prototxt that omits `backend` but points at an LMDB is
    read as LMDB, which is what its author meant.
    """
    msg = (f"{who}: LevelDB is not supported (source '{source}'); convert the database to LMDB "
           "(e.g. Caffe's convert_imageset/convert_mnist_data with --backend=lmdb) and set "
           "'backend: LMDB'")
    if backend == pb.DataParameter.LEVELDB or (backend is None and is_leveldb(source)):
        raise DataError(msg)
    if not os.path.exists(source):
        raise DataError(f"{who}: no such LMDB: '{source}' (relative paths are taken from the "
                        f"current directory, {os.getcwd()})")
    if not is_lmdb(source):
        raise DataError(f"{who}: '{source}' is not an LMDB (no data.mdb inside)")


# LMDB forbids opening one environment twice in a process, so read-only environments are shared
# (a TRAIN and a TEST net, or a tool and a layer, may read the same database), keyed like
# py-lmdb's own guard by the identity of the data file, so a database re-created at the same path
# gets a new environment.
_SHARED: "weakref.WeakValueDictionary[tuple, object]" = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _data_file_key(path: str) -> tuple | None:
    data = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    try:
        st = os.stat(data)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_ino else (os.path.realpath(data),)


def open_lmdb(path: str, readonly: bool = True, map_size: int | None = None):
    """Open an LMDB environment.

    Read-only opens take no lock (Caffe's sources are read-only while training) and return the
    process's shared environment for that database: never `close()` one.
    """
    lmdb = lmdb_module()
    path = os.fspath(path)
    try:
        if not readonly:
            return lmdb.open(path, subdir=True, map_size=map_size or (1 << 26), meminit=False,
                             max_dbs=0)
        key = _data_file_key(path)
        with _SHARED_LOCK:
            env = _SHARED.get(key) if key is not None else None
            if env is None:
                env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                                readahead=False, meminit=False)
                if key is not None:
                    _SHARED[key] = env
            return env
    except lmdb.Error as e:
        raise DataError(f"cannot open LMDB '{path}': {e}") from None


def lmdb_entries(path: str) -> int:
    return int(open_lmdb(path).stat()["entries"])


class LmdbReader:
    """Records of an LMDB by position in key order. One cursor per thread that reads."""

    def __init__(self, path: str):
        self.path = path
        self.env = open_lmdb(path)
        self.num_records = int(self.env.stat()["entries"])
        self._local = threading.local()

    def _cursor(self):
        st = self._local
        if getattr(st, "cursor", None) is None:
            st.txn = self.env.begin(buffers=False)
            st.cursor = st.txn.cursor()
            if not st.cursor.first():
                raise DataError(f"LMDB '{self.path}' is empty")
            st.pos = 0
        return st

    def item_at(self, index: int) -> tuple[bytes, bytes]:
        """(key, value) of the record at `index` (0 <= index < num_records) in key order."""
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} of LMDB '{self.path}' ({self.num_records} records)")
        st = self._cursor()
        if index < st.pos:
            st.cursor.first()
            st.pos = 0
        while st.pos < index:
            if not st.cursor.next():
                raise DataError(f"LMDB '{self.path}' ended at record {st.pos}, its stat says "
                                f"{self.num_records} records (was it modified while open?)")
            st.pos += 1
        return st.cursor.key(), st.cursor.value()

    def value_at(self, index: int) -> bytes:
        return self.item_at(index)[1]

    def first_value(self) -> bytes:
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor()
            if not cur.first():
                raise DataError(f"LMDB '{self.path}' is empty")
            return cur.value()


class LmdbWriter:
    """Write a new LMDB at `path` atomically (temporary folder, then rename).

    Args:
        path: the database folder to create; it must not exist (as in Caffe).
        map_size: initial map size in bytes; doubled whenever a commit finds the map full.
        commit_every: records per transaction (Caffe commits every 1,000).
    """

    def __init__(self, path: str, map_size: int = 1 << 26, commit_every: int = 1000):
        self.path = os.fspath(path)
        if os.path.exists(self.path):
            raise DataError(f"cannot create LMDB '{self.path}': it already exists (remove it first)")
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp",
                                     dir=parent)
        os.chmod(self._tmp, 0o755)  # mkdtemp's 0700 would hide the database from other users
        self.map_size = int(map_size)
        self.commit_every = int(commit_every)
        self._env = open_lmdb(self._tmp, readonly=False, map_size=self.map_size)
        self._pending: list[tuple[bytes, bytes]] = []
        self.count = 0
        self._closed = False

    def put(self, key: bytes | str, value: bytes) -> None:
        if isinstance(key, str):
            key = key.encode()
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        lmdb = lmdb_module()
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
                self._pending.clear()
            except lmdb.MapFullError:
                self.map_size *= 2
                log.info("Doubling LMDB map size to %dMB", self.map_size >> 20)
                self._env.set_mapsize(self.map_size)

    def close(self) -> str:
        """Commit what is pending and move the database into place. Returns its path."""
        if self._closed:
            return self.path
        self.commit()
        self._env.sync(True)
        self._env.close()
        self._closed = True
        if os.path.exists(self.path):
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise DataError(f"cannot create LMDB '{self.path}': it appeared while writing")
        os.rename(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._env.close()
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "LmdbWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
