"""Run directories: resolved config, metrics (JSONL + CSV, optional TensorBoard), atomic checkpoints, plots.

Layout of a run directory::

    config.json          the resolved configuration (algorithm name included)
    .lock                held by the process training the run, so that no second one resumes it at the same time
    metrics.jsonl        one JSON object per logged step: {"step", "train/...", "eval/normalized_score", ...}
    metrics.csv          the same rows as CSV
    checkpoint.msgpack   latest train state and its step (flax.serialization), written atomically
    checkpoint.json      {"step": ...} of that checkpoint, for reading
    tensorboard/         TensorBoard events of the same rows (with IPDRL_TENSORBOARD=1)
    results.json         final evaluation of the final checkpoint
    learning_curve.png   training losses and evaluation score against steps
    log.txt              plain text log
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np

from ipdrl.storage import atomic_path, atomic_write_bytes, atomic_write_json, json_default


class Run:
    """One run directory. Create with :meth:`create` (new or resumed) or :meth:`open` (existing, read-only use)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.logger = logging.getLogger(f"ipdrl.run.{self.path.name}")
        self._writer = None

    # ---- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: Mapping[str, Any], resume: bool = False,
               defaults: Mapping[str, Any] | None = None) -> "Run":
        """Make the run directory and save the config. With ``resume`` an existing run must have the same config; a
        setting its saved config lacks (the run predates the setting) counts as ``defaults``' value of it."""
        run = cls(Path(path))
        config_path = run.path / "config.json"
        if config_path.exists():
            if not resume:
                raise FileExistsError(
                    f"run directory {run.path} already holds a run. Pass --resume to continue it, or choose "
                    f"another --run-dir."
                )
            changed = run.changed_settings(config, defaults)
            if changed:
                raise ValueError(
                    f"cannot resume {run.path}: the configuration differs in {sorted(changed)}. Resume with the "
                    f"same settings, or start a new --run-dir."
                )
        run.path.mkdir(parents=True, exist_ok=True)
        _claim(run.path)
        atomic_write_json(config_path, dict(config))
        run._attach_file_log()
        return run

    def changed_settings(self, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                         ) -> dict[str, tuple[Any, Any]]:
        """``{setting: (saved, given)}`` for every setting of ``config`` that differs from this run's saved one,
        nested settings as ``stage.name``. A setting the saved config lacks (the run predates it) counts as
        ``defaults``' value of it; settings that only change how a run is followed (``_RESUME_FREE``) are left out."""
        return setting_changes(self.config, config, defaults)

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        run = cls(Path(path))
        if not (run.path / "config.json").exists():
            raise FileNotFoundError(
                f"{run.path} is not a run directory (no config.json). Pass the directory `ipdrl train` created."
            )
        return run

    def _attach_file_log(self) -> None:
        handler = logging.FileHandler(self.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)
        self.logger.setLevel(logging.INFO)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, state: Any, step: int, name: str = "checkpoint") -> None:
        """Atomically save a train state pytree together with its step, in one file (a kill between two files
        could pair a state with another step); ``<name>.json`` repeats the step for people and tools."""
        host_state = jax.device_get(state)
        atomic_write_bytes(self.path / f"{name}.msgpack",
                           flax.serialization.to_bytes({"state": host_state, "step": np.int64(step)}))
        atomic_write_json(self.path / f"{name}.json", {"step": int(step)})

    def has_checkpoint(self, name: str = "checkpoint") -> bool:
        return (self.path / f"{name}.msgpack").exists()

    def load_checkpoint(self, template: Any, name: str = "checkpoint") -> tuple[Any, int]:
        """Restore a state saved by :meth:`save_checkpoint` into the structure of ``template``, and its step."""
        path = self.path / f"{name}.msgpack"
        try:
            saved = flax.serialization.from_bytes({"state": template, "step": np.int64(0)}, path.read_bytes())
        except Exception as err:  # msgpack raises several types for corrupt bytes
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(err).__name__}: {err}). It is corrupt or was written by "
                f"a different configuration or ipdrl version; delete it to restart the run."
            ) from None
        return saved["state"], int(saved["step"])

    # ---- metrics ---------------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row (JSONL, then the CSV and, with IPDRL_TENSORBOARD=1, the run's one TensorBoard writer,
        flushed so that what was logged is on disk even if the process is killed)."""
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._write_csv()
        writer = self._tensorboard()
        if writer is not None:
            self._add_scalars(writer, row)
            writer.flush()

    def metrics(self) -> list[dict[str, float]]:
        """Every logged row; a last line cut short by a killed process is left out (a resume rewrites the file)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_metrics(self, after_step: int, stage: str = "") -> None:
        """Drop the rows of ``stage`` (all rows when "") logged after ``after_step``: a resumed run repeats them
        from its checkpoint. The TensorBoard events are rewritten from what remains, so no step appears twice."""
        mine = lambda row: not stage or any(key.startswith(stage) for key in row)
        rows = [r for r in self.metrics() if r["step"] <= after_step or not mine(r)]
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        self._write_csv()
        if self._tensorboard() is not None:
            self.close()
            for event_file in (self.path / "tensorboard").glob("events.out.tfevents.*"):
                event_file.unlink()
            writer = self._tensorboard()
            for row in rows:
                self._add_scalars(writer, row)
            writer.flush()

    def _write_csv(self) -> None:
        import io

        rows = self.metrics()
        keys = sorted({k for r in rows for k in r if k != "step"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["step", *keys])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path / "metrics.csv", text.getvalue().encode())

    def _tensorboard(self):
        """The run's TensorBoard writer, opened once (None unless IPDRL_TENSORBOARD=1)."""
        if os.environ.get("IPDRL_TENSORBOARD", "0") != "1":
            return None
        if self._writer is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ValueError("IPDRL_TENSORBOARD=1 needs tensorboardX: pip install -e \".[tensorboard]\" (or unset "
                                 "IPDRL_TENSORBOARD).") from None
            self._writer = SummaryWriter(str(self.path / "tensorboard"))
        return self._writer

    @staticmethod
    def _add_scalars(writer, row: Mapping[str, float]) -> None:
        for key, value in row.items():
            if key != "step":
                writer.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        """Close the TensorBoard writer (if one is open); logging again reopens it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- results ---------------------------------------------------------------------------------
    def save_results(self, results: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / "results.json", dict(results))
        _release(self.path)  # finished: another process may now read, re-evaluate or extend it

    def results(self) -> dict[str, Any]:
        return json.loads((self.path / "results.json").read_text())

    def plot(self) -> Path:
        """Plot every logged metric against steps into ``learning_curve.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.metrics()
        keys = sorted({k for r in rows for k in r if k != "step"})
        keys = [k for k in keys if k.startswith("eval/normalized") or k.startswith("train/")] or keys
        cols = min(3, max(1, len(keys)))
        nrows = max(1, -(-len(keys) // cols))
        fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step")
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        config = self.config
        fig.suptitle(f"{config.get('algo', '')} on {config.get('dataset', '')} (seed {config.get('seed', '')})")
        fig.tight_layout()
        out = self.path / "learning_curve.png"
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
        return out


_CLAIMED: dict[Path, Any] = {}  # run directories this process trains, each with its lock file held open


def _claim(path: Path) -> None:
    """Lock ``path`` for this process until its results are saved or the process exits (the OS drops the lock of a
    killed process). A second process resuming the same run (a rerun sweep while the first one's run still trains on
    a cluster, the same command in two terminals) would overwrite its checkpoints; it stops here instead."""
    key = path.resolve()
    if key in _CLAIMED or sys.platform == "win32":
        return
    import fcntl

    handle = open(key / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RuntimeError(f"run directory {path} is being trained by {holder}. Wait for it to finish, or stop it, "
                           f"then run this again.") from None
    except OSError:  # a file system without locks (some network mounts): train unprotected
        handle.close()
        return
    handle.truncate(0)
    handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    _CLAIMED[key] = handle


def _release(path: Path) -> None:
    handle = _CLAIMED.pop(path.resolve(), None)
    if handle is not None:
        handle.close()


def setting_changes(saved: Mapping[str, Any], config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                    ) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved, given)}`` for every setting of ``config`` that differs from ``saved`` (a run's
    ``config.json``, or the copy an evidence table keeps of it), as :meth:`Run.changed_settings` describes."""
    given = json.loads(json.dumps(dict(config), default=json_default))
    saved = _with_defaults(saved, json.loads(json.dumps(dict(defaults or {}), default=json_default)))
    return {name: values for name, values in _differences(saved, given).items()
            if name.split(".")[0] not in _RESUME_FREE}


# Settings that may change between a run and its resumption without changing its result.
_RESUME_FREE = {"resume", "run_dir", "progress"}


def _with_defaults(saved: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` with what it lacks taken from ``defaults``, nested settings key by key."""
    merged = {**defaults, **saved}
    for name, value in saved.items():
        if isinstance(value, dict) and isinstance(defaults.get(name), dict):
            merged[name] = _with_defaults(value, defaults[name])
    return merged


def _differences(saved: Mapping[str, Any], given: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    found: dict[str, tuple[Any, Any]] = {}
    for name in sorted(set(saved) | set(given)):
        old, new = saved.get(name), given.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            found.update(_differences(old, new, f"{prefix}{name}."))
        elif old != new:
            found[prefix + name] = (old, new)
    return found
