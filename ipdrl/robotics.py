"""gymnasium-robotics environments for ipdrl: registration, a compatibility shim, and FrankaKitchen-v1 seen as D4RL's
kitchen.

**The shim.** gymnasium-robotics 1.4.2's ``utils.mujoco_utils.get_joint_qpos`` / ``get_joint_qvel`` compare
``model.jnt_type[i]`` (a numpy integer) with ``mujoco.mjtJoint`` members. From mujoco 3.12 those members no longer
compare equal to plain integers, so every joint falls through to ``assert joint_type in (HINGE, SLIDE)`` and
FrankaKitchen-v1 fails on creation with a bare ``AssertionError``. :func:`register` replaces the two functions with
versions that convert the type first (``mujoco.mjtJoint(int(jnt_type))``); nothing else changes.

**Kitchen.** D4RL's kitchen observation is 60 numbers: the robot's joint positions (9), the objects' positions (21:
the simulator's qpos 9-29) and a goal block (30: the target qpos of the episode's tasks at their qpos indices, zero
elsewhere), constant over the dataset. FrankaKitchen-v1 observes a dict (robot qpos and qvel, object qpos and qvel,
goals); :class:`KitchenObservation` gives the D4RL layout. Both use joint-velocity control in [-1, 1] at 12.5 Hz
(frame skip 40). ``benchmarks/kitchen_replay.py`` replays the dataset's actions from its states to check that they
correspond.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import gymnasium as gym
import numpy as np

KITCHEN_ENV = "FrankaKitchen-v1"
KITCHEN_TASKS = ("microwave", "kettle", "light switch", "slide cabinet")  # D4RL's kitchen-complete
KITCHEN_EPISODE_STEPS = 280  # D4RL's limit


def _joint_size(model, joint_id: int, free: int, ball: int) -> int:
    import mujoco

    joint_type = mujoco.mjtJoint(int(model.jnt_type[joint_id]))
    if joint_type == mujoco.mjtJoint.mjJNT_FREE:
        return free
    if joint_type == mujoco.mjtJoint.mjJNT_BALL:
        return ball
    return 1


def get_joint_qpos(model, data, name):
    """gymnasium-robotics' ``get_joint_qpos`` with the joint type converted to ``mujoco.mjtJoint`` first."""
    import mujoco

    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    assert joint_id != -1, f"Joint with name '{name}' is not part of the model!"
    start = model.jnt_qposadr[joint_id]
    return data.qpos[start:start + _joint_size(model, joint_id, free=7, ball=4)].copy()


def get_joint_qvel(model, data, name):
    """gymnasium-robotics' ``get_joint_qvel`` with the joint type converted to ``mujoco.mjtJoint`` first."""
    import mujoco

    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    assert joint_id != -1, f"Joint with name '{name}' is not part of the model!"
    start = model.jnt_dofadr[joint_id]
    return data.qvel[start:start + _joint_size(model, joint_id, free=6, ball=4)].copy()


def register() -> None:
    """Register gymnasium-robotics' environments (once) and apply the joint-type shim."""
    try:
        # Its import prints a notice about Adroit reward versions to stderr, whichever environment is used.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import gymnasium_robotics
            from gymnasium_robotics.utils import mujoco_utils
    except ImportError:
        raise ValueError("this environment comes from gymnasium-robotics: pip install gymnasium-robotics==1.4.2 "
                         "(a dependency of ipdrl; reinstall ipdrl).") from None
    if getattr(mujoco_utils, "_ipdrl_shim", False):
        return
    gym.register_envs(gymnasium_robotics)
    mujoco_utils.get_joint_qpos = get_joint_qpos
    mujoco_utils.get_joint_qvel = get_joint_qvel
    mujoco_utils._ipdrl_shim = True


def kitchen_goal(tasks=KITCHEN_TASKS) -> np.ndarray:
    """D4RL's 30-number goal block: the tasks' target qpos at their qpos indices, zero elsewhere."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    goal = np.zeros(30)
    for task in tasks:
        goal[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
    return goal


def make(env_id: str, **kwargs):
    """A gymnasium-robotics environment; FrankaKitchen-v1 with D4RL's tasks, episode limit and observation layout."""
    register()
    if env_id != KITCHEN_ENV:
        return gym.make(env_id, **kwargs)
    kwargs.setdefault("tasks_to_complete", list(KITCHEN_TASKS))
    kwargs.setdefault("max_episode_steps", KITCHEN_EPISODE_STEPS)
    return KitchenObservation(gym.make(env_id, **kwargs))


def kitchen_rewards(dataset):
    """D4RL kitchen stores the running count of completed tasks as each step's reward; FrankaKitchen-v1 rewards each
    completion once. The dataset with the environment's rewards (the count's increments: an episode's return is the
    number of tasks it completes), so that what is learned is what the evaluation scores."""
    rewards = dataset.rewards.astype(np.float64)
    previous = np.concatenate([[0.0], rewards[:-1]])
    previous[dataset.episode_starts] = 0.0
    return dataset.replace(rewards=np.maximum(rewards - previous, 0.0).astype(np.float32))


def kitchen_observation(observation: dict, goal: np.ndarray) -> np.ndarray:
    """FrankaKitchen-v1's dict observation in D4RL's layout: robot qpos (9), object qpos (21), goal (30)."""
    flat = observation["observation"]
    return np.concatenate([flat[:9], flat[18:39], goal]).astype(np.float32)


class KitchenObservation(gym.ObservationWrapper):
    """FrankaKitchen-v1 with D4RL kitchen's 60-number observations."""

    def __init__(self, env):
        super().__init__(env)
        self.goal = kitchen_goal(env.unwrapped.goal.keys())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (60,), np.float32)

    def observation(self, observation):
        return kitchen_observation(observation, self.goal)
