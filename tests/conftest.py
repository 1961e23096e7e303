import numpy as np
import pytest
import torch

from interp.activations.store import StoreWriter


def write_sparse_store(path, n_rows=20_000, d=16, n_true=48, k_true=3, seed=0,
                       hook="blocks.0.hook_resid_post"):
    """A store whose rows are sparse sums of ``n_true`` fixed unit directions (plus a
    constant offset): an SAE with enough latents can reconstruct it almost exactly."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_true, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=g)
    n_ctx = 9
    per_ctx = n_ctx - 1
    n_ctx_total = n_rows // per_ctx
    idx = torch.stack([torch.randperm(n_true, generator=g)[:k_true]
                       for _ in range(n_ctx_total * per_ctx)])
    coef = torch.rand(idx.shape, generator=g) * 2 + 0.5
    x = (coef[..., None] * dirs[idx]).sum(1) + offset
    w = StoreWriter(path, {hook: d}, n_ctx, list(range(1, n_ctx)), shard_rows=4096,
                    meta={"model": "toy", "source": {"kind": "synthetic", "seed": seed}})
    x = x.view(n_ctx_total, per_ctx, d)
    for s in range(0, n_ctx_total, 256):
        chunk = x[s:s + 256]
        w.add(np.zeros((chunk.shape[0], n_ctx), dtype=np.int64), {hook: chunk})
    w.close()
    return dirs


@pytest.fixture
def sparse_store(tmp_path):
    write_sparse_store(tmp_path / "store")
    return tmp_path / "store"


@pytest.fixture(scope="session")
def app_run(tmp_path_factory):
    """A small run folder for the app's tests (``tests/app_fixtures.py``): an othello store,
    a run SAE and a feature store of it over a few thousand tokens. Built once per session."""
    from app_fixtures import make_app_run

    return make_app_run(tmp_path_factory.mktemp("app") / "run")
