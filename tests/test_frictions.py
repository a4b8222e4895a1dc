"""What a new user met (issue 14): one clear line for wrong paths and typos, a store plain xarray opens
silently, honest status counts and JSON, a clean --help."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.cli import main
from pipeline.sweep.config import load_config
from pipeline.sweep.grid import Grid
from pipeline.sweep.results import STATUS_CODE
from pipeline.sweep.store import init_store, update_attrs, write_batch
from pipeline.sweep.tasks import _empty
from tests.test_sweep import TINY

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"clphase {command}: error: ")
    return lines[0]


def tiny_config(tmp_path: Path, **sections) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["store"] = str(tmp_path / "store.zarr")
    raw.update(sections)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("command", ["status", "plot"])
@pytest.mark.parametrize("target", ["README.md", "pipeline"])  # a file and a folder that are no stores
def test_a_path_that_is_not_a_store_is_one_line(capsys, command, target):
    assert main([command, str(ROOT / target)]) == 2
    line = one_error_line(capsys, command)
    assert "not a clphase store" in line and target in line and "select" not in line


def test_an_unreachable_scheduler_is_refused_before_any_write(capsys, tmp_path):
    cfg = tiny_config(tmp_path)
    assert main(["run", str(cfg), "--scheduler-address", "tcp://127.0.0.1:1"]) == 2
    line = one_error_line(capsys, "run")
    assert "tcp://127.0.0.1:1" in line and "dask scheduler" in line
    assert not (tmp_path / "store.zarr").exists()
    assert not list(tmp_path.glob("store.zarr*"))


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_unwritable_store_path_names_the_cause(capsys, tmp_path, dry_run):
    cfg = tiny_config(tmp_path)
    for store, cause in (("/proc/clphase.zarr", "not writable"), (f"{ROOT / 'README.md'}/x.zarr", "is a file")):
        assert main(["run", str(cfg), f"store={store}", *(["--dry-run"] if dry_run else [])]) == 2
        line = one_error_line(capsys, "run")
        assert cause in line and "no other run" not in line, line
    assert not (ROOT / "README.md").is_dir()


def test_plain_xarray_opens_a_store_silently(tmp_path):
    """The template and every later attribute update leave consolidated metadata behind."""
    config = load_config(tiny_config(tmp_path))
    init_store(config.store, config)
    for step in ("template", "attributes"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = xr.open_zarr(config.store)
        assert "gram_theory" in ds and ds.attrs["config_hash"] == config.science_hash(), step
        update_attrs(config.store, updated_at="now")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xr.open_zarr(config.store).attrs["updated_at"] == "now"


def test_a_misspelt_section_is_one_error_with_a_suggestion(capsys, tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    raw["gird"] = raw.pop("grid")
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--dry-run"]) == 2
    line = one_error_line(capsys, "run")
    assert "gird: unknown key; did you mean grid?" in line


def test_status_counts_trained_not_selected_failed_and_pending_apart(capsys, tmp_path):
    train = {"steps": 10, "select": {"seed": [0]}}
    config = load_config(tiny_config(tmp_path, train=train), ["grid.seed=[0, 1]"])
    init_store(config.store, config)
    grid = Grid(config)
    batches = list(grid.batches("train"))
    for batch in batches[:-1]:  # the last batch stays pending
        arrays = _empty(grid, "train", batch.shape)
        seeds = grid.values(batch)["seed"]
        arrays["status_train"][...] = np.where(seeds == 0, STATUS_CODE["trained"], STATUS_CODE["not_applicable"])
        arrays["status_train"][(0,) * len(batch.shape)] = STATUS_CODE["diverged"]  # one failed run (seed 0)
        write_batch(config.store, batch, arrays)
    assert main(["status", config.store]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("train:"))
    n_done = sum(b.n_points for b in batches[:-1])
    failed = len(batches) - 1
    trained = n_done // 2 - failed
    n_all = n_done + batches[-1].n_points
    # the pending batch's unselected runs are not pending: they will never be trained (issue 22, item 10)
    assert line.strip() == (f"train: {trained} trained, {failed} failed, {n_all // 2} not selected (train.select), "
                            f"{batches[-1].n_points // 2} pending (of {n_all})")  # fmt: skip


def test_solve_json_echoes_its_inputs_and_clips_cosines(capsys):
    args = ["solve", "--loss", "infonce(tau=0.5)", "--n-major", "2", "--n-minor", "3", "--R", "100", "--k", "4"]
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["n_major"], record["n_minor"], record["R"], record["k"]) == (2, 3, 100.0, 4)
    assert record["dim"] is None and record["seed"] == 0  # the options as given
    assert record["G_rank"] == 2 and record["embedding_dim"] == 2  # minorities merged: two directions
    assert record["c"] == 1.0 and all(-1 <= x <= 1 for row in record["gram"] for x in row)
    assert main([*args, "--dim", "8", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dim"] == 8 and record["embedding_dim"] == 8 and record["G_rank"] == 2


def test_help_lists_every_command_and_version_is_there(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out
    for command in ("solve", "threshold", "run", "status", "plot"):
        assert f"\n    {command}" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("clphase ")


def test_progress_in_a_log_is_a_line_per_kind_every_few_seconds(tmp_path):
    """stderr is a pipe here: each kind logs a plain line every LOG_INTERVAL_S and one when it is done."""
    from pipeline.sweep.progress import LOG_INTERVAL_S
    from tests.test_sweep import clphase

    cfg = tiny_config(tmp_path)
    start = time.monotonic()
    proc = clphase("run", str(cfg), "--workers", "2", env={"CLPHASE_BATCH_DELAY_S": "0.3"})
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    for kind in ("theory", "threshold"):
        lines = [x for x in proc.stderr.splitlines() if x.strip().startswith(f"{kind}:")]
        assert 1 <= len(lines) <= wall / LOG_INTERVAL_S + 1, lines
        assert "100%" in lines[-1]
    assert "16 threshold points" in proc.stdout and "96 theory points" in proc.stdout  # points, named as such
