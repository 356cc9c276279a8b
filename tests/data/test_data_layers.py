"""Data, ImageData, HDF5Data and MemoryData: order, wrap-around, determinism, resume, sharding; HDF5Output."""
from __future__ import annotations

import gc
import io
import re
import threading

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress.data.db import DataError
from netcompress.data.tools import convert_mnist
from netcompress.errors import NetDefinitionError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb


def data_layer(source, batch=4, extra="", data_extra="", prefetch=None):
    pf = f"prefetch: {prefetch}" if prefetch is not None else ""
    return (f'name: "d" type: "Data" top: "data" top: "label" {extra} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {pf} {data_extra} }}')


def labels_of(layer, n):
    return [layer()[1].tolist() for _ in range(n)]


def write_idx(path, arr, magic):
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big") + len(arr).to_bytes(4, "big"))
        for d in arr.shape[1:]:
            f.write(int(d).to_bytes(4, "big"))
        f.write(arr.tobytes())


# -- Data ------------------------------------------------------------------------------------

def test_data_layer_reads_converter_output_in_order_with_wraparound(tmp_path, make_layer, data_log):
    x = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "img", x, 2051)
    write_idx(tmp_path / "lab", y, 2049)
    db = tmp_path / "db"
    convert_mnist(str(tmp_path / "img"), str(tmp_path / "lab"), str(db))
    layer = make_layer(data_layer(db, 4, 'transform_param { scale: 0.00390625 }'))
    assert layer.top_shapes([]) == [(4, 1, 28, 28), (4,)]
    batches = [layer() for _ in range(3)]
    layer.close()
    data = torch.cat([b[0] for b in batches]).numpy()
    labels = torch.cat([b[1] for b in batches])
    assert labels.dtype == torch.float32 and batches[0][1].shape == (4,)
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert labels.tolist() == order
    np.testing.assert_array_equal(data, x[order][:, None].astype(np.float32) * np.float32(0.00390625))
    assert "Restarting data prefetching from start." in data_log
    assert any(l.startswith("Opened lmdb") for l in data_log)


@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
def test_data_layer_scale_only_batches_equal_the_per_record_transform(small_lmdb, make_layer, monkeypatch, phase):
    """Raw records with a scale-only transform are transformed as one batch (one pass), with the per-record
    path's values bit for bit; a transform with more than the scale goes record by record."""
    from netcompress.layers.data import _DatumReader
    path, x = small_lmdb
    calls = []
    batch_path = _DatumReader._raw_batch

    def spy(self, datums):
        out = batch_path(self, datums)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_DatumReader, "_raw_batch", spy)
    got = {}
    for way in ("batch", "records"):
        if way == "records":
            monkeypatch.setattr(_DatumReader, "_raw_batch", lambda self, datums: None)
        layer = make_layer(data_layer(path, 4, 'transform_param { scale: 0.00390625 }', prefetch=0), phase=phase)
        got[way] = [layer() for _ in range(3)]
        layer.close()
    assert calls and all(calls)
    for (d1, l1), (d2, l2) in zip(got["batch"], got["records"]):
        assert d1.dtype == torch.float32 and torch.equal(d1, d2) and torch.equal(l1, l2)
    np.testing.assert_array_equal(got["batch"][0][0].numpy(), x[:4].astype(np.float32) * np.float32(0.00390625))
    # mean_value: record by record
    monkeypatch.setattr(_DatumReader, "_raw_batch", spy)
    calls.clear()
    layer = make_layer(data_layer(path, 4, 'transform_param { scale: 0.5 mean_value: 3 }', prefetch=0), phase=phase)
    layer()
    layer.close()
    assert calls == [False]


def test_data_layer_bad_records_are_named_in_a_scale_only_batch(tmp_path, make_layer):
    """A record of another size, or one whose bytes do not fill its shape, leaves the batch path to the
    per-record one, which names the record."""
    from netcompress.data.db import LmdbWriter

    def write_records(path, datums):
        with LmdbWriter(str(path), map_size=1 << 20) as db:
            for i, d in enumerate(datums):
                db.put(b"%08d" % i, d.SerializeToString())
        return path

    x = np.random.default_rng(0).integers(0, 256, size=(4, 1, 4, 4), dtype=np.uint8)
    good = [pb.Datum(channels=1, height=4, width=4, data=x[i].tobytes(), label=i) for i in range(4)]
    other = good[:2] + [pb.Datum(channels=1, height=5, width=4, data=bytes(20), label=2)] + good[3:]
    short = good[:3] + [pb.Datum(channels=1, height=4, width=4, data=bytes(15), label=3)]
    for name, datums, message in (
            ("other", other, r"record '00000002' is 1x5x4, the batch's first record is 1x4x4"),
            ("short", short, r"failed: record '00000003' of '[^']*short': Datum holds 15 bytes of data, channels x "
                             r"height x width = 1x4x4 = 16$")):
        db = write_records(tmp_path / name, datums)
        layer = make_layer(data_layer(db, 4, 'transform_param { scale: 0.5 }', prefetch=0))
        with pytest.raises(DataError, match=message):
            layer()
        layer.close()


def test_data_layer_bad_records_are_named_once(tmp_path, make_layer):
    """The record and the layer each named once (the layer was named twice, and a first record as '<datum>')."""
    from netcompress.data.db import LmdbWriter

    def write_records(path, datums):
        with LmdbWriter(str(path), map_size=1 << 20) as db:
            for i, d in enumerate(datums):
                db.put(b"%08d" % i, d.SerializeToString())
        return path

    good = pb.Datum(channels=1, height=4, width=4, data=bytes(16), label=1)
    none = pb.Datum(channels=0, height=4, width=4, label=1)
    short = pb.Datum(channels=1, height=4, width=4, data=bytes(15), label=1)
    garbage = pb.Datum(encoded=True, data=b"garbage", label=1)
    layer_name = r"layer 'd' \(type Data\)"
    first = r"first record of '[^']*{}'"
    for name, datums, at_set_up, message in (
            ("none0", [none, good], True, first + r": a record has 0 channels$"),
            ("flat0", [pb.Datum(channels=1, height=4, width=0, label=1), good], True,
             first + r": a record is 1x4x0 \(channels x height x width\): it holds no pixels$"),
            ("short0", [short, good], True, first + r": Datum holds 15 bytes of data, channels x height x width "
                                                    r"= 1x4x4 = 16$"),
            ("garbage0", [garbage, good], True, r"Could not decode image " + first + ": UnidentifiedImageError"),
            ("none1", [good, none], False, r"failed: record '00000001' of '[^']*{}': a record has 0 channels$"),
            ("garbage1", [good, garbage], False, r"failed: Could not decode image '00000001' of '[^']*{}': "
                                                 r"UnidentifiedImageError")):
        db = write_records(tmp_path / name, datums)
        text = data_layer(db, 2, 'transform_param { mean_value: 1 }', prefetch=0)
        with pytest.raises(DataError) as got:
            make_layer(text)() if not at_set_up else make_layer(text)
        assert re.search(message.format(name), str(got.value)), str(got.value)
        assert len(re.findall(layer_name, str(got.value))) == 1 and "<datum>" not in str(got.value)


def test_data_layer_in_a_net(small_lmdb):
    path, x = small_lmdb
    text = ('name: "n" layer { ' + data_layer(path, 5, 'transform_param { mean_value: 10 scale: 0.5 }')
            + " }")
    net = Net(text_format.Parse(text, pb.NetParameter()), phase="train", seed=3, verbose=False)
    assert net.blob_shapes["data"] == (5, 3, 6, 8) and net.blob_shapes["label"] == (5,)
    out = net()
    np.testing.assert_array_equal(out["data"].numpy(), (x[:5].astype(np.float32) - 10) * np.float32(0.5))
    assert out["label"].tolist() == [0, 1, 2, 3, 4]
    assert "layers.d._extra_state" in net.state_dict()


def test_single_top_data_layer(small_lmdb, make_layer):
    path, x = small_lmdb
    layer = make_layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{path}" '
                       f'batch_size: 2 backend: LMDB }}')
    assert layer.top_shapes([]) == [(2, 3, 6, 8)]
    out = layer()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 6, 8)


def test_synchronous_and_prefetched_streams_are_identical(small_lmdb, make_layer):
    path, _ = small_lmdb
    extra = 'transform_param { crop_size: 4 mirror: true }'
    a = make_layer(data_layer(path, 3, extra, prefetch=0), phase=pb.TRAIN, seed=11)
    b = make_layer(data_layer(path, 3, extra, prefetch=2), phase=pb.TRAIN, seed=11)
    for _ in range(5):
        for ta, tb in zip(a(), b()):
            assert torch.equal(ta, tb)
    b.close()


def test_train_randomness_is_a_function_of_seed_and_position(small_lmdb, make_layer):
    path, _ = small_lmdb
    extra = 'transform_param { crop_size: 4 mirror: true }'
    mk = lambda seed: make_layer(data_layer(path, 4, extra, prefetch=0), phase=pb.TRAIN, seed=seed)
    a, b, c = mk(5), mk(5), mk(6)
    seq = [a()[0] for _ in range(4)]
    # Any order of access gives the same batch for the same index.
    assert np.array_equal(b.load_batch(3)[0], seq[3].numpy())
    assert np.array_equal(b.load_batch(1)[0], seq[1].numpy())
    assert not all(np.array_equal(c.load_batch(i)[0], seq[i].numpy()) for i in range(4))
    # Batches differ in their random draws (not the same crop everywhere).
    assert len({s.numpy().tobytes() for s in seq}) == 4


def test_resume_from_extra_state_gives_the_next_batch(small_lmdb, make_layer):
    path, _ = small_lmdb
    extra = 'transform_param { crop_size: 5 mirror: true }'
    a = make_layer(data_layer(path, 3, extra), phase=pb.TRAIN, seed=21)
    for _ in range(4):
        a()
    state = a.state_dict()
    assert state["_extra_state"]["batches_consumed"] == 4
    want = [a() for _ in range(3)]
    # A fresh layer built without a seed takes the saved one with the position.
    b = make_layer(data_layer(path, 3, extra), phase=pb.TRAIN, seed=None)
    b()  # already running: restoring must restart the prefetch thread at the saved position
    b.load_state_dict(state)
    got = [b() for _ in range(3)]
    for (wd, wl), (gd, gl) in zip(want, got):
        assert torch.equal(wd, gd) and torch.equal(wl, gl)
    a.close(), b.close()


def test_resume_through_net_state_dict(small_lmdb):
    path, _ = small_lmdb
    text = 'name: "n" layer { ' + data_layer(path, 4, 'transform_param { mirror: true }') + " }"
    param = text_format.Parse(text, pb.NetParameter())
    n1 = Net(param, phase="train", seed=2, verbose=False)
    for _ in range(2):
        n1()
    sd = n1.state_dict()
    nxt = n1()
    n2 = Net(param, phase="train", seed=2, verbose=False)
    n2.load_state_dict(sd)
    got = n2()
    assert torch.equal(got["data"], nxt["data"]) and torch.equal(got["label"], nxt["label"])


def test_sharding_gives_each_rank_distinct_records(tmp_path, write_records, make_layer):
    datums = [pb.Datum(channels=1, height=2, width=2, data=bytes(4), label=i) for i in range(30)]
    path = write_records(tmp_path / "db30", datums)
    ranks = [make_layer(data_layer(path, 4), phase=pb.TRAIN, rank=r, world_size=3) for r in range(3)]
    first = [labels_of(l, 2) for l in ranks]
    assert first[0] == [[0, 3, 6, 9], [12, 15, 18, 21]]
    seen = [v for r in first for b in r for v in b]
    assert sorted(seen) == list(range(24))  # disjoint, and together the first 24 records
    # TEST nets are not sharded (Caffe: only rank 0 tests).
    t = make_layer(data_layer(path, 4), phase=pb.TEST, rank=2, world_size=3)
    assert labels_of(t, 1) == [[0, 1, 2, 3]]
    for l in ranks + [t]:
        l.close()


def test_set_shard_switches_sharding(small_lmdb, make_layer):
    path, _ = small_lmdb
    layer = make_layer(data_layer(path, 2, prefetch=0))
    layer.set_shard(1, 2)
    assert labels_of(layer, 2) == [[1, 3], [5, 7]]


def test_rand_skip_is_deterministic_per_seed(small_lmdb, make_layer, data_log):
    path, _ = small_lmdb
    a = make_layer(data_layer(path, 2, data_extra="rand_skip: 8", prefetch=0), seed=4)
    b = make_layer(data_layer(path, 2, data_extra="rand_skip: 8", prefetch=0), seed=4)
    skip = a.reader.stream.skip
    assert 0 <= skip < 8 and f"Skipping first {skip} data points." in data_log
    assert labels_of(a, 1) == labels_of(b, 1) == [[skip, (skip + 1) % 10]]


def test_encoded_records_are_decoded_bgr(tmp_path, write_records, make_layer):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buf, format="PNG")
    path = write_records(tmp_path / "enc", [pb.Datum(data=buf.getvalue(), encoded=True, label=2)] * 2)
    layer = make_layer(data_layer(path, 2, prefetch=0))
    assert layer.top_shapes([]) == [(2, 3, 3, 4), (2,)]
    data, label = layer()
    assert data[0, :, 0, 0].tolist() == [30.0, 20.0, 10.0] and label.tolist() == [2.0, 2.0]


def test_errors_in_the_prefetch_thread_are_raised_in_forward(tmp_path, write_records, make_layer):
    good = pb.Datum(channels=1, height=2, width=2, data=bytes(4), label=0)
    bad = pb.Datum(channels=1, height=2, width=2, data=bytes(3), label=1)
    path = write_records(tmp_path / "broken", [good, good, bad])
    layer = make_layer(data_layer(path, 2))
    layer()
    with pytest.raises(DataError, match=r"layer 'd' \(type Data\): loading batch 1 from .*broken"):
        layer()
    with pytest.raises(DataError, match="00000002"):  # retried on a fresh thread, fails again
        layer()
    layer.close()


def test_a_backend_that_names_the_other_kind_of_database_is_an_error(tmp_path, small_lmdb, make_layer):
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(DataError, match=r"'backend: LMDB' but '.*ldb' is a LevelDB; set 'backend: LEVELDB'"):
        make_layer(data_layer(tmp_path / "ldb", 1))
    path, _ = small_lmdb
    with pytest.raises(DataError, match=r"'backend: LEVELDB' but '.*small_lmdb' is an LMDB; set 'backend: LMDB'"):
        make_layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{path}" '
                   f'batch_size: 1 backend: LEVELDB }}')
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"'.*empty' is not an LMDB or a LevelDB \(an LMDB folder holds "
                                        r"data.mdb, a LevelDB folder CURRENT\)"):
        make_layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{tmp_path}/empty" '
                   f'batch_size: 1 }}')


def test_backend_unset_on_an_lmdb_reads_it(small_lmdb, make_layer):
    path, _ = small_lmdb
    layer = make_layer(f'name: "d" type: "Data" top: "data" top: "label" '
                       f'data_param {{ source: "{path}" batch_size: 1 prefetch: 0 }}')
    assert layer()[1].tolist() == [0.0]


def test_missing_source_is_reported(tmp_path, make_layer):
    with pytest.raises(DataError, match="no such LMDB"):
        make_layer(data_layer(tmp_path / "nothing", 1))


def test_prefetch_thread_stops_when_the_layer_is_collected(small_lmdb, make_layer):
    path, _ = small_lmdb
    layer = make_layer(data_layer(path, 2))
    layer()
    name = "prefetch:d"
    assert any(t.name == name for t in threading.enumerate())
    del layer
    gc.collect()
    assert not any(t.name == name and t.is_alive() for t in threading.enumerate())


def test_close_stops_and_forward_restarts(small_lmdb, make_layer):
    path, _ = small_lmdb
    layer = make_layer(data_layer(path, 3))
    assert labels_of(layer, 1) == [[0, 1, 2]]
    layer.close()
    assert labels_of(layer, 1) == [[3, 4, 5]]
    layer.close()


# -- ImageData -------------------------------------------------------------------------------

@pytest.fixture
def image_list(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    lines = []
    for i in range(7):
        rgb = (10 * i, 100, 200 - i)
        Image.new("RGB", (6, 5), rgb).save(root / f"im {i}.png")  # a space inside the name
        lines.append(f"im {i}.png {i}")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines) + "\n")
    return root, lst


def image_layer(lst, root, batch=3, extra="", **kw):
    params = " ".join(f"{k}: {v}" for k, v in kw.items())
    return (f'name: "img" type: "ImageData" top: "data" top: "label" {extra} image_data_param {{ '
            f'source: "{lst}" root_folder: "{root}/" batch_size: {batch} {params} }}')


def test_image_data_reads_bgr_in_list_order(image_list, make_layer):
    root, lst = image_list
    layer = make_layer(image_layer(lst, root, 3))
    assert layer.top_shapes([]) == [(3, 3, 5, 6), (3,)]
    data, label = layer()
    assert label.tolist() == [0, 1, 2]
    assert data[1, :, 0, 0].tolist() == [199.0, 100.0, 10.0]  # B, G, R of (10, 100, 199)
    assert labels_of(layer, 2) == [[3, 4, 5], [6, 0, 1]]
    layer.close()


def test_image_data_resize_and_gray(image_list, make_layer):
    root, lst = image_list
    layer = make_layer(image_layer(lst, root, 2, new_height=8, new_width=4, is_color="false"))
    assert layer.top_shapes([]) == [(2, 1, 8, 4), (2,)]
    data, _ = layer()
    assert data.shape == (2, 1, 8, 4)
    assert data[0, 0, 0, 0].item() == (200 * 1868 + 100 * 9617 + 0 * 4899 + 8192) >> 14
    layer.close()


def test_image_data_shuffle_is_a_new_permutation_each_epoch(image_list, make_layer):
    root, lst = image_list
    mk = lambda seed: make_layer(image_layer(lst, root, 7, shuffle="true"), phase=pb.TRAIN, seed=seed)
    a = mk(1)
    epochs = labels_of(a, 3)
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert labels_of(mk(1), 3) == epochs
    a.close()


def test_image_lists_in_other_encodings(tmp_path, image_list, make_layer):
    """A UTF-8 byte-order mark is skipped (the first name kept it: 'no such file'); UTF-16 (Windows' "Unicode")
    is named, where its NULs made labels like '0\\x00' that were "not an integer"."""
    from netcompress.layers.data import read_image_list

    root, lst = image_list
    text = lst.read_text()
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_image_list(str(bom)) == read_image_list(str(lst))
    for codec in ("utf-16", "utf-16-le"):
        utf16 = tmp_path / f"{codec}.txt"
        utf16.write_bytes(text.encode(codec))
        with pytest.raises(DataError, match=rf"image list '{utf16}': it is UTF-16 text \(what Windows editors call "
                                            r"'Unicode'\); save it as UTF-8"):
            read_image_list(str(utf16))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\xff 1\n")
    with pytest.raises(DataError, match=f"byte {3 + len(text.encode())} is not UTF-8 text"):
        read_image_list(str(bad))  # (the offset in the file, the mark counted)


def test_a_database_or_an_hdf5_file_given_as_a_text_list_is_named(tmp_path, make_layer):
    """ImageData given an LMDB (its folder or its data.mdb), HDF5Data given the .h5 file itself rather than a
    list of them (a common slip: Caffe's source is a text file of paths): the error says what the file is (it
    said only "is a directory, expected a image list" or "byte 0 is not UTF-8 text")."""
    import h5py
    from netcompress.data.db import LmdbWriter
    from netcompress.layers.data import read_image_list

    db = tmp_path / "digits_lmdb"
    with LmdbWriter(str(db), map_size=1 << 20) as w:
        w.put(b"0", b"x")
    with pytest.raises(DataError, match=rf"cannot open image list: {db}: is a directory, expected an image list "
                                        r"\(it holds an LMDB, which a Data layer reads\)"):
        read_image_list(str(db))
    with pytest.raises(DataError, match=r"data.mdb': byte \d+ is not UTF-8 text; it is an LMDB's data.mdb, not text$"):
        read_image_list(str(db / "data.mdb"))
    h5 = tmp_path / "train.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = np.zeros((2, 3), np.float32)
        f["label"] = np.zeros(2, np.float32)
    with pytest.raises(DataError, match=rf"{h5}: byte 0 is not UTF-8 text; it is an HDF5 file, not text: "
                                        r"hdf5_data_param.source is a text file listing HDF5 files, one path a line "
                                        r"\(Caffe's\); write this file's path into one and give that"):
        make_layer(f'name: "h" type: "HDF5Data" top: "data" top: "label" '
                   f'hdf5_data_param {{ source: "{h5}" batch_size: 1 }}')
    listed = tmp_path / "train.txt"  # (as the error says)
    listed.write_text(f"{h5}\n")
    layer = make_layer(f'name: "h" type: "HDF5Data" top: "data" top: "label" '
                       f'hdf5_data_param {{ source: "{listed}" batch_size: 1 }}')
    assert layer()[0].shape == (1, 3)


def test_image_data_missing_file_names_it(tmp_path, image_list, make_layer):
    root, lst = image_list
    lst.write_text(lst.read_text() + "gone.png 9\n")
    layer = make_layer(image_layer(lst, root, 8))
    with pytest.raises(DataError, match="gone.png"):
        layer()
    layer.close()


def test_image_data_errors_name_the_layer_once(tmp_path, image_list, make_layer):
    from PIL import Image

    root, lst = image_list
    once = r"^layer 'img' \(type ImageData\): (?!.*layer 'img')"
    with pytest.raises(DataError, match=once + r"crop_size 9 is larger than the record \(5x6\)"):  # at set-up
        make_layer(image_layer(lst, root, 2, extra="transform_param { crop_size: 9 }"))
    layer = make_layer(image_layer(lst, root, 2, extra="transform_param { mean_value: 1 mean_value: 2 }"))
    with pytest.raises(DataError, match=once + r"loading batch 0 from '[^']*' failed: image [^:]*im 0.png: "
                                              r"Specify either 1 mean_value or as many as channels: 3"):
        layer()
    layer.close()
    Image.new("RGB", (7, 5)).save(root / "wide.png")
    lst.write_text("im 0.png 0\nwide.png 1\n")
    layer = make_layer(image_layer(lst, root, 2))
    with pytest.raises(DataError, match=once + r"loading batch 0 from '[^']*' failed: record [^ ]*wide.png is "
                                              r"3x5x7, the batch's first record is 3x5x6"):
        layer()
    layer.close()


def test_image_data_explains_a_name_that_ends_in_spaces(tmp_path, image_list, make_layer):
    # "im 1.png   1": Caffe splits a line at its last space, so the name is "im 1.png  " (two spaces)
    root, lst = image_list
    lst.write_text("im 0.png 0\nim 1.png   1\n")
    layer = make_layer(image_layer(lst, root, 2))
    with pytest.raises(DataError, match=r"im 1.png   \(no such file\) \(the name ends in spaces: a list line is "
                                        r"split at its last space"):
        layer()
    layer.close()


def test_image_data_requires_both_new_sizes(image_list, make_layer):
    root, lst = image_list
    from netcompress.errors import NetDefinitionError

    with pytest.raises(NetDefinitionError, match="new_height and new_width"):
        make_layer(image_layer(lst, root, 2, new_height=8))


# -- HDF5Data --------------------------------------------------------------------------------

@pytest.fixture
def h5_source(tmp_path):
    import h5py

    names = []
    for f, n in enumerate([5, 3]):
        p = tmp_path / f"part{f}.h5"
        with h5py.File(p, "w") as h:
            base = 10 * f
            vals = base + np.arange(n, dtype=np.float64)
            h["data"] = np.broadcast_to(vals[:, None, None, None], (n, 1, 2, 2)).copy()
            h["label"] = (base + np.arange(n)).astype(np.int32)
        names.append(str(p))
    src = tmp_path / "h5list.txt"
    src.write_text("\n".join(names) + "\n")
    return src


def h5_layer(src, batch=4, extra=""):
    return (f'name: "h" type: "HDF5Data" top: "data" top: "label" {extra} '
            f'hdf5_data_param {{ source: "{src}" batch_size: {batch} }}')


def test_hdf5_data_reads_files_in_order_and_wraps(h5_source, make_layer):
    layer = make_layer(h5_layer(h5_source, 3))
    assert layer.top_shapes([]) == [(3, 1, 2, 2), (3,)]
    out = [layer() for _ in range(3)]
    labels = [o[1].tolist() for o in out]
    assert labels == [[0, 1, 2], [3, 4, 10], [11, 12, 0]]
    assert out[1][0].dtype == torch.float32 and out[1][0][2, 0, 1, 1].item() == 10.0
    layer.close()


def test_hdf5_data_shuffle_is_deterministic_and_complete(h5_source, make_layer):
    mk = lambda: make_layer(h5_layer(h5_source, 8).replace("batch_size: 8", "batch_size: 8 shuffle: true"),
                            phase=pb.TRAIN, seed=9)
    a, b = mk(), mk()
    ea, eb = labels_of(a, 2), labels_of(b, 2)
    assert ea == eb and sorted(ea[0]) == [0, 1, 2, 3, 4, 10, 11, 12]
    a.close(), b.close()


def test_hdf5_data_refuses_transform_param(h5_source, make_layer):
    from netcompress.errors import NetDefinitionError

    with pytest.raises(NetDefinitionError, match="does not transform"):
        make_layer(h5_layer(h5_source, 2, "transform_param { scale: 2 }"))


def test_hdf5_missing_dataset_is_named(h5_source, make_layer):
    with pytest.raises(DataError, match="dataset 'weights'"):
        make_layer(f'name: "h" type: "HDF5Data" top: "weights" hdf5_data_param {{ source: "{h5_source}" '
                   f'batch_size: 1 }}')


# -- HDF5Output ------------------------------------------------------------------------------

def h5_output(path, *shapes, dtype=torch.float32, rank=0):
    from netcompress.layers import LayerContext, create_layer

    p = text_format.Parse(f'name: "out" type: "HDF5Output" bottom: "data" bottom: "label" '
                          f'hdf5_output_param {{ file_name: "{path}" }}', pb.LayerParameter())
    return create_layer(p, list(shapes), LayerContext(dtype=dtype, rank=rank))


def read_h5(path):
    import h5py

    with h5py.File(path, "r") as f:
        return {k: np.asarray(v) for k, v in f.items()}


def test_hdf5_output_writes_data_and_label_as_caffe_names_them(tmp_path, data_log):
    # Caffe's HDF5OutputLayerTest: the blobs read back equal what the layer was given; Caffe's legacy
    # N x C x H x W datasets (a label of shape (N,) becomes (N, 1, 1, 1)), in the net's float type
    out = tmp_path / "out.h5"
    layer = h5_output(out, (5, 8, 5, 5), (5,))
    assert layer.top_shapes([(5, 8, 5, 5), (5,)]) == []
    assert read_h5(out) == {}  # set-up creates the file, empty (Caffe's H5Fcreate)
    data = torch.randn(5, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    label = torch.arange(5, dtype=torch.float32)
    assert layer(data, label) == ()
    got = read_h5(out)
    assert sorted(got) == ["data", "label"]
    assert got["data"].dtype == np.float32 and np.array_equal(got["data"], data.numpy())
    assert got["label"].shape == (5, 1, 1, 1) and np.array_equal(got["label"].reshape(-1), label.numpy())
    assert "Saving HDF5 file " + str(out) in data_log and "Successfully saved 5 rows" in data_log
    double = h5_output(tmp_path / "d.h5", (2, 3), (2, 1), dtype=torch.float64)
    double(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    got = read_h5(tmp_path / "d.h5")
    assert got["data"].dtype == np.float64 and got["data"].shape == (2, 3, 1, 1) and got["label"].shape == (2, 1, 1, 1)


def test_hdf5_output_appends_every_forward(tmp_path):
    # Caffe can write once (a second forward fails to create the datasets again); here each forward's
    # rows are appended, and the file after each forward holds every row so far
    out = tmp_path / "out.h5"
    out.write_bytes(b"an older file")
    layer = h5_output(out, (3, 2), (3,))
    assert read_h5(out) == {}  # truncated at set-up, as Caffe's H5F_ACC_TRUNC
    batches = [(torch.full((n, 2), float(k)), torch.arange(n, dtype=torch.float32) + 10 * k)
               for k, n in enumerate([3, 1, 0, 2])]  # batch sizes may vary (e.g. after a Filter)
    for k, (d, l) in enumerate(batches):
        layer(d, l)
        got = read_h5(out)
        rows = sum(b[0].shape[0] for b in batches[:k + 1])
        assert got["data"].shape == (rows, 2, 1, 1) and got["label"].shape == (rows, 1, 1, 1)
    assert got["data"].reshape(-1, 2)[:, 0].tolist() == [0, 0, 0, 1, 3, 3]
    assert got["label"].reshape(-1).tolist() == [0, 1, 2, 10, 30, 31]
    with pytest.raises(NetDefinitionError, match=r"layer 'out' \(type HDF5Output\): cannot append items of shapes "
                                                 r"\[\[3, 1, 1\], \[1, 1, 1\]\] to the datasets of "
                                                 + re.escape(str(out))):
        layer(torch.zeros(1, 3), torch.zeros(1))
    assert read_h5(out)["data"].shape == (6, 2, 1, 1)


def test_hdf5_output_appends_in_place_and_undoes_a_failed_write(tmp_path, monkeypatch):
    import h5py

    out = tmp_path / "out.h5"
    layer = h5_output(out, (2, 2), (2,))
    layer(torch.ones(2, 2), torch.ones(2))
    inode = out.stat().st_ino
    layer(torch.full((2, 2), 2.0), torch.ones(2))
    assert out.stat().st_ino == inode  # appended to, not rewritten (the cost of a forward is its own rows)

    real = h5py.Dataset.__setitem__
    calls = []

    def broken(self, key, value):
        calls.append(self.name)
        if self.name == "/label":  # data already grown and written: the failure comes half-way
            raise OSError("disk on fire")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", broken)
    with pytest.raises(NetDefinitionError, match=rf"layer 'out' \(type HDF5Output\): Failed to write HDF5 file "
                                                 rf"{re.escape(str(out))}: disk on fire"):
        layer(torch.ones(2, 2), torch.ones(2))
    monkeypatch.undo()
    assert calls == ["/data", "/label"]
    got = read_h5(out)
    assert got["data"].shape == (4, 2, 1, 1) and got["label"].shape == (4, 1, 1, 1)  # cut back to before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    layer(torch.full((2, 2), 3.0), torch.ones(2))
    got = read_h5(out)
    assert got["data"].reshape(-1, 2)[:, 0].tolist() == [1, 1, 2, 2, 3, 3]


def test_hdf5_output_errors_name_the_layer_and_file(tmp_path):
    with pytest.raises(NetDefinitionError, match=r"\(type HDF5Output\): hdf5_output_param.file_name must name"):
        h5_output("", (2, 3), (2,))
    with pytest.raises(NetDefinitionError, match=r"\(type HDF5Output\): writes blobs of at most 4 axes .* the data "
                                                 r"bottom has shape \[2, 1, 1, 1, 1\]"):
        h5_output(tmp_path / "o.h5", (2, 1, 1, 1, 1), (2,))
    with pytest.raises(NetDefinitionError, match=r"\(type HDF5Output\): data blob and label blob must have the same "
                                                 r"batch size, got shapes \[2, 3\] and \[3\]"):
        h5_output(tmp_path / "o.h5", (2, 3), (3,))
    (tmp_path / "file").write_text("x")
    bad = tmp_path / "file" / "o.h5"
    with pytest.raises(NetDefinitionError, match=rf"layer 'out' \(type HDF5Output\): Failed to write HDF5 file: "
                                                 rf".*{re.escape(str(bad.parent))}"):
        h5_output(bad, (2, 3), (2,))
    layer = h5_output(tmp_path / "o.h5", (2, 3), (2,))
    with pytest.raises(NetDefinitionError, match="same batch size"):
        layer(torch.zeros(2, 3), torch.zeros(4))


def test_hdf5_output_writes_only_on_rank_0(tmp_path):
    layer = h5_output(tmp_path / "o.h5", (2, 3), (2,), rank=1)
    layer(torch.zeros(2, 3), torch.zeros(2))
    assert not (tmp_path / "o.h5").exists()


def test_hdf5_output_in_a_net(tmp_path):
    out = tmp_path / "dump.h5"
    text = f"""
    layer {{ name: "in" type: "Input" top: "data" top: "label" input_param {{ shape {{ dim: 3 dim: 4 }} shape {{ dim: 3 dim: 2 }} }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }}
    layer {{ name: "dump" type: "HDF5Output" bottom: "ip" bottom: "label" hdf5_output_param {{ file_name: "{out}" }} }}
    """
    net = Net(text_format.Parse(text, pb.NetParameter()), phase=pb.TRAIN, seed=1, verbose=False)
    assert read_h5(out) == {}
    gen = torch.Generator().manual_seed(0)
    ips, labels = [], []
    for _ in range(2):
        net.zero_grad()
        label = torch.randn(3, 2, generator=gen)
        net(data=torch.randn(3, 4, generator=gen), label=label)
        net.loss.backward()
        assert net.layer("ip").weight.grad is not None
        ips.append(net.blobs["ip"].detach())
        labels.append(label)
    got = read_h5(out)
    assert np.array_equal(got["data"].reshape(6, 2), torch.cat(ips).numpy())
    assert np.array_equal(got["label"].reshape(6, 2), torch.cat(labels).numpy())


# -- MemoryData ------------------------------------------------------------------------------

def memory_layer(batch=2, extra=""):
    return (f'name: "m" type: "MemoryData" top: "data" top: "label" {extra} '
            f'memory_data_param {{ batch_size: {batch} channels: 1 height: 2 width: 3 }}')


def test_memory_data_serves_arrays_in_batches_and_wraps(make_layer):
    layer = make_layer(memory_layer(2))
    assert layer.top_shapes([]) == [(2, 1, 2, 3), (2,)]
    with pytest.raises(DataError, match=r"layer 'm' \(type MemoryData\) holds no data: .*set_input_arrays"):
        layer()
    x = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.set_input_arrays(x, np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))
    got = [layer() for _ in range(3)]
    assert [g[1].tolist() for g in got] == [[0, 1], [2, 3], [0, 1]]
    assert torch.equal(got[1][0], torch.from_numpy(x[2:4]))
    layer.reset()
    assert layer()[1].tolist() == [0, 1]
    assert layer.state_dict()["_extra_state"] == {"pos": 2}


def test_memory_data_checks_arrays(make_layer):
    layer = make_layer(memory_layer(2))
    with pytest.raises(ValueError, match="multiple of batch size"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="N x 1 x 2 x 3"):
        layer.set_input_arrays(np.zeros((2, 3, 2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="same first dimension"):
        layer.set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(4, np.float32))


def test_memory_data_add_datum_vector_transforms(make_layer):
    layer = make_layer(memory_layer(2, "transform_param { scale: 0.5 mean_value: 1 }"))
    datums = [pb.Datum(channels=1, height=2, width=3, data=bytes([i] * 6), label=i) for i in (3, 5)]
    layer.add_datum_vector(datums)
    data, label = layer()
    assert data[:, 0, 0, 0].tolist() == [1.0, 2.0] and label.tolist() == [3.0, 5.0]


def test_image_data_resume_restores_seed_shuffle_and_skip(image_list, make_layer):
    root, lst = image_list
    text = image_layer(lst, root, 3, 'transform_param { mirror: true }', shuffle="true", rand_skip=5)
    a = make_layer(text, phase=pb.TRAIN, seed=123)
    for _ in range(4):
        a()
    state = a.state_dict()
    want = [a() for _ in range(4)]
    b = make_layer(text, phase=pb.TRAIN, seed=999)  # another seed: another skip and shuffle
    b.load_state_dict(state)
    got = [b() for _ in range(4)]
    for (wd, wl), (gd, gl) in zip(want, got):
        assert torch.equal(wl, gl) and torch.equal(wd, gd)
    a.close(), b.close()
