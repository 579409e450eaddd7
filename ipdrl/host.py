"""The machine a run trains on, recorded in its results.json and named by every benchmark, and where its compiled
programs are kept."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Any


@functools.cache  # read once: cpu_name and the compiled-program folder both need it
def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in ``/proc/cpuinfo`` (none where there is no such file)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """The CPU's model name with its family and model numbers from ``/proc/cpuinfo``: one name (a virtual machine's
    "AMD EPYC", say) covers generations with different vector units, and so different speeds and last bits."""
    fields = _cpuinfo()
    name = fields.get("model name", platform.processor() or "unknown CPU")
    if "cpu family" not in fields:
        return name
    return f"{name} (family {fields['cpu family']}, model {fields.get('model', '?')})"


def usable_cores() -> int:
    """Cores this process may run on (``taskset`` or a cluster's share may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host() -> dict[str, Any]:
    """Where this process trains, for results.json. A run's last bits depend on the CPU and on how many cores XLA may
    use (it splits some reductions by its thread count: README, "Sweeps"), so the same seed reproduces only where
    these match."""
    import jax  # here, not at the top: benchmarks name their CPU before they pin themselves and start JAX

    return {"cpu": cpu_name(), "cores": usable_cores(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__, "backend": jax.default_backend(),
            # where compiled programs were looked up: train_seconds leaves out compiling what was found there
            "compilation_cache": jax.config.jax_compilation_cache_dir}


COMPILATION_CACHE_ENV = "IPDRL_COMPILATION_CACHE"
COMPILATION_CACHE_BYTES = 2 << 30  # per folder; least recently used programs go beyond this


def compilation_cache_dir() -> Path | None:
    """Where compiled XLA programs are kept (README, "Run directory"), or None where ``$IPDRL_COMPILATION_CACHE`` is
    ``off``: that folder, or ``~/.cache/ipdrl/xla``, then one subfolder per CPU (name, instruction sets) and number
    of usable cores. XLA compiles for the host's vector units, and splits loops by the cores it may use; neither is
    in JAX's own key, and a cluster's nodes may share a home directory."""
    setting = os.environ.get(COMPILATION_CACHE_ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    root = Path(setting or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ipdrl" / "xla")
    machine = f"{cpu_name()}|{_cpuinfo().get('flags', '')}|{platform.machine()}|{usable_cores()} cores"
    return root.expanduser().absolute() / hashlib.sha1(machine.encode()).hexdigest()[:12]


def drop_half_written_programs(folder: Path) -> None:
    """Delete what a process killed while writing a program left behind. JAX writes a program's file, then its
    access time; a program file without one may be cut short, and JAX would neither replace it (the name exists) nor
    evict it, so it would be compiled again in every process, and the missing file breaks JAX's eviction."""
    import filelock

    with contextlib.suppress(filelock.Timeout), filelock.FileLock(folder / ".lockfile", timeout=10):
        names = {path.name for path in folder.iterdir()}
        for name in names:
            key, dash, suffix = name.rpartition("-")
            partner = {"cache": "atime", "atime": "cache"}.get(suffix) if dash else None
            if partner and f"{key}-{partner}" not in names:
                (folder / name).unlink(missing_ok=True)


def use_compilation_cache() -> Path | None:
    """Keep compiled XLA programs on disk between processes, in :func:`compilation_cache_dir` (JAX's own
    ``$JAX_COMPILATION_CACHE_DIR``, when set, is left to JAX). Call before the first jitted call. Returns the folder
    in use, or None."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    try:
        folder = compilation_cache_dir()
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder} is not writable")
        drop_half_written_programs(folder)
    except (OSError, RuntimeError) as err:  # RuntimeError: no home directory to be found
        logging.getLogger(__name__).warning("compiled programs are not kept (%s); set %s to a writable folder, or to "
                                            "'off'", err, COMPILATION_CACHE_ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # A size limit turns on JAX's file lock, so that processes sharing the folder never read a program being written.
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return folder
