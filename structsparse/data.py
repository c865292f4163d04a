"""The data sets of the ``structsparse`` command, kept importable here; they live in
:mod:`structsparse.cli.data`."""

from .cli.data import (
    DATASETS,
    DataError,
    Dataset,
    download,
    ground_truth_linear,
    load_cifar,
    load_dataset,
    load_digits,
    load_mnist_like,
    load_synthetic,
    read_idx,
    write_idx,
)

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "download",
    "ground_truth_linear",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_mnist_like",
    "load_synthetic",
    "read_idx",
    "write_idx",
]
