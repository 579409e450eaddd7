"""Building D_aug: one new episode per accepted segment, and the masks that tell imagined from real steps."""

from __future__ import annotations

import numpy as np

from ipdrl.data.dataset import Dataset


def timesteps_of(dataset: Dataset) -> np.ndarray:
    """Position in the original episode: kept from a previous augmentation, else counted."""
    return np.asarray(dataset.infos.get("timesteps", dataset.timesteps()), np.int32)


def new_episodes(dataset: Dataset, segments: list[dict[str, np.ndarray]], prefix_length: int | None) -> Dataset:
    """One episode per accepted segment: the real prefix ending at the branch point (its last ``prefix_length``
    steps, or all of it from the episode's start when None), then the imagined steps."""
    timesteps = timesteps_of(dataset)
    episode_start = np.repeat(dataset.episode_starts, dataset.episode_lengths())
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                                          "terminals", "timeouts", "timesteps", "imagined")}
    info_parts: dict[str, list[np.ndarray]] = {k: [] for k in dataset.infos}
    for segment in segments:
        t, length = segment["branch"], segment["length"]
        first = episode_start[t] if prefix_length is None else max(episode_start[t], t - prefix_length)
        prefix = np.arange(first, t)
        for key in ("observations", "actions", "rewards", "next_observations"):
            parts[key].append(np.concatenate([getattr(dataset, key)[prefix], segment[key][:length]]).astype(np.float32))
        terminals = np.zeros(len(prefix) + length, bool)
        terminals[-1] = segment["terminated"]
        parts["terminals"].append(terminals)
        parts["timeouts"].append(np.append(np.zeros(len(prefix) + length - 1, bool), not segment["terminated"]))
        parts["timesteps"].append(np.concatenate([timesteps[prefix], timesteps[t] + np.arange(length)]))
        parts["imagined"].append(np.concatenate([np.zeros(len(prefix), bool), np.ones(length, bool)]))
        for key, array in dataset.infos.items():
            unknown = np.full((length, *array.shape[1:]), np.nan if array.dtype.kind == "f" else 0, array.dtype)
            info_parts[key].append(np.concatenate([array[prefix], unknown]))
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    infos = {k: np.concatenate(v) for k, v in info_parts.items()}
    infos.update(timesteps=joined.pop("timesteps").astype(np.int32), imagined=joined.pop("imagined"))
    return Dataset(**joined, infos=infos, metadata=dict(dataset.metadata), name=dataset.name)


def imagined_steps(dataset: Dataset) -> np.ndarray:
    """Per transition: is it imagined? (All False for data that was never augmented.)"""
    return np.asarray(dataset.infos.get("imagined", np.zeros(dataset.size, bool)), bool)


def added_episodes(dataset: Dataset) -> np.ndarray:
    """Per transition: does it belong to an episode that augmentation added (one with imagined steps)?"""
    episode = dataset.episode_index()
    return (np.bincount(episode, weights=imagined_steps(dataset), minlength=dataset.num_episodes) > 0)[episode]


def copied_prefixes(dataset: Dataset) -> np.ndarray:
    """The real steps copied in front of imagined segments: the non-imagined steps of added episodes."""
    return added_episodes(dataset) & ~imagined_steps(dataset)
