"""Training without a store (``interp.activations.stream``): the stream yields the rows a
harvest of the same tokens stores, shuffled within buffers with (x, y) kept paired; its
batches do not depend on where a run started, so a killed run resumes to the weights of an
uninterrupted one; the CLI trains a transcoder from it and refuses bad flag sets."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refusals import refuse, run_cli

from interp.activations import stream as stream_mod
from interp.activations.harvest import HarvestConfig, harvest
from interp.activations.stream import ActivationStream
from interp.errors import MismatchError
from interp.models import load
from interp.sae.trainer import TrainConfig, train_sae

HOOKS = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]  # a transcoder's pair
P = 59  # rows per othello context: positions 1..59 (BOS dropped, as a harvest does)


@pytest.fixture(scope="module")
def othello():
    return load("othello")


def sorted_rows(a: torch.Tensor) -> torch.Tensor:
    """The rows of ``a`` in lexicographic order: a multiset compared as a tensor."""
    return a[np.lexsort(a.numpy().T[::-1])]


def test_stream_rows_are_the_harvested_rows_per_buffer(othello, tmp_path):
    """2 held-out contexts, then 20 training ones in buffers of 8, 8 and 4 contexts:
    each buffer's (x, y) pairs are the store's pairs of the same contexts, reordered."""
    store = harvest(HarvestConfig(model="othello", hooks=HOOKS, n_tokens=22 * P,
                                  out=str(tmp_path / "run"), batch_size=16),
                    model=othello, progress=False)
    s = ActivationStream("othello", HOOKS, tokens=20 * P, eval_rows=100,
                         buffer_tokens=8 * P, loaded_model=othello)
    assert (s.held_out_contexts, s.n_buffers, s.n_rows) == (2, 3, 20 * P + 100)
    x, y = (torch.cat(t) for t in zip(*s.batches(50, HOOKS)))  # one epoch, every row
    assert x.shape == (20 * P, 128)
    for i, n_ctx in enumerate((8, 8, 4)):
        ours = slice(i * 8 * P, (i * 8 + n_ctx) * P)
        rows = np.arange((2 + 8 * i) * P, (2 + 8 * i + n_ctx) * P)  # after the held-out ones
        theirs = torch.cat([store.read(rows, HOOKS[0]), store.read(rows, HOOKS[1])], 1)
        torch.testing.assert_close(sorted_rows(torch.cat([x[ours], y[ours]], 1)),
                                   sorted_rows(theirs), rtol=0, atol=1e-6)
        assert not torch.equal(x[ours], theirs[:, :128]), "rows shuffled within the buffer"
    # the held-out rows are the source's first contexts, in order
    held = s.read(np.arange(20 * P, 20 * P + 100), HOOKS[1])
    torch.testing.assert_close(held, store.read(np.arange(100), HOOKS[1]), rtol=0, atol=1e-6)
    ev = list(s.batches(64, HOOKS, shuffle=False, row_range=(20 * P, s.n_rows)))
    assert [b[0].shape[0] for b in ev] == [64, 36]
    # random access in the first buffer (the trainer's init sample): the store's rows
    rows = np.array([5, 400, 3, 3])
    torch.testing.assert_close(s.read(rows, HOOKS[0]), store.read(rows + 2 * P, HOOKS[0]),
                               rtol=0, atol=1e-6)


def test_a_batch_is_the_same_from_any_start(othello):
    """Batch b of a fresh stream started at b equals batch b of one read from 0 (across
    buffer boundaries and into the second epoch, whose buffers are shuffled anew)."""
    kw = dict(tokens=20 * P, eval_rows=0, buffer_tokens=8 * P, loaded_model=othello)
    a = ActivationStream("othello", HOOKS[:1], **kw)
    every = list(a.batches(100, seed=3, epochs=2, drop_last=True))
    assert len(every) == 2 * (20 * P // 100)
    for b in (0, 5, 9, 11, 16):
        again = ActivationStream("othello", HOOKS[:1], **kw)
        assert torch.equal(next(again.batches(100, seed=3, epochs=None, start_batch=b,
                                              drop_last=True)), every[b])
    assert not torch.equal(every[0], every[11]), "the second epoch is shuffled anew"


def stream_config(out, **kw) -> TrainConfig:
    base = dict(store="", model="othello", hook=HOOKS[0], hook_out=HOOKS[1], tokens=40 * P,
                out=str(out), d_sae=32, k=4, batch_size=128, steps=25, lr=5e-3,
                warmup_steps=5, eval_rows=200, eval_every=10**6, checkpoint_every=5,
                log_every=5, init_sample_rows=512)
    return TrainConfig(**{**base, **kw})


def test_a_killed_stream_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Buffers of 8 contexts (472 rows: batches straddle them), 18 batches an epoch and 25
    steps: the run is stopped after steps 8 and 20 (mid-buffer, then in the second epoch)."""
    monkeypatch.setattr(stream_mod, "BUFFER_TOKENS", 8 * P)
    train_sae(stream_config(tmp_path / "full"), progress=False)
    for stop, at in ((8, 8), (12, 20)):
        assert train_sae(stream_config(tmp_path / "part", stop_after=stop),
                         progress=False)["stopped_at"] == at
    with pytest.raises(MismatchError, match="tokens"):  # another budget: other rows
        train_sae(stream_config(tmp_path / "part", tokens=41 * P), progress=False)
    train_sae(stream_config(tmp_path / "part"), progress=False)
    a = load_file(str(tmp_path / "full" / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "part" / "sae_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_cli_trains_a_transcoder_from_the_stream(othello, tmp_path):
    from interp.provenance import model_digest
    from interp.sae.io import load_sae

    out = tmp_path / "tc"
    code, stdout, err = run_cli(["train", "--model", "othello", "--hook", HOOKS[0],
                                 "--hook-out", HOOKS[1], "--tokens", "4000", "--out", out,
                                 "--latents", "32", "--k", "4", "--batch-size", "256",
                                 "--eval-rows", "512"])
    assert code == 0, err
    assert "stream:othello" in stdout and "held-out" in stdout
    md = json.loads((out / "cfg.json").read_text())["metadata"]
    assert md["model_name"] == "othello" and md["model_digest"] == model_digest(othello)
    assert (md["hook_name"], md["hook_name_out"]) == tuple(HOOKS)
    assert md["context_size"] == 60 and json.loads(md["dataset_path"])["kind"] == "othello"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4012 // 256 and metrics["eval"]["n_tokens"] == 512
    assert load_sae(out).cfg.d_out == 128


@pytest.mark.parametrize("argv,fragments", [
    (["--store", "{tmp}/run", "--model", "othello", "--hook", HOOKS[0], "--tokens", "500"],
     ("--store", "--model", "not both")),
    (["--model", "othello", "--hook", HOOKS[0]], ("--tokens",)),
    (["--model", "othello", "--tokens", "500"], ("--hook",)),
    (["--model", "othello", "--hook", HOOKS[0], "--tokens", "0"], ("--tokens", "positive")),
    (["--store", "{tmp}/run", "--tokens", "500"], ("--tokens", "store's rows are its own")),
    (["--arch", "e2e", "--model", "othello", "--hook", HOOKS[0], "--tokens", "500"],
     ("--tokens", "--steps")),
    (["--model", "othello", "--hook", "blocks.0.hook_mlp_ot", "--tokens", "500"],
     ("blocks.0.hook_mlp_out",)),
    (["--model", "othello", "--hook", HOOKS[0], "--tokens", "500", "--source", "pycode"],
     ("does not fit the model 'othello'",)),
    (["--model", "othello", "--hook", HOOKS[0], "--tokens", "500", "--batch-size", "1024"],
     ("too few",)),
])
def test_stream_refusals(argv, fragments, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    refuse(["train", *argv, "--out", tmp_path / "sae", "--eval-rows", "64"], *fragments,
           watch=[tmp_path])
