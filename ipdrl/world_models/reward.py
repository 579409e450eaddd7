"""Reward model ``r(s, a)`` for DWM-MPC, in the critic's reward units.

DWM-MPC sums predicted rewards and adds the critic's terminal value, so both must be in the same units: the
model regresses ``r * scale + shift`` with the (scale, shift) the critic was trained with (ReBRAC's
``state["reward_scale"]``). The network sees normalised states and predicts a standardised target; the
statistics live in the model so :func:`predict` returns critic units directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.data.dataset import Dataset
from ipdrl.data.statistics import denormalize, moments, normalize, observation_stats
from ipdrl.networks import Critic
from ipdrl.training import Learner
from ipdrl.world_models import common
from ipdrl.world_models.common import Model

KIND = "reward"


@dataclasses.dataclass
class Config:
    """Reward model hyperparameters."""

    hidden_dims: tuple[int, ...] = (256, 256)
    learning_rate: float = 3e-4
    batch_size: int = 256


def network(config: Config) -> Critic:
    # A reward model has the signature and shape of a Q-function: one MLP output of (s, a).
    return Critic(config.hidden_dims)


def make_learner(config: Config, dataset: Dataset, scale: float, shift: float) -> Learner:
    """Regress ``dataset.rewards * scale + shift`` (critic units) on (s, a) of ``dataset`` (the training split)."""
    target = (dataset.rewards * scale + shift).astype(np.float32)
    stats = {"obs": observation_stats(dataset), "target": moments(target, 1e-6)}
    net = network(config)
    fields = {
        "obs": normalize(dataset.observations, stats["obs"]).astype(np.float32),
        "act": dataset.actions.astype(np.float32),
        "target": normalize(target, stats["target"]).astype(np.float32),
    }
    stats = {**jax.tree_util.tree_map(jnp.asarray, stats), "reward_scale": jnp.asarray([scale, shift], jnp.float32)}

    def loss(params: Any, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        return ((net.apply(params, batch["obs"], batch["act"]) - batch["target"]) ** 2).mean()

    return common.regression_learner(
        init_net=lambda key: net.init(key, jnp.zeros((1, dataset.obs_dim)), jnp.zeros((1, dataset.act_dim))),
        loss=loss,
        fields=fields,
        stats=stats,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
    )


def predict(config: Config, model: Model, obs: jax.Array, act: jax.Array) -> jax.Array:
    """Predicted reward in critic units for raw ``obs`` (..., obs_dim) and ``act`` (..., act_dim); one member."""
    stats = model["stats"]
    return denormalize(network(config).apply(model["net"], normalize(obs, stats["obs"]), act), stats["target"])


def heldout_metrics(config: Config, model: Model, dataset: Dataset) -> dict[str, float]:
    """Reward MSE on held-out transitions, in raw reward units and in critic units."""
    predicted = np.asarray(jax.jit(lambda m, o, a: predict(config, common.member(m, 0), o, a))(
        model, dataset.observations, dataset.actions))
    scale, shift = np.asarray(model["stats"]["reward_scale"])
    scaled_error = float(((predicted - (dataset.rewards * scale + shift)) ** 2).mean())
    return {
        "reward_mse": scaled_error / float(scale) ** 2,
        "reward_mse_critic_units": scaled_error,
        "reward_variance": float(dataset.rewards.var()),
        "heldout_transitions": dataset.size,
    }


def save(path: str | Path, config: Config, model: Model, info: dict[str, Any]) -> None:
    common.save_model(path, KIND, config, model, info)


def load(path: str | Path) -> tuple[Config, Model, dict[str, Any]]:
    return common.load_model(path, KIND, Config)
