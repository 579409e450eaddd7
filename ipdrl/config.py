"""Settings dataclasses: what every run has (:class:`RunConfig`), what every trained stage has (:class:`FitConfig`).

An algorithm's settings are ``Hyperparameters(FitConfig)``, and what ``ipdrl train`` takes is
``Config(RunConfig, Hyperparameters)``. A multi-stage method nests its stages' hyperparameters as fields (IPD's
``iql``, DWM-MPC's ``rebrac``), so the run-level settings exist once. Validation lives in ``__post_init__`` only:
each class checks its own fields after ``super().__post_init__()``, and nested settings given as dicts (presets, a
saved ``config.json``) become their dataclasses first.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

ConfigT = TypeVar("ConfigT")


def config_from_json(saved: Mapping[str, Any], config_class: type[ConfigT]) -> ConfigT:
    """A dataclass config from its JSON form (a run's ``config.json``, a model's metadata): lists back to tuples,
    keys that are not fields of ``config_class`` ignored."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})


def nested(config_class: type[ConfigT], value: Any) -> ConfigT:
    """``value`` as a ``config_class``: kept if it is one, built from a dict (or another dataclass) otherwise."""
    if isinstance(value, config_class):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {config_class.__name__} settings, got {value!r}.")
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} settings {sorted(unknown)}; valid: {sorted(names)}.")
    return config_from_json(value, config_class)


class Settings:
    """Base of every settings dataclass (frozen or not): turns nested settings given as dicts into dataclasses."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            kind = hints.get(field.name)
            if isinstance(kind, type) and dataclasses.is_dataclass(kind):
                object.__setattr__(self, field.name, nested(kind, getattr(self, field.name)))


def require(condition: bool, message: str) -> None:
    """Reject a setting: ``message`` names the flag, what was given and what to pass instead."""
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass
class FitConfig(Settings):
    """How long and in what chunks one learner trains (every trained stage has its own)."""

    steps: int = 1_000_000
    """Gradient updates."""
    batch_size: int = 256
    log_every: int = 1000
    """Updates fused into one jitted lax.scan chunk; metrics are logged once per chunk."""
    eval_every: int = 50_000
    """Evaluate (and checkpoint) every this many updates; 0 evaluates only at the end."""
    checkpoint_every: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.steps >= 0 and self.batch_size >= 1 and self.log_every >= 1,
                f"need --steps >= 0, --batch-size >= 1 and --log-every >= 1; got {self.steps}, {self.batch_size}, "
                f"{self.log_every}.")
        require(self.eval_every >= 0 and self.checkpoint_every >= 0,
                "--eval-every and --checkpoint-every must be >= 0 (0: only at the end).")


@dataclasses.dataclass
class RunConfig(Settings):
    """Settings every run has once: its data, seeds, evaluation and directory."""

    dataset: str = "embedded"
    """Dataset: a .hdf5 path, a name in $IPDRL_DATASETS, 'embedded', 'minari:<id>' or a D4RL name (hopper-medium-v2)."""
    env: str | None = None
    """Gymnasium id to evaluate in; default: from the dataset's metadata or name (hopper -> Hopper-v5)."""
    seed: int = 0
    """Training seed (network init, batches)."""
    eval_seed: int = 10_000
    """First evaluation environment seed; kept apart from training seeds."""
    eval_episodes: int = 10
    run_dir: str | None = None
    """Run directory; default runs/<algo>-<dataset>-s<seed>."""
    resume: bool = False
    """Continue the run in --run-dir from its last checkpoint."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.eval_episodes >= 1, f"--eval-episodes must be at least 1, got {self.eval_episodes}.")
