"""SAC (Haarnoja et al. 2018) — the online behaviour agent of the D4RL recipe (not an offline algorithm).

2x256 ReLU tanh-Gaussian actor, twin critics, automatically tuned entropy temperature (target entropy -|A|),
Adam 3e-4, gamma 0.99, Polyak 0.005, batch 256 — D4RL's behaviour-policy settings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ipdrl.networks import EnsembleCritic, TanhGaussianActor, polyak, tanh_gaussian_sample


@dataclasses.dataclass
class SACConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    init_temperature: float = 1.0


def _networks(config: SACConfig, act_dim: int) -> tuple[TanhGaussianActor, EnsembleCritic]:
    return TanhGaussianActor(act_dim, config.hidden_dims), EnsembleCritic(config.hidden_dims, num=2)


def init(config: SACConfig, obs_dim: int, act_dim: int, key: jax.Array) -> dict:
    actor, critic = _networks(config, act_dim)
    actor_key, critic_key = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    actor_params = actor.init(actor_key, obs)
    critic_params = critic.init(critic_key, obs, act)
    log_alpha = jnp.log(jnp.asarray(config.init_temperature, jnp.float32))
    opt = optax.adam(config.lr)
    return {
        "actor": actor_params,
        "critic": critic_params,
        "critic_target": jax.tree_util.tree_map(jnp.array, critic_params),
        "log_alpha": log_alpha,
        "actor_opt": opt.init(actor_params),
        "critic_opt": opt.init(critic_params),
        "alpha_opt": opt.init(log_alpha),
    }


def update(config: SACConfig, act_dim: int, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
    """One SAC update (critic, actor, temperature, target). Pure; jit it with config and act_dim static."""
    actor, critic = _networks(config, act_dim)
    opt = optax.adam(config.lr)
    next_key, pi_key = jax.random.split(key)
    alpha = jnp.exp(state["log_alpha"])

    next_action, next_log_prob = tanh_gaussian_sample(*actor.apply(state["actor"], batch["next_observations"]), next_key)
    next_q = critic.apply(state["critic_target"], batch["next_observations"], next_action).min(0)
    target = batch["rewards"] + config.discount * (1.0 - batch["dones"]) * (next_q - alpha * next_log_prob)

    def critic_loss_fn(params):
        q = critic.apply(params, batch["observations"], batch["actions"])
        return ((q - target) ** 2).mean(1).sum(0)

    critic_loss, grads = jax.value_and_grad(critic_loss_fn)(state["critic"])
    updates, critic_opt = opt.update(grads, state["critic_opt"])
    critic_params = optax.apply_updates(state["critic"], updates)

    def actor_loss_fn(params):
        action, log_prob = tanh_gaussian_sample(*actor.apply(params, batch["observations"]), pi_key)
        q = critic.apply(critic_params, batch["observations"], action).min(0)
        return (alpha * log_prob - q).mean(), log_prob

    (actor_loss, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(state["actor"])
    updates, actor_opt = opt.update(grads, state["actor_opt"])
    actor_params = optax.apply_updates(state["actor"], updates)

    entropy_gap = jax.lax.stop_gradient(-log_prob.mean() - (-act_dim))
    alpha_loss, grad = jax.value_and_grad(lambda log_a: log_a * entropy_gap)(state["log_alpha"])
    updates, alpha_opt = opt.update(grad, state["alpha_opt"])
    log_alpha = optax.apply_updates(state["log_alpha"], updates)

    new_state = dict(
        state,
        actor=actor_params,
        critic=critic_params,
        critic_target=polyak(state["critic_target"], critic_params, config.tau),
        log_alpha=log_alpha,
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        alpha_opt=alpha_opt,
    )
    return new_state, {"critic_loss": critic_loss, "actor_loss": actor_loss, "alpha": alpha}


def sample_action(config: SACConfig, act_dim: int, actor_params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic action (the behaviour policy that collects medium/expert data)."""
    actor, _ = _networks(config, act_dim)
    action, _ = tanh_gaussian_sample(*actor.apply(actor_params, obs), key)
    return action


def deterministic_action(config: SACConfig, act_dim: int, actor_params: dict, obs: jax.Array) -> jax.Array:
    """tanh(mean): used for the threshold evaluations."""
    actor, _ = _networks(config, act_dim)
    mean, _ = actor.apply(actor_params, obs)
    return jnp.tanh(mean)
