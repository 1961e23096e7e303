"""Checks before anything is read or written: store manifests and shard headers, harvest
settings, the device, and the token source against the model (one line, nothing written)."""
import json
import time

import numpy as np
import pytest
import torch
from refusals import refuse

from interp.activations.harvest import HarvestConfig, harvest
from interp.activations.store import ActivationStore, IncompleteStoreError, StoreWriter
from interp.data import sources
from interp.data.sources import OthelloSource, TokenSource, check_fits, default_source
from interp.distributed import check_device
from interp.errors import CorruptArtifactError, DataError, UnknownNameError
from interp.models import load
from interp.models.zoo import model_dir

HOOK = "blocks.1.hook_resid_post"
N_CTX, POSITIONS, D = 6, [1, 2, 3, 4, 5], 10
P = len(POSITIONS)


@pytest.fixture(scope="module")
def othello():
    return load("othello")


def write_store(path, n_contexts=4, shard_rows=1000, d=D, dtype="float32"):
    """One shard of ``n_contexts`` contexts (unless shard_rows is small); values = row ids."""
    w = StoreWriter(path, {HOOK: d}, N_CTX, POSITIONS, dtype=dtype, shard_rows=shard_rows,
                    meta={"model": "toy"})
    tokens = np.arange(n_contexts * N_CTX).reshape(n_contexts, N_CTX)
    acts = torch.arange(n_contexts * P * d, dtype=torch.float32).view(n_contexts, P, d)
    w.add(tokens, {HOOK: acts})
    w.close()
    return path


def edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    m = fn(m)
    (path / "manifest.json").write_text(json.dumps(m))
    return m


def sizes_add_up(path) -> bool:
    """The old check (file sizes only) would accept the store's manifest."""
    from interp.activations.store import DTYPES, _npy_header

    m = json.loads((path / "manifest.json").read_text())
    item = np.dtype(DTYPES[m["dtype"]][0]).itemsize
    for s in m["shards"]:
        files = [("tokens", s["contexts"] * m["n_ctx"] * 4)]
        files += [(v["dir"], s["rows"] * v["d_in"] * item) for v in m["hooks"].values()]
        for sub, nbytes in files:
            f = path / sub / s["file"]
            if f.stat().st_size != _npy_header(f)[3] + nbytes:
                return False
    return True


# ------------------------------------------------------------ 1. manifest shape
@pytest.mark.parametrize("content, fragment", [
    ("[1, 2, 3]", "holds a JSON array, not an object"),
    ('"store"', "holds a JSON string"),
    ("null", "holds a JSON null"),
])
def test_manifest_that_is_not_an_object(tmp_path, content, fragment):
    s = write_store(tmp_path / "s")
    (s / "manifest.json").write_text(content)
    with pytest.raises(CorruptArtifactError, match=fragment) as e:
        ActivationStore(s)
    assert "manifest.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["positions", "n_ctx", "dtype", "hooks", "shards"])
def test_manifest_missing_key(tmp_path, key):
    s = write_store(tmp_path / "s")
    edit_manifest(s, lambda m: {k: v for k, v in m.items() if k != key})
    with pytest.raises(CorruptArtifactError, match=f"not a valid store manifest: it lacks {key}"):
        ActivationStore(s)


@pytest.mark.parametrize("key, value, fragment", [
    ("positions", "1..5", "positions must be a non-empty list of distinct integers in"),
    ("positions", [], "positions must be"),
    ("positions", [1, 2, 9], r"integers in \[0, 6\)"),
    ("positions", [1, 1, 2, 3, 4], "distinct"),
    ("positions", [1.0, 2, 3, 4, 5], "positions must be"),
    ("n_ctx", "6", "n_ctx must be a positive integer"),
    ("n_ctx", True, "n_ctx must be a positive integer"),
    ("dtype", "float64", "unknown dtype 'float64'; valid: float32, float16, bfloat16"),
    ("dtype", 32, "unknown dtype 32"),
    ("hooks", [HOOK], "hooks must be a non-empty object"),
    ("hooks", {}, "hooks must be a non-empty object"),
    ("hooks", {HOOK: {"d_in": "10", "dir": HOOK}}, "needs a positive integer d_in"),
    ("hooks", {HOOK: {"d_in": 10, "dir": "../elsewhere"}}, "a folder name dir"),
    ("hooks", {HOOK: {"d_in": 10, "dir": "tokens"}}, "which another hook or the tokens use"),
    ("shards", {"file": "shard_00000.npy"}, "shards must be an array, got a JSON object"),
    ("shards", [["shard_00000.npy", 4, 20]], "shard 0 needs a file name"),
    ("shards", [{"file": "shard_00000.npy", "contexts": 4, "rows": 21}],
     r"shard 0 \(shard_00000.npy\) lists 21 rows, but its 4 contexts x 5 kept positions make 20"),
    ("n_contexts", 5, "n_contexts is 5, but its shards hold 4"),
    ("n_tokens", 21, "n_tokens is 21, but its shards hold 20"),
    ("format_version", 99, "format_version 99 is not one this version reads"),
])
def test_manifest_wrong_types_and_sums(tmp_path, key, value, fragment):
    s = write_store(tmp_path / "s")
    edit_manifest(s, lambda m: {**m, key: value})
    with pytest.raises(CorruptArtifactError, match=fragment) as e:
        ActivationStore(s, check=False)  # the manifest alone is enough to refuse it
    assert str(s / "manifest.json") in str(e.value) and "\n" not in str(e.value)


def test_shard_listed_twice(tmp_path):
    s = write_store(tmp_path / "s", n_contexts=8, shard_rows=20)
    edit_manifest(s, lambda m: {**m, "shards": [m["shards"][0]] * 2, "n_contexts": 8,
                                "n_tokens": 40})
    with pytest.raises(CorruptArtifactError, match="'shard_00000.npy' is listed twice"):
        ActivationStore(s)


def test_incomplete_manifest_with_odd_fields_is_still_a_clear_error(tmp_path):
    s = write_store(tmp_path / "s")
    edit_manifest(s, lambda m: {**m, "complete": False, "shards": 7})
    with pytest.raises(IncompleteStoreError, match="stopped after 0 shard"):
        ActivationStore(s)
    edit_manifest(s, lambda m: {**m, "parallel": [2]})
    with pytest.raises(CorruptArtifactError, match="parallel must be an object"):
        ActivationStore(s)


def test_cli_info_refuses_a_bad_manifest(tmp_path):
    s = write_store(tmp_path / "s")
    edit_manifest(s, lambda m: [m])
    refuse(["info", str(s)], "manifest.json", "JSON array", watch=[tmp_path])
    edit_manifest(s, lambda m: {**m[0], "dtype": "float64"})
    refuse(["info", str(s)], "unknown dtype 'float64'", watch=[tmp_path])


# ------------------------------------------------------------ 2. headers, not just sizes
def test_swapped_rows_and_width_with_the_same_sizes(tmp_path):
    s = write_store(tmp_path / "s", n_contexts=4)  # tokens (4, 6); hook (20, 10)

    def swap(m):  # hook (10, 20) and tokens (2, 12): every file size still adds up
        m["hooks"][HOOK]["d_in"] = 20
        m["n_ctx"] = 12
        m["shards"][0].update(contexts=2, rows=10)
        return {**m, "n_contexts": 2, "n_tokens": 10}

    edit_manifest(s, swap)
    assert sizes_add_up(s)
    with pytest.raises(CorruptArtifactError,
                       match=r"tokens/shard_00000.npy holds a \(4, 6\) int32 array, but "
                             r"manifest.json says \(2, 12\) int32"):
        ActivationStore(s)


def test_double_rows_halve_width(tmp_path):
    s = write_store(tmp_path / "s", n_contexts=4)  # tokens (4, 6); hook (20, 10)

    def double(m):  # hook (40, 5): the same bytes; the rows need twice the contexts
        m["hooks"][HOOK]["d_in"] = 5
        m["shards"][0]["rows"] = 40
        return m

    m = edit_manifest(s, double)
    with pytest.raises(CorruptArtifactError, match="lists 40 rows, but its 4 contexts x 5 "
                                                   "kept positions make 20"):
        ActivationStore(s)
    m["shards"][0]["contexts"] = 8
    edit_manifest(s, lambda _: {**m, "n_contexts": 8, "n_tokens": 40})
    with pytest.raises(CorruptArtifactError, match=r"tokens/shard_00000.npy holds a \(4, 6\) "
                                                   r"int32 array, but manifest.json says "
                                                   r"\(8, 6\) int32"):
        ActivationStore(s)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_changed_with_width_doubled(tmp_path, dtype):
    s = write_store(tmp_path / "s", n_contexts=4)  # hook (20, 10) float32
    edit_manifest(s, lambda m: {**m, "dtype": dtype,
                                "hooks": {HOOK: {"d_in": 2 * D, "dir": HOOK}}})
    assert sizes_add_up(s)
    stored = r"uint16 \(bfloat16 bits\)" if dtype == "bfloat16" else "float16"
    with pytest.raises(CorruptArtifactError,
                       match=rf"holds a \(20, 10\) float32 array, but manifest.json says "
                             rf"\(20, 20\) {stored}"):
        ActivationStore(s)


def test_dtype_changed_with_rows_doubled(tmp_path):
    s = write_store(tmp_path / "s", n_contexts=4)  # tokens (4, 6); hook (20, 10) float32
    edit_manifest(s, lambda m: {**m, "dtype": "float16", "n_contexts": 8, "n_tokens": 40,
                                "shards": [{**m["shards"][0], "contexts": 8, "rows": 40}]})
    with pytest.raises(CorruptArtifactError, match=r"holds a \(4, 6\) int32 array, but "
                                                   r"manifest.json says \(8, 6\) int32"):
        ActivationStore(s)


def test_fortran_order_and_garbage_header(tmp_path):
    s = write_store(tmp_path / "s")
    f = s / HOOK / "shard_00000.npy"
    a = np.load(f)
    np.save(f, np.asfortranarray(a))
    assert sizes_add_up(s)
    with pytest.raises(CorruptArtifactError, match="float32, Fortran order array"):
        ActivationStore(s)
    f.write_bytes(b"not an npy file at all" * 20)
    with pytest.raises(CorruptArtifactError, match="shard_00000.npy is corrupt"):
        ActivationStore(s)


def test_locate_is_never_reached_on_a_tampered_store(tmp_path):
    s = write_store(tmp_path / "s", n_contexts=4)
    edit_manifest(s, lambda m: {**m, "dtype": "float16",
                                "hooks": {HOOK: {"d_in": 2 * D, "dir": HOOK}}})
    refuse(["info", str(s)], "manifest.json says", watch=[tmp_path])


def test_many_shards_open_fast_without_reading_data(tmp_path):
    s = write_store(tmp_path / "s", n_contexts=400, shard_rows=5)  # 400 shards x 2 files
    t = time.perf_counter()
    store = ActivationStore(s)
    dt = time.perf_counter() - t
    assert len(store.manifest["shards"]) == 400 and store.n_rows == 400 * P
    assert not store._maps  # nothing was memory-mapped, only headers read
    assert dt < 2.0, f"opening 400 shards took {dt:.2f}s"


def test_resume_checks_the_listed_shards(tmp_path):
    path = tmp_path / "s"
    w = StoreWriter(path, {HOOK: D}, N_CTX, POSITIONS, shard_rows=10)
    w.add(np.zeros((5, N_CTX)), {HOOK: torch.zeros(5, P, D)})  # 2 shards of 2 + 1 open
    assert len(w.manifest["shards"]) == 2
    (path / "tokens" / "shard_stray_copy.npy").write_bytes(b"x")  # not ours: left alone
    # a listed shard's file is missing: resuming would finish a store that cannot be read
    (path / HOOK / "shard_00001.npy").unlink()
    with pytest.raises(CorruptArtifactError, match="store file missing: .*shard_00001.npy"):
        StoreWriter(path, {HOOK: D}, N_CTX, POSITIONS, shard_rows=10)
    (path / "manifest.json").write_text("[]")
    with pytest.raises(CorruptArtifactError, match="JSON array"):
        StoreWriter(path, {HOOK: D}, N_CTX, POSITIONS, shard_rows=10)


def test_resume_after_a_kill_drops_the_unlisted_shard(tmp_path):
    path = tmp_path / "s"
    w = StoreWriter(path, {HOOK: D}, N_CTX, POSITIONS, shard_rows=10)
    w.add(np.zeros((5, N_CTX)), {HOOK: torch.zeros(5, P, D)})
    assert (path / HOOK / "shard_00002.npy").exists()  # open, not listed
    (path / "tokens" / "shard_stray_copy.npy").write_bytes(b"x")
    w2 = StoreWriter(path, {HOOK: D}, N_CTX, POSITIONS, shard_rows=10)
    assert w2.contexts_done == 4 and not (path / HOOK / "shard_00002.npy").exists()
    assert (path / "tokens" / "shard_stray_copy.npy").exists()


# ------------------------------------------------------------ 3. harvest settings
def cfg(tmp_path, **kw):
    base = dict(model="othello", hooks=[HOOK], n_tokens=1000, out=str(tmp_path / "r"))
    return HarvestConfig(**{**base, **kw})


@pytest.mark.parametrize("kw, fragment", [
    ({"shard_rows": 0}, "--shard-rows must be a positive integer, got 0"),
    ({"shard_rows": -4096}, "--shard-rows must be a positive integer, got -4096"),
    ({"batch_size": 0}, "--batch-size must be a positive integer"),
    ({"n_tokens": -1}, "--tokens must be a positive integer"),
    ({"n_ctx": 1}, "--n-ctx must be at least 2"),
    ({"n_ctx": 0}, "--n-ctx must be at least 2"),
    ({"hooks": [HOOK, HOOK]}, f"--hook {HOOK} is given more than once"),
])
def test_validate_refuses_nonsense_numbers(tmp_path, kw, fragment):
    with pytest.raises(DataError, match=fragment):
        cfg(tmp_path, **kw).validate()


def test_validate_unknown_dtype(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown --dtype 'float64'"):
        cfg(tmp_path, dtype="float64").validate()


def no_model_load(monkeypatch):
    """Fail loudly if a refused command would load the model first."""
    import interp.models

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the check")
    monkeypatch.setattr(interp.models, "load", boom)


ARGV = ["harvest", "--model", "othello", "--hook", HOOK, "--tokens", "1000"]


@pytest.mark.parametrize("extra, fragment", [
    (["--shard-rows", "0"], "--shard-rows must be a positive integer"),
    (["--shard-rows", "-1"], "--shard-rows"),
    (["--n-ctx", "1"], "--n-ctx must be at least 2"),
    (["--batch-size", "0"], "--batch-size"),
    (["--tokens", "0"], "--tokens"),
])
def test_cli_refuses_bad_numbers_before_loading(tmp_path, monkeypatch, extra, fragment):
    no_model_load(monkeypatch)
    refuse([*ARGV, "--out", tmp_path / "r", *extra], fragment, watch=[tmp_path])
    assert not (tmp_path / "r").exists()


def test_cli_refuses_too_long_context(tmp_path):
    refuse([*ARGV, "--out", tmp_path / "r", "--n-ctx", "100"], "--n-ctx 100", "2..60",
           watch=[tmp_path])
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------ 4. device
def test_check_device_accepts_cpu():
    check_device("cpu")
    check_device("cpu:0")


@pytest.mark.parametrize("name, err, fragment", [
    ("cdua", UnknownNameError, "--device 'cdua' is not a device; valid here: cpu"),
    ("", UnknownNameError, "is not a device"),
    ("meta", DataError, "--device meta: meta devices are not supported"),
    ("cpu:3", DataError, "no device index 3"),
])
def test_check_device_refuses_names(name, err, fragment):
    with pytest.raises(err, match=fragment):
        check_device(name)


def test_check_device_without_cuda_or_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DataError, match="^--device cuda: CUDA is not available on this "
                                        "machine; valid here: cpu$"):
        check_device("cuda")
    with pytest.raises(DataError, match="--device cuda:1: CUDA is not available"):
        check_device("cuda:1")
    with pytest.raises(DataError, match="--device mps: MPS is not available"):
        check_device("mps")
    with pytest.raises(DataError, match="^--trainer-device cuda"):
        check_device("cuda", flag="--trainer-device")


def test_check_device_counts_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    check_device("cuda")
    check_device("cuda:1")
    with pytest.raises(DataError, match="has 2 CUDA device.*valid here: cpu, cuda, cuda:0, "
                                        "cuda:1$"):
        check_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_harvest_on_missing_cuda(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    refuse([*ARGV, "--out", tmp_path / "r", "--device", "cuda"],
           "--device cuda: CUDA is not available on this machine; valid here: cpu",
           watch=[tmp_path])
    refuse([*ARGV, "--out", tmp_path / "r", "--device", "gpu"], "--device 'gpu'",
           watch=[tmp_path])


# ------------------------------------------------------------ 5. source vs model
def test_cli_embedded_corpus_with_the_other_model(tmp_path):
    line = refuse([*ARGV, "--out", tmp_path / "r", "--source", "pycode"],
                  "pycode", "does not fit the model 'othello'", "sources that fit 'othello': "
                  "othello", watch=[tmp_path])
    assert "corpus of the embedded model 'pycode'" in line
    refuse(["harvest", "--model", "pycode", "--hook", "blocks.0.hook_resid_post", "--tokens",
            "1000", "--out", tmp_path / "r", "--source", "othello"],
           "corpus of the embedded model 'othello'", "does not fit the model 'pycode'",
           "pycode[:train|test]", watch=[tmp_path])
    assert not (tmp_path / "r").exists()


class Ids(TokenSource):
    """Contexts of fixed ids: ``bad`` from context ``bad_from`` on."""
    name = "ids"

    def __init__(self, n=64, bad=None, bad_from=0):
        self.n, self.bad, self.bad_from = n, bad, bad_from

    def describe(self):
        return {"kind": "ids", "n": self.n}

    def contexts(self, n_ctx):
        for i in range(self.n):
            row = np.full(n_ctx, 5, dtype=np.int64)
            row[0] = 0
            if self.bad is not None and i >= self.bad_from:
                row[3] = self.bad
            yield row


def test_check_fits_token_ids_and_empty_sources(othello):
    check_fits(Ids(), othello, 60)
    check_fits(OthelloSource(), othello, 60)
    with pytest.raises(DataError, match=r"the token source ids gives token id 62, outside the "
                                        r"vocabulary of the model 'othello' \(ids 0\.\.61\); "
                                        r"sources that fit it: othello"):
        check_fits(Ids(bad=62), othello, 60)
    with pytest.raises(DataError, match="gives token id -1"):
        check_fits(Ids(bad=-1), othello, 60, label="my-othello")
    with pytest.raises(DataError, match="empty dataset"):
        check_fits(Ids(n=0), othello, 60)
    with pytest.raises(DataError, match="does not fit the model 'othello'"):
        check_fits(sources.make_source("pycode"), othello, 60)


def test_default_source_lives_in_sources():
    import interp.activations.harvest as h

    assert h.default_source is default_source
    assert default_source("othello") == "othello" and default_source("pycode") == "pycode"
    with pytest.raises(DataError, match="name a token source for 'gpt2' with --source"):
        default_source("gpt2")


def test_harvest_refuses_a_source_before_writing(othello, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "make_source", lambda *a, **k: Ids(bad=99))
    with pytest.raises(DataError, match="gives token id 99"):
        harvest(cfg(tmp_path), model=othello, progress=False)
    monkeypatch.setattr(sources, "make_source", lambda *a, **k: Ids(n=0))
    with pytest.raises(DataError, match="empty dataset"):
        harvest(cfg(tmp_path), model=othello, progress=False)
    assert list(tmp_path.iterdir()) == []  # no store left behind to block the next command


def test_harvest_checks_every_batch_not_only_the_first(othello, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "make_source", lambda *a, **k: Ids(bad=4000, bad_from=40))
    with pytest.raises(DataError, match="gives token id 4000"):
        harvest(cfg(tmp_path, batch_size=8, n_tokens=59 * 64), model=othello, progress=False)


def test_a_folder_of_an_embedded_model_finds_its_corpus(tmp_path):
    store = harvest(cfg(tmp_path, model=str(model_dir("othello")), n_tokens=200),
                    progress=False)
    assert store.manifest["source"]["kind"] == "othello"
