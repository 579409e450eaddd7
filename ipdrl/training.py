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
        if on_chunk is not None and on_chunk(step, state, scalars):
            break
    return state


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
    template = learner.init(jax.random.PRNGKey(run_config.seed))
    state, start = template, 0
    if run.has_checkpoint(ckpt):
        state, start = run.load_checkpoint(template, ckpt)
        run.truncate_metrics(start, stage)
        log.info("resuming %s from step %d", ckpt, start)
    steps = fit_config.steps
    bar = tqdm(total=steps, initial=start, desc=stage.rstrip("_") or "train", unit="upd",
               disable=not run_config.progress, dynamic_ncols=True)

    def on_chunk(step: int, state: Any, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        row = {f"{stage}{k}" if stage else k: v for k, v in metrics.items()}
        due = lambda every: every > 0 and (step % every == 0)
        if env_id and due(fit_config.eval_every) and step < steps:
            result = evaluate(learner.policy, learner.policy_params(state), env_id, run_config.eval_episodes,
                              run_config.eval_seed, reference)
            row["eval/return"] = result["return_mean"]
            if "normalized_mean" in result:
                row["eval/normalized_score"] = result["normalized_mean"]
                bar.set_postfix(score=f"{result['normalized_mean']:.1f}")
        run.log_metrics(step, row)
        if due(fit_config.checkpoint_every) or due(fit_config.eval_every) or step == steps:
            run.save_checkpoint(state, step, ckpt)

    state = fit(learner, steps, run_config.seed, fit_config.log_every, state, start, on_chunk)
    bar.close()
    if start < steps:
        run.save_checkpoint(state, steps, ckpt)
    return state


def evaluate_final(learner: Learner, state: Any, run_config: RunConfig, env_id: str,
                   reference: Reference | None) -> dict:
    """The final checkpoint's evaluation on the run's evaluation seeds."""
    result = evaluate(learner.policy, learner.policy_params(state), env_id, run_config.eval_episodes,
                      run_config.eval_seed, reference)
    result["checkpoint"] = "final"
    return result
