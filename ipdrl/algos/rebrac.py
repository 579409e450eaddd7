"""ReBRAC — Revisited Behaviour-Regularised Actor-Critic (Tarasov et al. 2023), as in the reference JAX code.

TD3+BC made strong by a LayerNorm critic, 3x256 networks, batch 1024, Adam 1e-3 and two separate
behaviour-cloning penalties:

    actor:   min_pi  E[ beta1 * ||pi(s) - a||^2  -  Q(s, pi(s)) / mean|Q| ]
    critic:  y = r + gamma * (1 - d) * ( min_i Q'_i(s', a')  -  beta2 * ||a' - a_next||^2 ),
             a' = clip(pi'(s') + clip(N(0, 0.2), -0.5, 0.5), -1, 1)

where ``a_next`` is the dataset's next action in the episode. The actor and both targets update every
``policy_freq`` critic updates (a ``lax.cond`` inside the jitted update). TD3+BC (:mod:`ipdrl.algos.td3bc`) is a
configuration of this learner. The networks are the library's shared MLPs (orthogonal init, LayerNorm before the
activation), not the reference's PyTorch-style init with LayerNorm after the ReLU. DWM-MPC reuses :func:`networks`, :func:`actor_apply` and :func:`q_min`.

Budgets: ``paper`` is the reference (batch 1024, 1M updates); ``cpu`` trades batch 1024 for 256 to afford four
times the updates in the same time on a CPU core; ``tiny`` is for tests.

State (a dict): actor, actor_target, critic, critic_target, actor_opt, critic_opt, obs_stats {mean, std},
reward_scale [scale, shift], step. Policy parameters for evaluation: {actor, obs_stats}.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.algos.common import learner_algorithm, mlp_policy, transition_learner
from ipdrl.config import FitConfig, RunConfig, require
from ipdrl.data.dataset import Dataset, transition_fields
from ipdrl.data.statistics import normalize, observation_stats
from ipdrl.networks import DeterministicActor, EnsembleCritic, polyak
from ipdrl.optim import gradient_step
from ipdrl.training import Learner


@dataclasses.dataclass
class Hyperparameters(FitConfig):
    """ReBRAC hyperparameters (reference Gym defaults; per-dataset actor_bc/critic_bc in PRESETS)."""

    batch_size: int = 1024
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the actor and of each critic."""
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    discount: float = 0.99
    tau: float = 5e-3
    """Polyak rate of both target networks (they move with the actor, every policy_freq updates)."""
    actor_bc: float = 0.01
    """beta1: weight of the behaviour-cloning penalty ||pi(s) - a||^2 in the actor loss."""
    critic_bc: float = 0.01
    """beta2: weight of ||a' - a_next||^2 subtracted from the bootstrapped target Q (a_next: dataset next action)."""
    alpha: float = 1.0
    """Weight of the (normalised) Q term in the actor loss: TD3+BC's alpha; ReBRAC keeps 1 and tunes actor_bc."""
    bc_reduction: Literal["sum", "mean"] = "sum"
    """How BC penalties reduce over action dimensions: 'sum' (ReBRAC) or 'mean' (TD3+BC's MSE)."""
    actor_q: Literal["min", "first"] = "min"
    """Q in the actor loss: 'min' of the twin critics (ReBRAC) or 'first' critic only (TD3, TD3+BC)."""
    normalize_q: bool = True
    """Divide the actor's Q term by the batch mean |Q| (without gradient), making alpha/beta1 scale-free."""
    actor_layer_norm: bool = False
    critic_layer_norm: bool = True
    policy_noise: float = 0.2
    """Std of the Gaussian noise added to the target action (target policy smoothing)."""
    noise_clip: float = 0.5
    policy_freq: int = 2
    """Critic updates per actor and target-network update."""
    normalize_observations: bool = False
    """Standardise states with the dataset mean/std (TD3+BC does; the ReBRAC reference keeps raw states on Gym)."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this (100 on AntMaze, with discount 0.999)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.bc_reduction in ("sum", "mean"), f"unknown --bc-reduction {self.bc_reduction!r}: use 'sum' or 'mean'.")
        require(self.actor_q in ("min", "first"), f"unknown --actor-q {self.actor_q!r}: use 'min' or 'first'.")
        require(self.policy_freq >= 1, f"--policy-freq must be at least 1, got {self.policy_freq}.")
        require(bool(self.hidden_dims),
                "--hidden-dims needs at least one layer width, e.g. --hidden-dims 256 256 256.")


@dataclasses.dataclass
class Config(RunConfig, Hyperparameters):
    """A ReBRAC run."""




# ---- pure helpers (reused by BC, TD3+BC and DWM-MPC) ------------------------------------------------------
def networks(config: Hyperparameters, act_dim: int) -> tuple[DeterministicActor, EnsembleCritic]:
    """The actor and the twin critics."""
    return (
        DeterministicActor(act_dim, config.hidden_dims, layer_norm=config.actor_layer_norm),
        EnsembleCritic(config.hidden_dims, layer_norm=config.critic_layer_norm, num=2),
    )


def actor_act_dim(config: Hyperparameters, actor_params: dict) -> int:
    """The action dimension a set of actor parameters was built for (its output layer's width)."""
    return actor_params["params"]["MLP_0"][f"Dense_{len(config.hidden_dims)}"]["bias"].shape[-1]


def actor_apply(config: Hyperparameters, actor_params: dict, obs_normalized: jax.Array) -> jax.Array:
    """pi(s) in [-1, 1] for already normalised observations (differentiable in ``actor_params``)."""
    actor, _ = networks(config, actor_act_dim(config, actor_params))
    return actor.apply(actor_params, obs_normalized)


def q_min(config: Hyperparameters, state: dict, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """min(Q1, Q2)(s, a) of the online critic for RAW observations, in scaled-reward units."""
    _, critic = networks(config, actions.shape[-1])
    return critic.apply(state["critic"], normalize(obs, state["obs_stats"]), actions).min(0)


def reward_transform(config: Hyperparameters, dataset: Dataset) -> tuple[float, float]:
    """(scale, shift) applied to rewards as ``r * scale + shift``: ReBRAC only scales (by 100 on AntMaze)."""
    return config.reward_scale, 0.0


def next_actions(dataset: Dataset) -> np.ndarray:
    """Each transition's next action in its episode; at an episode's last step, its own action."""
    following = np.concatenate([dataset.actions[1:], dataset.actions[-1:]])
    last = dataset.episode_ends - 1
    following[last] = dataset.actions[last]
    return following.astype(np.float32)


# ---- learner ------------------------------------------------------------------------------------------------
def make_learner(config: Hyperparameters, dataset: Dataset) -> Learner:
    """The ReBRAC (or, configured so, TD3+BC) learner for ``dataset``."""
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim
    actor, critic = networks(config, act_dim)
    actor_opt, critic_opt = optax.adam(config.actor_lr), optax.adam(config.critic_lr)
    scale, shift = reward_transform(config, dataset)
    stats = {k: jnp.asarray(v) for k, v in observation_stats(dataset, config.normalize_observations).items()}
    bc_distance = lambda x, y: (jnp.sum if config.bc_reduction == "sum" else jnp.mean)((x - y) ** 2, axis=-1)

    def init(key: jax.Array) -> dict:
        actor_key, critic_key = jax.random.split(key)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs, act)
        return {
            "actor": actor_params,
            "actor_target": actor_params,
            "critic": critic_params,
            "critic_target": critic_params,
            "actor_opt": actor_opt.init(actor_params),
            "critic_opt": critic_opt.init(critic_params),
            "obs_stats": stats,
            "reward_scale": jnp.asarray([scale, shift], jnp.float32),
            "step": jnp.zeros((), jnp.int32),
        }

    def critic_update(state: dict, obs: jax.Array, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        next_obs = normalize(batch["next_observations"], state["obs_stats"])
        next_action = actor.apply(state["actor_target"], next_obs)
        noise = jnp.clip(config.policy_noise * jax.random.normal(key, next_action.shape),
                         -config.noise_clip, config.noise_clip)
        next_action = jnp.clip(next_action + noise, -1.0, 1.0)
        next_q = critic.apply(state["critic_target"], next_obs, next_action).min(0)
        next_q -= config.critic_bc * bc_distance(next_action, batch["next_actions"])
        target = batch["rewards"] + config.discount * (1.0 - batch["dones"]) * next_q

        def loss_fn(params):
            q = critic.apply(params, obs, batch["actions"])
            return ((q - target) ** 2).mean(1).sum(0), q  # each critic's MSE, summed as in TD3

        step = gradient_step(loss_fn, critic_opt, state["critic"], state["critic_opt"], has_aux=True)
        state = dict(state, critic=step.params, critic_opt=step.opt_state)
        return state, {"train/critic_loss": step.loss, "train/q_mean": step.aux.mean(),
                       "train/target_q_mean": target.mean()}

    def actor_q(critic_params: dict, obs: jax.Array, pi: jax.Array) -> jax.Array:
        if config.actor_q == "min":
            return critic.apply(critic_params, obs, pi).min(0)
        # TD3 follows Q1 alone: evaluate only that member (its slice of every ensemble parameter).
        first = jax.tree_util.tree_map(lambda p: p[:1], critic_params)
        return critic.clone(num=1).apply(first, obs, pi)[0]

    def actor_update(state: dict, obs: jax.Array, actions: jax.Array) -> tuple[dict, dict]:
        def loss_fn(params):
            pi = actor.apply(params, obs)
            q = actor_q(state["critic"], obs, pi)
            q_scale = 1.0 / jax.lax.stop_gradient(jnp.abs(q).mean()) if config.normalize_q else 1.0
            bc = bc_distance(pi, actions)
            return (config.actor_bc * bc - config.alpha * q_scale * q).mean(), bc.mean()

        step = gradient_step(loss_fn, actor_opt, state["actor"], state["actor_opt"], has_aux=True)
        loss, bc = step.loss, step.aux
        state = dict(
            state,
            actor=step.params,
            actor_opt=step.opt_state,
            actor_target=polyak(state["actor_target"], step.params, config.tau),
            critic_target=polyak(state["critic_target"], state["critic"], config.tau),
        )
        # Scaled so that the chunk mean (over all steps, 1 in policy_freq of them here) is the mean per actor step.
        return state, {"train/actor_loss": loss * config.policy_freq, "train/actor_bc": bc * config.policy_freq}

    def skip_actor(state: dict, obs: jax.Array, actions: jax.Array) -> tuple[dict, dict]:
        return state, {"train/actor_loss": jnp.zeros(()), "train/actor_bc": jnp.zeros(())}

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        obs = normalize(batch["observations"], state["obs_stats"])
        state, critic_metrics = critic_update(state, obs, batch, key)
        actor_due = (state["step"] + 1) % config.policy_freq == 0
        state, actor_metrics = jax.lax.cond(actor_due, actor_update, skip_actor, state, obs, batch["actions"])
        return dict(state, step=state["step"] + 1), {**critic_metrics, **actor_metrics}

    fields = transition_fields(dataset, scale, shift)
    fields["next_actions"] = next_actions(dataset)
    return transition_learner(fields, init, update, config.batch_size, mlp_policy(actor.apply))


# ---- presets ------------------------------------------------------------------------------------------------
# "cpu" trades batch 1024 for 256 to afford four times the gradient steps in the same time, and stops where the
# curves of hopper and walker2d medium-replay stop rising (docs/evidence/curves.md); fewer updates stop it mid-rise.
BUDGETS = {
    "tiny": dict(hidden_dims=(32, 32), batch_size=64),
    "cpu": dict(steps=100_000, batch_size=256),
    "paper": dict(steps=1_000_000),
}

# (actor_bc beta1, critic_bc beta2) per D4RL Gym dataset, from the ReBRAC paper.
_BETAS = {
    "halfcheetah": {"random": (0.001, 0.1), "medium": (0.001, 0.01), "expert": (0.01, 0.01),
                    "medium-expert": (0.01, 0.1), "medium-replay": (0.01, 0.001)},
    "hopper": {"random": (0.001, 0.01), "medium": (0.01, 0.001), "expert": (0.1, 0.001),
               "medium-expert": (0.1, 0.01), "medium-replay": (0.05, 0.5)},
    "walker2d": {"random": (0.01, 0.0), "medium": (0.05, 0.1), "expert": (0.01, 0.5),
                 "medium-expert": (0.01, 0.01), "medium-replay": (0.05, 0.01)},
}
# AntMaze, as the ReBRAC paper's (and CORL's configs): gamma 0.999, batch 256, critic lr 5e-5, actor lr 3e-4.
_BETAS["antmaze"] = {"umaze": (0.003, 0.002), "umaze-diverse": (0.003, 0.001), "medium-play": (0.001, 0.0005),
                     "medium-diverse": (0.001, 0.0), "large-play": (0.002, 0.001), "large-diverse": (0.002, 0.002)}
PRESETS = {
    "antmaze": dict(discount=0.999, reward_scale=100.0, batch_size=256, critic_lr=5e-5, actor_lr=3e-4),
    # With gamma 0.999 the goal's value reaches the start slowly: the Gym budget's policy never reaches the goal
    # (its umaze curve: README, AntMaze; run times: docs/evidence/README.md). 400k is also IQL's AntMaze budget.
    "antmaze@cpu": dict(steps=400_000),
    **{f"{env}-{data}": dict(actor_bc=beta1, critic_bc=beta2)
       for env, table in _BETAS.items() for data, (beta1, beta2) in table.items()},
}
ALGORITHM = learner_algorithm("rebrac", Config, make_learner,
                              "ReBRAC: revisited behaviour-regularised actor-critic (Tarasov et al. 2023).", BUDGETS,
                              PRESETS)
