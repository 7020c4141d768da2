"""What every benchmark script prints first: which spatialreward (path,
commit, uncommitted changes) on which machine (Python, CPUs, load)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def header(*versions: str) -> None:
    """Two lines: the package and its commit; Python, ``versions`` (e.g. "ray 2.60.0"), CPUs and load."""
    import spatialreward

    where = Path(spatialreward.__file__).resolve()
    commit = ""
    try:
        commit = subprocess.run(["git", "-C", str(where.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where.parent), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (uncommitted changes under cli/)" if dirty else " (clean)"
    except (OSError, subprocess.SubprocessError):
        pass
    print(f"spatialreward: {where}  commit {commit or '?'}")
    print(", ".join([f"python {platform.python_version()}", *versions, f"{os.cpu_count()} CPUs"])
          + f", load average {load_average()}", flush=True)
