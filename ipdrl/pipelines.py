"""Train and evaluate runs: dataset -> learner -> fit (progress, logs, checkpoints, resume) -> final evaluation."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from ipdrl import envs
from ipdrl.algos import get_algorithm
from ipdrl.config import TrainConfig, config_from_json
from ipdrl.data.dataset import Dataset
from ipdrl.evaluation import evaluate
from ipdrl.runs import Run
from ipdrl.training import Learner, fit

log = logging.getLogger("ipdrl")


def load_dataset_for(config: TrainConfig) -> Dataset:
    from ipdrl.data.loading import load_dataset

    return load_dataset(config.dataset)


def default_run_dir(algo: str, config: TrainConfig) -> Path:
    name = Path(config.dataset).stem if config.dataset.endswith((".hdf5", ".h5")) else config.dataset
    return Path("runs") / f"{algo}-{name.replace(':', '-').replace('/', '-')}-s{config.seed}"


def eval_env_id(config: TrainConfig, dataset: Dataset) -> str:
    """The Gymnasium id to evaluate in, checked against the dataset's dimensions."""
    env_id = config.env or envs.env_id_for(dataset.name, dataset.metadata)
    env = envs.make_env(env_id)
    envs.check_dims(env, dataset.obs_dim, dataset.act_dim, f"dataset {dataset.name!r}")
    env.close()
    return env_id


def config_dict(algo: str, config: TrainConfig) -> dict[str, Any]:
    return {"algo": algo, **dataclasses.asdict(config)}


def train_learner(
    learner: Learner,
    config: TrainConfig,
    run: Run,
    env_id: str | None,
    dataset_name: str,
    stage: str = "",
) -> Any:
    """Fit ``learner`` for ``config.steps`` in ``run``: resume, progress bar, metrics, periodic eval, checkpoints.

    ``stage`` prefixes checkpoint names and progress labels (pipelines such as IPD train several learners in
    one run directory). Returns the final state.
    """
    ckpt = f"{stage}checkpoint" if stage else "checkpoint"
    state, start = None, 0
    template = learner.init(jax.random.PRNGKey(config.seed))
    if run.has_checkpoint(ckpt):
        state, start = run.load_checkpoint(template, ckpt)
        run.truncate_metrics(start) if not stage else None
        log.info("resuming %s from step %d", ckpt, start)
    else:
        state = template
    bar = tqdm(total=config.steps, initial=start, desc=stage.rstrip("_") or "train", unit="upd",
               disable=not config.progress, dynamic_ncols=True)

    def on_chunk(step: int, state: Any, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        row = {f"{stage}{k}" if stage else k: v for k, v in metrics.items()}
        due = lambda every: every > 0 and (step % every == 0)
        if env_id and due(config.eval_every) and step < config.steps:
            result = evaluate(learner.policy, learner.policy_params(state), env_id, config.eval_episodes,
                              config.eval_seed, dataset_name)
            row["eval/return"] = result["return_mean"]
            if "normalized_mean" in result:
                row["eval/normalized_score"] = result["normalized_mean"]
                bar.set_postfix(score=f"{result['normalized_mean']:.1f}")
        run.log_metrics(step, row)
        if due(config.checkpoint_every) or due(config.eval_every) or step == config.steps:
            run.save_checkpoint(state, step, ckpt)

    state = fit(learner, config.steps, config.seed, config.log_every, state, start, on_chunk)
    bar.close()
    if start >= config.steps:
        return state
    run.save_checkpoint(state, config.steps, ckpt)
    return state


def train(algo: str, config: TrainConfig) -> dict[str, Any]:
    """Train ``algo`` as configured, evaluate the final checkpoint, write results.json and the learning curve."""
    module = get_algorithm(algo)
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(algo, config)
    run = Run.create(run_dir, config_dict(algo, config), resume=config.resume)
    dataset = load_dataset_for(config)
    env_id = eval_env_id(config, dataset)
    started = time.perf_counter()
    if hasattr(module, "run_pipeline"):
        results = module.run_pipeline(config, dataset, run, env_id)
    else:
        learner = module.make_learner(config, dataset)
        state = train_learner(learner, config, run, env_id, dataset.name)
        results = final_evaluation(learner, state, config, env_id, dataset.name)
    results.update(algo=algo, dataset=dataset.name, seed=config.seed, steps=config.steps,
                   train_seconds=time.perf_counter() - started, run_dir=str(run.path))
    run.save_results(results)
    run.plot()
    return results


def final_evaluation(learner: Learner, state: Any, config: TrainConfig, env_id: str, dataset_name: str) -> dict:
    result = evaluate(learner.policy, learner.policy_params(state), env_id, config.eval_episodes,
                      config.eval_seed, dataset_name)
    result["checkpoint"] = "final"
    return result


def evaluate_run(run_dir: str | Path, episodes: int | None = None, eval_seed: int | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run's final checkpoint (``ipdrl eval RUN_DIR``)."""
    run = Run.open(run_dir)
    saved = run.config
    module = get_algorithm(saved["algo"])
    config = config_from_json(saved, module.Config)
    if episodes is not None:
        config.eval_episodes = episodes
    if eval_seed is not None:
        config.eval_seed = eval_seed
    dataset = load_dataset_for(config)
    env_id = eval_env_id(config, dataset)
    if hasattr(module, "evaluate_pipeline"):
        return module.evaluate_pipeline(config, dataset, run, env_id)
    learner = module.make_learner(config, dataset)
    if not run.has_checkpoint():
        raise FileNotFoundError(f"{run.path} has no checkpoint yet: train it first (or --resume it).")
    state, step = run.load_checkpoint(learner.init(jax.random.PRNGKey(config.seed)))
    result = final_evaluation(learner, state, config, env_id, dataset.name)
    result["step"] = step
    return result

