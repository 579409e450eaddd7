"""Algorithms: each module registers one :class:`Algorithm`, the contract the pipelines and commands rely on.

The built-in ones are imported on first use (``get_algorithm("iql")``). Your own: build an :class:`Algorithm` (for
a single learner, :func:`ipdrl.algos.common.learner_algorithm` does it from ``Config`` and ``make_learner``) and
pass it to :func:`register`; to reach it from the ``ipdrl`` command line, also name its module under the
``ipdrl.algorithms`` entry-point group of your package (``myalgo = "mypackage.myalgo"``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Callable, Mapping

BUILTIN: dict[str, str] = {
    "bc": "ipdrl.algos.bc",
    "iql": "ipdrl.algos.iql",
    "td3bc": "ipdrl.algos.td3bc",
    "rebrac": "ipdrl.algos.rebrac",
    "dt": "ipdrl.algos.dt",
    "ipd": "ipdrl.algos.ipd",
    "dwm-mpc": "ipdrl.algos.dwm_mpc",
}
ENTRY_POINTS = "ipdrl.algorithms"


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """What an algorithm gives the library.

    ``train(config, dataset, run, env_id)`` trains in the run directory (resuming what is there) and returns the
    final checkpoint's evaluation (``ipdrl.evaluation.evaluate``'s dict, plus anything the method adds);
    ``evaluate(config, dataset, run, env_id)`` re-evaluates a trained run. ``budgets`` and ``presets`` are the
    overrides of ``Config``'s defaults per budget and per dataset family or name (:mod:`ipdrl.presets`).
    ``legacy_flags`` maps command-line flags of an earlier release to their current spelling.
    """

    name: str
    Config: type
    train: Callable[[Any, Any, Any, str], dict[str, Any]]
    evaluate: Callable[[Any, Any, Any, str], dict[str, Any]]
    summary: str
    budgets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    legacy_flags: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    train_seeds: Callable[[list, Any, list, str, str], list[dict[str, Any]]] | None = None
    """``train_seeds(configs, dataset, runs, env_id, batching)``: several seeds in one process (``ipdrl train
    --seeds``), one config and run per seed; None where the algorithm does not have it (multi-stage pipelines)."""


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm`` available by its name (to :func:`get_algorithm`, ``ipdrl train --algo``)."""
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def _plugins() -> dict[str, str]:
    return {entry.name: entry.value for entry in importlib.metadata.entry_points(group=ENTRY_POINTS)}


def available() -> list[str]:
    """Every algorithm name: built in, registered in this process, or named by an installed package."""
    return list(dict.fromkeys([*BUILTIN, *_REGISTRY, *_plugins()]))


def as_algorithm(algorithm: Algorithm | str | Any) -> Algorithm:
    """An :class:`Algorithm` from itself, its name, or the module that registered it (``ipdrl.algos.iql``)."""
    if isinstance(algorithm, Algorithm):
        return algorithm
    if isinstance(algorithm, str):
        return get_algorithm(algorithm)
    if isinstance(getattr(algorithm, "ALGORITHM", None), Algorithm):
        return algorithm.ALGORITHM
    raise ValueError(f"{algorithm!r} is not an algorithm: pass an ipdrl.algos.Algorithm, its name or its module.")


def get_algorithm(name: str) -> Algorithm:
    if name not in _REGISTRY:
        module = BUILTIN.get(name) or _plugins().get(name)
        if module is None:
            raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(available())}.")
        importlib.import_module(module.partition(":")[0])
        if name not in _REGISTRY:
            raise ValueError(f"module {module} did not register an algorithm named {name!r}: call "
                             f"ipdrl.algos.register(Algorithm(name={name!r}, ...)) in it.")
    return _REGISTRY[name]
