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


@pytest.mark.parametrize("name", list_saes())
def test_shipped_sae_reconstructs_its_hook(name):
    entry = registry()[name]
    sae = load_pretrained(name)
    model = load(entry["model"])
    trained_as = sae.cfg.metadata.get("training", sae.cfg.arch)  # e2e: a spliced topk SAE
    assert trained_as == entry["arch"] and sae.cfg.metadata["hook_name"] == entry["hook"]
    from interp.activations.harvest import default_source
    from interp.data.sources import batches, make_source

    toks = next(batches(make_source(default_source(entry["model"]), model=model),
                        min(model.cfg.n_ctx, 128), 32))
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=[entry["hook"]])
    acts = cache[entry["hook"]][:, 1:].reshape(-1, sae.cfg.d_in)
    res = reconstruction_metrics(sae, [acts])
    # a fresh sample from the model's corpus: close to the registered held-out figure
    assert res["fvu"] < 1.5 * entry["fvu"] + 0.02, (res["fvu"], entry["fvu"])
