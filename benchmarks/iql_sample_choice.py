"""A control for IPD's critic-chosen actions: a finished IQL run acting with the action its Q rates highest among
N samples of its own policy, instead of its policy's mean.

    python benchmarks/iql_sample_choice.py --iql-run runs/sweeps/awr/iql/hopper-medium-replay-s6 [--samples 5]
        [--algo iql --dataset hopper-medium-replay --seed 6 --budget cpu] [--run-dir DIR] [--episodes N] [--overwrite]

IPD's `--transformers N --ensemble-action critic` lets stage 1's Q choose among N transformers' actions. If IQL's
Q choosing among N draws of IQL's own Gaussian policy (as SfBC and IDQL select actions) scores as well, the gain is
the choice, not what the transformers learned. Nothing is trained: the IQL run's final checkpoint is evaluated on
its own evaluation seeds and episodes. The run directory gets ``log.txt`` and, atomically, ``results.json`` in the
shape of an ``ipdrl train`` run's, so that an ``ipdrl sweep`` row can run it (``program = ["python",
"benchmarks/iql_sample_choice.py"]``; the sweep passes ``--algo --budget --dataset --seed --run-dir``) and pair it
with other rows. A run whose ``results.json`` exists is skipped unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ipdrl.algos import iql
from ipdrl.algos.ipd_stages import load_iql_run
from ipdrl.data.loading import dataset_label, load_dataset
from ipdrl.evaluation import evaluate
from ipdrl.pipelines import prepare
from ipdrl.runs import Run
from ipdrl.storage import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iql-run", required=True, help="a finished `ipdrl train --algo iql` run")
    parser.add_argument("--samples", type=int, default=5, help="policy samples its Q chooses among")
    parser.add_argument("--algo", default="iql", choices=("iql",), help="(from a sweep row) must be iql")
    parser.add_argument("--dataset", help="(from a sweep row) checked against the IQL run's dataset")
    parser.add_argument("--seed", type=int, help="(from a sweep row) checked against the IQL run's seed")
    parser.add_argument("--budget", help="(from a sweep row) recorded")
    parser.add_argument("--run-dir", help="default: IQL_RUN-choice-of-SAMPLES")
    parser.add_argument("--episodes", type=int, help="default: the IQL run's --eval-episodes")
    parser.add_argument("--overwrite", action="store_true", help="evaluate again even if results.json exists")
    args = parser.parse_args()
    if args.samples < 1:
        raise SystemExit(f"--samples must be >= 1, got {args.samples}.")
    if args.episodes is not None and args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}.")
    iql_results = Path(args.iql_run) / "results.json"
    if not iql_results.exists():
        raise SystemExit(f"{args.iql_run} has no results.json: finish its `ipdrl train --algo iql` run first.")
    run_dir = Path(args.run_dir or f"{args.iql_run.rstrip('/')}-choice-of-{args.samples}")
    started = time.perf_counter()
    saved = Run.open(args.iql_run).config
    if args.dataset and dataset_label(args.dataset) != dataset_label(saved["dataset"]):
        raise SystemExit(f"--iql-run {args.iql_run} was trained on {saved['dataset']}, not on {args.dataset}.")
    if args.seed is not None and args.seed != saved["seed"]:
        raise SystemExit(f"--iql-run {args.iql_run} has seed {saved['seed']}, not {args.seed}: pass that seed's run.")
    if (run_dir / "results.json").exists() and not args.overwrite:
        print(f"{run_dir / 'results.json'} exists; skipped (--overwrite evaluates again).")
        return
    data = load_dataset(saved["dataset"])
    config, state, info = load_iql_run(args.iql_run, data)
    env_id, dataset = prepare(config, data)
    episodes = args.episodes or config.eval_episodes
    policy = iql.sample_choice_policy(config, dataset.act_dim, args.samples)
    result = evaluate(policy, state, env_id, episodes, config.eval_seed, dataset.reference())
    result.update(checkpoint="final", algo="iql", rule=f"its Q's pick among {args.samples} samples of its policy",
                  samples=args.samples, iql_run=args.iql_run, dataset=config.dataset, seed=config.seed,
                  budget=args.budget, steps=info["steps"], train_seconds=0.0,
                  total_seconds=time.perf_counter() - started, run_dir=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = (f"[iql_sample_choice] {args.iql_run} ({info['steps']} updates), its Q's pick among {args.samples} "
               f"samples: normalised score {result.get('normalized_mean', float('nan')):.1f} ± "
               f"{result.get('normalized_std', float('nan')):.1f} over {episodes} episodes")
    (run_dir / "log.txt").write_text(summary + "\n")
    atomic_write_json(run_dir / "results.json", result)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
