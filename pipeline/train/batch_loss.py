"""In-batch negatives (SimCLR / SupCon): the other members of a minibatch are the negatives.

A batch holds B = k + 2 samples. For an anchor i and a positive p (another sample of i's class in
the batch) the k negatives are all other members a != i, p (other samples of the class included, as
the theory's ``marginal`` negatives include the anchor's class):

    l(i, p) = psi( rho sum_{a != i, p} phi( f_i·f_a - f_i·f_p ) ),   rho = 1 (sum) or 1 / k (mean).

For InfoNCE this is SupCon's ``-log( exp(f_i·f_p / tau) / sum_{a != i} exp(f_i·f_a / tau) )``: the
positive's own term in the denominator is the 1 of log(1 + .). An anchor's pairs are averaged over
its positives (``positives='mean'``, SupCon's L_out) or summed (``'sum'``, every ordered pair counted
once), and the batch loss is the sum over anchors divided by B: anchors without a positive in the
batch contribute 0, as in SupCon's reference code. Which theory point this estimates, exactly, is
derived in ``docs/inbatch.md`` and computed by :mod:`pipeline.theory.inbatch`.

Exponential phi is evaluated in O(B^2) per run through one log-sum-exp per anchor; hinge phi needs
the (B, B, B) differences and is meant for small batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from pipeline.theory.inbatch import POSITIVES
from pipeline.theory.losses import Loss

Positives = Literal["mean", "sum"]


def pair_losses(F: torch.Tensor, loss: Loss, k: int, reduction: str = "sum", remedy: BatchRemedy | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """l(i, p) for every ordered pair of a batch (R, B, B), whatever the labels (the diagonal is 0).

    Parameters
    ----------
    F : (R, B, d) unit features of R runs' batches, B = k + 2.
    loss : the loss; its ``param`` a float or a tensor broadcasting against (R, 1, 1).
    k : negatives per pair, B - 2.
    reduction : ``sum`` (rho = 1) or ``mean`` (rho = 1 / k).
    remedy, y : a remedy's phi_cj (:class:`BatchRemedy`) and the labels (R, B) it is read by; optional.
    """
    B = F.shape[1]
    if k != B - 2:
        raise ValueError(f"a batch of {B} samples gives k = {B - 2} negatives per pair, not {k}")
    S = F @ F.transpose(1, 2)  # (R, B, B) cosines f_i·f_a
    eye = torch.eye(B, dtype=torch.bool, device=F.device)
    rho = 1.0 if reduction == "sum" else 1.0 / k
    delta = scale = None  # a remedy's phi(scale_i (t + delta_ia)): delta (R, B, B) by (anchor, member), scale (R, B, 1)
    if remedy is not None:
        delta, scale = remedy.pairs(y)
    if loss.phi_kind == "exp":
        # x_ia = scale_i (S_ia + delta_ia) / tau: exp(x_ia - x_ip) is phi_cj of the pair, since delta_cc = 0 for the
        # positive (BatchRemedy refuses a shift on the anchor's own class), so the positive's own term is still 1
        x = S if delta is None else S + delta
        x = x / loss.param if scale is None else x * scale / loss.param  # (R, B, B)
        lse = torch.logsumexp(x.masked_fill(eye, -math.inf), dim=-1, keepdim=True)  # (R, B, 1): log sum_{a != i}
        # sum_{a != i, p} exp(x_ia - x_ip) = e^{lse_i - x_ip} - 1 >= 0 (lse_i includes p), so
        # log(1 + rho (e^{lse - x_ip} - 1)) = logaddexp(log(1 - rho) + x_ip, log rho + lse) - x_ip: no cancellation
        if loss.psi_kind == "log1p":
            keep = math.log1p(-rho) if rho < 1 else -math.inf
            out = torch.logaddexp(x + keep, lse + math.log(rho)) - x
        else:  # psi linear: rho (e^{lse - x_ip} - 1)
            out = rho * torch.expm1(lse - x)
    else:
        z = S[:, :, None, :] - S[:, :, :, None]  # (R, B_i, B_p, B_a): f_i·f_a - f_i·f_p
        other = ~(eye[:, None, :] | eye[None, :, :] | eye[:, :, None])  # (B_i, B_p, B_a): a != i, a != p
        if torch.is_tensor(loss.param):  # a margin per run, (R, 1, 1): along z's run axis
            loss = replace(loss, param=loss.param.reshape(-1, 1, 1, 1))
        if delta is not None:
            z = z + delta[:, :, None, :]  # (R, B_i, 1, B_a)
        if scale is not None:
            z = z * scale[:, :, :, None]  # (R, B_i, 1, 1)
        out = loss.psi(rho * (loss.phi(z) * other).sum(-1))  # (R, B, B)
    return out.masked_fill(eye, 0.0)


def batch_loss(
    F: torch.Tensor, y: torch.Tensor, loss: Loss, k: int, reduction: str = "sum", positives: str = "mean",
    remedy: BatchRemedy | None = None,
) -> torch.Tensor:
    """The in-batch loss of each run (R,): pairs averaged (or summed) over each anchor's positives,
    summed over anchors (each weighted by the remedy's anchor weight, if any), divided by B.

    Parameters
    ----------
    F : (R, B, d) unit features; y : (R, B) integer labels.
    loss, k, reduction : as :func:`pair_losses`.
    positives : ``mean`` (SupCon's L_out) or ``sum``.
    remedy : a remedy's tables (:class:`BatchRemedy`); optional.
    """
    B = F.shape[1]
    eye = torch.eye(B, dtype=torch.bool, device=F.device)
    mask = (y[:, :, None] == y[:, None, :]) & ~eye  # (R, B, B): p is a positive of anchor i
    mask = mask.to(F.dtype)
    per_anchor = (pair_losses(F, loss, k, reduction, remedy, y) * mask).sum(-1)  # (R, B)
    if positives == "mean":
        per_anchor = per_anchor / mask.sum(-1).clamp_min(1.0)
    elif positives != "sum":
        raise ValueError(f"positives: {positives!r}: expected one of {', '.join(POSITIVES)}")
    if remedy is not None and remedy.anchor is not None:
        per_anchor = per_anchor * remedy.anchor.gather(1, y)  # (R, B): each anchor's class weight
    return per_anchor.sum(-1) / B


@dataclass(frozen=True)
class BatchRemedy:
    """A remedy's tables for in-batch training, per run: phi_cj(t) = phi(scale_c (t + delta_cj)) and anchor
    weights w_c = a_c / p_c (class-balanced reweighting of each anchor's loss).

    Attributes
    ----------
    delta : (R, C, C) shifts, or None; delta_cc must be 0 (the positive's own term stays 1).
    scale : (R, C) tau / tau_c, or None.
    anchor : (R, C) anchor weights w_c, or None.
    """

    delta: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    anchor: torch.Tensor | None = None

    @classmethod
    def build(cls, remedies: list, p: list, loss: Loss, device: torch.device,
              dtype: torch.dtype = torch.float32) -> BatchRemedy | None:  # fmt: skip
        """The tables of each run's remedy (:class:`~pipeline.theory.remedies.Remedy`) at its proportions p (C,);
        None where every run's remedy is none. Refuses what in-batch negatives cannot apply as written."""
        if all(r.is_none for r in remedies):
            return None
        tables: dict[str, list] = {"delta": [], "scale": [], "anchor": []}
        for remedy, p_r in zip(remedies, p, strict=True):
            if remedy.balanced_negatives:
                raise ValueError("balanced_negatives: in-batch negatives are the batch's other members, drawn from the "
                                 "dataset; use negatives_from: iid for it")  # fmt: skip
            delta, scale = remedy.phi_affine(p_r, loss)
            if delta is not None and np.any(np.diag(delta) != 0):
                raise ValueError(f"{remedy.spec}: a shift on the anchor's own class (ldam) changes the positive's own "
                                 "term of the in-batch loss; use negatives_from: iid for it")  # fmt: skip
            tables["delta"].append(delta)
            tables["scale"].append(None if scale is None else scale[:, 0])
            tables["anchor"].append(None if remedy.reweight is None else remedy.anchor_factor(p_r))

        def stacked(items: list) -> torch.Tensor | None:  # runs of one stack share their remedy: all or none
            if items[0] is None:
                return None
            return torch.tensor(np.stack(items), dtype=dtype, device=device)

        if len({r.spec for r in remedies}) != 1:
            raise ValueError("the runs of one stack must share their remedy")
        return cls(**{name: stacked(items) for name, items in tables.items()})

    def pairs(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(delta (R, B, B) by anchor and member labels, scale (R, B, 1) by the anchor's label), each or None."""
        delta = scale = None
        if self.delta is not None:
            rows = torch.arange(y.shape[0], device=y.device)[:, None, None]  # (R, 1, 1)
            delta = self.delta[rows, y[:, :, None], y[:, None, :]]  # (R, B, B)
        if self.scale is not None:
            scale = self.scale.gather(1, y)[..., None]  # (R, B, 1)
        return delta, scale
