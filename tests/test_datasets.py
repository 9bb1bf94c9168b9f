"""Dataset readers: data root, MNIST idx (real + corrupt + download), N-MNIST, SHD, digits."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest_data import require, shared_data_dir
from conftest_data import write_shd as _write_shd

from mesu_snn.datasets import (
    EventDataset,
    load_digits,
    load_mnist,
    load_nmnist,
    load_shd,
    parse_idx,
    read_idx,
    read_nmnist_file,
    resolve_data_root,
)
from mesu_snn.datasets import mnist as mnist_mod
from mesu_snn.errors import FileFormatError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
NMNIST_TRAIN_COUNTS = [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
NMNIST_TEST_COUNTS = [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------- data root
def test_resolve_data_root_order(monkeypatch, tmp_path):
    monkeypatch.delenv("MESU_SNN_DATA", raising=False)
    assert resolve_data_root() == Path("data")
    monkeypatch.setenv("MESU_SNN_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv("MESU_SNN_DATA", "")
    assert resolve_data_root() == Path("data")
    with pytest.raises(ValueError, match="empty"):
        resolve_data_root("  ")


# ---------------------------------------------------------------- idx parsing
def test_parse_idx_roundtrip_and_types():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(a)), a)
    b = np.array([[1.5, -2.0]], dtype=np.float32)
    out = parse_idx(idx_bytes(b, 0x0D))
    assert out.dtype == np.float32 and np.array_equal(out, b)
    c = np.array([-70000, 5], dtype=np.int32)
    assert np.array_equal(parse_idx(idx_bytes(c, 0x0C)), c)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),
        (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),
        (b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"), "truncated idx header"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "trailing"),
    ],
)
def test_parse_idx_rejects_corrupt(blob, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_idx(blob, name="some-file.idx")
    assert "some-file.idx" in str(err.value)


def test_read_idx_truncated_gzip_names_file(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    bad = tmp_path / "broken-idx3-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="broken-idx3-ubyte.gz"):
        read_idx(bad)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="broken-idx3-ubyte.gz"):
        read_idx(bad)


# ---------------------------------------------------------------- real MNIST
def test_real_mnist_train_gz_counts():
    root = shared_data_dir()
    require(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    x, y = load_mnist(root, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    assert int(x.max()) == 255 and int(x.min()) == 0


def test_real_mnist_test_uncompressed_matches_gz(tmp_path, monkeypatch):
    root = shared_data_dir()
    raw = require(root / "MNIST" / "raw")
    x_gz, y_gz = load_mnist(root, "test")
    assert torch.bincount(y_gz).tolist() == MNIST_TEST_COUNTS
    dst = tmp_path / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (dst / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    monkeypatch.setenv("MESU_SNN_DATA", str(tmp_path))  # resolved via the env var
    x, y = load_mnist(split="test")
    assert torch.equal(x, x_gz) and torch.equal(y, y_gz)
    # the uncompressed file wins over a (broken) .gz next to it
    (dst / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    assert torch.equal(load_mnist(tmp_path, "test")[1], y_gz)


def _write_split(folder: Path, images: bytes, labels: bytes, prefix: str = "t10k") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


def test_load_mnist_corrupt_files_name_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    good_images = idx_bytes(np.zeros((10000, 28, 28), np.uint8))
    good_labels = idx_bytes(np.zeros(10000, np.uint8))
    _write_split(raw, good_images[:-100], good_labels)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_mnist(tmp_path, "test", verify=False)
    _write_split(raw, good_images, idx_bytes(np.zeros(10, np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*shape"):
        load_mnist(tmp_path, "test", verify=False)
    _write_split(raw, good_images, b"\x00\x00\x08\x03" + good_labels[4:])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, "test", verify=False)
    _write_split(raw, good_images, idx_bytes(np.full(10000, 12, np.uint8)))
    with pytest.raises(ValueError, match="outside 0..9"):
        load_mnist(tmp_path, "test", verify=False)
    _write_split(raw, good_images, good_labels)
    x, y = load_mnist(tmp_path, "test", verify=False)
    assert x.shape == (10000, 28, 28) and y.sum() == 0


def test_load_mnist_checks_known_checksums_when_present(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    _write_split(raw, idx_bytes(np.zeros((10000, 28, 28), np.uint8)), idx_bytes(np.zeros(10000, np.uint8)))
    with pytest.raises(FileFormatError, match=r"t10k-images-idx3-ubyte: checksum mismatch.*verify=False"):
        load_mnist(tmp_path, "test")
    monkeypatch.setenv(mnist_mod.VERIFY_ENV, "0")       # the documented opt-out, as the CLI would pass it
    assert load_mnist(tmp_path, "test")[0].shape == (10000, 28, 28)
    monkeypatch.delenv(mnist_mod.VERIFY_ENV)
    # a copy of a real archive with one changed byte, and a valid gzip of other contents
    src = require(shared_data_dir() / "MNIST" / "raw")
    gz = tmp_path / "g" / "MNIST" / "raw"
    gz.mkdir(parents=True)
    shutil.copy(src / "t10k-images-idx3-ubyte.gz", gz)
    labels = gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (gz / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels[:-1] + bytes([(labels[-1] + 1) % 10])))
    with pytest.raises(FileFormatError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch.*ec29112d"):
        load_mnist(tmp_path / "g", "test")
    shutil.copy(src / "t10k-labels-idx1-ubyte.gz", gz)
    key_count = len(mnist_mod._VERIFIED)
    x, y = load_mnist(tmp_path / "g", "test")
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert len(mnist_mod._VERIFIED) >= key_count + 1          # remembered: not hashed on the next load


def test_known_raw_md5_are_those_of_the_archives():
    src = require(shared_data_dir() / "MNIST" / "raw")
    for name, md5 in mnist_mod.MNIST_RAW_MD5.items():
        blob = (src / f"{name}.gz").read_bytes()
        assert hashlib.md5(blob).hexdigest() == mnist_mod.MNIST_MD5[f"{name}.gz"]
        assert hashlib.md5(gzip.decompress(blob)).hexdigest() == md5


def test_read_idx_refuses_huge_declared_size_before_allocating(tmp_path):
    f = tmp_path / "huge-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + (1 << 31).to_bytes(4, "big") + b"\0" * 100))
    with pytest.raises(FileFormatError, match=r"huge-idx1-ubyte.gz: declares 2147483656 bytes"):
        read_idx(f)
    f = tmp_path / "huge-idx3-ubyte"
    f.write_bytes(bytes([0, 0, 0x08, 3]) + b"".join((1 << 12).to_bytes(4, "big") for _ in range(3)))
    with pytest.raises(FileFormatError, match="huge-idx3-ubyte: idx file truncated"):
        read_idx(f)


def test_load_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path, "train", fashion=True)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz") in msg
    assert "download=True" in msg and "MESU_SNN_DATA" in msg
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_load_mnist_download_from_mirror(tmp_path, monkeypatch):
    raw = require(shared_data_dir() / "MNIST" / "raw")
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        if url.startswith("https://ossci-datasets"):
            raise urllib.error.URLError("mirror down")  # falls back to the next mirror
        return _FakeResponse((raw / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(mnist_mod, "_urlopen", fake_urlopen)
    x, y = load_mnist(tmp_path, "test", download=True)
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert requested == [
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz",
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/t10k-labels-idx1-ubyte.gz",
    ]
    got = sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir())
    assert got == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # no temp files left
    md5 = hashlib.md5((tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    assert md5 == "9fb629c4189551a2d022fa330f9573f3"
    # present and valid: no second download
    requested.clear()
    load_mnist(tmp_path, "test", download=True)
    assert requested == []


def test_load_mnist_download_md5_mismatch(tmp_path, monkeypatch):
    served = []

    def fake_urlopen(url, timeout=None):
        served.append(url)
        return _FakeResponse(b"tampered bytes")

    monkeypatch.setattr(mnist_mod, "_urlopen", fake_urlopen)
    with pytest.raises(ValueError, match="md5 mismatch") as err:
        load_mnist(tmp_path, "train", fashion=True, download=True)
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in str(err.value)
    assert served == ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"]
    folder = tmp_path / "FashionMNIST" / "raw"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_replaces_gz_with_bad_md5(tmp_path, monkeypatch):
    raw = require(shared_data_dir() / "MNIST" / "raw")
    dst = tmp_path / "MNIST" / "raw"
    dst.mkdir(parents=True)
    (dst / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"stale"))
    shutil.copy(raw / "t10k-images-idx3-ubyte.gz", dst)
    monkeypatch.setattr(
        mnist_mod, "_urlopen", lambda url, timeout=None: _FakeResponse((raw / url.rsplit("/", 1)[1]).read_bytes())
    )
    _, y = load_mnist(tmp_path, "test", download=True)
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


# ---------------------------------------------------------------- N-MNIST
def test_nmnist_small_real_counts_and_ranges():
    root = shared_data_dir()
    require(root / "NMNIST-small" / "train1K.txt")
    train = load_nmnist(root, "train")
    test = load_nmnist(root, "test", layout="small")
    assert isinstance(train, EventDataset) and train.sensor_size == (34, 34, 2)
    assert len(train) == 1000 and len(test) == 100
    assert torch.bincount(train.labels, minlength=10).tolist() == NMNIST_TRAIN_COUNTS
    assert torch.bincount(test.labels, minlength=10).tolist() == NMNIST_TEST_COUNTS
    assert int(train.num_events.sum()) == 4_133_231 and int(test.num_events.sum()) == 385_596
    for ds in (train, test):
        for ev in ds.events:
            assert ev.dtype.names == ("x", "y", "t", "p")
            assert ev["x"].min() >= 0 and ev["x"].max() <= 33
            assert ev["y"].min() >= 0 and ev["y"].max() <= 33
            assert set(np.unique(ev["p"]).tolist()) <= {0, 1}
            assert np.all(np.diff(ev["t"]) >= 0)
    ev, label = train[0]
    assert label == 5  # MNIST training image 0 is a 5
    # the first sample id 1 is train/1.bs2, decoded by tonic's reader
    from tonic.datasets import NMNIST
    from tonic.io import read_mnist_file

    ref = read_mnist_file(str(root / "NMNIST-small" / "train" / "1.bs2"), dtype=NMNIST.dtype)
    for f in "xytp":
        assert np.array_equal(ev[f], ref[f])


def test_nmnist_first_saccade_only():
    root = shared_data_dir()
    require(root / "NMNIST-small" / "test100.txt")
    full = load_nmnist(root, "test")
    first = load_nmnist(root, "test", first_saccade_only=True)
    assert all(np.all(e["t"] < 100_000) for e in first.events)
    assert 0 < first.num_events.sum() < 0.5 * full.num_events.sum()
    assert torch.equal(first.labels, full.labels)


def test_nmnist_official_layout(tmp_path):
    root = shared_data_dir()
    small = require(root / "NMNIST-small")
    picks = {"train": [(1, 5), (2, 0), (4, 1)], "test": [(60001, 7), (60002, 2)]}
    for split, folder in (("train", "Train"), ("test", "Test")):
        for sample_id, digit in picks[split]:
            d = tmp_path / "NMNIST" / folder / str(digit)
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(small / split / f"{sample_id}.bs2", d / f"{sample_id:05d}.bin")
    extra = root / "event-samples" / "sample_nmnist.bin"
    if extra.exists():  # tonic's own test recording, same format
        (tmp_path / "NMNIST" / "Train" / "9").mkdir()
        shutil.copy(extra, tmp_path / "NMNIST" / "Train" / "9" / "sample.bin")
    train = load_nmnist(tmp_path, "train")  # auto -> official
    expected = [0, 1, 5] + ([9] if extra.exists() else [])
    assert train.labels.tolist() == expected  # digits in folder order
    ref = read_nmnist_file(small / "train" / "2.bs2")
    assert np.array_equal(train.events[0], ref)
    if extra.exists():
        assert len(train.events[-1]) == 4325
    test = load_nmnist(tmp_path, "test", layout="official")
    assert test.labels.tolist() == [2, 7]
    with pytest.raises(FileNotFoundError, match="NMNIST"):
        load_nmnist(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="layout"):
        load_nmnist(tmp_path, "train", layout="zip")


def test_nmnist_bad_files(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="multiple of 5"):
        read_nmnist_file(bad)
    bad.write_bytes(bytes([40, 3, 0, 0, 1]))
    with pytest.raises(ValueError, match="34 x 34"):
        read_nmnist_file(bad)
    folder = tmp_path / "NMNIST-small"
    (folder / "test").mkdir(parents=True)
    (folder / "test100.txt").write_text("#sample #class\r\n60001\t7\r\n")
    with pytest.raises(FileNotFoundError, match="60001.bs2"):
        load_nmnist(tmp_path, "test")
    (folder / "test100.txt").write_text("#sample #class\r\n60001\tseven\r\n")
    with pytest.raises(ValueError, match="not an integer"):
        load_nmnist(tmp_path, "test")


# ---------------------------------------------------------------- SHD
def test_shd_synthetic_file_matches_tonic(tmp_path):
    rng = np.random.default_rng(0)
    times, units, labels = [], [], []
    for i in range(6):
        n = int(rng.integers(0, 50)) if i else 0  # include an empty recording
        times.append(np.sort(rng.uniform(0, 1.0, n)))
        units.append(rng.integers(0, 700, n))
        labels.append(int(rng.integers(0, 20)))
    folder = tmp_path / "SHD"
    folder.mkdir()
    _write_shd(folder / "shd_train.h5", times, units, labels)
    ds = load_shd(tmp_path, "train")
    assert ds.sensor_size == (700, 1, 1) and len(ds) == 6
    assert ds.labels.tolist() == labels
    # tonic's own __getitem__, pointed at the same file, gives identical events
    from tonic.datasets import SHD

    ref = SHD.__new__(SHD)
    ref.location_on_system, ref.data_filename = str(folder), "shd_train.h5"
    ref.transform = ref.target_transform = None
    for i in range(6):
        ev, label = ds[i]
        tev, tlabel = ref[i]
        assert ev.dtype.names == ("t", "x", "p") and label == int(tlabel)
        for f in ("t", "x", "p"):
            assert np.array_equal(ev[f], tev[f])
        assert np.array_equal(ev["x"], units[i]) and np.all(ev["p"] == 1)
        t_expect = (np.asarray(times[i], np.float16).astype(np.float64) * 1e6).astype(np.int64)
        assert np.array_equal(ev["t"], t_expect)  # microseconds


def test_shd_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="shd_test.h5"):
        load_shd(tmp_path, "test")
    with h5py.File(tmp_path / "shd_test.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="spikes/times"):
        load_shd(tmp_path, "test")
    _write_shd(tmp_path / "shd_test.h5", [[0.1]], [[700]], [0])
    with pytest.raises(ValueError, match="700"):
        load_shd(tmp_path, "test")
    (tmp_path / "shd_test.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="HDF5"):
        load_shd(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        load_shd(tmp_path, "valid")


# ---------------------------------------------------------------- digits
def test_digits_split_deterministic_and_stratified():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    assert xtr.dtype == torch.float32 and xtr.shape[1:] == (8, 8) and ytr.dtype == torch.int64
    assert len(xtr) + len(xte) == 1797 and len(xte) == 450
    assert float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    assert torch.equal(load_digits("train")[0], xtr) and torch.equal(load_digits("test")[1], yte)
    # stratified: class shares in train and test agree to within one sample
    ctr, cte = torch.bincount(ytr, minlength=10), torch.bincount(yte, minlength=10)
    assert torch.all((ctr + cte) * 0.25 - cte <= 1) and torch.all(cte - (ctr + cte) * 0.25 <= 1)
    # disjoint: every image of the full set appears exactly once
    from sklearn.datasets import load_digits as sk

    from collections import Counter

    full = (sk().images.reshape(1797, -1) / 16.0).astype(np.float32)
    both = torch.cat([xtr, xte]).reshape(1797, -1).numpy()
    assert Counter(r.tobytes() for r in both) == Counter(r.tobytes() for r in full)
    assert not torch.equal(load_digits("train", seed=1)[1], ytr)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits("train", test_fraction=1.5)
