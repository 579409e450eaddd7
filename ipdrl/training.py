"""The shared training loop: every algorithm is a :class:`Learner` (pure functions), trained by :func:`fit`.

Updates run fused in chunks of ``log_every`` steps with ``jax.lax.scan``; batches are sampled on device from
fields moved there once. Each chunk's random key is derived from (seed, step), so a run resumed from a
checkpoint produces exactly the numbers of an uninterrupted one. :func:`train_in_run` adds what a run directory
gives a learner: resume, progress, metrics, periodic evaluation and checkpoints.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ipdrl.config import FitConfig, RunConfig
from ipdrl.data.dataset import Fields, to_device
from ipdrl.envs import Reference
from ipdrl.evaluation import Policy, evaluate
from ipdrl.runs import Run

log = logging.getLogger("ipdrl")

State = Any
Params = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Learner(NamedTuple):
    """What an algorithm gives the training loop.

    fields: per-transition numpy arrays moved to device once.
    init: key -> initial train state (a pytree).
    update: (state, batch, key) -> (state, metrics). Pure; jitted and scanned by :func:`fit`.
    sample: (fields, key) -> batch. Pure.
    policy: the acting policy; ``policy_params(state)`` extracts what it needs (both None for models, which
    do not act).
    """

    fields: Mapping[str, np.ndarray]
    init: Callable[[jax.Array], State]
    update: Callable[[State, Batch, jax.Array], tuple[State, Metrics]]
    sample: Callable[[Fields, jax.Array], Batch]
    policy: Policy | None = None
    policy_params: Callable[[State], Params] | None = None


# ---- the loop ---------------------------------------------------------------------------------------------
def _chunk(learner: Learner, length: int) -> Callable[[State, Fields, jax.Array], tuple[State, Metrics]]:
    """``length`` updates in one ``lax.scan``, returning the chunk's mean metrics (not jitted)."""

    def chunk(state: State, fields: Fields, key: jax.Array) -> tuple[State, Metrics]:
        def body(state, step_key):
            sample_key, update_key = jax.random.split(step_key)
            batch = learner.sample(fields, sample_key)
            return learner.update(state, batch, update_key)

        state, metrics = jax.lax.scan(body, state, jax.random.split(key, length))
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return chunk


def make_chunk_fn(learner: Learner, length: int) -> Callable[[State, Fields, jax.Array], tuple[State, Metrics]]:
    """A jitted function running ``length`` updates in one ``lax.scan``; returns the chunk's mean metrics."""
    return jax.jit(_chunk(learner, length), donate_argnums=0)


SEED_BATCHING = ("map", "vmap")


def make_seeds_chunk_fn(learner: Learner, length: int, batching: str = "map"):
    """The chunk of :func:`make_chunk_fn` for a stack of states, one per seed, in one jitted call. ``map`` loops over
    the seeds inside the call (``lax.map``: each seed's numbers are bit-identical to its own run); ``vmap`` batches
    them into one step (wider matmuls, faster on accelerators; XLA orders their sums differently, so results move by
    float rounding)."""
    chunk = _chunk(learner, length)
    if batching == "vmap":
        return jax.jit(jax.vmap(chunk, in_axes=(0, None, 0)), donate_argnums=0)
    return jax.jit(lambda states, fields, keys: jax.lax.map(lambda sk: chunk(sk[0], fields, sk[1]), (states, keys)),
                   donate_argnums=0)


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
    on_chunk: Callable[[int, State, dict[str, float]], bool | None] | None = None,
) -> State:
    """Train for ``steps`` updates from ``state`` (fresh if None) at ``start_step``.

    ``on_chunk(step, state, metrics)`` runs after every chunk (logging, evaluation, checkpoints, early stopping);
    when it returns True, training stops there. The state it is given is donated to the next chunk: copy what
    you keep of it.
    """
    if state is None:
        state = learner.init(jax.random.PRNGKey(seed))
    # Buffers are donated to the jitted chunk; states may alias (target = online at init), so copy once.
    state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)
    return _chunks(state, to_device(learner.fields), steps, start_step, log_every,
                   lambda length: make_chunk_fn(learner, length), lambda step: chunk_key(seed, step),
                   lambda metrics, step: _finite({k: float(v) for k, v in metrics.items()}, step), on_chunk)


def fit_seeds(
    learner: Learner,
    steps: int,
    seeds: list[int],
    log_every: int,
    states: list[State],
    start_step: int = 0,
    on_chunk: Callable[[int, State, list[dict[str, float]]], bool | None] | None = None,
    batching: str = "map",
) -> State:
    """:func:`fit` for several seeds at once, from one state per seed (all at ``start_step``), as one jitted call per
    chunk (:func:`make_seeds_chunk_fn`). The states travel stacked on a leading seed axis: ``on_chunk`` gets the
    stack and one metrics dict per seed; the stack is returned."""
    stack = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    return _chunks(stack, to_device(learner.fields), steps, start_step, log_every,
                   lambda length: make_seeds_chunk_fn(learner, length, batching),
                   lambda step: jnp.stack([chunk_key(seed, step) for seed in seeds]),
                   lambda metrics, step: [_finite({k: float(v[i]) for k, v in metrics.items()}, step, seed)
                                          for i, seed in enumerate(seeds)], on_chunk)


def _chunks(state, fields, steps: int, start_step: int, log_every: int, make_fn, keys, read, on_chunk):
    """The loop of :func:`fit` and :func:`fit_seeds`: chunks of ``log_every`` updates up to ``steps``, each chunk
    function made once per length (``make_fn``), keyed by ``keys(step)``, its metrics read by ``read``."""
    chunk_fns: dict[int, Callable] = {}
    step = start_step
    while step < steps:
        length = min(log_every, steps - step)
        if length not in chunk_fns:
            chunk_fns[length] = make_fn(length)
        state, metrics = chunk_fns[length](state, fields, keys(step))
        step += length
        values = read(metrics, step)  # raises on NaN/inf, with or without on_chunk
        if on_chunk is not None and on_chunk(step, state, values):
            break
    return state


def seed_state(stack: State, index: int) -> State:
    """Seed ``index``'s state from a stack of :func:`fit_seeds`."""
    return jax.tree_util.tree_map(lambda x: x[index], stack)


def _finite(scalars: dict[str, float], step: int, seed: int | None = None) -> dict[str, float]:
    bad = [k for k, v in scalars.items() if not math.isfinite(v)]
    if bad:
        which = "" if seed is None else f" (seed {seed})"
        raise FloatingPointError(
            f"training diverged at step {step}{which}: {', '.join(bad)} became NaN/inf. Lower the learning rate, "
            f"check the dataset for outliers, or try another seed."
        )
    return scalars


# ---- training inside a run directory ------------------------------------------------------------------------
def train_in_run(learner: Learner, fit_config: FitConfig, run_config: RunConfig, run: Run, env_id: str | None,
                 reference: Reference | None, stage: str = "") -> Any:
    """Fit ``learner`` for ``fit_config.steps`` in ``run``: resume, progress bar, metrics, periodic evaluation
    (when ``env_id`` is given, normalised with ``reference``) and checkpoints. Seeds, evaluation episodes and progress
    come from ``run_config``.

    ``stage`` prefixes checkpoint names and progress labels (pipelines such as IPD train several learners in
    one run directory). Returns the final state.
    """
    ckpt = f"{stage}checkpoint" if stage else "checkpoint"
    state, start = _resume(learner, run_config, run, ckpt, stage)
    steps = fit_config.steps
    bar = tqdm(total=steps, initial=start, desc=stage.rstrip("_") or "train", unit="upd",
               disable=not run_config.progress, dynamic_ncols=True)
    record = _recorder(learner, fit_config, run_config, run, env_id, reference, stage, bar)

    def on_chunk(step: int, state: Any, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        record(step, state, metrics)

    state = fit(learner, steps, run_config.seed, fit_config.log_every, state, start, on_chunk)
    bar.close()
    if start < steps:
        run.save_checkpoint(state, steps, ckpt)
    return state


def train_seeds_in_runs(learner: Learner, fit_config: FitConfig, run_configs: list[RunConfig], runs: list[Run],
                        env_id: str | None, reference: Reference | None, batching: str = "map") -> list[Any]:
    """:func:`train_in_run` for one learner and several seeds (one run directory each), trained together by
    :func:`fit_seeds`. A seed whose checkpoint lags the others' (a kill between their saves) first catches up on
    its own. Returns the final state of each seed."""
    resumed = [_resume(learner, config, run, "checkpoint", "") for config, run in zip(run_configs, runs)]
    start = max(step for _, step in resumed)
    states = []
    for (state, step), config, run in zip(resumed, run_configs, runs):
        if step < start:
            log.info("seed %d: catching up from step %d to %d", config.seed, step, start)
            state = fit(learner, start, config.seed, fit_config.log_every, state, step,
                        _recorder(learner, fit_config, config, run, env_id, reference, "", None))
        states.append(state)
    steps, seeds = fit_config.steps, [config.seed for config in run_configs]
    bar = tqdm(total=steps, initial=start, desc=f"train {len(seeds)} seeds", unit="upd",
               disable=not run_configs[0].progress, dynamic_ncols=True)
    records = [_recorder(learner, fit_config, config, run, env_id, reference, "", None)
               for config, run in zip(run_configs, runs)]

    def on_chunk(step: int, stack: Any, metrics: list[dict[str, float]]) -> None:
        bar.update(step - bar.n)
        for index, (record, seed_metrics) in enumerate(zip(records, metrics)):
            record(step, seed_state(stack, index), seed_metrics)

    stack = fit_seeds(learner, steps, seeds, fit_config.log_every, states, start, on_chunk, batching)
    bar.close()
    finals = [seed_state(stack, index) for index in range(len(seeds))]
    if start < steps:
        for run, state in zip(runs, finals):
            run.save_checkpoint(state, steps, "checkpoint")
    return finals


def _resume(learner: Learner, run_config: RunConfig, run: Run, ckpt: str, stage: str) -> tuple[Any, int]:
    """The run's checkpointed state and step, or a fresh state at step 0."""
    template = learner.init(jax.random.PRNGKey(run_config.seed))
    if not run.has_checkpoint(ckpt):
        return template, 0
    state, start = run.load_checkpoint(template, ckpt)
    run.truncate_metrics(start, stage)
    log.info("resuming %s from step %d", ckpt, start)
    return state, start


def _recorder(learner: Learner, fit_config: FitConfig, run_config: RunConfig, run: Run, env_id: str | None,
              reference: Reference | None, stage: str, bar) -> Callable[[int, Any, dict[str, float]], None]:
    """What a run keeps after each chunk: metrics, periodic evaluations and checkpoints."""
    ckpt, steps = (f"{stage}checkpoint" if stage else "checkpoint"), fit_config.steps

    def record(step: int, state: Any, metrics: dict[str, float]) -> None:
        row = {f"{stage}{k}" if stage else k: v for k, v in metrics.items()}
        due = lambda every: every > 0 and (step % every == 0)
        if env_id and due(fit_config.eval_every) and step < steps:
            result = evaluate(learner.policy, learner.policy_params(state), env_id, run_config.eval_episodes,
                              run_config.eval_seed, reference)
            row["eval/return"] = result["return_mean"]
            if "normalized_mean" in result:
                row["eval/normalized_score"] = result["normalized_mean"]
                if bar is not None:
                    bar.set_postfix(score=f"{result['normalized_mean']:.1f}")
        run.log_metrics(step, row)
        if due(fit_config.checkpoint_every) or due(fit_config.eval_every) or step == steps:
            run.save_checkpoint(state, step, ckpt)

    return record


def evaluate_final(learner: Learner, state: Any, run_config: RunConfig, env_id: str,
                   reference: Reference | None) -> dict:
    """The final checkpoint's evaluation on the run's evaluation seeds."""
    result = evaluate(learner.policy, learner.policy_params(state), env_id, run_config.eval_episodes,
                      run_config.eval_seed, reference)
    result["checkpoint"] = "final"
    return result
