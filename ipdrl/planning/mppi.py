"""Model-predictive control in a learned model: MPPI over action sequences (IPD stage 3), and greedy-Q.

:func:`plan` is the planner: for a whole batch of start states at once (``vmap``), it refines a Gaussian over
``horizon``-step action sequences for ``iterations`` rounds (``lax.scan``). Each round scores the current mean,
perturbations of it and closed-loop rollouts of the proposal policy (the IQL AWR policy plus noise, acting in
the model), ``num_samples`` sequences in all, with

    J = sum_{k<H} gamma^k (r_k - lambda U_k) + gamma^H V(s_H),      rewards and V after a predicted termination: 0

and moves the mean and std to the softmax-weighted ``num_elites`` best sequences (MPPI / CEM as in TD-MPC2).
The mean starts at the caller's warm start (the previous plan, shifted: receding horizon), so consecutive
calls refine one plan. :func:`greedy_q_action` is the paper's ablation: no lookahead, argmax Q over sampled actions.

The model, value and policy enter as functions of batches, so the planner knows nothing of ensembles or IQL:

    step(obs, actions, key) -> (next_obs, rewards, dones, uncertainty)    rewards in V's units
    value(obs) -> V(s)          policy(obs) -> (mean, log_std)            q(obs, actions) -> Q(s, a)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ipdrl.config import Settings

StepFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array]]
ValueFn = Callable[[jax.Array], jax.Array]
PolicyFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
QFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class PlannerConfig(Settings):
    """MPPI settings. Actions live in [-1, 1]."""

    num_samples: int = 256
    """N: candidate action sequences per start state and iteration (greedy-Q: sampled actions per step)."""
    horizon: int = 5
    """H: planning horizon; the value function bootstraps beyond it."""
    iterations: int = 3
    policy_fraction: float = 0.25
    """Share of the N candidates that are proposal-policy rollouts (the rest perturb the current mean)."""
    num_elites: int = 32
    """Best candidates that the mean and std are refitted to."""
    temperature: float = 0.5
    """MPPI weights ``softmax(temperature * (J - max J))`` over the elites (TD-MPC2's convention: an inverse
    temperature, per unit of score; with IQL's scaled rewards one step of reward is O(1))."""
    init_std: float = 0.5
    min_std: float = 0.05
    proposal_noise: float = 0.2
    """Std of the Gaussian noise added to the proposal policy's mean actions."""
    uncertainty_penalty: float = 0.0
    """lambda: subtract lambda * U(s, a) per imagined step from the score (0 keeps the planner cheap)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        policy = round(self.num_samples * self.policy_fraction)
        if not 0 < self.num_elites <= self.num_samples or policy < 1 or self.num_samples - policy < 2:
            raise ValueError(f"planner needs 0 < num_elites <= num_samples and room for at least 2 perturbed "
                             f"sequences and 1 policy proposal; got num_samples={self.num_samples}, num_elites={self.num_elites}, "
                             f"policy_fraction={self.policy_fraction}.")


def shift_plan(plan: jax.Array) -> jax.Array:
    """Warm start for the next step: drop the executed first action, repeat the last one."""
    return jnp.concatenate([plan[..., 1:, :], plan[..., -1:, :]], axis=-2)


def plan(obs: jax.Array, warm_start: jax.Array, key: jax.Array, step: StepFn, value: ValueFn, policy: PolicyFn,
         gamma: float, config: PlannerConfig) -> jax.Array:
    """MPPI plans (batch, horizon, act_dim) for a batch of start states ``obs`` (batch, obs_dim).

    ``warm_start`` (batch, horizon, act_dim) seeds the sampling mean: the previous plan shifted by
    :func:`shift_plan`, or :func:`policy_warm_start` at a first step. Execute ``plan[:, 0]``. Pure and jittable
    (jit it with the functions closed over).
    """
    num_policy = round(config.num_samples * config.policy_fraction)
    num_perturbed = config.num_samples - num_policy - 1  # the mean itself is candidate 0
    # Policy proposal 0 is noise-free: the planner can always fall back on what the prior policy would do.
    policy_noise = config.proposal_noise * (jnp.arange(num_policy) > 0)[:, None]

    def rollout(obs: jax.Array, actions: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Scores J of (n, H, A) sequences from one start state, whose last ``num_policy`` rows are replaced by
        the proposal policy acting in closed loop; returns (scores, the actions taken)."""
        def body(carry, inputs):
            obs, alive, total, discount = carry
            actions, keys = inputs
            mean, _ = policy(obs[-num_policy:])
            proposed = mean + policy_noise * jax.random.normal(keys[0], mean.shape)
            actions = actions.at[-num_policy:].set(jnp.clip(proposed, -1.0, 1.0))
            next_obs, rewards, dones, uncertainty = step(obs, actions, keys[1])
            total = total + discount * alive * (rewards - config.uncertainty_penalty * uncertainty)
            return (next_obs, alive * (1.0 - dones), total, discount * gamma), actions

        n = actions.shape[0]
        start = (jnp.broadcast_to(obs, (n, obs.shape[-1])), jnp.ones(n), jnp.zeros(n), jnp.asarray(1.0))
        (last_obs, alive, total, discount), taken = jax.lax.scan(body, start, (actions.swapaxes(0, 1), keys))
        return total + discount * alive * value(last_obs), taken.swapaxes(0, 1)

    def plan_one(obs: jax.Array, warm_start: jax.Array, keys: jax.Array) -> jax.Array:
        def iteration(carry, keys):
            mean, std = carry
            perturbed = mean + std * jax.random.normal(keys[0, 0], (num_perturbed, *mean.shape))
            candidates = jnp.concatenate([mean[None], jnp.clip(perturbed, -1.0, 1.0),
                                          jnp.zeros((num_policy, *mean.shape))])
            scores, candidates = rollout(obs, candidates, keys[1:])
            elite_scores, elite_index = jax.lax.top_k(scores, config.num_elites)
            elites = candidates[elite_index]
            weights = jax.nn.softmax(config.temperature * (elite_scores - elite_scores[0]))
            mean = jnp.einsum("e,eha->ha", weights, elites)
            std = jnp.sqrt(jnp.einsum("e,eha->ha", weights, (elites - mean) ** 2))
            return (mean, jnp.clip(std, config.min_std, config.init_std)), None

        start = (warm_start, jnp.full_like(warm_start, config.init_std))
        (mean, _), _ = jax.lax.scan(iteration, start, keys)
        return mean

    # Keys are split once up front (each random call site costs about a second of XLA:CPU compile time):
    # per start state and iteration, one for the perturbations, then two (policy noise, model) per step.
    keys = jax.random.split(key, (obs.shape[0], config.iterations, config.horizon + 1, 2))
    return jax.vmap(plan_one)(obs, warm_start, keys)


def policy_warm_start(obs: jax.Array, policy: PolicyFn, horizon: int) -> jax.Array:
    """A first warm start (batch, horizon, act_dim): the policy's mean action at ``obs``, repeated."""
    mean, _ = policy(obs)
    return jnp.repeat(mean[:, None], horizon, axis=1)


def greedy_q_action(obs: jax.Array, key: jax.Array, q: QFn, policy: PolicyFn, num_samples: int,
                    noise: float) -> jax.Array:
    """argmax_a Q(s, a) over the policy mean and ``num_samples - 1`` noisy copies of it, for a batch of states."""
    mean, _ = policy(obs)
    scale = noise * (jnp.arange(num_samples) > 0)[:, None, None]
    candidates = jnp.clip(mean + scale * jax.random.normal(key, (num_samples, *mean.shape)), -1.0, 1.0)
    values = jax.vmap(q, in_axes=(None, 0))(obs, candidates)  # (num_samples, batch)
    best = jnp.argmax(values, axis=0)
    return candidates[best, jnp.arange(obs.shape[0])]
