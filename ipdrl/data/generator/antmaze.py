"""``ipdrl data generate --env AntMaze_* --level umaze | diverse | play``: D4RL's antmaze recipe (Fu et al. 2020).

1. **A goal-reaching controller**: SAC (the generator's agent) on ``AntGoal-v0`` (:mod:`ipdrl.antmaze`): Ant-v5 on
   open ground reaching goals 1-6 units away from goal-relative inputs. Trained once per seed and checkpointed in
   ``controller_dir``; every maze and level reuses it, and a killed training resumes. Its policy alone is saved
   there too (``controller.msgpack``), and ``--controller FILE`` steers with such a file without any training.
2. **A waypoint planner** over the maze's cells (:meth:`ipdrl.antmaze.Maze.waypoint`): the controller is steered to
   the next cell on a shortest path to its commanded goal, and to the goal itself in the goal's cell.
3. **Commanded goals** per level: ``umaze`` from the maze's evaluation start to its evaluation goal; ``diverse`` from
   a random free cell to random free cells; ``play`` between hand-picked cells (``Maze.play_cells``). A reached goal
   (within 0.5) is replaced by the next one; the fixed ``umaze`` goal stays.
4. **Episodes of 1000 steps** ending in a time-out, actions with Gaussian noise (``action_noise``), and D4RL's
   reward: 1 within 0.5 of the maze's *evaluation* goal (not the commanded one), so the data is an offline RL task.

Episode ``k`` draws its start, goals and noise from ``default_rng([seed, k])`` and resets the env with seed
``seed * 1_000_003 + k``; episodes are collected ``parallel_episodes`` at a time in lockstep, and the collected
groups are checkpointed, so the same seed gives the same dataset, resumed or not.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ipdrl import antmaze
from ipdrl.data.d4rl import write_d4rl
from ipdrl.data.dataset import Dataset
from ipdrl.data.generator.config import GenerateConfig
from ipdrl.data.generator.sac import SACConfig, SACTrainer, deterministic_action
from ipdrl.storage import atomic_write_bytes

EPISODE_STEPS = 1000
CONTROLLER_CADENCE = dict(eval_every=20_000, checkpoint_every=20_000, eval_episodes=5)
COLUMNS = ("observations", "actions", "rewards", "next_observations", "goals", "qpos", "qvel")


def dataset_stem(config: GenerateConfig, layout: antmaze.Maze) -> str:
    """D4RL's names: antmaze-umaze, antmaze-umaze-diverse, antmaze-medium-diverse, antmaze-large-play..."""
    return f"antmaze-{layout.name}" + ("" if config.level == "umaze" else f"-{config.level}")


CONTROLLER_FILE = "controller.msgpack"


def train_controller(config: GenerateConfig, output: Path):
    """The goal-reaching controller (SAC on AntGoal-v0), trained or resumed in its shared directory, where its policy
    is also saved alone (:data:`CONTROLLER_FILE`); returns (SAC settings, actor parameters, info)."""
    work_dir = Path(config.controller_dir or output.parent / f"antmaze-controller-s{config.seed}.work")
    # Only SAC's own settings, with a fixed evaluation and checkpoint cadence, so that every maze and level (with
    # whatever other flags) finds and shares the same controller.
    shared = ("seed", "start_steps", "updates_every", "hidden_dims", "batch_size", "progress", "controller_ctrl_cost",
              "controller_healthy_reward", "controller_progress_weight")
    antmaze.register_controller_task(ctrl_cost_weight=config.controller_ctrl_cost,
                                     healthy_reward=config.controller_healthy_reward,
                                     progress_weight=config.controller_progress_weight)
    controller = GenerateConfig(env=antmaze.ANT_GOAL_ENV, level="expert", expert_steps=config.controller_steps,
                                work_dir=str(work_dir), resume=True, **CONTROLLER_CADENCE,
                                **{k: getattr(config, k) for k in shared})
    trainer = SACTrainer(controller, work_dir, score_info="reached")
    outcome = trainer.train(stop_at_threshold=False, total_steps=config.controller_steps, threshold=None)
    steps = outcome.evaluations[-1][0] if outcome.evaluations else config.controller_steps
    info = {"steps": steps, "evaluations": outcome.evaluations, "hidden_dims": trainer.sac.hidden_dims,
            "settings": {k: getattr(config, k) for k in shared if k != "progress"}}
    save_controller(work_dir / CONTROLLER_FILE, outcome.state["actor"], info)
    return trainer.sac, outcome.state["actor"], info


def save_controller(path: Path, actor: dict, info: dict) -> None:
    """The controller's policy alone (a few hundred kB, unlike its replay buffer): what ``--controller`` loads."""
    payload = {"actor": jax.device_get(actor), "info": json.dumps(info)}
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(payload))


def load_controller(path: str | Path) -> tuple[SACConfig, dict, dict]:
    """(SAC network settings, actor parameters, info) of a controller saved by :func:`save_controller`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no controller at {path}: pass the {CONTROLLER_FILE} that a controller's training "
                                f"wrote into its directory (--controller-dir), or leave out --controller to train one.")
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
        info = json.loads(payload["info"])
        hidden_dims = info["hidden_dims"]
    except Exception as err:  # msgpack and json raise several types for a file that is not one of ours
        raise ValueError(f"{path} is not a controller file written by `ipdrl data generate` ({err!r}).") from None
    return SACConfig(hidden_dims=tuple(hidden_dims)), payload["actor"], info


class _Commander:
    """One episode's commanded goals: its start cell and, each time one is reached, the next goal."""

    def __init__(self, level: str, layout: antmaze.Maze, rng: np.random.Generator):
        self.level, self.layout, self.rng = level, layout, rng
        self.cells = {"umaze": [layout.start], "diverse": layout.free_cells, "play": list(layout.play_cells)}[level]
        self.start = layout.start if level == "umaze" else self.cells[rng.integers(len(self.cells))]
        self.goal_cell, self.goal_xy, self.distance = None, None, None
        self.next_goal(self.start)

    def next_goal(self, current_cell) -> None:
        if self.level == "umaze":
            cell = self.layout.goal
        else:
            choices = [c for c in self.cells if c != tuple(current_cell)]
            cell = choices[self.rng.integers(len(choices))]
        if cell != self.goal_cell:
            self.distance = self.layout.steps_to(cell)
        self.goal_cell = cell
        # goals jittered within their cell like gymnasium-robotics' own (a quarter cell each way)
        self.goal_xy = self.layout.cell_xy(cell) + self.rng.uniform(-0.25, 0.25, 2) * antmaze.CELL_SIZE


def _collect_group(config: GenerateConfig, layout: antmaze.Maze, act, first_episode: int,
                   count: int) -> dict[str, np.ndarray]:
    """``count`` episodes from ``first_episode`` on, in lockstep; arrays of shape (episodes, 1000, ...)."""
    eval_goal = layout.cell_xy(layout.goal)
    rngs = [np.random.default_rng([config.seed, first_episode + k]) for k in range(count)]
    commanders = [_Commander(config.level, layout, rng) for rng in rngs]
    env_list = [antmaze.make_maze(config.env, max_episode_steps=EPISODE_STEPS) for _ in range(count)]
    obs = np.stack([env.reset(seed=config.seed * 1_000_003 + first_episode + k,
                              options={"reset_cell": np.array(c.start), "goal_cell": np.array(layout.goal)})[0]
                    for k, (env, c) in enumerate(zip(env_list, commanders))])
    record = {k: [] for k in COLUMNS}
    for _ in range(EPISODE_STEPS):
        targets = [layout.waypoint(o[:2], c.goal_xy, c.distance) for o, c in zip(obs, commanders)]
        inputs = np.stack([antmaze.controller_observation(o[2:], o[:2], t) for o, t in zip(obs, targets)])
        noise = np.stack([rng.normal(0.0, config.action_noise, env_list[0].action_space.shape) for rng in rngs])
        actions = np.clip(act(inputs) + noise, -1.0, 1.0).astype(np.float32)
        record["qpos"].append(np.stack([env.unwrapped.data.qpos.copy() for env in env_list]))
        record["qvel"].append(np.stack([env.unwrapped.data.qvel.copy() for env in env_list]))
        record["goals"].append(np.stack([c.goal_xy for c in commanders]))
        next_obs = np.stack([env.step(a)[0] for env, a in zip(env_list, actions)])
        for o, c in zip(next_obs, commanders):
            if np.linalg.norm(o[:2] - c.goal_xy) <= antmaze.SUCCESS_RADIUS:
                c.next_goal(layout.cell_of(o[:2]))
        record["observations"].append(obs)
        record["actions"].append(actions)
        record["rewards"].append((np.linalg.norm(next_obs[:, :2] - eval_goal, axis=1) <= antmaze.SUCCESS_RADIUS))
        record["next_observations"].append(next_obs)
        obs = next_obs
    for env in env_list:
        env.close()
    return {k: np.stack(v, axis=1).astype(np.float32) for k, v in record.items()}


def generate_antmaze(config: GenerateConfig) -> Path:
    """Make the AntMaze dataset ``config`` describes and write it (D4RL hdf5, atomically); returns its path."""
    import gymnasium as gym
    import mujoco

    layout = antmaze.maze(config.env)
    stem = dataset_stem(config, layout)
    output = Path(config.output or f"{stem}.hdf5")
    work_dir = Path(config.work_dir) if config.work_dir else output.with_suffix(".work")
    started = time.perf_counter()
    if config.controller:
        sac, actor, controller = load_controller(config.controller)
    else:
        sac, actor, controller = train_controller(config, output)
    probe = antmaze.make_maze(config.env)
    act_dim = probe.action_space.shape[0]
    probe.close()
    policy = jax.jit(lambda obs: deterministic_action(sac, act_dim, actor, obs))
    act = lambda inputs: np.asarray(policy(jnp.asarray(inputs)))

    episodes = -(-config.transitions // EPISODE_STEPS)
    if not config.resume and any((work_dir / "collection").glob("*.npz")):
        raise FileExistsError(f"{work_dir} holds an earlier collection: pass --resume to continue it, or another "
                              f"--work-dir (or delete this one) to start over.")
    groups, collected = _load_collection(work_dir, config)
    bar = tqdm(total=episodes * EPISODE_STEPS, initial=collected * EPISODE_STEPS, desc=f"collect {stem}",
               unit="step", disable=not config.progress)
    while collected < episodes:
        group = _collect_group(config, layout, act, collected, min(config.parallel_episodes, episodes - collected))
        _save_group(work_dir, config, group, collected)
        groups.append(group)
        collected += len(group["rewards"])
        bar.update(len(group["rewards"]) * EPISODE_STEPS)
    bar.close()

    arrays = {k: np.concatenate([g[k] for g in groups]).reshape(-1, *groups[0][k].shape[2:]) for k in COLUMNS}
    n = len(arrays["rewards"])
    timeouts = np.zeros(n, bool)
    timeouts[EPISODE_STEPS - 1::EPISODE_STEPS] = True
    metadata = {
        "env": config.env,
        "generator": {**dataclasses.asdict(config), "recipe": f"antmaze {config.level}: SAC goal-reaching controller "
                      f"steered by waypoints over the maze's cells, 1000-step episodes, reward 1 within 0.5 of the "
                      f"evaluation goal", "transitions": n, "episodes": collected,
                      "controller_file": config.controller, "controller_info": controller,
                      "evaluation_goal_reached_share": float(arrays["rewards"].reshape(collected, -1).max(1).mean()),
                      "seconds": round(time.perf_counter() - started, 1),
                      "versions": {"gymnasium": gym.__version__, "mujoco": mujoco.__version__, "jax": jax.__version__}},
    }
    dataset = Dataset(observations=arrays["observations"], actions=arrays["actions"], rewards=arrays["rewards"],
                      next_observations=arrays["next_observations"], terminals=np.zeros(n, bool), timeouts=timeouts,
                      infos={"goal": arrays["goals"], "qpos": arrays["qpos"], "qvel": arrays["qvel"]},
                      metadata=metadata, name=stem)
    write_d4rl(dataset, output)
    return output


# ---- collection checkpoints: the groups collected so far, with the settings that made them ----------------------
_SETTINGS = ("env", "level", "seed", "controller", "controller_steps", "controller_ctrl_cost",
             "controller_healthy_reward", "controller_progress_weight", "action_noise", "parallel_episodes",
             "hidden_dims")


def _settings(config: GenerateConfig) -> dict:
    return json.loads(json.dumps({k: getattr(config, k) for k in _SETTINGS}))


def _group_path(work_dir: Path, first_episode: int) -> Path:
    return work_dir / "collection" / f"episodes-{first_episode:07d}.npz"


def _save_group(work_dir: Path, config: GenerateConfig, group: dict, first_episode: int) -> None:
    """One group of episodes in a file of its own, with the settings that made it: each group is written once."""
    path = _group_path(work_dir, first_episode)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    meta = json.dumps({"first_episode": first_episode, "settings": _settings(config)}).encode()
    np.savez(buffer, _meta=np.frombuffer(meta, np.uint8), **group)
    atomic_write_bytes(path, buffer.getvalue())


def _load_collection(work_dir: Path, config: GenerateConfig) -> tuple[list[dict], int]:
    """The groups collected so far (contiguous from episode 0) and their episode count."""
    groups, collected = [], 0
    while (path := _group_path(work_dir, collected)).exists():
        with np.load(path) as saved:
            settings = json.loads(saved["_meta"].tobytes())["settings"]
            if settings != _settings(config):
                changed = sorted(k for k in _SETTINGS if settings.get(k) != _settings(config)[k])
                raise ValueError(f"cannot resume from {work_dir}: settings differ in {changed}. Use the same "
                                 f"settings, or delete the work directory to start over.")
            groups.append({k: saved[k] for k in COLUMNS})
        collected += len(groups[-1]["rewards"])
    return groups, collected
