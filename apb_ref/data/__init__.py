"""Datasets (digits, IDX e.g. Fashion-MNIST, CIFAR-10 batches), augmentation, seeded batching.

Typical use::

    ds = load_dataset("fashion-mnist", pad_to=32)
    for xb, yb in batches(ds.x_train, ds.y_train, 128, rng=np.random.default_rng(epoch_seed),
                          augment=ds.augment, mean=ds.mean, std=ds.std):
        ...
"""
from .augment import normalize, random_crop_flip
from .batching import batches, num_batches
from .datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset", "batches", "num_batches", "random_crop_flip", "normalize"]
