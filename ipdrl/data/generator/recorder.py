"""Stepping one environment and recording D4RL transitions, with the simulator state to continue mid-episode."""

from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ipdrl import envs
from ipdrl.data.dataset import Dataset


class Recorder:
    """Steps one env, records D4RL transitions (with qpos/qvel of the acting state) and auto-resets.

    Episode ``k`` is reset with seed ``seed * 1_000_003 + k`` so episodes do not depend on earlier history.
    Columns live in preallocated arrays (doubling capacity) so replay sampling is a plain gather.
    """

    def __init__(self, env_id: str, seed: int, episode: int = 0):
        self.env = envs.make_env(env_id)
        self.seed, self.episode, self.size = seed, episode, 0
        self.bounds = envs.ActionBounds.of(self.env)
        data = getattr(self.env.unwrapped, "data", None)
        obs_shape, act_shape = self.env.observation_space.shape, self.env.action_space.shape
        shapes = {"observations": (obs_shape, np.float32), "actions": (act_shape, np.float32),
                  "rewards": ((), np.float32), "next_observations": (obs_shape, np.float32),
                  "terminals": ((), bool), "timeouts": ((), bool)}
        if data is not None:  # MuJoCo: keep the simulator state so imagined rollouts can be replayed exactly
            shapes.update(qpos=(data.qpos.shape, np.float32), qvel=(data.qvel.shape, np.float32))
        self.arrays = {k: np.zeros((1024, *shape), dtype) for k, (shape, dtype) in shapes.items()}
        self._reset()

    def _reset(self) -> None:
        self.obs, _ = self.env.reset(seed=self.seed * 1_000_003 + self.episode)

    def step(self, action: np.ndarray) -> bool:
        """Take the policy's ``action`` (in [-1, 1]); the env's units are recorded, as in D4RL and Minari.
        Returns True when an episode ended."""
        if self.size == len(self.arrays["rewards"]):
            self.arrays = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self.arrays.items()}
        env_action = self.bounds.to_env(action)
        row = {"observations": self.obs, "actions": env_action}
        if "qpos" in self.arrays:
            row.update(qpos=self.env.unwrapped.data.qpos, qvel=self.env.unwrapped.data.qvel)
        next_obs, reward, terminated, truncated, _ = self.env.step(env_action)
        row.update(rewards=reward, next_observations=next_obs, terminals=terminated, timeouts=truncated)
        for key, value in row.items():
            self.arrays[key][self.size] = value
        self.size += 1
        self.obs = next_obs
        if terminated or truncated:
            self.episode += 1
            self._reset()
            return True
        return False

    def snapshot(self) -> dict | None:
        """The mid-episode state needed to continue exactly (MuJoCo envs), or None at an episode start."""
        if "qpos" not in self.arrays:
            return None
        data, task = self.env.unwrapped.data, getattr(self.env.unwrapped, "task_state", None)
        return {"qpos": data.qpos.tolist(), "qvel": data.qvel.tolist(), "obs": np.asarray(self.obs).tolist(),
                "elapsed": _time_limit(self.env)._elapsed_steps, "task": task() if task else None}

    def resume_from(self, snapshot: dict | None) -> None:
        if snapshot is None:
            return
        self.env.unwrapped.set_state(np.asarray(snapshot["qpos"]), np.asarray(snapshot["qvel"]))
        self.obs = np.asarray(snapshot["obs"])
        _time_limit(self.env)._elapsed_steps = snapshot["elapsed"]
        if snapshot.get("task") is not None:  # an env with state beyond the simulator's (AntGoal's goal)
            self.env.unwrapped.restore_task_state(snapshot["task"])

    def columns(self) -> dict[str, np.ndarray]:
        return {k: v[: self.size] for k, v in self.arrays.items()}

    def restore(self, columns: dict[str, np.ndarray]) -> None:
        self.arrays = {k: np.array(v) for k, v in columns.items()}
        self.size = len(self.arrays["rewards"])
        if self.size == 0:
            self.arrays = {k: np.zeros((1024, *v.shape[1:]), v.dtype) for k, v in self.arrays.items()}

    def dataset(self, name: str, metadata: dict) -> Dataset:
        """The recorded transitions; an open last episode is closed as a timeout."""
        c = self.columns()
        timeouts = c["timeouts"].copy()
        timeouts[-1] |= not c["terminals"][-1]
        infos = {k: c[k] for k in ("qpos", "qvel") if k in c}
        return Dataset(observations=c["observations"], actions=c["actions"], rewards=c["rewards"],
                       next_observations=c["next_observations"], terminals=c["terminals"], timeouts=timeouts,
                       infos=infos, metadata=metadata, name=name)


def _time_limit(env):
    import gymnasium as gym

    while not isinstance(env, gym.wrappers.TimeLimit):
        env = env.env
    return env


def collect(env_id: str, steps: int, seed: int, act: Callable[[np.ndarray, int], np.ndarray], name: str,
            progress: bool) -> Dataset:
    """``steps`` transitions acting with ``act(obs, step)``."""
    recorder = Recorder(env_id, seed)
    for step in tqdm(range(steps), desc=f"collect {name}", unit="step", disable=not progress):
        recorder.step(act(recorder.obs, step))
    return recorder.dataset(name, {})
