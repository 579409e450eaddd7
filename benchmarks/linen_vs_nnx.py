"""Flax Linen vs Flax NNX: the same jitted critic+value update (IQL-sized: batch 256, 2x256 MLPs), fused with scan.

    python benchmarks/linen_vs_nnx.py [--steps 2000]

Prints updates/s for each API. ipdrl uses Linen because its pure ``apply`` makes an update a pure function of
(state, batch, key); this script is the measurement behind that choice.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

OBS, ACT, BATCH, HIDDEN = 11, 3, 256, 256


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.relu(nn.Dense(HIDDEN)(x))
        return nn.Dense(1)(x)[..., 0]


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(OBS + ACT, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.l2(nnx.relu(self.l1(x)))))[..., 0]


def batches(key, n):
    x = jax.random.normal(key, (n, BATCH, OBS + ACT))
    return x, jnp.sum(x, -1)


def time_scan(run, *args, steps: int) -> float:
    jax.block_until_ready(run(*args))  # compile
    start = time.perf_counter()
    jax.block_until_ready(run(*args))
    return steps / (time.perf_counter() - start)


def linen(steps: int) -> float:
    model, opt = LinenMLP(), optax.adam(3e-4)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS + ACT)))
    state = (params, opt.init(params))
    data = batches(jax.random.PRNGKey(1), steps)

    @jax.jit
    def run(state, data):
        def step(state, batch):
            params, opt_state = state
            x, y = batch
            loss, grads = jax.value_and_grad(lambda p: ((model.apply(p, x) - y) ** 2).mean())(params)
            updates, opt_state = opt.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, state, data)

    return time_scan(run, state, data, steps=steps)


def nnx_api(steps: int) -> float:
    model = NNXMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)
    data = batches(jax.random.PRNGKey(1), steps)

    @nnx.jit
    def run(model, optimizer, data):
        def step(carry, batch):
            model, optimizer = carry
            x, y = batch
            loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
            optimizer.update(model, grads)
            return (model, optimizer), loss

        return nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))((model, optimizer), data)

    return time_scan(run, model, optimizer, data, steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    rows = [("flax.linen + jax.jit + lax.scan", linen(args.steps)), ("flax.nnx + nnx.jit + nnx.scan", nnx_api(args.steps))]
    print(f"{'API':36s} {'updates/s':>10s}")
    for name, rate in rows:
        print(f"{name:36s} {rate:10.0f}")
    print(f"ratio linen/nnx: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
