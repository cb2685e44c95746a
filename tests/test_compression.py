import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pyro_dturbo.compression import (
    InputSelect,
    LayerReport,
    apply_masks,
    compression_report,
    count_macs,
    export_compact,
    magnitude_masks,
    plot_support,
    prune,
    run_length_decode,
    run_length_encode,
    sparse_macs,
    to_plain,
    weight_bytes,
)
from pyro_dturbo.models.layers import SparseBayesLayer, sparse_layers, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP, DemoAlexNet, LeNet5
from tests.common import assert_close


def _layer(net: nn.Module, name: str) -> SparseBayesLayer:
    layer = net.get_submodule(name)
    assert isinstance(layer, SparseBayesLayer)
    return layer


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
        assert_close(compact(x), expected, atol=1e-10, rtol=0)
        assert_close(to_plain(net)(x), expected, atol=1e-10, rtol=0)


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


def test_macs_hand_counted():
    net = to_sparse_bayes(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False
    _layer(net, "0").set_mask(mask)
    assert count_macs(net, (4,)) == 4 * 3 + 3 * 2
    compact = export_compact(net, (4,))
    assert count_macs(compact, (4,)) == 4 * 2 + 2 * 2
    assert sparse_macs(net, (4,)) == 8 + 6

    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    assert count_macs(conv, (1, 5, 5)) == 2 * 9 * 25
    with torch.no_grad():
        conv[0].weight.view(-1)[:5] = 0.0
    assert sparse_macs(conv, (1, 5, 5)) == 13 * 25


def test_weight_bytes_hand_counted():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert weight_bytes(mask) == {"dense": 32, "coo": 24, "rle": 4 + 2 * 8 + 3 * 4, "best": 24}
    assert weight_bytes(mask, bits=16) == {"dense": 16, "coo": 18, "rle": 26, "best": 16}
    clustered = torch.zeros(4, 8, dtype=torch.bool)
    clustered[1:3] = True  # one run of 16
    assert weight_bytes(clustered) == {"dense": 128, "coo": 128, "rle": 76, "best": 76}
    with pytest.raises(ValueError):
        weight_bytes(mask, bits=12)


def test_run_length_examples():
    runs = run_length_encode(torch.tensor([1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
    assert runs.tolist() == [[0, 2], [7, 1]]
    assert run_length_encode(torch.zeros(0, dtype=torch.bool)).shape == (0, 2)
    assert run_length_decode(torch.zeros(0, 2, dtype=torch.long), 3).tolist() == [False] * 3
    with pytest.raises(ValueError):
        run_length_encode(torch.ones(2, 2))
    with pytest.raises(ValueError):
        run_length_decode(torch.tensor([[2, 3]]), 4)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.booleans(), max_size=200))
def test_run_length_round_trip(bits):
    mask = torch.tensor(bits, dtype=torch.bool)
    runs = run_length_encode(mask)
    assert torch.equal(run_length_decode(runs, len(bits)), mask)
    assert int(runs[:, 1].sum()) == int(mask.sum())
    assert bool((runs[:, 1] > 0).all())
    assert bool((runs[1:, 0] > runs[:-1, 0] + runs[:-1, 1]).all())  # runs are maximal


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


def test_compression_report_whole_rows():
    dense = MLP(8, (6,), 3)
    net = to_sparse_bayes(dense)
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[[1, 4]] = False
    _layer(net, "fc1").set_mask(mask)
    _layer(net, "fc2").set_mask(torch.ones(3, 6, dtype=torch.bool))
    x, y = torch.randn(20, 8), torch.randint(0, 3, (20,))
    report = compression_report(net, (8,), x_test=x, y_test=y, dense_net=dense)
    json.dumps(report)
    expected_keys = {
        "layers", "weights", "weights_kept", "density", "fraction_pruned", "neurons_kept",
        "flops_dense", "flops_compressed", "flops_sparse", "flops_ratio", "bytes_dense",
        "bytes_compressed", "bytes_coo", "bytes_rle", "fraction_in_whole_units",
        "accuracy_compressed", "accuracy_posterior_mean", "accuracy_dense", "max_abs_logit_diff",
    }  # fmt: skip
    assert expected_keys <= set(report)
    assert set(report["layers"][0]) == set(LayerReport.__dataclass_fields__)
    assert report["weights"] == 8 * 6 + 6 * 3
    assert report["weights_kept"] == 8 * 4 + 6 * 3
    assert_close(report["fraction_pruned"], 1.0 - report["density"], atol=1e-12)
    assert report["neurons_kept"] == {"fc1": 4, "fc2": 3}
    assert report["flops_dense"] == 2 * (8 * 6 + 6 * 3)
    assert report["flops_compressed"] == 2 * (8 * 4 + 4 * 3)
    assert report["flops_sparse"] == 2 * (8 * 4 + 6 * 3)
    assert report["fraction_in_whole_units"] == 1.0
    assert report["max_abs_logit_diff"] < 1e-10
    assert report["accuracy_compressed"] == report["accuracy_posterior_mean"]
    layer = report["layers"][0]
    assert (layer["units"], layer["units_kept"], layer["inputs_kept"]) == (6, 4, 8)
    assert layer["macs_dense"] == 48 and layer["macs_compact"] == 32
    # 16 pruned of 48: COO 32 * 8 bytes; RLE runs [0, 8), [16, 32), [40, 48)
    assert (layer["bytes_dense"], layer["bytes_coo"], layer["bytes_rle"]) == (192, 256, 156)
    # the second layer keeps all 18 weights: dense (18 * 4) beats COO and RLE there
    assert report["bytes_compressed"] == 156 + min(18 * 4, 18 * 8, 4 + 8 + 18 * 4)
    with pytest.raises(ValueError, match="both"):
        compression_report(net, (8,), x_test=x)


def test_compression_report_scattered_and_conv_totals():
    net = to_sparse_bayes(LeNet5(num_classes=4, image_size=16))
    for _, layer in sparse_layers(net):
        rows, cols = layer.matrix_shape
        scattered = (torch.arange(rows)[:, None] + torch.arange(cols)) % 3 != 0
        layer.set_mask(scattered.reshape(layer.weight_loc.shape))
    report = compression_report(net, (1, 16, 16))
    assert report["fraction_in_whole_units"] == 0.0
    assert report["flops_dense"] == 2 * sum(r["macs_dense"] for r in report["layers"])
    assert report["flops_compressed"] == 2 * sum(r["macs_compact"] for r in report["layers"])
    assert report["flops_dense"] == report["flops_compressed"]  # no whole unit is pruned
    assert report["flops_sparse"] < report["flops_dense"]
    assert_close(report["flops_ratio"], 1.0)


def test_plot_support_writes_png(tmp_path):
    net = to_sparse_bayes(LeNet5(image_size=16))
    prune(net)
    path = plot_support(net, tmp_path / "figs" / "support.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_support(MLP(4, (3,), 2), tmp_path / "none.png")
