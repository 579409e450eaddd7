"""Sweeps: grids of ``ipdrl train`` runs (methods x datasets x seeds) as tasks on Dask distributed, and their table.

A sweep is defined in a TOML or YAML file (or by flags: ``ipdrl sweep --algos ...``)::

    name = "baselines"                      # the table's name: <docs>/<name>.md and .json
    out = "runs/sweeps/baselines"           # run directories: <out>/<method>/<label>-s<seed>, <label> the dataset's
                                            # name (a file's stem)
    budget = "cpu"
    datasets = ["hopper-medium-replay", "walker2d-medium-replay"]
    seeds = [0, 1, 2, 3, 4]
    datasets_dir = "../shared/datasets"     # optional: added to $IPDRL_DATASETS for the runs
    paired = [["ipd", "dt"]]                # optional: paired differences to report
    flags = ["--eval-episodes", "20"]       # optional: flags of every method's runs (before the method's own)
    group_seeds = true                      # optional (default true): seeds of a method on a dataset train together

    [[methods]]
    name = "iql"                            # the row's name
    algo = "iql"
    flags = ["--steps", "100000"]           # any `ipdrl train` flags; {dataset}, {label}, {seed} and {out} are filled
    # seeds, datasets, budget: optional per-method overrides
    # after = "rebrac": each run starts once that method's run of the same dataset and seed is done (DWM-MPC's
    #                   --base-run {out}/rebrac/{label}-s{seed})
    # program = ["python", "benchmarks/d3rlpy_quality.py"]: another program with the same core flags

    [[methods]]
    name = "iql-expectile-0.9"
    extends = "iql"                         # optional: an earlier row's settings (its after, program and seeds
                                            # too), this row's flags following that row's
    flags = ["--expectile", "0.9"]

Every run is a subprocess (its own XLA, its matmuls on one thread, killed with its worker): the task of a run
whose ``results.json`` exists is skipped (unless its settings are no longer what its command gives:
:func:`handle_stale`), an interrupted one continues from its checkpoint (``--resume``), and a failed one is
reported with the tail of its log while the others go on. The seeds of one method on one dataset
train together in one process (``ipdrl train --seeds``, ``map`` batching: bit-identical to separate runs, one
compilation and one dataset load for all; docs/benchmarks/seeds-*.json measures it faster than separate
processes), split into as many processes as it takes to give every worker one; IPD (several stages), other
programs and methods whose flags name ``{seed}`` run one seed per process. Runs of IPD on one (dataset, seed) share
stages 1-3 through ``<out>/.cache``, where a lock file per entry has one of them build it while the others wait
(:mod:`ipdrl.algos.ipd_stages`), so that they run side by side once it is built. By default
the tasks run on a ``LocalCluster`` bound to 127.0.0.1 with one single-threaded worker per core (``pin_cores``:
each kept on its own cores, :class:`CoreShare`); ``scheduler`` (``tcp://HOST:PORT``) uses an existing cluster, whose
workers must see the same file system.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import signal
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ipdrl.config import require
from ipdrl.data.loading import dataset_label
from ipdrl.host import usable_cores
from ipdrl.storage import atomic_write_json

log = logging.getLogger("ipdrl")

SINGLE_THREAD_MATMULS = "--xla_cpu_multi_thread_eigen=false"  # every sweep run's XLA flags
IPDRL_TRAIN = [sys.executable, "-m", "ipdrl", "train"]


@dataclasses.dataclass
class Method:
    """One row of a sweep: an algorithm with its flags (and, optionally, its own seeds, datasets or budget)."""

    name: str
    algo: str
    flags: list[str] = dataclasses.field(default_factory=list)
    seeds: list[int] | None = None
    datasets: list[str] | None = None
    budget: str | None = None
    program: list[str] | None = None
    """A program other than ``ipdrl train`` taking ``--algo --dataset --seed --budget --run-dir`` (d3rlpy's rows)."""
    after: str | None = None
    """Another method of the sweep whose run of the same dataset and seed this one needs first."""


@dataclasses.dataclass
class Sweep:
    name: str
    methods: list[Method]
    datasets: list[str]
    seeds: list[int]
    out: str = "runs/sweeps"
    budget: str = "cpu"
    datasets_dir: str | None = None
    paired: list[list[str]] = dataclasses.field(default_factory=list)
    flags: list[str] = dataclasses.field(default_factory=list)
    """Flags of every method's runs, before the method's own (a later flag wins)."""
    group_seeds: bool = True
    """Train the seeds of one method on one dataset together in one process where the algorithm can."""

    def __post_init__(self) -> None:
        self.methods = _methods(self.name, self.methods)
        names = [m.name for m in self.methods]
        for method in self.methods:
            require(method.after is None or method.after in names[:names.index(method.name)],
                    f"sweep {self.name!r}: {method.name} runs after {method.after!r}, which must be an earlier method.")
        self.check()

    def check(self) -> None:
        """What must hold after the command line has narrowed or replaced the file's lists (``--methods``,
        ``--datasets``, ``--seeds``) too."""
        names = [m.name for m in self.methods]
        require(bool(self.methods), f"sweep {self.name!r} has no methods.")
        for seeds, where in [(self.seeds, "seeds"), *((m.seeds, f"{m.name}'s seeds") for m in self.methods)]:
            require(seeds is None or len(set(seeds)) == len(seeds), f"sweep {self.name!r}: {where} {seeds} repeat a "
                    f"seed; list each once.")
        require(bool(self.seeds) or all(m.seeds for m in self.methods), f"sweep {self.name!r} has no seeds to run.")
        every = sorted({d for m in self.methods for d in m.datasets or []} | set(self.datasets))
        labels = [dataset_label(d) for d in every]
        require(len(set(labels)) == len(labels), f"sweep {self.name!r}: datasets {every} share run-directory names "
                f"{labels}; give files different names.")
        for pair in self.paired:
            require(len(pair) == 2 and set(pair) <= set(names),
                    f"sweep {self.name!r}: paired {pair} must name two of its methods ({names}).")


def _methods(sweep: str, rows: list[Method | dict]) -> list[Method]:
    """Rows as methods; a row with ``extends`` starts from that earlier row (its name aside), its own settings
    replacing the earlier row's and its flags following the earlier row's, so a variant states only what it changes."""
    methods: dict[str, Method] = {}
    for row in rows:
        if isinstance(row, dict) and "extends" in row:
            row = dict(row)
            base = row.pop("extends")
            require(isinstance(base, str) and isinstance(row.get("flags", []), list),
                    f"sweep {sweep!r}: {row.get('name')} needs extends = \"NAME\" and flags = [\"--flag\", ...].")
            require(base in methods, f"sweep {sweep!r}: {row.get('name')} extends {base!r}, which must be an earlier "
                    f"method ({sorted(methods)}).")
            inherited = {k: v for k, v in dataclasses.asdict(methods[base]).items() if k != "name"}
            row = {**inherited, **row, "flags": inherited["flags"] + row.get("flags", [])}
        method = row if isinstance(row, Method) else Method(**row)
        require(method.name not in methods, f"sweep {sweep!r}: method names repeat ({method.name}); name each row.")
        methods[method.name] = method
    return list(methods.values())


@dataclasses.dataclass(frozen=True)
class Task:
    """One run of a sweep."""

    method: str
    algo: str
    dataset: str
    seed: int
    budget: str
    run_dir: str
    command: tuple[str, ...]
    after: str | None = None
    """The method whose task (same dataset and seed) must finish first."""
    after_dir: str | None = None
    """That task's run directory."""

    @property
    def label(self) -> str:
        return f"{self.method} on {self.dataset} (seed {self.seed})"

    @property
    def key(self) -> tuple[str, str, int]:
        """(method, dataset, seed): what names a run in a sweep and a row in its table."""
        return self.method, self.dataset, self.seed

    @property
    def after_key(self) -> tuple[str, str, int] | None:
        """The key of the run that must finish first (same dataset and seed), if any."""
        return None if self.after is None else (self.after, self.dataset, self.seed)

    def done(self) -> bool:
        return (Path(self.run_dir) / "results.json").exists()

    def changed_settings(self, saved: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
        """``{setting: (trained with, asked for now)}`` where this ``ipdrl train`` run's settings (its
        ``config.json``, or ``saved``: the copy in an evidence row) differ from what its command resolves to today
        (a preset or a default changed since it was started); empty where they agree, where it has not started, and
        for another program's run. Where its inputs live (:data:`LOCATION_SETTINGS`) is not compared: a sweep moved
        to another ``out`` is the same sweep."""
        if saved is None and Path(self.run_dir, "config.json").exists():
            saved = json.loads(Path(self.run_dir, "config.json").read_text())
        parsed = self.parsed() if saved is not None else None
        if parsed is None:
            return {}
        from ipdrl.pipelines import changed_settings

        changed = changed_settings(saved, parsed.algorithm.name, parsed.config)
        return {key: values for key, values in changed.items() if key not in LOCATION_SETTINGS}

    def parsed(self):
        """This run's ``ipdrl train`` flags as parsed today (its algorithm and config); None for another program."""
        if self.command[:len(IPDRL_TRAIN)] != tuple(IPDRL_TRAIN):
            return None
        from ipdrl.pipelines import parse_train_args

        flags = self.command[len(IPDRL_TRAIN):]
        try:
            return parse_train_args(list(flags))
        except SystemExit:  # tyro has printed why
            raise ValueError(f"`ipdrl train {' '.join(flags)}` (method {self.method}) no longer parses, see above: "
                             f"fix the sweep's flags for this version of ipdrl.") from None


# Settings that say where a run's inputs are (the sweep's `out` is in them), not how it trains.
LOCATION_SETTINGS = {"cache_dir", "iql_run", "world_model", "base_run", "models_from"}
STALE_CHOICES = ("refuse", "retrain", "keep")


def stale_runs(sweep: Sweep) -> dict[Task, str]:
    """The started runs whose settings are not what their command gives now, each with what changed; a run that
    comes after another (DWM-MPC on its ReBRAC base) is stale too when that one is, or when that one was trained
    again since it started (:func:`base_retrained`)."""
    found: dict[Task, str] = {}
    by_key = {task.key: task for task in tasks(sweep)}
    for task in by_key.values():
        changed = task.changed_settings()
        if changed:
            found[task] = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        elif task.after is not None and Path(task.run_dir, "config.json").exists():
            if by_key.get(task.after_key) in found:
                found[task] = f"it comes after {task.after_dir}, which is stale"
            elif why := base_retrained(task):
                found[task] = why
    return found


BASE_RECORD = "base.json"
"""What a run that comes after another started from: that run's directory and its weights' SHA-256."""


def weights_digest(run_dir: str | Path) -> str | None:
    """SHA-256 over a run's trained weights, its ``*.msgpack`` files by name and content (``checkpoint.msgpack``;
    DWM-MPC's model files). Not results.json, which ``ipdrl eval --save`` rewrites without training. None where there
    are none."""
    digest, files = hashlib.sha256(), sorted(Path(run_dir).glob("*.msgpack"))
    try:
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    except OSError as error:
        raise ValueError(f"cannot read {error.filename} ({error.strerror}), which a sweep compares to tell whether "
                         f"a run was trained again: make it readable.") from None
    return digest.hexdigest() if files else None


def record_base(task: Task) -> None:
    """Before ``task`` trains: which weights of its base it starts from (:data:`BASE_RECORD`). Rewritten until the
    run has trained (a start that failed before writing its config.json trained nothing); a run started before
    runs recorded it (a config.json, no record) is left without one rather than given today's."""
    if task.after_dir is not None and not Path(task.run_dir, "config.json").exists():
        atomic_write_json(Path(task.run_dir, BASE_RECORD),
                          {"run_dir": task.after_dir, "weights_sha256": weights_digest(task.after_dir)})


def base_record(task: Task) -> dict[str, Any] | None:
    """``task``'s :data:`BASE_RECORD`, or None where it has none."""
    path = Path(task.run_dir, BASE_RECORD)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        record = error
    if not isinstance(record, dict) or "weights_sha256" not in record:
        raise ValueError(f"{path} is not a base record written by `ipdrl sweep` ({record}): delete it, and the run "
                         f"is judged by file times, as runs from before the record are.")
    return record


def base_retrained(task: Task) -> str | None:
    """Why ``task``'s base was trained again since the run started, or None. Its weights are compared with the
    record, because a clone or a copy gives every file a new time; a run from before the record is judged by file
    times (its base's checkpoint written after its results)."""
    record = base_record(task)
    if record is not None:
        now = weights_digest(task.after_dir)
        return None if now is None or now == record["weights_sha256"] else \
            f"{task.after_dir} holds other weights than it started from: its {task.after} run was trained again"
    trained = Path(task.after_dir, "checkpoint.msgpack")
    if task.done() and trained.exists() and trained.stat().st_mtime > \
            Path(task.run_dir, "results.json").stat().st_mtime:
        return f"{trained} was written after it: its {task.after} run was trained again"
    return None


def handle_stale(sweep: Sweep, policy: str = "refuse") -> list[Path]:
    """Apply ``policy`` (:data:`STALE_CHOICES`) to :func:`stale_runs`: ``refuse`` raises a ValueError listing them,
    ``retrain`` moves each aside to ``<out>/.stale/TIME/<method>/`` (kept, not deleted) so that the sweep trains it
    again, ``keep`` leaves them to be tabulated as they are. Returns where the runs were moved."""
    require(policy in STALE_CHOICES, f"unknown stale-run policy {policy!r}; choose one of {STALE_CHOICES}.")
    stale = stale_runs(sweep)
    if not stale or policy == "keep":
        return []
    if policy == "refuse":
        listed = "\n".join(f"  {task.run_dir}: {why}" for task, why in stale.items())
        raise ValueError(f"sweep {sweep.name}: {len(stale)} run(s) were started with other settings than their "
                         f"command gives now (a preset or default changed since):\n{listed}\nRun the sweep with "
                         f"--retrain-stale (not --report-only) to move them aside to {Path(sweep.out) / '.stale'} and "
                         f"train them again, or with --keep-stale to tabulate the finished ones as they are.")
    aside = Path(sweep.out) / ".stale" / time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for task in stale:
        target = aside / task.method / Path(task.run_dir).name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(task.run_dir, target)
        log.warning("sweep %s: %s was started with other settings (%s); moved to %s to train it again",
                    sweep.name, task.run_dir, stale[task], target)
        moved.append(target)
    return moved


def load(path: str | Path) -> Sweep:
    """A sweep from a ``.toml``, ``.yaml`` or ``.yml`` file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no sweep file {path}.")
    if path.suffix == ".toml":
        import tomllib

        values = tomllib.loads(path.read_text())
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(path.read_text()) or {}  # an empty file is a sweep with nothing in it
    else:
        raise ValueError(f"{path}: a sweep is a .toml or .yaml file.")
    fields = {f.name for f in dataclasses.fields(Sweep)}
    unknown = set(values) - fields
    require(not unknown, f"{path}: unknown sweep settings {sorted(unknown)}; valid: {sorted(fields)}.")
    try:
        return Sweep(**values)
    except TypeError as error:  # a missing key, or a method with unknown keys
        raise ValueError(f"{path}: {error}. A sweep needs name, datasets, seeds and [[methods]] with name and "
                         f"algo.") from None


def tasks(sweep: Sweep) -> list[Task]:
    """Every run of the sweep, methods in order, then datasets, then seeds."""
    found = []
    for method in sweep.methods:
        budget = method.budget or sweep.budget
        for dataset in method.datasets if method.datasets is not None else sweep.datasets:
            for seed in method.seeds if method.seeds is not None else sweep.seeds:
                run_dir = _run_dir(sweep, method.name, dataset, seed)
                if method.program is None:
                    command = _train_command(sweep, method, budget, dataset, ["--seed", str(seed)], run_dir)
                else:
                    command = [*method.program, "--algo", method.algo, "--budget", budget, "--dataset", dataset,
                               "--seed", str(seed), "--run-dir", run_dir]
                after_dir = _run_dir(sweep, method.after, dataset, seed) if method.after else None
                found.append(Task(method.name, method.algo, dataset, seed, budget, run_dir,
                                  tuple(command + _flags(sweep, method, dataset, seed)), method.after, after_dir))
    return found


def _run_dir(sweep: Sweep, method: str, dataset: str, seed: int | str) -> str:
    """``<out>/<method>/<label>-s<seed>`` (``seed`` "{seed}": the pattern ``ipdrl train --seeds`` fills in)."""
    return str(Path(sweep.out) / method / f"{dataset_label(dataset)}-s{seed}")


def _train_command(sweep: Sweep, method: Method, budget: str, dataset: str, seeds: list[str], run_dir: str
                   ) -> list[str]:
    """``ipdrl train`` for one method on one dataset (``seeds``: ``--seed S`` or ``--seeds S1 S2 ...``)."""
    extra = ["--cache-dir", str(Path(sweep.out) / ".cache")] if method.algo == "ipd" else []
    return [*IPDRL_TRAIN, "--algo", method.algo, "--budget", budget, "--dataset", dataset, *seeds, "--run-dir", run_dir,
            "--resume", "--no-progress", *extra]


def _flags(sweep: Sweep, method: Method, dataset: str, seed: int | None) -> list[str]:
    """The sweep's and the method's flags with {dataset}, {label}, {seed} and {out} filled in."""
    filled = []
    for flag in sweep.flags + method.flags:
        try:
            filled.append(flag.format(dataset=dataset, label=dataset_label(dataset), seed=seed, out=Path(sweep.out)))
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise ValueError(f"sweep {sweep.name!r}: {method.name}'s flag {flag!r} cannot be filled in ({error!r}): "
                             f"a flag may name {{dataset}}, {{label}}, {{seed}} and {{out}}; write a literal brace as "
                             f"{{{{ or }}}}.") from None
    return filled


def _names_seed(flag: str) -> bool:
    """Whether ``flag`` fills in the seed (``{seed}``, ``{seed:03d}``, ...)."""
    try:
        return any(field == "seed" for _, field, _, _ in string.Formatter().parse(flag))
    except ValueError:  # an unbalanced brace: _flags names it
        return False


@dataclasses.dataclass(frozen=True)
class Job:
    """What one Dask task runs: one run, or seeds of one method on one dataset trained together."""

    runs: tuple[Task, ...]
    command: tuple[str, ...]

    @property
    def label(self) -> str:
        first = self.runs[0]
        seeds = ", ".join(str(task.seed) for task in self.runs)
        return f"{first.method} on {first.dataset} (seed{'s' if len(self.runs) > 1 else ''} {seeds})"

    def done(self) -> bool:
        return all(task.done() for task in self.runs)


def jobs(sweep: Sweep, todo: list[Task], workers: int) -> list[Job]:
    """``todo`` as jobs for ``workers`` workers: the seeds of a method on a dataset as one ``ipdrl train --seeds``
    process where its algorithm trains seeds together and nothing in its flags is per seed, split into more
    processes where there would otherwise be fewer jobs than workers; every other run alone."""
    methods = {method.name: method for method in sweep.methods}
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in todo:
        groups.setdefault((task.method, task.dataset), []).append(task)
    groupable = {key for key, runs in groups.items()
                 if sweep.group_seeds and len(runs) > 1 and _trains_seeds_together(methods[key[0]], sweep.flags)}
    count = sum(len(runs) for key, runs in groups.items() if key not in groupable) + len(groupable)
    parts = -(-workers // count) if 0 < count < workers else 1  # ceil: jobs enough for every worker
    found = []
    for key, runs in groups.items():
        if key not in groupable:
            found += [Job((task,), task.command) for task in runs]
            continue
        size = -(-len(runs) // min(parts, len(runs)))
        for start in range(0, len(runs), size):
            chunk = tuple(runs[start:start + size])
            found.append(Job(chunk, _seeds_command(sweep, methods[key[0]], chunk)) if len(chunk) > 1
                         else Job(chunk, chunk[0].command))
    return found


def _trains_seeds_together(method: Method, common_flags: list[str]) -> bool:
    from ipdrl.algos import get_algorithm

    per_seed = any(_names_seed(flag) for flag in common_flags + method.flags)
    return method.program is None and not per_seed and get_algorithm(method.algo).train_seeds is not None


def _seeds_command(sweep: Sweep, method: Method, runs: tuple[Task, ...]) -> tuple[str, ...]:
    """The ``ipdrl train --seeds`` command of ``runs`` (one method and dataset; no flag names ``{seed}``)."""
    first = runs[0]
    seeds = ["--seeds", *(str(task.seed) for task in runs)]
    command = _train_command(sweep, method, first.budget, first.dataset, seeds,
                             _run_dir(sweep, method.name, first.dataset, "{seed}"))
    return tuple(command + _flags(sweep, method, first.dataset, None))


# ---- running one job (on a worker) ---------------------------------------------------------------------------
def _libc_prctl():
    """libc's prctl, looked up here and not in the child between fork and exec, where loading a library can
    deadlock on a lock another thread of the worker held at the fork."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None


_PRCTL = _libc_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A run must not outlive its worker: a killed worker's rerun would race with it on the run directory."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_job(job: Job, env: dict[str, str] | None = None, after: Any = None) -> list[dict[str, Any]]:
    """Run ``job`` (unless its runs are done) in a subprocess; its output goes to ``sweep.log`` in its first run's
    directory. Returns the runs' rows; a failure raises with the log's last lines. ``after``: the result of the job
    it waited for."""
    if not job.done():
        log_path = Path(job.runs[0].run_dir) / "sweep.log"
        for task in job.runs:
            Path(task.run_dir).mkdir(parents=True, exist_ok=True)
            record_base(task)
            if task is not job.runs[0]:
                with open(Path(task.run_dir) / "sweep.log", "a") as note:
                    note.write(f"\n$ {' '.join(job.command)}\n(trained with other seeds; output in {log_path})\n")
        call_logged(job.command, log_path, env, job.label)
    return [run_row(task) for task in job.runs]


def call_logged(command: tuple[str, ...] | list[str], log_path: Path, env: dict[str, str] | None, label: str) -> None:
    """Run ``command`` as a worker's task: XLA's matmuls on one thread (``SINGLE_THREAD_MATMULS``), glibc's default
    memory trimming, output appended to ``log_path``, killed with the worker; a failure raises with the log's last
    lines."""
    environment = {**os.environ, **(env or {})}
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers so that they hand freed memory back to the OS. A
    # run inherits it, and glibc then trims on XLA's buffer churn at every step: an IQL update runs a quarter slower
    # (README, "Sweeps"). A run is a process of its own that frees everything when it exits, so it goes without.
    environment.pop("MALLOC_TRIM_THRESHOLD_", None)
    # On a GPU, JAX takes 75% of its memory at start; runs sharing one would fail but the first.
    environment.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    environment["XLA_FLAGS"] = f"{environment.get('XLA_FLAGS', '')} {SINGLE_THREAD_MATMULS}".strip()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as output:
        output.write(f"\n$ {' '.join(command)}\n".encode())
        output.flush()
        code = subprocess.call(list(command), stdout=output, stderr=subprocess.STDOUT, env=environment,
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{label} failed (exit {code}); the end of {log_path}:\n" + "\n".join(tail))


def run_row(task: Task) -> dict[str, Any]:
    """The evidence row of a finished run (the schema of ``docs/evidence/README.md``)."""
    results = json.loads((Path(task.run_dir) / "results.json").read_text())
    if results.get("normalized_mean") is not None and results.get("normalized_scores") is None:
        raise ValueError(f"{task.run_dir}/results.json has a score but no per-episode scores "
                         f"(`normalized_scores`), which every evidence row lists: it was written by an older ipdrl. "
                         f"Re-evaluate it with `ipdrl eval {task.run_dir} --save` (a `program` row: rerun its "
                         f"program with --overwrite).")
    return {
        "method": task.method,
        "algo": task.algo,
        "dataset": task.dataset,
        "dataset_fingerprint": results.get("dataset_fingerprint"),
        "seed": task.seed,
        "normalized_score": results.get("normalized_mean"),
        "episode_scores": results.get("normalized_scores"),
        "return_mean": results.get("return_mean"),
        "episode_returns": results.get("returns"),
        "reference_table": results.get("reference_table"),
        "budget": task.budget,
        "steps": results.get("steps"),
        "train_seconds": results.get("train_seconds"),
        "finished_on": results.get("finished_on"),  # rows of one table may come from several machines
        "checkpoint": results.get("checkpoint", "final"),
        "command": " ".join(task.command[2:] if task.command[:2] == tuple(IPDRL_TRAIN[:2]) else task.command),
        "run_dir": task.run_dir,
        # so that a table finished on another machine can still check this row's settings (`--keep-missing`)
        "settings": json.loads(config.read_text()) if (config := Path(task.run_dir, "config.json")).exists() else None,
        "base_weights_sha256": (base_record(task) or {}).get("weights_sha256"),  # for `--keep-missing`
    }


def core_share(index: int, workers: int, cores: list[int]) -> set[int]:
    """The cores that worker ``index`` of ``workers`` keeps: every ``workers``-th usable core from its own, or one
    core where workers outnumber cores (an index past ``workers``, from a cluster scaled up later, wraps round)."""
    return set(cores[index % workers::workers]) if workers <= len(cores) else {cores[index % len(cores)]}


class CoreShare(WorkerPlugin):
    """A Dask worker plugin: each worker of a local cluster, and every run it starts, keeps its own share of the
    machine's cores (:func:`core_share`). XLA sizes its thread pools from this affinity mask; the flags
    (``SINGLE_THREAD_MATMULS``) alone still give each run a thread per core, so busy workers share every core. A
    pinned run computes some reductions in another order than an unpinned one, so its results differ in the last bits
    from ``ipdrl train``'s alone on the same machine (README, "Sweeps")."""

    def __init__(self, workers: int):
        self.workers = workers

    def setup(self, worker) -> None:
        if isinstance(worker.name, int) and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, core_share(worker.name, self.workers, sorted(os.sched_getaffinity(0))))
        else:
            log.warning("--pin-cores: worker %r left on every core (pinning needs Linux and a local cluster)",
                        worker.name)


def local_cluster(workers: int, pin_cores: bool = False):
    """A Dask ``LocalCluster`` on 127.0.0.1 with ``workers`` single-threaded worker processes (with ``pin_cores``
    each on its own share of the cores: :class:`CoreShare`), its connection chatter kept out of the console (warnings
    and errors still show)."""
    from distributed import LocalCluster

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The dashboard's HTTP server starts anyway (None means its default port 8787): a free port, so that two sweeps
    # at once do not warn about it.
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", silence_logs=logging.WARNING,
                        plugins=[CoreShare(workers)] if pin_cores else [])


# ---- running a sweep ----------------------------------------------------------------------------------------------
def run(sweep: Sweep, scheduler: str | None = None, workers: int | None = None, progress: bool = True,
        stale: str = "refuse", pin_cores: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every run not done yet on Dask (as :func:`jobs`), after applying the ``stale`` policy to finished runs
    whose settings changed (:func:`handle_stale`); returns (rows of the finished runs, failure reports)."""
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    if scheduler is not None:  # a cluster's workers start in directories of their own: give them absolute paths
        sweep = copy.copy(sweep)  # not dataclasses.replace: its checks would refuse a base left out by --methods
        sweep.out = str(Path(sweep.out).resolve())
        sweep.datasets_dir = str(Path(sweep.datasets_dir).resolve()) if sweep.datasets_dir else None
    handle_stale(sweep, stale)
    todo = [task for task in tasks(sweep) if not task.done()]
    submitting = {task.key for task in todo}
    for task in todo:  # a run whose base is left out of this sweep (--methods) needs that base finished
        base = Path(task.after_dir) if task.after else None
        require(base is None or task.after_key in submitting or (base / "results.json").exists(),
                f"sweep {sweep.name}: {task.method} on {task.dataset} seed {task.seed} comes after {task.after}, "
                f"whose run {base} has not finished and is not part of this sweep. Add {task.after} to --methods, "
                f"or finish that run first.")
    folders = [*os.environ.get("IPDRL_DATASETS", "").split(os.pathsep), sweep.datasets_dir or ""]
    env = {"IPDRL_DATASETS": os.pathsep.join(str(Path(f).resolve()) if scheduler else f for f in folders if f)}
    failures: list[str] = []
    if todo:
        cluster = local_cluster(workers or usable_cores(), pin_cores) if scheduler is None else None
        with Client(scheduler or cluster) as client:
            futures: dict[Any, Job] = {}
            submitted: dict[tuple[str, str, int], Any] = {}
            # methods come in order, so a run's predecessor is submitted before it
            for job in jobs(sweep, todo, sum(client.nthreads().values())):
                before = [submitted[task.after_key] for task in job.runs if task.after_key in submitted]
                first = job.runs[0]
                seeds = "-".join(str(task.seed) for task in job.runs)
                future = client.submit(run_job, job, env, before, pure=False,
                                       key=f"{sweep.name}:{first.method}:{first.dataset}:{seeds}")
                futures[future] = job
                submitted.update({task.key: future for task in job.runs})
            bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="run", disable=not progress,
                       dynamic_ncols=True)
            for future in as_completed(futures):
                job = futures[future]
                if future.status == "error":
                    failures.append(f"{job.label}: {future.exception()}")
                    log.error("sweep %s: %s", sweep.name, failures[-1].splitlines()[0])
                bar.update(len(job.runs))
                # A worker's "processing" set includes tasks queued behind the one it runs.
                processing = client.processing()
                running = sum(min(len(processing.get(w, ())), n) for w, n in client.nthreads().items())
                bar.set_postfix(running=running, failed=len(failures))
            bar.close()
        if cluster is not None:
            cluster.close()
    rows = [run_row(task) for task in tasks(sweep) if task.done()]
    return rows, failures
