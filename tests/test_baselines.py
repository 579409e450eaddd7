"""Baselines: BC, TD3+BC, ReBRAC (and IQL's presets) — end to end runs, learning checks, exact resume."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_dataset
from ipdrl.algos import bc, iql, rebrac, td3bc
from ipdrl.data.d4rl import write_d4rl
from ipdrl.data.dataset import Dataset, to_device
from ipdrl.pipelines import train
from ipdrl.presets import make_config
from ipdrl.runs import Run
from ipdrl.training import fit

MODULES = {"bc": bc, "iql": iql, "td3bc": td3bc, "rebrac": rebrac}


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))


@pytest.fixture(scope="module")
def hopper_file(tiny_hopper, tmp_path_factory) -> str:
    return str(write_d4rl(tiny_hopper, tmp_path_factory.mktemp("data") / "hopper-medium-replay.hdf5"))


def tiny_config(algo: str, hopper_file: str, run_dir, **changes):
    return make_config(MODULES[algo], hopper_file, "tiny", run_dir=str(run_dir), progress=False, **changes)


@pytest.fixture(scope="module")
def rebrac_run(hopper_file, tmp_path_factory):
    """An uninterrupted tiny ReBRAC run: (its directory, its results)."""
    run = tmp_path_factory.mktemp("rebrac") / "run"
    return run, train("rebrac", tiny_config("rebrac", hopper_file, run))


# ---- end to end --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", sorted(MODULES))
def test_tiny_budget_trains_evaluates_and_writes_the_run(algo, hopper_file, tmp_path, request):
    config = tiny_config(algo, hopper_file, tmp_path / "run")
    assert config.hidden_dims == (32, 32) and config.steps == 200
    if algo == "rebrac":
        run, results = request.getfixturevalue("rebrac_run")
    else:
        run, results = tmp_path / "run", train(algo, config)

    saved = json.loads((run / "results.json").read_text())
    assert saved["checkpoint"] == "final" and np.isfinite(saved["normalized_mean"])
    assert saved["episodes"] == config.eval_episodes and results["algo"] == algo
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/actor_loss" in header
    rows = Run.open(run).metrics()
    assert [r["step"] for r in rows] == [50, 100, 150, 200]
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert (run / "learning_curve.png").stat().st_size > 0


def test_presets_pick_per_dataset_betas_and_iql_domains():
    hopper = make_config(rebrac, "hopper-medium-replay-v2", "paper")
    cheetah = make_config(rebrac, "halfcheetah-random", "cpu")
    assert (hopper.actor_bc, hopper.critic_bc, hopper.batch_size, hopper.steps) == (0.05, 0.5, 1024, 1_000_000)
    assert (cheetah.actor_bc, cheetah.critic_bc) == (0.001, 0.1)
    assert make_config(rebrac, "walker2d-random", "cpu").critic_bc == 0.0
    assert len(rebrac.PRESETS) == 2 + 15 + 6  # antmaze and its cpu length; 5 levels x 3 Gym tasks; 6 AntMaze datasets
    assert make_config(rebrac, "antmaze-umaze-diverse", "cpu").critic_bc == 0.001
    maze = make_config(iql, "antmaze-large-diverse-v2", "paper")
    assert (maze.expectile, maze.temperature, maze.reward_mode) == (0.9, 10.0, "antmaze")
    pen = make_config(iql, "pen-human-v1", "cpu")
    assert (pen.temperature, pen.dropout, pen.reward_mode) == (0.5, 0.1, "none")
    td3 = make_config(td3bc, "hopper-medium-replay", "paper")
    assert (td3.alpha, td3.batch_size, td3.hidden_dims, td3.critic_bc, td3.critic_layer_norm) == (
        2.5, 256, (256, 256), 0.0, False)


def test_budget_keyed_presets_apply_at_their_budget_only(monkeypatch):
    monkeypatch.setitem(iql.PRESETS, "antmaze@cpu", dict(steps=123_000))
    monkeypatch.setitem(iql.PRESETS, "antmaze-umaze@cpu", dict(eval_every=5000))
    umaze, medium = make_config(iql, "antmaze-umaze", "cpu"), make_config(iql, "antmaze-medium-diverse", "cpu")
    assert (umaze.steps, umaze.eval_every, umaze.expectile) == (123_000, 5000, 0.9)  # family, then dataset, merge
    assert (medium.steps, medium.eval_every) == (123_000, 0)
    assert make_config(iql, "antmaze-umaze", "tiny").steps == 200  # tiny stays tiny
    assert make_config(iql, "antmaze-umaze", "cpu", steps=7).steps == 7  # flags still win
    assert make_config(iql, "hopper-medium-replay", "cpu").steps == iql.BUDGETS["cpu"]["steps"]


# ---- learning -----------------------------------------------------------------------------------------------
def test_bc_fits_a_linear_policy():
    dataset = synthetic_dataset(episodes=8, length=100, seed=1)
    weights = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32) * 0.2
    dataset = dataset.replace(actions=np.clip(dataset.observations @ weights, -1, 1))
    config = bc.Config(hidden_dims=(32, 32), learning_rate=3e-3, batch_size=128)
    learner = bc.make_learner(config, dataset)
    state = fit(learner, 300, seed=0, log_every=150)
    pred = learner.policy.act(learner.policy_params(state), (), jnp.asarray(dataset.observations), None, None)[1]
    mse = float(((np.asarray(pred) - dataset.actions) ** 2).mean())
    assert mse < 0.05 * dataset.actions.var()


def test_bc_top_fraction_keeps_the_best_episodes():
    dataset = synthetic_dataset(episodes=10, length=5)
    kept = bc.top_episodes(dataset, 0.3)
    best = np.sort(dataset.episode_returns())[-3:]
    assert kept.num_episodes == 3 and np.allclose(np.sort(kept.episode_returns()), best)
    with pytest.raises(ValueError, match="top-fraction"):
        bc.Config(top_fraction=0.0)


def bandit(n: int = 2048, seed: int = 0) -> Dataset:
    """One-step episodes (terminal after each action) with reward sum(a) + s_0: Q(s, a) = r exactly."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    return Dataset(observations=obs, actions=actions, rewards=actions.sum(1) + obs[:, 0],
                   next_observations=rng.normal(size=(n, 11)).astype(np.float32), terminals=np.ones(n, bool),
                   timeouts=np.zeros(n, bool), name="bandit")


def test_rebrac_critic_learns_bandit_rewards_and_actor_climbs_q():
    dataset = bandit()
    config = rebrac.Config(hidden_dims=(32, 32), batch_size=256)
    learner = rebrac.make_learner(config, dataset)
    state = fit(learner, 1000, seed=0, log_every=500)
    q = rebrac.q_min(config, state, jnp.asarray(dataset.observations), jnp.asarray(dataset.actions))
    assert float(((np.asarray(q) - dataset.rewards) ** 2).mean()) < 0.05 * dataset.rewards.var()
    pi = rebrac.actor_apply(config, state["actor"], jnp.asarray(dataset.observations[:256]))
    assert float(pi.mean()) > 0.6  # reward sum(a) is maximised at a = 1; the data's actions average 0


def one_update(learner, state, seed: int):
    batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(seed))
    return jax.jit(learner.update)(state, batch, jax.random.PRNGKey(seed + 100))


def test_actor_and_targets_update_every_second_step():
    config = rebrac.Config(hidden_dims=(32, 32), batch_size=64)
    learner = rebrac.make_learner(config, synthetic_dataset())
    state0 = learner.init(jax.random.PRNGKey(0))
    state1, metrics1 = one_update(learner, state0, 1)
    state2, metrics2 = one_update(learner, state1, 2)
    state3, _ = one_update(learner, state2, 3)
    assert not same(state0["critic"], state1["critic"])
    for frozen in ("actor", "actor_target", "critic_target", "actor_opt"):
        assert same(state0[frozen], state1[frozen]), frozen  # step 1 (odd): critic only
        assert not same(state1[frozen], state2[frozen]), frozen  # step 2: actor and both targets
        assert same(state2[frozen], state3[frozen]), frozen
    assert float(metrics1["train/actor_loss"]) == 0.0 and float(metrics2["train/actor_loss"]) != 0.0
    assert int(state3["step"]) == 3


def test_td3bc_actor_loss_is_the_papers():
    config = td3bc.Config(hidden_dims=(32, 32), batch_size=64)
    dataset = synthetic_dataset()
    learner = td3bc.make_learner(config, dataset)
    state, _ = one_update(learner, learner.init(jax.random.PRNGKey(0)), 1)
    batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(2))
    after, metrics = jax.jit(learner.update)(state, batch, jax.random.PRNGKey(102))

    # Recompute -(alpha / mean|Q1|) Q1(s, pi(s)) + MSE(pi(s), a) with the critic after this step's critic update.
    actor, critic = rebrac.networks(config, dataset.act_dim)
    obs = (batch["observations"] - state["obs_stats"]["mean"]) / state["obs_stats"]["std"]
    pi = actor.apply(state["actor"], obs)
    q1 = critic.apply(after["critic"], obs, pi)[0]
    expected = -(2.5 / jnp.abs(q1).mean()) * q1.mean() + ((pi - batch["actions"]) ** 2).mean()
    assert np.isclose(float(metrics["train/actor_loss"]) / config.policy_freq, float(expected), rtol=1e-5)


def test_next_actions_stay_inside_episodes():
    dataset = synthetic_dataset(episodes=3, length=4)
    following = rebrac.next_actions(dataset)
    assert np.array_equal(following[:3], dataset.actions[1:4])
    assert np.array_equal(following[3], dataset.actions[3])  # last step of episode 0 keeps its own action
    assert np.array_equal(following[4], dataset.actions[5]) and np.array_equal(following[-1], dataset.actions[-1])


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="bc-reduction"):
        rebrac.make_learner(rebrac.Config(bc_reduction="max"), synthetic_dataset())
    with pytest.raises(ValueError, match="actor-q"):
        rebrac.make_learner(rebrac.Config(actor_q="mean"), synthetic_dataset())


# ---- resume ---------------------------------------------------------------------------------------------------
def test_interrupted_rebrac_run_resumes_to_identical_parameters(rebrac_run, hopper_file, tmp_path, monkeypatch):
    full_run, full_results = rebrac_run
    save = Run.save_checkpoint

    def save_then_die(self, state, step, name="checkpoint"):
        save(self, state, step, name)
        if step == 100:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train("rebrac", tiny_config("rebrac", hopper_file, tmp_path / "cut"))
    monkeypatch.setattr(Run, "save_checkpoint", save)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step"] == 100
    resumed = train("rebrac", tiny_config("rebrac", hopper_file, tmp_path / "cut", resume=True))

    assert (full_run / "checkpoint.msgpack").read_bytes() == (tmp_path / "cut" / "checkpoint.msgpack").read_bytes()
    assert resumed["returns"] == full_results["returns"]


def test_a_planning_value_trains_beside_iql_without_changing_it():
    dataset = synthetic_dataset(episodes=6, length=20)
    plain, high = (iql.Config(hidden_dims=(32, 32), batch_size=64, steps=200, planning_expectile=e) for e in (None, 0.9))
    states = [fit(iql.make_learner(config, dataset), 200, seed=0, log_every=100) for config in (plain, high)]
    for key in ("critic", "value", "actor"):
        assert same(states[0][key], states[1][key]), key  # IQL itself is untouched
    obs = jnp.asarray(dataset.observations)
    assert float(iql.planning_value(high, states[1], obs).mean()) > float(iql.value(high, states[1], obs).mean())
    assert np.array_equal(iql.planning_value(plain, states[0], obs), iql.value(plain, states[0], obs))


def test_iql_can_act_with_the_best_rated_of_its_policy_samples():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = iql.Config(hidden_dims=(32, 32), batch_size=64, steps=50)
    state = fit(iql.make_learner(config, dataset), 50, seed=0, log_every=50)
    obs, key = jnp.asarray(dataset.observations[:4]), jax.random.PRNGKey(3)
    samples = iql.policy_samples(config, 2, 6, state, obs, key)
    assert samples.shape == (6, 4, 2) and float(jnp.abs(samples).max()) <= 1.0
    assert not np.allclose(samples[0], samples[1])  # draws, not the mean six times
    _, action = iql.sample_choice_policy(config, 2, 6).act(state, (), obs, jnp.zeros(4), key)
    q = np.asarray(jax.vmap(lambda a: iql.q_value(config, state, obs, a))(samples))  # (samples, envs)
    np.testing.assert_allclose(action, np.asarray(samples)[q.argmax(0), np.arange(4)])


@pytest.mark.parametrize("algo", ["iql", "rebrac", "dt"])
def test_walker2d_presets_train_and_score_in_walker2d(algo, tiny_walker2d, tmp_path):
    from ipdrl.algos import get_algorithm

    path = write_d4rl(tiny_walker2d, tmp_path / "walker2d-medium-replay.hdf5")
    config = make_config(get_algorithm(algo), str(path), "tiny", eval_episodes=1, run_dir=str(tmp_path / "run"),
                         progress=False)
    if algo == "rebrac":
        assert (config.actor_bc, config.critic_bc) == (0.05, 0.01)  # the ReBRAC paper's walker2d-medium-replay
    if algo == "dt":
        assert config.target_return == 5000.0
    results = train(algo, config)
    assert results["env"] == "Walker2d-v5" and np.isfinite(results["normalized_mean"])
