"""Each member of a ``--transformers N`` run against the ensemble that acts with their mean action.

    python benchmarks/ensemble_members.py RUN_DIR [RUN_DIR ...] [--episodes 10] [--rows ROW ...]
        [--json OUT]

Re-evaluates each run's final stage-4 (IPD) or DT checkpoint on the run's evaluation seeds, and prints a table
(a column per run, and the mean over runs with its 95% bootstrap interval): does combining the members beat them,
or blur them? Rows:

- ``rules``: the members' mean action, and (IPD) the member action that the critic rates highest at every step;
- ``members``: each member alone;
- ``sizes`` (IPD): the critic's pick among the first K members, for K = 2 .. N-1 (how many transformers it needs);
- ``iql-samples`` (IPD): the control. Stage 1's IQL acting with the action its Q rates highest among N samples of
  its own Gaussian policy. If this scores as well, the gain is the critic's choice, not the transformers;
- ``with-samples`` (IPD): the critic's pick among member 0 (``--transformers 1``), or all N members, and N samples
  of IQL's policy (``--ensemble-action critic --policy-samples N``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np

from ipdrl.algos import dt, get_algorithm, ipd, iql
from ipdrl.algos.ipd_stages import load_iql_run
from ipdrl.data.loading import load_dataset
from ipdrl.evaluation import evaluate
from ipdrl.pipelines import prepare, saved_config
from ipdrl.runs import Run
from ipdrl.statistics import paired_difference, summary
from ipdrl.storage import atomic_write_json
from ipdrl.training import evaluate_final

MEMBER_KEYS = ("params", "opt", "ema_params")
ROWS = ("rules", "members", "sizes", "iql-samples", "with-samples")
CRITIC_RULE = "member the critic rates highest"
CONTROL = "control: stage 1's IQL, its Q's pick among N samples of its own policy"


def learner_for(algo: str, config, dataset, **changes):
    """The run's learner with ``changes`` to its settings (e.g. transformers=1, ensemble_action='critic')."""
    config = dataclasses.replace(config, **changes)
    if algo == "dt":
        return dt.make_learner(config, dataset)
    config = ipd.with_stage1_settings(config)
    iql_template = jax.jit(iql.make_learner(config.iql, dataset).init)(jax.random.PRNGKey(config.seed))
    return ipd.policy_learner(config, dataset, iql_template, np.zeros(dataset.size, np.float32), dataset.timesteps())


def members(state: dict, chosen) -> dict:
    """``state`` with only the ``chosen`` (an index or a slice) members' transformers."""
    return dict(state, **{k: jax.tree.map(lambda x: x[chosen], state[k]) for k in MEMBER_KEYS if k in state})


def evaluate_rows(run_dir: str, rows: list[str], episodes: int | None) -> tuple[list[tuple[str, dict]], str]:
    """[(row name, evaluation)] of one run's final checkpoint, and the run's dataset."""
    run = Run.open(run_dir)
    algo = run.config["algo"]
    config = saved_config(get_algorithm(algo), run)
    if episodes:
        config.eval_episodes = episodes
    n = config.transformers
    if n < 2:
        raise SystemExit(f"{run_dir} trained one transformer (--transformers {n}): nothing to split.")
    if algo == "dt" and set(rows) - {"rules", "members"}:
        raise SystemExit("--rows sizes, iql-samples and with-samples need a critic: they apply to IPD runs, not DT.")
    env_id, dataset = prepare(config, load_dataset(config.dataset))
    score = lambda learner, state: evaluate_final(learner, state, config, env_id, dataset.reference())
    checkpoint = "checkpoint" if algo == "dt" else "policy_checkpoint"
    state, _ = run.load_checkpoint(learner_for(algo, config, dataset).init(jax.random.PRNGKey(config.seed)), checkpoint)
    out = []
    if "rules" in rows:
        out.append(("mean action", score(learner_for(algo, config, dataset, ensemble_action="mean"), state)))
        if algo != "dt":
            out.append((CRITIC_RULE, score(learner_for(algo, config, dataset, ensemble_action="critic"), state)))
    if "members" in rows:
        single = learner_for(algo, config, dataset, transformers=1)
        out += [(f"member {member}", score(single, members(state, member))) for member in range(n)]
    if "sizes" in rows:
        out += [(f"the critic's pick among members 0-{count - 1}",
                 score(learner_for(algo, config, dataset, transformers=count, ensemble_action="critic"),
                       members(state, slice(count))))
                for count in range(2, n)]
    if {"iql-samples", "with-samples"} & set(rows):
        settings, iql_state, _ = load_iql_run(config.iql_run, dataset)
    if "iql-samples" in rows:
        policy = iql.sample_choice_policy(settings, dataset.act_dim, n)
        out.append((CONTROL, evaluate(policy, iql_state, env_id, config.eval_episodes, config.eval_seed,
                                      dataset.reference())))
    if "with-samples" in rows:
        with_actor = dict(state, critic=dict(state["critic"], actor=iql_state["actor"]))
        for count in (1, n):
            learner = learner_for(algo, config, dataset, transformers=count, ensemble_action="critic", policy_samples=n)
            label = "member 0" if count == 1 else f"members 0-{count - 1}"
            out.append((f"the critic's pick among {label} and N samples of IQL's policy",
                        score(learner, members(with_actor, 0 if count == 1 else slice(count)))))
    return out, config.dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more runs (e.g. one per seed)")
    parser.add_argument("--episodes", type=int, default=None, help="default: the run's --eval-episodes")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows (default: all)")
    parser.add_argument("--json", help="also write every episode's score here")
    args = parser.parse_args()
    table: dict[str, dict[str, dict]] = {}  # row -> run -> evaluation
    datasets = {}
    for run_dir in args.run_dirs:
        rows, datasets[run_dir] = evaluate_rows(run_dir, args.rows, args.episodes)
        for name, result in rows:
            table.setdefault(name, {})[run_dir] = result
    scores = {name: {run: result["normalized_mean"] for run, result in runs.items()} for name, runs in table.items()}
    print("| policy | " + " | ".join(Path(run).name for run in args.run_dirs) + " | mean [95% CI] |")
    print("|---|" + "---|" * (len(args.run_dirs) + 1))
    for name, by_run in scores.items():
        s = summary({"runs": list(by_run.values())})
        cells = " | ".join(f"{by_run[run]:.1f}" for run in args.run_dirs)
        print(f"| {name} | {cells} | {s['mean']:.1f} [{s['mean_ci'][0]:.1f}, {s['mean_ci'][1]:.1f}] |")
    if CRITIC_RULE in scores and CONTROL in scores:
        d = paired_difference({"runs": list(scores[CRITIC_RULE].values())}, {"runs": list(scores[CONTROL].values())})
        print(f"\ncritic's pick among the members minus the control: {d['mean']:+.1f} "
              f"[{d['mean_ci'][0]:+.1f}, {d['mean_ci'][1]:+.1f}] (n = {d['runs']})")
    if args.json:
        atomic_write_json(args.json, {"runs": [
            {"policy": name, "run": run, "dataset": datasets[run], "normalized_score": result["normalized_mean"],
             "episode_scores": result["normalized_scores"], "episode_lengths": result["lengths"]}
            for name, by_run in table.items() for run, result in by_run.items()]})


if __name__ == "__main__":
    main()
