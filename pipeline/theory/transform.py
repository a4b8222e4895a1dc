"""E log(1 + S) for a sum of k i.i.d. terms by the Frullani / Laplace transform: cost flat in k.

With ``S = X_1 + ... + X_k``, ``X_i`` i.i.d. taking the value ``x_j >= 0`` with probability ``q_j``,
Frullani's integral ``log(1 + s) = int_0^inf e^{-t} (1 - e^{-t s}) / t dt`` gives

    V   = E log(1 + S)      = int_0^inf e^{-t} (1 - M(t)^k) / t dt,     M(t) = sum_j q_j e^{-t x_j}
    V_j = dV / dx_j         = k q_j int_0^inf e^{-t (1 + x_j)} M^{k-1} dt
    V_jl = d2V / dx_j dx_l  = -k (k - 1) q_j q_l int t e^{-t (1 + x_j + x_l)} M^{k-2} dt
                              - [j = l] k q_j int t e^{-t (1 + x_j)} M^{k-1} dt

(differentiate under the integral; ``M^k`` is the Laplace transform of S). One integral per anchor
and category whatever k is, against binom(k + J - 1, J - 1) count vectors for the enumeration.

Quadrature: ``t = e^u`` and the trapezoid rule in u with step ``h`` on the nodes ``u = h i``. In u
the integrands are analytic in a strip around the real axis and decay like e^u as u -> -inf and
like e^{-e^u} as u -> +inf, so the rule converges geometrically: the discretisation error behaves
like exp(-c / h) with c ~ 9 (measured against the enumeration: 3e-8 at h = 0.5, 5e-12 at 0.35,
round-off from 0.25 on), hence halving h squares it: ``err(h) ~ |I_h - I_2h|^2 / |I|``, which
:func:`quadrature_error` reports and the tests check. The default h = 0.2 puts it near 1e-20.
The range is truncated where the tails are provably small, with ``Lk = log(1 + (k + 1) x_max)``:

- below ``u_lo = -(Lk + 20)`` the integrands are ``c t^p (1 + O(t (1 + k x_max)))``, p = 1 for the
  value and the gradient, p = 2 for the Hessian, so the rule's nodes below u_lo sum to the first
  node's term times ``r / (1 - r)``, ``r = e^{-p h}``, up to a relative e^-20; that sum is itself at
  most ``~e^-20`` of the integral (the integrands are at most ``k t E X``, ``t``, ``t^2`` while the
  integrals are at least ``~ E X / x_max``, ``1 / (1 + k x_max)`` and its square; Jensen:
  ``M >= e^{-t E X}``). The first node's weight carries that geometric tail: the error is ~e^-40;
- above ``t_hi = 50 + 2 Lk``: the integrands are at most ``t^2 e^{-t}``, a tail below ``e^-44`` of
  the same lower bounds.

Stability: ``1 - M^k = -expm1(k log M)`` with ``log M = log1p(sum_j q_j expm1(-t x_j))`` while M is
near 1 (small t, where ``1 - M`` is tiny) and ``log M`` directly once ``M < 1/2``; ``M^{k-1} = 1`` for
k = 1 and ``M^{k-2}`` is not formed for k < 2; ``q_j = 0`` (the ``other`` model's own class) is a
category that never occurs. Written against the namespace of ``x``: numpy float64 or complex (for
complex-step checks) in the theory, torch tensors in training.

Cost (numpy, the theory's path): the work is rows x categories x nodes, exponentials mostly.

- Rows are grouped by their largest term (within a factor e^2), and each group gets its own node range:
  class temperatures and logit shifts put a tail anchor's terms near e^60 beside the head's near 1, and
  the range grows with log x_max.
- With more than 28 categories, the nodes with ``t s <= 0.1`` (s the group's largest term; about three
  quarters of them) take ``e^{-t x_j} = sum_m (x_j / s)^m (-t s)^m / m!`` to m = 13: ``E = P T^T``, a
  product of rank 14 whatever their number. The remainder is below ``0.1^14 / 14! ~ 1e-25`` relative, and
  there ``M - 1`` is the series without its m = 0 term: no cancellation. Measured against the direct rule:
  value, gradient and Hessian equal to 1.2e-15 relative (x from e^-22 to e^67, k = 1 to 65536).
- ``hessian='model'``, a trust region's Hessian, takes every 4th node (the rule of step 4h, 1e-4 to 5e-4
  relative) and 7 Taylor terms: its products cost a third of the exact operator's, which is most of a
  many-class solve; the value and gradient stay exact. From 200 categories (``MODEL_SINGLE_FROM``) its arrays
  are float32: the products are memory bound, and take half the time at 1e-6 relative.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

H_STEP = 0.2  # trapezoid step in u = log t
# the ``model`` Hessian operator keeps every 4th node (step 0.8: 1e-4 to 5e-4 relative, measured over k = 2 to
# 65536 and x up to 1e26): a trust region's model needs no more (exp(C = 100, rho = 100), k = 256: the same 12
# iterations, Grams equal to 2e-14)
MODEL_STRIDE = 4
MODEL_ORDER = 6  # the model's Taylor terms: remainder 0.1^7 / 7! ~ 2e-11
# from this many categories the model's arrays are float32 (numpy): its products read C x C x nodes numbers, memory
# bound, and take half the time (41 -> 21 ms at exp(C = 1000, rho = 100), k = 256, one thread) at 1e-6 of each row's
# largest; the oblique solver's own C x C products switch at the same size (oblique.model_product)
MODEL_SINGLE_FROM = 200
TAYLOR_EPS = 0.1  # nodes with t x_max <= 0.1 take e^{-t x} from its Taylor series ...
TAYLOR_ORDER = 13  # ... to the power 13: the remainder is below 0.1^14 / 14! ~ 1e-25, relative
GROUP_SPAN = 2.0  # rows whose largest terms lie within a factor e^2 share a node range (at most 10 nodes wasted)
TAYLOR_MIN_J = 28  # the Taylor block pays from J > 2 (TAYLOR_ORDER + 1) categories
_X_TINY = 1e-300  # the scale of a row of zeros
# from this many rows (anchors) a numpy transform splits them over as many threads as BLAS may use (numpy's exp
# and matrix products release the GIL): exp(C = 1000, rho = 100) at k = 256, value, gradient and model 1.75 ->
# 0.92 s on 2 cores, equal to 1e-20. Dask workers, which run BLAS on one thread (OMP_NUM_THREADS=1), stay on one
THREADED_ROWS = 256
_TAIL_LO = 20.0  # below u = -(Lk + 20) the integrands are c t^p to a relative e^-20: summed in closed form
_T_HI = 50.0  # e^-t beyond t = 50 + 2 Lk: the truncated large-t tail


def nodes(k: float, x_max: float, h: float = H_STEP) -> np.ndarray:
    """Quadrature nodes t = e^{h i} covering the integrands for k terms of size at most x_max.

    The nodes of step 2h are every other node of step h, so the two rules can be compared.
    """
    return _rule(*_node_range(k, x_max, h), h)[0]


def _node_range(k: float, x_max: float, h: float) -> tuple[int, int]:
    """Indices (lo, hi) of the first and last node, both even (see the module docstring)."""
    Lk = math.log1p((k + 1) * max(x_max, 0.0))
    return math.floor(-(Lk + _TAIL_LO) / (2 * h)) * 2, math.ceil(math.log(_T_HI + 2 * Lk) / (2 * h)) * 2


@lru_cache(maxsize=256)
def _rule(lo: int, hi: int, h: float) -> tuple[np.ndarray, ...]:
    """:func:`_weights` of the nodes t = e^{h i}, i = lo..hi (read-only, shared by every call)."""
    rule = _weights(np.exp(h * np.arange(lo, hi + 1)), h)
    for a in rule:
        a.flags.writeable = False
    return rule


def _weights(t: Any, h: float) -> tuple[Any, ...]:
    """(t, -t, e, W) for nodes t (n,): the trapezoid weights in u = log t, the factor e^{-t} included.

    ``e = h e^{-t}`` (the value: its integrand has no factor t); ``W`` (n, 2) holds ``h t e^{-t}``
    (the gradient's, with the measure dt = t du) and ``h t^2 e^{-t}`` (the Hessian's, one more t), so
    that one product gives both. The first node stands for itself and the geometric tail below it,
    a factor ``1 / (1 - e^{-p h})`` with p = 1 for ``e`` and the gradient's weights (integrands ~ t)
    and p = 2 for the Hessian's (~ t^2).
    """
    xp = _xp(t)
    r = math.exp(-h)
    e = xp.exp(-t) * h  # (n,)
    e[0] /= 1.0 - r
    w = t * e  # (n,)
    w2 = t * w  # (n,)
    w2[0] *= (1.0 - r) / (1.0 - r * r)
    return t, -t, e, xp.stack([w, w2], -1)


def _xp(x: Any) -> Any:
    """numpy or torch, whichever ``x`` belongs to (torch is never imported here)."""
    return np if isinstance(x, np.ndarray) else __import__("torch")


def transform_terms(
    x: Any, q: Any, k: int, hessian: bool | str = False, h: float = H_STEP, t: Any = None
) -> tuple[Any, Any, Any]:
    """E log(1 + S) per anchor and its derivatives in x, for S a sum of k i.i.d. draws of x.

    Parameters
    ----------
    x : (..., J) values of one term per category (>= 0), numpy (float or complex) or torch.
    q : (..., J) category probabilities (rows sum to 1; zeros allowed).
    k : int
        Number of terms (>= 1).
    hessian : bool, 'operator' or 'model'
        Also return the second derivatives: dense, or as the function v (..., J) -> d2V v (..., J),
        which costs what the gradient does (the dense Hessian costs J times more); 'model' is that
        function on every ``MODEL_STRIDE``-th node with ``MODEL_ORDER`` Taylor terms (a third of the
        cost, 1e-4 to 5e-4 relative): for a trust region's model, never for a value; with given nodes
        ``t`` it is the exact operator. numpy only.
    h : float
        Trapezoid step in u = log t.
    t : array, optional
        Nodes to use (default :func:`nodes` for ``x.max()``); training passes fixed nodes (a tensor).

    Returns
    -------
    V : (...,) E log(1 + S); dV : (..., J) dV/dx_j; d2V : (..., J, J), a function or None.
    """
    xp = _xp(x)
    if t is None and xp is np:
        return _grouped_terms(x, q, k, hessian, h)
    if t is None:
        t = nodes(k, float(x.real.max() if x.is_complex() else x.max()), h)
    if xp is not np and not isinstance(t, xp.Tensor):
        t = xp.tensor(np.array(t), dtype=x.dtype, device=x.device)
    return _rule_terms(x, q, k, hessian, _weights(t, h))


def _blas_threads() -> int:
    """The fewest threads any loaded BLAS may use (threadpoolctl: the environment's OMP_NUM_THREADS and any
    ``threadpool_limits`` in force)."""
    import threadpoolctl

    threads = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    return max(1, min(threads, default=1))


def _grouped_terms(x: np.ndarray, q: np.ndarray, k: int, hessian: bool | str, h: float) -> tuple[Any, Any, Any]:
    """:func:`transform_terms` on numpy rows grouped by their largest term: each group gets its own node range
    and Taylor block (:func:`_group_terms`), so a row of small terms does not pay for another's large ones. From
    ``THREADED_ROWS`` rows, split into one block of rows a BLAS thread, computed concurrently."""
    shape, J = x.shape, x.shape[-1]
    rows = x.reshape(-1, J)
    if len(rows) >= THREADED_ROWS and (threads := _blas_threads()) > 1:
        from concurrent.futures import ThreadPoolExecutor

        q_rows = np.broadcast_to(q, shape).reshape(-1, J)  # (R, J)
        blocks = np.array_split(np.arange(len(rows)), threads)
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda b: _grouped_terms_serial(rows[b], q_rows[b], k, hessian, h), blocks))
        V = np.concatenate([d[0] for d in done]).reshape(shape[:-1])
        dV = np.concatenate([d[1] for d in done]).reshape(shape)
        if not hessian:
            return V, dV, None
        if hessian is True:
            return V, dV, np.concatenate([d[2] for d in done]).reshape(*shape, J)

        def hvp(v: np.ndarray) -> np.ndarray:  # (..., J) -> (..., J), each block's operator on its rows
            v_rows = np.broadcast_to(v, shape).reshape(-1, J)
            with ThreadPoolExecutor(threads) as pool:
                out = list(pool.map(lambda i: done[i][2](v_rows[blocks[i]]), range(threads)))
            return np.concatenate(out).reshape(shape)

        return V, dV, hvp
    return _grouped_terms_serial(x, q, k, hessian, h)


def _grouped_terms_serial(x: np.ndarray, q: np.ndarray, k: int, hessian: bool | str, h: float) -> tuple:
    """:func:`_grouped_terms` in this thread."""
    shape, J = x.shape, x.shape[-1]
    rows, q_rows = x.reshape(-1, J), np.broadcast_to(q, shape).reshape(-1, J)  # (R, J) each
    x_max = np.real(rows).max(axis=1)  # (R,)
    log_max = np.log(np.maximum(x_max, _X_TINY))  # (R,)
    bucket = np.zeros(len(rows), dtype=int)  # (R,): greedy in increasing log x_max, GROUP_SPAN wide
    if log_max.max() - log_max.min() > GROUP_SPAN:
        order = np.argsort(log_max)
        label, start = 0, log_max[order[0]]
        for i in order:
            if log_max[i] > start + GROUP_SPAN:
                label, start = label + 1, log_max[i]
            bucket[i] = label
    groups = np.unique(bucket)
    if len(groups) == 1:
        V, dV, d2V = _group_terms(rows, q_rows, k, hessian, h, float(x_max.max()))
        parts = [(slice(None), d2V)]
    else:
        V, dV = np.empty(len(rows), dtype=rows.dtype), np.empty_like(rows)  # (R,), (R, J)
        d2V = np.empty((*rows.shape, J), dtype=rows.dtype) if hessian is True else None  # (R, J, J)
        parts = []
        for b in groups:
            rows_b = np.nonzero(bucket == b)[0]
            V_b, dV_b, d2V_b = _group_terms(rows[rows_b], q_rows[rows_b], k, hessian, h, float(x_max[rows_b].max()))
            V[rows_b], dV[rows_b] = V_b, dV_b
            if hessian is True:
                d2V[rows_b] = d2V_b
            parts.append((rows_b, d2V_b))
    V, dV = V.reshape(shape[:-1]), dV.reshape(shape)
    if not hessian:
        return V, dV, None
    if hessian is True:
        return V, dV, d2V.reshape(*shape, J)

    def hvp(v: np.ndarray) -> np.ndarray:  # (..., J) -> (..., J), each group's operator on its rows
        v_rows = v.reshape(-1, J)
        if len(parts) == 1:
            return parts[0][1](v_rows).reshape(v.shape)
        out = np.empty(np.broadcast_shapes(v_rows.shape, rows.shape), dtype=np.result_type(v_rows, rows))
        for rows_b, operator in parts:
            out[rows_b] = operator(v_rows[rows_b])
        return out.reshape(v.shape)

    return V, dV, hvp


def _taylor(y: np.ndarray, order: int, factorial: bool = True) -> np.ndarray:
    """(..., order + 1): y^m / m! (or y^m), m = 0..order, by cumulative products (no overflow for |y| <= 1)."""
    factors = y[..., None] / np.arange(1, order + 1) if factorial else np.repeat(y[..., None], order, axis=-1)
    return np.concatenate([np.ones((*y.shape, 1), dtype=factors.dtype), np.cumprod(factors, axis=-1)], axis=-1)


def _group_terms(x: np.ndarray, q: np.ndarray, k: int, hessian: bool | str, h: float, s: float) -> tuple:
    """Rows x (R, J) with every term <= s: the rule of step h over their range (:func:`_node_range`), its
    nodes with t s <= TAYLOR_EPS through the Taylor product where there are more than ``TAYLOR_MIN_J`` categories."""
    s = max(s, _X_TINY)
    return _rule_terms(x, q, k, hessian, _rule(*_node_range(k, s, h), h), s, h)


def _rule_terms(x: Any, q: Any, k: int, hessian: bool | str, rule: tuple, s: float | None = None,
                h: float = H_STEP) -> tuple[Any, Any, Any]:  # fmt: skip
    """V (...,), dV (..., J) and the dense Hessian (..., J, J), its operator or None, on one rule (t, -t, e, W) of
    :func:`_weights`, in the namespace of x. Given the scale s (numpy; every term <= s) and more than
    ``TAYLOR_MIN_J`` categories, the nodes with t s <= TAYLOR_EPS take e^{-t x_j} = sum_m (x_j / s)^m (-t s)^m / m!
    (a product of rank TAYLOR_ORDER + 1: P (..., J, m) times T (n_s, m)), and ``hessian='model'`` is the rule of
    step MODEL_STRIDE h with MODEL_ORDER terms; without s every node is direct and 'model' is 'operator'."""
    xp = _xp(x)
    t, neg_t, e, W = rule
    n_s = int(np.searchsorted(t, TAYLOR_EPS / s, side="right")) if s and x.shape[-1] > TAYLOR_MIN_J else 0
    tx = x[..., None] * neg_t[n_s:]  # (..., J, n_d)
    E = xp.exp(tx)  # (..., J, n_d): e^{-t x_j} on the direct nodes
    M = (q[..., None, :] @ E)[..., 0, :]  # (..., n_d)
    near_one = (q[..., None, :] @ xp.expm1(tx))[..., 0, :]  # (..., n_d): M - 1 without cancellation
    if n_s:
        T = _taylor(neg_t[:n_s] * s, TAYLOR_ORDER)  # (n_s, m): (-t s)^m / m!
        P = _taylor(x / s, TAYLOR_ORDER, factorial=False)  # (..., J, m): (x_j / s)^m
        qP = (q[..., None, :] @ P)[..., 0, :]  # (..., m): sum_j q_j (x_j / s)^m
        M = np.concatenate([qP @ T.T, M], axis=-1)  # (..., n)
        near_one = np.concatenate([qP[..., 1:] @ T[:, 1:].T, near_one], axis=-1)  # (..., n)
    big = (M.real if xp is np else M) > 0.5
    # log1p of M - 1 while M is near 1, log M once it is small
    if xp is np:
        logM = np.log(M + 1e-300)  # (..., n)
        np.log1p(near_one, out=logM, where=big)
    else:
        logM = xp.where(big, xp.log1p(xp.where(big, near_one, 0.0)), xp.log(xp.where(big, 1.0, M) + 1e-300))
    V = -(xp.expm1(k * logM) @ e)  # (...,)
    c = xp.exp((k - 1) * logM)[..., None] * W if k > 1 else W  # (..., n, 2)
    # (..., J, 2): int e^{-t (1 + x_j)} M^{k-1} dt and int t e^{-t (1 + x_j)} M^{k-1} dt
    integrals = E @ c[..., n_s:, :]
    if n_s:
        integrals = integrals + P @ (T.T @ c[..., :n_s, :])
    kq = k * q  # (..., J)
    dV = kq * integrals[..., 0]  # (..., J): k q_j int e^{-t (1 + x_j)} M^{k-1} dt
    if not hessian:
        return V, dV, None
    diag = -(kq * integrals[..., 1])  # (..., J): -k q_j int t e^{-t (1 + x_j)} M^{k-1} dt
    if hessian == "model" and s:  # every MODEL_STRIDE-th node (the rule of that step; its first carries the tail)
        w2 = _weights(t[::MODEL_STRIDE], MODEL_STRIDE * h)[3][:, 1]  # (n',)
        tw2 = w2 * np.exp((k - 2) * logM[..., ::MODEL_STRIDE]) if k > 2 else w2  # (..., n')
        n_c = -(-n_s // MODEL_STRIDE)  # the first n_c nodes lie in the Taylor block
        E_c = np.ascontiguousarray(E[..., n_c * MODEL_STRIDE - n_s :: MODEL_STRIDE])  # (..., J, n' - n_c)
        taylor = None
        if n_c:
            P_c = np.ascontiguousarray(P[..., : MODEL_ORDER + 1])  # (..., J, m'): a model needs fewer terms
            taylor = (P_c, np.ascontiguousarray(T[::MODEL_STRIDE, : MODEL_ORDER + 1]), tw2[..., :n_c])
        q_m, tw2_m = q, tw2[..., n_c:]
        if x.shape[-1] >= MODEL_SINGLE_FROM and x.dtype == np.float64:
            single = lambda a: a.astype(np.float32)  # noqa: E731
            q_m, E_c, tw2_m = single(np.asarray(q)), single(E_c), single(tw2_m)
            taylor = None if taylor is None else tuple(single(a) for a in taylor)
        return V, dV, _operator(q_m, k, E_c, tw2_m, diag, taylor)
    tw2 = W[:, 1] * xp.exp((k - 2) * logM) if k > 2 else W[:, 1]  # (..., n): t^2 e^{-t} M^{k-2} h, with the t du
    if hessian in ("operator", "model"):
        return V, dV, _operator(q, k, E, tw2[..., n_s:], diag, (P, T, tw2[..., :n_s]) if n_s else None)
    d2V = (E * tw2[..., None, n_s:]) @ xp.swapaxes(E, -1, -2)  # (..., J, J): int t e^{-t (1 + x_j + x_l)} M^{k-2} dt
    if n_s:
        d2V = d2V + P @ ((T.T * tw2[..., None, :n_s]) @ T) @ np.swapaxes(P, -1, -2)
    d2V = d2V * ((1 - k) * (kq[..., :, None] * q[..., None, :]))  # (..., J, J), broadcast over q
    J = x.shape[-1]
    d2V.reshape(*d2V.shape[:-2], J * J)[..., :: J + 1] += diag
    return V, dV, d2V


def _operator(q: Any, k: int, E: Any, tw2: Any, diag: Any, taylor: tuple | None = None) -> Any:
    """v -> d2V v with d2V_jl = -k (k - 1) q_j q_l sum_n E_jn tw2_n E_ln + [j = l] diag_j; ``taylor`` = (P, T,
    tw2 there) adds the Taylor block's nodes, where E = P T^T (:func:`_rule_terms`)."""

    def hvp(v: Any) -> Any:
        out = diag * v  # (..., J)
        if k > 1:
            if E.dtype == np.float32:  # the model's float32 arrays (MODEL_SINGLE_FROM): v too, else numpy upcasts
                v = v.astype(np.float32)
            qv = (q * v)[..., None, :]  # (..., 1, J)
            back = E @ (tw2 * (qv @ E)[..., 0, :])[..., None]  # (..., J, 1): sum_n E_jn tw2_n sum_l q_l v_l E_ln
            if taylor is not None:
                P, T, tw2_s = taylor
                back = back + P @ ((tw2_s * ((qv @ P)[..., 0, :] @ T.T)) @ T)[..., None]
            out = out + (-k * (k - 1)) * q * back[..., 0]
        return out

    return hvp


def quadrature_error(x: np.ndarray, q: np.ndarray, k: int, h: float = H_STEP) -> float:
    """Estimated relative discretisation error of the rule of step h, from the rule of step 2h.

    The error behaves like exp(-c / h), so ``err(h) ~ err(2h)^2 ~ (|I_h - I_2h| / |I_h|)^2``; the
    largest over the value and every first derivative is returned.
    """
    fine = transform_terms(x, q, k, h=h)[:2]
    coarse = transform_terms(x, q, k, h=2 * h, t=nodes(k, float(np.real(x).max()), h)[::2])[:2]
    rel = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))) for a, b in zip(fine, coarse, strict=True))
    return rel**2
