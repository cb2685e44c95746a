"""The two ways a reply carries a client's data (``site``): the trained marginal, or the trained
mean with the variance ``1 / (p_cavity + h)`` read off the data term's curvature."""

import pytest
import torch

from pyro_dturbo.federation.client import DTurboClient
from pyro_dturbo.federation.codec import decode_message
from tests.federation.common import LOCAL, PRIOR, make_federation, one_thread, shards, sparse_mlp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _reply(site: str):
    server, _ = make_federation()
    net = sparse_mlp()
    x, y = shards()[0]
    client = DTurboClient(
        0, net, PRIOR, x, y, local_epochs=1, config=LOCAL, site=site, value_dtype="float64"
    )
    payload = server.broadcast([0])[0]
    return decode_message(client.train(payload)), client, decode_message(payload)


def test_curvature_replies_have_the_cavity_plus_curvature_precision():
    marginal, _, _ = _reply("marginal")
    curvature, client, down = _reply("curvature")
    for name, block in curvature.blocks.items():
        if name.endswith(".bias"):
            continue
        # the same w-steps: the means agree, the variances are another estimate
        torch.testing.assert_close(
            block.values["mean"], marginal.blocks[name].values["mean"], rtol=1e-12, atol=1e-12
        )
        variance = block.values["variance"]
        assert bool((variance > 0).all())
        # the precision is at least the cavity's (the curvature is floored at >= 0)
        cavity_precision = down.blocks[name].values["prior_precision"]
        assert bool((1.0 / variance >= cavity_precision * (1 - 1e-9)).all())
        assert not torch.allclose(variance, marginal.blocks[name].values["variance"])


def test_unknown_site_is_refused():
    x, y = shards()[0]
    with pytest.raises(ValueError, match="site"):
        DTurboClient(0, sparse_mlp(), PRIOR, x, y, site="laplace")
