"""How beliefs are updated: Module A (regression, networks), the one Module B, the Turbo loop,
the guide, the SVI / MCMC baselines, sparse variational dropout (a network compression
baseline, :mod:`~pyro_dturbo.inference.sparse_vd`) and ArviZ diagnostics.

The pure tensor maths these build on (messages, forward-backward, loopy BP, closed-form VB
pieces) lives in :mod:`pyro_dturbo.ops`.
"""

from pyro_dturbo.inference.baselines import MCMCResult, SVIResult, run_mcmc, run_svi
from pyro_dturbo.inference.diagnostics import summary, to_arviz
from pyro_dturbo.inference.guide import TurboGuide
from pyro_dturbo.inference.module_b import ModuleB, ModuleBOutput
from pyro_dturbo.inference.network import (
    NetworkModuleA,
    NetworkResult,
    default_network_prior,
    fit_network,
    load_checkpoint,
    save_checkpoint,
)
from pyro_dturbo.inference.regression import (
    RegressionModuleA,
    SparseRegressionResult,
    fit_sparse_regression,
)
from pyro_dturbo.inference.sparse_vd import SparseVDResult, fit_sparse_vd
from pyro_dturbo.inference.turbo import TurboResult, TurboState, TurboVBI
from pyro_dturbo.ops.messages import BernoulliMessage, GaussianMessage

__all__ = [
    "BernoulliMessage",
    "GaussianMessage",
    "MCMCResult",
    "ModuleB",
    "ModuleBOutput",
    "NetworkModuleA",
    "NetworkResult",
    "RegressionModuleA",
    "SVIResult",
    "SparseRegressionResult",
    "SparseVDResult",
    "TurboGuide",
    "TurboResult",
    "TurboState",
    "TurboVBI",
    "default_network_prior",
    "fit_network",
    "fit_sparse_regression",
    "fit_sparse_vd",
    "load_checkpoint",
    "run_mcmc",
    "run_svi",
    "save_checkpoint",
    "summary",
    "to_arviz",
]
