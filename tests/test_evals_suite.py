"""The evaluation suite (``interp.evals.suite``) and ``interp evals``: which evaluations
apply, where results go, results kept per weights, the side-by-side rows, and the command's
refusals (each one line, nothing written)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from interp.errors import UsageError
from interp.evals import suite
from refusals import refuse


def test_applies_names_the_reason():
    assert suite.applies("probing", "othello", None) is None
    assert "no" in suite.applies("ground_truth", "gpt2", None).split("; ")[-1]
    assert "embedded" in suite.applies("llm", "gpt2", None)
    with pytest.raises(UsageError, match="valid: probing, absorption"):
        suite.applies("nope", "othello", None)


def test_documents_keep_results_of_the_same_weights_only(tmp_path):
    from interp.runs import resolve_sae

    sae = resolve_sae("othello/blocks.3.hook_resid_post/topk").sae
    t = suite.Target("x", "x", sae, "othello", tmp_path, ["probing"])
    doc = suite.document(t, None)
    assert doc["format"] == suite.FORMAT and doc["d_sae"] == 2048 and doc["evals"] == {}
    doc["evals"]["probing"] = {"summary": {"acc": 0.9}}
    suite.write_evals(tmp_path, doc)
    again = suite.document(t, suite.read_evals(tmp_path))
    assert again["evals"] == {"probing": {"summary": {"acc": 0.9}}}
    with torch.no_grad():  # other weights: the old results are not theirs
        sae.W_dec[0, 0] += 1.0
    try:
        assert suite.document(t, suite.read_evals(tmp_path))["evals"] == {}
    finally:
        with torch.no_grad():
            sae.W_dec[0, 0] -= 1.0
    assert suite.owns_evals_file(tmp_path / "evals.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "evals.json").write_text(json.dumps({"format": "else"}))
    assert not suite.owns_evals_file(tmp_path / "other" / "evals.json")


def test_comparison_rows_put_dictionaries_side_by_side():
    docs = {"a": {"evals": {"probing": {"summary": {"acc_k1": 0.7, "n": 3, "note": "x"}}}},
            "b": {"evals": {"probing": {"summary": {"acc_k1": 0.8}},
                            "ground_truth": {"summary": {"matched": 0.1}}}}}
    rows = suite.comparison_rows(docs)
    assert rows == [{"evaluation": "probing", "metric": "acc_k1", "a": 0.7, "b": 0.8},
                    {"evaluation": "probing", "metric": "n", "a": 3},
                    {"evaluation": "ground_truth", "metric": "matched", "b": 0.1}]


def test_evals_command_refusals(tmp_path):
    shipped = "othello/blocks.3.hook_resid_post/topk"
    refuse(["evals", shipped], "shipped dictionary", "--out", watch=[tmp_path])
    refuse(["evals", shipped, "--out", tmp_path, "--only", "llm"], "--llm-url", "--llm-model",
           watch=[tmp_path])
    refuse(["evals", shipped, "--out", tmp_path, "--only", "probing,nope"],
           "valid evaluations are probing", watch=[tmp_path])
    refuse(["evals", shipped, "--out", tmp_path, "--only", "absorption"], "absorption",
           watch=[tmp_path])
    refuse(["evals", shipped, "--out", tmp_path, "--only", "probing", "--llm-url",
            "http://localhost:1/v1", "--llm-model", "m"], "not selected", watch=[tmp_path])
    # a file of something else where evals.json would go is not replaced
    (tmp_path / "evals.json").write_text("{\"mine\": 1}")
    refuse(["evals", shipped, "--out", tmp_path, "--only", "ground_truth"], "evals.json",
           "not what this command writes", watch=[tmp_path])


def test_evals_command_writes_and_compares(tmp_path, monkeypatch):
    """Two dictionaries, ground truth only on a small sample: evals.json in OUT/NAME each,
    the side-by-side table printed; a second run replaces its own file."""
    from interp.evals import ground_truth
    from refusals import run_cli

    real = ground_truth.run
    monkeypatch.setattr(ground_truth, "run", lambda *a, **k: real(*a, **{**k, "n_contexts": 8}))
    names = ["othello/blocks.3.hook_resid_post/topk", "othello/blocks.3.hook_resid_post/relu"]
    argv = ["evals", *names, "--out", tmp_path, "--only", "ground_truth"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    for n in names:
        doc = suite.read_evals(tmp_path / n.replace("/", "__"))
        assert doc["dictionary"] == n and set(doc["evals"]) == {"ground_truth"}
        assert 0 <= doc["evals"]["ground_truth"]["summary"]["frac_alive_f1_ge_0.5"] <= 1
    assert "| ground_truth | frac_alive_f1_ge_0.5 |" in out
    assert run_cli(argv)[0] == 0
    shutil.rmtree(tmp_path)


def test_a_default_evaluation_the_data_cannot_support_is_skipped(tmp_path, monkeypatch):
    """pycode's residual stream holds no first-letter direction a probe can read, so the
    default absorption evaluation is skipped with that reason (kept in evals.json); named
    with --only, it fails in one line."""
    from interp.evals import ground_truth, probing
    from refusals import run_cli

    for module, small in ((ground_truth, {"n_contexts": 8}),
                          (probing, {"n_contexts": 16, "properties": ["pycode-keyword"]})):
        real = module.run
        monkeypatch.setattr(module, "run", lambda *a, _r=real, _s=small, **k: _r(*a, **{**k, **_s}))
    sae = "pycode/blocks.2.hook_resid_post/topk"
    code, out, err = run_cli(["evals", sae, "--out", tmp_path])
    assert code == 0, err
    doc = suite.read_evals(tmp_path)
    assert set(doc["evals"]) == {"probing", "ground_truth"}
    assert "first letter" in doc["skipped"]["absorption"]
    assert "absorption skipped" in out
    refuse(["evals", sae, "--out", tmp_path / "b", "--only", "absorption"], "first letter")


def small_evals(monkeypatch) -> None:
    """Ground truth and probing at test sizes, wherever they are called from."""
    from interp.evals import ground_truth, probing

    for module, small in ((ground_truth, {"n_contexts": 8}),
                          (probing, {"n_contexts": 16, "properties": ["othello-empty-c5",
                                                                      "othello-mine-d3"]})):
        real = module.run
        monkeypatch.setattr(module, "run",
                            lambda *a, _r=real, _s=small, **k: _r(*a, **{**k, **_s}))


def test_evals_page_compares_dictionaries(monkeypatch, app_run, tmp_path):
    """The app's Evals page on a copy of the app run: the run's SAE evaluated from the page
    (written beside its weights), a shipped SAE's results under RUN/evals/NAME; the
    side-by-side table, the figures, and best-matched latents linked to the run SAE's
    feature pages."""
    from test_app import app, ok

    from interp.evals import ground_truth, probing
    from interp.models import load
    from interp.runs import resolve_sae

    run = tmp_path / "run"
    shutil.copytree(app_run, run)
    small_evals(monkeypatch)
    at = ok(app(monkeypatch, run, "evals"))
    assert "No evaluation results" in at.info[0].value
    at.selectbox(key="evals_run_pick").set_value("topk")
    at.button(key="evals_run").click().run()
    ok(at)
    doc = suite.read_evals(run / "saes" / "topk")
    assert set(doc["evals"]) == {"probing", "ground_truth"} and "absorption" in doc["skipped"]
    shipped = "othello/blocks.3.hook_resid_post/relu"
    sae = resolve_sae(shipped).sae
    out = run / "evals" / shipped.replace("/", "__")
    doc = suite.document(suite.Target(shipped, shipped, sae, "othello", out, []), None)
    model = load("othello").requires_grad_(False)
    doc["evals"]["ground_truth"] = ground_truth.run(model, sae, "othello")
    doc["evals"]["probing"] = probing.run(model, sae, "othello")
    out.mkdir(parents=True)
    suite.write_evals(out, doc)
    at.run()
    ok(at)
    assert shipped in at.multiselect(key="evals_chosen").options
    at.multiselect(key="evals_chosen").set_value(["topk", shipped]).run()
    ok(at)
    table = at.dataframe[0].value
    assert {"topk", shipped} <= set(table.columns)
    assert ("probing", "saebench_accuracy_k1") in set(table.index)
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}) for c in at.get("plotly_chart")]
    assert any("Ground-truth match" in str(t) for t in titles)
    assert len(at.get("plotly_chart")) == 2
    labels = [p.proto.label for p in at.get("page_link")]
    assert any(label.startswith("latent ") and ": othello-" in label for label in labels)
    assert any("absorption not run" in c.value for c in at.caption)
