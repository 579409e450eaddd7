"""Does D4RL's kitchen data correspond to gymnasium-robotics' FrankaKitchen-v1? Replay it and see.

    python benchmarks/kitchen_replay.py [--dataset ../shared/fixtures/d4rl/kitchen-complete-v0.hdf5]
                                        [--out docs/evidence/kitchen_replay.json]

One step from every recorded state (joint velocities from finite differences of the positions): the robot's mean
absolute joint error after the step, against how far the joints move per step. Then, for every episode: FrankaKitchen-v1 (observation noise off) is put in the episode's first state (qpos from the
observation's first 30 numbers; velocities zero, which the data does not store), the dataset's actions are replayed
open loop, and each step's observation (D4RL layout, ``ipdrl.robotics.KitchenObservation``) is compared with the
dataset's next observation: mean absolute error of the robot's joints and of the objects, per step and after 10,
50 and all steps. Tasks: the count FrankaKitchen-v1 has completed at each step against the data's reward (D4RL
kitchen's reward is the running count of completed tasks), and which tasks completed by the episode's end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ipdrl import robotics  # noqa: E402
from ipdrl.data.d4rl import read_d4rl  # noqa: E402


def restore(kitchen, qpos: np.ndarray, qvel: np.ndarray) -> None:
    """Put the simulator in (qpos, qvel). The robot's control is its last *observed* joint positions plus the
    commanded velocity times dt (D4RL's rule), so the last observation is set to the new state too."""
    kitchen.robot_env.set_state(np.asarray(qpos, np.float64), qvel)
    kitchen.robot_env._last_robot_qpos = np.asarray(qpos[:9], np.float64).copy()


def step_from_record(env, dataset, t: int) -> np.ndarray:
    """The observation after one step of the dataset's action ``t`` from its recorded state ``t`` (joint velocities
    by finite differences of the recorded positions)."""
    kitchen = env.unwrapped
    velocity = np.zeros(kitchen.model.nv)
    velocity[:9] = (dataset.observations[t, :9] - dataset.observations[t - 1, :9]) / kitchen.robot_env.dt
    restore(kitchen, dataset.observations[t, :30], velocity)
    return env.step(dataset.actions[t])[0]


def replay(dataset, episode: int) -> dict:
    env = robotics.make(robotics.KITCHEN_ENV, robot_noise_ratio=0.0, object_noise_ratio=0.0)
    env.reset(seed=episode)
    start, end = int(dataset.episode_starts[episode]), int(dataset.episode_ends[episode])
    kitchen = env.unwrapped
    restore(kitchen, dataset.observations[start, :30], np.zeros(kitchen.model.nv))
    robot_error, object_error, counts = [], [], []
    for t in range(start, end):
        obs, reward, terminated, truncated, info = env.step(dataset.actions[t])
        target = dataset.next_observations[t]
        robot_error.append(float(np.abs(obs[:9] - target[:9]).mean()))
        object_error.append(float(np.abs(obs[9:30] - target[9:30]).mean()))
        counts.append(len(info["episode_task_completions"]))
        if terminated or truncated:
            break
    completed = list(info["episode_task_completions"])
    # One step from each recorded state (velocities from finite differences of the positions): the dynamics alone,
    # without the drift that open-loop replay accumulates.
    one_step = []
    for t in range(start + 1, end - 1):
        env.reset(seed=episode)
        obs = step_from_record(env, dataset, t)
        one_step.append(float(np.abs(obs[:9] - dataset.next_observations[t, :9]).mean()))
    env.close()
    at = lambda errors, k: float(np.mean(errors[:k]))
    data_counts = dataset.rewards[start:end][:len(counts)]
    return {
        "episode": episode, "steps": end - start, "replayed": len(counts),
        "robot_error_first_10": at(robot_error, 10), "robot_error_first_50": at(robot_error, 50),
        "robot_error_all": at(robot_error, len(robot_error)),
        "robot_error_one_step": float(np.mean(one_step)),
        "robot_motion_per_step": float(np.abs(np.diff(dataset.observations[start:end, :9], axis=0)).mean()),
        "object_error_first_10": at(object_error, 10), "object_error_all": at(object_error, len(object_error)),
        "tasks_completed_env": counts[-1], "tasks_completed_data": int(dataset.rewards[end - 1]),
        "task_count_agreement": float(np.mean(np.asarray(counts) == data_counts)),
        "completed": completed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "fixtures" / "d4rl" / "kitchen-complete-v0.hdf5"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dataset = read_d4rl(args.dataset)
    episodes = [replay(dataset, e) for e in range(dataset.num_episodes)]
    mean = lambda key: float(np.mean([e[key] for e in episodes]))
    summary = {key: mean(key) for key in ("robot_error_one_step", "robot_motion_per_step", "robot_error_first_10", "robot_error_first_50", "robot_error_all",
                                          "object_error_first_10", "object_error_all", "tasks_completed_env",
                                          "task_count_agreement")}
    summary["episodes_completing_all_4"] = sum(e["tasks_completed_env"] == 4 for e in episodes)
    print(json.dumps(summary, indent=2))
    for e in episodes:
        print(f"episode {e['episode']:2d}: robot |err| {e['robot_error_first_10']:.4f} (10 steps) "
              f"{e['robot_error_all']:.4f} (all), objects {e['object_error_all']:.4f}, tasks env "
              f"{e['tasks_completed_env']} / data {e['tasks_completed_data']}: {', '.join(e['completed'])}")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python benchmarks/kitchen_replay.py", "dataset": args.dataset,
                                              "summary": summary, "episodes": episodes}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
