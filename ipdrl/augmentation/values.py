"""Values of the real data in V's units: return labels, continuation values, sub-optimality and branch points."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from ipdrl.augmentation.config import AugmentConfig
from ipdrl.data.dataset import Dataset, discounted_to_go, map_batches


class ValueFunctions(NamedTuple):
    """What augmentation needs from the stage-1 value learner; all in scaled-reward units."""

    q: Callable[[jax.Array, jax.Array], jax.Array]
    """min twin target Q(s, a)."""
    v: Callable[[jax.Array], jax.Array]
    policy: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
    """AWR policy (mean, log_std): the MPC proposal prior."""
    gamma: float
    reward_scale: float
    reward_shift: float
    """Scaled reward: ``r * reward_scale + reward_shift``."""

    def scale(self, rewards: Any) -> Any:
        return rewards * self.reward_scale + self.reward_shift


def return_labels(dataset: Dataset, values: ValueFunctions) -> np.ndarray:
    """Discounted return-to-go of every transition in V's units, bootstrapped with gamma^k V(s_end) where an
    episode ends without termination (timeouts, cut episodes, imagined segments). float32, shape (N,)."""
    ends = dataset.episode_ends
    last = ends - 1
    end_values = map_batches(values.v, dataset.next_observations[last])
    bootstrap = end_values * (1.0 - dataset.terminals[last])
    rewards = values.scale(dataset.rewards.astype(np.float64))
    return discounted_to_go(rewards, bootstrap, dataset.episode_starts, ends, values.gamma).astype(np.float32)


def max_value_relabel(dataset: Dataset, labels: np.ndarray, values: ValueFunctions) -> np.ndarray:
    """QDT's relabelling: backwards along each episode, ``R_t <- max(r_t + gamma R_{t+1}, V(s_t))`` (the episode's
    last label kept or raised to its V), so that a step of a poor trajectory asks for what the value function says
    is reachable from it. float32, shape (N,)."""
    state_values = map_batches(values.v, dataset.observations).astype(np.float64)
    rewards = values.scale(dataset.rewards.astype(np.float64))
    out = np.asarray(labels, np.float64).copy()
    starts, ends = dataset.episode_starts, dataset.episode_ends
    lengths = ends - starts
    last = ends - 1
    acc = np.maximum(out[last], state_values[last])
    out[last] = acc
    for back in range(2, int(lengths.max()) + 1):  # one vectorised step per position from the end
        live = lengths >= back
        index = ends[live] - back
        acc[live] = np.maximum(rewards[index] + values.gamma * acc[live], state_values[index])
        out[index] = acc[live]
    return out.astype(np.float32)


class RealData(NamedTuple):
    """What continuation values of the real data need, precomputed once."""

    rewards: np.ndarray        # scaled
    next_values: np.ndarray    # V(s'_t)
    terminals: np.ndarray
    episode_end: np.ndarray    # exclusive end of each transition's episode


def real_data(dataset: Dataset, values: ValueFunctions) -> RealData:
    return RealData(
        rewards=values.scale(dataset.rewards.astype(np.float64)),
        next_values=map_batches(values.v, dataset.next_observations).astype(np.float64),
        terminals=dataset.terminals,
        episode_end=np.repeat(dataset.episode_ends, dataset.episode_lengths()),
    )


def continuation_values(data: RealData, index: np.ndarray, steps: np.ndarray, gamma: float) -> np.ndarray:
    """What the data did from ``index`` over ``steps`` steps (clipped at the episode end) plus the bootstrap:
    ``sum_{k<l} gamma^k r_{t+k} + gamma^l V(s_{t+l})`` with V = 0 after a terminal."""
    steps = np.minimum(steps, data.episode_end[index] - index)
    offsets = np.arange(int(steps.max()))
    window = np.minimum(index[:, None] + offsets, len(data.rewards) - 1)
    discounted = np.where(offsets < steps[:, None], gamma ** offsets * data.rewards[window], 0.0).sum(1)
    last = index + steps - 1
    return discounted + gamma ** steps * data.next_values[last] * (1.0 - data.terminals[last])


def suboptimality(dataset: Dataset, values: ValueFunctions, data: RealData, steps: int) -> np.ndarray:
    """delta_t = V(s_t) - (n-step continuation value of the data) for every transition."""
    state_values = map_batches(values.v, dataset.observations).astype(np.float64)
    index = np.arange(dataset.size)
    return state_values - continuation_values(data, index, np.full(dataset.size, steps), values.gamma)


def branch_candidates(dataset: Dataset, delta: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Branch-point indices, highest delta first."""
    if config.branch_threshold is not None:
        chosen = np.flatnonzero(delta > config.branch_threshold)
    else:
        episode = dataset.episode_index()
        order = np.lexsort((-delta, episode))  # by episode, then decreasing delta
        rank = np.empty(dataset.size, np.int64)
        rank[order] = np.arange(dataset.size) - np.repeat(dataset.episode_starts, dataset.episode_lengths())
        quota = np.ceil(config.branch_fraction * dataset.episode_lengths())[episode]
        chosen = np.flatnonzero((rank < quota) & (delta > 0))
    return chosen[np.argsort(-delta[chosen], kind="stable")]
