import json

import numpy as np
import pytest
import torch

from interp.activations.store import ActivationStore, IncompleteStoreError, StoreWriter
from interp.errors import CorruptArtifactError, DataError, UnknownNameError

N_CTX, D = 6, 4
POSITIONS = list(range(1, N_CTX))  # BOS dropped
P = len(POSITIONS)


def write_store(path, n_contexts=50, batch=7, shard_rows=40, dtype="float32", close=True,
                expected=None):
    """Row r's activation is [r, r+0.5, -r, context]: easy to check order and coverage."""
    w = StoreWriter(path, {"blocks.0.hook_resid_post": D, "blocks.1.hook_mlp_out": 2}, N_CTX,
                    POSITIONS, dtype=dtype, shard_rows=shard_rows, meta={"model": "toy"},
                    expected_contexts=expected)
    for start in range(0, n_contexts, batch):
        b = min(batch, n_contexts - start)
        ctx = torch.arange(start, start + b)
        tokens = (ctx[:, None] * 100 + torch.arange(N_CTX)).numpy()
        rows = (ctx[:, None] * P + torch.arange(P)).float()  # (b, P)
        acts = torch.stack([rows, rows + 0.5, -rows, ctx[:, None].float().expand(b, P)], -1)
        w.add(tokens, {"blocks.0.hook_resid_post": acts,
                       "blocks.1.hook_mlp_out": acts[..., :2] * 2})
    if close:
        w.close()
    return w


def test_round_trip_rows_tokens_and_locate(tmp_path):
    write_store(tmp_path / "s")
    s = ActivationStore(tmp_path / "s")
    assert s.n_rows == 50 * P and s.n_contexts == 50
    assert len(s.manifest["shards"]) == 7  # 40 rows per shard = 8 contexts
    assert s.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    rows = np.array([0, 5, 17, 249, 123])
    x = s.read(rows, "blocks.0.hook_resid_post")
    np.testing.assert_array_equal(x[:, 0].numpy(), rows)
    np.testing.assert_array_equal(s.read(rows, "blocks.1.hook_mlp_out")[:, 1].numpy(),
                                  (rows + 0.5) * 2)
    ctx, pos = s.locate(rows)
    np.testing.assert_array_equal(x[:, 3].numpy(), ctx)
    np.testing.assert_array_equal(pos, np.asarray(POSITIONS)[rows % P])
    toks = s.tokens(ctx)
    np.testing.assert_array_equal(toks[np.arange(len(rows)), pos], ctx * 100 + pos)
    assert s.tokens().shape == (50, N_CTX)


@pytest.mark.parametrize("expected", [None, 50, 80])
def test_last_shard_holds_exactly_the_rest(tmp_path, expected):
    # expected == 50 sizes the last shard exactly; None and 80 (the source ran out) truncate
    write_store(tmp_path / "s", expected=expected)
    s = ActivationStore(tmp_path / "s")
    assert [sh["contexts"] for sh in s.manifest["shards"]] == [8] * 6 + [2]
    last = np.load(tmp_path / "s" / "blocks.0.hook_resid_post" / "shard_00006.npy")
    assert last.shape == (2 * P, D)
    np.testing.assert_array_equal(last[:, 0], np.arange(48 * P, 50 * P))
    assert sorted(p.name for p in (tmp_path / "s" / "tokens").iterdir()) == [
        f"shard_{i:05d}.npy" for i in range(7)]


def test_non_contiguous_activations_are_stored_in_order(tmp_path):
    w = StoreWriter(tmp_path / "s", {"h": D}, N_CTX, POSITIONS, shard_rows=40)
    full = torch.arange(3 * N_CTX * D, dtype=torch.float32).view(3, N_CTX, D)
    w.add(torch.zeros(3, N_CTX, dtype=torch.long), {"h": full[:, 1:]})  # a strided view
    w.close()
    x = ActivationStore(tmp_path / "s").read(np.arange(3 * P), "h")
    np.testing.assert_array_equal(x.numpy(), full[:, 1:].reshape(-1, D).numpy())


def test_shuffled_epoch_covers_every_row_once_with_small_buffer(tmp_path):
    write_store(tmp_path / "s")
    s = ActivationStore(tmp_path / "s")
    seen = []
    for batch in s.batches(32, "blocks.0.hook_resid_post", seed=1, buffer_rows=48):
        assert batch.shape[1] == D
        seen.append(batch[:, 0])
    seen = torch.cat(seen).long().numpy()
    assert sorted(seen.tolist()) == list(range(s.n_rows))  # each row exactly once
    assert (seen != np.arange(s.n_rows)).mean() > 0.9  # and actually shuffled
    # the buffer is far smaller than the store: rows far apart still mix within an epoch
    two = [torch.cat(list(s.batches(32, "blocks.0.hook_resid_post", seed=1, epochs=2,
                                    buffer_rows=48)))[:, 0]]
    assert len(two[0]) == 2 * s.n_rows


def test_batches_are_deterministic_and_resume_by_skipping(tmp_path):
    write_store(tmp_path / "s")
    s = ActivationStore(tmp_path / "s")
    kw = dict(hook="blocks.0.hook_resid_post", seed=3, epochs=2, buffer_rows=64)
    full = list(s.batches(16, **kw))
    again = list(s.batches(16, **kw))
    assert all(torch.equal(a, b) for a, b in zip(full, again))
    resumed = list(s.batches(16, start_batch=11, **kw))
    assert len(resumed) == len(full) - 11
    assert all(torch.equal(a, b) for a, b in zip(full[11:], resumed))
    assert s.batches_per_epoch(16) * 2 == len(full)


def test_unshuffled_order_and_drop_last(tmp_path):
    write_store(tmp_path / "s")
    s = ActivationStore(tmp_path / "s")
    b = list(s.batches(64, "blocks.0.hook_resid_post", shuffle=False, drop_last=True))
    assert len(b) == s.n_rows // 64
    np.testing.assert_array_equal(torch.cat(b)[:, 0].numpy(), np.arange(len(b) * 64))


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_half_precision_round_trip(tmp_path, dtype, tol):
    write_store(tmp_path / "s", n_contexts=10, dtype=dtype)
    s = ActivationStore(tmp_path / "s")
    x = s.read(np.arange(s.n_rows), "blocks.0.hook_resid_post")
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0].numpy(), np.arange(s.n_rows), rtol=tol)
    raw = s.read([3], "blocks.0.hook_resid_post", dtype=None)
    assert raw.dtype == getattr(torch, dtype)


def test_incomplete_store_is_refused_and_resumes(tmp_path):
    w = write_store(tmp_path / "s", n_contexts=20, close=False)
    assert w.contexts_done == 16  # two full shards of 8 contexts were flushed
    with pytest.raises(IncompleteStoreError, match="Rerun the same"):
        ActivationStore(tmp_path / "s")
    # a half-written shard beyond the manifest is discarded on resume
    np.save(tmp_path / "s" / "tokens" / "shard_00002.npy", np.zeros(3))
    w2 = StoreWriter(tmp_path / "s", {"blocks.0.hook_resid_post": D, "blocks.1.hook_mlp_out": 2},
                     N_CTX, POSITIONS, shard_rows=40, meta={"model": "toy"})
    assert w2.contexts_done == 16
    assert not (tmp_path / "s" / "tokens" / "shard_00002.npy").exists()


def test_resume_with_different_settings_is_refused(tmp_path):
    write_store(tmp_path / "s", n_contexts=20, close=False)
    with pytest.raises(DataError, match="dtype"):
        StoreWriter(tmp_path / "s", {"blocks.0.hook_resid_post": D, "blocks.1.hook_mlp_out": 2},
                    N_CTX, POSITIONS, dtype="float16", shard_rows=40, meta={"model": "toy"})


def test_complete_store_is_not_overwritten(tmp_path):
    write_store(tmp_path / "s", n_contexts=8)
    with pytest.raises(DataError, match="already holds a complete store"):
        write_store(tmp_path / "s", n_contexts=8)


def test_missing_and_truncated_files_are_named(tmp_path):
    write_store(tmp_path / "s")
    f = tmp_path / "s" / "blocks.0.hook_resid_post" / "shard_00003.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 16])
    with pytest.raises(CorruptArtifactError, match="shard_00003.npy is truncated"):
        ActivationStore(tmp_path / "s")
    f.unlink()
    with pytest.raises(CorruptArtifactError, match="missing: .*shard_00003.npy"):
        ActivationStore(tmp_path / "s")


def test_no_store_and_bad_manifest(tmp_path):
    with pytest.raises(CorruptArtifactError, match="manifest.json is missing"):
        ActivationStore(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="not valid JSON"):
        ActivationStore(tmp_path / "bad")


def test_unknown_hook_lists_the_valid_ones(tmp_path):
    write_store(tmp_path / "s", n_contexts=8)
    s = ActivationStore(tmp_path / "s")
    with pytest.raises(UnknownNameError, match="blocks.0.hook_resid_post"):
        s.read([0], "blocks.0.hook_resid_pre")
    with pytest.raises(DataError, match="several hooks"):
        s.d_in()


def test_writer_checks_shapes(tmp_path):
    w = StoreWriter(tmp_path / "s", {"h": D}, N_CTX, POSITIONS)
    with pytest.raises(DataError, match="expected"):
        w.add(np.zeros((2, N_CTX)), {"h": torch.zeros(2, P, D + 1)})
    with pytest.raises(DataError, match="missing activations"):
        w.add(np.zeros((2, N_CTX)), {})
    with pytest.raises(DataError, match="nothing was harvested"):
        w.close()


def test_manifest_records_metadata(tmp_path):
    write_store(tmp_path / "s", n_contexts=8)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["complete"] and m["model"] == "toy" and m["n_tokens"] == 8 * P
    assert m["hooks"]["blocks.0.hook_resid_post"]["d_in"] == D and "code_version" in m


def test_top_rows_and_unit_values_match_a_full_read(tmp_path):
    write_store(tmp_path / "s", n_contexts=50, shard_rows=40)
    s = ActivationStore(tmp_path / "s")
    hook = "blocks.0.hook_resid_post"
    full = s.read_range(0, s.n_rows, hook)
    for unit in range(D):
        rows, vals = s.top_rows(unit, k=7, hook=hook)
        ref = full[:, unit].topk(7)
        np.testing.assert_array_equal(vals, ref.values.numpy())
        np.testing.assert_array_equal(full[rows, unit].numpy(), vals)
        np.testing.assert_array_equal(s.unit_values(unit, hook), full[:, unit].numpy())
    assert s.unit_values(0, hook, max_rows=33).shape == (33,)
    with pytest.raises(DataError, match="unit 4 is out of range.*valid 0..3"):
        s.top_rows(4, hook=hook)


def test_row_range_and_parts_partition_the_batches(tmp_path):
    write_store(tmp_path / "s")
    s = ActivationStore(tmp_path / "s")
    hook = "blocks.0.hook_resid_post"
    kw = dict(hook=hook, seed=4, buffer_rows=64, drop_last=True, epochs=1)
    rows = torch.cat([b[:, 0] for b in s.batches(8, row_range=(10, 200), **{**kw, "drop_last": False})])
    assert sorted(rows.long().tolist()) == list(range(10, 200))
    whole = list(s.batches(8, **kw))
    halves = [list(s.batches(8, part=(r, 2), **kw)) for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(whole)
    for w, a, b in zip(whole, *halves):
        torch.testing.assert_close(torch.cat([a, b]), w)
    resumed = list(s.batches(8, part=(1, 2), start_batch=5, **kw))
    for a, b in zip(resumed, halves[1][5:]):
        torch.testing.assert_close(a, b)
    with pytest.raises(DataError, match="divisible by 2"):
        next(s.batches(7, part=(0, 2), **kw))
    with pytest.raises(DataError, match="row range \\[0, 999\\)"):
        next(s.batches(8, row_range=(0, 999), hook=hook))


@pytest.mark.parametrize("shuffle,start,drop_last", [(True, 0, True), (True, 3, False),
                                                      (False, 1, False)])
def test_batches_of_two_hooks_are_aligned_row_by_row(tmp_path, shuffle, start, drop_last):
    """A dictionary reading one hook and writing another trains on both at the same rows:
    the pair of batches holds exactly the single-hook batches, in the same order."""
    write_store(tmp_path / "s")
    st = ActivationStore(tmp_path / "s")
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    kw = dict(shuffle=shuffle, seed=5, start_batch=start, drop_last=drop_last,
              buffer_rows=64, epochs=2)
    pairs = list(st.batches(17, hooks, **kw))
    alone = [list(st.batches(17, h, **kw)) for h in hooks]
    assert len(pairs) == len(alone[0]) == len(alone[1]) > 0
    for (x, y), a, b in zip(pairs, *alone):
        assert torch.equal(x, a) and torch.equal(y, b)
        assert torch.equal(y, x[:, :2] * 2)  # the writer's rule: rows stay aligned
    split = [list(st.batches(16, hooks, shuffle=True, drop_last=True, part=(r, 2)))
             for r in range(2)]
    whole = list(st.batches(16, hooks, shuffle=True, drop_last=True))
    for (x0, y0), (x1, y1), (x, y) in zip(*split, whole):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
