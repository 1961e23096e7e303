"""SAEs of SAELens's pretrained directory by name (``saelens:RELEASE/SAE_ID``), offline.

A fake Hugging Face cache holds the files SAELens downloads for one real entry of its
directory (``pythia-70m-deduped-res-sm``, repo ``ctigges/pythia-70m-deduped__res-sm_processed``,
folder ``3-res-sm``): a pre-6.0 SAELens cfg.json as that repo's, with the real d_in = 512
(pythia-70m's residual width) but d_sae = 512 instead of 32768 to keep the files small, and
random weights. Our SAE must compute what SAELens's own SAE computes from the same cache.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

from interp.errors import DataError, MismatchError, UnknownNameError
from interp.models import ModelUnavailableError
from interp.runs import resolve_sae

RELEASE, SAE_ID = "pythia-70m-deduped-res-sm", "blocks.3.hook_resid_post"
REPO, PATH = "ctigges/pythia-70m-deduped__res-sm_processed", "3-res-sm"
D_IN, D_SAE = 512, 512
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Hugging Face cache and our own cache under tmp_path, the hub disabled
    (huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import: patched)."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "interp-cache"))
    return hub


def populate(hub, seed=0):
    """The files SAELens reads for RELEASE/SAE_ID, in the hub cache's layout:
    models--ORG--NAME/refs/main (the commit) and snapshots/COMMIT/PATH/<file>."""
    repo = hub / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT / PATH
    folder.mkdir(parents=True)
    cfg = {  # a pre-6.0 SAELens config, as the processed ctigges repos hold
        "model_name": "pythia-70m-deduped", "hook_point": SAE_ID, "hook_point_layer": 3,
        "hook_point_head_index": None, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
        "device": "cpu", "activation_fn_str": "relu", "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False, "normalize_activations": "none",
        "context_size": 128, "prepend_bos": True, "dataset_path": "EleutherAI/the_pile",
        "sae_lens_training_version": None}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(seed)
    save_file({"W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN ** 0.5,
               "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_IN ** 0.5,
               "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
               "b_dec": torch.randn(D_IN, generator=g) * 0.1},
              str(folder / "sae_weights.safetensors"))


def test_unknown_release_and_id_name_the_closest_without_network(offline, monkeypatch):
    import sae_lens

    def no_download(*a, **k):
        raise AssertionError("a name check must not load anything")

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", no_download)
    with pytest.raises(UnknownNameError, match="pythia-70m-deduped-res-sm") as e:
        resolve_sae(f"saelens:pythia-70m-dedupd-res-sm/{SAE_ID}")
    assert str(e.value).startswith("unknown SAELens release")
    assert "'pythia-70m-dedupd-res-sm'; closest matches: pythia-70m-deduped-res-sm" in str(e.value)
    with pytest.raises(UnknownNameError, match="blocks.3.hook_resid_post") as e:
        resolve_sae(f"saelens:{RELEASE}/blocks.3.hook_resid_pots")
    assert f"SAE ID of SAELens release {RELEASE}" in str(e.value)
    assert f"closest matches: {SAE_ID}" in str(e.value)
    assert "\n" not in str(e.value)


def test_release_from_the_hf_cache_computes_what_saelens_computes(offline, tmp_path):
    from sae_lens import SAE

    from interp.provenance import check_dictionary

    populate(offline)
    named = resolve_sae(f"saelens:{RELEASE}/{SAE_ID}")
    ours = named.sae
    theirs = SAE.from_pretrained(RELEASE, SAE_ID)  # the same cache, SAELens's own reading
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts = theirs.encode(x)
        assert (acts > 0).any() and (acts == 0).any()
        torch.testing.assert_close(ours.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(acts), theirs.decode(acts), atol=1e-5,
                                   rtol=1e-5)
    md = ours.cfg.metadata
    assert md["hook_name"] == SAE_ID
    assert md["model_name"] == "EleutherAI/pythia-70m-deduped"  # TransformerLens's official
    assert (md["saelens_release"], md["saelens_id"], md["saelens_model"]) == (
        RELEASE, SAE_ID, "pythia-70m-deduped")
    assert named.short_name == f"saelens--{RELEASE}--{SAE_ID}"
    assert named.folder == tmp_path / "interp-cache" / "saelens" / RELEASE / SAE_ID
    # the provenance checks see the release's model and hook as for our own SAEs
    check_dictionary(ours, model_name="EleutherAI/pythia-70m-deduped", hook=SAE_ID)
    with pytest.raises(MismatchError, match="trained on 'EleutherAI/pythia-70m-deduped'"):
        check_dictionary(ours, model_name="othello")
    with pytest.raises(MismatchError, match="reads blocks.3.hook_resid_post"):
        check_dictionary(ours, hook="blocks.2.hook_resid_post")
    # the next time it comes from our cache, even with the Hugging Face cache gone
    import shutil

    shutil.rmtree(offline)
    again = resolve_sae(f"saelens:{RELEASE}/{SAE_ID}").sae
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x), acts, atol=1e-5, rtol=1e-5)


def test_offline_uncached_release_is_one_line_through_the_cli(offline, tmp_path, capsys):
    from interp.cli import main

    code = main(["eval", f"saelens:{RELEASE}/blocks.2.hook_resid_post",
                 "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1
    assert f"saelens:{RELEASE}/blocks.2.hook_resid_post is not in the local Hugging Face " \
           f"cache" in err
    assert "HF_HUB_OFFLINE=1" in err and "network access" in err
    assert not (tmp_path / "interp-cache" / "saelens" / RELEASE).exists() or not any(
        (tmp_path / "interp-cache" / "saelens" / RELEASE).iterdir())
    with pytest.raises(ModelUnavailableError):
        resolve_sae(f"saelens:{RELEASE}/blocks.2.hook_resid_post")


def test_a_release_we_cannot_read_is_refused_naming_it(offline, monkeypatch):
    """An SAE SAELens loads but our reader refuses (here a normalisation SAELens did not
    fold) is refused with the release and ID, and leaves nothing in our cache."""
    populate(offline)
    cfg_file = next(offline.rglob("cfg.json"))
    cfg = json.loads(cfg_file.read_text())
    cfg["normalize_activations"] = "layer_norm"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(DataError) as e:
        resolve_sae(f"saelens:{RELEASE}/{SAE_ID}")
    msg = str(e.value)
    assert msg.startswith(f"SAELens release {RELEASE}/{SAE_ID}: ") and "layer_norm" in msg
    from interp.runs import saelens_cache

    assert not any((saelens_cache() / RELEASE).iterdir())


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_saelens_folders_with_options_we_fold(arch, tmp_path):
    """Folders SAELens wrote with ``apply_b_dec_to_input: false`` (Gemma Scope and most
    converted releases) or TopK's ``rescale_acts_by_decoder_norm`` load with SAELens's
    outputs (interp.sae.io.fold_saelens_options)."""
    from sae_lens import SAE

    from interp.sae.io import load_sae

    d, m = 16, 64
    cfg = {"architecture": arch, "d_in": d, "d_sae": m, "apply_b_dec_to_input": False,
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.0.hook_resid_pre"}}
    if arch == "topk":
        cfg.update(k=5, rescale_acts_by_decoder_norm=True)
    theirs = SAE.from_dict(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if arch == "jumprelu":
            theirs.threshold.copy_(torch.rand(m, generator=g) * 0.5)
    theirs.save_model(tmp_path / arch)
    ours = load_sae(tmp_path / arch)
    x = torch.randn(8, d, generator=g)
    with torch.no_grad():
        acts = theirs.encode(x)
        assert (acts > 0).any()
        torch.testing.assert_close(ours.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x).x_hat, theirs(x), atol=1e-5, rtol=1e-5)


def test_the_release_model_offline_and_uncached_is_one_line(offline, tmp_path, capsys):
    """The SAE is cached but the model it belongs to is not: a command that needs the
    model says which one and why, in one line, and writes nothing."""
    from interp.cli import main

    populate(offline)
    code = main(["features", "--sae", f"saelens:{RELEASE}/{SAE_ID}", "--tokens", "100",
                 "--source", "pycode:test", "--out", str(tmp_path / "f.duckdb")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "EleutherAI/pythia-70m-deduped" in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "f.duckdb").exists()
