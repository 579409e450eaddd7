"""Behaviour cloning (as in CORL's BC and %BC): a deterministic tanh actor regressed onto dataset actions.

    min_pi  E_(s,a)~D [ mean_dims (pi(s) - a)^2 ]

on normalised states. With ``top_fraction < 1`` it is %BC: only the episodes with the highest returns are kept.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.algos.common import learner_algorithm, mlp_policy, transition_learner
from ipdrl.config import FitConfig, RunConfig, require
from ipdrl.data.dataset import Dataset, DatasetError
from ipdrl.data.statistics import normalize, observation_stats
from ipdrl.networks import DeterministicActor
from ipdrl.optim import gradient_step
from ipdrl.training import Learner


@dataclasses.dataclass
class Hyperparameters(FitConfig):
    """BC hyperparameters (CORL defaults)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    learning_rate: float = 3e-4
    normalize_observations: bool = True
    top_fraction: float = 1.0
    """Keep only this fraction of episodes, those with the highest returns (%BC, e.g. 0.1); 1.0 keeps all."""
    dropout: float = 0.0
    """Dropout in the actor's hidden layers while training (0.1 on Kitchen, as IQL's actor there)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.top_fraction <= 1.0, f"--top-fraction must be in (0, 1], got {self.top_fraction}.")
        require(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}.")


@dataclasses.dataclass
class Config(RunConfig, Hyperparameters):
    """A BC run."""


def top_episodes(dataset: Dataset, fraction: float) -> Dataset:
    """The ``fraction`` of whole episodes with the highest undiscounted returns (at least one), in dataset order."""
    if fraction == 1.0:
        return dataset
    returns = dataset.episode_returns()
    count = max(1, int(round(fraction * len(returns))))
    keep = np.sort(np.argsort(-returns, kind="stable")[:count])
    mask = np.isin(dataset.episode_index(), keep)
    if not mask.any():
        raise DatasetError(f"dataset {dataset.name!r}: no transitions left after keeping the top {fraction:.0%}.")
    return dataset.select(np.flatnonzero(mask))


def make_learner(config: Hyperparameters, dataset: Dataset) -> Learner:
    """The BC learner; statistics and batches come from the kept episodes only."""
    data = top_episodes(dataset, config.top_fraction)
    actor = DeterministicActor(data.act_dim, config.hidden_dims, dropout=config.dropout)
    optimizer = optax.adam(config.learning_rate)
    stats = {k: jnp.asarray(v) for k, v in observation_stats(data, config.normalize_observations).items()}

    def init(key: jax.Array) -> dict:
        params = actor.init(key, jnp.zeros((1, data.obs_dim)))
        return {"actor": params, "actor_opt": optimizer.init(params), "obs_stats": stats}

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        obs = normalize(batch["observations"], state["obs_stats"])

        def loss_fn(params):
            predicted = actor.apply(params, obs, train=True, rngs={"dropout": key})
            return ((predicted - batch["actions"]) ** 2).mean()

        step = gradient_step(loss_fn, optimizer, state["actor"], state["actor_opt"])
        return dict(state, actor=step.params, actor_opt=step.opt_state), {"train/actor_loss": step.loss}

    fields = {"observations": data.observations.astype(np.float32), "actions": data.actions.astype(np.float32)}
    return transition_learner(fields, init, update, config.batch_size, mlp_policy(actor.apply))


BUDGETS = {
    "tiny": dict(hidden_dims=(32, 32), batch_size=64),
    "cpu": dict(steps=300_000),
    "paper": dict(steps=1_000_000),
}
# Kitchen's 19 demonstrations: without dropout the actor fits them so closely that closed loop it leaves them
# (docs/evidence/README.md, Kitchen).
PRESETS = {"kitchen": dict(dropout=0.1)}
ALGORITHM = learner_algorithm("bc", Config, make_learner, "Behaviour cloning (BC, and %BC with --top-fraction).",
                              BUDGETS, PRESETS)
