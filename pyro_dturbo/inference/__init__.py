"""How beliefs are updated: messages, Module A / Module B, the Turbo loop, guides, baselines.

The pure tensor maths (``messages``, ``chain``, ``loopy``) import nothing from this package,
so :mod:`pyro_dturbo.models` can use them for exact log-densities and sampling; the public
names below are therefore loaded lazily (PEP 562) to keep that import free of cycles.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BernoulliMessage": "messages",
    "GaussianMessage": "messages",
    "RegressionModuleA": "vbi",
    "TurboVBI": "turbo",
    "TurboState": "turbo",
    "TurboResult": "turbo",
    "SparseRegressionResult": "turbo",
    "fit_sparse_regression": "turbo",
    "NetworkModuleA": "network",
    "NetworkResult": "network",
    "fit_network": "network",
    "default_network_prior": "network",
    "save_checkpoint": "network",
    "load_checkpoint": "network",
    "TurboGuide": "guide",
    "run_svi": "baselines",
    "run_mcmc": "baselines",
    "SVIResult": "baselines",
    "MCMCResult": "baselines",
    "to_arviz": "diagnostics",
    "summary": "diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
