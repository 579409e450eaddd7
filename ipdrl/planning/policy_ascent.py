"""Policy-ascent planning (DWM-MPC's inference-time optimiser): the decision variable is the policy's weights.

At every real step, for M particles with a fresh noise bank eps^(m):

    s_0 = s_t,   a_j = pi_psi(s_j),   s_{j+1} = f(s_j, a_j, eps^(m)_j),   j < H
    J(psi) = mean_m [ sum_{j<H} gamma^j r(s_j, a_j) + gamma^H V(s_H, pi_psi(s_H)) ]  - penalties
    E times: psi <- psi + lr * grad J(psi);   act pi_psi(s_t)

The world model, reward, policy and terminal value enter through :class:`Imagination`, a narrow interface of pure
functions, so the planner knows nothing of ReBRAC or of which generative model it differentiates through.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ipdrl.config import Settings, require
from ipdrl.evaluation import Params, Policy
from ipdrl.optim import apply_gradients


@dataclasses.dataclass(frozen=True)
class AscentConfig(Settings):
    """Policy-ascent settings (the paper's v2 uses H 5, M 4096, E 1)."""

    horizon: int = 5
    """H: imagined steps per particle."""
    particles: int = 64
    """M: imagined rollouts, each with its own noise, averaged in the objective."""
    inner_steps: int = 1
    """E: gradient-ascent steps on the policy weights per real step."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """'sgd': plain gradient ascent as in the paper; 'adam' (extension): Adam restarted at every real step."""
    carry: Literal["carry", "reset"] = "carry"
    """'carry': adapted weights carry over between steps, reset at episode start; 'reset': restart every step."""
    proximity_penalty: float = 0.0
    """Extension: subtract lambda * ||psi - psi_0||^2 (psi_0: pretrained weights) from the objective."""
    disagreement_penalty: float = 0.0
    """Extension: subtract lambda * discounted ensemble disagreement (trace of the members' covariance of s')."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.carry in ("carry", "reset"), f"unknown --planner.carry {self.carry!r}: use 'carry' or 'reset'.")
        require(self.optimizer in ("sgd", "adam"),
                f"unknown --planner.optimizer {self.optimizer!r}: use 'sgd' or 'adam'.")
        require(min(self.horizon, self.particles, self.inner_steps) >= 1,
                "--planner.horizon, --planner.particles and --planner.inner-steps must all be at least 1.")


class Imagination(NamedTuple):
    """The differentiable pieces of an imagined rollout, each pure in explicit parameters.

    ``frozen`` is the pytree of every trained, fixed network (critic, transition, reward); ``actor`` is the
    adapted policy weights. ``transition`` returns one next state per ensemble member: (members, ..., obs_dim).
    """

    policy: Callable[[Params, Params, jax.Array], jax.Array]  # (frozen, actor, obs) -> action
    reward: Callable[[Params, jax.Array, jax.Array], jax.Array]  # (frozen, obs, action) -> critic-unit reward
    transition: Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]  # (frozen, obs, action, noise)
    terminal_value: Callable[[Params, jax.Array, jax.Array], jax.Array]  # (frozen, obs, action) -> min_i Q_i
    noise_shape: tuple[int, ...]  # Gaussian draws one imagined transition consumes
    discount: float
    done: Callable[[jax.Array], jax.Array] | None = None  # next obs -> terminated, when masking terminations


def squared_distance(a: Params, b: Params) -> jax.Array:
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def planning_objective(imagination: Imagination, config: AscentConfig, actor: Params, frozen: Params, anchor: Params,
                       obs: jax.Array, noise: jax.Array) -> jax.Array:
    """J(psi) for one real state ``obs`` (obs_dim,) and noise bank (H, M, *noise_shape), minus any penalties.

    Particle m follows ensemble member m mod members, so an ensemble is also a source of model diversity.
    """
    particles = noise.shape[1]
    particle = jnp.arange(particles)

    def transition(state, action, eps):
        """(next state, members' spread, 1 unless the next state is a known termination) per particle."""
        candidates = imagination.transition(frozen, state, action, eps)
        spread = candidates.var(0).sum(-1)  # trace of the members' covariance; smooth where they agree
        next_state = candidates[particle % candidates.shape[0], particle]
        survives = jnp.ones(particles) if imagination.done is None else 1.0 - imagination.done(next_state)
        return next_state, spread, survives

    def imagined_step(carry, eps):
        state, alive = carry
        action = imagination.policy(frozen, actor, state)
        rewards = imagination.reward(frozen, state, action)
        next_state, spread, survives = transition(state, action, eps)
        return (next_state, alive * survives), (alive * rewards, alive * spread)

    # Step 0 starts every particle from the same state with the same action: policy and reward once, not M times.
    first_action = imagination.policy(frozen, actor, obs)
    first_reward = imagination.reward(frozen, obs, first_action)
    state, first_spread, alive = transition(jnp.broadcast_to(obs, (particles, obs.shape[-1])),
                                            jnp.broadcast_to(first_action, (particles, first_action.shape[-1])),
                                            noise[0])
    (final, alive), (rewards, spreads) = jax.lax.scan(imagined_step, (state, alive), noise[1:])
    rewards = jnp.concatenate([jnp.broadcast_to(first_reward, (1, particles)), rewards])
    spreads = jnp.concatenate([first_spread[None], spreads])
    discounts = imagination.discount ** jnp.arange(noise.shape[0])
    value = imagination.terminal_value(frozen, final, imagination.policy(frozen, actor, final))
    returns = discounts @ rewards + imagination.discount ** noise.shape[0] * alive * value
    objective = returns.mean()
    if config.disagreement_penalty:
        objective -= config.disagreement_penalty * (discounts @ spreads).mean()
    if config.proximity_penalty:
        objective -= config.proximity_penalty * squared_distance(actor, anchor)
    return objective


def adapt(imagination: Imagination, config: AscentConfig, frozen: Params, anchor: Params, actor: Params,
          lr: jax.Array, obs: jax.Array, key: jax.Array) -> Params:
    """E ascent steps on J from ``actor`` for one real state, with one fresh noise bank shared by all E steps."""
    noise = jax.random.normal(key, (config.horizon, config.particles, *imagination.noise_shape))
    optimizer = {"sgd": optax.sgd, "adam": optax.adam}[config.optimizer](lr)
    gradient = jax.grad(lambda actor: planning_objective(imagination, config, actor, frozen, anchor, obs, noise))

    def ascend(carry, _):
        actor, opt_state = carry
        descent = jax.tree_util.tree_map(jnp.negative, gradient(actor))  # optax minimises
        return apply_gradients(optimizer, actor, opt_state, descent), None

    (actor, _), _ = jax.lax.scan(ascend, (actor, optimizer.init(actor)), None, length=config.inner_steps)
    return actor


def make_policy(imagination: Imagination, config: AscentConfig) -> Policy:
    """The acting policy. Params: ``{"actor": pretrained weights, "frozen": trained networks, "lr": step size}``
    (the step size is an argument, so tuning several values reuses one compiled function).

    Carry: per-environment adapted weights, initialised to the pretrained ones (episode start).
    """

    def init_carry(params: Params, num_envs: int) -> Params:
        return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_envs, *x.shape)), params["actor"])

    def act(params: Params, carry: Params, obs: jax.Array, prev_reward: jax.Array, key: jax.Array):
        start = carry if config.carry == "carry" else init_carry(params, obs.shape[0])

        def adapt_and_act(actor: Params, obs: jax.Array, key: jax.Array) -> tuple[Params, jax.Array]:
            actor = adapt(imagination, config, params["frozen"], params["actor"], actor, params["lr"], obs, key)
            return actor, imagination.policy(params["frozen"], actor, obs)

        # Environments run one after another inside the compiled step (lax.map): each one already batches its M
        # particles, and vmapping over per-environment weights compiled much slower on CPU for no faster step.
        adapted, actions = jax.lax.map(lambda x: adapt_and_act(*x), (start, obs, jax.random.split(key, obs.shape[0])))
        return (adapted if config.carry == "carry" else carry), actions

    return Policy(init_carry=init_carry, act=act)
