"""The machine a run trains on, recorded in its results.json and named by every benchmark."""

from __future__ import annotations

import contextlib
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
