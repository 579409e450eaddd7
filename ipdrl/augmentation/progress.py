"""Resumable augmentation: how far the batch loop got, saved while it runs and reused by runs of other ratios."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import numpy as np

from ipdrl.augmentation.config import AugmentConfig
from ipdrl.augmentation.rollouts import Judgement
from ipdrl.data.dataset import Dataset
from ipdrl.world_models.ensemble import EnsembleModel

log = logging.getLogger("ipdrl")


class Progress(NamedTuple):
    """How far :func:`augment`'s batch loop got, in whole batches: saved while it runs, so an interrupted
    augmentation resumes, and kept when it ends, so one with another ratio continues from it."""

    signature: dict            # what the batches depend on; a saved progress with another signature is not used
    batches_done: int          # batches of branch points rolled out, counted across passes
    segments: list             # every segment those batches accepted, in order (the target cuts the result only)
    tried: list                # a Judgement per batch done
    seconds: float             # time spent in earlier attempts


NOT_ROLLOUT_SETTINGS = ("ratio", "max_passes", "prefix_length", "attach")
"""The ratio and passes only say when to stop; the prefix and attach mode only how segments become episodes."""


def rollout_settings(config: AugmentConfig) -> dict:
    """The settings that decide the batches rolled out: augmentations that agree on them share batches."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_ROLLOUT_SETTINGS}


def signature(config: AugmentConfig, seed: int, dataset: Dataset, kappa: float, candidates: np.ndarray,
                        model: EnsembleModel) -> dict:
    """What the batches depend on (not the ratio or the number of passes, which only say when to stop): the branch
    points stand for the data and V; the model's weights are hashed."""
    digest = hashlib.sha256(candidates.tobytes())
    for leaf in jax.tree_util.tree_leaves(model["params"]):
        digest.update(np.asarray(leaf).tobytes())
    return {"config": rollout_settings(config), "seed": seed, "size": dataset.size, "kappa": kappa,
            "inputs": digest.hexdigest()}


def load(path: Path, signature: dict, warn: bool) -> Progress | None:
    try:
        saved = pickle.loads(path.read_bytes())
    except Exception as error:  # noqa: BLE001 -- any unreadable file means: start over
        if warn:
            log.warning("augment: ignoring unreadable progress file %s (%s); starting over", path, error)
        return None
    if not isinstance(saved, Progress) or saved.signature != signature:
        if warn:
            log.warning("augment: %s was saved for other settings or data; starting over", path)
        return None
    return saved


def starting_point(progress_file: Path | None, others: Sequence[Path], signature: dict) -> Progress | None:
    """The run's own saved progress, else the furthest of ``others`` (augmentations of the same inputs with another
    ratio or number of passes): their batches are this run's first batches."""
    if progress_file is not None and progress_file.exists():
        saved = load(progress_file, signature, warn=True)
        if saved is not None:
            log.info("augment: resuming from %s (%d batches done)", progress_file, saved.batches_done)
            return saved
    found = [(saved, path) for path in others if path.exists() and path != progress_file
             for saved in [load(path, signature, warn=False)] if saved is not None]
    if not found:
        return None
    saved, path = max(found, key=lambda pair: pair[0].batches_done)
    log.info("augment: continuing from %s, the same batches for another ratio (%d batches done)", path,
             saved.batches_done)
    return saved


def cut(segments: list[dict], tried: list[Judgement], target: int, batches: int
         ) -> tuple[list[dict], list[Judgement]]:
    """The accepted segments and tried batches of a run that stops after ``batches`` batches or at the first segment
    that brings the imagined transitions to ``target``, whichever comes first."""
    tried = tried[:batches]
    accepted_so_far = np.cumsum([int((verdict.reason == "").sum()) for verdict in tried], dtype=int)
    segments = segments[:int(accepted_so_far[-1]) if len(tried) else 0]
    reached = np.cumsum([segment["length"] for segment in segments]) >= target
    if not reached.any():
        return segments, tried
    keep = int(np.argmax(reached)) + 1
    return segments[:keep], tried[:int(np.argmax(accepted_so_far >= keep)) + 1]
