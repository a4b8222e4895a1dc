"""The ``clphase`` command line: solve, threshold, run, status, plot.

Bad input exits with code 2 and one line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pipeline.errors import InputError
from pipeline.theory.losses import NEGATIVES, REDUCTIONS, check_option, parse_loss
from pipeline.theory.problem import check_k
from pipeline.theory.profiles import Exp, Profile, Step, parse_profile


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _to_int(field: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InputError(field, raw, f"an integer >= {minimum}") from None
    if value < minimum:
        raise InputError(field, value, f"an integer >= {minimum}")
    return value


def _to_float(field: str, raw: str, allowed: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise InputError(field, raw, allowed) from None


def _add_problem_args(parser: argparse.ArgumentParser, with_R: bool) -> None:
    parser.add_argument("--loss", required=True, help="loss id, e.g. 'infonce(tau=0.5)'")
    scan = "" if with_R else " without the axis to scan (R or rho)"
    parser.add_argument("--profile", default=None, help=f"class proportions{scan}: 'exp(C=10, rho=100)', "
                        "'counts(5000, 2997, ...)' or 'step(K_A=2, K_B=2, R=100)' (or --n-major/--n-minor"
                        f"{'/--R' if with_R else ''})")  # fmt: skip
    parser.add_argument("--n-major", default=None, help="number of majority classes K_A (>= 1); step profile")
    parser.add_argument("--n-minor", default=None, help="number of minority classes K_B; step profile")
    if with_R:
        parser.add_argument("--R", default=None, help="imbalance ratio p_major / p_minor (>= 1); step profile")
    parser.add_argument("--k", required=True, help="negatives per anchor (>= 1), or inf (the large-k limit)")
    parser.add_argument("--negatives", default="marginal", help="|".join(NEGATIVES) + " (default marginal)")
    parser.add_argument("--reduction", default="sum", help="|".join(REDUCTIONS) + " (default sum)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("clphase")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clphase",
        description="Optimal class geometry of contrastive learning on imbalanced data: exact theory, "
        "sweeps on dask clusters, phase diagrams.",
        epilog="Run 'clphase COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"clphase {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    p_solve = sub.add_parser("solve", help="optimal class geometry at one point")
    _add_problem_args(p_solve, with_R=True)
    p_solve.add_argument("--dim", default=None, help="embedding dimension d (rank solver when d < C)")
    p_solve.add_argument("--solver", default="auto", help="auto|symmetric|full|rank|oblique (default auto)")
    p_solve.add_argument("--seed", default="0", help="seed of the rank solver's restarts")
    p_thr = sub.add_parser("threshold", help="minority-collapse threshold R*")
    _add_problem_args(p_thr, with_R=False)
    p_run = sub.add_parser("run", help="run (or resume) a sweep from a YAML config")
    p_run.add_argument("config", help="YAML sweep config, e.g. configs/quick.yaml")
    p_run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grid.k=[1,4] store=results/x.zarr")
    p_run.add_argument("--dry-run", action="store_true", help="print the plan and an estimate; write nothing")
    p_run.add_argument("--workers", default=None, help="number of local worker processes (default: one per core)")
    p_run.add_argument("--scheduler-address", default=None, help="attach to a running dask scheduler")
    p_run.add_argument("--scheduler-file", default=None, help="attach to the scheduler described by this file")
    p_run.add_argument("--cluster", default=None, help="profile of cluster/jobqueue.yaml (default: cluster.kind)")
    p_run.add_argument(
        "--retry-failed", action="store_true", help="recompute the points whose status is error/diverged"
    )
    p_status = sub.add_parser("status", help="done / failed / pending points of a store")
    p_status.add_argument("store", help="path of a results store")
    p_plot = sub.add_parser("plot", help="phase diagrams, thresholds and Gram panels from a store")
    p_plot.add_argument("store", help="path of a results store")
    p_plot.add_argument("--out", default=None, help="output folder (default: figures/<store name>)")
    p_plot.add_argument("--select", default=None, help="subset, e.g. 'loss=infonce(tau=1),n_minor=2'")
    return parser


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.10g}"


def _profile(args: argparse.Namespace, with_R: bool) -> Profile:
    """The profile from --profile, or the step profile of --n-major/--n-minor(/--R)."""
    step = {"n_major": args.n_major, "n_minor": args.n_minor, **({"R": args.R} if with_R else {})}
    if args.profile is not None:
        given = [name for name, value in step.items() if value is not None]
        if given:
            raise InputError(given[0].replace("_", "-"), step[given[0]], "to be left out with --profile "
                             "(the profile carries the proportions)")  # fmt: skip
        return parse_profile(args.profile)
    missing = [name for name, value in step.items() if value is None]
    if missing:
        raise InputError("profile", None, f"--profile, or --{' --'.join(m.replace('_', '-') for m in missing)} "
                         "for a step profile")  # fmt: skip
    n_major = _to_int("n_major", args.n_major, 1)
    n_minor = _to_int("n_minor", args.n_minor, 1)
    R = _to_float("R", args.R, "a finite number >= 1 (R = p_major / p_minor)") if with_R else None
    return Step(n_major, n_minor, R)


def _cmd_solve(args: argparse.Namespace) -> int:
    from pipeline.theory.cascade import distinct_directions
    from pipeline.theory.dispatch import SOLVERS, solve
    from pipeline.theory.problem import Problem

    loss = parse_loss(args.loss)
    profile = _profile(args, with_R=True)
    k = check_k(args.k)
    dim = None if args.dim is None else _to_int("dim", args.dim, 1)
    check_option("negatives", args.negatives, NEGATIVES)
    check_option("reduction", args.reduction, REDUCTIONS)
    check_option("solver", args.solver, SOLVERS)
    seed = _to_int("seed", args.seed, 0)
    problem = Problem.from_profile(loss, profile, k, args.negatives, args.reduction)
    solution = solve(problem, args.solver, dim, seed)
    directions = None
    if solution.status != "error" and solution.solver != "rank" and problem.loss.smooth:
        directions = distinct_directions(problem, solution.G)
    if args.json:
        record = solution.to_dict()
        record.update(dim=dim, seed=seed, classes=profile.labels())  # the options as given (dim: null when not given)
        if directions is not None:
            record.update(distinct_directions=directions.count, directions_decided=directions.decided,
                          direction_of_class=directions.label.tolist())  # fmt: skip
        print(json.dumps(record))
        return 0 if solution.status != "error" else 1
    print(f"loss {loss.id}  profile {profile.spec}  k={k}  negatives={args.negatives} reduction={args.reduction}")
    print(f"solver {solution.solver}  status {solution.status}  objective {_fmt(solution.objective)}  "
          f"gap {solution.gap:.2e} (relative {solution.gap_rel:.2e})")  # fmt: skip
    if profile.two_groups() is not None:
        collapse = {None: "n/a", True: "yes", False: "no"}[solution.collapsed]
        print(f"a {_fmt(solution.a)}  b {_fmt(solution.b)}  c {_fmt(solution.c)}")
        print(f"minority collapse: {collapse}  (criterion g/p_minor^2 at c=1: {_fmt(solution.criterion)})")
    else:
        labels = profile.labels()
        width = max(len(x) for x in labels)
        print("Gram matrix of the class means (head first):")
        for name, row in zip(labels, solution.G, strict=True):
            print(f"  {name:>{width}}  " + " ".join(f"{min(1.0, max(-1.0, x)):+.4f}" for x in row))
    if directions is not None:
        merged = [t for t in directions.tests if t.merged]
        groups = ", ".join("{" + ", ".join(profile.labels()[i] for i in t.members) + "}" for t in merged)
        undecided = sum(t.merged is None for t in directions.tests)
        print(f"distinct directions: {directions.count} of {problem.C}" + (f"; merged {groups}" if groups else "")
              + (f"; {undecided} merge(s) undecided (within the error bound)" if undecided else ""))  # fmt: skip
    if solution.message:
        print(f"note: {solution.message}")
    return 0 if solution.status != "error" else 1


def _cmd_threshold(args: argparse.Namespace) -> int:
    from pipeline.theory.cascade import cascade
    from pipeline.theory.threshold import minority_threshold

    loss = parse_loss(args.loss)
    profile = _profile(args, with_R=False)
    k = check_k(args.k)
    check_option("negatives", args.negatives, NEGATIVES)
    check_option("reduction", args.reduction, REDUCTIONS)
    if isinstance(profile, Exp):
        if profile.rho is not None:
            raise InputError("profile", profile.spec, f"exp(C={profile.C}) without rho: the threshold scans it")
        result = cascade(loss, profile.C, k, args.negatives, args.reduction)
        if args.json:
            print(json.dumps(result.to_dict()))
            return 0
        print(f"collapse cascade of exp(C={profile.C}, rho): loss {loss.id}, k={k}, negatives={args.negatives}, "
              f"reduction={args.reduction}")  # fmt: skip
        for o in result.onsets:
            value = {"optimal": f"{o.rho_star:.10g}", "beyond": f"inf (apart up to rho = {o.apart_below:g})"}.get(
                o.status, f"undecided (apart up to rho = {o.apart_below:.4g}; {o.message})")
            print(f"  rho*_{o.m} = {value}")
        return 0
    if not isinstance(profile, Step):
        raise InputError("profile", profile.spec, "step(K_A=.., K_B=..) or exp(C=..): a counts profile has no axis "
                         "to scan (use clphase solve)")  # fmt: skip
    if profile.R is not None:
        raise InputError("profile", profile.spec, f"step(K_A={profile.K_A}, K_B={profile.K_B}) without R: "
                         "the threshold scans it")  # fmt: skip
    n_major, n_minor = profile.K_A, _to_int("n_minor", profile.K_B, 2)
    result = minority_threshold(loss, n_major, n_minor, k, args.negatives, args.reduction)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        R_star = "inf" if math.isinf(result.R_star) else f"{result.R_star:.10g}"
        name = "R*_inf" if math.isinf(k) else "R*"
        print(f"{name} = {R_star}  (loss {loss.id}, K_A={n_major}, K_B={n_minor}, k={k}, "
              f"negatives={args.negatives}, reduction={args.reduction}; "
              f"lim g/p_minor^2 = {_fmt(result.criterion_limit)} +- {result.criterion_limit_error:.1e})")  # fmt: skip
        if result.message:
            print(f"note: {result.message} (status {result.status})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.sweep.config import load_config
    from pipeline.sweep.runner import dry_run, run

    overrides = list(args.overrides) + ([f"cluster.kind={args.cluster}"] if args.cluster else [])
    config = load_config(args.config, overrides)
    workers = None if args.workers is None else _to_int("workers", args.workers, 1)
    if args.dry_run:
        return dry_run(config, workers)
    return run(config, workers, args.scheduler_address, args.scheduler_file, args.retry_failed)


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.sweep.runner import status

    return status(args.store)


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.plots import write_figures

    out = args.out or str(Path("figures") / Path(args.store.rstrip("/")).stem)
    try:
        report = write_figures(args.store, out, args.select)
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError("select", args.select, str(err).split(": expected ")[-1]) from None
    for line in report["skipped"]:
        print(f"skipped: {line}")
    print(f"wrote {len(report['written'])} files to {out} in {report['seconds']:.1f} s")
    return 0


COMMANDS = {"solve": _cmd_solve, "threshold": _cmd_threshold, "run": _cmd_run, "status": _cmd_status, "plot": _cmd_plot}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clphase`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options: `run CONFIG --dry-run grid.k=[1]`
    if args.command == "run" and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except InputError as err:
        for line in str(err).splitlines():
            print(f"clphase {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nclphase {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def run() -> NoReturn:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `clphase ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
