import json

import numpy as np
import pytest
import torch

from interp.activations.harvest import HarvestConfig, harvest, open_store, stop_layer
from interp.activations.store import IncompleteStoreError
from interp.errors import DataError, UnknownNameError
from interp.models import load

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post", "blocks.0.attn.hook_z"]


@pytest.fixture(scope="module")
def othello():
    return load("othello")


def test_stop_layer():
    assert stop_layer(["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"], 6) == 4
    assert stop_layer(["hook_embed"], 6) == 0
    assert stop_layer(["ln_final.hook_normalized"], 6) is None


def test_harvest_matches_run_with_cache(othello, tmp_path):
    store = harvest(HarvestConfig(model="othello", hooks=HOOKS, n_tokens=2000,
                                  out=str(tmp_path / "run"), batch_size=16, shard_rows=500),
                    model=othello, progress=False)
    assert store.n_rows >= 2000 and len(store.manifest["shards"]) > 1
    assert store.d_in("blocks.2.mlp.hook_post") == othello.cfg.d_mlp
    assert store.d_in("blocks.0.attn.hook_z") == othello.cfg.d_model  # heads x d_head
    # recompute a few contexts directly and compare row by row
    ctx = np.array([0, 7, store.n_contexts - 1])
    toks = torch.from_numpy(store.tokens(ctx).astype(np.int64))
    _, cache = othello.run_with_cache(toks, names_filter=HOOKS)
    for h in HOOKS:
        ref = cache[h][:, 1:].reshape(len(ctx), len(store.positions), -1)  # BOS dropped
        rows = (ctx[:, None] * len(store.positions) + np.arange(len(store.positions))).ravel()
        got = store.read(rows, h).view(len(ctx), len(store.positions), -1)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model"] == "othello" and run["hooks"] == HOOKS
    assert store.manifest["source"]["kind"] == "othello"


def test_harvest_resumes_an_interrupted_run(othello, tmp_path):
    cfg = dict(model="othello", hooks=HOOKS[:1], out=str(tmp_path / "run"), batch_size=8,
               shard_rows=59 * 8)
    full = harvest(HarvestConfig(n_tokens=59 * 40, **{**cfg, "out": str(tmp_path / "full")}),
                   model=othello, progress=False)
    # simulate a crash: run the first part, then mark the manifest incomplete
    part = harvest(HarvestConfig(n_tokens=59 * 16, **cfg), model=othello, progress=False)
    m = json.loads((part.path / "manifest.json").read_text())
    m["complete"] = False
    (part.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IncompleteStoreError):
        open_store(tmp_path / "run")
    # the same command with the full count resumes (the requested count is not part of
    # the settings that must match)
    m["n_contexts_requested"] = full.manifest["n_contexts_requested"]
    (part.path / "manifest.json").write_text(json.dumps(m))
    resumed = harvest(HarvestConfig(n_tokens=59 * 40, **cfg), model=othello, progress=False)
    assert resumed.n_rows == full.n_rows
    np.testing.assert_array_equal(resumed.tokens(), full.tokens())
    torch.testing.assert_close(resumed.read_range(0, full.n_rows),
                               full.read_range(0, full.n_rows))


def test_unknown_hook_lists_closest(othello, tmp_path):
    with pytest.raises(UnknownNameError, match="closest matches: blocks.1.hook_resid_post"):
        harvest(HarvestConfig(model="othello", hooks=["blocks.1.hook_resid_pst"],
                              n_tokens=100, out=str(tmp_path / "r")), model=othello)


def test_non_positional_hook_is_refused(othello, tmp_path):
    with pytest.raises(DataError, match="not .batch, position"):
        harvest(HarvestConfig(model="othello", hooks=["blocks.0.attn.hook_pattern"],
                              n_tokens=100, out=str(tmp_path / "r")), model=othello)


def test_bad_counts(othello, tmp_path):
    with pytest.raises(DataError, match="positive"):
        harvest(HarvestConfig(model="othello", hooks=HOOKS[:1], n_tokens=0,
                              out=str(tmp_path / "r")), model=othello)


def test_the_cli_says_the_store_size_before_harvesting(tmp_path):
    from refusals import run_cli

    code, out, _ = run_cli(["harvest", "--model", "othello", "--hook", "blocks.1.hook_resid_post",
                            "--hook", "blocks.1.hook_mlp_out", "--tokens", "590",
                            "--out", tmp_path / "r"])
    assert code == 0
    first = next(line for line in out.splitlines() if line.startswith("store "))
    # 590 tokens = 10 games of 59 kept positions; (2 x 128 floats + the tokens) per row
    assert first.startswith(f"store {tmp_path / 'r' / 'activations'}: 590 rows x "), first
    nbytes = 590 * 256 * 4 + 10 * 60 * 4
    assert first.endswith(f"{nbytes / 2**20:.1f} MiB when complete"), first
