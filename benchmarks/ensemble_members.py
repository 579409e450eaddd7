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
import shlex
import sys
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
IQL_RUN_ROWS = ("iql-samples", "with-samples")  # need the run's --iql-run


class SavedRun:
    """One run's saved settings and data, and its learner under changed settings."""

    def __init__(self, run_dir: str, episodes: int | None):
        self.run = Run.open(run_dir)
        self.algo = self.run.config["algo"]
        config = saved_config(get_algorithm(self.algo), self.run)
        if episodes:
            config.eval_episodes = episodes
        if self.algo != "dt":  # every row but with-samples acts without IQL's samples
            config = dataclasses.replace(ipd.with_stage1_settings(config), policy_samples=0)
        self.config = config
        if config.transformers < 2:
            raise SystemExit(f"{run_dir} trained one transformer (--transformers {config.transformers}): nothing "
                             f"to split.")
        self.dataset = None

    def rows(self, asked: list[str] | None) -> list[str]:
        """The rows asked for (default: every row this run can give), or a clear error before any evaluation."""
        can = ["rules", "members"]
        if self.algo != "dt":
            can += ["sizes"] + (list(IQL_RUN_ROWS) if self.config.iql_run else [])
        if asked is None:
            return can
        if missing := [row for row in asked if row not in can]:
            why = "DT has no critic" if self.algo == "dt" else "it was trained without --iql-run"
            raise SystemExit(f"{self.run.path}: --rows {' '.join(missing)} cannot be made for this run ({why}); "
                             f"it can give {' '.join(can)}.")
        return asked

    def learner(self, **changes):
        """The run's learner with ``changes`` to its settings (e.g. transformers=1, ensemble_action='critic')."""
        config = dataclasses.replace(self.config, **changes)
        if self.algo == "dt":
            return dt.make_learner(config, self.dataset)
        return ipd.policy_learner(config, self.dataset, self.iql_template, np.zeros(self.dataset.size, np.float32),
                                  self.dataset.timesteps())

    def evaluate(self, rows: list[str]) -> list[tuple[str, dict]]:
        """[(row name, evaluation)] of the run's final checkpoint."""
        config, n = self.config, self.config.transformers
        env_id, self.dataset = prepare(config, load_dataset(config.dataset))
        if self.algo != "dt":
            init = jax.jit(iql.make_learner(config.iql, self.dataset).init)
            self.iql_template = init(jax.random.PRNGKey(config.seed))
        score = lambda learner, state: evaluate_final(learner, state, config, env_id, self.dataset.reference())
        checkpoint = "checkpoint" if self.algo == "dt" else "policy_checkpoint"
        state, _ = self.run.load_checkpoint(self.learner().init(jax.random.PRNGKey(config.seed)), checkpoint)
        out = []
        if "rules" in rows:
            out.append(("mean action", score(self.learner(ensemble_action="mean"), state)))
            if self.algo != "dt":
                out.append((CRITIC_RULE, score(self.learner(ensemble_action="critic"), state)))
        if "members" in rows:
            single = self.learner(transformers=1)
            out += [(f"member {member}", score(single, members(state, member))) for member in range(n)]
        if "sizes" in rows:
            out += [(f"the critic's pick among members 0-{count - 1}",
                     score(self.learner(transformers=count, ensemble_action="critic"), members(state, slice(count))))
                    for count in range(2, n)]
        if set(IQL_RUN_ROWS) & set(rows):
            settings, iql_state, _ = load_iql_run(config.iql_run, self.dataset)
        if "iql-samples" in rows:
            policy = iql.sample_choice_policy(settings, self.dataset.act_dim, n)
            out.append((CONTROL, dict(evaluate(policy, iql_state, env_id, config.eval_episodes, config.eval_seed,
                                               self.dataset.reference()), budget=f"{settings.steps} updates")))
        if "with-samples" in rows:
            with_actor = dict(state, critic=dict(state["critic"], actor=iql_state["actor"]))
            for count in (1, n):
                learner = self.learner(transformers=count, ensemble_action="critic", policy_samples=n)
                label = "member 0" if count == 1 else f"members 0-{count - 1}"
                out.append((f"the critic's pick among {label} and N samples of IQL's policy",
                            score(learner, members(with_actor, 0 if count == 1 else slice(count)))))
        return out


def members(state: dict, chosen) -> dict:
    """``state`` with only the ``chosen`` (an index or a slice) members' transformers."""
    return dict(state, **{k: jax.tree.map(lambda x: x[chosen], state[k]) for k in MEMBER_KEYS if k in state})


def by_dataset(by_run: dict[str, float], datasets: dict[str, str]) -> dict[str, list[float]]:
    """Scores grouped by dataset (the strata of the bootstrap)."""
    out: dict[str, list[float]] = {}
    for run, value in by_run.items():
        out.setdefault(datasets[run], []).append(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more runs (e.g. one per seed)")
    parser.add_argument("--episodes", type=int, default=None, help="default: the run's --eval-episodes")
    parser.add_argument("--rows", nargs="+", choices=ROWS, help="which rows (default: every row a run can give)")
    parser.add_argument("--json", help="also write every episode's score here")
    args = parser.parse_args()
    if args.episodes is not None and args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}.")
    runs = {run_dir: SavedRun(run_dir, args.episodes) for run_dir in args.run_dirs}
    rows = {run_dir: run.rows(args.rows) for run_dir, run in runs.items()}  # every run checked before any is scored
    table: dict[str, dict[str, dict]] = {}  # row -> run -> evaluation
    for run_dir, run in runs.items():
        for name, result in run.evaluate(rows[run_dir]):
            table.setdefault(name, {})[run_dir] = result
    datasets = {run_dir: run.config.dataset for run_dir, run in runs.items()}
    if args.json:
        # The evidence schema of docs/evidence/README.md. method: the row; budget: the updates of the network that
        # acts (a config keeps the length it trained for, not the budget's name); command: this re-evaluation.
        command = shlex.join(["python", "benchmarks/ensemble_members.py", *sys.argv[1:]])
        atomic_write_json(args.json, {"command": command, "runs": [
            {"method": name, "dataset": datasets[run], "seed": runs[run].config.seed,
             "normalized_score": result.get("normalized_mean"), "episode_scores": result.get("normalized_scores"),
             "episode_lengths": result["lengths"], "budget": result.get("budget", f"{runs[run].config.steps} updates"),
             "command": command, "run_dir": run}
            for name, by_run in table.items() for run, result in by_run.items()]})
    scores = {name: {run: result.get("normalized_mean", float("nan")) for run, result in by_run.items()}
              for name, by_run in table.items()}
    print("| policy | " + " | ".join(Path(run).name for run in args.run_dirs) + " | mean [95% CI] |")
    print("|---|" + "---|" * (len(args.run_dirs) + 1))
    for name, by_run in scores.items():
        s = summary(by_dataset(by_run, datasets))
        cells = " | ".join(f"{by_run[run]:.1f}" if run in by_run else "–" for run in args.run_dirs)
        print(f"| {name} | {cells} | {s['mean']:.1f} [{s['mean_ci'][0]:.1f}, {s['mean_ci'][1]:.1f}] |")
    if CRITIC_RULE in scores and CONTROL in scores:
        both = [run for run in args.run_dirs if run in scores[CRITIC_RULE] and run in scores[CONTROL]]
        d = paired_difference(by_dataset({run: scores[CRITIC_RULE][run] for run in both}, datasets),
                              by_dataset({run: scores[CONTROL][run] for run in both}, datasets))
        print(f"\ncritic's pick among the members minus the control: {d['mean']:+.1f} "
              f"[{d['mean_ci'][0]:+.1f}, {d['mean_ci'][1]:+.1f}] (n = {d['runs']})")


if __name__ == "__main__":
    main()
