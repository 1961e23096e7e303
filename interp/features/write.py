"""Write a feature store: one DuckDB file per SAE (schema: ``interp.features.store``'s docstring).

The accumulator's tables become Arrow tables (``interp.features.arrow``), inserted into
DuckDB in one bulk insert per table, each sorted by its lookup key and indexed on it, with a
``metadata`` table of JSON values (``build_seconds`` measured last, after the inserts).

The file is written under a hidden temporary name beside the output (:func:`temp_path`: the
writer's PID in its name) and moved into place by ``os.replace``: a build that is killed
(even by SIGKILL) leaves no partial store at the output path, and the next write of that
path removes the temporary files of writers that are no longer running
(:func:`remove_stale_temps`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

FORMAT = "interp-feature-store"
FORMAT_VERSION = 1

# each data table and the order of its rows (its lookup key first), in the order created
TABLE_ORDER = {"features": "latent", "examples": "latent, kind DESC, bin, rank",
               "token_latents": "token_id, rank", "vocab": "token_id"}
INDEXES = ("CREATE UNIQUE INDEX features_latent ON features (latent)",
           "CREATE INDEX examples_latent ON examples (latent)",
           "CREATE INDEX token_latents_token ON token_latents (token_id)")


def temp_path(out: Path, pid: int | None = None) -> Path:
    """Where the store for ``out`` is written before ``os.replace`` moves it there: a hidden
    file beside it named with the writer's PID (DuckDB adds ``.wal`` and maybe ``.tmp``)."""
    return out.with_name(f".{out.name}.tmp-{os.getpid() if pid is None else pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove what a killed writer of ``out`` left (its temp file, WAL and spill folder),
    i.e. the temp files beside ``out`` whose PID is not a live process; the removed paths."""
    removed = []
    prefix = f".{out.name}.tmp-"
    for p in out.parent.iterdir() if out.parent.is_dir() else []:
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _remove_temp(tmp: Path) -> None:
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)


def _insert(con, arrow: dict, metadata: dict, t0: float | None) -> None:
    """Create and fill every table of the store on the connection ``con``."""
    con.execute("CREATE TABLE metadata (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for name, order in TABLE_ORDER.items():
        con.register(f"{name}_arrow", arrow[name])
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow ORDER BY {order}")
    for index in INDEXES:
        con.execute(index)
    if t0 is not None:
        metadata["build_seconds"] = time.perf_counter() - t0
    con.executemany("INSERT INTO metadata VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in metadata.items()])
    con.execute("CHECKPOINT")


def write_store(out: str | Path, metadata: dict, tables: dict, logits: dict | None,
                vocab: list[str], t0: float | None = None) -> Path:
    """Write the DuckDB file (see ``interp.features.store`` for the schema) from the
    accumulator's ``tables``, the ``logits`` effects (or None) and the ``vocab`` strings;
    ``t0``: the build's start, for ``build_seconds`` in the metadata."""
    import duckdb

    from interp.features.arrow import arrow_tables

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    remove_stale_temps(out)
    _remove_temp(tmp)
    arrow = arrow_tables(tables, logits, vocab, before=metadata["config"]["window"][0])
    con = duckdb.connect(str(tmp))
    try:
        _insert(con, arrow, metadata, t0)
    except BaseException:
        con.close()
        _remove_temp(tmp)
        raise
    con.close()
    os.replace(tmp, out)
    return out
