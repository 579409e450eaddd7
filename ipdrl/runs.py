"""Run directories: resolved config, metrics (JSONL + CSV, optional TensorBoard), atomic checkpoints, plots.

Layout of a run directory::

    config.json          the resolved configuration (algorithm name included)
    metrics.jsonl        one JSON object per logged step: {"step", "train/...", "eval/normalized_score", ...}
    metrics.csv          the same rows as CSV
    checkpoint.msgpack   latest train state (flax.serialization), written atomically
    checkpoint.json      {"step": ...} of that checkpoint
    results.json         final evaluation of the final checkpoint
    learning_curve.png   training losses and evaluation score against steps
    log.txt              plain text log
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np


def atomic_replace(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary file onto ``path`` in one step, with the permissions a plain write would give
    (temporary files are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        atomic_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


class Run:
    """One run directory. Create with :meth:`create` (new or resumed) or :meth:`open` (existing, read-only use)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.logger = logging.getLogger(f"ipdrl.run.{self.path.name}")

    # ---- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: Mapping[str, Any], resume: bool = False) -> "Run":
        """Make the run directory and save the config. With ``resume`` an existing run must have the same config."""
        run = cls(Path(path))
        config_path = run.path / "config.json"
        if config_path.exists():
            if not resume:
                raise FileExistsError(
                    f"run directory {run.path} already holds a run. Pass --resume to continue it, or choose "
                    f"another --run-dir."
                )
            saved = json.loads(config_path.read_text())
            fresh = json.loads(json.dumps(dict(config), default=_json_default))
            changed = {k for k in set(saved) | set(fresh) if saved.get(k) != fresh.get(k) and k not in _RESUME_FREE}
            if changed:
                raise ValueError(
                    f"cannot resume {run.path}: the configuration differs in {sorted(changed)}. Resume with the "
                    f"same settings, or start a new --run-dir."
                )
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_path, dict(config))
        run._attach_file_log()
        return run

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
        """Atomically save a train state pytree; the step file is written after the state it describes."""
        host_state = jax.device_get(state)
        atomic_write_bytes(self.path / f"{name}.msgpack", flax.serialization.to_bytes(host_state))
        atomic_write_json(self.path / f"{name}.json", {"step": int(step)})

    def has_checkpoint(self, name: str = "checkpoint") -> bool:
        return (self.path / f"{name}.json").exists() and (self.path / f"{name}.msgpack").exists()

    def load_checkpoint(self, template: Any, name: str = "checkpoint") -> tuple[Any, int]:
        """Restore a state saved by :meth:`save_checkpoint` into the structure of ``template``."""
        path = self.path / f"{name}.msgpack"
        try:
            state = flax.serialization.from_bytes(template, path.read_bytes())
        except Exception as err:  # msgpack raises several types for corrupt bytes
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(err).__name__}: {err}). It is corrupt or was written by "
                f"a different configuration or ipdrl version; delete it to restart the run."
            ) from None
        step = json.loads((self.path / f"{name}.json").read_text())["step"]
        return state, int(step)

    # ---- metrics ---------------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        self._write_csv()
        self._write_tensorboard(step, metrics)

    def metrics(self) -> list[dict[str, float]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after ``after_step`` (a resumed run repeats them from its checkpoint)."""
        rows = [r for r in self.metrics() if r["step"] <= after_step]
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        self._write_csv()

    def _write_csv(self) -> None:
        rows = self.metrics()
        keys = sorted({k for r in rows for k in r if k != "step"})
        path = self.path / "metrics.csv"
        with open(path.with_suffix(".csv.tmp"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *keys])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(path.with_suffix(".csv.tmp"), path)

    def _write_tensorboard(self, step: int, metrics: Mapping[str, float]) -> None:
        if os.environ.get("IPDRL_TENSORBOARD", "0") != "1":
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self.logger.warning("IPDRL_TENSORBOARD=1 but tensorboardX is not installed: pip install tensorboardX")
            return
        with SummaryWriter(str(self.path / "tensorboard")) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)

    # ---- results ---------------------------------------------------------------------------------
    def save_results(self, results: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / "results.json", dict(results))

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
        fig.savefig(out.with_suffix(".tmp.png"), dpi=90)
        plt.close(fig)
        os.replace(out.with_suffix(".tmp.png"), out)
        return out


# Settings that may change between a run and its resumption without changing its result.
_RESUME_FREE = {"resume", "run_dir", "progress"}
