"""Run the real CLI in-process on a bad input and check how it refuses.

``refuse(argv, "fragment", ..., watch=[folders])`` asserts: exit code 2 (or ``code``), exactly
one line on stderr starting with ``error:`` (``interrupted`` for 130), no traceback, every
fragment in that line (case-insensitive), and every file under ``watch`` byte-identical
before and after (nothing overwritten, nothing removed; new files are allowed only when
``allow_new`` is true).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from interp.models.zoo import REPO_ROOT

SHIPPED = REPO_ROOT / "saes"


def snapshot(roots: Iterable[Path | str]) -> dict[str, str]:
    """Path -> sha256 of every file under the roots (a missing root holds nothing)."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``interp.cli.main(argv)`` run in this process."""
    from interp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse and anything else that exits
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def refuse(argv: Sequence[str], *fragments: str, watch: Iterable[Path | str] = (),
           code: int = 2, allow_new: bool = False) -> str:
    """Run ``argv`` and assert a clean refusal (see the module docstring); the error line."""
    watch = [*watch, SHIPPED]
    before = snapshot(watch)
    rc, _, err = run_cli(argv)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, f"{argv}: traceback on stderr:\n{err}"
    assert rc == code, f"{argv}: exit {rc}, expected {code}; stderr:\n{err}"
    assert len(lines) == 1, f"{argv}: expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("interrupted" if code == 130 else "error:"), line
    for frag in fragments:
        assert frag.lower() in line.lower(), f"{argv}: {frag!r} not in {line!r}"
    after = snapshot(watch)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert not changed, f"{argv}: changed or removed {changed}"
    if not allow_new:
        new = sorted(set(after) - set(before))
        assert not new, f"{argv}: wrote {new}"
    return line
