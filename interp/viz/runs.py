"""What a run folder holds, for the app's overview and for notebooks: its ``run.json``, its
SAEs and the SAEs shipped for its model (with their metrics, training logs and feature
stores), and the FVU-vs-L0 figure across them.

Nothing here loads a model or an SAE's weights: it reads small JSON files and the metadata
of feature stores, so listing a run stays fast.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from interp.errors import CorruptArtifactError
from interp.runs import read_run_json


@dataclass
class SAEInfo:
    """One SAE the app can show. ``name`` is the folder name under ``RUN/saes`` for a run's
    SAE, the registry name for a shipped one (``othello/blocks.3.hook_resid_post/topk``)."""
    name: str
    source: str                      # "run" | "shipped" | "store" (known from its store only)
    folder: Path | None = None
    model: str | None = None
    hook: str | None = None          # the hook it reads (its codes come from there)
    hook_out: str | None = None      # a transcoder's: the hook it writes (None: an SAE)
    skip: bool = False               # a skip transcoder
    arch: str | None = None
    d_sae: int | None = None
    k: int | None = None
    fvu: float | None = None
    l0: float | None = None
    dead_fraction: float | None = None
    ce_loss_recovered: float | None = None
    train_log: Path | None = None
    feature_store: Path | None = None

    @property
    def spec(self) -> str:
        """What ``interp.circuits.discover.saes_for`` and ``interp features --sae`` accept."""
        if self.source == "shipped":
            return self.name
        return str(self.folder) if self.folder is not None else self.name

    @property
    def store_key(self) -> str:
        """The feature-store file stem of this SAE (``interp features`` names files so)."""
        return self.name.replace("/", "--")

    @property
    def writes(self) -> str | None:
        """The hook it writes: a transcoder's output hook, else the hook it reads. Circuit
        nodes and interventions are at this hook."""
        return self.hook_out or self.hook

    @property
    def kind(self) -> str:
        if not self.hook_out:
            return "SAE"
        return "skip transcoder" if self.skip else "transcoder"

    @property
    def label(self) -> str:
        where = "run" if self.source == "run" else "shipped" if self.source == "shipped" else "store"
        return f"{self.name} ({where})"

    def _uses_k(self) -> bool:
        """k means something for the top-k family only (relu / jumprelu show none)."""
        from interp.sae.core import ARCHS

        arch = ARCHS.get(self.arch or "")
        return arch is None or arch.uses_k

    def row(self) -> dict:
        return {"SAE": self.name, "from": self.source, "kind": self.kind,
                "hook": hooks_text(self.hook, self.hook_out), "arch": self.arch,
                "latents": self.d_sae, "k": self.k if self._uses_k() else None,
                "FVU": self.fvu, "L0": self.l0,
                "dead %": None if self.dead_fraction is None else 100 * self.dead_fraction,
                "CE-loss recovered": self.ce_loss_recovered,
                "feature store": self.feature_store.name if self.feature_store else ""}


def hooks_text(hook: str | None, hook_out: str | None = None, quote: str = "") -> str | None:
    """How the app names what a dictionary reads and writes: ``hook`` for an SAE,
    ``reads IN → writes OUT`` for a transcoder; each hook between ``quote`` marks (a
    backtick: Markdown code)."""
    if hook is None:
        return None
    q = quote
    return f"reads {q}{hook}{q} → writes {q}{hook_out}{q}" if hook_out else f"{q}{hook}{q}"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise CorruptArtifactError(f"{path} is not valid JSON ({e})") from e


def _metrics(folder: Path) -> dict:
    """FVU, L0, dead fraction, CE-loss recovered of an SAE folder (eval.json first, then the
    training's own held-out evaluation in metrics.json)."""
    out: dict = {}
    ev = read_json(folder / "eval.json")
    if ev:
        rec = ev.get("reconstruction") or {}
        out = {"fvu": rec.get("fvu"), "l0": rec.get("l0"),
               "dead_fraction": rec.get("dead_fraction"),
               "ce_loss_recovered": ev.get("ce_loss_recovered")}
    m = read_json(folder / "metrics.json")
    if m and isinstance(m.get("eval"), dict):
        for key in ("fvu", "l0", "dead_fraction"):
            if out.get(key) is None:
                out[key] = m["eval"].get(key)
    return out


def sae_folder_info(folder: Path, name: str, source: str) -> SAEInfo:
    cfg = read_json(folder / "cfg.json") or {}
    ours = cfg.get("interp") or {}
    md = cfg.get("metadata") or ours.get("metadata") or {}
    log = folder / "train_log.jsonl"
    return SAEInfo(name=name, source=source, folder=folder, model=md.get("model_name"),
                   hook=md.get("hook_name"),
                   hook_out=md.get("hook_name_out"),
                   skip=bool(ours.get("skip")),
                   arch=ours.get("arch") or cfg.get("architecture"),
                   d_sae=cfg.get("d_sae"), k=ours.get("k") or cfg.get("k"),
                   train_log=log if log.exists() and log.stat().st_size else None,
                   **_metrics(folder))


def run_saes(run: str | Path) -> list[SAEInfo]:
    """The SAEs trained in the run (``RUN/saes/**/cfg.json``)."""
    from interp.runs import run_sae_folders

    run = Path(run)
    out = []
    for folder in run_sae_folders(run):
        out.append(sae_folder_info(folder, "/".join(folder.relative_to(run / "saes").parts),
                                   "run"))
    return out


def shipped_saes(model: str | None = None) -> list[SAEInfo]:
    """The SAEs in ``saes/registry.json`` (of ``model`` when given)."""
    from interp.models.zoo import REPO_ROOT
    from interp.runs import registry

    out = []
    for name, e in registry().items():
        if model and e.get("model") != model or e.get("kind") == "replacement":
            continue  # a set or a CLT: ``replacement_evals``
        folder = REPO_ROOT / e["folder"]
        info = sae_folder_info(folder, name, "shipped") if folder.exists() else SAEInfo(
            name, "shipped", folder)
        for key in ("model", "hook", "arch", "d_sae", "k", "fvu", "l0", "dead_fraction",
                    "ce_loss_recovered"):
            if e.get(key) is not None:
                setattr(info, key, e[key])
        out.append(info)
    return out


def feature_store_meta(path: Path) -> dict:
    from interp.features import FeatureStore

    with FeatureStore(path) as fs:
        return dict(fs.meta)


def list_saes(run: str | Path | None, model: str | None = None) -> list[SAEInfo]:
    """The run's SAEs, then the shipped SAEs of its model (or of ``model``), each with its
    feature store when ``RUN/features/`` has one; stores of other SAEs come last."""
    from interp.features import find_feature_stores

    run = Path(run) if run is not None else None
    if run is not None and model is None:
        model = read_run_json(run).get("model")
    infos = (run_saes(run) if run is not None else []) + shipped_saes(model)
    by_key = {i.store_key: i for i in infos}
    by_folder = {str(i.folder.resolve()): i for i in infos if i.folder is not None}
    for path in find_feature_stores(run) if run is not None else []:
        try:
            meta = feature_store_meta(path)
        except Exception:  # a broken store is reported where it is opened, not here
            continue
        spec = str(meta.get("sae") or "")
        info = by_key.get(path.stem) or by_key.get(str(meta.get("sae_name"))) or (
            by_folder.get(str(Path(spec).resolve())) if spec and Path(spec).is_dir() else None)
        if info is None:
            folder = Path(spec) if spec and Path(spec).is_dir() else None
            info = sae_folder_info(folder, path.stem, "store") if folder else SAEInfo(
                path.stem, "store", None, meta.get("model"), meta.get("hook"),
                meta.get("hook_out"), arch=meta.get("arch"), d_sae=meta.get("d_sae"))
            info.source = "store"
            infos.append(info)
            by_key[path.stem] = info
        if info.feature_store is None:
            info.feature_store = path
    return infos


def fvu_l0_figure(infos: list[SAEInfo], title: str = "FVU vs L0 across SAEs") -> go.Figure:
    """Reconstruction error against sparsity, one marker per SAE (log L0), grouped by hook
    and by where it comes from (run / shipped). Names and architectures are in the hover,
    not printed beside the markers: a dozen SAEs at similar L0 made the labels overlap."""
    fig = go.Figure()
    groups: dict[tuple, list[SAEInfo]] = {}
    for i in infos:
        if i.fvu is not None and i.l0:
            groups.setdefault((i.source, hooks_text(i.hook, i.hook_out)), []).append(i)
    for (source, hook), items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        fig.add_trace(go.Scatter(
            x=[i.l0 for i in items], y=[i.fvu for i in items], mode="markers",
            name=f"{hook} ({source})",
            customdata=[[i.name, i.arch or "?"] for i in items],
            marker=dict(size=11, symbol="circle" if source == "shipped" else "diamond",
                        line=dict(width=1, color="white")),
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}<br>L0 %{x:.1f}<br>"
                          "FVU %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="L0 (active latents per token)",
                      yaxis_title="FVU (fraction of variance unexplained)", xaxis_type="log",
                      height=420, margin=dict(l=60, r=20, t=60, b=50))
    return fig


def replacement_evals(run: str | Path | None, model: str | None = None) -> list[dict]:
    """Replacement models evaluated (``interp eval`` on a transcoder set or a CLT): the
    shipped ones of ``model`` (registry entries of kind replacement) and every
    ``eval.json`` of kind replacement under the run; each as its eval figures plus
    ``name`` and ``source``."""
    from interp.models.zoo import REPO_ROOT
    from interp.runs import registry

    out = []
    for name, e in registry().items():
        if e.get("kind") == "replacement" and (not model or e.get("model") == model):
            ev = read_json(REPO_ROOT / e["folder"] / "eval.json")
            if ev:
                out.append({**ev, "name": name, "source": "shipped"})
    if run is not None:
        for path in sorted(Path(run).glob("**/eval.json")):
            ev = read_json(path)
            if ev and ev.get("kind") == "replacement":
                out.append({**ev, "name": str(path.parent.relative_to(run)), "source": "run"})
    return out


def replacement_row(ev: dict) -> dict:
    """One replacement model as a table row."""
    lm = ev.get("legal_moves") or {}
    return {"replacement": ev["name"], "from": ev["source"], "hooks replaced":
            len(ev.get("replaces") or []), "total L0": ev.get("total_l0"),
            "CE-loss recovered": ev.get("ce_loss_recovered"), "KL": ev.get("kl"),
            "top-1 agreement %": 100 * ev["top1_agreement"] if "top1_agreement" in ev else None,
            "legal moves % (replaced)": 100 * lm["replaced"] if lm else None,
            "legal moves % (model)": 100 * lm["original"] if lm else None}


def replacement_layers_figure(evals: list[dict]) -> go.Figure:
    """Per-layer FVU (markers) and L0 (hover) of each replacement model's dictionaries,
    by the layer whose output they write."""
    from interp.hooks import layer_of

    fig = go.Figure()
    for ev in evals:
        layers = [x for d in ev.get("dictionaries", []) for x in d.get("layers", [d])]
        names = [x["layer"] if "layer" in x else layer_of((x.get("writes") or [""])[0])
                 for x in layers]   # a CLT's layers, or the layer each set member writes
        fig.add_trace(go.Scatter(
            x=names, y=[x["fvu"] for x in layers], mode="lines+markers",
            name=ev["name"], customdata=[x["l0"] for x in layers],
            hovertemplate="%{x}<br>FVU %{y:.3f}<br>L0 %{customdata:.1f}<extra></extra>"))
    fig.update_layout(title="Replacement models: FVU of each MLP output", height=380,
                      xaxis_title="layer (the MLP or attention output replaced)",
                      yaxis_title="FVU (NMSE)", xaxis_dtick=1,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def find_circuits(run: str | Path) -> list[Path]:
    """Saved circuit JSON files of a run (``RUN/circuits/*.json`` and ``RUN/*.json`` in the
    ``interp-circuit`` format)."""
    from interp.circuits.graph import FORMAT

    run = Path(run)
    out = []
    for path in sorted(run.glob("circuits/**/*.json")) + sorted(run.glob("*.json")):
        try:
            with open(path) as f:
                head = f.read(4096)
        except OSError:
            continue
        if f'"{FORMAT}"' in head:
            out.append(path)
    return out
