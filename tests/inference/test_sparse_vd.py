"""Sparse variational dropout: the KL approximation, the layers, the conversions, the fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyro_dturbo.compression import apply_masks, compression_report, export_compact
from pyro_dturbo.data import load_dataset
from pyro_dturbo.experiments.compress import train_dense
from pyro_dturbo.inference.network import evaluate_accuracy
from pyro_dturbo.inference.sparse_vd import (
    KL_K1,
    LOG_ALPHA_CLIP,
    SparseVDConv2d,
    SparseVDLinear,
    fit_sparse_vd,
    neg_kl_approx,
    sparse_vd_kl,
    sparse_vd_layers,
    sparse_vd_masks,
    to_pruned_plain,
    to_sparse_vd,
)
from pyro_dturbo.models.zoo import MLP, LeNet5

# ------------------------------------------------------------------------------------------
# The KL approximation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_alpha", [-4.0, -2.0, 0.0, 2.0, 4.0])
def test_kl_approximation_matches_monte_carlo(log_alpha):
    """-KL(N(theta, alpha theta^2) || log-uniform) = 0.5 log alpha - E log|1 + sqrt(alpha) z|
    + C, z ~ N(0, 1) (Molchanov et al. 2017); the paper's constant is C = -k1 (so that -KL -> 0
    as alpha -> inf), and its approximation should be within about 0.01 nats."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2_000_000, generator=gen, dtype=torch.float64)
    values = torch.log(torch.abs(1 + math.sqrt(math.exp(log_alpha)) * z))
    monte_carlo = 0.5 * log_alpha - float(values.mean()) - KL_K1
    stderr = float(values.std()) / math.sqrt(len(z))
    approx = float(neg_kl_approx(torch.tensor(log_alpha, dtype=torch.float64)))
    assert abs(approx - monte_carlo) <= 0.01 + 4 * stderr, (approx, monte_carlo)


def test_kl_approximation_is_monotone_and_vanishes_for_large_alpha():
    log_alpha = torch.linspace(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP, 401, dtype=torch.float64)
    neg_kl = neg_kl_approx(log_alpha)
    assert (neg_kl.diff() > 0).all()  # more noise, less KL
    assert (neg_kl <= 0).all()  # a KL is non-negative
    assert abs(float(neg_kl[-1])) < 1e-3  # alpha = e^10: almost no information left
    # small alpha: -KL ~ 0.5 log alpha - k1 (the weight is nearly a point mass)
    assert float(neg_kl[0]) == pytest.approx(0.5 * -LOG_ALPHA_CLIP - KL_K1, abs=1e-3)


# ------------------------------------------------------------------------------------------
# Layers and conversions
# ------------------------------------------------------------------------------------------


def _lenet5(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet5(image_size=12)


def _prune_some(net: nn.Module, fraction: float, seed: int = 0) -> None:
    """Set ``log sigma^2`` high on a random share of the weights, so they are pruned."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sparse_vd_layers(net):
            drop = torch.rand(layer.weight.shape, generator=gen) < fraction
            layer.log_sigma2[drop] = 5.0 + torch.log(layer.weight[drop].square() + 1e-16)


def test_conversion_swaps_linear_and_conv_layers_and_back():
    dense = _lenet5()
    svd = to_sparse_vd(dense)
    kinds = {name: type(layer) for name, layer in sparse_vd_layers(svd)}
    assert kinds == {
        "conv1": SparseVDConv2d,
        "conv2": SparseVDConv2d,
        "fc1": SparseVDLinear,
        "fc2": SparseVDLinear,
        "fc3": SparseVDLinear,
    }
    assert isinstance(dense.conv1, nn.Conv2d)  # the input network is not changed
    x = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    svd.eval()
    # started at the dense weights with log alpha = -10 - log theta^2: only the weights with
    # |theta| < e^-6.5 start above the threshold of 3
    start_masks = sparse_vd_masks(svd)
    for name, mask in start_masks.items():
        weight = dense.get_submodule(name).weight.detach()
        assert torch.equal(mask, weight.abs() > math.exp(-6.5)), name
    assert sum(int(m.sum()) for m in start_masks.values()) > 0.95 * sum(
        m.numel() for m in start_masks.values()
    )
    torch.testing.assert_close(svd(x), apply_masks(dense, start_masks)(x))
    _prune_some(svd, 0.7)
    plain = to_pruned_plain(svd)
    assert not any(True for _ in sparse_vd_layers(plain))
    assert isinstance(plain.conv1, nn.Conv2d) and isinstance(plain.fc1, nn.Linear)
    assert torch.equal(plain(x), svd(x))
    masks = sparse_vd_masks(svd)
    for name, mask in masks.items():
        assert torch.equal(plain.get_submodule(name).weight != 0, mask)
    kept = sum(int(m.sum()) for m in masks.values())
    report = compression_report(plain, (1, 12, 12))
    assert report["weights_kept"] == kept
    compact = export_compact(plain, (1, 12, 12))
    torch.testing.assert_close(compact(x), plain(x))


def test_local_reparameterisation_moments():
    """Training mode samples pre-activations with mean x theta^T + b and variance
    x^2 sigma^2^T (the weight-noise model's moments)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = nn.Linear(4, 3)
    layer = SparseVDLinear(base, log_sigma2=-2.0)
    layer.generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(3)).expand(200_000, 4)
    with torch.no_grad():
        out = layer.train()(x)
    mean = base(x[:1]).detach()[0]
    var = (x[0].square() * math.exp(-2.0)).sum().expand(3)
    torch.testing.assert_close(out.mean(0), mean, atol=5 * float(var.max().sqrt()) / 400, rtol=0)
    torch.testing.assert_close(out.var(0), var, rtol=0.02, atol=0)


def test_training_without_a_generator_refuses():
    layer = SparseVDLinear(nn.Linear(3, 2)).train()
    with pytest.raises(RuntimeError, match="torch.Generator"):
        layer(torch.zeros(1, 3, dtype=layer.weight.dtype))


def test_kl_is_the_sum_over_layers():
    svd = to_sparse_vd(_lenet5())
    total = sum(-neg_kl_approx(layer.log_alpha).sum() for _, layer in sparse_vd_layers(svd))
    torch.testing.assert_close(sparse_vd_kl(svd), total)


# ------------------------------------------------------------------------------------------
# Fitting
# ------------------------------------------------------------------------------------------


def _digits_run(seed: int, hidden: tuple[int, ...] = (64, 64), epochs: int = 40):
    data = load_dataset("digits", seed=seed, flatten=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dense = MLP(data.num_features, hidden, data.num_classes).to(data.x_train.dtype)
    train_dense(dense, data.x_train, data.y_train, epochs=20, batch_size=64, lr=3e-3, seed=seed)
    result = fit_sparse_vd(
        dense, data.x_train, data.y_train, epochs=epochs, batch_size=64, lr=1e-3, seed=seed
    )
    return data, dense, result


def test_digits_mlp_high_sparsity_close_to_dense_accuracy():
    """On 3 seeds of the digits MLP (64-64-64-10, 40 epochs from the dense weights), sparse VD
    prunes > 80% of the weights keeping test accuracy within 2 points of dense; at least 2 of
    the 3 seeds must pass (on the development machine all 3 did)."""
    passed, lines = 0, []
    for seed in range(3):
        data, dense, result = _digits_run(seed)
        acc_dense = evaluate_accuracy(dense, data.x_test, data.y_test)
        acc = evaluate_accuracy(result.net, data.x_test, data.y_test)
        ok = result.density < 0.2 and acc >= acc_dense - 0.02
        passed += ok
        lines.append(f"seed {seed}: density {result.density:.4f}, acc {acc:.4f} ({acc_dense:.4f})")
    assert passed >= 2, "\n".join(lines)


def test_fit_touches_no_global_rng_and_is_reproducible():
    data = load_dataset("digits", seed=0, flatten=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dense = MLP(data.num_features, (16,), data.num_classes).to(data.x_train.dtype)
    state = torch.random.get_rng_state()
    kwargs = {"epochs": 3, "batch_size": 128, "lr": 1e-3, "seed": 5, "warmup_epochs": 2}
    first = fit_sparse_vd(dense, data.x_train, data.y_train, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = fit_sparse_vd(dense, data.x_train, data.y_train, **kwargs)
    for (name, a), (_, b) in zip(
        first.net.state_dict().items(), second.net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other = fit_sparse_vd(dense, data.x_train, data.y_train, **{**kwargs, "seed": 6})
    assert not torch.equal(other.net.fc1.weight, first.net.fc1.weight)
    # the KL weight warms up linearly to 1 over warmup_epochs
    betas = [h["kl_weight"] for h in first.history]
    assert betas[0] == pytest.approx(0.5) and betas[1:] == [1.0, 1.0]


def test_pruned_plain_network_predicts_what_the_masked_means_predict():
    data, _, result = _digits_run(0, hidden=(32,), epochs=8)
    x = data.x_test.to(result.net.fc1.weight.dtype)
    with torch.no_grad():
        expected = x.flatten(1)
        for name, layer in sparse_vd_layers(result.svd_net):
            weight = layer.weight * (layer.log_alpha <= 3.0)
            expected = torch.nn.functional.linear(expected, weight, layer.bias)
            if name != "fc2":
                expected = expected.relu()
        assert torch.equal(result.net(x), result.svd_net(x))
        torch.testing.assert_close(result.net(x), expected)
    assert 0 < result.density < 1
    assert result.density == pytest.approx(result.weights_kept / result.weights)
    for name, mask in result.masks.items():
        assert torch.equal(result.net.get_submodule(name).weight != 0, mask)


def test_result_repr_is_one_line():
    _, _, result = _digits_run(0, hidden=(16,), epochs=2)
    text = repr(result)
    assert "\n" not in text and "tensor(" not in text and len(text) < 200
    assert text.startswith("SparseVDResult(epochs=2, density=")
    assert f"/{64 * 16 + 16 * 10})" in text


def test_bad_arguments_are_refused():
    net = MLP(4, (3,), 2)
    x, y = torch.zeros(6, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="epochs"):
        fit_sparse_vd(net, x, y, epochs=0, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="same"):
        fit_sparse_vd(net, x, y[:3], epochs=1, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="nn.Linear"):
        to_sparse_vd(nn.Sequential(nn.ReLU()))
