"""Environments: dataset name -> Gymnasium env, D4RL reference scores, known termination functions."""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable, Mapping, Any

import jax.numpy as jnp
import numpy as np

REFERENCE_TABLE = "D4RL (Fu et al. 2020) reference min/max returns"


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family: its Gymnasium id and D4RL reference returns for normalised scores."""

    name: str
    env_id: str | None
    ref_min: float
    ref_max: float
    # Kitchen datasets store the running count of completed tasks as the per-step reward, so their episode
    # returns are not on the scale the reference scores were made for (only evaluation returns are).
    dataset_returns_normalizable: bool = True


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0),
        Family("hopper", "Hopper-v5", -20.272305, 3234.3),
        Family("walker2d", "Walker2d-v5", 1.629008, 4592.3),
        Family("ant", "Ant-v5", -325.6, 3879.7),
        Family("antmaze", None, 0.0, 1.0),
        Family("kitchen", None, 0.0, 4.0, dataset_returns_normalizable=False),
        Family("pen", None, 96.262799, 3076.8331017826877),
        Family("hammer", None, -274.856578, 12794.134825156867),
        Family("door", None, -56.512833, 2880.5693087298737),
        Family("relocate", None, -6.425911, 4233.877797728884),
    ]
}

_GYM_TO_FAMILY = {f.env_id: f.name for f in FAMILIES.values() if f.env_id}


def family_of(name: str) -> Family | None:
    """The family of a dataset name (``hopper-medium-replay-v2``) or Gymnasium id (``Hopper-v5``), else None."""
    if name in _GYM_TO_FAMILY:
        return FAMILIES[_GYM_TO_FAMILY[name]]
    head = re.split(r"[-_]", name.lower(), maxsplit=1)[0]
    return FAMILIES.get(head)


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


def normalized_score(name: str, returns: np.ndarray | float) -> np.ndarray | float | None:
    """``100 * (R - ref_min) / (ref_max - ref_min)`` with the D4RL constants; None for unknown families."""
    family = family_of(name)
    if family is None:
        return None
    return 100.0 * (np.asarray(returns, dtype=np.float64) - family.ref_min) / (family.ref_max - family.ref_min)


def make_env(env_id: str, seed: int | None = None):
    """A Gymnasium env with a clear error for unknown ids."""
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mujoco 4's settotalmass deprecation notice in half_cheetah.xml
        try:
            env = gym.make(env_id)
        except gym.error.Error as err:
            raise ValueError(f"cannot make Gymnasium environment {env_id!r}: {err}") from None
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


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
}


def termination_fn(name: str) -> TerminationFn | None:
    """The known termination function for a dataset/env family, or None (learn a classifier instead)."""
    family = family_of(name)
    return TERMINATION_FNS.get(family.name) if family else None
