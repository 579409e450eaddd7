"""DWM-MPC's trained parts: the ReBRAC base policy and critic, and the transition and reward models.

Each is loaded from where it was saved or trained now, resumably, in the run directory: ReBRAC as stage ``rebrac_``
(or from ``--base-run``), the models as stages ``<kind>_`` and ``reward_`` on all but the held-out episodes, then
measured on those and saved (or read from ``--models-from``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import jax

from ipdrl.algos import rebrac
from ipdrl.config import FitConfig, config_from_json
from ipdrl.data.dataset import Dataset
from ipdrl.presets import dataset_key
from ipdrl.runs import Run
from ipdrl.training import Learner, train_in_run
from ipdrl.world_models import common, diffusion, generative, meanflow, reward

# The functions below take DWM-MPC's run configuration (``ipdrl.algos.dwm_mpc.Config``: its ``rebrac``, ``model``,
# ``reward`` and ``planner`` settings, ``base_run``, ``models_from``, ``holdout_fraction`` and the run's seed).
Config = Any

TRANSITION_MODELS = {"diffusion": diffusion.MODEL, "meanflow": meanflow.MODEL}


class Base(NamedTuple):
    """The pretrained ReBRAC policy and critic."""

    settings: rebrac.Hyperparameters
    learner: Learner
    state: dict
    source: str


class WorldModels(NamedTuple):
    """The trained transition and reward models with their configs; ``info`` holds their held-out errors."""

    transition_config: diffusion.Config | meanflow.Config
    transition: common.Model
    reward_config: reward.Config
    reward: common.Model
    info: dict[str, Any]


def rebrac_learner(settings: rebrac.Hyperparameters, dataset: Dataset) -> Learner:
    learner = rebrac.make_learner(settings, dataset)
    # One compilation instead of one per initialiser op (orthogonal init compiles a QR per shape, seconds on CPU).
    return learner._replace(init=jax.jit(learner.init))


def load_base(config: Config, dataset: Dataset, run: Run, env_id: str, train: bool = True) -> Base:
    """ReBRAC from ``config.base_run``, else trained (or resumed) in ``run`` under the ``rebrac_`` stage."""
    if config.base_run is None and train:
        learner = rebrac_learner(config.rebrac, dataset)
        state = train_in_run(learner, config.rebrac, config, run, env_id, dataset.reference(), stage="rebrac_")
        return Base(config.rebrac, learner, state, f"trained in {run.path} (stage rebrac_)")
    if config.base_run is None:
        settings, seed, source, checkpoint = config.rebrac, config.seed, run, "rebrac_checkpoint"
    else:
        source, checkpoint = Run.open(config.base_run), "checkpoint"
        saved = source.config
        if saved.get("algo") != "rebrac":
            raise ValueError(f"--base-run {source.path} is a {saved.get('algo')!r} run; DWM-MPC needs a rebrac run.")
        if dataset_key(saved.get("dataset", "")) != dataset_key(config.dataset):
            raise ValueError(f"--base-run {source.path} was trained on {saved.get('dataset')!r}, this run uses "
                             f"{config.dataset!r}: pass a base run of the same dataset.")
        settings, seed = config_from_json(saved, rebrac.Hyperparameters), int(saved["seed"])
    learner = rebrac_learner(settings, dataset)
    if not source.has_checkpoint(checkpoint):
        raise FileNotFoundError(f"{source.path} has no trained ReBRAC ({checkpoint}): train it first (or --resume).")
    state, step = source.load_checkpoint(learner.init(jax.random.PRNGKey(seed)), checkpoint)
    if step < settings.steps:
        raise ValueError(f"ReBRAC in {source.path} stopped at step {step} of {settings.steps}: resume it first.")
    return Base(settings, learner, state, f"{checkpoint} of {source.path}")


def critic_reward_scale(base: Base) -> tuple[float, float]:
    scale, shift = jax.device_get(base.state["reward_scale"])
    return float(scale), float(shift)


def model_configs(config: Config) -> tuple[diffusion.Config | meanflow.Config, reward.Config]:
    model = config.model
    common_settings = dict(hidden_dims=model.hidden_dims, learning_rate=model.learning_rate,
                           batch_size=model.batch_size, members=model.members)
    if model.kind == "diffusion":
        transition_config = diffusion.Config(denoising_steps=model.denoising_steps, **common_settings)
    else:
        transition_config = meanflow.Config(**common_settings)
    settings = config.reward
    return transition_config, reward.Config(hidden_dims=settings.hidden_dims, learning_rate=settings.learning_rate,
                                            batch_size=settings.batch_size)


def load_world_models(config: Config, dataset: Dataset, run: Run, reward_scale: tuple[float, float],
                      train: bool = True) -> WorldModels:
    """Transition and reward models: loaded from ``models_from`` or this run, else trained here (resumable) on all
    but the held-out episodes, evaluated on those, and saved.

    ``reward_scale``: the critic's (scale, shift); the reward model is trained, and checked, in those units.
    """
    kind = TRANSITION_MODELS[config.model.kind]
    folder = Path(config.models_from) if config.models_from else run.path
    paths = {"transition": folder / f"{kind.kind}_model", "reward": folder / "reward_model"}
    missing = [str(p) for p in paths.values() if not common.model_exists(p)]
    if missing and (config.models_from or not train):
        raise FileNotFoundError(f"no trained world model at {', '.join(missing)}: train it first (or fix --models-from).")
    train_split, heldout = common.holdout_split(dataset, config.holdout_fraction, config.seed)
    scale, shift = reward_scale
    transition_config, reward_config = model_configs(config)
    stage = lambda steps: FitConfig(steps=steps, log_every=config.rebrac.log_every, eval_every=0,
                                    checkpoint_every=config.rebrac.checkpoint_every)

    if not common.model_exists(paths["transition"]):
        learner = generative.make_learner(kind, transition_config, train_split)
        state = train_in_run(learner, stage(config.model.steps), config, run, None, dataset.reference(), f"{kind.kind}_")
        model = common.model_of(state)
        metrics = generative.heldout_metrics(kind, transition_config, model, heldout, jax.random.PRNGKey(config.seed))
        generative.save(kind, paths["transition"], transition_config, model, metrics)
    if not common.model_exists(paths["reward"]):
        learner = reward.make_learner(reward_config, train_split, scale, shift)
        state = train_in_run(learner, stage(config.reward.steps), config, run, None, dataset.reference(), "reward_")
        model = common.model_of(state)
        reward.save(paths["reward"], reward_config, model, reward.heldout_metrics(reward_config, model, heldout))

    transition_config, transition_model, transition_info = generative.load(kind, paths["transition"])
    reward_config, reward_model, reward_info = reward.load(paths["reward"])
    model_scale = [float(x) for x in reward_model["stats"]["reward_scale"]]
    if abs(model_scale[0] - scale) > 1e-6 * abs(scale) or abs(model_scale[1] - shift) > 1e-6:
        raise ValueError(f"reward model {paths['reward']} predicts rewards scaled by {model_scale}, but the critic "
                         f"uses {[scale, shift]}: the units would differ. Retrain it for this base policy.")
    model_obs_dim = transition_model["stats"]["obs"]["mean"].shape[-1]
    if model_obs_dim != dataset.obs_dim:
        raise ValueError(f"{paths['transition']} models {model_obs_dim}-d states, the dataset has {dataset.obs_dim}: "
                         f"reuse models trained on this dataset.")
    if config.planner.disagreement_penalty and common.num_members(transition_model) < 2:
        raise ValueError(f"{paths['transition']} has one member; the disagreement penalty needs --model.members >= 2.")
    info = {"transition": {"kind": kind.kind, "path": str(paths["transition"]), **transition_info,
                           "config": dataclasses.asdict(transition_config)},
            "reward": {"path": str(paths["reward"]), **reward_info, "config": dataclasses.asdict(reward_config)}}
    return WorldModels(transition_config, transition_model, reward_config, reward_model, info)
