import pickle

import pytest
import torch
from torch import nn

from pyro_dturbo.compression.export import (
    InputSelect,
    export_compact,
    load_compact,
    save_compact,
    to_plain,
)
from pyro_dturbo.compression.prune import prune
from pyro_dturbo.models.layers import SparseBayesLayer, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP, DemoAlexNet, LeNet5
from tests.common import assert_close
from tests.compression.common import layer as _layer
from tests.compression.common import logit_atol


def _random_mask(layer: SparseBayesLayer, keep: float = 0.9) -> torch.Tensor:
    """Scattered zeros; the last row and column of the matrix view stay whole so that no row or
    column dies by chance (the hand-made kills below are applied afterwards)."""
    mask = torch.rand(layer.weight_loc.shape) < keep
    matrix = mask.view(layer.matrix_shape)
    matrix[-1, :] = True
    matrix[:, -1] = True
    return mask


def _set(net: nn.Module, name: str, mask: torch.Tensor, bias: dict[int, float]) -> None:
    layer = _layer(net, name)
    layer.set_mask(mask)
    with torch.no_grad():
        assert layer.bias is not None
        for unit, value in bias.items():
            layer.bias[unit] = value


def _assert_same_predictions(compact: nn.Module, net: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = net.eval()(x)
        assert_close(compact(x), expected, atol=logit_atol(), rtol=0)
        assert_close(to_plain(net)(x), expected, atol=logit_atol(), rtol=0)


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_export_mlp_removes_dead_and_unused_units():
    net = to_sparse_bayes(MLP(20, (16, 12), 5))
    m1 = _random_mask(_layer(net, "fc1"))
    m1[[0, 3]] = False  # dead neurons: ReLU(+0.7) is folded into fc2, ReLU(-0.4) = 0
    m1[:, [2, 5]] = False  # dead inputs
    m1[:, 9] = False
    m1[7, 9] = True  # input 9 feeds only neuron 7, which fc2 ignores: a cascade
    _set(net, "fc1", m1, {0: 0.7, 3: -0.4})
    m2 = _random_mask(_layer(net, "fc2"))
    m2[:, 7] = False  # fc1 neuron 7 unused
    m2[1] = False  # dead with a positive bias: folded into fc3
    m2[2] = False
    m2[2, [0, 3]] = True  # fed by dead fc1 neurons only: dead once those are folded
    _set(net, "fc2", m2, {1: 0.5, 2: 0.3})
    m3 = _random_mask(_layer(net, "fc3"))
    m3[:, 4] = False  # fc2 neuron 4 unused
    _set(net, "fc3", m3, {})

    compact = export_compact(net, (20,))
    kept_inputs = [i for i in range(20) if i not in (2, 5, 9)]
    assert isinstance(compact.input_select, InputSelect)
    assert compact.input_select.index.tolist() == kept_inputs
    assert tuple(compact.fc1.weight.shape) == (13, 17)
    assert tuple(compact.fc2.weight.shape) == (9, 13)
    assert tuple(compact.fc3.weight.shape) == (5, 9)
    assert _size(compact) < _size(to_plain(net))
    _assert_same_predictions(compact, net, torch.randn(32, 20))


def test_export_lenet5_folds_through_unpadded_conv_and_flatten():
    net = to_sparse_bayes(LeNet5(in_channels=2, num_classes=4, image_size=16))
    m = _random_mask(_layer(net, "conv1"))
    m[:, 1] = False  # input channel 1 dead
    m[[0, 2]] = False  # channel 0: ReLU(-0.3) = 0; channel 2: constant, conv2 has no padding
    _set(net, "conv1", m, {0: -0.3, 2: 0.4})
    m = _random_mask(_layer(net, "conv2"))
    m[:, 4] = False  # conv1 channel 4 unused
    m[[3, 5]] = False  # channel 3 constant, folded into fc1 over its 2 x 2 = 4 columns
    _set(net, "conv2", m, {3: 0.6, 5: -1.0})
    m = _random_mask(_layer(net, "fc1"))
    m[:, 36:40] = False  # conv2 channel 9 unused
    m[[0, 1]] = False
    _set(net, "fc1", m, {0: 0.2, 1: -0.2})
    m = _random_mask(_layer(net, "fc2"))
    m[:, 10] = False
    m[5] = False
    _set(net, "fc2", m, {5: 0.1})
    m = _random_mask(_layer(net, "fc3"))
    m[:, 7] = False
    _set(net, "fc3", m, {})

    compact = export_compact(net, (2, 16, 16))
    assert compact.input_select.index.tolist() == [0]
    assert tuple(compact.conv1.weight.shape) == (3, 1, 5, 5)
    assert tuple(compact.conv2.weight.shape) == (13, 3, 5, 5)
    assert tuple(compact.fc1.weight.shape) == (117, 13 * 4)
    assert tuple(compact.fc2.weight.shape) == (82, 117)
    assert tuple(compact.fc3.weight.shape) == (4, 82)
    _assert_same_predictions(compact, net, torch.randn(8, 2, 16, 16))


def test_export_alexnet_keeps_constant_channels_before_padded_convs():
    net = to_sparse_bayes(DemoAlexNet(in_channels=3, num_classes=10, image_size=32))
    m = _random_mask(_layer(net, "conv1"))
    m[:, 2] = False  # input channel 2 dead
    m[[0, 1, 2]] = False  # constant ReLU(0.5) before a padded conv: kept; ReLU(-0.5), ReLU(0)
    _set(net, "conv1", m, {0: 0.5, 1: -0.5, 2: 0.0})
    m = _random_mask(_layer(net, "conv3"))
    m[6] = False  # constant before the padded conv4: kept
    _set(net, "conv3", m, {6: 0.2})
    m = _random_mask(_layer(net, "conv4"))
    m[:, 5] = False  # conv3 channel 5 unused
    m[10] = False  # constant, folded into fc1 over its 3 x 3 columns
    _set(net, "conv4", m, {10: 0.3})
    m = _random_mask(_layer(net, "fc1"))
    m[:, 99:108] = False  # conv4 channel 11 unused
    m[0] = False
    _set(net, "fc1", m, {0: 1.0})

    compact = export_compact(net, (3, 32, 32))
    assert compact.input_select.index.tolist() == [0, 1]
    assert tuple(compact.conv1.weight.shape) == (4, 2, 7, 7)
    assert (compact.conv1.weight[0] == 0).all()  # the kept constant channel
    assert tuple(compact.conv2.weight.shape) == (16, 4, 5, 5)
    assert tuple(compact.conv3.weight.shape) == (31, 16, 3, 3)
    assert tuple(compact.conv4.weight.shape) == (62, 31, 3, 3)
    assert tuple(compact.fc1.weight.shape) == (119, 62 * 9)
    assert tuple(compact.fc2.weight.shape) == (84, 119)
    _assert_same_predictions(compact, net, torch.randn(4, 3, 32, 32))


def test_export_plain_chain_with_tanh_avgpool_padding_and_dropout():
    plain = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2, padding=1),  # the padded average makes a constant channel non-constant
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 4 * 4, 6),
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(6, 3, bias=False),
    )
    net = to_sparse_bayes(plain)
    m = _random_mask(_layer(net, "0"))
    m[1] = False
    _set(net, "0", m, {1: 0.8})
    m = _random_mask(_layer(net, "5"))
    m[2] = False  # dead, folded into the bias-free last layer
    _set(net, "5", m, {2: 0.9})
    net.train()
    compact = export_compact(net, (2, 6, 6))
    assert all(module.training for module in net.modules())  # modes are restored
    assert tuple(compact.get_submodule("0").weight.shape) == (3, 2, 3, 3)
    assert [name for name, _ in compact.named_children()][0] == "0"
    assert tuple(compact.get_submodule("5").weight.shape) == (5, 48)
    assert compact.get_submodule("8").bias is not None
    _assert_same_predictions(compact, net, torch.randn(8, 2, 6, 6))


def test_export_keeps_an_inert_unit_when_a_layer_dies():
    net = to_sparse_bayes(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    _set(net, "0", torch.zeros(4, 3, dtype=torch.bool), {0: 1.0, 1: -1.0, 2: 0.5, 3: 0.0})
    compact = export_compact(net, (3,))
    assert tuple(compact.get_submodule("0").weight.shape) == (1, 1)
    assert tuple(compact.get_submodule("2").weight.shape) == (2, 1)
    _assert_same_predictions(compact, net, torch.randn(5, 3))


def test_export_errors():
    with pytest.raises(ValueError, match="BatchNorm1d"):
        export_compact(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), (3,))
    with pytest.raises(ValueError, match="nn.Sequential"):
        export_compact(nn.Linear(3, 3), (3,))
    with pytest.raises(ValueError, match="Flatten"):
        export_compact(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(3, 2)), (1, 5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        export_compact(nn.Sequential(nn.Linear(3, 3)), (4,))


def test_to_plain_is_plain_and_equal():
    net = to_sparse_bayes(MLP(6, (5,), 3))
    prune(net, rule="magnitude", threshold=0.2)
    plain = to_plain(net)
    assert not any(isinstance(m, SparseBayesLayer) for m in plain.modules())
    assert isinstance(plain.fc1, nn.Linear)
    x = torch.randn(4, 6)
    assert_close(plain(x), net.eval()(x), atol=1e-12, rtol=0)


def test_save_compact_and_load_compact_round_trip(tmp_path):
    """A compact conv model with an input selection, saved as one file, loads back (with
    ``weights_only=True``) in eval mode and predicts what the in-memory model does."""
    net = to_sparse_bayes(LeNet5(in_channels=2, num_classes=4, image_size=16))
    mask = _random_mask(_layer(net, "conv1"))
    mask[:, 1] = False  # input channel 1 dead: an InputSelect leads the compact model
    _set(net, "conv1", mask, {})
    mask = _random_mask(_layer(net, "fc1"))
    mask[[0, 1]] = False
    _set(net, "fc1", mask, {0: 0.2, 1: -0.2})
    compact = export_compact(net, (2, 16, 16))
    assert isinstance(compact.input_select, InputSelect)
    path = save_compact(compact, tmp_path / "sub" / "compact.pt")
    loaded = load_compact(path)
    assert not loaded.training
    assert [type(m) for m in loaded.modules()] == [type(m) for m in compact.modules()]
    x = torch.randn(6, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), compact(x))
    # the plain recipe works too (a trusted file)
    plain = torch.load(path, weights_only=False)
    with torch.no_grad():
        assert torch.equal(plain(x), compact(x))


class _Odd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_save_compact_refuses_foreign_modules_and_load_compact_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="_Odd"):
        save_compact(nn.Sequential(nn.Linear(2, 2), _Odd()), tmp_path / "odd.pt")
    assert not (tmp_path / "odd.pt").exists()
    path = tmp_path / "foreign.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2), _Odd()), path)
    with pytest.raises(pickle.UnpicklingError):
        load_compact(path)
