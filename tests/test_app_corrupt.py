"""The app shows a corrupt feature store's error (the one line ``FeatureStore`` raises) where
the store would be used, instead of "no feature store, build one"."""
import shutil

import pytest

from app_fixtures import write_store_run
from test_app import app


def broken_message(path) -> str:
    from interp.errors import CorruptArtifactError
    from interp.features import FeatureStore

    with pytest.raises(CorruptArtifactError) as e:
        FeatureStore(path)
    return str(e.value)


def errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


@pytest.mark.parametrize("content", [b"not a database at all\n" * 100, b""])
def test_features_page_shows_a_corrupt_store_s_error(monkeypatch, tmp_path, content):
    run = write_store_run(tmp_path / "run")
    bad = run / "features" / "topk.duckdb"
    bad.parent.mkdir()
    bad.write_bytes(content)
    message = broken_message(bad)
    at = app(monkeypatch, run, "features")
    assert errors(at) == [message]
    assert not any("No feature store" in i.value for i in at.info)
    at = app(monkeypatch, run)  # the overview, where densities come from the stores
    assert errors(at) == [message]
    assert not any("No feature store" in i.value for i in at.info)


def test_a_corrupt_store_beside_a_good_one(monkeypatch, tmp_path, app_run):
    run = write_store_run(tmp_path / "run")
    (run / "features").mkdir()
    shutil.copy(app_run / "features" / "topk.duckdb", run / "features" / "good.duckdb")
    bad = run / "features" / "bad.duckdb"
    bad.write_bytes((app_run / "features" / "topk.duckdb").read_bytes()[:5000])  # truncated
    message = broken_message(bad)
    at = app(monkeypatch, run, "features")
    assert errors(at) == [message]
    assert at.selectbox(key="feat_sae").value == "good"  # the good one still works
    assert any("Top activations" in m.value for m in at.markdown)
