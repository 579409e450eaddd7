"""What every world model shares: the episode-wise held-out split, a learner for any per-transition regression
loss, ensemble members, and persistence (atomic save, template-free load).

A trained model is a pytree ``{"net": params (leading member axis for ensembles), "stats": normalisation
statistics, ...}`` so sampling stays a pure function of that tree and one jit serves every model. Saved models are
``PATH.msgpack`` (arrays) plus ``PATH.json`` (kind, format, config, info); the JSON is written last, so a model
whose JSON exists is complete.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipdrl.config import config_from_json
from ipdrl.data.dataset import Dataset
from ipdrl.optim import gradient_step
from ipdrl.storage import atomic_write_bytes, atomic_write_json
from ipdrl.training import Learner

Model = dict[str, Any]
"""``{"net": network params (leading member axis for ensembles), "stats": normalisation statistics}``."""

FORMAT = 2
"""Version of the saved-model layout; files of another version are refused with a clear message."""


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


# ---- training ---------------------------------------------------------------------------------------
def regression_learner(
    init_net: Callable[[jax.Array], Any],
    loss: Callable[[Any, dict[str, jax.Array], jax.Array], jax.Array],
    fields: Mapping[str, np.ndarray],
    stats: Mapping[str, Any],
    batch_size: int,
    learning_rate: float,
    members: int = 1,
) -> Learner:
    """A :class:`Learner` minimising ``loss(net_params, batch, key)`` with Adam for ``members`` independent nets.

    State: ``{"net", "opt", "stats"}``; each member draws its own batch (ensemble diversity). Models do not act:
    train one with ``train_in_run(..., env_id=None)`` or :func:`ipdrl.training.fit`.
    """
    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}.")
    optimizer = optax.adam(learning_rate)

    @jax.jit  # one compilation instead of one per initialiser op (orthogonal init runs QR decompositions)
    def init(key: jax.Array) -> dict:
        net = jax.vmap(init_net)(jax.random.split(key, members))
        return {"net": net, "opt": optimizer.init(net), "stats": dict(stats)}

    def sample(fields: Mapping[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        return member_batches(fields, key, members, batch_size)

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        def total_loss(net):
            # Members are independent, so the gradient of the sum is each member's own gradient.
            losses = jax.vmap(loss)(net, batch, jax.random.split(key, members))
            return losses.sum(), losses

        step = gradient_step(total_loss, optimizer, state["net"], state["opt"], has_aux=True)
        return dict(state, net=step.params, opt=step.opt_state), {"train/loss": step.aux.mean()}

    return Learner(fields=dict(fields), init=init, update=update, sample=sample)


def member_batches(fields: Mapping[str, jax.Array], key: jax.Array, members: int, batch_size: int
                   ) -> dict[str, jax.Array]:
    """A batch per ensemble member, shape (members, batch_size, ...): each member sees its own transitions."""
    size = next(iter(fields.values())).shape[0]
    index = jax.random.randint(key, (members, batch_size), 0, size)
    return {k: v[index] for k, v in fields.items()}


def model_of(state: Mapping[str, Any]) -> Model:
    """The trained model (network + statistics) inside a :func:`regression_learner` state."""
    return {"net": state["net"], "stats": state["stats"]}


def member(model: Model, index: int) -> Model:
    """One member of an ensemble model (what the single-member samplers take)."""
    return {"net": jax.tree_util.tree_map(lambda x: x[index], model["net"]), "stats": model["stats"]}


def num_members(model: Model) -> int:
    return int(jax.tree_util.tree_leaves(model["net"])[0].shape[0])


# ---- persistence ------------------------------------------------------------------------------------
def save_model(path: str | Path, kind: str, config: Any, model: Model, info: Mapping[str, Any]) -> None:
    """Write ``PATH.msgpack`` (arrays) then ``PATH.json`` (kind, format, config, info), each atomically."""
    path = Path(path)
    atomic_write_bytes(path.with_suffix(".msgpack"), flax.serialization.msgpack_serialize(jax.device_get(model)))
    atomic_write_json(path.with_suffix(".json"), {"kind": kind, "format": FORMAT, "config": dataclasses.asdict(config),
                                                  "info": dict(info)})


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
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was written by an older ipdrl (model format {meta.get('format', 1)}, this version "
                         f"reads {FORMAT}): delete {path}.json and {path}.msgpack and retrain.")
    try:
        model = flax.serialization.msgpack_restore(path.with_suffix(".msgpack").read_bytes())
    except Exception as err:  # msgpack raises several types for corrupt bytes
        raise ValueError(f"model file {path}.msgpack cannot be read ({err}); delete it and retrain.") from None
    config = config_from_json(meta["config"], config_cls)
    return config, jax.tree_util.tree_map(jnp.asarray, model), meta["info"]
