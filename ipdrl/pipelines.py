"""Train and evaluate runs of an :class:`~ipdrl.algos.Algorithm`: dataset -> environment -> the algorithm's own
training in a run directory (progress, logs, checkpoints, resume) -> results.json and the learning curve."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ipdrl import envs, presets
from ipdrl.algos import Algorithm, as_algorithm, available, get_algorithm
from ipdrl.config import RunConfig, config_from_json
from ipdrl.data.dataset import Dataset
from ipdrl.data.loading import dataset_label, load_dataset
from ipdrl.host import host
from ipdrl.runs import Run, setting_changes
from ipdrl.training import SEED_BATCHING

log = logging.getLogger("ipdrl")


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """What an ``ipdrl train`` command line asks for."""

    algorithm: Algorithm
    config: RunConfig
    seeds: list[int] | None
    seed_batching: str


def parse_train_args(argv: list[str]) -> TrainArgs | None:
    """The algorithm and resolved config of ``ipdrl train ARGV`` (the preset of --budget and --dataset, then the
    flags), or None without --algo. ``ipdrl sweep`` resolves its finished runs' commands the same way to find those
    trained with other settings."""
    import tyro

    pre = argparse.ArgumentParser(prog="ipdrl train", add_help=False, allow_abbrev=False)
    pre.add_argument("--algo", choices=available())
    pre.add_argument("--budget", default="cpu", choices=presets.BUDGET_NAMES)
    pre.add_argument("--dataset", default="embedded")
    pre.add_argument("--seeds", type=int, nargs="+", default=None)
    pre.add_argument("--seed-batching", default="map")
    known, rest = pre.parse_known_args(argv)
    if known.algo is None:
        return None
    algorithm = get_algorithm(known.algo)
    default = presets.make_config(algorithm, known.dataset, known.budget)
    config = tyro.cli(algorithm.Config, default=default, args=translate_legacy_flags(algorithm, rest),
                      prog=f"ipdrl train --algo {known.algo} --budget {known.budget}",
                      description=algorithm.summary + ("" if algorithm.train_seeds is None else
                                                       " Several seeds in one process: --seeds S1 S2 ... "
                                                       "[--seed-batching map|vmap] (--run-dir then needs {seed})."))
    return TrainArgs(algorithm, config, known.seeds, known.seed_batching)


def translate_legacy_flags(algorithm: Algorithm, argv: list[str]) -> list[str]:
    """Rewrite flags of an earlier release to their current spelling, with a warning naming both. An old flag that
    now sets several (``--model-lr``) takes one value and passes it to each."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        flag, equals, value = arg.partition("=")
        current = algorithm.legacy_flags.get(flag)
        if current is None:
            out.append(arg)
            continue
        log.warning("ipdrl train --algo %s: %s is now %s; the old spelling goes in the next release", algorithm.name,
                    flag, " and ".join(current))
        if len(current) == 1:
            out.append(current[0] + equals + value)
            continue
        if not equals:
            value = next(args, None)
            if value is None:
                raise ValueError(f"{flag} needs a value.")
        out += [f"{name}={value}" for name in current]
    return out


def default_run_dir(algo: str, config: RunConfig) -> Path:
    return Path("runs") / f"{algo}-{dataset_label(config.dataset)}-s{config.seed}"


def eval_env_id(config: RunConfig, dataset: Dataset) -> str:
    """The Gymnasium id to evaluate in."""
    return config.env or envs.env_id_for(dataset.name, dataset.metadata)


def prepare(config: RunConfig, dataset: Dataset) -> tuple[str, Dataset]:
    """(the Gymnasium id to evaluate in, the dataset with its actions in the policies' [-1, 1]), after checking the
    dataset's dimensions and actions against the environment's spaces."""
    env_id = eval_env_id(config, dataset)
    env = envs.make_env(env_id)
    envs.check_dims(env, dataset.obs_dim, dataset.act_dim, f"dataset {dataset.name!r}")
    bounds = envs.ActionBounds.of(env)
    env.close()
    actions = bounds.check(dataset.actions, f"dataset {dataset.name!r}", env_id)
    if env_id == "FrankaKitchen-v1":
        from ipdrl import robotics

        dataset = robotics.kitchen_rewards(dataset)
    if actions is dataset.actions and bounds.unit:
        return env_id, dataset
    return env_id, dataset.replace(actions=bounds.to_policy(actions))


def config_dict(algo: str, config: RunConfig) -> dict[str, Any]:
    return {"algo": algo, **dataclasses.asdict(config)}


def changed_settings(saved: dict[str, Any], algo: str, config: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved, asked for now)}`` where ``config`` differs from a run's ``saved`` settings (its
    config.json, or an evidence table's copy); a setting ``saved`` lacks (the run predates it) counts as its
    default."""
    return setting_changes(saved, config_dict(algo, config), config_dict(algo, type(config)()))


def create_run(algorithm: Algorithm, config: RunConfig) -> Run:
    """The run directory ``config`` names (or the default one), created or resumed with the config saved."""
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(algorithm.name, config)
    return Run.create(run_dir, config_dict(algorithm.name, config), resume=config.resume,
                      defaults=config_dict(algorithm.name, type(config)()))


def train(algorithm: Algorithm, config: RunConfig) -> dict[str, Any]:
    """Train as configured, evaluate the final checkpoint, write results.json and the learning curve.
    ``algorithm``: an :class:`~ipdrl.algos.Algorithm`, its name or its module."""
    algorithm = as_algorithm(algorithm)
    run = create_run(algorithm, config)
    env_id, dataset = prepare(config, load_dataset(config.dataset))
    started = time.perf_counter()
    try:
        results = algorithm.train(config, dataset, run, env_id)
    finally:
        run.close()  # the TensorBoard events written so far stay whole when training fails or is interrupted
    return _finish(algorithm, config, dataset, run, results, time.perf_counter() - started)


def train_seeds(algorithm: Algorithm, config: RunConfig, seeds: list[int], batching: str = "map") -> list[dict]:
    """:func:`train` for several seeds of one configuration in one process, trained together (``ipdrl train
    --seeds``): one run directory and results.json per seed. ``batching``: ``map`` (each seed bit-identical to its
    own run) or ``vmap`` (one batched step; see :func:`ipdrl.training.make_seeds_chunk_fn`)."""
    algorithm = as_algorithm(algorithm)
    if algorithm.train_seeds is None:
        raise ValueError(f"{algorithm.name} trains in several stages and has no --seeds; train one seed per command, "
                         f"or several at once with `ipdrl sweep`.")
    if batching not in SEED_BATCHING:
        raise ValueError(f"unknown --seed-batching {batching!r}: use {' or '.join(SEED_BATCHING)}.")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct seeds, got {seeds}.")
    if config.run_dir and "{seed}" not in config.run_dir:
        raise ValueError(f"with --seeds, --run-dir needs {{seed}} in it (e.g. {config.run_dir}-s{{seed}}) so that "
                         f"every seed gets its own run directory.")
    configs = [dataclasses.replace(config, seed=seed, run_dir=config.run_dir.replace("{seed}", str(seed))
                                   if config.run_dir else None) for seed in seeds]
    runs = [create_run(algorithm, c) for c in configs]
    env_id, dataset = prepare(config, load_dataset(config.dataset))
    started = time.perf_counter()
    try:
        results = algorithm.train_seeds(configs, dataset, runs, env_id, batching)
    finally:
        for run in runs:
            run.close()
    seconds = time.perf_counter() - started
    fingerprint = dataset.fingerprint()
    return [_finish(algorithm, c, dataset, run, dict(r, seeds_trained_together=len(seeds), seed_batching=batching,
                                                     dataset_fingerprint=fingerprint), seconds)
            for c, run, r in zip(configs, runs, results)]


def _finish(algorithm: Algorithm, config: RunConfig, dataset: Dataset, run: Run, results: dict,
            seconds: float) -> dict[str, Any]:
    """results.json and the learning curve of a trained run."""
    results.setdefault("steps", getattr(config, "steps", None))
    if "dataset_fingerprint" not in results:  # train_seeds hashes its data once for all its seeds
        results["dataset_fingerprint"] = dataset.fingerprint()
    results.update(algo=algorithm.name, dataset=dataset.name, seed=config.seed, train_seconds=seconds,
                   run_dir=str(run.path), finished_on=host())
    run.save_results(results)
    run.plot()
    return results


def saved_config(algorithm: Algorithm, run: Run) -> RunConfig:
    """The configuration a run was made with (its ``config.json``)."""
    saved = run.config
    unknown = set(saved) - {f.name for f in dataclasses.fields(algorithm.Config)} - {"algo"}
    if unknown:
        raise ValueError(f"{run.path}/config.json has settings {sorted(unknown)} that {algorithm.name} no longer "
                         f"has: it was made by an earlier ipdrl release. Retrain the run with this version.")
    return config_from_json(saved, algorithm.Config)


def evaluate_run(algorithm: Algorithm, run_dir: str | Path, episodes: int | None = None,
                 eval_seed: int | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run's final checkpoint (``ipdrl eval RUN_DIR``)."""
    algorithm = as_algorithm(algorithm)
    run = Run.open(run_dir)
    config = saved_config(algorithm, run)
    if episodes is not None:
        config.eval_episodes = episodes
    if eval_seed is not None:
        config.eval_seed = eval_seed
    env_id, dataset = prepare(config, load_dataset(config.dataset))
    return algorithm.evaluate(config, dataset, run, env_id)
