"""AntMaze: D4RL's observation layout and scoring on gymnasium-robotics' mazes, the waypoint planner, the
generator (controller reuse, determinism, resume) and tiny runs of each algorithm on generated data."""

from __future__ import annotations

import numpy as np
import pytest

from ipdrl import antmaze, envs, pipelines, presets
from ipdrl.algos import get_algorithm
from ipdrl.data.d4rl import read_d4rl
from ipdrl.data.generator import GenerateConfig, generate
from ipdrl.data.loading import describe, format_description

UMAZE = "AntMaze_UMaze-v5"
TINY = dict(controller_steps=300, start_steps=200, eval_every=10**9, checkpoint_every=100, hidden_dims=(32, 32),
            batch_size=32, progress=False)


def test_antmaze_observes_d4rls_29_numbers_and_scores_reaching_the_goal():
    env = envs.make_env(UMAZE)
    layout = antmaze.maze(UMAZE)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (29,) and env.spec.max_episode_steps == 700
    assert np.abs(obs[:2] - layout.cell_xy(layout.start)).max() <= 1.0  # the start cell, with the env's jitter
    goal = env.unwrapped.goal
    np.testing.assert_array_equal(goal, layout.cell_xy(layout.goal))  # fixed, where the data is rewarded
    env.reset(seed=1)
    np.testing.assert_array_equal(env.unwrapped.goal, goal)
    obs, reward, terminated, *_ = env.step(np.zeros(8))
    assert (reward, terminated) == (0.0, False)
    qpos, qvel = env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy()
    qpos[:2] = goal + 0.3  # within 0.5 of the goal: success, the episode ends
    env.unwrapped.ant_env.set_state(qpos, qvel)
    obs, reward, terminated, *_ = env.step(np.zeros(8))
    assert (reward, terminated) == (1.0, True)
    assert envs.reference_for("antmaze-umaze").normalize(1.0) == 100.0
    assert not bool(envs.termination_fn("antmaze-umaze")(np.zeros((3, 29))).any())


def test_waypoints_follow_a_shortest_path_through_the_medium_maze():
    layout = antmaze.maze("AntMaze_Medium_Diverse_GR-v5")
    distance = layout.steps_to(layout.goal)
    cell, path = layout.start, [layout.start]
    goal_xy = layout.cell_xy(layout.goal)
    while cell != layout.goal:
        cell = layout.cell_of(layout.waypoint(layout.cell_xy(cell), goal_xy, distance))
        assert layout.grid[cell[0]][cell[1]] == 0
        path.append(cell)
    assert len(path) - 1 == distance[layout.start] == 10
    np.testing.assert_allclose(layout.waypoint(goal_xy + 0.7, goal_xy, distance), goal_xy)  # in the goal's cell


def test_the_controller_sees_its_target_in_its_own_heading_and_no_farther_than_the_horizon():
    facing_y = np.zeros(27)
    facing_y[1], facing_y[4] = np.cos(np.pi / 4), np.sin(np.pi / 4)  # quaternion of a quarter turn about z
    ahead = antmaze.controller_observation(facing_y, np.zeros(2), np.array([0.0, 5.0]))
    np.testing.assert_allclose(ahead[-2:], [antmaze.TARGET_HORIZON, 0.0], atol=1e-6)
    left = antmaze.controller_observation(facing_y, np.array([1.0, 1.0]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(left[-2:], [0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(left[:27], facing_y.astype(np.float32))


def test_the_controllers_evaluation_counts_the_goals_it_reaches(monkeypatch):
    import jax.numpy as jnp

    from ipdrl.evaluation import evaluate, stateless_policy

    # every goal where the ant stands: each step reaches one, and its replacement is the next step's
    monkeypatch.setattr(antmaze.AntGoalEnv, "_new_goal", lambda self, xy: setattr(self, "goal", np.array(xy[:2])))
    policy = stateless_policy(lambda params, obs, key: jnp.zeros((obs.shape[0], 8)))
    result = evaluate(policy, {}, antmaze.ANT_GOAL_ENV, episodes=2, seed=0, max_steps=20, info_totals=("reached",))
    assert result["lengths"] == [20, 20] and result["info_totals"] == {"reached": 20.0}
    monkeypatch.undo()
    far = evaluate(policy, {}, antmaze.ANT_GOAL_ENV, episodes=2, seed=0, max_steps=20, info_totals=("reached",))
    assert far["info_totals"] == {"reached": 0.0}  # goals 1-6 units away: standing still reaches none


def test_the_controller_tasks_reward_weights_are_settings():
    try:
        antmaze.register_controller_task(ctrl_cost_weight=0.0, healthy_reward=0.0, progress_weight=2.0)
        env = envs.make_env(antmaze.ANT_GOAL_ENV)
        env.reset(seed=0)
        before = np.linalg.norm(env.unwrapped.goal - env.unwrapped.data.qpos[:2])
        _, reward, terminated, _, _ = env.step(np.full(8, 0.5, np.float32))
        after = np.linalg.norm(env.unwrapped.goal - env.unwrapped.data.qpos[:2])
        assert not terminated
        np.testing.assert_allclose(reward, 2.0 * (before - after) / env.unwrapped.ant.dt, rtol=1e-6)  # progress only
    finally:
        antmaze.register_controller_task()  # Ant-v5's weights again for the other tests
    env = envs.make_env(antmaze.ANT_GOAL_ENV)
    assert (env.unwrapped.ant._ctrl_cost_weight, env.unwrapped.ant._healthy_reward) == (0.5, 1.0)
    assert env.unwrapped.progress_weight == 10.0


def test_antmaze_level_and_env_must_go_together(tmp_path):
    with pytest.raises(ValueError, match="AntMaze environments take the levels"):
        generate(GenerateConfig(env=UMAZE, level="medium", output=str(tmp_path / "x.hdf5")))
    with pytest.raises(ValueError, match="need an AntMaze"):
        generate(GenerateConfig(env="Hopper-v5", level="diverse", output=str(tmp_path / "x.hdf5")))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A tiny umaze-diverse dataset (two 1000-step episodes), made in two resumed parts, and its work dirs."""
    root = tmp_path_factory.mktemp("antmaze")
    config = GenerateConfig(env=UMAZE, level="diverse", transitions=1000, parallel_episodes=1,
                            output=str(root / "antmaze-umaze-diverse.hdf5"), controller_dir=str(root / "controller"),
                            **TINY)
    generate(config)
    path = generate(GenerateConfig(**{**config.__dict__, "transitions": 2000, "resume": True}))
    return root, config, read_d4rl(path)


def test_generated_antmaze_data_is_d4rls_layout(generated):
    _, config, data = generated
    assert data.obs_dim == 29 and data.act_dim == 8 and data.size == 2000
    assert not data.terminals.any() and np.flatnonzero(data.timeouts).tolist() == [999, 1999]
    assert set(np.unique(data.rewards)) <= {0.0, 1.0}
    assert data.metadata["env"] == UMAZE and data.metadata["generator"]["transitions"] == 2000
    assert set(data.infos) == {"goal", "qpos", "qvel"}
    np.testing.assert_allclose(data.observations[:, :2], data.infos["qpos"][:, :2], atol=1e-6)
    eval_goal = antmaze.maze(UMAZE).cell_xy(antmaze.maze(UMAZE).goal)
    reached = np.linalg.norm(data.next_observations[:, :2] - eval_goal, axis=1) <= antmaze.SUCCESS_RADIUS
    np.testing.assert_array_equal(data.rewards.astype(bool), reached)
    # The data's returns count steps spent at the goal, not successes: no normalised score is made from them.
    facts = describe(data)
    assert "normalized_mean" not in facts and "only evaluation returns" in format_description(facts)


def test_the_same_seed_makes_the_same_antmaze_data_resumed_or_not(generated, tmp_path):
    root, config, resumed = generated
    fresh = read_d4rl(generate(GenerateConfig(**{**config.__dict__, "transitions": 2000,
                                                  "output": str(tmp_path / "fresh.hdf5")})))
    assert (root / "controller" / "checkpoint.npz").exists()  # the controller was reused, not retrained
    with pytest.raises(FileExistsError, match="holds an earlier collection: pass --resume"):
        generate(config)  # the same output without --resume: refused, nothing collected is thrown away
    np.testing.assert_array_equal(fresh.observations, resumed.observations)
    np.testing.assert_array_equal(fresh.actions, resumed.actions)


def test_a_saved_controller_makes_the_same_data_without_its_training(generated, tmp_path):
    root, config, resumed = generated
    saved = root / "controller" / "controller.msgpack"
    again = read_d4rl(generate(GenerateConfig(**{**config.__dict__, "transitions": 2000, "controller": str(saved),
                                                  "controller_dir": str(tmp_path / "unused"),
                                                  "output": str(tmp_path / "from-file.hdf5")})))
    assert not (tmp_path / "unused").exists()  # nothing trained
    np.testing.assert_array_equal(again.actions, resumed.actions)
    assert again.metadata["generator"]["controller_info"]["settings"]["controller_progress_weight"] == 10.0
    with pytest.raises(FileNotFoundError, match="no controller at"):
        generate(GenerateConfig(**{**config.__dict__, "controller": str(tmp_path / "missing.msgpack")}))
    (tmp_path / "bad.msgpack").write_bytes(b"not msgpack")
    with pytest.raises(ValueError, match="is not a controller file"):
        generate(GenerateConfig(**{**config.__dict__, "controller": str(tmp_path / "bad.msgpack"),
                                   "output": str(tmp_path / "bad.hdf5")}))


def test_antmaze_presets_are_the_papers():
    umaze = "antmaze-umaze"
    iql = presets.make_config(get_algorithm("iql"), umaze, "cpu")
    assert (iql.expectile, iql.temperature, iql.reward_mode, iql.eval_episodes) == (0.9, 10.0, "antmaze", 100)
    assert iql.steps == 400_000  # AntMaze's own cpu budget (its values propagate slowly)
    ipd = presets.make_config(get_algorithm("ipd"), umaze, "cpu")
    assert (ipd.iql.steps, ipd.iql.expectile) == (400_000, 0.9)
    assert (ipd.steps, ipd.warmup_steps, ipd.return_scale) == (100_000, 10_000, 100.0)  # stage 4: DT's AntMaze budget
    rebrac = presets.make_config(get_algorithm("rebrac"), "antmaze-medium-diverse", "cpu")
    assert (rebrac.discount, rebrac.actor_bc, rebrac.critic_bc, rebrac.critic_lr) == (0.999, 0.001, 0.0, 5e-5)
    assert rebrac.steps == 400_000  # its own AntMaze budget, not the Gym one
    assert presets.make_config(get_algorithm("dwm-mpc"), umaze, "cpu").rebrac.steps == 400_000  # DWM-MPC's base
    dt = presets.make_config(get_algorithm("dt"), umaze, "cpu")
    assert (dt.target_return, dt.return_scale, dt.steps, dt.warmup_steps) == (1.0, 1.0, 100_000, 10_000)
    tiny = presets.make_config(get_algorithm("iql"), umaze, "tiny")
    assert (tiny.eval_episodes, tiny.steps) == (2, 200)  # tiny stays quick
    assert presets.make_config(get_algorithm("dt"), umaze, "tiny").steps == 200


@pytest.mark.parametrize("algo", ["iql", "rebrac", "dt", "ipd"])
def test_tiny_runs_train_and_score_on_generated_antmaze_data(algo, generated, tmp_path):
    root, *_ = generated
    dataset = str(root / "antmaze-umaze-diverse.hdf5")
    extra = {"cache_dir": str(tmp_path / "cache")} if algo == "ipd" else {}
    config = presets.make_config(get_algorithm(algo), dataset, "tiny", eval_episodes=1, run_dir=str(tmp_path / "run"),
                                 progress=False, **extra)
    results = pipelines.train(algo, config)
    assert results["env"] == UMAZE and results["normalized_mean"] in (0.0, 100.0)
