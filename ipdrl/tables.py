"""The table of a sweep: per method and dataset, and over datasets, the IQM and mean of the runs' normalised
scores with 95% stratified bootstrap CIs (:mod:`ipdrl.statistics`), the paired differences the sweep asks for, the
per-seed scores; written as ``<docs>/<name>.md`` and ``<docs>/<name>.json`` (schema: ``docs/evidence/README.md``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ipdrl import statistics
from ipdrl.data.loading import dataset_label
from ipdrl.storage import atomic_write_bytes, atomic_write_json
from ipdrl.sweeps import Sweep, tasks, weights_digest


def scores_by(rows: Iterable[dict[str, Any]], method: str, seeds: Sequence[int] | None = None
              ) -> dict[str, list[float]]:
    """dataset -> the method's scores ordered by seed (only ``seeds`` when given)."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["method"] == method and row["normalized_score"] is not None and (seeds is None or row["seed"] in seeds):
            out.setdefault(row["dataset"], {})[row["seed"]] = row["normalized_score"]
    return {dataset: [by_seed[s] for s in sorted(by_seed)] for dataset, by_seed in out.items()}


def _by_run(rows: Iterable[dict[str, Any]], method: str) -> dict[tuple[str, int], float]:
    return {(r["dataset"], r["seed"]): r["normalized_score"] for r in rows
            if r["method"] == method and r["normalized_score"] is not None}


def table_datasets(sweep: Sweep) -> list[str]:
    """The table's columns: the sweep's datasets, then those only some methods run on (a method's own list)."""
    extra = [d for m in sweep.methods for d in m.datasets or [] if d not in sweep.datasets]
    return [*sweep.datasets, *dict.fromkeys(extra)]


def aggregate(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and dataset, and per method over all datasets: mean and IQM with 95% stratified bootstrap CIs;
    the paired differences the sweep asks for, on the seeds both methods have."""
    per_dataset, overall, paired = [], [], []
    columns = table_datasets(sweep)
    for method in sweep.methods:
        scores = scores_by(rows, method.name)
        for dataset in columns:
            if dataset in scores:
                per_dataset.append({"method": method.name, "dataset": dataset, "seeds": len(scores[dataset]),
                                    "scores": scores[dataset], **statistics.summary({dataset: scores[dataset]})})
        if len(scores) > 1:
            overall.append({"method": method.name, "datasets": sorted(scores), **statistics.summary(scores)})
    for a, b in sweep.paired:
        score_a, score_b = _by_run(rows, a), _by_run(rows, b)
        common = sorted(set(score_a) & set(score_b))
        for scope in [*columns, "all"]:
            strata_a: dict[str, list[float]] = {}
            strata_b: dict[str, list[float]] = {}
            for dataset, seed in common:
                if scope in ("all", dataset):
                    strata_a.setdefault(dataset, []).append(score_a[(dataset, seed)])
                    strata_b.setdefault(dataset, []).append(score_b[(dataset, seed)])
            if strata_a:
                paired.append({"a": a, "b": b, "dataset": scope, **statistics.paired_difference(strata_a, strata_b)})
    return {"per_dataset": per_dataset, "overall": overall, "paired": paired}


def cell(stat: dict[str, Any]) -> str:
    """``IQM [95% CI] (mean)`` of a :func:`ipdrl.statistics.summary`."""
    low, high = stat["iqm_ci"]
    ci = "" if low != low else f" [{low:.1f}, {high:.1f}]"  # NaN: one seed, no interval
    return f"{stat['iqm']:.1f}{ci} ({stat['mean']:.1f})"


def signed_interval(interval: list[float | None]) -> str:
    """``[-1.2, +3.4]``, or an empty string where there is no interval (None from JSON, or NaN: one seed)."""
    low, high = interval
    return "" if low is None or low != low else f"[{low:+.1f}, {high:+.1f}]"


def markdown(sweep: Sweep, rows: list[dict[str, Any]], aggregates: dict[str, Any], command: str) -> str:
    """The table as markdown: IQM [95% CI] (mean) per method and dataset, per-seed scores, paired differences."""
    tables = sorted({r["reference_table"] for r in rows if r.get("reference_table")})
    lines = [f"# {sweep.name}", "", f"Made by `{command}`. Final checkpoints; each run's score is the mean normalised "
             f"score of its evaluation episodes ({'; '.join(tables) or 'no reference table'}). Cells: IQM over "
             f"seeds [95% stratified bootstrap CI] (mean); the last column aggregates over datasets.", ""]
    cells = {(s["method"], s["dataset"]): s for s in aggregates["per_dataset"]}
    whole = {s["method"]: s for s in aggregates["overall"]}
    columns = table_datasets(sweep)
    lines += ["| method | " + " | ".join(map(dataset_label, columns)) + " | all |",
              "|---" * (len(columns) + 2) + "|"]
    for method in sweep.methods:
        row = [cell(cells[(method.name, d)]) + f" n={cells[(method.name, d)]['seeds']}" if (method.name, d) in cells
               else "—" for d in columns]
        lines.append(f"| {method.name} | " + " | ".join(row) + f" | {cell(whole[method.name]) if method.name in whole else '—'} |")
    if aggregates["paired"]:
        lines += ["", "Paired differences (same dataset and seed), mean [95% stratified bootstrap CI] and the 95% "
                  "Student's t interval. With few seeds the bootstrap interval is about the range of the per-seed "
                  "differences and too narrow; read the t interval there (`ipdrl.statistics`).", "",
                  "| a − b | dataset | runs | difference [bootstrap CI] | t interval |", "|---|---|---|---|---|"]
        for p in aggregates["paired"]:
            scope = p["dataset"] if p["dataset"] == "all" else dataset_label(p["dataset"])
            difference = f"{p['mean']:+.1f} {signed_interval(p['mean_ci'])}".strip()
            lines.append(f"| {p['a']} − {p['b']} | {scope} | {p['runs']} | {difference} | "
                         f"{signed_interval(p['mean_t_ci']) or '—'} |")
    for dataset in columns:  # data generated again on another CPU (MuJoCo rounds differently) differs
        versions: dict[str | None, list[str]] = {}
        for r in rows:
            if r["dataset"] == dataset:
                versions.setdefault(r.get("dataset_fingerprint"), []).append(f"{r['method']} seed {r['seed']}")
        unknown = versions.pop(None, [])
        if len(versions) > 1 or (versions and unknown):
            lines += ["", f"The {dataset_label(dataset)} runs trained on {len(versions)} version(s) of its data: " +
                      "; ".join(f"`{v}` ({', '.join(runs)})" for v, runs in versions.items()) +
                      (f"; not recorded ({', '.join(unknown)}: trained before runs recorded it)" if unknown else "")
                      + "."]
    carried = [r for r in rows if r.get("carried")]
    if carried:
        lines += ["", f"{len(carried)} of these runs were finished on another machine: their rows were kept from the "
                      f"earlier table (`--keep-missing`), their run directories are not here."]
    lines += ["", "Per-seed scores:", ""]
    for method in sweep.methods:
        for dataset, scores in scores_by(rows, method.name).items():
            lines.append(f"- {method.name}, {dataset_label(dataset)}: " + ", ".join(f"{s:.1f}" for s in scores))
    return "\n".join(lines) + "\n"


def overwrite_problem(sweep: Sweep, rows: list[dict[str, Any]], docs: str | Path) -> str | None:
    """Why writing ``rows`` as the sweep's table would lose results already in ``docs``, and what to do instead (None
    when it would not): no finished runs, runs in the existing table that are not among ``rows``, or a table made
    another way."""
    docs = Path(docs)
    table, made = docs / f"{sweep.name}.json", docs / f"{sweep.name}.md"
    if table.exists():
        here = {_key(r) for r in rows}
        grid = {task.key for task in tasks(sweep)}
        missing = [r for r in json.loads(table.read_text()).get("runs", []) if _key(r) not in here]
        outside = [r for r in missing if _key(r) not in grid]
        if outside:
            return (f"{table} holds {len(outside)} runs outside the methods, datasets and seeds asked for (e.g. "
                    f"{_label(outside[0])}); rewriting it would drop them. Tabulate the whole sweep (without "
                    f"--methods, --datasets or --seeds)")
        if missing:
            return (f"{table} holds {len(missing)} runs not finished here (e.g. {_label(missing[0])}); rewriting it "
                    f"would drop them. With --report-only, --keep-missing keeps those whose run directories are not "
                    f"here (finished on another machine)")
    elif made.exists():
        return f"{made} exists without {table.name}: it was made another way (an earlier evidence runner)"
    return None if rows else "no run of the sweep has finished"


def with_carried_rows(sweep: Sweep, rows: list[dict[str, Any]], docs: str | Path) -> list[dict[str, Any]]:
    """``rows`` (the runs finished here) and the existing ``<docs>/<name>.json``'s rows of this sweep's runs that have
    not finished here (finished on another machine), marked ``carried``, in the sweep's order. Each carried
    row is checked first: a row at another budget, one whose saved settings differ from what its command gives now
    (a row written before tables kept ``settings`` is checked by its budget and its number of updates alone), or one
    that comes after a run trained here instead of with it (IPD after its IQL; a base kept in git or copied here is
    the same run when its weights are those the row recorded), is a ValueError naming it."""
    table = Path(docs) / f"{sweep.name}.json"
    if not table.exists():
        return rows
    every = tasks(sweep)
    # not finished here: a run directory can exist unfinished (a sweep makes every seed's before training them)
    absent = {task.key: task for task in every if not task.done()}
    carried, stale = [], []
    for row in json.loads(table.read_text()).get("runs", []):
        task = absent.get(_key(row))
        if task is None:
            continue
        if row.get("budget") != task.budget:
            why = f"budget {row.get('budget')!r} -> {task.budget!r}"
        elif row.get("settings") and (changed := task.changed_settings(row["settings"])):
            why = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        elif not row.get("settings") and (steps := _steps_now(task)) not in (None, row.get("steps", steps)):
            why = f"steps {row['steps']!r} -> {steps!r}"
        elif task.after is not None and task.after_key not in absent and not _same_base(row, task):
            why = f"it comes after the {task.after} run of its seed, which was trained here, not with it"
        else:
            carried.append({**row, "carried": True})
            continue
        stale.append(f"  {_label(row)}: {why}")
    if stale:
        raise ValueError(f"{table} holds {len(stale)} run(s) finished elsewhere that do not match what this sweep "
                         f"trains now:\n" + "\n".join(stale) + "\nTrain them here (run the sweep without "
                         f"--report-only), or pass --overwrite without --keep-missing to leave out every run not here.")
    order = {task.key: i for i, task in enumerate(every)}
    return sorted(rows + carried, key=lambda row: order[_key(row)])


def _same_base(row: dict[str, Any], task) -> bool:
    """Whether the row came after the very weights its base run here holds (a base kept in git or copied here)."""
    recorded = row.get("base_weights_sha256")
    return recorded is not None and recorded == weights_digest(task.after_dir)


def _steps_now(task) -> int | None:
    parsed = task.parsed()
    return getattr(parsed.config, "steps", None) if parsed is not None else None


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["method"], row["dataset"], row["seed"]


def _label(row: dict[str, Any]) -> str:
    return f"{row['method']} {row['dataset']} seed {row['seed']}"


def undefined_as_null(value: Any) -> Any:
    """NaN (an interval from one seed) as JSON's null: ``NaN`` is not JSON, and strict readers (jq, browsers) refuse
    the whole file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: undefined_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [undefined_as_null(v) for v in value]
    return value


def write_report(sweep: Sweep, rows: list[dict[str, Any]], docs: str | Path, command: str) -> dict[str, Any]:
    """``<docs>/<name>.json`` (runs + aggregates) and ``<docs>/<name>.md``."""
    aggregates = aggregate(sweep, rows)
    docs = Path(docs)
    atomic_write_json(docs / f"{sweep.name}.json", {
        "table": sweep.name, "command": command, "budget": sweep.budget, "datasets": table_datasets(sweep),
        "seeds": sweep.seeds, "made": time.strftime("%Y-%m-%d"), "runs": rows,
        "aggregates": undefined_as_null(aggregates)})
    atomic_write_bytes(docs / f"{sweep.name}.md", markdown(sweep, rows, aggregates, command).encode())
    return aggregates
