"""Settings of ``ipdrl data generate``."""

from __future__ import annotations

import dataclasses
from typing import Literal

Level = Literal["random", "medium", "medium-replay", "expert", "medium-expert", "umaze", "diverse", "play"]
ANTMAZE_LEVELS = ("umaze", "diverse", "play")

# About one third of expert return, as D4RL's medium policies (data.md: medium returns ~4.8k / 1.4k / 2.9k).
DEFAULT_THRESHOLDS = {"HalfCheetah-v5": 4800.0, "Hopper-v5": 1500.0, "Walker2d-v5": 2900.0}


@dataclasses.dataclass
class GenerateConfig:
    """Settings of ``ipdrl data generate``."""

    env: str = "Hopper-v5"
    """Gymnasium id of any environment with Box observation and action spaces, or an AntMaze (AntMaze_UMaze-v5,
    AntMaze_Medium_Diverse_GR-v5, AntMaze_Large_Diverse_GR-v5) with --level umaze, diverse or play."""
    level: Level = "medium-replay"
    output: str | None = None
    """Output .hdf5 (default <family>-<level>.hdf5)."""
    seed: int = 0
    threshold: float | None = None
    """Deterministic evaluation return that ends 'medium' training (default per env: HalfCheetah 4800, Hopper 1500, Walker2d 2900)."""
    transitions: int = 1_000_000
    """Transitions collected for random, medium and expert (each half of medium-expert), and for AntMaze."""
    max_sac_steps: int = 1_000_000
    """Give up when the threshold is not reached within this many environment steps."""
    expert_steps: int = 1_000_000
    """SAC environment steps for the expert policy."""
    start_steps: int = 10_000
    """Uniform-random warm-up steps before SAC acts."""
    updates_every: int = 10
    """Environment steps between fused update chunks; SAC still makes one update per environment step."""
    eval_every: int = 10_000
    eval_episodes: int = 5
    checkpoint_every: int = 20_000
    work_dir: str | None = None
    """Where resumable SAC state lives (default <output>.work)."""
    resume: bool = False
    hidden_dims: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    progress: bool = True
    # AntMaze (--env AntMaze_*, --level umaze | diverse | play; ipdrl/data/generator/antmaze.py)
    controller_steps: int = 1_000_000
    """AntMaze: SAC environment steps for the goal-reaching controller (trained once, shared by every maze and level)."""
    controller_ctrl_cost: float = 0.5
    """AntMaze: the controller task's control-cost weight (Ant-v5's)."""
    controller_healthy_reward: float = 1.0
    """AntMaze: the controller task's reward per step alive (Ant-v5's)."""
    controller_progress_weight: float = 10.0
    """AntMaze: the controller task's weight on its speed towards the goal (Minari's goal-reaching ant: 10)."""
    controller: str | None = None
    """AntMaze: steer with the controller saved at FILE (the controller.msgpack its training writes into its
    directory) instead of training or reusing one in --controller-dir."""
    controller_dir: str | None = None
    """AntMaze: where the controller's resumable training lives (default antmaze-controller-s<seed>.work beside the output)."""
    action_noise: float = 0.2
    """AntMaze: std of the Gaussian noise added to the controller's actions while collecting."""
    parallel_episodes: int = 10
    """AntMaze: episodes collected in lockstep (one policy call for all); collection checkpoints after each group."""
