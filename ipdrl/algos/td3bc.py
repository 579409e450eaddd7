"""TD3+BC (Fujimoto & Gu 2021): TD3 with a behaviour-cloning term and normalised states.

    actor:  min_pi  E[ -(alpha / mean|Q1|) * Q1(s, pi(s))  +  mean_dims (pi(s) - a)^2 ],   alpha = 2.5
    critic: TD3's clipped double-Q target with target policy smoothing, no penalty.

It is a configuration of the ReBRAC learner (:mod:`ipdrl.algos.rebrac`) — ReBRAC generalises exactly this
algorithm — with the original paper's settings: 2x256 networks without LayerNorm, Adam 3e-4, batch 256, BC as a
mean over action dimensions, the first critic in the actor loss, no critic penalty, normalised states.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ipdrl.algos import rebrac
from ipdrl.algos.common import learner_algorithm
from ipdrl.config import RunConfig


@dataclasses.dataclass
class Hyperparameters(rebrac.Hyperparameters):
    """TD3+BC hyperparameters (the paper's defaults, for every D4RL Gym dataset)."""

    batch_size: int = 256
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    tau: float = 5e-3
    alpha: float = 2.5
    """Weight of Q / mean|Q| against the BC term (the paper's lambda = alpha / mean|Q|)."""
    actor_bc: float = 1.0
    critic_bc: float = 0.0
    bc_reduction: Literal["sum", "mean"] = "mean"
    actor_q: Literal["min", "first"] = "first"
    critic_layer_norm: bool = False
    normalize_observations: bool = True


@dataclasses.dataclass
class Config(RunConfig, Hyperparameters):
    """A TD3+BC run."""


make_learner = rebrac.make_learner

# "cpu": where the learning curve stops rising (docs/evidence/curves.md): 285k updates on hopper-medium-replay, about
# 30 minutes on one core, and 90k on walker2d-medium-replay. Halfcheetah has no curve yet and takes the longer one.
BUDGETS = {
    "tiny": dict(hidden_dims=(32, 32), batch_size=64),
    "cpu": dict(steps=285_000),
    "paper": dict(steps=1_000_000),
}
PRESETS = {"walker2d@cpu": dict(steps=90_000)}
ALGORITHM = learner_algorithm("td3bc", Config, make_learner, "TD3+BC (Fujimoto & Gu 2021).", BUDGETS, PRESETS)
