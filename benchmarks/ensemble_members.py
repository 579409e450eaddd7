"""Each member of a ``--transformers N`` run against the ensemble that acts with their mean action.

    python benchmarks/ensemble_members.py RUN_DIR [--episodes 10]

Re-evaluates the run's final stage-4 (IPD) or DT checkpoint with the members' mean action, with (IPD) the member
action that the critic rates highest at every step, and with each member alone, on the run's evaluation seeds, and
prints a table: does combining the members beat them, or blur them?
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from ipdrl.algos import dt, get_algorithm, ipd, iql
from ipdrl.data.loading import load_dataset
from ipdrl.pipelines import prepare, saved_config
from ipdrl.runs import Run
from ipdrl.training import evaluate_final

MEMBER_KEYS = ("params", "opt", "ema_params")


def learners(algo: str, config, dataset) -> tuple[dict, object, str]:
    """({rule: learner with the run's N transformers acting by that rule}, the learner of one transformer,
    checkpoint name). IPD's members also act by the critic's choice; DT has no critic."""
    one = dataclasses.replace(config, transformers=1)
    if algo == "dt":
        return {"mean action": dt.make_learner(config, dataset)}, dt.make_learner(one, dataset), "checkpoint"
    config, one = ipd.with_stage1_settings(config), ipd.with_stage1_settings(one)
    iql_template = jax.jit(iql.make_learner(config.iql, dataset).init)(jax.random.PRNGKey(config.seed))
    labels, timesteps = np.zeros(dataset.size, np.float32), dataset.timesteps()
    build = lambda c: ipd.policy_learner(c, dataset, iql_template, labels, timesteps)
    rules = {"mean action": build(dataclasses.replace(config, ensemble_action="mean")),
             "member the critic rates highest": build(dataclasses.replace(config, ensemble_action="critic"))}
    return rules, build(one), "policy_checkpoint"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--episodes", type=int, default=None, help="default: the run's --eval-episodes")
    args = parser.parse_args()
    run = Run.open(args.run_dir)
    algo = run.config["algo"]
    config = saved_config(get_algorithm(algo), run)
    if args.episodes:
        config.eval_episodes = args.episodes
    if config.transformers < 2:
        raise SystemExit(f"{args.run_dir} trained one transformer (--transformers {config.transformers}): nothing to split.")
    env_id, dataset = prepare(config, load_dataset(config.dataset))
    rules, single, checkpoint = learners(algo, config, dataset)
    state, step = run.load_checkpoint(rules["mean action"].init(jax.random.PRNGKey(config.seed)), checkpoint)
    rows = [(rule, evaluate_final(learner, state, config, env_id, dataset.reference())) for rule, learner in rules.items()]
    for member in range(config.transformers):
        own = {k: jax.tree.map(lambda x: x[member], state[k]) for k in MEMBER_KEYS if k in state}
        rows.append((f"member {member}", evaluate_final(single, dict(state, **own), config, env_id, dataset.reference())))
    print(f"{args.run_dir} (step {step}, {config.eval_episodes} episodes, seeds from {config.eval_seed})\n")
    print("| policy | normalised score | mean episode length |\n|---|---|---|")
    for name, result in rows:
        print(f"| {name} | {result['normalized_mean']:.1f} | {np.mean(result['lengths']):.0f} |")


if __name__ == "__main__":
    main()
