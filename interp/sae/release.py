"""The SAEs this project trains on its embedded models and ships in ``saes/``.

``saes/registry.json`` names each shipped SAE (``othello/blocks.3.hook_resid_post/topk``)
with its folder, model, hook, architecture and headline metrics; :func:`load_pretrained`
opens one by name, like SAELens's ``SAE.from_pretrained`` does for hub releases.
``python -m interp.sae.release`` (``make saes``) rebuilds them all from scratch: harvest,
train, evaluate, register. Seeded; each SAE's training time is in its ``metrics.json``
(``train_seconds``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from interp.errors import unknown
from interp.hooks import mlp_io_hooks
from interp.models.zoo import REPO_ROOT
# the registry is read where names resolve (interp.runs); importable from here as before
from interp.runs import REGISTRY, SAES_DIR, list_saes, load_pretrained, registry

__all__ = ["REGISTRY", "SAES_DIR", "RELEASE", "ReleaseSpec", "build", "entry_architecture",
           "list_saes", "load_pretrained", "registry"]

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout


@dataclass(frozen=True)
class ReleaseSpec:
    model: str
    hook: str | None                 # None: a cross-layer transcoder (clt_layers)
    arch: str                        # as `interp train --arch`: an architecture, or e2e / e2e+ds
    d_sae: int = 2048
    k: int = 16
    steps: int = 600
    batch_size: int = 4096
    lr: float | None = None
    options: dict = field(default_factory=dict)
    hook_out: str | None = None      # a transcoder's output hook
    clt_layers: tuple[int, ...] | None = None
    label: str | None = None         # its name under the model (default HOOK/ARCH), e.g.
    #                                  plt/L3: a member of the set plt (saes/othello/plt/)
    store_hooks: tuple[str, ...] | None = None  # the shared store's hooks (default: hook)
    store_name: str | None = None    # the shared store's folder under --work

    @property
    def name(self) -> str:
        return f"{self.model}/{self.label or f'{self.hook}/{self.arch}'}"

    @property
    def folder(self) -> Path:
        return SAES_DIR / self.model / (self.label or f"{self.hook}/{self.arch}")

    @property
    def set_name(self) -> str | None:
        """The set this dictionary belongs to (``othello/plt``), evaluated as one
        replacement model once all its members are built."""
        return self.name.rsplit("/", 1)[0] if self.label and "/" in self.label else None

    @property
    def store(self) -> str:
        return self.store_name or f"{self.model}-{self.hook}"


def _mlp_store(n_layers: int) -> tuple[str, ...]:
    return tuple(h for L in range(n_layers) for h in mlp_io_hooks(L))


def transcoder_specs(model: str, n_layers: int, label: str, arch: str = "topk",
                     **settings) -> list[ReleaseSpec]:
    """One per-layer transcoder per MLP, a set named ``label`` (``plt``, ``skip_plt``),
    all trained from one store of every MLP's input and output."""
    return [ReleaseSpec(model, mlp_io_hooks(L)[0], arch, hook_out=mlp_io_hooks(L)[1],
                        label=f"{label}/L{L}", store_hooks=_mlp_store(n_layers),
                        store_name=f"{model}-mlp-io", **settings)
            for L in range(n_layers)]


def clt_spec(model: str, n_layers: int, arch: str = "topk", **settings) -> ReleaseSpec:
    """A cross-layer transcoder over every MLP, from the same store as the PLTs."""
    return ReleaseSpec(model, None, arch, clt_layers=tuple(range(n_layers)), label="clt",
                       store_hooks=_mlp_store(n_layers), store_name=f"{model}-mlp-io",
                       **settings)


def attn_specs(model: str, n_layers: int, arch: str = "topk",
               **settings) -> list[ReleaseSpec]:
    """An attention-output SAE (heads concatenated at attn.hook_z) per layer, set attn."""
    hooks = tuple(f"blocks.{L}.attn.hook_z" for L in range(n_layers))
    return [ReleaseSpec(model, hooks[L], arch, label=f"attn/L{L}", store_hooks=hooks,
                        store_name=f"{model}-attn-z", **settings) for L in range(n_layers)]


# a transcoder's encoder starts small (interp.sae.core), and a learning rate of 2e-3 gets a
# lower FVU in the same steps than the SAE default (8e-4 at 1024 latents)
TRANSCODER_RUN = dict(d_sae=1024, k=32, steps=800, lr=2e-3)
SHORT_RUN = dict(d_sae=1024, k=32, steps=500, lr=2e-3)
CLT_RUN = dict(d_sae=512, k=16, steps=800, lr=2e-3)   # per layer: half the PLTs' L0

OTHELLO_HOOK = "blocks.3.hook_resid_post"
PYCODE_HOOK = "blocks.2.hook_resid_post"
HARVEST_TOKENS = {"othello": 1_200_000, "pycode": 1_200_000}
RELEASE: list[ReleaseSpec] = [
    ReleaseSpec("othello", OTHELLO_HOOK, "topk"),
    ReleaseSpec("othello", OTHELLO_HOOK, "batchtopk"),
    ReleaseSpec("othello", OTHELLO_HOOK, "matryoshka", options={"prefixes": [128, 512, 2048]}),
    ReleaseSpec("othello", OTHELLO_HOOK, "hierarchical_topk", k=32),
    ReleaseSpec("othello", OTHELLO_HOOK, "ksparse", options={"k_start": 64,
                                                             "k_anneal_steps": 300}),
    ReleaseSpec("othello", OTHELLO_HOOK, "relu", lr=1e-3, options={"l1_coeff": 2.0}),
    ReleaseSpec("othello", OTHELLO_HOOK, "jumprelu", lr=1e-3, options={"l0_coeff": 0.01}),
    ReleaseSpec("othello", OTHELLO_HOOK, "e2e", steps=300, batch_size=2360, lr=2e-3),
    # another layer of the residual stream, for circuits across layers
    ReleaseSpec("othello", "blocks.1.hook_resid_post", "topk"),
    ReleaseSpec("pycode", PYCODE_HOOK, "topk"),
    ReleaseSpec("pycode", PYCODE_HOOK, "hierarchical_topk", k=32),
    # dictionaries of a replacement model (issue 15): batchtopk, whose threshold inference
    # circuit-tracer's JumpReLU computes exactly (`interp export-tracer`)
    *transcoder_specs("othello", 6, "plt", arch="batchtopk", **TRANSCODER_RUN),
    clt_spec("othello", 6, arch="batchtopk", **CLT_RUN),
    *transcoder_specs("othello", 6, "skip_plt", arch="batchtopk", options={"skip": True},
                      **SHORT_RUN),
    *attn_specs("othello", 6, d_sae=1024, k=16, steps=400, lr=2e-3),
    *transcoder_specs("pycode", 4, "plt", arch="batchtopk", **SHORT_RUN),
    clt_spec("pycode", 4, arch="batchtopk", **{**CLT_RUN, "steps": 500}),
]


def entry_architecture(entry: dict):
    """The SAE architecture (``interp.sae.core.Architecture``) of a registry entry, whose
    ``arch`` names the training as ``interp train --arch`` does (e2e: a topk SAE)."""
    from interp.sae.core import architecture
    from interp.sae.trainer import objective_and_arch

    return architecture(objective_and_arch(entry["arch"])[1])


def build(spec: ReleaseSpec, work: Path, force: bool = False) -> dict:
    """Train, evaluate and register one shipped dictionary (its store is harvested once,
    shared by the specs that name the same ``store``)."""
    from interp.sae.trainer import TrainConfig, objective_and_arch, train_sae

    built = (spec.folder / "cfg.json").exists()  # a checkpoint alone: a run to resume
    if built and not force and spec.name in registry():
        log.info(f"{spec.name}: already built ({spec.folder}); --force rebuilds it")
        return registry()[spec.name]
    if force and spec.folder.exists():
        shutil.rmtree(spec.folder)
        built = False
    objective, arch = objective_and_arch(spec.arch)
    store = _release_store(spec, work) if objective == "store" else work / spec.store
    cfg = TrainConfig(store=str(store), out=str(spec.folder),
                      hook=None if spec.clt_layers else spec.hook, hook_out=spec.hook_out,
                      clt_layers=spec.clt_layers, arch=arch, objective=objective,
                      d_sae=spec.d_sae, k=spec.k, steps=spec.steps, batch_size=spec.batch_size,
                      lr=spec.lr, sae_options=dict(spec.options), model=spec.model,
                      eval_every=10**9, checkpoint_every=100)
    if not built:  # trained but not registered (stopped during its evaluation): evaluate
        train_sae(cfg)
    entry = {"folder": str(spec.folder.relative_to(REPO_ROOT)), "model": spec.model,
             "hook": spec.hook, "arch": spec.arch, "d_sae": spec.d_sae, "k": spec.k}
    if spec.hook_out:
        entry["hook_out"] = spec.hook_out
    entry.update(_release_eval(spec, store))
    _register(spec.name, entry)
    return entry


def _release_store(spec: ReleaseSpec, work: Path) -> Path:
    """The spec's store under ``work``, harvested when missing or made by another version
    of the model."""
    from interp.activations.harvest import HarvestConfig, harvest

    store = work / spec.store
    if (store / "activations" / "manifest.json").exists() and not _store_is_current(store,
                                                                                   spec.model):
        log.info(f"{store} was harvested from another version of {spec.model}: harvesting again")
        shutil.rmtree(store)
    if not (store / "activations" / "manifest.json").exists():
        harvest(HarvestConfig(model=spec.model, hooks=list(spec.store_hooks or [spec.hook]),
                              out=str(store), n_tokens=HARVEST_TOKENS[spec.model],
                              batch_size=128))
    return store


def _release_eval(spec: ReleaseSpec, store: Path) -> dict:
    """The registry's headline figures: reconstruction on the store's held-out rows and
    the model with the dictionary spliced in (a CLT: the replacement model)."""
    from interp.sae.evaluate import evaluate_sae

    if spec.clt_layers:
        return _replacement_entry(str(spec.folder), spec.folder)
    ev = evaluate_sae(str(spec.folder), store=str(store) if (store / "activations").exists()
                      else None, contexts=128)
    rec = ev.get("reconstruction", {})
    entry = {"fvu": rec.get("fvu"), "l0": rec.get("l0"),
             "dead_fraction": rec.get("dead_fraction"),
             "ce_loss_recovered": ev.get("ce_loss_recovered"), "kl": ev.get("kl")}
    if "reconstruction_by_k" in ev:
        entry["fvu_by_k"] = {k: v["fvu"] for k, v in ev["reconstruction_by_k"].items()}
    return entry


def _replacement_entry(spec: str, out: Path) -> dict:
    """A replacement model's figures (a CLT, or a set of transcoders), written to
    ``out/eval.json``: per-layer FVU and L0, CE-loss recovered, KL, top-1 agreement and
    othello's legal-move accuracy."""
    from interp.sae.replacement import evaluate_replacement

    ev = evaluate_replacement([spec], contexts=256, out=out, games=1000)
    per_layer = [layer for d in ev["dictionaries"] for layer in d.get("layers", [d])]
    entry = {"kind": "replacement", "replaces": ev["replaces"],
             "fvu": sum(x["fvu"] for x in per_layer) / len(per_layer),
             "fvu_by_layer": [x["fvu"] for x in per_layer], "l0": ev["total_l0"],
             "l0_by_layer": [x["l0"] for x in per_layer],
             "dead_fraction": sum(x["dead_fraction"] for x in per_layer) / len(per_layer),
             "ce_loss_recovered": ev["ce_loss_recovered"], "kl": ev["kl"],
             "top1_agreement": ev["top1_agreement"]}
    if "legal_moves" in ev:
        entry["legal_move_accuracy"] = ev["legal_moves"]["replaced"]
        entry["legal_move_accuracy_original"] = ev["legal_moves"]["original"]
    return entry


def build_set(name: str, members: list[ReleaseSpec]) -> dict:
    """Evaluate a built set (``othello/plt``) as one replacement model and register it."""
    folder = members[0].folder.parent
    entry = {"folder": str(folder.relative_to(REPO_ROOT)), "model": members[0].model,
             "hook": None, "arch": members[0].arch,
             "d_sae": sum(m.d_sae for m in members), "k": members[0].k,
             "members": [m.name for m in members], **_replacement_entry(str(folder), folder)}
    _register(name, entry)
    return entry


def _register(name: str, entry: dict) -> None:
    reg = registry()
    reg[name] = entry
    REGISTRY.write_text(json.dumps(dict(sorted(reg.items())), indent=2) + "\n")


def _store_is_current(store: Path, model_name: str) -> bool:
    """Whether ``store`` holds activations of the model as it is now (its metadata)."""
    from interp.activations.harvest import model_meta
    from interp.models import load

    manifest = json.loads((store / "activations" / "manifest.json").read_text())
    now = json.loads(json.dumps(model_meta(load(model_name))))
    return manifest.get("model_meta") == now


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description="Build the SAEs shipped in saes/ (train, "
                                 "evaluate, register).")
    ap.add_argument("--only", action="append", default=None,
                    help="build only these registry names (repeat)")
    ap.add_argument("--force", action="store_true", help="rebuild existing ones")
    ap.add_argument("--work", default="runs/release", help="where the stores are harvested")
    args = ap.parse_args(argv)
    specs = [s for s in RELEASE if not args.only or s.name in args.only]
    if args.only and len(specs) != len(args.only):
        missing = sorted(set(args.only) - {s.name for s in RELEASE})
        raise unknown("release name", missing[0], [s.name for s in RELEASE])
    for spec in specs:
        entry = build(spec, Path(args.work), force=args.force)
        print(f"{spec.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items()
                                          if isinstance(v, float)))
    sets: dict[str, list[ReleaseSpec]] = {}
    for spec in RELEASE:
        if spec.set_name:
            sets.setdefault(spec.set_name, []).append(spec)
    for name, members in sets.items():
        built = {s.name for s in specs}
        if built & {m.name for m in members} and all(m.folder.exists() for m in members):
            entry = build_set(name, members)
            print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items()
                                          if isinstance(v, float)))


if __name__ == "__main__":
    main()
