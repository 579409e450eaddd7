"""D4RL hdf5 files: read (v0/v2 variants), write (atomically), resolve and download official names."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from ipdrl.data.dataset import Dataset, DatasetError
from ipdrl.storage import atomic_path, json_default

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{env}_{level}-v2.hdf5"
D4RL_ENVS = ("halfcheetah", "hopper", "walker2d", "ant")
D4RL_LEVELS = ("random", "medium", "expert", "medium-replay", "full-replay", "medium-expert")


# ---- reading ---------------------------------------------------------------------------------------------
def read_d4rl(path: str | Path, name: str | None = None) -> Dataset:
    """Read a D4RL-format hdf5 file exactly.

    Handles files without ``timeouts`` (v0: episodes end only at terminals) or without ``next_observations``
    (built within each episode from the next observation; an episode's last step, whose successor is not stored,
    repeats its own observation and is marked as a timeout so no learner bootstraps through it), (N, 1) arrays,
    float64 arrays (read as float32), ``infos`` stored as a group or as a plain per-transition array, and
    ``metadata/*`` entries (JSON strings decoded; large arrays such as policy weights listed by name only).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"dataset file {path} does not exist. Check the path, or pass a dataset name (see `ipdrl data info --help`)."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(
            f"{path} is not a readable HDF5 file ({err}). It is corrupt or truncated (an interrupted download?): "
            f"delete it and download or regenerate it."
        ) from None
    with handle:
        missing = [k for k in REQUIRED_KEYS if k not in handle]
        if missing:
            raise DatasetError(
                f"{path} is missing the D4RL keys {missing} (it has {sorted(handle.keys())}). A D4RL file needs "
                f"observations, actions, rewards, terminals (and ideally timeouts, next_observations)."
            )
        try:
            arrays = {k: _read_array(handle, k) for k in (*REQUIRED_KEYS, "timeouts", "next_observations") if k in handle}
            infos = _read_infos(handle, len(arrays["observations"]))
            metadata = _read_metadata(handle)
        except OSError as err:
            raise DatasetError(f"{path} is truncated or corrupt ({err}): delete it and download or regenerate it.") from None
    n = len(arrays["observations"])
    for key in ("actions", "rewards", "terminals", "timeouts", "next_observations"):
        if key in arrays and len(arrays[key]) != n:
            raise DatasetError(
                f"{path}: {key} has {len(arrays[key])} rows but observations has {n}. The file is inconsistent: "
                f"regenerate it."
            )
    terminals = arrays["terminals"].reshape(n).astype(bool)
    timeouts = arrays["timeouts"].reshape(n).astype(bool) if "timeouts" in arrays else np.zeros(n, bool)
    observations = _as_float32(arrays["observations"])
    if "next_observations" in arrays:
        next_observations = _as_float32(arrays["next_observations"])
    else:
        next_observations, timeouts = _shift_within_episodes(observations, terminals, timeouts)
    metadata.setdefault("source_file", str(path))
    return Dataset(
        observations=observations,
        actions=_as_float32(arrays["actions"]),
        rewards=_as_float32(arrays["rewards"]).reshape(n),
        next_observations=next_observations,
        terminals=terminals,
        timeouts=timeouts,
        infos=infos,
        metadata=metadata,
        name=name or metadata.get("name") or path.stem,
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the ``metadata/*`` of a D4RL file (cheap: no arrays are read); {} when it is unreadable."""
    try:
        with h5py.File(path, "r") as handle:
            return _read_metadata(handle)
    except OSError:
        return {}


def _read_array(handle: h5py.File, key: str) -> np.ndarray:
    array = handle[key][()]
    if array.ndim == 2 and array.shape[1] == 1 and key in ("rewards", "terminals", "timeouts"):
        array = array[:, 0]
    if key in ("observations", "actions", "next_observations") and array.ndim == 1:
        array = array[:, None]
    return array


def _as_float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _read_infos(handle: h5py.File, n: int) -> dict[str, np.ndarray]:
    if "infos" not in handle:
        return {}
    node = handle["infos"]
    if isinstance(node, h5py.Dataset):
        return {"infos": node[()]} if len(node) == n else {}
    infos = {}
    for key, item in node.items():
        if isinstance(item, h5py.Dataset) and item.shape[:1] == (n,):
            value = item[()]
            infos[key] = value.astype(np.float32) if value.dtype == np.float64 else value
    return infos


def _read_metadata(handle: h5py.File) -> dict[str, Any]:
    if "metadata" not in handle:
        return {}
    if "ipdrl" in handle["metadata"]:
        return json.loads(_decode(handle["metadata/ipdrl"][()]))
    metadata: dict[str, Any] = {}
    skipped = []

    def visit(name: str, item: Any) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        if item.size > 64 and item.dtype.kind in "fiu":
            skipped.append(name)
            return
        value = item[()]
        text = _decode(value) if isinstance(value, (bytes, str)) else None
        if text is not None:
            try:
                metadata[name] = json.loads(text)
            except json.JSONDecodeError:
                metadata[name] = text
        else:
            metadata[name] = value.tolist() if isinstance(value, np.ndarray) else getattr(value, "item", lambda: value)()

    handle["metadata"].visititems(visit)
    if skipped:
        metadata["arrays_not_loaded"] = skipped
    generator = metadata.get("generator")
    if isinstance(generator, dict) and isinstance(generator.get("env"), str):
        metadata.setdefault("env", generator["env"])
    return metadata


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shift_within_episodes(obs: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """next_obs[t] = obs[t+1] inside an episode; an episode's last step has no stored successor."""
    ends = terminals | timeouts
    next_obs = np.concatenate([obs[1:], obs[-1:]])
    last = ends.copy()
    last[-1] = True
    next_obs[last] = obs[last]
    # Truncate (not terminate) where the successor is unknown, so nobody bootstraps into a wrong state.
    return next_obs, timeouts | (last & ~terminals)


# ---- writing ---------------------------------------------------------------------------------------------
def write_d4rl(dataset: Dataset, path: str | Path, compression: str | None = "gzip") -> Path:
    """Write ``dataset`` as a D4RL hdf5 file atomically (temp file in the same directory, then rename).

    ``metadata/ipdrl`` holds the whole metadata dict as JSON (so it round-trips); its string and dict entries
    are also written as ``metadata/<key>`` for D4RL-style readers.
    """
    path = Path(path)
    shuffle = compression is not None  # byte-shuffling before gzip shrinks float arrays by about a tenth
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            handle.create_dataset(key, data=getattr(dataset, key), compression=compression, shuffle=shuffle)
        for key, value in dataset.infos.items():
            handle.create_dataset(f"infos/{key}", data=value, compression=compression, shuffle=shuffle)
        metadata = {"name": dataset.name, **dict(dataset.metadata)}
        handle.create_dataset("metadata/ipdrl", data=json.dumps(metadata, default=json_default))
        for key, value in metadata.items():
            if key == "ipdrl" or "/" in key:
                continue
            if isinstance(value, (dict, list)):
                handle.create_dataset(f"metadata/{key}", data=json.dumps(value, default=json_default))
            elif isinstance(value, (str, int, float, bool)):
                handle.create_dataset(f"metadata/{key}", data=value)
    return path


# ---- official names and download ---------------------------------------------------------------------------
def resolve_d4rl_name(name: str) -> tuple[str, str]:
    """``hopper-medium-replay-v2`` -> (``hopper_medium_replay-v2.hdf5``, official URL)."""
    stem = name.removesuffix("-v2")
    env, _, level = stem.partition("-")
    if not name.endswith("-v2") or env not in D4RL_ENVS or level not in D4RL_LEVELS:
        raise DatasetError(
            f"{name!r} is not an official D4RL Gym name. They look like <env>-<level>-v2 with env in "
            f"{', '.join(D4RL_ENVS)} and level in {', '.join(D4RL_LEVELS)} (e.g. hopper-medium-replay-v2)."
        )
    filename = f"{env}_{level.replace('-', '_')}-v2.hdf5"
    return filename, D4RL_URL.format(env=env, level=level.replace("-", "_"))


def d4rl_cache_dir() -> Path:
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets"))


def download_d4rl(name: str, cache_dir: str | Path | None = None,
                  urlopen: Callable[..., Any] = urllib.request.urlopen, timeout: float = 30.0) -> Path:
    """The local path of an official D4RL dataset, downloading it once into the cache (atomically)."""
    filename, url = resolve_d4rl_name(name)
    target = Path(cache_dir) if cache_dir else d4rl_cache_dir()
    path = target / filename
    if path.exists():
        return path
    try:
        with atomic_path(path, suffix=".part") as tmp, open(tmp, "wb") as out, urlopen(url, timeout=timeout) as response:
            from tqdm.auto import tqdm

            total = int(response.headers.get("Content-Length", 0) or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DatasetError(
            f"could not download {name} from {url} ({err}); this machine appears to be offline. Download the file "
            f"elsewhere and put it at {path} (or set D4RL_DATASET_DIR to a directory holding {filename})."
        ) from None
    return path

