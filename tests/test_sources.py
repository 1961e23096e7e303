import itertools
import json

import numpy as np
import pytest

from interp.data import othello as oth
from interp.data.sources import (HFDatasetSource, LocalTextSource, OthelloSource, batches,
                                 make_source, pack, prefetch)
from interp.errors import DataError, UnknownNameError
from interp.models.zoo import model_dir


@pytest.fixture(scope="module")
def tok():
    from interp.data.pycode import load_tokenizer

    return load_tokenizer(model_dir("pycode") / "tokenizer.json")


def test_pack_prepends_bos_and_separates_docs_with_eos():
    out = list(pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], n_ctx=4, bos_id=0, eos_id=99))
    # stream: 1 2 3 99 4 5 99 6 7 8 9 99 -> chunks of 3, each after BOS
    assert [o.tolist() for o in out] == [[0, 1, 2, 3], [0, 99, 4, 5], [0, 99, 6, 7],
                                         [0, 8, 9, 99]]
    assert [o.tolist() for o in pack([[1, 2, 3, 4, 5]], 3, None, None)] == [[1, 2, 3]]
    with pytest.raises(DataError, match="at least 2"):
        list(pack([[1]], 1, 0, None))


def test_batches_sizes_and_empty_source():
    src = OthelloSource(n_games=10)
    got = list(batches(src, 61, 4))
    assert [b.shape for b in got] == [(4, 61), (4, 61), (2, 61)]
    assert (got[0][:, 0] == oth.BOS).all()
    with pytest.raises(DataError, match="empty dataset"):
        list(batches(OthelloSource(n_games=0), 61, 4))


def test_othello_source_is_deterministic_and_labels_match(tmp_path):
    a = np.stack(list(OthelloSource(seed=3, n_games=1500).contexts(61)))
    b = np.stack(list(OthelloSource(seed=3, n_games=1500).contexts(61)))
    np.testing.assert_array_equal(a, b)
    games = OthelloSource(seed=3).games(1000, 300)  # crosses a chunk boundary
    np.testing.assert_array_equal(games.tokens(with_bos=True), a[1000:1300])
    with pytest.raises(DataError, match="2..61"):
        next(OthelloSource().contexts(62))


def test_local_text_jsonl_parquet_give_the_same_contexts(tmp_path, tok):
    docs = ["def f(x):\n    return x + 1\n" * 3, "import os\nprint(os.sep)\n" * 4]
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "1.txt").write_text(docs[0])
    (tmp_path / "folder" / "2.txt").write_text(docs[1])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs, "id": [1, 2]}), tmp_path / "d.parquet")
    ctx = lambda spec: np.stack(list(make_source(str(spec), tokenizer=tok).contexts(8)))
    ref = ctx(tmp_path / "d.jsonl")
    np.testing.assert_array_equal(ctx(tmp_path / "d.parquet"), ref)
    np.testing.assert_array_equal(ctx(tmp_path / "folder"), ref)
    single = ctx(tmp_path / "a.txt")
    np.testing.assert_array_equal(single, ref[: len(single)])
    bos = tok.token_to_id("<|bos|>")
    assert (ref[:, 0] == bos).all()
    # the text round-trips through the packed contexts (BOS and EOS removed)
    eos = tok.token_to_id("<|endoftext|>")
    body = ref[:, 1:].ravel()
    assert tok.decode(body[body != eos].tolist()).startswith(docs[0][:40])


def test_local_sources_reject_bad_input(tmp_path, tok):
    with pytest.raises(DataError, match="no such file"):
        LocalTextSource(tmp_path / "missing.txt", tok)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'.*valid"):
        LocalTextSource(tmp_path / "x.csv", tok)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        list(LocalTextSource(tmp_path / "bad.jsonl", tok).contexts(8))
    (tmp_path / "col.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no field 'text'.*body"):
        list(LocalTextSource(tmp_path / "col.jsonl", tok).contexts(8))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty dataset"):
        list(batches(LocalTextSource(tmp_path / "empty.jsonl", tok), 8, 2))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        list(LocalTextSource(tmp_path / "nothing", tok).contexts(8))
    with pytest.raises(DataError, match="needs a tokenizer"):
        LocalTextSource(tmp_path / "col.jsonl", None)


def test_unknown_source_spec_lists_the_kinds():
    with pytest.raises(UnknownNameError, match="othelo.*othello"):
        make_source("othelo")


def test_hf_dataset_offline_fails_clearly(monkeypatch, tmp_path, tok):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    src = make_source("hf:NeelNanda/pile-10k", tokenizer=tok)
    assert isinstance(src, HFDatasetSource) and src.split == "train"
    with pytest.raises(DataError, match="could not open the Hugging Face dataset "
                                        "'NeelNanda/pile-10k'.*local"):
        next(src.contexts(16))


def test_prefetch_yields_everything_in_order_and_reraises():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def broken():
        yield 1
        raise DataError("bad row 2")

    it = prefetch(broken())
    assert next(it) == 1
    with pytest.raises(DataError, match="bad row 2"):
        next(it)
    # a consumer that stops early does not hang the producer
    assert list(zip(range(3), prefetch(itertools.count()))) == [(0, 0), (1, 1), (2, 2)]
