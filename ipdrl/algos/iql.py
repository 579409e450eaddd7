"""IQL — Implicit Q-Learning (Kostrikov et al. 2021), as in the official JAX code.

Expectile value regression, twin-Q TD learning against V(s'), and advantage-weighted regression (AWR) for the
policy. IPD reuses the trained critic, value and AWR policy (:func:`q_value`, :func:`value`, :func:`awr_mean`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.algos.common import adam, locomotion_reward_scale, normalize, observation_stats
from ipdrl.config import TrainConfig
from ipdrl.data.dataset import Dataset, sample_transitions, transition_fields
from ipdrl.networks import EnsembleCritic, GaussianActor, ValueFunction, gaussian_log_prob, polyak
from ipdrl.training import Learner, stateless_policy


@dataclasses.dataclass
class Config(TrainConfig):
    """IQL hyperparameters (official locomotion defaults)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    """Polyak rate of the target critic."""
    expectile: float = 0.7
    temperature: float = 3.0
    """AWR inverse temperature beta."""
    max_weight: float = 100.0
    dropout: float = 0.0
    """Actor dropout (0.1 on Kitchen/Adroit)."""
    reward_mode: str = "locomotion"
    """'locomotion': r * 1000/(max_ret - min_ret); 'antmaze': r - 1; 'none'."""
    normalize_observations: bool = False
    actor_cosine_decay: bool = True


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff**2


def reward_transform(config: Config, dataset: Dataset) -> tuple[float, float]:
    """(scale, shift) applied to rewards as ``r * scale + shift``."""
    if config.reward_mode == "locomotion":
        return locomotion_reward_scale(dataset), 0.0
    if config.reward_mode == "antmaze":
        return 1.0, -1.0
    if config.reward_mode == "none":
        return 1.0, 0.0
    raise ValueError(f"unknown reward_mode {config.reward_mode!r}: use locomotion, antmaze or none.")


def networks(config: Config, act_dim: int):
    return (
        EnsembleCritic(config.hidden_dims, num=2),
        ValueFunction(config.hidden_dims),
        GaussianActor(act_dim, config.hidden_dims, dropout=config.dropout),
    )


# ---- functions of a trained IQL state (reused by IPD) ------------------------------------------------
def q_value(config: Config, state: dict, obs: jax.Array, action: jax.Array) -> jax.Array:
    """min(Q1, Q2)(s, a) of the target critic, in scaled-reward units."""
    critic, _, _ = networks(config, action.shape[-1])
    obs = normalize(obs, state["obs_stats"])
    return critic.apply(state["critic_target"], obs, action).min(0)


def value(config: Config, state: dict, obs: jax.Array) -> jax.Array:
    """V(s), in scaled-reward units."""
    _, value_net, _ = networks(config, 1)
    return value_net.apply(state["value"], normalize(obs, state["obs_stats"]))


def awr_distribution(config: Config, state: dict, obs: jax.Array, act_dim: int) -> tuple[jax.Array, jax.Array]:
    """(mean, log_std) of the AWR policy (the MPC proposal prior in IPD)."""
    _, _, actor = networks(config, act_dim)
    return actor.apply(state["actor"], normalize(obs, state["obs_stats"]))


# ---- learner --------------------------------------------------------------------------------------------
def make_learner(config: Config, dataset: Dataset) -> Learner:
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim
    critic, value_net, actor = networks(config, act_dim)
    scale, shift = reward_transform(config, dataset)
    stats = observation_stats(dataset) if config.normalize_observations else {
        "mean": np.zeros(obs_dim, np.float32), "std": np.ones(obs_dim, np.float32)}
    critic_opt = adam(config.critic_lr)
    value_opt = adam(config.value_lr)
    actor_opt = adam(config.actor_lr, config.steps if config.actor_cosine_decay else None)

    def init(key: jax.Array) -> dict:
        k1, k2, k3 = jax.random.split(key, 3)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
        critic_params = critic.init(k1, obs, act)
        value_params = value_net.init(k2, obs)
        actor_params = actor.init(k3, obs)
        return {
            "critic": critic_params,
            "critic_target": critic_params,
            "value": value_params,
            "actor": actor_params,
            "critic_opt": critic_opt.init(critic_params),
            "value_opt": value_opt.init(value_params),
            "actor_opt": actor_opt.init(actor_params),
            "obs_stats": {k: jnp.asarray(v) for k, v in stats.items()},
            "reward_scale": jnp.asarray([scale, shift], jnp.float32),
        }

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        obs = normalize(batch["observations"], state["obs_stats"])
        next_obs = normalize(batch["next_observations"], state["obs_stats"])
        actions = batch["actions"]
        target_q = critic.apply(state["critic_target"], obs, actions).min(0)

        # Value: expectile regression towards min target Q.
        def value_loss_fn(params):
            v = value_net.apply(params, obs)
            return expectile_loss(target_q - v, config.expectile).mean(), v

        (value_loss, v), value_grads = jax.value_and_grad(value_loss_fn, has_aux=True)(state["value"])
        value_updates, value_opt_state = value_opt.update(value_grads, state["value_opt"])
        value_params = optax.apply_updates(state["value"], value_updates)

        # Actor: AWR with the pre-update value (as in the official code).
        weights = jnp.minimum(jnp.exp(config.temperature * (target_q - v)), config.max_weight)

        def actor_loss_fn(params):
            mean, log_std = actor.apply(params, obs, train=True, rngs={"dropout": key})
            return -(weights * gaussian_log_prob(mean, log_std, actions)).mean()

        actor_loss, actor_grads = jax.value_and_grad(actor_loss_fn)(state["actor"])
        actor_updates, actor_opt_state = actor_opt.update(actor_grads, state["actor_opt"], state["actor"])
        actor_params = optax.apply_updates(state["actor"], actor_updates)

        # Critic: TD towards r + gamma * V(s') with the updated value.
        next_v = value_net.apply(value_params, next_obs)
        td_target = batch["rewards"] + config.discount * (1.0 - batch["dones"]) * next_v

        def critic_loss_fn(params):
            q = critic.apply(params, obs, actions)
            return ((q - td_target) ** 2).mean(), q

        (critic_loss, q), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(state["critic"])
        critic_updates, critic_opt_state = critic_opt.update(critic_grads, state["critic_opt"])
        critic_params = optax.apply_updates(state["critic"], critic_updates)

        new_state = dict(
            state,
            critic=critic_params,
            critic_target=polyak(state["critic_target"], critic_params, config.tau),
            value=value_params,
            actor=actor_params,
            critic_opt=critic_opt_state,
            value_opt=value_opt_state,
            actor_opt=actor_opt_state,
        )
        metrics = {
            "train/critic_loss": critic_loss,
            "train/value_loss": value_loss,
            "train/actor_loss": actor_loss,
            "train/q_mean": q.mean(),
            "train/v_mean": v.mean(),
            "train/adv_weight_mean": weights.mean(),
        }
        return new_state, metrics

    def act(params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
        mean, _ = actor.apply(params["actor"], normalize(obs, params["obs_stats"]))
        return mean

    return Learner(
        fields=transition_fields(dataset, scale, shift),
        init=init,
        update=update,
        sample=lambda fields, key: sample_transitions(fields, key, config.batch_size),
        policy=stateless_policy(act),
        policy_params=lambda state: {"actor": state["actor"], "obs_stats": state["obs_stats"]},
    )


# ---- presets ------------------------------------------------------------------------------------------------
# "cpu": about 10 minutes on one core of the 2-core development machine (measured ~115 updates/s, hopper).
BUDGETS = {
    "tiny": dict(hidden_dims=(32, 32), batch_size=64),
    "cpu": dict(steps=70_000),
    "paper": dict(steps=1_000_000),
}
# The official IQL settings per domain: locomotion, AntMaze (sparse reward shifted by -1), Kitchen and Adroit.
_DEXTEROUS = dict(expectile=0.7, temperature=0.5, dropout=0.1, reward_mode="none")
PRESETS = {
    **{env: dict(expectile=0.7, temperature=3.0, reward_mode="locomotion")
       for env in ("halfcheetah", "hopper", "walker2d", "ant")},
    "antmaze": dict(expectile=0.9, temperature=10.0, reward_mode="antmaze"),
    **{domain: dict(_DEXTEROUS) for domain in ("kitchen", "pen", "hammer", "door", "relocate")},
}
