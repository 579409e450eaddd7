"""Training the ensemble world model (:mod:`.ensemble`): all members in one vmapped update, each on its own
batches, fused ``eval_every`` updates per jitted ``lax.scan``. Every ``eval_every`` updates the held-out MSE
of each member is measured; a member's parameters are snapshotted when it improves by more than
``min_improvement`` (relative), and training stops after ``patience`` checks without any improvement (MBPO).
The ``elites`` members with the lowest held-out error are the ones used for imagination. Where no termination
function is known, a classifier of terminals is trained after the members.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ipdrl import envs
from ipdrl.data.dataset import Dataset, map_batches
from ipdrl.data.statistics import denormalize, normalize
from ipdrl.optim import gradient_step
from ipdrl.training import Learner, fit
from ipdrl.world_models import common
from ipdrl.world_models.ensemble import (EnsembleConfig, EnsembleModel, elite_predictions, gaussian_nll, member_network,
                                         normalisation_stats, predict_done, targets_of, termination_features,
                                         termination_network)

log = logging.getLogger("ipdrl")


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


def ensemble_learner(config: EnsembleConfig, train: Dataset, stats: dict[str, dict[str, np.ndarray]]) -> Learner:
    """All members in one vmapped Gaussian-NLL update; state ``{"params", "opt"}``."""
    out_dim = train.obs_dim + 1
    net = member_network(config, out_dim)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay, mask=decay_mask)
    inputs = np.concatenate([train.observations, train.actions], axis=-1)
    fields = {
        "inputs": normalize(inputs, stats["inputs"]).astype(np.float32),
        "targets": normalize(targets_of(train), stats["targets"]).astype(np.float32),
    }

    def init(key: jax.Array) -> dict:
        params = jax.vmap(net.init, in_axes=(0, None))(jax.random.split(key, config.members),
                                                       jnp.zeros((1, inputs.shape[-1])))
        return {"params": params, "opt": optimizer.init(params)}

    def member_loss(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        mean, logvar = net.apply(params, inputs)
        bounds = params["params"]["max_logvar"].sum() - params["params"]["min_logvar"].sum()
        return gaussian_nll(mean, logvar, targets).mean() + config.logvar_bound_coef * bounds

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        def total_loss(params):
            # Members are independent, so the gradient of the sum is each member's own gradient.
            losses = jax.vmap(member_loss)(params, batch["inputs"], batch["targets"])
            return losses.sum(), losses

        step = gradient_step(total_loss, optimizer, state["params"], state["opt"], has_aux=True)
        return {"params": step.params, "opt": step.opt_state}, {"loss": step.aux.mean()}

    return Learner(fields=fields, init=init, update=update,
                   sample=lambda fields, key: common.member_batches(fields, key, config.members, config.batch_size))


def termination_learner(config: EnsembleConfig, train: Dataset, model: EnsembleModel) -> Learner:
    """Logistic classifier of terminals on (s, a, s' - s), trained on class-balanced batches."""
    net = termination_network(config)
    optimizer = optax.adam(1e-3)
    features = np.asarray(termination_features(model, train.observations, train.actions, train.next_observations))
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

        step = gradient_step(loss_fn, optimizer, state["params"], state["opt"])
        return {"params": step.params, "opt": step.opt_state}, {"loss": step.loss}

    return Learner(fields=fields, init=init, update=update, sample=sample)


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
    train, heldout = common.holdout_split(dataset, config.holdout_fraction, seed)
    config = resolve_termination(config, train)
    if heldout.size > config.max_holdout:
        heldout = heldout.select(np.sort(np.random.default_rng(seed).permutation(heldout.size)[: config.max_holdout]))
    stats = normalisation_stats(train)
    learner = ensemble_learner(config, train, stats)
    holdout_in = jnp.asarray(normalize(np.concatenate([heldout.observations, heldout.actions], -1), stats["inputs"]),
                             jnp.float32)
    holdout_target = jnp.asarray(normalize(targets_of(heldout), stats["targets"]), jnp.float32)
    holdout = jax.jit(lambda params: _holdout_errors(params, config, holdout_in, holdout_target))

    state = learner.init(jax.random.PRNGKey(seed))
    initial_mse = np.asarray(holdout(state["params"])[0])
    best = {"params": jax.tree_util.tree_map(jnp.copy, state["params"]), "mse": np.full(config.members, np.inf),
            "stale": 0, "steps": 0}
    bar = tqdm(total=config.max_steps, desc="world model", unit="upd", disable=not progress, dynamic_ncols=True)

    def check(step: int, state: dict, metrics: dict[str, float]) -> bool:
        """Snapshot the members that improved on the held-out data; stop after ``patience`` checks without any."""
        mse = np.asarray(holdout(state["params"])[0])
        if not np.all(np.isfinite(mse)):
            raise FloatingPointError(f"world model diverged at step {step}; lower learning_rate or check the data.")
        improved = mse < best["mse"] * (1.0 - config.min_improvement)
        best["params"] = jax.tree_util.tree_map(
            lambda kept, new: jnp.where(improved.reshape(-1, *([1] * (new.ndim - 1))), new, kept),
            best["params"], state["params"])
        best["mse"] = np.where(improved, mse, best["mse"])
        best["stale"] = 0 if improved.any() else best["stale"] + 1
        best["steps"] = step
        bar.update(config.eval_every)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", holdout_mse=f"{best['mse'].min():.4f}")
        return best["stale"] >= config.patience

    # max_steps rounded up to whole checks; early stopping usually ends training sooner.
    checks = -(-config.max_steps // config.eval_every)
    fit(learner, checks * config.eval_every, seed, config.eval_every, state, on_chunk=check)
    bar.close()
    step, best_params = best["steps"], best["params"]

    mse, nll = (np.asarray(x) for x in holdout(best_params))
    elites = np.sort(np.argsort(mse)[: config.elites]).astype(np.int32)
    model = {"params": best_params, "stats": jax.tree_util.tree_map(jnp.asarray, stats),
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
    state = fit(learner, config.termination_steps, seed + 1, min(1000, config.termination_steps))
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
    stats = model["stats"]["targets"]

    def elite_mean(obs, actions):
        means, _ = elite_predictions(model, obs, actions)
        return denormalize(means.mean(0), stats)

    def elite_nll(obs, actions, targets):
        means, logvars = elite_predictions(model, obs, actions)
        return gaussian_nll(means, logvars, normalize(targets, stats)).mean(0)

    predicted = map_batches(elite_mean, dataset.observations, dataset.actions)
    target = targets_of(dataset)
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


