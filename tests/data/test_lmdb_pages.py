"""netcompress.data.lmdb_pages: an LMDB's pages checked before liblmdb walks them, so a damaged file is a DataError
naming the database and the page, where a zeroed leaf page made liblmdb fail an assertion (the process aborted:
the first damage case) and other damage gave liblmdb's own MDB_CORRUPTED."""
from __future__ import annotations

import re
import struct
import subprocess
import sys

import pytest

from netcompress.data.db import LmdbReader
from netcompress.data.lmdb_pages import LmdbPages

lmdb = pytest.importorskip("lmdb")


def make_db(path, count: int, size: int) -> str:
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i in range(count):
            txn.put(b"%08d" % i, bytes([i % 251]) * size)
    env.close()
    return str(path)


@pytest.mark.parametrize("count, size, depth", [(0, 10, 0), (1, 10, 1), (300, 800, 2), (2000, 3000, 2),
                                                (50, 50000, 1), (20000, 30, 3)])
def test_leaves_in_key_order_and_every_record_read(tmp_path, count, size, depth):
    """The leaves found from the branch pages are liblmdb's, in its order: each leaf's first key (read from the
    page here) is the reader's record at the running count, and the counts add up to the database's."""
    reader = LmdbReader(make_db(tmp_path / "db", count, size))
    pages = reader._pages
    assert pages is not None and reader.env.stat()["depth"] == depth
    keys = [reader.item_at(i)[0] for i in range(reader.num_records)]
    assert keys == [b"%08d" % i for i in range(count)]
    seen = 0
    for j, pg in enumerate(pages.leaves):
        off = pg * pages.psize
        ptr = struct.unpack_from("<H", pages._mm, off + 16)[0]
        ksize = struct.unpack_from("<H", pages._mm, off + ptr + 6)[0]
        assert bytes(pages._mm[off + ptr + 8:off + ptr + 8 + ksize]) == keys[seen]
        seen += pages.check_leaf(j)
    assert seen == count
    assert reader.item_at(0)[1] == b"\x00" * size if count else True  # back to the start: a new cursor


def _read_all_in_a_child(path: str) -> subprocess.CompletedProcess:
    """Every record through LmdbReader in a child process (without the checks, liblmdb killed the process)."""
    code = ("import sys\nfrom netcompress.data.db import LmdbReader, DataError\n"
            "try:\n    r = LmdbReader(sys.argv[1])\n    [r.item_at(i) for i in range(r.num_records)]\n"
            "except DataError as e:\n    print(e)\n    sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage, match", [
    ("zero leaf", r"is damaged \(at record \d+: page \d+, a leaf page, is damaged \(it reads as page 0, flags 0x0"),
    ("zero branch", r"is damaged \(in its branch pages: page \d+, a branch page, is damaged"),
    ("record size", r"is damaged \(at record \d+: leaf page \d+ is damaged \(a record of \d+ bytes runs past the page"),
    ("overflow page", r"is damaged \(at record \d+: leaf page \d+ is damaged \(a record of 50000 bytes on pages"),
])
def test_a_damaged_page_is_a_data_error_not_an_abort(tmp_path, damage, match):
    count = {"zero branch": 20000, "overflow page": 200}.get(damage, 2000)
    path = make_db(tmp_path / "db", count, 50000 if damage == "overflow page" else 30)
    env = lmdb.open(path, readonly=True, lock=False)
    pages = LmdbPages.open(str(tmp_path / "db" / "data.mdb"), env)
    psize, depth = pages.psize, env.stat()["depth"]
    middle = pages.leaves[len(pages.leaves) // 2]
    data = bytearray((tmp_path / "db" / "data.mdb").read_bytes())
    if damage == "zero leaf":
        data[middle * psize:(middle + 1) * psize] = bytes(psize)
    elif damage == "zero branch":
        assert depth == 3
        root = max((struct.unpack_from("<Q", data, p * psize + 144)[0],  # (mm_txnid, md_root) of each meta page
                    struct.unpack_from("<Q", data, p * psize + 128)[0]) for p in (0, 1))[1]
        child = struct.unpack_from("<H", data, root * psize + struct.unpack_from("<H", data, root * psize + 16)[0])[0]
        data[child * psize:(child + 1) * psize] = bytes(psize)
    else:
        ptr = struct.unpack_from("<H", data, middle * psize + 16)[0]
        if damage == "record size":
            struct.pack_into("<H", data, middle * psize + ptr, 5000)  # the value's size, low half
        else:
            ksize = struct.unpack_from("<H", data, middle * psize + ptr + 6)[0]
            struct.pack_into("<Q", data, middle * psize + ptr + 8 + ksize, pages.last)  # its overflow page
    pages.close()
    env.close()
    (tmp_path / "db" / "data.mdb").write_bytes(bytes(data))
    r = _read_all_in_a_child(path)
    assert r.returncode == 1, (r.returncode, r.stderr[-1500:])
    assert f"LMDB '{path}'" in r.stdout and re.search(match, r.stdout), r.stdout


def test_a_file_that_is_no_lmdb_is_named_once(tmp_path):
    from netcompress.data.db import DataError

    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "data.mdb").write_bytes(bytes(range(256)) * 80)
    with pytest.raises(DataError) as e:
        LmdbReader(str(tmp_path / "db"))
    assert str(e.value) == f"cannot open LMDB '{tmp_path / 'db'}': MDB_INVALID: File is not an LMDB file"
