"""IPD's stages 1-3 as loaders that train, resume or reuse: used by ``ipdrl train --algo ipd`` and ``ipdrl augment``.

    stage 1  IQL                    -> Q, V and the AWR policy             value_stage / load_iql_run
    stage 2  ensemble world model   -> dynamics with uncertainty U(s, a)   world_model_stage
    stage 3  MPC augmentation       -> D_aug and a report                  augmentation_stage

With a cache directory each stage is stored under a key that hashes what it depends on: IQL by (dataset fingerprint,
IQL settings, seed); the world model by (dataset fingerprint, ensemble settings, seed), or the digest of the file
it was loaded from; the augmentation by (IQL key, world-model key, augmentation settings, seed). Every entry is
written atomically and marked complete by the file written last. Runs that share a cache (a sweep's IPD runs of one
dataset and seed, or a run started by hand beside them) build each entry once: the first holds the entry's lock
file while it builds, and the others wait for it and then load the entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from filelock import FileLock

from ipdrl import augmentation
from ipdrl.algos import iql
from ipdrl.augmentation import AugmentConfig, ValueFunctions
from ipdrl.augmentation.progress import rollout_settings
from ipdrl.config import RunConfig, config_from_json
from ipdrl.data.d4rl import read_d4rl, write_d4rl
from ipdrl.data.dataset import Dataset
from ipdrl.runs import Run
from ipdrl.storage import atomic_write_json
from ipdrl.training import train_in_run
from ipdrl.world_models import common, ensemble, train_ensemble
from ipdrl.world_models.ensemble import EnsembleConfig, EnsembleModel

# Settings that do not change what a stage computes (how often it is evaluated or checkpointed).
UNHASHED = ("eval_every", "checkpoint_every")


def stage_key(*parts: Any) -> str:
    """A short hash of JSON-able stage inputs (settings dicts, upstream keys, fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hashed_settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in UNHASHED}


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def building(lock: Path, built: Callable[[], bool]) -> Iterator[bool]:
    """Yields whether the entry is still to be built, and if so holds ``<lock>.lock`` until the block ends: the
    first of several runs builds it while the others wait, then find it built. A built entry is read without the
    lock (each is marked complete by its file written last), so a read-only cache or model works."""
    if built():
        yield False
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{lock}.lock"):
        yield not built()


def value_functions(iql_config: iql.Hyperparameters, iql_state: dict, act_dim: int) -> ValueFunctions:
    """What augmentation needs from a trained IQL state: Q, V, the AWR policy, gamma and the reward scaling."""
    state = {k: iql_state[k] for k in ("critic_target", "value", "value_high", "actor", "obs_stats") if k in iql_state}
    scale, shift = (float(x) for x in np.asarray(iql_state["reward_scale"]))
    return ValueFunctions(
        q=functools.partial(iql.q_value, iql_config, state),
        v=functools.partial(iql.planning_value, iql_config, state),
        policy=lambda obs: iql.awr_distribution(iql_config, state, obs, act_dim),
        gamma=float(iql_config.discount),
        reward_scale=scale,
        reward_shift=shift,
    )


# ---- stage 1: IQL -------------------------------------------------------------------------------------
def value_stage(settings: iql.Hyperparameters, dataset: Dataset, run_config: RunConfig, run: Run, env_id: str | None,
                cache_dir: str | Path | None = None) -> tuple[dict, dict[str, Any]]:
    """IQL's trained state and stage info: from the cache, else trained (or resumed) in ``run`` as stage ``iql_``
    and then cached. Without ``cache_dir``, the run directory is all there is (``ipdrl augment``)."""
    key = stage_key("iql", dataset.fingerprint(), hashed_settings(settings), run_config.seed)
    learner = iql.make_learner(settings, dataset)
    info: dict[str, Any] = {"key": key}
    cache = Run(Path(cache_dir) / f"iql-{key}") if cache_dir is not None else None
    if cache is not None:
        info["cache"] = str(cache.path)
    with (building(cache.path, lambda: cache.has_checkpoint("iql")) if cache is not None
          else contextlib.nullcontext(True)) as missing:
        if missing:
            started = time.perf_counter()
            state = train_in_run(learner, settings, run_config, run, env_id, dataset.reference(), stage="iql_")
            if cache is not None:
                atomic_write_json(cache.path / "info.json", {"run": str(run.path),
                                                             "settings": hashed_settings(settings)})
                cache.save_checkpoint(state, settings.steps, "iql")  # last: a complete checkpoint marks it done
            return state, dict(info, cached=False, trained_in=str(run.path), seconds=time.perf_counter() - started)
    state, _ = cache.load_checkpoint(jax.jit(learner.init)(jax.random.PRNGKey(run_config.seed)), "iql")
    return state, dict(info, cached=True, trained_in=json.loads((cache.path / "info.json").read_text())["run"])


def _iql_run(path: str | Path) -> Run:
    run = Run.open(path)
    if run.config.get("algo") != "iql":
        raise ValueError(f"{path} is a {run.config.get('algo')!r} run; pass an `ipdrl train --algo iql` run.")
    return run


def load_iql_run(path: str | Path, dataset: Dataset) -> tuple[iql.Hyperparameters, dict, dict[str, Any]]:
    """The final state of a finished ``ipdrl train --algo iql`` run: (its settings, state, info)."""
    run = _iql_run(path)
    config = config_from_json(run.config, iql.Config)
    if not run.has_checkpoint():
        raise FileNotFoundError(f"{run.path} has no checkpoint yet: finish `ipdrl train --algo iql` first.")
    state, step = run.load_checkpoint(iql.make_learner(config, dataset).init(jax.random.PRNGKey(config.seed)))
    key = stage_key("iql-run", file_digest(run.path / "checkpoint.msgpack"))  # what later stages' caches hang on
    return config, state, {"iql_run": str(run.path), "steps": step, "trained_on": config.dataset, "key": key}


def iql_run_settings(path: str | Path) -> iql.Hyperparameters:
    """The IQL settings of an ``ipdrl train --algo iql`` run (what its checkpoint's networks are)."""
    fields = {f.name for f in dataclasses.fields(iql.Hyperparameters)}
    saved = _iql_run(path).config
    return config_from_json({k: v for k, v in saved.items() if k in fields}, iql.Hyperparameters)


# ---- stage 2: world model -----------------------------------------------------------------------------
def world_model_stage(config: EnsembleConfig, dataset: Dataset, seed: int, progress: bool,
                      path: str | Path | None = None, cache_dir: str | Path | None = None
                      ) -> tuple[EnsembleModel, dict[str, Any]]:
    """The ensemble saved at ``path`` (trained now and saved there if absent), else the cached one for these
    settings (trained now and cached if absent)."""
    if path is not None:
        path = Path(path).with_suffix("")
        key = None
    else:
        key = stage_key("world_model", dataset.fingerprint(), dataclasses.asdict(config), seed)
        path = Path(cache_dir) / f"world_model-{key}" / "model"
    with building(path, lambda: common.model_exists(path)) as missing:
        if missing:
            model, report = train_ensemble(dataset, config, seed, progress)
            ensemble.save_model(model, path, report)
    if not missing:
        model, report = ensemble.load_model(path), json.loads(path.with_suffix(".json").read_text())["info"]
    key = key or "file-" + file_digest(path.with_suffix(".msgpack"), path.with_suffix(".json"))
    return model, {"key": key, "path": str(path), "cached": not missing, "report": report}


# ---- stage 3: augmentation ----------------------------------------------------------------------------
def augmentation_stage(config: AugmentConfig, dataset: Dataset, values: ValueFunctions, model: EnsembleModel,
                       seed: int, progress: bool, cache_dir: str | Path, upstream: list[str]
                       ) -> tuple[Dataset, dict[str, Any]]:
    """D_aug (with ``return_to_go``, ``timesteps`` and ``imagined`` infos) from the cache, or augmented now."""
    key = stage_key("augment", upstream, dataclasses.asdict(config), seed)
    folder = Path(cache_dir) / f"augment-{key}"
    info = {"key": key, "cache": str(folder / "dataset.hdf5")}
    # An interrupted augmentation resumes from its progress file, and one with another ratio or number of passes
    # continues from the batches the others rolled out (the files stay in the cache). They share one lock, so that
    # started together they take turns instead of rolling out the same batches side by side.
    batches = stage_key("augment-batches", upstream, rollout_settings(config), seed)
    with building(Path(cache_dir) / f"augment-batches-{batches}", (folder / "report.json").exists) as missing:
        if missing:
            others = sorted(Path(cache_dir).glob("augment-*/progress.pkl"))
            augmented, report = augmentation.augment(dataset, values, model, config, seed, progress,
                                                     folder / "progress.pkl", other_progress_files=others)
            write_d4rl(augmented, folder / "dataset.hdf5", compression=None)  # a D4RL file: `--dataset` takes it
            atomic_write_json(folder / "report.json", report)  # last: its presence marks a complete entry
            return augmented, dict(info, cached=False, report=report)
    report = json.loads((folder / "report.json").read_text())
    return read_d4rl(folder / "dataset.hdf5", dataset.name), dict(info, cached=True, report=report)
