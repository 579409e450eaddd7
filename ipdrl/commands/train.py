"""``ipdrl train --algo NAME ...`` and ``ipdrl eval RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import logging

from ipdrl import presets
from ipdrl.algos import Algorithm, available, get_algorithm
from ipdrl.pipelines import evaluate_run, train, train_seeds
from ipdrl.presets import BUDGET_NAMES
from ipdrl.runs import Run

log = logging.getLogger("ipdrl")


def translate_legacy_flags(algorithm: Algorithm, argv: list[str]) -> list[str]:
    """Rewrite flags of an earlier release to their current spelling, with a warning naming both. An old flag that
    now sets several (``--model-lr``) takes one value and passes it to each."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        flag, equals, value = arg.partition("=")
        current = algorithm.legacy_flags.get(flag)
        if current is None:
            out.append(arg)
            continue
        log.warning("ipdrl train --algo %s: %s is now %s; the old spelling goes in the next release", algorithm.name,
                    flag, " and ".join(current))
        if len(current) == 1:
            out.append(current[0] + equals + value)
            continue
        if not equals:
            value = next(args, None)
            if value is None:
                raise ValueError(f"{flag} needs a value.")
        out += [f"{name}={value}" for name in current]
    return out


def train_main(argv: list[str]) -> int:
    """``ipdrl train --algo NAME [--budget B] [--dataset D] [--<hyperparameter> V ...]``."""
    import tyro

    pre = argparse.ArgumentParser(prog="ipdrl train", add_help=False, allow_abbrev=False)
    pre.add_argument("--algo", choices=available())
    pre.add_argument("--budget", default="cpu", choices=BUDGET_NAMES)
    pre.add_argument("--dataset", default="embedded")
    pre.add_argument("--seeds", type=int, nargs="+", default=None)
    pre.add_argument("--seed-batching", default="map")
    known, rest = pre.parse_known_args(argv)
    if known.algo is None:
        print(f"usage: ipdrl train --algo {{{','.join(available())}}} [--budget {{{','.join(BUDGET_NAMES)}}}] "
              f"[--dataset D] [options]\n\n`ipdrl train --algo NAME --help` lists every hyperparameter of NAME "
              f"with the preset values for the chosen --budget and --dataset.\n\n--seeds S1 S2 ... trains several "
              f"seeds together in one process (one run directory each; --run-dir then needs {{seed}}), "
              f"--seed-batching map (bit-identical to single runs) or vmap (one batched step).")
        return 0 if ("-h" in rest or "--help" in rest) else 2
    algorithm = get_algorithm(known.algo)
    default = presets.make_config(algorithm, known.dataset, known.budget)
    config = tyro.cli(algorithm.Config, default=default, args=translate_legacy_flags(algorithm, rest),
                      prog=f"ipdrl train --algo {known.algo} --budget {known.budget}",
                      description=algorithm.summary + ("" if algorithm.train_seeds is None else
                                                       " Several seeds in one process: --seeds S1 S2 ... "
                                                       "[--seed-batching map|vmap] (--run-dir then needs {seed})."))
    if known.seeds:
        print(json.dumps([_summary(r) for r in train_seeds(algorithm, config, known.seeds, known.seed_batching)],
                         indent=2))
        return 0
    results = train(algorithm, config)
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
