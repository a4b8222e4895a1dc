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
from dataclasses import replace
from typing import Literal

import torch

from pipeline.theory.inbatch import POSITIVES
from pipeline.theory.losses import Loss

Positives = Literal["mean", "sum"]


def pair_losses(F: torch.Tensor, loss: Loss, k: int, reduction: str = "sum") -> torch.Tensor:
    """l(i, p) for every ordered pair of a batch (R, B, B), whatever the labels (the diagonal is 0).

    Parameters
    ----------
    F : (R, B, d) unit features of R runs' batches, B = k + 2.
    loss : the loss; its ``param`` a float or a tensor broadcasting against (R, 1, 1).
    k : negatives per pair, B - 2.
    reduction : ``sum`` (rho = 1) or ``mean`` (rho = 1 / k).
    """
    B = F.shape[1]
    if k != B - 2:
        raise ValueError(f"a batch of {B} samples gives k = {B - 2} negatives per pair, not {k}")
    S = F @ F.transpose(1, 2)  # (R, B, B) cosines f_i·f_a
    eye = torch.eye(B, dtype=torch.bool, device=F.device)
    rho = 1.0 if reduction == "sum" else 1.0 / k
    if loss.phi_kind == "exp":
        x = S / loss.param  # (R, B, B)
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
        out = loss.psi(rho * (loss.phi(z) * other).sum(-1))  # (R, B, B)
    return out.masked_fill(eye, 0.0)


def batch_loss(
    F: torch.Tensor, y: torch.Tensor, loss: Loss, k: int, reduction: str = "sum", positives: str = "mean"
) -> torch.Tensor:
    """The in-batch loss of each run (R,): pairs averaged (or summed) over each anchor's positives,
    summed over anchors, divided by B.

    Parameters
    ----------
    F : (R, B, d) unit features; y : (R, B) integer labels.
    loss, k, reduction : as :func:`pair_losses`.
    positives : ``mean`` (SupCon's L_out) or ``sum``.
    """
    B = F.shape[1]
    eye = torch.eye(B, dtype=torch.bool, device=F.device)
    mask = (y[:, :, None] == y[:, None, :]) & ~eye  # (R, B, B): p is a positive of anchor i
    mask = mask.to(F.dtype)
    per_anchor = (pair_losses(F, loss, k, reduction) * mask).sum(-1)  # (R, B)
    if positives == "mean":
        per_anchor = per_anchor / mask.sum(-1).clamp_min(1.0)
    elif positives != "sum":
        raise ValueError(f"positives: {positives!r}: expected one of {', '.join(POSITIVES)}")
    return per_anchor.sum(-1) / B
