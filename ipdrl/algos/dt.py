"""Decision Transformer (Chen et al. 2021) with the CORL settings — the library's one sequence-policy learner.

A causal transformer reads the last K steps as (return-to-go, state, action) tokens and regresses the action
(masked MSE). Acting, it is asked for a target return that is decremented by every observed reward.

Value guidance (IPD, QT) is configuration of this same learner, not a copy of it: :class:`ReturnTokens` sets what
the return token means (training labels, and the acting rule: decremented target or ``value_factor * V(s_t)``),
and a :class:`Critic` adds ``- alpha * Q(s, a_hat) / mean|Q|`` to the loss, optionally fine-tuning the critic on
its own batches alongside the policy. See :mod:`ipdrl.algos.ipd`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.algos.common import learner_algorithm
from ipdrl.algos.sequence_policy import Critic, ReturnTokens, sequence_policy
from ipdrl.algos.window_critic import WindowCritic
from ipdrl.config import FitConfig, RunConfig, require
from ipdrl.data.dataset import Dataset, Fields, sample_segments, segment_fields
from ipdrl.data.statistics import normalize, observation_stats
from ipdrl.evaluation import Params
from ipdrl.networks import polyak
from ipdrl.optim import gradient_step
from ipdrl.training import Learner
from ipdrl.transformer import DecisionTransformer


@dataclasses.dataclass
class Hyperparameters(FitConfig):
    """Decision Transformer hyperparameters: the defaults of CORL's ``dt.py``. CORL's shipped per-dataset configs
    differ (``configs/offline/dt/hopper/medium_replay_v2.yaml``: batch 4096, learning rate 8e-4)."""

    steps: int = 100_000
    batch_size: int = 64
    context_length: int = 20
    """K: steps per training segment and acting window (3K tokens)."""
    embed_dim: int = 128
    num_layers: int = 3
    num_heads: int = 1
    dropout: float = 0.1
    """Embedding, attention and residual dropout."""
    max_timestep: int = 1000
    """Number of timestep embeddings; later steps share the last one."""
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    warmup_steps: int = 10_000
    """Linear learning-rate warm-up (from lr / warmup_steps to lr)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After the warm-up: 'constant' (CORL), or 'cosine' decay to zero at the last update (a final checkpoint that
    holds still)."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights that the policy acts with (e.g. 0.999, an average
    over about the last 1/(1 - ema) updates; at update t the decay is at most (1 + t) / (10 + t)); 0: the weights
    themselves."""
    grad_clip: float = 0.25
    """Global gradient-norm clip."""
    transformers: int = 1
    """Transformers trained side by side (vmapped: each its own initialisation and dropout, the same batches) that
    act together by --ensemble-action; costs about this many times the compute of one."""
    ensemble_action: Literal["mean", "critic"] = "mean"
    """How --transformers members act together: their 'mean' action, or at every step the member action that the
    critic's Q rates highest ('critic'; needs a critic, as IPD's)."""
    return_scale: float = 1000.0
    """Return tokens are returns-to-go divided by this (1000 for locomotion)."""
    target_return: float = 3600.0
    """Return asked for at an evaluation episode's first step (raw reward units), then decremented by each observed
    reward. Set per family in PRESETS (hopper 3600, halfcheetah 12000, walker2d 5000)."""
    normalize_observations: bool = True
    """Feed observations standardised by the dataset's mean and std."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.context_length >= 1 and self.num_layers >= 1 and self.embed_dim % self.num_heads == 0,
                f"need --context-length >= 1, --num-layers >= 1 and --embed-dim divisible by --num-heads; got "
                f"{self.context_length}, {self.num_layers}, {self.embed_dim} and {self.num_heads}.")
        require(self.return_scale > 0, f"--return-scale must be > 0, got {self.return_scale}.")
        require(0.0 <= self.ema < 1.0, f"--ema must be in [0, 1), got {self.ema}.")
        require(self.transformers >= 1, f"--transformers must be >= 1, got {self.transformers}.")
        require(self.ensemble_action in ("mean", "critic"),
                f"unknown --ensemble-action {self.ensemble_action!r}: use 'mean' or 'critic'.")
        require(self.lr_schedule in ("constant", "cosine"),
                f"unknown --lr-schedule {self.lr_schedule!r}: use 'constant' or 'cosine'.")


@dataclasses.dataclass
class Config(RunConfig, Hyperparameters):
    """A Decision Transformer run."""


BUDGETS = {
    "tiny": dict(context_length=5, embed_dim=32, num_layers=1, batch_size=16, warmup_steps=20),
    # A 2-layer, width-64, K-10 network costs 1/13 of the CORL one's FLOPs per update (benchmarks/speed.py).
    "cpu": dict(steps=10_000, context_length=10, embed_dim=64, num_layers=2, warmup_steps=1000),
    "paper": dict(steps=100_000),
}
PRESETS = {
    "kitchen": dict(target_return=4.0, return_scale=1.0),  # all four tasks; rewards are completions (robotics.py)
    "hopper": dict(target_return=3600.0),
    "halfcheetah": dict(target_return=12000.0),
    "walker2d": dict(target_return=5000.0),
    "ant": dict(target_return=6000.0),
    "antmaze": dict(target_return=1.0, return_scale=1.0),  # reaching the goal (sparse reward 1)
    # D4RL's DT recipe: the cpu network's 10k updates are under one pass over a 1M-transition maze, far short of
    # where DT's AntMaze curve levels off (docs/evidence/antmaze-curves.md).
    "antmaze@cpu": dict(steps=100_000, warmup_steps=10_000),
}


def classic_returns(config: Hyperparameters, dataset: Dataset) -> ReturnTokens:
    """Undiscounted returns-to-go in raw reward units; acting decrements ``target_return`` by observed rewards."""
    return ReturnTokens(labels=dataset.returns_to_go(1.0), timesteps=dataset.timesteps(), target=config.target_return)


def network(config: Hyperparameters, act_dim: int) -> DecisionTransformer:
    return DecisionTransformer(act_dim, config.embed_dim, config.num_layers, config.num_heads, config.dropout,
                               config.max_timestep)


def optimizer(config: Hyperparameters) -> optax.GradientTransformation:
    """AdamW with linear warm-up and global-norm clipping (as CORL), then a constant or cosine-decayed rate."""
    warmup = lambda count: config.learning_rate * jnp.minimum((count + 1) / max(config.warmup_steps, 1), 1.0)
    schedule = warmup
    if config.lr_schedule == "cosine":
        decay = optax.cosine_decay_schedule(1.0, max(config.steps - config.warmup_steps, 1))
        schedule = lambda count: warmup(count) * decay(jnp.maximum(count - config.warmup_steps, 0))
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def value_guidance(q: jax.Array, mask: jax.Array) -> jax.Array:
    """``mean Q / mean|Q|`` over real steps, the scale held constant (QT): unit-free, so alpha means the same
    whatever the critic's reward units."""
    return masked_mean(q, mask) / jax.lax.stop_gradient(masked_mean(jnp.abs(q), mask) + 1e-6)


CRITIC_PREFIX = "critic/"


def make_learner(config: Hyperparameters, dataset: Dataset, returns: ReturnTokens | None = None, critic: Critic | None = None,
                 alpha: float = 0.0, loss_mask: np.ndarray | None = None, own_critic: WindowCritic | None = None,
                 weight_cap: np.ndarray | None = None) -> Learner:
    """The sequence-policy learner. Defaults give the classic DT; IPD passes discounted value-unit ``returns``,
    its IQL ``critic`` and ``alpha`` (loss = MSE(a_hat, a) - alpha * Q(s, a_hat) / mean|Q|). ``loss_mask`` (one
    bool per transition) leaves the masked-out transitions in the windows as context but out of the loss.
    ``weight_cap`` (one float per transition) caps each action's ``critic.action_weight`` at its own value.
    ``own_critic``: guide (and choose return candidates) by a critic of the policy's own actions trained alongside
    (:mod:`ipdrl.algos.window_critic`) instead of ``critic``'s Q; rewards in ``returns``' units."""
    returns = returns or classic_returns(config, dataset)
    if config.ensemble_action == "critic" and critic is None:
        raise ValueError("--ensemble-action critic rates the members' actions with a critic: use `--algo ipd`, or "
                         "--ensemble-action mean.")
    if (alpha > 0 or returns.value_factor is not None) and critic is None:
        raise ValueError("value guidance (alpha > 0) and value-conditioned return tokens need a critic: use "
                         "`--algo ipd`, which trains one.")
    if len(returns.labels) != dataset.size or len(returns.timesteps) != dataset.size:
        raise ValueError(f"return labels ({len(returns.labels)}) and timesteps ({len(returns.timesteps)}) must have "
                         f"one entry per transition ({dataset.size}).")
    if config.transformers > 1 and own_critic is not None:
        raise ValueError("--transformers > 1 is not supported with --guidance-critic own (its critic tracks one "
                         "transformer's weights): use --transformers 1.")
    obs_dim, act_dim, length, members = dataset.obs_dim, dataset.act_dim, config.context_length, config.transformers
    model = network(config, act_dim)
    opt = optimizer(config)
    stats = observation_stats(dataset, config.normalize_observations)
    finetune = critic.finetune if critic is not None else None
    action_weight = critic.action_weight if critic is not None else None

    fields = {
        **segment_fields(dataset),
        "observations": dataset.observations.astype(np.float32),
        "actions": dataset.actions.astype(np.float32),
        "returns": (np.asarray(returns.labels) / config.return_scale).astype(np.float32),
        "timesteps": np.asarray(returns.timesteps).astype(np.int32),
    }
    if loss_mask is not None:
        if len(loss_mask) != dataset.size:
            raise ValueError(f"loss_mask has {len(loss_mask)} entries for {dataset.size} transitions.")
        fields["learn"] = np.asarray(loss_mask, np.float32)
    if weight_cap is not None:
        if action_weight is None:
            raise ValueError("weight_cap caps a critic's action weights, and this critic gives none.")
        if len(weight_cap) != dataset.size:
            raise ValueError(f"weight_cap has {len(weight_cap)} entries for {dataset.size} transitions.")
        fields["weight_cap"] = np.asarray(weight_cap, np.float32)
    if finetune is not None:
        fields.update({CRITIC_PREFIX + k: v for k, v in finetune.fields.items()})
    if own_critic is not None:
        fields["rewards"] = (dataset.rewards * returns.reward_scale + returns.reward_shift).astype(np.float32)
        fields["dones"] = dataset.terminals.astype(np.float32)

    @jax.jit  # one compilation instead of hundreds of eagerly compiled small ops
    def init_params(key: jax.Array) -> tuple[Params, Any]:
        params = model.init(key, jnp.zeros((1, length)), jnp.zeros((1, length, obs_dim)),
                            jnp.zeros((1, length, act_dim)), jnp.zeros((1, length), jnp.int32))
        return params, opt.init(params)

    def init(key: jax.Array) -> dict:
        params, opt_state = init_params(key) if members == 1 else jax.vmap(init_params)(jax.random.split(key, members))
        state = {"params": params, "opt": opt_state, "obs_stats": {k: jnp.asarray(v) for k, v in stats.items()},
                 "return_target": jnp.asarray(returns.target, jnp.float32)}
        if critic is not None:
            state["critic"] = critic.state
        if config.ema:
            state["ema_params"] = params
        if own_critic is not None:
            state["own_critic"] = own_critic.init(jax.random.fold_in(key, 2), obs_dim, act_dim, params)
        return state

    def sample(fields: Fields, key: jax.Array) -> dict:
        segment_key, critic_key = jax.random.split(key)
        own = {k: v for k, v in fields.items() if not k.startswith(CRITIC_PREFIX)}
        batch = sample_segments(own, segment_key, config.batch_size, length)
        if finetune is not None:
            batch["critic"] = finetune.sample({k[len(CRITIC_PREFIX):]: v for k, v in fields.items()
                                               if k.startswith(CRITIC_PREFIX)}, critic_key)
        return batch

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        dropout_key, critic_key = jax.random.split(key)
        metrics = {}
        critic_state = state.get("critic")
        if finetune is not None:
            critic_state, critic_metrics = finetune.update(critic_state, batch["critic"], critic_key)
            metrics.update({k.replace("train/", "train/finetune_"): v for k, v in critic_metrics.items()})
        mask = batch["mask"] * batch["learn"] if "learn" in batch else batch["mask"]
        obs = normalize(batch["observations"], state["obs_stats"])
        own_state = state.get("own_critic")
        if own_critic is not None:
            end_actions = model.apply(own_state["policy_ema"], batch["returns"], obs, batch["actions"], batch["timesteps"])
            own_state, own_metrics = own_critic.update(own_state, obs, batch, jax.lax.stop_gradient(end_actions))
            metrics.update(own_metrics)
        q_value = ((lambda actions: own_critic.q(own_state, obs, actions)) if own_critic is not None
                   else (lambda actions: critic.q_value(critic_state, batch["observations"], actions)))

        # A weighted mean, so that alpha keeps its meaning whatever the weights' scale.
        weighted_mask = mask
        if action_weight is not None:
            weights = action_weight(critic_state, batch["observations"], batch["actions"])
            weighted_mask = mask * (jnp.minimum(weights, batch["weight_cap"]) if "weight_cap" in batch else weights)

        def member_step(params, opt_state, ema_params, dropout_key):
            """One transformer's update (vmapped over an ensemble's members)."""

            def loss_fn(params):
                predicted = model.apply(params, batch["returns"], obs, batch["actions"], batch["timesteps"],
                                        train=True, rngs={"dropout": dropout_key})
                mse = masked_mean(((predicted - batch["actions"]) ** 2).mean(-1), weighted_mask)
                if alpha <= 0:
                    return mse, {"train/action_mse": mse}
                guidance = value_guidance(q_value(predicted), mask)
                return mse - alpha * guidance, {"train/action_mse": mse, "train/q_normalized": guidance}

            step = gradient_step(loss_fn, opt, params, opt_state, has_aux=True)
            if config.ema:
                # The average starts at the random initial weights: early on it forgets faster (TensorFlow's
                # ExponentialMovingAverage with num_updates), so that a long average holds no trace of them.
                count = optax.tree_utils.tree_get_all_with_path(opt_state, "count")[0][1]
                decay = jnp.minimum(config.ema, (1.0 + count) / (10.0 + count))
                ema_params = polyak(ema_params, step.params, 1.0 - decay)
            step_metrics = {"train/loss": step.loss, **step.aux, "train/grad_norm": optax.tree.norm(step.grads)}
            return step.params, step.opt_state, ema_params, step_metrics

        if members == 1:
            params, opt_state, ema_params, step_metrics = member_step(state["params"], state["opt"],
                                                                      state.get("ema_params"), dropout_key)
        else:
            params, opt_state, ema_params, step_metrics = jax.vmap(member_step)(
                state["params"], state["opt"], state.get("ema_params"), jax.random.split(dropout_key, members))
            step_metrics = jax.tree.map(lambda m: m.mean(0), step_metrics)
        new_state = dict(state, params=params, opt=opt_state)
        if config.ema:
            new_state["ema_params"] = ema_params
        if finetune is not None:
            new_state["critic"] = critic_state
        if own_critic is not None:
            new_state["own_critic"] = own_critic.track(own_state, params)
        return new_state, {**step_metrics, **metrics}

    acting_critic = critic
    if own_critic is not None:  # candidates are rated by the own critic; V(s_t) tokens still come from ``critic``
        acting_critic = Critic(state=None, value=lambda s, o: critic.value(s["given"], o),
                               q_value=lambda s, o, a: own_critic.q(s["own"], normalize(o, s["obs_stats"]), a))

    def policy_params(state: dict) -> Params:
        params = {k: state[k] for k in ("params", "obs_stats", "return_target", "critic") if k in state}
        if own_critic is not None:
            params["critic"] = {"given": state.get("critic"), "own": state["own_critic"], "obs_stats": state["obs_stats"]}
        return dict(params, params=state["ema_params"]) if config.ema else params

    return Learner(fields=fields, init=init, update=update, sample=sample,
                   policy=sequence_policy(model, length, config.return_scale, returns, acting_critic, members,
                                          config.ensemble_action),
                   policy_params=policy_params)


ALGORITHM = learner_algorithm("dt", Config, make_learner, "Decision Transformer (Chen et al. 2021).", BUDGETS,
                              PRESETS)
