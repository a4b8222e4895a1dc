"""The ``clphase`` command line: solve, threshold, run, status, plot.

Bad input exits with code 2 and one line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from pipeline.errors import InputError, SweepStoppedError
from pipeline.theory.losses import LOSS_HELP, NEGATIVES, REDUCTIONS
from pipeline.theory.profiles import Counts, Exp, Profile, Step, counts_text, parse_profile


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
    parser.add_argument("--loss", required=True, help=f"loss id, lower case: {LOSS_HELP} (a bare name takes the "
                        "default shown)")  # fmt: skip
    if with_R:
        profiles = ("class proportions: 'step(K_A=2, K_B=2, R=100)', 'exp(C=10, rho=100)' or "
                    "'counts(5000, 2997, 1796)' / 'counts(cat=5000, dog=2997)' (or --n-major/--n-minor/--R)")
    else:
        profiles = ("class proportions without the axis to scan: 'step(K_A=2, K_B=2)' gives R*, 'exp(C=10)' the "
                    "cascade onsets rho*_m (or --n-major/--n-minor)")
    parser.add_argument("--profile", default=None, help=profiles)
    parser.add_argument("--n-major", default=None, help="number of majority classes K_A (>= 1); step profile")
    parser.add_argument("--n-minor", default=None, help="number of minority classes K_B; step profile")
    if with_R:
        parser.add_argument("--R", default=None, help="imbalance ratio p_major / p_minor (>= 1); step profile")
    parser.add_argument("--k", required=True, help="negatives per anchor (>= 1), or inf (the large-k limit)")
    parser.add_argument("--negatives", default="marginal", help="|".join(NEGATIVES) + " (default marginal)")
    parser.add_argument("--reduction", default="sum", help="|".join(REDUCTIONS) + " (default sum)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/cli.md)")


SOLVE_HELP = """Prints the certified optimal geometry at one point: the solver, its status, the objective L and
the certified gap to the optimum; for a step profile the cosines a (majority-majority), b (majority-minority)
and c (minority-minority) and whether the minorities collapse; else the Gram matrix of the class means (a
summary beyond 12 classes: its extremes, the head and tail pairs, and the cosines within and between the head,
medium and tail classes; --gram prints it all); and the number of distinct class directions."""
THRESHOLD_HELP = """Prints R*, the smallest imbalance ratio R = p_major / p_minor at which the minority classes of a
step profile share one direction (inf: apart at every R), with the criterion's limit as R -> inf; or, for
exp(C), the onsets rho*_m at which the m smallest classes first share one direction."""
REMEDY_ARG_HELP = ("a remedy against Minority Collapse, e.g. 'reweight(gamma=1) + logit_adjust(t=1)' (docs/cli.md; "
                   "default none)")
GRAM_ROWS_MAX = 12  # solve prints the Gram matrix up to this many classes, a summary beyond


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
    p_solve = sub.add_parser("solve", help="optimal class geometry at one point", description=SOLVE_HELP)
    _add_problem_args(p_solve, with_R=True)
    p_solve.add_argument("--dim", default=None, help="embedding dimension d (rank solver when d < C)")
    p_solve.add_argument("--solver", default="auto", help="auto|symmetric|full|rank|oblique (default auto)")
    p_solve.add_argument("--seed", default="0", help="seed of the rank solver's restarts")
    p_solve.add_argument("--remedy", default=None, help=REMEDY_ARG_HELP)
    p_solve.add_argument("--gram", action="store_true",
                         help=f"print the Gram matrix also beyond {GRAM_ROWS_MAX} classes")  # fmt: skip
    p_thr = sub.add_parser("threshold", help="minority-collapse threshold R* (or cascade onsets)",
                           description=THRESHOLD_HELP)  # fmt: skip
    _add_problem_args(p_thr, with_R=False)
    p_thr.add_argument("--remedy", default=None, help=REMEDY_ARG_HELP)
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
    p_unlock = sub.add_parser("unlock", help="remove a store's lock file left by a run that is gone")
    p_unlock.add_argument("store", help="path of a results store")
    p_unlock.add_argument("--force", action="store_true",
                          help="remove it even though a process holds it (its host is gone, or the file system "
                               "has no flock and a killed run left its marker)")  # fmt: skip
    p_plot = sub.add_parser("plot", help="phase diagrams, thresholds and Gram panels from a store")
    p_plot.add_argument("store", help="path of a results store")
    p_plot.add_argument("--out", default=None, help="output folder (default: figures/<store name>)")
    p_plot.add_argument("--select", default=None, help="subset, e.g. 'loss=infonce(tau=1),n_minor=2'")
    return parser


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x + 0.0:.10g}"  # no "-0"


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
    from pipeline.api import solve

    profile = _profile(args, with_R=True)
    dim = None if args.dim is None else _to_int("dim", args.dim, 1)
    seed = _to_int("seed", args.seed, 0)
    solution = solve(args.loss, profile, args.k, negatives=args.negatives, reduction=args.reduction,
                     solver=args.solver, dim=dim, seed=seed, remedy=args.remedy)  # fmt: skip
    if args.json:
        print(json.dumps({**solution.to_dict(), "dim": dim, "seed": seed}))  # dim: null when not given
        return 0 if solution.status != "error" else 1
    for line in solve_report(solution, profile, args.gram):
        print(line)
    return 0 if solution.status != "error" else 1


def solve_report(solution, profile: Profile, full_gram: bool = False) -> list[str]:
    """The lines ``clphase solve`` prints: one verdict per question, each saying what decided it."""
    problem = solution.problem
    remedy = "" if problem.remedy.is_none else f"  remedy {problem.remedy.spec}"
    lines = [f"loss {problem.loss.id}  profile {profile.spec}  k={_k(problem.k)}  negatives={problem.negatives} "
             f"reduction={problem.reduction}{remedy}",
             f"solver {solution.solver}  status {solution.status}  objective {_fmt(solution.objective)}  "
             f"gap {solution.gap:.2e} (relative {solution.gap_rel:.2e})"]  # fmt: skip
    labels = profile.labels()
    order = "head first" if isinstance(profile, (Exp, Step)) else "classes in the order given"
    if isinstance(profile, Counts) and profile.origin is not None:  # a preset: the counts it stands for
        lines.insert(1, f"counts ({profile.C} classes, {order}): {counts_text(profile.counts)}")
    if profile.two_groups() is not None:
        lines.append(f"cosines: a (majority-majority) {_fmt(solution.a)}  b (majority-minority) {_fmt(solution.b)}  "
                     f"c (minority-minority) {_fmt(solution.c)}")  # fmt: skip
        if not math.isnan(solution.criterion):
            verdict = {None: "undecided", True: "yes", False: "no"}[solution.collapsed]
            lines.append(f"minority collapse: {verdict}  (the c = 1 criterion g/p_minor^2 = "
                         f"{_fmt(solution.criterion)} +- {solution.criterion_error:.1e}: <= 0 is collapse, decided "
                         "beyond its error bound)")  # fmt: skip
    elif problem.C <= GRAM_ROWS_MAX or full_gram:
        width = max(len(x) for x in labels)
        lines.append(f"Gram matrix of the class means ({order}):")
        for name, row in zip(labels, solution.G, strict=True):
            lines.append(f"  {name:>{width}}  " + " ".join(f"{min(1.0, max(-1.0, x)) + 0.0:+.4f}" for x in row))
    else:
        lines += _gram_summary(solution, profile, labels, order)
    directions = solution.directions
    if directions is not None:
        merged = [t for t in directions.tests if t.merged]
        groups = ", ".join("{" + ", ".join(labels[i] for i in t.members) + "}" for t in merged)
        undecided = sum(t.merged is None for t in directions.tests)
        if directions.decided_by == "criterion":
            how = ("decided by the c = 1 criterion, which computes the minority terms (weight p_minor^2) directly; "
                   "the general split test certifies a merge only to 1e-3 p_min^2")
        elif directions.tests:
            how = "each candidate merge decided by its split test"
        else:
            how = "no two class means within 1e-4 of each other in cosine"
        lines.append(f"distinct directions: {directions.count} of {problem.C}"
                     + (f"; merged {groups}" if groups else "")
                     + (f"; {undecided} merge(s) undecided (within the error bound)" if undecided else "")
                     + f" ({how})")  # fmt: skip
    stationarity = solution.extra.get("stationarity")
    if stationarity is not None:
        verdict = stationarity.verdict
        if verdict == "not determined":
            verdict += " (the curvature's Lanczos did not converge within its bound)"
        lines.append(f"rank-{solution.V.shape[0]} point: lower bound {_fmt(solution.lower_bound)} "
                     f"(gap {solution.gap:.2e}); second-order stationary: {verdict} "
                     f"(|Riemannian gradient| / |gradient| {stationarity.gradient:.1e}, Hessian eigenvalues "
                     f"{stationarity.hessian_min:+.2e} .. {stationarity.hessian_max:+.2e} in the p-weighted "
                     "metric, off the rotations)")  # fmt: skip
    if solution.message:
        lines.append(f"note: {solution.message}")
    return lines


def _gram_summary(solution, profile: Profile, labels: list[str], order: str) -> list[str]:
    """A few lines on a large Gram matrix: the extremes of the off-diagonal cosines, the head's and tail's
    pairs, and the cosine extremes within and between the head, medium and tail groups."""
    import numpy as np

    from pipeline.metrics import class_groups

    G = np.clip(solution.G, -1.0, 1.0)  # (C, C)
    C = G.shape[0]
    eye = np.eye(C, dtype=bool)
    off = G[~eye]
    i, j = np.unravel_index(np.argmax(np.where(eye, -np.inf, G)), G.shape)
    by_size = np.argsort(-solution.problem.p, kind="stable")  # (C,) largest first, ties in the order given
    head, tail = by_size[:2], by_size[-2:]
    lines = [f"Gram matrix of the class means ({order}), {C} classes: off-diagonal cosines from {off.min():+.4f} "
             f"to {off.max():+.4f} (largest: {labels[i]} and {labels[j]}), mean {off.mean():+.4f}",
             f"  head pair ({labels[head[0]]}, {labels[head[1]]}) {G[head[0], head[1]]:+.4f}; tail pair "
             f"({labels[tail[0]]}, {labels[tail[1]]}) {G[tail[0], tail[1]]:+.4f}"]  # fmt: skip
    counts = np.array(profile.counts) if isinstance(profile, Counts) else None
    how, groups = class_groups(solution.problem.p, counts)
    lines.append(f"  cosines within and between groups ({how}), min .. max:")
    for name, members in groups.items():
        block = G[np.ix_(members, members)]
        within = block[~np.eye(len(members), dtype=bool)]
        parts = [f"within {within.min():+.4f} .. {within.max():+.4f}" if within.size else "within -"]
        for other, others in groups.items():
            if other != name:
                between = G[np.ix_(members, others)]
                parts.append(f"to {other} {between.min():+.4f} .. {between.max():+.4f}")
        first, last = labels[members[0]], labels[members[-1]]
        lines.append(f"    {name:<6} ({len(members)} classes, {first} .. {last}): " + "; ".join(parts))
    lines.append("  the full matrix: --gram, or --json")
    return lines


def _k(k: float) -> str:
    return "inf" if math.isinf(k) else str(k)


def _cmd_threshold(args: argparse.Namespace) -> int:
    from pipeline.api import threshold
    from pipeline.theory.cascade import Cascade

    result = threshold(args.loss, _profile(args, with_R=False), args.k, negatives=args.negatives,
                       reduction=args.reduction, remedy=args.remedy)  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    conventions = f"k={_k(result.k)}, negatives={result.negatives}, reduction={result.reduction}"
    if not result.remedy.is_none:
        conventions += f", remedy {result.remedy.spec}"
    if isinstance(result, Cascade):
        print(f"collapse cascade of exp(C={result.C}, rho): loss {result.loss}, {conventions}")
        for o in result.onsets:
            value = {"optimal": f"{o.rho_star:.10g}", "beyond": f"inf (apart up to rho = {o.apart_below:g})"}.get(
                o.status, f"undecided (apart up to rho = {o.apart_below:.4g}; {o.message})")
            print(f"  rho*_{o.m} = {value}")
        return 0
    R_star = "inf" if math.isinf(result.R_star) else f"{result.R_star:.10g}"
    if result.status == "beyond":
        R_star = f"> {result.bracket[0]:g} (undecided beyond)"
    name = "R*_inf" if math.isinf(result.k) else "R*"
    limit = "" if math.isnan(result.criterion_limit) else \
        f"; lim g/p_minor^2 = {_fmt(result.criterion_limit)} +- {result.criterion_limit_error:.1e}"
    print(f"{name} = {R_star}  (loss {result.loss.id}, K_A={result.n_major}, K_B={result.n_minor}, {conventions}"
          f"{limit})")  # fmt: skip
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


def _cmd_unlock(args: argparse.Namespace) -> int:
    from pipeline.sweep.lock import unlock

    print(unlock(args.store, args.force))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.plots import write_figures
    from pipeline.sweep.runner import damage
    from pipeline.sweep.store import DamagedStoreError, check_writable, require_store

    require_store(args.store)
    out = args.out or str(Path("figures") / Path(args.store.rstrip("/")).stem)
    check_writable(out, "out")
    damaged = damage(args.store)  # a deleted chunk reads as NaN and a flipped bit as a plausible number
    if damaged:
        raise DamagedStoreError(args.store, damaged, None)
    try:
        report = write_figures(args.store, out, args.select)
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError("select", args.select, str(err).split(": expected ")[-1]) from None
    except Exception as err:  # a chunk that cannot be read: name the damaged batches, as status does
        damaged = damage(args.store)
        if not damaged:
            raise
        raise DamagedStoreError(args.store, damaged, err) from None
    for line in report["skipped"]:
        print(f"skipped: {line}")
    print(f"wrote {len(report['written'])} files to {out} in {report['seconds']:.1f} s")
    return 0


COMMANDS = {"solve": _cmd_solve, "threshold": _cmd_threshold, "run": _cmd_run, "status": _cmd_status, "plot": _cmd_plot,
            "unlock": _cmd_unlock}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clphase`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options: `run CONFIG --dry-run grid.k=[1]`
    if args.command == "run" and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        load_loss_files(os.environ.get(LOSSES_ENV, ""))
        return COMMANDS[args.command](args)
    except InputError as err:
        for line in str(err).splitlines():
            print(f"clphase {args.command}: error: {line}", file=sys.stderr)
        return 2
    except SweepStoppedError as err:
        print(f"clphase {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        resume = "; rerun the same command to resume" if args.command == "run" else ""
        print(f"\nclphase {args.command}: interrupted ({signal.Signals(signum).name}){resume}", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


LOSSES_ENV = "CLPHASE_LOSSES"  # Python files that register losses (register_loss), separated by os.pathsep


def load_loss_files(paths: str) -> None:
    """Run each Python file of ``CLPHASE_LOSSES``: its ``register_loss`` calls make the losses known by name to
    every command (and, through the config, to a sweep's workers)."""
    import runpy

    for path in filter(None, paths.split(os.pathsep)):
        try:
            runpy.run_path(path)
        except InputError:
            raise
        except Exception as err:  # the user's file: any failure is one line
            raise InputError(LOSSES_ENV, path, f"a Python file that registers losses with pipeline.theory.losses."
                             f"register_loss (it raised {type(err).__name__}: {err})") from None  # fmt: skip


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), or SIGTERM: what SLURM sends on preemption, scancel or walltime."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    """Stop as Ctrl-C does, on SIGINT and SIGTERM alike: the sweep's cleanup runs (lock released, workers
    closed), quietly: distributed would log a warning per cancelled task while the cluster shuts down."""
    import logging

    # every logger of these libraries, children included: dask's logging config gives some their own level
    # (tornado.application: error), which a parent's level does not override; a signal that lands inside
    # distributed's sync() made it log a NameError traceback from its cancel callback
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in QUIET_LOGGERS]
    for name in {*QUIET_LOGGERS, *names}:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    raise Interrupted(signum)


QUIET_LOGGERS = ("distributed", "tornado", "asyncio")  # silenced once a run is interrupted


def run() -> NoReturn:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `clphase run ... | head -1`: the reader left, so the command stopped (a sweep
        # releases its lock and resumes on rerun); exit as a process killed by SIGPIPE does, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        command = next((a for a in sys.argv[1:] if a in COMMANDS), "")
        with contextlib.suppress(OSError):
            print(f"clphase {command}: stopped: its output pipe was closed (broken pipe)"
                  + ("; rerun the same command to resume" if command == "run" else ""), file=sys.stderr)  # fmt: skip
        code = 128 + signal.SIGPIPE
    sys.exit(code)
