"""Bit-identity check for refactors: train every algorithm at the ``tiny`` budget and hash what it computed.

    python benchmarks/fingerprint.py --out before.json            # on the old code
    python benchmarks/fingerprint.py --out after.json --compare before.json

A fingerprint holds, per algorithm: the evaluation returns and episode lengths (exact float text), every logged
metric, and the SHA-256 of every array in every checkpoint and saved model of the run directory (IPD: also its
stage cache, including the augmented dataset). Arrays are hashed as a multiset per file, so renaming a key or
moving a leaf within a state does not count as a difference; a changed number does. Timings are left out.
Results are bit-identical only on one CPU generation: compare fingerprints made on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ALGORITHMS = ("bc", "iql", "td3bc", "rebrac", "dt", "ipd", "dwm-mpc")
TIMING = ("seconds", "train_seconds", "compile_seconds", "seconds_per_episode", "ms_per_step",
          "imagined_steps_per_second", "accepted_transitions_per_second")


def array_hashes(path: Path) -> list[str]:
    """Sorted SHA-256 of every array leaf in a msgpack file or an hdf5 file."""
    import flax.serialization
    import h5py
    import jax
    import numpy as np

    if path.suffix == ".msgpack":
        restored = flax.serialization.msgpack_restore(path.read_bytes())
        if isinstance(restored, dict) and set(restored) == {"state", "step"}:  # a run checkpoint: the state
            restored = restored["state"]
        leaves = jax.tree_util.tree_leaves(restored)
    else:
        leaves = []
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, item: leaves.append(item[()]) if isinstance(item, h5py.Dataset)
                              and not name.startswith("metadata/") else None)  # metadata: paths and timings
    return sorted(hashlib.sha256(np.ascontiguousarray(np.asarray(x)).tobytes()).hexdigest()[:16] for x in leaves)


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING and k not in ("run_dir", "cache",
                                                                                             "trained_in", "path")}
    if isinstance(obj, list):
        return [without_timing(x) for x in obj]
    return obj


def fingerprint_run(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    files = {str(p.relative_to(run_dir)): array_hashes(p)
             for p in sorted(run_dir.rglob("*")) if p.suffix in (".msgpack", ".hdf5")}
    # DWM-MPC: the base and the adapted policy (its top level repeats the reported one); others: the top level
    evaluations = [results[k] for k in ("base", "adapted") if isinstance(results.get(k), dict)] or [results]
    evaluations = [e for e in evaluations if "returns" in e]
    return {
        "returns": [[repr(x) for x in e["returns"]] for e in evaluations],
        "lengths": [e["lengths"] for e in evaluations],
        "metrics": [{k: repr(v) for k, v in row.items() if k.split("/")[-1] not in TIMING} for row in metrics],
        "files": files,
        "results": without_timing({k: v for k, v in results.items() if k not in ("returns", "lengths")}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="runs/fingerprint")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--compare", default=None, help="an earlier fingerprint to compare with")
    args = parser.parse_args()
    work = Path(args.work)
    fingerprint = {}
    for algo in args.algos:
        run_dir = work / algo
        if not (run_dir / "results.json").exists():
            command = ["ipdrl", "train", "--algo", algo, "--budget", "tiny", "--dataset", args.dataset,
                       "--run-dir", str(run_dir), "--no-progress", "--resume"]
            if algo == "ipd":
                command += ["--cache-dir", str(run_dir / "cache")]
            print("+", " ".join(command), flush=True)
            subprocess.run(command, check=True, env=dict(os.environ))
        fingerprint[algo] = fingerprint_run(run_dir)
    Path(args.out).write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    if args.compare is None:
        return 0
    before = json.loads(Path(args.compare).read_text())
    differ = 0
    for algo in args.algos:
        for part in ("returns", "lengths", "metrics", "files"):
            old, new = before.get(algo, {}).get(part), fingerprint[algo][part]
            if part == "files":  # compare the multiset of arrays, wherever a file now keeps them
                old = sorted(h for hashes in (old or {}).values() for h in hashes)
                new = sorted(h for hashes in new.values() for h in hashes)
            if old != new:
                differ += 1
                print(f"DIFFERS  {algo}: {part}")
        if before.get(algo, {}).get("results") != fingerprint[algo]["results"]:
            print(f"note     {algo}: other results.json fields differ (stage keys, paths): not judged")
    print("bit-identical" if not differ else f"{differ} parts differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
