"""Helpers shared by the compression tests."""

from __future__ import annotations

import torch
from torch import nn

from pyro_dturbo.models.layers import SparseBayesLayer


def layer(net: nn.Module, name: str) -> SparseBayesLayer:
    """The sparse Bayesian layer ``name`` of ``net``."""
    found = net.get_submodule(name)
    assert isinstance(found, SparseBayesLayer)
    return found


def logit_atol() -> float:
    """How far a compact model's outputs may be from the network's: rounding of the default
    dtype (the removed units change the order of the sums, nothing else)."""
    return 1e-10 if torch.get_default_dtype() == torch.float64 else 1e-5
