"""Settings of IPD's stage 3 (the MPC planner's settings, then the augmentation's own)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ipdrl.planning.mppi import PlannerConfig

MODES = ("mpc", "greedy-q")
REJECTIONS = ("uncertainty", "termination", "not_better")


@dataclasses.dataclass(frozen=True)
class AugmentConfig(PlannerConfig):
    """Imaginary augmentation settings (the MPC planner's settings above them)."""

    mode: Literal["mpc", "greedy-q"] = "mpc"
    """'mpc' (MPPI in the model) or 'greedy-q' (the paper's ablation: argmax Q over sampled actions, no lookahead)."""
    ratio: float = 0.25
    """Target imagined : real transitions (imagined steps only; real prefixes copied into new episodes not counted)."""
    rollout_length: int = 20
    """L: the most imagined steps per segment."""
    min_rollout_length: int = 5
    """Segments cut shorter than this by uncertainty or termination are rejected."""
    prefix_length: int = 20
    """Real steps copied before each imagined segment (the sequence policy's context length K) in 'add' mode."""
    attach: Literal["add", "splice"] = "add"
    """'add': a new episode of the ``prefix_length`` real steps before the branch point, then the segment.
    'splice': the segment replaces the real continuation inside its source trajectory: the new episode is the
    whole real prefix from the episode's start, so its return-to-go labels carry the improved continuation."""
    suboptimality_steps: int = 10
    """n of the n-step sub-optimality delta_t."""
    branch_fraction: float = 0.1
    """Share of each trajectory's states (highest delta, delta > 0) used as branch points."""
    branch_threshold: float | None = None
    """Instead of branch_fraction: every state with delta above this value (V's units) is a branch point."""
    max_passes: int = 3
    """Rollouts per branch point at most: further passes (fresh randomness) run while the target is not reached."""
    branch_batch: int = 256
    """Branch points rolled out together in one jitted call."""
    uncertainty: Literal["gjs", "disagreement"] = "disagreement"
    """'disagreement' (largest std of the elites' means) or 'gjs' (mean pairwise geometric Jensen-Shannon, MACURA).
    On hopper-medium-replay disagreement tracks the model's one-step error and GJS, which measures disagreement in
    units of the predicted noise and is dominated by near-deterministic state dimensions, does not
    (benchmarks/model_faithfulness.py; the figures are in the README)."""
    kappa_quantile: float = 0.9
    """kappa = this quantile of U over the dataset's own (s, a) pairs."""
    kappa: float | None = None
    """Fixed uncertainty threshold instead of the calibrated quantile."""
    kappa_scale: float = 1.0
    """kappa = this multiple of the quantile (MACURA's xi; up to 30 on hopper there)."""
    reject_terminated: bool = True
    """Reject segments that end in a predicted termination (a near-optimal replacement should not fall over)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"unknown augmentation mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.uncertainty not in ("gjs", "disagreement"):
            raise ValueError(f"unknown uncertainty {self.uncertainty!r}: use 'gjs' or 'disagreement'.")
        if self.ratio < 0 or not 1 <= self.min_rollout_length <= self.rollout_length:
            raise ValueError(f"need ratio >= 0 and 1 <= min_rollout_length <= rollout_length; got ratio={self.ratio}, "
                             f"min_rollout_length={self.min_rollout_length}, rollout_length={self.rollout_length}.")
        if self.attach not in ("add", "splice"):
            raise ValueError(f"unknown --augment.attach {self.attach!r}: use 'add' or 'splice'.")
        if self.kappa_scale <= 0:
            raise ValueError(f"--augment.kappa-scale must be > 0, got {self.kappa_scale}.")
        if not 0.0 < self.branch_fraction <= 1.0:
            raise ValueError(f"branch_fraction must be in (0, 1], got {self.branch_fraction}.")


# 'cpu' is sized so that `ipdrl augment --budget cpu` of a whole shared dataset takes minutes on a 2-core CPU
# (benchmarks/imagination.py measures the planner's imagined steps per second); 'paper' keeps the spec's defaults
# (N 256, H 5, 3 iterations, L 20).
BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_samples=16, horizon=3, iterations=2, num_elites=4, rollout_length=6, min_rollout_length=2,
                 prefix_length=5, branch_batch=16, ratio=0.05, max_passes=1),
    "cpu": dict(num_samples=64, horizon=5, iterations=2, num_elites=8, rollout_length=10, min_rollout_length=3,
                branch_batch=256, ratio=0.05, max_passes=1),
    "paper": dict(),
}
