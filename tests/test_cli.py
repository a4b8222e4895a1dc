import json
import subprocess
import sys

import pytest

from pipeline.cli import main

BASE = {"--loss": "infonce(tau=0.5)", "--n-major": "2", "--n-minor": "2", "--R": "100", "--k": "4"}


def argv(command="solve", **changes):
    args = dict(BASE)
    if command == "threshold":
        args.pop("--R")
    args.update({f"--{key.replace('_', '-')}": value for key, value in changes.items()})
    return [command, *[x for item in args.items() for x in item]]


def test_solve_json(capsys):
    assert main([*argv(), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "optimal" and record["collapsed"] is True
    assert record["loss"] == "infonce(tau=0.5)" and record["negatives"] == "marginal"
    assert len(record["gram"]) == 4 and record["c"] == pytest.approx(1.0)


def test_solve_text(capsys):
    assert main(argv(R="3")) == 0
    out = capsys.readouterr().out
    assert "status optimal" in out and "minority collapse: no" in out


def test_threshold_json(capsys):
    assert main([*argv("threshold", k="1"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert float(record["R_star"]) > 1
    assert main([*argv("threshold", n_major="3"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["R_star"] == "inf"


@pytest.mark.parametrize(
    ("command", "changes", "field"),
    [
        ("solve", {"R": "0.5"}, "R"),
        ("solve", {"R": "abc"}, "R"),
        ("solve", {"k": "0"}, "k"),
        ("solve", {"loss": "foo(tau=1)"}, "loss"),
        ("solve", {"loss": "infonce(tau"}, "loss"),
        ("solve", {"loss": "infonce(tau=0)"}, "tau"),
        ("solve", {"loss": "infonce(tau=-2)"}, "tau"),
        ("solve", {"n_major": "0"}, "n_major"),
        ("solve", {"solver": "full", "dim": "3"}, "dim"),
        ("solve", {"negatives": "all"}, "negatives"),
        ("threshold", {"k": "0"}, "k"),
        ("threshold", {"loss": "bogus"}, "loss"),
        ("threshold", {"n_major": "0"}, "n_major"),
        ("threshold", {"n_minor": "1"}, "n_minor"),
    ],
)
def test_bad_input_exits_2_with_one_line(command, changes, field):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *argv(command, **changes)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert field in lines[0] and "expected" in lines[0]
    assert proc.stdout == ""


def test_missing_option_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "pipeline", "solve", "--k", "4"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_threshold_at_many_negatives_and_at_k_inf(capsys):
    assert main([*argv("threshold", k="65536"), "--json"]) == 0
    at_65536 = json.loads(capsys.readouterr().out)
    assert main([*argv("threshold", k="inf"), "--json"]) == 0
    at_inf = json.loads(capsys.readouterr().out)
    assert at_inf["k"] == "inf" and at_inf["status"] == "optimal"
    assert at_65536["R_star"] == pytest.approx(at_inf["R_star"], rel=1e-3)
    assert main(argv("threshold", k="inf")) == 0
    assert capsys.readouterr().out.startswith("R*_inf = ")


@pytest.mark.parametrize("bad", ["0", "-1", "2.5", "infinite", "nan"])
@pytest.mark.parametrize("command", ["solve", "threshold"])
def test_bad_k_is_one_line_and_exit_2(capsys, command, bad):
    assert main(argv(command, k=bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "k" in err[0] and bad in err[0] and "an integer >= 1 or inf" in err[0]
