"""ActivationStore: activations on disk as sharded ``.npy`` arrays plus a manifest.

Layout of a store folder::

    manifest.json                 model, hooks, d_in, dtype, positions, shards, complete flag
    tokens/shard_00000.npy        (contexts, n_ctx) int32 token ids of the shard's contexts
    <hook>/shard_00000.npy        (rows, d_in) activations, one row per kept token

Row ``r`` of the store is context ``r // P`` at position ``positions[r % P]`` (``P`` kept
positions per context, e.g. all but the BOS position), so any row can be shown in context.
Shards are plain ``.npy`` files (memory-mappable); bfloat16 is stored as its raw 16 bits
(``uint16``) and viewed back as ``torch.bfloat16`` on read.

The writer appends whole shards and rewrites the manifest atomically after each one, so an
interrupted harvest leaves a store marked incomplete that the harvester resumes and that
readers refuse to use.

A harvest over several processes (``torchrun``) writes one *part* per rank into the same
folder: rank r's shards are ``<hook>/pRRRRR-shard_NNNNN.npy`` and its manifest
``parts/part-RRRRR-of-WWWWW.json`` (the same format, with the rank's context range). When
every part is complete, rank 0 merges them (``merge_parts``) into one ``manifest.json``
that lists every rank's shards in rank order; readers see one ordinary store.

Opening a store checks the manifest's shape (``check_manifest``: required keys and types,
``rows == contexts * P`` per shard) and, in ``verify``, every shard file's ``.npy`` header
(shape, dtype, C order) and size against it, reading headers only: a manifest edited so that
the sizes still add up is refused rather than read as rows and contexts that do not exist.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.errors import CorruptArtifactError, DataError, InterpError, unknown
from interp.version import code_version

MANIFEST = "manifest.json"
PARTS = "parts"
FORMAT_VERSION = 1
DTYPES = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
          "bfloat16": (np.uint16, torch.bfloat16)}


class IncompleteStoreError(InterpError, RuntimeError):
    """The store's harvest did not finish."""


def hook_dir_name(hook: str) -> str:
    return hook.replace("/", "_")


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def part_manifest_path(path: Path | str, rank: int, world: int) -> Path:
    return Path(path) / PARTS / f"part-{rank:05d}-of-{world:05d}.json"


# settings that every shard of a store shares: a resumed or merged part must agree on them
SHARED_KEYS = ("hooks", "dtype", "n_ctx", "positions", "contexts_per_shard", "model", "source")


REQUIRED_KEYS = ("positions", "n_ctx", "dtype", "hooks", "shards")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _json_kind(v) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(v), "number")


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain_name(v) -> bool:
    """A file or folder name inside the store (no path separators, no ``..``)."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v


def read_manifest(path: Path) -> dict:
    """The JSON object in a manifest file (a store's or a part's)."""
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        kind = "not valid JSON" if isinstance(e, ValueError) else "unreadable"
        raise CorruptArtifactError(f"{path} is {kind} ({_one_line(e)})") from e
    if not isinstance(m, dict):
        raise CorruptArtifactError(f"{path} is not a store manifest: it holds a JSON "
                                   f"{_json_kind(m)}, not an object with "
                                   f"{', '.join(REQUIRED_KEYS)}")
    return m


def parallel_world(m: dict, mpath: Path) -> int | None:
    """The process count of an unfinished parallel harvest's manifest (None: not one)."""
    par = m.get("parallel")
    if not par:
        return None
    if not isinstance(par, dict) or not _is_int(par.get("world_size")) or par["world_size"] < 1:
        raise CorruptArtifactError(f"{mpath} is not a valid store manifest: parallel must be an "
                                   f"object with a positive integer world_size, got {_short(par)}")
    return par["world_size"]


def check_manifest(mpath: Path, m: dict) -> None:
    """Refuse a store manifest whose keys are missing or of the wrong type or that does not
    add up (rows = contexts x kept positions per shard; the totals), naming what is wrong."""
    def bad(what: str) -> CorruptArtifactError:
        return CorruptArtifactError(f"{mpath} is not a valid store manifest: {what}")

    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise bad(f"it lacks {', '.join(missing)} (a manifest needs {', '.join(REQUIRED_KEYS)})")
    version = m.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise bad(f"format_version {_short(version)} is not one this version reads "
                  f"(1..{FORMAT_VERSION})")
    n_ctx = m["n_ctx"]
    if not _is_int(n_ctx) or n_ctx < 1:
        raise bad(f"n_ctx must be a positive integer, got {_short(n_ctx)}")
    pos = m["positions"]
    if not (isinstance(pos, list) and pos and all(_is_int(p) and 0 <= p < n_ctx for p in pos)
            and len(set(pos)) == len(pos)):
        raise bad(f"positions must be a non-empty list of distinct integers in [0, {n_ctx}), "
                  f"got {_short(pos)}")
    if not isinstance(m["dtype"], str) or m["dtype"] not in DTYPES:
        raise bad(f"unknown dtype {_short(m['dtype'])}; valid: {', '.join(DTYPES)}")
    hooks = m["hooks"]
    if not isinstance(hooks, dict) or not hooks:
        raise bad(f"hooks must be a non-empty object of hook name -> {{d_in, dir}}, "
                  f"got {_short(hooks)}")
    dirs = {"tokens", PARTS}
    for h, spec in hooks.items():
        if not (isinstance(spec, dict) and _is_int(spec.get("d_in")) and spec["d_in"] >= 1
                and _plain_name(spec.get("dir"))):
            raise bad(f"hook {h!r} needs a positive integer d_in and a folder name dir, "
                      f"got {_short(spec)}")
        if spec["dir"] in dirs:
            raise bad(f"hook {h!r} has the folder {spec['dir']!r}, which another hook or the "
                      f"tokens use")
        dirs.add(spec["dir"])
    shards = m["shards"]
    if not isinstance(shards, list):
        raise bad(f"shards must be an array, got a JSON {_json_kind(shards)}")
    P, files, contexts = len(pos), set(), 0
    for i, s in enumerate(shards):
        if not (isinstance(s, dict) and _plain_name(s.get("file")) and _is_int(s.get("contexts"))
                and _is_int(s.get("rows")) and s["contexts"] >= 0):
            raise bad(f"shard {i} needs a file name and non-negative integer contexts and rows, "
                      f"got {_short(s)}")
        if s["rows"] != s["contexts"] * P:
            raise bad(f"shard {i} ({s['file']}) lists {s['rows']} rows, but its {s['contexts']} "
                      f"contexts x {P} kept positions make {s['contexts'] * P}")
        if s["file"] in files:
            raise bad(f"the shard file {s['file']!r} is listed twice")
        files.add(s["file"])
        contexts += s["contexts"]
    for key, total in (("n_contexts", contexts), ("n_tokens", contexts * P)):
        if key in m and m[key] != total:
            raise bad(f"{key} is {_short(m[key])}, but its shards hold {total}")


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of an ``.npy`` file; reads the header only."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major == 2:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {major}")
        return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()


def check_shard_files(path: Path, m: dict, mpath: Path) -> None:
    """Every shard file ``m`` (a checked manifest) lists exists, with the ``.npy`` header
    (shape, dtype, C order) and the size its manifest entry implies. Headers only: cheap."""
    value_dtype = np.dtype(DTYPES[m["dtype"]][0])
    bits = " (bfloat16 bits)" if m["dtype"] == "bfloat16" else ""
    for s in m["shards"]:
        expected = [("tokens", (s["contexts"], m["n_ctx"]), np.dtype(np.int32), "")]
        expected += [(v["dir"], (s["rows"], v["d_in"]), value_dtype, bits)
                     for v in m["hooks"].values()]
        for sub, shape, dtype, note in expected:
            f = path / sub / s["file"]
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                raise CorruptArtifactError(f"store file missing: {f}") from None
            try:
                got_shape, fortran, got_dtype, header = _npy_header(f)
            except (ValueError, OSError) as e:
                raise CorruptArtifactError(f"store file {f} is corrupt ({_one_line(e)})") from e
            if got_shape != shape or got_dtype != dtype or fortran:
                order = ", Fortran order" if fortran else ""
                raise CorruptArtifactError(
                    f"store file {f} holds a {got_shape} {got_dtype}{order} array, but "
                    f"{mpath.name} says {shape} {dtype}{note}: the manifest or the file was "
                    f"changed; harvest the store again")
            if size != header + math.prod(shape) * dtype.itemsize:
                raise CorruptArtifactError(
                    f"store file {f} is truncated or the wrong size: {size} bytes, expected "
                    f"{header + math.prod(shape) * dtype.itemsize}")


class StoreWriter:
    """Writes contexts' activations shard by shard (see module docstring).

    Each shard is a set of ``.npy`` files created at their final size and memory-mapped, so
    ``add`` copies the activations once, straight into the page cache of the file that
    will hold them (converting the dtype in the same copy). A shard enters the manifest only
    when it is full. ``expected_contexts`` (optional) sizes the last shard exactly; a shard
    left partly filled at ``close`` is truncated by one extra copy.
    """

    def __init__(self, path: Path | str, hooks: dict[str, int], n_ctx: int,
                 positions: Sequence[int], dtype: str = "float32", shard_rows: int = 2**18,
                 meta: dict | None = None, resume: bool = True,
                 expected_contexts: int | None = None, part: dict | None = None):
        if dtype not in DTYPES:
            raise unknown("dtype", dtype, DTYPES)
        if not hooks:
            raise DataError("no hooks given: name at least one hook point to harvest")
        positions = [int(p) for p in positions]
        if not positions or min(positions) < 0 or max(positions) >= n_ctx:
            raise DataError(f"positions must lie in [0, {n_ctx}), got {positions[:5]}...")
        if len(set(positions)) != len(positions):
            raise DataError(f"positions must be distinct, got {positions[:8]}...")
        self.path = Path(path)
        self.n_ctx, self.positions, self.dtype = n_ctx, positions, dtype
        self.contexts_per_shard = max(1, shard_rows // len(positions))
        self.expected_contexts = expected_contexts
        # part: {"rank", "world_size", "context_start", "context_stop"} of a parallel harvest
        self.part = part
        self.prefix = "" if part is None else f"p{part['rank']:05d}-"
        self.manifest_path = (self.path / MANIFEST if part is None else
                              part_manifest_path(self.path, part["rank"], part["world_size"]))
        self.manifest = {
            "format_version": FORMAT_VERSION, "complete": False, "code_version": code_version(),
            "hooks": {h: {"d_in": int(d), "dir": hook_dir_name(h)} for h, d in hooks.items()},
            "dtype": dtype, "n_ctx": n_ctx, "positions": positions,
            "contexts_per_shard": self.contexts_per_shard, "shards": [], **(meta or {}),
        }
        if part is not None:
            self.manifest["part"] = dict(part)
        existing = self.manifest_path
        if existing.exists():
            old = read_manifest(existing)
            if old.get("complete"):
                raise DataError(f"{self.path} already holds a complete store; choose another "
                                f"--out or delete it")
            if not resume:
                raise DataError(f"{self.path} holds an unfinished store; resume it or delete it")
            n = parallel_world(old, existing)
            if part is None and n is not None:
                raise DataError(f"{self.path} holds an unfinished harvest over {n} processes; "
                                f"resume it with the same command under `torchrun "
                                f"--nproc_per_node {n}` (same total processes), or delete it")
            keys = SHARED_KEYS + (("part", "n_contexts_requested") if part else ())
            diff = [k for k in keys if old.get(k) != self.manifest.get(k)]
            if diff:
                raise DataError(f"cannot resume the unfinished store at {self.path}: its "
                                f"{', '.join(diff)} differ from this harvest's; delete it or "
                                f"use the same settings")
            self._check_resumable(old, existing)
            self.manifest["shards"] = old["shards"]
            self._drop_unlisted_shards()
        existing.parent.mkdir(parents=True, exist_ok=True)
        for h in hooks:
            (self.path / hook_dir_name(h)).mkdir(exist_ok=True)
        (self.path / "tokens").mkdir(exist_ok=True)
        self._shard: dict[str, np.ndarray] = {}   # "tokens" and each hook: open memmaps
        self._capacity = 0                        # contexts the open shard holds
        self._filled = 0                          # contexts written into it
        atomic_write_json(existing, self.manifest)

    @property
    def contexts_done(self) -> int:
        """Contexts in shards listed in the manifest (what a resume keeps)."""
        return sum(s["contexts"] for s in self.manifest["shards"])

    @property
    def contexts_written(self) -> int:
        return self.contexts_done + self._filled

    def _check_resumable(self, old: dict, mpath: Path) -> None:
        """The unfinished manifest's shards (its settings equal ours) are the writer's own,
        named in order, with the files they list intact: only then are they kept."""
        check_manifest(mpath, {**self.manifest, "shards": old.get("shards")})
        names = [s["file"] for s in old["shards"]]
        if names != [f"{self.prefix}shard_{i:05d}.npy" for i in range(len(names))]:
            raise CorruptArtifactError(f"cannot resume the unfinished store at {self.path}: "
                                       f"{mpath.name} lists shard files out of order "
                                       f"({_short(names)}); delete it and harvest again")
        check_shard_files(self.path, {**self.manifest, "shards": old["shards"]}, mpath)

    def _drop_unlisted_shards(self) -> None:
        """Partial shards written after the last manifest update are rewritten."""
        n = len(self.manifest["shards"])
        ours = re.compile(rf"^{re.escape(self.prefix)}shard_(\d+)\.npy$")
        for sub in ["tokens", *[v["dir"] for v in self.manifest["hooks"].values()]]:
            for f in (self.path / sub).glob(f"{self.prefix}shard_*.npy"):
                m = ours.match(f.name)
                if m and int(m.group(1)) >= n:
                    f.unlink()

    def _shard_name(self) -> str:
        return f"{self.prefix}shard_{len(self.manifest['shards']):05d}.npy"

    def _open_shard(self) -> None:
        cap = self.contexts_per_shard
        if self.expected_contexts is not None:
            cap = max(1, min(cap, self.expected_contexts - self.contexts_done))
        name, P = self._shard_name(), len(self.positions)
        self._shard = {"tokens": np.lib.format.open_memmap(
            self.path / "tokens" / name, mode="w+", dtype=np.int32, shape=(cap, self.n_ctx))}
        for h, spec in self.manifest["hooks"].items():
            self._shard[h] = np.lib.format.open_memmap(
                self.path / spec["dir"] / name, mode="w+", dtype=DTYPES[self.dtype][0],
                shape=(cap * P, spec["d_in"]))
        self._capacity, self._filled = cap, 0

    def _as_torch(self, key: str) -> torch.Tensor:
        """The open shard's array ``key`` as a tensor sharing its memory."""
        a = self._shard[key]
        if key != "tokens" and self.dtype == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    def add(self, tokens: np.ndarray | torch.Tensor, acts: dict[str, torch.Tensor]) -> None:
        """tokens (B, n_ctx); acts[hook] (B, P, d_in) at the kept positions."""
        tokens = torch.as_tensor(tokens)
        b, P = tokens.shape[0], len(self.positions)
        for h, spec in self.manifest["hooks"].items():
            if h not in acts:
                raise DataError(f"missing activations for hook {h!r}")
            if tuple(acts[h].shape) != (b, P, spec["d_in"]):
                raise DataError(f"activations for {h!r} have shape {tuple(acts[h].shape)}, "
                                f"expected {(b, P, spec['d_in'])}")
        done = 0
        while done < b:
            if not self._shard:
                self._open_shard()
            take = min(b - done, self._capacity - self._filled)
            lo, hi = self._filled, self._filled + take
            with torch.no_grad():
                self._as_torch("tokens")[lo:hi].copy_(tokens[done:done + take])
                for h in self.manifest["hooks"]:
                    dst = self._as_torch(h)[lo * P:hi * P].view(take, P, -1)
                    dst.copy_(acts[h][done:done + take])
            self._filled, done = hi, done + take
            if self._filled == self._capacity:
                self._commit_shard()

    def _commit_shard(self) -> None:
        """List the open shard in the manifest, truncating it if it is not full."""
        name, n, P = self._shard_name(), self._filled, len(self.positions)
        if n < self._capacity:
            for key, a in self._shard.items():
                rows = n if key == "tokens" else n * P
                sub = "tokens" if key == "tokens" else self.manifest["hooks"][key]["dir"]
                tmp = self.path / sub / (name + ".tmp")
                with open(tmp, "wb") as f:
                    np.save(f, a[:rows])
                os.replace(tmp, self.path / sub / name)
        self._shard = {}  # drops the memmaps; the data stays in the page cache / on disk
        self.manifest["shards"].append({"file": name, "contexts": n, "rows": n * P})
        self._filled = self._capacity = 0
        atomic_write_json(self.manifest_path, self.manifest)

    def close(self, extra: dict | None = None) -> Path:
        if self._filled:
            self._commit_shard()
        elif self._shard:  # opened but never written
            for key in list(self._shard):
                sub = "tokens" if key == "tokens" else self.manifest["hooks"][key]["dir"]
                self._shard.pop(key)
                (self.path / sub / self._shard_name()).unlink(missing_ok=True)
        if not self.manifest["shards"] and self.part is None:  # a part may be empty
            raise DataError("nothing was harvested: the token source gave no contexts")
        self.manifest["complete"] = True
        self.manifest["n_contexts"] = self.contexts_done
        self.manifest["n_tokens"] = self.contexts_done * len(self.positions)
        self.manifest.update(extra or {})
        atomic_write_json(self.manifest_path, self.manifest)
        return self.path


def merge_parts(path: Path | str, world_size: int, extra: dict | None = None) -> Path:
    """Merge the complete parts of a parallel harvest into the store's ``manifest.json``.

    The shards are listed rank by rank, each rank's in order, so with contiguous context
    ranges per rank the merged store's rows come in the order one process would have
    written them. The manifest is replaced atomically; the part manifests are then removed
    (the merged manifest records each part's range and shard count).
    """
    path = Path(path)
    parts = []
    for r in range(world_size):
        f = part_manifest_path(path, r, world_size)
        if not f.exists():
            raise CorruptArtifactError(f"cannot merge the parallel harvest in {path}: the part "
                                       f"of rank {r} ({f}) is missing")
        m = read_manifest(f)
        if not m.get("complete"):
            raise IncompleteStoreError(f"cannot merge the parallel harvest in {path}: rank {r}'s "
                                       f"part is unfinished ({f})")
        parts.append(m)
    first = parts[0]
    for r, m in enumerate(parts[1:], 1):
        diff = [k for k in SHARED_KEYS + ("n_contexts_requested",) if m.get(k) != first.get(k)]
        if diff:
            raise DataError(f"cannot merge the parallel harvest in {path}: rank {r}'s part "
                            f"differs from rank 0's in {', '.join(diff)}")
    merged = {k: v for k, v in first.items() if k not in ("part", "shards", "n_contexts",
                                                          "n_tokens")}
    merged["shards"] = [s for m in parts for s in m["shards"]]
    if not merged["shards"]:
        raise DataError("nothing was harvested: the token source gave no contexts")
    n = sum(s["contexts"] for s in merged["shards"])
    merged.update(complete=True, n_contexts=n, n_tokens=n * len(first["positions"]),
                  parallel={"world_size": world_size,
                            "parts": [{**m["part"], "contexts": m["n_contexts"],
                                       "shards": len(m["shards"])} for m in parts]},
                  **(extra or {}))
    atomic_write_json(path / MANIFEST, merged)
    for r in range(world_size):
        part_manifest_path(path, r, world_size).unlink(missing_ok=True)
    try:
        (path / PARTS).rmdir()
    except OSError:
        pass  # something else lives there; leave it
    return path


@dataclass(frozen=True)
class _Shard:
    file: str
    row_start: int
    rows: int
    context_start: int
    contexts: int


class ActivationStore:
    """Read access to a harvested store: rows, tokens in context, shuffled batches."""

    def __init__(self, path: Path | str, check: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            hint = " (the folder does not exist)" if not self.path.exists() else ""
            raise CorruptArtifactError(f"no activation store at {self.path}{hint}: "
                                       f"{MANIFEST} is missing; create one with `interp harvest`")
        self.manifest_path = mpath
        self.manifest = read_manifest(mpath)
        if self.manifest.get("complete") is not True:
            shards = self.manifest.get("shards")
            done = len(shards) if isinstance(shards, list) else 0
            n = parallel_world(self.manifest, mpath)
            if n is not None:
                raise IncompleteStoreError(
                    f"the store at {self.path} is incomplete: its harvest over {n} processes "
                    f"has not finished (parts in {self.path / PARTS}). Rerun the same "
                    f"command under torchrun with {n} processes to resume it.")
            raise IncompleteStoreError(
                f"the store at {self.path} is incomplete: its harvest stopped after {done} "
                f"shard(s). Rerun the same `interp harvest` command to resume it.")
        check_manifest(mpath, self.manifest)
        self.positions: list[int] = self.manifest["positions"]
        self.n_ctx: int = self.manifest["n_ctx"]
        self.dtype: str = self.manifest["dtype"]
        self._shards: list[_Shard] = []
        row = ctx = 0
        for s in self.manifest["shards"]:
            self._shards.append(_Shard(s["file"], row, s["rows"], ctx, s["contexts"]))
            row += s["rows"]
            ctx += s["contexts"]
        self.n_rows, self.n_contexts = row, ctx
        self._row_starts = np.array([s.row_start for s in self._shards], dtype=np.int64)
        self._maps: dict[tuple[str, int], np.ndarray] = {}
        if check:
            self.verify()

    # ------------------------------------------------------------------ metadata
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    def d_in(self, hook: str | None = None) -> int:
        return self.manifest["hooks"][self.resolve_hook(hook)]["d_in"]

    def resolve_hook(self, hook: str | None) -> str:
        """``hook``, or the store's only hook when None; unknown names list the valid ones."""
        if hook is None:
            if len(self.hooks) > 1:
                raise DataError(f"this store holds several hooks; name one of {self.hooks}")
            return self.hooks[0]
        if hook not in self.manifest["hooks"]:
            raise unknown("hook in this store", hook, self.hooks)
        return hook

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model={self.manifest.get('model')!r}, "
                f"hooks={self.hooks}, rows={self.n_rows}, dtype={self.dtype})")

    # ------------------------------------------------------------------ files
    def _file(self, sub: str, shard: _Shard) -> Path:
        return self.path / sub / shard.file

    def verify(self) -> None:
        """Every shard file exists with the ``.npy`` header (shape, dtype) and the size its
        manifest entry implies (headers only, so opening a large store stays fast)."""
        check_shard_files(self.path, self.manifest, self.manifest_path)

    def _map(self, sub: str, i: int) -> np.ndarray:
        key = (sub, i)
        if key not in self._maps:
            f = self._file(sub, self._shards[i])
            try:
                self._maps[key] = np.load(f, mmap_mode="r")
            except (ValueError, OSError) as e:
                raise CorruptArtifactError(f"cannot read store file {f}: {e}") from e
        return self._maps[key]

    def _to_torch(self, a: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
        if not (a.flags.writeable and a.flags.c_contiguous):
            a = np.array(a)  # a memory-mapped slice: copy it into RAM
        t = torch.from_numpy(a)
        if self.dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        return t if dtype is None else t.to(dtype)

    # ------------------------------------------------------------------ random access
    def read(self, rows: np.ndarray | Sequence[int], hook: str | None = None,
             dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Activations of the given global rows, in the given order: (len(rows), d_in)."""
        hook = self.resolve_hook(hook)
        sub = self.manifest["hooks"][hook]["dir"]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"row out of range [0, {self.n_rows})")
        out = np.empty((rows.size, self.d_in(hook)), dtype=DTYPES[self.dtype][0])
        shard_of = np.searchsorted(self._row_starts, rows, side="right") - 1
        for i in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == i)
            local = rows[sel] - self._shards[i].row_start
            order = np.argsort(local, kind="stable")  # sorted reads are kinder to the page cache
            out[sel[order]] = self._map(sub, int(i))[local[order]]
        return self._to_torch(out, dtype)

    def read_range(self, start: int, stop: int, hook: str | None = None,
                   dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        return self.read(np.arange(start, stop), hook, dtype)

    def locate(self, rows: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(context index, position) of each global row."""
        rows = np.asarray(rows, dtype=np.int64)
        p = len(self.positions)
        return rows // p, np.asarray(self.positions)[rows % p]

    def tokens(self, contexts: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Token ids (len(contexts), n_ctx) of the given contexts (all when None)."""
        if contexts is None:
            return np.concatenate([self._map("tokens", i) for i in range(len(self._shards))])
        contexts = np.asarray(contexts, dtype=np.int64)
        starts = np.array([s.context_start for s in self._shards])
        shard_of = np.searchsorted(starts, contexts, side="right") - 1
        out = np.empty((contexts.size, self.n_ctx), dtype=np.int32)
        for i in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == i)
            out[sel] = self._map("tokens", int(i))[contexts[sel] - starts[i]]
        return out

    # ------------------------------------------------------------------ streaming
    def epoch_order(self, epoch: int, seed: int = 0, buffer_rows: int = 2**20,
                    block_rows: int = 1024, row_range: tuple[int, int] | None = None
                    ) -> Iterator[np.ndarray]:
        """Row indices of one epoch, as a sequence of shuffled buffer-sized windows.

        The rows (all, or ``row_range``) are cut into blocks of ``block_rows`` consecutive
        rows; the blocks are permuted, grouped into windows of about ``buffer_rows`` rows,
        and each window is permuted. Every row appears exactly once per epoch, and only one
        window is held in memory, so stores larger than RAM stream fine.
        """
        lo, hi = self._row_range(row_range)
        rng = np.random.default_rng([seed, epoch])
        block_rows = max(1, min(block_rows, buffer_rows))
        starts = np.arange(lo, hi, block_rows, dtype=np.int64)
        rng.shuffle(starts)
        per_window = max(1, buffer_rows // block_rows)
        for w in range(0, len(starts), per_window):
            idx = np.concatenate([np.arange(s, min(s + block_rows, hi))
                                  for s in starts[w:w + per_window]])
            yield idx[rng.permutation(idx.size)]

    def _row_range(self, row_range: tuple[int, int] | None) -> tuple[int, int]:
        if row_range is None:
            return 0, self.n_rows
        lo, hi = int(row_range[0]), int(row_range[1])
        if not 0 <= lo < hi <= self.n_rows:
            raise DataError(f"row range [{lo}, {hi}) is not inside the store's "
                            f"[0, {self.n_rows})")
        return lo, hi

    def batches(self, batch_size: int, hook: str | Sequence[str] | None = None,
                shuffle: bool = True, seed: int = 0, epochs: int | None = 1,
                start_batch: int = 0, buffer_rows: int = 2**20, drop_last: bool = False,
                dtype: torch.dtype | None = torch.float32,
                row_range: tuple[int, int] | None = None,
                part: tuple[int, int] = (0, 1)) -> Iterator:
        """Batches of (batch_size, d_in) rows, epoch after epoch (``epochs=None``: endless).
        ``hook`` a list or tuple of hooks: each batch is a tuple of their activations at the
        same rows (a dictionary's input and output hooks, aligned row by row).

        ``start_batch`` skips batches without reading them, so a resumed training run
        sees exactly the batches the uninterrupted one would have. ``row_range`` limits
        the rows (e.g. to keep some for evaluation). ``part=(rank, world)`` yields only
        rank's contiguous share of every batch (batch_size / world rows; needs
        ``drop_last``), so that data-parallel processes together see the same global
        batches as one process.
        """
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        rank, world = part
        if world > 1 and (batch_size % world or not drop_last):
            raise DataError(f"splitting batches over {world} processes needs a batch size "
                            f"divisible by {world} (got {batch_size}) and drop_last")
        local = batch_size // world
        if isinstance(hook, (list, tuple)):
            hooks = [self.resolve_hook(h) for h in hook]
            read = lambda rows: tuple(self.read(rows, h, dtype) for h in hooks)  # noqa: E731
        else:
            one = self.resolve_hook(hook)
            read = lambda rows: self.read(rows, one, dtype)  # noqa: E731
        lo, hi = self._row_range(row_range)
        epoch, skipped = 0, 0
        while epochs is None or epoch < epochs:
            if shuffle:
                windows = self.epoch_order(epoch, seed, buffer_rows, row_range=(lo, hi))
            else:
                windows = (np.arange(s, min(s + buffer_rows, hi))
                           for s in range(lo, hi, buffer_rows))
            pending = np.empty(0, dtype=np.int64)
            for window in windows:
                pending = np.concatenate([pending, window])
                n_full = pending.size // batch_size
                skip = min(n_full, max(0, start_batch - skipped))
                skipped += skip
                if skip < n_full:  # read the rest of the window's batches at once
                    mine = pending[skip * batch_size:n_full * batch_size]
                    mine = mine.reshape(n_full - skip, batch_size)[:, rank * local:(rank + 1) * local]
                    data = read(mine.reshape(-1))
                    for b in range(n_full - skip):
                        part_rows = slice(b * local, (b + 1) * local)
                        yield tuple(d[part_rows] for d in data) if isinstance(data, tuple) \
                            else data[part_rows]
                pending = pending[n_full * batch_size:]
            if pending.size and not drop_last:
                if skipped < start_batch:
                    skipped += 1
                else:
                    yield read(pending)
            epoch += 1

    def iter_chunks(self, hook: str | None = None, chunk_rows: int = 2**16,
                    dtype: torch.dtype | None = torch.float32
                    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, activations) over the whole store in row order, a chunk at a time."""
        hook = self.resolve_hook(hook)
        sub = self.manifest["hooks"][hook]["dir"]
        for i, shard in enumerate(self._shards):
            data = self._map(sub, i)
            for a in range(0, shard.rows, chunk_rows):
                yield shard.row_start + a, self._to_torch(data[a:a + chunk_rows], dtype)

    def _check_unit(self, unit: int, hook: str) -> None:
        d = self.d_in(hook)
        if not 0 <= unit < d:
            raise DataError(f"unit {unit} is out of range for {hook!r}: valid 0..{d - 1}")

    def unit_values(self, unit: int, hook: str | None = None,
                    max_rows: int | None = None) -> np.ndarray:
        """float32 values of activation dimension ``unit`` over the first ``max_rows`` rows."""
        hook = self.resolve_hook(hook)
        self._check_unit(unit, hook)
        out, n = [], 0
        for _, chunk in self.iter_chunks(hook):
            take = chunk[:, unit] if max_rows is None else chunk[: max_rows - n, unit]
            out.append(take.numpy())
            n += take.shape[0]
            if max_rows is not None and n >= max_rows:
                break
        return np.concatenate(out) if out else np.empty(0, np.float32)

    def top_rows(self, unit: int, k: int = 20, hook: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows where dimension ``unit`` is largest: (rows, values), descending."""
        hook = self.resolve_hook(hook)
        self._check_unit(unit, hook)
        best_v = torch.empty(0)
        best_r = torch.empty(0, dtype=torch.long)
        for start, chunk in self.iter_chunks(hook):
            v = torch.cat([best_v, chunk[:, unit]])
            r = torch.cat([best_r, torch.arange(start, start + chunk.shape[0])])
            top = v.topk(min(k, v.numel())).indices
            best_v, best_r = v[top], r[top]
        return best_r.numpy(), best_v.numpy()

    def batches_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        return self.n_rows // batch_size if drop_last else math.ceil(self.n_rows / batch_size)

    def summary(self) -> dict:
        m = self.manifest
        return {"path": str(self.path), "model": m.get("model"), "hooks": self.hooks,
                "d_in": {h: self.d_in(h) for h in self.hooks}, "dtype": self.dtype,
                "n_contexts": self.n_contexts, "n_ctx": self.n_ctx,
                "positions_per_context": len(self.positions), "n_rows": self.n_rows,
                "shards": len(self._shards), "source": m.get("source")}


STORE_SUBDIR = "activations"  # a run folder's store


def store_path(out: str | Path) -> Path:
    """A run folder holds its store in ``activations/``; a store folder is itself."""
    out = Path(out)
    if (out / MANIFEST).exists():
        return out
    return out / STORE_SUBDIR


def open_store(path: str | Path) -> ActivationStore:
    """The store of a run folder, or a store folder itself."""
    return ActivationStore(store_path(path))
