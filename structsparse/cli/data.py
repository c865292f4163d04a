"""Data sets for the ``structsparse`` command.

Every loader returns a :class:`Dataset`: in-memory float tensors ``[N, C, H, W]`` normalized with the
training split's per-channel mean and standard deviation, int64 labels, and the class count.

- ``digits``: scikit-learn's embedded 8×8 handwritten digits (no download; 1797 images), split
  80/20 into training and validation sets (stratified, by ``seed``).
- ``synthetic``: inputs ``x ~ N(0, I)`` shaped ``[1, 8, 8]`` labeled by a ground-truth linear model
  whose columns (input features) are group-sparse (see :func:`ground_truth_linear`).
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: read from the raw files in torchvision's
  layout under ``data_dir`` (``MNIST/raw/*-ubyte[.gz]``, ``FashionMNIST/raw/…``,
  ``cifar-10-batches-py/``, ``cifar-100-python/``) by the readers of this module, so the same code
  runs whether or not torchvision is installed. With ``download=True`` missing files are fetched,
  through ``torchvision.datasets`` when it is importable, otherwise directly from the data sets'
  public addresses. Any failure is a :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import math
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100")


class DataError(Exception):
    """A data set cannot be loaded (missing files, no network, corrupt file); one-line message."""


@dataclass
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name}: {len(self.y_train)} train, {len(self.y_val)} val, "
            f"input {self.input_shape}, {self.num_classes} classes)"
        )


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _normalize(x_train: Tensor, x_val: Tensor) -> tuple[Tensor, Tensor]:
    dims = (0, 2, 3)
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_val - mean) / std


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * val_fraction))
        va.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def _subset(x: Tensor, y: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if n is None or n >= len(y):
        return x, y
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[idx], y[idx]


# ---------------------------------------------------------------------------------------------
# embedded and synthetic data
# ---------------------------------------------------------------------------------------------


def load_digits(seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a CLI dependency
        raise DataError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from e
    d = sk_digits()
    x = d.data.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0
    y = d.target.astype(np.int64)
    tr, va = _stratified_split(y, val_fraction, seed)
    xt, xv = _normalize(torch.from_numpy(x[tr]), torch.from_numpy(x[va]))
    return Dataset("digits", xt, torch.from_numpy(y[tr]), xv, torch.from_numpy(y[va]), 10)


def ground_truth_linear(
    num_features: int, num_classes: int, num_zero: int, seed: int, scale: float = 3.0
) -> tuple[Tensor, Tensor]:
    """A ground-truth linear classifier ``(W*, b*)`` with ``W*`` of shape ``[classes, features]``
    whose first-dim groups are its *columns* (``"input"`` grouping): ``num_zero`` randomly chosen
    columns are exactly zero, the others have norm ``scale``."""
    if not 0 <= num_zero < num_features:
        raise ValueError(f"num_zero: expected 0 <= num_zero < {num_features}, got {num_zero}")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_classes, num_features, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=0, keepdim=True) * scale
    zero = torch.randperm(num_features, generator=g)[:num_zero]
    w[:, zero] = 0
    b = 0.1 * torch.randn(num_classes, generator=g, dtype=torch.float64)
    return w, b


def load_synthetic(
    seed: int = 0,
    n_train: int = 2000,
    n_val: int = 500,
    num_classes: int = 4,
    shape: tuple[int, int, int] = (1, 8, 8),
    zero_fraction: float = 0.5,
) -> Dataset:
    """Gaussian inputs labeled by :func:`ground_truth_linear` (half the input pixels irrelevant)."""
    d = math.prod(shape)
    w, b = ground_truth_linear(d, num_classes, int(d * zero_fraction), seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n_train + n_val, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + b).argmax(dim=1)
    x = x.float().reshape(-1, *shape)
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes)


# ---------------------------------------------------------------------------------------------
# raw readers (torchvision's on-disk layout)
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dt = np.dtype(_IDX_DTYPES[data[2]])
    start = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(data) - start < count * dt.itemsize:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes for shape {tuple(dims)})")
    return np.frombuffer(data, dtype=dt, count=count, offset=start).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (``.gz`` suffix: gzip-compressed). Used by tests."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + a.tobytes())


_MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def _find(raw: Path, stem: str) -> Path | None:
    for cand in (raw / stem, raw / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def _mnist_missing(name: str, root: Path) -> list[str]:
    raw = root / _MNIST_FOLDERS[name] / "raw"
    return [s for pair in _MNIST_FILES.values() for s in pair if _find(raw, s) is None]


def load_mnist_like(name: str, root: str | Path) -> Dataset:
    raw = Path(root) / _MNIST_FOLDERS[name] / "raw"
    parts = {}
    for split, (img, lab) in _MNIST_FILES.items():
        pi, pl = _find(raw, img), _find(raw, lab)
        if pi is None or pl is None:
            raise DataError(f"dataset {name!r}: {raw / (img if pi is None else lab)} not found")
        x = read_idx(pi)
        y = read_idx(pl)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"dataset {name!r}: {pi.name}/{pl.name} have shapes {x.shape}/{y.shape}")
        parts[split] = (
            torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
        )
    xt, xv = _normalize(parts["train"][0], parts["val"][0])
    return Dataset(name, xt, parts["train"][1], xv, parts["val"][1], 10)


_CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        val=["test_batch"],
        key=b"labels",
        classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        val=["test"],
        key=b"fine_labels",
        classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def _cifar_missing(name: str, root: Path) -> list[str]:
    spec = _CIFAR[name]
    folder = root / spec["folder"]
    return [f for f in spec["train"] + spec["val"] if not (folder / f).exists()]


def _read_cifar_batch(path: Path, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})") from e
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar(name: str, root: str | Path) -> Dataset:
    spec = _CIFAR[name]
    folder = Path(root) / spec["folder"]
    parts = {}
    for split in ("train", "val"):
        xs, ys = [], []
        for f in spec[split]:
            if not (folder / f).exists():
                raise DataError(f"dataset {name!r}: {folder / f} not found")
            x, y = _read_cifar_batch(folder / f, spec["key"])
            xs.append(x)
            ys.append(y)
        parts[split] = (
            torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0),
            torch.from_numpy(np.concatenate(ys)),
        )
    xt, xv = _normalize(parts["train"][0], parts["val"][0])
    return Dataset(name, xt, parts["train"][1], xv, parts["val"][1], spec["classes"])


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------


def _download_torchvision(name: str, root: Path) -> bool:
    """Fetch through torchvision.datasets when it imports; False when it is not usable."""
    try:
        import torchvision.datasets as tvd  # noqa: F401
    except Exception:  # not installed, or a build that does not match this torch
        return False
    cls = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}[
        name
    ]
    getattr(tvd, cls)(str(root), train=True, download=True)
    getattr(tvd, cls)(str(root), train=False, download=True)
    return True


def _download_direct(name: str, root: Path) -> None:
    if name in _MNIST_FOLDERS:
        raw = root / _MNIST_FOLDERS[name] / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for stem in _mnist_missing(name, root):
            urllib.request.urlretrieve(_MNIST_URLS[name] + stem + ".gz", raw / f"{stem}.gz")
    else:
        spec = _CIFAR[name]
        root.mkdir(parents=True, exist_ok=True)
        archive = root / Path(spec["url"]).name
        urllib.request.urlretrieve(spec["url"], archive)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(root)  # noqa: S202


def download(name: str, root: str | Path) -> None:
    root = Path(root)
    try:
        if not _download_torchvision(name, root):
            _download_direct(name, root)
    except Exception as e:  # network errors come in many types (URLError, HTTPError, OSError, …)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"dataset {name!r}: download to {root} failed ({msg}); are you offline?") from e


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    download_missing: bool = False,
    seed: int = 0,
    subset: int | None = None,
) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`); ``subset`` keeps that many training
    examples (chosen by ``seed``). Raises :class:`DataError` with a one-line message."""
    if name not in DATASETS:
        raise DataError(f"dataset: unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    if subset is not None and subset < 1:
        raise DataError(f"subset: expected a positive number of examples, got {subset}")
    if name == "digits":
        ds = load_digits(seed)
    elif name == "synthetic":
        ds = load_synthetic(seed)
    else:
        root = Path(data_dir)
        missing = _mnist_missing(name, root) if name in _MNIST_FOLDERS else _cifar_missing(name, root)
        if missing:
            if not download_missing:
                raise DataError(
                    f"dataset {name!r}: {len(missing)} file(s) missing under {root} (e.g. {missing[0]}); "
                    "pass --download to fetch them, or --data-dir to point at them"
                )
            download(name, root)
        ds = load_mnist_like(name, root) if name in _MNIST_FOLDERS else load_cifar(name, root)
    ds.x_train, ds.y_train = _subset(ds.x_train, ds.y_train, subset, seed)
    return ds
