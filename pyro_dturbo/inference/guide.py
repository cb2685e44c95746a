"""``TurboGuide``: a Pyro guide whose parameters are set by the Turbo-VBI updates.

For every layer ``L`` of the model it provides ``q(L.support) = prod Bernoulli(q_n)``,
``q(L.precision) = prod Gamma(at_n, bt_n)`` and ``q(L.weight) = prod Normal(mu_n, sigma_n)``,
plus ``q(noise_precision) = Gamma`` where the model learns the noise. It works with
:class:`pyro.infer.Predictive` and ``Trace_ELBO().loss(model, guide)``, in the dtype and on the
device of the posterior it is given (float32 or float64; no global default dtype is needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

__all__ = ["TurboGuide"]

_FIELDS = ("support_probs", "precision_shape", "precision_rate", "weight_loc", "weight_scale")


class TurboGuide(PyroModule):
    """A mean-field guide over the sites ``{layer}.support / .precision / .weight``.

    Like :class:`~pyro.infer.autoguide.AutoNormal`, it traces the model once, lazily, to learn
    its latent sites; the posterior itself comes from :meth:`set_posterior` (Turbo-VBI's
    closed-form updates), not from gradient steps. A model whose support is summed out (no
    ``.support`` site) is served too.

    :param callable model: the Pyro model.

    Example::

        >>> result = fit_sparse_regression(X, y)
        >>> guide = result.guide()
        >>> samples = pyro.infer.Predictive(result.model, guide=guide, num_samples=100)()
        >>> guide.support_probs()["linear"]
    """

    def __init__(self, model: Callable[..., Any]):
        super().__init__()
        self.model = model
        self._layers: dict[str, dict[str, Tensor]] = {}
        self._noise: tuple[Tensor, Tensor] | None = None
        self._sites: list[str] | None = None

    # -- posterior -------------------------------------------------------------------------
    def set_posterior(
        self,
        layers: dict[str, dict[str, Tensor]],
        noise: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """Set ``{layer: {support_probs, precision_shape, precision_rate, weight_loc,
        weight_scale}}`` and optionally the noise precision's Gamma ``(shape, rate)``."""
        for name, fields in layers.items():
            missing = set(_FIELDS) - set(fields)
            if missing:
                raise ValueError(f"TurboGuide: layer {name!r} lacks {sorted(missing)}")
        with torch.no_grad():
            self._layers = {
                name: {k: torch.as_tensor(fields[k]).detach().clone() for k in _FIELDS}
                for name, fields in layers.items()
            }
            self._noise = None if noise is None else (noise[0].detach(), noise[1].detach())
        self._sites = None

    def _setup(self, *args: Any, **kwargs: Any) -> list[str]:
        if self._sites is None:
            trace = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
            trace = prune_subsample_sites(trace)
            # the likelihood site "obs" is the model's, observed or not (Predictive samples it)
            sites = [
                name
                for name, site in trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"] and name != "obs"
            ]
            known = {
                f"{layer}.{part}"
                for layer in self._layers
                for part in ("support", "precision", "weight")
            }
            if self._noise is not None:
                known.add("noise_precision")
            uncovered = sorted(set(sites) - known)
            if uncovered:
                raise ValueError(f"TurboGuide has no posterior for the model's sites {uncovered}")
            self._sites = sites
        return self._sites

    def _dist(self, site: str) -> Any:
        if site == "noise_precision":
            assert self._noise is not None
            return dist.Gamma(*self._noise)
        layer, part = site.rsplit(".", 1)
        p = self._layers[layer]
        dims = p["weight_loc"].dim()
        if part == "support":
            return dist.Bernoulli(probs=p["support_probs"]).to_event(dims)
        if part == "precision":
            return dist.Gamma(p["precision_shape"], p["precision_rate"]).to_event(dims)
        return dist.Normal(p["weight_loc"], p["weight_scale"]).to_event(dims)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample every latent site of the model from the Turbo-VBI posterior."""
        if not self._layers:
            raise ValueError("TurboGuide: call set_posterior(...) (or use result.guide()) first")
        return {site: pyro.sample(site, self._dist(site)) for site in self._setup(*args, **kwargs)}

    # -- summaries ---------------------------------------------------------------------------
    @torch.no_grad()
    def support_probs(self) -> dict[str, Tensor]:
        """``q(s_n = 1)`` per layer."""
        return {k: v["support_probs"] for k, v in self._layers.items()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior medians of every latent site (supports: ``q(s=1) > 1/2``)."""
        return self.quantiles([0.5], *args, **kwargs)

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float], *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior quantiles of every latent site, stacked along a new leading dim.

        Gamma quantiles come from ``scipy.stats.gamma.ppf``; supports are 0/1 quantiles of
        the Bernoulli marginals. With a single quantile the leading dim is dropped.
        """
        import scipy.stats  # on first use: scipy takes a second to import

        qs = torch.as_tensor(list(quantiles), dtype=torch.float64)
        if ((qs <= 0) | (qs >= 1)).any():
            raise ValueError(f"quantiles must lie in (0, 1), got {list(quantiles)}")
        sites = self._setup(*args, **kwargs) if args or kwargs or self._sites else self._all_sites()
        out: dict[str, Tensor] = {}
        for site in sites:
            d = self._dist(site)
            base = d.base_dist if isinstance(d, dist.Independent) else d
            shape = base.batch_shape
            q = qs.reshape((-1,) + (1,) * len(shape)).to(**self._like())
            if isinstance(base, dist.Normal):
                value = base.icdf(q)
            elif isinstance(base, dist.Bernoulli):
                value = (base.probs > 1 - q).to(q.dtype)
            else:
                assert isinstance(base, dist.Gamma)
                conc = base.concentration.expand(shape).cpu().numpy()
                rate = base.rate.expand(shape).cpu().numpy()
                value = torch.stack(
                    [
                        torch.as_tensor(scipy.stats.gamma.ppf(float(qi), conc, scale=1 / rate))
                        for qi in qs
                    ]
                ).to(q)
            out[site] = value[0] if len(qs) == 1 else value
        return out

    @torch.no_grad()
    def sample_posterior(self, num_samples: int) -> dict[str, Tensor]:
        """``num_samples`` joint draws of every latent site, stacked along dim 0."""
        sites = self._sites or self._all_sites()
        return {site: self._dist(site).sample((num_samples,)) for site in sites}

    def _all_sites(self) -> list[str]:
        sites = [
            f"{layer}.{part}"
            for layer in self._layers
            for part in ("support", "precision", "weight")
        ]
        return sites + (["noise_precision"] if self._noise is not None else [])

    def _like(self) -> dict[str, Any]:
        """The posterior's dtype and device, as keyword arguments of ``Tensor.to``."""
        first = next(iter(self._layers.values()))["weight_loc"]
        return {"dtype": first.dtype, "device": first.device}
