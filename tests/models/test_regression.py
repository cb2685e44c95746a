import pyro
import pytest
import torch

from pyro_dturbo.models import IndependentSupport, SparsePrior, sparse_regression_model


def test_sites_and_shapes():
    X = torch.randn(10, 12)
    trace = pyro.poutine.trace(sparse_regression_model).get_trace(X)
    assert trace.nodes["linear.support"]["value"].shape == (12,)
    assert trace.nodes["linear.precision"]["value"].shape == (12,)
    assert trace.nodes["linear.weight"]["value"].shape == (12,)
    assert trace.nodes["obs"]["value"].shape == (10,)
    assert "noise_precision" in trace.nodes
    fixed = pyro.poutine.trace(sparse_regression_model).get_trace(X, noise_precision=100.0)
    assert "noise_precision" not in fixed.nodes
    collapsed = pyro.poutine.trace(sparse_regression_model).get_trace(X, marginalize_support=True)
    assert "linear.support" not in collapsed.nodes
    assert torch.isfinite(collapsed.log_prob_sum())


def test_conditioning_on_support_controls_precision_law():
    X = torch.randn(5, 6)
    s = torch.tensor([1.0, 1, 0, 0, 0, 0])
    prior = SparsePrior(IndependentSupport(0.5), active=(1.0, 1.0), inactive=(100.0, 1e-4))
    model = pyro.poutine.condition(sparse_regression_model, data={"linear.support": s})
    rho = torch.stack(
        [
            pyro.poutine.trace(model).get_trace(X, prior=prior).nodes["linear.precision"]["value"]
            for _ in range(200)
        ]
    )
    assert float(rho[:, :2].median()) < 10 < float(rho[:, 2:].median())


def test_predictive_runs():
    X = torch.randn(8, 4)
    samples = pyro.infer.Predictive(sparse_regression_model, num_samples=7)(X)
    assert samples["obs"].shape == (7, 8)


@pytest.mark.parametrize(
    "X, y, match",
    [
        (torch.randn(5, 3), torch.randn(4), "one entry per row"),
        (torch.randn(5), None, "matrix"),
        (torch.randn(5, 3), torch.tensor([0.0, 1.0, float("nan"), 0.0, 0.0]), "NaN"),
        (torch.full((2, 2), float("inf")), None, "NaN or Inf"),
    ],
)
def test_bad_data_raise(X, y, match):
    with pytest.raises(ValueError, match=match):
        sparse_regression_model(X, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("marginalize_support", [False, True])
def test_model_follows_the_data_dtype(dtype, marginalize_support, torch_default_dtype):
    """No global default dtype is needed: every site is in X's dtype."""
    X = torch.randn(6, 5, dtype=dtype)
    trace = pyro.poutine.trace(sparse_regression_model).get_trace(
        X, marginalize_support=marginalize_support
    )
    assert trace.nodes["obs"]["value"].dtype == dtype
    assert trace.nodes["noise_precision"]["value"].dtype == dtype
    assert torch.isfinite(trace.log_prob_sum())
    samples = pyro.infer.Predictive(sparse_regression_model, num_samples=3)(X, noise_precision=10.0)
    assert samples["obs"].dtype == dtype
