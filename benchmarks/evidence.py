"""The evidence tables: every run is an ``ipdrl train`` command (d3rlpy's: ``d3rlpy_quality.py``); this script runs
the missing ones and prints tables.

    python benchmarks/evidence.py TABLE [--seeds 0 1 2] [--datasets hopper-medium-replay ...] [--budget cpu]
                                        [--jobs 2] [--out runs/evidence] [--docs docs/evidence] [--dry-run | --report-only]

Tables (defaults follow the issues: ``cpu`` budget, final checkpoints, 10 evaluation episodes):

- ``baselines``  BC, IQL, TD3+BC, ReBRAC, DT on hopper- and halfcheetah-medium-replay, 3 seeds; then d3rlpy 2.8.1's
                 IQL, TD3+BC and DT with the same budget and evaluation (``benchmarks/d3rlpy_quality.py``, in its own
                 virtualenv), on the same 3 seeds (the issue asks for 2; the third tightens ours − d3rlpy, whose
                 Welch's t interval the table prints).
- ``main``       IPD (and IPD with DT-style tokens) vs DT vs IQL vs ReBRAC on the same datasets, 3 seeds (IQL, DT,
                 ReBRAC runs shared with ``baselines``).
- ``ablation``   hopper-medium-replay, 2 seeds: full IPD; no augmentation; greedy-Q augmentation; alpha 0; classic RTG.
                 This table, ``tokens`` and ``scaling`` were measured with stage 1 at 30k IQL updates and pin it.
- ``tokens``     hopper-medium-replay, 1 seed: why IPD trails DT — stage 4's return tokens and value term varied
                 (value factor, classic RTG, alpha 0, undiscounted tokens) next to DT.
- ``scaling``    hopper-medium-replay, 2 seeds: IPD with imagined:real ratio 0, 0.05 (the cpu preset), 0.25, 0.5,
                 1, 2 (table and plot); and, to see why more imagined data hurts, at 0.05 and 0.5 with the copied
                 real prefixes or the whole added episodes kept out of stage 4's loss (context only), and at 0
                 and 0.5 with 21.5k stage-4 updates.
- ``critic``     IPD (and its DT-style variant) with stage 1's IQL at 30k updates (the cpu preset until this
                 table) vs 70k (the IQL baseline's, now the preset), next to DT and IQL; the main table's datasets
                 and seeds.
- ``dwm``        ReBRAC vs DWM-MPC (diffusion) vs DWM-MPC (MeanFlow) on both datasets, 3 seeds, plus seconds per
                 evaluation episode (DWM-MPC reuses the ReBRAC run of the same seed as its base policy).
- ``dwm-extensions``  hopper-medium-replay, 2 seeds: DWM-MPC (MeanFlow) plain vs with a proximity penalty,
                 termination masking, or an ensemble-disagreement penalty (the first three reuse the plain run's models;
                 the penalty's lambda 1, 20, 100 and 1000 reuse lambda 10's ensemble). The penalty is in raw state units,
                 so its strength depends on the dataset: relative to the return's gradient it is 50-135x stronger on
                 halfcheetah than on hopper (``benchmarks/dwm_penalty_scale.py``; lambda 20 there is about hopper's
                 lambda 1000).
- ``dwm-settings``  DWM-MPC (MeanFlow) as the cpu preset runs it (M 64 particles, weights carried within an
                 episode) vs weights reset to the pretrained ones at every step (``--planner.carry reset``, step sizes
                 100x the paper's grid), vs the paper's v1 setting (E 5 ascent steps on M 10 particles) and vs M 256
                 and 1024 (the paper's v2 uses 4096; ``--particles`` sets the larger ones), all on the preset run's
                 models, both datasets, 3 seeds.

Runs live in ``--out/<algo-variant>/<dataset>-s<seed>`` and are skipped when their ``results.json`` exists, so a
rerun (or another table) only trains what is missing; an interrupted run resumes (``--resume``; d3rlpy's start over). IPD variants of
one (dataset, seed) share stages 1-3 through one stage cache and run one after the other (scaling's larger
ratios continue stage 3 from the smaller ones' batches); independent chains run
``--jobs`` at a time, each process pinned to one core's worth of XLA threads. Each table is written to
``--docs/<table>.md`` with the commands that made it. Datasets are looked up in ``$IPDRL_DATASETS``, defaulting to
the shared benchmark folder ``../shared/datasets``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIUM_REPLAY = ["hopper-medium-replay", "halfcheetah-medium-replay"]
ONE_CORE = "--xla_cpu_multi_thread_eigen=false"  # one thread inside each op (matmuls); jobs share the cores


IPDRL_TRAIN = ("ipdrl", "train")
D3RLPY_QUALITY = ("python", "benchmarks/d3rlpy_quality.py")  # takes the same core flags; trains d3rlpy's algorithm
D3RLPY_SEEDS = 3  # d3rlpy's rows run on the first this-many seeds of the table
TABLES = ("baselines", "main", "ablation", "tokens", "scaling", "critic", "dwm", "dwm-extensions", "dwm-settings")


@dataclass
class Spec:
    """One ``ipdrl train`` run (or another ``program`` taking the same core flags): the row it fills, and its
    command-line flags beyond algo/dataset/seed/budget."""

    row: str
    algo: str
    dataset: str
    seed: int
    flags: list[str] = field(default_factory=list)
    variant: str = ""
    program: tuple[str, ...] = IPDRL_TRAIN

    def run_dir(self, out: Path) -> Path:
        return out / (self.variant or self.algo) / f"{self.dataset}-s{self.seed}"

    def command(self, out: Path, budget: str) -> list[str]:
        # only ipdrl resumes from checkpoints and draws a progress bar; d3rlpy_quality.py skips finished runs itself
        own = ["--resume", "--no-progress"] if self.program == IPDRL_TRAIN else []
        return [*self.program, "--algo", self.algo, "--budget", budget, "--dataset", self.dataset,
                "--seed", str(self.seed), "--run-dir", str(self.run_dir(out)), *own, *self.flags]


def ipd_variants(dataset: str, seed: int, out: Path, variants: dict[str, list[str]], weak_critic: bool = False
                 ) -> list[Spec]:
    """IPD runs sharing one stage cache; identical flags share one run across tables (ratio 0 = no augmentation).

    ``weak_critic`` pins stage 1 to a 30k-update IQL (run folders suffixed ``-iql-30k``)."""
    cache = ["--cache-dir", str(out / "ipd-cache" / f"{dataset}-s{seed}")]
    stage1, suffix = (WEAK_CRITIC, WEAK_CRITIC_SUFFIX) if weak_critic else ([], "")
    return [Spec(row, "ipd", dataset, seed, cache + stage1 + flags,
                 variant=IPD_RUNS.get(" ".join(flags), f"ipd-{slug(row)}") + suffix)
            for row, flags in variants.items()]


IPD_RUNS = {"": "ipd", "--augment.ratio 0": "ipd-no-augmentation"}  # run folders named by the ablation table
# Stage 1 as the cpu preset had it until the critic table showed it too weak on halfcheetah; the ablation, tokens
# and scaling tables were measured with it and keep it, so that their commands reproduce their figures.
WEAK_CRITIC, WEAK_CRITIC_SUFFIX = ["--iql.steps", "30000"], "-iql-30k"  # flags, run-folder suffix
# Scaling rows beyond the ratio sweep, asking why more imagined data hurts: (flags, ratios) by row-name prefix.
# 21.5k stage-4 updates: D_aug at ratio 0.5 is 2.15x the data, so they sample the real data as often as the
# preset's 10k do without augmentation.
SCALING_SERIES = {"prefixes as context only": (["--loss-on", "no-prefixes"], ("0.05", "0.5")),
                  "added episodes as context only": (["--loss-on", "data"], ("0.05", "0.5")),
                  "21.5k stage-4 updates": (["--steps", "21500"], ("0", "0.5"))}
# DT's target returns (3600 hopper, 12000 halfcheetah) in V's units: times IQL's reward scale on each dataset.
DT_TARGETS_IN_V_UNITS = {"hopper-medium-replay": 1830, "halfcheetah-medium-replay": 2177}
# One step from the pretrained weights moves them far less than hundreds of carried steps: with weights reset at every
# step, DWM-MPC's step sizes are searched on a grid 100x the paper's (which is for carried weights).
RESET_LRS = ("5e-05", "0.0005", "0.005", "0.05")
UNDISCOUNTED_CLASSIC = ["--rtg-mode", "classic", "--return-discount", "1", "--return-scale", "1000"]


def dt_style_ipd(dataset: str, seed: int, out: Path, row: str = "IPD, DT-style tokens", weak_critic: bool = False
                 ) -> Spec:
    """IPD's value-guided transformer conditioned like DT: undiscounted tokens, an ambitious target, decremented."""
    target = DT_TARGETS_IN_V_UNITS[dataset]
    [spec] = ipd_variants(dataset, seed, out, {row: UNDISCOUNTED_CLASSIC + ["--target-return", str(target)]},
                          weak_critic)
    spec.variant = f"ipd-undiscounted-tokens-classic-rtg-target-{target}" + (WEAK_CRITIC_SUFFIX if weak_critic else "")
    return spec


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() or c == "." else " " for c in text.lower()).split())


def chains(table: str, datasets: list[str], seeds: list[int], out: Path, particles: tuple[str, ...] = ()
           ) -> list[list[Spec]]:
    """The runs of ``table``, grouped into chains that must run in order (shared caches, base runs)."""
    if table == "baselines":
        return ([[Spec(name, algo, d, s)] for name, algo in
                 (("BC", "bc"), ("IQL", "iql"), ("TD3+BC", "td3bc"), ("ReBRAC", "rebrac"), ("DT", "dt"))
                 for d in datasets for s in seeds]
                + [[Spec(f"d3rlpy {name}", algo, d, s, variant=f"d3rlpy-{algo}", program=D3RLPY_QUALITY)]
                   for name, algo in (("IQL", "iql"), ("TD3+BC", "td3bc"), ("DT", "dt"))
                   for d in datasets for s in seeds[:D3RLPY_SEEDS]])
    if table == "main":
        return ([ipd_variants(d, s, out, {"IPD": []}) + [dt_style_ipd(d, s, out)] for d in datasets for s in seeds]
                + [[Spec(name, algo, d, s)] for name, algo in (("DT", "dt"), ("IQL", "iql"), ("ReBRAC", "rebrac"))
                   for d in datasets for s in seeds])
    if table == "ablation":
        variants = {"IPD": [], "no augmentation": ["--augment.ratio", "0"],
                    "greedy-Q augmentation": ["--augment.mode", "greedy-q"], "alpha = 0": ["--alpha", "0"],
                    "classic RTG": ["--rtg-mode", "classic"]}
        return [ipd_variants(d, s, out, variants, weak_critic=True) for d in datasets for s in seeds]
    if table == "tokens":
        classic, undiscounted = UNDISCOUNTED_CLASSIC[:2], UNDISCOUNTED_CLASSIC[2:]
        dt_target = ["--target-return", str(DT_TARGETS_IN_V_UNITS["hopper-medium-replay"])]
        variants = {"IPD": [], "alpha = 0": ["--alpha", "0"], "value factor 1.5": ["--value-factor", "1.5"],
                    "value factor 2": ["--value-factor", "2"], "classic RTG": classic,
                    "alpha = 0, classic RTG": ["--alpha", "0", *classic],
                    "undiscounted tokens, classic RTG": classic + undiscounted,
                    "undiscounted tokens, classic RTG, alpha = 0": ["--alpha", "0", *classic, *undiscounted],
                    "undiscounted tokens, classic RTG, target 1830": classic + undiscounted + dt_target,
                    "undiscounted tokens, classic RTG, alpha = 0, target 1830": ["--alpha", "0", *classic,
                                                                                 *undiscounted, *dt_target]}
        return ([ipd_variants(d, s, out, variants, weak_critic=True) for d in datasets for s in seeds]
                + [[Spec("DT (classic RTG, undiscounted raw returns)", "dt", d, s)] for d in datasets for s in seeds])
    if table == "scaling":
        # 0.05 is the cpu preset's own ratio. The preset makes one pass over the branch points, which yields about
        # imagined:real 0.7 on hopper-medium-replay; ratios 1 and 2 need up to 4 passes (fresh randomness each).
        ratio_flags = {r: ([] if r == "0.05" else ["--augment.ratio", r])
                       + (["--augment.max-passes", "4"] if float(r) >= 1 else [])
                       for r in ("0", "0.05", "0.25", "0.5", "1", "2")}
        variants = {f"ratio {r}": flags for r, flags in ratio_flags.items()}
        variants |= {f"{name}, ratio {r}": ratio_flags[r] + flags
                     for name, (flags, ratios) in SCALING_SERIES.items() for r in ratios}
        return [ipd_variants(d, s, out, variants, weak_critic=True) for d in datasets for s in seeds]
    if table == "critic":
        def with_critic(d: str, s: int, critic: str, weak: bool) -> list[Spec]:
            return (ipd_variants(d, s, out, {f"IPD (stage 1: {critic})": []}, weak)
                    + [dt_style_ipd(d, s, out, f"IPD, DT-style tokens (stage 1: {critic})", weak)])
        return ([with_critic(d, s, "30k-update IQL", True) + with_critic(d, s, "70k-update IQL, the cpu preset", False)
                 for d in datasets for s in seeds]
                + [[Spec(name, algo, d, s)] for name, algo in (("DT", "dt"), ("IQL (70k updates)", "iql"))
                   for d in datasets for s in seeds])
    if table == "dwm":
        return [[Spec("ReBRAC", "rebrac", d, s)] + [dwm_mpc(model, d, s, out) for model in ("meanflow", "diffusion")]
                for d in datasets for s in seeds]
    if table == "dwm-extensions":
        result = []
        for d in datasets:
            for s in seeds:
                plain = dwm_mpc("meanflow", d, s, out)
                reuse = ["--models-from", str(plain.run_dir(out))]  # same trained models: only the optimiser differs
                variants = {f"proximity penalty {lam}": reuse + ["--planner.proximity-penalty", lam]
                            for lam in ("1", "10", "100", "1000")}
                variants["termination masking"] = reuse + ["--terminations"]
                ensemble = dwm_mpc("meanflow", d, s, out, "disagreement penalty 10 (3 models)",
                                   ["--model.members", "3", "--planner.disagreement-penalty", "10"])
                chain = [Spec("ReBRAC", "rebrac", d, s), plain]
                chain += [dwm_mpc("meanflow", d, s, out, row, flags) for row, flags in variants.items()]
                reuse_ensemble = ["--models-from", str(ensemble.run_dir(out)), "--model.members", "3"]
                chain += [ensemble] + [dwm_mpc("meanflow", d, s, out, f"disagreement penalty {lam} (3 models)",
                                               reuse_ensemble + ["--planner.disagreement-penalty", lam])
                                       for lam in ("1", "20", "100", "1000")]
                result.append(chain)
        return result
    if table == "dwm-settings":
        variants = {"weights reset every step, lr 5e-5 to 5e-2": ["--planner.carry", "reset",
                                                                   "--tuning.lrs", *RESET_LRS],
                    "E 5, M 10 (the paper's v1)": ["--planner.inner-steps", "5", "--planner.particles", "10"],
                    **{f"M {m}": ["--planner.particles", m] for m in particles}}
        result = []
        for d in datasets:
            for s in seeds:
                plain = dwm_mpc("meanflow", d, s, out)
                reuse = ["--models-from", str(plain.run_dir(out))]
                result.append([Spec("ReBRAC", "rebrac", d, s), plain]
                              + [dwm_mpc("meanflow", d, s, out, row, reuse + flags) for row, flags in variants.items()])
        return result
    raise SystemExit(f"unknown table {table!r}; choose one of {', '.join(TABLES)}.")


def dwm_mpc(model: str, dataset: str, seed: int, out: Path, row: str = "", flags: list[str] | None = None) -> Spec:
    """DWM-MPC on the ReBRAC run of the same seed; --tune chooses adapt-or-not and the step size on tuning seeds
    kept apart from the evaluation seeds. ``row``/``flags`` name and configure a variant of the plain method."""
    base = ["--base-run", str(Spec("ReBRAC", "rebrac", dataset, seed).run_dir(out)), "--model.kind", model, "--tune"]
    variant = f"dwm-mpc-{model}" + (f"-{slug(row)}" if row else "")
    name = f"DWM-MPC ({model})" + (f", {row}" if row else "")
    return Spec(name, "dwm-mpc", dataset, seed, base + (flags or []), variant=variant)


def use_shared_datasets() -> None:
    """Look datasets up in the shared benchmark folder ``../shared/datasets`` unless $IPDRL_DATASETS says otherwise."""
    shared = REPO.parent / "shared" / "datasets"
    if "IPDRL_DATASETS" not in os.environ and shared.is_dir():
        os.environ["IPDRL_DATASETS"] = str(shared)


def making_command() -> str:
    """This script's command line as it makes a table: a --report-only rewrite names the command that trains."""
    script = Path(sys.modules["__main__"].__file__).resolve().relative_to(REPO)  # absolute since Python 3.9
    return shlex.join(["python", str(script), *(a for a in sys.argv[1:] if a != "--report-only")])


def ipdrl_script() -> str:
    """The ``ipdrl`` script of the environment running this file (an unactivated venv works too)."""
    script = shutil.which("ipdrl", path=str(Path(sys.executable).parent)) or shutil.which("ipdrl")
    if script is None:
        raise SystemExit("the `ipdrl` command is not installed: run `pip install -e .` in this environment first.")
    return script


def run_logged(command: list[str], log_path: Path, what: str, one_core: bool, tag: str = "evidence") -> int:
    """Run ``command`` from the repository with its output in ``log_path``, printing start and end (with ``what``
    and the minutes taken); ``one_core`` adds the single-threaded XLA flags. Returns the exit status."""
    env = dict(os.environ)
    if one_core:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_CORE}".strip()
    started = time.perf_counter()
    print(f"[{tag}] start  {shlex.join(command)}", flush=True)
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    status = "done " if code == 0 else f"FAILED (exit {code}; see {log_path})"
    print(f"[{tag}] {status} {what} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return code


def run_chain(chain: list[Spec], out: Path, budget: str, one_core: bool, log_dir: Path) -> None:
    for spec in chain:
        if (spec.run_dir(out) / "results.json").exists():
            continue
        command = spec.command(out, budget)
        command[0] = ipdrl_script() if spec.program == IPDRL_TRAIN else sys.executable  # "python": this environment
        log_path = log_dir / f"{spec.variant or spec.algo}-{spec.dataset}-s{spec.seed}.log"
        run_logged(command, log_path, f"{spec.row} {spec.dataset} s{spec.seed}", one_core)


def mean_std(values: list[float], signed: bool = False) -> str:
    if not values:
        return "—"
    number = "{:+.1f}" if signed else "{:.1f}"
    if len(values) == 1:  # one seed: no spread to report
        return f"{number.format(values[0])} (1 seed)"
    return f"{number.format(statistics.mean(values))} ± {statistics.stdev(values):.1f} ({len(values)} seeds)"


def collect(all_specs: list[Spec], out: Path) -> dict[str, dict[str, list[dict]]]:
    """results.json of every finished run, by row then dataset."""
    found: dict[str, dict[str, list[dict]]] = {}
    for spec in all_specs:
        path = spec.run_dir(out) / "results.json"
        rows = found.setdefault(spec.row, {})
        if path.exists():
            rows.setdefault(spec.dataset, []).append(json.loads(path.read_text()))
    return found


def format_table(table: str, results: dict[str, dict[str, list[dict]]], datasets: list[str], budget: str) -> str:
    """Markdown: per row and dataset, the mean ± std over seeds of each run's mean normalised score."""
    reference = next((r.get("reference_table") for rows in results.values() for runs in rows.values() for r in runs
                      if r.get("reference_table")), "D4RL reference table")
    lines = [f"Normalised score ({reference}); budget `{budget}`, final checkpoints, mean ± std over training seeds "
             f"of each run's mean over its evaluation episodes.", ""]
    if table == "dwm-extensions":
        return "\n".join(lines + dwm_rows(results, datasets) + penalty_chosen_on_tuning_seeds(results, datasets))
    if table.startswith("dwm"):
        return "\n".join(lines + dwm_rows(results, datasets))
    lines += ["| method | " + " | ".join(datasets) + " |", "|" + "---|" * (len(datasets) + 1)]
    for row, by_dataset in results.items():
        cells = [mean_std([r["normalized_mean"] for r in by_dataset.get(d, [])]) for d in datasets]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    if table == "baselines":
        lines += versus_d3rlpy(results, datasets)
    return "\n".join(lines)


def versus_d3rlpy(results: dict[str, dict[str, list[dict]]], datasets: list[str]) -> list[str]:
    """Ours − d3rlpy for each algorithm both have: difference of the seed means with Welch's t 95% interval (unequal
    variances; few seeds make it wide, which is the point), and the seeds' scores."""
    from scipy import stats

    lines = ["", "Ours − d3rlpy, same data, budget and evaluation episodes: difference of the seed means, Welch's t "
             "95% interval (`scipy.stats.ttest_ind`, unequal variances), each seed's score.", "",
             "| algorithm | dataset | ours − d3rlpy | 95% interval | ours | d3rlpy |", "|---|---|---|---|---|---|"]
    for row in [row for row in results if row.startswith("d3rlpy ")]:
        ours_row = row.removeprefix("d3rlpy ")
        for d in datasets:
            ours, theirs = ([r["normalized_mean"] for r in results.get(name, {}).get(d, [])] for name in (ours_row, row))
            if len(ours) < 2 or len(theirs) < 2:
                continue
            low, high = stats.ttest_ind(ours, theirs, equal_var=False).confidence_interval(0.95)
            seeds = [", ".join(f"{x:.1f}" for x in scores) for scores in (ours, theirs)]
            lines.append(f"| {ours_row} | {d} | {statistics.mean(ours) - statistics.mean(theirs):+.1f} | "
                         f"[{low:+.1f}, {high:+.1f}] | {seeds[0]} | {seeds[1]} |")
    return lines


def dwm_rows(results: dict[str, dict[str, list[dict]]], datasets: list[str]) -> list[str]:
    """One line per (method, dataset): the reported score (the adapted policy's only where tuning chose
    adaptation), the adapted policy's own score whatever was chosen, its evaluation seconds per episode, the choice."""
    lines = ["| method | dataset | score | minus its base policy (same seeds) | adapted policy | s / episode (adapted) "
             "| adaptation chosen (per seed) | tuning-seed return: base / per step size (per seed) |",
             "|---|---|---|---|---|---|---|---|"]
    for row, by_dataset in results.items():
        for d in datasets:
            runs = by_dataset.get(d, [])
            adapted = [r["adapted"] for r in runs if "adapted" in r]
            gains = [r["normalized_mean"] - r["base"]["normalized_mean"] for r in runs if "base" in r]
            cells = [mean_std([r["normalized_mean"] for r in runs]),
                     mean_std(gains, signed=True) if gains else "n/a",
                     mean_std([r["normalized_mean"] for r in adapted]) if adapted else "n/a",
                     mean_std([seconds_per_episode(r) for r in adapted or runs]),
                     ", ".join(adaptation_choice(r) for r in runs) or "—",
                     "; ".join(tuning_returns(r) for r in runs if "adaptation" in r) or "n/a"]
            lines.append("| " + " | ".join([row, d, *cells]) + " |")
    return lines


def penalty_chosen_on_tuning_seeds(results: dict[str, dict[str, list[dict]]], datasets: list[str]) -> list[str]:
    """Per dataset and seed, the run (plain MeanFlow or a disagreement lambda) and step size with the best
    tuning-seed return, and that run's gain on the evaluation seeds: lambda tuned like the step size."""
    plain = "DWM-MPC (meanflow)"
    candidates = [row for row in results if row == plain or row.startswith(f"{plain}, disagreement penalty")]
    lines = ["", "The disagreement penalty's lambda chosen on the tuning seeds too (among the plain method and every "
             "lambda above, the run and step size with the best tuning-seed return; the evaluation seeds only "
             "score the choice):", "", "| dataset | per seed: choice, gain | gain |", "|---|---|---|"]
    for d in datasets:
        by_seed: dict[int, list[tuple[float, str, dict]]] = {}
        for row in candidates:
            for r in results[row].get(d, []):
                best = max(c["return_mean"] for c in r["adaptation"]["candidates"])
                by_seed.setdefault(r["seed"], []).append((best, row.removeprefix(plain).lstrip(", ") or "plain", r))
        if not by_seed:
            continue
        picks = {seed: max(runs, key=lambda run: run[0]) for seed, runs in sorted(by_seed.items())}
        gains = [r["normalized_mean"] - r["base"]["normalized_mean"] for _, _, r in picks.values()]
        cells = "; ".join(f"s{seed}: {name}, {adaptation_choice(r)}, {gain:+.1f}"
                          for (seed, (_, name, r)), gain in zip(picks.items(), gains))
        lines.append(f"| {d} | {cells} | {mean_std(gains, signed=True)} |")
    return lines


def adaptation_choice(result: dict) -> str:
    """What DWM-MPC's tuning picked (the evaluated policy), or 'n/a' for the base policy's own run."""
    choice = result.get("adaptation")
    if choice is None:
        return "n/a"
    return f"adapt, lr {choice['lr']:g}" if choice["adapt"] else "no adaptation"


def tuning_returns(result: dict) -> str:
    """The tuning seeds' mean returns, e.g. ``552 / 540 (5e-07), 515 (5e-06)``: base policy, then each step size."""
    candidates = result["adaptation"].get("candidates")
    if not candidates:
        return "not tuned"
    base, *adapted = candidates
    return f"{base['return_mean']:.0f} / " + ", ".join(f"{c['return_mean']:.0f} ({c['lr']:g})" for c in adapted)


def seconds_per_episode(result: dict) -> float:
    """Evaluation wall time per episode (episodes step in lockstep, so this is total / episodes)."""
    return float(result.get("seconds_per_episode", result["seconds"] / max(int(result["episodes"]), 1)))


def plot_scaling(results: dict[str, dict[str, list[dict]]], dataset: str, path: Path) -> None:
    """Score vs ratio (rows ``ratio R``), and each of SCALING_SERIES as a further series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, prefix in [("IPD", "ratio "), *((name, f"{name}, ratio ") for name in SCALING_SERIES)]:
        ratios, means, stds = [], [], []
        for row, by_dataset in results.items():
            scores = [r["normalized_mean"] for r in by_dataset.get(dataset, [])]
            if scores and row.startswith(prefix):
                ratios.append(float(row[len(prefix):]))
                means.append(statistics.mean(scores))
                stds.append(statistics.stdev(scores) if len(scores) > 1 else 0.0)
        if ratios:
            ax.errorbar(ratios, means, yerr=stds, marker="o", capsize=4, label=label)
    ax.legend(fontsize=8)
    ax.set_xlabel("imagined : real transitions")
    ax.set_ylabel("normalised score")
    ax.set_title(f"IPD on {dataset}\nscore vs amount of imagined data", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--datasets", nargs="+")
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--jobs", type=int, default=2, help="chains run in parallel (one core each when > 1)")
    parser.add_argument("--out", default="runs/evidence")
    parser.add_argument("--docs", default="docs/evidence")
    parser.add_argument("--particles", nargs="+", default=["256", "1024"],
                        help="dwm-settings: the M values beside the preset's 64")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished runs, train nothing")
    args = parser.parse_args()

    one_dataset = args.table in ("ablation", "tokens", "scaling", "dwm-extensions")
    datasets = args.datasets or (["hopper-medium-replay"] if one_dataset else MEDIUM_REPLAY)
    seeds = args.seeds or {"tokens": [0], "ablation": [0, 1], "scaling": [0, 1],
                           "dwm-extensions": [0, 1]}.get(args.table, [0, 1, 2])
    os.chdir(REPO)  # paths in commands and docs are relative to the repository
    out = Path(args.out)
    use_shared_datasets()

    groups = chains(args.table, datasets, seeds, out, tuple(args.particles))
    specs = [spec for chain in groups for spec in chain]
    if args.dry_run:
        for spec in specs:
            print(shlex.join(spec.command(out, args.budget)))
        return
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not args.report_only:
        ipdrl_script()  # fail before starting any thread
        if any(spec.program == D3RLPY_QUALITY and not (spec.run_dir(out) / "results.json").exists() for spec in specs):
            from speed import ensure_d3rlpy_venv  # benchmarks/ is on sys.path as this script's folder

            ensure_d3rlpy_venv()  # once, here, rather than in parallel runs
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            list(pool.map(lambda chain: run_chain(chain, out, args.budget, args.jobs > 1, log_dir), groups))

    results = collect(specs, out)
    text = format_table(args.table, results, datasets, args.budget)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    if args.table == "scaling":
        plot_scaling(results, datasets[0], docs / "scaling.png")
        text += "\n\n![score vs imagined:real ratio](scaling.png)"
    command = making_command()
    took = "" if args.report_only else f" ({(time.perf_counter() - started) / 60:.0f} min this invocation)"
    runs = "\n".join(f"    {shlex.join(s.command(out, args.budget))}" for s in specs)
    ipd_runs = [spec for spec in specs if spec.algo == "ipd"]
    all_weak = bool(ipd_runs) and all(spec.variant.endswith(WEAK_CRITIC_SUFFIX) for spec in ipd_runs)
    pinned = (" These runs pin IPD's stage 1 to a 30k-update IQL (`--iql.steps 30000`), the `cpu` preset when they "
              "were made; the main table uses the preset's 70k.") if all_weak else ""
    body = (f"# {args.table}\n\nMade by `{command}`{took}; rows show the runs finished so far.{pinned} Runs:\n\n"
            f"{runs}\n\n{text}\n")
    (docs / f"{args.table}.md").write_text(body)
    print("\n" + text)


if __name__ == "__main__":
    main()
