import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_dturbo.inference.guide import TurboGuide
from pyro_dturbo.models import (
    SparseBayesConv2d,
    SparseBayesLinear,
    SparsePrior,
    to_sparse_bayes,
)
from pyro_dturbo.models.layers import network_kl, network_model, sparse_layers
from pyro_dturbo.models.zoo import MLP, LeNet5
from pyro_dturbo.ops.messages import GaussianMessage
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


def _layer_with_prior(kind, masked, zero_mean=False):
    """A layer with random q(w) and a random Gaussian prior N(m, 1/p) (m = 0 if asked)."""
    layer = SparseBayesLinear(5, 4) if kind == "linear" else SparseBayesConv2d(2, 3, 2)
    shape = layer.weight_loc.shape
    with torch.no_grad():
        layer.weight_loc.normal_()
        layer.weight_log_scale.uniform_(-3, 0)
    precision = torch.rand(shape) * 5 + 0.5
    mean = torch.zeros(shape) if zero_mean else torch.randn(shape)
    layer.set_prior(GaussianMessage.prior(precision, mean))
    if masked:
        layer.set_mask(torch.rand(layer.matrix_shape) < 0.5)
    return layer


@pytest.mark.parametrize("masked", [False, True], ids=["", "masked"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_kl_is_the_exact_kl_to_a_gaussian_prior(kind, masked):
    layer = _layer_with_prior(kind, masked)
    assert not torch.equal(layer.prior_mean, torch.zeros_like(layer.prior_mean))
    expected = torch.distributions.kl_divergence(
        dist.Normal(layer.weight_loc, layer.weight_scale),
        dist.Normal(layer.prior_mean, layer.prior_precision.rsqrt()),
    ).sum()
    assert_close(layer.kl(), expected, rtol=1e-5 if layer.kl().dtype == torch.float32 else 1e-10)
    assert_close(network_kl(nn.Sequential(layer)), layer.kl(), atol=0, rtol=0)


def test_kl_under_the_default_prior_is_against_a_standard_normal():
    conv = SparseBayesConv2d(2, 3, 3)
    expected = torch.distributions.kl_divergence(
        dist.Normal(conv.weight_loc, conv.weight_scale), dist.Normal(0.0, 1.0)
    ).sum()
    assert_close(network_kl(nn.Sequential(conv)), expected, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True], ids=["", "masked"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_closed_form_kl_gradient_equals_autograd(kind, masked):
    layer = _layer_with_prior(kind, masked)
    (0.3 * layer.kl()).backward()
    expected = (layer.weight_loc.grad.clone(), layer.weight_log_scale.grad.clone())
    # the gradients the docstring states
    mu, var = layer.weight_loc.detach(), layer.weight_variance.detach()
    p, m = layer.prior_precision, layer.prior_mean
    assert_close(expected, (0.3 * p * (mu - m), 0.3 * (p * var - 1)))
    layer.zero_grad(set_to_none=True)
    layer.add_kl_grad(0.3)
    assert_close((layer.weight_loc.grad, layer.weight_log_scale.grad), expected)
    layer.add_kl_grad(0.3)  # adds to what is there
    assert_close(layer.weight_loc.grad, 2 * expected[0])


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_kl_gradient_after_a_sampling_pass_and_after_sigma_changes(kind):
    """add_kl_grad reuses the sampling pass's sigma^2 bit for bit, and recomputes it once log
    sigma has changed in place (an optimiser step); scale_grad=False leaves log sigma alone."""
    layer = _layer_with_prior(kind, masked=True)
    layer.train()
    x = torch.randn((4, 5) if kind == "linear" else (4, 2, 5, 5))
    rho = layer.prior_precision

    def expected():
        return torch.exp(2.0 * layer.weight_log_scale.detach()).mul_(rho).sub_(1.0)

    layer(x)
    layer.add_kl_grad(1.0)
    assert torch.equal(layer.weight_log_scale.grad, expected())
    layer.zero_grad(set_to_none=True)
    layer(x)
    with torch.no_grad():
        layer.weight_log_scale.add_(0.25)  # sigma moves after the forward pass
    layer.add_kl_grad(1.0)
    assert torch.equal(layer.weight_log_scale.grad, expected())
    layer.zero_grad(set_to_none=True)
    layer.deterministic = True
    layer(x).sum().backward()
    layer.add_kl_grad(1.0, scale_grad=False)
    assert layer.weight_log_scale.grad is None
    assert layer.weight_loc.grad is not None


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_zero_mean_prior_gives_the_zero_mean_numbers_bit_for_bit(kind):
    """Centralised training (N(0, 1/E[rho])) computes exactly what it did before the prior mean."""
    layer = _layer_with_prior(kind, masked=False, zero_mean=True)
    rho, mu, log_scale = layer.prior_precision, layer.weight_loc, layer.weight_log_scale
    const = 0.5 * (torch.log(rho).sum() + rho.numel())
    before = 0.5 * torch.sum(rho * (torch.exp(2.0 * log_scale) + mu * mu)) - log_scale.sum() - const
    assert torch.equal(layer.kl(), before)
    layer.add_kl_grad(0.7)
    assert torch.equal(layer.weight_loc.grad, torch.zeros_like(mu).addcmul_(rho, mu, value=0.7))


def test_set_prior_and_the_prior_property():
    layer = SparseBayesConv2d(2, 3, 2)
    shape = layer.weight_loc.shape
    precision, mean = torch.rand(shape) + 0.5, torch.randn(shape)
    # a message may come in the support's matrix shape
    cavity = GaussianMessage.prior(precision, mean).reshape(*layer.matrix_shape)
    probs = torch.rand(layer.matrix_shape)
    layer.set_prior(cavity, probs)
    assert_close(layer.prior_precision, precision)
    assert_close(layer.prior_mean, mean)
    assert_close(layer.support_probs, probs.reshape(shape))
    prior = layer.prior
    assert isinstance(prior, GaussianMessage)
    assert_close((prior.precision, prior.mean), (precision, mean))
    layer.set_prior(2 * precision)  # a tensor: precisions, zero mean (the support stays)
    assert_close(layer.prior_precision, 2 * precision)
    assert torch.equal(layer.prior_mean, torch.zeros(shape))
    assert_close(layer.support_probs, probs.reshape(shape))
    assert_close(prior.precision, precision)  # the message taken earlier is a snapshot
    improper = GaussianMessage(torch.zeros(shape), torch.zeros(shape))
    with pytest.raises(ValueError, match="proper"):
        layer.set_prior(improper)


def test_state_dict_keeps_the_prior_and_loads_one_without_a_mean():
    net = to_sparse_bayes(MLP(4, (3,), 2))
    net.fc1.set_prior(GaussianMessage.prior(torch.full((3, 4), 2.0), torch.ones(3, 4)))
    copy = to_sparse_bayes(MLP(4, (3,), 2))
    copy.load_state_dict(net.state_dict())
    assert_close(copy.fc1.prior_mean, torch.ones(3, 4))
    old = {k: v for k, v in net.state_dict().items() if not k.endswith("prior_mean")}
    copy.load_state_dict(old)  # a state dict from before the prior mean: N(0, 1/p)
    assert torch.equal(copy.fc1.prior_mean, torch.zeros(3, 4))
    assert_close(copy.fc1.prior_precision, torch.full((3, 4), 2.0))


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
    bias = net.fc1.bias.detach().clone()
    for _ in range(300):
        svi.step(x, y)
    # SVI trains the network's biases too (param sites), which never enter the param store
    assert not torch.equal(net.fc1.bias.detach(), bias)
    assert all(name.startswith("AutoNormal.") for name in pyro.get_param_store().keys())
    w = guide.median()["fc1.weight"]
    # class 1 is x0 > 0: the logit difference grows with x0 and ignores x1
    assert float(w[1, 0] - w[0, 0]) > 2.0
    assert abs(float(w[1, 1] - w[0, 1])) < 1.0


def test_layers_are_param_sites_of_network_model_outside_the_param_store():
    """Inside a Pyro model each layer's bias is its own param site ("fc1.bias", "fc2.bias"), but
    Pyro's global param store is never written."""
    net = to_sparse_bayes(MLP(4, (3,), 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    trace = pyro.poutine.trace(network_model).get_trace(net, x, y, None)
    params = {name: site for name, site in trace.nodes.items() if site["type"] == "param"}
    assert set(params) == {"fc1.bias", "fc2.bias"}
    assert params["fc2.bias"]["value"].unconstrained() is net.fc2.bias
    assert list(pyro.get_param_store().keys()) == []


def _pair_of_networks():
    first = to_sparse_bayes(MLP(6, (5,), 3))
    second = to_sparse_bayes(MLP(6, (5,), 3))
    second.load_state_dict(first.state_dict())
    return first, second


def test_networks_of_one_architecture_share_nothing():
    first, second = _pair_of_networks()
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    prior = SparsePrior.chain(0.1, 0.3)
    for net in (first, second):
        net.train()
        loss = torch.nn.functional.cross_entropy(net(x), y) + network_kl(net)
        loss.backward()
        net.eval()(x)
        pyro.poutine.trace(network_model).get_trace(net, x, y, prior)
        Predictive(network_model, num_samples=2)(net, x, None, prior)
    assert list(pyro.get_param_store().keys()) == []
    with torch.no_grad():
        first.fc1.weight_loc.add_(1.0)
        first.fc1.bias.add_(1.0)
    assert not torch.equal(first.fc1.weight_loc, second.fc1.weight_loc)
    assert not torch.equal(first.fc1.bias, second.fc1.bias)
    assert not torch.equal(first.eval()(x), second.eval()(x))


def _train(net, x, y, steps=30, seed=0):
    """A plain Adam loop on the negative ELBO: sampled forward passes plus the layers' KL."""
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            optimizer.zero_grad()
            logits = net.train()(x)
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum") + network_kl(net)
            loss.backward()
            optimizer.step()
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_two_networks_trained_in_one_process_each_equal_their_run_alone():
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    alone, _ = _pair_of_networks()
    start = {k: v.clone() for k, v in alone.state_dict().items()}
    expected = _train(alone, x, y)
    first, second = to_sparse_bayes(MLP(6, (5,), 3)), to_sparse_bayes(MLP(6, (5,), 3))
    first.load_state_dict(start)
    second.load_state_dict(start)
    # interleaved with another network of the same architecture (and a Pyro model of it)
    pyro.poutine.trace(network_model).get_trace(second, x, y, None)
    second_state = _train(second, x, y, seed=1)
    assert_close(_train(first, x, y), expected, atol=0, rtol=0)
    assert not torch.equal(second_state["fc1.weight_loc"], expected["fc1.weight_loc"])
    assert list(pyro.get_param_store().keys()) == []


def _turbo_guide(model, net, dtype):
    """A TurboGuide over every layer of ``net``, its posterior in ``dtype``."""
    guide = TurboGuide(model)
    layers = {}
    for name, layer in sparse_layers(net):
        shape = layer.weight_loc.shape
        layers[name] = dict(
            support_probs=torch.full(shape, 0.3, dtype=dtype),
            precision_shape=torch.full(shape, 2.0, dtype=dtype),
            precision_rate=torch.full(shape, 1.0, dtype=dtype),
            weight_loc=layer.weight_loc.detach().to(dtype),
            weight_scale=torch.full(shape, 0.1, dtype=dtype),
        )
    guide.set_posterior(layers)
    return guide


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sparse", [False, True], ids=["gaussian", "sparse"])
def test_network_model_follows_the_network_dtype(dtype, sparse, torch_default_dtype):
    """No global default dtype is needed: Predictive and the ELBO run in the network's dtype."""
    net = to_sparse_bayes(MLP(6, (4,), 3)).to(dtype)
    x, y = torch.randn(10, 6, dtype=dtype), torch.randint(0, 3, (10,))
    prior = SparsePrior.chain(0.1, 0.3) if sparse else None

    def model(x, y=None):
        return network_model(net, x, y, prior, num_data=50)

    guide = _turbo_guide(model, net, dtype)
    samples = Predictive(model, guide=guide, num_samples=3)(x)
    assert samples["obs"].shape == (3, 10)
    assert samples["fc1.weight"].dtype == dtype
    loss = Trace_ELBO().loss(model, guide, x, y)
    assert math.isfinite(loss)
    logits = network_model(net, x, y, prior)
    assert logits.dtype == dtype
    assert list(pyro.get_param_store().keys()) == []
