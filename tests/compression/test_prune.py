import pytest
import torch

from pyro_dturbo.compression.prune import apply_masks, magnitude_masks, prune
from pyro_dturbo.models.layers import to_sparse_bayes
from pyro_dturbo.models.zoo import MLP, LeNet5
from tests.compression.common import layer as _layer


def test_prune_rules_and_errors():
    net = to_sparse_bayes(MLP(5, (4,), 2))
    fc1 = _layer(net, "fc1")
    probs = torch.rand(fc1.weight_loc.shape)
    fc1.set_prior(torch.ones_like(probs), probs)
    masks = prune(net)
    assert set(masks) == {"fc1", "fc2"}
    assert torch.equal(masks["fc1"], probs > 0.5)
    assert fc1.mask is not None and torch.equal(fc1.mask.bool(), probs > 0.5)
    masks = prune(net, rule="support", threshold=0.8)
    assert torch.equal(masks["fc1"], probs > 0.8)
    masks = prune(net, rule="magnitude")
    assert torch.equal(masks["fc2"], _layer(net, "fc2").weight_loc.abs() > 0.01)
    masks = prune(net, rule="magnitude", threshold=0.3)
    assert torch.equal(masks["fc1"], fc1.weight_loc.abs() > 0.3)
    with pytest.raises(ValueError, match="rule"):
        prune(net, rule="random")
    with pytest.raises(ValueError, match="sparse"):
        prune(MLP(5, (4,), 2))


@pytest.mark.parametrize("density", [0.0, 0.1, 0.37, 1.0])
def test_magnitude_masks_density_and_order(density):
    net = LeNet5(image_size=16)
    masks = magnitude_masks(net, density)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert abs(kept - density * total) <= 1
    weights = {name: net.get_submodule(name).weight.detach().abs() for name in masks}
    kept_w = torch.cat([weights[n][m] for n, m in masks.items()])
    pruned_w = torch.cat([weights[n][~m] for n, m in masks.items()])
    if kept_w.numel() and pruned_w.numel():
        assert kept_w.min() >= pruned_w.max()
    baseline = apply_masks(net, masks)
    for name, mask in masks.items():
        assert (baseline.get_submodule(name).weight[~mask] == 0).all()
    with pytest.raises(ValueError):
        magnitude_masks(net, 1.5)
