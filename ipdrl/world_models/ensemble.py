"""IPD stage 2: an ensemble of probabilistic dynamics models (PETS / MBPO), with uncertainty.

Each of ``members`` MLPs maps normalised ``[s, a]`` to a diagonal Gaussian over the normalised ``[s' - s, r]``;
log-variances are squashed softly between learned bounds (``max_logvar``, ``min_logvar``) which a small
regulariser pulls together (Chua et al. 2018). Training, early stopping and elite selection are in
:mod:`.ensemble_training`; this module is what a trained model does.

A trained model is a pytree (a dict)::

    {"params":      member network parameters, leading axis = members,
     "stats":       {"inputs": {"mean", "std"}, "targets": {"mean", "std"}} (normalisation of [s, a] and [s' - s, r]),
     "elites":      int32 indices of the elite members,
     "termination": parameters of the learned termination classifier ({} when the known function is used),
     "config":      the EnsembleConfig it was trained with (static: part of the tree structure, not a leaf)}

so :func:`imagine_step` and :func:`uncertainty` are pure functions of it and one ``jit`` serves every model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipdrl import envs
from ipdrl.config import Settings
from ipdrl.data.dataset import Dataset, map_batches
from ipdrl.data.statistics import denormalize, moments, normalize
from ipdrl.networks import MLP
from ipdrl.world_models import common
from ipdrl.world_models.uncertainty import measure

KIND = "ensemble"
TERMINATIONS = ("auto", "known", "learned", "never")


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class EnsembleConfig(Settings):
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
        super().__post_init__()
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


def softplus(x: jax.Array) -> jax.Array:
    """``log(1 + e^x)`` as ``max(x, 0) + log(1 + e^-|x|)``: the same function, but XLA:CPU runs it and its gradient
    faster than ``jax.nn.softplus`` (``logaddexp``), which stood out in the profile of the world model's training
    step (the README's speed section)."""
    return jnp.maximum(x, 0.0) + jnp.log(1.0 + jnp.exp(-jnp.abs(x)))


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
        logvar = max_logvar - softplus(max_logvar - logvar)
        logvar = min_logvar + softplus(logvar - min_logvar)
        return mean, logvar


def member_network(config: EnsembleConfig, out_dim: int) -> GaussianMLP:
    return GaussianMLP(out_dim, config.hidden_dims, config.activation)


def termination_network(config: EnsembleConfig) -> MLP:
    return MLP(config.termination_hidden_dims, 1, activation="silu", out_scale=1.0)


def gaussian_nll(mean: jax.Array, logvar: jax.Array, target: jax.Array) -> jax.Array:
    """Negative log-likelihood of a diagonal Gaussian, averaged over the last axis (nats per dimension)."""
    return 0.5 * ((target - mean) ** 2 * jnp.exp(-logvar) + logvar + jnp.log(2 * jnp.pi)).mean(-1)



# ---- normalisation ------------------------------------------------------------------------------------
def normalisation_stats(dataset: Dataset) -> dict[str, dict[str, np.ndarray]]:
    inputs = np.concatenate([dataset.observations, dataset.actions], axis=-1)
    return {"inputs": moments(inputs, 1e-6), "targets": moments(targets_of(dataset), 1e-6)}


def targets_of(dataset: Dataset) -> np.ndarray:
    """What the members predict, raw: ``[s' - s, r]``."""
    return np.concatenate([dataset.next_observations - dataset.observations, dataset.rewards[:, None]], axis=-1)


def _inputs(model: EnsembleModel, obs: jax.Array, actions: jax.Array) -> jax.Array:
    return normalize(jnp.concatenate([obs, actions], axis=-1), model["stats"]["inputs"])


def termination_features(model: EnsembleModel, obs: jax.Array, actions: jax.Array, next_obs: jax.Array) -> jax.Array:
    targets = model["stats"]["targets"]
    obs_dim = obs.shape[-1]
    delta = (next_obs - obs - targets["mean"][:obs_dim]) / targets["std"][:obs_dim]
    return jnp.concatenate([_inputs(model, obs, actions), delta], axis=-1)


# ---- prediction ---------------------------------------------------------------------------------------
def elite_predictions(model: EnsembleModel, obs: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every elite's (mean, logvar) in normalised target units, shape (elites, batch, obs_dim + 1)."""
    net = member_network(model["config"], model["stats"]["targets"]["mean"].shape[-1])
    params = jax.tree_util.tree_map(lambda p: p[model["elites"]], model["params"])
    return jax.vmap(net.apply, in_axes=(0, None))(params, _inputs(model, obs, actions))


def predict_done(model: EnsembleModel, obs: jax.Array, actions: jax.Array, next_obs: jax.Array) -> jax.Array:
    """Predicted termination of (s, a, s'): the known function, the learned classifier, or never."""
    config = model["config"]
    if config.termination == "known":
        return envs.termination_fn(config.termination_family)(next_obs)
    if config.termination == "learned":
        logits = termination_network(config).apply(model["termination"], termination_features(model, obs, actions, next_obs))
        return logits[..., 0] > 0.0
    return jnp.zeros(obs.shape[:-1], bool)


def _outcome(model: EnsembleModel, obs: jax.Array, actions: jax.Array, normalised: jax.Array):
    change = denormalize(normalised, model["stats"]["targets"])
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
    net = member_network(model["config"], model["stats"]["targets"]["mean"].shape[-1])
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


# ---- persistence --------------------------------------------------------------------------------------
def save_model(model: EnsembleModel, path: str | Path, info: dict | None = None) -> None:
    """Write ``PATH.msgpack`` (arrays) and ``PATH.json`` (config, ``info``) atomically, JSON last."""
    arrays = {k: v for k, v in model.items() if k != "config"}
    common.save_model(path, KIND, model["config"], arrays, info or {})


def load_model(path: str | Path) -> EnsembleModel:
    """Read a model written by :func:`save_model`; clear errors for a missing, foreign or corrupt file."""
    config, arrays, _ = common.load_model(path, KIND, EnsembleConfig)
    expected = {"params", "stats", "elites", "termination"}
    if set(arrays) != expected:
        raise ValueError(f"{Path(path).with_suffix('.msgpack')} holds {sorted(arrays)}, not an ensemble model "
                         f"({sorted(expected)}); delete it and retrain.")
    arrays["elites"] = arrays["elites"].astype(jnp.int32)
    return dict(arrays, config=config)
