"""What is believed: the hierarchical sparse prior, its support structures and the models."""

from pyro_dturbo.models.layers import (
    SparseBayesConv2d,
    SparseBayesLayer,
    SparseBayesLinear,
    network_model,
    sparse_layers,
    to_sparse_bayes,
)
from pyro_dturbo.models.prior import MarginalPrecision, SparsePrior
from pyro_dturbo.models.regression import default_regression_prior, sparse_regression_model
from pyro_dturbo.models.support import (
    GraphMRFSupport,
    GridMRFSupport,
    IndependentSupport,
    MarkovChainSupport,
    SupportStructure,
    support_from_dict,
)

__all__ = [
    "SparsePrior",
    "MarginalPrecision",
    "SupportStructure",
    "MarkovChainSupport",
    "GridMRFSupport",
    "GraphMRFSupport",
    "IndependentSupport",
    "support_from_dict",
    "sparse_regression_model",
    "default_regression_prior",
    "SparseBayesLayer",
    "SparseBayesLinear",
    "SparseBayesConv2d",
    "to_sparse_bayes",
    "sparse_layers",
    "network_model",
]
