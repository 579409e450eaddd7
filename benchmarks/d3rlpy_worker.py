"""Times d3rlpy's updates for ``benchmarks/speed.py``; runs inside ``.bench-venv/d3rlpy`` (d3rlpy 2.8.1, CPU torch).

    .bench-venv/d3rlpy/bin/python benchmarks/d3rlpy_worker.py --algo iql --dataset X.hdf5 --batch-size 256

Loads a D4RL-format file into a d3rlpy ``MDPDataset`` (not timed), builds the algorithm with the same network and
batch sizes as ipdrl's, warms up, then times d3rlpy's own training step — ``sample_transition_batch`` (or
``sample_trajectory_batch`` for the Decision Transformer) followed by ``update``, as its ``fit`` loop does — for
``--seconds``. Prints one JSON line with ``updates_per_s`` (sampling included) and ``update_only_per_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

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


def make_algo(args: argparse.Namespace, dataset: d3rlpy.dataset.MDPDataset):
    """d3rlpy's algorithm configured like ipdrl's defaults (sizes, batch, learning rates, state normalisation)."""
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
    return config.create(device="cpu:0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True, choices=("iql", "td3bc", "rebrac", "bc", "dt"))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 1 also pins to one core; 0: all")
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--context-length", type=int, default=20)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--num-heads", type=int, default=1)
    args = parser.parse_args()

    if args.threads == 1:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.threads:
        torch.set_num_threads(args.threads)
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
