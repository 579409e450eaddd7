"""Imagination throughput of IPD's augmentation (stage 3): imagined transitions/s and planner FLOP utilisation.

    python benchmarks/imagination.py [--dataset PATH] [--budget cpu] [--settings mode:N:H:I ...] [--calls 3]
                                     [--world-model PATH]

For each setting (``mpc:N:H:I``: MPPI with N sequences, horizon H, I iterations; ``greedy-q:N``) this compiles
:func:`ipdrl.augmentation.rollouts.imagined_rollouts` for one batch of ``branch_batch`` start states of the dataset
and ``rollout_length`` receding-horizon steps (the budget's AugmentConfig otherwise), and reports:

- ``steps/s``: imagined transitions simulated per second (branch_batch x L per call; median wall time of
  ``--calls`` calls after compilation) and ``cpu s``: process CPU seconds per call (all threads), which other
  processes sharing the CPU inflate far less than wall time;
- ``GFLOP/call``: XLA's cost analysis of the call. XLA counts a loop body once, so one receding-horizon step is
  costed with every ``lax.scan`` unrolled (``dwm_latency.unrolled_loops``) and multiplied by L;
- ``GFLOP/s`` and ``%peak``: the achieved rate against this machine's float32 matmul peak, measured in the same
  run by ``benchmarks/speed.py``'s 2048x2048 ``jnp.dot`` (all cores).

Then the fixed per-dataset costs of :func:`ipdrl.augmentation.augment` (kappa: U over every (s, a); delta: V over
every state) are timed on the whole dataset, and the simulated steps that fit in a 10-minute budget are compared
with the imagined transitions that ``ratio`` asks for. Networks have random weights unless ``--world-model`` is
given (throughput does not depend on the values): IQL at its Config sizes, the ensemble at the budget's sizes.
The CPU may be shared with other work: compare numbers taken together.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from dwm_latency import unrolled_loops  # noqa: E402  (benchmarks/ is the script's directory)
from machine import cpu_name, matmul_peak, usable_cores  # noqa: E402

from ipdrl import augmentation  # noqa: E402
from ipdrl.algos import iql  # noqa: E402
from ipdrl.algos.ipd_stages import value_functions  # noqa: E402
from ipdrl.augmentation import AugmentConfig  # noqa: E402
from ipdrl.augmentation.rollouts import imagined_rollouts  # noqa: E402
from ipdrl.augmentation.values import real_data, suboptimality  # noqa: E402
from ipdrl.data.d4rl import read_d4rl  # noqa: E402
from ipdrl.planning import PlannerConfig  # noqa: E402
from ipdrl.world_models import ensemble, ensemble_training  # noqa: E402
from ipdrl.world_models.ensemble import EnsembleConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "hopper-medium-replay.hdf5"
BUDGET_SECONDS = 600.0


def random_models(dataset, budget: str, world_model: str | None):
    """IQL value functions and an ensemble with random weights (or the saved ensemble)."""
    iql_settings = iql.Hyperparameters()
    values = value_functions(iql_settings, iql.make_learner(iql_settings, dataset).init(jax.random.PRNGKey(0)),
                             dataset.act_dim)
    if world_model:
        return values, ensemble.load_model(world_model)
    config = ensemble_training.resolve_termination(EnsembleConfig(**ensemble.BUDGETS[budget]), dataset)
    stats = ensemble.normalisation_stats(dataset)
    params = ensemble_training.ensemble_learner(config, dataset, stats).init(jax.random.PRNGKey(1))["params"]
    model = {"params": params, "stats": jax.tree_util.tree_map(jnp.asarray, stats),
             "elites": jnp.arange(config.elites, dtype=jnp.int32), "termination": {}, "config": config}
    if config.termination == "learned":
        learner = ensemble_training.termination_learner(config, dataset, model)
        model["termination"] = learner.init(jax.random.PRNGKey(2))["params"]
    return values, model


def parse_setting(setting: str, base: AugmentConfig) -> AugmentConfig:
    mode, *numbers = setting.split(":")
    names = ("num_samples", "horizon", "iterations")
    changes = dict(zip(names, map(int, numbers)))
    return dataclasses.replace(base, mode=mode, num_elites=min(base.num_elites, changes.get("num_samples", 10**9)),
                               **changes)


def measure(config: AugmentConfig, values, model, dataset, calls: int) -> dict:
    planner = PlannerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PlannerConfig)})
    static = dict(values=values, planner=planner, mode=config.mode, kind=config.uncertainty)
    start = jnp.asarray(dataset.observations[: config.branch_batch])
    with unrolled_loops():  # a fresh jit of the same function, so the unrolled trace stays out of the timed cache
        unrolled = jax.jit(imagined_rollouts.__wrapped__, static_argnames=tuple(static) + ("length",))
        analysis = unrolled.lower(model, start, jax.random.PRNGKey(0), length=1, **static).compile().cost_analysis()
    flops = float((analysis[0] if isinstance(analysis, list) else analysis)["flops"]) * config.rollout_length
    rollout = functools.partial(imagined_rollouts, length=config.rollout_length, **static)
    started = time.perf_counter()
    jax.block_until_ready(rollout(model, start, jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - started
    times, cpu_started = [], time.process_time()
    for i in range(calls):
        started = time.perf_counter()
        jax.block_until_ready(rollout(model, start, jax.random.PRNGKey(i + 1)))
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    steps = config.branch_batch * config.rollout_length
    return {"steps_per_s": steps / seconds, "seconds": seconds, "cpu_s": (time.process_time() - cpu_started) / calls,
            "gflop": flops / 1e9, "gflops": flops / seconds / 1e9, "compile_s": compile_s}


def fixed_costs(dataset, values, model, config: AugmentConfig) -> dict:
    """Seconds of augment()'s whole-dataset passes: kappa (U of every (s, a)) and delta (V of every state)."""
    started = time.perf_counter()
    ensemble.uncertainty_threshold(model, dataset.observations, dataset.actions, config.uncertainty,
                                   config.kappa_quantile)
    kappa_s = time.perf_counter() - started
    started = time.perf_counter()
    data = real_data(dataset, values)
    suboptimality(dataset, values, data, config.suboptimality_steps)
    return {"kappa_s": kappa_s, "delta_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--budget", default="cpu", choices=("tiny", "cpu", "paper"))
    parser.add_argument("--settings", nargs="+", default=None,
                        help="mode:N:H:I entries, e.g. the spec's mpc:256:5:3 (default: the budget's own and greedy-q:N)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per setting (median reported)")
    parser.add_argument("--world-model", default=None, help="a saved ensemble instead of random weights")
    args = parser.parse_args(argv)
    dataset = read_d4rl(args.dataset)
    base = AugmentConfig(**augmentation.BUDGETS[args.budget])
    settings = args.settings or [f"mpc:{base.num_samples}:{base.horizon}:{base.iterations}",
                                 f"greedy-q:{base.num_samples}"]
    values, model = random_models(dataset, args.budget, args.world_model)
    peak = matmul_peak(0)
    cores = usable_cores()
    print(f"{cpu_name()}; {dataset.name}: {dataset.size} transitions; float32 matmul peak {peak:.1f} GFLOP/s on {cores} "
          f"cores (jax {jax.__version__}); ensemble {model['config'].hidden_dims} x {len(model['elites'])} elites; "
          f"{base.branch_batch} branch points x L={base.rollout_length} per call, median of {args.calls} calls")
    print(f"{'mode:N:H:I':16} {'steps/s':>8} {'s/call':>7} {'cpu s':>6} {'GFLOP/call':>10} {'GFLOP/s':>8} "
          f"{'%peak':>6} {'compile s':>9}")
    results = {}
    for setting in settings:
        r = measure(parse_setting(setting, base), values, model, dataset, args.calls)
        results[setting] = r
        print(f"{setting:16} {r['steps_per_s']:>8.0f} {r['seconds']:>7.2f} {r['cpu_s']:>6.2f} {r['gflop']:>10.2f} "
              f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>5.0f}% {r['compile_s']:>9.1f}", flush=True)
    fixed = fixed_costs(dataset, values, model, base)
    throughput = results[settings[0]]["steps_per_s"]
    affordable = throughput * (BUDGET_SECONDS - fixed["kappa_s"] - fixed["delta_s"])
    target = base.ratio * dataset.size
    print(f"whole-dataset passes: kappa {fixed['kappa_s']:.1f} s, delta {fixed['delta_s']:.1f} s. In "
          f"{BUDGET_SECONDS:.0f} s the {settings[0]} setting simulates ~{affordable:,.0f} imagined steps; "
          f"ratio {base.ratio} asks for {target:,.0f} accepted ones, so it fits while at least "
          f"{100 * target / max(affordable, 1):.0f}% of simulated steps end up in accepted segments.")


if __name__ == "__main__":
    main()
