"""Resolve a dataset spec (path, local name, embedded, Minari id, official D4RL name) to a :class:`Dataset`."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

import numpy as np

from ipdrl import envs
from ipdrl.data.d4rl import download_d4rl, read_d4rl, resolve_d4rl_name
from ipdrl.data.dataset import Dataset, DatasetError


def search_dirs() -> list[Path]:
    """Directories searched for ``<name>.hdf5``: ``$IPDRL_DATASETS`` (os.pathsep-separated), then ./datasets."""
    dirs = [Path(p) for p in os.environ.get("IPDRL_DATASETS", "").split(os.pathsep) if p]
    return dirs + [Path("datasets")]


def embedded_files() -> list[Path]:
    folder = importlib.resources.files("ipdrl.data") / "embedded"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".hdf5")) if folder.is_dir() else []


def load_dataset(spec: str) -> Dataset:
    """Load ``spec``: an .hdf5 path; ``embedded[:name]``; ``minari:<id>`` or a Minari dataset directory; a name
    found as ``<name>.hdf5`` in :func:`search_dirs`; or an official D4RL name (cached, downloaded when online)."""
    path = Path(spec).expanduser()
    if spec.endswith((".hdf5", ".h5")) or path.is_file():
        return read_d4rl(path)
    if spec == "embedded" or spec.startswith("embedded:"):
        return _load_embedded(spec.partition(":")[2])
    if spec.startswith("minari:") or (path / "data" / "main_data.hdf5").exists():
        from ipdrl.data.minari_io import read_minari

        return read_minari(spec.removeprefix("minari:"))
    for folder in search_dirs():
        candidate = folder / f"{spec}.hdf5"
        if candidate.exists():
            return read_d4rl(candidate, name=spec)
    try:
        filename, _ = resolve_d4rl_name(spec)
    except DatasetError:
        raise DatasetError(
            f"unknown dataset {spec!r}. Tried: a file path; 'embedded'; 'minari:<id>'; <name>.hdf5 in "
            f"{[str(d) for d in search_dirs()]} (set IPDRL_DATASETS to add directories); and official D4RL names "
            f"like hopper-medium-replay-v2."
        ) from None
    return read_d4rl(download_d4rl(spec), name=spec.removesuffix("-v2"))


def dataset_label(spec: str) -> str:
    """A dataset spec as one path component for run directories and table columns: a file's stem (``../d/x.hdf5``
    -> ``x``), a Minari directory's name, or the spec itself with ``:`` and ``/`` made safe."""
    path = Path(spec).expanduser()
    name = path.stem if spec.endswith((".hdf5", ".h5")) else path.resolve().name if path.is_dir() else spec
    return name.replace(":", "-").replace("/", "-")


def _load_embedded(name: str) -> Dataset:
    files = embedded_files()
    if not files:
        raise DatasetError("this installation has no embedded dataset (ipdrl/data/embedded/*.hdf5); reinstall ipdrl.")
    if not name:
        return read_d4rl(files[0])
    for file in files:
        if file.stem == name:
            return read_d4rl(file)
    raise DatasetError(f"no embedded dataset {name!r}; available: {[f.stem for f in files]}.")


def describe(dataset: Dataset) -> dict[str, Any]:
    """Size, dims and episode-return statistics, raw and normalised (D4RL reference table) when known."""
    returns = dataset.episode_returns()
    facts: dict[str, Any] = {
        "name": dataset.name,
        "transitions": dataset.size,
        "episodes": dataset.num_episodes,
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "terminals": int(dataset.terminals.sum()),
        "timeouts": int(dataset.timeouts.sum()),
        "return_min": float(returns.min()),
        "return_mean": float(returns.mean()),
        "return_max": float(returns.max()),
        "infos": sorted(dataset.infos),
    }
    family = envs.family_for(dataset.name, dataset.metadata)
    reference = dataset.reference()
    if reference is not None and family is not None and not family.dataset_returns_normalizable:
        facts["normalized_unavailable"] = (f"{family.name} datasets' episode returns are not on the scale of "
                                           f"{reference.table}; only evaluation returns are")
    elif reference is not None:
        normalized = reference.normalize(returns)
        facts.update(
            normalized_min=float(np.min(normalized)),
            normalized_mean=float(np.mean(normalized)),
            normalized_max=float(np.max(normalized)),
            reference_table=reference.table,
            reference_scores=[reference.min, reference.max],
        )
    return facts


def format_description(facts: dict[str, Any]) -> str:
    lines = [
        f"dataset      {facts['name']}",
        f"transitions  {facts['transitions']:,}",
        f"episodes     {facts['episodes']:,}  (terminals {facts['terminals']:,}, timeouts {facts['timeouts']:,})",
        f"dims         obs {facts['obs_dim']}, act {facts['act_dim']}",
        f"return       min {facts['return_min']:.1f}  mean {facts['return_mean']:.1f}  max {facts['return_max']:.1f}",
    ]
    if "normalized_mean" in facts:
        lines.append(
            f"normalised   min {facts['normalized_min']:.1f}  mean {facts['normalized_mean']:.1f}  "
            f"max {facts['normalized_max']:.1f}  ({facts['reference_table']}: "
            f"{facts['reference_scores'][0]:g} to {facts['reference_scores'][1]:g})"
        )
    else:
        reason = facts.get("normalized_unavailable", "no reference scores for this dataset's family")
        lines.append(f"normalised   n/a ({reason})")
    if facts["infos"]:
        lines.append(f"infos        {', '.join(facts['infos'])}")
    return "\n".join(lines)
