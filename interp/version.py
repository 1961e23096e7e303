"""The code version recorded in every artifact (package version + git commit when known)."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                                capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return __version__
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5)
        suffix = ".dirty" if dirty.stdout.strip() else ""
        return f"{__version__}+g{commit.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        return __version__
