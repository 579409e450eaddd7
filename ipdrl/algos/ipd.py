"""IPD — Imaginary Planning Distillation (Qin et al., arXiv 2603.04289, AAMAS 2026).

    stage 1  IQL                    -> Q, V and the AWR policy                         (ipdrl.algos.iql)
    stage 2  ensemble world model   -> dynamics with uncertainty U(s, a)               (ipdrl.world_models.ensemble)
    stage 3  MPC augmentation       -> D_aug = D + imagined segments, value labels     (ipdrl.augmentation)
    stage 4  value-guided Decision Transformer on D_aug                                (ipdrl.algos.dt)

Stage 4 minimises ``MSE(a_hat, a) - alpha * Q(s, a_hat) / mean|Q|`` (Q: IQL's twin-min target critic, frozen
unless ``finetune_critic``, which keeps training it with IQL's losses on D_aug); ``--action-weighting advantage``
makes the MSE a mean weighted by IQL's AWR weight of each data action, exp(temperature * (Q(s, a) - V(s))), so that
the imitation anchor is the actions the critic rates above their state's value (Q judged at data actions only). Its
return tokens are the discounted return-to-go in V's units (imagined segments bootstrapped with V at their end),
divided by ``return_scale``. Acting, the token at every step is ``value_factor * V(s_t)`` ("dynamic RTG"); ``--rtg-mode
classic`` instead asks for a fixed target and decrements it by the observed (scaled) rewards.

Ablations: ``--augment.ratio 0`` (no augmentation: stages 2-3 skipped, labels from the real data),
``--augment.mode greedy-q``, ``--alpha 0``, ``--rtg-mode classic``. Conditioning like DT instead — undiscounted
tokens and a fixed, ambitious target: ``--rtg-mode classic --return-discount 1 --return-scale 1000`` (the target:
DT's per-family one, ``--raw-target-return``, in V's units; docs/evidence/tokens.md measures why this matters at the
``cpu`` budget). ``ipdrl run``'s quick preset conditions this way (benchmarks/sweeps/quick-screen.toml).

Stages 1-3 (:mod:`ipdrl.algos.ipd_stages`) are cached under ``cache_dir``, each keyed by a hash of what it
depends on, so a run that changes only stage-4 settings (alpha, rtg_mode, ...) reuses all three. IQL and the policy
train in the run directory with stage prefixes (``iql_``, ``policy_``) and resume with ``--resume``; the world
model and the augmented dataset are written atomically once complete; an interrupted augmentation resumes from
its last saved batch (``progress.pkl`` in its cache entry), and one with another imagined:real ratio or number of
passes continues from the batches already rolled out (the files are kept, so a ratio sweep rolls out each batch
once; deleting them only costs that reuse).

Budgets: ``tiny`` runs in seconds (tests). ``cpu``'s stage 1 is the IQL baseline's own cpu budget (its checkpoint is
bit-identical to ``ipdrl train --algo iql`` with the same seed; 30k updates left the critic too weak on
halfcheetah-medium-replay, ``benchmarks/evidence.py critic``), and its stage-4 transformer is DT's ``cpu``
network. ``paper`` uses the published sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Literal

import jax
import numpy as np

from ipdrl import augmentation
from ipdrl.algos import Algorithm, dt, iql, ipd_stages as stages, register
from ipdrl.algos.window_critic import WindowCritic, WindowCriticConfig
from ipdrl.augmentation import AugmentConfig
from ipdrl.config import RunConfig, require
from ipdrl.data.dataset import Dataset, transition_fields
from ipdrl.data.loading import dataset_label
from ipdrl.runs import Run
from ipdrl.storage import atomic_write_json
from ipdrl.training import Learner, evaluate_final, train_in_run
from ipdrl.world_models import ensemble
from ipdrl.world_models.ensemble import EnsembleConfig

RTG_MODES = ("value", "classic")
LOSS_ON = ("all", "no-prefixes", "data")


@dataclasses.dataclass
class Config(RunConfig, dt.Hyperparameters):
    """IPD: stages 1-3 nested (``--iql.*``, ``--ensemble.*``, ``--augment.*``); the stage-4 policy at the top level
    (transformer, optimiser, ``--steps``, evaluation)."""

    iql: iql.Hyperparameters = dataclasses.field(default_factory=iql.Hyperparameters)
    """Stage 1 value learner (its seed, evaluation seed and progress are the run's)."""
    iql_run: str | None = None
    """Stage 1 from the `ipdrl train --algo iql` run at DIR (its latest checkpoint, e.g. one trained to where its
    learning curve plateaus) instead of training --iql.*; that run's settings replace --iql.*."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """Stage 2 world model."""
    world_model: str | None = None
    """Use the ensemble saved at PATH (PATH.msgpack + PATH.json, e.g. from `ipdrl augment`) instead of the cached
    stage 2; trained and saved there if absent."""
    augment: AugmentConfig = AugmentConfig()
    """Stage 3 augmentation; --augment.ratio 0 skips stages 2 and 3 (no-augmentation ablation)."""
    alpha: float = 1.0
    """Weight of the value-guidance term -Q(s, a_hat) / mean|Q| (0: plain imitation of D_aug)."""
    rtg_mode: str = "value"
    """Return token while acting: 'value' (value_factor * V(s_t), recomputed each step) or 'classic' (a fixed
    target decremented by observed rewards)."""
    value_factor: float = 1.0
    """Multiplies V(s_t) in the dynamic token (>= 1 asks for more than the value estimate)."""
    candidates: tuple[float, ...] = ()
    """QT's inference rule: try the tokens c * token for each factor c here (e.g. 1 1.5 2; token: value_factor *
    V(s_t), or the classic rule's target) at every step and act with the action the critic's Q rates highest;
    empty: the one token."""
    policy_samples: int = 0
    """With --ensemble-action critic: this many samples of stage 1's IQL policy are candidates too, beside the
    transformers' actions, and the critic's Q picks among all of them at every step; 0: the transformers' only."""
    return_relabel: Literal["none", "max-value"] = "none"
    """'max-value': QDT's relabelling of the training tokens, R_t <- max(r_t + gamma R_{t+1}, V(s_t)) backwards
    along every trajectory, so that the transformer can stitch; 'none': the returns-to-go themselves."""
    target_return: float | None = None
    """Classic mode only: the first step's target in V's units (discounted, scaled rewards); default: from
    --raw-target-return, else the largest return-to-go label at an episode start of the training data."""
    raw_target_return: float | None = None
    """Classic mode with undiscounted tokens (--return-discount 1): the first step's target in the environment's
    reward units, like DT's --target-return, converted to V's units with IQL's reward scale. The locomotion presets
    set DT's own targets, so that conditioning like DT asks for what DT asks for."""
    action_weighting: Literal["none", "advantage"] = "none"
    """'advantage': weight each action's imitation error by the critic's AWR weight exp(temperature * (Q - V))
    of that action (IQL's --iql.temperature, or --weight-temperature, and --iql.max-weight), so that the
    transformer imitates what IQL's actor imitates, Q judging only the data's actions; 'none': every action alike
    (the method)."""
    weight_temperature: float | None = None
    """Inverse temperature of --action-weighting advantage's weight exp(temperature * (Q - V)); default: stage 1's
    --iql.temperature (with --iql-run, that run's). Lower spreads the weight over more of the data's actions."""
    imagined_max_weight: float | None = None
    """--action-weighting advantage: cap the weight of the planner's (imagined) actions at this, below the cap of
    real ones (--iql.max-weight). The planner chose them by the same Q that weights them, so uncapped they take a
    far larger share of the weight than of the data (benchmarks/awr_weights.py --augmented); 1 counts none of them
    above an action worth its state's value. Default: the same cap as real actions."""
    finetune_critic: bool = False
    """Keep training the critic (IQL's losses) on D_aug alongside the policy; default: frozen."""
    guidance_critic: Literal["iql", "own"] = "iql"
    """Whose Q guides stage 4 (and rates --candidates): stage 1's IQL critic, or 'own': a critic of the
    transformer's own actions trained with it on D_aug (QT's in-window n-step target, --own-critic.*)."""
    own_critic: WindowCriticConfig = WindowCriticConfig()
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
        super().__post_init__()
        require(self.loss_on in LOSS_ON, f"unknown --loss-on {self.loss_on!r}: use one of {', '.join(LOSS_ON)}.")
        require(self.rtg_mode in RTG_MODES, f"unknown --rtg-mode {self.rtg_mode!r}: use 'value' or 'classic'.")
        require(self.return_relabel in ("none", "max-value"),
                f"unknown --return-relabel {self.return_relabel!r}: use 'none' or 'max-value'.")
        require(self.action_weighting in ("none", "advantage"),
                f"unknown --action-weighting {self.action_weighting!r}: use 'none' or 'advantage'.")
        require(self.guidance_critic in ("iql", "own"),
                f"unknown --guidance-critic {self.guidance_critic!r}: use 'iql' or 'own'.")
        require(self.transformers == 1 or self.guidance_critic != "own",
                "--transformers > 1 is not supported with --guidance-critic own (its critic tracks one "
                "transformer's weights): use --transformers 1, or --guidance-critic iql.")
        require(self.policy_samples >= 0, f"--policy-samples must be >= 0, got {self.policy_samples}.")
        require(self.policy_samples == 0 or (self.ensemble_action == "critic" and self.guidance_critic == "iql"),
                "--policy-samples adds candidates for stage 1's critic to choose among: use it with "
                "--ensemble-action critic and --guidance-critic iql.")
        require(self.alpha >= 0, f"--alpha must be >= 0, got {self.alpha}.")
        require(self.imagined_max_weight is None or (self.imagined_max_weight > 0
                                                     and self.action_weighting == "advantage"),
                f"--imagined-max-weight caps --action-weighting advantage's weights: it must be > 0 and needs "
                f"--action-weighting advantage (got {self.imagined_max_weight}, {self.action_weighting!r}).")
        require(self.imagined_max_weight is None or self.augment.ratio > 0,
                "--imagined-max-weight caps the imagined actions' weights, and --augment.ratio 0 makes none: drop "
                "one of them.")
        require(self.weight_temperature is None or self.weight_temperature >= 0,
                f"--weight-temperature must be >= 0 (0 weighs every action alike), got {self.weight_temperature}.")
        require(self.return_discount is None or 0 < self.return_discount <= 1,
                f"--return-discount must be in (0, 1], got {self.return_discount}.")


BUDGETS = {
    "tiny": dict(dt.BUDGETS["tiny"], iql=dict(iql.BUDGETS["tiny"], steps=200, log_every=50, eval_every=0),
                 ensemble=ensemble.BUDGETS["tiny"], augment=augmentation.BUDGETS["tiny"]),
    "cpu": dict(dt.BUDGETS["cpu"], iql=dict(iql.BUDGETS["cpu"], eval_every=0),
                ensemble=ensemble.BUDGETS["cpu"], augment=dict(augmentation.BUDGETS["cpu"], prefix_length=10)),
    "paper": dict(dt.BUDGETS["paper"], iql=dict(iql.BUDGETS["paper"], eval_every=0),
                  ensemble=ensemble.BUDGETS["paper"], augment=augmentation.BUDGETS["paper"]),
}
# Stage 1 takes IQL's per-domain settings. alpha 0.4 on halfcheetah is a setting of ours, not QT's: QT's run script
# uses eta 3.0 on hopper-medium-replay and 5.0 (with K 5) on halfcheetah-medium-replay (1.0 is hopper-medium's).
PRESETS = {family: {"iql": settings} for family, settings in iql.PRESETS.items()}
PRESETS["halfcheetah"] = dict(PRESETS.get("halfcheetah", {}), alpha=0.4)
for family in ("hopper", "halfcheetah", "walker2d", "ant"):
    PRESETS[family] = dict(PRESETS[family], raw_target_return=dt.PRESETS[family]["target_return"])
PRESETS["kitchen"] = dict(PRESETS["kitchen"], return_scale=1.0)  # V in completions: a few units at most
PRESETS["antmaze@cpu"] = dict(PRESETS["antmaze@cpu"], **dt.PRESETS["antmaze@cpu"])  # stage 4 is DT's network


def announce(run: Run, stage: int, text: str) -> None:
    run.logger.info(f"stage {stage}/4: {text}")  # propagates to the console log too


# ---- stage 4: the value-guided transformer ----------------------------------------------------------------
def policy_learner(config: Config, data: Dataset, iql_state: dict, labels: np.ndarray, timesteps: np.ndarray
                   ) -> Learner:
    """The stage-4 learner on ``data`` (D_aug) with the given return labels (V's units) and timesteps."""
    scale, shift = (float(x) for x in np.asarray(iql_state["reward_scale"]))
    returns = dt.ReturnTokens(
        labels=labels,
        timesteps=timesteps,
        target=classic_target(config, labels[data.episode_starts], scale, shift),
        reward_scale=scale,
        reward_shift=shift,
        discount=token_discount(config),
        value_factor=config.value_factor if config.rtg_mode == "value" else None,
        candidates=tuple(config.candidates),
    )
    if config.finetune_critic:
        base = iql.make_learner(config.iql, data)
        # D_aug's episode returns differ from the data's: keep the critic's reward units, not a rescaled copy.
        finetune = base._replace(fields=transition_fields(data, scale, shift))
        critic_state = iql_state
    else:
        finetune = None
        kept = ["critic_target", "value", "value_high", "obs_stats", "reward_scale"]
        kept += ["actor"] if config.policy_samples else []  # --policy-samples draws from IQL's policy
        critic_state = {k: iql_state[k] for k in kept if k in iql_state}
    critic = dt.Critic(state=critic_state, q_value=functools.partial(iql.q_value, config.iql),
                       value=functools.partial(iql.planning_value, config.iql), finetune=finetune,
                       action_weight=(functools.partial(iql.awr_weight, weighting_settings(config))
                                      if config.action_weighting == "advantage" else None),
                       proposals=(functools.partial(iql.policy_samples, config.iql, data.act_dim, config.policy_samples)
                                  if config.policy_samples else None))
    own = WindowCritic(config.own_critic, config.iql.discount) if config.guidance_critic == "own" else None
    weight_cap = (np.where(augmentation.imagined_steps(data), config.imagined_max_weight, np.inf)
                  if config.imagined_max_weight is not None else None)
    return dt.make_learner(config, data, returns, critic, config.alpha, loss_mask=loss_mask(data, config.loss_on),
                           own_critic=own, weight_cap=weight_cap)


def weighting_settings(config: Config) -> iql.Hyperparameters:
    """Stage 1's settings with --weight-temperature, where given, as the AWR weight's temperature."""
    if config.weight_temperature is None:
        return config.iql
    return dataclasses.replace(config.iql, temperature=config.weight_temperature)


def classic_target(config: Config, first_labels: np.ndarray, scale: float, shift: float) -> float:
    """The classic rule's first target in V's units: --target-return, else --raw-target-return converted (only
    undiscounted tokens are a sum of scaled rewards), else the largest label at an episode start."""
    if config.target_return is not None:
        return config.target_return
    if config.raw_target_return is not None and token_discount(config) == 1.0 and shift == 0.0:
        return scale * config.raw_target_return
    return float(first_labels.max())


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
    if config.iql_run:
        _, iql_state, iql_info = stages.load_iql_run(config.iql_run, dataset)
        announce(run, 1, f"IQL value function from {config.iql_run} ({iql_info['steps']} updates)")
        if dataset_label(iql_info["trained_on"]) != dataset_label(config.dataset):
            raise ValueError(f"--iql-run {config.iql_run} was trained on {iql_info['trained_on']}, not on "
                             f"{config.dataset}: pass an IQL run of this dataset.")
    else:
        announce(run, 1, f"IQL value function ({config.iql.steps} updates)")
        iql_state, iql_info = stages.value_stage(config.iql, dataset, config, run, env_id, config.cache_dir)
    values = stages.value_functions(config.iql, iql_state, dataset.act_dim)
    info: dict[str, Any] = {"iql": iql_info}
    token_values = values._replace(gamma=token_discount(config))
    if config.augment.ratio <= 0:
        announce(run, 2, "world model skipped (--augment.ratio 0: no augmentation)")
        announce(run, 3, "augmentation skipped; return labels of the real data")
        labels = relabelled(config, dataset, augmentation.return_labels(dataset, token_values), token_values)
        return iql_state, dataset, labels, dataset.timesteps(), info
    announce(run, 2, "ensemble world model" + (f" from {config.world_model}" if config.world_model else ""))
    model, info["world_model"] = stages.world_model_stage(config.ensemble, dataset, config.seed, config.progress,
                                                          config.world_model, config.cache_dir)
    announce(run, 3, f"{config.augment.mode} augmentation (imagined:real target {config.augment.ratio})")
    augmented, info["augment"] = stages.augmentation_stage(config.augment, dataset, values, model, config.seed,
                                                           config.progress, config.cache_dir,
                                                           [iql_info["key"], info["world_model"]["key"]])
    labels = (augmented.infos["return_to_go"] if config.return_discount is None
              else augmentation.return_labels(augmented, token_values))
    return iql_state, augmented, relabelled(config, augmented, labels, token_values), augmented.infos["timesteps"], info


def relabelled(config: Config, data: Dataset, labels: np.ndarray, values: augmentation.ValueFunctions) -> np.ndarray:
    """The training tokens' labels after ``--return-relabel``."""
    return augmentation.max_value_relabel(data, labels, values) if config.return_relabel == "max-value" else labels


def with_stage1_settings(config: Config) -> Config:
    """``config`` with ``--iql-run``'s IQL settings in place of ``--iql.*`` (the critic's networks and discount)."""
    return dataclasses.replace(config, iql=stages.iql_run_settings(config.iql_run)) if config.iql_run else config


def train(config: Config, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
    """Stages 1-4, then the final checkpoint's evaluation; writes the augmentation report into the run."""
    config = with_stage1_settings(config)
    iql_state, data, labels, timesteps, info = training_data(config, dataset, run, env_id)
    if "augment" in info:
        report = info["augment"]["report"]
        atomic_write_json(run.path / "augmentation_report.json", report)
        augmentation.plot_report(report, run.path / "augmentation_report.png")
        run.log_metrics(0, {f"augment/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
    announce(run, 4, f"value-guided transformer on {data.size} transitions ({config.steps} updates, alpha "
                     f"{config.alpha}, {config.rtg_mode} return tokens)")
    learner = policy_learner(config, data, iql_state, labels, timesteps)
    started = time.perf_counter()
    state = train_in_run(learner, config, config, run, env_id, dataset.reference(), stage="policy_")
    info["policy"] = {"seconds": time.perf_counter() - started, "transitions": data.size,
                      "imagined_transitions": int(augmentation.imagined_steps(data).sum())}
    result = evaluate_final(learner, state, config, env_id, dataset.reference())
    return {**result, "return_target": float(state["return_target"]), "stages": _brief(info)}


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    """Stage info for results.json: the reports without their plot data."""
    return {name: {k: ({r: x for r, x in v.items() if r != "plot_data"} if k == "report" else v)
                   for k, v in stage.items()} for name, stage in info.items()}


def evaluate(config: Config, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
    """Re-evaluate the policy's final checkpoint (``ipdrl eval RUN_DIR``); needs only the run directory."""
    if not run.has_checkpoint("policy_checkpoint"):
        raise FileNotFoundError(f"{run.path} has no stage-4 policy checkpoint yet: train it first (or --resume it).")
    config = with_stage1_settings(config)
    iql_template = jax.jit(iql.make_learner(config.iql, dataset).init)(jax.random.PRNGKey(config.seed))
    # Acting needs no return labels: they only shape the training fields, and the return target that the classic
    # rule starts from is part of the checkpointed state, so zeros of the right shape serve as the template.
    template_labels = np.zeros(dataset.size, np.float32)
    learner = policy_learner(config, dataset, iql_template, template_labels, dataset.timesteps())
    state, step = run.load_checkpoint(learner.init(jax.random.PRNGKey(config.seed)), "policy_checkpoint")
    result = evaluate_final(learner, state, config, env_id, dataset.reference())
    return {**result, "step": step}


ALGORITHM = register(Algorithm(name="ipd", Config=Config, train=train, evaluate=evaluate, budgets=BUDGETS,
                               presets=PRESETS, summary="IPD: Imaginary Planning Distillation (Qin et al. 2026)."))
