import pytest
import torch

from pyro_dturbo.data import PARTITION_SCHEMES, partition

# ---- partitions --------------------------------------------------------------------------


def _balanced_labels(num_classes: int = 10, per_class: int = 50) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)[
        torch.randperm(num_classes * per_class)
    ]


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_partition_is_a_disjoint_cover(scheme):
    labels = _balanced_labels()
    parts = partition(labels, 7, scheme, seed=1)
    assert len(parts) == 7
    for p in parts:
        assert p.dtype == torch.int64 and torch.equal(p, p.sort().values) and len(p) > 0
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(len(labels)))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_partition_depends_on_seed_only(scheme):
    labels = _balanced_labels()
    a = partition(labels, 5, scheme, seed=3)
    b = partition(labels, 5, scheme, seed=3)
    c = partition(labels, 5, scheme, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_partition_is_balanced():
    sizes = [len(p) for p in partition(torch.zeros(103, dtype=torch.int64), 10)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103


def test_shards_give_each_client_few_labels():
    labels = _balanced_labels(num_classes=10, per_class=20)  # 20 pure shards of 10
    parts = partition(labels, 10, "shards", shards_per_client=2, seed=0)
    assert all(len(p) == 20 for p in parts)
    assert all(len(labels[p].unique()) <= 2 for p in parts)
    assert len(set().union(*(labels[p].tolist() for p in parts))) == 10


def _mean_max_class_fraction(labels, parts):
    return sum(float(labels[p].bincount().max()) / len(p) for p in parts) / len(parts)


def test_dirichlet_small_alpha_is_more_skewed():
    labels = _balanced_labels(num_classes=10, per_class=100)
    skewed = partition(labels, 10, "dirichlet", alpha=0.1, seed=0)
    even = partition(labels, 10, "dirichlet", alpha=100.0, seed=0)
    assert _mean_max_class_fraction(labels, skewed) > 0.4
    assert _mean_max_class_fraction(labels, even) < 0.2


def test_dirichlet_respects_min_size_or_says_so():
    labels = _balanced_labels(num_classes=10, per_class=20)
    parts = partition(labels, 10, "dirichlet", alpha=0.3, min_size=10, seed=0)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ValueError, match="min_size"):
        partition(labels, 10, "dirichlet", alpha=0.01, min_size=19, seed=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 101}, "num_clients"),
        ({"num_clients": 2, "scheme": "powerlaw"}, "iid, dirichlet, shards"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": -1.0}, "alpha"),
        ({"num_clients": 2, "scheme": "shards", "shards_per_client": 0}, "shards_per_client"),
        ({"num_clients": 60, "scheme": "shards", "shards_per_client": 2}, "shards"),
    ],
)
def test_partition_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition(torch.arange(100) % 10, **kwargs)
