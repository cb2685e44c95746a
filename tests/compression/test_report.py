import json

import pytest
import torch

from pyro_dturbo.compression.prune import prune
from pyro_dturbo.compression.report import LayerReport, compression_report, plot_support
from pyro_dturbo.models.layers import sparse_layers, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP, LeNet5
from tests.common import assert_close
from tests.compression.common import layer as _layer
from tests.compression.common import logit_atol


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
    assert report["max_abs_logit_diff"] < logit_atol()
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
