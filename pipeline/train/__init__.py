"""Contrastive training (torch), one concept per module.

- :mod:`~pipeline.train.data`: inputs and labels of a run;
- :mod:`~pipeline.train.sampling`: drawing negatives (alias tables);
- :mod:`~pipeline.train.objective`: the i.i.d.-negative loss and its analytic feature gradient;
- :mod:`~pipeline.train.trainer`: runs of one shape trained as one stacked program, and measured;
- :mod:`~pipeline.train.exact_ufm`: the exact sample-level loss of free features, minimised exactly.

``import pipeline.train`` imports nothing (no torch): import the module you need.
"""
