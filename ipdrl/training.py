"""The shared training loop: every algorithm is a :class:`Learner` (pure functions), trained by :func:`fit`.

Updates run fused in chunks of ``log_every`` steps with ``jax.lax.scan``; batches are sampled on device from
fields moved there once. Each chunk's random key is derived from (seed, step), so a run resumed from a
checkpoint produces exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.data.dataset import Fields, to_device

State = Any
Params = Any
Carry = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Policy(NamedTuple):
    """An acting policy, pure in its parameters so one jit serves every evaluation.

    ``init_carry(params, num_envs)`` gives the per-episode memory (history for sequence models, adapted
    weights for DWM-MPC, ``()`` for plain MLP policies); ``act(params, carry, obs, prev_reward, key)``
    maps a batch of observations (one per environment) to ``(carry, actions)``.
    """

    init_carry: Callable[[Params, int], Carry]
    act: Callable[[Params, Carry, jax.Array, jax.Array, jax.Array], tuple[Carry, jax.Array]]


def stateless_policy(act_fn: Callable[[Params, jax.Array, jax.Array], jax.Array]) -> Policy:
    """Wrap ``act_fn(params, obs, key) -> actions`` (MLP policies) as a :class:`Policy`."""
    return Policy(
        init_carry=lambda params, num_envs: (),
        act=lambda params, carry, obs, prev_reward, key: ((), act_fn(params, obs, key)),
    )


class Learner(NamedTuple):
    """What an algorithm gives the training loop.

    fields: per-transition numpy arrays moved to device once.
    init: key -> initial train state (a pytree).
    update: (state, batch, key) -> (state, metrics). Pure; jitted and scanned by :func:`fit`.
    sample: (fields, key) -> batch. Pure.
    policy: the acting policy; ``policy_params(state)`` extracts what it needs.
    """

    fields: Mapping[str, np.ndarray]
    init: Callable[[jax.Array], State]
    update: Callable[[State, Batch, jax.Array], tuple[State, Metrics]]
    sample: Callable[[Fields, jax.Array], Batch]
    policy: Policy
    policy_params: Callable[[State], Params]


def make_chunk_fn(learner: Learner, length: int) -> Callable[[State, Fields, jax.Array], tuple[State, Metrics]]:
    """A jitted function running ``length`` updates in one ``lax.scan``; returns the chunk's mean metrics."""

    def chunk(state: State, fields: Fields, key: jax.Array) -> tuple[State, Metrics]:
        def body(state, step_key):
            sample_key, update_key = jax.random.split(step_key)
            batch = learner.sample(fields, sample_key)
            return learner.update(state, batch, update_key)

        state, metrics = jax.lax.scan(body, state, jax.random.split(key, length))
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.jit(chunk, donate_argnums=0)


def chunk_key(seed: int, step: int) -> jax.Array:
    """The key for the chunk starting at ``step``; a pure function of (seed, step) so resume is exact."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def fit(
    learner: Learner,
    steps: int,
    seed: int,
    log_every: int,
    state: State | None = None,
    start_step: int = 0,
    on_chunk: Callable[[int, State, dict[str, float]], None] | None = None,
) -> State:
    """Train for ``steps`` updates from ``state`` (fresh if None) at ``start_step``.

    ``on_chunk(step, state, metrics)`` runs after every chunk (logging, evaluation, checkpoints).
    """
    if state is None:
        state = learner.init(jax.random.PRNGKey(seed))
    # Buffers are donated to the jitted chunk; states may alias (target = online at init), so copy once.
    state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)
    fields = to_device(learner.fields)
    chunk_fns: dict[int, Callable] = {}
    step = start_step
    while step < steps:
        length = min(log_every, steps - step)
        if length not in chunk_fns:
            chunk_fns[length] = make_chunk_fn(learner, length)
        state, metrics = chunk_fns[length](state, fields, chunk_key(seed, step))
        step += length
        scalars = {k: float(v) for k, v in metrics.items()}
        bad = [k for k, v in scalars.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"training diverged at step {step}: {', '.join(bad)} became NaN/inf. Lower the learning rate, "
                f"check the dataset for outliers, or try another seed."
            )
        if on_chunk is not None:
            on_chunk(step, state, scalars)
    return state
