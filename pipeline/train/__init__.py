"""Contrastive training (torch), one concept per module.

- :mod:`~pipeline.train.data`: inputs and labels of a run;
- :mod:`~pipeline.train.sampling`: drawing negatives (alias tables);
- :mod:`~pipeline.train.objective`: the i.i.d.-negative loss and its analytic feature gradient;
- :mod:`~pipeline.train.trainer`: runs of one shape trained as one stacked program, and measured;
- :mod:`~pipeline.train.exact_ufm`: the exact sample-level loss of free features, minimised exactly.

- :mod:`~pipeline.train.batch_trainer`: in-batch negatives on a subsampled dataset, standard encoders
  (:mod:`~pipeline.train.encoders`, :mod:`~pipeline.train.batch_loss`).

``import pipeline.train`` imports no torch: :func:`train_function` imports the trainer a spec asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def train_function(negatives_from: str) -> Callable[..., Any]:
    """The function that trains runs of one shape, ``(runs, spec) -> results``: i.i.d. negatives
    (:func:`pipeline.train.trainer.train_runs`) or in-batch ones (``'batch'``,
    :func:`pipeline.train.batch_trainer.train_batch_runs`)."""
    if negatives_from == "batch":
        from pipeline.train.batch_trainer import train_batch_runs

        return train_batch_runs
    from pipeline.train.trainer import train_runs

    return train_runs
