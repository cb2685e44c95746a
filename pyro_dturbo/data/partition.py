"""Federated partitions: example indices split among clients (IID, Dirichlet label skew or
label shards).

References

[1] H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas, "Communication-efficient
    learning of deep networks from decentralized data", AISTATS 2017 (label shards, Sec. 3).
[2] T.-M. H. Hsu, H. Qi, M. Brown, "Measuring the effects of non-identical data distribution
    for federated visual classification", arXiv:1909.06335, 2019 (Dirichlet label skew).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["PARTITION_SCHEMES", "partition"]

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")
"""Schemes :func:`partition` accepts."""

_DIRICHLET_ATTEMPTS = 100


def partition(
    labels: Tensor,
    num_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
    min_size: int = 1,
) -> list[Tensor]:
    """Split example indices among federated clients.

    - ``"iid"``: a random permutation cut into ``num_clients`` near-equal parts (sizes differ
      by at most one).
    - ``"dirichlet"``: label skew [2]. For each class, client proportions are drawn from
      ``Dirichlet(alpha, ..., alpha)`` and that class's shuffled examples are cut in those
      proportions; smaller ``alpha`` gives more skewed clients. The whole draw is repeated
      (at most 100 times) until every client has at least ``min_size`` examples.
    - ``"shards"``: label shards [1]. Examples are sorted by label (ties in random order), cut
      into ``num_clients * shards_per_client`` contiguous shards, and each client gets
      ``shards_per_client`` shards at random; a client sees few labels.

    Reproducible from ``seed`` alone (a ``torch.Generator``, and a NumPy ``Generator`` for the
    Dirichlet draws); the global RNGs are not touched.

    :param torch.Tensor labels: ``(n,)`` integer labels (only the length matters for
        ``"iid"``).
    :param int num_clients: number of clients, between 1 and ``n``.
    :param str scheme: one of :data:`PARTITION_SCHEMES`.
    :param float alpha: Dirichlet concentration (``"dirichlet"`` only), positive.
    :param int shards_per_client: shards per client (``"shards"`` only), positive.
    :param int seed: random seed.
    :param int min_size: the fewest examples a client may get (``"dirichlet"`` only).
    :returns: one sorted ``int64`` index tensor (on the CPU) per client; together they are a
        disjoint cover of ``range(n)``.
    :rtype: list[torch.Tensor]
    :raises ValueError: on a bad ``num_clients``, scheme, ``alpha``, ``shards_per_client`` or
        ``min_size``, too few examples for the shards, or when no Dirichlet draw gives every
        client ``min_size`` examples.

    Example::

        >>> labels = torch.arange(10).repeat(10)
        >>> parts = partition(labels, 5, "shards", shards_per_client=2)
        >>> [len(p) for p in parts]
        [20, 20, 20, 20, 20]
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    n = len(labels)
    if not 1 <= num_clients <= n:
        raise ValueError(f"num_clients must be between 1 and the {n} examples, got {num_clients}")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(
            f"unknown partition scheme {scheme!r}; valid ones are {', '.join(PARTITION_SCHEMES)}"
        )
    labels = labels.detach().cpu().long()
    if scheme == "iid":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        parts = list(torch.tensor_split(perm, num_clients))
    elif scheme == "dirichlet":
        parts = _dirichlet_partition(labels, num_clients, alpha, seed, min_size)
    else:
        parts = _shard_partition(labels, num_clients, shards_per_client, seed)
    return [torch.sort(p).values.to(torch.int64) for p in parts]


def _dirichlet_partition(
    labels: Tensor, num_clients: int, alpha: float, seed: int, min_size: int
) -> list[Tensor]:
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if min_size < 0 or min_size * num_clients > len(labels):
        raise ValueError(
            f"min_size={min_size} for {num_clients} clients is impossible with "
            f"{len(labels)} examples"
        )
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(_DIRICHLET_ATTEMPTS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.round(np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for bucket, part in zip(buckets, np.split(idx, cuts), strict=True):
                bucket.append(part)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            return [torch.from_numpy(p.astype(np.int64)) for p in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) draw in {_DIRICHLET_ATTEMPTS} gave each of "
        f"{num_clients} clients at least {min_size} examples; raise alpha or lower min_size"
    )


def _shard_partition(
    labels: Tensor, num_clients: int, shards_per_client: int, seed: int
) -> list[Tensor]:
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be positive, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ValueError(
            f"{num_clients} clients x {shards_per_client} shards = {num_shards} shards "
            f"exceeds the {len(labels)} examples"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    order = perm[torch.argsort(labels[perm], stable=True)]
    shards = torch.tensor_split(order, num_shards)
    owner = torch.randperm(num_shards, generator=gen).view(num_clients, shards_per_client)
    return [torch.cat([shards[s] for s in row.tolist()]) for row in owner]
