"""Environments: dataset -> family -> Gymnasium env, reference scores, action bounds, known termination functions.

A dataset's family (hopper, halfcheetah, ...) comes from the environment id in its metadata first (``env``: our
files, Minari's ``env_spec``), then from its name. Its reference scores are its own when its metadata carries them
(Minari's ``ref_min_score`` / ``ref_max_score``), else the D4RL table's for its family.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable, Mapping, Any

import jax.numpy as jnp
import numpy as np

REFERENCE_TABLE = "D4RL (Fu et al. 2020) reference min/max returns"
OWN_REFERENCE = "the dataset's own reference scores (ref_min_score / ref_max_score in its metadata)"


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family: its Gymnasium id and D4RL reference returns for normalised scores."""

    name: str
    env_id: str | None
    ref_min: float
    ref_max: float
    # Only evaluation returns are on the scale the reference scores were made for in some families: Kitchen datasets
    # store the running count of completed tasks as the per-step reward, and AntMaze datasets keep collecting the
    # goal's reward after reaching it (their episodes end in time-outs; evaluation episodes end at the goal).
    dataset_returns_normalizable: bool = True


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0),
        Family("hopper", "Hopper-v5", -20.272305, 3234.3),
        Family("walker2d", "Walker2d-v5", 1.629008, 4592.3),
        Family("ant", "Ant-v5", -325.6, 3879.7),
        Family("antmaze", None, 0.0, 1.0, dataset_returns_normalizable=False),
        Family("kitchen", "FrankaKitchen-v1", 0.0, 4.0, dataset_returns_normalizable=False),
        Family("pen", None, 96.262799, 3076.8331017826877),
        Family("hammer", None, -274.856578, 12794.134825156867),
        Family("door", None, -56.512833, 2880.5693087298737),
        Family("relocate", None, -6.425911, 4233.877797728884),
    ]
}

_GYM_TO_FAMILY = {f.env_id: f.name for f in FAMILIES.values() if f.env_id}
ROBOTICS_PREFIXES = ("FrankaKitchen", "PointMaze_", "AdroitHand")  # made by ipdrl.robotics
ANTMAZE_PREFIXES = ("AntMaze_", "AntGoal")  # made by ipdrl.antmaze


def family_of(name: str) -> Family | None:
    """The family of a dataset name (``hopper-medium-replay-v2``) or Gymnasium id (``Hopper-v5``), else None."""
    if name in _GYM_TO_FAMILY:
        return FAMILIES[_GYM_TO_FAMILY[name]]
    head = re.split(r"[-_]", name.lower(), maxsplit=1)[0]
    return FAMILIES.get(head)


def family_for(name: str, metadata: Mapping[str, Any] | None = None) -> Family | None:
    """A dataset's family: from the env id its metadata names, else from its name."""
    env = (metadata or {}).get("env")
    return (family_of(env) if isinstance(env, str) else None) or family_of(name)


@dataclasses.dataclass(frozen=True)
class Reference:
    """Reference returns that make a normalised score, and which table they come from."""

    min: float
    max: float
    table: str

    def normalize(self, returns: np.ndarray | float) -> np.ndarray:
        """``100 * (R - min) / (max - min)``."""
        return 100.0 * (np.asarray(returns, dtype=np.float64) - self.min) / (self.max - self.min)


def reference_for(name: str, metadata: Mapping[str, Any] | None = None) -> Reference | None:
    """The dataset's own reference scores when its metadata has them, else its family's D4RL ones (None if
    neither is known)."""
    metadata = metadata or {}
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and high != low:
        return Reference(float(low), float(high), OWN_REFERENCE)
    family = family_for(name, metadata)
    return Reference(family.ref_min, family.ref_max, REFERENCE_TABLE) if family else None


def env_id_for(dataset_name: str, metadata: Mapping[str, Any] | None = None) -> str:
    """Gymnasium id to evaluate a dataset in: metadata ``env`` first, then the name's family."""
    if metadata and isinstance(metadata.get("env"), str):
        return metadata["env"]
    family = family_of(dataset_name)
    if family is None or family.env_id is None:
        known = ", ".join(f.name for f in FAMILIES.values() if f.env_id)
        raise ValueError(
            f"no Gymnasium environment is known for dataset {dataset_name!r}. Name the dataset after a known "
            f"family ({known}), or pass --env with a Gymnasium id (e.g. --env Hopper-v5)."
        )
    return family.env_id


def make_env(env_id: str, seed: int | None = None):
    """A Gymnasium env with a clear error for unknown ids (gymnasium-robotics' through :mod:`ipdrl.robotics`)."""
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mujoco 4's settotalmass deprecation notice in half_cheetah.xml
        try:
            if env_id.startswith(ANTMAZE_PREFIXES):
                from ipdrl import antmaze

                env = antmaze.make(env_id)
            elif env_id.startswith(ROBOTICS_PREFIXES):
                from ipdrl import robotics

                env = robotics.make(env_id)
            else:
                env = gym.make(env_id)
        except gym.error.Error as err:
            raise ValueError(f"cannot make Gymnasium environment {env_id!r}: {err}") from None
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# ---- actions: policies act in [-1, 1]; datasets and environments keep the environment's own units ---------------
OUT_OF_BOUNDS_TOLERANCE = 1e-4  # of the action range: float noise at a bound is not "outside"
STRAGGLER_SHARE = 0.01  # at most this share of actions outside the bounds is clipped with a warning, more is an error


@dataclasses.dataclass(frozen=True)
class ActionBounds:
    """The one owner of action scaling: an environment's Box bounds and the map between them and the [-1, 1] that
    every policy acts in. Where the bounds are [-1, 1] both maps are exact identities (up to clipping)."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, env) -> "ActionBounds":
        space = env.action_space
        return cls(np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))

    @property
    def unit(self) -> bool:
        return bool(np.all(self.low == -1.0) and np.all(self.high == 1.0))

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Policy actions in [-1, 1] -> the environment's units (clipped to the bounds)."""
        actions = np.clip(actions, -1.0, 1.0)
        return actions if self.unit else self.low + (actions + 1.0) * 0.5 * (self.high - self.low)

    def to_policy(self, actions: np.ndarray) -> np.ndarray:
        """Actions in the environment's units -> [-1, 1]."""
        return actions if self.unit else (2.0 * (actions - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def check(self, actions: np.ndarray, what: str, env_id: str) -> np.ndarray:
        """``actions`` (env units) if they lie within the bounds; a few stragglers are clipped with a warning; a
        material share outside is an error that says how to rescale them."""
        slack = OUT_OF_BOUNDS_TOLERANCE * (self.high - self.low)
        outside = np.any((actions < self.low - slack) | (actions > self.high + slack), axis=-1)
        if not outside.any():
            return actions
        share = float(outside.mean())
        span = f"[{np.min(self.low):g}, {np.max(self.high):g}]"
        if share > STRAGGLER_SHARE:
            factor = float(np.max(np.abs(actions)) / np.max(np.abs(np.concatenate([self.low, self.high]))))
            raise ValueError(
                f"{share:.1%} of the actions of {what} lie outside {env_id}'s action bounds {span} (they range "
                f"from {actions.min():.3g} to {actions.max():.3g}): the data is in other units than the environment. "
                f"Rescale the dataset's actions into the bounds (they look about {factor:.3g}x too large: divide them "
                f"by {factor:.3g}), or evaluate in the environment the data came from (--env).")
        warnings.warn(f"{outside.sum()} actions ({share:.2%}) of {what} lie outside {env_id}'s action bounds {span}; "
                      f"they are clipped to the bounds.", stacklevel=2)
        return np.clip(actions, self.low, self.high)


def action_bounds(env_id: str) -> ActionBounds:
    env = make_env(env_id)
    bounds = ActionBounds.of(env)
    env.close()
    return bounds


def check_dims(env, obs_dim: int, act_dim: int, what: str) -> None:
    """Raise a clear error when a dataset's or model's dims do not match an environment's spaces."""
    env_obs = int(np.prod(env.observation_space.shape))
    env_act = int(np.prod(env.action_space.shape))
    if (env_obs, env_act) != (obs_dim, act_dim):
        raise ValueError(
            f"{what} has observation dim {obs_dim} and action dim {act_dim}, but environment "
            f"{env.spec.id if env.spec else env} has {env_obs} and {env_act}. Evaluate in the environment the "
            f"data came from (--env)."
        )


# ---- known termination functions (jittable, batched over leading dims) -------------------------------
TerminationFn = Callable[[jnp.ndarray], jnp.ndarray]


def _hopper_done(next_obs: jnp.ndarray) -> jnp.ndarray:
    # Gymnasium Hopper-v5 healthy check with default ranges (obs excludes x position).
    height, angle = next_obs[..., 0], next_obs[..., 1]
    rest = next_obs[..., 1:]
    healthy = (
        jnp.all(jnp.abs(rest) < 100.0, axis=-1) & (height > 0.7) & (jnp.abs(angle) < 0.2)
    )
    return ~healthy


def _walker_done(next_obs: jnp.ndarray) -> jnp.ndarray:
    height, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0)
    return ~healthy


def _never_done(next_obs: jnp.ndarray) -> jnp.ndarray:
    return jnp.zeros(next_obs.shape[:-1], dtype=bool)


def _ant_done(next_obs: jnp.ndarray) -> jnp.ndarray:
    z = next_obs[..., 0]
    healthy = jnp.all(jnp.isfinite(next_obs), axis=-1) & (z >= 0.2) & (z <= 1.0)
    return ~healthy


TERMINATION_FNS: dict[str, TerminationFn] = {
    "hopper": _hopper_done,
    "walker2d": _walker_done,
    "halfcheetah": _never_done,
    "ant": _ant_done,
    "antmaze": _never_done,  # D4RL's antmaze episodes end in time-outs only
}


def termination_fn(name: str, metadata: Mapping[str, Any] | None = None) -> TerminationFn | None:
    """The known termination function for a dataset/env family, or None (learn a classifier instead)."""
    family = family_for(name, metadata)
    return TERMINATION_FNS.get(family.name) if family else None
