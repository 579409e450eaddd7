"""Several seeds of one algorithm: in one process (``ipdrl train --seeds``, ``map`` and ``vmap``) against separate
processes (as many at a time as there are cores, as a sweep runs them: with its XLA flags alone, and each also on
its own core, as a sweep's worker keeps its runs), wall clock from start to results.json.

    python benchmarks/seeds.py [--algo iql] [--seeds 5] [--steps 5000] [--dataset embedded] [--compilation-cache]
                               [--out FILE.json]

Every process compiles its own programs, unless ``--compilation-cache``: then all share one new folder of compiled
programs (ipdrl/host.py), as the runs of a sweep or of ``ipdrl run --seeds`` share theirs. A process loads a
program that an earlier one with the same XLA flags and usable cores compiled (within a row: every process after the
first wave).

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

from ipdrl.sweeps import SINGLE_THREAD_MATMULS, core_share  # noqa: E402


def ipdrl(*args: str, cwd: str, one_core: bool, cache: str, cores: set[int] | None = None) -> subprocess.Popen:
    """``ipdrl train ARGS``; ``one_core``: with the XLA flags a sweep's runs get (one op thread); ``cache``: the folder
    of compiled programs, or "off"; ``cores``: on these cores only, as a sweep's worker keeps its runs
    (``sweeps.CoreShare``)."""
    env = dict(os.environ, IPDRL_COMPILATION_CACHE=cache)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if one_core:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_MATMULS}".strip()
    return subprocess.Popen([sys.executable, "-m", "ipdrl", "train", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)


def timed(processes: list[list[str]], at_once: int, cwd: str, cache: str, pinned: bool = False) -> float:
    """Seconds to run every command, ``at_once`` at a time (more than one: each with the XLA flags of a sweep's runs,
    and with ``pinned`` also on its own share of the cores, as a sweep's worker)."""
    cores = sorted(os.sched_getaffinity(0))
    started, pending, running = time.perf_counter(), list(processes), {}
    while pending or running:
        for slot in range(at_once):
            if pending and slot not in running:
                share = core_share(slot, at_once, cores) if pinned else None
                running[slot] = ipdrl(*pending.pop(0), cwd=cwd, one_core=at_once > 1, cache=cache, cores=share)
        for slot, proc in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode:
                    raise SystemExit(f"a run failed (exit {proc.returncode})")
                del running[slot]
        time.sleep(0.2)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="iql")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--compilation-cache", action="store_true", help="processes share one new folder of compiled "
                        "programs (default: each compiles its own)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    seeds = [str(s) for s in range(args.seeds)]
    cores = len(os.sched_getaffinity(0))
    common = ["--algo", args.algo, "--dataset", args.dataset, "--steps", str(args.steps), "--eval-episodes", "1",
              "--no-progress"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        cache = f"{work}/xla" if args.compilation_cache else "off"
        one = timed([[*common, "--seed", "0", "--run-dir", f"{work}/one"]], 1, work, cache)
        rows.append(("one seed alone", 1, one))
        flags_only = timed([[*common, "--seed", s, "--run-dir", f"{work}/flags-s{s}"] for s in seeds], cores, work,
                           cache)
        rows.append((f"{args.seeds} processes, {cores} at a time, XLA flags only", args.seeds, flags_only))
        separate = timed([[*common, "--seed", s, "--run-dir", f"{work}/sep-s{s}"] for s in seeds], cores, work, cache,
                         pinned=True)
        rows.append((f"{args.seeds} processes, {cores} at a time, each on its own core", args.seeds, separate))
        chunks = [seeds[i::cores] for i in range(min(cores, len(seeds)))]  # as a sweep splits a group of seeds
        for batching in ("map", "vmap"):
            wall = timed([[*common, "--seeds", *chunk, "--seed-batching", batching,
                           "--run-dir", f"{work}/{batching}-s{{seed}}"] for chunk in chunks], cores, work, cache,
                           pinned=True)
            rows.append((f"{len(chunks)} processes with --seeds ({batching}), each on its own core", args.seeds, wall))
    print(f"{args.algo}, {args.steps} updates per seed, {args.dataset}; {cpu_name()}, {cores} cores. Several "
          "processes at a time run with a sweep's XLA flags, and pinned ones also each on its own core, as a "
          "sweep's workers keep their runs (a sweep groups a method's seeds as the --seeds rows do); compiled programs "
          f"{'shared by all processes' if args.compilation_cache else 'compiled by each process'}\n")
    print("| how | seeds | wall s | updates/s (all seeds) | time vs pinned processes |\n|---|---|---|---|---|")
    for how, count, wall in rows:
        ratio = f"{wall / separate:.2f}x" if count == args.seeds else "—"
        print(f"| {how} | {count} | {wall:.1f} | {count * args.steps / wall:.0f} | {ratio} |")
    if args.out:
        rows_json = [dict(how=h, seeds=c, seconds=w) for h, c, w in rows]
        summary = {"cpu": cpu_name(), "algo": args.algo, "steps": args.steps, "dataset": args.dataset, "cores": cores,
                   "compilation_cache": args.compilation_cache, "rows": rows_json}
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
