"""Pieces shared by DWM-MPC's world models (:mod:`.diffusion`, :mod:`.meanflow`, :mod:`.reward`).

Every model here is a network plus the statistics that map raw quantities to the normalised space it was
trained in, held together in one pytree ``{"net": params, "stats": {...}}`` so sampling stays a pure function
of that tree (one jit serves every model). Transition models may be ensembles: their ``net`` leaves then
carry a leading member axis and each member trains on its own batches.

This module provides the episode-wise held-out split, normalisation statistics, the time-conditioned MLP
of the generative models, a :class:`~ipdrl.training.Learner` for any per-transition loss (so
:func:`ipdrl.pipelines.train_learner` gives world models the same fused, resumable training as policies) and
atomic save / template-free load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.algos.common import normalize, observation_stats
from ipdrl.config import config_from_json
from ipdrl.data.dataset import Dataset
from ipdrl.networks import MLP
from ipdrl.runs import atomic_write_bytes, atomic_write_json
from ipdrl.training import Learner

Model = dict[str, Any]
"""``{"net": network params (leading member axis for ensembles), "stats": normalisation arrays}``."""


# ---- data -------------------------------------------------------------------------------------------
def holdout_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, held-out): whole episodes are held out, so held-out error measures generalisation to new
    trajectories rather than to neighbours of training transitions. Single-episode datasets split transitions."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    if dataset.num_episodes >= 2:
        count = min(max(1, round(fraction * dataset.num_episodes)), dataset.num_episodes - 1)
        held = np.isin(dataset.episode_index(), rng.permutation(dataset.num_episodes)[:count])
    else:
        if dataset.size < 2:
            raise ValueError(f"dataset {dataset.name!r} has {dataset.size} transition(s): too few to hold any out.")
        held = np.zeros(dataset.size, bool)
        held[rng.permutation(dataset.size)[: min(max(1, round(fraction * dataset.size)), dataset.size - 1)]] = True
    return dataset.select(np.flatnonzero(~held)), dataset.select(np.flatnonzero(held))


def transition_stats(dataset: Dataset) -> dict[str, jax.Array]:
    """Observation and state-change statistics: models see normalised s and predict the normalised s' - s."""
    delta = dataset.next_observations - dataset.observations
    obs = observation_stats(dataset)
    return {
        "obs_mean": jnp.asarray(obs["mean"]),
        "obs_std": jnp.asarray(obs["std"]),
        "delta_mean": jnp.asarray(delta.mean(0), jnp.float32),
        "delta_std": jnp.asarray(delta.std(0) + 1e-6, jnp.float32),
    }


def normalize_obs(obs: jax.Array, stats: Mapping[str, jax.Array]) -> jax.Array:
    return normalize(obs, {"mean": stats["obs_mean"], "std": stats["obs_std"]})


def next_obs_from_delta(obs: jax.Array, delta: jax.Array, stats: Mapping[str, jax.Array]) -> jax.Array:
    """Raw next observation from a normalised state change."""
    return obs + stats["delta_mean"] + stats["delta_std"] * delta


def transition_fields(dataset: Dataset, stats: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Training fields of a transition model, normalised once on the host."""
    stats = jax.device_get(stats)
    delta = dataset.next_observations - dataset.observations
    return {
        "obs": ((dataset.observations - stats["obs_mean"]) / stats["obs_std"]).astype(np.float32),
        "act": dataset.actions.astype(np.float32),
        "target": ((delta - stats["delta_mean"]) / stats["delta_std"]).astype(np.float32),
    }


# ---- networks ---------------------------------------------------------------------------------------
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


# ---- training ---------------------------------------------------------------------------------------
def regression_learner(
    init_net: Callable[[jax.Array], Any],
    loss: Callable[[Any, dict[str, jax.Array], jax.Array], jax.Array],
    fields: Mapping[str, np.ndarray],
    stats: Mapping[str, jax.Array],
    batch_size: int,
    learning_rate: float,
    members: int = 1,
) -> Learner:
    """A :class:`Learner` minimising ``loss(net_params, batch, key)`` with Adam for ``members`` independent nets.

    State: ``{"net", "opt", "stats"}``; each member draws its own batch (ensemble diversity). Models do not act,
    so ``policy`` is None: train it with ``train_learner(..., env_id=None)`` or :func:`ipdrl.training.fit`.
    """
    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}.")
    optimizer = optax.adam(learning_rate)

    @jax.jit  # one compilation instead of one per initialiser op (orthogonal init runs QR decompositions)
    def init(key: jax.Array) -> dict:
        net = jax.vmap(init_net)(jax.random.split(key, members))
        return {"net": net, "opt": optimizer.init(net), "stats": dict(stats)}

    def sample(fields: Mapping[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        size = next(iter(fields.values())).shape[0]
        index = jax.random.randint(key, (members, batch_size), 0, size)
        return {k: v[index] for k, v in fields.items()}

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        def total_loss(net):
            # Members are independent, so the gradient of the sum is each member's own gradient.
            losses = jax.vmap(loss)(net, batch, jax.random.split(key, members))
            return losses.sum(), losses

        (_, losses), grads = jax.value_and_grad(total_loss, has_aux=True)(state["net"])
        updates, opt_state = optimizer.update(grads, state["opt"])
        new_state = dict(state, net=optax.apply_updates(state["net"], updates), opt=opt_state)
        return new_state, {"train/loss": losses.mean()}

    return Learner(fields=dict(fields), init=init, update=update, sample=sample, policy=None, policy_params=None)


def transition_learner(net: nn.Module, time_dims: int, loss: Callable[[Any, dict[str, jax.Array], jax.Array], jax.Array],
                       config: Any, dataset: Dataset) -> Learner:
    """:func:`regression_learner` for a next-state model ``net(z, times (..., time_dims), obs, act)`` trained on
    ``dataset`` (the training split); ``config`` supplies batch_size, learning_rate and members."""
    stats = transition_stats(dataset)
    dummy = (jnp.zeros((1, dataset.obs_dim)), jnp.zeros((1, time_dims)), jnp.zeros((1, dataset.obs_dim)),
             jnp.zeros((1, dataset.act_dim)))
    return regression_learner(init_net=lambda key: net.init(key, *dummy), loss=loss,
                              fields=transition_fields(dataset, stats), stats=stats, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, members=config.members)


def model_of(state: Mapping[str, Any]) -> Model:
    """The trained model (network + statistics) inside a :func:`regression_learner` state."""
    return {"net": state["net"], "stats": state["stats"]}


def member(model: Model, index: int) -> Model:
    """One member of an ensemble model (what the single-member samplers take)."""
    return {"net": jax.tree_util.tree_map(lambda x: x[index], model["net"]), "stats": model["stats"]}


def num_members(model: Model) -> int:
    return int(jax.tree_util.tree_leaves(model["net"])[0].shape[0])


def heldout_error(
    sample: Callable[[Model, jax.Array, jax.Array, jax.Array], jax.Array],
    model: Model,
    dataset: Dataset,
    noise_shape: tuple[int, ...],
    key: jax.Array,
) -> dict[str, float]:
    """One-step next-state error of a sampler on ``dataset`` (held-out transitions), in raw units.

    ``next_state_mse``: mean over transitions, dimensions and members of (sampled s' - true s')^2, one sample
    per transition. ``copy_baseline_mse`` is the same for predicting s' = s, the scale to judge it against.
    """
    noise = jax.random.normal(key, (dataset.size, *noise_shape))

    @jax.jit
    def member_errors(model: Model, obs: jax.Array, act: jax.Array, next_obs: jax.Array, noise: jax.Array):
        def one(net: Any) -> jax.Array:
            return ((sample({"net": net, "stats": model["stats"]}, obs, act, noise) - next_obs) ** 2).mean()

        return jax.lax.map(one, model["net"])

    errors = np.asarray(member_errors(model, dataset.observations, dataset.actions, dataset.next_observations, noise))
    return {
        "next_state_mse": float(errors.mean()),
        "next_state_mse_members": errors.tolist(),
        "copy_baseline_mse": float(((dataset.next_observations - dataset.observations) ** 2).mean()),
        "heldout_transitions": dataset.size,
    }


# ---- persistence ------------------------------------------------------------------------------------
def save_model(path: str | Path, kind: str, config: Any, model: Model, info: Mapping[str, Any]) -> None:
    """Write ``PATH.msgpack`` (arrays) then ``PATH.json`` (kind, config, info), each atomically.

    The JSON is written last, so a model whose JSON exists is complete.
    """
    path = Path(path)
    atomic_write_bytes(path.with_suffix(".msgpack"), flax.serialization.msgpack_serialize(jax.device_get(model)))
    atomic_write_json(path.with_suffix(".json"), {"kind": kind, "config": dataclasses.asdict(config), "info": dict(info)})


def model_exists(path: str | Path) -> bool:
    path = Path(path)
    return path.with_suffix(".json").exists() and path.with_suffix(".msgpack").exists()


def load_model(path: str | Path, kind: str, config_cls: type) -> tuple[Any, Model, dict[str, Any]]:
    """Read a model written by :func:`save_model`: (config, model, info). No template is needed."""
    path = Path(path)
    if not model_exists(path):
        raise FileNotFoundError(f"no saved model at {path}.json/.msgpack: train it first (or fix the path).")
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{path}.json holds a {meta.get('kind')!r} model, expected {kind!r}.")
    try:
        model = flax.serialization.msgpack_restore(path.with_suffix(".msgpack").read_bytes())
    except Exception as err:  # msgpack raises several types for corrupt bytes
        raise ValueError(f"model file {path}.msgpack cannot be read ({err}); delete it and retrain.") from None
    config = config_from_json(meta["config"], config_cls)
    return config, jax.tree_util.tree_map(jnp.asarray, model), meta["info"]
