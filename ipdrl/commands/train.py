"""``ipdrl train --algo NAME ...`` and ``ipdrl eval RUN_DIR``."""

from __future__ import annotations

import argparse
import json

from ipdrl.algos import available, get_algorithm
from ipdrl.pipelines import evaluate_run, parse_train_args, train, train_seeds
from ipdrl.presets import BUDGET_NAMES
from ipdrl.runs import Run


def train_main(argv: list[str]) -> int:
    """``ipdrl train --algo NAME [--budget B] [--dataset D] [--<hyperparameter> V ...]``."""
    parsed = parse_train_args(argv)
    if parsed is None:
        print(f"usage: ipdrl train --algo {{{','.join(available())}}} [--budget {{{','.join(BUDGET_NAMES)}}}] "
              f"[--dataset D] [options]\n\n`ipdrl train --algo NAME --help` lists every hyperparameter of NAME "
              f"with the preset values for the chosen --budget and --dataset.\n\n--seeds S1 S2 ... trains several "
              f"seeds together in one process (one run directory each; --run-dir then needs {{seed}}), "
              f"--seed-batching map (bit-identical to single runs) or vmap (one batched step).")
        return 0 if ("-h" in argv or "--help" in argv) else 2
    if parsed.seeds:
        print(json.dumps([_summary(r) for r in train_seeds(parsed.algorithm, parsed.config, parsed.seeds,
                                                           parsed.seed_batching)], indent=2))
        return 0
    results = train(parsed.algorithm, parsed.config)
    print(json.dumps(_summary(results), indent=2))
    return 0


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ipdrl eval", description="Re-evaluate a run's final checkpoint.")
    parser.add_argument("run_dir")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--eval-seed", type=int, default=None)
    parser.add_argument("--save", action="store_true",
                        help="replace the run's results.json with this evaluation (after a fix to evaluation, so "
                             "that sweeps and tables read the new score); the old score is kept as `replaced`")
    args = parser.parse_args(argv)
    run = Run.open(args.run_dir)
    algorithm = get_algorithm(run.config["algo"])
    if args.save and not (run.path / "results.json").is_file():
        parser.error(f"{run.path} has no results.json: finish the run with `ipdrl train ... --resume` first.")
    results = evaluate_run(algorithm, args.run_dir, args.episodes, args.eval_seed)
    if args.save:
        old = run.results()
        run.save_results({**old, **results, "replaced": _summary(old)})
    print(json.dumps(_summary(results), indent=2))
    return 0


def _summary(results: dict) -> dict:
    return {k: v for k, v in results.items() if not isinstance(v, list)}
