"""DWM-MPC: differentiable world models (diffusion, MeanFlow, reward) and the inference-time policy optimiser."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipdrl.algos import dwm_models, dwm_mpc
from ipdrl.data.dataset import Dataset
from ipdrl.planning import policy_ascent
from ipdrl.planning.policy_ascent import AscentConfig
from ipdrl.runs import Run
from ipdrl.training import fit
from ipdrl.world_models import common, diffusion, generative, meanflow, reward


def toy_dataset(n: int = 3000, noise: float = 0.05, seed: int = 0) -> Dataset:
    """2-D ``s' = s + a + noise``, reward ``s_0 + 2 a_1``; 30 episodes so whole episodes can be held out."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[99::100] = True
    return Dataset(obs, act, (obs[:, 0] + 2 * act[:, 1]).astype(np.float32),
                   (obs + act + noise * rng.normal(size=(n, 2))).astype(np.float32),
                   np.zeros(n, bool), timeouts, name="toy")


def trained(kind, config, dataset, steps: int):
    return common.model_of(fit(generative.make_learner(kind, config, dataset), steps, seed=0, log_every=steps))


# ---- world models -----------------------------------------------------------------------------------------
def test_diffusion_sampler_is_differentiable_through_the_whole_chain():
    config = diffusion.Config(hidden_dims=(16, 16), denoising_steps=4)
    net = generative.network(config, 2)
    stats = generative.transition_stats(toy_dataset(200))
    obs, noise = jnp.array([0.2, -0.4]), jax.random.normal(jax.random.PRNGKey(1), diffusion.noise_shape(config, 2))
    with jax.enable_x64(True):
        # Random weights scaled up so that every reverse step depends visibly on the action.
        params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1, 1)), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
        model = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), {"net": params, "stats": stats})
        model["net"] = jax.tree_util.tree_map(lambda x: 3.0 * x, model["net"])

        @jax.jit
        def next_obs(act, noise):
            return diffusion.sample(config, model, obs.astype(jnp.float64), act, noise.astype(jnp.float64))

        act, h = jnp.array([0.3, 0.1], jnp.float64), 1e-5
        jacobian = jax.jit(jax.jacfwd(next_obs))(act, noise)
        finite = jnp.stack([(next_obs(act + h * e, noise) - next_obs(act - h * e, noise)) / (2 * h) for e in jnp.eye(2)], 1)
        np.testing.assert_allclose(jacobian, finite, rtol=1e-5, atol=1e-8)
        assert jnp.abs(jacobian).min() > 1e-3
        # Fixed noise makes the sampler a function; other noise gives another sample.
        np.testing.assert_array_equal(next_obs(act, noise), next_obs(act, noise))
        assert not jnp.allclose(next_obs(act, noise), next_obs(act, -noise))


def test_meanflow_target_matches_finite_difference_time_derivative():
    config = meanflow.Config(hidden_dims=(16, 16))
    net = generative.network(config, 3)
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    with jax.enable_x64(True):
        z, v, obs = (jax.random.normal(k, (4, 3), jnp.float64) for k in keys[:3])
        act = jax.random.normal(keys[3], (4, 2), jnp.float64)
        r, t = jnp.array([0.1, 0.2, 0.5, 0.0]), jnp.array([0.3, 0.9, 0.5, 1.0])
        params = jax.tree_util.tree_map(lambda x: 30.0 * x.astype(jnp.float64), net.init(keys[4], z, jnp.zeros((4, 2)), obs, act))
        u, du_dt = jax.jit(meanflow.velocity_and_time_derivative, static_argnums=0)(net, params, z, r, t, v, obs, act)
        h = 1e-6
        along = jax.jit(lambda s: meanflow.average_velocity(net, params, z + s * v, r, t + s, obs, act))
        np.testing.assert_allclose(u, along(0.0))
        np.testing.assert_allclose(du_dt, (along(h) - along(-h)) / (2 * h), rtol=1e-5, atol=1e-8)
        assert jnp.abs(du_dt).max() > 1e-3


def test_meanflow_one_step_sample_fits_a_toy_transition():
    dataset = toy_dataset()
    train, heldout = common.holdout_split(dataset, 0.2, seed=0)
    config = meanflow.Config(hidden_dims=(64, 64), learning_rate=1e-3, batch_size=128)
    model = trained(meanflow.MODEL, config, train, 1000)
    metrics = generative.heldout_metrics(meanflow.MODEL, config, model, heldout, jax.random.PRNGKey(1))
    assert metrics["next_state_mse"] < 0.03 < metrics["copy_baseline_mse"] / 5
    obs, act = jnp.array([[0.3, -0.2]]), jnp.array([[0.5, 0.1]])
    noise = jax.random.normal(jax.random.PRNGKey(2), (500, 1, 2))
    samples = meanflow.sample(config, common.member(model, 0), obs, act, noise)
    np.testing.assert_allclose(samples.mean(0), [0.8, -0.1], atol=0.1)


def test_reward_model_fits_a_linear_reward_in_critic_units(tmp_path):
    train, heldout = common.holdout_split(toy_dataset(), 0.2, seed=0)
    config = reward.Config(hidden_dims=(32, 32), learning_rate=3e-3)
    model = common.model_of(fit(reward.make_learner(config, train, 2.0, 1.0), 600, seed=0, log_every=300))
    metrics = reward.heldout_metrics(config, model, heldout)
    assert metrics["reward_mse"] < 0.02 * metrics["reward_variance"]
    prediction = reward.predict(config, common.member(model, 0), jnp.array([0.5, 0.0]), jnp.array([0.0, -0.25]))
    np.testing.assert_allclose(prediction, 2.0 * (0.5 - 0.5) + 1.0, atol=0.15)
    reward.save(tmp_path / "reward_model", config, model, metrics)
    loaded_config, loaded, info = reward.load(tmp_path / "reward_model")
    assert loaded_config == config and info == json.loads(json.dumps(metrics))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(loaded)))


# ---- the inference-time optimiser on an analytic toy ------------------------------------------------------
def toy_imagination(spread_per_action: float = 0.0, noise_scale: float = 0.0) -> policy_ascent.Imagination:
    """1-D ``s' = s + a``, reward ``-(s + a)^2``, terminal value ``-s^2``: the optimal action is ``a = -s``.

    With ``spread_per_action`` a second member predicts ``s + (1 + k) a``: disagreement grows with |a|;
    ``noise_scale`` adds that much of the particle's noise to s'.
    """
    def transition(frozen, obs, action, noise):
        obs = obs + noise_scale * noise
        return jnp.stack([obs + action, obs + (1.0 + spread_per_action) * action])
    return policy_ascent.Imagination(
        policy=lambda frozen, actor, obs: jnp.tanh(actor["w"] * obs + actor["b"]),
        reward=lambda frozen, obs, action: -((obs + action) ** 2).sum(-1),
        transition=transition,
        terminal_value=lambda frozen, obs, action: -(obs**2).sum(-1),
        noise_shape=(1,),
        discount=0.9,
    )


def toy_config(**changes) -> AscentConfig:
    return AscentConfig(**{"horizon": 3, "particles": 4, "inner_steps": 1, **changes})


PRETRAINED = {"w": jnp.zeros(1), "b": jnp.zeros(1)}
TOY_PARAMS = {"actor": PRETRAINED, "frozen": {}, "lr": jnp.asarray(0.05)}


@pytest.mark.parametrize("limit", [0.3, 0.6])  # particles terminate at steps (0, 0, 0, 1) / (1, never, 1, never)
def test_objective_equals_particle_by_particle_rollouts(limit):
    imagination = toy_imagination(spread_per_action=0.5, noise_scale=0.3)._replace(
        done=lambda next_obs: (jnp.abs(next_obs[..., 0]) > limit).astype(jnp.float32))
    config = toy_config(particles=4, disagreement_penalty=0.1)
    actor, obs = {"w": jnp.array([-0.7]), "b": jnp.array([0.2])}, jnp.array([0.5])
    noise = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 1))
    returns, spreads = [], []
    for m in range(4):  # particle m follows member m mod 2; rewards and the value stop after a termination
        state, alive, total, spread = obs, 1.0, 0.0, 0.0
        for j in range(3):
            action = imagination.policy({}, actor, state)
            candidates = imagination.transition({}, state, action, noise[j, m])
            total += 0.9**j * alive * imagination.reward({}, state, action)
            spread += 0.9**j * alive * candidates.var(0).sum()
            state = candidates[m % 2]
            alive *= 1.0 - imagination.done(state)
        returns.append(total + 0.9**3 * alive * imagination.terminal_value({}, state, imagination.policy({}, actor, state)))
        spreads.append(spread)
    assert len({float(r) for r in returns}) > 1  # the particles differ
    expected = np.mean(returns) - 0.1 * np.mean(spreads)
    objective = policy_ascent.planning_objective(imagination, config, actor, {}, actor, obs, noise)
    np.testing.assert_allclose(objective, expected, rtol=1e-5)


def test_adaptation_increases_the_objective_and_finds_the_known_optimum():
    imagination, config, obs = toy_imagination(), toy_config(), jnp.array([0.5])
    noise = jnp.zeros((3, 4, 1))
    objective = lambda actor: policy_ascent.planning_objective(imagination, config, actor, {}, PRETRAINED, obs, noise)
    key = jax.random.PRNGKey(0)
    one_step = policy_ascent.adapt(imagination, config, {}, PRETRAINED, PRETRAINED, jnp.asarray(0.05), obs, key)
    assert objective(one_step) > objective(PRETRAINED)
    many = dataclasses.replace(config, inner_steps=300)
    converged = policy_ascent.adapt(imagination, many, {}, PRETRAINED, PRETRAINED, jnp.asarray(0.05), obs, key)
    np.testing.assert_allclose(imagination.policy({}, converged, obs), -obs, atol=0.02)
    with_adam = dataclasses.replace(many, optimizer="adam", inner_steps=1000)
    adam = policy_ascent.adapt(imagination, with_adam, {}, PRETRAINED, PRETRAINED, jnp.asarray(0.01), obs, key)
    np.testing.assert_allclose(imagination.policy({}, adam, obs), -obs, atol=0.02)


def test_carry_mode_keeps_adapted_weights_and_reset_mode_restarts_every_step():
    obs, keys = jnp.array([[0.5], [-0.3]]), jax.random.split(jax.random.PRNGKey(0), 2)
    rewards = jnp.zeros(2)
    for mode in ("carry", "reset"):
        policy = policy_ascent.make_policy(toy_imagination(), toy_config(carry=mode))
        start = policy.init_carry(TOY_PARAMS, 2)  # episode start: every env holds the pretrained weights
        assert all(np.array_equal(leaf, np.zeros((2, 1))) for leaf in jax.tree_util.tree_leaves(start))
        carry, first = policy.act(TOY_PARAMS, start, obs, rewards, keys[0])
        _, from_carry = policy.act(TOY_PARAMS, carry, obs, rewards, keys[1])
        _, from_start = policy.act(TOY_PARAMS, start, obs, rewards, keys[1])
        if mode == "carry":
            assert not np.allclose(carry["w"], 0.0) and not np.allclose(carry["w"][0], carry["w"][1])
            # The toy ignores noise, so two carried steps equal one step of two ascent updates.
            twice = toy_config(inner_steps=2)
            expected = [toy_imagination().policy({}, policy_ascent.adapt(toy_imagination(), twice, {}, PRETRAINED,
                        PRETRAINED, TOY_PARAMS["lr"], o, keys[1]), o) for o in obs]
            np.testing.assert_allclose(from_carry, jnp.stack(expected), rtol=1e-5)
            assert not np.allclose(from_carry, from_start)
        else:
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(carry),
                                                            jax.tree_util.tree_leaves(start)))
            np.testing.assert_array_equal(from_carry, from_start)


def test_proximity_and_disagreement_penalties_restrain_adaptation():
    obs, key = jnp.array([0.8]), jax.random.PRNGKey(0)

    def adapted(imagination, **changes):
        config = toy_config(inner_steps=50, **changes)
        return policy_ascent.adapt(imagination, config, {}, PRETRAINED, PRETRAINED, jnp.asarray(0.05), obs, key)

    free, near = adapted(toy_imagination()), adapted(toy_imagination(), proximity_penalty=1.0)
    assert 0 < policy_ascent.squared_distance(near, PRETRAINED) < 0.5 * policy_ascent.squared_distance(free, PRETRAINED)
    risky = toy_imagination(spread_per_action=1.0)
    plain, cautious = adapted(risky), adapted(risky, disagreement_penalty=2.0)
    action = lambda actor: float(jnp.abs(risky.policy({}, actor, obs))[0])
    assert action(cautious) < action(plain)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="model.members"):
        dwm_mpc.Config(planner=AscentConfig(disagreement_penalty=1.0))
    with pytest.raises(ValueError, match="tuning.seed-offset"):
        dwm_mpc.Config(tune=True, tuning=dict(seed_offset=3), eval_episodes=10)
    with pytest.raises(ValueError, match="meanflow"):
        dwm_mpc.Config(model=dict(kind="transformer"))
    with pytest.raises(ValueError, match="planner.carry"):
        AscentConfig(carry="sometimes")


# ---- the whole pipeline ------------------------------------------------------------------------------------
def test_pipeline_tiny_on_hopper_end_to_end(tiny_hopper, tmp_path):
    from ipdrl.presets import make_config

    config = make_config(dwm_mpc, "hopper-medium-replay", "tiny", rebrac=dict(steps=100, batch_size=64),
                         model=dict(steps=100), reward=dict(steps=100), eval_episodes=2, tune=True,
                         tuning=dict(lrs=(1e-3,), episodes=2), terminations=True, progress=False,
                         run_dir=str(tmp_path / "run"))
    run = Run.create(tmp_path / "run", {"algo": "dwm-mpc", **dataclasses.asdict(config)})
    results = dwm_mpc.train(config, tiny_hopper, run, "Hopper-v5")
    run.save_results(results)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for part in ("base", "adapted"):
        assert np.isfinite(saved[part]["normalized_mean"]) and saved[part]["seconds_per_episode"] > 0
        assert saved[part]["eval_seed"] == config.eval_seed and len(saved[part]["returns"]) == 2
    reported = saved[saved["reported"]]
    assert saved["normalized_mean"] == reported["normalized_mean"]
    # The evidence rows read each episode's score from the top level, as for every other algorithm.
    assert saved["normalized_scores"] == reported["normalized_scores"] and len(saved["normalized_scores"]) == 2
    assert "tuning env seeds 110000..110001" in saved["adaptation"]["selected_by"]
    assert saved["world_models"]["transition"]["next_state_mse"] > 0
    assert saved["world_models"]["reward"]["reward_mse"] > 0
    for name in ("meanflow_model.json", "reward_model.json", "dwm_tuning.json", "rebrac_checkpoint.json"):
        assert (tmp_path / "run" / name).exists()
    # A second pass finds the saved models (the run is resumable) instead of training them again.
    rows = len(run.metrics())
    models = dwm_models.load_world_models(config, tiny_hopper, run, (1.0, 0.0))
    assert len(run.metrics()) == rows
    assert models.info["transition"]["next_state_mse"] == saved["world_models"]["transition"]["next_state_mse"]
    with pytest.raises(ValueError, match="units"):  # a reward model is only reusable with its critic's scale
        dwm_models.load_world_models(config, tiny_hopper, run, (100.0, 0.0))
