"""The long-tail benchmarks' class counts as named profiles (issue 23, item 2): cifar_lt, pareto, counts_file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.sweep.config import ConfigError, validate
from pipeline.theory.profiles import Counts, Exp, parse_profile
from tests.conftest import theory_store


def test_cifar_lt_gives_cifar_lts_counts():
    profile = parse_profile("cifar_lt(C=10, rho=100, n_max=5000)")
    assert isinstance(profile, Counts) and profile.spec == "cifar_lt(C=10, rho=100, n_max=5000)"
    assert profile.counts == (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50)
    assert parse_profile(profile.spec) == profile  # the spec reads back
    # CIFAR-100-LT at 100: 500 down to 5, by the generator's own formula computed independently here
    c100 = parse_profile("cifar_lt(C=100, rho=100)").counts
    assert c100 == tuple(float(int(500 * (0.01 ** (c / 99.0)))) for c in range(100))
    assert (c100[0], c100[-1], len(c100)) == (500, 5, 100)
    # its proportions are exp(C, rho)'s to the rounding of the counts
    np.testing.assert_allclose(parse_profile("cifar_lt(C=10, rho=100)").proportions(),
                               Exp(10, 100).proportions(), rtol=3e-2)  # fmt: skip


def test_pareto_is_seeded_spans_its_range_and_prints_its_counts(capsys):
    spec = "pareto(C=1000, alpha=6, n_max=1280, n_min=5)"
    a, b = parse_profile(spec), parse_profile(spec)
    assert a == b and a.spec == "pareto(C=1000, alpha=6, n_max=1280, n_min=5, seed=0)"
    counts = np.array(a.counts)
    assert counts[0] == 1280 and counts[-1] == 5 and len(counts) == 1000
    assert (np.diff(counts) <= 0).all() and (counts == np.floor(counts)).all()
    assert parse_profile(spec.replace(")", ", seed=1)")).counts != a.counts
    # the draws are numpy's seeded Pareto(6) sorted, mapped affinely onto [5, 1280]: recomputed here
    x = np.sort(np.random.default_rng(0).pareto(6.0, 1000))[::-1]
    np.testing.assert_array_equal(counts, np.floor(5 + (x - x[-1]) / (x[0] - x[-1]) * 1275 + 1e-9))
    assert main(["solve", "--loss", "infonce(tau=0.5)", "--profile", "pareto(C=12, alpha=6, n_max=1280, n_min=5)",
                 "--k", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "counts (12 classes, classes in the order given): 1280, " in out and ", 5\n" in out


def test_counts_file_reads_lines_or_a_csv_column(tmp_path):
    lines = tmp_path / "counts.txt"
    lines.write_text("5000\n2997\n\n50\n")
    assert parse_profile(f"counts_file('{lines}')").counts == (5000, 2997, 50)
    table = tmp_path / "sizes.csv"
    table.write_text("name,n\ncat,500\ndog,20\nemu,5\n")
    by_name = parse_profile(f"counts_file('{table}', column='n')")
    assert by_name.counts == (500, 20, 5) and by_name.spec == f"counts_file(path='{table}', column='n')"
    assert parse_profile(f"counts_file('{table}', column=1)").counts == (500, 20, 5)


@pytest.mark.parametrize("spec, expected", [
    ("cifar_lt(C=7, rho=100)", "invalid n_max: None; expected the head class's count for C = 7"),
    ("cifar_lt(C=10, rho=0.5)", "invalid rho: 0.5; expected a finite number >= 1"),
    ("pareto(C=10, alpha=-1, n_max=100, n_min=5)", "invalid alpha: -1.0; expected a positive number"),
    ("pareto(C=10, alpha=6, n_max=5, n_min=5)", "invalid n_max: 5; expected an integer >= 6"),
    ("pareto(C=10)", "expected pareto(C, alpha, n_max, n_min, seed) (missing a required argument: 'alpha')"),
    ("counts_file('/nonexistent/counts.txt')", "expected a readable UTF-8 file of class counts"),
])  # fmt: skip
def test_a_bad_preset_is_one_line(spec, expected):
    with pytest.raises(InputError) as err:
        parse_profile(spec)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_bad_counts_file_names_the_row_or_the_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,n\ncat,500\ndog,twenty\n")
    with pytest.raises(InputError, match="one count a line, or a column"):
        parse_profile(f"counts_file('{bad}')")
    with pytest.raises(InputError, match=r"a number at row 3, column 1 \(got 'twenty'\)"):
        parse_profile(f"counts_file('{bad}', column='n')")
    with pytest.raises(InputError, match=r"an index 0..1 or one of \['name', 'n'\]"):
        parse_profile(f"counts_file('{bad}', column='size')")


def test_a_sweep_takes_presets_as_named_count_vectors(tmp_path):
    raw = {"name": "p", "store": str(tmp_path / "p.zarr"),
           "grid": {"profile": "counts", "loss": ["infonce(tau=0.5)"], "k": [4, math.inf],
                    "counts": {"c10": "cifar_lt(C=10, rho=100)", "mine": [5, 3, 2]}}}  # fmt: skip
    config = validate(raw)
    assert dict(config.grid.counts)["c10"] == (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50)
    assert "cifar_lt" not in config.to_yaml() and "2997" in config.to_yaml()  # stored as its counts
    ds = xr.open_zarr(theory_store(config))
    G = ds.gram_theory.sel(loss="infonce(tau=0.5)", counts="c10", k=4).values
    from pipeline import api

    np.testing.assert_array_equal(G, api.solve("infonce(tau=0.5)", "cifar_lt(C=10, rho=100)", 4).G)
    refused = r"grid\.counts\.x: profile: 'exp\(C=10, rho=100\)': expected a counts preset"
    with pytest.raises(ConfigError, match=refused):
        validate({**raw, "grid": {**raw["grid"], "counts": {"x": "exp(C=10, rho=100)"}}})


def test_solve_summarises_a_large_gram_by_head_medium_and_tail(capsys):
    """Beyond 12 classes, solve prints the cosine extremes within and between the shot groups, read off
    the same solve's full Gram matrix from --json."""
    args = ["solve", "--loss", "infonce(tau=0.5)", "--profile", "cifar_lt(C=20, rho=100, n_max=500)", "--k", "inf"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main([*args, "--json"]) == 0
    G = np.array(json.loads(capsys.readouterr().out)["gram"])  # (20, 20)
    n = np.array(parse_profile("cifar_lt(C=20, rho=100, n_max=500)").counts)
    groups = {"head": n > 100, "medium": (n >= 20) & (n <= 100), "tail": n < 20}
    assert "by training count: > 100, 20 to 100, < 20" in "\n".join(lines)
    for name, members in groups.items():
        line = next(x for x in lines if x.split()[0] == name and "classes," in x)
        block = G[np.ix_(members, members)][~np.eye(members.sum(), dtype=bool)]
        assert f"{members.sum()} classes" in line and f"within {block.min():+.4f} .. {block.max():+.4f}" in line
        other = "tail" if name != "tail" else "head"
        between = G[np.ix_(members, groups[other])]
        assert f"to {other} {between.min():+.4f} .. {between.max():+.4f}" in line
    assert not any(line.startswith("  class 0 ") for line in lines)  # a summary, not the matrix
    assert main([*args, "--gram"]) == 0
    assert sum("+1.0000" in x for x in capsys.readouterr().out.splitlines()) == 20  # one row a class
