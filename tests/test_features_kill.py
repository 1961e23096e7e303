"""A feature-store build killed with SIGKILL leaves no partial store at its output path, and
the same command run again succeeds (removing what the killed writer left beside it)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interp.features import FeatureStore
from interp.features.build import remove_stale_temps, temp_path

SAE = "othello/blocks.3.hook_resid_post/topk"
ROOT = Path(__file__).resolve().parents[1]


def features_argv(out: Path, tokens: int) -> list[str]:
    return [sys.executable, "-m", "interp.cli", "features", "--sae", SAE,
            "--tokens", str(tokens), "--out", str(out)]


def leftovers(folder: Path) -> list[str]:
    """Files beside the store that are neither the store, its config nor an output lock."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in ("f.duckdb", "f.config.yaml") and not p.name.endswith(".lock"))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_sigkill_while_streaming_leaves_no_store_and_the_rerun_succeeds(tmp_path):
    out = tmp_path / "f.duckdb"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(features_argv(out, 200_000), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # wait until it streams (the progress bar shows), then kill it mid-way
        seen, t0 = b"", time.time()
        os.set_blocking(proc.stderr.fileno(), False)
        while b"features:" not in seen:
            assert proc.poll() is None, f"the build ended early: {seen.decode(errors='replace')}"
            assert time.time() - t0 < 300, "the build did not start streaming in 300 s"
            seen += proc.stderr.read() or b""
            time.sleep(0.2)
        time.sleep(2)
        assert proc.poll() is None, "the build finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed build left a store at the output path"
    assert leftovers(tmp_path) == [], leftovers(tmp_path)

    # what a writer killed between its DuckDB file and the os.replace would leave
    stale = temp_path(out, dead_pid())
    stale.write_bytes(b"half a DuckDB file")
    Path(str(stale) + ".wal").write_bytes(b"wal")
    r = subprocess.run(features_argv(out, 2_000), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path) == [], leftovers(tmp_path)
    with FeatureStore(out) as fs:
        assert fs.meta["n_tokens"] >= 2_000 and fs.d_sae == 2048
        assert fs.feature(0)["latent"] == 0


def test_stale_temps_of_dead_writers_only_are_removed(tmp_path):
    out = tmp_path / "f.duckdb"
    dead = temp_path(out, dead_pid())
    live = temp_path(out, os.getppid())  # a running process: a writer still at work
    spill = Path(str(dead) + ".tmp")
    for p in (dead, Path(str(dead) + ".wal"), live, tmp_path / ".other.duckdb.tmp-1"):
        p.write_bytes(b"x")
    spill.mkdir()
    (spill / "block").write_bytes(b"x")
    removed = remove_stale_temps(out)
    assert sorted(p.name for p in removed) == sorted(
        [dead.name, dead.name + ".wal", spill.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, ".other.duckdb.tmp-1"])
