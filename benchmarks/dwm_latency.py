"""DWM-MPC action latency: milliseconds per adapt-then-act call and its FLOP utilisation, per model and (H, M, E).

    python benchmarks/dwm_latency.py [--envs 1] [--calls 50] [--settings meanflow:5:64:1 diffusion:5:10:5 ...]

For each setting this builds the paper-sized networks (ReBRAC actor and twin critics 3x256, transition model
3x256, reward model 2x256) for Hopper's dimensions (11-d state, 3-d action) with random weights (latency does
not depend on the values), compiles ``Policy.act`` of DWM-MPC (:func:`ipdrl.planning.policy_ascent.make_policy` on
:func:`ipdrl.algos.dwm_mpc.make_imagination`: noise draw, E gradient steps through the H-step rollout of M
particles, action) and reports:

- ``ms/action``: median wall time of one jitted call for ``--envs`` environments, after compilation; ``cpu ms``:
  process CPU time per call (all threads), which other processes sharing the CPU inflate far less than wall time;
- ``MFLOP``: XLA's cost analysis of that call. XLA counts a loop body once, so the call is costed with every
  ``lax.scan``/``lax.map`` unrolled (the same computation), with E = 1 and 2 and extrapolated linearly in E
  beyond (every inner step repeats the same work; unrolling E x K x H diffusion steps takes minutes to compile);
- ``GFLOP/s`` and ``%peak``: the achieved rate against this machine's float32 matmul peak, measured in the same
  run by ``benchmarks/speed.py``'s 2048x2048 ``jnp.dot`` on the cores the process may use (``taskset -c 0``: one).

The CPU may be shared with other work: the median of several calls damps that, but compare numbers taken together.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_name, matmul_peak, usable_cores  # noqa: E402  (benchmarks/ is the script's directory)

from ipdrl.algos import dwm_models, dwm_mpc  # noqa: E402
from ipdrl.data.dataset import Dataset  # noqa: E402
from ipdrl.planning.policy_ascent import make_policy  # noqa: E402
from ipdrl.world_models import common, generative, reward  # noqa: E402

OBS_DIM, ACT_DIM = 11, 3
DEFAULT_SETTINGS = ("meanflow:5:64:1", "meanflow:5:10:5", "meanflow:5:256:1", "meanflow:10:64:1",
                    "diffusion:5:64:1", "diffusion:5:10:5")


def random_dataset(size: int = 1024) -> Dataset:
    """Hopper-shaped random transitions: only the statistics the networks normalise with come from it."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(size, OBS_DIM)).astype(np.float32)
    timeouts = np.zeros(size, bool)
    timeouts[-1] = True
    return Dataset(obs, rng.uniform(-1, 1, (size, ACT_DIM)).astype(np.float32), rng.normal(size=size).astype(np.float32),
                   obs + 0.1 * rng.normal(size=obs.shape).astype(np.float32), np.zeros(size, bool), timeouts,
                   name="hopper-random-weights")


def build(config: dwm_mpc.Config, dataset: Dataset):
    """(policy, params) of DWM-MPC with randomly initialised ReBRAC and world models."""
    key = jax.random.PRNGKey(0)
    learner = dwm_models.rebrac_learner(config.rebrac, dataset)
    base = dwm_models.Base(config.rebrac, learner, learner.init(key), "random weights")
    transition_config, reward_config = dwm_models.model_configs(config)
    kind = dwm_models.TRANSITION_MODELS[config.model.kind]
    transition = common.model_of(generative.make_learner(kind, transition_config, dataset).init(key))
    reward_model = common.model_of(reward.make_learner(reward_config, dataset, 1.0, 0.0).init(key))
    models = dwm_models.WorldModels(transition_config, transition, reward_config, reward_model, {})
    policy = make_policy(dwm_mpc.make_imagination(config, base, models, dataset), config.planner)
    return policy, dwm_mpc.policy_params(base, models, 1e-4)


@contextlib.contextmanager
def unrolled_loops():
    """Trace ``lax.scan`` fully unrolled and ``lax.map`` as a Python loop, so XLA's cost analysis counts every step."""
    scan, map_ = jax.lax.scan, jax.lax.map
    jax.lax.scan = lambda f, init, xs=None, length=None, **kw: scan(f, init, xs, length=length, **{**kw, "unroll": True})

    def python_map(f, xs):
        count = jax.tree_util.tree_leaves(xs)[0].shape[0]
        outs = [f(jax.tree_util.tree_map(lambda x: x[i], xs)) for i in range(count)]
        return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *outs)

    jax.lax.map = python_map
    try:
        yield
    finally:
        jax.lax.scan, jax.lax.map = scan, map_


def unrolled_flops(config: dwm_mpc.Config, dataset: Dataset, envs: int, inner_steps: int) -> float:
    """XLA's FLOP count of one adapt-then-act call with ``inner_steps`` gradient steps, every loop unrolled."""
    policy, params = build(dataclasses.replace(config, planner=dataclasses.replace(config.planner,
                                                                                   inner_steps=inner_steps)), dataset)
    args = (params, policy.init_carry(params, envs), jnp.asarray(dataset.observations[:envs]), jnp.zeros(envs),
            jax.random.PRNGKey(1))
    with unrolled_loops():  # a fresh function, so the unrolled trace is not cached for the timed one
        analysis = jax.jit(lambda *a: policy.act(*a)).lower(*args).compile().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def measure(setting: str, envs: int, calls: int, dataset: Dataset) -> dict:
    model, horizon, particles, inner_steps = setting.split(":")
    config = dwm_mpc.Config(model=dict(kind=model), planner=dict(horizon=int(horizon), particles=int(particles),
                                                                 inner_steps=int(inner_steps)))
    policy, params = build(config, dataset)
    carry = policy.init_carry(params, envs)
    args = (params, carry, jnp.asarray(dataset.observations[:envs]), jnp.zeros(envs), jax.random.PRNGKey(1))
    inner = config.planner.inner_steps
    flops = unrolled_flops(config, dataset, envs, min(inner, 2))
    if inner > 2:  # every inner step is the same computation: extrapolate instead of unrolling E
        one = unrolled_flops(config, dataset, envs, 1)
        flops += (inner - 2) * (flops - one)
    act = jax.jit(policy.act)
    started = time.perf_counter()
    jax.block_until_ready(act(*args))
    compile_s = time.perf_counter() - started
    times, cpu_started = [], time.process_time()
    for i in range(calls):
        key = jax.random.PRNGKey(i)
        started = time.perf_counter()
        carry, actions = act(params, carry, args[2], args[3], key)
        jax.block_until_ready(actions)
        times.append(time.perf_counter() - started)
    cpu_ms = 1000 * (time.process_time() - cpu_started) / calls
    seconds = statistics.median(times)
    return {"setting": setting, "ms": 1000 * seconds, "p90_ms": 1000 * float(np.percentile(times, 90)), "cpu_ms": cpu_ms,
            "mflop": flops / 1e6, "gflops": flops / seconds / 1e9, "compile_s": compile_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                        help="model:H:M:E entries, model in {meanflow, diffusion}")
    parser.add_argument("--envs", type=int, default=1, help="environments acting together (one call)")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per setting (median reported)")
    args = parser.parse_args(argv)
    peak = matmul_peak(0)
    cores = usable_cores()
    print(f"{cpu_name()}; float32 matmul peak {peak:.1f} GFLOP/s on {cores} core(s) (jax {jax.__version__}); "
          f"{args.envs} env(s) per call, median of {args.calls} calls")
    print(f"{'model:H:M:E':20} {'ms/action':>9} {'p90 ms':>7} {'cpu ms':>7} {'MFLOP':>8} {'GFLOP/s':>8} {'%peak':>6} "
          f"{'compile s':>9}")
    dataset = random_dataset()
    for setting in args.settings:
        r = measure(setting, args.envs, args.calls, dataset)
        print(f"{r['setting']:20} {r['ms']:>9.2f} {r['p90_ms']:>7.2f} {r['cpu_ms']:>7.2f} {r['mflop']:>8.1f} {r['gflops']:>8.1f} "
              f"{100 * r['gflops'] / peak:>5.0f}% {r['compile_s']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
