"""Parallel harvest: torchrun (gloo, two CPU processes) writes one store equal to one process's."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from interp.activations.harvest import HarvestConfig, _Plan, _prepare_parallel, harvest
from interp.activations.store import (ActivationStore, IncompleteStoreError, StoreWriter,
                                      merge_parts, part_manifest_path)
from interp.errors import DataError

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post"]
N_CTX_STORED = 59  # othello: 60 positions, BOS dropped
CONTEXTS = 37      # odd: the two ranks get 18 and 19 contexts
ARGS = ["--model", "othello", "--hook", HOOKS[0], "--hook", HOOKS[1],
        "--tokens", str(CONTEXTS * N_CTX_STORED), "--batch-size", "8",
        "--shard-rows", str(N_CTX_STORED * 5)]


def torchrun(*args, nproc=2):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_two_processes_write_the_store_of_one(tmp_path):
    res = torchrun("-m", "interp.cli", "harvest", *ARGS, "--out", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    one = harvest(HarvestConfig(model="othello", hooks=HOOKS, n_tokens=CONTEXTS * N_CTX_STORED,
                                out=str(tmp_path / "one"), batch_size=8,
                                shard_rows=N_CTX_STORED * 5), progress=False)
    two = ActivationStore(tmp_path / "two" / "activations")
    assert two.n_rows == one.n_rows == CONTEXTS * N_CTX_STORED
    assert two.n_contexts == one.n_contexts == CONTEXTS
    # the ranks took contiguous shares and the manifest lists them in rank order, so the
    # rows come in the single-process order; compare by context id, row by row
    np.testing.assert_array_equal(two.tokens(), one.tokens())
    for h in HOOKS:
        torch.testing.assert_close(two.read_range(0, two.n_rows, h),
                                   one.read_range(0, one.n_rows, h), atol=1e-5, rtol=1e-5)
    m = two.manifest
    assert m["complete"] and m["n_contexts"] == CONTEXTS
    assert [(p["rank"], p["context_start"], p["context_stop"], p["contexts"])
            for p in m["parallel"]["parts"]] == [(0, 0, 18, 18), (1, 18, 37, 19)]
    files = [s["file"] for s in m["shards"]]
    assert files[0].startswith("p00000-") and files[-1].startswith("p00001-")
    assert not (two.path / "parts").exists()
    for key in ("hooks", "positions", "n_ctx", "dtype", "model", "source"):
        assert m[key] == one.manifest[key]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["hooks"] == HOOKS
    # the finished store is complete: the same command again is refused, not redone
    again = torchrun("-m", "interp.cli", "harvest", *ARGS, "--out", str(tmp_path / "two"))
    assert again.returncode != 0 and "already holds a complete store" in again.stderr


@pytest.mark.slow
def test_ranks_with_different_settings_are_refused(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(
        "import os, sys\nfrom interp.cli import main\n"
        f"args = {ARGS!r}\n"
        "if os.environ['RANK'] == '1':\n"
        "    args[args.index('--tokens') + 1] = '1000'\n"
        "    args[args.index('--batch-size') + 1] = '4'\n"
        f"sys.exit(main(['harvest', *args, '--out', {str(tmp_path / 'run')!r}]))\n")
    res = torchrun(str(script))
    assert res.returncode != 0
    assert "were given different settings" in res.stderr
    assert "n_tokens: rank 0 has 2183, rank 1 has 1000" in res.stderr
    assert "batch_size: rank 0 has 8, rank 1 has 4" in res.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _write_part(path, rank, world, start, stop, close=True, shard_contexts=2, count=None):
    w = StoreWriter(path, {"h": 3}, 4, [1, 2, 3], shard_rows=3 * shard_contexts,
                    meta={"model": "toy", "source": {"kind": "t"}, "n_contexts_requested": 5},
                    expected_contexts=stop - start,
                    part={"rank": rank, "world_size": world, "context_start": start,
                          "context_stop": stop})
    for c in range(w.contexts_done, stop - start if count is None else count):
        ctx = start + c
        w.add(np.full((1, 4), ctx), {"h": torch.full((1, 3, 3), float(ctx))})
    if close:
        w.close()
    return w


def test_parts_merge_into_one_store_in_rank_order(tmp_path):
    _write_part(tmp_path, 1, 2, 2, 5)   # rank order, not finishing order, decides
    _write_part(tmp_path, 0, 2, 0, 2)
    merge_parts(tmp_path, 2)
    s = ActivationStore(tmp_path)
    assert s.n_contexts == 5 and s.n_rows == 15
    np.testing.assert_array_equal(s.tokens()[:, 0], np.arange(5))
    np.testing.assert_array_equal(s.read_range(0, 15, "h")[:, 0].numpy(),
                                  np.repeat(np.arange(5.0), 3))
    assert not (tmp_path / "parts").exists()


def test_merge_refuses_missing_unfinished_or_inconsistent_parts(tmp_path):
    _write_part(tmp_path, 0, 2, 0, 2)
    with pytest.raises(Exception, match="part of rank 1 .* is missing"):
        merge_parts(tmp_path, 2)
    _write_part(tmp_path, 1, 2, 2, 5, close=False)
    with pytest.raises(IncompleteStoreError, match="rank 1's part is unfinished"):
        merge_parts(tmp_path, 2)
    f = part_manifest_path(tmp_path, 1, 2)
    m = json.loads(f.read_text())
    m.update(complete=True, n_contexts=2, dtype="float16")
    f.write_text(json.dumps(m))
    with pytest.raises(DataError, match="rank 1's part differs from rank 0's in dtype"):
        merge_parts(tmp_path, 2)


def test_a_part_resumes_after_its_last_full_shard(tmp_path):
    w = _write_part(tmp_path, 1, 2, 4, 11, close=False, count=5)  # 2 shards listed, 1 open
    assert w.contexts_done == 4 and w.contexts_written == 5
    w2 = _write_part(tmp_path, 1, 2, 4, 11)
    assert w2.contexts_done == 7
    _write_part(tmp_path, 0, 2, 0, 4)
    merge_parts(tmp_path, 2)
    np.testing.assert_array_equal(ActivationStore(tmp_path).tokens()[:, 0], np.arange(11))
    with pytest.raises(DataError, match="part"):  # another range: not the same part
        _write_part(tmp_path / "x", 1, 2, 4, 11, close=False)
        _write_part(tmp_path / "x", 1, 2, 5, 11)


def test_unfinished_parallel_store_is_refused_with_instructions(tmp_path):
    from interp.models import load

    cfg = HarvestConfig(model="othello", hooks=HOOKS[:1], n_tokens=200, out=str(tmp_path))
    plan = _Plan.make(cfg, load("othello"), "cpu")
    store = tmp_path / "activations"
    _prepare_parallel(store, plan, 2, "nonce")
    with pytest.raises(IncompleteStoreError, match="harvest over 2 processes has not finished"):
        ActivationStore(store)
    with pytest.raises(DataError, match="torchrun --nproc_per_node 2"):  # one process
        harvest(cfg, model=plan.model, progress=False)
    with pytest.raises(DataError, match="resume it with 2 processes .this run has 4"):
        _prepare_parallel(store, plan, 4, "nonce")
    _prepare_parallel(store, plan, 2, "again")  # the same world resumes
    cfg2 = HarvestConfig(model="othello", hooks=HOOKS[:1], n_tokens=400, out=str(tmp_path))
    plan2 = _Plan.make(cfg2, plan.model, "cpu")
    with pytest.raises(DataError, match="its n_tokens, n_contexts_requested differ"):
        _prepare_parallel(store, plan2, 2, "nonce")


def test_othello_source_jumps_to_a_context():
    from interp.data.sources import OthelloSource, contexts_range

    src = OthelloSource()
    every = np.stack(list(contexts_range(src, 60, 0, 2100)))
    np.testing.assert_array_equal(np.stack(list(contexts_range(src, 60, 1000, 2100))),
                                  every[1000:])
    assert len(list(contexts_range(OthelloSource(n_games=10), 60, 8, 20))) == 2
