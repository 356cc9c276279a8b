"""Caffe's databases, LMDB and LevelDB: positional readers and atomic writers.

Caffe's Data layer walks its database with a cursor in key order and wraps to the first record at
the end; `LmdbReader.value_at(i)` reads the i-th record in that order, moving a cursor forward
(or back to the start), so reading consecutive or strided positions costs one step each.
`LmdbWriter` builds a new database in a temporary sibling folder, doubling LMDB's map size
whenever it fills (as Caffe's LMDB transaction does), and renames the folder into place on
`close`, so a database that exists is complete.

`LeveldbReader` and `LeveldbWriter` do the same for LevelDB (Caffe's default backend) through the
`plyvel` package, an optional dependency (`pip install plyvel`, or netcompress's `leveldb` extra),
with Caffe's LevelDB options (64 KiB blocks, a 256 MiB write buffer, snappy compression where the
library has it). LevelDB stores no record count, so a reader counts the keys once when it opens,
and it lets one process at a time open a database: a process's readers share one handle.
`resolve_backend`, `open_reader` and `open_writer` choose between the two.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
import time
import weakref

from ..errors import NetcompressError, describe_os_error, error_text
from .lmdb_pages import LmdbPages, PageError
from ..log import get_logger
from ..proto import caffe_pb2 as pb

log = get_logger("data")

__all__ = ["DataError", "LMDB", "LEVELDB", "lmdb_module", "plyvel_module", "open_lmdb", "is_lmdb",
           "is_leveldb", "resolve_backend", "backend_name", "kind_name", "open_reader", "open_writer", "LmdbReader",
           "LmdbWriter", "LeveldbReader", "LeveldbWriter", "lmdb_entries"]

LMDB, LEVELDB = "lmdb", "leveldb"
_KIND = {LMDB: "LMDB", LEVELDB: "LevelDB"}
_A_KIND = {LMDB: "an LMDB", LEVELDB: "a LevelDB"}


class DataError(NetcompressError):
    """A data source could not be read (missing file, corrupt record, unsupported format)."""


def lmdb_module():
    try:
        import lmdb
    except ImportError as e:  # pragma: no cover - lmdb is a declared dependency
        raise DataError("reading or writing LMDB needs the 'lmdb' package: pip install lmdb") from e
    return lmdb


def plyvel_module():
    try:
        import plyvel
    except ImportError as e:
        raise DataError("reading or writing LevelDB needs the 'plyvel' package: pip install plyvel "
                        "(or pip install 'netcompress[leveldb]'); or convert the database to LMDB") from e
    return plyvel


def is_lmdb(path: str) -> bool:
    """Whether `path` is an LMDB environment (a folder with data.mdb, or the data file itself)."""
    return os.path.isfile(os.path.join(path, "data.mdb")) or (
        os.path.isfile(path) and path.endswith(".mdb"))


def is_leveldb(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "CURRENT")) and not is_lmdb(path)


def backend_name(backend: str | int | None) -> str | None:
    """"lmdb" / "leveldb" from a `DataParameter.DB` value or a command-line spelling; None stays None."""
    if backend is None:
        return None
    if isinstance(backend, int):
        return {pb.DataParameter.LMDB: LMDB, pb.DataParameter.LEVELDB: LEVELDB}[backend]
    name = str(backend).lower()
    if name not in _KIND:
        raise DataError(f"unknown database backend '{backend}' (expected lmdb or leveldb)")
    return name


def resolve_backend(source: str, backend: str | int | None, who: str = "", flag: bool = False) -> str:
    """The backend to read `source` with: "lmdb" or "leveldb".

    `backend` is the prototxt's `DataParameter.DB` value (or "lmdb"/"leveldb"), None when the
    prototxt leaves it unset. Caffe's default is LEVELDB; an unset backend is taken from what the
    folder holds, so a prototxt that omits it but points at an LMDB reads the LMDB its author meant.
    A backend that names the other kind of database than the folder holds is an error that says so
    (in a command's `--backend=` spelling where `flag`). Errors start with `who` (a layer; a command's own
    errors are prefixed with its name already).
    """
    who = f"{who}: " if who else ""
    want = backend_name(backend)
    if not os.path.exists(source):
        kind = _KIND[want] if want else "database (LMDB or LevelDB)"
        raise DataError(f"{who}no such {kind}: '{source}' (relative paths are taken from the "
                        f"current directory, {os.getcwd()})")
    found = LMDB if is_lmdb(source) else LEVELDB if is_leveldb(source) else None
    if found is None:
        kind = _KIND[want] if want else "LMDB or a LevelDB"
        raise DataError(f"{who}'{source}' is not an {kind} (an LMDB folder holds data.mdb, a "
                        "LevelDB folder CURRENT)")
    if want is not None and want != found:
        if flag:
            raise DataError(f"{who}--backend={want} but '{source}' is {_A_KIND[found]}; give "
                            f"--backend={found} (or leave --backend out: the folder says which)")
        raise DataError(f"{who}'backend: {want.upper()}' but '{source}' is {_A_KIND[found]}; set "
                        f"'backend: {found.upper()}' (or leave backend out: the folder says which)")
    return found


def open_reader(source: str, backend: str | int | None = None, who: str = "", flag: bool = False):
    """A positional reader (`LmdbReader` or `LeveldbReader`) of `source`; see `resolve_backend`."""
    kind = resolve_backend(source, backend, who, flag)
    return LmdbReader(source) if kind == LMDB else LeveldbReader(source)


def open_writer(path: str, backend: str = LMDB, map_size: int = 1 << 26):
    """An atomic writer (`LmdbWriter` or `LeveldbWriter`) of a new database at `path`; `map_size` is
    LMDB's initial map (LevelDB has none)."""
    return LmdbWriter(path, map_size=map_size) if backend_name(backend) == LMDB else LeveldbWriter(path)


def kind_name(backend: str | int) -> str:
    """"LMDB" or "LevelDB", as messages spell the backend."""
    return _KIND[backend_name(backend)]


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
                subdir = os.path.isdir(path)
                env = lmdb.open(path, subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False)
                _check_length(env, os.path.join(path, "data.mdb") if subdir else path, path)
                if key is not None:
                    _SHARED[key] = env
            return env
    except lmdb.Error as e:
        msg = str(e)
        msg = msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg  # (py-lmdb's message repeats the path)
        raise DataError(f"cannot open LMDB '{path}': {msg}") from None


def _check_length(env, data: str, path: str) -> None:
    """A data file shorter than its pages (a copy cut short) is refused: LMDB maps the file, and reading a page
    past its end kills the process (SIGBUS) instead of raising an error."""
    need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    have = os.path.getsize(data)
    if have < need:
        env.close()
        raise DataError(f"LMDB '{path}' is cut short: {os.path.basename(data)} holds {have} bytes, its pages "
                        f"take {need} (a copy or download that did not finish?); copy it again")


def lmdb_entries(path: str) -> int:
    return int(open_lmdb(path).stat()["entries"])


class _PositionalReader:
    """Records by position in key order, as Caffe's Data layer walks its database: one cursor per
    thread that reads, stepped forward to the position asked for and started afresh before the first
    record when a position before the current one is asked for (a new epoch). Subclasses give `kind`,
    `path`, `num_records`, and a cursor: `_start()` (before the first record), `_advance(cursor)` (to
    the next record: False at the end) and `_current(cursor)` (its key and value, read only at the
    position asked for)."""

    kind = ""
    path = ""
    num_records = 0

    def __init__(self):
        self._local = threading.local()

    def _start(self):
        raise NotImplementedError

    def _advance(self, cursor) -> bool:
        raise NotImplementedError

    def _current(self, cursor) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def item_at(self, index: int) -> tuple[bytes, bytes]:
        """(key, value) of the record at `index` (0 <= index < num_records) in key order."""
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} of {self.kind} '{self.path}' ({self.num_records} records)")
        st = self._local
        try:
            if getattr(st, "cursor", None) is None or index < st.pos:
                st.cursor, st.pos = self._start(), -1
            while st.pos < index:
                if not self._advance(st.cursor):
                    raise DataError(f"{self.kind} '{self.path}' ended at record {st.pos + 1}, it held "
                                    f"{self.num_records} when it was opened (was it modified while open?)")
                st.pos += 1
            return self._current(st.cursor)
        except self._store_errors() as e:
            st.cursor = None
            raise self._damaged(e, f"at record {st.pos + 1}") from None

    def value_at(self, index: int) -> bytes:
        return self.item_at(index)[1]

    def first_value(self) -> bytes:
        try:
            cursor = self._start()
            if not self._advance(cursor):
                raise DataError(f"{self.kind} '{self.path}' is empty")
            return self._current(cursor)[1]
        except self._store_errors() as e:
            raise self._damaged(e, "at its first record") from None

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        """The store library's errors of a damaged database."""
        return ()

    def _damaged(self, e: BaseException, where: str) -> DataError:
        return DataError(f"{self.kind} '{self.path}' is damaged ({where}: {error_text(e)}); rebuild it or copy it "
                         "again")


class LmdbReader(_PositionalReader):
    """Records of an LMDB by position in key order (`_PositionalReader`); the count is LMDB's own."""

    kind = "LMDB"

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.env = open_lmdb(path)
        self.num_records = int(self.env.stat()["entries"])
        data = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
        try:  # liblmdb aborts the process on a damaged page: the pages are checked before it walks them
            self._pages = LmdbPages.open(data, self.env)
        except PageError as e:
            raise self._damaged(e, "in its branch pages") from None

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        return (lmdb_module().Error, PageError)

    def _start(self):
        # unpositioned: the first next() goes to the first record; [cursor, leaf index, records left in it]
        # (pages unchecked: never a leaf's end)
        return [self.env.begin(buffers=False).cursor(), -1, 0 if self._pages is not None else -1]

    def _advance(self, cursor) -> bool:
        if cursor[2] == 0:  # the next record is on the next leaf: check it before liblmdb steps into it
            pages = self._pages
            while cursor[2] == 0 and cursor[1] + 1 < len(pages.leaves):
                cursor[1] += 1
                cursor[2] = pages.check_leaf(cursor[1])
        cursor[2] -= 1
        return cursor[0].next()

    def _current(self, cursor) -> tuple[bytes, bytes]:
        return cursor[0].key(), cursor[0].value()


class _AtomicDbWriter:
    """A new database built in a temporary sibling folder and renamed into place on `close`, so a
    database that exists is complete; `abort` (or an exception in a `with` block) removes it.
    Records are written in batches of `commit_every`. Subclasses open, write and close the store."""

    kind = ""

    def __init__(self, path: str, commit_every: int):
        self.path = os.fspath(path)
        if not self.path:  # (its temporary folder would go beside the current folder, and the rename fail)
            raise DataError(f"a new {self.kind} needs a name; the path is empty")
        if os.path.exists(self.path):
            raise DataError(f"cannot create {self.kind} '{self.path}': it already exists (remove it first)")
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:  # (a file where a folder of the path should be: "already exists" or "not a directory")
            reason = "a part of it is a file, not a folder" if e.errno in (errno.EEXIST, errno.ENOTDIR) else \
                describe_os_error(e)
            raise DataError(f"cannot create {self.kind} '{self.path}': its folder {parent}: {reason}") from None
        self._tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp",
                                     dir=parent)
        os.chmod(self._tmp, 0o755)  # mkdtemp's 0700 would hide the database from other users
        self.commit_every = int(commit_every)
        self._pending: list[tuple[bytes, bytes]] = []
        self.count = 0
        self._closed = False
        try:
            self._open(self._tmp)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def _open(self, folder: str) -> None:
        raise NotImplementedError

    def _write(self, records: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def _close_store(self) -> None:
        raise NotImplementedError

    def put(self, key: bytes | str, value: bytes) -> None:
        if isinstance(key, str):
            key = key.encode()
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions the store raises when it cannot write (with OSError)."""
        raise NotImplementedError

    def _write_error(self, e: BaseException) -> DataError:
        """A write the store or the OS refused (a full disk: LMDB's commit says "Input/output error", LevelDB's
        "No space left on device"), naming the database and the free space on its disk."""
        # (plyvel's IOError is an OSError without an errno: its own words, case kept)
        reason = describe_os_error(e) if isinstance(e, OSError) and e.errno else error_text(e)
        try:
            free = shutil.disk_usage(os.path.dirname(self._tmp)).free
            disk = f" (its disk is full: {free:,} bytes free)" if free < 1 << 20 else \
                f" ({free:,} bytes free on its disk)"
        except OSError:
            disk = ""
        first = self.count - len(self._pending) + 1
        what = f"records {first:,} to {self.count:,}" if self._pending else \
            f"closing it after {self.count:,} record{'s' * (self.count != 1)}"
        return DataError(f"cannot write {self.kind} '{self.path}' ({what}): {reason}{disk}")

    def commit(self) -> None:
        if self._pending:
            try:
                self._write(self._pending)
            except (OSError, *self._store_errors()) as e:
                raise self._write_error(e) from None
            self._pending.clear()

    def close(self) -> str:
        """Write what is pending and move the database into place. Returns its path."""
        if self._closed:
            return self.path
        self.commit()
        try:
            self._close_store()
        except (OSError, *self._store_errors()) as e:
            self._closed = True
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise self._write_error(e) from None
        self._closed = True
        if os.path.exists(self.path):
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise DataError(f"cannot create {self.kind} '{self.path}': it appeared while writing")
        try:
            os.rename(self._tmp, self.path)
        except OSError as e:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise DataError(f"cannot create {self.kind} '{self.path}': "
                            f"{describe_os_error(e, 'move its temporary folder into place')}") from None
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._close_store()
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class LmdbWriter(_AtomicDbWriter):
    """Write a new LMDB at `path` atomically (temporary folder, then rename).

    Args:
        path: the database folder to create; it must not exist (as in Caffe).
        map_size: initial map size in bytes; doubled whenever a commit finds the map full.
        commit_every: records per transaction (Caffe commits every 1,000).
    """

    kind = "LMDB"

    def __init__(self, path: str, map_size: int = 1 << 26, commit_every: int = 1000):
        self.map_size = int(map_size)
        super().__init__(path, commit_every)

    def _open(self, folder: str) -> None:
        self._env = open_lmdb(folder, readonly=False, map_size=self.map_size)

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        return (lmdb_module().Error,)

    def _write(self, records: list[tuple[bytes, bytes]]) -> None:
        lmdb = lmdb_module()
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in records:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.map_size *= 2
                log.info("Doubling LMDB map size to %dMB", self.map_size >> 20)
                self._env.set_mapsize(self.map_size)

    def _close_store(self) -> None:
        try:
            if not self._closed:  # closing after a successful write: make it durable first
                self._env.sync(True)
        finally:
            self._env.close()


# ----------------------------------------------------------------------------------------------
# LevelDB
# ----------------------------------------------------------------------------------------------

# Caffe's LevelDB options (db_leveldb.cpp): 64 KiB blocks, a 256 MiB write buffer, at most 100
# open files; LevelDB's default compression (snappy) is kept.
_LEVELDB_OPTIONS = dict(block_size=65536, write_buffer_size=268435456, max_open_files=100)


class _LeveldbHandle:
    """One open plyvel DB, shared by a process's readers of that folder (LevelDB's lock admits one
    opener) and closed when the last reader lets go (plyvel's DB cannot be weakly referenced)."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db):
        self.db = db

    def __del__(self):
        try:
            self.db.close()
        except Exception:  # pragma: no cover - closing at interpreter exit
            pass


_LEVELDB_SHARED: "weakref.WeakValueDictionary[tuple, _LeveldbHandle]" = weakref.WeakValueDictionary()


def _leveldb_error(path: str, e: Exception) -> DataError:
    msg = error_text(e)
    if "LOCK" in msg and ("unavailable" in msg or "held" in msg):
        return DataError(f"cannot open LevelDB '{path}': another process has it open (LevelDB admits "
                         f"one process at a time; LMDB many) ({msg})")
    return DataError(f"cannot open LevelDB '{path}': {msg}")


def open_leveldb(path: str) -> _LeveldbHandle:
    """The process's shared handle of an existing LevelDB (opened for reading)."""
    plyvel = plyvel_module()
    path = os.fspath(path)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino)
    with _SHARED_LOCK:
        handle = _LEVELDB_SHARED.get(key)
        if handle is None:
            try:
                # (an absolute path: LevelDB's table of the process's locks goes by the name given, so a
                # second database opened as 'db' from another folder read as locked)
                handle = _LeveldbHandle(plyvel.DB(os.path.abspath(path), create_if_missing=False,
                                                  **_LEVELDB_OPTIONS))
            except plyvel.Error as e:
                raise _leveldb_error(path, e) from None
            _LEVELDB_SHARED[key] = handle
        return handle


# The last 8 bytes of every LevelDB table file (table/format.h's kTableMagicNumber, little-endian)
_TABLE_MAGIC = (0xdb4775248b80fb57).to_bytes(8, "little")
# A live table in the "leveldb.sstables" property: " <file number>:<file size>[<smallest> .. <largest>]"
_SSTABLE_LINE = re.compile(rb"^ (\d+):(\d+)\[", re.M)


def _check_leveldb_tables(db, path: str) -> None:
    """A DataError unless each table file the database lists is whole: there, of the size its manifest records,
    and ending in LevelDB's table magic. plyvel ends an iteration silently where LevelDB's iterator stops on an
    error, so a last table cut short (a copy that did not finish) read as a database of fewer records; a
    damaged block inside a table is caught by the checksummed reads instead."""
    listing = db.get_property(b"leveldb.sstables") or b""
    for m in _SSTABLE_LINE.finditer(listing):
        number, size = int(m[1]), int(m[2])
        names = [f"{number:06d}.ldb", f"{number:06d}.sst"]  # (.sst: LevelDB before 1.14)
        file = next((os.path.join(path, n) for n in names if os.path.exists(os.path.join(path, n))), None)
        if file is None:  # (LevelDB refuses to open a database with a table missing; a race)
            raise DataError(f"LevelDB '{path}' is damaged: its table {names[0]} is missing; rebuild it or copy it "
                            "again")
        try:
            held = os.path.getsize(file)
            with open(file, "rb") as f:
                f.seek(max(size - len(_TABLE_MAGIC), 0))
                tail = f.read(len(_TABLE_MAGIC))
        except OSError as e:
            raise DataError(f"cannot read LevelDB '{path}': {describe_os_error(e)}") from None
        if held != size:
            raise DataError(f"LevelDB '{path}' is damaged: its table {os.path.basename(file)} holds {held} bytes, "
                            f"its manifest says {size} (a copy or download that did not finish?); rebuild it or "
                            "copy it again")
        if tail != _TABLE_MAGIC:
            raise DataError(f"LevelDB '{path}' is damaged: its table {os.path.basename(file)} does not end in "
                            "LevelDB's table magic number; rebuild it or copy it again")


class _LeveldbCursor:
    """A plyvel iterator with the record it stands on (plyvel's iterators return records as they step)."""

    __slots__ = ("it", "item")

    def __init__(self, it):
        self.it, self.item = it, None

    def advance(self) -> bool:
        try:
            self.item = next(self.it)
        except StopIteration:
            return False
        return True


class LeveldbReader(_PositionalReader):
    """Records of a LevelDB by position in key order (`_PositionalReader`); LevelDB stores no count,
    so the keys are counted once at opening."""

    kind = "LevelDB"

    def __init__(self, path: str):
        super().__init__()
        self.path = os.fspath(path)
        self._handle = open_leveldb(self.path)
        self.db = self._handle.db
        _check_leveldb_tables(self.db, self.path)
        start, n = time.perf_counter(), 0
        try:
            with self.db.snapshot() as snap, snap.iterator(include_value=False, verify_checksums=True) as it:
                for _ in it:
                    n += 1
        except self._store_errors() as e:
            raise self._damaged(e, f"counting its records, after record {n}") from None
        self.num_records = n
        took = time.perf_counter() - start
        if took >= 2.0:  # a large database: say what the pause at set-up was
            log.info("Counted the %d records of LevelDB %s in %.1f s (LevelDB stores no count)", n,
                     self.path, took)

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        return (plyvel_module().Error,)

    def _start(self):
        # (checksummed: a damaged block is an error here, where Caffe's reads took its bytes as they were)
        return _LeveldbCursor(self.db.iterator(verify_checksums=True))

    def _advance(self, cursor) -> bool:
        return cursor.advance()

    def _current(self, cursor) -> tuple[bytes, bytes]:
        return cursor.item


class LeveldbWriter(_AtomicDbWriter):
    """Write a new LevelDB at `path` atomically (temporary folder, then rename), as `LmdbWriter`.

    Args:
        path: the database folder to create; it must not exist (as in Caffe).
        commit_every: records per write batch (Caffe's tools write every 1,000).
    """

    kind = "LevelDB"

    def __init__(self, path: str, commit_every: int = 1000):
        self._plyvel = plyvel_module()
        super().__init__(path, commit_every)

    def _open(self, folder: str) -> None:
        try:
            self._db = self._plyvel.DB(folder, create_if_missing=True, **_LEVELDB_OPTIONS)
        except self._plyvel.Error as e:
            raise _leveldb_error(self.path, e) from None

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        return (self._plyvel.Error,)

    def _write(self, records: list[tuple[bytes, bytes]]) -> None:
        with self._db.write_batch() as batch:
            for k, v in records:
                batch.put(k, v)

    def _close_store(self) -> None:
        self._db.close()
