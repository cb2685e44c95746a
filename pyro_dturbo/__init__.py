"""pyro-dturbo: Bayesian federated model compression with structured sparse priors and
Turbo-VBI, built on Pyro."""

__version__ = "0.1.0"
