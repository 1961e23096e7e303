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
from interp.models.zoo import REPO_ROOT
# the registry is read where names resolve (interp.runs); importable from here as before
from interp.runs import REGISTRY, SAES_DIR, list_saes, load_pretrained, registry

__all__ = ["REGISTRY", "SAES_DIR", "RELEASE", "ReleaseSpec", "build", "entry_architecture",
           "list_saes", "load_pretrained", "registry"]

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout


@dataclass(frozen=True)
class ReleaseSpec:
    model: str
    hook: str
    arch: str                        # as `interp train --arch`: an architecture, or e2e / e2e+ds
    d_sae: int = 2048
    k: int = 16
    steps: int = 600
    batch_size: int = 4096
    lr: float | None = None
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.hook}/{self.arch}"

    @property
    def folder(self) -> Path:
        return SAES_DIR / self.model / self.hook / self.arch


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
]


def entry_architecture(entry: dict):
    """The SAE architecture (``interp.sae.core.Architecture``) of a registry entry, whose
    ``arch`` names the training as ``interp train --arch`` does (e2e: a topk SAE)."""
    from interp.sae.core import architecture
    from interp.sae.trainer import objective_and_arch

    return architecture(objective_and_arch(entry["arch"])[1])


def build(spec: ReleaseSpec, work: Path, force: bool = False) -> dict:
    """Train, evaluate and register one shipped SAE (its store is harvested once)."""
    from interp.activations.harvest import HarvestConfig, harvest
    from interp.sae.evaluate import evaluate_sae
    from interp.sae.trainer import TrainConfig, objective_and_arch, train_sae

    if spec.folder.exists():
        if not force:
            log.info(f"{spec.name}: already built ({spec.folder}); --force rebuilds it")
            return registry().get(spec.name, {})
        shutil.rmtree(spec.folder)
    store = work / f"{spec.model}-{spec.hook}"
    if (store / "activations" / "manifest.json").exists() and not _store_is_current(store,
                                                                                   spec.model):
        log.info(f"{store} was harvested from another version of {spec.model}: harvesting again")
        shutil.rmtree(store)
    objective, arch = objective_and_arch(spec.arch)
    if objective == "store" and not (store / "activations" / "manifest.json").exists():
        harvest(HarvestConfig(model=spec.model, hooks=[spec.hook], out=str(store),
                              n_tokens=HARVEST_TOKENS[spec.model], batch_size=128))
    cfg = TrainConfig(store=str(store), out=str(spec.folder), hook=spec.hook, arch=arch,
                      objective=objective,
                      d_sae=spec.d_sae, k=spec.k, steps=spec.steps, batch_size=spec.batch_size,
                      lr=spec.lr, sae_options=dict(spec.options), model=spec.model,
                      eval_every=10**9, checkpoint_every=100)
    train_sae(cfg)
    ev = evaluate_sae(str(spec.folder), store=str(store) if (store / "activations").exists()
                      else None, contexts=128)
    rec = ev.get("reconstruction", {})
    entry = {"folder": str(spec.folder.relative_to(REPO_ROOT)), "model": spec.model,
             "hook": spec.hook, "arch": spec.arch, "d_sae": spec.d_sae, "k": spec.k,
             "fvu": rec.get("fvu"), "l0": rec.get("l0"),
             "dead_fraction": rec.get("dead_fraction"),
             "ce_loss_recovered": ev.get("ce_loss_recovered"), "kl": ev.get("kl")}
    if "reconstruction_by_k" in ev:
        entry["fvu_by_k"] = {k: v["fvu"] for k, v in ev["reconstruction_by_k"].items()}
    reg = registry()
    reg[spec.name] = entry
    REGISTRY.write_text(json.dumps(dict(sorted(reg.items())), indent=2) + "\n")
    return entry


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


if __name__ == "__main__":
    main()
