"""How much IPD's return tokens tell a goal-reaching episode from one that fails, on sparse-reward (AntMaze) data.

    IPDRL_DATASETS=datasets python benchmarks/return_tokens.py antmaze-umaze runs/sweeps/antmaze/iql/antmaze-umaze-s1

Stage 4 trains on returns-to-go in V's units (IQL's scaled rewards) divided by ``--return-scale``, and acts on
V(s_t) (the method) or on a fixed target decremented by the rewards (``--rtg-mode classic``). For the run's discount
(the method's tokens) and for 1 (DT-style tokens), at a few steps t of every episode this prints the tokens of the
episodes that reach the goal (some reward > 0) and of those that never do, and the token the policy acts on: V(s_t)
for the method, and at t = 0 the classic rule's default target (the largest token at an episode start) for DT-style
tokens. A token that the data never shows at that step asks the transformer to extrapolate.
"""

from __future__ import annotations

import argparse

import numpy as np

from ipdrl.algos import ipd_stages
from ipdrl.augmentation import values as value_tools
from ipdrl.data.loading import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name or .hdf5 path (as `ipdrl train --dataset`)")
    parser.add_argument("iql_run", help="a finished `ipdrl train --algo iql` run directory on that dataset")
    parser.add_argument("--steps", type=int, nargs="*", default=[0, 100, 200, 300], help="episode steps t to show")
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    config, state, _ = ipd_stages.load_iql_run(args.iql_run, data)
    values = ipd_stages.value_functions(config, state, data.act_dim)
    starts, ends = data.episode_starts, data.episode_ends
    reaches = np.array([data.rewards[s:e].max() > 0 for s, e in zip(starts, ends)])
    print(f"{data.name}: {len(starts)} episodes, {reaches.mean():.1%} reach the goal; IQL's discount {values.gamma}")
    print("| tokens | scale | t | reaching: mean [min, max] | failing: mean [min, max] | acting token (mean) | "
          "data tokens below it |")
    print("|---|---|---|---|---|---|---|")
    kinds = (("V's discount (the method)", values.gamma, 100.0, True), ("undiscounted (DT-style)", 1.0, 1000.0, False))
    for name, gamma, scale, acts_on_value in kinds:
        labels = value_tools.return_labels(data, values._replace(gamma=gamma)) / scale
        for t in args.steps:
            live = ends - starts > t
            index = starts[live] + t
            token, hit = labels[index], reaches[live]
            if acts_on_value:
                acting = np.asarray(value_tools.map_batches(values.v, data.observations[index])) / scale
            elif t == 0:
                acting = np.array([labels[starts].max()])
            else:
                acting = None  # the classic target after t steps depends on the rewards met on the way
            below = "-" if acting is None else f"{np.mean(token[:, None] < acting[None, :]):.1%}"  # all pairs
            acting_mean = "-" if acting is None else f"{acting.mean():.3f}"
            shown = [f"{token[group].mean():.3f} [{token[group].min():.3f}, {token[group].max():.3f}]"
                     if group.any() else "-" for group in (hit, ~hit)]
            print(f"| {name} | {scale:g} | {t} | {shown[0]} | {shown[1]} | {acting_mean} | {below} |")


if __name__ == "__main__":
    main()
