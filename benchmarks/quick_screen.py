"""The main job's screen (issue 22): IPD's stage-4 variants at `ipdrl run`'s quick budget on tuning seeds 5-7, with
DT and IQL from the main job itself, as one table with paired differences against DT.

    python benchmarks/quick_screen.py [--report-only]        -> docs/evidence/quick-screen.md and .json

Runs `ipdrl run --seeds S --out runs/quick-screen/main-sS` for each seed (DT, IQL and the stages 1-3 the screen
reuses), then `ipdrl sweep benchmarks/sweeps/quick-screen.toml` (the IPD variants).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ipdrl import sweeps, tables

REPO = Path(__file__).resolve().parents[1]
DEFINITION = REPO / "benchmarks" / "sweeps" / "quick-screen.toml"


def main_job_rows(seeds: list[int]) -> list[dict]:
    """DT's and IQL's rows of each seed's main job, in the evidence schema."""
    rows = []
    for seed in seeds:
        out = Path("runs/quick-screen") / f"main-s{seed}"
        summary = json.loads((REPO / out / "summary.json").read_text())
        for name in ("DT", "IQL"):
            result = summary["methods"][name]
            rows.append({"method": name.lower(), "algo": name.lower(), "dataset": "embedded", "seed": seed,
                         "normalized_score": result["normalized_mean"], "episode_scores": result["normalized_scores"],
                         "reference_table": result.get("reference_table"), "budget": "quick",
                         "command": f"ipdrl run --seeds {seed} --out {out}", "run_dir": str(out / name.lower())})
    return rows


def main() -> int:
    sweep = sweeps.load(DEFINITION)
    if "--report-only" not in sys.argv:
        for seed in sweep.seeds:
            out = REPO / "runs" / "quick-screen" / f"main-s{seed}"
            if not (out / "summary.json").exists():
                subprocess.check_call(["ipdrl", "run", "--seeds", str(seed), "--out", str(out)], cwd=REPO)
        subprocess.check_call([sys.executable, "-m", "ipdrl", "sweep", str(DEFINITION), "--workers", "1",
                               "--docs", "/tmp/quick-screen-sweep"], cwd=REPO)
    sweeps.handle_stale(sweep)  # the sweep above refuses them too; --report-only must not tabulate them silently
    rows = main_job_rows(sweep.seeds) + [sweeps.run_row(t) for t in sweeps.tasks(sweep) if t.done()]
    sweep.methods = [sweeps.Method(name="dt", algo="dt"), sweeps.Method(name="iql", algo="iql"), *sweep.methods]
    sweep.paired = [[m.name, "dt"] for m in sweep.methods[2:]]
    tables.write_report(sweep, rows, REPO / "docs" / "evidence", "python benchmarks/quick_screen.py")
    print((REPO / "docs" / "evidence" / "quick-screen.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
