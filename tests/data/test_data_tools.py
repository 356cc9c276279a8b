"""convert_mnist, convert_imageset, compute_image_mean and the LMDB writer, through main()."""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from netcompress.data.db import DataError, LmdbReader, LmdbWriter
from netcompress.data.tools import (compute_image_mean_main, convert_imageset_main,
                                    convert_mnist_main, read_idx)
from netcompress.data.transformer import datum_to_array
from netcompress.io import read_binaryproto_array
from netcompress.proto import caffe_pb2 as pb

from db_helpers import read_datum_records as records


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    head = magic.to_bytes(4, "big") + len(arr).to_bytes(4, "big")
    head += b"".join(int(d).to_bytes(4, "big") for d in arr.shape[1:])
    return head + arr.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_convert_mnist_writes_caffe_layout(tmp_path, compress):
    x = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    y = (np.arange(12) % 10).astype(np.uint8)
    wrap = gzip.compress if compress else (lambda b: b)
    (tmp_path / "img").write_bytes(wrap(idx_bytes(x, 2051)))
    (tmp_path / "lab").write_bytes(wrap(idx_bytes(y, 2049)))
    assert convert_mnist_main([str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "db")]) == 0
    recs = records(tmp_path / "db")
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(12)]
    d = recs[3][1]
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (1, 28, 28, 3, False)
    assert d.data == x[3].tobytes()


def test_convert_mnist_rejects_bad_magic_and_existing_db(tmp_path, capsys):
    x = np.zeros((2, 28, 28), np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(x, 2049))
    (tmp_path / "lab").write_bytes(idx_bytes(np.zeros(2, np.uint8), 2049))
    assert convert_mnist_main([str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "db")]) == 1
    assert "Incorrect image file magic" in capsys.readouterr().err
    (tmp_path / "db").mkdir()
    (tmp_path / "img").write_bytes(idx_bytes(x, 2051))
    assert convert_mnist_main([str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "db")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert convert_mnist_main(["--backend=rocksdb", "a", "b", "c"]) == 1
    assert "unknown database backend 'rocksdb' (expected lmdb or leveldb)" in capsys.readouterr().err


def test_a_database_under_a_file_names_the_folder(tmp_path, capsys):
    from netcompress.data.tools import mnist5k_main

    (tmp_path / "afile").write_text("x")
    for argv, db in ((["afile"], "afile/mnist5k_train_lmdb"), (["afile/sub"], "afile/sub/mnist5k_train_lmdb")):
        with pytest.MonkeyPatch.context() as m:
            m.chdir(tmp_path)
            assert mnist5k_main(argv) == 1
        err = capsys.readouterr().err  # (was the OSError's own "[Errno 17] File exists: '...afile'")
        assert f"mnist5k: error: cannot create LMDB '{db}': its folder {tmp_path / argv[0]}: a part of it is a " \
            "file, not a folder" in err and "Errno" not in err
    with pytest.raises(DataError, match="a new LMDB needs a name; the path is empty"):
        LmdbWriter("")  # (its temporary folder went beside the current folder)
    # an OS error no writer turned into a message goes through the command line's boundary: path, plain reason
    import errno

    from netcompress.data.tools import _run

    def fails() -> int:
        raise FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "x"))
    assert _run("mnist5k", fails) == 1
    assert capsys.readouterr().err == f"mnist5k: error: {tmp_path / 'x'}: already exists\n"


def test_read_idx_reports_truncation(tmp_path):
    (tmp_path / "t").write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), 2051)[:-2])
    with pytest.raises(DataError, match="truncated: the header announces 12 bytes of images, the file holds 10"):
        read_idx(str(tmp_path / "t"), "images")
    # cut inside the image header (it said "the file holds -2")
    (tmp_path / "t").write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), 2051)[:14])
    with pytest.raises(DataError, match="truncated: an IDX image file's header takes 16 bytes, the file holds 14"):
        read_idx(str(tmp_path / "t"), "images")
    # dims whose product wraps to 0 in 64 bits (numpy's reshape error, a traceback before; found by the fuzz)
    (tmp_path / "t").write_bytes(struct.pack(">IIII", 2051, 2**30, 2**31, 2**3))
    with pytest.raises(DataError, match="the header announces 18446744073709551616 bytes of images, the file holds 0"):
        read_idx(str(tmp_path / "t"), "images")


@pytest.fixture
def pngs(tmp_path):
    from PIL import Image

    root = tmp_path / "img"
    root.mkdir()
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    for i, c in enumerate(colors):
        Image.new("RGB", (5, 4), c).save(root / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i + 10}\n" for i in range(4)))
    return root, tmp_path / "list.txt", colors


def test_convert_imageset_raw_bgr(pngs, tmp_path):
    root, lst, colors = pngs
    assert convert_imageset_main([f"{root}/", str(lst), str(tmp_path / "db")]) == 0
    recs = records(tmp_path / "db")
    assert [k for k, _ in recs] == [f"{i:08d}_{i}.png".encode() for i in range(4)]
    for i, (_, d) in enumerate(recs):
        assert (d.channels, d.height, d.width, d.label) == (3, 4, 5, i + 10)
        assert datum_to_array(d)[:, 0, 0].tolist() == list(colors[i][::-1])


def test_convert_imageset_gray_resize_gflags_spellings(pngs, tmp_path):
    root, lst, _ = pngs
    rc = convert_imageset_main(["-gray", "--resize_height=8", "-resize_width=6", "--check_size=true",
                                f"{root}/", str(lst), str(tmp_path / "db")])
    assert rc == 0
    d = records(tmp_path / "db")[0][1]
    assert (d.channels, d.height, d.width) == (1, 8, 6)
    assert datum_to_array(d)[0, 0, 0] == (0 * 1868 + 0 * 9617 + 255 * 4899 + 8192) >> 14


def test_convert_imageset_encoded_and_shuffled(pngs, tmp_path):
    root, lst, colors = pngs
    rc = convert_imageset_main(["--encoded", "--shuffle", "--seed=3", f"{root}/", str(lst),
                                str(tmp_path / "db")])
    assert rc == 0
    recs = records(tmp_path / "db")
    assert sorted(d.label for _, d in recs) == [10, 11, 12, 13]
    for key, d in recs:
        assert d.encoded
        name = key.decode().split("_", 1)[1]
        assert d.data == (root / name).read_bytes()  # same format, no resize: the file itself
        assert datum_to_array(d)[:, 0, 0].tolist() == list(colors[d.label - 10][::-1])
    rc = convert_imageset_main(["--encode_type=png", "--resize_height=2", "--resize_width=2",
                                f"{root}/", str(lst), str(tmp_path / "db2")])
    assert rc == 0
    d = records(tmp_path / "db2")[0][1]
    assert d.encoded and datum_to_array(d).shape == (3, 2, 2)


def test_convert_imageset_of_an_empty_list_warns(tmp_path, data_log):
    # (as Caffe, an empty database, but said at once: a net reading it failed later, on "holds no records")
    (tmp_path / "empty.txt").write_text("")
    assert convert_imageset_main([f"{tmp_path}/", str(tmp_path / "empty.txt"), str(tmp_path / "db")]) == 0
    assert f"{tmp_path / 'empty.txt'} lists no images: the database will hold no records" in data_log
    assert records(tmp_path / "db") == []


def test_convert_imageset_refuses_an_unknown_encode_type_before_writing(pngs, tmp_path, capsys):
    root, lst, _ = pngs
    assert convert_imageset_main(["--encode_type=bogus", f"{root}/", str(lst), str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err  # (was a ValueError from the first image's encoding: a traceback)
    assert "encode_type 'bogus' is not an image format convert_imageset writes (use jpg, png, bmp, tiff, ppm or " \
        "webp)" in err and "Traceback" not in err
    assert not (tmp_path / "db").exists()


def test_convert_imageset_refuses_a_resize_no_datum_holds(pngs, tmp_path, capsys):
    root, lst, _ = pngs  # (numpy's "out of memory" at the first image, or hours of resizing)
    assert convert_imageset_main(["--resize_width=99999999999", "--resize_height=8", f"{root}/", str(lst),
                                  str(tmp_path / "db")]) == 1
    assert "--resize_height 8 x --resize_width 99999999999 x 3 channel(s) is more than a Datum holds " \
        "(2,147,483,647 bytes, protobuf's 2 GiB limit)" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_convert_imageset_skips_unreadable_and_checks_size(pngs, tmp_path, capsys):
    from PIL import Image

    root, lst, _ = pngs
    lst.write_text(lst.read_text() + "missing.png 1\n")
    assert convert_imageset_main([f"{root}/", str(lst), str(tmp_path / "db")]) == 0
    assert len(records(tmp_path / "db")) == 4
    Image.new("RGB", (7, 7)).save(root / "big.png")
    lst.write_text(lst.read_text() + "big.png 2\n")
    assert convert_imageset_main(["--check_size", f"{root}/", str(lst), str(tmp_path / "db3")]) == 1
    assert "Incorrect data field size" in capsys.readouterr().err


def test_compute_image_mean(tmp_path, write_records, data_log):
    x = np.random.default_rng(2).integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    path = write_records(tmp_path / "db", [pb.Datum(channels=3, height=4, width=6,
                                                      data=x[i].tobytes(), label=0) for i in range(5)])
    out = tmp_path / "mean.binaryproto"
    assert compute_image_mean_main([str(path), str(out)]) == 0
    mean = read_binaryproto_array(str(out))
    assert mean.shape == (1, 3, 4, 6) and mean.dtype == np.float32
    total = np.zeros((3, 4, 6), np.float32)
    for i in range(5):
        total += x[i].astype(np.float32)
    np.testing.assert_array_equal(mean[0], total / np.float32(5))
    blob = pb.BlobProto()
    blob.ParseFromString(out.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 6)
    for c in range(3):
        want = "%g" % (np.cumsum(mean[0, c].ravel(), dtype=np.float32)[-1] / np.float32(24))
        assert f"mean_value channel [{c}]: {want}" in data_log


@pytest.mark.parametrize("damage", ["cut short", "damaged"])
def test_a_damaged_lmdb_file_is_named_not_a_crash(tmp_path, write_records, damage):
    """An LMDB whose data.mdb was cut short (a copy that did not finish) killed the process with SIGBUS when a
    page past the end was read (LMDB maps the file); one whose pages were overwritten gave a traceback
    ("unexpected CorruptedError"). Both are now refused, naming the database, by every reader (the tools and
    the Data layer); the commands run in a child process, so a crash fails the test rather than ending pytest."""
    import subprocess
    import sys

    x = np.random.default_rng(3).integers(0, 256, (300, 1, 28, 28), dtype=np.uint8)
    db = write_records(tmp_path / "db", [pb.Datum(channels=1, height=28, width=28, data=x[i].tobytes(), label=i % 10)
                                          for i in range(300)])
    data = db / "data.mdb"
    raw = data.read_bytes()
    page = 4096
    assert len(raw) > 20 * page
    if damage == "cut short":
        data.write_bytes(raw[:len(raw) // 3])
    else:  # the two meta pages kept, every other page zeroed: LMDB finds pages of the wrong type
        data.write_bytes(raw[:2 * page] + bytes(len(raw) - 2 * page))
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{db}" batch_size: 10 }} }}'
        ' layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 10 } }'
        ' layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" '
                                              f'max_iter: 40 snapshot_prefix: "{tmp_path / "snap"}"')
    for argv in (["compute_image_mean", str(db), str(tmp_path / "mean.binaryproto")], ["convert_db", str(db),
                 str(tmp_path / "copy")], ["train", "--solver", str(tmp_path / "solver.prototxt")]):
        r = subprocess.run([sys.executable, "-m", "netcompress", *argv], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, (argv, r.returncode, r.stderr[-2000:])
        assert f"LMDB '{db}' is {damage}" in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr[-2000:])
    assert not (tmp_path / "mean.binaryproto").exists() and not (tmp_path / "copy").exists()


def test_compute_image_mean_usage_error_returns_nonzero():
    assert compute_image_mean_main([]) == 2


def test_compute_image_mean_refuses_to_write_over_a_net(tmp_path, write_records, capsys):
    # (the arguments out of order, or a slip of the shell: the mean replaced the net)
    path = write_records(tmp_path / "db", [pb.Datum(channels=1, height=2, width=2, data=bytes(4))])
    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"\nlayer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n')
    before = net.read_bytes()
    assert compute_image_mean_main([str(path), str(net)]) == 1
    assert capsys.readouterr().err.strip().endswith(
        f"error: {net} is a net prototxt (1 layer), which writing the mean image there would replace (are the "
        "arguments in order?); give another output file, or remove it first if that is meant")
    assert net.read_bytes() == before
    out = tmp_path / "mean.binaryproto"
    for _ in range(2):  # (an earlier mean is replaced, as before)
        assert compute_image_mean_main([str(path), str(out)]) == 0


def test_compute_image_mean_names_a_record_that_is_not_a_datum(tmp_path, capsys):
    from netcompress.data.db import LmdbWriter

    with LmdbWriter(str(tmp_path / "db"), map_size=1 << 20) as db:
        db.put(b"00000000", pb.Datum(channels=1, height=2, width=2, data=bytes(4)).SerializeToString())
        db.put(b"00000001", b"\x0a\xff")  # a truncated field: protobuf's DecodeError (was a traceback)
    assert compute_image_mean_main([str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]) == 1
    err = capsys.readouterr().err
    assert f"record b'00000001' of LMDB '{tmp_path / 'db'}' is not a Datum: " in err  # (protobuf's words vary)
    assert "Error parsing message" in err or "Truncated message" in err
    assert "Traceback" not in err and not (tmp_path / "mean.binaryproto").exists()
    # an encoded record that is no image (was a ValueError: a traceback)
    with LmdbWriter(str(tmp_path / "enc"), map_size=1 << 20) as db:
        db.put(b"00000000", pb.Datum(encoded=True, data=b"garbage").SerializeToString())
    assert compute_image_mean_main([str(tmp_path / "enc"), str(tmp_path / "mean.binaryproto")]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith(f"error: Could not decode image record b'00000000' of LMDB '{tmp_path / 'enc'}': "
                                "UnidentifiedImageError: cannot identify image file"), err


def test_lmdb_writer_grows_the_map_and_is_atomic(tmp_path, data_log):
    path = tmp_path / "grow"
    with LmdbWriter(str(path), map_size=1 << 16, commit_every=7) as db:
        for i in range(40):
            db.put(b"%04d" % i, bytes([i]) * 4096)
        assert not path.exists()  # written next to it, renamed on close
    r = LmdbReader(str(path))
    assert r.num_records == 40 and r.item_at(39) == (b"0039", bytes([39]) * 4096)
    assert any(l.startswith("Doubling LMDB map size") for l in data_log)
    with pytest.raises(RuntimeError):
        with LmdbWriter(str(tmp_path / "aborted")) as db:
            db.put(b"k", b"v")
            raise RuntimeError("boom")
    assert not (tmp_path / "aborted").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_a_write_the_disk_refuses_is_named_and_leaves_no_database(tmp_path, backend):
    """A full disk (here a file-size limit, which fails the write the same way without root): LMDB's commit
    says only "Input/output error", LevelDB's "File too large"; both were an unexpected error ("a bug in
    netcompress") with a traceback. Now the database, the records and its disk's free space are named, and
    neither the database nor its temporary folder is left."""
    if backend == "leveldb":
        pytest.importorskip("plyvel", reason="LevelDB support needs the optional plyvel package")
    x = np.random.default_rng(0).integers(0, 256, (1500, 28, 28), dtype=np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(x, 2051))
    (tmp_path / "lab").write_bytes(idx_bytes((np.arange(1500) % 10).astype(np.uint8), 2049))
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (the write fails with EFBIG instead of a signal)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        from netcompress.cli import main
        sys.exit(main(["convert_mnist", "--backend={backend}", "img", "lab", "db"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    said = r.stderr.strip().splitlines()[-1]
    kind = "LMDB" if backend == "lmdb" else "LevelDB"
    assert f"cannot write {kind} 'db' (records 1 to 1,000): " in said, said
    assert ("Input/output error" if backend == "lmdb" else "File too large") in said
    assert "bytes free on its disk)" in said and "bug" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "lab"]


def test_the_data_tools_are_cli_subcommands():
    from netcompress.commands import load_command

    assert load_command("convert_mnist") is convert_mnist_main
    assert load_command("convert_imageset") is convert_imageset_main
    assert load_command("compute_image_mean") is compute_image_mean_main


def _cifar_batch(path, images: np.ndarray, labels: np.ndarray) -> None:
    rows = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    path.write_bytes(rows.tobytes())


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_cifar_writes_caffes_two_databases(tmp_path, backend, data_log):
    """convert_cifar_data's layout: the five training batches under keys batch * 10000 + item, the test batch
    under its own; raw 3x32x32 Datums in the files' R, G, B planes. (Small batches: each logs a warning.)"""
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    from netcompress.data.tools import convert_cifar_main

    rng = np.random.default_rng(3)
    src, out = tmp_path / "cifar-10-batches-bin", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    batches = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, 3)
        _cifar_batch(src / name, x, y)
        batches[name] = (x, y)
    assert convert_cifar_main([str(src), str(out), backend]) == 0
    train = records(out / f"cifar10_train_{backend}")
    assert [k for k, _ in train] == [b"%05d" % (f * 10000 + i) for f in range(5) for i in range(3)]
    x, y = batches["data_batch_2.bin"]
    d = dict(train)[b"10001"]
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 32, 32, int(y[1]), False)
    assert d.data == x[1].tobytes()
    test = records(out / f"cifar10_test_{backend}")
    assert [k for k, _ in test] == [b"00000", b"00001", b"00002"]
    assert test[2][1].data == batches["test_batch.bin"][0][2].tobytes()
    assert any("holds 3 records (CIFAR-10's batches hold 10000)" in m for m in data_log)


def test_convert_cifar_checks_every_input_first(tmp_path, capsys):
    from netcompress.data.tools import convert_cifar_main

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for i in range(1, 6):
        _cifar_batch(src / f"data_batch_{i}.bin", np.zeros((1, 3, 32, 32), np.uint8), np.zeros(1))
    assert convert_cifar_main([str(src), str(out)]) == 1
    assert "missing test_batch.bin" in capsys.readouterr().err
    (src / "test_batch.bin").write_bytes(b"\x00" * 3000)
    assert convert_cifar_main([str(src), str(out)]) == 1
    assert "test_batch.bin: 3000 bytes, not a whole number of CIFAR-10 records (3073 bytes each" in \
        capsys.readouterr().err
    assert not list(out.iterdir())  # nothing written: the inputs are checked before either database
    assert convert_cifar_main([str(src), str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such output folder" in capsys.readouterr().err


SIAMESE_NET = """
name: "siamese"
layer { name: "pair_data" type: "Data" top: "pair_data" top: "sim"
        data_param { source: "@DB@" batch_size: 8 backend: @BACKEND@ } transform_param { scale: 0.00390625 } }
layer { name: "slice_pair" type: "Slice" bottom: "pair_data" top: "data" top: "data_p"
        slice_param { slice_dim: 1 slice_point: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "feat" param { name: "ip1_w" } param { name: "ip1_b" }
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "ip1_p" type: "InnerProduct" bottom: "data_p" top: "feat_p" param { name: "ip1_w" }
        param { name: "ip1_b" } inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim" top: "loss"
        contrastive_loss_param { margin: 1 } }
"""


@pytest.mark.parametrize("backend", ["leveldb", "lmdb"])
def test_convert_mnist_siamese_pairs_and_a_siamese_net_trains_on_them(tmp_path, backend, data_log):
    """Caffe's pair draws (two caffe_rng_rand() % N a pair, from the seeded mt19937), 2-channel Datums labelled
    1 for the same digit; then the siamese example's layout (Slice, two towers sharing their weights,
    ContrastiveLoss) trains a few iterations on them."""
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    from netcompress.data.tools import convert_mnist_siamese_main
    from netcompress.rng import CaffeRNG
    from netcompress.solvers import Solver

    x = np.random.default_rng(1).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    y = (np.arange(12) % 3).astype(np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(x, 2051))
    (tmp_path / "lab").write_bytes(idx_bytes(y, 2049))
    db = tmp_path / f"pairs_{backend}"
    assert convert_mnist_siamese_main([str(tmp_path / "img"), str(tmp_path / "lab"), str(db), "--seed", "5",
                                       f"--backend={backend}"]) == 0
    assert "Pairs drawn with seed 5" in data_log
    draws = CaffeRNG(5).rand_u32(24) % 12
    recs = records(db)
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(12)]
    for item, (_, d) in enumerate(recs):
        i, j = int(draws[2 * item]), int(draws[2 * item + 1])
        assert (d.channels, d.height, d.width) == (2, 28, 28)
        assert d.data == x[i].tobytes() + x[j].tobytes()
        assert d.label == int(y[i] == y[j])
    net = tmp_path / "siamese.prototxt"
    net.write_text(SIAMESE_NET.replace("@DB@", str(db)).replace("@BACKEND@", backend.upper()))
    sp = pb.SolverParameter(net=str(net), base_lr=0.01, lr_policy="fixed", momentum=0.9, max_iter=6, display=0,
                            snapshot=0, random_seed=2, solver_mode=pb.SolverParameter.CPU)
    solver = Solver(sp, verbose=False)
    solver.solve()
    assert solver.iter == 6 and np.isfinite(solver.smoothed_loss)
    assert solver.net.layer("ip1").weight is solver.net.layer("ip1_p").weight  # the towers share
