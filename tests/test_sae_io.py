"""SAELens-format round trips: our SAEs open in sae_lens with identical outputs, and back."""
import json

import pytest
import torch

from interp.errors import CorruptArtifactError, DataError
from interp.sae.core import SAEConfig, SparseAutoencoder
from interp.sae.io import load_sae, save_sae

D, M = 8, 32
SCALE = 0.37  # trained on SCALE * x: saving folds it in


def trained_like(arch, **kw):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch=arch, **kw))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        sae.activation_scale.fill_(SCALE)
    if arch in ("batchtopk", "matryoshka"):
        sae.train()(torch.randn(64, D) * SCALE)  # estimates the inference threshold
    return sae.eval()


def raw_batch():
    return torch.randn(16, D, generator=torch.Generator().manual_seed(5)) * 3


ARCHS = [("relu", {}), ("jumprelu", {"jumprelu_init_threshold": 0.3}), ("topk", {"k": 4}),
         ("batchtopk", {"k": 4}), ("matryoshka", {"k": 4, "prefixes": (8, M)}),
         ("hierarchical_topk", {"k": 4})]


@pytest.mark.parametrize("arch,kw", ARCHS, ids=[a for a, _ in ARCHS])
def test_sae_lens_opens_our_saes_with_identical_outputs(arch, kw, tmp_path):
    from sae_lens import SAE

    ours = trained_like(arch, **kw)
    save_sae(ours, tmp_path / arch, metadata={"model_name": "othello",
                                              "hook_name": "blocks.3.hook_resid_post"})
    theirs = SAE.load_from_disk(str(tmp_path / arch))
    x = raw_batch()
    with torch.no_grad():
        ref_acts = ours.encode(x * SCALE)
        ref_recon = ours(x * SCALE).x_hat / SCALE
        acts = theirs.encode(x)
        torch.testing.assert_close(acts, ref_acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(acts), ref_recon, atol=1e-5, rtol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    # and our loader restores the exact architecture, scale folded
    back = load_sae(tmp_path / arch)
    assert back.cfg.arch == arch
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), ref_acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(x).x_hat, ref_recon, atol=1e-5, rtol=1e-5)


def test_ksparse_round_trips_through_our_loader(tmp_path):
    ours = trained_like("ksparse", k=4, tied=True)
    save_sae(ours, tmp_path / "ks")
    back = load_sae(tmp_path / "ks")
    x = raw_batch()
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, ours(x * SCALE).x_hat / SCALE,
                                   atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "ks" / "cfg.json").read_text())["architecture"] == "ksparse"


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_we_open_sae_lens_saved_saes(arch, tmp_path):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    cls, cfg_cls, kw = {"topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
                        "standard": (StandardSAE, StandardSAEConfig, {}),
                        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {})}[arch]
    torch.manual_seed(0)
    theirs = cls(cfg_cls(d_in=D, d_sae=M, **kw))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.5)
        if arch == "jumprelu":
            theirs.threshold.abs_()
    theirs.save_model(str(tmp_path / arch))
    ours = load_sae(tmp_path / arch)
    x = raw_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x).x_hat, theirs(x), atol=1e-5, rtol=1e-5)


def test_broken_sae_folders_are_named(tmp_path):
    save_sae(trained_like("topk", k=4), tmp_path / "s")
    w = tmp_path / "s" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CorruptArtifactError, match="sae_weights.safetensors is truncated"):
        load_sae(tmp_path / "s")
    w.unlink()
    with pytest.raises(CorruptArtifactError, match="missing sae_weights.safetensors"):
        load_sae(tmp_path / "s")
    save_sae(trained_like("topk", k=4), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "cfg.json").read_text())
    cfg["interp"]["d_in"] = 9
    (tmp_path / "t" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptArtifactError, match="W_enc has shape \\(8, 32\\).*\\(9, 32\\)"):
        load_sae(tmp_path / "t")
    untrained = SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch="batchtopk", k=4))
    with pytest.raises(DataError, match="no inference threshold"):
        save_sae(untrained, tmp_path / "u")
