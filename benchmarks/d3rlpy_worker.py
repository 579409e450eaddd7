"""Times d3rlpy's updates for ``benchmarks/speed.py``, or trains one and serves its actions for
``benchmarks/d3rlpy_quality.py``; runs inside ``.bench-venv/d3rlpy`` (d3rlpy 2.8.1, CPU torch).

    .bench-venv/d3rlpy/bin/python benchmarks/d3rlpy_worker.py --algo iql --dataset X.hdf5 --batch-size 256
    .bench-venv/d3rlpy/bin/python benchmarks/d3rlpy_worker.py --train --algo iql --dataset X.hdf5 --batch-size 256 \
        --steps 70000 --seed 0 --threads 1

Loads a D4RL-format file into a d3rlpy ``MDPDataset`` (not timed), builds the algorithm with the same network and
batch sizes as ipdrl's, warms up, then times d3rlpy's own training step — ``sample_transition_batch`` (or
``sample_trajectory_batch`` for the Decision Transformer) followed by ``update``, as its ``fit`` loop does — for
``--seconds``. Prints one JSON line with ``updates_per_s`` (sampling included) and ``update_only_per_s``.

``--train`` (IQL, TD3+BC, DT) instead runs ``--steps`` of those training steps after ``d3rlpy.seed(--seed)``, with
the scalers fitted by d3rlpy's own code as ``fit`` fits them, and d3rlpy's D4RL locomotion reproduction settings
(``reproductions/offline/{iql,td3_plus_bc,decision_transformer}.py``) on top of the sizes it is given:

- IQL: Adam 3e-4 for actor and critics, the actor's learning rate cosine-annealed over the run (``T_max`` =
  ``--steps``, as the reproduction anneals over its own ``n_steps``), expectile 0.7, ``weight_temp`` 3, max weight
  100, ``ReturnBasedRewardScaler(multiplier=1000)`` (rewards times 1000 / (max - min episode return)), raw states.
- TD3+BC: Adam 3e-4, target smoothing sigma 0.2 clipped at 0.5, alpha 2.5, actor every 2 updates, states
  standardised (``StandardObservationScaler``).
- DT: AdamW 1e-4 with weight decay 1e-4, gradient-norm clip 0.25 and a linear warm-up over ``--warmup-steps``;
  embeddings ``VectorEncoderFactory([--embed-dim], exclude_last_activation=True)``, simple (learned) position
  encoding, ``max_timestep`` 1000, rewards and returns times ``1 / --return-scale``, states standardised; dropout
  and activation are d3rlpy's defaults (0.1, ReLU).

Training progress (mean losses, updates/s, ETA) goes to stderr every ``--log-every`` updates; stdout carries only
the protocol (anything a library prints is moved to stderr): one JSON line ``{"ready": true, ...}`` with the
training time, losses and the full d3rlpy config, then one JSON reply per JSON request on stdin.
``{"step": t, "observations": [[...], ...], "rewards": [...]}`` (a batch of lockstep episodes; ``rewards`` are each
episode's previous raw reward, 0 at ``t`` = 0) is answered by ``{"actions": [[...], ...]}``. The Decision
Transformer acts through one ``as_stateful_wrapper(target_return=--target-return)`` per episode, fed those rewards
and reset when ``t`` is 0; the others through ``predict`` on the batch. End of input ends the worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any, Callable, TextIO

import d3rlpy
import h5py
import numpy as np
import torch


def load_dataset(path: str) -> d3rlpy.dataset.MDPDataset:
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][:] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    terminals = arrays["terminals"].reshape(-1).astype(bool)
    timeouts = arrays["timeouts"].reshape(-1).astype(bool)
    timeouts[-1] |= not terminals[-1]  # close a last episode that the file cut short
    return d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].reshape(-1, 1).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
    )


def make_algo(args: argparse.Namespace, dataset: d3rlpy.dataset.MDPDataset, **changes: Any):
    """d3rlpy's algorithm configured like ipdrl's defaults (sizes, batch, learning rates, state normalisation);
    ``changes`` replace fields of its config (``--train``'s reproduction settings)."""
    mlp = d3rlpy.models.VectorEncoderFactory(hidden_units=list(args.hidden_dims))
    observations = np.concatenate([episode.observations for episode in dataset.episodes])
    scaler = d3rlpy.preprocessing.StandardObservationScaler(mean=observations.mean(0), std=observations.std(0) + 1e-3)
    if args.algo == "iql":
        config = d3rlpy.algos.IQLConfig(batch_size=args.batch_size, actor_encoder_factory=mlp,
                                        critic_encoder_factory=mlp, value_encoder_factory=mlp)
    elif args.algo == "td3bc":
        config = d3rlpy.algos.TD3PlusBCConfig(batch_size=args.batch_size, actor_encoder_factory=mlp,
                                              critic_encoder_factory=mlp, observation_scaler=scaler)
    elif args.algo == "rebrac":
        critic = d3rlpy.models.VectorEncoderFactory(hidden_units=list(args.hidden_dims), use_layer_norm=True)
        config = d3rlpy.algos.ReBRACConfig(batch_size=args.batch_size, actor_encoder_factory=mlp,
                                           critic_encoder_factory=critic, actor_learning_rate=1e-3,
                                           critic_learning_rate=1e-3)
    elif args.algo == "bc":
        config = d3rlpy.algos.BCConfig(batch_size=args.batch_size, encoder_factory=mlp, learning_rate=3e-4,
                                       policy_type="deterministic", observation_scaler=scaler)
    elif args.algo == "dt":
        embed = d3rlpy.models.VectorEncoderFactory(hidden_units=[args.embed_dim])
        config = d3rlpy.algos.DecisionTransformerConfig(
            batch_size=args.batch_size, context_size=args.context_length, num_layers=args.num_layers,
            num_heads=args.num_heads, encoder_factory=embed, observation_scaler=scaler)
    else:
        raise SystemExit(f"unknown --algo {args.algo!r}")
    return dataclasses.replace(config, **changes).create(device="cpu:0")


# ---- --train: d3rlpy's reproduction settings, its training step, then acting over stdin/stdout ----------------
def reproduction_settings(args: argparse.Namespace) -> dict[str, Any]:
    """d3rlpy's own D4RL locomotion settings (its ``reproductions/offline``) for ``args.algo``, with ipdrl's budget.

    Scalers are left unfitted so that :func:`fit_scalers` fits them from the data as ``fit`` does.
    """
    if args.algo == "iql":
        cosine = d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=max(args.steps, 1))
        return dict(actor_learning_rate=3e-4, critic_learning_rate=3e-4, expectile=0.7, weight_temp=3.0,
                    max_weight=100.0, actor_optim_factory=d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=cosine),
                    reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
                    observation_scaler=None)
    if args.algo == "td3bc":
        return dict(actor_learning_rate=3e-4, critic_learning_rate=3e-4, target_smoothing_sigma=0.2,
                    target_smoothing_clip=0.5, alpha=2.5, update_actor_interval=2,
                    observation_scaler=d3rlpy.preprocessing.StandardObservationScaler())
    if args.algo == "dt":
        warmup = d3rlpy.optimizers.WarmupSchedulerFactory(warmup_steps=max(args.warmup_steps, 1))
        return dict(learning_rate=1e-4,
                    optim_factory=d3rlpy.optimizers.AdamWFactory(weight_decay=1e-4, clip_grad_norm=0.25,
                                                                 lr_scheduler_factory=warmup),
                    encoder_factory=d3rlpy.models.VectorEncoderFactory([args.embed_dim], exclude_last_activation=True),
                    observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
                    reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(1.0 / args.return_scale),
                    position_encoding_type=d3rlpy.PositionEncodingType.SIMPLE, max_timestep=1000)
    raise SystemExit(f"--train supports iql, td3bc and dt, not {args.algo!r}")


def fit_scalers(algo, dataset: d3rlpy.dataset.MDPDataset, sequence: bool) -> None:
    """Fit the config's scalers with the helpers d3rlpy's own ``fit`` calls (we run its loop step by step)."""
    from d3rlpy.algos.utility import build_scalers_with_trajectory_slicer, build_scalers_with_transition_picker

    (build_scalers_with_trajectory_slicer if sequence else build_scalers_with_transition_picker)(algo, dataset)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(algo, sample: Callable[[], Any], args: argparse.Namespace) -> dict[str, Any]:
    """``args.steps`` of sample + update; logs mean losses, rate and ETA every ``args.log_every`` updates."""
    every = args.log_every or max(args.steps // 20, 1)
    window: dict[str, list[float]] = defaultdict(list)
    last: dict[str, float] = {}
    started = window_start = time.perf_counter()
    window_step = 0
    for step in range(1, args.steps + 1):
        for name, value in algo.update(sample()).items():
            window[name].append(float(value))
        if step % every == 0 or step == args.steps:
            now = time.perf_counter()
            last = {name: sum(values) / len(values) for name, values in window.items()}
            rate, recent = step / (now - started), (step - window_step) / (now - window_start)
            losses = "  ".join(f"{name} {value:.4g}" for name, value in last.items())
            log(f"[d3rlpy {args.algo}] step {step}/{args.steps}  {losses}  | {recent:.1f} upd/s  "
                f"elapsed {(now - started) / 60:.1f} min  ETA {(args.steps - step) / rate / 60:.1f} min")
            window, window_start, window_step = defaultdict(list), now, step
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "updates_per_s": args.steps / seconds if seconds > 0 else None,
            "final_losses": last}


class Actor:
    """Actions for a batch of lockstep episodes: ``predict`` on the batch, or one stateful DT wrapper per episode."""

    def __init__(self, algo, args: argparse.Namespace):
        self.algo, self.args = algo, args
        self.wrappers: list = []

    def act(self, step: int, observations: np.ndarray, rewards: np.ndarray) -> np.ndarray:
        if self.args.algo != "dt":
            return np.asarray(self.algo.predict(observations), dtype=np.float32)
        if step == 0:  # a new set of episodes: fresh wrappers, each asking for the target return
            self.wrappers = [self.algo.as_stateful_wrapper(target_return=self.args.target_return)
                             for _ in range(len(observations))]
        return np.stack([np.asarray(wrapper.predict(obs, float(reward)), dtype=np.float32)
                         for wrapper, obs, reward in zip(self.wrappers, observations, rewards)])


def serve(actor: Actor, protocol: TextIO) -> None:
    """Answer each JSON request on stdin with the actions, until stdin closes."""
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        observations = np.asarray(request["observations"], dtype=np.float32)
        rewards = np.asarray(request["rewards"], dtype=np.float32)
        actions = actor.act(int(request["step"]), observations, rewards)
        protocol.write(json.dumps({"actions": actions.tolist()}) + "\n")
        protocol.flush()


def train_and_serve(args: argparse.Namespace) -> None:
    """``--train``: seed, load, fit scalers, build, train, announce ``ready``, then serve actions."""
    # stdout is the protocol channel: keep a handle on it and send everything else that prints there to stderr.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    d3rlpy.seed(args.seed)
    dataset = load_dataset(args.dataset)
    algo = make_algo(args, dataset, **reproduction_settings(args))
    sequence = args.algo == "dt"
    fit_scalers(algo, dataset, sequence)
    algo.build_with_dataset(dataset)
    log(f"[d3rlpy {args.algo}] {dataset.transition_count} transitions, {len(dataset.episodes)} episodes; "
        f"{args.steps} updates of batch {args.batch_size}, seed {args.seed}, torch threads {torch.get_num_threads()}")
    log(f"[d3rlpy {args.algo}] config: {algo.config.serialize()}")
    if sequence:
        sample = lambda: dataset.sample_trajectory_batch(args.batch_size, length=args.context_length)
    else:
        sample = lambda: dataset.sample_transition_batch(args.batch_size)
    report = train(algo, sample, args)
    report.update(ready=True, d3rlpy=d3rlpy.__version__, torch=torch.__version__,
                  torch_threads=torch.get_num_threads(), hyperparameters=json.loads(algo.config.serialize()))
    protocol.write(json.dumps(report) + "\n")
    protocol.flush()
    serve(Actor(algo, args), protocol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True, choices=("iql", "td3bc", "rebrac", "bc", "dt"))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: all); when timing, 1 also pins to one core (--train leaves the "
                             "core to the parent, whose affinity it inherits)")
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--context-length", type=int, default=20)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--num-heads", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="train --steps updates, then serve actions (see above)")
    parser.add_argument("--steps", type=int, default=0, help="--train: updates")
    parser.add_argument("--seed", type=int, default=0, help="--train: d3rlpy.seed (init, batches)")
    parser.add_argument("--log-every", type=int, default=0, help="--train: updates per progress line (0: 5%% of them)")
    parser.add_argument("--warmup-steps", type=int, default=10_000, help="--train, DT: learning-rate warm-up")
    parser.add_argument("--return-scale", type=float, default=1000.0, help="--train, DT: rewards are divided by this")
    parser.add_argument("--target-return", type=float, default=3600.0, help="--train, DT: return asked for")
    args = parser.parse_args()

    if args.threads == 1 and not args.train:  # parallel training runs must not all land on the first core
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        train_and_serve(args)
        return
    d3rlpy.seed(0)
    dataset = load_dataset(args.dataset)
    algo = make_algo(args, dataset)
    algo.build_with_dataset(dataset)
    if args.algo == "dt":
        sample = lambda: dataset.sample_trajectory_batch(args.batch_size, length=args.context_length)
    else:
        sample = lambda: dataset.sample_transition_batch(args.batch_size)
    for _ in range(args.warmup):
        algo.update(sample())

    sampling = updating = 0.0
    count = 0
    deadline = time.perf_counter() + args.seconds
    while count < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        batch = sample()
        middle = time.perf_counter()
        algo.update(batch)
        end = time.perf_counter()
        sampling, updating, count = sampling + middle - start, updating + end - middle, count + 1
    print(json.dumps({
        "algo": args.algo, "updates_per_s": count / (sampling + updating), "update_only_per_s": count / updating,
        "updates": count, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "d3rlpy": d3rlpy.__version__,
    }))


if __name__ == "__main__":
    main()
