import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_dturbo.models import (
    SparseBayesConv2d,
    SparseBayesLinear,
    SparsePrior,
    to_sparse_bayes,
)
from pyro_dturbo.models.layers import network_kl, network_model, sparse_layers
from pyro_dturbo.models.zoo import MLP, LeNet5
from tests.common import assert_close


def test_to_sparse_bayes_copies_without_mutating():
    net = MLP(8, (6,), 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bayes = to_sparse_bayes(net)
    assert isinstance(net.fc1, nn.Linear)  # the input is untouched
    assert_close(net.state_dict(), before)
    names = [name for name, _ in sparse_layers(bayes)]
    assert names == ["fc1", "fc2"]
    assert_close(bayes.fc1.weight_loc.detach(), net.fc1.weight.detach())
    x = torch.randn(5, 8)
    assert_close(bayes.eval()(x), net(x), atol=1e-12)


def test_conv_net_eval_forward_matches_plain_net():
    net = LeNet5(1, 10, image_size=16)
    bayes = to_sparse_bayes(net).eval()
    x = torch.randn(2, 1, 16, 16)
    assert_close(bayes(x), net(x), atol=1e-10)
    assert bayes.conv2.matrix_shape == (16, 6 * 5 * 5)


def test_fresh_init_differs_from_weights():
    net = MLP(8, (6,), 3)
    bayes = to_sparse_bayes(net, init_from_weights=False)
    assert not torch.equal(bayes.fc1.weight_loc.detach(), net.fc1.weight.detach())


def test_bad_conversions():
    with pytest.raises(ValueError, match="unknown layers"):
        to_sparse_bayes(
            MLP(8, (6,), 3), SparsePrior.chain(layer_priors={"fc9": SparsePrior.chain()})
        )
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_sparse_bayes(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="groups=1"):
        to_sparse_bayes(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(TypeError):
        to_sparse_bayes("not a module")  # type: ignore[arg-type]


def test_kl_matches_torch_distributions():
    layer = SparseBayesLinear(5, 4)
    with torch.no_grad():
        layer.weight_log_scale.uniform_(-2, 0)
        layer.set_prior(torch.rand(4, 5) * 10 + 0.1)
    expected = torch.distributions.kl_divergence(
        dist.Normal(layer.weight_loc, layer.weight_scale),
        dist.Normal(0.0, layer.prior_precision.rsqrt()),
    ).sum()
    assert_close(layer.kl(), expected, atol=1e-10)
    conv = SparseBayesConv2d(2, 3, 3)
    expected = torch.distributions.kl_divergence(
        dist.Normal(conv.weight_loc, conv.weight_scale), dist.Normal(0.0, 1.0)
    ).sum()
    assert_close(network_kl(nn.Sequential(conv)), expected, atol=1e-8)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_reparameterisation_moments(kind):
    """Training-mode outputs have mean x.mu + b and variance x^2.sigma^2 (Kingma et al. 2015)."""
    if kind == "linear":
        layer = SparseBayesLinear(3, 2)
        x = torch.randn(1, 3).expand(40000, 3)
        mean_op = lambda w: torch.nn.functional.linear(x[:1], w)  # noqa: E731
    else:
        layer = SparseBayesConv2d(1, 2, 2)
        x = torch.randn(1, 1, 3, 3).expand(40000, 1, 3, 3)
        mean_op = lambda w: torch.nn.functional.conv2d(x[:1], w)  # noqa: E731
    with torch.no_grad():
        layer.weight_log_scale.fill_(-1.0)
        layer.bias.fill_(0.3)
    out = layer.train()(x)
    bias = layer.bias if kind == "linear" else layer.bias[:, None, None]
    expected_mean = mean_op(layer.weight_loc.detach()) + bias.detach()
    if kind == "linear":
        expected_var = torch.nn.functional.linear(x[:1] ** 2, layer.weight_variance.detach())
    else:
        expected_var = torch.nn.functional.conv2d(x[:1] ** 2, layer.weight_variance.detach())
    assert_close(out.mean(0, keepdim=True).detach(), expected_mean, atol=0.03)
    assert_close(out.var(0, keepdim=True).detach(), expected_var, rtol=0.05)


def test_mask_zeroes_weights_in_eval_and_training():
    layer = SparseBayesLinear(4, 3)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    layer.set_mask(mask)
    x = torch.randn(7, 4)
    expected = torch.nn.functional.linear(x, layer.weight_loc * mask) + layer.bias
    assert_close(layer.eval()(x).detach(), expected.detach())
    out = layer.train()(x)
    assert_close(out[:, 1].detach(), layer.bias[1].detach().expand(7))  # a dead row is its bias


def test_network_model_sites_and_predictive():
    net = to_sparse_bayes(MLP(6, (4,), 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    prior = SparsePrior.chain(0.1, 0.3)
    trace = pyro.poutine.trace(network_model).get_trace(net, x, y, prior, num_data=100)
    for layer in ("fc1", "fc2"):
        for site in ("support", "precision", "weight"):
            assert f"{layer}.{site}" in trace.nodes
    assert trace.nodes["fc1.weight"]["value"].shape == (4, 6)
    assert trace.nodes["data"]["value"].shape == (10,)  # the subsampled plate
    samples = Predictive(network_model, num_samples=3)(net, x, None, prior)
    assert samples["obs"].shape == (3, 10)


def test_gaussian_prior_model_trains_with_autonormal():
    """The SVI baseline: the same network under a Gaussian prior, fitted by AutoNormal."""
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] > 0).long()
    net = to_sparse_bayes(MLP(2, (), 2))

    def model(x, y):
        return network_model(net, x, y, None, weight_scale=3.0)

    guide = AutoNormal(model, init_scale=0.05)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, y)
    w = guide.median()["fc1.weight"]
    # class 1 is x0 > 0: the logit difference grows with x0 and ignores x1
    assert float(w[1, 0] - w[0, 0]) > 2.0
    assert abs(float(w[1, 1] - w[0, 1])) < 1.0


@pytest.mark.parametrize("layer", [SparseBayesLinear(5, 4), SparseBayesConv2d(2, 3, 2)])
def test_closed_form_kl_gradient_equals_autograd(layer):
    with torch.no_grad():
        layer.weight_log_scale.uniform_(-3, 0)
        layer.set_prior(torch.rand(layer.weight_loc.shape) * 5 + 0.5)
    (0.3 * layer.kl()).backward()
    expected = (layer.weight_loc.grad.clone(), layer.weight_log_scale.grad.clone())
    layer.zero_grad(set_to_none=True)
    layer.add_kl_grad(0.3)
    assert_close((layer.weight_loc.grad, layer.weight_log_scale.grad), expected, atol=1e-12)


def test_layers_have_their_own_pyro_param_names():
    """Inside a Pyro model each layer's bias is its own param site ("fc1.bias", "fc2.bias")."""
    net = to_sparse_bayes(MLP(4, (3,), 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    trace = pyro.poutine.trace(network_model).get_trace(net, x, y, None)
    params = {name for name, site in trace.nodes.items() if site["type"] == "param"}
    assert params == {"fc1.bias", "fc2.bias"}
    assert pyro.param("fc2.bias").shape == (2,)
