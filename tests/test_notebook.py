"""docs/examples/explore.ipynb runs from top to bottom on a small store of the quick config."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.sweep.config import load_config
from tests.conftest import theory_store

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "examples" / "explore.ipynb"


@pytest.fixture(scope="module")
def quick_store(tmp_path_factory) -> str:
    """configs/quick.yaml on a smaller grid, theory and thresholds only, written without a cluster."""
    tmp = tmp_path_factory.mktemp("notebook")
    overrides = [f"store={tmp / 'quick.zarr'}", "grid.R={logspace: [0, 3, 7]}", "grid.k=[1,4]", "grid.n_minor=[2]"]
    config = load_config(ROOT / "configs" / "quick.yaml", overrides)
    return theory_store(replace(config, train=None))


def test_the_example_notebook_runs(quick_store, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CLPHASE_STORE", quick_store)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "R* = " in text and "distinct directions" in text
    assert os.environ["CLPHASE_STORE"] == quick_store
