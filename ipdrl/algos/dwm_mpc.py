"""DWM-MPC — inference-time policy optimisation through a differentiable world model.

Deb, Wright & Banerjee, "Model Predictive Control with Differentiable World Models for Offline Reinforcement
Learning" (arXiv 2603.22430; v2 retitled "Inference Time Policy Optimization for Offline RL with
Differentiable World Models"). Not the unrelated Diffusion World Model of arXiv 2402.03570.

A ReBRAC policy keeps improving its weights while it acts. At every real step t, for M particles with a
fresh noise bank eps^(m):

    s_0 = s_t,   a_j = pi_psi(s_j),   s_{j+1} = f(s_j, a_j, eps^(m)_j),   j < H
    J(psi) = mean_m [ sum_{j<H} gamma^j r(s_j, a_j) + gamma^H min_i Q_i(s_H, pi_psi(s_H)) ]
    E times: psi <- psi + lr * grad J(psi);   act pi_psi(s_t)

f is a conditional diffusion model (v1, gradients through all K reverse steps) or a one-step MeanFlow model
(v2); r is a reward model in the critic's units; Q and gamma are ReBRAC's. psi carries over between steps and
is reset to the pretrained weights at each episode start (``carry='reset'`` restarts from them every step).
The whole adapt-then-act step is one jitted function over all environments.

Extensions beyond the paper (off by default): a proximity penalty ``lambda ||psi - psi_0||^2`` and an ensemble
disagreement penalty against exploiting model error, Adam instead of plain ascent, masking imagined rewards
after a known termination. ``--tune`` picks adapt-or-not and the step size on environment seeds disjoint from
the evaluation seeds (as the paper does); results say how the choice was made.

Settings nest like IPD's stages: ``--rebrac.*`` (the base learner), ``--model.*`` (transition model), ``--reward.*``,
``--planner.*`` (:class:`ipdrl.planning.AscentConfig`) and ``--tuning.*``; the flat flags of earlier releases
(``--horizon``, ``--model-steps``, ...) still work for one release, with a warning. Paper settings: v1
``--model.kind diffusion --planner.particles 10 --planner.inner-steps 5 --adapt-lr 1e-3``; v2 ``--model.kind meanflow
--planner.particles 4096 --planner.inner-steps 1 --tune`` (lr from 5e-7, 5e-6, 5e-5, 5e-4). The defaults use M = 64
to keep one action within milliseconds on a CPU (``benchmarks/dwm_latency.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ipdrl import envs, evaluation
from ipdrl.algos import Algorithm, rebrac, register
from ipdrl.algos.dwm_models import (TRANSITION_MODELS, Base, WorldModels, critic_reward_scale, load_base,
                                    load_world_models)
from ipdrl.config import RunConfig, Settings, require
from ipdrl.data.dataset import Dataset
from ipdrl.data.statistics import normalize
from ipdrl.evaluation import Params, Policy
from ipdrl.planning.policy_ascent import AscentConfig, Imagination, make_policy
from ipdrl.presets import BUDGET_NAMES, fit_budget
from ipdrl.runs import Run
from ipdrl.storage import atomic_write_json
from ipdrl.world_models import common, reward

log = logging.getLogger("ipdrl")


@dataclasses.dataclass
class TransitionSettings(Settings):
    """The next-state model DWM-MPC differentiates through."""

    kind: Literal["meanflow", "diffusion"] = "meanflow"
    """'meanflow' (v2, one network call per step) or 'diffusion' (v1, K reverse steps)."""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    steps: int = 100_000
    """Training updates."""
    batch_size: int = 256
    learning_rate: float = 3e-4
    denoising_steps: int = 10
    """K: reverse steps of the diffusion model."""
    members: int = 1
    """Independently trained models; at least 2 for the disagreement penalty."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.kind in TRANSITION_MODELS, f"unknown --model.kind {self.kind!r}: use {' or '.join(TRANSITION_MODELS)}.")
        require(self.members >= 1, f"--model.members must be at least 1, got {self.members}.")


@dataclasses.dataclass
class RewardSettings(Settings):
    """The reward model (in the critic's units)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    steps: int = 50_000
    """Training updates."""
    batch_size: int = 256
    learning_rate: float = 3e-4


@dataclasses.dataclass
class TuningSettings(Settings):
    """How --tune chooses adapt-or-not and the step size."""

    lrs: tuple[float, ...] = (5e-7, 5e-6, 5e-5, 5e-4)
    """Candidate step sizes (the paper's v2 grid)."""
    episodes: int = 5
    """Episodes per candidate on the tuning seeds."""
    seed_offset: int = 100_000
    """Tuning seeds start at eval_seed + this; must keep them apart from the evaluation seeds."""


@dataclasses.dataclass
class Config(RunConfig):
    """DWM-MPC: the ReBRAC base learner, the world models, the inference-time optimiser and its tuning."""

    rebrac: rebrac.Hyperparameters = dataclasses.field(default_factory=rebrac.Hyperparameters)
    """The base learner (its seed and evaluation are the run's)."""
    base_run: str | None = None
    """Finished `ipdrl train --algo rebrac` run directory to reuse as the base policy and critic (its own settings
    then replace --rebrac.*). Default: train ReBRAC inside this run."""
    model: TransitionSettings = dataclasses.field(default_factory=TransitionSettings)
    reward: RewardSettings = dataclasses.field(default_factory=RewardSettings)
    holdout_fraction: float = 0.1
    """Fraction of episodes held out to measure the models' one-step error."""
    models_from: str | None = None
    """Directory holding trained `<kind>_model` and `reward_model` files (e.g. another dwm-mpc run) to reuse."""
    planner: AscentConfig = AscentConfig()
    """The inference-time optimiser (horizon, particles, ascent steps, penalties)."""
    adapt: bool = True
    """Adapt the policy at inference; False evaluates the plain base policy (overridden by --tune)."""
    adapt_lr: float = 5e-5
    """Step size of the weight updates (overridden by --tune)."""
    terminations: bool = False
    """Extension: stop imagined rewards and the terminal value after a known termination (hopper, walker2d, ant)."""
    tune: bool = False
    """Choose adapt-or-not and adapt_lr on tuning seeds (eval_seed + tuning.seed_offset + i) before evaluating."""
    tuning: TuningSettings = dataclasses.field(default_factory=TuningSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(not self.planner.disagreement_penalty or self.model.members >= 2,
                "--planner.disagreement-penalty needs an ensemble: set --model.members 2 or more.")
        if self.tune:
            require(bool(self.tuning.lrs), "--tune needs at least one candidate in --tuning.lrs.")
            first = self.eval_seed + self.tuning.seed_offset
            overlap = set(range(first, first + self.tuning.episodes)) & set(
                range(self.eval_seed, self.eval_seed + self.eval_episodes))
            require(not overlap, "tuning seeds overlap the evaluation seeds: raise --tuning.seed-offset above "
                                 "--eval-episodes.")


BUDGETS = {budget: dict(rebrac=fit_budget(budget, rebrac.BUDGETS.get(budget, {}))) for budget in BUDGET_NAMES}
BUDGETS["tiny"].update(model=dict(steps=200, hidden_dims=(32, 32), batch_size=64),
                       reward=dict(steps=200, hidden_dims=(32, 32), batch_size=64),
                       planner=dict(particles=8), tuning=dict(episodes=1, lrs=(1e-4, 1e-3)))
BUDGETS["cpu"].update(model=dict(steps=50_000), reward=dict(steps=20_000))
BUDGETS["paper"].update(model=dict(steps=500_000), reward=dict(steps=200_000), planner=dict(particles=4096),
                        tune=True)
PRESETS = {name: {"rebrac": settings} for name, settings in rebrac.PRESETS.items()}

# Flags of the flat configuration of earlier releases, and what they are now (kept for one release).
_REBRAC_FLAGS = ("steps", "batch-size", "log-every", "eval-every", "checkpoint-every", "hidden-dims", "actor-lr",
                 "critic-lr", "discount", "tau", "actor-bc", "critic-bc", "alpha", "bc-reduction", "actor-q",
                 "normalize-q", "no-normalize-q", "actor-layer-norm", "no-actor-layer-norm", "critic-layer-norm",
                 "no-critic-layer-norm", "policy-noise", "noise-clip", "policy-freq", "normalize-observations",
                 "no-normalize-observations", "reward-scale")
_PLANNER_FLAGS = ("horizon", "particles", "inner-steps", "optimizer", "carry", "proximity-penalty",
                  "disagreement-penalty")
LEGACY_FLAGS = {
    **{f"--{flag}": (f"--rebrac.{flag}",) for flag in _REBRAC_FLAGS},
    **{f"--{flag}": (f"--planner.{flag}",) for flag in _PLANNER_FLAGS},
    "--model": ("--model.kind",),
    "--model-hidden-dims": ("--model.hidden-dims",),
    "--model-steps": ("--model.steps",),
    "--model-batch-size": ("--model.batch-size", "--reward.batch-size"),
    "--model-lr": ("--model.learning-rate", "--reward.learning-rate"),
    "--denoising-steps": ("--model.denoising-steps",),
    "--ensemble-size": ("--model.members",),
    "--reward-hidden-dims": ("--reward.hidden-dims",),
    "--reward-steps": ("--reward.steps",),
    "--tune-lrs": ("--tuning.lrs",),
    "--tune-episodes": ("--tuning.episodes",),
    "--tune-seed-offset": ("--tuning.seed-offset",),
}


# ---- ReBRAC and the models as the planner's pieces ----------------------------------------------------------
def make_imagination(config: Config, base: Base, models: WorldModels, dataset: Dataset) -> Imagination:
    """ReBRAC's actor and critic with the learned models, in the critic's reward units and discount."""
    kind = TRANSITION_MODELS[config.model.kind]

    def policy(frozen: Params, actor: Params, obs: jax.Array) -> jax.Array:
        return rebrac.actor_apply(base.settings, actor, normalize(obs, frozen["critic"]["obs_stats"]))

    def transition(frozen: Params, obs: jax.Array, action: jax.Array, noise: jax.Array) -> jax.Array:
        model = frozen["transition"]
        sample_member = lambda net: kind.sample(models.transition_config, {"net": net, "stats": model["stats"]},
                                                obs, action, noise)
        return jax.vmap(sample_member)(model["net"])

    done = None
    if config.terminations:
        termination = envs.termination_fn(dataset.name, dataset.metadata)
        if termination is None:
            raise ValueError(f"no known termination function for {dataset.name!r}: drop --terminations.")
        done = lambda next_obs: termination(next_obs).astype(jnp.float32)
    return Imagination(
        policy=policy,
        reward=lambda frozen, obs, action: reward.predict(models.reward_config, frozen["reward"], obs, action),
        transition=transition,
        terminal_value=lambda frozen, obs, action: rebrac.q_min(base.settings, frozen["critic"], obs, action),
        noise_shape=kind.noise_shape(models.transition_config, dataset.obs_dim),
        discount=base.settings.discount,
        done=done,
    )


def policy_params(base: Base, models: WorldModels, lr: float) -> Params:
    critic = {k: v for k, v in base.state.items() if not k.endswith("_opt") and not k.startswith("actor")}
    return {
        "actor": base.state["actor"],
        "frozen": {"critic": critic, "transition": models.transition, "reward": common.member(models.reward, 0)},
        "lr": jnp.asarray(lr, jnp.float32),
    }


# ---- training and evaluation ------------------------------------------------------------------------------
def timed_evaluation(policy: Policy, params: Params, env_id: str, episodes: int, seed: int, dataset: Dataset
                     ) -> dict[str, Any]:
    """:func:`evaluate` plus cost figures, with compilation done beforehand so it is not counted.

    Episodes run in lockstep with one batched action call per step, so the per-episode figure is amortised:
    ``seconds_per_episode = seconds / episodes``; ``ms_per_step`` is per lockstep step (all envs, env time included).
    """
    started = time.perf_counter()
    carry = jax.jit(policy.init_carry, static_argnums=1)(params, episodes)
    obs = jnp.zeros((episodes, dataset.obs_dim))
    jax.block_until_ready(jax.jit(policy.act)(params, carry, obs, jnp.zeros(episodes), jax.random.PRNGKey(0)))
    compile_seconds = time.perf_counter() - started  # jax.jit shares its cache, so evaluate() reuses this
    result = evaluation.evaluate(policy, params, env_id, episodes, seed, dataset.reference())
    return dict(result, compile_seconds=compile_seconds, seconds_per_episode=result["seconds"] / episodes,
                ms_per_step=1000.0 * result["seconds"] / max(max(result["lengths"]), 1))


def choose_adaptation(config: Config, dataset: Dataset, env_id: str, run: Run, base: Base, policy: Policy,
                      models: WorldModels) -> dict[str, Any]:
    """Adapt-or-not and the step size: as configured, or (``--tune``) the best mean return on tuning seeds.

    The tuning result is saved as ``dwm_tuning.json`` so a resumed or re-evaluated run keeps its choice.
    """
    if not config.tune:
        return {"adapt": config.adapt, "lr": config.adapt_lr, "selected_by": "configuration (not tuned)"}
    path = run.path / "dwm_tuning.json"
    if path.exists():
        return json.loads(path.read_text())
    seed = config.eval_seed + config.tuning.seed_offset
    episodes = config.tuning.episodes
    run_tuning = lambda pol, params: evaluation.evaluate(pol, params, env_id, episodes, seed, dataset.reference())
    candidates = [{"adapt": False, "return_mean": run_tuning(base.learner.policy,
                                                             base.learner.policy_params(base.state))["return_mean"]}]
    for lr in config.tuning.lrs:
        candidates.append({"adapt": True, "lr": lr,
                           "return_mean": run_tuning(policy, policy_params(base, models, lr))["return_mean"]})
        log.info("dwm-mpc tuning: lr %g -> return %.1f", lr, candidates[-1]["return_mean"])
    best_adapted = max(candidates[1:], key=lambda c: c["return_mean"])
    choice = {
        "adapt": best_adapted["return_mean"] > candidates[0]["return_mean"],  # ties keep the base policy
        "lr": best_adapted["lr"],
        "selected_by": f"best mean return on tuning env seeds {seed}..{seed + episodes - 1}, disjoint "
                       f"from the evaluation seeds {config.eval_seed}..{config.eval_seed + config.eval_episodes - 1}",
        "candidates": candidates,
    }
    atomic_write_json(path, choice)
    return choice


def evaluate(config: Config, dataset: Dataset, run: Run, env_id: str, train: bool = False) -> dict[str, Any]:
    """Evaluate the base and the adapted policy on the same evaluation seeds (``ipdrl eval RUN_DIR``).

    The reported result (top level: ``normalized_mean``, ``return_mean`` and the per-episode lists, as every
    algorithm's) is the adapted policy's when adaptation was chosen, else the base policy's; both results are also
    kept under ``base`` and ``adapted``.
    """
    base = load_base(config, dataset, run, env_id, train)
    models = load_world_models(config, dataset, run, critic_reward_scale(base), train)
    policy = make_policy(make_imagination(config, base, models, dataset), config.planner)
    choice = choose_adaptation(config, dataset, env_id, run, base, policy, models)
    base_result = timed_evaluation(base.learner.policy, base.learner.policy_params(base.state), env_id,
                                   config.eval_episodes, config.eval_seed, dataset)
    adapted_result = timed_evaluation(policy, policy_params(base, models, choice["lr"]), env_id,
                                      config.eval_episodes, config.eval_seed, dataset)
    chosen = adapted_result if choice["adapt"] else base_result
    return {**chosen, "steps": base.settings.steps, "reported": "adapted" if choice["adapt"] else "base",
            "adaptation": choice,
            "base": base_result, "adapted": adapted_result, "base_policy": base.source, "world_models": models.info,
            "planner": {"model": config.model.kind, **dataclasses.asdict(config.planner)}}


def train(config: Config, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
    """Base policy -> world models (cached in the run directory, resumable) -> evaluate base and adapted policy."""
    return evaluate(config, dataset, run, env_id, train=True)


ALGORITHM = register(Algorithm(name="dwm-mpc", Config=Config, train=train, evaluate=evaluate, budgets=BUDGETS,
                               presets=PRESETS, legacy_flags=LEGACY_FLAGS,
                               summary="DWM-MPC: inference-time policy optimisation through a differentiable world "
                                       "model (Deb et al. 2026)."))
