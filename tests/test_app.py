"""The Streamlit app, run headless with streamlit's AppTest on small run folders."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.activations.store import StoreWriter

APP = str(Path(__file__).resolve().parents[1] / "apps" / "interp_app.py")


def make_run(path: Path) -> None:
    """A run folder with an othello-token store: unit 1 peaks on context 3, position 5."""
    store = path / "activations"
    w = StoreWriter(store, {"blocks.0.hook_resid_post": 4}, 8, list(range(1, 8)),
                    shard_rows=21, meta={"model": "othello"})
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        acts = torch.randn(1, 7, 4, generator=g)
        if c == 3:
            acts[0, 4, 1] = 50.0  # position 5
        w.add(np.arange(8)[None] + c, {"blocks.0.hook_resid_post": acts})
    w.close()
    (path / "run.json").write_text(json.dumps({"model": "othello", "artifacts": {}}))


def run_app(monkeypatch, run: Path, unit: int = 1):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("INTERP_RUN", str(run))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if at.number_input:
        at.number_input[0].set_value(unit).run()
    return at


def test_app_shows_a_store_and_its_top_contexts(monkeypatch, tmp_path):
    make_run(tmp_path / "run")
    at = run_app(monkeypatch, tmp_path / "run")
    assert not at.exception, at.exception
    assert [m.value for m in at.metric][:3] == ["othello", "70", "10"]
    html = "\n".join(m.value for m in at.markdown)
    # the top token is context 3 (tokens 3..10), position 5 -> token id 8
    from interp.data.othello import token_names
    first = html.split("<div")[1]
    assert "50.000" in first and f">{token_names()[8]}</b>" in first


def test_app_explains_a_missing_or_incomplete_run(monkeypatch, tmp_path):
    at = run_app(monkeypatch, tmp_path / "nowhere")
    assert not at.exception and "No run folder" in at.error[0].value
    make_run(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "activations" / "manifest.json").read_text())
    m["complete"] = False
    (tmp_path / "run" / "activations" / "manifest.json").write_text(json.dumps(m))
    at = run_app(monkeypatch, tmp_path / "run")
    assert not at.exception and "incomplete" in at.error[0].value
