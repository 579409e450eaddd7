"""Minari interop through the real ``minari`` package: read local Minari datasets, export ours.

Nothing here downloads: ``minari.load_dataset`` is always called without ``download``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ipdrl import envs
from ipdrl.data.dataset import Dataset, DatasetError


@contextlib.contextmanager
def _datasets_root(root: str | Path | None) -> Iterator[None]:
    """Temporarily point MINARI_DATASETS_PATH at ``root`` (minari reads it on every call)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def read_minari(dataset_id_or_path: str, root: str | Path | None = None) -> Dataset:
    """A local Minari dataset (by id, or by its directory) as flat transitions (next_obs = the T+1 observations)."""
    import minari

    path = Path(dataset_id_or_path)
    try:
        if (path / "data" / "main_data.hdf5").exists():
            source = minari.MinariDataset(path / "data")
        else:
            with _datasets_root(root):
                source = minari.load_dataset(dataset_id_or_path)
    except (FileNotFoundError, ValueError) as err:
        where = root or os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise DatasetError(
            f"Minari dataset {dataset_id_or_path!r} is not available locally under {where} ({err}). Download it "
            f"where you have internet (`minari download {dataset_id_or_path}`) and copy it there, or set "
            f"MINARI_DATASETS_PATH."
        ) from None
    parts = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    for episode in source.iterate_episodes():
        obs, actions = episode.observations, episode.actions
        if not isinstance(obs, np.ndarray) or not isinstance(actions, np.ndarray):
            raise DatasetError(
                f"Minari dataset {dataset_id_or_path!r} has non-Box observations or actions (dict/tuple spaces); "
                f"ipdrl reads Box spaces only: flatten them first."
            )
        parts["observations"].append(obs[:-1].reshape(len(actions), -1))
        parts["next_observations"].append(obs[1:].reshape(len(actions), -1))
        parts["actions"].append(actions.reshape(len(actions), -1))
        parts["rewards"].append(episode.rewards)
        parts["terminals"].append(episode.terminations)
        timeouts = np.asarray(episode.truncations, bool).copy()
        timeouts[-1] |= not episode.terminations[-1]  # close every episode at its end
        parts["timeouts"].append(timeouts)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    spec = source.spec
    metadata = {"minari_id": spec.dataset_id, "source": "minari"}
    if spec.env_spec is not None:
        metadata["env"] = spec.env_spec.id
    stored = source.storage.metadata
    for key in ("ref_min_score", "ref_max_score"):  # the dataset's own normalisation, when its author gave one
        if isinstance(stored.get(key), (int, float)):
            metadata[key] = float(stored[key])
    name = spec.dataset_id.split("/")[-1]
    return Dataset(
        observations=arrays["observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].astype(np.float32),
        next_observations=arrays["next_observations"].astype(np.float32),
        terminals=arrays["terminals"].astype(bool),
        timeouts=arrays["timeouts"].astype(bool),
        metadata=metadata,
        name=name,
    )


def write_minari(dataset: Dataset, dataset_id: str, env_id: str | None = None, root: str | Path | None = None) -> Path:
    """Export ``dataset`` as Minari dataset ``dataset_id`` (readable by ``minari.load_dataset``); returns its path."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if env_id is None and isinstance(dataset.metadata.get("env"), str):
        env_id = dataset.metadata["env"]
    buffers = []
    for index, (start, end) in enumerate(zip(dataset.episode_starts, dataset.episode_ends)):
        observations = np.concatenate([dataset.observations[start:end], dataset.next_observations[end - 1:end]])
        buffers.append(EpisodeBuffer(
            id=index,
            observations=observations,
            actions=dataset.actions[start:end],
            rewards=dataset.rewards[start:end].tolist(),
            terminations=dataset.terminals[start:end].tolist(),
            truncations=dataset.timeouts[start:end].tolist(),
            infos={},
        ))
    reference = envs.reference_for(dataset.name, {**dataset.metadata, **({"env": env_id} if env_id else {})})
    kwargs = {}
    if reference is not None:
        kwargs.update(ref_min_score=reference.min, ref_max_score=reference.max)
    if env_id is None:
        box = lambda dim: gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        kwargs.update(observation_space=box(dataset.obs_dim),
                      action_space=gym.spaces.Box(-1.0, 1.0, (dataset.act_dim,), np.float32))
    with _datasets_root(root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(author_email|eval_env).*")
        try:
            created = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env_id, algorithm_name="ipdrl", description=f"exported by ipdrl from {dataset.name}",
                **kwargs)
        except ValueError as err:
            raise DatasetError(f"cannot export to Minari id {dataset_id!r}: {err}") from None
        return Path(minari.storage.get_dataset_path(created.spec.dataset_id))
