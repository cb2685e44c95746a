"""The ClientApp: one D-Turbo-VBI (or baseline) client per SuperNode, keyed by its
``partition-id`` node config."""

from pyro_dturbo.federation.flower import client_app as app

__all__ = ["app"]
