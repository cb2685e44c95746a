"""Pure tensor maths shared by models, inference and federation (as ``pyro.ops`` in Pyro).

Nothing here imports the rest of the package, Pyro's primitives or a random generator of its
own: messages (:class:`BernoulliMessage`, :class:`GaussianMessage`), exact forward-backward on
binary chains, loopy belief propagation on pairwise binary MRFs, and the closed-form
variational-Bayes pieces of Module A.
"""

from pyro_dturbo.ops.chain import (
    chain_log_init,
    chain_log_prob,
    chain_log_transition,
    chain_marginals,
    forward_backward,
    sample_chain,
)
from pyro_dturbo.ops.loopy import grid_edges, ising_edge_log_potential, loopy_bp
from pyro_dturbo.ops.messages import (
    PRECISION_FLOOR,
    PROB_EPS,
    BernoulliMessage,
    GaussianMessage,
    clip_logits,
)
from pyro_dturbo.ops.vb import (
    GaussianPosterior,
    cavity_evidence,
    gaussian_posterior,
    matched_precision,
    precision_params,
    site_from_marginal,
    update_noise_precision,
    update_precision,
)

__all__ = [
    "BernoulliMessage",
    "GaussianMessage",
    "PRECISION_FLOOR",
    "PROB_EPS",
    "clip_logits",
    "forward_backward",
    "chain_log_init",
    "chain_log_transition",
    "chain_log_prob",
    "chain_marginals",
    "sample_chain",
    "loopy_bp",
    "grid_edges",
    "ising_edge_log_potential",
    "GaussianPosterior",
    "gaussian_posterior",
    "site_from_marginal",
    "cavity_evidence",
    "matched_precision",
    "precision_params",
    "update_precision",
    "update_noise_precision",
]
