"""How concentrated IQL's AWR weights are on a dataset: what IPD's ``--action-weighting advantage`` imitates.

    IPDRL_DATASETS=datasets python benchmarks/awr_weights.py antmaze-umaze runs/sweeps/antmaze/iql/antmaze-umaze-s1

For a finished ``ipdrl train --algo iql`` run, the weight exp(temperature * (Q - V)) (clipped at its max weight) of
the data's own actions on a sample of transitions, and its effective sample size (sum w)^2 / sum w^2: over the
sample, and within random batches of as many actions as a stage-4 batch holds (batch x context length). A small
effective size means the weighted imitation loss follows a few actions per batch. Other temperatures show how the
spread depends on it.

``--augmented DATASET.hdf5`` (D_aug made with that IQL run: ``stages.augment.cache`` in an IPD run's
results.json) splits the weights of D_aug's every action into real and imagined: how much of stage 4's weighted
imitation the planner's actions take ("real" includes the real prefixes copied into the added episodes, which
stage 4 imitates too). ``--imagined-max-weight W`` adds the same split with the imagined actions' weights capped at
W, as ``ipdrl train --algo ipd --imagined-max-weight W`` caps them.
"""

from __future__ import annotations

import argparse
import dataclasses

import h5py
import jax
import numpy as np

from ipdrl.algos import ipd_stages, iql
from ipdrl.data.loading import load_dataset


def effective_share(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 as a share of len(w): 1 when every weight is equal."""
    return float(weights.sum() ** 2 / (weights ** 2).sum() / len(weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name or .hdf5 path (as `ipdrl train --dataset`)")
    parser.add_argument("iql_run", help="a finished `ipdrl train --algo iql` run directory on that dataset")
    parser.add_argument("--transitions", type=int, default=200_000, help="sample size")
    parser.add_argument("--batch-actions", type=int, default=640, help="actions in one stage-4 batch (64 x K 10)")
    parser.add_argument("--augmented", help="an IPD stage-3 cache's dataset.hdf5 made with this IQL run")
    parser.add_argument("--imagined-max-weight", type=float,
                        help="with --augmented: also split the weights with the imagined ones capped at this")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[1.0, 3.0],
                        help="other temperatures to compare with the run's own")
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    config, state, _ = ipd_stages.load_iql_run(args.iql_run, data)
    rows = np.random.default_rng(0).choice(len(data.observations), min(args.transitions, len(data.observations)),
                                           replace=False)
    advantage_of = jax.jit(lambda obs, act: iql.q_value(config, state, obs, act) - iql.value(config, state, obs))
    advantage = np.asarray(advantage_of(data.observations[rows], data.actions[rows]))
    print(f"{data.name}: {len(rows)} transitions; advantage Q - V quantiles 1/10/50/90/99%: "
          f"{np.round(np.quantile(advantage, [0.01, 0.1, 0.5, 0.9, 0.99]), 3).tolist()}")
    print("| temperature | weight median | share at the cap | effective share | effective actions per batch |")
    print("|---|---|---|---|---|")
    for temperature in [config.temperature, *args.temperatures]:
        weights = np.asarray(iql.advantage_weight(dataclasses.replace(config, temperature=temperature), advantage))
        batches = weights[:len(weights) // args.batch_actions * args.batch_actions].reshape(-1, args.batch_actions)
        per_batch = np.median([effective_share(batch) * args.batch_actions for batch in batches])
        own = " (the run's)" if temperature == config.temperature else ""
        print(f"| {temperature:g}{own} | {np.median(weights):.3f} | {(weights >= config.max_weight).mean():.1%} | "
              f"{effective_share(weights):.1%} | {per_batch:.0f} of {args.batch_actions} |")

    if args.augmented:
        with h5py.File(args.augmented, "r") as file:
            if "infos/imagined" not in file:
                raise SystemExit(f"{args.augmented} has no infos/imagined: pass a stage-3 cache's dataset.hdf5.")
            imagined = file["infos/imagined"][:].astype(bool)
            weights = np.asarray(iql.advantage_weight(config, advantage_of(file["observations"][:],
                                                                           file["actions"][:])))
        caps = [None] + ([args.imagined_max_weight] if args.imagined_max_weight is not None else [])
        for cap in caps:
            capped = weights if cap is None else np.where(imagined, np.minimum(weights, cap), weights)
            print(f"\nD_aug {args.augmented}, at the run's temperature {config.temperature:g}"
                  + ("" if cap is None else f", imagined actions' weight capped at {cap:g}") + ":")
            print("| actions | count | share of actions | weight median | weight mean | share at the cap "
                  "| share of all weight |")
            print("|---|---|---|---|---|---|---|")
            for name, kind in (("real", ~imagined), ("imagined", imagined)):
                print(f"| {name} | {kind.sum()} | {kind.mean():.1%} | {np.median(capped[kind]):.2f} | "
                      f"{capped[kind].mean():.2f} | {(weights[kind] >= config.max_weight).mean():.1%} | "
                      f"{capped[kind].sum() / capped.sum():.1%} |")


if __name__ == "__main__":
    main()
