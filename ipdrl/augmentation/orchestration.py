"""IPD stage 3's orchestration: branch points -> batches of imagined rollouts -> judged -> D_aug and a report."""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ipdrl.augmentation import episodes, progress as saved_progress
from ipdrl.augmentation.config import AugmentConfig
from ipdrl.augmentation.report import report as make_report
from ipdrl.augmentation.rollouts import Judgement, imagined_rollouts, judge
from ipdrl.augmentation.values import ValueFunctions, branch_candidates, real_data, return_labels, suboptimality
from ipdrl.data.dataset import Dataset, concatenate
from ipdrl.planning.mppi import PlannerConfig
from ipdrl.storage import atomic_write_bytes
from ipdrl.world_models import ensemble
from ipdrl.world_models.ensemble import EnsembleModel

log = logging.getLogger("ipdrl")


def augment(dataset: Dataset, values: ValueFunctions, model: EnsembleModel, config: AugmentConfig, seed: int,
            progress: bool = True, progress_file: Path | None = None, save_every_seconds: float = 60.0,
            other_progress_files: Sequence[Path] = ()) -> tuple[Dataset, dict]:
    """``D_aug = dataset + accepted imagined episodes``, and a report (see the module docstring).

    With ``progress_file``, the batches done so far are saved there (atomically, every ``save_every_seconds``, and
    once more at the end) and a call with the same inputs resumes from it; the result equals an uninterrupted
    call's, since every batch's randomness depends only on (seed, pass, batch). A call without a progress of its
    own starts from the furthest of ``other_progress_files`` saved for the same inputs and another ratio or number
    of passes: a ratio sweep rolls out each batch once.
    """
    started = time.perf_counter()
    model_obs_dim = int(model["stats"]["inputs"]["mean"].shape[-1]) - dataset.act_dim
    if model_obs_dim != dataset.obs_dim:
        raise ValueError(f"the world model was trained on observations of dim {model_obs_dim} (with actions of this "
                         f"dataset's dim), but dataset {dataset.name!r} has {dataset.obs_dim}; train it on this dataset.")
    data = real_data(dataset, values)
    delta = suboptimality(dataset, values, data, config.suboptimality_steps)
    candidates = branch_candidates(dataset, delta, config)
    if config.kappa is not None:
        kappa, data_uncertainty = float(config.kappa), None
    else:
        kappa, data_uncertainty = ensemble.uncertainty_threshold(model, dataset.observations, dataset.actions,
                                                                 config.uncertainty, config.kappa_quantile)
        kappa *= config.kappa_scale
    target = int(round(config.ratio * dataset.size))
    planner = PlannerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PlannerConfig)})
    rollout = functools.partial(imagined_rollouts, values=values, planner=planner, mode=config.mode,
                                length=config.rollout_length, kind=config.uncertainty)

    saving = progress_file is not None
    signature = saved_progress.signature(config, seed, dataset, kappa, candidates, model) if saving else {}
    saved = saved_progress.starting_point(progress_file, other_progress_files, signature) if saving else None
    segments: list[dict[str, np.ndarray]] = saved.segments if saved else []
    tried: list[Judgement] = saved.tried if saved else []
    batches_done, earlier_seconds = (saved.batches_done, saved.seconds) if saved else (0, 0.0)
    imagined_count = sum(segment["length"] for segment in segments)

    def save() -> None:
        seconds = earlier_seconds + time.perf_counter() - started
        atomic_write_bytes(progress_file, pickle.dumps(saved_progress.Progress(signature, batches_done, segments, tried, seconds)))

    last_save = time.perf_counter()
    bar = tqdm(total=target, initial=min(imagined_count, target), desc="augment", unit="imagined",
               disable=not progress, dynamic_ncols=True)
    batch = config.branch_batch
    batches = [(pass_index, first) for pass_index in range(config.max_passes if target > 0 else 0)
               for first in range(0, len(candidates), batch)]
    for number, (pass_index, first) in enumerate(batches):
        if imagined_count >= target:
            break
        if number < batches_done:
            continue
        branch = candidates[first:first + batch]
        padded = np.append(branch, np.repeat(branch[-1], batch - len(branch)))  # one compiled batch size
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), pass_index), first)
        rollouts = {k: np.asarray(v)[: len(branch)]
                    for k, v in rollout(model, jnp.asarray(dataset.observations[padded]), key).items()}
        verdict = judge(rollouts, branch, data, values, kappa, config)
        tried.append(verdict)
        accepted = np.flatnonzero(verdict.reason == "")
        segments += [{"branch": branch[i], "length": int(verdict.lengths[i]), "terminated": bool(verdict.terminated[i]),
                      **{k: rollouts[k][i] for k in ("observations", "actions", "rewards", "next_observations")}}
                     for i in accepted]
        imagined_count += int(verdict.lengths[accepted].sum())
        bar.update(min(imagined_count, target) - bar.n)
        batches_done = number + 1
        if saving and time.perf_counter() - last_save >= save_every_seconds:
            save()
            last_save = time.perf_counter()
    bar.close()
    if saving and batches_done > (saved.batches_done if saved else 0):
        save()
    segments, tried = saved_progress.cut(segments, tried, target, len(batches))
    imagined_count = sum(segment["length"] for segment in segments)
    simulated = sum(len(verdict.reason) for verdict in tried) * config.rollout_length

    base = dataset.replace(infos={**dataset.infos, "timesteps": episodes.timesteps_of(dataset),
                                  "imagined": episodes.imagined_steps(dataset)})
    augmented = concatenate([base, episodes.new_episodes(dataset, segments, config.prefix_length if config.attach == "add" else None)]) if segments else base
    augmented = augmented.replace(infos={**augmented.infos, "return_to_go": return_labels(augmented, values)})
    seconds = earlier_seconds + time.perf_counter() - started
    report = make_report(config, tried, segments, candidates, delta, kappa, data_uncertainty, dataset, augmented,
                     target, imagined_count, simulated, seconds)
    augmented = augmented.replace(metadata={**dataset.metadata, "augmentation": {
        k: v for k, v in report.items() if not isinstance(v, (list, dict))}})
    if imagined_count < target:
        log.warning("augment: the branch points ran out at imagined:real %.3f of the %.3f asked for (%d passes over "
                    "%d branch points); allow more passes (--augment.max-passes) or more branch points "
                    "(--augment.branch-fraction)", report["ratio_achieved"], config.ratio, config.max_passes,
                    len(candidates))
    log.info("augment: %d branch points, %d rollouts, %d accepted, imagined:real %.3f (target %.3f), kappa %.4g, "
             "%.0f imagined steps/s", report["branch_candidates"], report["rollouts"], report["accepted"],
             report["ratio_achieved"], config.ratio, kappa, report["imagined_steps_per_second"])
    return augmented, report
