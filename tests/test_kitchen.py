"""Kitchen: the gymnasium-robotics shim, D4RL kitchen's observation layout in FrankaKitchen-v1, and tiny runs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES

from ipdrl import envs, pipelines, presets, robotics
from ipdrl.algos import get_algorithm
from ipdrl.data.d4rl import read_d4rl

KITCHEN = FIXTURES / "d4rl" / "kitchen-complete-v0.hdf5"
needs_fixture = pytest.mark.skipif(not KITCHEN.exists(), reason=f"{KITCHEN} not present")


def test_the_shim_reads_joints_that_upstream_rejects_on_this_mujoco():
    import mujoco
    from gymnasium_robotics.utils import mujoco_utils

    robotics.register()
    env = robotics.make(robotics.KITCHEN_ENV)
    model, data = env.unwrapped.model, env.unwrapped.data
    name = "robot:panda0_joint1"
    assert robotics.get_joint_qpos(model, data, name).shape == (1,)
    assert mujoco_utils.get_joint_qpos is robotics.get_joint_qpos  # what the env itself calls
    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    upstream_fails = model.jnt_type[joint_id] not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)
    assert upstream_fails, "mujoco compares joint types with integers again: the shim may no longer be needed"


@needs_fixture
def test_kitchen_observations_are_d4rls_layout():
    data = read_d4rl(KITCHEN)
    env = envs.make_env("FrankaKitchen-v1")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (data.obs_dim,) == (60,) and env.spec.max_episode_steps == 280
    np.testing.assert_allclose(obs[30:], data.observations[0, 30:], atol=1e-6)  # the goal block
    np.testing.assert_allclose(obs[:9], data.observations[0, :9], atol=0.1)  # both start near the same pose
    assert envs.family_for(data.name).env_id == "FrankaKitchen-v1"


@needs_fixture
def test_kitchen_rewards_become_the_environments_completions():
    data = read_d4rl(KITCHEN)
    converted = robotics.kitchen_rewards(data)
    np.testing.assert_array_equal(converted.episode_returns(), np.full(data.num_episodes, 4.0))
    assert set(np.unique(converted.rewards)) <= {0.0, 1.0}


@needs_fixture
@pytest.mark.parametrize("algo", ["bc", "iql", "dt", "ipd"])
def test_tiny_kitchen_runs_train_and_score(algo, tmp_path):
    config = presets.make_config(get_algorithm(algo), str(KITCHEN), "tiny", eval_episodes=1, run_dir=str(tmp_path / "run"),
                                 progress=False, **({"cache_dir": str(tmp_path / "cache")} if algo == "ipd" else {}))
    if algo in ("bc", "iql"):
        assert config.dropout == 0.1  # the kitchen presets: 19 demonstrations are fitted too closely without it
    results = pipelines.train(algo, config)
    assert results["env"] == "FrankaKitchen-v1" and results["reference_table"] == envs.REFERENCE_TABLE
    assert results["normalized_mean"] == pytest.approx(25.0 * results["return_mean"])
