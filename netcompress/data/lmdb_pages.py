"""A check of an LMDB's page structure, so that a damaged file is an error rather than a dead process.

liblmdb trusts the pages a cursor steps into: a leaf page overwritten with zeros or other bytes (a bad copy, a
disk error) makes it fail an assertion (`Assertion 'IS_LEAF(mp)' failed in mdb_cursor_next()`), which aborts the
process where Python cannot catch it. (A file cut short, whose pages past its end would be a SIGBUS, is refused
when it is opened: db.py.) So the readers check the pages before liblmdb walks them: `LmdbPages.open` reads the meta page and every branch page once (few: the levels above the
leaves), and `check_leaf` checks a leaf page (its header and each record's node: key and value inside the page,
or the value's overflow pages inside the file) just before a cursor steps into it, so a reader that reads a few
records of a large database reads no more of it than liblmdb would.

The layout is LMDB's data format version 1 (liblmdb 0.9, as py-lmdb bundles it; the files Caffe wrote) on a
64-bit little-endian machine: where the file says otherwise, or its meta page disagrees with what liblmdb
reports, no check is made (liblmdb's own behaviour).
"""
from __future__ import annotations

import mmap
import os
import struct
import sys

_MAGIC = 0xBEEFC0DE
_VERSION = 1
_HEADER = 16  # PAGEHDRSZ: pgno (8), pad (2), flags (2), lower (2), upper (2)
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_NODE = 8  # NODESIZE: lo (2), hi (2), flags (2), ksize (2)
_P_INVALID = 2 ** 64 - 1
_PAGE_HEAD = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_NODE_HEAD = struct.Struct("<HHHH")  # lo, hi, flags, ksize
_PGNO = struct.Struct("<Q")


class PageError(Exception):
    """What is wrong with a page (the reader names the database)."""


class LmdbPages:
    """The branch levels of one LMDB (checked) and its leaves in key order (checked on demand)."""

    def __init__(self, mm: mmap.mmap, psize: int, last: int, leaves: list[int]):
        self._mm = mm
        self.psize = psize
        self.last = last
        self.leaves = leaves
        self._checked: dict[int, int] = {}

    @classmethod
    def open(cls, data_path: str, env) -> "LmdbPages | None":
        """The pages of the database `env` (an open py-lmdb Environment on `data_path`); None where the format
        is not the one described above; a PageError where a branch page is damaged."""
        if sys.byteorder != "little" or struct.calcsize("P") != 8:
            return None
        psize = int(env.stat()["psize"])
        with open(data_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 2 * psize:
                return None
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        metas = []
        for p in (0, 1):
            off = p * psize
            flags = struct.unpack_from("<H", mm, off + 10)[0]
            magic, version = struct.unpack_from("<II", mm, off + _HEADER)
            if not flags & _P_META or magic != _MAGIC or version != _VERSION:
                mm.close()
                return None
            depth = struct.unpack_from("<H", mm, off + 94)[0]  # the main database's MDB_db: md_depth
            root, last, txnid = struct.unpack_from("<QQQ", mm, off + 128)  # md_root, mm_last_pg, mm_txnid
            metas.append((txnid, root, depth, last))
        _, root, depth, last = max(metas)
        stat = env.stat()
        if last != int(env.info()["last_pgno"]) or depth != int(stat["depth"]):
            mm.close()
            return None
        pages = cls(mm, psize, last, [])
        if root == _P_INVALID:  # an empty database
            return pages
        level = [root]
        for _ in range(depth - 1):
            level = [child for pg in level for child in pages._branch_children(pg)]
        if len(level) != int(stat["leaf_pages"]):
            raise PageError(f"its branch pages lead to {len(level)} leaf pages, its meta page counts "
                            f"{int(stat['leaf_pages'])}")
        pages.leaves = level
        return pages

    def close(self) -> None:
        self._mm.close()

    def _header(self, pg: int, want: int, what: str) -> tuple[int, int, int]:
        """(offset, lower, upper) of page `pg`, which must be a `want` page."""
        if not 2 <= pg <= self.last:
            raise PageError(f"a {what} page number {pg} is outside the file's pages 2 to {self.last}")
        off = pg * self.psize
        pgno, _, flags, lower, upper = _PAGE_HEAD.unpack_from(self._mm, off)
        kinds = _P_BRANCH | _P_LEAF | _P_OVERFLOW | _P_META | _P_LEAF2
        if pgno != pg or flags & kinds != want or not _HEADER <= lower <= upper <= self.psize:
            raise PageError(f"page {pg}, a {what} page, is damaged (it reads as page {pgno}, flags {flags:#x}, "
                            f"free space {lower}..{upper})")
        return off, lower, upper

    def _nodes(self, off: int, lower: int, upper: int, pg: int, what: str):
        """(offset, data size, flags, key size) of each node of the page at `off`, each inside the page."""
        for ptr in struct.unpack_from(f"<{(lower - _HEADER) // 2}H", self._mm, off + _HEADER):
            if not upper <= ptr <= self.psize - _NODE:
                raise PageError(f"page {pg}, a {what} page, is damaged (a record at {ptr}, outside {upper}.."
                                f"{self.psize})")
            lo, hi, flags, ksize = _NODE_HEAD.unpack_from(self._mm, off + ptr)
            if ptr + _NODE + ksize > self.psize:
                raise PageError(f"page {pg}, a {what} page, is damaged (a key of {ksize} bytes runs past the page)")
            yield off + ptr, lo | hi << 16, flags, ksize

    def _branch_children(self, pg: int) -> list[int]:
        off, lower, upper = self._header(pg, _P_BRANCH, "branch")
        children = []
        for node, lo_hi, flags, _ in self._nodes(off, lower, upper, pg, "branch"):
            child = lo_hi | flags << 32  # a branch node's page number: lo, hi and flags
            if not 2 <= child <= self.last:
                raise PageError(f"branch page {pg} is damaged (it points to page {child}, outside 2 to "
                                f"{self.last})")
            children.append(child)
        return children

    def check_leaf(self, index: int) -> int:
        """Check the `index`-th leaf page (in key order); returns its record count. (The nodes are read in line,
        not through `_nodes`: a reader checks every leaf once, a few records each.)"""
        pg = self.leaves[index]
        n = self._checked.get(pg)
        if n is not None:
            return n
        off, lower, upper = self._header(pg, _P_LEAF, "leaf")
        mm, psize = self._mm, self.psize
        end = off + psize
        ptrs = struct.unpack_from(f"<{(lower - _HEADER) // 2}H", mm, off + _HEADER)
        for ptr in ptrs:
            if not upper <= ptr <= psize - _NODE:
                raise PageError(f"page {pg}, a leaf page, is damaged (a record at {ptr}, outside {upper}..{psize})")
            node = off + ptr
            lo, hi, flags, ksize = _NODE_HEAD.unpack_from(mm, node)
            value = node + _NODE + ksize  # where the value (or its overflow page number) starts
            if value > end:
                raise PageError(f"page {pg}, a leaf page, is damaged (a key of {ksize} bytes runs past the page)")
            if flags & (_F_SUBDATA | _F_DUPDATA):
                continue  # (a sub-database or duplicate keys: not a Caffe database; liblmdb's affair)
            dsize = lo | hi << 16
            if flags & _F_BIGDATA:
                if value + 8 > end:
                    raise PageError(f"leaf page {pg} is damaged (a record's overflow page number runs past the page)")
                first = _PGNO.unpack_from(mm, value)[0]
                count = (_HEADER - 1 + dsize) // psize + 1  # liblmdb's OVPAGES
                if not 2 <= first or first + count - 1 > self.last:
                    raise PageError(f"leaf page {pg} is damaged (a record of {dsize} bytes on pages {first} to "
                                    f"{first + count - 1}, outside 2 to {self.last})")
            elif value + dsize > end:
                raise PageError(f"leaf page {pg} is damaged (a record of {dsize} bytes runs past the page)")
        n = len(ptrs)
        self._checked[pg] = n
        return n
