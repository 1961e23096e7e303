"""The architecture as behaviour: its rules live in interp/sae/core.py (``ARCHS``), the SAE
exposes its inference codes, and end-to-end training is an objective, not an arch."""
import ast
from pathlib import Path

import pytest
import torch

from interp.cli import _train_config, build_parser
from interp.config import parse_args
from interp.sae.core import (ARCHITECTURES, ARCHS, FROM_SAELENS, SAEConfig, SparseAutoencoder,
                             k_grid)
from interp.sae.trainer import TrainConfig, objective_and_arch, train_sae

ROOT = Path(__file__).resolve().parents[1]
HOME = Path("interp/sae/core.py")
# folders that still hold a copy of a rule, and the change that removes it
PENDING: dict[Path, str] = {}  # folders still to convert (none left)
RETIRED = {"TOPK_FAMILY", "THRESHOLD_ARCHS", "SAELENS_ARCH"}


def _names(node: ast.AST) -> set[str]:
    """The architecture names a string constant or a tuple/list/set of them spells."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & set(ARCHITECTURES)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(set(), *(_names(e) for e in node.elts))
    return set()


def _offences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            hit = set().union(*(_names(n) for n in [node.left, *node.comparators]))
            if hit:
                found.append(f"{path}:{node.lineno} compares with {sorted(hit)}")
        elif isinstance(node, (ast.Name, ast.alias)):
            name = node.id if isinstance(node, ast.Name) else node.name
            if name in RETIRED:
                found.append(f"{path}:{node.lineno} uses {name}")
    return found


def test_no_module_outside_core_compares_arch_names():
    files = [p.relative_to(ROOT) for d in ("interp", "apps") for p in (ROOT / d).rglob("*.py")]
    assert HOME in files
    bad = [o for f in files if f != HOME and not set(f.parents) & set(PENDING)
           for o in _offences(f)]
    assert not bad, "architecture rules belong to interp/sae/core.py:\n" + "\n".join(bad)


def test_the_registry_is_consistent():
    assert ARCHITECTURES == tuple(ARCHS) and "topk" in ARCHS
    for name, a in ARCHS.items():
        assert a.name == name
        assert a.threshold_inference == (a.batch_topk or a.learned_threshold)
        assert not (a.any_k or a.batch_topk or a.aux_k) or a.uses_k, name
    assert FROM_SAELENS == {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu",
                            "batchtopk": "batchtopk"}
    assert k_grid(32) == [1, 2, 4, 8, 16, 32] and k_grid(12) == [1, 2, 4, 8, 12]


def _reference_codes(sae, x):
    """The inference encoding as interp/features/build.py wrote it out, by name."""
    arch = sae.cfg.arch
    if arch in ("relu", "jumprelu") or arch in ("batchtopk", "matryoshka") and not sae.training:
        z = sae.encode_pre(x)
        if arch == "relu":
            return None, None, z.relu()
        theta = sae.log_threshold.exp() if arch == "jumprelu" else sae.threshold
        return None, None, z * (z > theta)
    out = sae(x)
    return out.values, out.indices, None


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_inference_codes_match_the_written_out_rule_and_forward(arch, sparse):
    opts = {"prefixes": (8, 32)} if arch == "matryoshka" else {}
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=32, arch=arch, k=4, seed=1,
                                      jumprelu_init_threshold=0.1, **opts),
                            sparse_kernels=sparse)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.train()(x)  # the batch archs estimate their threshold
        for mode in (True, False):
            sae.train(mode)
            got, want = sae.inference_codes(x), _reference_codes(sae, x)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if g is not None:
                    torch.testing.assert_close(g, w)
        sae.eval()
        codes = sae.inference_codes(x)
        dense = codes.acts if codes.acts is not None else torch.zeros(24, 32).scatter_add(
            1, codes.indices, codes.values)
        torch.testing.assert_close(dense, sae(x).dense())


def test_end_to_end_is_an_objective():
    assert objective_and_arch("e2e") == ("e2e", "topk")
    assert objective_and_arch("e2e+ds", "relu") == ("e2e+ds", "relu")
    assert objective_and_arch("batchtopk") == ("store", "batchtopk")
    legacy = TrainConfig(store="", out="o", arch="e2e+ds")  # as release specs name it
    assert (legacy.objective, legacy.arch, legacy.trained_as) == ("e2e+ds", "topk", "e2e+ds")
    a = parse_args(build_parser(), ["train", "--arch", "e2e", "--e2e-act", "relu",
                                    "--model", "othello", "--hook", "blocks.3.hook_resid_post",
                                    "--out", "o"])
    cfg = _train_config(a)
    assert (cfg.objective, cfg.arch, cfg.trained_as) == ("e2e", "relu", "e2e")
    with pytest.raises(Exception, match="end-to-end SAE uses a relu or topk"):
        TrainConfig(store="", out="o", arch="jumprelu", objective="e2e").validate()
    with pytest.raises(Exception, match="unknown training objective"):
        TrainConfig(store="s", out="o", objective="e2e+d").validate()


def test_a_checkpoint_from_before_objectives_resumes(sparse_store, tmp_path):
    kw = dict(store=str(sparse_store), out=str(tmp_path / "r"), d_sae=64, k=4,
              batch_size=256, steps=30, eval_rows=2048, checkpoint_every=10, log_every=5)
    assert train_sae(TrainConfig(**kw, stop_after=10), progress=False)["stopped_at"] == 10
    path = tmp_path / "r" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["train_config"]["objective"]  # as the trainer wrote it before objectives
    state["train_config"]["e2e_act"] = "topk"
    torch.save(state, path)
    assert train_sae(TrainConfig(**kw), progress=False)["steps"] == 30
