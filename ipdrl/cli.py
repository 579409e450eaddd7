"""The ``ipdrl`` command line.

    ipdrl run                       the main job: IPD vs DT vs IQL on the embedded dataset, score table
    ipdrl train --algo NAME ...     train one algorithm (``ipdrl train --algo iql --help`` lists every setting)
    ipdrl eval RUN_DIR              re-evaluate a run's final checkpoint
    ipdrl data info DATASET         transitions, episodes, dims, returns (raw and normalised)
    ipdrl data generate ...         D4RL-recipe dataset generation with a JAX SAC behaviour agent
    ipdrl data export-minari ...    write a dataset as a Minari dataset
    ipdrl augment ...               IPD's MPC imaginary augmentation of a dataset
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Callable

from ipdrl.algos import available, get_algorithm
from ipdrl.presets import BUDGET_NAMES

# Commands implemented next to what they drive: "module:function", each taking argv.
COMMANDS: dict[str, str] = {
    "run": "ipdrl.main_job:main",
    "train": "ipdrl.cli:train_main",
    "eval": "ipdrl.cli:eval_main",
    "data info": "ipdrl.data.loading:info_main",
    "data generate": "ipdrl.data.generate:main",
    "data export-minari": "ipdrl.data.minari_io:export_main",
    "augment": "ipdrl.augmentation:main",
}


def _resolve(target: str) -> Callable[[list[str]], int | None]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def train_main(argv: list[str]) -> int:
    """``ipdrl train --algo NAME [--budget B] [--dataset D] [--<hyperparameter> V ...]``."""
    import tyro

    pre = argparse.ArgumentParser(prog="ipdrl train", add_help=False)
    pre.add_argument("--algo", choices=available())
    pre.add_argument("--budget", default="cpu", choices=BUDGET_NAMES)
    pre.add_argument("--dataset", default="embedded")
    known, rest = pre.parse_known_args(argv)
    if known.algo is None:
        print(f"usage: ipdrl train --algo {{{','.join(available())}}} [--budget {{{','.join(BUDGET_NAMES)}}}] "
              f"[--dataset D] [options]\n\n`ipdrl train --algo NAME --help` lists every hyperparameter of NAME "
              f"with the preset values for the chosen --budget and --dataset.")
        return 0 if ("-h" in rest or "--help" in rest) else 2
    from ipdrl import presets
    from ipdrl.pipelines import train

    module = get_algorithm(known.algo)
    default = presets.make_config(module, known.dataset, known.budget)
    config = tyro.cli(module.Config, default=default, args=rest,
                      prog=f"ipdrl train --algo {known.algo} --budget {known.budget}",
                      description=(module.__doc__ or "").strip().splitlines()[0])
    results = train(known.algo, config)
    print(json.dumps(_summary(results), indent=2))
    return 0


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ipdrl eval", description="Re-evaluate a run's final checkpoint.")
    parser.add_argument("run_dir")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--eval-seed", type=int, default=None)
    args = parser.parse_args(argv)
    from ipdrl.pipelines import evaluate_run

    print(json.dumps(_summary(evaluate_run(args.run_dir, args.episodes, args.eval_seed)), indent=2))
    return 0


def _summary(results: dict) -> dict:
    return {k: v for k, v in results.items() if not isinstance(v, list)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # "no TPU/GPU backend" notices on CPU hosts
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            try:
                return _resolve(COMMANDS[name])(argv[words:]) or 0
            except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
                # Our errors carry the problem and the fix; a traceback would only hide them.
                print(f"ipdrl {name}: error: {err}", file=sys.stderr)
                return 1
    print(__doc__)
    return 0 if argv in ([], ["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
