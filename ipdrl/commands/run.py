"""``ipdrl run`` — the main job: IPD against its two parents, DT and IQL, on one dataset, as one score table.

IPD runs end to end (IQL -> ensemble world model -> MPC augmentation -> value-guided DT with dynamic RTG). The
IQL row is IPD's own stage 1 (trained once, then read from the stage cache) acting with its AWR policy; the DT
row is the classic Decision Transformer with the same network and number of updates as IPD's stage 4. Every row
is the final checkpoint, evaluated on the same environment seeds: normalised score mean ± std over episodes.

Rerunning the same command continues an interrupted job (every run directory is resumed) and reuses finished work.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Literal

from ipdrl import presets
from ipdrl.algos import dt, ipd, ipd_stages, iql
from ipdrl.data.loading import load_dataset
from ipdrl.evaluation import evaluate
from ipdrl.pipelines import prepare, train
from ipdrl.runs import Run
from ipdrl.storage import atomic_write_bytes, atomic_write_json

log = logging.getLogger("ipdrl")


@dataclasses.dataclass
class Args:
    """ipdrl run: IPD vs DT vs IQL on one dataset; prints and saves a normalised-score table."""

    budget: Literal["quick", "tiny", "cpu", "paper"] = "quick"
    """'quick' (the whole job in 6-25 minutes on a 2-core CPU, by its generation), or a preset budget: 'tiny' (a
    smoke test in about two minutes), 'cpu' (each method at its cpu budget), 'paper' (published budgets; GPU)."""
    seed: int = 0
    """Training seed of every method."""
    out: str = "runs/main"
    """Folder for the run directories (ipd/, dt/) and the table (summary.md, summary.json)."""
    dataset: str = "embedded"
    """Dataset: 'embedded' (shipped with the package), a .hdf5 path, a name in $IPDRL_DATASETS, or a D4RL name."""
    episodes: int | None = None
    """Evaluation episodes per method; default: the budget's (10, or 2 at 'tiny')."""
    progress: bool = True


# 'quick' on top of the cpu presets: every stage shortened so that the whole job runs in minutes on 2 CPU cores.
QUICK_IPD = dict(steps=6000, warmup_steps=500, learning_rate=3e-4, log_every=500, checkpoint_every=1000)
QUICK_IQL = dict(steps=25_000, log_every=1000)
QUICK_ENSEMBLE = dict(max_steps=4000, eval_every=500, patience=3)
QUICK_AUGMENT = dict(ratio=0.1, rollout_length=10, min_rollout_length=3, branch_batch=128, num_samples=64,
                     horizon=4, iterations=2, num_elites=8, max_passes=2)


def method_configs(args: Args) -> tuple[ipd.Config, dt.Config]:
    """IPD's and DT's configs for ``args``; DT gets IPD's stage-4 network, optimiser and updates."""
    budget = "cpu" if args.budget == "quick" else args.budget
    # Every run is resumed, so rerunning the command continues (or reuses) it; IPD's stage cache lives in --out.
    common = dict(seed=args.seed, progress=args.progress, resume=True)
    if args.episodes is not None:
        common["eval_episodes"] = args.episodes
    out = Path(args.out)
    ipd_config = presets.make_config(ipd.ALGORITHM, args.dataset, budget, run_dir=str(out / "ipd"),
                                     cache_dir=str(out / ".cache"), **common)
    if args.budget == "quick":
        ipd_config = dataclasses.replace(
            ipd_config, **QUICK_IPD,
            iql=dataclasses.replace(ipd_config.iql, **QUICK_IQL),
            ensemble=dataclasses.replace(ipd_config.ensemble, **QUICK_ENSEMBLE),
            augment=dataclasses.replace(ipd_config.augment, **QUICK_AUGMENT,
                                        prefix_length=ipd_config.context_length))
    shared = {f.name: getattr(ipd_config, f.name) for f in dataclasses.fields(dt.Config)
              if f.name not in ("dataset", "run_dir", "return_scale", "target_return")}
    dt_config = presets.make_config(dt.ALGORITHM, args.dataset, budget, **dict(shared, run_dir=str(out / "dt")))
    return ipd_config, dt_config


def iql_row(config: ipd.Config, episodes: int) -> dict[str, Any]:
    """IPD's stage-1 IQL (from the stage cache) evaluated with its AWR policy on the evaluation seeds."""
    env_id, dataset = prepare(config, load_dataset(config.dataset))
    state, info = ipd_stages.value_stage(config.iql, dataset, config, Run.open(config.run_dir), env_id, config.cache_dir)
    learner = iql.make_learner(config.iql, dataset)
    result = evaluate(learner.policy, learner.policy_params(state), env_id, episodes, config.eval_seed, dataset.reference())
    return dict(result, checkpoint="final", steps=config.iql.steps, stage_cache=info["cache"],
                train_seconds=info.get("seconds"), dataset=dataset.name)


def dataset_title(spec: str, name: str) -> str:
    return f"the embedded dataset ({name})" if spec.startswith("embedded") else name


def format_table(rows: dict[str, dict[str, Any]], args: Args) -> str:
    first = next(iter(rows.values()))
    episodes = first["episodes"]
    seeds = f"{first['eval_seed']}-{first['eval_seed'] + episodes - 1}"
    lines = [
        f"IPD vs DT vs IQL on {dataset_title(args.dataset, first['dataset'])} (budget {args.budget}, training seed "
        f"{args.seed})",
        f"normalised score: {first.get('reference_table', 'no reference table for this environment')}",
        f"final checkpoints; mean ± std over {episodes} evaluation episodes (environment seeds {seeds})",
        "",
        "| method | normalised score | return | updates | wall time |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        score = (f"{row['normalized_mean']:.1f} ± {row['normalized_std']:.1f}" if "normalized_mean" in row else "n/a")
        seconds = row.get("train_seconds")
        lines.append(f"| {name} | {score} | {row['return_mean']:.1f} ± {row['return_std']:.1f} | {row['updates']} | "
                     f"{'in IPD' if seconds is None else f'{seconds / 60:.1f} min'} |")
    lines.append("\nwall time: training in this invocation (finished runs and cached stages are reused on reruns).")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``ipdrl run [--budget quick|tiny|cpu|paper] [--seed S] [--out DIR] [--dataset D]``."""
    import tyro

    args = tyro.cli(Args, args=argv, prog="ipdrl run", description=(__doc__ or "").strip().splitlines()[0])
    ipd_config, dt_config = method_configs(args)
    started = time.perf_counter()
    log.info("ipdrl run: IPD (%d IQL + %d policy updates), then DT (%d updates), then IQL's evaluation",
             ipd_config.iql.steps, ipd_config.steps, dt_config.steps)
    ipd_result = train(ipd.ALGORITHM, ipd_config)
    dt_result = train(dt.ALGORITHM, dt_config)
    iql_result = iql_row(ipd_config, ipd_config.eval_episodes)
    ipd_stage1 = ipd_result["stages"]["iql"].get("seconds")
    rows = {
        "IPD": dict(ipd_result, updates=f"{ipd_config.iql.steps} IQL + {ipd_config.steps}"),
        "DT": dict(dt_result, updates=str(dt_config.steps)),
        "IQL": dict(iql_result, updates=str(ipd_config.iql.steps),
                    train_seconds=ipd_stage1 if ipd_stage1 is not None else iql_result["train_seconds"]),
    }
    table = format_table(rows, args)
    print("\n" + table)
    out = Path(args.out)
    atomic_write_bytes(out / "summary.md", (table + "\n").encode())
    keep = ("normalized_mean", "normalized_std", "return_mean", "return_std", "returns", "normalized_scores",
            "episodes", "eval_seed", "checkpoint", "train_seconds", "run_dir", "updates", "reference_table")
    atomic_write_json(out / "summary.json", {
        "dataset": ipd_result["dataset"], "budget": args.budget, "seed": args.seed,
        "seconds": time.perf_counter() - started,
        "methods": {name: {k: row[k] for k in keep if k in row} for name, row in rows.items()},
        "ipd_stages": ipd_result["stages"],
    })
    log.info("ipdrl run: %.1f min; table in %s", (time.perf_counter() - started) / 60, out / "summary.md")
    return 0
