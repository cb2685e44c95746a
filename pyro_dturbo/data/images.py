"""Image classification sets read from a data root in the on-disk layout of
``torchvision.datasets`` (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100); torchvision is only
needed to download them."""

from __future__ import annotations

import gzip
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_dturbo.data.containers import ClassificationData

__all__ = ["IMAGE_DATASETS", "load_image_dataset"]


@dataclass(frozen=True)
class _ImageSet:
    """Where torchvision keeps an image data set, and how to normalise it."""

    torchvision_class: str
    file_format: str  # "idx" (MNIST-style) or "cifar" (python pickles)
    folder: tuple[str, ...]  # relative to the data root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    num_classes: int
    mean: tuple[float, ...]  # per channel, of pixels scaled to [0, 1]
    std: tuple[float, ...]


_MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IMAGE_SETS = {
    "mnist": _ImageSet(
        "MNIST", "idx", ("MNIST", "raw"), _MNIST_TRAIN, _MNIST_TEST, 10, (0.1307,), (0.3081,)
    ),
    "fashion-mnist": _ImageSet(
        "FashionMNIST",
        "idx",
        ("FashionMNIST", "raw"),
        _MNIST_TRAIN,
        _MNIST_TEST,
        10,
        (0.2860,),
        (0.3530,),
    ),
    "cifar10": _ImageSet(
        "CIFAR10",
        "cifar",
        ("cifar-10-batches-py",),
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _ImageSet(
        "CIFAR100",
        "cifar",
        ("cifar-100-python",),
        ("train",),
        ("test",),
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}

#: The image data sets :func:`load_image_dataset` reads, by name.
IMAGE_DATASETS: tuple[str, ...] = tuple(_IMAGE_SETS)


def _find(folder: Path, filename: str) -> Path | None:
    """The file, or its gzipped copy (torchvision keeps both after a download)."""
    for path in (folder / filename, folder / f"{filename}.gz"):
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _read_idx(path: Path, ndim: int) -> Tensor:
    """Read an unsigned-byte IDX file (the MNIST format: a 4-byte magic, big-endian sizes)."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise ValueError(f"{path} is not an unsigned-byte IDX file with {ndim} dims")
    header = 4 * (ndim + 1)
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if values.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {values.size} values")
    return torch.from_numpy(values.copy()).reshape(shape)


def _read_split(file_format: str, paths: Sequence[Path]) -> tuple[Tensor, Tensor]:
    """uint8 images ``(n, C, H, W)`` and int64 labels ``(n,)`` of one split."""
    if file_format == "idx":  # an images file and a labels file
        images = _read_idx(paths[0], 3).unsqueeze(1)
        labels = _read_idx(paths[1], 1).long()
    else:  # CIFAR python pickles: uint8 rows of 3 x 32 x 32, channel-major
        data, targets = [], []
        for path in paths:
            # The batches are the pickles torchvision itself unpickles; only read trusted roots.
            entry = pickle.loads(_read_bytes(path), encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        images = torch.from_numpy(np.concatenate(data)).reshape(-1, 3, 32, 32)
        labels = torch.tensor(targets, dtype=torch.int64)
    if len(images) != len(labels):
        raise ValueError(f"{paths[0].parent}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _download_image_dataset(spec: _ImageSet, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except (ImportError, RuntimeError, OSError) as err:
        # A torchvision wheel built for another torch fails at import with a RuntimeError.
        raise ImportError(
            "downloading image datasets needs a working torchvision matching your torch: "
            f"pip install pyro-dturbo[vision] ({err})"
        ) from err
    cls = getattr(tvd, spec.torchvision_class)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def load_image_dataset(
    name: str, data_root: str | Path | None, download: bool = False, flatten: bool = True
) -> ClassificationData:
    """Read one of :data:`IMAGE_DATASETS` from ``data_root`` (see
    :func:`~pyro_dturbo.data.datasets.load_dataset`, which documents the layout and the
    normalisation).

    :param str name: one of :data:`IMAGE_DATASETS`.
    :param data_root: the folder holding the data set in torchvision's layout.
    :param bool download: fetch missing files first with ``torchvision.datasets``.
    :param bool flatten: flatten each image to a vector.
    :returns: the official train and test splits, ``float32`` inputs and ``int64`` labels.
    :rtype: ClassificationData
    :raises ValueError: without ``data_root``. :raises FileNotFoundError: on missing files.
    :raises ImportError: when a download needs torchvision and it is missing.
    """
    spec = _IMAGE_SETS[name]
    if data_root is None:
        raise ValueError(
            f"dataset {name!r} is not bundled: a data root is required "
            "(data_root=..., --data-root on the command line)"
        )
    root = Path(data_root).expanduser()
    folder = root.joinpath(*spec.folder)
    files = spec.train_files + spec.test_files
    if download and any(_find(folder, f) is None for f in files):
        _download_image_dataset(spec, root)
    missing = [f for f in files if _find(folder, f) is None]
    if missing:
        raise FileNotFoundError(
            f"dataset {name!r} not found: expected {', '.join(missing)} in {folder} "
            f"(torchvision's {spec.torchvision_class} layout). Pass download=True "
            "(--download on the command line) to fetch it, or copy the files there."
        )
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    splits = []
    for split_files in (spec.train_files, spec.test_files):
        paths = [_find(folder, f) or folder / f for f in split_files]
        images, labels = _read_split(spec.file_format, paths)
        splits.append(((images.to(torch.float32) / 255.0 - mean) / std, labels))
    (x_train, y_train), (x_test, y_test) = splits
    data = ClassificationData(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=spec.num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )
    return data.flat() if flatten else data
