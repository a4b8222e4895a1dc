"""The i.i.d.-negative training objective: per-anchor loss terms, their analytic derivatives in the
similarities z, and the feature gradient that keeps autograd off the gathered samples.

:class:`Objective` gives the loss and its derivative in z; :func:`contrastive_grad` turns that into
the feature gradient (sparse kernels for the negatives on CPU) and :func:`normalize_backward` carries
it through the normalisation. See :mod:`pipeline.train.trainer` for the estimators.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.theory.losses import Loss
from pipeline.theory.objective import linear_scale
from pipeline.theory.transform import transform_terms


def normalize(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of H (..., d) on the unit sphere: F = H r with r = 1 / |H| (..., 1)."""
    r = torch.linalg.vector_norm(H, dim=-1, keepdim=True).clamp_min_(1e-30).reciprocal_()
    return H * r, r


def normalize_backward(F: torch.Tensor, r: torch.Tensor, grad_F: torch.Tensor) -> torch.Tensor:
    """Gradient with respect to H of a function of F = H / |H|: (grad_F - F (grad_F·F)) / |H|.
    Overwrites grad_F (the step's largest temporary) with the result."""
    d = F.shape[-1]
    dot = torch.bmm(grad_F.reshape(-1, 1, d), F.reshape(-1, d, 1)).view(r.shape)  # (..., 1); a fused dot
    return grad_F.addcmul_(F, dot, value=-1.0).mul_(r)


@dataclass(frozen=True)
class Objective:
    """The per-anchor loss terms of a step and their analytic derivatives in z.

    Anchors are stratified (their classes ``y_a`` fixed: M / C of each class per step) and carry the
    importance weights ``w = C p_{y_a}``; everything that depends on the anchor's class only is
    gathered once here. ``z`` holds ``f_a·f_j - f_a·f_p`` for the K negatives of each anchor: the k
    sampled negatives (``sampled``) or one sample of each class (``expected``, where the classes of
    the k negatives are summed over their multinomial counts N with probabilities P).
    """

    loss: Loss  # param stacked per run, (B, 1, 1)
    rho: float  # 1 (sum over negatives) or 1 / k (mean; 0 at k = inf)
    k: int | float  # math.inf: the large-k limit (expected only)
    w: torch.Tensor  # (B, M) importance weights of the anchors
    q_a: torch.Tensor | None = None  # (B, M, C) class probabilities of a negative; None: sampled
    counts: torch.Tensor | None = None  # (Mc, C) count vectors n; None: psi linear, transform or limit
    P_a: torch.Tensor | None = None  # (B, M, Mc) their multinomial probabilities
    nodes: torch.Tensor | None = None  # (n,) quadrature nodes of the transform (pipeline.theory.transform), large k
    # a remedy's phi_cj(t) = phi(scale (t + delta)) (pipeline.theory.remedies), by anchor and negative class
    delta: torch.Tensor | None = None  # (B, M, K) shifts, K = C columns (expected); None: none
    scale: torch.Tensor | None = None  # (B, M, K) tau / tau_c; None: 1

    def terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run loss (B,) (the weighted mean over anchors) and g = its derivative in z (B, M, K)."""
        loss, rho, M = self.loss, self.rho, z.shape[1]
        scale = self.w / M  # (B, M)
        phi, dphi = loss.phi_dphi(self._affine(z))  # (B, M, K) each
        if self.scale is not None:
            dphi = dphi.mul_(self.scale)  # d/dz phi(s (z + delta)) = s phi'(s (z + delta))
        if self.q_a is None:  # sampled: psi(rho sum_j phi(z_j))
            S = rho * phi.sum(-1)  # (B, M)
            L = loss.psi(S)  # (B, M)
            g = dphi.mul_((scale * rho * loss.dpsi(S))[..., None])
        elif loss.psi_linear:  # expected, psi linear: E[sum_i phi] = k sum_j q_j phi(z_j)
            factor = linear_scale(self.k, rho)  # rho k (1 at k = inf: L / k)
            L = factor * (self.q_a * phi).sum(-1)  # (B, M)
            g = dphi.mul_(self.q_a).mul_((scale * factor)[..., None])
        elif math.isinf(self.k):  # expected, k = inf: log(one + sum_j q_j phi_j), one = 1 for mean
            base = (self.q_a * phi).sum(-1) + (1.0 if rho == 0 else 0.0)  # (B, M)
            L = base.log()
            g = dphi.mul_(self.q_a).mul_((scale / base)[..., None])
        elif self.nodes is not None:  # expected by the transform: cost flat in k
            L, dV, _ = transform_terms(rho * phi, self.q_a, int(self.k), t=self.nodes)  # (B, M), (B, M, K)
            g = dphi.mul_(dV).mul_((scale * rho)[..., None])
        else:  # expected: sum over count vectors n of P(n) psi(rho sum_j n_j phi(z_j))
            S = rho * phi @ self.counts.T  # (B, M, Mc)
            L = (self.P_a * loss.psi(S)).sum(-1)  # (B, M)
            g = dphi.mul_((self.P_a * loss.dpsi(S)) @ self.counts).mul_((scale * rho)[..., None])
        return (self.w * L).mean(1), g

    def _affine(self, z: torch.Tensor) -> torch.Tensor:
        """The argument of phi: z, or a remedy's scale (z + delta) (B, M, K)."""
        if self.delta is not None:
            z = z + self.delta
        if self.scale is not None:
            z = z * self.scale
        return z


def contrastive_grad(
    F: torch.Tensor,
    i_a: torch.Tensor,
    i_p: torch.Tensor,
    i_n: torch.Tensor,
    terms: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    kernel: str = "sparse",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run loss and its gradient with respect to the features, autograd kept off the gathers.

    With ``z_j = f_a·f_j - f_a·f_p`` and ``g_j = dL/dz_j`` (from ``terms``), the chain
    rule is ``dL/df_a = sum_j g_j f_j - (sum_j g_j) f_p``, ``dL/df_j = g_j f_a``, ``dL/df_p =
    -(sum_j g_j) f_a``, scatter-added into the rows. ``kernel="sparse"`` never gathers the
    negatives' features: the anchor-by-row incidence of the negatives is a CSR matrix with K entries a
    row, z is its sampled product ``f_a F^T`` (SDDMM) and ``sum_j g_j f_j`` an embedding bag with
    weights g. ``"dense"`` gathers them into a (B M, K, d) tensor and uses two batched matmuls: the
    same numbers, more memory traffic (about 5% slower a step on CPU), and the CUDA default until
    ``benchmarks/device_train.sh`` has checked cuSPARSE's SDDMM with repeated negatives on a GPU.

    Parameters
    ----------
    F : (B, N, d) features, detached; rows of run b are indexed b * N + i.
    i_a, i_p : (B, M) flat row indices of the anchors and positives.
    i_n : (B, M, K) flat row indices of the negatives (repeats allowed).
    terms : maps z (B, M, K) to the per-run loss (B,) and its derivative g (B, M, K) in z.

    Returns
    -------
    per_run : (B,) loss; grad_F : (B, N, d) its gradient (of the sum over runs).
    """
    B, N, d = F.shape
    M, K = i_n.shape[1:]
    flat = F.reshape(B * N, d)
    cols = i_n.reshape(-1)  # (B M K,)
    f_a = flat.index_select(0, i_a.reshape(-1))  # (B M, d)
    f_p = flat.index_select(0, i_p.reshape(-1))  # (B M, d)
    if kernel == "sparse":
        crow = torch.arange(0, B * M * K + 1, K, device=F.device)  # (B M + 1,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros_like(cols, dtype=F.dtype), (B * M, B * N))
            z_n = torch.sparse.sampled_addmm(pattern, f_a, flat.t(), beta=0.0).values().view(B * M, K)
    else:
        f_n = flat.index_select(0, cols).view(B * M, K, d)  # (B M, K, d)
        z_n = torch.bmm(f_n, f_a[:, :, None])[..., 0]  # (B M, K)
    per_run, g = terms((z_n - (f_a * f_p).sum(-1, keepdim=True)).view(B, M, K))  # (B,), (B, M, K)
    g = g.reshape(B * M, K)
    g_sum = g.sum(-1, keepdim=True)  # (B M, 1)
    if kernel == "sparse":
        pulled = torch.nn.functional.embedding_bag(i_n.view(B * M, K), flat, per_sample_weights=g, mode="sum")
    else:
        pulled = torch.bmm(g[:, None, :], f_n)[:, 0]  # (B M, d): sum_j g_j f_j
    grad = torch.zeros_like(flat)  # (B N, d)
    grad.index_add_(0, i_a.reshape(-1), pulled.addcmul_(g_sum, f_p, value=-1.0))
    grad.index_add_(0, i_p.reshape(-1), f_a * -g_sum)
    grad.index_add_(0, cols, (g[:, :, None] * f_a[:, None, :]).view(B * M * K, d))
    return per_run, grad.view(B, N, d)
