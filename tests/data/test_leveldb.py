"""LevelDB, Caffe's default backend: the writer, the reader, the Data layer and the tools on it.

Every LevelDB here is written by the LevelDB library (through plyvel) and read back both through
plyvel itself and through netcompress, and compared with the same records in an LMDB.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from netcompress.data.db import DataError, LeveldbReader, LeveldbWriter, LmdbWriter, open_reader
from netcompress.data.tools import (compute_image_mean, compute_image_mean_main, convert_imageset_main,
                                    convert_mnist, convert_mnist_main)
from netcompress.proto import caffe_pb2 as pb

plyvel = pytest.importorskip("plyvel", reason="LevelDB support needs the optional plyvel package")


def write_idx(path, arr, magic):
    head = magic.to_bytes(4, "big") + len(arr).to_bytes(4, "big")
    head += b"".join(int(d).to_bytes(4, "big") for d in arr.shape[1:])
    path.write_bytes(head + arr.tobytes())


@pytest.fixture
def mnist_idx(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (23, 28, 28), dtype=np.uint8)
    y = (np.arange(23) * 7 % 10).astype(np.uint8)
    write_idx(tmp_path / "img", x, 2051)
    write_idx(tmp_path / "lab", y, 2049)
    return tmp_path / "img", tmp_path / "lab", x, y


def data_layer(source, batch, backend="", extra=""):
    be = f"backend: {backend}" if backend else ""
    return (f'name: "d" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.00390625 {extra} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} {be} }}')


def test_convert_mnist_to_leveldb_writes_caffes_records(mnist_idx, tmp_path):
    img, lab, x, y = mnist_idx
    assert convert_mnist_main(["--backend=leveldb", str(img), str(lab), str(tmp_path / "ldb")]) == 0
    assert os.path.isfile(tmp_path / "ldb" / "CURRENT")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # the temporary folder was renamed
    db = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=False)  # LevelDB itself reads it
    try:
        items = list(db.iterator())
    finally:
        db.close()
    assert [k for k, _ in items] == [b"%08d" % i for i in range(23)]
    d = pb.Datum()
    d.ParseFromString(items[5][1])
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (1, 28, 28, int(y[5]), False)
    assert d.data == x[5].tobytes()


@pytest.mark.parametrize("backend", ["LEVELDB", ""])  # unset: Caffe's default, and the folder says LevelDB
@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
def test_data_layer_reads_a_leveldb_as_the_same_records_in_an_lmdb(mnist_idx, tmp_path, make_layer, data_log,
                                                                   backend, phase):
    img, lab, x, y = mnist_idx
    convert_mnist(str(img), str(lab), str(tmp_path / "ldb"), backend="leveldb")
    convert_mnist(str(img), str(lab), str(tmp_path / "mdb"))
    extra = "mirror: true crop_size: 24" if phase == pb.TRAIN else ""  # random draws: same in both
    a = make_layer(data_layer(tmp_path / "ldb", 10, backend, extra), phase=phase)
    b = make_layer(data_layer(tmp_path / "mdb", 10, "LMDB", extra), phase=phase)
    try:
        assert a.top_shapes([]) == b.top_shapes([])
        for _ in range(6):  # 60 records of 23: wraps around twice
            (xa, ya), (xb, yb) = a(), b()
            torch.testing.assert_close(xa, xb, rtol=0, atol=0)
            torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    finally:
        a.close()
        b.close()
    assert any(line == f"Opened leveldb {tmp_path / 'ldb'}" for line in data_log)
    assert "Restarting data prefetching from start." in data_log


def test_a_train_and_a_test_net_read_one_leveldb_in_one_process(mnist_idx, tmp_path, make_layer):
    """LevelDB admits one opener; the process's readers share its handle, released with the last one."""
    img, lab, x, y = mnist_idx
    path = tmp_path / "ldb"
    convert_mnist(str(img), str(lab), str(path), backend="leveldb")
    train = make_layer(data_layer(path, 5), phase=pb.TRAIN)
    test = make_layer(data_layer(path, 4), phase=pb.TEST)
    assert train()[1].tolist() == y[:5].astype(np.float32).tolist()
    assert test()[1].tolist() == y[:4].astype(np.float32).tolist()
    reader = LeveldbReader(str(path))
    assert reader.db is train.reader.db.db
    train.close()
    test.close()
    del train, test, reader
    import gc

    gc.collect()
    db = plyvel.DB(str(path), create_if_missing=False)  # the lock was released
    db.close()


def test_positional_reads_go_back_to_the_start_and_count_from_the_keys(tmp_path):
    with LeveldbWriter(str(tmp_path / "ldb"), commit_every=3) as w:
        for i in (5, 1, 9, 3, 7, 0, 8):  # written out of order: read in key order
            w.put(b"%08d" % i, b"v%d" % i)
    r = open_reader(str(tmp_path / "ldb"))
    assert isinstance(r, LeveldbReader) and r.kind == "LevelDB" and r.num_records == 7
    assert r.item_at(3) == (b"00000005", b"v5")
    assert r.value_at(0) == b"v0"  # back to the start
    assert [r.value_at(i) for i in (4, 5, 6)] == [b"v7", b"v8", b"v9"]
    assert r.first_value() == b"v0"
    with pytest.raises(IndexError, match=r"record 7 of LevelDB .* \(7 records\)"):
        r.item_at(7)


def test_a_failed_write_leaves_no_database(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with LeveldbWriter(str(tmp_path / "ldb")) as w:
            w.put("00000000", b"x")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    (tmp_path / "ldb").mkdir()
    with pytest.raises(DataError, match=r"cannot create LevelDB '.*ldb': it already exists"):
        LeveldbWriter(str(tmp_path / "ldb"))


def test_convert_imageset_and_compute_image_mean_agree_across_backends(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    root = f"{tmp_path}/"
    for be in ("lmdb", "leveldb"):
        assert convert_imageset_main([f"--backend={be}", root, str(tmp_path / "list.txt"),
                                      str(tmp_path / f"db_{be}")]) == 0
    a, b = open_reader(str(tmp_path / "db_lmdb")), open_reader(str(tmp_path / "db_leveldb"))
    assert [a.item_at(i) for i in range(5)] == [b.item_at(i) for i in range(5)]
    mean_a, ch_a = compute_image_mean(str(tmp_path / "db_lmdb"))
    assert compute_image_mean_main([str(tmp_path / "db_leveldb"), str(tmp_path / "mean.binaryproto")]) == 0
    from netcompress.io import read_binaryproto_array

    np.testing.assert_array_equal(read_binaryproto_array(str(tmp_path / "mean.binaryproto")), mean_a)
    assert compute_image_mean(str(tmp_path / "db_leveldb"), backend="leveldb")[1] == ch_a


def test_compute_image_mean_with_the_other_backend_says_which_it_is(tmp_path, capsys):
    with LmdbWriter(str(tmp_path / "mdb"), map_size=1 << 20) as w:
        w.put(b"0", pb.Datum(channels=1, height=1, width=1, data=b"\x01").SerializeToString())
    assert compute_image_mean_main(["--backend=leveldb", str(tmp_path / "mdb")]) == 1
    err = capsys.readouterr().err
    assert "--backend=leveldb but '" in err and "is an LMDB; give --backend=lmdb (or leave --backend out" in err
    assert "compute_image_mean: error: --backend=leveldb" in err  # (the command's name once: it was said twice)


def test_a_leveldb_held_by_another_process_is_named(mnist_idx, tmp_path, make_layer):
    img, lab, _, _ = mnist_idx
    path = tmp_path / "ldb"
    convert_mnist(str(img), str(lab), str(path), backend="leveldb")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, plyvel
        db = plyvel.DB({str(path)!r})
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DataError, match=r"cannot open LevelDB '.*ldb': another process has it open"):
            make_layer(data_layer(path, 2))
    finally:
        holder.communicate("", timeout=60)


def _compacted_leveldb(path, n=600):
    """A LevelDB of `n` 300-byte records in several tables below level 0 (a compacted database, as any large one
    is), and its table files in key order."""
    rng = np.random.default_rng(5)
    db = plyvel.DB(str(path), create_if_missing=True, write_buffer_size=50_000)
    for i in range(n):
        db.put(b"%08d" % i, rng.bytes(300))
    db.compact_range()
    listing = db.get_property(b"leveldb.sstables").decode()
    db.close()
    assert "--- level 0 ---\n--- level 1" in listing  # (level 0 empty: the tables below it)
    tables = sorted(f for f in os.listdir(path) if f.endswith(".ldb"))
    assert len(tables) >= 3
    return tables


@pytest.mark.parametrize("damage", ["cut", "magic", "block"])
@pytest.mark.parametrize("which", [0, -1])
def test_a_damaged_leveldb_table_is_named_not_read_as_fewer_records(tmp_path, damage, which):
    path = tmp_path / "ldb"
    tables = _compacted_leveldb(path)
    assert LeveldbReader(str(path)).num_records == 600
    import gc

    gc.collect()  # (the reader's handle let go)
    table = path / tables[which]
    data = bytearray(table.read_bytes())
    if damage == "cut":  # a copy that did not finish: plyvel read the last table's cut as the end of the records
        data = data[:len(data) // 2]
        expect = rf"its table {tables[which]} holds {len(data)} bytes, its manifest says {2 * len(data)}"
    elif damage == "magic":
        data[-1] ^= 0xFF
        expect = rf"its table {tables[which]} does not end in LevelDB's table magic number"
    else:  # a byte inside a data block: Caffe's reads (no checksums) took the changed bytes as the record
        data[1000] ^= 0xFF
        expect = r"\(counting its records, after record \d+: Corruption: block checksum mismatch\)"
    table.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"LevelDB '.*ldb' is damaged.*{expect}.*rebuild it or copy it again"):
        LeveldbReader(str(path))


def test_two_leveldbs_of_one_relative_name_open_in_one_process(tmp_path, monkeypatch):
    for sub, value in (("a", b"A"), ("b", b"B")):
        (tmp_path / sub).mkdir()
        with LeveldbWriter(str(tmp_path / sub / "db")) as w:
            w.put(b"00000000", value)
    monkeypatch.chdir(tmp_path / "a")
    first = LeveldbReader("db")
    monkeypatch.chdir(tmp_path / "b")  # ("db" again, another database: it read as held by another process)
    second = LeveldbReader("db")
    assert (first.value_at(0), second.value_at(0)) == (b"A", b"B")


def test_without_plyvel_the_error_says_what_to_install(tmp_path, monkeypatch, make_layer):
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    monkeypatch.setitem(sys.modules, "plyvel", None)
    with pytest.raises(DataError, match=r"needs the 'plyvel' package: pip install plyvel"):
        make_layer(data_layer(tmp_path / "ldb", 1))
    with pytest.raises(DataError, match=r"needs the 'plyvel' package"):
        LeveldbWriter(str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_train_from_a_leveldb(mnist_idx, tmp_path):
    """`netcompress train` over a LevelDB, as Caffe's older examples wrote them; the TRAIN and the TEST
    net read the same database."""
    from netcompress.cli import main

    img, lab, _, _ = mnist_idx
    convert_mnist(str(img), str(lab), str(tmp_path / "ldb"), backend="leveldb")
    net = f"""
    layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.00390625 }}
             data_param {{ source: "{tmp_path / 'ldb'}" batch_size: 8 backend: LEVELDB }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
             inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include {{ phase: TEST }} }}
    """
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" max_iter: 6 test_iter: 3 '
        f'test_interval: 6 display: 0 snapshot_prefix: "{tmp_path / "s"}" random_seed: 1 solver_mode: CPU')
    assert main(["train", "--solver", str(tmp_path / "solver.prototxt")]) == 0
    assert (tmp_path / "s_iter_6.caffemodel").is_file()


def test_convert_db_copies_a_leveldb_to_an_lmdb_and_back(mnist_idx, tmp_path, capsys):
    from netcompress.cli import main

    img, lab, _, _ = mnist_idx
    convert_mnist(str(img), str(lab), str(tmp_path / "ldb"), backend="leveldb")
    assert main(["convert_db", str(tmp_path / "ldb"), str(tmp_path / "mdb")]) == 0
    assert main(["convert_db", "--backend=leveldb", str(tmp_path / "mdb"), str(tmp_path / "ldb2")]) == 0
    a, b, c = (open_reader(str(tmp_path / n)) for n in ("ldb", "mdb", "ldb2"))
    assert (a.kind, b.kind, c.kind) == ("LevelDB", "LMDB", "LevelDB")
    items = [a.item_at(i) for i in range(a.num_records)]
    assert len(items) == 23
    assert [b.item_at(i) for i in range(b.num_records)] == items == [c.item_at(i) for i in range(c.num_records)]
    capsys.readouterr()
    assert main(["convert_db", str(tmp_path / "ldb"), str(tmp_path / "mdb")]) == 1
    assert "convert_db: error: cannot create LMDB '" in capsys.readouterr().err


def test_a_data_parallel_train_net_refuses_a_leveldb_and_says_how_to_copy_it(mnist_idx, tmp_path, make_layer):
    img, lab, _, y = mnist_idx
    convert_mnist(str(img), str(lab), str(tmp_path / "ldb"), backend="leveldb")
    with pytest.raises(DataError, match=r"the 2 processes of a data-parallel run cannot share the LevelDB "
                                        r"'.*ldb' .*netcompress convert_db .*ldb <new lmdb folder>"):
        make_layer(data_layer(tmp_path / "ldb", 4), phase=pb.TRAIN, rank=1, world_size=2)
    # rank 0's TEST net (only rank 0 tests) reads it
    layer = make_layer(data_layer(tmp_path / "ldb", 4), phase=pb.TEST, rank=0, world_size=2)
    assert layer()[1].tolist() == y[:4].astype(np.float32).tolist()
    layer.close()
