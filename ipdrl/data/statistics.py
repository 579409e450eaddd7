"""Statistics of a dataset that learners and models are normalised with, and reward scaling.

Normalisation statistics are one shape everywhere: ``{"mean": (dim,), "std": (dim,)}`` float32 arrays, used as
``normalize(x, stats) = (x - mean) / std``. Models that normalise several quantities keep one such pair per
quantity (``{"obs": ..., "delta": ...}``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ipdrl.data.dataset import Dataset

Stats = dict[str, np.ndarray]


def moments(values: np.ndarray, eps: float) -> Stats:
    """Per-column mean and ``std + eps`` of ``values`` (N, dim), float32."""
    return {"mean": values.mean(0).astype(np.float32), "std": (values.std(0) + eps).astype(np.float32)}


def observation_stats(dataset: Dataset, enabled: bool = True, eps: float = 1e-3) -> Stats:
    """Mean and std of the dataset's observations; with ``enabled`` False, (0, 1): normalising is the identity."""
    if not enabled:
        return {"mean": np.zeros(dataset.obs_dim, np.float32), "std": np.ones(dataset.obs_dim, np.float32)}
    return moments(dataset.observations, eps)


def normalize(x, stats: Mapping):
    """``(x - mean) / std``; works on numpy and JAX arrays alike."""
    return (x - stats["mean"]) / stats["std"]


def denormalize(z, stats: Mapping):
    """``mean + std * z``: the inverse of :func:`normalize`."""
    return stats["mean"] + stats["std"] * z


def locomotion_reward_scale(dataset: Dataset) -> float:
    """IQL's locomotion scaling ``1000 / (max episode return - min episode return)``."""
    returns = dataset.episode_returns()
    spread = float(returns.max() - returns.min())
    return 1000.0 / spread if spread > 1e-6 else 1.0
