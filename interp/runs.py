"""Run folders and dictionary names, resolved in one place.

A run folder (``runs/NAME/``) holds ``run.json`` (the model, hooks, dataset, code version),
``activations/`` (the store), ``saes/<name>/`` (its SAEs), ``features/`` and ``circuits/``.
A dictionary is named by one of:

- a folder holding ``cfg.json`` and ``sae_weights.safetensors`` (ours or SAELens's);
- a shipped SAE's registry name (``othello/blocks.3.hook_resid_post/topk``, see
  ``interp saes``);
- with a run, a folder name under ``RUN/saes/`` (``topk``);
- ``saelens:RELEASE/SAE_ID``: an SAE of SAELens's pretrained directory (the
  ``pretrained_saes.yaml`` inside the installed ``sae_lens``), e.g.
  ``saelens:gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`` (split at the first
  ``/``: IDs may hold slashes). Release and ID are checked against the directory without
  network; SAELens then loads it (from the Hugging Face cache, or the hub), and it is written
  once in SAELens's format to ``$INTERP_CACHE/saelens/RELEASE/SAE_ID`` (``/`` in the ID as
  ``--``; default ``~/.cache/interp``) and read back by :func:`interp.sae.io.load_sae`, the
  one reader of that format. Its metadata records the release's model by TransformerLens's
  official name (what :func:`interp.models.load` records) and the hook, so the checks of
  :mod:`interp.provenance` apply as to our own SAEs.

Anything else is refused with the closest valid names. The CLI, features, circuits,
probes, ablations, eval and the app all resolve names here.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from interp.errors import (CorruptArtifactError, DataError, InterpError, UnknownNameError,
                           first_line, unknown)

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
    if spec_s.startswith(SAELENS_PREFIX):
        return resolve_saelens(spec_s, device)
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
    raise unknown("SAE (a folder, a shipped SAE's name, a folder name in RUN/saes, or "
                  "saelens:RELEASE/SAE_ID; see `interp saes`)", spec_s, names)


# ---------------------------------------------------------------- SAELens releases
SAELENS_PREFIX = "saelens:"


def saelens_cache() -> Path:
    """Where release SAEs are kept in SAELens's format: ``$INTERP_CACHE/saelens`` (default
    ``~/.cache/interp/saelens``)."""
    root = os.environ.get("INTERP_CACHE") or Path.home() / ".cache" / "interp"
    return Path(root).expanduser() / "saelens"


def saelens_entry(spec: str):
    """(release, SAE ID, SAELens's directory entry) of ``saelens:RELEASE/SAE_ID``, checked
    against the directory that ships with sae_lens (no network); an unknown release or ID is
    refused with the closest valid names."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, _, sae_id = spec[len(SAELENS_PREFIX):].partition("/")
    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise unknown("SAELens release (saelens:RELEASE/SAE_ID)", release, list(directory))
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        raise unknown(f"SAE ID of SAELens release {release} (saelens:{release}/SAE_ID)",
                      sae_id, ids)
    return release, sae_id, directory[release]


def resolve_saelens(spec: str, device: str = "cpu") -> Resolved:
    """``saelens:RELEASE/SAE_ID`` (see the module docstring): from our cache when it is
    there, else loaded by SAELens and written to it first."""
    from interp.sae.io import load_sae

    release, sae_id, entry = saelens_entry(spec)
    flat = sae_id.replace("/", "--")  # one folder per SAE: no ID's folder holds another's
    if flat in ("", ".", ".."):
        raise DataError(f"SAE ID {sae_id!r} of release {release} is not a folder name")
    folder = saelens_cache() / release / flat
    if not all((folder / f).exists() for f in ("cfg.json", "sae_weights.safetensors")):
        shutil.rmtree(folder, ignore_errors=True)  # not ours to keep: only complete ones are
        _cache_release_sae(release, sae_id, entry, folder)
    try:
        sae = load_sae(folder, device)
    except InterpError as e:
        hint = ("; delete that folder to fetch it again" if isinstance(e, CorruptArtifactError)
                else "")
        raise type(e)(f"SAELens release {release}/{sae_id} (cached in {folder}): {e}{hint}"
                      ) from e
    return Resolved(sae, folder, f"saelens--{release}--{flat}")


def _cache_release_sae(release: str, sae_id: str, entry, folder: Path) -> None:
    """Load ``release/sae_id`` with SAELens, write it in SAELens's format to a temporary
    folder beside ``folder``, check that :func:`load_sae` reads it, and move it into place
    (so ``folder`` exists only complete; a refused SAE leaves nothing behind)."""
    from interp.models import official_name
    from interp.sae.io import load_sae

    sae = _saelens_from_pretrained(release, sae_id)
    md = sae.cfg.metadata
    md.model_name = official_name(entry.model)  # what interp.models.load records
    md.saelens_model, md.saelens_release, md.saelens_id = entry.model, release, sae_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        sae.save_model(tmp)
        load_sae(tmp)  # refuses what our reader does not support, naming why
        try:
            tmp.rename(folder)
        except OSError:  # another process cached it first
            if not (folder / "cfg.json").exists():
                raise
    except InterpError as e:
        said = str(e).replace(str(tmp / "cfg.json"), "its cfg.json").replace(str(tmp), "it")
        raise type(e)(f"SAELens release {release}/{sae_id}: {said}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _saelens_from_pretrained(release: str, sae_id: str):
    """``sae_lens.SAE.from_pretrained`` on the CPU in float32, its failures as one line: not
    in the Hugging Face cache with the hub out of reach (:class:`ModelUnavailableError`), or
    an SAE SAELens cannot load (:class:`DataError`)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from sae_lens import SAE

    from interp.models import ModelUnavailableError

    name = f"saelens:{release}/{sae_id}"
    try:
        with warnings.catch_warnings():  # SAELens warns about its own defaults
            warnings.simplefilter("ignore")
            return SAE.from_pretrained(release, sae_id, device="cpu", dtype="float32")
    except (LocalEntryNotFoundError, ConnectionError, TimeoutError) as e:
        hub = ("is disabled (HF_HUB_OFFLINE=1)" if constants.is_offline_mode()
               else "cannot be reached")
        raise ModelUnavailableError(
            f"{name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"the hub {hub}: run the command once with network access to download and "
            f"cache it, or give an SAE folder") from e
    except HfHubHTTPError as e:
        raise ModelUnavailableError(f"the Hugging Face hub refused {name}: "
                                    f"{first_line(e)}") from e
    except (ValueError, KeyError, NotImplementedError, TypeError, RuntimeError) as e:
        raise DataError(f"SAELens cannot load {name}: {type(e).__name__}: "
                        f"{first_line(e)}") from e
