"""IPD stage 2: an ensemble of probabilistic dynamics models (PETS / MBPO), with uncertainty.

Each of ``members`` MLPs maps normalised ``[s, a]`` to a diagonal Gaussian over the normalised ``[s' - s, r]``;
log-variances are squashed softly between learned bounds (``max_logvar``, ``min_logvar``) which a small
regulariser pulls together (Chua et al. 2018). All members train in one vmapped update, each on its own
batches, fused ``eval_every`` updates per jitted ``lax.scan``. Every ``eval_every`` updates the held-out MSE
of each member is measured; a member's parameters are snapshotted when it improves by more than
``min_improvement`` (relative), and training stops after ``patience`` checks without any improvement (MBPO).
The ``elites`` members with the lowest held-out error are the ones used for imagination.

A trained model is a pytree (a dict)::

    {"params":      member network parameters, leading axis = members,
     "stats":       {"input_mean", "input_std", "target_mean", "target_std"},
     "elites":      int32 indices of the elite members,
     "termination": parameters of the learned termination classifier ({} when the known function is used),
     "config":      the EnsembleConfig it was trained with (static: part of the tree structure, not a leaf)}

so :func:`model_step` and :func:`uncertainty` are pure functions of it and one ``jit`` serves every model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ipdrl import envs
from ipdrl.data.dataset import Dataset, to_device
from ipdrl.networks import MLP
from ipdrl.training import Learner, chunk_key, make_chunk_fn
from ipdrl.world_models import conditional
from ipdrl.world_models.uncertainty import measure

log = logging.getLogger("ipdrl")

KIND = "ensemble"
TERMINATIONS = ("auto", "known", "learned", "never")


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Ensemble dynamics model hyperparameters (PETS/MBPO defaults). Frozen: use ``dataclasses.replace``."""

    members: int = 7
    elites: int = 5
    """Members with the lowest held-out error; imagination and uncertainty use only these."""
    hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    activation: str = "silu"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    """AdamW decay on weight matrices (not on biases or log-variance bounds)."""
    batch_size: int = 256
    """Per member: each member draws its own batches."""
    holdout_fraction: float = 0.1
    """Fraction of whole episodes held out for early stopping and elite selection."""
    max_holdout: int = 5000
    """At most this many held-out transitions are scored per check (MBPO's cap)."""
    max_steps: int = 100_000
    """Upper bound on updates (rounded up to a multiple of eval_every); early stopping usually ends training sooner."""
    eval_every: int = 1000
    """Updates per jitted chunk; the held-out error is checked after each chunk."""
    patience: int = 5
    """Stop after this many checks in which no member improved."""
    min_improvement: float = 0.01
    """Relative held-out improvement that counts (and snapshots the member)."""
    logvar_bound_coef: float = 0.01
    """Weight of ``sum(max_logvar) - sum(min_logvar)`` in the loss, keeping the bounds tight."""
    termination: Literal["auto", "known", "learned", "never"] = "auto"
    """'known' (the task's termination function), 'learned' (classifier on terminals), 'never', or 'auto':
    known when the dataset's family has one (hopper, walker2d, halfcheetah, ant), learned otherwise."""
    termination_family: str | None = None
    """Family whose known termination function to use; default: from the dataset's env/name."""
    termination_hidden_dims: tuple[int, ...] = (64, 64)
    termination_steps: int = 5000
    """Updates of the learned termination classifier (class-balanced batches)."""

    def __post_init__(self) -> None:
        if not 2 <= self.elites <= self.members:
            raise ValueError(f"need 2 <= elites <= members (uncertainty compares elites), got elites={self.elites}, "
                             f"members={self.members}.")
        if self.termination not in TERMINATIONS:
            raise ValueError(f"unknown termination {self.termination!r}: use one of {', '.join(TERMINATIONS)}.")


# Budgets of `ipdrl augment` / the IPD pipeline (see ipdrl/presets.py); sizes chosen to fit a 2-core CPU.
BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(members=3, elites=2, hidden_dims=(32, 32), max_steps=200, eval_every=50, patience=2,
                 termination_steps=100, batch_size=64),
    "cpu": dict(hidden_dims=(200, 200, 200), max_steps=10_000, eval_every=1000, termination_steps=3000),
    "paper": dict(),
}

EnsembleModel = dict  # see the module docstring
INIT_MAX_LOGVAR, INIT_MIN_LOGVAR = 0.5, -10.0  # MBPO's initial bounds (normalised units)


class GaussianMLP(nn.Module):
    """MLP -> (mean, log-variance), log-variance softly bounded by learned ``max_logvar`` / ``min_logvar``."""

    out_dim: int
    hidden_dims: Sequence[int]
    activation: str = "silu"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = MLP(self.hidden_dims, 2 * self.out_dim, activation=self.activation, out_scale=1.0)(x)
        mean, logvar = jnp.split(out, 2, axis=-1)
        max_logvar = self.param("max_logvar", nn.initializers.constant(INIT_MAX_LOGVAR), (self.out_dim,))
        min_logvar = self.param("min_logvar", nn.initializers.constant(INIT_MIN_LOGVAR), (self.out_dim,))
        # Soft (differentiable) clipping: the bounds themselves are learned, unlike a hard clip.
        logvar = max_logvar - jax.nn.softplus(max_logvar - logvar)
        logvar = min_logvar + jax.nn.softplus(logvar - min_logvar)
        return mean, logvar


def member_network(config: EnsembleConfig, out_dim: int) -> GaussianMLP:
    return GaussianMLP(out_dim, config.hidden_dims, config.activation)


def termination_network(config: EnsembleConfig) -> MLP:
    return MLP(config.termination_hidden_dims, 1, activation="silu", out_scale=1.0)


def gaussian_nll(mean: jax.Array, logvar: jax.Array, target: jax.Array) -> jax.Array:
    """Negative log-likelihood of a diagonal Gaussian, averaged over the last axis (nats per dimension)."""
    return 0.5 * ((target - mean) ** 2 * jnp.exp(-logvar) + logvar + jnp.log(2 * jnp.pi)).mean(-1)


# ---- normalisation ------------------------------------------------------------------------------------
def normalisation_stats(dataset: Dataset) -> dict[str, np.ndarray]:
    inputs = np.concatenate([dataset.observations, dataset.actions], axis=-1)
    targets = _targets(dataset)
    return {
        "input_mean": inputs.mean(0).astype(np.float32),
        "input_std": (inputs.std(0) + 1e-6).astype(np.float32),
        "target_mean": targets.mean(0).astype(np.float32),
        "target_std": (targets.std(0) + 1e-6).astype(np.float32),
    }


def _targets(dataset: Dataset) -> np.ndarray:
    return np.concatenate([dataset.next_observations - dataset.observations, dataset.rewards[:, None]], axis=-1)


def _inputs(model: EnsembleModel, obs: jax.Array, actions: jax.Array) -> jax.Array:
    stats = model["stats"]
    return (jnp.concatenate([obs, actions], axis=-1) - stats["input_mean"]) / stats["input_std"]


def _termination_features(model: EnsembleModel, obs: jax.Array, actions: jax.Array, next_obs: jax.Array) -> jax.Array:
    stats = model["stats"]
    obs_dim = obs.shape[-1]
    delta = (next_obs - obs - stats["target_mean"][:obs_dim]) / stats["target_std"][:obs_dim]
    return jnp.concatenate([_inputs(model, obs, actions), delta], axis=-1)


# ---- prediction ---------------------------------------------------------------------------------------
def elite_predictions(model: EnsembleModel, obs: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every elite's (mean, logvar) in normalised target units, shape (elites, batch, obs_dim + 1)."""
    net = member_network(model["config"], model["stats"]["target_mean"].shape[-1])
    params = jax.tree_util.tree_map(lambda p: p[model["elites"]], model["params"])
    return jax.vmap(net.apply, in_axes=(0, None))(params, _inputs(model, obs, actions))


def predict_done(model: EnsembleModel, obs: jax.Array, actions: jax.Array, next_obs: jax.Array) -> jax.Array:
    """Predicted termination of (s, a, s'): the known function, the learned classifier, or never."""
    config = model["config"]
    if config.termination == "known":
        return envs.termination_fn(config.termination_family)(next_obs)
    if config.termination == "learned":
        logits = termination_network(config).apply(model["termination"], _termination_features(model, obs, actions, next_obs))
        return logits[..., 0] > 0.0
    return jnp.zeros(obs.shape[:-1], bool)


def _outcome(model: EnsembleModel, obs: jax.Array, actions: jax.Array, normalised: jax.Array):
    stats = model["stats"]
    change = stats["target_mean"] + stats["target_std"] * normalised
    next_obs = obs + change[..., :-1]
    return next_obs, change[..., -1], predict_done(model, obs, actions, next_obs)


def imagine_step(
    model: EnsembleModel, obs: jax.Array, actions: jax.Array, key: jax.Array, kind: str = "gjs"
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One imagined step for a batch: (next_obs, rewards, dones, uncertainty). Jittable.

    Each row samples from the Gaussian of a random elite (MBPO); rewards are in the dataset's raw units;
    uncertainty is ``kind`` ('gjs' or 'disagreement') of the elites at (s, a), computed from the same forward pass.
    """
    means, logvars = elite_predictions(model, obs, actions)
    member_key, noise_key = jax.random.split(key)
    batch = obs.shape[0]
    member = jax.random.randint(member_key, (batch,), 0, means.shape[0])
    mean, logvar = means[member, jnp.arange(batch)], logvars[member, jnp.arange(batch)]
    sample = mean + jnp.exp(0.5 * logvar) * jax.random.normal(noise_key, mean.shape)
    return (*_outcome(model, obs, actions, sample), measure(kind, means, logvars))


def model_step(model: EnsembleModel, obs: jax.Array, actions: jax.Array, key: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(next_obs, rewards, dones) for a batch (batch, dim); a random elite per row, sampled. Jittable."""
    return imagine_step(model, obs, actions, key)[:3]


def member_step(model: EnsembleModel, obs: jax.Array, actions: jax.Array, key: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Like :func:`model_step`, but row ``i`` is propagated by elite ``i mod elites`` alone.

    One network evaluation per row instead of one per elite: the cheap step for planners, whose candidate
    sequences are i.i.d. so a fixed assignment is as good as a random one (PETS' trajectory sampling).
    """
    elites = model["elites"].shape[0]
    batch = obs.shape[0]
    groups = -(-batch // elites)
    pad = groups * elites - batch
    inputs = jnp.pad(_inputs(model, obs, actions), ((0, pad), (0, 0)), mode="edge")
    inputs = inputs.reshape(groups, elites, -1).swapaxes(0, 1)  # member m gets rows m, m + elites, ...
    net = member_network(model["config"], model["stats"]["target_mean"].shape[-1])
    params = jax.tree_util.tree_map(lambda p: p[model["elites"]], model["params"])
    mean, logvar = jax.vmap(net.apply)(params, inputs)
    mean, logvar = (x.swapaxes(0, 1).reshape(groups * elites, -1)[:batch] for x in (mean, logvar))
    sample = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return _outcome(model, obs, actions, sample)


def uncertainty(model: EnsembleModel, obs: jax.Array, actions: jax.Array, kind: str = "gjs") -> jax.Array:
    """U(s, a) for a batch, shape (batch,): 'gjs' (mean pairwise geometric JS of elites) or 'disagreement'."""
    return measure(kind, *elite_predictions(model, obs, actions))


def uncertainty_threshold(model: EnsembleModel, obs: np.ndarray, actions: np.ndarray, kind: str = "gjs",
                          quantile: float = 0.9, batch_size: int = 8192) -> tuple[float, np.ndarray]:
    """``kappa``: the ``quantile`` of U over a dataset's own (s, a) pairs, and U of every pair.

    Imagined steps above kappa are less trustworthy than the model is on (1 - quantile) of the real data.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"kappa quantile must be in (0, 1], got {quantile}.")
    values = map_batches(lambda o, a: uncertainty(model, o, a, kind), obs, actions, batch_size=batch_size)
    return float(np.quantile(values, quantile)), values


def map_batches(fn: Callable[..., jax.Array], *arrays: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """``fn`` (batched, jittable) over host arrays in fixed-size batches (one compilation), as one numpy array."""
    fn = jax.jit(fn)
    size = len(arrays[0])
    outputs = []
    for start in range(0, size, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), size - 1)  # pad the last batch
        outputs.append(np.asarray(fn(*(x[index] for x in arrays)))[: size - start])
    return np.concatenate(outputs)


# ---- training -----------------------------------------------------------------------------------------
def resolve_termination(config: EnsembleConfig, dataset: Dataset) -> EnsembleConfig:
    """Replace 'auto' by what will be used, and fill ``termination_family`` for known functions."""
    name = config.termination_family or dataset.metadata.get("env") or dataset.name
    family = envs.family_of(str(name))
    known = family is not None and envs.termination_fn(family.name) is not None
    if config.termination == "known" and not known:
        raise ValueError(f"no known termination function for {name!r} (known: {', '.join(envs.TERMINATION_FNS)}). "
                         f"Use termination='learned', or set termination_family.")
    if config.termination in ("known", "auto") and known:
        return dataclasses.replace(config, termination="known", termination_family=family.name)
    if config.termination in ("learned", "auto"):
        # Without a single terminal in the data there is nothing to learn: the model never terminates.
        return dataclasses.replace(config, termination="learned" if dataset.terminals.any() else "never")
    return config


def ensemble_learner(config: EnsembleConfig, train: Dataset, stats: dict[str, np.ndarray]) -> Learner:
    """All members in one vmapped Gaussian-NLL update; state ``{"params", "opt"}``."""
    out_dim = train.obs_dim + 1
    net = member_network(config, out_dim)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay, mask=decay_mask)
    inputs = np.concatenate([train.observations, train.actions], axis=-1)
    fields = {
        "inputs": ((inputs - stats["input_mean"]) / stats["input_std"]).astype(np.float32),
        "targets": ((_targets(train) - stats["target_mean"]) / stats["target_std"]).astype(np.float32),
    }

    def init(key: jax.Array) -> dict:
        params = jax.vmap(net.init, in_axes=(0, None))(jax.random.split(key, config.members),
                                                       jnp.zeros((1, inputs.shape[-1])))
        return {"params": params, "opt": optimizer.init(params)}

    def sample(fields: dict, key: jax.Array) -> dict:
        size = fields["inputs"].shape[0]
        index = jax.random.randint(key, (config.members, config.batch_size), 0, size)
        return {k: v[index] for k, v in fields.items()}

    def member_loss(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        mean, logvar = net.apply(params, inputs)
        bounds = params["params"]["max_logvar"].sum() - params["params"]["min_logvar"].sum()
        return gaussian_nll(mean, logvar, targets).mean() + config.logvar_bound_coef * bounds

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        def total_loss(params):
            # Members are independent, so the gradient of the sum is each member's own gradient.
            losses = jax.vmap(member_loss)(params, batch["inputs"], batch["targets"])
            return losses.sum(), losses

        (_, losses), grads = jax.value_and_grad(total_loss, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, {"loss": losses.mean()}

    return Learner(fields=fields, init=init, update=update, sample=sample, policy=None, policy_params=None)


def termination_learner(config: EnsembleConfig, train: Dataset, model: EnsembleModel) -> Learner:
    """Logistic classifier of terminals on (s, a, s' - s), trained on class-balanced batches."""
    net = termination_network(config)
    optimizer = optax.adam(1e-3)
    features = np.asarray(_termination_features(model, train.observations, train.actions, train.next_observations))
    fields = {
        "positives": features[train.terminals],
        "negatives": features[~train.terminals],
    }
    half = max(1, config.batch_size // 2)

    def init(key: jax.Array) -> dict:
        params = net.init(key, jnp.zeros((1, features.shape[-1])))
        return {"params": params, "opt": optimizer.init(params)}

    def sample(fields: dict, key: jax.Array) -> dict:
        # Terminals are rare (~0.5% of hopper-medium-replay): half of every batch is drawn from them.
        pos_key, neg_key = jax.random.split(key)
        pos = fields["positives"][jax.random.randint(pos_key, (half,), 0, fields["positives"].shape[0])]
        neg = fields["negatives"][jax.random.randint(neg_key, (half,), 0, fields["negatives"].shape[0])]
        return {"features": jnp.concatenate([pos, neg]), "labels": jnp.repeat(jnp.array([1.0, 0.0]), half)}

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        def loss_fn(params):
            logits = net.apply(params, batch["features"])[:, 0]
            return optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, {"loss": loss}

    return Learner(fields=fields, init=init, update=update, sample=sample, policy=None, policy_params=None)


def _holdout_errors(model_params: dict, config: EnsembleConfig, inputs: jax.Array, targets: jax.Array):
    """Per-member (MSE of means, Gaussian NLL) on held-out data, normalised units."""
    net = member_network(config, targets.shape[-1])
    mean, logvar = jax.vmap(net.apply, in_axes=(0, None))(model_params, inputs)
    return ((mean - targets) ** 2).mean((1, 2)), gaussian_nll(mean, logvar, targets).mean(-1)


def train_ensemble(dataset: Dataset, config: EnsembleConfig, seed: int, progress: bool = True
                   ) -> tuple[EnsembleModel, dict]:
    """Train the ensemble (and, if needed, the termination classifier) on ``dataset``.

    Returns (model, report). The report holds the held-out NLL and per-group one-step MSE of the elite mean
    (raw units, next to the MSE of predicting the mean change), per-member held-out errors, the elites, and
    how long training ran.
    """
    started = time.perf_counter()
    train, heldout = conditional.holdout_split(dataset, config.holdout_fraction, seed)
    config = resolve_termination(config, train)
    if heldout.size > config.max_holdout:
        heldout = heldout.select(np.sort(np.random.default_rng(seed).permutation(heldout.size)[: config.max_holdout]))
    stats = normalisation_stats(train)
    learner = ensemble_learner(config, train, stats)
    holdout_in = jnp.asarray((np.concatenate([heldout.observations, heldout.actions], -1) - stats["input_mean"])
                             / stats["input_std"], jnp.float32)
    holdout_target = jnp.asarray((_targets(heldout) - stats["target_mean"]) / stats["target_std"], jnp.float32)
    holdout = jax.jit(lambda params: _holdout_errors(params, config, holdout_in, holdout_target))

    fields = to_device(learner.fields)
    chunk = make_chunk_fn(learner, config.eval_every)
    state = learner.init(jax.random.PRNGKey(seed))
    initial_mse = np.asarray(holdout(state["params"])[0])
    best_params = jax.tree_util.tree_map(jnp.copy, state["params"])  # the chunk donates `state`
    best_mse = np.full(config.members, np.inf)
    stale, step = 0, 0
    bar = tqdm(total=config.max_steps, desc="world model", unit="upd", disable=not progress, dynamic_ncols=True)
    while step < config.max_steps and stale < config.patience:
        state, metrics = chunk(state, fields, chunk_key(seed, step))
        step += config.eval_every
        mse = np.asarray(holdout(state["params"])[0])
        if not np.all(np.isfinite(mse)):
            raise FloatingPointError(f"world model diverged at step {step}; lower learning_rate or check the data.")
        improved = mse < best_mse * (1.0 - config.min_improvement)
        best_params = jax.tree_util.tree_map(
            lambda best, new: jnp.where(improved.reshape(-1, *([1] * (new.ndim - 1))), new, best),
            best_params, state["params"])
        best_mse = np.where(improved, mse, best_mse)
        stale = 0 if improved.any() else stale + 1
        bar.update(config.eval_every)
        bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", holdout_mse=f"{best_mse.min():.4f}")
    bar.close()

    mse, nll = (np.asarray(x) for x in holdout(best_params))
    elites = np.sort(np.argsort(mse)[: config.elites]).astype(np.int32)
    model = {"params": best_params, "stats": {k: jnp.asarray(v) for k, v in stats.items()},
             "elites": jnp.asarray(elites), "termination": {}, "config": config}
    report = {
        "steps": step,
        "checks": step // config.eval_every,
        "early_stopped": step < config.max_steps,
        "train_transitions": train.size,
        "heldout_transitions": heldout.size,
        "member_heldout_mse_initial": initial_mse.tolist(),
        "member_heldout_mse": mse.tolist(),
        "member_heldout_nll": nll.tolist(),
        "elites": elites.tolist(),
        **one_step_errors(model, heldout),
        "heldout_nll": float(nll[elites].mean()),
        "termination": config.termination if config.termination != "known" else f"known:{config.termination_family}",
    }
    if config.termination == "learned":
        model, accuracy = _train_termination(model, config, train, heldout, seed)
        report["termination_heldout_balanced_accuracy"] = accuracy
    report["seconds"] = time.perf_counter() - started
    log.info("world model: %d updates, held-out NLL %.3f, obs-delta MSE %.4g (mean-change baseline %.4g), "
             "reward MSE %.4g, elites %s", step, report["heldout_nll"], report["obs_delta_mse"],
             report["obs_delta_mse_baseline"], report["reward_mse"], report["elites"])
    return model, report


def _train_termination(model: EnsembleModel, config: EnsembleConfig, train: Dataset, heldout: Dataset, seed: int
                       ) -> tuple[EnsembleModel, float | None]:
    learner = termination_learner(config, train, model)
    state = learner.init(jax.random.PRNGKey(seed + 1))
    fields = to_device(learner.fields)
    length = min(1000, config.termination_steps)
    chunk = make_chunk_fn(learner, length)
    for step in range(0, config.termination_steps - length + 1, length):
        state, _ = chunk(state, fields, chunk_key(seed + 1, step))
    model = dict(model, termination=state["params"])
    if not heldout.terminals.any() or heldout.terminals.all():
        return model, None
    predicted = map_batches(lambda *x: predict_done(model, *x), heldout.observations, heldout.actions,
                            heldout.next_observations)
    recall = lambda label: float((predicted[heldout.terminals == label] == label).mean())
    return model, 0.5 * (recall(True) + recall(False))


def one_step_errors(model: EnsembleModel, dataset: Dataset) -> dict[str, float]:
    """Raw-unit MSE of the elites' mean prediction of s' - s (mean over dims) and r on ``dataset``, and the
    elites' mean Gaussian NLL in normalised units (as in training's held-out report)."""
    stats = model["stats"]

    def elite_mean(obs, actions):
        means, _ = elite_predictions(model, obs, actions)
        return stats["target_mean"] + stats["target_std"] * means.mean(0)

    def elite_nll(obs, actions, targets):
        means, logvars = elite_predictions(model, obs, actions)
        return gaussian_nll(means, logvars, (targets - stats["target_mean"]) / stats["target_std"]).mean(0)

    predicted = map_batches(elite_mean, dataset.observations, dataset.actions)
    target = _targets(dataset)
    nll = map_batches(elite_nll, dataset.observations, dataset.actions, target.astype(np.float32))
    error = (predicted - target) ** 2
    baseline = (target - target.mean(0)) ** 2
    return {
        "heldout_nll": float(nll.mean()),
        "obs_delta_mse": float(error[:, :-1].mean()),
        "obs_delta_mse_baseline": float(baseline[:, :-1].mean()),
        "reward_mse": float(error[:, -1].mean()),
        "reward_mse_baseline": float(baseline[:, -1].mean()),
    }


# ---- persistence --------------------------------------------------------------------------------------
def save_model(model: EnsembleModel, path: str | Path, info: dict | None = None) -> None:
    """Write ``PATH.msgpack`` (arrays) and ``PATH.json`` (config, ``info``) atomically, JSON last."""
    arrays = {k: v for k, v in model.items() if k != "config"}
    conditional.save_model(path, KIND, model["config"], arrays, info or {})


def load_model(path: str | Path) -> EnsembleModel:
    """Read a model written by :func:`save_model`; clear errors for a missing, foreign or corrupt file."""
    config, arrays, _ = conditional.load_model(path, KIND, EnsembleConfig)
    expected = {"params", "stats", "elites", "termination"}
    if set(arrays) != expected:
        raise ValueError(f"{Path(path).with_suffix('.msgpack')} holds {sorted(arrays)}, not an ensemble model "
                         f"({sorted(expected)}); delete it and retrain.")
    arrays["elites"] = arrays["elites"].astype(jnp.int32)
    return dict(arrays, config=config)
