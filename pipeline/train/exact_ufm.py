"""Exact full-batch training of free features (``train.estimator: exact``, model ``ufm``).

The sample-level loss that the stochastic trainer estimates, computed exactly: every sample s is an
anchor with weight p_{y_s} / n (the class proportions, uniform within a class of n samples), its
positive is each other sample of its class in turn (itself when n = 1), and the k negatives are
i.i.d. over the samples with probability q_{y_s, y_j} / n (``marginal``: q = p; ``other``: p without
the anchor's class), their expectation taken exactly by :func:`pipeline.theory.objective.expected_loss`
(the transform at large k). No sampling, so nothing is noise.

With G = F^T F the Gram of the N unit features (d x N), an (anchor, positive) pair a = (s, s+)
pays ``E psi(rho sum_i phi(G[s, j_i] - G[s, s+]))``: the class-level expectation with the samples
as categories and ``cos[a, j] = G[s, j] - G[s, s+] + 1``. It is minimised by the staged trust region
of :func:`pipeline.theory.oblique.staged_trust_region` on the product of spheres, from random
features (collapse is found, not assumed), until the gradient norm in the metric weighted by the
squared sample weights, sqrt(sum_s |grad_s|^2 / w_s^2) (each sample's stationarity relative to its
own weight), is at most ``GRAD_TOL``.

Stationarity of any free-feature run is reported as :meth:`SampleLoss.grad_norm`: that norm over
the smallest class proportion p_min, so that the minority-minority force (O(p_min^2) on a sample of
weight O(p_min)) counts at O(1): a geometry error delta there gives a norm ~ delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.theory.objective import expected_loss
from pipeline.theory.oblique import staged_trust_region
from pipeline.theory.problem import Problem

GRAD_TOL = 1e-14  # gradient norm (the trust region's second-stage metric) at which it stops
FIRST_STAGE_TOL = 1e-8  # the first stage only has to bring the second within reach
MAX_ITERATIONS = 300  # stage 1 can stall short of its tolerance at large R; stage 2 then converges in a few


@dataclass(frozen=True)
class SampleLoss:
    """The full-batch sample-level loss of one run: pairs, weights and negative distributions."""

    loss: Any
    k: float
    rho: float
    y: np.ndarray  # (N,) class of each sample
    anchor: np.ndarray  # (A,) sample of each (anchor, positive) pair
    positive: np.ndarray  # (A,)
    w: np.ndarray  # (A,) pair weights (sum 1)
    q: np.ndarray  # (A, N) probability of each sample as a negative
    sample_weight: np.ndarray  # (N,) anchor weight of each sample, p_y / n (a remedy's a_y / n)
    shift: np.ndarray | None = None  # (A, N) a remedy's delta between the anchor's class and each sample's
    scale: np.ndarray | None = None  # (A, N) a remedy's tau / tau_c of the anchor's class

    @classmethod
    def build(cls, loss: Any, p: np.ndarray, n: int, k: float, negatives: str, reduction: str,
              remedy: Any = None) -> SampleLoss:  # fmt: skip
        """``remedy`` (:mod:`pipeline.theory.remedies`) acts on samples through their classes: anchor weights
        a_y / n, negatives drawn from pi_y / n, and phi_{y_s y_j} on the pair (anchor s, negative j)."""
        problem = Problem.create(loss, p, k, negatives, reduction, remedy=remedy)  # the class level: a, q, rho
        C = problem.C
        a = problem.anchor_weights()  # (C,): p without a remedy
        y = np.repeat(np.arange(C), n)  # (N,)
        pairs = [(s, t) for s in range(C * n) for t in range(C * n) if y[t] == y[s] and (t != s or n == 1)]
        anchor, positive = (np.array(x) for x in zip(*pairs, strict=True))
        share = 1.0 / (n - 1) if n > 1 else 1.0
        w = a[y[anchor]] / n * share  # (A,)
        q = problem.negative_distribution()[y[anchor]][:, y] / n  # (A, N)
        shift, scale = (None if x is None else x[y[anchor]][:, y] for x in problem.phi_affine())  # (A, N) each
        return cls(problem.loss, problem.k, problem.rho, y, anchor, positive, w, q, a[y] / n, shift, scale)

    def _cos(self, G: np.ndarray) -> np.ndarray:
        return G[self.anchor] - G[self.anchor, self.positive][:, None] + 1.0  # (A, N)

    def _to_G(self, g: np.ndarray) -> np.ndarray:
        """dL/dG (N, N) from dL/dcos (A, N): row s gets its pairs' g, minus their sums at (s, s+)."""
        N = self.y.size
        D = np.zeros((N, N), dtype=g.dtype)  # complex for complex-step checks
        np.add.at(D, self.anchor, g)
        np.add.at(D, (self.anchor, self.positive), -g.sum(axis=1))
        return D

    def evaluate(self, F: np.ndarray) -> tuple[float, np.ndarray, Any]:
        """L(F), dL/dF (d, N) and the Hessian-vector product dF -> (d, N), for unit columns F."""
        G = F.T @ F  # (N, N)
        value, g, hvp = expected_loss(self.loss, self.k, self.rho, self.w, self.q, self._cos(G), hessian="operator",
                                      shift=self.shift, scale=self.scale)  # fmt: skip
        D = self._to_G(g)

        def hessian(dF: np.ndarray) -> np.ndarray:
            dG = dF.T @ F
            dG = dG + dG.T
            dD = self._to_G(hvp(self._cos(dG) - 1.0))  # the constant of _cos drops out of a direction
            return dF @ (D + D.T) + F @ (dD + dD.T)

        return value.item(), F @ (D + D.T), hessian

    def grad_norm(self, F: np.ndarray, grad: np.ndarray | None = None) -> float:
        """Stationarity at F: sqrt(sum_s |P_s grad_s|^2 / w_s^2) / p_min (module docstring); ``grad``:
        dL/dF there, when already evaluated."""
        grad = self.evaluate(F)[1] if grad is None else grad
        tangent = grad - F * (F * grad).sum(axis=0)[None, :]
        n = int((self.y == 0).sum())
        p_min = float(self.sample_weight.min()) * n
        return float(np.sqrt(((tangent / self.sample_weight[None, :]) ** 2).sum())) / p_min


@dataclass(frozen=True)
class ExactFit:
    features: np.ndarray  # (N, d) unit rows
    labels: np.ndarray  # (N,)
    loss: float
    grad_norm: float  # SampleLoss.grad_norm at the end
    iterations: int


def fit_exact(loss: Any, p: np.ndarray, n: int, k: float, dim: int, seed: int, negatives: str = "marginal",
              reduction: str = "sum", remedy: Any = None) -> ExactFit:  # fmt: skip
    """Minimise the exact sample-level loss of free features from a seeded random start (under ``remedy``)."""
    problem = SampleLoss.build(loss, p, n, k, negatives, reduction, remedy)
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((dim, p.size * n))
    start /= np.linalg.norm(start, axis=0, keepdims=True)  # (d, N)
    result = staged_trust_region(problem.evaluate, start, problem.sample_weight, GRAD_TOL, MAX_ITERATIONS,
                                 first_tol=FIRST_STAGE_TOL)  # fmt: skip
    F = result.point
    value, grad, _ = problem.evaluate(F)
    return ExactFit(F.T.copy(), problem.y, value, problem.grad_norm(F, grad), int(result.iterations))
