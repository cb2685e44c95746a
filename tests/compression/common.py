"""Helpers shared by the compression tests."""

from __future__ import annotations

from torch import nn

from pyro_dturbo.models.layers import SparseBayesLayer


def layer(net: nn.Module, name: str) -> SparseBayesLayer:
    """The sparse Bayesian layer ``name`` of ``net``."""
    found = net.get_submodule(name)
    assert isinstance(found, SparseBayesLayer)
    return found
