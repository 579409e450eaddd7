"""Throughput of ipdrl's hot loops against the machine's matmul peak, and the learners against d3rlpy on the same data.

    python benchmarks/speed.py [--rows iql td3bc rebrac bc dt dt-cpu world-model planner dwm-mpc] [--seconds 10]
                               [--skip-d3rlpy] [--dataset PATH] [--threads 0|1] [--json PATH]

Rows: the learners at their published network and batch sizes (each Config's defaults; ``dt`` is CORL's size),
``dt-cpu`` the Decision Transformer at the ``cpu`` budget's size (IPD's stage 4 and the DT baseline there),
``world-model`` the ensemble's training step (IPD stage 2, the ``cpu`` budget's ensemble), ``planner`` IPD's MPPI
augmentation (stage 3: imagined steps, ``benchmarks/imagination.py``'s measurement at the ``cpu`` budget's
setting) and ``dwm-mpc`` DWM-MPC's adapt-then-act call (MeanFlow, H 5, M 64 and the paper's v2 M 4096, E 1:
``benchmarks/dwm_latency.py``'s measurement). ``--json PATH`` writes every row with the CPU's name and peaks.

For every learner row:

- ``upd/s``: updates per second of the jitted, scan-fused chunk that training runs (``ipdrl.training``), batch
  sampling on device included; compilation excluded; the median over chunks of about ``--seconds / 5`` each.
- ``MFLOP/upd``: XLA's cost analysis of one compiled update (sampling + update; XLA counts a scan body once, so
  the chunk is not used). A ``lax.cond`` counts as its costlier branch, so for learners whose actor runs every
  ``policy_freq`` steps (TD3+BC, ReBRAC) both branches are costed and averaged accordingly.
- ``GFLOP/s`` and ``%peak``: achieved rate (XLA counts elementwise work too, so an update whose matmuls run at
  the peak shows slightly over 100%) against this machine's float32 matmul peak, measured in the same run
  (chained, jitted 2048x2048 ``jnp.dot`` in subprocesses, before and after our timings, the better kept: pinned
  to one core with XLA's intra-op threading off, and with every core).

Then d3rlpy 2.8.1 (PyTorch) runs the same algorithms (IQL, TD3+BC, ReBRAC, BC, DecisionTransformer) on the same
dataset and batch sizes in its own virtualenv, ``.bench-venv/d3rlpy`` in the repository (created on first use:
``pip install torch==2.13.0`` — the CPU build — then ``pip install d3rlpy==2.8.1``, which pins gymnasium 1.0.0,
hence the separate environment). ``benchmarks/d3rlpy_worker.py`` times d3rlpy's own ``sample_*_batch`` +
``update`` after a warm-up (dataset construction excluded); the table shows its rate with and without the
batch sampling, and ours / d3rlpy with sampling on both sides.

``--threads 1`` pins ours and d3rlpy to one core each (XLA intra-op threading off, one torch thread) and
compares against the one-core peak; the default uses every core, as training does. The default dataset is
hopper-medium-replay from the shared datasets folder. Run it on an otherwise idle machine: every number here is
wall-clock time, and PyTorch's thread pool in particular collapses when its cores are shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from machine import cpu_name, matmul_peak, usable_cores, use_one_core

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".bench-venv" / "d3rlpy"
WORKER = Path(__file__).resolve().parent / "d3rlpy_worker.py"
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "hopper-medium-replay.hdf5"
ALGOS = ("iql", "td3bc", "rebrac", "bc", "dt", "dt-cpu")
OTHER_ROWS = ("world-model", "planner", "dwm-mpc")
# DWM-MPC settings (model:H:M:E) and the share of --calls each is timed with (M 4096 takes ~60x as long per call).
DWM_SETTINGS = {"meanflow:5:64:1": 1, "meanflow:5:4096:1": 10}
D3RLPY_PINS = ("torch==2.13.0", "d3rlpy==2.8.1")
# Config fields passed on to the d3rlpy worker so that it builds networks of the same sizes.
WORKER_SETTINGS = ("hidden_dims", "context_length", "embed_dim", "num_layers", "num_heads")


# ---- ours ------------------------------------------------------------------------------------------------------
def algorithm_config(algo: str, dataset_path: str):
    """The algorithm's module (for its ``make_learner``) and its default Config on ``dataset_path`` (``dt-cpu``:
    the Decision Transformer with the ``cpu`` budget's network)."""
    import importlib

    from ipdrl.algos import BUILTIN, get_algorithm
    from ipdrl.presets import make_config

    name = algo.removesuffix("-cpu")
    algorithm = get_algorithm(name)  # imports and registers the module
    if algo.endswith("-cpu"):
        return importlib.import_module(BUILTIN[name]), make_config(algorithm, dataset_path, "cpu", progress=False)
    return importlib.import_module(BUILTIN[name]), algorithm.Config(dataset=dataset_path, progress=False)


@contextlib.contextmanager
def cond_takes(branch: int | None):
    """Trace ``jax.lax.cond`` as only its true (1) or false (0) branch, to cost each separately."""
    import jax

    original = jax.lax.cond
    if branch is not None:
        jax.lax.cond = lambda pred, true_fn, false_fn, *ops: (true_fn if branch else false_fn)(*ops)
    try:
        yield
    finally:
        jax.lax.cond = original


def flops_per_update(learner, state, fields, key, actor_every: int) -> float:
    """Expected XLA-counted FLOPs of one sample + update, with conditional actor steps weighted 1/actor_every."""
    import jax

    def step(state, fields, key):
        sample_key, update_key = jax.random.split(key)
        return learner.update(state, learner.sample(fields, sample_key), update_key)

    def cost(branch):
        with cond_takes(branch):
            analysis = jax.jit(step).lower(state, fields, key).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return float(analysis["flops"])

    if actor_every <= 1:
        return cost(None)
    with_actor, without_actor = cost(1), cost(0)
    return without_actor + (with_actor - without_actor) / actor_every


def time_chunks(learner, seconds: float, seed: int = 0) -> tuple[float, int, float]:
    """(updates/s, chunk length, compile seconds): median over chunks after compilation."""
    import jax

    from ipdrl.data.dataset import to_device
    from ipdrl.training import chunk_key, make_chunk_fn

    fields = to_device(learner.fields)
    state = jax.tree_util.tree_map(lambda x: jax.numpy.array(x, copy=True), learner.init(jax.random.PRNGKey(seed)))

    def run(chunk: Callable, state, step: int):
        start = time.perf_counter()
        state, metrics = chunk(state, fields, chunk_key(seed, step))
        jax.block_until_ready(metrics)
        return state, time.perf_counter() - start

    probe_length = 4
    start = time.perf_counter()
    probe = make_chunk_fn(learner, probe_length)
    state, _ = run(probe, state, 0)
    compile_seconds = time.perf_counter() - start
    state, probe_time = run(probe, state, probe_length)
    per_update = probe_time / probe_length
    length = int(min(2000, max(probe_length, round(seconds / 5 / per_update))))
    chunk = make_chunk_fn(learner, length)
    state, _ = run(chunk, state, 0)  # compile
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        state, elapsed = run(chunk, state, length * (len(times) + 1))
        times.append(elapsed)
    return length / statistics.median(times), length, compile_seconds


def measure_ours(algo: str, dataset, dataset_path: str, seconds: float) -> dict[str, Any]:
    import jax

    from ipdrl.data.dataset import to_device

    module, config = algorithm_config(algo, dataset_path)
    learner = module.make_learner(config, dataset)
    updates_per_s, length, compile_seconds = time_chunks(learner, seconds)
    state = learner.init(jax.random.PRNGKey(0))
    flops = flops_per_update(learner, state, to_device(learner.fields), jax.random.PRNGKey(1),
                             getattr(config, "policy_freq", 1))
    return {"algo": algo, "batch_size": config.batch_size, "updates_per_s": updates_per_s, "chunk": length,
            "compile_s": compile_seconds, "flops_per_update": flops, "gflops": updates_per_s * flops / 1e9,
            "config": {k: getattr(config, k) for k in WORKER_SETTINGS if hasattr(config, k)}}


def measure_world_model(dataset, seconds: float) -> dict[str, Any]:
    """The ensemble world model's training step (all members, one vmapped update) at the ``cpu`` budget's sizes."""
    import jax

    from ipdrl.data.dataset import to_device
    from ipdrl.world_models import ensemble
    from ipdrl.world_models.ensemble_training import ensemble_learner

    config = ensemble.EnsembleConfig(**ensemble.BUDGETS["cpu"])
    learner = ensemble_learner(config, dataset, ensemble.normalisation_stats(dataset))
    updates_per_s, length, compile_seconds = time_chunks(learner, seconds)
    flops = flops_per_update(learner, learner.init(jax.random.PRNGKey(0)), to_device(learner.fields),
                             jax.random.PRNGKey(1), 1)
    return {"row": "world-model", "unit": "upd/s", "rate": updates_per_s, "flops_per_unit": flops,
            "gflops": updates_per_s * flops / 1e9, "compile_s": compile_seconds,
            "setting": f"{config.members} members x {config.hidden_dims}, batch {config.batch_size} each"}


def measure_planner(dataset, calls: int) -> dict[str, Any]:
    """IPD's MPPI augmentation at the ``cpu`` budget's setting: imagined steps per second."""
    import imagination  # benchmarks/ is the script's directory

    from ipdrl import augmentation
    from ipdrl.augmentation import AugmentConfig

    base = AugmentConfig(**augmentation.BUDGETS["cpu"])
    setting = f"mpc:{base.num_samples}:{base.horizon}:{base.iterations}"
    values, model = imagination.random_models(dataset, "cpu", None)
    r = imagination.measure(imagination.parse_setting(setting, base), values, model, dataset, calls)
    steps = base.branch_batch * base.rollout_length
    return {"row": "planner", "unit": "steps/s", "rate": r["steps_per_s"], "flops_per_unit": r["gflop"] * 1e9 / steps,
            "gflops": r["gflops"], "compile_s": r["compile_s"],
            "setting": f"{setting} (N:H:iterations), {base.branch_batch} start states x {base.rollout_length} steps"}


def measure_dwm(calls: int) -> list[dict[str, Any]]:
    """DWM-MPC's adapt-then-act call for one environment: milliseconds per action."""
    import dwm_latency  # benchmarks/ is the script's directory

    dataset = dwm_latency.random_dataset()
    rows = []
    for setting, share in DWM_SETTINGS.items():
        r = dwm_latency.measure(setting, 1, max(3, calls // share), dataset)
        rows.append({"row": f"dwm-mpc {setting}", "unit": "ms/action", "rate": r["ms"],
                     "flops_per_unit": r["mflop"] * 1e6, "gflops": r["gflops"], "compile_s": r["compile_s"],
                     "setting": f"{setting} (model:H:M:E)"})
    return rows


# ---- d3rlpy ----------------------------------------------------------------------------------------------------
def ensure_d3rlpy_venv() -> Path:
    """The d3rlpy virtualenv's python, creating the venv (torch first, then d3rlpy, with pip) if needed.

    A lock file serialises creation between processes started together (evidence.py's parallel d3rlpy runs).
    """
    import fcntl

    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".d3rlpy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == " ".join(D3RLPY_PINS):
            return python
        print(f"creating {VENV} with {', '.join(D3RLPY_PINS)} (once) ...", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        steps = [[base, "-m", "venv", str(VENV)]]
        # torch first so that pip takes the local CPU build, not a CUDA one
        steps += [[str(python), "-m", "pip", "install", "-q", requirement] for requirement in D3RLPY_PINS]
        for command in steps:
            code = subprocess.run(command).returncode
            if code != 0:
                raise SystemExit(f"creating the d3rlpy virtualenv failed: `{' '.join(command)}` exited with code "
                                 f"{code} (its output is above). Fix the cause (network, disk, pip index), then rerun; "
                                 f"it starts over until {marker} exists.")
        marker.write_text(" ".join(D3RLPY_PINS))
    return python


def measure_d3rlpy(python: Path, algo: str, dataset_path: str, seconds: float, ours: dict,
                   threads: int) -> dict[str, Any]:
    args = [str(python), str(WORKER), "--algo", algo, "--dataset", dataset_path, "--seconds", str(seconds),
            "--batch-size", str(ours["batch_size"]), "--threads", str(threads)]
    for key, value in ours["config"].items():
        args += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else (value,))]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        return {"algo": algo, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", "--algos", nargs="+", default=list(ALGOS + OTHER_ROWS), choices=ALGOS + OTHER_ROWS)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--calls", type=int, default=30, help="timed calls of the planner (/10) and of DWM-MPC")
    parser.add_argument("--skip-d3rlpy", action="store_true", help="only ipdrl (no d3rlpy virtualenv)")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="D4RL-format .hdf5 file")
    parser.add_argument("--threads", type=int, default=0, choices=(0, 1),
                        help="0: all cores (as training runs); 1: ours and d3rlpy pinned to one core each")
    parser.add_argument("--json", default=None, help="also write every row, the CPU and its peaks to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    algos = [a for a in args.rows if a in ALGOS]
    if not Path(args.dataset).exists():
        sys.exit(f"dataset {args.dataset} not found: pass --dataset PATH to a D4RL-format .hdf5 file.")

    peak_1, peak_all = matmul_peak(1), matmul_peak(0)
    if args.threads == 1:
        use_one_core()
    import jax

    from ipdrl.data.loading import load_dataset

    cores = 1 if args.threads == 1 else usable_cores()
    print(f"{cpu_name()}; float32 matmul peak: {peak_1:.1f} GFLOP/s on 1 core, {peak_all:.1f} GFLOP/s on "
          f"{usable_cores()} (jax {jax.__version__}, {jax.devices()[0].device_kind}); timing on {cores} core(s)", flush=True)
    dataset = load_dataset(args.dataset)
    ours = {}
    for algo in algos:
        ours[algo] = measure_ours(algo, dataset, args.dataset, args.seconds)
        r = ours[algo]
        print(f"  ours {algo}: {r['updates_per_s']:.1f} upd/s (chunk {r['chunk']}, compile {r['compile_s']:.1f}s), "
              f"{r['flops_per_update'] / 1e6:.0f} MFLOP/upd, {r['gflops']:.1f} GFLOP/s", flush=True)
    others: list[dict[str, Any]] = []
    if "world-model" in args.rows:
        others.append(measure_world_model(dataset, args.seconds))
    if "planner" in args.rows:
        others.append(measure_planner(dataset, max(2, args.calls // 10)))
    if "dwm-mpc" in args.rows:
        others += measure_dwm(args.calls)
    for r in others:
        print(f"  ours {r['row']}: {r['rate']:.2f} {r['unit']}, {r['gflops']:.1f} GFLOP/s", flush=True)

    # Again after the timings, keeping the better value: a peak measured while the machine was busy is too low.
    peak_1, peak_all = max(peak_1, matmul_peak(1)), max(peak_all, matmul_peak(0))
    peak = peak_1 if args.threads == 1 else peak_all

    theirs: dict[str, dict] = {}
    if not args.skip_d3rlpy and algos:
        python = ensure_d3rlpy_venv()
        for algo in algos:
            theirs[algo] = measure_d3rlpy(python, algo.removesuffix("-cpu"), args.dataset, args.seconds, ours[algo],
                                          cores)
            print(f"  d3rlpy {algo}: {json.dumps(theirs[algo])}", flush=True)

    print()
    print(f"{cpu_name()}: dataset {Path(args.dataset).name}, {args.seconds:g}s per measurement, {cores} core(s); "
          f"%peak against {peak:.1f} GFLOP/s")
    header = f"{'algo':8} {'batch':>5} {'upd/s':>9} {'MFLOP/upd':>10} {'GFLOP/s':>8} {'%peak':>6}"
    if theirs:
        header += f" {'d3rlpy upd/s':>13} {'(update only)':>14} {'ours/d3rlpy':>12}"
    print(header)
    for algo, r in ours.items():
        line = (f"{algo:8} {r['batch_size']:>5} {r['updates_per_s']:>9.1f} {r['flops_per_update'] / 1e6:>10.1f} "
                f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>5.0f}%")
        if algo in theirs:
            t = theirs[algo]
            if "updates_per_s" in t:
                line += (f" {t['updates_per_s']:>13.1f} {t['update_only_per_s']:>14.1f} "
                         f"{r['updates_per_s'] / t['updates_per_s']:>11.1f}x")
            else:
                line += f"  d3rlpy failed: {t['error']}"
        print(line)
    if others:
        print()
        print(f"{'row':28} {'rate':>10} {'unit':9} {'MFLOP/unit':>10} {'GFLOP/s':>8} {'%peak':>6}  setting")
        for r in others:
            print(f"{r['row']:28} {r['rate']:>10.2f} {r['unit']:9} {r['flops_per_unit'] / 1e6:>10.1f} "
                  f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>5.0f}%  {r['setting']}")
    if args.json:
        learners = [{"row": algo, "unit": "upd/s", "rate": r["updates_per_s"], "flops_per_unit": r["flops_per_update"],
                     "gflops": r["gflops"], "compile_s": r["compile_s"], "batch_size": r["batch_size"],
                     "setting": r["config"], "d3rlpy": theirs.get(algo)} for algo, r in ours.items()]
        rows = [dict(r, percent_of_peak=100 * r["gflops"] / peak) for r in learners + others]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_name(), "jax": jax.__version__, "threads": cores, "dataset": Path(args.dataset).name,
            "peak_gflops_one_core": peak_1, "peak_gflops_all_cores": peak_all, "peak_used": peak,
            "seconds_per_measurement": args.seconds, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
