"""The ServerApp: every method of the experiment's YAML, over the connected SuperNodes."""

from pathlib import Path

from pyro_dturbo.federation.flower import make_server_app

app = make_server_app(Path(__file__).parent)

__all__ = ["app"]
