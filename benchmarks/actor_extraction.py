"""Extraction from a frozen IQL critic: a fresh actor fitted to a finished IQL run's advantage weights.

    IPDRL_DATASETS=../shared/datasets python benchmarks/actor_extraction.py \\
        runs/sweeps/extraction/iql/hopper-medium-replay-s10 [--steps 30000 100000] [--json FILE]

IPD's stage 4 imitates the data's actions weighted by IQL's exp(temperature * (Q - V)) for 30k updates, and trails
the IQL actor that was fitted to the same weights over IQL's 450k. This takes the transformer away: the run's
critic and value are frozen, every data action's weight is computed once, and a fresh MLP actor (IQL's network,
init key from the run's seed) is fitted for each ``--steps`` with IQL's learning rate, cosine decay and batch size:

- ``gaussian``: IQL's own loss, the batch mean of w * -log pi(a|s) (tanh mean, state-independent log-std);
- ``mse``: the batch mean of w * |a - mu(s)|^2, a deterministic head like stage 4's (summed over action dimensions
  where stage 4 averages them: a constant factor);
- ``mse-normalised``: sum w |a - mu(s)|^2 / sum w per batch, stage 4's normalisation.

If ``gaussian`` at 30k scores near the IQL run, stage 4's gap is its transformer, head or normalisation; if it
scores like stage 4, it is the extraction budget. Every actor acts with its mean and is evaluated on the IQL run's
own evaluation seeds and episodes, beside the run's final actor. Prints a markdown table; ``--json`` writes the rows.
Several seeds' JSON files make one table, each actor's scores by seed with its mean and IQM and its paired
difference from the IQL runs' own actors (bootstrap and t intervals):

    python benchmarks/actor_extraction.py --combine runs/extract/s1*.json --docs docs/evidence/actor-extraction
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from ipdrl.algos import iql
from ipdrl.algos.common import actor_policy_params, adam
from ipdrl.algos.ipd_stages import load_iql_run
from ipdrl.data.dataset import sample_transitions
from ipdrl.data.loading import load_dataset
from ipdrl.data.statistics import normalize
from ipdrl.evaluation import evaluate
from ipdrl.networks import gaussian_log_prob
from ipdrl.optim import gradient_step
from ipdrl.pipelines import prepare
from ipdrl.runs import Run
from ipdrl.statistics import paired_difference, summary
from ipdrl.storage import atomic_write_bytes, atomic_write_json

VARIANTS = ("gaussian", "mse", "mse-normalised")
IQL_ACTOR = "IQL run's actor"


def weighted_loss(variant: str, weights: jax.Array, mean: jax.Array, log_std: jax.Array, actions: jax.Array
                  ) -> jax.Array:
    if variant == "gaussian":
        return -(weights * gaussian_log_prob(mean, log_std, actions)).mean()
    squared = ((actions - mean) ** 2).sum(-1)
    if variant == "mse":
        return (weights * squared).mean()
    if variant == "mse-normalised":
        return (weights * squared).sum() / weights.sum()
    raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}.")


def fit_actor(config: iql.Hyperparameters, fields: dict, act_dim: int, variant: str, steps: int, key: jax.Array
              ) -> dict:
    """A fresh IQL actor fitted for ``steps`` updates to the weighted data in ``fields`` (normalised observations,
    actions, weights)."""
    _, _, actor = iql.networks(config, act_dim)
    optimizer = adam(config.actor_lr, steps)
    init_key, train_key = jax.random.split(key)
    params = actor.init(init_key, jnp.zeros((1, fields["observations"].shape[1])))

    def update(carry, step_key):
        params, opt_state = carry
        batch = sample_transitions(fields, step_key, config.batch_size)

        def loss_fn(p):  # dropout as in IQL's actor (its key apart from the batch's, so runs without keep their bits)
            mean, log_std = actor.apply(p, batch["observations"], train=True,
                                        rngs={"dropout": jax.random.fold_in(step_key, 1)})
            return weighted_loss(variant, batch["weights"], mean, log_std, batch["actions"])

        step = gradient_step(loss_fn, optimizer, params, opt_state)
        return (step.params, step.opt_state), step.loss

    @jax.jit
    def train(params, key):
        (params, _), losses = jax.lax.scan(update, (params, optimizer.init(params)), jax.random.split(key, steps))
        return params, losses[-1000:].mean()

    params, loss = train(params, train_key)
    return {"actor": params, "loss_last_1000": float(loss)}


def combine(paths: list[str], docs: str | None) -> None:
    """One table from several seeds' ``--json`` files: printed, and written to DOCS.md and DOCS.json if given."""
    runs = sorted((json.loads(Path(path).read_text()) for path in paths), key=lambda run: run["seed"])
    if len({run["seed"] for run in runs}) != len(runs):
        raise SystemExit(f"--combine got two files of one seed ({[run['seed'] for run in runs]}): pass one per seed.")
    if len({run["dataset"] for run in runs}) != 1:
        raise SystemExit(f"--combine takes one dataset's runs; these are on {sorted({r['dataset'] for r in runs})}.")
    actor_key = lambda row: (row["variant"], None if row["variant"] == IQL_ACTOR else row["steps"])
    actors = list(dict.fromkeys(actor_key(row) for run in runs for row in run["rows"]))
    scores = {actor: [] for actor in actors}
    for run in runs:
        by_actor = {actor_key(row): row["normalized_mean"] for row in run["rows"]}
        missing = [actor for actor in actors if actor not in by_actor]
        if missing:
            raise SystemExit(f"seed {run['seed']} lacks {missing}: "
                             "run every seed with the same --steps and --variants.")
        for actor in actors:
            scores[actor].append(by_actor[actor])
    dataset, seeds = runs[0]["dataset"], [run["seed"] for run in runs]
    iql_actor = (IQL_ACTOR, None)
    if iql_actor not in scores:
        raise SystemExit("--combine needs each file's row of the IQL run's own actor: make them with --json.")
    reference = {dataset: scores[iql_actor]}
    fitted = [actor for actor in actors if actor != iql_actor]
    steps = " ".join(str(n) for n in sorted({actor[1] for actor in fitted}))
    variants = " ".join(dict.fromkeys(actor[0] for actor in fitted))
    lines = [f"# Extraction from a frozen IQL critic ({dataset})", "",
             f"`{shlex.join(['python', *sys.argv])}`, over each seed's `IPDRL_DATASETS=../shared/datasets "
             f"python benchmarks/actor_extraction.py IQL_RUN --steps {steps} --variants {variants} --json FILE`. "
             f"IQL runs: {', '.join(run['iql_run'] for run in runs)}. Scores: final actors, normalised with the "
             f"{runs[0]['reference_table']}, on the IQL run's own evaluation episodes. Differences are paired by seed "
             "with the IQL run's own actor: mean, 95% bootstrap and Student's t intervals.", "",
             "| actor | updates | " + " | ".join(f"s{seed}" for seed in seeds) +
             " | mean [95% CI] | IQM | − IQL's actor [bootstrap] [t] |",
             "|---|---|" + "---|" * len(seeds) + "---|---|---|"]
    rows = []
    for actor in [iql_actor, *fitted]:
        values = {dataset: scores[actor]}
        stats, difference = summary(values), paired_difference(values, reference)
        updates = actor[1] or "as trained"
        versus = "" if actor == iql_actor else (
            f"{difference['mean']:+.1f} [{difference['mean_ci'][0]:+.1f}, {difference['mean_ci'][1]:+.1f}] "
            f"[{difference['mean_t_ci'][0]:+.1f}, {difference['mean_t_ci'][1]:+.1f}]")
        lines.append(f"| {actor[0]} | {updates} | " + " | ".join(f"{v:.1f}" for v in scores[actor]) +
                     f" | {stats['mean']:.1f} [{stats['mean_ci'][0]:.1f}, {stats['mean_ci'][1]:.1f}] | "
                     f"{stats['iqm']:.1f} | {versus} |")
        rows.append({"variant": actor[0], "steps": actor[1], "seeds": seeds, "scores": scores[actor],
                     "summary": stats, "minus_iql_actor": None if actor == iql_actor else difference})
    print("\n".join(lines))
    if docs:
        atomic_write_bytes(Path(docs).with_suffix(".md"), ("\n".join(lines) + "\n").encode())
        atomic_write_json(Path(docs).with_suffix(".json"), {
            "command": shlex.join(["python", *sys.argv]), "dataset": dataset, "reference_table":
            runs[0]["reference_table"], "iql_runs": [run["iql_run"] for run in runs], "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("iql_run", nargs="?", help="a finished `ipdrl train --algo iql` run directory")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="make one table of several seeds' --json files")
    parser.add_argument("--docs", help="with --combine: write the table to DOCS.md and DOCS.json")
    parser.add_argument("--steps", type=int, nargs="+", default=[30_000, 100_000], help="updates of each fit")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.combine:
        if args.iql_run:
            parser.error("give an IQL run directory or --combine, not both")
        return combine(args.combine, args.docs)
    if args.iql_run is None:
        parser.error("give an IQL run directory, or --combine with JSON files")
    if args.docs:
        parser.error("--docs goes with --combine (a single run writes --json)")
    if min(args.steps) < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}.")
    saved = Run.open(args.iql_run)
    if not (saved.path / "results.json").exists():
        raise SystemExit(f"{args.iql_run} has no results.json: finish its `ipdrl train --algo iql` run first.")

    data = load_dataset(saved.config["dataset"])
    config, state, info = load_iql_run(args.iql_run, data)
    env_id, dataset = prepare(config, data)
    weights = jax.jit(lambda obs, act: iql.awr_weight(config, state, obs, act))(dataset.observations, dataset.actions)
    fields = {"observations": normalize(jnp.asarray(dataset.observations), state["obs_stats"]),
              "actions": jnp.asarray(dataset.actions), "weights": weights}
    policy = iql.make_learner(config, dataset).policy

    def score(actor_params) -> dict:
        params = actor_policy_params({"actor": actor_params, "obs_stats": state["obs_stats"]})
        return evaluate(policy, params, env_id, config.eval_episodes, config.eval_seed, dataset.reference())

    rows = []
    reference = score(state["actor"])
    rows.append({"variant": IQL_ACTOR, "steps": info["steps"],
                 "normalized_mean": reference["normalized_mean"], "normalized_std": reference["normalized_std"]})
    print(f"{dataset.name}, IQL run {args.iql_run} ({info['steps']} updates, seed {config.seed}): "
          f"weights median {float(jnp.median(weights)):.3f}, "
          f"{float((weights >= config.max_weight).mean()):.1%} at the cap", flush=True)
    for variant in args.variants:
        for steps in args.steps:
            started = time.perf_counter()
            fitted = fit_actor(config, fields, dataset.act_dim, variant, steps, jax.random.PRNGKey(config.seed))
            seconds = time.perf_counter() - started
            result = score(fitted["actor"])
            rows.append({"variant": variant, "steps": steps, "normalized_mean": result["normalized_mean"],
                         "normalized_std": result["normalized_std"], "loss_last_1000": fitted["loss_last_1000"],
                         "fit_seconds": seconds})
            print(f"  {variant} {steps}: {result['normalized_mean']:.1f} ({seconds:.0f} s)", flush=True)

    print(f"\n| actor | updates | score (mean ± std over {config.eval_episodes} episodes) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['steps']} | {row['normalized_mean']:.1f} ± {row['normalized_std']:.1f} |")
    if args.json:
        atomic_write_json(args.json, {"iql_run": args.iql_run, "dataset": dataset.name, "seed": config.seed,
                                      "reference_table": reference.get("reference_table"), "rows": rows})


if __name__ == "__main__":
    main()
