"""Presets: budget (tiny | cpu | paper) x dataset overrides on top of an algorithm's Config defaults.

Each algorithm module may define ``BUDGETS = {"tiny": {...}, "cpu": {...}, "paper": {...}}`` and
``PRESETS = {"hopper": {...}, "hopper-medium-replay": {...}}`` (family, then exact dataset; the more specific
wins). Command-line flags override everything here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any

from ipdrl import envs

BUDGET_NAMES = ("tiny", "cpu", "paper")

# Run-level settings per budget; algorithms add their own (steps, network sizes) in their BUDGETS.
COMMON_BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(steps=200, log_every=50, eval_every=0, eval_episodes=2, checkpoint_every=100),
    "cpu": dict(log_every=1000, eval_every=0, eval_episodes=10, checkpoint_every=5000),
    "paper": dict(steps=1_000_000, log_every=5000, eval_every=50_000, eval_episodes=10, checkpoint_every=50_000),
}


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


def overrides(module: ModuleType, dataset: str, budget: str) -> dict[str, Any]:
    """The merged overrides for ``module`` on ``dataset`` at ``budget``."""
    if budget not in BUDGET_NAMES:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGET_NAMES)}.")
    merged: dict[str, Any] = dict(COMMON_BUDGETS[budget])
    _merge(merged, getattr(module, "BUDGETS", {}).get(budget, {}))
    presets = getattr(module, "PRESETS", {})
    key = dataset_key(dataset)
    family = envs.family_of(key)
    if family is not None:
        _merge(merged, presets.get(family.name, {}))
    _merge(merged, presets.get(key, {}))
    return merged


def _merge(merged: dict[str, Any], table: dict[str, Any]) -> None:
    """Update ``merged`` with ``table``; dict values (nested stage settings, e.g. IPD's ``iql``) merge key by key."""
    for name, value in table.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(name), dict)
        merged[name] = {**merged[name], **value} if both_dicts else value


def make_config(module: ModuleType, dataset: str, budget: str = "cpu", **changes: Any):
    """``module.Config`` with preset overrides for (dataset, budget), then ``changes``."""
    fields = {f.name for f in dataclasses.fields(module.Config)}
    values = {k: v for k, v in overrides(module, dataset, budget).items() if k in fields}
    values.update(dataset=dataset, **changes)
    return module.Config(**values)
