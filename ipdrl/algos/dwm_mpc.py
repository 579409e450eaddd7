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

Paper settings: v1 ``--model diffusion --particles 10 --inner-steps 5 --adapt-lr 1e-3``; v2 ``--model meanflow
--particles 4096 --inner-steps 1 --tune`` (lr from 5e-7, 5e-6, 5e-5, 5e-4). The defaults use M = 64 so that
one action takes about 18 ms on a 2-core CPU (``benchmarks/dwm_latency.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ipdrl import envs
from ipdrl.algos import rebrac
from ipdrl.algos.common import normalize
from ipdrl.config import TrainConfig, config_from_json
from ipdrl.data.dataset import Dataset
from ipdrl.evaluation import evaluate
from ipdrl.pipelines import train_learner
from ipdrl.presets import BUDGET_NAMES, dataset_key
from ipdrl.runs import Run, atomic_write_json
from ipdrl.training import Learner, Params, Policy
from ipdrl.world_models import conditional, diffusion, meanflow, reward

log = logging.getLogger("ipdrl")

TRANSITION_MODELS = {"diffusion": diffusion, "meanflow": meanflow}


@dataclasses.dataclass
class Config(rebrac.Config):
    """DWM-MPC: the ReBRAC base learner's settings, then the world models', then the inference-time optimiser's."""

    base_run: str | None = None
    """Finished `ipdrl train --algo rebrac` run directory to reuse as the base policy and critic (its own config
    then replaces the ReBRAC settings here). Default: train ReBRAC inside this run."""

    model: Literal["meanflow", "diffusion"] = "meanflow"
    """Transition model: 'meanflow' (v2, one network call per step) or 'diffusion' (v1, K reverse steps)."""
    model_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the transition model's network (diffusion denoiser or MeanFlow)."""
    model_steps: int = 100_000
    """Training updates of the transition model."""
    model_batch_size: int = 256
    model_lr: float = 3e-4
    """Adam step size of the transition and reward models."""
    denoising_steps: int = 10
    """K: reverse steps of the diffusion model."""
    ensemble_size: int = 1
    """Independently trained transition models; at least 2 for the disagreement penalty."""
    reward_hidden_dims: tuple[int, ...] = (256, 256)
    reward_steps: int = 50_000
    """Training updates of the reward model."""
    holdout_fraction: float = 0.1
    """Fraction of episodes held out to measure the models' one-step error."""
    models_from: str | None = None
    """Directory holding trained `<model>_model` and `reward_model` files (e.g. another dwm-mpc run) to reuse."""

    horizon: int = 5
    """H: imagined steps per particle."""
    particles: int = 64
    """M: imagined rollouts, each with its own noise, averaged in the objective."""
    inner_steps: int = 1
    """E: gradient-ascent steps on the policy weights per real step."""
    adapt: bool = True
    """Adapt the policy at inference; False evaluates the plain base policy (overridden by --tune)."""
    adapt_lr: float = 5e-5
    """Step size of the weight updates (overridden by --tune)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """'sgd': plain gradient ascent as in the paper; 'adam' (extension): Adam restarted at every real step."""
    carry: Literal["carry", "reset"] = "carry"
    """'carry': adapted weights carry over between steps, reset at episode start; 'reset': restart every step."""
    proximity_penalty: float = 0.0
    """Extension: subtract lambda * ||psi - psi_0||^2 (psi_0: pretrained weights) from the objective."""
    disagreement_penalty: float = 0.0
    """Extension: subtract lambda * discounted ensemble disagreement (trace of the members' covariance of s')."""
    terminations: bool = False
    """Extension: stop imagined rewards and the terminal value after a known termination (hopper, walker2d, ant)."""

    tune: bool = False
    """Choose adapt-or-not and adapt_lr on tuning seeds (eval_seed + tune_seed_offset + i) before evaluating."""
    tune_lrs: tuple[float, ...] = (5e-7, 5e-6, 5e-5, 5e-4)
    """Candidate step sizes for --tune (the paper's v2 grid)."""
    tune_episodes: int = 5
    """Episodes per candidate on the tuning seeds."""
    tune_seed_offset: int = 100_000
    """Tuning seeds start at eval_seed + this; must keep them apart from the evaluation seeds."""


def _merged(*tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {budget: {k: v for table in tables for k, v in table.get(budget, {}).items()} for budget in BUDGET_NAMES}


BUDGETS = _merged(getattr(rebrac, "BUDGETS", {}), {
    "tiny": dict(model_steps=200, reward_steps=200, model_hidden_dims=(32, 32), reward_hidden_dims=(32, 32),
                 model_batch_size=64, particles=8, tune_episodes=1, tune_lrs=(1e-4, 1e-3)),
    "cpu": dict(model_steps=50_000, reward_steps=20_000),
    "paper": dict(model_steps=500_000, reward_steps=200_000, particles=4096, tune=True),
})
PRESETS = getattr(rebrac, "PRESETS", {})


def check_config(config: Config) -> None:
    """Reject inconsistent settings with a message naming the fix."""
    if config.model not in TRANSITION_MODELS:
        raise ValueError(f"unknown --model {config.model!r}: use {' or '.join(TRANSITION_MODELS)}.")
    if config.carry not in ("carry", "reset"):
        raise ValueError(f"unknown --carry {config.carry!r}: use 'carry' or 'reset'.")
    if config.optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown --optimizer {config.optimizer!r}: use 'sgd' or 'adam'.")
    if min(config.horizon, config.particles, config.inner_steps, config.ensemble_size) < 1:
        raise ValueError("horizon, particles, inner_steps and ensemble_size must all be at least 1.")
    if config.disagreement_penalty > 0 and config.ensemble_size < 2:
        raise ValueError("--disagreement-penalty needs an ensemble: set --ensemble-size 2 or more.")
    if config.tune:
        if not config.tune_lrs:
            raise ValueError("--tune needs at least one candidate in --tune-lrs.")
        tuning = range(config.eval_seed + config.tune_seed_offset,
                       config.eval_seed + config.tune_seed_offset + config.tune_episodes)
        if set(tuning) & set(range(config.eval_seed, config.eval_seed + config.eval_episodes)):
            raise ValueError("tuning seeds overlap the evaluation seeds: raise --tune-seed-offset above --eval-episodes.")


# ---- the inference-time optimiser ---------------------------------------------------------------------------
class Imagination(NamedTuple):
    """The differentiable pieces of an imagined rollout, each pure in explicit parameters.

    ``frozen`` is the pytree of every trained, fixed network (critic, transition, reward); ``actor`` is the
    adapted policy weights. ``transition`` returns one next state per ensemble member: (members, ..., obs_dim).
    """

    policy: Callable[[Params, Params, jax.Array], jax.Array]  # (frozen, actor, obs) -> action
    reward: Callable[[Params, jax.Array, jax.Array], jax.Array]  # (frozen, obs, action) -> critic-unit reward
    transition: Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]  # (frozen, obs, action, noise)
    terminal_value: Callable[[Params, jax.Array, jax.Array], jax.Array]  # (frozen, obs, action) -> min_i Q_i
    noise_shape: tuple[int, ...]  # Gaussian draws one imagined transition consumes
    discount: float
    done: Callable[[jax.Array], jax.Array] | None = None  # next obs -> terminated, when masking terminations


def squared_distance(a: Params, b: Params) -> jax.Array:
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def planning_objective(imagination: Imagination, config: Config, actor: Params, frozen: Params, anchor: Params,
                       obs: jax.Array, noise: jax.Array) -> jax.Array:
    """J(psi) for one real state ``obs`` (obs_dim,) and noise bank (H, M, *noise_shape), minus any penalties.

    Particle m follows ensemble member m mod members, so an ensemble is also a source of model diversity.
    """
    particles = noise.shape[1]
    particle = jnp.arange(particles)

    def transition(state, action, eps):
        """(next state, members' spread, 1 unless the next state is a known termination) per particle."""
        candidates = imagination.transition(frozen, state, action, eps)
        spread = candidates.var(0).sum(-1)  # trace of the members' covariance; smooth where they agree
        next_state = candidates[particle % candidates.shape[0], particle]
        survives = jnp.ones(particles) if imagination.done is None else 1.0 - imagination.done(next_state)
        return next_state, spread, survives

    def imagined_step(carry, eps):
        state, alive = carry
        action = imagination.policy(frozen, actor, state)
        rewards = imagination.reward(frozen, state, action)
        next_state, spread, survives = transition(state, action, eps)
        return (next_state, alive * survives), (alive * rewards, alive * spread)

    # Step 0 starts every particle from the same state with the same action: policy and reward once, not M times.
    first_action = imagination.policy(frozen, actor, obs)
    first_reward = imagination.reward(frozen, obs, first_action)
    state, first_spread, alive = transition(jnp.broadcast_to(obs, (particles, obs.shape[-1])),
                                            jnp.broadcast_to(first_action, (particles, first_action.shape[-1])),
                                            noise[0])
    (final, alive), (rewards, spreads) = jax.lax.scan(imagined_step, (state, alive), noise[1:])
    rewards = jnp.concatenate([jnp.broadcast_to(first_reward, (1, particles)), rewards])
    spreads = jnp.concatenate([first_spread[None], spreads])
    discounts = imagination.discount ** jnp.arange(noise.shape[0])
    value = imagination.terminal_value(frozen, final, imagination.policy(frozen, actor, final))
    returns = discounts @ rewards + imagination.discount ** noise.shape[0] * alive * value
    objective = returns.mean()
    if config.disagreement_penalty:
        objective -= config.disagreement_penalty * (discounts @ spreads).mean()
    if config.proximity_penalty:
        objective -= config.proximity_penalty * squared_distance(actor, anchor)
    return objective


def adapt(imagination: Imagination, config: Config, frozen: Params, anchor: Params, actor: Params,
          lr: jax.Array, obs: jax.Array, key: jax.Array) -> Params:
    """E ascent steps on J from ``actor`` for one real state, with one fresh noise bank shared by all E steps."""
    noise = jax.random.normal(key, (config.horizon, config.particles, *imagination.noise_shape))
    optimizer = {"sgd": optax.sgd, "adam": optax.adam}[config.optimizer](lr)
    gradient = jax.grad(lambda actor: planning_objective(imagination, config, actor, frozen, anchor, obs, noise))

    def ascend(carry, _):
        actor, opt_state = carry
        descent = jax.tree_util.tree_map(jnp.negative, gradient(actor))  # optax minimises
        updates, opt_state = optimizer.update(descent, opt_state, actor)
        return (optax.apply_updates(actor, updates), opt_state), None

    (actor, _), _ = jax.lax.scan(ascend, (actor, optimizer.init(actor)), None, length=config.inner_steps)
    return actor


def make_policy(imagination: Imagination, config: Config) -> Policy:
    """The acting policy. Params: ``{"actor": pretrained weights, "frozen": trained networks, "lr": step size}``
    (the step size is an argument, so tuning several values reuses one compiled function).

    Carry: per-environment adapted weights, initialised to the pretrained ones (episode start).
    """

    def init_carry(params: Params, num_envs: int) -> Params:
        return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_envs, *x.shape)), params["actor"])

    def act(params: Params, carry: Params, obs: jax.Array, prev_reward: jax.Array, key: jax.Array):
        start = carry if config.carry == "carry" else init_carry(params, obs.shape[0])

        def adapt_and_act(actor: Params, obs: jax.Array, key: jax.Array) -> tuple[Params, jax.Array]:
            actor = adapt(imagination, config, params["frozen"], params["actor"], actor, params["lr"], obs, key)
            return actor, imagination.policy(params["frozen"], actor, obs)

        # Environments run one after another inside the compiled step (lax.map): each one already batches its M
        # particles, and vmapping over per-environment weights compiled 4x slower on CPU for no faster step.
        adapted, actions = jax.lax.map(lambda x: adapt_and_act(*x), (start, obs, jax.random.split(key, obs.shape[0])))
        return (adapted if config.carry == "carry" else carry), actions

    return Policy(init_carry=init_carry, act=act)


# ---- assembling ReBRAC and the world models --------------------------------------------------------------
class Base(NamedTuple):
    """The pretrained ReBRAC policy and critic."""

    config: rebrac.Config
    learner: Learner
    state: dict
    source: str


class WorldModels(NamedTuple):
    """The trained transition and reward models with their configs; ``info`` holds their held-out errors."""

    transition_config: diffusion.Config | meanflow.Config
    transition: conditional.Model
    reward_config: reward.Config
    reward: conditional.Model
    info: dict[str, Any]


def base_config_of(config: Config) -> rebrac.Config:
    return rebrac.Config(**{f.name: getattr(config, f.name) for f in dataclasses.fields(rebrac.Config)})


def rebrac_learner(base_config: rebrac.Config, dataset: Dataset) -> Learner:
    learner = rebrac.make_learner(base_config, dataset)
    # One compilation instead of one per initialiser op (orthogonal init compiles a QR per shape, seconds on CPU).
    return learner._replace(init=jax.jit(learner.init))


def load_base(config: Config, dataset: Dataset, run: Run, env_id: str, train: bool = True) -> Base:
    """ReBRAC from ``config.base_run``, else trained (or resumed) in ``run`` under the ``rebrac_`` stage."""
    if config.base_run is None and train:
        base_config = base_config_of(config)
        learner = rebrac_learner(base_config, dataset)
        state = train_learner(learner, base_config, run, env_id, dataset.name, stage="rebrac_")
        return Base(base_config, learner, state, f"trained in {run.path} (stage rebrac_)")
    if config.base_run is None:
        base_config, source, checkpoint = base_config_of(config), run, "rebrac_checkpoint"
    else:
        source, checkpoint = Run.open(config.base_run), "checkpoint"
        saved = source.config
        if saved.get("algo") != "rebrac":
            raise ValueError(f"--base-run {source.path} is a {saved.get('algo')!r} run; DWM-MPC needs a rebrac run.")
        if dataset_key(saved.get("dataset", "")) != dataset_key(config.dataset):
            raise ValueError(f"--base-run {source.path} was trained on {saved.get('dataset')!r}, this run uses "
                             f"{config.dataset!r}: pass a base run of the same dataset.")
        base_config = config_from_json(saved, rebrac.Config)
    learner = rebrac_learner(base_config, dataset)
    if not source.has_checkpoint(checkpoint):
        raise FileNotFoundError(f"{source.path} has no trained ReBRAC ({checkpoint}): train it first (or --resume).")
    state, step = source.load_checkpoint(learner.init(jax.random.PRNGKey(base_config.seed)), checkpoint)
    if step < base_config.steps:
        raise ValueError(f"ReBRAC in {source.path} stopped at step {step} of {base_config.steps}: resume it first.")
    return Base(base_config, learner, state, f"{checkpoint} of {source.path}")


def model_configs(config: Config) -> tuple[diffusion.Config | meanflow.Config, reward.Config]:
    common = dict(hidden_dims=config.model_hidden_dims, learning_rate=config.model_lr,
                  batch_size=config.model_batch_size, members=config.ensemble_size)
    if config.model == "diffusion":
        transition_config = diffusion.Config(denoising_steps=config.denoising_steps, **common)
    else:
        transition_config = meanflow.Config(**common)
    return transition_config, reward.Config(hidden_dims=config.reward_hidden_dims, learning_rate=config.model_lr,
                                            batch_size=config.model_batch_size)


def _stage(config: Config, steps: int) -> TrainConfig:
    return TrainConfig(seed=config.seed, steps=steps, log_every=config.log_every, eval_every=0,
                       checkpoint_every=config.checkpoint_every, progress=config.progress)


def load_world_models(config: Config, dataset: Dataset, run: Run, reward_scale: tuple[float, float],
                      train: bool = True) -> WorldModels:
    """Transition and reward models: loaded from ``models_from`` or this run, else trained here (resumable,
    stages ``<model>_`` and ``reward_``) on all but the held-out episodes, evaluated on those, and saved.

    ``reward_scale``: the critic's (scale, shift); the reward model is trained, and checked, in those units.
    """
    module = TRANSITION_MODELS[config.model]
    folder = Path(config.models_from) if config.models_from else run.path
    paths = {"transition": folder / f"{config.model}_model", "reward": folder / "reward_model"}
    missing = [str(p) for p in paths.values() if not conditional.model_exists(p)]
    if missing and (config.models_from or not train):
        raise FileNotFoundError(f"no trained world model at {', '.join(missing)}: train it first (or fix --models-from).")
    train_split, heldout = conditional.holdout_split(dataset, config.holdout_fraction, config.seed)
    scale, shift = reward_scale
    transition_config, reward_config = model_configs(config)
    key = jax.random.PRNGKey(config.seed)

    if not conditional.model_exists(paths["transition"]):
        learner = module.make_learner(transition_config, train_split)
        state = train_learner(learner, _stage(config, config.model_steps), run, None, dataset.name, f"{config.model}_")
        model = conditional.model_of(state)
        module.save(paths["transition"], transition_config, model,
                    module.heldout_metrics(transition_config, model, heldout, key))
    if not conditional.model_exists(paths["reward"]):
        learner = reward.make_learner(reward_config, train_split, scale, shift)
        state = train_learner(learner, _stage(config, config.reward_steps), run, None, dataset.name, "reward_")
        model = conditional.model_of(state)
        reward.save(paths["reward"], reward_config, model, reward.heldout_metrics(reward_config, model, heldout))

    transition_config, transition_model, transition_info = module.load(paths["transition"])
    reward_config, reward_model, reward_info = reward.load(paths["reward"])
    model_scale = [float(x) for x in reward_model["stats"]["reward_scale"]]
    if abs(model_scale[0] - scale) > 1e-6 * abs(scale) or abs(model_scale[1] - shift) > 1e-6:
        raise ValueError(f"reward model {paths['reward']} predicts rewards scaled by {model_scale}, but the critic "
                         f"uses {[scale, shift]}: the units would differ. Retrain it for this base policy.")
    if transition_model["stats"]["obs_mean"].shape[-1] != dataset.obs_dim:
        raise ValueError(f"{paths['transition']} models {transition_model['stats']['obs_mean'].shape[-1]}-d states, "
                         f"the dataset has {dataset.obs_dim}: reuse models trained on this dataset.")
    if config.disagreement_penalty and conditional.num_members(transition_model) < 2:
        raise ValueError(f"{paths['transition']} has one member; the disagreement penalty needs --ensemble-size >= 2.")
    info = {"transition": {"kind": config.model, "path": str(paths["transition"]), **transition_info,
                           "config": dataclasses.asdict(transition_config)},
            "reward": {"path": str(paths["reward"]), **reward_info, "config": dataclasses.asdict(reward_config)}}
    return WorldModels(transition_config, transition_model, reward_config, reward_model, info)


def critic_reward_scale(base: Base) -> tuple[float, float]:
    scale, shift = jax.device_get(base.state["reward_scale"])
    return float(scale), float(shift)


def make_imagination(config: Config, base: Base, models: WorldModels, dataset: Dataset) -> Imagination:
    """ReBRAC's actor and critic with the learned models, in the critic's reward units and discount."""
    module = TRANSITION_MODELS[config.model]
    obs_dim = dataset.obs_dim

    def policy(frozen: Params, actor: Params, obs: jax.Array) -> jax.Array:
        return rebrac.actor_apply(base.config, actor, normalize(obs, frozen["critic"]["obs_stats"]))

    def transition(frozen: Params, obs: jax.Array, action: jax.Array, noise: jax.Array) -> jax.Array:
        model = frozen["transition"]
        sample_member = lambda net: module.sample(models.transition_config, {"net": net, "stats": model["stats"]},
                                                  obs, action, noise)
        return jax.vmap(sample_member)(model["net"])

    done = None
    if config.terminations:
        termination = envs.termination_fn(dataset.name)
        if termination is None:
            raise ValueError(f"no known termination function for {dataset.name!r}: drop --terminations.")
        done = lambda next_obs: termination(next_obs).astype(jnp.float32)
    return Imagination(
        policy=policy,
        reward=lambda frozen, obs, action: reward.predict(models.reward_config, frozen["reward"], obs, action),
        transition=transition,
        terminal_value=lambda frozen, obs, action: rebrac.q_min(base.config, frozen["critic"], obs, action),
        noise_shape=module.noise_shape(models.transition_config, obs_dim),
        discount=base.config.discount,
        done=done,
    )


def policy_params(base: Base, models: WorldModels, lr: float) -> Params:
    critic = {k: v for k, v in base.state.items() if not k.endswith("_opt") and not k.startswith("actor")}
    return {
        "actor": base.state["actor"],
        "frozen": {"critic": critic, "transition": models.transition, "reward": conditional.member(models.reward, 0)},
        "lr": jnp.asarray(lr, jnp.float32),
    }


# ---- pipeline ------------------------------------------------------------------------------------------
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
    result = evaluate(policy, params, env_id, episodes, seed, dataset.name)
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
    seed = config.eval_seed + config.tune_seed_offset
    run_tuning = lambda pol, params: evaluate(pol, params, env_id, config.tune_episodes, seed, dataset.name)
    candidates = [{"adapt": False, "return_mean": run_tuning(base.learner.policy,
                                                             base.learner.policy_params(base.state))["return_mean"]}]
    for lr in config.tune_lrs:
        candidates.append({"adapt": True, "lr": lr,
                           "return_mean": run_tuning(policy, policy_params(base, models, lr))["return_mean"]})
        log.info("dwm-mpc tuning: lr %g -> return %.1f", lr, candidates[-1]["return_mean"])
    best_adapted = max(candidates[1:], key=lambda c: c["return_mean"])
    choice = {
        "adapt": best_adapted["return_mean"] > candidates[0]["return_mean"],  # ties keep the base policy
        "lr": best_adapted["lr"],
        "selected_by": f"best mean return on tuning env seeds {seed}..{seed + config.tune_episodes - 1}, disjoint "
                       f"from the evaluation seeds {config.eval_seed}..{config.eval_seed + config.eval_episodes - 1}",
        "candidates": candidates,
    }
    atomic_write_json(path, choice)
    return choice


def evaluate_pipeline(config: Config, dataset: Dataset, run: Run, env_id: str, train: bool = False) -> dict[str, Any]:
    """Evaluate the base and the adapted policy on the same evaluation seeds (``ipdrl eval RUN_DIR``).

    The reported score (top-level ``normalized_mean``/``return_mean``) is the adapted policy's when adaptation
    was chosen, else the base policy's; both results are kept under ``base`` and ``adapted``.
    """
    check_config(config)
    base = load_base(config, dataset, run, env_id, train)
    models = load_world_models(config, dataset, run, critic_reward_scale(base), train)
    policy = make_policy(make_imagination(config, base, models, dataset), config)
    choice = choose_adaptation(config, dataset, env_id, run, base, policy, models)
    base_result = timed_evaluation(base.learner.policy, base.learner.policy_params(base.state), env_id,
                                   config.eval_episodes, config.eval_seed, dataset)
    adapted_result = timed_evaluation(policy, policy_params(base, models, choice["lr"]), env_id,
                                      config.eval_episodes, config.eval_seed, dataset)
    chosen = adapted_result if choice["adapt"] else base_result
    headline = {k: v for k, v in chosen.items() if not isinstance(v, list)}
    return {**headline, "reported": "adapted" if choice["adapt"] else "base", "adaptation": choice,
            "base": base_result, "adapted": adapted_result, "base_policy": base.source, "world_models": models.info,
            "planner": {k: getattr(config, k) for k in ("model", "horizon", "particles", "inner_steps", "optimizer",
                                                         "carry", "proximity_penalty", "disagreement_penalty")}}


def run_pipeline(config: Config, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
    """Base policy -> world models (cached in the run directory, resumable) -> evaluate base and adapted policy."""
    return evaluate_pipeline(config, dataset, run, env_id, train=True)
