"""Outputs: one writer at a time, and never a file the command does not own.

Before a command that writes starts its work, :func:`claim` checks its output and locks it:

- the output's folder can be made and written (not under a regular file, not read-only);
- a folder of another kind is refused (an SAE folder is not a run folder, and the reverse);
- every file the command will replace that exists already is of the command's own kind,
  checked by its content, not its name (``--force`` overrides);
- an exclusive ``flock`` on the output (a hidden ``.NAME.lock`` file holding the writer's
  PID) is held until the command ends, so a second writer is refused at once, naming the
  holder. The lock goes with the process: a killed command leaves no stale lock.

What each command writes is listed in one table (:data:`PLANS`), from its parsed arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from interp.errors import OutputError

# ---------------------------------------------------------------- content kinds
Owner = Callable[[Path], bool]  # does this existing file hold what the command writes?


def _head(path: Path, n: int = 65536) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def json_with(*keys: str) -> Owner:
    """A JSON object holding all of ``keys``."""
    def owns(path: Path) -> bool:
        data = _json(path)
        return isinstance(data, dict) and all(k in data for k in keys)
    return owns


def json_format(fmt: str) -> Owner:
    def owns(path: Path) -> bool:
        data = _json(path)
        return isinstance(data, dict) and data.get("format") == fmt
    return owns


def config_of(command: str) -> Owner:
    """A resolved config that ``interp COMMAND`` wrote (its first line says so)."""
    return lambda path: _head(path, 200).startswith(f"# interp {command}:".encode())


def plotly_html(path: Path) -> bool:
    head = _head(path).lstrip().lower()
    return head.startswith((b"<html", b"<!doctype html")) and b"plotly" in head


def json_lines(path: Path) -> bool:
    first = _head(path, 4096).split(b"\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return not first.strip()


def safetensors_file(path: Path) -> bool:
    head = _head(path, 16)
    return len(head) > 8 and head[8:9] == b"{"


def torch_zip(path: Path) -> bool:
    return _head(path, 4) == b"PK\x03\x04"


def feature_store(path: Path) -> bool:
    if _head(path, 12)[8:12] != b"DUCK":
        return False
    from interp.features.build import FORMAT

    try:
        import duckdb

        con = duckdb.connect(str(path), read_only=True)
        try:
            row = con.execute("SELECT value FROM metadata WHERE key = 'format'").fetchone()
        finally:
            con.close()
    except Exception:  # another DuckDB file, or one we cannot open: not ours
        return False
    return bool(row) and json.loads(row[0]) == FORMAT


def folder_kind(path: Path) -> str | None:
    """'sae', 'run' or 'store' by what the folder holds (None: none of these)."""
    if (path / "cfg.json").exists() or (path / "checkpoint.pt").exists():
        return "sae"
    if (path / "manifest.json").exists():
        return "store"
    if (path / "run.json").exists() or (path / "activations" / "manifest.json").exists():
        return "run"
    return None


KIND_NAMES = {"sae": "an SAE folder", "run": "a run folder", "store": "an activation store"}


# ---------------------------------------------------------------- plans
@dataclass
class Plan:
    """What one command will write: a folder (or a file) to lock, the folder kinds it may
    write into, and the files it may replace with the test of each one's content."""
    target: Path
    is_folder: bool
    kinds: tuple[str | None, ...] = ()           # accepted folder kinds (folders only)
    files: dict[Path, Owner] = field(default_factory=dict)
    hint: str = ""                               # what to do instead, for the refusal

    @property
    def lock_path(self) -> Path:
        if self.is_folder:
            return self.target / ".interp.lock"
        return self.target.with_name(f".{self.target.name}.lock")


def _sae_files(out: Path, command: str) -> dict[Path, Owner]:
    return {out / "cfg.json": json_with("d_in", "d_sae"),
            out / "sae_weights.safetensors": safetensors_file,
            out / "metrics.json": json_with("eval"), out / "train_log.jsonl": json_lines,
            out / "train_config.json": json_with("store", "arch"),
            out / "checkpoint.pt": torch_zip, out / "config.yaml": config_of(command)}


def _train(a) -> Plan:
    out = Path(a.out)
    return Plan(out, True, ("sae", None), _sae_files(out, "train"),
                hint="train writes an SAE folder, e.g. RUN/saes/NAME")


def _harvest(a) -> Plan:
    out = Path(a.out)
    return Plan(out, True, ("run", "store", None),
                {out / "run.json": json_with("model"), out / "config.yaml": config_of("harvest")},
                hint="harvest writes a run folder, e.g. runs/NAME")


def _eval(a) -> Plan | None:
    out = eval_folder(a.sae[0], a.out, a.store)
    if out is None:
        return None
    files = {out / "eval.json": json_with("d_sae"), out / "eval_config.yaml": config_of("eval")}
    files.update({out / f"{n}.html": plotly_html
                  for n in ("density", "fvu_by_k", "training_curves")})
    return Plan(out, True, ("sae", None), files)


def _beside(out: Path, command: str, owner: Owner, extra: tuple[str, ...] = ()) -> Plan:
    files = {out: owner, out.with_suffix(".config.yaml"): config_of(command)}
    files.update({out.with_name(out.stem + s): plotly_html for s in extra})
    return Plan(out, False, files=files)


def _circuit(a) -> Plan:
    from interp.circuits.graph import FORMAT

    return _beside(Path(a.out), "circuit", json_format(FORMAT), (".html", "_faithfulness.html"))


def _graph(a) -> Plan:
    from interp.graphs.io import FORMAT

    plan = _beside(Path(a.out), "graph", json_format(FORMAT), (".html",))
    if a.tracer_json:
        plan.files[Path(a.tracer_json)] = json_with("metadata", "qParams", "nodes", "links")
    return plan


def _probe(a) -> Plan:
    return _beside(Path(a.out), "probe", json_with("dataset", "method", "sources"), (".html",))


def _features(a) -> Plan | None:
    from interp.features.build import default_out
    from interp.runs import open_run, resolve_sae

    if a.out:
        out = Path(a.out)
    elif a.run:  # the default path is the build's rule
        run_dir, _ = open_run(a.run)
        out = default_out(run_dir, resolve_sae(a.sae, run_dir).short_name)
    else:
        return None  # the build refuses: it needs --out or --run
    return _beside(out, "features", feature_store)


def tracer_config(path: Path) -> bool:
    """A circuit-tracer config.yaml (``interp export-tracer`` writes one)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "model_kind" in data and "feature_input_hook" in data


def _export_tracer(a) -> Plan:
    """circuit-tracer's folder: its config, and every tensor file of an earlier export
    (the export removes those, so a folder of fewer layers holds no stale one)."""
    from interp.sae.tracer_export import CONFIG_FILE, TENSOR_FILES

    out = Path(a.out)
    files = {out / CONFIG_FILE: tracer_config,
             out / "export_config.yaml": config_of("export-tracer")}
    if out.is_dir():
        files.update({f: safetensors_file for f in out.iterdir() if TENSOR_FILES.match(f.name)})
    return Plan(out, True, (None,), files,
                hint="export-tracer writes a folder of its own, e.g. RUN/tracer")


def _demo(a) -> Plan:
    out = Path(a.out)
    return Plan(out, True, ("run", None), {out / "config.yaml": config_of("demo")},
                hint="the demo writes a run folder, e.g. runs/demo")


PLANS: dict[str, Callable[[argparse.Namespace], Plan | None]] = {
    "harvest": _harvest, "train": _train, "demo": _demo, "eval": _eval, "circuit": _circuit,
    "probe": _probe, "features": _features, "export-tracer": _export_tracer, "graph": _graph,
}


def eval_folder(sae: str, out: str | None, store: str | None) -> Path | None:
    """Where ``interp eval`` writes: ``--out``; else the SAE's own folder, unless it is a
    shipped one (then RUN/evals/NAME for a run given as --store). None: nowhere of its own,
    the caller refuses."""
    from interp.models.zoo import REPO_ROOT

    if out:
        return Path(out)
    folder = Path(sae)
    if not folder.is_dir():  # a registry name
        from interp.runs import registry

        entry = registry().get(sae)
        folder = REPO_ROOT / entry["folder"] if entry else folder
    shipped = (REPO_ROOT / "saes").resolve()
    if folder.exists() and shipped not in folder.resolve().parents:
        return folder
    if store and not (Path(store) / "manifest.json").exists():
        return Path(store) / "evals" / sae.replace("/", "__")
    return None


# ---------------------------------------------------------------- checks and the lock
def _writable_parent(path: Path) -> None:
    """The nearest existing ancestor is a folder this process may write into."""
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot write {path}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {p} is not writable")


def check(plan: Plan, force: bool = False) -> None:
    """Every refusal :func:`claim` makes, without touching the disk."""
    t = plan.target
    if plan.is_folder and t.exists() and not t.is_dir():
        raise OutputError(f"{t} is a file; {plan.hint or 'the output is a folder'}")
    if not plan.is_folder and t.is_dir():
        raise OutputError(f"{t} is a folder; give a file name for the output")
    _writable_parent(t if plan.is_folder else t.parent)
    if plan.is_folder and t.is_dir() and not force:
        kind = folder_kind(t)
        if kind not in plan.kinds:
            raise OutputError(f"{t} is {KIND_NAMES[kind]}; {plan.hint} (or --force)")
    for f, owns in plan.files.items():
        if f.is_dir():
            raise OutputError(f"{f} is a folder where this command writes a file")
        if f.exists() and not force and not owns(f):
            raise OutputError(f"{f} exists and is not what this command writes; it would be "
                              f"replaced: choose another output or pass --force")


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid else "another process"


@contextlib.contextmanager
def claim(plan: Plan | None, force: bool = False) -> Iterator[None]:
    """Check ``plan`` and hold its lock while the body runs (see the module docstring).

    Under torchrun only rank 0 locks (the ranks write one output together). A folder this
    claim created is removed again if the command fails before writing anything into it.
    """
    if plan is None:
        yield
        return
    check(plan, force)
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    folder = plan.target if plan.is_folder else plan.target.parent
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(plan.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot write {plan.target}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputError(f"{plan.target} is being written by {_holder(plan.lock_path)}; "
                              f"wait for it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(plan.lock_path)
    finally:
        os.close(fd)
        for p in created:  # innermost first: only folders left empty by a failed command
            with contextlib.suppress(OSError):
                p.rmdir()
