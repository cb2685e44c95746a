"""Exact inference on binary Markov chains: Module B for chain-structured supports.

A support row ``s = (s_0, ..., s_{L-1})``, ``s_t in {0, 1}``, is a two-state Markov chain with
``P(s_t = 1 | s_{t-1} = 0) = p01`` and ``P(s_t = 0 | s_{t-1} = 1) = p10``, started at its
stationary law ``lambda = p01 / (p01 + p10)``. Evidence about each ``s_t`` enters as a factor
``exp(L_t * s_t)`` (log-odds ``L_t``). Every function is plain tensor maths, batched over all
leading dimensions (all rows of all layers at once), takes and returns log-domain quantities,
and has no Python loop over positions: :func:`forward_backward` runs one parallel associative
scan (forward and backward messages together) of depth ``O(log L)``.

References

[1] L. R. Rabiner, "A tutorial on hidden Markov models and selected applications in speech
    recognition", Proc. IEEE 77(2), 1989 (forward-backward, eqs. 19-27).
[2] G. E. Blelloch, "Prefix sums and their applications", CMU-CS-90-190, 1990
    (work-efficient parallel scan).
[3] S. Särkkä, Á. F. García-Fernández, "Temporal parallelization of Bayesian smoothers",
    IEEE TAC 66(1), 2021 (forward-backward as an associative scan).
[4] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV (Module B).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "chain_log_init",
    "chain_log_prob",
    "chain_log_transition",
    "chain_marginals",
    "forward_backward",
    "sample_chain",
]


def _as_tensor(x: Tensor | float, like: Tensor | None = None) -> Tensor:
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def _as_pair(p01: Tensor | float, p10: Tensor | float) -> tuple[Tensor, Tensor]:
    """Both transition probabilities as floating tensors of one dtype and device, broadcast."""
    tensors = [x for x in (p01, p10) if isinstance(x, Tensor)]
    dtype, device = torch.get_default_dtype(), None
    if tensors:
        dtype = torch.promote_types(tensors[0].dtype, tensors[-1].dtype)
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        # a CPU scalar may accompany a CUDA tensor; follow the accelerator
        device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
    a = torch.as_tensor(p01, dtype=dtype, device=device)
    b = torch.as_tensor(p10, dtype=dtype, device=device)
    return torch.broadcast_tensors(a, b)  # type: ignore[return-value]


def chain_log_init(p01: Tensor | float, p10: Tensor | float) -> Tensor:
    """Log of the stationary law ``[1 - lambda, lambda]``, ``lambda = p01 / (p01 + p10)``.

    :param p01: ``P(s_t = 1 | s_{t-1} = 0)``, a float or a tensor of any batch shape.
    :type p01: torch.Tensor or float
    :param p10: ``P(s_t = 0 | s_{t-1} = 1)``, broadcastable with ``p01``.
    :type p10: torch.Tensor or float
    :returns: ``log [1 - lambda, lambda]`` of shape ``broadcast(p01, p10).shape + (2,)``.
    :rtype: torch.Tensor

    Example::

        >>> chain_log_init(0.01, 0.1).exp()
        tensor([0.9091, 0.0909])
    """
    p01, p10 = _as_pair(p01, p10)
    log_total = torch.log(p01 + p10)
    return torch.stack([torch.log(p10) - log_total, torch.log(p01) - log_total], dim=-1)


def chain_log_transition(p01: Tensor | float, p10: Tensor | float) -> Tensor:
    """Log transition matrix ``log T[prev, next]`` with ``T = [[1 - p01, p01], [p10, 1 - p10]]``.

    :param p01: ``P(s_t = 1 | s_{t-1} = 0)``, a float or a tensor of any batch shape.
    :type p01: torch.Tensor or float
    :param p10: ``P(s_t = 0 | s_{t-1} = 1)``, broadcastable with ``p01``.
    :type p10: torch.Tensor or float
    :returns: ``log T`` of shape ``broadcast(p01, p10).shape + (2, 2)``.
    :rtype: torch.Tensor

    Example::

        >>> chain_log_transition(0.01, 0.1).exp()
        tensor([[0.9900, 0.0100],
                [0.1000, 0.9000]])
    """
    p01, p10 = _as_pair(p01, p10)
    row0 = torch.stack([torch.log1p(-p01), torch.log(p01)], dim=-1)
    row1 = torch.stack([torch.log(p10), torch.log1p(-p10)], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def chain_log_prob(value: Tensor, log_init: Tensor, log_trans: Tensor) -> Tensor:
    """Exact log probability of binary chains,
    ``log p(s) = log_init[s_0] + sum_t log_trans[s_{t-1}, s_t]``.

    :param torch.Tensor value: chains of shape ``batch + (L,)`` with entries in ``{0, 1}``
        (float, integer or bool), ``L >= 1``.
    :param torch.Tensor log_init: initial log probabilities, broadcastable to ``batch + (2,)``.
    :param torch.Tensor log_trans: log transition matrices ``[prev, next]``, broadcastable to
        ``batch + (2, 2)``.
    :returns: ``log p(value)`` of shape ``batch``.
    :rtype: torch.Tensor

    Example::

        >>> s = torch.tensor([0.0, 1.0, 1.0])
        >>> chain_log_prob(s, chain_log_init(0.2, 0.4), chain_log_transition(0.2, 0.4)).exp()
        tensor(0.0800)
    """
    if value.dim() < 1 or value.shape[-1] < 1:
        raise ValueError(f"value must have a non-empty last (position) dim, got {value.shape}")
    s = value.bool()
    first = torch.where(s[..., 0], log_init[..., 1], log_init[..., 0])
    prev, cur = s[..., :-1], s[..., 1:]
    t = log_trans.unsqueeze(-3)  # broadcast the transition over positions
    from0 = torch.where(cur, t[..., 0, 1], t[..., 0, 0])
    from1 = torch.where(cur, t[..., 1, 1], t[..., 1, 0])
    return first + torch.where(prev, from1, from0).sum(-1)


# Chains with at most this many positions (chains x length, both directions) are scanned by
# doubling; longer ones by the work-efficient odd-even recursion, which switches to doubling once
# its halved sub-problems are this small. Set by timing both paths on a 2-core CPU (float32 and
# float64, 10^3 to 10^5 positions, one or many chains); the two agree to rounding.
_DOUBLING_MAX_POSITIONS = 4096


def _log(x: Tensor) -> Tensor:
    """``log(x)``. ``torch.log`` hands float arrays to MKL's vector maths on CPU builds, which
    may start its own threads from about a thousand elements on: on a busy machine with few
    cores such a call can wait a whole scheduler tick (milliseconds) for a core, many times what
    Module B takes on a short chain. ``xlogy`` computes the same values without that path."""
    return torch.special.xlogy(1.0, x)


def _combine(a: Tensor, b: Tensor) -> Tensor:
    """Products ``a @ b`` of 2x2 nonnegative matrices, rescaled so the largest entry is 1.

    Matrices are stored entry-major, ``x[i, j, chain, t]`` (one plane per entry, positions
    last), so each op here is one vectorised elementwise op over all chains and positions.
    Matrices are only ever needed up to scale (the posterior is a ratio), and rescaling keeps
    every product in range whatever the chain length. The scale is detached: the output does
    not depend on it, and the in-place rescaling then keeps the graph valid for autograd.
    """
    c = a[:, :1] * b[:1]  # c[i, j] = a[i, 0] b[0, j] + a[i, 1] b[1, j]
    c.addcmul_(a[:, 1:], b[1:])
    return c.div_(c.detach().amax((0, 1)))


def _scan_doubling(x: Tensor) -> Tensor:
    """Inclusive scan ``out[t] = x[0] @ ... @ x[t]`` of ``x[i, j, chain, t]`` along ``t``, for a
    first matrix ``x[0]`` with two equal rows (so every prefix product has two equal rows).

    Hillis-Steele doubling: step ``k`` multiplies every matrix by the one ``2^k`` places to its
    left, ``ceil(log2 L)`` steps in all. ``O(L log L)`` work but the fewest tensor ops: the
    fastest choice when per-op overhead dominates (short chains). Positions with nothing
    ``2^k`` places to their left hold finished prefix products, which a matrix of ones in front
    only doubles (their rows are equal), so the shifted copy reads from a padding of ones; without
    autograd it lives in two preallocated buffers, so no step needs a ``torch.cat``.
    """
    n = x.shape[-1]
    if n < 2:
        return x
    pad = 1 << ((n - 1).bit_length() - 1)  # the largest shift
    if torch.is_grad_enabled() and x.requires_grad:  # out of place, for autograd
        ones = x.new_ones(x.shape[:-1] + (pad,))
        shift = 1
        while shift < n:
            x = _combine(torch.cat([ones[..., :shift], x[..., : n - shift]], -1), x)
            shift *= 2
        return x
    # per buffer: its two columns a[:, 0], a[:, 1] (padded), rows b[0], b[1] and whole b
    views = []
    for buf in x.new_ones((2,) + x.shape[:-1] + (pad + n,)).unbind(0):
        b = buf.narrow(-1, pad, n)
        views.append((buf[:, :1], buf[:, 1:], b[:1], b[1:], b))
    views[0][4].copy_(x)
    shift, k = 1, 0
    while shift < n:
        a0, a1, b0, b1, _ = views[k]
        c = views[1 - k][4]
        torch.mul(a0.narrow(-1, pad - shift, n), b0, out=c)
        c.addcmul_(a1.narrow(-1, pad - shift, n), b1)
        c.div_(c.amax((0, 1)))
        shift, k = shift * 2, 1 - k
    return views[k][4]


def _scan_odds(x: Tensor, doubling_max: int) -> Tensor:
    """Row odds ``P_t[0, 1] / P_t[0, 0]`` of the prefix products ``P_t = x[0] @ ... @ x[t]``,
    shape ``(chain, L)``, for 2x2 matrices ``x[i, j, chain, t]`` whose first one has two equal
    rows (so each ``P_t`` has two equal rows, the message at ``t``).

    Work-efficient odd-even recursion [2]: combine neighbouring pairs, recurse on the
    half-length sequence (the odd positions), then fill in each even position ``t`` from the
    odds ``r`` at ``t - 1`` as ``(x01 + r x11) / (x00 + r x10)``: the down sweep carries one
    ratio per position instead of a matrix. ``O(L)`` work in ``O(log L)`` Python steps; once a
    sub-problem has at most ``doubling_max`` positions it is finished by
    :func:`_scan_doubling`.
    """
    n = x.shape[-1]
    if n < 2 or n * x.shape[-2] <= doubling_max:
        prefix = _scan_doubling(x)
        return prefix[0, 1] / prefix[0, 0]
    odd = _scan_odds(_combine(x[..., 0:-1:2], x[..., 1::2]), doubling_max)
    r = odd[..., : (n - 1) // 2]
    e = x[..., 2::2]
    out = torch.empty(x.shape[-2:], dtype=x.dtype, device=x.device)
    out[..., :1] = x[0, 1, :, :1] / x[0, 0, :, :1]
    out[..., 1::2] = odd
    out[..., 2::2] = torch.addcmul(e[0, 1], r, e[1, 1]) / torch.addcmul(e[0, 0], r, e[1, 0])
    return out


def forward_backward(unary_logits: Tensor, log_init: Tensor, log_trans: Tensor) -> Tensor:
    """Posterior log-odds of every ``s_t`` of binary Markov chains given all their evidence.

    The joint is ``p(s | L) ∝ init[s_0] prod_t T[s_{t-1}, s_t] prod_t exp(L_t s_t)``, so the
    posterior log-odds are ``L_t`` plus the log-odds of the forward message
    ``a_t = a_{t-1} D_{t-1} T`` (``a_0 = init``, ``D_t = diag(1, exp(L_t))``) plus those of the
    backward message ``b_t = T D_{t+1} b_{t+1}`` (``b_{L-1} = 1``) [1]. Both recursions are
    products of 2x2 matrices [3], computed together as ONE parallel scan [2] over a batch that
    stacks the forward sequence ``D_{t-1} T`` (with ``init`` folded into ``D_0``) and the
    reversed, transposed backward sequence ``D_{t+1} T^T``; the number of tensor ops is
    ``O(log L)`` and all chains of all layers run at once.

    Numerics: the inputs and the output are log-odds, but the scan multiplies rescaled
    probabilities: each evidence factor enters as ``(sigmoid(-L_t), sigmoid(L_t))`` and every
    product is rescaled to largest entry 1 (only ratios matter), so nothing overflows however
    long the chain or large ``|L_t|``. The messages exclude ``L_t`` itself, so the two entries
    read out at each position differ by at most a factor set by ``T`` (never by the evidence)
    and their log-ratio is accurate; entries that underflow to zero are ones whose contribution
    is below the working precision. Transition probabilities must be positive (as for a chain
    support, ``0 < p01, p10 < 1``).

    :param torch.Tensor unary_logits: evidence log-odds ``L_t`` of shape ``batch + (L,)``.
    :param torch.Tensor log_init: initial log probabilities, broadcastable to ``batch + (2,)``
        (e.g. :func:`chain_log_init`).
    :param torch.Tensor log_trans: log transition matrices ``[prev, next]``, broadcastable to
        ``batch + (2, 2)`` (e.g. :func:`chain_log_transition`).
    :returns: posterior log-odds ``log p(s_t = 1 | L) - log p(s_t = 0 | L)``, shape
        ``batch + (L,)``.
    :rtype: torch.Tensor

    Example::

        >>> p01, p10 = 0.01, 0.1
        >>> unary = torch.tensor([[-3.0, 4.0, 0.0, 4.0, -3.0]])
        >>> post = forward_backward(unary, chain_log_init(p01, p10), chain_log_transition(p01, p10))
        >>> post.sigmoid()  # the silent gap between two active positions is filled in
        tensor([[0.2552, 0.8245, 0.8226, 0.8245, 0.2552]])
    """
    if unary_logits.dim() < 1:
        raise ValueError("unary_logits must have a last (position) dim")
    if log_init.shape[-1:] != (2,) or log_trans.shape[-2:] != (2, 2):
        raise ValueError(
            f"expected log_init (..., 2) and log_trans (..., 2, 2), got {tuple(log_init.shape)} "
            f"and {tuple(log_trans.shape)}"
        )
    length = unary_logits.shape[-1]
    dtype = unary_logits.dtype
    if not (dtype == log_init.dtype == log_trans.dtype):
        dtype = torch.promote_types(dtype, torch.promote_types(log_init.dtype, log_trans.dtype))
        unary_logits = unary_logits.to(dtype)
        log_init, log_trans = log_init.to(dtype), log_trans.to(dtype)
    if log_init.dim() == 1 and log_trans.dim() == 2:  # shared parameters: the common case
        batch = unary_logits.shape[:-1]
    else:
        batch = torch.broadcast_shapes(
            unary_logits.shape[:-1], log_init.shape[:-1], log_trans.shape[:-2]
        )
        unary_logits = unary_logits.expand(batch + (length,))
        log_init = log_init.expand(batch + (2,))
        log_trans = log_trans.expand(batch + (2, 2))
    if length == 0:
        return unary_logits.clone()
    unary = unary_logits.reshape(-1, length)  # (chain, L)
    chains = unary.shape[0]
    prior_odds = torch.diff(log_init).reshape(-1, 1)  # log init[1] - log init[0]: (chain or 1, 1)
    if length == 1:
        return (unary + prior_odds).reshape(batch + (1,))
    n = length - 1

    # T_d[i, j] for direction d (0 forward: T, 1 backward: T^T), rescaled (softmax: any common
    # scale will do), entry-major (i, j, d, chain or 1, 1)
    trans = torch.stack([log_trans, log_trans.mT], -1).reshape(-1, 8)  # (chain or 1, i j d)
    trans = torch.softmax(trans, -1).mT.reshape(2, 2, 2, -1, 1)
    # Element s = 0..L-2 of direction d is diag(w) T_d, w the evidence weights of position s
    # (forward; the initial law folded into s = 0) or L-1-s (backward):
    # w = (sigmoid(-logit), sigmoid(logit)) ∝ (1, exp(logit)).
    logits = torch.stack([unary[:, :-1], unary.flip(-1)[:, :-1]])  # (d, chain, n)
    logits[0, :, :1].add_(prior_odds)
    weights = torch.sigmoid(torch.stack([-logits, logits]))  # (i, d, chain, n)
    elems = trans * weights[:, None]  # (i, j, d, chain, n)
    # both rows of the first element become the message after it (its column sums): then
    # every prefix product has two equal rows, each the message itself
    elems[..., 0] = elems[..., 0].sum(0)
    odds = _scan_odds(elems.reshape(2, 2, 2 * chains, n), _DOUBLING_MAX_POSITIONS)

    # odds of the messages: forward at positions 1..L-1, backward at L-2..0 (flipped to 0..L-2);
    # multiply them (each lies in [1/rho, rho], rho set by T) and take one log per position
    fwd, bwd = odds.reshape(2, chains, n).unbind(0)
    bwd = bwd.flip(-1)
    odds = torch.cat([bwd[:, :1], fwd[:, :-1] * bwd[:, 1:], fwd[:, -1:]], -1)
    post = unary + _log(odds)
    post[:, :1].add_(prior_odds)
    return post.reshape(batch + (length,))


def chain_marginals(unary_logits: Tensor, p01: Tensor | float, p10: Tensor | float) -> Tensor:
    """Posterior probabilities ``p(s_t = 1 | L)`` for chains with stationary start.

    :param torch.Tensor unary_logits: evidence log-odds of shape ``batch + (L,)``.
    :param p01: ``P(s_t = 1 | s_{t-1} = 0)``, a float or a tensor broadcastable to ``batch``.
    :type p01: torch.Tensor or float
    :param p10: ``P(s_t = 0 | s_{t-1} = 1)``, a float or a tensor broadcastable to ``batch``.
    :type p10: torch.Tensor or float
    :returns: posterior probabilities of shape ``batch + (L,)``.
    :rtype: torch.Tensor

    Example::

        >>> chain_marginals(torch.tensor([5.0, 0.0, 5.0]), 0.01, 0.1)
        tensor([0.9979, 0.9966, 0.9979])
    """
    p01 = _as_tensor(p01, like=unary_logits)
    p10 = _as_tensor(p10, like=unary_logits)
    log_odds = forward_backward(
        unary_logits, chain_log_init(p01, p10), chain_log_transition(p01, p10)
    )
    return torch.sigmoid(log_odds)


def sample_chain(
    p01: Tensor | float,
    p10: Tensor | float,
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact samples of stationary binary Markov chains, vectorised over positions.

    Each step draws ``a_t ~ Bern(p01)`` (the next state if ``s_{t-1} = 0``) and
    ``b_t ~ Bern(1 - p10)`` (the next state if ``s_{t-1} = 1``). Where ``a_t == b_t`` the
    chain *resets* to that value whatever came before; otherwise the step is the identity
    (``a=0, b=1``) or a flip (``a=1, b=0``). So ``s_t`` is the value at the last reset XOR the
    parity of the flips since then: a ``cummax`` of reset positions and a ``cumsum`` of flips.

    :param p01: ``P(s_t = 1 | s_{t-1} = 0)``, a float or a tensor broadcastable to
        ``shape[:-1]`` (one value per chain).
    :type p01: torch.Tensor or float
    :param p10: ``P(s_t = 0 | s_{t-1} = 1)``, as ``p01``.
    :type p10: torch.Tensor or float
    :param shape: ``batch + (L,)``: leading dims index independent chains, the last dim is
        the position.
    :type shape: torch.Size or tuple
    :param torch.Generator generator: optional random generator (on the device of ``p01``).
    :returns: a float tensor of zeros and ones of shape ``shape`` with the dtype of ``p01``.
    :rtype: torch.Tensor

    Example::

        >>> s = sample_chain(0.05, 0.2, (1000, 100), generator=torch.Generator().manual_seed(0))
        >>> s.mean()  # lambda = 0.05 / 0.25
        tensor(0.2010)
    """
    p01, p10 = _as_pair(p01, p10)
    shape = torch.Size(shape)
    if len(shape) < 1:
        raise ValueError("shape must have a last (position) dim")
    length = shape[-1]
    p01 = p01.unsqueeze(-1).expand(shape)
    p10 = p10.unsqueeze(-1).expand(shape)
    u = torch.rand((3,) + tuple(shape), generator=generator, dtype=p01.dtype, device=p01.device)
    start = u[0, ..., :1] < p01[..., :1] / (p01[..., :1] + p10[..., :1])
    a = u[1, ..., 1:] < p01[..., 1:]
    b = u[2, ..., 1:] >= p10[..., 1:]
    reset = torch.cat([torch.ones_like(start), a == b], -1)
    value = torch.cat([start, a], -1)  # the value taken at a reset
    flips = torch.cat([torch.zeros_like(start), a & ~b], -1).long().cumsum(-1)
    positions = torch.arange(length, device=p01.device).expand(shape)
    last_reset = torch.where(reset, positions, torch.zeros_like(positions)).cummax(-1).values
    parity = (flips - flips.gather(-1, last_reset)) % 2
    state = value.gather(-1, last_reset) ^ parity.bool()
    return state.to(p01.dtype)
