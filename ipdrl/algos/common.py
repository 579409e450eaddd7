"""Pieces several algorithms share: optimisers, state normalisation, reward scaling."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.data.dataset import Dataset


def adam(learning_rate: float, decay_steps: int | None = None, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam (AdamW if ``weight_decay``), with cosine decay over ``decay_steps`` when given (IQL's actor)."""
    lr = optax.cosine_decay_schedule(learning_rate, decay_steps) if decay_steps else learning_rate
    return optax.adamw(lr, weight_decay=weight_decay) if weight_decay else optax.adam(lr)


def locomotion_reward_scale(dataset: Dataset) -> float:
    """IQL's locomotion scaling ``1000 / (max episode return - min episode return)``."""
    returns = dataset.episode_returns()
    spread = float(returns.max() - returns.min())
    return 1000.0 / spread if spread > 1e-6 else 1.0


def observation_stats(dataset: Dataset, eps: float = 1e-3) -> dict[str, np.ndarray]:
    """Mean and std of observations for state normalisation (TD3+BC, ReBRAC)."""
    return {
        "mean": dataset.observations.mean(0).astype(np.float32),
        "std": (dataset.observations.std(0) + eps).astype(np.float32),
    }


def normalize(obs: jnp.ndarray, stats: dict[str, jnp.ndarray]) -> jnp.ndarray:
    return (obs - stats["mean"]) / stats["std"]
