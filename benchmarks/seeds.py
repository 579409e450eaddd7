"""Several seeds of one algorithm: in one process (``ipdrl train --seeds``, ``map`` and ``vmap``) against separate
processes (as many at a time as there are cores, as a sweep runs them), wall clock from start to results.json.

    python benchmarks/seeds.py [--algo iql] [--seeds 5] [--steps 5000] [--dataset embedded] [--out FILE.json]

Prints a table (total updates/s of all seeds, and the time against separate processes) and writes JSON. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

from ipdrl.sweeps import ONE_CORE  # noqa: E402


def ipdrl(*args: str, cwd: str, one_core: bool) -> subprocess.Popen:
    """``ipdrl train ARGS``; ``one_core``: with the XLA threading a sweep's workers run under (one op thread)."""
    env = dict(os.environ)
    if one_core:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_CORE}".strip()
    return subprocess.Popen([sys.executable, "-m", "ipdrl", "train", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def timed(processes: list[list[str]], at_once: int, cwd: str) -> float:
    """Seconds to run every command, ``at_once`` at a time (more than one: each with one op thread, as a sweep)."""
    started, pending, running = time.perf_counter(), list(processes), []
    while pending or running:
        while pending and len(running) < at_once:
            running.append(ipdrl(*pending.pop(0), cwd=cwd, one_core=at_once > 1))
        for proc in list(running):
            if proc.poll() is not None:
                if proc.returncode:
                    raise SystemExit(f"a run failed (exit {proc.returncode})")
                running.remove(proc)
        time.sleep(0.2)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="iql")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    seeds = [str(s) for s in range(args.seeds)]
    cores = os.cpu_count() or 1
    common = ["--algo", args.algo, "--dataset", args.dataset, "--steps", str(args.steps), "--eval-episodes", "1",
              "--no-progress"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        one = timed([[*common, "--seed", "0", "--run-dir", f"{work}/one"]], 1, work)
        rows.append(("one seed alone", 1, one))
        separate = timed([[*common, "--seed", s, "--run-dir", f"{work}/sep-s{s}"] for s in seeds], cores, work)
        rows.append((f"{args.seeds} processes, {cores} at a time", args.seeds, separate))
        for batching in ("map", "vmap"):
            wall = timed([[*common, "--seeds", *seeds, "--seed-batching", batching,
                           "--run-dir", f"{work}/{batching}-s{{seed}}"]], 1, work)
            rows.append((f"one process, --seeds ({batching})", args.seeds, wall))
    print(f"{args.algo}, {args.steps} updates per seed, {args.dataset}; {cpu_name()}, {cores} cores (separate "
          f"processes: one op thread each, as a sweep's workers; one process: every core)\n")
    print("| how | seeds | wall s | updates/s (all seeds) | time vs separate processes |\n|---|---|---|---|---|")
    for how, count, wall in rows:
        ratio = f"{wall / separate:.2f}x" if count == args.seeds else "—"
        print(f"| {how} | {count} | {wall:.1f} | {count * args.steps / wall:.0f} | {ratio} |")
    if args.out:
        rows_json = [dict(how=h, seeds=c, seconds=w) for h, c, w in rows]
        summary = {"cpu": cpu_name(), "algo": args.algo, "steps": args.steps, "dataset": args.dataset, "cores": cores,
                   "rows": rows_json}
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
