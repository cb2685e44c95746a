import torch
from torch import nn

from pyro_dturbo.compression.cost import count_macs, sparse_macs
from pyro_dturbo.compression.export import export_compact
from pyro_dturbo.models.layers import to_sparse_bayes
from tests.compression.common import layer as _layer


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
