"""``ipdrl sweep``: a grid of ``ipdrl train`` runs on Dask distributed, then its table (markdown and JSON)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ipdrl import sweeps, tables
from ipdrl.host import usable_cores
from ipdrl.presets import BUDGET_NAMES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ipdrl sweep", description=(sweeps.__doc__ or "").strip().splitlines()[0],
        epilog="A sweep file lists methods x datasets x seeds (see `ipdrl.sweeps`); or give one by flags: "
               "ipdrl sweep --name quick --algos iql dt --datasets hopper-medium-replay --seeds 0 1 2 "
               "[--flags \"--steps 1000\"].")
    parser.add_argument("file", nargs="?", help="a .toml or .yaml sweep definition")
    parser.add_argument("--name", help="(without a file) the sweep's name")
    parser.add_argument("--algos", nargs="+", help="(without a file) algorithms, one method each")
    parser.add_argument("--methods", nargs="+", help="run (and tabulate) only these of the file's methods")
    parser.add_argument("--datasets", nargs="+",
                        help="datasets (overrides the file's, and narrows a method's own list)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="training seeds (overrides the file's, and narrows a method's own list)")
    parser.add_argument("--budget", choices=BUDGET_NAMES, help="budget preset (overrides the file's)")
    parser.add_argument("--out", help="run directories go under here (overrides the file's)")
    parser.add_argument("--flags", default="", help="(without a file) `ipdrl train` flags for every run, quoted")
    parser.add_argument("--scheduler", help="tcp://HOST:PORT of a running Dask scheduler; default: a local cluster "
                                            "on 127.0.0.1, one worker per core")
    parser.add_argument("--workers", type=int, help="workers of the local cluster (default: one per core); with "
                        "--scheduler and --dry-run, the cluster's, to list the runs as it will group them")
    parser.add_argument("--pin-cores", action="store_true",
                        help="keep each local worker and its runs on its own share of the cores: faster with every "
                             "worker busy, but runs then differ in the last bits from the same runs unpinned "
                             "(README, \"Sweeps\")")
    parser.add_argument("--docs", default="docs/evidence", help="where the table (<name>.md and .json) is written")
    parser.add_argument("--no-group-seeds", dest="group_seeds", action="store_false", default=None,
                        help="one process per run (default: a method's seeds on a dataset train together where "
                             "the algorithm can; see `ipdrl.sweeps`)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.add_argument("--report-only", action="store_true", help="write the table from the runs that are done")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the table even where that drops results the existing one holds")
    parser.add_argument("--keep-missing", action="store_true",
                        help="keep the existing table's rows of this sweep's runs whose run directories are not "
                             "here (finished on another machine), after checking their saved settings")
    stale = parser.add_mutually_exclusive_group()
    stale.add_argument("--retrain-stale", dest="stale", action="store_const", const="retrain", default="refuse",
                       help="runs started with other settings than their command gives now (a preset changed "
                            "since) are moved aside to <out>/.stale/TIME/ and trained again (default: the sweep "
                            "lists them and stops)")
    stale.add_argument("--keep-stale", dest="stale", action="store_const", const="keep",
                       help="tabulate such runs as they are")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    if args.file:
        sweep = sweeps.load(args.file)
    elif args.name and args.algos and args.datasets and args.seeds is not None:
        sweep = sweeps.Sweep(name=args.name, datasets=args.datasets, seeds=args.seeds,
                             methods=[sweeps.Method(name=a, algo=a, flags=shlex.split(args.flags)) for a in args.algos])
    else:
        parser.error("give a sweep file, or --name, --algos, --datasets and --seeds")
    if args.methods:
        names = [method.name for method in sweep.methods]
        unknown = sorted(set(args.methods) - set(names))
        if unknown:
            parser.error(f"--methods {' '.join(unknown)}: not in the sweep; its methods are {', '.join(names)}")
        sweep.methods = [method for method in sweep.methods if method.name in args.methods]
        sweep.paired = [pair for pair in sweep.paired if set(pair) <= set(args.methods)]
    for key in ("datasets", "seeds", "budget", "out", "group_seeds"):
        if getattr(args, key) is not None:
            setattr(sweep, key, getattr(args, key))
    for method in sweep.methods:  # a method's own seeds and datasets are narrowed by the flags, never widened
        if args.seeds is not None and method.seeds is not None:
            method.seeds = [seed for seed in method.seeds if seed in args.seeds]
        if args.datasets is not None and method.datasets is not None:
            method.datasets = [name for name in method.datasets if name in args.datasets]
    if not args.file:
        sweep.out = args.out or f"runs/sweeps/{sweep.name}"
    sweep.check()  # the file's checks again, on the lists the flags above replaced or narrowed

    if args.report_only and args.stale == "retrain":
        parser.error("--retrain-stale trains, --report-only does not: drop one")
    if args.keep_missing and not args.report_only:
        parser.error("--keep-missing goes with --report-only: a sweep that trains trains the runs that are not here")
    if args.pin_cores and args.scheduler:
        parser.error("--pin-cores pins the workers of the local cluster; with --scheduler, give each of the cluster's "
                     "workers its own cores where it starts (SLURM: cores=1)")
    failures: list[str] = []
    try:
        if args.dry_run:
            dry_run(sweep, args)
            return 0
        if args.report_only:
            sweeps.handle_stale(sweep, args.stale)
            rows = [sweeps.run_row(task) for task in sweeps.tasks(sweep) if task.done()]
            if args.keep_missing:
                rows = tables.with_carried_rows(sweep, rows, args.docs)
        else:
            rows, failures = sweeps.run(sweep, args.scheduler, args.workers, args.progress, args.stale,
                                         args.pin_cores)
    except ValueError as error:
        print(f"ipdrl sweep: {error}", file=sys.stderr)
        return 1
    # The command that makes this table: what only changes how it is shown or checked is left out.
    shown_only = ("--report-only", "--no-progress", "--overwrite", "--retrain-stale", "--keep-stale",
                  "--keep-missing")
    command = "ipdrl sweep " + shlex.join(a for a in argv if a not in shown_only)
    problem = None if args.overwrite else tables.overwrite_problem(sweep, rows, args.docs)
    if problem is None:
        tables.write_report(sweep, rows, args.docs, command)
    print(tables.markdown(sweep, rows, tables.aggregate(sweep, rows), command))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if problem is not None:
        print(f"the table in {args.docs} was not rewritten: {problem}. Pass --overwrite to write it anyway, or "
              f"--docs DIR to write it elsewhere.", file=sys.stderr)
    return 1 if failures or problem else 0


def dry_run(sweep: sweeps.Sweep, args: argparse.Namespace) -> None:
    """List the runs that are done, stale (with what changed) and to run, as the sweep would group them."""
    stale = sweeps.stale_runs(sweep)
    todo = []
    for task in sweeps.tasks(sweep):
        if task in stale:
            print(f"stale   {shlex.join(task.command)}\n        ({stale[task]})")
        elif task.done():
            print(f"done    {shlex.join(task.command)}")
        if not task.done() or (task in stale and args.stale == "retrain"):
            todo.append(task)
    workers = args.workers or (1 if args.scheduler else usable_cores())
    if args.scheduler and not args.workers:
        # A dry run does not connect, so it does not know how many workers the cluster has.
        print("(grouped as for one worker: --workers N groups them as for a cluster of N)")
    for job in sweeps.jobs(sweep, todo, workers):
        print(f"to run  {shlex.join(job.command)}")
