"""How clients and the server cooperate: D-Turbo-VBI (arXiv:2404.07532), engine-free.

- :mod:`~pyro_dturbo.federation.merge`: products of Gaussian sites, cavities, damped site
  updates, moment averaging (pure torch);
- :mod:`~pyro_dturbo.federation.codec`: payloads as real bytes (element-wise or run-length
  indices, float32 / float16 / bfloat16 values);
- :mod:`~pyro_dturbo.federation.server` / :mod:`~pyro_dturbo.federation.client`: one
  D-Turbo-VBI round, bytes in and bytes out, replies validated;
- :mod:`~pyro_dturbo.federation.baselines`: FedAvg, FedAvg with top-k uploads, STC;
- :mod:`~pyro_dturbo.federation.simulation`: :func:`run_federated`, every client in one
  process, faults injected, a checkpoint per round;
- :mod:`~pyro_dturbo.federation.config`: :class:`FederatedConfig` (YAML, validated).

The rounds are described in ``docs/algorithm.md``, "Federated rounds".
"""

from pyro_dturbo.federation.base import (
    AggregateReport,
    FederatedClient,
    FederatedServer,
    RoundRecord,
)
from pyro_dturbo.federation.client import DTurboClient
from pyro_dturbo.federation.config import METHODS, FederatedConfig
from pyro_dturbo.federation.server import DTurboServer
from pyro_dturbo.federation.simulation import FederatedResult, MethodResult, run_federated

__all__ = [
    "AggregateReport",
    "DTurboClient",
    "DTurboServer",
    "FederatedClient",
    "FederatedConfig",
    "FederatedResult",
    "FederatedServer",
    "METHODS",
    "MethodResult",
    "RoundRecord",
    "run_federated",
]
