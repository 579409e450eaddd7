"""Generative next-state models (DWM-MPC's diffusion and MeanFlow): one narrow protocol and what both share.

A :class:`TransitionModel` is what differs between kinds: its ``Config``, ``network``, training ``loss``,
differentiable ``sample`` (every Gaussian draw passed in as ``noise``) and ``noise_shape``. Everything else is
written once here: the normalisation (models see normalised s and predict the normalised change
``(s' - s - mean) / std``), the time-conditioned MLP, the learner, the held-out error and persistence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.data.dataset import Dataset
from ipdrl.data.statistics import moments, normalize, observation_stats
from ipdrl.networks import MLP
from ipdrl.training import Learner
from ipdrl.world_models import common
from ipdrl.world_models.common import Model


class TransitionModel(NamedTuple):
    """A kind of next-state model: the functions that differ between diffusion and MeanFlow."""

    kind: str
    Config: type
    time_dims: int
    """Width of the time input of its network (diffusion: the noise level; MeanFlow: (t, t - r))."""
    loss: Callable[[Any, nn.Module, Any, dict[str, jax.Array], jax.Array], jax.Array]
    """(config, net, params, batch, key) -> scalar training loss of one member."""
    sample: Callable[[Any, Model, jax.Array, jax.Array, jax.Array], jax.Array]
    """(config, one-member model, raw obs, act, noise) -> raw next obs; differentiable in obs, act and params."""
    noise_shape: Callable[[Any, int], tuple[int, ...]]
    """(config, obs_dim) -> shape of the Gaussian draws one transition consumes."""


# ---- normalisation ----------------------------------------------------------------------------------
def transition_stats(dataset: Dataset) -> dict[str, dict[str, jax.Array]]:
    """Statistics of observations and of state changes: ``{"obs": {mean, std}, "delta": {mean, std}}``."""
    stats = {"obs": observation_stats(dataset), "delta": moments(dataset.next_observations - dataset.observations, 1e-6)}
    return jax.tree_util.tree_map(jnp.asarray, stats)


def next_obs_from_delta(obs: jax.Array, delta: jax.Array, stats: Mapping[str, Any]) -> jax.Array:
    """Raw next observation from a normalised state change."""
    return obs + stats["delta"]["mean"] + stats["delta"]["std"] * delta


def transition_fields(dataset: Dataset, stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Training fields of a transition model, normalised once on the host."""
    stats = jax.device_get(stats)
    return {
        "obs": normalize(dataset.observations, stats["obs"]).astype(np.float32),
        "act": dataset.actions.astype(np.float32),
        "target": normalize(dataset.next_observations - dataset.observations, stats["delta"]).astype(np.float32),
    }


# ---- the network ------------------------------------------------------------------------------------
def sinusoidal_embedding(times: jax.Array, dim: int, max_frequency: float = 100.0) -> jax.Array:
    """Features ``[sin(w t), cos(w t)]`` of times in [0, 1], w geometric in [1, max_frequency].

    The top frequency is kept moderate on purpose: MeanFlow differentiates the network in time, and a
    1000-rad/unit embedding would make du/dt (hence its training target) huge at initialisation.
    """
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_frequency), dim // 2))
    angles = times[..., None] * freqs
    features = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return features.reshape(*times.shape[:-1], -1)


class ConditionalMLP(nn.Module):
    """``f(z, times | s, a)``: an MLP on the noisy sample, a learned embedding of its time(s) and the condition."""

    out_dim: int
    hidden_dims: Sequence[int] = (256, 256, 256)
    time_embed_dim: int = 32

    @nn.compact
    def __call__(self, z: jax.Array, times: jax.Array, obs: jax.Array, act: jax.Array) -> jax.Array:
        embedding = nn.silu(nn.Dense(self.time_embed_dim)(sinusoidal_embedding(times, self.time_embed_dim)))
        inputs = (z, embedding, obs, act)
        batch = jnp.broadcast_shapes(*(x.shape[:-1] for x in inputs))  # e.g. many noise draws for one (s, a)
        x = jnp.concatenate([jnp.broadcast_to(x, (*batch, x.shape[-1])) for x in inputs], axis=-1)
        return MLP(self.hidden_dims, self.out_dim, activation="silu")(x)


def network(config: Any, obs_dim: int) -> ConditionalMLP:
    return ConditionalMLP(obs_dim, config.hidden_dims, config.time_embed_dim)


def conditioning(model: Model, obs: jax.Array) -> jax.Array:
    """The normalised state a model is conditioned on."""
    return normalize(obs, model["stats"]["obs"])


# ---- the kind-independent operations ----------------------------------------------------------------
def make_learner(kind: TransitionModel, config: Any, dataset: Dataset) -> Learner:
    """Train on ``dataset`` (the training split); ``config`` supplies batch_size, learning_rate and members.
    The state holds the (ensemble of) networks and the normalisation statistics."""
    net = network(config, dataset.obs_dim)
    stats = transition_stats(dataset)
    dummy = (jnp.zeros((1, dataset.obs_dim)), jnp.zeros((1, kind.time_dims)), jnp.zeros((1, dataset.obs_dim)),
             jnp.zeros((1, dataset.act_dim)))
    return common.regression_learner(init_net=lambda key: net.init(key, *dummy),
                                     loss=lambda params, batch, key: kind.loss(config, net, params, batch, key),
                                     fields=transition_fields(dataset, stats), stats=stats,
                                     batch_size=config.batch_size, learning_rate=config.learning_rate,
                                     members=config.members)


def heldout_metrics(kind: TransitionModel, config: Any, model: Model, dataset: Dataset, key: jax.Array
                    ) -> dict[str, float]:
    """One-step next-state error on ``dataset`` (held-out transitions), in raw units.

    ``next_state_mse``: mean over transitions, dimensions and members of (sampled s' - true s')^2, one sample
    per transition. ``copy_baseline_mse`` is the same for predicting s' = s, the scale to judge it against.
    """
    noise = jax.random.normal(key, (dataset.size, *kind.noise_shape(config, dataset.obs_dim)))

    @jax.jit
    def member_errors(model: Model, obs: jax.Array, act: jax.Array, next_obs: jax.Array, noise: jax.Array):
        def one(net: Any) -> jax.Array:
            predicted = kind.sample(config, {"net": net, "stats": model["stats"]}, obs, act, noise)
            return ((predicted - next_obs) ** 2).mean()

        return jax.lax.map(one, model["net"])

    errors = np.asarray(member_errors(model, dataset.observations, dataset.actions, dataset.next_observations, noise))
    return {
        "next_state_mse": float(errors.mean()),
        "next_state_mse_members": errors.tolist(),
        "copy_baseline_mse": float(((dataset.next_observations - dataset.observations) ** 2).mean()),
        "heldout_transitions": dataset.size,
    }


def save(kind: TransitionModel, path: str | Path, config: Any, model: Model, info: dict[str, Any]) -> None:
    common.save_model(path, kind.kind, config, model, info)


def load(kind: TransitionModel, path: str | Path) -> tuple[Any, Model, dict[str, Any]]:
    return common.load_model(path, kind.kind, kind.Config)
