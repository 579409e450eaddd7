"""The MPPI planner and greedy-Q on toy models whose optimum is known."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipdrl.planning import PlannerConfig, greedy_q_action, plan, policy_warm_start, shift_plan

GAMMA = 0.99
CONFIG = PlannerConfig(num_samples=128, horizon=3, iterations=3, num_elites=16)


def zeros(obs):
    return jnp.zeros(obs.shape[0])


def lazy_policy(obs):
    """A poor proposal prior: always suggests action 0."""
    return jnp.zeros((obs.shape[0], 2)), jnp.zeros((obs.shape[0], 2))


def tracking_step(obs, actions, key):
    """Static state; reward -|a - target(s)|^2 with the target written in the state itself."""
    rewards = -10.0 * ((actions - obs[:, :2]) ** 2).sum(-1)
    return obs, rewards, jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0])


def sequence_return(step, obs, actions):
    """Discounted return of one action sequence (H, A) from one state, V = 0."""
    total, state = 0.0, obs[None]
    for k, action in enumerate(actions):
        state, reward, _, _ = step(state, action[None], None)
        total += GAMMA**k * float(reward[0])
    return total


def test_planner_beats_the_proposal_mean_and_finds_each_states_optimum():
    targets = jnp.array([[0.6, -0.3], [-0.5, 0.8], [0.7, 0.7]])
    obs = jnp.concatenate([targets, jnp.ones((3, 1))], axis=1)
    planner = jax.jit(functools.partial(plan, step=tracking_step, value=zeros, policy=lazy_policy, gamma=GAMMA,
                                        config=CONFIG))
    warm = policy_warm_start(obs, lazy_policy, CONFIG.horizon)
    plans = planner(obs, warm, jax.random.PRNGKey(0))
    assert plans.shape == (3, CONFIG.horizon, 2)
    for i in range(3):  # the best return is 0: one call closes most of the proposal's gap to it
        proposal_return = sequence_return(tracking_step, obs[i], warm[i])
        assert sequence_return(tracking_step, obs[i], plans[i]) > 0.15 * proposal_return
    # Receding horizon: warm-started from its own shifted plan, the planner homes in on each state's optimum.
    again = planner(obs, shift_plan(plans), jax.random.PRNGKey(1))
    np.testing.assert_allclose(again[:, 0], targets, atol=0.1)
    np.testing.assert_array_equal(planner(obs, warm, jax.random.PRNGKey(0)), plans)  # deterministic per key


def test_planner_avoids_predicted_termination():
    """+1 per step alive and V = 10, but a[0] > 0 terminates: the planner must keep a[0] <= 0, although the
    proposal policy pushes a[0] to +0.5 and terminating steps still earn their reward."""
    def step(obs, actions, key):
        return obs, jnp.ones(obs.shape[0]), (actions[:, 0] > 0).astype(jnp.float32), jnp.zeros(obs.shape[0])

    def pushy_policy(obs):
        return jnp.full((obs.shape[0], 2), 0.5), jnp.zeros((obs.shape[0], 2))

    # MPPI learns to avoid the termination only once one sampled sequence survives all H steps: from the pushy
    # warm start (mean 0.5, std 0.5), CONFIG's 128 samples often draw none for some start state, and the elites then
    # all terminate at the last step and reinforce it. With 1024 samples one survives for every state, so the
    # assertion does not depend on the key.
    config = dataclasses.replace(CONFIG, num_samples=1024)
    obs = jnp.zeros((4, 3))
    warm = policy_warm_start(obs, pushy_policy, config.horizon)
    plans = plan(obs, warm, jax.random.PRNGKey(0), step, lambda o: jnp.full(o.shape[0], 10.0), pushy_policy,
                 GAMMA, config)
    assert bool(jnp.all(plans[:, :, 0] <= 0.0))


def test_uncertainty_penalty_steers_the_plan():
    """No reward; U = |a_0 - 0.5|. Only with the penalty does the plan go to a_0 = 0.5."""
    def step(obs, actions, key):
        return obs, jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0]), jnp.abs(actions[:, 0] - 0.5)

    obs = jnp.zeros((2, 3))
    warm = policy_warm_start(obs, lazy_policy, CONFIG.horizon)
    penalised = PlannerConfig(**{**CONFIG.__dict__, "uncertainty_penalty": 10.0})
    plans = plan(obs, warm, jax.random.PRNGKey(0), step, zeros, lazy_policy, GAMMA, penalised)
    assert float(jnp.abs(plans[:, 0, 0] - 0.5).max()) < 0.1


def test_greedy_q_picks_the_best_sampled_action():
    target = jnp.array([0.4, -0.4])
    q = lambda obs, actions: -((actions - target) ** 2).sum(-1)
    obs = jnp.zeros((5, 3))
    actions = greedy_q_action(obs, jax.random.PRNGKey(0), q, lazy_policy, num_samples=256, noise=0.5)
    assert actions.shape == (5, 2)
    assert bool(jnp.all(q(obs, actions) > q(obs, jnp.zeros((5, 2)))))
    assert float(jnp.abs(actions - target).max()) < 0.15


def test_planner_config_is_validated():
    with pytest.raises(ValueError, match="num_elites"):
        PlannerConfig(num_samples=8, num_elites=16)
