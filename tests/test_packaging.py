"""What a new user installs: supported Pythons, the exact GPU extra, and the README's test command's summary."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_python_3_11_3_12_and_3_13_are_supported():
    from packaging.specifiers import SpecifierSet

    supported = SpecifierSet(PROJECT["requires-python"])
    assert all(version in supported for version in ("3.11.7", "3.12.1", "3.13.0"))
    assert all("==" in requirement for requirement in PROJECT["dependencies"])  # pinned, so every Python gets one stack


def test_the_gpu_extra_pins_the_cuda_build_of_the_jax_in_use():
    jax_pin = next(r for r in PROJECT["dependencies"] if r.startswith("jax=="))
    assert PROJECT["optional-dependencies"]["cuda12"] == [f"jax[cuda12]=={jax_pin.split('==')[1]}"]
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[cuda12]"' in readme


def test_the_readme_test_command_ends_with_a_summary_line():
    command = re.search(r"python -m pytest[^\n`]*", (REPO / "README.md").read_text()).group(0).split()[1:]
    result = subprocess.run([sys.executable, *command, "tests/test_packaging.py::test_python_3_11_3_12_and_3_13_are_supported"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout[-2000:]
