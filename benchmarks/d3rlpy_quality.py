"""d3rlpy's IQL, TD3+BC or Decision Transformer trained with ipdrl's budget and scored by ipdrl's own evaluator.

    python benchmarks/d3rlpy_quality.py --algo iql|td3bc|dt --dataset hopper-medium-replay [--seed 0] [--budget cpu]
                                        [--run-dir runs/evidence/d3rlpy-iql/hopper-medium-replay-s0]
                                        [--steps N] [--batch-size B] [--threads 1] [--pin-core K] [--overwrite]

The budget is ipdrl's: ``ipdrl.presets.make_config(ipdrl.algos.<algo>, dataset, --budget)`` gives the number of
updates, the batch size and the network sizes (IQL and TD3+BC: ``hidden_dims``; DT: context length, embedding
width, layers, heads, learning-rate warm-up, return scale and target return — 3600 on hopper, 12000 on halfcheetah),
which are printed and passed to ``benchmarks/d3rlpy_worker.py --train`` in d3rlpy's own virtualenv
(``.bench-venv/d3rlpy``, created on first use by ``speed.py``'s ``ensure_d3rlpy_venv``: CPU torch 2.13.0, then
d3rlpy 2.8.1, which pins gymnasium 1.0.0). The worker seeds with ``d3rlpy.seed(--seed)``, runs d3rlpy's training
step (``sample_transition_batch`` / ``sample_trajectory_batch`` + ``update``, as ``fit`` does) with one torch
thread by default, and uses d3rlpy's D4RL locomotion reproduction hyperparameters for everything ipdrl's budget does
not set (IQL's return-based reward scaler and cosine actor schedule, TD3+BC's paper settings, DT's AdamW, clip and
warm-up: the worker's docstring lists them). ``--steps``/``--batch-size`` override the budget (for quick checks).

Evaluation is ipdrl's and nothing else: :func:`ipdrl.evaluation.evaluate` runs the episodes here, in our
environment (Gymnasium 1.4, ``Hopper-v5``/``HalfCheetah-v5`` from ``ipdrl.envs``, evaluation seeds 10000..10009,
the D4RL reference min/max), with a policy whose every step asks the worker for the batch's actions over a pipe
(one JSON line each way; float32 values survive JSON exactly). The Decision Transformer acts through d3rlpy's
``as_stateful_wrapper(target_return=...)``, one per episode, fed each step's raw reward and new for every episode.
So the d3rlpy policy sees exactly the episodes an ipdrl policy sees.

The run directory gets ``log.txt`` (settings, the worker's training progress: mean losses, updates/s, ETA; the
score) and, atomically, ``results.json`` in the shape of an ``ipdrl train`` run's (evaluation fields, ``steps``,
``batch_size``, ``train_seconds`` — d3rlpy's training loop only, ``total_seconds`` — the whole command —, d3rlpy and
torch versions, the ipdrl settings used and d3rlpy's full config under ``hyperparameters``). A run whose
``results.json`` exists is skipped unless ``--overwrite``; an interrupted one starts again (d3rlpy keeps no
checkpoint here). ``--pin-core K`` pins this process and the worker (affinity is inherited) to core K.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence import REPO, use_shared_datasets  # noqa: E402
from speed import WORKER, WORKER_SETTINGS, ensure_d3rlpy_venv  # noqa: E402

ALGOS = {"iql": "IQL", "td3bc": "TD3+BC", "dt": "DT"}
# ipdrl Config fields the worker needs beyond speed.py's network sizes (DT's schedule and return conditioning).
SETTINGS = (*WORKER_SETTINGS, "warmup_steps", "return_scale", "target_return")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # d3rlpy's structlog colours its console lines even into a pipe


def default_run_dir(algo: str, dataset: str, seed: int) -> Path:
    """Where evidence.py's baselines table looks for this run (under the repository, wherever this is run from)."""
    return REPO / "runs" / "evidence" / f"d3rlpy-{algo}" / f"{dataset}-s{seed}"


def dataset_file(spec: str) -> Path:
    """The .hdf5 file of a dataset path or name, looked up as ``ipdrl train`` does (``$IPDRL_DATASETS``, ./datasets)."""
    from ipdrl.data.loading import search_dirs

    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    tried = [path] if spec.endswith((".hdf5", ".h5")) else [folder / f"{spec}.hdf5" for folder in search_dirs()]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise SystemExit(f"dataset {spec!r} not found: tried {', '.join(map(str, tried))}. Pass an existing D4RL-format "
                     f".hdf5 path, or put <name>.hdf5 in a folder named by $IPDRL_DATASETS.")


def budget_config(algo: str, dataset: str, budget: str, steps: int | None, batch_size: int | None):
    """ipdrl's Config for (algo, dataset, budget), with the --steps/--batch-size overrides."""
    import importlib

    from ipdrl.presets import make_config

    module = importlib.import_module(f"ipdrl.algos.{algo}")
    changes = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    return make_config(module, dataset, budget, **changes)


def worker_settings(config) -> dict[str, Any]:
    """The ipdrl settings handed to the worker: network sizes and DT's schedule/conditioning (those it has)."""
    return {k: getattr(config, k) for k in SETTINGS if hasattr(config, k)}


def worker_command(python: Path, algo: str, path: Path, config, settings: dict[str, Any], seed: int,
                   threads: int, log_every: int) -> list[str]:
    command = [str(python), str(WORKER), "--train", "--algo", algo, "--dataset", str(path), "--steps",
               str(config.steps), "--batch-size", str(config.batch_size), "--seed", str(seed), "--threads",
               str(threads), "--log-every", str(log_every)]
    for key, value in settings.items():
        command += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else (value,))]
    return command


class Worker:
    """The d3rlpy worker process: its stderr copied line by line to the log (and our stdout), its stdout a pipe."""

    def __init__(self, command: list[str], log: TextIO):
        self.log = log
        self.tail: collections.deque[str] = collections.deque(maxlen=25)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1, cwd=REPO)
        self.pump = threading.Thread(target=self._copy_stderr, daemon=True)
        self.pump.start()

    def _copy_stderr(self) -> None:
        for line in self.process.stderr:
            line = ANSI.sub("", line)
            self.tail.append(line.rstrip("\n"))
            self.log.write(line)
            self.log.flush()
            print(line, end="", flush=True)

    def failure(self, when: str) -> SystemExit:
        """A clear error naming the worker's exit status and the end of its stderr."""
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self.pump.join(timeout=5)
        tail = "\n".join(f"    {line}" for line in self.tail) or "    (nothing)"
        status = f"exited with code {code}" if code is not None else "stopped answering"
        return SystemExit(f"the d3rlpy worker {status} {when}; the end of its stderr:\n{tail}\n"
                          f"(full output in {self.log.name})")

    def receive(self, when: str) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise self.failure(when)
        return json.loads(line)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise self.failure("while acting") from None
        return self.receive("while acting")

    def close(self) -> None:
        """End of input ends the worker; a worker that does not stop is killed (it is our own child)."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.pump.join(timeout=5)


def worker_policy(worker: Worker, act_dim: int):
    """An ipdrl Policy whose actions come from the worker: the carry counts steps so the worker knows when episodes
    start (the DT wrappers are made anew at step 0), and rewards are the evaluator's previous raw rewards."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import io_callback

    from ipdrl.evaluation import Policy

    def ask(step, observations, rewards) -> np.ndarray:
        reply = worker.request({"step": int(step), "observations": np.asarray(observations).tolist(),
                                "rewards": np.asarray(rewards).tolist()})
        return np.asarray(reply["actions"], dtype=np.float32)

    def act(params, carry, obs, prev_reward, key):
        shape = jax.ShapeDtypeStruct((obs.shape[0], act_dim), jnp.float32)
        return carry + 1, io_callback(ask, shape, carry, obs, prev_reward)

    return Policy(init_carry=lambda params, num_envs: jnp.zeros((), jnp.int32), act=act)


def evaluate_worker(worker: Worker, env_id: str, reference: envs.Reference | None, act_dim: int, episodes: int,
                    eval_seed: int) -> dict[str, Any]:
    """ipdrl's evaluator on the worker's policy; a worker that dies meanwhile is reported as such."""
    from ipdrl.evaluation import evaluate

    try:
        return evaluate(worker_policy(worker, act_dim), {}, env_id, episodes, eval_seed, reference)
    except Exception:
        if worker.process.poll() is not None:  # JAX wraps the callback's error; say what actually happened
            raise worker.failure("while acting") from None
        raise


def write_header(log: TextIO, args: argparse.Namespace, config, settings: dict[str, Any], path: Path,
                 env_id: str) -> None:
    lines = [f"[d3rlpy_quality] {time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(sys.argv)}",
             f"[d3rlpy_quality] d3rlpy {ALGOS[args.algo]} on {path} (evaluated in {env_id}), seed {args.seed}",
             f"[d3rlpy_quality] ipdrl's `{args.budget}` budget: {config.steps} updates"
             + (" (--steps)" if args.steps is not None else "") + f", batch {config.batch_size}"
             + (" (--batch-size)" if args.batch_size is not None else "") + ", "
             + ", ".join(f"{k} {v}" for k, v in settings.items()),
             f"[d3rlpy_quality] evaluation: {config.eval_episodes} episodes from seed {config.eval_seed}"]
    for line in lines:
        print(line, flush=True)
        log.write(line + "\n")
    log.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True, choices=tuple(ALGOS))
    parser.add_argument("--dataset", required=True, help="a D4RL-format .hdf5 path, or a name found as ipdrl finds it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="cpu", help="ipdrl's budget preset giving updates, batch and sizes")
    parser.add_argument("--run-dir", help="default: runs/evidence/d3rlpy-<algo>/<dataset>-s<seed>")
    parser.add_argument("--steps", type=int, help="override the budget's number of updates (quick checks)")
    parser.add_argument("--batch-size", type=int, help="override the budget's batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the worker (0: all)")
    parser.add_argument("--pin-core", type=int, help="pin this process and the worker to this core")
    parser.add_argument("--log-every", type=int, default=0, help="updates per progress line (0: every 5%%)")
    parser.add_argument("--overwrite", action="store_true", help="train again even if results.json exists")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.pin_core is not None:
        os.sched_setaffinity(0, {args.pin_core})
    use_shared_datasets()

    from ipdrl import envs
    from ipdrl.data.loading import load_dataset
    from ipdrl.presets import dataset_key
    from ipdrl.storage import atomic_write_json

    path = dataset_file(args.dataset)
    name = dataset_key(args.dataset)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.algo, name, args.seed)
    if (run_dir / "results.json").exists() and not args.overwrite:
        print(f"{run_dir / 'results.json'} exists; skipped (--overwrite trains again).")
        return
    config = budget_config(args.algo, args.dataset, args.budget, args.steps, args.batch_size)
    settings = worker_settings(config)
    dataset = load_dataset(str(path))
    env_id = envs.env_id_for(name, dataset.metadata)
    env = envs.make_env(env_id)
    envs.check_dims(env, dataset.obs_dim, dataset.act_dim, f"dataset {name!r}")
    env.close()
    act_dim, reference = dataset.act_dim, dataset.reference()
    del dataset  # only its name, metadata, dims and reference were needed here; the worker reads the file itself
    python = ensure_d3rlpy_venv()

    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run_dir / "log.txt", "a") as log:
        write_header(log, args, config, settings, path, env_id)
        command = worker_command(python, args.algo, path, config, settings, args.seed, args.threads, args.log_every)
        worker = Worker(command, log)
        try:
            trained = worker.receive("while training")
            result = evaluate_worker(worker, env_id, reference, act_dim, config.eval_episodes, config.eval_seed)
        finally:
            worker.close()
        result.update(
            checkpoint="final", algo=f"d3rlpy-{args.algo}", library="d3rlpy", d3rlpy=trained["d3rlpy"],
            torch=trained["torch"], torch_threads=trained["torch_threads"], dataset=name, dataset_file=str(path),
            seed=args.seed, budget=args.budget, steps=config.steps, batch_size=config.batch_size,
            train_seconds=trained["train_seconds"], updates_per_s=trained["updates_per_s"],
            final_losses=trained["final_losses"], total_seconds=time.perf_counter() - started,
            ipdrl_settings=settings, hyperparameters=trained["hyperparameters"], run_dir=str(run_dir))
        atomic_write_json(run_dir / "results.json", result)
        summary = (f"[d3rlpy_quality] normalised score {result.get('normalized_mean', float('nan')):.1f} ± "
                   f"{result.get('normalized_std', float('nan')):.1f} (return {result['return_mean']:.1f} ± "
                   f"{result['return_std']:.1f}) over {result['episodes']} episodes; trained in "
                   f"{result['train_seconds'] / 60:.1f} min ({result['updates_per_s']:.1f} updates/s); "
                   f"{run_dir / 'results.json'}")
        print(summary, flush=True)
        log.write(summary + "\n")


if __name__ == "__main__":
    main()
