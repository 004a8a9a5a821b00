"""Dataset loaders: bundled 8x8 digits, IDX files (MNIST / Fashion-MNIST), CIFAR-10 python batches.

Nothing is downloaded and nothing is cached on disk. Every loader returns a `Dataset` of float32
images in [0, 1], shape (N, C, H, W), with the per-channel statistics of its training split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cifar import load_cifar10_arrays
from .idx import find_idx_file, read_idx

__all__ = ["Dataset", "DATASETS", "DEFAULT_DIRS", "IDX_FILES", "load_dataset", "channel_stats",
           "stratified_split", "with_validation"]

#: Known dataset names -> one-line description.
DATASETS: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 handwritten digits (1437 train / 360 test, 1x8x8, 10 classes)",
    "fashion-mnist": "Fashion-MNIST IDX files (60000 / 10000, 1x28x28, 10 classes); Debian dataset-fashion-mnist",
    "mnist": "MNIST IDX files in data_dir (60000 / 10000, 1x28x28, 10 classes)",
    "idx": "any four MNIST-style IDX files in data_dir (classes inferred from the training labels)",
    "cifar10": "CIFAR-10 python batches in data_dir (50000 / 10000, 3x32x32, 10 classes)",
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}

#: Class names by dataset (the label order of the files); datasets not listed name classes by number.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}

#: Where a dataset is looked for when ``data_dir`` is None.
DEFAULT_DIRS: dict[str, str] = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}

#: The four IDX files (each may also be gzipped, ``name + '.gz'``).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_DIGITS_TEST = 360   # 1797 samples -> 1437 train / 360 test (~20 %)
_DIGITS_SEED = 0


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A loaded dataset. Arrays are owned by the dataset; treat them as read-only.

    x_train, x_test: float32 (N, C, H, W), values in [0, 1], C-contiguous.
    y_train, y_test: int64 (N,), values in [0, num_classes).
    mean, std: float32 (C,), per-channel statistics of x_train (as stored, i.e. after padding,
        limiting and carving out the validation split); a channel with zero spread gets std 1 so
        normalizing never divides by zero.
    augment: whether random crop + horizontal flip suits this dataset as the training default.
    x_val, y_val: the validation split carved from the training images (`with_validation`); empty
        (0 images) when there is none.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    augment: bool
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self):
        if self.x_val is None:  # no validation split: empty arrays of the right shape and dtype
            object.__setattr__(self, "x_val", self.x_train[:0])
            object.__setattr__(self, "y_val", self.y_train[:0])

    @property
    def has_validation(self) -> bool:
        return len(self.y_val) > 0

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def class_names(self) -> list[str]:
        names = CLASS_NAMES.get(self.name)
        return list(names) if names and len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes}, augment={self.augment})")


# ---------------------------------------------------------------------------------------------- helpers

def _check_limit(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected None or an int >= 1, got {value!r}")
    return int(value)


def _to_float_images(u: np.ndarray, scale: float, pad_to: int | None) -> np.ndarray:
    """(N, C, H, W) integer images -> float32 C-contiguous ``u / scale``, zero-padded symmetrically to
    (pad_to, pad_to) (an odd excess goes to the bottom/right). One allocation, no intermediate copy."""
    n, c, h, w = u.shape
    if pad_to is None:
        pad_to_h, pad_to_w = h, w
    else:
        if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < max(h, w):
            raise ValueError(f"--pad-to: expected None or an int >= the image size {max(h, w)} "
                             f"(images are {h}x{w}), got {pad_to!r}")
        pad_to_h = pad_to_w = int(pad_to)
    out = np.zeros((n, c, pad_to_h, pad_to_w), dtype=np.float32)
    top, left = (pad_to_h - h) // 2, (pad_to_w - w) // 2
    np.divide(u, np.float32(scale), out=out[:, :, top:top + h, left:left + w], dtype=np.float32)
    return out


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of float images (N, C, H, W), as float32 (C,).

    Accumulates in float64 over chunks of samples, two passes, so it is accurate for 50000 images
    without a float64 copy of the whole array. Zero std becomes 1 (see `Dataset`)."""
    n, c = x.shape[:2]
    if n == 0:
        raise ValueError("x: expected at least one sample to compute channel statistics, got 0")
    count = n * int(np.prod(x.shape[2:]))
    total = np.zeros(c)
    for i in range(0, n, chunk):
        total += x[i:i + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    sq = np.zeros(c)
    for i in range(0, n, chunk):
        d = x[i:i + chunk] - mean[None, :, None, None]  # float64, one chunk only
        sq += np.einsum("nchw,nchw->c", d, d)
    std = np.sqrt(sq / count)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: returns sorted (train_idx, test_idx), int64.

    Each class gets ``count * n_test / N`` test samples rounded by largest remainder, so the total
    is exactly ``n_test``; which samples of a class go to test is drawn with ``default_rng(seed)``."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n_test / len(y)
    take = np.floor(quota).astype(np.int64)
    short = n_test - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]))
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test).astype(np.int64), test.astype(np.int64)


VAL_SEED = 0  # one split for every run of a dataset: the runs of a study validate on the same images


def with_validation(data: Dataset, fraction: float) -> Dataset:
    """`data` with a validation split of round(fraction·N) training images carved out, stratified by
    class (`stratified_split`, seed VAL_SEED); the statistics are those of the remaining training
    images. fraction 0 returns `data` unchanged."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {fraction!r}")
    if data.has_validation:
        raise ValueError(f"{data!r} already has a validation split")
    n_val = round(fraction * len(data.y_train))
    if n_val == 0:
        if fraction > 0:
            raise ValueError(f"val_fraction: {fraction} of {len(data.y_train)} training images is no image; "
                             "use 0 for no validation split or a larger fraction")
        return data
    if len(data.y_train) - n_val < 1:
        raise ValueError(f"val_fraction: {fraction} leaves no training image")
    train, val = stratified_split(data.y_train, n_val, VAL_SEED)
    x_train = np.ascontiguousarray(data.x_train[train])
    mean, std = channel_stats(x_train)
    return Dataset(name=data.name, x_train=x_train, y_train=data.y_train[train], x_test=data.x_test,
                   y_test=data.y_test, num_classes=data.num_classes, mean=mean, std=std, augment=data.augment,
                   x_val=np.ascontiguousarray(data.x_train[val]), y_val=data.y_train[val])


def _finish(name, x_train, y_train, x_test, y_test, num_classes, augment) -> Dataset:
    mean, std = channel_stats(x_train)
    return Dataset(name=name, x_train=x_train, y_train=np.ascontiguousarray(y_train, dtype=np.int64),
                   x_test=x_test, y_test=np.ascontiguousarray(y_test, dtype=np.int64),
                   num_classes=int(num_classes), mean=mean, std=std, augment=augment)


# ---------------------------------------------------------------------------------------------- loaders

def _load_digits(pad_to, limit_train, limit_test) -> Dataset:
    try:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    except ImportError as e:
        raise ImportError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from e
    bunch = load_digits()
    u = bunch.data.reshape(-1, 1, 8, 8)             # float64 in 0..16
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, _DIGITS_TEST, _DIGITS_SEED)
    tr, te = tr[:limit_train], te[:limit_test]
    return _finish("digits", _to_float_images(u[tr], 16.0, pad_to), y[tr],
                   _to_float_images(u[te], 16.0, pad_to), y[te], 10, augment=False)


def _idx_paths(name: str, data_dir: Path) -> dict[str, Path]:
    found = {key: find_idx_file(data_dir, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        hint = ("; install Debian's package (`apt-get install dataset-fashion-mnist`, as root) or pass --data-dir"
                if name == "fashion-mnist" else "; pass --data-dir pointing at a directory holding them")
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)} (or .gz) in {str(data_dir)!r}; expected the four IDX files "
            f"{', '.join(IDX_FILES.values())}, each plain or gzipped{hint}. Nothing is downloaded at run time.")
    return found  # type: ignore[return-value]


def _read_split(name, img_path, lbl_path, limit, num_classes):
    """Read one images/labels pair, check they agree, return (uint8 (n,1,H,W), int64 (n,))."""
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lbl_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 (code 0x08) images and labels, found {images.dtype} in "
                         f"{str(img_path)!r} and {labels.dtype} in {str(lbl_path)!r}")
    if len(images) != len(labels):
        raise ValueError(f"{name}: count mismatch: {str(img_path)!r} holds {len(images)} images but "
                         f"{str(lbl_path)!r} holds {len(labels)} labels; expected equal counts")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"{name}: labels in {str(lbl_path)!r} out of range: expected [0, {num_classes}), "
                         f"found max {int(labels.max())}")
    images, labels = images[:limit], labels[:limit]
    return images[:, None], labels.astype(np.int64)


def _load_idx(name, data_dir, pad_to, limit_train, limit_test) -> Dataset:
    if data_dir is None:
        if name not in DEFAULT_DIRS:
            raise ValueError(f"--data-dir: dataset {name!r} has no default location; expected a directory holding "
                             f"{', '.join(IDX_FILES.values())} (plain or .gz), got None")
        data_dir = DEFAULT_DIRS[name]
    paths = _idx_paths(name, Path(data_dir))
    fixed = None if name == "idx" else 10
    x_tr, y_tr = _read_split(name, paths["train_images"], paths["train_labels"], None, fixed)
    # Generic IDX: the classes are whatever the full training labels span; test labels must fit in them.
    num_classes = fixed if fixed is not None else int(y_tr.max()) + 1 if len(y_tr) else 0
    x_tr, y_tr = x_tr[:limit_train], y_tr[:limit_train]
    x_te, y_te = _read_split(name, paths["test_images"], paths["test_labels"], limit_test, num_classes)
    if x_te.shape[2:] != x_tr.shape[2:]:
        raise ValueError(f"{name}: image size mismatch: expected test images {x_tr.shape[2:]} like the training "
                         f"images, found {x_te.shape[2:]} in {str(paths['test_images'])!r}")
    return _finish(name, _to_float_images(x_tr, 255.0, pad_to), y_tr,
                   _to_float_images(x_te, 255.0, pad_to), y_te, num_classes, augment=False)


def _load_cifar10(data_dir, pad_to, limit_train, limit_test) -> Dataset:
    if data_dir is None:
        raise ValueError("--data-dir: dataset 'cifar10' has no default location; expected the directory holding "
                         "the python batches (data_batch_1..5, test_batch), got None")
    x_tr, y_tr, x_te, y_te = load_cifar10_arrays(data_dir, limit_train, limit_test)
    return _finish("cifar10", _to_float_images(x_tr, 255.0, pad_to), y_tr,
                   _to_float_images(x_te, 255.0, pad_to), y_te, 10, augment=True)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, pad_to: int | None = None,
                 limit_train: int | None = None, limit_test: int | None = None, val_fraction: float = 0.0) -> Dataset:
    """Load a dataset by name (see `DATASETS`; ``fashion_mnist`` and ``cifar-10`` are accepted aliases).

    data_dir: where the files are (required for mnist, idx, cifar10; fashion-mnist defaults to Debian's
        /usr/share/datasets/fashion-mnist; ignored by digits).
    pad_to: zero-pad images symmetrically to (pad_to, pad_to); must be >= the image size.
    limit_train, limit_test: keep only the first n samples of each split (quick tests).
    val_fraction: carve a stratified validation split of this fraction out of the (limited) training
        images (`with_validation`).
    """
    if not isinstance(name, str):
        raise ValueError(f"name: expected a dataset name (one of {', '.join(DATASETS)}), got {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
                         f"(aliases: {', '.join(_ALIASES)})")
    limit_train = _check_limit("limit_train", limit_train)
    limit_test = _check_limit("limit_test", limit_test)
    if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer))):
        raise ValueError(f"pad_to: expected None or an int, got {pad_to!r}")
    if key == "digits":
        data = _load_digits(pad_to, limit_train, limit_test)
    elif key == "cifar10":
        data = _load_cifar10(data_dir, pad_to, limit_train, limit_test)
    else:
        data = _load_idx(key, data_dir, pad_to, limit_train, limit_test)
    return with_validation(data, val_fraction)
