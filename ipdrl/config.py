"""Settings shared by every training run; each algorithm's Config extends :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

ConfigT = TypeVar("ConfigT")


def config_from_json(saved: Mapping[str, Any], config_class: type[ConfigT]) -> ConfigT:
    """A dataclass config from its JSON form (a run's ``config.json``, a model's metadata): lists back to tuples,
    keys that are not fields of ``config_class`` ignored."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})


@dataclasses.dataclass
class TrainConfig:
    """Run settings common to every algorithm (budget, evaluation, run directory)."""

    dataset: str = "embedded"
    """Dataset: a .hdf5 path, a name in $IPDRL_DATASETS, 'embedded', 'minari:<id>' or a D4RL name (hopper-medium-v2)."""
    env: str | None = None
    """Gymnasium id to evaluate in; default: from the dataset's metadata or name (hopper -> Hopper-v5)."""
    seed: int = 0
    """Training seed (network init, batches)."""
    eval_seed: int = 10_000
    """First evaluation environment seed; kept apart from training seeds."""
    steps: int = 1_000_000
    """Gradient updates."""
    batch_size: int = 256
    log_every: int = 1000
    """Updates fused into one jitted lax.scan chunk; metrics are logged once per chunk."""
    eval_every: int = 50_000
    """Evaluate (and checkpoint) every this many updates; 0 evaluates only at the end."""
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    run_dir: str | None = None
    """Run directory; default runs/<algo>-<dataset>-s<seed>."""
    resume: bool = False
    """Continue the run in --run-dir from its last checkpoint."""
    progress: bool = True
    """Show a progress bar."""
