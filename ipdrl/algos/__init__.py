"""Algorithm registry. Each algorithm is a module with a ``Config`` dataclass and ``make_learner(config, dataset)``
(or ``run_pipeline(config, dataset, run, env_id)`` for multi-stage methods such as IPD and DWM-MPC)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

ALGORITHMS: dict[str, str] = {
    "bc": "ipdrl.algos.bc",
    "iql": "ipdrl.algos.iql",
    "td3bc": "ipdrl.algos.td3bc",
    "rebrac": "ipdrl.algos.rebrac",
    "dt": "ipdrl.algos.dt",
    "ipd": "ipdrl.algos.ipd",
    "dwm-mpc": "ipdrl.algos.dwm_mpc",
}


def available() -> list[str]:
    """Algorithms whose module is present in this installation."""
    names = []
    for name, module in ALGORITHMS.items():
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def get_algorithm(name: str) -> ModuleType:
    if name not in ALGORITHMS or importlib.util.find_spec(ALGORITHMS[name]) is None:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(available())}.")
    return importlib.import_module(ALGORITHMS[name])
