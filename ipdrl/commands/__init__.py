"""The ``ipdrl`` command line.

    ipdrl run                       the main job: IPD vs DT vs IQL on the embedded dataset, score table
    ipdrl train --algo NAME ...     train one algorithm (``ipdrl train --algo iql --help`` lists every setting)
    ipdrl eval RUN_DIR              re-evaluate a run's final checkpoint
    ipdrl data info DATASET         transitions, episodes, dims, returns (raw and normalised)
    ipdrl data generate ...         D4RL-recipe dataset generation with a JAX SAC behaviour agent
    ipdrl data export-minari ...    write a dataset as a Minari dataset
    ipdrl augment ...               IPD's MPC imaginary augmentation of a dataset
    ipdrl sweep FILE | --algos ...  a grid of runs on Dask distributed, then its table with bootstrap CIs
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Callable

from ipdrl.host import use_compilation_cache

# Each command is a function taking argv, in the module that implements it (imported only when it runs).
COMMANDS: dict[str, str] = {
    "run": "ipdrl.commands.run:main",
    "train": "ipdrl.commands.train:train_main",
    "eval": "ipdrl.commands.train:eval_main",
    "data info": "ipdrl.commands.data:info_main",
    "data generate": "ipdrl.commands.data:generate_main",
    "data export-minari": "ipdrl.commands.data:export_main",
    "augment": "ipdrl.commands.augment:main",
    "sweep": "ipdrl.commands.sweep:main",
}


def _resolve(target: str) -> Callable[[list[str]], int | None]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # "no TPU/GPU backend" notices on CPU hosts
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            use_compilation_cache()
            try:
                return _resolve(COMMANDS[name])(argv[words:]) or 0
            except BrokenPipeError:  # the reader went away (`ipdrl ... | head`): nothing left to say
                sys.stderr.close()
                return 0
            except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
                # Our errors carry the problem and the fix; a traceback would only hide them.
                print(f"ipdrl {name}: error: {err}", file=sys.stderr)
                return 1
    print(__doc__)
    return 0 if argv in ([], ["-h"], ["--help"]) else 2
