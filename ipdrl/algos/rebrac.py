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
times the updates in about ten minutes on a CPU core; ``tiny`` is for tests.

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

from ipdrl.algos.common import normalize, observation_stats
from ipdrl.config import TrainConfig
from ipdrl.data.dataset import Dataset, sample_transitions, transition_fields
from ipdrl.networks import DeterministicActor, EnsembleCritic, polyak
from ipdrl.training import Learner, Policy, stateless_policy


@dataclasses.dataclass
class Config(TrainConfig):
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


def check_config(config: Config) -> None:
    """Reject settings the learner cannot use, naming the fix."""
    if config.bc_reduction not in ("sum", "mean"):
        raise ValueError(f"unknown --bc-reduction {config.bc_reduction!r}: use 'sum' or 'mean'.")
    if config.actor_q not in ("min", "first"):
        raise ValueError(f"unknown --actor-q {config.actor_q!r}: use 'min' or 'first'.")
    if config.policy_freq < 1:
        raise ValueError(f"--policy-freq must be at least 1, got {config.policy_freq}.")
    if not config.hidden_dims:
        raise ValueError("--hidden-dims needs at least one layer width, e.g. --hidden-dims 256 256 256.")


# ---- pure helpers (reused by BC, TD3+BC and DWM-MPC) ------------------------------------------------------
def networks(config: Config, act_dim: int) -> tuple[DeterministicActor, EnsembleCritic]:
    """The actor and the twin critics."""
    return (
        DeterministicActor(act_dim, config.hidden_dims, layer_norm=config.actor_layer_norm),
        EnsembleCritic(config.hidden_dims, layer_norm=config.critic_layer_norm, num=2),
    )


def actor_act_dim(config: Config, actor_params: dict) -> int:
    """The action dimension a set of actor parameters was built for (its output layer's width)."""
    return actor_params["params"]["MLP_0"][f"Dense_{len(config.hidden_dims)}"]["bias"].shape[-1]


def actor_apply(config: Config, actor_params: dict, obs_normalized: jax.Array) -> jax.Array:
    """pi(s) in [-1, 1] for already normalised observations (differentiable in ``actor_params``)."""
    actor, _ = networks(config, actor_act_dim(config, actor_params))
    return actor.apply(actor_params, obs_normalized)


def q_min(config: Config, state: dict, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """min(Q1, Q2)(s, a) of the online critic for RAW observations, in scaled-reward units."""
    _, critic = networks(config, actions.shape[-1])
    return critic.apply(state["critic"], normalize(obs, state["obs_stats"]), actions).min(0)


def reward_transform(config: Config, dataset: Dataset) -> tuple[float, float]:
    """(scale, shift) applied to rewards as ``r * scale + shift``: ReBRAC only scales (by 100 on AntMaze)."""
    return config.reward_scale, 0.0


def observation_stats_or_identity(dataset: Dataset, enabled: bool) -> dict[str, jax.Array]:
    """Dataset mean/std when ``enabled``, else (0, 1) so that normalising is the identity."""
    stats = observation_stats(dataset) if enabled else {
        "mean": np.zeros(dataset.obs_dim, np.float32), "std": np.ones(dataset.obs_dim, np.float32)}
    return {k: jnp.asarray(v) for k, v in stats.items()}


def deterministic_policy(actor: DeterministicActor) -> Policy:
    """The acting policy of a deterministic actor; its params are ``{"actor", "obs_stats"}``."""
    return stateless_policy(lambda params, obs, key: actor.apply(params["actor"], normalize(obs, params["obs_stats"])))


def next_actions(dataset: Dataset) -> np.ndarray:
    """Each transition's next action in its episode; at an episode's last step, its own action."""
    following = np.concatenate([dataset.actions[1:], dataset.actions[-1:]])
    last = dataset.episode_ends - 1
    following[last] = dataset.actions[last]
    return following.astype(np.float32)


# ---- learner ------------------------------------------------------------------------------------------------
def make_learner(config: Config, dataset: Dataset) -> Learner:
    """The ReBRAC (or, configured so, TD3+BC) learner for ``dataset``."""
    check_config(config)
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim
    actor, critic = networks(config, act_dim)
    actor_opt, critic_opt = optax.adam(config.actor_lr), optax.adam(config.critic_lr)
    scale, shift = reward_transform(config, dataset)
    stats = observation_stats_or_identity(dataset, config.normalize_observations)
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

        (loss, q), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["critic"])
        updates, opt_state = critic_opt.update(grads, state["critic_opt"])
        state = dict(state, critic=optax.apply_updates(state["critic"], updates), critic_opt=opt_state)
        return state, {"train/critic_loss": loss, "train/q_mean": q.mean(), "train/target_q_mean": target.mean()}

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

        (loss, bc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["actor"])
        updates, opt_state = actor_opt.update(grads, state["actor_opt"])
        actor_params = optax.apply_updates(state["actor"], updates)
        state = dict(
            state,
            actor=actor_params,
            actor_opt=opt_state,
            actor_target=polyak(state["actor_target"], actor_params, config.tau),
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
    return Learner(
        fields=fields,
        init=init,
        update=update,
        sample=lambda fields, key: sample_transitions(fields, key, config.batch_size),
        policy=deterministic_policy(actor),
        policy_params=lambda state: {"actor": state["actor"], "obs_stats": state["obs_stats"]},
    )


# ---- presets ------------------------------------------------------------------------------------------------
# "cpu": about 10 minutes of updates on one core of the 2-core development machine (measured ~15 updates/s at
# batch 1024 and ~63/s at batch 256, process CPU time, hopper): batch 256 buys 4x the gradient steps.
BUDGETS = {
    "tiny": dict(hidden_dims=(32, 32), batch_size=64),
    "cpu": dict(steps=40_000, batch_size=256),
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
PRESETS = {
    "antmaze": dict(discount=0.999, reward_scale=100.0),
    **{f"{env}-{data}": dict(actor_bc=beta1, critic_bc=beta2)
       for env, table in _BETAS.items() for data, (beta1, beta2) in table.items()},
}
