"""A harvest killed with SIGKILL (no cleanup at all) and run again with the same command
finishes the store that an uninterrupted harvest writes, byte for byte."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interp.activations.store import ActivationStore, IncompleteStoreError

# 12,036 tokens in 204 contexts of 59 kept positions; 10 contexts per shard (21 shards), so
# a resume starts in the middle of a batch of 16: the batches differ, the bytes must not
ARGV = ["harvest", "--model", "othello", "--hook", "blocks.1.hook_resid_post",
        "--tokens", "12000", "--shard-rows", "590", "--batch-size", "16"]
CONTEXTS = 204
VOLATILE = ("code_version",)  # manifest keys that may differ between two runs


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "interp.cli", *ARGV, "--out", str(out)]


def run(out: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def files(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*"))
            if f.is_file() and f.name != "manifest.json"}


def manifest(store: Path) -> dict:
    m = json.loads((store / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def wait_for_a_shard(proc: subprocess.Popen, store: Path, timeout: float = 120) -> int:
    """Shards listed in ``store``'s manifest once it lists one (0: the process ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # the manifest is replaced atomically: a read sees a whole one
            listed = len(json.loads((store / "manifest.json").read_text())["shards"])
        except (OSError, ValueError):
            listed = 0
        if listed >= 1:
            return listed
        time.sleep(0.01)
    return 0


def test_sigkill_then_rerun_equals_an_uninterrupted_harvest(tmp_path):
    full, killed = tmp_path / "full" / "activations", tmp_path / "killed" / "activations"
    # the uninterrupted harvest runs alongside the one to be killed (their imports overlap)
    procs = [subprocess.Popen(command(out.parent), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for out in (full, killed)]
    uninterrupted, proc = procs
    try:
        listed = wait_for_a_shard(proc, killed)
        assert listed >= 1 and proc.poll() is None, \
            f"the harvest ended before it was killed: {proc.communicate()[1][-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _, err = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    m = json.loads((killed / "manifest.json").read_text())
    assert not m["complete"] and 1 <= len(m["shards"]) < len(manifest(full)["shards"])
    with pytest.raises(IncompleteStoreError, match="Rerun the same `interp harvest`"):
        ActivationStore(killed)

    res = run(killed.parent)  # the same command, to completion
    assert f"resuming the harvest in {killed} after" in res.stdout

    assert manifest(killed) == manifest(full)
    got, want = files(killed), files(full)
    assert sorted(got) == sorted(want)  # no leftover partial shard, none missing
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"files differ from the uninterrupted harvest: {differ}"
    assert ActivationStore(killed).n_rows == ActivationStore(full).n_rows == CONTEXTS * 59
