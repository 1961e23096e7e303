"""Run folders and dictionary names, resolved in one place.

A run folder (``runs/NAME/``) holds ``run.json`` (the model, hooks, dataset, code version),
``activations/`` (the store), ``saes/<name>/`` (its SAEs), ``features/`` and ``circuits/``.
A dictionary is named by one of:

- a folder holding ``cfg.json`` and ``sae_weights.safetensors`` (ours or SAELens's);
- a shipped SAE's registry name (``othello/blocks.3.hook_resid_post/topk``, see
  ``interp saes``);
- with a run, a folder name under ``RUN/saes/`` (``topk``).

Anything else is refused with the closest valid names. The CLI, features, circuits,
probes, ablations, eval and the app all resolve names here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from interp.errors import CorruptArtifactError, DataError, UnknownNameError, unknown

from interp.models.zoo import REPO_ROOT

RUN_JSON = "run.json"
SAES_SUBDIR = "saes"
SAES_DIR = REPO_ROOT / "saes"            # the shipped SAEs ...
REGISTRY = SAES_DIR / "registry.json"    # ... and their names (``interp saes``)


def registry() -> dict:
    """The shipped SAEs: registry name -> folder, model, hook, arch, headline metrics."""
    if not REGISTRY.exists():
        return {}
    return json.loads(REGISTRY.read_text())


def list_saes() -> list[str]:
    return sorted(registry())


def load_pretrained(name: str, device: str = "cpu"):
    """A shipped SAE by registry name, e.g. ``othello/blocks.3.hook_resid_post/topk``, like
    SAELens's ``SAE.from_pretrained`` for hub releases."""
    from interp.sae.io import load_sae

    reg = registry()
    if name not in reg:
        raise unknown("shipped SAE", name, list(reg))
    return load_sae(REPO_ROOT / reg[name]["folder"], device)


def read_run_json(run: str | Path) -> dict:
    """``RUN/run.json`` ({} when absent), with ``model`` filled from the store's manifest
    when run.json lacks it."""
    run = Path(run)
    meta = _read_json(run / RUN_JSON) or {}
    if not meta.get("model"):
        manifest = _read_json(run / "activations" / "manifest.json") or {}
        model = (manifest.get("meta") or {}).get("model") or manifest.get("model")
        if model:
            meta["model"] = model
    return meta


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifactError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CorruptArtifactError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def open_run(run: str | Path) -> tuple[Path, dict]:
    """A run folder and its run.json; a folder without one is refused, naming the runs
    beside it."""
    path = Path(run)
    if not (path / RUN_JSON).exists():
        root = path.parent if path.parent != Path("") else Path(".")
        existing = sorted(str(p.parent) for p in root.glob(f"*/{RUN_JSON}"))
        near = ", ".join(existing[:8]) if existing else f"none under {root}/"
        raise UnknownNameError(f"unknown run {str(run)!r}: no {RUN_JSON} there (runs: {near}); "
                               f"create one with `interp harvest --out {run} ...`")
    return path, _read_json(path / RUN_JSON)


def run_sae_folders(run: str | Path) -> list[Path]:
    """The SAE and transcoder folders of a run (``RUN/saes/**/cfg.json``), sorted; its
    cross-layer transcoders are ``run_clt_folders``."""
    from interp.sae.clt import is_clt_folder

    return sorted(p.parent for p in Path(run).glob(f"{SAES_SUBDIR}/**/cfg.json")
                  if not is_clt_folder(p.parent))


def run_clt_folders(run: str | Path) -> list[Path]:
    """The cross-layer transcoders of a run (``RUN/saes/**``), sorted."""
    from interp.sae.clt import is_clt_folder

    return sorted(p.parent for p in Path(run).glob(f"{SAES_SUBDIR}/**/cfg.json")
                  if is_clt_folder(p.parent))


def run_saes(run: str | Path, name: str | None = None) -> list[str]:
    """The run's SAE folders (``name`` picks those with that folder name)."""
    folders = [f for f in run_sae_folders(run) if name is None or f.name == name]
    if not folders:
        raise DataError(f"no SAEs under {run}/{SAES_SUBDIR}/" + (f" named {name!r}" if name
                                                                 else "")
                        + "; train one with `interp train` or name SAEs with --sae")
    return [str(f) for f in folders]


@dataclass
class Resolved:
    """A dictionary resolved from a name: the loaded SAE, its folder, and a short name for
    files derived from it (``--`` for ``/``: ``othello--blocks.3.hook_resid_post--topk``)."""
    sae: object
    folder: Path
    short_name: str


def resolve_sae(spec: str | Path, run: str | Path | None = None,
                device: str = "cpu") -> Resolved:
    """The dictionary named ``spec`` (see the module docstring)."""
    from interp.sae.io import load_sae

    reg = registry()
    run_dir = Path(run) if run is not None else None
    spec_s = str(spec)
    path = Path(spec)
    if path.is_dir():
        folder = path.resolve()
        roots = ([run_dir.resolve() / SAES_SUBDIR] if run_dir else []) + [REPO_ROOT / SAES_SUBDIR]
        short = next(("--".join(folder.relative_to(r).parts) for r in roots
                      if folder.is_relative_to(r)), folder.name)
        return Resolved(load_sae(path, device), path, short)
    if spec_s in reg:
        members = reg[spec_s].get("members")
        if members:
            raise DataError(f"{spec_s} is a set of {len(members)} dictionaries ({members[0]} "
                            f"...): name one of them, or evaluate the set as a replacement "
                            f"model with `interp eval {spec_s}`")
        folder = REPO_ROOT / reg[spec_s]["folder"]
        return Resolved(load_sae(folder, device), folder, spec_s.replace("/", "--"))
    if run_dir is not None and (run_dir / SAES_SUBDIR / spec_s / "cfg.json").exists():
        folder = run_dir / SAES_SUBDIR / spec_s
        return Resolved(load_sae(folder, device), folder, spec_s.replace("/", "--"))
    names = list(reg)
    if run_dir is not None:
        names = [f.name for f in run_sae_folders(run_dir)] + names
    raise unknown("SAE (a folder, a shipped SAE's name, or a folder name in RUN/saes; see "
                  "`interp saes`)", spec_s, names)
