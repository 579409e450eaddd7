"""The one in-memory dataset representation and its jit-friendly samplers.

A :class:`Dataset` holds flat transition arrays (leading dimension N) plus episode boundaries.
Algorithms turn it into a dict of device arrays ("fields") once, and sample batches from that dict
inside jitted code with :func:`sample_transitions` or :func:`sample_segments`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ipdrl import envs


class DatasetError(ValueError):
    """A dataset is missing, malformed or does not fit what it is used with. The message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Flat offline-RL transitions. An episode ends where ``terminals | timeouts`` (or at the end of the arrays).

    Attributes:
        observations, actions, rewards, next_observations: float32 arrays with leading dimension N.
        terminals: true environment termination (no bootstrap). timeouts: time-limit truncation.
        infos: extra per-transition arrays (e.g. ``qpos``, ``qvel``), leading dimension N.
        metadata: free-form JSON-serialisable facts (env id, generator settings, source file).
        name: a short name (e.g. ``hopper-medium-replay``); used to pick the environment and reference scores.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    infos: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "dataset"

    def __post_init__(self) -> None:
        n = len(self.observations)
        if n == 0:
            raise DatasetError(f"dataset {self.name!r} is empty: it needs at least one transition.")
        checks = {
            "observations": (self.observations, 2),
            "actions": (self.actions, 2),
            "rewards": (self.rewards, 1),
            "next_observations": (self.next_observations, 2),
            "terminals": (self.terminals, 1),
            "timeouts": (self.timeouts, 1),
        }
        for key, (array, ndim) in checks.items():
            if array.ndim != ndim or len(array) != n:
                raise DatasetError(
                    f"dataset {self.name!r}: {key} has shape {array.shape}, expected {ndim} dimensions with "
                    f"leading size {n} (the number of observations). Fix the file so all arrays have N rows."
                )
        if self.next_observations.shape != self.observations.shape:
            raise DatasetError(
                f"dataset {self.name!r}: next_observations {self.next_observations.shape} and observations "
                f"{self.observations.shape} differ in shape."
            )
        for key in ("observations", "actions", "rewards", "next_observations"):
            array = getattr(self, key)
            if not np.all(np.isfinite(array)):
                bad = int(np.sum(~np.isfinite(array)))
                raise DatasetError(
                    f"dataset {self.name!r}: {key} contains {bad} NaN/inf values. Remove or repair those "
                    f"transitions before training (e.g. regenerate the dataset)."
                )
        for key, array in self.infos.items():
            if len(array) != n:
                raise DatasetError(f"dataset {self.name!r}: infos/{key} has {len(array)} rows, expected {n}.")

    # ---- shape facts -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    # ---- episodes ----------------------------------------------------------------------------
    @property
    def episode_ends(self) -> np.ndarray:
        """Exclusive end index of every episode; the last one is N even when the file cut it short."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        if len(ends) == 0 or ends[-1] != self.size:
            ends = np.append(ends, self.size)
        return ends

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]])

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ends)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode (float64)."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def episode_lengths(self) -> np.ndarray:
        return self.episode_ends - self.episode_starts

    def episode_index(self) -> np.ndarray:
        """Episode id of each transition."""
        return np.repeat(np.arange(self.num_episodes), self.episode_lengths())

    def timesteps(self) -> np.ndarray:
        """Position of each transition inside its episode."""
        return np.arange(self.size) - np.repeat(self.episode_starts, self.episode_lengths())

    def returns_to_go(self, gamma: float = 1.0) -> np.ndarray:
        """Sum of (discounted) future rewards to the end of each transition's episode (float64)."""
        return discounted_to_go(self.rewards, np.zeros(self.num_episodes), self.episode_starts, self.episode_ends,
                                gamma)

    def reference(self) -> envs.Reference | None:
        """The reference returns its normalised scores use: its own (metadata), else its family's D4RL ones."""
        return envs.reference_for(self.name, self.metadata)

    def fingerprint(self) -> str:
        """A hash of the transitions as they are here (not the file name; after any preparation for training): the
        same data under another path has the same one, data generated again on another CPU (MuJoCo's floating point
        differs there) has another."""
        digest = hashlib.sha256()
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            array = np.ascontiguousarray(getattr(self, key))
            digest.update(f"{key}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]

    def replace(self, **changes: Any) -> "Dataset":
        return dataclasses.replace(self, **changes)

    def select(self, index: np.ndarray) -> "Dataset":
        """A new dataset with the transitions at ``index`` (pass whole episodes to keep boundaries meaningful)."""
        return Dataset(
            observations=self.observations[index],
            actions=self.actions[index],
            rewards=self.rewards[index],
            next_observations=self.next_observations[index],
            terminals=self.terminals[index],
            timeouts=self.timeouts[index],
            infos={k: v[index] for k, v in self.infos.items()},
            metadata=dict(self.metadata),
            name=self.name,
        )

    def first_episodes(self, count: int) -> "Dataset":
        """The first ``count`` whole episodes (tiny datasets for tests)."""
        end = int(self.episode_ends[min(count, self.num_episodes) - 1])
        return self.select(np.arange(end))


def concatenate(parts: list[Dataset], name: str | None = None) -> Dataset:
    """Join datasets end to end. Each part's last episode is closed with a timeout if it was open."""
    closed = []
    for part in parts:
        timeouts = part.timeouts.copy()
        if not (part.terminals[-1] or timeouts[-1]):
            timeouts[-1] = True
        closed.append(part.replace(timeouts=timeouts))
    info_keys = set.intersection(*(set(p.infos) for p in closed)) if closed else set()
    return Dataset(
        observations=np.concatenate([p.observations for p in closed]),
        actions=np.concatenate([p.actions for p in closed]),
        rewards=np.concatenate([p.rewards for p in closed]),
        next_observations=np.concatenate([p.next_observations for p in closed]),
        terminals=np.concatenate([p.terminals for p in closed]),
        timeouts=np.concatenate([p.timeouts for p in closed]),
        infos={k: np.concatenate([p.infos[k] for p in closed]) for k in sorted(info_keys)},
        metadata=dict(closed[0].metadata),
        name=name or closed[0].name,
    )


def discounted_to_go(rewards: np.ndarray, bootstrap: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                     gamma: float) -> np.ndarray:
    """Per transition ``sum_k gamma^k r_{t+k} + gamma^(end-t) bootstrap[episode]`` to its episode's end, for all
    episodes at once (one vectorised step per position from the end), float64."""
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros(len(rewards), np.float64)
    lengths = ends - starts
    acc = np.asarray(bootstrap, np.float64).copy()
    for back in range(1, int(lengths.max()) + 1):
        live = lengths >= back
        index = ends[live] - back
        acc[live] = rewards[index] + gamma * acc[live]
        out[index] = acc[live]
    return out


# ---- device-side sampling ------------------------------------------------------------------------
Fields = dict[str, jax.Array]


def to_device(fields: Mapping[str, np.ndarray]) -> Fields:
    """Move a dict of per-transition numpy arrays to device once (float64 -> float32)."""
    out = {}
    for key, value in fields.items():
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        out[key] = jnp.asarray(value)
    return out


def map_batches(fn: Callable[..., jax.Array], *arrays: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """``fn`` (batched, jittable) over host arrays in fixed-size batches (one compilation), as one numpy array."""
    fn = jax.jit(fn)
    size = len(arrays[0])
    outputs = []
    for start in range(0, size, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), size - 1)  # pad the last batch
        outputs.append(np.asarray(fn(*(x[index] for x in arrays)))[: size - start])
    return np.concatenate(outputs)


def transition_fields(dataset: Dataset, reward_scale: float = 1.0, reward_shift: float = 0.0) -> dict[str, np.ndarray]:
    """The fields every transition-based learner uses, rewards transformed as ``r * scale + shift``."""
    return {
        "observations": dataset.observations.astype(np.float32),
        "actions": dataset.actions.astype(np.float32),
        "rewards": (dataset.rewards * reward_scale + reward_shift).astype(np.float32),
        "next_observations": dataset.next_observations.astype(np.float32),
        "dones": dataset.terminals.astype(np.float32),
    }


def sample_transitions(fields: Fields, key: jax.Array, batch_size: int) -> Fields:
    """Uniform batch of transitions; every field is gathered at the same indices. Jittable."""
    size = next(iter(fields.values())).shape[0]
    index = jax.random.randint(key, (batch_size,), 0, size)
    return jax.tree_util.tree_map(lambda x: x[index], fields)


def segment_fields(dataset: Dataset) -> dict[str, np.ndarray]:
    """Index fields that :func:`sample_segments` needs: each transition's episode end and timestep."""
    return {
        "episode_end": np.repeat(dataset.episode_ends, dataset.episode_lengths()).astype(np.int32),
        "timesteps": dataset.timesteps().astype(np.int32),
    }


def sample_segments(fields: Fields, key: jax.Array, batch_size: int, length: int) -> Fields:
    """Batch of ``length``-step windows starting at uniform transitions, right-padded at episode ends.

    Returns every field with shape (batch, length, ...) plus ``mask`` (1 for real steps). Padded steps repeat
    the episode's last transition and carry mask 0. Jittable; needs :func:`segment_fields` in ``fields``.
    """
    size = fields["episode_end"].shape[0]
    start = jax.random.randint(key, (batch_size,), 0, size)
    index = start[:, None] + jnp.arange(length)[None, :]
    end = fields["episode_end"][start][:, None]
    mask = index < end
    index = jnp.minimum(index, end - 1)
    batch = {k: v[index] for k, v in fields.items() if k != "episode_end"}
    batch["mask"] = mask.astype(jnp.float32)
    return batch
