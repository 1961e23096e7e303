"""The replacement model: the model with its MLPs replaced by transcoders (a set of
per-layer ones, or one cross-layer transcoder), error terms dropped, and how close it stays
to the original.

A replacement is a list of dictionaries, each spliced by ``interp.sae.evaluate.
splice_hooks`` (a transcoder keeps its input hook and replaces its output hook by its
prediction; a CLT does so at every layer it covers, summing the contributions of every
earlier layer; an SAE replaces its hook by its reconstruction) at every position but the
first: the BOS position's activations are one constant for every context (it attends to
itself only), harvests leave it out, so no dictionary was trained on it, and keeping it is
adding a constant (circuit-tracer also leaves it out). It is named on the command
line by folders, shipped names, or a *set folder* (a folder whose subfolders are
dictionaries, e.g. ``saes/othello/transcoders/plt``).

Figures (``evaluate_replacement``):
- per dictionary, on the model's own activations of the held-out contexts: FVU of what it
  writes, L0, dead and dense latents (a CLT: per layer);
- the replaced model against the original on the same contexts: next-token CE of both and
  of the model with every replaced hook zero-ablated, CE-loss recovered
  ``(CE_ablated - CE_replaced) / (CE_ablated - CE_clean)``, KL(original || replaced) and
  top-1 agreement (the same most likely next token);
- othello: the legal-move top-1 accuracy of the replaced model and of the original, on
  games no harvest or training used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.errors import DataError
from interp.sae.clt import CrossLayerTranscoder, clt_metrics, is_clt_folder, load_clt
from interp.sae.core import SparseAutoencoder
from interp.sae.evaluate import (compare_with_splice, held_out_tokens, recorded_store,
                                 splice_hooks, written_hook)

Dictionary = SparseAutoencoder | CrossLayerTranscoder


@dataclass
class Replacement:
    dictionaries: list
    names: list[str]

    @property
    def model_name(self) -> str | None:
        return _metadata(self.dictionaries[0]).get("model_name")

    def written_hooks(self) -> list[str]:
        """Every hook the replacement overwrites (each MLP output it replaces)."""
        return [h for d in self.dictionaries for h in _written(d)]

    def read_hooks(self) -> list[str]:
        return [h for d in self.dictionaries for h in _read(d)]

    def hooks(self) -> list[tuple[str, object]]:
        """The TransformerLens forward hooks that splice every dictionary in, at every
        position but the BOS one (the same in every context, and left out of every
        harvest the dictionaries were trained on: ``interp.hooks.with_first_position``)."""
        return [h for d in self.dictionaries for h in splice_hooks(d, keep_first=True)]

    @property
    def total_latents(self) -> int:
        return sum(d.n_latents for d in self.dictionaries)


def _metadata(d: Dictionary) -> dict:
    return d.cfg.metadata or {}


def _written(d: Dictionary) -> list[str]:
    if isinstance(d, CrossLayerTranscoder):
        return list(_metadata(d)["hook_names_out"])
    return [written_hook(d)]


def _read(d: Dictionary) -> list[str]:
    if isinstance(d, CrossLayerTranscoder):
        return list(_metadata(d)["hook_names"])
    return [_metadata(d).get("hook_name")]


def load_dictionary(spec: str, device: str = "cpu") -> tuple[Dictionary, str]:
    """A CLT (folder or shipped name), or anything ``interp.runs.resolve_sae`` names; with
    its short name."""
    from interp.runs import resolve_sae

    shipped = _shipped_folder(spec)
    folder = shipped or Path(spec)
    if is_clt_folder(folder):
        return load_clt(folder, device), (spec.replace("/", "--") if shipped else folder.name)
    named = resolve_sae(spec, device=device)
    return named.sae, named.short_name


def _shipped_folder(name: str) -> Path | None:
    from interp.models.zoo import REPO_ROOT
    from interp.runs import registry

    entry = registry().get(name)
    return REPO_ROOT / entry["folder"] if entry else None


def is_replacement(specs: list[str]) -> bool:
    """Several dictionaries, a set (folder or shipped) or a cross-layer transcoder: what
    ``interp eval`` evaluates as a replacement model."""
    if len(specs) > 1 or len(expand(specs[0])) > 1:
        return True
    return is_clt_folder(_shipped_folder(specs[0]) or Path(specs[0]))


def expand(spec: str) -> list[str]:
    """The dictionaries one name stands for: a shipped set's members, a set folder's
    subfolders, or itself."""
    from interp.runs import registry

    entry = registry().get(spec) or {}
    if entry.get("members"):
        return list(entry["members"])
    members = set_members(Path(spec))
    return [str(m) for m in members] if members else [spec]


def set_members(folder: Path) -> list[Path] | None:
    """The dictionary folders of a set folder (one without a cfg.json of its own, whose
    subfolders hold one each), in layer order; None when ``folder`` is not a set."""
    if not folder.is_dir() or (folder / "cfg.json").exists():
        return None
    members = [p for p in folder.iterdir() if (p / "cfg.json").exists()]
    return sorted(members, key=lambda p: _layer_key(p)) or None


def _layer_key(folder: Path) -> tuple:
    meta = json.loads((folder / "cfg.json").read_text()).get("metadata") or {}
    hook = meta.get("hook_name_out") or meta.get("hook_name") or ""
    from interp.hooks import layer_of

    return (layer_of(hook) if hook else 0, folder.name)


def open_replacement(specs: list[str], device: str = "cpu") -> Replacement:
    """The dictionaries ``specs`` name (set folders expanded), checked to belong to one
    model and to overwrite each hook at most once."""
    dicts, names = [], []
    for spec in specs:
        for one in expand(spec):
            d, name = load_dictionary(one, device)
            dicts.append(d)
            names.append(name)
    rep = Replacement(dicts, names)
    models = {str(_metadata(d).get("model_name")) for d in dicts}
    if len(models) > 1:
        raise DataError(f"these dictionaries belong to different models ({sorted(models)}); "
                        f"a replacement model splices dictionaries of one model")
    seen: dict[str, str] = {}
    for d, name in zip(dicts, names):
        for hook in _written(d):
            if hook in seen:
                raise DataError(f"{seen[hook]} and {name} both replace {hook}; give one "
                                f"dictionary per hook")
            seen[hook] = name
    return rep


# ------------------------------------------------------------------ metrics
@torch.no_grad()
def replacement_metrics(model, rep: Replacement, token_batches) -> dict:
    """The replaced model against the original on ``token_batches`` (see the module doc),
    and each dictionary's local figures on the original's activations."""
    local = _LocalFigures(rep)
    for d in rep.dictionaries:
        d.eval()
    zero = [(h, lambda act, hook: torch.zeros_like(act)) for h in rep.written_hooks()]
    res = compare_with_splice(model, token_batches, rep.hooks(), lambda cache: zero,
                              set(rep.read_hooks()) | set(rep.written_hooks()), local.add)
    res["ce_replaced"] = res.pop("ce_spliced")
    res["dictionaries"] = local.figures()
    res["total_l0"] = sum(f["l0"] for f in res["dictionaries"])
    return res


class _LocalFigures:
    """Each dictionary's FVU, L0 and dead / dense latents on the original model's
    activations (its input hooks in, its output hooks as the target)."""

    def __init__(self, rep: Replacement):
        self.rep = rep
        self.batches: list[list] = [[] for _ in rep.dictionaries]

    def add(self, cache) -> None:
        for i, d in enumerate(self.rep.dictionaries):
            # position 0 (BOS) left out, as harvests and the replacement's splice do
            xs = [cache[h][:, 1:].flatten(0, 1).flatten(1).float() for h in _read(d)]
            ys = [cache[h][:, 1:].flatten(0, 1).flatten(1).float() for h in _written(d)]
            if isinstance(d, CrossLayerTranscoder):
                self.batches[i].append((torch.stack(xs, 1), torch.stack(ys, 1)))
            else:
                self.batches[i].append((xs[0], ys[0]))

    def figures(self) -> list[dict]:
        from interp.sae.evaluate import reconstruction_metrics, without_density

        out = []
        for d, name, batches in zip(self.rep.dictionaries, self.rep.names, self.batches):
            if isinstance(d, CrossLayerTranscoder):
                fig = without_density(clt_metrics(d, batches))
                fig["kind"] = "clt"
            else:
                pairs = batches if d.cfg.transcoder else [x for x, _ in batches]
                fig = without_density(reconstruction_metrics(d, pairs))
                fig["kind"] = "transcoder" if d.cfg.transcoder else "sae"
            out.append({"name": name, "reads": _read(d), "writes": _written(d), **fig})
        return out


@torch.no_grad()
def othello_legal_moves(model, rep: Replacement, n_games: int = 500) -> dict:
    """Legal-move top-1 accuracy of the original and the replaced othello model."""
    from interp.models.evaluate import othello_legal_move_accuracy

    clean = othello_legal_move_accuracy(model, n_games=n_games)
    with model.hooks(fwd_hooks=rep.hooks()):
        replaced = othello_legal_move_accuracy(model, n_games=n_games)
    return {"original": clean["legal_move_top1_accuracy"],
            "replaced": replaced["legal_move_top1_accuracy"], "n_games": n_games,
            "n_predictions": replaced["n_predictions"]}


def evaluate_replacement(specs: list[str], model: str | None = None,
                         source: str | None = None, contexts: int = 256,
                         out: str | Path | None = None, games: int = 500) -> dict:
    """Every figure of the replacement ``specs`` name (see the module doc); writes
    ``eval.json`` into ``out`` when given. Each dictionary is checked against the model
    first (``interp.provenance``)."""
    from interp.models import load
    from interp.provenance import check_dictionary

    rep = open_replacement(specs)
    model_name = model or rep.model_name
    if not model_name:
        raise DataError("these dictionaries do not record their model: give --model")
    m = load(model_name)
    for d, name in zip(rep.dictionaries, rep.names):
        check_dictionary(d, name=name, model=m, model_name=model_name)
    meta = _metadata(rep.dictionaries[0])
    toks, spliced_on = held_out_tokens(m, model_name, source, contexts,
                                       meta.get("context_size"),
                                       recorded_store(meta.get("store"), model_name))
    res = {"kind": "replacement", "model": str(model_name), "dictionaries_named": list(specs),
           "names": rep.names, "spliced_on": spliced_on, "replaces": rep.written_hooks(), "d_sae": rep.total_latents,
           **replacement_metrics(m, rep, toks)}
    if model_name == "othello":
        res["legal_moves"] = othello_legal_moves(m, rep, games)
    if out is not None:
        dest = Path(out)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "eval.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


__all__ = ["Replacement", "open_replacement", "replacement_metrics", "evaluate_replacement",
           "othello_legal_moves", "load_dictionary", "set_members"]
