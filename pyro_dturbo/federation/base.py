"""What every federated method offers the runner: clients that train on bytes, a server that
broadcasts and aggregates bytes, and the records of a round.

Engines (:mod:`~pyro_dturbo.federation.simulation` in one process, Flower across processes)
only move the bytes; every method (D-Turbo-VBI, FedAvg, top-k, STC) implements these two
protocols, so the bytes counted are the payloads each method really produced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

__all__ = ["FederatedClient", "FederatedServer", "AggregateReport", "RoundRecord", "logger"]

logger = logging.getLogger("pyro_dturbo.federation")


@dataclass
class AggregateReport:
    """What :meth:`FederatedServer.aggregate` did with a round's replies.

    :ivar accepted: client ids whose replies were merged.
    :ivar rejected: ``{client id: reason}`` for every reply refused (nothing of it merged).
    :ivar float density_up: mean over accepted replies of the fraction of the model's weights
        they carried (0 when none was accepted).
    """

    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    density_up: float = 0.0


@dataclass
class RoundRecord:
    """One round as ``report.json`` lists it (bytes are integers, accuracy a fraction)."""

    round: int
    accuracy: float
    bytes_up: int
    bytes_down: int
    density_up: float
    density_down: float
    dropped: int
    rejected: int
    corrupted: int
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FederatedClient(Protocol):
    """A client: its id, its data size, and one local round on a payload from the server."""

    client_id: int
    num_examples: int

    def train(self, payload: bytes) -> bytes:
        """Decode the server's message, train locally, return the encoded reply."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class FederatedServer(Protocol):
    """A server: per-client payloads out, replies in, a global model to evaluate."""

    round: int

    def broadcast(self, clients: Sequence[int]) -> dict[int, bytes]:
        """One payload per client id for round ``self.round`` (unicast: one each)."""
        ...

    def aggregate(self, replies: Mapping[int, bytes]) -> AggregateReport:
        """Validate and merge the replies of this round, then advance ``self.round``.

        A reply that does not decode, is stale, from an unknown client, of a wrong shape, or
        holds NaN / Inf (or a non-positive variance) is rejected with a logged reason and
        leaves the global model as it was; clients without a reply keep their last
        contribution.
        """
        ...

    def density_down(self) -> float:
        """Fraction of the model's weights the next broadcast carries."""
        ...

    def global_model(self) -> nn.Module:
        """The global model to evaluate (eval mode; pruned weights exactly zero)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
