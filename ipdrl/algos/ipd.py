"""IPD — Imaginary Planning Distillation (Qin et al., arXiv 2603.04289, AAMAS 2026).

    stage 1  IQL                    -> Q, V and the AWR policy                         (ipdrl.algos.iql)
    stage 2  ensemble world model   -> dynamics with uncertainty U(s, a)               (ipdrl.world_models.ensemble)
    stage 3  MPC augmentation       -> D_aug = D + imagined segments, value labels     (ipdrl.augmentation)
    stage 4  value-guided Decision Transformer on D_aug                                (ipdrl.algos.dt)

Stage 4 minimises ``MSE(a_hat, a) - alpha * Q(s, a_hat) / mean|Q|`` (Q: IQL's twin-min target critic, frozen
unless ``finetune_critic``, which keeps training it with IQL's losses on D_aug). Its return tokens are the
discounted return-to-go in V's units (imagined segments bootstrapped with V at their end), divided by
``return_scale``. Acting, the token at every step is ``value_factor * V(s_t)`` ("dynamic RTG"); ``--rtg-mode
classic`` instead asks for a fixed target and decrements it by the observed (scaled) rewards.

Ablations: ``--augment.ratio 0`` (no augmentation: stages 2-3 skipped, labels from the real data),
``--augment.mode greedy-q``, ``--alpha 0``, ``--rtg-mode classic``. Conditioning like DT instead — undiscounted
tokens and a fixed, ambitious target: ``--rtg-mode classic --return-discount 1 --return-scale 1000 --target-return T``
(T in V's units; docs/evidence/tokens.md measures why this matters at the ``cpu`` budget).

Stages 1-3 are cached under ``cache_dir``, each keyed by a hash of what it depends on: IQL by (dataset
fingerprint, IQL settings, seed); the world model by (dataset fingerprint, ensemble settings, seed), or the
file given with ``--world-model``; the augmentation by (IQL key, world-model key, augmentation settings, seed).
A run that changes only stage-4 settings (alpha, rtg_mode, ...) therefore reuses all three. IQL and the policy
train in the run directory with stage prefixes (``iql_``, ``policy_``) and resume with ``--resume``; the world
model and the augmented dataset are written atomically once complete; an interrupted augmentation resumes from
its last saved batch (``progress.pkl`` in its cache entry), and one with another imagined:real ratio or number of
passes continues from the batches already rolled out (the files are kept, so a ratio sweep rolls out each batch
once; deleting them only costs that reuse).

Budgets (2-core CPU): ``tiny`` runs in seconds (tests). ``cpu`` takes about 30 minutes on one core for a shared
dataset. Its stage 1 is the IQL baseline's own cpu budget (70k updates, ~10 min; the checkpoint is bit-identical to
``ipdrl train --algo iql`` with the same seed): 30k updates left the critic too weak on halfcheetah-medium-replay
(``benchmarks/evidence.py critic``). Its stage-4 transformer is 2 layers of width 64 with K 10 — 0.96 GFLOP per
update (XLA cost analysis), 130 updates/s on the family-26 EPYC — where the CORL-sized 3 x 128, K 20 network costs
12.4 GFLOP per update and runs at 14.6 updates/s (9.9 on one core, 57% of its measured matmul peak).
``paper`` uses the published sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tyro.conf import Suppress

from ipdrl import augmentation
from ipdrl.algos import dt, iql
from ipdrl.augmentation import AugmentConfig
from ipdrl.config import config_from_json
from ipdrl.data.d4rl import read_d4rl, write_d4rl
from ipdrl.data.dataset import Dataset, transition_fields
from ipdrl.pipelines import final_evaluation, train_learner
from ipdrl.runs import Run, atomic_write_json
from ipdrl.training import Learner
from ipdrl.world_models import ensemble
from ipdrl.world_models.ensemble import EnsembleConfig

RTG_MODES = ("value", "classic")
LOSS_ON = ("all", "no-prefixes", "data")
# Settings that do not change what a stage computes (where it is saved, how it is shown, how it is evaluated).
UNHASHED = ("dataset", "env", "run_dir", "resume", "progress", "eval_every", "eval_episodes", "eval_seed",
            "checkpoint_every")


@dataclasses.dataclass
class IQLStage(iql.Config):
    """IQL's settings as IPD's stage 1: the run-level ones are hidden here and follow IPD's own."""

    dataset: Suppress[str] = "embedded"
    env: Suppress[str | None] = None
    seed: Suppress[int] = 0
    eval_seed: Suppress[int] = 10_000
    run_dir: Suppress[str | None] = None
    resume: Suppress[bool] = False
    progress: Suppress[bool] = True


@dataclasses.dataclass
class Config(dt.Config):
    """IPD: stages 1-3 nested (``--iql.*``, ``--ensemble.*``, ``--augment.*``); the stage-4 policy at the top level
    (transformer, optimiser, ``--steps``, evaluation)."""

    iql: IQLStage = dataclasses.field(default_factory=IQLStage)
    """Stage 1 value learner (dataset, seed, evaluation seed and progress are the top-level ones)."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """Stage 2 world model."""
    world_model: str | None = None
    """Load this trained ensemble (PATH of PATH.msgpack + PATH.json, e.g. from `ipdrl augment`) instead of stage 2."""
    augment: AugmentConfig = AugmentConfig()
    """Stage 3 augmentation; --augment.ratio 0 skips stages 2 and 3 (no-augmentation ablation)."""
    alpha: float = 1.0
    """Weight of the value-guidance term -Q(s, a_hat) / mean|Q| (0: plain imitation of D_aug)."""
    rtg_mode: str = "value"
    """Return token while acting: 'value' (value_factor * V(s_t), recomputed each step) or 'classic' (a fixed
    target decremented by observed rewards)."""
    value_factor: float = 1.0
    """Multiplies V(s_t) in the dynamic token (>= 1 asks for more than the value estimate)."""
    target_return: float | None = None
    """Classic mode only: the first step's target in V's units (discounted, scaled rewards); default: the largest
    return-to-go label at an episode start of the training data."""
    finetune_critic: bool = False
    """Keep training the critic (IQL's losses) on D_aug alongside the policy; default: frozen."""
    loss_on: str = "all"
    """Which steps of D_aug train the action loss; the others stay in the windows as context. 'all' (the method);
    'no-prefixes': not the real prefixes copied into the added episodes (those transitions are in the data already,
    with their own, lower returns); 'data': only the original data (a control: the added episodes then only take
    a share of every batch)."""
    return_discount: float | None = None
    """Discount of the training return tokens and of the classic rule's decrement; default: V's gamma, as the method
    has it (tokens in V's units, so V(s_t) is an in-distribution token). 1.0: undiscounted tokens (with imagined
    segments still bootstrapped with V) — a research variant for ``--rtg-mode classic``; V(s_t) is discounted."""
    return_scale: float = 100.0
    """Return tokens are V-unit returns-to-go divided by this (IQL's reward scaling keeps V within a few hundred)."""
    cache_dir: str = "runs/.cache"
    """Where stages 1-3 are cached, keyed by a hash of their inputs."""

    def __post_init__(self) -> None:
        # Nested settings arrive as dicts from presets and from a saved config.json.
        self.iql = _as_dataclass(IQLStage, self.iql)
        self.ensemble = _as_dataclass(EnsembleConfig, self.ensemble)
        self.augment = _as_dataclass(AugmentConfig, self.augment)
        self.iql = dataclasses.replace(self.iql, dataset=self.dataset, env=self.env, seed=self.seed,
                                       eval_seed=self.eval_seed, progress=self.progress, run_dir=None, resume=False)
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"unknown --loss-on {self.loss_on!r}: use one of {', '.join(LOSS_ON)}.")
        if self.rtg_mode not in RTG_MODES:
            raise ValueError(f"unknown --rtg-mode {self.rtg_mode!r}: use 'value' or 'classic'.")
        if self.alpha < 0 or self.return_scale <= 0:
            raise ValueError("--alpha must be >= 0 and --return-scale > 0.")
        if self.return_discount is not None and not 0 < self.return_discount <= 1:
            raise ValueError(f"--return-discount must be in (0, 1], got {self.return_discount}.")


def _as_dataclass(cls: type, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"expected {cls.__name__} settings, got {value!r}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {sorted(unknown)}; valid: {sorted(names)}.")
    return config_from_json(value, cls)


BUDGETS = {
    "tiny": dict(dt.BUDGETS["tiny"], iql=dict(iql.BUDGETS["tiny"], steps=200, log_every=50, eval_every=0),
                 ensemble=ensemble.BUDGETS["tiny"], augment=augmentation.BUDGETS["tiny"]),
    "cpu": dict(dt.BUDGETS["cpu"], iql=dict(iql.BUDGETS["cpu"], eval_every=0),
                ensemble=ensemble.BUDGETS["cpu"], augment=dict(augmentation.BUDGETS["cpu"], prefix_length=10)),
    "paper": dict(dt.BUDGETS["paper"], iql=dict(iql.BUDGETS["paper"], eval_every=0),
                  ensemble=ensemble.BUDGETS["paper"], augment=augmentation.BUDGETS["paper"]),
}
# Stage 1 takes IQL's per-domain settings; alpha follows QT's eta (1.0 on hopper, 0.4 on halfcheetah).
PRESETS = {family: {"iql": settings} for family, settings in iql.PRESETS.items()}
PRESETS["halfcheetah"] = dict(PRESETS.get("halfcheetah", {}), alpha=0.4)


# ---- stage cache ------------------------------------------------------------------------------------
def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the transitions (not the file name), so the same data under another path shares the cache."""
    digest = hashlib.sha256()
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        array = np.ascontiguousarray(getattr(dataset, key))
        digest.update(f"{key}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def stage_key(*parts: Any) -> str:
    """A short hash of JSON-able stage inputs (settings dicts, upstream keys, fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in UNHASHED}


def _file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def announce(run: Run, stage: int, text: str) -> None:
    run.logger.info(f"stage {stage}/4: {text}")  # propagates to the console log too


# ---- stage 1: IQL -------------------------------------------------------------------------------------
def value_stage(config: Config, dataset: Dataset, run: Run, env_id: str | None) -> tuple[dict, dict[str, Any]]:
    """IQL's trained state and stage info: from the cache, else trained (or resumed) in ``run`` as ``iql_``."""
    key = stage_key("iql", dataset_fingerprint(dataset), _settings(config.iql))
    cache = Run(Path(config.cache_dir) / f"iql-{key}")
    learner = iql.make_learner(config.iql, dataset)
    info: dict[str, Any] = {"key": key, "cache": str(cache.path)}
    if cache.has_checkpoint("iql"):
        state, _ = cache.load_checkpoint(jax.jit(learner.init)(jax.random.PRNGKey(config.seed)), "iql")
        return state, dict(info, cached=True, trained_in=json.loads((cache.path / "info.json").read_text())["run"])
    started = time.perf_counter()
    state = train_learner(learner, config.iql, run, env_id, dataset.name, stage="iql_")
    atomic_write_json(cache.path / "info.json", {"run": str(run.path), "settings": _settings(config.iql)})
    cache.save_checkpoint(state, config.iql.steps, "iql")  # last: a complete checkpoint marks the entry done
    return state, dict(info, cached=False, trained_in=str(run.path), seconds=time.perf_counter() - started)


# ---- stage 2: world model -----------------------------------------------------------------------------
def world_model_stage(config: Config, dataset: Dataset) -> tuple[ensemble.EnsembleModel, dict[str, Any]]:
    """The ensemble from ``--world-model``, the cache, or trained now (then cached)."""
    if config.world_model:
        path = Path(config.world_model).with_suffix("")
        model = ensemble.load_model(path)
        key = "file-" + _file_digest(path.with_suffix(".msgpack"), path.with_suffix(".json"))
        return model, {"key": key, "loaded": str(path), "cached": True,
                       "report": json.loads(path.with_suffix(".json").read_text()).get("info", {})}
    key = stage_key("world_model", dataset_fingerprint(dataset), dataclasses.asdict(config.ensemble), config.seed)
    path = Path(config.cache_dir) / f"world_model-{key}" / "model"
    if path.with_suffix(".json").exists():
        report = json.loads(path.with_suffix(".json").read_text())["info"]
        return ensemble.load_model(path), {"key": key, "cache": str(path), "cached": True, "report": report}
    model, report = ensemble.train_ensemble(dataset, config.ensemble, config.seed, config.progress)
    ensemble.save_model(model, path, report)
    return model, {"key": key, "cache": str(path), "cached": False, "report": report}


# ---- stage 3: augmentation ----------------------------------------------------------------------------
def augmentation_stage(config: Config, dataset: Dataset, values: augmentation.ValueFunctions, model: Any,
                       upstream: list[str]) -> tuple[Dataset, dict[str, Any]]:
    """D_aug (with ``return_to_go``, ``timesteps`` and ``imagined`` infos) from the cache, or augmented now."""
    key = stage_key("augment", upstream, dataclasses.asdict(config.augment), config.seed)
    folder = Path(config.cache_dir) / f"augment-{key}"
    info = {"key": key, "cache": str(folder / "dataset.hdf5")}
    if (folder / "report.json").exists():
        report = json.loads((folder / "report.json").read_text())
        return read_d4rl(folder / "dataset.hdf5", dataset.name), dict(info, cached=True, report=report)
    # An interrupted augmentation resumes from its progress file, and one with a new ratio continues from the
    # batches that augmentations with other ratios (same inputs) rolled out: the files stay in the cache.
    others = sorted(Path(config.cache_dir).glob("augment-*/progress.pkl"))
    augmented, report = augmentation.augment(dataset, values, model, config.augment, config.seed, config.progress,
                                             folder / "progress.pkl", other_progress_files=others)
    write_d4rl(augmented, folder / "dataset.hdf5", compression=None)  # a D4RL file: `--dataset` accepts it too
    atomic_write_json(folder / "report.json", report)  # last: its presence marks a complete entry
    return augmented, dict(info, cached=False, report=report)


# ---- stage 4: the value-guided transformer ----------------------------------------------------------------
def policy_learner(config: Config, data: Dataset, iql_state: dict, labels: np.ndarray, timesteps: np.ndarray
                   ) -> Learner:
    """The stage-4 learner on ``data`` (D_aug) with the given return labels (V's units) and timesteps."""
    scale, shift = (float(x) for x in np.asarray(iql_state["reward_scale"]))
    first_labels = labels[data.episode_starts]
    returns = dt.ReturnTokens(
        labels=labels,
        timesteps=timesteps,
        target=config.target_return if config.target_return is not None else float(first_labels.max()),
        reward_scale=scale,
        reward_shift=shift,
        discount=token_discount(config),
        value_factor=config.value_factor if config.rtg_mode == "value" else None,
    )
    if config.finetune_critic:
        base = iql.make_learner(config.iql, data)
        # D_aug's episode returns differ from the data's: keep the critic's reward units, not a rescaled copy.
        finetune = base._replace(fields=transition_fields(data, scale, shift))
        critic_state = iql_state
    else:
        finetune = None
        critic_state = {k: iql_state[k] for k in ("critic_target", "value", "obs_stats", "reward_scale")}
    critic = dt.Critic(state=critic_state, q_value=functools.partial(iql.q_value, config.iql),
                       value=functools.partial(iql.value, config.iql), finetune=finetune)
    return dt.make_learner(config, data, returns, critic, config.alpha, loss_mask=loss_mask(data, config.loss_on))


def loss_mask(data: Dataset, loss_on: str) -> np.ndarray | None:
    """The transitions that train the action loss under ``--loss-on`` (None: all of them)."""
    if loss_on == "no-prefixes":
        return ~augmentation.copied_prefixes(data)
    if loss_on == "data":
        return ~augmentation.added_episodes(data)
    return None


def token_discount(config: Config) -> float:
    return config.iql.discount if config.return_discount is None else config.return_discount


def training_data(config: Config, dataset: Dataset, run: Run, env_id: str | None
                  ) -> tuple[dict, Dataset, np.ndarray, np.ndarray, dict[str, Any]]:
    """Stages 1-3: (IQL state, training data, return labels, timesteps, stage info)."""
    announce(run, 1, f"IQL value function ({config.iql.steps} updates)")
    iql_state, iql_info = value_stage(config, dataset, run, env_id)
    values = augmentation.from_iql(config.iql, iql_state, dataset.act_dim)
    stages: dict[str, Any] = {"iql": iql_info}
    token_values = values._replace(gamma=token_discount(config))
    if config.augment.ratio <= 0:
        announce(run, 2, "world model skipped (--augment.ratio 0: no augmentation)")
        announce(run, 3, "augmentation skipped; return labels of the real data")
        return iql_state, dataset, augmentation.return_labels(dataset, token_values), dataset.timesteps(), stages
    announce(run, 2, "ensemble world model" + (f" from {config.world_model}" if config.world_model else ""))
    model, stages["world_model"] = world_model_stage(config, dataset)
    announce(run, 3, f"{config.augment.mode} augmentation (imagined:real target {config.augment.ratio})")
    augmented, stages["augment"] = augmentation_stage(config, dataset, values, model,
                                                      [iql_info["key"], stages["world_model"]["key"]])
    labels = (augmented.infos["return_to_go"] if config.return_discount is None
              else augmentation.return_labels(augmented, token_values))
    return iql_state, augmented, labels, augmented.infos["timesteps"], stages


def run_pipeline(config: Config, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
    """Stages 1-4, then the final checkpoint's evaluation; writes the augmentation report into the run."""
    iql_state, data, labels, timesteps, stages = training_data(config, dataset, run, env_id)
    if "augment" in stages:
        report = stages["augment"]["report"]
        atomic_write_json(run.path / "augmentation_report.json", report)
        augmentation.plot_report(report, run.path / "augmentation_report.png")
        run.log_metrics(0, {f"augment/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
    announce(run, 4, f"value-guided transformer on {data.size} transitions ({config.steps} updates, alpha "
                     f"{config.alpha}, {config.rtg_mode} return tokens)")
    learner = policy_learner(config, data, iql_state, labels, timesteps)
    started = time.perf_counter()
    state = train_learner(learner, config, run, env_id, dataset.name, stage="policy_")
    stages["policy"] = {"seconds": time.perf_counter() - started, "transitions": data.size,
                        "imagined_transitions": int(augmentation.imagined_steps(data).sum())}
    result = final_evaluation(learner, state, config, env_id, dataset.name)
    return {**result, "return_target": float(state["return_target"]), "stages": _brief(stages)}


def _brief(stages: dict[str, Any]) -> dict[str, Any]:
    """Stage info for results.json: the reports without their plot data."""
    return {name: {k: ({r: x for r, x in v.items() if r != "plot_data"} if k == "report" else v)
                   for k, v in info.items()} for name, info in stages.items()}


def evaluate_pipeline(config: Config, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
    """Re-evaluate the policy's final checkpoint (``ipdrl eval RUN_DIR``); needs only the run directory."""
    if not run.has_checkpoint("policy_checkpoint"):
        raise FileNotFoundError(f"{run.path} has no stage-4 policy checkpoint yet: train it first (or --resume it).")
    iql_template = jax.jit(iql.make_learner(config.iql, dataset).init)(jax.random.PRNGKey(config.seed))
    # Acting needs no return labels: they only shape the training fields, and the return target that the classic
    # rule starts from is part of the checkpointed state, so zeros of the right shape serve as the template.
    template_labels = np.zeros(dataset.size, np.float32)
    learner = policy_learner(config, dataset, iql_template, template_labels, dataset.timesteps())
    state, step = run.load_checkpoint(learner.init(jax.random.PRNGKey(config.seed)), "policy_checkpoint")
    result = final_evaluation(learner, state, config, env_id, dataset.name)
    return {**result, "step": step}
