"""Config inputs that used to hurt (issue 24, item 8): each is one line (or a bounded list) and exit 2, and
no store is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "configs" / "quick.yaml").read_text()


def _refused(capsys, tmp_path: Path, config: Path, expected: str) -> None:
    store = tmp_path / "never.zarr"
    assert main(["run", str(config), "--dry-run", f"store={store}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert len(err) < 5000
    assert not store.exists()


def test_a_key_given_twice_is_named(capsys, tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text(QUICK + "\ngrid:\n  loss: ['infonce(tau=1)']\n")  # plain YAML keeps the second grid silently
    _refused(capsys, tmp_path, config, "key 'grid' given twice (lines 4 and ")


def test_an_alias_bomb_is_refused_at_once(capsys, tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    config = tmp_path / "bomb.yaml"  # 9^9 strings once expanded: gigabytes of error messages before
    config.write_text("\n".join(lines) + "\nname: x\ngrid:\n  loss: *i\n")
    assert config.stat().st_size < 1024
    _refused(capsys, tmp_path, config, "aliases (*name) are not allowed")


def test_a_config_that_is_not_utf8_or_too_large_is_one_line(capsys, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(QUICK.encode() + b"# caf\xe9\n")
    _refused(capsys, tmp_path, config, "not UTF-8 text (byte 0xe9 at line")
    _refused(capsys, tmp_path, Path("/dev/zero"), "larger than 1024 KiB")


def test_an_integer_beyond_int64_is_a_config_error(capsys, tmp_path):
    config = tmp_path / "seed.yaml"
    config.write_text(QUICK.replace("seed: [0, 1]", "seed: [18446744073709551616]"))
    _refused(capsys, tmp_path, config, "grid.seed: 18446744073709551616: expected integers from 0 to")


@pytest.mark.parametrize("n", [3, 3000])
def test_error_messages_are_bounded(capsys, tmp_path, n):
    losses = ",".join(["x" * 50] * n)
    assert main(["run", str(ROOT / "configs" / "quick.yaml"), "--dry-run", f"grid.loss=[{losses}]",
                 f"store={tmp_path / 'never.zarr'}"]) == 2  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 21 and all(len(line) < 600 for line in lines)
    if n > 20:
        assert lines[-1].endswith(f"... and {n - 20} more problems")


def test_a_huge_logspace_is_refused_before_it_is_made(capsys, tmp_path):
    """10^7 points of R: refused from its n before 80 MB of axis and 10^7 checks (9 s and 1 GB before)."""
    import tracemalloc

    config = tmp_path / "huge.yaml"
    config.write_text(QUICK.replace("logspace: [0, 3, 16]", "logspace: [0, 3, 10000000]"))
    tracemalloc.start()
    _refused(capsys, tmp_path, config, "grid.R.logspace: n = 10000000 points: expected at most batch.max_points")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6  # bytes: nothing of the axis's size was allocated


def test_a_class_count_whose_gram_matrices_cannot_fit_is_refused(capsys, tmp_path):
    config = tmp_path / "wide.yaml"
    config.write_text(QUICK.replace("n_major: [2]", "n_major: [100000]"))
    _refused(capsys, tmp_path, config, "grid.n_major / grid.n_minor: 100003 classes: a batch of 32 points")


def test_a_store_path_with_a_newline_is_refused(capsys, tmp_path):
    store = tmp_path / "a\nb.zarr"
    config = tmp_path / "newline.yaml"
    config.write_text(QUICK.replace("store: results/quick.zarr", f"store: {str(store)!r}".replace("'", '"')))
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "store: " in err and "expected a path without control characters" in err and len(err.splitlines()) == 1
    assert not store.exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "/dev/zero", "missing.json", "list.json"])
def test_a_scheduler_file_that_is_not_one_is_one_line(capsys, tmp_path, path):
    (tmp_path / "list.json").write_text("[1, 2]")
    path = path if path.startswith("/") else str(tmp_path / path)
    store = tmp_path / "never.zarr"
    assert main(["run", str(ROOT / "configs" / "quick.yaml"), f"store={store}", "--scheduler-file", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clphase run: error: invalid scheduler-file: {path!r}; expected a dask scheduler file")
    assert len(err.strip().splitlines()) == 1 and not store.exists()
