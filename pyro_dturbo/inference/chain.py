"""Exact inference on binary Markov chains: Module B for chain-structured supports.

A support row ``s = (s_0, ..., s_{L-1})``, ``s_t in {0, 1}``, is a two-state Markov chain with
``P(s_t = 1 | s_{t-1} = 0) = p01`` and ``P(s_t = 0 | s_{t-1} = 1) = p10``, started at its
stationary law ``lambda = p01 / (p01 + p10)``. Evidence about each ``s_t`` enters as a factor
``exp(L_t * s_t)`` (log-odds ``L_t``). Every function is plain tensor maths, batched over all
leading dimensions (all rows of all layers at once), log domain, and has no Python loop over
positions: :func:`forward_backward` runs two parallel associative scans of depth ``O(log L)``.

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

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "chain_extrinsic",
    "chain_log_init",
    "chain_log_prob",
    "chain_log_transition",
    "chain_marginals",
    "forward_backward",
    "sample_chain",
]

# A 2x2 matrix in the log semiring, stored as its four entries (00, 01, 10, 11), each a tensor
# of shape ``batch + (L,)``: four contiguous planes keep every operation elementwise.
_LogMat = tuple[Tensor, Tensor, Tensor, Tensor]


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


def _log_matmul(a: _LogMat, b: _LogMat) -> _LogMat:
    """``a @ b`` in the log semiring, renormalised so the largest entry is 0.

    Matrices are only ever needed up to scale (the posterior is a ratio), and renormalising
    keeps every entry within a bounded distance of 0, so float32 keeps full relative precision
    whatever the chain length.
    """
    a00, a01, a10, a11 = a
    b00, b01, b10, b11 = b
    c00 = torch.logaddexp(a00 + b00, a01 + b10)
    c01 = torch.logaddexp(a00 + b01, a01 + b11)
    c10 = torch.logaddexp(a10 + b00, a11 + b10)
    c11 = torch.logaddexp(a10 + b01, a11 + b11)
    m = torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11))
    return c00 - m, c01 - m, c10 - m, c11 - m


def _log_matmul_reversed(a: _LogMat, b: _LogMat) -> _LogMat:
    return _log_matmul(b, a)


def _associative_scan(combine: Callable[[_LogMat, _LogMat], _LogMat], elems: _LogMat) -> _LogMat:
    """Inclusive scan ``out[t] = elems[0] * ... * elems[t]`` along the last dim.

    Work-efficient odd-even recursion [2]: combine neighbouring pairs, scan the half-length
    sequence, then fill in the even positions. ``O(L)`` combines in ``O(log L)`` Python steps.
    """
    n = elems[0].shape[-1]
    if n < 2:
        return elems
    reduced = combine(
        tuple(e[..., 0:-1:2] for e in elems),  # type: ignore[arg-type]
        tuple(e[..., 1::2] for e in elems),  # type: ignore[arg-type]
    )
    odd = _associative_scan(combine, reduced)
    rest: _LogMat = tuple(e[..., 2::2] for e in elems)  # type: ignore[assignment]
    if n % 2 == 0:
        even = combine(tuple(o[..., :-1] for o in odd), rest)  # type: ignore[arg-type]
    else:
        even = combine(odd, rest)
    out = []
    for e, ev, od in zip(elems, even, odd, strict=True):
        r = torch.empty(ev.shape[:-1] + (n,), dtype=ev.dtype, device=ev.device)
        r[..., 0] = e[..., 0]
        r[..., 2::2] = ev
        r[..., 1::2] = od
        out.append(r)
    return tuple(out)  # type: ignore[return-value]


def forward_backward(unary_logits: Tensor, log_init: Tensor, log_trans: Tensor) -> Tensor:
    """Posterior log-odds of every ``s_t`` of binary Markov chains given all their evidence.

    The joint is ``p(s | L) ∝ init[s_0] prod_t T[s_{t-1}, s_t] prod_t exp(L_t s_t)``. Forward
    messages are the row of a prefix product of the 2x2 matrices
    ``M_t[i, j] = T[i, j] exp(L_t j)`` and backward messages the row sums of a suffix product
    [1, 3]; both products run as work-efficient parallel scans in the log semiring [2], so the
    number of Python steps is ``O(log L)`` and all chains of all layers run at once.

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
    batch = torch.broadcast_shapes(
        unary_logits.shape[:-1], log_init.shape[:-1], log_trans.shape[:-2]
    )
    dtype = torch.promote_types(
        unary_logits.dtype, torch.promote_types(log_init.dtype, log_trans.dtype)
    )
    unary = unary_logits.to(dtype).expand(batch + (length,))
    if length == 0:
        return unary.clone()
    log_init = log_init.to(dtype)
    log_trans = log_trans.to(dtype)

    def plane(x: Tensor, n: int) -> Tensor:
        return x.unsqueeze(-1).expand(batch + (n,))

    # M_0 folds in the initial law (both rows equal: the row of any prefix product is alpha_t);
    # M_t = T diag(exp(L_t)) for t >= 1.
    i0, i1 = plane(log_init[..., 0], 1), plane(log_init[..., 1], 1) + unary[..., :1]
    n = length - 1
    u = unary[..., 1:]
    t00, t10 = plane(log_trans[..., 0, 0], n), plane(log_trans[..., 1, 0], n)
    t01, t11 = plane(log_trans[..., 0, 1], n) + u, plane(log_trans[..., 1, 1], n) + u
    elems: _LogMat = (
        torch.cat([i0, t00], -1),
        torch.cat([i1, t01], -1),
        torch.cat([i0, t10], -1),
        torch.cat([i1, t11], -1),
    )

    prefix = _associative_scan(_log_matmul, elems)
    forward_odds = prefix[1] - prefix[0]  # log alpha_t(1) - log alpha_t(0)
    if n == 0:
        return forward_odds

    # Suffix products S_t = M_t ... M_{L-1} (t >= 1), scanned on the reversed sequence; then
    # beta_{t-1}(i) = logsumexp_j S_t[i, j] and beta_{L-1} = 0.
    rev: _LogMat = (t00.flip(-1), t01.flip(-1), t10.flip(-1), t11.flip(-1))
    suffix = _associative_scan(_log_matmul_reversed, rev)
    s00, s01, s10, s11 = (x.flip(-1) for x in suffix)
    backward_odds = torch.logaddexp(s10, s11) - torch.logaddexp(s00, s01)
    backward_odds = torch.cat([backward_odds, torch.zeros_like(backward_odds[..., :1])], -1)
    return forward_odds + backward_odds


def chain_extrinsic(unary_logits: Tensor, log_init: Tensor, log_trans: Tensor) -> Tensor:
    """Extrinsic log-odds of Module B: posterior log-odds minus the evidence that came in.

    This is the message ``logit(pi_t)`` that Module B returns to Module A; it carries what the
    chain says about ``s_t`` from all *other* positions and the prior, never ``L_t`` itself [4].

    :param torch.Tensor unary_logits: evidence log-odds of shape ``batch + (L,)``.
    :param torch.Tensor log_init: initial log probabilities, broadcastable to ``batch + (2,)``.
    :param torch.Tensor log_trans: log transition matrices, broadcastable to ``batch + (2, 2)``.
    :returns: extrinsic log-odds of shape ``batch + (L,)``.
    :rtype: torch.Tensor

    Example::

        >>> unary = torch.zeros(3, 100)  # no evidence: the prior's stationary log-odds
        >>> chain_extrinsic(unary, chain_log_init(0.01, 0.1), chain_log_transition(0.01, 0.1))[0, 0]
        tensor(-2.3026)
    """
    return forward_backward(unary_logits, log_init, log_trans) - unary_logits


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
