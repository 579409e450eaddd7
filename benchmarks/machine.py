"""The machine a benchmark runs on: its CPU's name, the cores it may use, and its float32 matmul peak.

    python benchmarks/machine.py [--threads 0|1]      prints the peak (GFLOP/s) on every usable core, or one

Every benchmark reports throughput against the peak measured here, in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from ipdrl.host import cpu_name  # noqa: F401  (re-exported: every benchmark names its CPU this way)

ORIGINAL_ENV = dict(os.environ)
ALL_CORES = os.sched_getaffinity(0)


def use_one_core() -> None:
    """Pin this process to one core with XLA's intra-op threading off; call before jax is imported."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()


def peak_worker() -> None:
    """Print the best float32 GFLOP/s of chained, jitted 2048x2048 matmuls (run in a fresh process)."""
    import jax
    import jax.numpy as jnp

    n, reps = 2048, 4
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n))

    @jax.jit
    def chain(a, b):
        for _ in range(reps):
            a = jnp.dot(a, b) * (1.0 / n)
        return a

    jax.block_until_ready(chain(a, b))
    times = []
    for _ in range(8):
        start = time.perf_counter()
        jax.block_until_ready(chain(a, b))
        times.append(time.perf_counter() - start)
    print(2 * n**3 * reps / min(times) / 1e9)


def usable_cores() -> int:
    """Cores this process may run on (``taskset`` may allow fewer than the machine has)."""
    return len(ALL_CORES)


def matmul_peak(threads: int) -> float:
    """Float32 matmul GFLOP/s with ``threads`` (1: one pinned core; 0: every core in ``usable_cores()``)."""
    command = [sys.executable, __file__, "--threads", str(threads)]
    # A fresh process with this one's original settings (not its own pinning), on every core unless told.
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=dict(ORIGINAL_ENV, JAX_PLATFORMS="cpu"),
                         preexec_fn=lambda: os.sched_setaffinity(0, ALL_CORES))
    return float(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, choices=(0, 1), help="1: one pinned core; 0: every core")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if parser.parse_args().threads == 1:
        use_one_core()
    peak_worker()
