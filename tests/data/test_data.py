"""Tests for apb_ref.data: loaders (digits, IDX, CIFAR-10 on synthetic files, real Fashion-MNIST),
IDX validation, padding, seeded batching, augmentation and normalization."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from apb_ref.data import DATASETS, Dataset, batches, load_dataset, num_batches, random_crop_flip
from apb_ref.data.datasets import stratified_split
from apb_ref.data.idx import read_idx, write_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def check_dataset_contract(ds: Dataset) -> None:
    """What the training loop relies on, for any loaded dataset."""
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < ds.num_classes
    assert ds.x_test.shape[1:] == ds.image_shape == ds.x_train.shape[1:]
    assert ds.in_channels == ds.image_shape[0]
    assert ds.mean.dtype == np.float32 and ds.mean.shape == (ds.in_channels,)
    assert ds.std.dtype == np.float32 and ds.std.shape == (ds.in_channels,)
    np.testing.assert_allclose(ds.mean, ds.x_train.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(ds.std, ds.x_train.std(axis=(0, 2, 3), dtype=np.float64), rtol=1e-4)


# ------------------------------------------------------------------------------------------------ digits

def test_digits_shapes_ranges_and_classes():
    ds = load_dataset("digits")
    check_dataset_contract(ds)
    assert (len(ds.y_train), len(ds.y_test)) == (1437, 360)
    assert ds.image_shape == (1, 8, 8) and ds.num_classes == 10 and ds.augment is False
    assert ds.x_train.max() == 1.0  # 16/16: the scaling is by 16, not 255
    # Stratified: every class in both splits, each with ~20 % of its samples in test.
    train_counts, test_counts = np.bincount(ds.y_train, minlength=10), np.bincount(ds.y_test, minlength=10)
    assert train_counts.min() > 0 and test_counts.min() > 0
    frac = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(frac - 360 / 1797) < 0.01)


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    y = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # digits' class counts
    tr, te = stratified_split(y, 360, seed=0)
    assert len(te) == 360 and len(tr) == 1437
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(len(y)))  # disjoint, covers all
    tr2, te2 = stratified_split(y, 360, seed=1)
    assert not np.array_equal(te, te2) and np.array_equal(np.bincount(y[te]), np.bincount(y[te2]))


def test_digits_limits_and_pad():
    ds = load_dataset("digits", pad_to=12, limit_train=100, limit_test=7)
    check_dataset_contract(ds)
    assert ds.x_train.shape == (100, 1, 12, 12) and ds.x_test.shape == (7, 1, 12, 12)
    full = load_dataset("digits")
    np.testing.assert_array_equal(ds.x_train[:, :, 2:10, 2:10], full.x_train[:100])
    assert ds.x_train[:, :, :2].max() == 0 and ds.x_train[:, :, :, 10:].max() == 0


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="name") as e:
        load_dataset("imagenet")
    for known in DATASETS:
        assert known in str(e.value)


@pytest.mark.parametrize("kwargs, arg", [({"pad_to": 4}, "--pad-to"), ({"pad_to": 8.0}, "pad_to"),
                                         ({"limit_train": 0}, "limit_train"), ({"limit_test": -1}, "limit_test")])
def test_bad_loader_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        load_dataset("digits", **kwargs)


# --------------------------------------------------------------------------------------------------- IDX

def make_idx_dir(d: Path, n_train=12, n_test=5, size=(6, 7), classes=10, gz=True, seed=0):
    """Write four small IDX files; return the uint8 arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, size=(n_train, *size), dtype=np.uint8),
        IDX_NAMES[1]: (np.arange(n_train) % classes).astype(np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, size=(n_test, *size), dtype=np.uint8),
        IDX_NAMES[3]: (np.arange(n_test) % classes).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(d / (name + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz=gz, classes=4)
    ds = load_dataset("idx", data_dir=tmp_path)
    check_dataset_contract(ds)
    assert ds.name == "idx" and ds.num_classes == 4 and ds.image_shape == (1, 6, 7)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays[IDX_NAMES[0]].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, arrays[IDX_NAMES[1]])
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays[IDX_NAMES[2]].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_test, arrays[IDX_NAMES[3]])


def test_idx_mixed_plain_and_gz_and_mnist_name(tmp_path):
    arrays = make_idx_dir(tmp_path, gz=False)
    os.remove(tmp_path / IDX_NAMES[0])
    write_idx(tmp_path / (IDX_NAMES[0] + ".gz"), arrays[IDX_NAMES[0]])
    ds = load_dataset("mnist", data_dir=str(tmp_path), limit_train=3, limit_test=2)
    assert ds.num_classes == 10 and len(ds.y_train) == 3 and len(ds.y_test) == 2
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2])


def test_read_idx_other_dtypes(tmp_path):
    for arr in (np.arange(6, dtype=np.int32).reshape(2, 3) - 3, np.linspace(0, 1, 5, dtype=np.float32)):
        p = write_idx(tmp_path / f"a_{arr.dtype}.idx", arr)
        out = read_idx(p)
        assert out.dtype == arr.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, arr)


def test_pad_to_centres_images(tmp_path):
    make_idx_dir(tmp_path, size=(28, 28))
    ds = load_dataset("fashion_mnist", data_dir=tmp_path, pad_to=32)  # alias + explicit dir
    raw = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.name == "fashion-mnist" and ds.image_shape == (1, 32, 32) and raw.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:, :, 2:30, 2:30], raw.x_train)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(ds.x_train[:, :, border] == 0)
    with pytest.raises(ValueError, match="--pad-to"):
        load_dataset("fashion-mnist", data_dir=tmp_path, pad_to=27)


def test_idx_bad_magic(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    p = tmp_path / IDX_NAMES[0]
    raw = bytearray(p.read_bytes())
    raw[0] = 0x1F
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="magic") as e:
        load_dataset("idx", data_dir=tmp_path)
    assert str(p) in str(e.value)


def test_idx_wrong_ndim_in_magic(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    p = tmp_path / IDX_NAMES[1]
    write_idx(p, np.zeros((12, 1), np.uint8))  # labels stored as idx2
    with pytest.raises(ValueError, match="expected 1 dimension") as e:
        load_dataset("idx", data_dir=tmp_path)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    make_idx_dir(tmp_path, gz=gz)
    p = tmp_path / (IDX_NAMES[2] + (".gz" if gz else ""))
    if gz:  # a truncated *payload* inside a valid gzip stream, and a truncated gzip stream
        payload = gzip.decompress(p.read_bytes())
        p.write_bytes(gzip.compress(payload[:-10]))
        with pytest.raises(ValueError, match="truncated") as e:
            load_dataset("idx", data_dir=tmp_path)
        assert str(p) in str(e.value)
        p.write_bytes(gzip.compress(payload)[:-20])
    else:
        p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError) as e:
        load_dataset("idx", data_dir=tmp_path)
    assert str(p) in str(e.value)


def test_idx_missing_file(tmp_path):
    make_idx_dir(tmp_path)
    os.remove(tmp_path / (IDX_NAMES[3] + ".gz"))
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("idx", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and IDX_NAMES[3] in msg and all(n in msg for n in IDX_NAMES)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")


def test_idx_count_mismatch(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / IDX_NAMES[1], np.zeros(11, np.uint8))
    with pytest.raises(ValueError, match="count mismatch") as e:
        load_dataset("idx", data_dir=tmp_path)
    assert str(tmp_path / IDX_NAMES[1]) in str(e.value) and "12" in str(e.value) and "11" in str(e.value)


def test_idx_labels_out_of_range(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / IDX_NAMES[1], np.full(12, 10, np.uint8))
    with pytest.raises(ValueError, match="out of range") as e:
        load_dataset("mnist", data_dir=tmp_path)  # MNIST-style: 10 classes fixed
    assert str(tmp_path / IDX_NAMES[1]) in str(e.value)
    # Generic IDX infers classes from training labels; test labels beyond them are an error.
    make_idx_dir(tmp_path, gz=False, classes=3)
    write_idx(tmp_path / IDX_NAMES[3], np.full(5, 7, np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_needs_data_dir():
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------------------------- CIFAR-10

def write_cifar_dir(d: Path, per_batch=4, n_test=3, seed=0, protocol=2):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=protocol)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_round_trip(tmp_path, protocol):
    written = write_cifar_dir(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path)  # parent of the extracted directory works too
    check_dataset_contract(ds)
    assert ds.image_shape == (3, 32, 32) and ds.augment is True and ds.num_classes == 10
    assert len(ds.y_train) == 20 and len(ds.y_test) == 3
    data, labels = written["data_batch_2"]
    # Row layout is R plane, G plane, B plane: pixel (row 0, col 1) of channel 1 is element 1024 + 1.
    assert ds.x_train[4, 1, 0, 1] == np.float32(data[0, 1024 + 1]) / np.float32(255)
    np.testing.assert_array_equal(ds.y_train[4:8], labels)
    small = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", limit_train=6, limit_test=1)
    np.testing.assert_array_equal(small.x_train, ds.x_train[:6])
    assert small.x_test.shape == (1, 3, 32, 32)


def test_cifar_missing_and_malformed(tmp_path):
    write_cifar_dir(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3") as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value)

    write_cifar_dir(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"\(N, 3072\)") as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path / "test_batch") in str(e.value)

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(ValueError, match="labels"):
        load_dataset("cifar10", data_dir=tmp_path)

    with open(tmp_path / "test_batch", "wb") as f:  # a pickle that would run code is refused
        pickle.dump({b"data": os.getcwd, b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing"):
        load_dataset("cifar10", data_dir=tmp_path)

    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("cifar10")


# ------------------------------------------------------------------------------------------------ batches

def toy(n=50, c=2, h=6, w=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, c, h, w), dtype=np.float32), np.arange(n, dtype=np.int64)


def collect(*args, **kwargs):
    return list(batches(*args, **kwargs))


def test_batches_seeded_determinism():
    x, y = toy()
    a = collect(x, y, 8, rng=np.random.default_rng(3), augment=True)
    b = collect(x, y, 8, rng=np.random.default_rng(3), augment=True)
    c = collect(x, y, 8, rng=np.random.default_rng(4), augment=True)
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.tobytes() == xb.tobytes() and np.array_equal(ya, yb)
    assert not np.array_equal(np.concatenate([v for _, v in a]), np.concatenate([v for _, v in c]))


@pytest.mark.parametrize("n, bs", [(50, 8), (48, 8), (3, 8), (1, 1)])
def test_batches_every_sample_once(n, bs):
    x, y = toy(n)
    out = collect(x, y, bs, rng=np.random.default_rng(0))
    assert len(out) == num_batches(n, bs) == -(-n // bs)
    assert all(len(v) == bs for _, v in out[:-1]) and 1 <= len(out[-1][1]) <= bs
    seen = np.concatenate([v for _, v in out])
    assert sorted(seen.tolist()) == list(range(n))
    if n >= 4:
        assert not np.array_equal(seen, np.arange(n))  # actually shuffled
    for xb, yb in out:  # images travel with their labels
        np.testing.assert_array_equal(xb, x[yb])
        assert xb.dtype == np.float32 and xb.flags.c_contiguous and yb.dtype == np.int64


def test_batches_unshuffled_and_drop_last():
    x, y = toy(10)
    out = collect(x, y, 4, drop_last=True)
    assert len(out) == num_batches(10, 4, drop_last=True) == 2
    np.testing.assert_array_equal(np.concatenate([v for _, v in out]), np.arange(8))
    xb, _ = out[0]
    xb[:] = -1  # batches are copies: the dataset is untouched
    assert x.min() >= 0


def test_augmentation_flips_and_shifts():
    # One asymmetric image (a single bright pixel), many copies: every output must be the image
    # shifted by (dy, dx) in [-p, p] and possibly mirrored, and both must actually happen.
    h = w = 8
    p = 2
    img = np.zeros((1, h, w), np.float32)
    img[0, 3, 1] = 1.0
    x = np.repeat(img[None], 200, axis=0)
    y = np.zeros(200, np.int64)
    out = np.concatenate([b for b, _ in batches(x, y, 64, rng=np.random.default_rng(0), augment=True,
                                                crop_padding=p)])
    assert out.shape == x.shape and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.all(out.sum(axis=(1, 2, 3)) <= 1)  # a pixel can only move or fall off
    pos = [np.argwhere(o[0])[0] for o in out if o.sum() == 1]
    dys = {int(r) - 3 for r, _ in pos}
    cols = {int(c) for _, c in pos}
    assert dys <= set(range(-p, p + 1)) and len(dys) > 1                 # vertical shifts happen
    plain, mirrored = set(range(1 - p, 1 + p + 1)), set(range(w - 2 - p, w - 2 + p + 1))
    assert cols <= plain | mirrored
    assert cols & plain and cols & mirrored                                # flips happen (and not always)


def test_augmentation_is_vectorized_crop_of_padded_image():
    # Compare to a straightforward per-image reference using the same random draws.
    x, _ = toy(16, c=3, h=5, w=7)
    p = 3
    out = random_crop_flip(x, np.random.default_rng(9), p)
    rng = np.random.default_rng(9)
    dy, dx = rng.integers(0, 2 * p + 1, 16), rng.integers(0, 2 * p + 1, 16)
    flip = rng.random(16) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7]
        np.testing.assert_array_equal(out[i], ref[:, :, ::-1] if flip[i] else ref)


def test_normalization():
    rng = np.random.default_rng(1)
    x = (rng.random((400, 3, 4, 4), dtype=np.float32) * np.array([1, 2, 3], np.float32)[:, None, None]
         + np.array([0.5, -1, 2], np.float32)[:, None, None])
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    out = np.concatenate([b for b, _ in batches(x, np.zeros(400, np.int64), 64, mean=mean, std=std)])
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    assert out.dtype == np.float32


@pytest.mark.parametrize("kwargs, arg", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
    ({"y": np.zeros(9, np.int64)}, "y"), ({"augment": True}, "rng"),
    ({"mean": [0.5, 0.5]}, "mean, std"), ({"mean": [0, 0, 0], "std": [1, 1, 1]}, "mean"),
    ({"mean": [0, 0], "std": [1, 0]}, "std"), ({"crop_padding": -1}, "crop_padding"),
    ({"rng": 3}, "rng"),
])
def test_batches_argument_errors(kwargs, arg):
    x, y = toy(10)
    args = {"x": x, "y": y, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=arg):
        batches(args.pop("x"), args.pop("y"), args.pop("batch_size"), **args)  # raises before iterating


# ----------------------------------------------------------------------------------- real Fashion-MNIST

def test_real_fashion_mnist():
    if not all((FASHION_DIR / (n + ".gz")).is_file() or (FASHION_DIR / n).is_file() for n in IDX_NAMES):
        msg = f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    ds = load_dataset("fashion-mnist", pad_to=32)
    check_dataset_contract(ds)
    assert ds.x_train.shape == (60000, 1, 32, 32) and ds.x_test.shape == (10000, 1, 32, 32)
    assert ds.num_classes == 10 and ds.augment is False
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    assert 0.2 < float(ds.mean[0]) < 0.3  # Fashion-MNIST's known mean is ~0.286 at 28x28, lower when padded
