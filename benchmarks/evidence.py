"""The evidence tables: sweep definitions (``benchmarks/sweeps/<table>.toml``) run by ``ipdrl sweep``.

    python benchmarks/evidence.py TABLE [ipdrl sweep flags: --workers N, --scheduler tcp://..., --report-only, ...]

Tables: ``baselines`` (BC, IQL, TD3+BC, ReBRAC, DT and d3rlpy's IQL, TD3+BC, DT), ``dwm`` (ReBRAC vs DWM-MPC),
``main`` (IPD vs DT vs IQL vs ReBRAC vs IPD without augmentation), ``curves`` (the baselines' learning curves,
evaluated every 5% of training) and ``antmaze-curves`` (DT's and IPD's on AntMaze umaze): each writes
``docs/evidence/<table>.md`` and ``.json`` (runs + aggregates: IQM and mean with 95% stratified bootstrap CIs, paired
differences). A ``*curves`` table also draws ``docs/evidence/<table>-<dataset>.png`` and tabulates where each curve
plateaus (``<table>.md``). Datasets come from ``../shared/datasets`` unless
$IPDRL_DATASETS names others.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "benchmarks" / "sweeps"
DOCS = REPO / "docs" / "evidence"


def use_shared_datasets() -> None:
    """Look datasets up in the shared benchmark folder ``../shared/datasets`` unless $IPDRL_DATASETS says otherwise."""
    shared = REPO.parent / "shared" / "datasets"
    if "IPDRL_DATASETS" not in os.environ and shared.is_dir():
        os.environ["IPDRL_DATASETS"] = str(shared)


def making_command() -> str:
    """This script's command line as it makes a table: a --report-only rewrite names the command that trains."""
    script = Path(sys.modules["__main__"].__file__).resolve().relative_to(REPO)
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
    from ipdrl.sweeps import SINGLE_THREAD_MATMULS

    env = dict(os.environ)
    if one_core:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_MATMULS}".strip()
    started = time.perf_counter()
    print(f"[{tag}] start  {shlex.join(command)}", flush=True)
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    status = "done " if code == 0 else f"FAILED (exit {code}; see {log_path})"
    print(f"[{tag}] {status} {what} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return code


# ---- learning curves -------------------------------------------------------------------------------------------
def curves_report(table: str, keep_missing: bool) -> None:
    """``docs/evidence/<table>.json`` (every evaluation of every curve run), one plot per dataset, ``<table>.md``.

    With ``keep_missing`` the existing file's curves whose run directories are not here (trained on another machine)
    are kept, as the sweep keeps their table rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ipdrl import sweeps
    from ipdrl.runs import Run
    from ipdrl.statistics import plateau

    sweep = sweeps.load(SWEEPS / f"{table}.toml")
    curves = []
    for task in sweeps.tasks(sweep):
        if not (Path(task.run_dir) / "metrics.jsonl").exists():
            continue
        run = Run.open(task.run_dir)
        rows = [r for r in run.metrics() if "eval/normalized_score" in r]
        final = run.results() if task.done() else None
        settings = run.config
        points = [(r["step"], r["eval/normalized_score"]) for r in rows]
        if final is not None:
            points.append((final["steps"], final["normalized_mean"]))
        if points:
            curves.append({"method": task.method, "dataset": task.dataset, "seed": task.seed, "finished": task.done(),
                           "steps": [p[0] for p in points], "scores": [p[1] for p in points],
                           "episodes": settings["eval_episodes"], "planned_updates": settings["steps"],
                           "command": " ".join(task.command[2:])})
    here = {(c["method"], c["dataset"], c["seed"]) for c in curves}
    if keep_missing and (DOCS / f"{table}.json").exists():
        earlier = json.loads((DOCS / f"{table}.json").read_text())["curves"]
        curves += [c for c in earlier if (c["method"], c["dataset"], c["seed"]) not in here]
    plateaus = []
    for method, dataset in sorted({(c["method"], c["dataset"]) for c in curves}):
        done = [c for c in curves if (c["method"], c["dataset"]) == (method, dataset) and c["finished"]]
        fit = plateau([s for c in done for s in c["steps"]], [v for c in done for v in c["scores"]]) if done else None
        if fit is not None:
            plateaus.append({"method": method, "dataset": dataset, "seeds": [c["seed"] for c in done],
                             "updates": max(done[0]["steps"]), **fit})
    (DOCS / f"{table}.json").write_text(json.dumps({"table": table, "command": making_command(), "curves": curves,
                                                   "plateaus": plateaus}, indent=1) + "\n")
    episodes = ", ".join(str(n) for n in sorted({c["episodes"] for c in curves}))
    lines = [f"# {table}", "", f"Made by `{making_command()}` (runs: `ipdrl sweep benchmarks/sweeps/{table}.toml`). "
             f"Normalised score (D4RL reference table) of the checkpoint at every evaluation, {episodes} episodes; "
             "the last point is the final checkpoint.", "",
             "| method | dataset | seed | updates | final | best (step) |", "|---|---|---|---|---|---|"]
    for c in curves:
        best = max(range(len(c["scores"])), key=c["scores"].__getitem__)
        lines.append(f"| {c['method']} | {c['dataset']} | {c['seed']} | {c['steps'][-1]}{'' if c['finished'] else ' (running)'} "
                     f"| {c['scores'][-1]:.1f} | {c['scores'][best]:.1f} ({c['steps'][best]}) |")
    lines += ["", "Plateau (finished curves, seeds pooled): the least-squares fit of score = a + b·min(step, τ) over "
              "every evaluation (`ipdrl.statistics.plateau`). τ is where the fitted rise ends; noise is the residual "
              "spread of one evaluation about the fit. A rise within two standard errors of zero counts as flat "
              "from the first evaluation.", "",
              "| method | dataset | seeds | updates | fitted rise ± s.e. | noise (1 eval) | plateau step |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {p['method']} | {p['dataset']} | {', '.join(map(str, p['seeds']))} | {p['updates']} | {p['rise']:.1f} ± {p['rise_error']:.1f} "
              f"| {p['noise']:.1f} | {p['step']}{' (flat)' if p['flat'] else ''} |" for p in plateaus]
    (DOCS / f"{table}.md").write_text("\n".join(lines) + "\n")
    for dataset in sorted({c["dataset"] for c in curves}):
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in (c for c in curves if c["dataset"] == dataset):
            fraction = [s / c["planned_updates"] for s in c["steps"]]
            so_far = "" if c["finished"] else f" of {c['planned_updates'] // 1000}k, running"
            ax.plot(fraction, c["scores"], marker=".",
                    label=f"{c['method']} s{c['seed']} ({c['steps'][-1] // 1000}k{so_far})")
        ax.set(title=f"{dataset}: normalised score during training", xlabel="fraction of the run's updates",
               ylabel="normalised score")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(DOCS / f"{table}-{dataset}.png", dpi=90)
        plt.close(fig)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    table, rest = sys.argv[1], sys.argv[2:]
    definition = SWEEPS / f"{table}.toml"
    if not definition.exists():
        raise SystemExit(f"no sweep {definition}; tables: {', '.join(p.stem for p in sorted(SWEEPS.glob('*.toml')))}")
    use_shared_datasets()
    code = subprocess.call([sys.executable, "-m", "ipdrl", "sweep", str(definition.relative_to(REPO)), "--docs",
                            str(DOCS.relative_to(REPO)), *rest], cwd=REPO)
    if code == 0 and table.endswith("curves"):  # not after a sweep that refused to write its table
        curves_report(table, keep_missing="--keep-missing" in rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
