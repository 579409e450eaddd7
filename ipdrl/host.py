"""The machine a run trains on, recorded in its results.json and named by every benchmark, and where its compiled
programs are kept."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name with its family and model numbers from ``/proc/cpuinfo``: one name (a virtual machine's
    "AMD EPYC", say) covers generations with different vector units, and so different speeds and last bits."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
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
            "jax": jax.__version__, "backend": jax.default_backend()}


COMPILATION_CACHE_ENV = "IPDRL_COMPILATION_CACHE"
COMPILATION_CACHE_BYTES = 2 << 30  # least recently used programs go beyond this


def _cpu_features() -> str:
    """The CPU's name and instruction-set flags: XLA compiles for the host's vector units, so a program compiled on
    one CPU may not run on another that shares a home directory (a cluster's nodes)."""
    flags = ""
    with contextlib.suppress(OSError):
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return f"{cpu_name()}|{flags}|{platform.machine()}"


def compilation_cache_dir() -> Path | None:
    """Where compiled XLA programs are kept between processes, or None where ``$IPDRL_COMPILATION_CACHE`` is ``off``.

    ``$IPDRL_COMPILATION_CACHE`` names the folder (default ``$XDG_CACHE_HOME/ipdrl/xla``, i.e. ``~/.cache/ipdrl/xla``);
    programs go in a subfolder per CPU (``_cpu_features``)."""
    setting = os.environ.get(COMPILATION_CACHE_ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    root = Path(setting or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ipdrl" / "xla")
    cpu = hashlib.sha1(_cpu_features().encode()).hexdigest()[:12]
    return root.expanduser().absolute() / cpu


def use_compilation_cache() -> Path | None:
    """Keep compiled XLA programs on disk, so that a run whose programs some earlier run compiled skips compiling
    (the seeds of ``ipdrl run --seeds 0 1 2 3 4`` after the first two, which start together; a sweep's runs after
    the first of each shape; every rerun).
    A cached program gives the same bits as compiling it again (tests/test_core.py checks). Call before the first
    jitted call; JAX's own ``$JAX_COMPILATION_CACHE_DIR``, when set, is left to JAX. Returns the folder in use."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    folder = compilation_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logging.getLogger(__name__).warning("compiled programs are not kept (%s); set %s to a writable folder, or to "
                                            "'off'", err, COMPILATION_CACHE_ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # A size limit turns on JAX's file lock, which keeps processes that share the folder from reading half-written
    # programs.
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return folder
