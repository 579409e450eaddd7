"""Presets: budget (tiny | cpu | paper) x dataset overrides on top of an algorithm's Config defaults.

Each :class:`~ipdrl.algos.Algorithm` has ``budgets = {"tiny": {...}, "cpu": {...}, "paper": {...}}`` and
``presets = {"hopper": {...}, "hopper-medium-replay": {...}}`` (family, then exact dataset; the more specific
wins); nested stage settings are dicts that merge key by key. A key with ``@budget`` (``"antmaze@cpu"``) applies at
that budget only, after the key without it: a domain whose learning curve plateaus later (AntMaze's sparse reward)
gets its own training length at ``cpu`` while its ``tiny`` runs stay tiny. Command-line flags override everything
here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ipdrl import envs

BUDGET_NAMES = ("tiny", "cpu", "paper")

# Settings per budget that every algorithm shares; algorithms add their own (steps, network sizes) in their budgets.
COMMON_BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(steps=200, log_every=50, eval_every=0, eval_episodes=2, checkpoint_every=100),
    "cpu": dict(log_every=1000, eval_every=0, eval_episodes=10, checkpoint_every=5000),
    "paper": dict(steps=1_000_000, log_every=5000, eval_every=50_000, eval_episodes=10, checkpoint_every=50_000),
}


# Settings per family that every algorithm shares above the tiny budget: the field's evaluation conventions.
COMMON_PRESETS: dict[str, dict[str, Any]] = {
    "antmaze": dict(eval_episodes=100),  # success rates are read from 100 episodes
}

FIT_FIELDS = ("steps", "log_every", "eval_every", "checkpoint_every")


def fit_budget(budget: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The common training-length settings of ``budget`` for a nested stage, then ``overrides``."""
    return {**{k: v for k, v in COMMON_BUDGETS[budget].items() if k in FIT_FIELDS}, **overrides}


def dataset_key(dataset: str) -> str:
    """``../x/hopper-medium-replay.hdf5`` or ``hopper-medium-replay-v2`` -> ``hopper-medium-replay``."""
    if dataset == "embedded":  # the shipped dataset's presets are those of the data it holds
        from ipdrl.data.loading import embedded_files

        files = embedded_files()
        dataset = files[0].name if files else dataset
    name = Path(dataset).stem if dataset.endswith((".hdf5", ".h5")) else dataset.split(":")[-1]
    for suffix in ("-v0", "-v1", "-v2", "-v3", "-v4", "-v5"):
        name = name.removesuffix(suffix)
    return name.lower()


def dataset_family(dataset: str) -> envs.Family | None:
    """The family of a dataset spec: from the env id in a file's metadata first, then from its name."""
    from ipdrl.data.d4rl import read_metadata
    from ipdrl.data.loading import embedded_files

    path = Path(dataset).expanduser()
    if dataset == "embedded" and embedded_files():
        path = embedded_files()[0]
    metadata = read_metadata(path) if path.suffix in (".hdf5", ".h5") and path.is_file() else {}
    return envs.family_for(dataset_key(dataset), metadata)


def overrides(algorithm: Any, dataset: str, budget: str) -> dict[str, Any]:
    """The merged overrides for ``algorithm`` (an :class:`~ipdrl.algos.Algorithm`) on ``dataset`` at ``budget``."""
    algorithm = getattr(algorithm, "ALGORITHM", algorithm)  # an algorithm's module stands for it
    if budget not in BUDGET_NAMES:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGET_NAMES)}.")
    merged: dict[str, Any] = dict(COMMON_BUDGETS[budget])
    _merge(merged, algorithm.budgets.get(budget, {}))
    presets = algorithm.presets
    key = dataset_key(dataset)
    family = dataset_family(dataset)
    names = ([family.name] if family is not None else []) + [key]
    if family is not None and budget != "tiny":
        _merge(merged, COMMON_PRESETS.get(family.name, {}))
    for name in names:
        _merge(merged, presets.get(name, {}))
        _merge(merged, presets.get(f"{name}@{budget}", {}))
    return merged


def _merge(merged: dict[str, Any], table: dict[str, Any]) -> None:
    """Update ``merged`` with ``table``; dict values (nested stage settings, e.g. IPD's ``iql``) merge key by key."""
    for name, value in table.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(name), dict)
        merged[name] = {**merged[name], **value} if both_dicts else value


def make_config(algorithm: Any, dataset: str, budget: str = "cpu", **changes: Any):
    """``algorithm.Config`` with preset overrides for (dataset, budget), then ``changes`` (a dict for a nested stage
    changes only the settings it names). ``algorithm``: an
    :class:`~ipdrl.algos.Algorithm` or the module that registered it."""
    algorithm = getattr(algorithm, "ALGORITHM", algorithm)
    fields = {f.name for f in dataclasses.fields(algorithm.Config)}
    values = {k: v for k, v in overrides(algorithm, dataset, budget).items() if k in fields}
    _merge(values, dict(changes, dataset=dataset))  # dict changes of nested stages merge into their presets
    return algorithm.Config(**values)
