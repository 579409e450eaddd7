"""IQL — Implicit Q-Learning (Kostrikov et al. 2021), as in the official JAX code.

Expectile value regression, twin-Q TD learning against V(s'), and advantage-weighted regression (AWR) for the
policy. IPD reuses the trained critic, value and AWR policy (:func:`q_value`, :func:`value`, :func:`awr_distribution`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ipdrl.algos.common import adam, learner_algorithm, mlp_policy, transition_learner
from ipdrl.config import FitConfig, RunConfig, require
from ipdrl.data.dataset import Dataset, transition_fields
from ipdrl.data.statistics import locomotion_reward_scale, normalize, observation_stats
from ipdrl.evaluation import Policy, stateless_policy
from ipdrl.networks import EnsembleCritic, GaussianActor, ValueFunction, gaussian_log_prob, polyak
from ipdrl.optim import gradient_step
from ipdrl.training import Learner

REWARD_MODES = ("locomotion", "antmaze", "none")


@dataclasses.dataclass
class Hyperparameters(FitConfig):
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
    planning_expectile: float | None = None
    """Also train a second value V_high towards the same targets with this (higher) expectile, e.g. 0.9: a
    quasi-optimal value for IPD to plan, bootstrap and condition on, while the critic's TD target and the AWR
    actor keep the main expectile's V. None: no second value."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.reward_mode in REWARD_MODES,
                f"unknown --reward-mode {self.reward_mode!r}: use locomotion, antmaze or none.")
        require(0.0 < self.expectile < 1.0, f"--expectile must be in (0, 1), got {self.expectile}.")
        require(self.planning_expectile is None or 0.0 < self.planning_expectile < 1.0,
                f"--planning-expectile must be in (0, 1), got {self.planning_expectile}.")


@dataclasses.dataclass
class Config(RunConfig, Hyperparameters):
    """An IQL run."""


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff**2


def reward_transform(config: Hyperparameters, dataset: Dataset) -> tuple[float, float]:
    """(scale, shift) applied to rewards as ``r * scale + shift``."""
    if config.reward_mode == "locomotion":
        return locomotion_reward_scale(dataset), 0.0
    return (1.0, -1.0) if config.reward_mode == "antmaze" else (1.0, 0.0)


def networks(config: Hyperparameters, act_dim: int):
    return (
        EnsembleCritic(config.hidden_dims, num=2),
        ValueFunction(config.hidden_dims),
        GaussianActor(act_dim, config.hidden_dims, dropout=config.dropout),
    )


# ---- functions of a trained IQL state (reused by IPD) ------------------------------------------------
def q_value(config: Hyperparameters, state: dict, obs: jax.Array, action: jax.Array) -> jax.Array:
    """min(Q1, Q2)(s, a) of the target critic, in scaled-reward units."""
    critic, _, _ = networks(config, action.shape[-1])
    obs = normalize(obs, state["obs_stats"])
    return critic.apply(state["critic_target"], obs, action).min(0)


def value(config: Hyperparameters, state: dict, obs: jax.Array) -> jax.Array:
    """V(s), in scaled-reward units."""
    _, value_net, _ = networks(config, 1)
    return value_net.apply(state["value"], normalize(obs, state["obs_stats"]))


def planning_value(config: Hyperparameters, state: dict, obs: jax.Array) -> jax.Array:
    """The value IPD plans and conditions with: V_high when trained (``planning_expectile``), else V."""
    _, value_net, _ = networks(config, 1)
    return value_net.apply(state.get("value_high", state["value"]), normalize(obs, state["obs_stats"]))


def advantage_weight(config: Hyperparameters, advantage: jax.Array) -> jax.Array:
    """IQL's actor weight of an advantage: exp(temperature * advantage), clipped at ``max_weight``."""
    return jnp.minimum(jnp.exp(config.temperature * advantage), config.max_weight)


def awr_weight(config: Hyperparameters, state: dict, obs: jax.Array, action: jax.Array) -> jax.Array:
    """IQL's actor weight of a data action under a trained state: exp(temperature * (Q - V)), clipped."""
    return advantage_weight(config, q_value(config, state, obs, action) - value(config, state, obs))


def awr_distribution(config: Hyperparameters, state: dict, obs: jax.Array, act_dim: int) -> tuple[jax.Array, jax.Array]:
    """(mean, log_std) of the AWR policy (the MPC proposal prior in IPD)."""
    _, _, actor = networks(config, act_dim)
    return actor.apply(state["actor"], normalize(obs, state["obs_stats"]))


def policy_samples(config: Hyperparameters, act_dim: int, count: int, state: dict, obs: jax.Array, key: jax.Array
                   ) -> jax.Array:
    """``count`` actions per observation drawn from the AWR policy, clipped to the action box:
    (count, batch, act_dim)."""
    mean, log_std = awr_distribution(config, state, obs, act_dim)
    noise = jax.random.normal(key, (count,) + mean.shape)
    return jnp.clip(mean + jnp.exp(log_std) * noise, -1.0, 1.0)


def sample_choice_policy(config: Hyperparameters, act_dim: int, count: int) -> Policy:
    """IQL acting with the action its Q rates highest among ``count`` samples of its own policy (a selection rule
    as in SfBC and IDQL, here a control for IPD's critic-chosen actions); params: the IQL state."""

    def act(state: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
        actions = policy_samples(config, act_dim, count, state, obs, key)
        q = jax.vmap(lambda a: q_value(config, state, obs, a))(actions)
        return actions[jnp.argmax(q, axis=0), jnp.arange(obs.shape[0])]

    return stateless_policy(act)


# ---- learner --------------------------------------------------------------------------------------------
def make_learner(config: Hyperparameters, dataset: Dataset) -> Learner:
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim
    critic, value_net, actor = networks(config, act_dim)
    scale, shift = reward_transform(config, dataset)
    stats = observation_stats(dataset, config.normalize_observations)
    critic_opt = adam(config.critic_lr)
    value_opt = adam(config.value_lr)
    actor_opt = adam(config.actor_lr, config.steps if config.actor_cosine_decay else None)

    def init(key: jax.Array) -> dict:
        k1, k2, k3 = jax.random.split(key, 3)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
        critic_params = critic.init(k1, obs, act)
        value_params = value_net.init(k2, obs)
        actor_params = actor.init(k3, obs)
        state = {
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
        if config.planning_expectile is not None:  # its own key, so the other networks start as without it
            state["value_high"] = value_net.init(jax.random.fold_in(key, 1), obs)
            state["value_high_opt"] = value_opt.init(state["value_high"])
        return state

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        obs = normalize(batch["observations"], state["obs_stats"])
        next_obs = normalize(batch["next_observations"], state["obs_stats"])
        actions = batch["actions"]
        target_q = critic.apply(state["critic_target"], obs, actions).min(0)

        # Value: expectile regression towards min target Q.
        def value_loss_fn(params):
            v = value_net.apply(params, obs)
            return expectile_loss(target_q - v, config.expectile).mean(), v

        value = gradient_step(value_loss_fn, value_opt, state["value"], state["value_opt"], has_aux=True)
        v = value.aux

        # Actor: AWR with the pre-update value (as in the official code).
        weights = advantage_weight(config, target_q - v)

        def actor_loss_fn(params):
            mean, log_std = actor.apply(params, obs, train=True, rngs={"dropout": key})
            return -(weights * gaussian_log_prob(mean, log_std, actions)).mean()

        policy = gradient_step(actor_loss_fn, actor_opt, state["actor"], state["actor_opt"])

        # Critic: TD towards r + gamma * V(s') with the updated value.
        next_v = value_net.apply(value.params, next_obs)
        td_target = batch["rewards"] + config.discount * (1.0 - batch["dones"]) * next_v

        def critic_loss_fn(params):
            q = critic.apply(params, obs, actions)
            return ((q - td_target) ** 2).mean(), q

        critic_step = gradient_step(critic_loss_fn, critic_opt, state["critic"], state["critic_opt"], has_aux=True)
        q = critic_step.aux

        new_state = dict(
            state,
            critic=critic_step.params,
            critic_target=polyak(state["critic_target"], critic_step.params, config.tau),
            value=value.params,
            actor=policy.params,
            critic_opt=critic_step.opt_state,
            value_opt=value.opt_state,
            actor_opt=policy.opt_state,
        )
        if config.planning_expectile is not None:
            high = gradient_step(lambda params: expectile_loss(target_q - value_net.apply(params, obs),
                                                               config.planning_expectile).mean(),
                                 value_opt, state["value_high"], state["value_high_opt"])
            new_state.update(value_high=high.params, value_high_opt=high.opt_state)
        metrics = {
            "train/critic_loss": critic_step.loss,
            "train/value_loss": value.loss,
            "train/actor_loss": policy.loss,
            "train/q_mean": q.mean(),
            "train/v_mean": v.mean(),
            "train/adv_weight_mean": weights.mean(),
        }
        return new_state, metrics

    return transition_learner(transition_fields(dataset, scale, shift), init, update, config.batch_size,
                              mlp_policy(lambda params, obs: actor.apply(params, obs)[0]))


# ---- presets ------------------------------------------------------------------------------------------------
# "cpu": on hopper-medium-replay IQL is still rising long after 70k updates and levels off only near 400k
# (docs/evidence/curves.md), beyond what fits in about 30 minutes on one core; 175k is what fits.
BUDGETS = {
    "tiny": dict(hidden_dims=(32, 32), batch_size=64),
    "cpu": dict(steps=175_000),
    "paper": dict(steps=1_000_000),
}
# The official IQL settings per domain: locomotion, AntMaze (sparse reward shifted by -1), Kitchen and Adroit.
_DEXTEROUS = dict(expectile=0.7, temperature=0.5, dropout=0.1, reward_mode="none")
PRESETS = {
    **{env: dict(expectile=0.7, temperature=3.0, reward_mode="locomotion")
       for env in ("halfcheetah", "hopper", "walker2d", "ant")},
    "antmaze": dict(expectile=0.9, temperature=10.0, reward_mode="antmaze"),
    # The sparse reward's values spread from the goal slowly: on umaze the policy still stops short at 70k updates
    # and is still improving at 400k (README, AntMaze), which is what fits in about an hour on one core.
    "antmaze@cpu": dict(steps=400_000),
    **{domain: dict(_DEXTEROUS) for domain in ("kitchen", "pen", "hammer", "door", "relocate")},
}
ALGORITHM = learner_algorithm("iql", Config, make_learner, "IQL: implicit Q-learning (Kostrikov et al. 2021).",
                              BUDGETS, PRESETS)
