"""The SAEs shipped in saes/: every registry entry loads, fits its model, and keeps its figures."""
import pytest
import torch

from interp.errors import UnknownNameError
from interp.models import load
from interp.sae.evaluate import reconstruction_metrics
from interp.sae.release import list_saes, load_pretrained, registry


def test_registry_is_not_empty_and_names_are_checked():
    assert list_saes(), "saes/registry.json lists the shipped SAEs"
    with pytest.raises(UnknownNameError, match="closest matches: othello/blocks.3"):
        load_pretrained("othello/blocks.3.hook_resid_post/topkk")


def _tokens(model_name, model, contexts=32):
    from interp.activations.harvest import default_source
    from interp.data.sources import batches, make_source

    return next(batches(make_source(default_source(model_name), model=model),
                        min(model.cfg.n_ctx, 128), contexts))


SINGLE = [n for n in list_saes() if registry()[n].get("kind") != "replacement"]
REPLACEMENTS = [n for n in list_saes() if registry()[n].get("kind") == "replacement"]


@pytest.mark.parametrize("name", SINGLE)
def test_shipped_sae_reconstructs_its_hook(name):
    entry = registry()[name]
    sae = load_pretrained(name)
    model = load(entry["model"])
    trained_as = sae.cfg.metadata.get("training", sae.cfg.arch)  # e2e: a spliced topk SAE
    assert trained_as == entry["arch"] and sae.cfg.metadata["hook_name"] == entry["hook"]
    hooks = [entry["hook"]] + ([entry["hook_out"]] if entry.get("hook_out") else [])
    assert sae.cfg.metadata.get("hook_name_out") == entry.get("hook_out")
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens(entry["model"], model), names_filter=hooks)
    acts = [cache[h][:, 1:].flatten(0, 1).flatten(1) for h in hooks]
    res = reconstruction_metrics(sae, [tuple(acts) if len(acts) == 2 else acts[0]])
    # a fresh sample from the model's corpus: close to the registered held-out figure (the
    # store's last rows; for pycode its corpus's last files, easier than its first: an MLP
    # output's FVU there is up to twice the registered one, as the replacement eval on the
    # test split shows)
    assert res["fvu"] < 2 * entry["fvu"] + 0.02, (res["fvu"], entry["fvu"])


@pytest.mark.parametrize("name", REPLACEMENTS)
def test_shipped_replacement_model_keeps_its_figures(name):
    """A shipped transcoder set or CLT, spliced into its model on fresh games: top-1
    agreement and CE-loss recovered near the registered figures."""
    from interp.sae.replacement import open_replacement, replacement_metrics

    entry = registry()[name]
    rep = open_replacement([name])
    assert rep.written_hooks() == entry["replaces"]
    model = load(entry["model"])
    res = replacement_metrics(model, rep, [_tokens(entry["model"], model, 64)])
    assert res["top1_agreement"] > entry["top1_agreement"] - 0.05, res["top1_agreement"]
    assert res["ce_loss_recovered"] > entry["ce_loss_recovered"] - 0.05
    assert res["total_l0"] == pytest.approx(entry["l0"], rel=0.2)
