"""Figures from a results store alone (no torch, no cvxpy): each function takes an ``xr.Dataset``
(as :func:`pipeline.open_results` gives it) and returns a matplotlib figure.

- :mod:`~pipeline.plots.axes`: what every figure shares (size, colours, the k axis);
- :mod:`~pipeline.plots.phase`: step profiles: phase diagram, training against theory, R*(k), Gram panels;
- :mod:`~pipeline.plots.cascade`: exp and counts profiles: Gram against rho, distinct directions, onsets;
- :mod:`~pipeline.plots.practised`: in-batch training on a subsampled dataset;
- :mod:`~pipeline.plots.write`: every figure and table of a store into a folder (``clphase plot``).
"""

from pipeline.plots.cascade import counts_gram, directions_diagram, gram_against_rho, onsets_figure
from pipeline.plots.phase import gram_panels, phase_diagram, thresholds_figure, training_figure
from pipeline.plots.practised import practised_figure
from pipeline.plots.write import write_figures

__all__ = [
    "counts_gram",
    "directions_diagram",
    "gram_against_rho",
    "gram_panels",
    "onsets_figure",
    "phase_diagram",
    "practised_figure",
    "thresholds_figure",
    "training_figure",
    "write_figures",
]
