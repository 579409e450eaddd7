"""Kitchen: score the same final checkpoints from FrankaKitchen-v1's reset and from the data's own first states.

    python benchmarks/kitchen_starts.py [--runs runs/sweeps/kitchen] [--episodes 38]
                                        [--out docs/evidence/kitchen_starts.json]

kitchen-complete-v0 holds 19 demonstrations, each starting from its own robot pose; FrankaKitchen-v1 (like D4RL's
kitchen) resets the robot to one fixed pose. Every finished run under ``--runs`` (``<method>/<label>-s<seed>``, as
``ipdrl sweep benchmarks/sweeps/kitchen.toml`` makes them) is evaluated twice with its own algorithm's evaluation:
from the environment's reset, and from the data's first states (episode ``i`` of the evaluation starts where
demonstration ``(eval_seed + i) mod 19`` started: the simulator put in that state, velocities zero, as
``benchmarks/kitchen_replay.py`` does). It also measures where the data's robot and the simulator's differ
(``model_facts``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ipdrl import robotics  # noqa: E402
from ipdrl.algos import as_algorithm  # noqa: E402
from ipdrl.data.loading import load_dataset  # noqa: E402
from ipdrl.pipelines import prepare, saved_config  # noqa: E402
from ipdrl.runs import Run  # noqa: E402
from kitchen_replay import restore, step_from_record  # noqa: E402

DATA_STARTS = "ipdrl-benchmarks/FrankaKitchenDataStarts-v1"


class DataStarts(gym.Wrapper):
    """FrankaKitchen-v1 (D4RL layout) whose reset puts the simulator in a demonstration's first state."""

    def __init__(self, env, starts: np.ndarray):
        super().__init__(env)
        self.starts = starts

    def reset(self, *, seed=None, options=None):
        _, info = self.env.reset(seed=seed, options=options)
        start = self.starts[(seed or 0) % len(self.starts)]
        kitchen = self.env.unwrapped
        restore(kitchen, start[:30], np.zeros(kitchen.model.nv))
        return start.astype(np.float32).copy(), info


def make_data_starts(dataset: str):
    data = load_dataset(dataset)
    return DataStarts(robotics.make(robotics.KITCHEN_ENV), data.observations[data.episode_starts])


def model_facts(dataset) -> dict:
    """Where the data's robot and FrankaKitchen-v1's differ: the reset pose against the demonstrations' first poses
    (Euclidean over the 9 joints, radians), the fingers' positions against the simulator's position bounds, and per
    joint, how well one simulated step from a recorded state (velocities by finite differences) reproduces the
    recorded motion (correlation, and the least-squares factor from simulated to recorded motion)."""
    firsts = dataset.observations[dataset.episode_starts, :9].astype(np.float64)
    env = robotics.make(robotics.KITCHEN_ENV, robot_noise_ratio=0.0, object_noise_ratio=0.0)
    reset = env.reset(seed=0)[0][:9].astype(np.float64)
    between = np.linalg.norm(firsts[:, None] - firsts[None], axis=-1)
    np.fill_diagonal(between, np.inf)
    kitchen = env.unwrapped
    low, high = kitchen.robot_env.robot_pos_bound[7:9].T
    fingers = dataset.observations[:, 7:9]
    steps = np.setdiff1d(np.arange(1, len(dataset.observations) - 1), dataset.episode_starts)[::7]
    simulated = np.array([step_from_record(env, dataset, t)[:9] for t in steps]) - dataset.observations[steps, :9]
    recorded = dataset.next_observations[steps, :9] - dataset.observations[steps, :9]
    env.close()
    return {"reset_to_nearest_demo_start": float(np.linalg.norm(firsts - reset, axis=1).min()),
            "demo_start_to_nearest_other_median": float(np.median(between.min(1))),
            "finger_bounds_env": [low.tolist(), high.tolist()],
            "finger_range_data": [fingers.min(0).tolist(), fingers.max(0).tolist()],
            "finger_steps_outside_env_bounds": float(np.mean((fingers < low) | (fingers > high))),
            "one_step_motion_correlation": [float(np.corrcoef(simulated[:, j], recorded[:, j])[0, 1])
                                            for j in range(9)],
            "one_step_motion_factor": ((simulated * recorded).sum(0) / (simulated ** 2).sum(0)).tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/sweeps/kitchen")
    parser.add_argument("--episodes", type=int, default=38, help="evaluation episodes per run and start (38: each "
                        "demonstration's start twice)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    finished = sorted(p.parent for p in Path(args.runs).glob("*/*/results.json"))
    if not finished:
        raise SystemExit(f"no finished runs under {args.runs}: run `ipdrl sweep benchmarks/sweeps/kitchen.toml`.")
    rows, facts = [], None
    for run_dir in finished:
        run = Run.open(run_dir)
        algorithm = as_algorithm(run.config["algo"])
        config = saved_config(algorithm, run)
        config.eval_episodes = args.episodes
        env_id, dataset = prepare(config, load_dataset(config.dataset))
        if facts is None:
            facts = model_facts(dataset)
            gym.register(DATA_STARTS, entry_point=make_data_starts, kwargs={"dataset": config.dataset},
                         max_episode_steps=robotics.KITCHEN_EPISODE_STEPS)
        row = {"method": run_dir.parent.name, "seed": config.seed, "run_dir": str(run_dir)}
        for start, env in (("reset", env_id), ("data_starts", DATA_STARTS)):
            result = algorithm.evaluate(config, dataset, run, env)
            row[f"tasks_{start}"] = float(np.mean(result["returns"]))
        rows.append(row)
        print(f"{row['method']:>6} seed {row['seed']}: tasks completed from the reset {row['tasks_reset']:.2f}, "
              f"from the data's starts {row['tasks_data_starts']:.2f}", flush=True)
    print(json.dumps(facts, indent=1))
    methods = sorted({r["method"] for r in rows})
    summary = {m: {key: float(np.mean([r[key] for r in rows if r["method"] == m]))
                   for key in ("tasks_reset", "tasks_data_starts")} for m in methods}
    for method, values in summary.items():
        print(f"{method:>6}: mean tasks from the reset {values['tasks_reset']:.2f} (score "
              f"{25 * values['tasks_reset']:.1f}), from the data's starts {values['tasks_data_starts']:.2f} (score "
              f"{25 * values['tasks_data_starts']:.1f})")
    if args.out:
        command = "python benchmarks/kitchen_starts.py " + " ".join(sys.argv[1:])
        Path(args.out).write_text(json.dumps({"command": command.strip(), "episodes": args.episodes,
                                              "model": facts, "summary": summary, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
