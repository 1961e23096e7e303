"""Start the Streamlit app (``apps/interp_app.py``) on a run folder: ``interp app RUN`` and
the end of ``interp demo``. The app only reads the run folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from interp.errors import DataError
from interp.models.zoo import REPO_ROOT

APP_SCRIPT = REPO_ROOT / "apps" / "interp_app.py"


def app_url(port: int, address: str = "localhost") -> str:
    return f"http://{address}:{port}"


def app_command(run: str | Path, port: int = 8501, address: str = "localhost"
                ) -> tuple[list[str], dict]:
    """(command, environment) that serve the app on ``run`` at ``address:port``."""
    if not Path(run).exists():
        raise DataError(f"no run folder at {run}; create one with `interp harvest` or "
                        f"`make demo`")
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
           "--server.port", str(port), "--server.address", address,
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    env = {**os.environ, "INTERP_RUN": str(Path(run).resolve())}
    return cmd, env


def serve(run: str | Path, port: int = 8501, address: str = "localhost") -> int:
    """Serve the app until it is stopped (Ctrl-C); returns streamlit's exit code."""
    cmd, env = app_command(run, port, address)
    print(f"interp app for {run}: {app_url(port, address)}  (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0
