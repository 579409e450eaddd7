"""Are IPD's accepted imagined segments better than the data in the real environment?

    python benchmarks/imagined_segments.py RUN [RUN ...] [--samples 2000] [--horizon 200] [--seed 0] [--out FILE.json]

RUN is a finished ``ipdrl train --algo ipd`` run directory (its ``results.json`` names the cached IQL and the
augmented dataset). Stage 3 accepts a segment when its *imagined* value, ``sum_k gamma^k r_hat_k + gamma^l V(s_hat_l)``,
beats the data's continuation from the same state over the same l steps. Here the segment's actions are replayed open
loop in the real environment from the branch state (restored from the dataset's ``infos/qpos``, ``infos/qvel``), and
the same value is computed from the real rewards and V at the real end state (0 after a real termination). Per run,
over ``--samples`` accepted segments (all when fewer), in V's units:

- ``imagined``, ``replayed``, ``data``: mean value of the segment as imagined, as replayed, and of the data's own
  continuation; ``replayed_beats_data``: share of segments whose replayed value beats the data's;
  ``replayed_terminates``: share that fall in the real environment within the segment;
- the same, split by where the segment's branch point sits in stage 3's queue (branch points are tried in order of
  decreasing sub-optimality delta; a larger imagined:real ratio reaches further down the queue): first, second
  ... quarter of the accepted segments;
- over a longer ``--horizon`` of real steps from the branch state (does what V rates better over a few steps stay
  better?): the real return, undiscounted, of three arms that all continue with stage 1's IQL policy (deterministic)
  once their first ``l`` actions are played — the segment's imagined actions, the data's own actions, or the IQL
  policy from the start — with the share of segments where the imagined arm beats the data arm and each arm's share
  of falls within the horizon;
- the real prefixes copied in front of the segments (``prefix_length`` steps each): their share of D_aug, how many
  distinct data transitions they are, and their return labels in the added episodes vs the same transitions'
  labels in the data.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ipdrl import augmentation, envs  # noqa: E402
from ipdrl.algos import iql  # noqa: E402
from ipdrl.algos.ipd_stages import value_functions  # noqa: E402
from ipdrl.augmentation.values import continuation_values, real_data  # noqa: E402
from ipdrl.config import config_from_json  # noqa: E402
from ipdrl.data.d4rl import read_d4rl  # noqa: E402
from ipdrl.data.dataset import map_batches  # noqa: E402
from ipdrl.data.loading import load_dataset  # noqa: E402
from ipdrl.runs import Run  # noqa: E402

QUARTERS = 4


def load_values(iql_cache: Path, dataset) -> augmentation.ValueFunctions:
    """V, Q and the policy of a cached stage-1 IQL (its settings are in the cache entry's info.json)."""
    settings = json.loads((iql_cache / "info.json").read_text())["settings"]
    config = config_from_json(settings, iql.Hyperparameters)
    learner = iql.make_learner(config, dataset)
    # The seed only shapes the template's values, which the checkpoint replaces.
    state, _ = Run(iql_cache).load_checkpoint(jax.jit(learner.init)(jax.random.PRNGKey(0)), "iql")
    return value_functions(config, state, dataset.act_dim)


def imagined_segments(augmented, original_size: int) -> list[np.ndarray]:
    """Row indices of the imagined part of every added episode, in the order stage 3 accepted them."""
    imagined = augmented.infos["imagined"].astype(bool)
    return [np.arange(s, e)[imagined[s:e]] for s, e in zip(augmented.episode_starts, augmented.episode_ends)
            if s >= original_size]


def play(env, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray, policy=None, steps: int = 0
         ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Real rewards of ``actions`` from the restored state, then of ``policy`` for ``steps`` more steps (until a real
    termination), the last observation, and whether it terminated."""
    env.reset(seed=0)
    env.unwrapped.set_state(qpos, qvel)
    rewards, obs, terminated = [], env.unwrapped._get_obs(), False
    for k in range(len(actions) + (steps if policy is not None else 0)):
        action = actions[k] if k < len(actions) else policy(obs)
        obs, reward, terminated, _, _ = env.step(action)
        rewards.append(reward)
        if terminated:
            break
    return np.asarray(rewards), np.asarray(obs, np.float32), bool(terminated)


def study(run_dir: Path, samples: int, horizon: int, seed: int) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    stages = results["stages"]
    if "augment" not in stages:
        raise SystemExit(f"{run_dir} has no augmentation stage (imagined:real ratio 0?)")
    dataset = load_dataset(results["dataset"])
    if "qpos" not in dataset.infos or "qvel" not in dataset.infos:
        raise SystemExit(f"{results['dataset']} has no infos/qpos and infos/qvel: real replays need them.")
    augmented = read_d4rl(stages["augment"]["cache"])
    values = load_values(Path(stages["iql"]["cache"]), dataset)
    data = real_data(dataset, values)
    row_of = {obs.tobytes(): i for i, obs in enumerate(dataset.observations)}

    segments = imagined_segments(augmented, dataset.size)
    if not segments:
        raise SystemExit(f"{run_dir}: stage 3 accepted no imagined segments, so there is nothing to replay.")
    order = np.arange(len(segments))
    if len(order) > samples:
        order = np.sort(np.random.default_rng(seed).choice(order, samples, replace=False))
    env = envs.make_env(envs.env_id_for(dataset.name, dataset.metadata))
    gamma = values.gamma
    iql_action = jax.jit(lambda obs: values.policy(obs[None])[0][0])
    policy = lambda obs: np.asarray(iql_action(np.asarray(obs, np.float32)))  # noqa: E731
    no_actions = np.zeros((0, dataset.act_dim), np.float32)
    rows, ends = [], []
    for number in order:
        rows_of_segment = segments[number]
        branch = row_of[augmented.observations[rows_of_segment[0]].tobytes()]
        actions = augmented.actions[rows_of_segment]
        length = len(rows_of_segment)
        state = dataset.infos["qpos"][branch], dataset.infos["qvel"][branch]
        real_rewards, end_obs, terminated = play(env, *state, actions)
        discounts = gamma ** np.arange(len(real_rewards))
        replayed = float((discounts * values.scale(real_rewards)).sum())
        imagined_terminal = bool(augmented.terminals[rows_of_segment[-1]])
        imagined = float((gamma ** np.arange(length) * values.scale(augmented.rewards[rows_of_segment])).sum())
        real = float(continuation_values(data, np.array([branch]), np.array([length]), gamma)[0])
        ends.append((end_obs, gamma ** len(real_rewards) * (not terminated),
                     augmented.next_observations[rows_of_segment[-1]], gamma ** length * (not imagined_terminal)))
        row = {"number": number, "imagined": imagined, "replayed": replayed, "data": real, "terminates": terminated}
        data_actions = dataset.actions[branch:min(branch + length, data.episode_end[branch])]
        for arm, first_actions in (("imagined_then_iql", actions), ("data_then_iql", data_actions), ("iql", no_actions)):
            arm_rewards, _, arm_fell = play(env, *state, first_actions, policy, horizon - len(first_actions))
            row[arm], row[f"{arm}_falls"] = arm_rewards.sum(), arm_fell
        rows.append(row)

    # Bootstrap both values with V at their end states in one call: sum gamma^k r_k + gamma^l V(s_l) (0 after a fall).
    real_ends, real_discounts, imagined_ends, imagined_discounts = (np.array(column) for column in zip(*ends))
    end_values = map_batches(values.v, np.concatenate([real_ends, imagined_ends])).astype(np.float64)
    for i, row in enumerate(rows):
        row["imagined"] += imagined_discounts[i] * end_values[len(rows) + i]
        row["replayed"] += real_discounts[i] * end_values[i]

    table = {name: np.array([row[name] for row in rows], dtype=float) for name in rows[0]}
    quarter = np.minimum((table["number"] * QUARTERS // len(segments)).astype(int), QUARTERS - 1)

    def summary(mask: np.ndarray) -> dict:
        mean = {name: float(column[mask].mean()) for name, column in table.items()}
        beats = lambda a, b: float((table[a][mask] > table[b][mask]).mean())  # noqa: E731
        arms = ("imagined_then_iql", "data_then_iql", "iql")
        return {"segments": int(mask.sum()), "imagined": mean["imagined"], "replayed": mean["replayed"],
                "data": mean["data"], "replayed_beats_data": beats("replayed", "data"),
                "replayed_terminates": mean["terminates"],
                "horizon": {**{arm: mean[arm] for arm in arms},
                            "imagined_beats_data": beats("imagined_then_iql", "data_then_iql"),
                            "falls": {arm: mean[f"{arm}_falls"] for arm in arms}}}

    # The real prefixes copied in front of the segments: how much of D_aug they are, and their relabelled returns.
    copied = augmentation.copied_prefixes(augmented)
    copied_rows = np.array([row_of[obs.tobytes()] for obs in augmented.observations[copied]], dtype=np.int64)
    labels = augmented.infos["return_to_go"]
    prefixes = {"share_of_d_aug": float(copied.mean()), "copies": int(copied.sum()),
                "distinct_transitions": int(len(np.unique(copied_rows))),
                "label_in_added_episodes": float(labels[copied].mean()) if copied.any() else None,
                "label_in_the_data": float(labels[copied_rows].mean()) if copied.any() else None,
                "data_label_mean": float(labels[:dataset.size].mean())}
    return {"run": str(run_dir), "score": results["normalized_mean"], "horizon": horizon,
            "ratio": stages["augment"]["report"]["ratio_achieved"], "accepted_segments": len(segments),
            "copied_prefixes": prefixes,
            "all": summary(np.ones(len(rows), bool)),
            "by_queue_quarter": [summary(quarter == q) for q in range(QUARTERS) if (quarter == q).any()]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished `ipdrl train --algo ipd` run directories")
    parser.add_argument("--samples", type=int, default=2000, help="accepted segments replayed per run, at most")
    parser.add_argument("--horizon", type=int, default=200,
                        help="real steps of the long-horizon comparison (segment or data actions, then IQL's policy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    studies = [study(Path(run), args.samples, args.horizon, args.seed) for run in args.runs]
    print(f"{'run':<58} {'ratio':>5} {'score':>5} {'part':>5} {'n':>5} {'imagined':>8} {'replayed':>8} {'data':>6} "
          f"{'beats':>5} {'falls':>5}")
    for result in studies:
        parts = [("all", result["all"])] + [(f"Q{q + 1}", s) for q, s in enumerate(result["by_queue_quarter"])]
        for name, s in parts:
            print(f"{result['run'][-58:]:<58} {result['ratio']:>5.2f} {result['score']:>5.1f} {name:>5} "
                  f"{s['segments']:>5} {s['imagined']:>8.1f} {s['replayed']:>8.1f} {s['data']:>6.1f} "
                  f"{s['replayed_beats_data']:>5.2f} {s['replayed_terminates']:>5.2f}")
    print(f"\n{'run':<58} {'ratio':>5} {'copied prefixes (share of D_aug, copies, distinct)':>52} "
          f"{'label there / in the data / data mean':>38}")
    for result in studies:
        p = result["copied_prefixes"]
        print(f"{result['run'][-58:]:<58} {result['ratio']:>5.2f} {p['share_of_d_aug']:>16.1%} {p['copies']:>17} "
              f"{p['distinct_transitions']:>17} {p['label_in_added_episodes']:>14.1f} {p['label_in_the_data']:>11.1f} "
              f"{p['data_label_mean']:>11.1f}")
    print(f"\n{'run':<58} {'ratio':>5} {'part':>5} {'real return over the horizon: imagined / data / IQL, then IQL':>62} "
          f"{'imagined beats data':>19} {'falls: imagined / data / IQL':>28}")
    for result in studies:
        parts = [("all", result["all"])] + [(f"Q{q + 1}", s) for q, s in enumerate(result["by_queue_quarter"])]
        for name, s in parts:
            h, falls = s["horizon"], s["horizon"]["falls"]
            print(f"{result['run'][-58:]:<58} {result['ratio']:>5.2f} {name:>5} {h['imagined_then_iql']:>38.0f} "
                  f"{h['data_then_iql']:>11.0f} {h['iql']:>11.0f} {h['imagined_beats_data']:>19.2f} "
                  f"{falls['imagined_then_iql']:>16.2f} {falls['data_then_iql']:>5.2f} {falls['iql']:>5.2f}")
    print(f"(horizon {args.horizon} real steps; {time.perf_counter() - started:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(studies, indent=2) + "\n")


if __name__ == "__main__":
    main()
