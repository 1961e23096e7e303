"""The Streamlit app, run headless with streamlit's AppTest: every page renders on a small run
folder and its main widget works (pick a latent, move a threshold, fit a 1-k probe...)."""
import json
from pathlib import Path

import numpy as np

from app_fixtures import write_store_run

APP = str(Path(__file__).resolve().parents[1] / "apps" / "interp_app.py")


def app(monkeypatch, run: Path, to: str | None = None, **query):
    """Run the app on ``run``, switched to the page script ``to``, with query params."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("INTERP_RUN", str(run))
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = str(v)
    if to:
        at.switch_page(f"app_pages/{to}.py")
    return at.run()


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_activations_page_shows_a_store_and_its_top_contexts(monkeypatch, tmp_path):
    write_store_run(tmp_path / "run")
    at = ok(app(monkeypatch, tmp_path / "run", "activations"))
    at.number_input[0].set_value(1).run()
    ok(at)
    assert [m.value for m in at.metric][:3] == ["othello", "70", "10"]
    # the top token is context 3 (tokens 3..10), position 5 -> token id 8
    from interp.data.othello import token_names
    first = markdown(at).split("<div")[1]
    assert "50.000" in first and f">{token_names()[8]}</b>" in first


def test_app_explains_a_missing_or_incomplete_run(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "nowhere")
    assert not at.exception and "No run folder" in at.error[0].value
    write_store_run(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "activations" / "manifest.json").read_text())
    m["complete"] = False
    (tmp_path / "run" / "activations" / "manifest.json").write_text(json.dumps(m))
    at = app(monkeypatch, tmp_path / "run", "activations")
    assert not at.exception and "incomplete" in at.error[0].value
    at = ok(app(monkeypatch, tmp_path / "run", "features"))  # no feature store: says how
    assert "interp features" in at.info[0].value


def test_overview_lists_run_and_shipped_saes(monkeypatch, app_run):
    at = ok(app(monkeypatch, app_run))
    assert at.title[0].value == "Overview"
    assert [m.value for m in at.metric][:4] == ["othello", "1", "1", "1"]
    table = at.dataframe[0].value
    assert list(table["SAE"])[0] == "topk" and list(table["from"])[0] == "run"
    assert "othello/blocks.3.hook_resid_post/relu" in set(table["SAE"])
    assert list(table["feature store"])[0] == "topk.duckdb"
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("FVU vs L0" in t for t in titles)
    assert any("training of topk" in t for t in titles)
    assert any("latents fired" in t for t in titles)  # density from the feature store
    at.selectbox(key="curves_sae").set_value("othello/blocks.3.hook_resid_post/relu").run()
    ok(at)
    # the shipped replacement models of othello: a table and the per-layer FVU chart
    assert "Replacement models" in [h.value for h in at.subheader]
    rows = {r["replacement"]: r for r in at.dataframe[1].value.to_dict("records")}
    assert {"othello/plt", "othello/skip_plt", "othello/clt"} <= set(rows)
    assert rows["othello/plt"]["hooks replaced"] == 6 and rows["othello/clt"]["total L0"] > 0
    assert any("FVU of each MLP output" in t for t in titles)
    assert "othello/plt/L3" in set(table["SAE"])  # the set's members are SAEs like others
    assert "othello/clt" not in set(table["SAE"])


def test_features_page_picks_a_latent_and_searches(monkeypatch, app_run):
    from interp.features import FeatureStore

    fs = FeatureStore(app_run / "features" / "topk.duckdb")
    latent = fs.by_density(0.0, 1.0, n=1)[0]["latent"]
    page = fs.feature(latent)
    at = ok(app(monkeypatch, app_run, "features"))
    at.number_input(key="feat_latent").set_value(latent).run()
    ok(at)
    assert at.query_params["latent"] == [str(latent)] or at.query_params["latent"] == str(latent)
    assert f"{page['density']:.3g}" in [m.value for m in at.metric]
    html = markdown(at)
    assert f"{page['top_examples'][0]['value']:.3f}" in html and "rgba(245,133,24" in html
    # search by token: the links open feature pages of latents that fire on it
    tok = page["top_tokens"][0]["token"]
    at.text_input(key="feat_token").set_value(tok).run()
    ok(at)
    links = {p.proto.label: (p.proto.page, p.proto.query_string) for p in at.get("page_link")}
    hit = [v for label, v in links.items() if label.startswith(f"latent {latent}:")]
    assert hit == [("features", f"sae=topk&latent={latent}")], links
    # ground-truth correlations, on request
    at.toggle(key="labels_topk").set_value(True).run()
    ok(at)
    assert any("Pearson r" in str(d.value.columns.tolist()) for d in at.dataframe)


def test_features_deep_link(monkeypatch, app_run):
    at = ok(app(monkeypatch, app_run, "features", sae="topk", latent=7))
    assert at.number_input(key="feat_latent").value == 7
    assert at.subheader[0].value == "topk · latent 7"
    at = ok(app(monkeypatch, app_run, page="features", sae="topk", latent=9))
    assert at.title[0].value == "Features" and at.number_input(key="feat_latent").value == 9


def test_circuits_page_discovers_prunes_and_opens_a_node(monkeypatch, app_run, tmp_path):
    at = ok(app(monkeypatch, app_run, "circuits"))
    at.selectbox(key="circuit_task").set_value("othello-legal")
    at.slider(key="circuit_prompts").set_value(4)
    at.slider(key="circuit_max_nodes").set_value(10)
    at.button(key="circuit_run").click().run()
    ok(at)
    n_nodes = int(at.metric[0].value)
    assert 1 <= n_nodes <= 10
    # a node opens its feature page (the run's SAE has a feature store)
    node = at.selectbox(key="circuit_node").value
    latent = int(node.split("|")[-1])
    labels = [p.proto.label for p in at.get("page_link")]
    assert f"open the feature page of topk latent {latent}" in labels
    # raising the node threshold prunes the graph
    t = at.slider(key="circuit_node_t")
    t.set_value(t.max * 0.5).run()
    ok(at)
    caption = next(c.value for c in at.caption if c.value.startswith("after pruning"))
    assert int(caption.split()[2]) < n_nodes
    # the saved form loads back
    from interp.circuits.discover import saes_for
    from interp.circuits.graph import save_graph
    from interp.viz.circuits import discover_circuit
    from interp.models import load

    data = discover_circuit(load("othello").requires_grad_(False),
                            saes_for([str(app_run / "saes" / "topk")]), "othello-legal", 4,
                            "atp", 8, curve=(4,))
    from interp.circuits.graph import from_json
    save_graph(from_json(data["graph"]), tmp_path / "c.json")
    at.radio(key="circuit_mode").set_value("load a saved circuit").run()
    at.text_input(key="circuit_path").set_value(str(tmp_path / "c.json")).run()
    ok(at)
    assert int(at.metric[0].value) == len(data["graph"]["nodes"]) - 1


def test_circuits_page_on_a_board_prompt(monkeypatch, app_run):
    """One prompt of one's own (the board's text box), its answer and wrong moves, against
    a counterfactual; then a mismatched counterfactual is refused in one line."""
    at = ok(app(monkeypatch, app_run, "circuits"))
    at.selectbox(key="circuit_task").set_value("your prompt").run()
    ok(at)
    at.text_area(key="circuit_prompt").set_value("f5 d6 c3 d3 c4").run()
    ok(at)
    assert "**5 moves**" in markdown(at)           # the board follows the typed moves
    at.text_input(key="circuit_answer").set_value("f4")
    at.text_input(key="circuit_wrong").set_value("a1")
    at.text_input(key="circuit_patch").set_value("f5 d6 c3 d3 c6")
    at.slider(key="circuit_max_nodes").set_value(10)
    at.button(key="circuit_run").click().run()
    ok(at)
    assert 1 <= int(at.metric[0].value) <= 10
    assert any("logit(f4) - logit(a1)" in c.value and "counterfactual" in c.value
               for c in at.caption)
    at.text_input(key="circuit_patch").set_value("f5 d6 c3")
    at.button(key="circuit_run").click().run()
    assert not at.exception and "the counterfactual prompt is 4 tokens" in at.error[0].value


def plotly_array(v) -> np.ndarray:
    """An array of a plotly figure's JSON (plotly 6 writes numpy arrays as typed base64)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = [int(n) for n in str(v.get("shape", len(a))).split(",")]   # "8, 8"
        return a.reshape(shape)
    return np.array(v, dtype=float)


def test_probes_page_fits_a_one_sparse_probe(monkeypatch, app_run):
    at = ok(app(monkeypatch, app_run, "probes", property="othello-mine-c4"))
    assert at.selectbox(key="probe_kind").value == "mine"
    assert at.text_input(key="probe_square").value == "c4"
    at.multiselect(key="probe_sources").set_value(["hook:blocks.3.hook_resid_post",
                                                   "sae:topk"])
    at.multiselect(key="probe_ks").set_value([1])
    at.number_input(key="probe_contexts").set_value(8)
    at.number_input(key="probe_examples").set_value(400)
    at.button(key="probe_run").click().run()
    ok(at)
    table = at.dataframe[0].value
    assert set(table["source"]) == {"hook:blocks.3.hook_resid_post", "sae:topk"}
    assert set(table["k"].astype(str)) == {"1", "dense"}
    assert all(0 <= f <= 1 for f in table["F1"])
    labels = [p.proto.label for p in at.get("page_link")]
    assert any(label.startswith("latent ") for label in labels)  # SAE units link to pages
    # each source's probe as a board profile: 6 heatmaps of 8 x 8 (square-states)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    boards = [c for c in charts if "probe for othello-mine-c4" in str(c["layout"].get("title"))]
    assert len(boards) == 2
    heat = [t for t in boards[0]["data"] if t["type"] == "heatmap"]
    mine = plotly_array(heat[1]["z"])
    assert len(heat) == 6 and mine.shape == (8, 8) and np.isfinite(mine).all()


def test_ablations_page_changes_the_next_token_distribution(monkeypatch, app_run):
    at = ok(app(monkeypatch, app_run, "ablations"))
    assert at.selectbox(key="ablate_sae").value == "topk"
    loss0 = at.metric[1].value
    at.selectbox(key="ablate_mode").set_value("steer: add alpha x decoder direction")
    at.run()
    at.number_input(key="ablate_alpha").set_value(50.0).run()
    ok(at)
    assert at.metric[1].value != loss0
    at.text_input(key="ablate_answer").set_value("c6")
    at.text_input(key="ablate_wrong").set_value("a1").run()
    ok(at)
    assert [m.label for m in at.metric][2:] == ["logit diff before", "after"]
    at.text_area(key="ablate_prompt").set_value("f5 zz").run()
    assert not at.exception and "not Othello squares: zz" in at.error[0].value


def test_without_a_run_pages_use_a_chosen_models_shipped_saes(monkeypatch, tmp_path):
    at = ok(app(monkeypatch, tmp_path / "nowhere", "ablations"))
    assert at.selectbox(key="ablate_sae").value == "othello/blocks.3.hook_resid_post/topk"
    at.selectbox(key="model_choice").set_value("pycode").run()
    ok(at)  # the othello choices are reset, the pycode ones start at their defaults
    assert at.selectbox(key="ablate_sae").value == "pycode/blocks.2.hook_resid_post/topk"
    assert at.text_area(key="ablate_prompt").value.startswith("def ")
    at.text_input(key="ablate_answer").set_value(")")
    at.text_input(key="ablate_wrong").set_value(r"\n").run()  # typed escape: a newline
    ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["logit diff before"]) > 0  # inside "(width", ")" beats a newline
