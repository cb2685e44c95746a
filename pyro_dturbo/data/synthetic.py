"""Generated problems with a known truth.

:func:`clustered_sparse_regression` draws a compressed-sensing problem whose support is a
stationary binary Markov chain (the Markov-chain support of docs/algorithm.md, "Support
structures"); :func:`teacher_student` labels Gaussian inputs with a sparse linear softmax
teacher whose relevant inputs form such clusters. Both are reproducible from ``seed`` alone and
leave the global RNGs alone.
"""

from __future__ import annotations

import math

import torch

from pyro_dturbo.data.containers import ClassificationData, RegressionProblem
from pyro_dturbo.ops.chain import sample_chain

__all__ = ["clustered_sparse_regression", "teacher_student"]


def clustered_sparse_regression(
    num_obs: int,
    num_weights: int = 512,
    *,
    p01: float = 0.01,
    p10: float = 0.1,
    snr_db: float = 30.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> RegressionProblem:
    """Draw a clustered sparse regression problem.

    The support is a stationary Markov chain (``P(0->1) = p01``, ``P(1->0) = p10``), active
    weights are ``N(0, 1)``, ``X`` has i.i.d. ``N(0, 1/M)`` entries and the noise variance is set
    so that ``||X w||^2 / M`` is ``snr_db`` above it. Reproducible from ``seed`` alone; the
    global RNG is not touched.

    :param int num_obs: ``M``. :param int num_weights: ``N``.
    :returns: a :class:`RegressionProblem`.
    :raises ValueError: on non-positive sizes or probabilities outside (0, 1).
    """
    if num_obs < 1 or num_weights < 1:
        raise ValueError(f"num_obs and num_weights must be positive, got {num_obs}, {num_weights}")
    for name, p in (("p01", p01), ("p10", p10)):
        if not 0.0 < p < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    support = sample_chain(
        torch.tensor(p01, dtype=dtype),
        torch.tensor(p10, dtype=dtype),
        (num_weights,),
        generator=gen,
    )
    weight = torch.randn(num_weights, generator=gen, dtype=dtype) * support
    X = torch.randn(num_obs, num_weights, generator=gen, dtype=dtype) / math.sqrt(num_obs)
    signal = X @ weight
    power = float(signal.pow(2).mean())
    noise_var = (power if power > 0 else 1.0) / 10 ** (snr_db / 10)
    y = signal + math.sqrt(noise_var) * torch.randn(num_obs, generator=gen, dtype=dtype)
    return RegressionProblem(X, y, weight, support, 1.0 / noise_var)


def teacher_student(
    num_train: int = 2000,
    num_test: int = 1000,
    in_features: int = 64,
    num_classes: int = 4,
    *,
    p01: float = 0.1,
    p10: float = 0.2,
    weight_scale: float = 3.0,
    seed: int = 0,
) -> ClassificationData:
    """Draw data labelled by a sparse linear softmax teacher with a known support.

    The inputs that matter form clusters, drawn as one stationary binary Markov chain over the
    inputs (``P(0->1) = p01``, ``P(1->0) = p10``; at least one input is relevant), and every
    class reads every relevant input: each row of the teacher ``W`` (``num_classes x
    in_features``) has the same clustered support. This is what the data identify: softmax
    logits do not change when one vector is added to every row, so which weights *within* a
    column are zero is not identifiable, but which columns (inputs) matter is. Active weights
    are ``weight_scale * sign(z) * (1/2 + |z|)``, ``z ~ N(0, 1)``, none smaller than
    ``weight_scale / 2``.
    Inputs are ``x ~ N(0, I)`` and labels ``y ~ Categorical(logits = x W^T)``. Reproducible
    from ``seed`` alone; the global RNG is not touched.

    The support and weight are stored under ``"fc1"``, the name of a one-layer model's layer.

    :param int num_train: training examples. :param int num_test: test examples.
    :param int in_features: input dimension. :param int num_classes: number of classes (>= 2).
    :param float p01: ``P(s_t = 1 | s_{t-1} = 0)`` along a row of the support.
    :param float p10: ``P(s_t = 0 | s_{t-1} = 1)``.
    :param float weight_scale: scale of the active weights.
    :param int seed: random seed.
    :returns: data with ``support = {"fc1": bool mask}`` and ``teacher_weight = {"fc1": W}``.
    :rtype: ClassificationData
    :raises ValueError: on non-positive sizes, fewer than two classes, probabilities outside
        (0, 1) or a non-positive ``weight_scale``.

    Example::

        >>> data = teacher_student(num_train=100, num_test=50, in_features=8, num_classes=3)
        >>> data.support["fc1"].shape
        torch.Size([3, 8])
    """
    if num_train < 1 or num_test < 1 or in_features < 1:
        raise ValueError(
            f"num_train, num_test and in_features must be positive, "
            f"got {num_train}, {num_test}, {in_features}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    for label, p in (("p01", p01), ("p10", p10)):
        if not 0.0 < p < 1.0:
            raise ValueError(f"{label} must be in (0, 1), got {p}")
    if not weight_scale > 0:
        raise ValueError(f"weight_scale must be positive, got {weight_scale}")
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    # one chain over the inputs makes the clusters of relevant inputs; every class reads them
    line = sample_chain(
        torch.tensor(p01, dtype=f64), torch.tensor(p10, dtype=f64), (in_features,), generator=gen
    ).bool()
    if not line.any():
        line[int(torch.randint(in_features, (1,), generator=gen))] = True
    support = line.expand(num_classes, in_features).clone()
    z = torch.randn(num_classes, in_features, generator=gen, dtype=f64)
    weight = weight_scale * z.sign() * (0.5 + z.abs()) * support
    x = torch.randn(num_train + num_test, in_features, generator=gen, dtype=f64)
    probs = torch.softmax(x @ weight.T, dim=-1)
    y = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    x32 = x.to(torch.float32)
    return ClassificationData(
        name="teacher",
        x_train=x32[:num_train],
        y_train=y[:num_train],
        x_test=x32[num_train:],
        y_test=y[num_train:],
        num_classes=num_classes,
        input_shape=(in_features,),
        support={"fc1": support},
        teacher_weight={"fc1": weight.to(torch.float32)},
    )
