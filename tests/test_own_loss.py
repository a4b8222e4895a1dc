"""Losses of one's own (issue 21): registered from Python, checked at registration, named like a built-in by
solve, threshold, sweeps (their workers too) and training, and stored by name and definition."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from pipeline import api
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.theory.cascade import cascade
from pipeline.theory.losses import parse_loss, register_loss

TAU = 0.5
POINTS = [("step(K_A=2, K_B=2, R=20)", 4), ("step(K_A=2, K_B=3, R=300)", 255), ("step(K_A=3, K_B=2, R=5)", math.inf),
          ("exp(C=5, rho=100)", 16), ("counts(a=500, b=120, c=9)", 4)]  # fmt: skip


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test registers into a registry of its own: the rest of the suite sees the built-ins alone."""
    from pipeline.theory import losses

    monkeypatch.setattr(losses, "_REGISTRY", {})


@pytest.fixture
def restated():
    """InfoNCE at tau = 0.5 restated twice: phi as a torch function (autograd), and as numpy phi, phi', phi''."""
    by_autograd = register_loss("infonce_torch", "log1p", lambda t: torch.exp(t / TAU), definition="exp(t / 0.5)")
    by_hand = register_loss("infonce_numpy", "log1p", lambda t: np.exp(t / TAU), lambda t: np.exp(t / TAU) / TAU,
                            lambda t: np.exp(t / TAU) / TAU**2, definition="exp(t / 0.5)")  # fmt: skip
    return by_autograd, by_hand


@pytest.mark.parametrize("profile, k", POINTS)
def test_a_restated_infonce_reproduces_the_built_in(restated, profile, k):
    builtin = api.solve(f"infonce(tau={TAU})", profile, k)
    for loss in restated:
        mine = api.solve(loss.id, profile, k)
        assert mine.status == "optimal" and mine.gap <= 1e-9 * abs(mine.objective)
        np.testing.assert_allclose(mine.G, builtin.G, rtol=0, atol=1e-12)
        assert abs(mine.objective - builtin.objective) <= 1e-12


def test_its_thresholds_and_onsets_are_the_built_ins(restated):
    for loss in restated:
        for k in (4, math.inf):
            mine = api.threshold(loss.id, "step(K_A=2, K_B=2)", k)
            builtin = api.threshold(f"infonce(tau={TAU})", "step(K_A=2, K_B=2)", k)
            assert mine.status == builtin.status == "optimal"
            assert mine.R_star == pytest.approx(builtin.R_star, rel=1e-12)
    ours, theirs = cascade(restated[0], 4, 16), cascade(f"infonce(tau={TAU})", 4, 16)
    for a, b in zip(ours.onsets, theirs.onsets, strict=True):
        assert a.status == b.status and a.rho_star == pytest.approx(b.rho_star, rel=1e-10)


def test_a_loss_of_ones_own_that_differs_is_solved_as_itself():
    """A phi no built-in has (softplus) with psi linear: the certified optimum is no worse than random Gram
    matrices of the same objective (evaluated independently of the solver)."""
    from pipeline.theory.objective import class_objective
    from pipeline.theory.problem import Problem

    soft = register_loss("softplus", "linear", lambda t: torch.nn.functional.softplus(t / TAU),
                         definition="log(1 + exp(t / 0.5))")  # fmt: skip
    solution = api.solve(soft.id, "step(K_A=2, K_B=2, R=50)", 4)
    problem = Problem.two_group(soft, 2, 2, 50.0, 4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        V = rng.standard_normal((4, 4))
        V /= np.linalg.norm(V, axis=0)
        assert class_objective(problem, V.T @ V)[0] >= solution.objective - 1e-12
    assert solution.status == "optimal"


BAD = [
    (dict(psi="log1p", phi=lambda t: torch.sin(t) + 2), "a nondecreasing phi: phi' < 0 at t = -4"),
    (dict(psi="log1p", phi=lambda t: torch.sqrt(t + 5)), "a convex phi: phi'' < 0 at t = -4"),
    (dict(psi="log1p", phi=lambda t: t), "phi >= 0 (log1p's argument is a sum of phi): phi < 0 at t = -4"),
    (dict(psi="log1p", phi=lambda t: np.exp(t), dphi=lambda t: 2 * np.exp(t), d2phi=lambda t: np.exp(t)),
     "the derivative of phi (it differs from phi's finite differences at t = -4"),
    (dict(psi="softplus", phi=lambda t: torch.exp(t)), "invalid psi: 'softplus'; expected one of log1p, linear"),
    (dict(psi="log1p", phi=lambda t: torch.exp(t), dphi=lambda t: t), "both dphi and d2phi (numpy), or neither"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, expected", BAD, ids=["decreasing", "concave", "negative", "wrong phi'", "psi",
                                                        "one derivative"])  # fmt: skip
def test_a_phi_outside_the_family_is_refused_with_one_line(kwargs, expected):
    with pytest.raises(InputError) as err:
        register_loss("bad_one", **kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(InputError):
        parse_loss("bad_one")  # nothing registered


def test_a_built_in_name_cannot_be_taken():
    with pytest.raises(InputError, match="a lower-case identifier other than infonce"):
        register_loss("infonce", "log1p", lambda t: torch.exp(t))


LOSS_FILE = """
import torch
from pipeline.theory.losses import register_loss

register_loss("infonce_half", "log1p", lambda t: torch.exp(t / 0.5), definition="exp(t / 0.5)")
"""


def test_a_registered_loss_runs_in_a_sweep_on_workers_and_is_stored_by_its_definition(tmp_path):
    """Through the command line (CLPHASE_LOSSES), on a LocalCluster of two worker processes that know the loss
    from the config alone: theory, thresholds and training equal the built-in's in the same store."""
    losses = tmp_path / "my_losses.py"
    losses.write_text(LOSS_FILE)
    config = {"name": "mine", "store": str(tmp_path / "s.zarr"),
              "grid": {"loss": ["infonce_half", "infonce(tau=0.5)"], "R": [1, 20, 300], "n_major": [2],
                       "n_minor": [2], "k": [4, "inf"], "dim": [4]},
              "train": {"steps": 200, "runs_per_batch": 4, "select": {"k": [4]}},
              "cluster": {"n_workers": 2}}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "CLPHASE_LOSSES": str(losses)}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert json.loads(ds.attrs["losses"])["infonce_half"]["phi"] == "exp(t / 0.5)"
    mine, builtin = ds.sel(loss="infonce_half"), ds.sel(loss="infonce(tau=0.5)")
    for name in ("gram_theory", "objective_theory", "cos_minor_theory"):
        np.testing.assert_allclose(mine[name].values, builtin[name].values, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(mine.R_threshold.values, builtin.R_threshold.values, rtol=1e-12)
    assert (mine.status_train.sel(k=4) == 6).all()
    np.testing.assert_allclose(mine.gram_train.values, builtin.gram_train.values, rtol=0, atol=1e-5, equal_nan=True)
    # another phi under the same name is another store: the resume is refused, the store unchanged
    losses.write_text(LOSS_FILE.replace("0.5)", "0.25)"))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "losses.infonce_half" in proc.stderr, proc.stderr


def test_a_loss_file_that_fails_is_one_line(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom pipeline.theory.losses import register_loss\n"
                   "register_loss('wavy', 'log1p', lambda t: torch.atan(t) + 2)\n")  # fmt: skip
    monkeypatch.setenv("CLPHASE_LOSSES", str(bad))
    assert main(["solve", "--loss", "wavy", "--profile", "step(K_A=2, K_B=2, R=4)", "--k", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "invalid phi: 'wavy'; expected a convex phi" in err and len(err.splitlines()) == 1, err
    bad.write_text("raise RuntimeError('oops')\n")
    assert main(["solve", "--loss", "infonce", "--profile", "step(K_A=2, K_B=2, R=4)", "--k", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "CLPHASE_LOSSES" in err and "RuntimeError: oops" in err and len(err.splitlines()) == 1, err
    assert not Path("never").exists()
