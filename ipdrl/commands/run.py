"""``ipdrl run`` — the main job: IPD against its two parents, DT and IQL, on one dataset, as one score table.

IPD runs end to end (IQL -> ensemble world model -> MPC augmentation -> value-guided DT with dynamic RTG). The
IQL row is IPD's own stage 1 (trained once, then read from the stage cache) acting with its AWR policy; the DT
row is the classic Decision Transformer with the same network and number of updates as IPD's stage 4. Every row
is the final checkpoint, evaluated on the same environment seeds: normalised score mean ± std over episodes.

One seed (the default, ``--seeds S``) runs in this process with its run directories directly in ``--out``. Several
(``--seeds 0 1 2 3 4``) run one seed per core at a time (each seed's job is one task on a Dask ``LocalCluster`` on
127.0.0.1, in its own process with XLA's matmuls on one thread, run directories in ``--out``/seed-S), and the
table gives every method's IQM and mean over seeds with 95% bootstrap CIs, the per-seed scores, and the paired
differences IPD - DT and IPD - IQL.

Rerunning the same command continues an interrupted job (every run directory is resumed) and reuses finished work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Literal

from ipdrl import pipelines, presets, statistics, sweeps, tables
from ipdrl.algos import dt, ipd, ipd_stages, iql
from ipdrl.data.loading import load_dataset
from ipdrl.evaluation import evaluate
from ipdrl.host import usable_cores
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
    seeds: tuple[int, ...] = (0,)
    """Training seeds (each trains every method); with several, the table aggregates over them (the README's
    5-seed result: --seeds 0 1 2 3 4)."""
    workers: int | None = None
    """Seeds trained at once; default: one per core."""
    out: str = "runs/main"
    """Folder for the table (summary.md, summary.json) and the run directories: ipd/ and dt/ for one seed,
    seed-S/ipd/ and seed-S/dt/ for several."""
    dataset: str = "embedded"
    """Dataset: 'embedded' (shipped with the package), a .hdf5 path, a name in $IPDRL_DATASETS, or a D4RL name."""
    episodes: int | None = None
    """Evaluation episodes per method; default: the budget's (10, or 2 at 'tiny')."""
    progress: bool = True


# 'quick' on top of the cpu presets: every stage shortened so that the whole job runs in minutes on 2 CPU cores.
# IPD's transformer conditions like DT here (undiscounted return-to-go tokens, DT's target in V's units): on the
# tuning seeds 5-7 of benchmarks/sweeps/quick-screen.toml (docs/evidence/quick-screen.md) it fell within 120-200
# steps with the paper's V(s_t) tokens.
QUICK_IPD = dict(steps=6000, warmup_steps=500, learning_rate=3e-4, log_every=500, checkpoint_every=1000,
                 rtg_mode="classic", return_discount=1.0, return_scale=1000.0)
QUICK_IQL = dict(steps=25_000, log_every=1000)
QUICK_ENSEMBLE = dict(max_steps=4000, eval_every=500, patience=3)
QUICK_AUGMENT = dict(ratio=0.1, rollout_length=10, min_rollout_length=3, branch_batch=128, num_samples=64,
                     horizon=4, iterations=2, num_elites=8, max_passes=2)


def method_configs(args: Args) -> tuple[ipd.Config, dt.Config]:
    """IPD's and DT's configs for ``args`` (one seed); DT gets IPD's stage-4 network, optimiser and updates."""
    budget = "cpu" if args.budget == "quick" else args.budget
    # Every run is resumed, so rerunning the command continues (or reuses) it; IPD's stage cache lives in --out.
    (seed,) = args.seeds
    common = dict(seed=seed, progress=args.progress, resume=True)
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
    lines = [f"IPD vs DT vs IQL on {dataset_title(args.dataset, first['dataset'])} (budget {args.budget}, training seed "
             f"{args.seeds[0]})", *_evaluation_lines(first), "scores: mean ± std over the episodes", "",
             "| method | normalised score | return | updates | wall time |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        score = (f"{row['normalized_mean']:.1f} ± {row['normalized_std']:.1f}" if "normalized_mean" in row else "n/a")
        seconds = row.get("train_seconds")
        lines.append(f"| {name} | {score} | {row['return_mean']:.1f} ± {row['return_std']:.1f} | {row['updates']} | "
                     f"{'in IPD' if seconds is None else f'{seconds / 60:.1f} min'} |")
    lines.append("\nwall time: training in this invocation (finished runs and cached stages are reused on reruns).")
    return "\n".join(lines)


def _evaluation_lines(row: dict[str, Any]) -> list[str]:
    episodes = row["episodes"]
    return [f"normalised score: {row.get('reference_table', 'no reference table for this environment')}",
            f"final checkpoints; {episodes} evaluation episodes per run (environment seeds {row['eval_seed']}-"
            f"{row['eval_seed'] + episodes - 1})"]


def main(argv: list[str]) -> int:
    """``ipdrl run [--budget quick|tiny|cpu|paper] [--seeds S ...] [--workers N] [--out DIR] [--dataset D]``."""
    import tyro

    args = tyro.cli(Args, args=argv, prog="ipdrl run", description=(__doc__ or "").strip().splitlines()[0])
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds needs distinct training seeds, got {list(args.seeds)}.")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}.")
    return run_one_seed(args) if len(args.seeds) == 1 else run_seeds(args)


def changed_settings(ipd_config: ipd.Config, dt_config: dt.Config) -> dict[str, tuple[Any, Any]]:
    """``{method.setting: (trained with, asked for now)}`` for the IPD and DT runs already in the job's ``--out``
    (this version of ipdrl changed a preset since they were trained); empty where they agree or have not started."""
    changed: dict[str, tuple[Any, Any]] = {}
    for algorithm, config in ((ipd.ALGORITHM, ipd_config), (dt.ALGORITHM, dt_config)):
        if Path(config.run_dir, "config.json").exists():
            differences = pipelines.changed_settings(Run.open(config.run_dir).config, algorithm.name, config)
            changed |= {f"{algorithm.name}.{name}": values for name, values in differences.items()}
    return changed


def run_one_seed(args: Args) -> int:
    """The job for ``args.seeds[0]`` in this process: run directories, summary.md and summary.json in ``--out``."""
    ipd_config, dt_config = method_configs(args)
    changed = changed_settings(ipd_config, dt_config)
    if changed:
        listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        raise ValueError(f"{args.out} holds a job trained with other settings than this version of ipdrl uses "
                         f"({listed}). Pass another --out to run it anew, or delete {args.out} to replace it.")
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
        "dataset": ipd_result["dataset"], "dataset_spec": args.dataset, "budget": args.budget, "seed": args.seeds[0],
        "episodes": args.episodes,
        "seconds": time.perf_counter() - started,
        "methods": {name: {k: row[k] for k in keep if k in row} for name, row in rows.items()},
        "ipd_stages": ipd_result["stages"],
    })
    log.info("ipdrl run: %.1f min; table in %s", (time.perf_counter() - started) / 60, out / "summary.md")
    return 0


# ---- several seeds: one task per seed on a local Dask cluster, then one table over seeds ---------------------------
def seed_command(args: Args, seed: int, out: Path) -> list[str]:
    """The one-seed job of ``seed`` as its own ``ipdrl run`` process, run directories in ``out``."""
    command = [sys.executable, "-m", "ipdrl", "run", "--budget", args.budget, "--dataset", args.dataset,
               "--seeds", str(seed), "--out", str(out), "--no-progress"]
    return command + (["--episodes", str(args.episodes)] if args.episodes is not None else [])


def seed_done(args: Args, seed: int, out: Path) -> bool:
    """Whether ``out`` holds a finished job of ``seed`` with the settings this version of ipdrl gives it."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    same_job = (summary.get("budget"), summary.get("episodes"), summary.get("dataset_spec")) == \
        (args.budget, args.episodes, args.dataset)
    return same_job and not changed_settings(*method_configs(dataclasses.replace(args, seeds=(seed,), out=str(out))))


def run_seeds(args: Args) -> int:
    """Every seed's job (those not done yet as tasks on a local Dask cluster), then the table over seeds."""
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    out, started = Path(args.out), time.perf_counter()
    folders = {seed: out / f"seed-{seed}" for seed in args.seeds}
    todo = [seed for seed in args.seeds if not seed_done(args, seed, folders[seed])]
    failures: list[str] = []
    if todo:
        workers = min(args.workers or usable_cores(), len(todo))
        log.info("ipdrl run: seeds %s, %d at a time; logs in %s/seed-S/job.log",
                 " ".join(map(str, todo)), workers, out)
        with sweeps.local_cluster(workers) as cluster, Client(cluster) as client:
            futures = {client.submit(sweeps.call_logged, seed_command(args, seed, folders[seed]),
                                     folders[seed] / "job.log", None, f"seed {seed}", pure=False,
                                     key=f"ipdrl-run-seed-{seed}"): seed for seed in todo}
            bar = tqdm(total=len(args.seeds), initial=len(args.seeds) - len(todo), desc="ipdrl run", unit="seed",
                       disable=not args.progress, dynamic_ncols=True)
            for future in as_completed(futures):
                if future.status == "error":
                    failures.append(str(future.exception()))
                    log.error("ipdrl run: %s", failures[-1].splitlines()[0])
                bar.update(1)
            bar.close()
    summaries = {seed: json.loads((folders[seed] / "summary.json").read_text())
                 for seed in args.seeds if seed_done(args, seed, folders[seed])}
    if summaries:
        report = seeds_report(args, summaries, time.perf_counter() - started)
        print("\n" + report["table"])
        atomic_write_bytes(out / "summary.md", (report.pop("table") + "\n").encode())
        atomic_write_json(out / "summary.json", report)
        log.info("ipdrl run: %.1f min; table in %s", (time.perf_counter() - started) / 60, out / "summary.md")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures or not summaries else 0


def seeds_report(args: Args, summaries: dict[int, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The table over seeds (rows by IQM, best first) and its JSON: runs in the evidence schema, aggregates."""
    first = next(iter(summaries.values()))
    seeds = sorted(summaries)
    scores = {name: [summaries[seed]["methods"][name]["normalized_mean"] for seed in seeds]
              for name in first["methods"]}
    stats = {name: statistics.summary({"dataset": values}) for name, values in scores.items()}
    paired = {f"IPD - {name}": statistics.paired_difference({"d": scores["IPD"]}, {"d": scores[name]})
              for name in ("DT", "IQL")}
    any_row = next(iter(first["methods"].values()))
    lines = [f"IPD vs DT vs IQL on {dataset_title(args.dataset, first['dataset'])} (budget {args.budget}, training "
             f"seeds {', '.join(map(str, seeds))})", *_evaluation_lines(any_row),
             "each seed's score: the mean over its episodes; over seeds: IQM [95% bootstrap CI] (mean)", "",
             "| method | IQM [95% CI] (mean) | per seed | updates |", "|---|---|---|---|"]
    for name in sorted(scores, key=lambda n: -stats[n]["iqm"]):
        lines.append(f"| {name} | {tables.cell(stats[name])} | "
                     f"{', '.join(f'{x:.1f}' for x in scores[name])} | {first['methods'][name]['updates']} |")
    lines.append("\npaired over seeds, mean [95% bootstrap CI] (95% t interval): " + "; ".join(
        f"{name} {p['mean']:+.1f}" + (f" {tables.signed_interval(p['mean_ci'])} (t "
                                      f"{tables.signed_interval(p['mean_t_ci'])})" if p["runs"] > 1 else "")
        for name, p in paired.items()))
    lines.append(f"\nwall time of this invocation: {seconds / 60:.1f} min (finished seeds are reused on reruns).")
    runs = [{"method": name.lower(), "dataset": first["dataset"], "seed": seed,
             "normalized_score": summaries[seed]["methods"][name]["normalized_mean"],
             "episode_scores": summaries[seed]["methods"][name].get("normalized_scores"), "budget": args.budget,
             "command": " ".join(["ipdrl", *seed_command(args, seed, Path(args.out) / f"seed-{seed}")[3:]])}
            for name in first["methods"] for seed in seeds]
    return {"table": "\n".join(lines), "dataset": first["dataset"], "budget": args.budget, "seeds": seeds,
            "seconds": seconds, "runs": runs,
            "aggregates": tables.undefined_as_null({"methods": stats, "paired": paired})}
