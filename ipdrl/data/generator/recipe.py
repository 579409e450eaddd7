"""``ipdrl data generate``: D4RL-style datasets on any Gymnasium Box environment, with the D4RL recipe.

- ``random``: uniformly random actions.
- ``medium``: train SAC until its deterministic evaluation return reaches ``threshold``, then collect
  ``transitions`` with that (stochastic) policy.
- ``medium-replay``: SAC's whole replay buffer up to the point it reached ``threshold``.
- ``expert``: train SAC for ``expert_steps``, then collect with it.
- ``medium-expert``: medium followed by expert.
- AntMaze (``--env AntMaze_*``): ``umaze``, ``diverse``, ``play`` (:mod:`ipdrl.data.generator.antmaze`).

SAC training checkpoints to ``work_dir`` at episode boundaries and ``--resume`` continues it; every random choice
is a pure function of the seed and a counter (episode resets are seeded by episode index, action noise by step),
so the same seed gives the same dataset, resumed or not. Collection re-runs deterministically from the saved policy.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from ipdrl import envs
from ipdrl.data.d4rl import write_d4rl
from ipdrl.data.dataset import Dataset, concatenate
from ipdrl.data.generator.antmaze import generate_antmaze
from ipdrl.data.generator.config import ANTMAZE_LEVELS, DEFAULT_THRESHOLDS, GenerateConfig
from ipdrl.data.generator.recorder import collect
from ipdrl.data.generator.sac import SACTrainer

# ---- the recipe ----------------------------------------------------------------------------------------------
def generate(config: GenerateConfig) -> Path:
    """Make the dataset ``config`` describes and write it (D4RL hdf5, atomically); returns its path."""
    import gymnasium as gym
    import mujoco

    maze_env, maze_level = config.env.startswith("AntMaze_"), config.level in ANTMAZE_LEVELS
    if maze_env or maze_level:
        if not (maze_env and maze_level):
            raise ValueError(f"--level {config.level} does not go with --env {config.env}: AntMaze environments take "
                             f"the levels {', '.join(ANTMAZE_LEVELS)}, and those levels need an AntMaze (e.g. --env "
                             f"AntMaze_UMaze-v5).")
        return generate_antmaze(config)
    probe = envs.make_env(config.env)
    if not (isinstance(probe.observation_space, gym.spaces.Box) and isinstance(probe.action_space, gym.spaces.Box)):
        raise ValueError(f"{config.env} has non-Box spaces; the generator needs Box observations and actions.")
    probe.close()
    family = envs.family_of(config.env)
    stem = f"{family.name if family else config.env.lower()}-{config.level}"
    output = Path(config.output or f"{stem}.hdf5")
    work_dir = Path(config.work_dir) if config.work_dir else output.with_suffix(".work")
    threshold = config.threshold if config.threshold is not None else DEFAULT_THRESHOLDS.get(config.env)
    if config.level in ("medium", "medium-replay", "medium-expert") and threshold is None:
        raise ValueError(f"no default medium threshold for {config.env}: pass --threshold (a deterministic "
                         f"evaluation return, about a third of an expert's).")
    metadata = {
        "env": config.env,
        "generator": {**dataclasses.asdict(config), "threshold": threshold,
                      "recipe": RECIPES[config.level], "versions": {"gymnasium": gym.__version__,
                      "mujoco": mujoco.__version__, "jax": jax.__version__}},
    }
    started = time.perf_counter()
    if config.level == "random":
        rng = np.random.default_rng(config.seed)
        act_dim = envs.make_env(config.env).action_space.shape[0]
        dataset = collect(config.env, config.transitions, config.seed,
                          lambda obs, step: rng.uniform(-1, 1, act_dim).astype(np.float32), stem, config.progress)
    else:
        trainer = SACTrainer(config, work_dir)
        expert = config.level in ("expert", "medium-expert")
        outcome = trainer.train(stop_at_threshold=not expert,
                                total_steps=config.expert_steps if expert else config.max_sac_steps,
                                threshold=None if config.level == "expert" else threshold)
        metadata["generator"].update(reached_at=outcome.reached_at, evaluations=outcome.evaluations)

        def policy_data(actor: dict, name: str, seed_offset: int) -> Dataset:
            return collect(config.env, config.transitions, config.seed + seed_offset,
                           lambda obs, step: trainer.policy_action(actor, obs, 10**9 + seed_offset + step), name,
                           config.progress)

        if config.level == "medium-replay":
            dataset = outcome.replay
        elif config.level == "medium":
            dataset = policy_data(outcome.medium_policy, stem, 1)
        elif config.level == "expert":
            dataset = policy_data(outcome.state["actor"], stem, 2)
        else:
            if outcome.medium_policy is None:
                raise ValueError(f"SAC never reached the medium threshold {threshold:.0f} within {config.expert_steps} "
                                 f"steps, so there is no medium half: lower --threshold or raise --expert-steps.")
            dataset = concatenate([policy_data(outcome.medium_policy, stem, 1),
                                   policy_data(outcome.state["actor"], stem, 2)])
    metadata["generator"]["seconds"] = round(time.perf_counter() - started, 1)
    write_d4rl(dataset.replace(name=stem, metadata=metadata), output)
    return output


RECIPES = {
    "random": "uniform random actions",
    "medium": "SAC until deterministic eval >= threshold, then its stochastic policy",
    "medium-replay": "SAC replay buffer until deterministic eval >= threshold",
    "expert": "SAC trained for expert_steps, then its stochastic policy",
    "medium-expert": "medium followed by expert",
    "umaze": "AntMaze: the maze's evaluation start to its evaluation goal",
    "diverse": "AntMaze: random free cells to random free cells",
    "play": "AntMaze: between hand-picked cells",
}
