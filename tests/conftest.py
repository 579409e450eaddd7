"""Shared test fixtures: paths to ../shared data (skipped cleanly when absent) and tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from ipdrl.data.dataset import Dataset
from ipdrl.host import COMPILATION_CACHE_ENV, use_compilation_cache

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IPDRL_SHARED", REPO.parent / "shared"))
DATASETS = SHARED / "datasets"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """Compiled programs are shared by the session's tests and the subprocesses they start, in pytest's temporary
    folder rather than the user's cache (unless $IPDRL_COMPILATION_CACHE or $JAX_COMPILATION_CACHE_DIR names one)."""
    if COMPILATION_CACHE_ENV not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ[COMPILATION_CACHE_ENV] = str(tmp_path_factory.mktemp("xla"))
    return use_compilation_cache()


def shared_dataset_path(name: str) -> Path:
    """``../shared/datasets/<name>.hdf5``; without it (a clone on its own), the embedded dataset of the same name."""
    path = DATASETS / f"{name}.hdf5"
    if path.exists():
        return path
    embedded = REPO / "ipdrl" / "data" / "embedded" / f"{name}.hdf5"
    if embedded.exists():
        return embedded
    pytest.skip(f"shared dataset {path} not present")


def read_first_episodes(path: Path, episodes: int, name: str) -> Dataset:
    """The first ``episodes`` whole episodes of a D4RL-format file, read directly with h5py."""
    with h5py.File(path, "r") as f:
        ends = np.flatnonzero(f["terminals"][:] | f["timeouts"][:]) + 1
        end = int(ends[episodes - 1])
        arrays = {k: f[k][:end] for k in ["observations", "actions", "rewards", "next_observations", "terminals", "timeouts"]}
        infos = {k: f[f"infos/{k}"][:end] for k in ("qpos", "qvel") if f"infos/{k}" in f}
    env = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}[name.split("-")[0]]
    return Dataset(**arrays, infos=infos, metadata={"env": env}, name=name)


@pytest.fixture(scope="session")
def tiny_hopper() -> Dataset:
    """About 3k transitions of hopper-medium-replay (its first episodes), with qpos/qvel."""
    return read_first_episodes(shared_dataset_path("hopper-medium-replay"), 60, "hopper-medium-replay")


@pytest.fixture(scope="session")
def tiny_halfcheetah() -> Dataset:
    """Two 1000-step episodes of halfcheetah-medium-replay."""
    return read_first_episodes(shared_dataset_path("halfcheetah-medium-replay"), 2, "halfcheetah-medium-replay")


@pytest.fixture(scope="session")
def tiny_walker2d() -> Dataset:
    """The first episodes of walker2d-medium-replay (made by ipdrl's own generator on Walker2d-v5)."""
    return read_first_episodes(shared_dataset_path("walker2d-medium-replay"), 40, "walker2d-medium-replay")


def synthetic_dataset(episodes: int = 4, length: int = 25, obs_dim: int = 11, act_dim: int = 3, seed: int = 0,
                      name: str = "hopper-synthetic") -> Dataset:
    """Random transitions with consistent episode structure (next_obs of step t = obs of step t+1)."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    obs = rng.normal(size=(n + episodes, obs_dim)).astype(np.float32)
    keep = np.ones(n + episodes, bool)
    keep[np.arange(1, episodes + 1) * (length + 1) - 1] = False
    current = obs[keep]
    nxt = np.concatenate([obs[e * (length + 1) + 1:(e + 1) * (length + 1)] for e in range(episodes)])
    timeouts = np.zeros(n, bool)
    timeouts[np.arange(1, episodes + 1) * length - 1] = True
    return Dataset(
        observations=current, actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32), next_observations=nxt,
        terminals=np.zeros(n, bool), timeouts=timeouts, metadata={"env": "Hopper-v5"}, name=name,
    )
