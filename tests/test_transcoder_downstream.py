"""Everything downstream of training accepts a transcoder (issue 15, item 6), on a tiny
per-layer transcoder (PLT) trained through the CLI on othello's block-1 MLP: the feature
store (codes from the input hook, logit effects from the decoder in the output space),
probes on its latents, ablation and steering through the splice (the MLP replaced by the
transcoder plus its error), Marks-style circuits, and the app's pages. Each is checked
against a slow reference written out by hand."""
import copy
import json
from pathlib import Path

import pytest
import torch

from interp.hooks import mlp_io_hooks

HOOK_IN, HOOK_OUT = mlp_io_hooks(1)  # blocks.1.ln2.hook_normalized -> blocks.1.hook_mlp_out


@pytest.fixture(scope="module")
def plt_run(tmp_path_factory):
    """A run folder: both MLP hooks of block 1 harvested, a PLT in RUN/saes/plt, and its
    feature store (window wide enough to hold whole contexts) in RUN/features/plt.duckdb."""
    from interp.cli import main

    run = tmp_path_factory.mktemp("tc") / "run"
    assert main(["harvest", "--model", "othello", "--hook", HOOK_IN, "--hook", HOOK_OUT,
                 "--tokens", "3000", "--out", str(run)]) in (0, None)
    assert main(["train", "--store", str(run), "--hook", HOOK_IN, "--hook-out", HOOK_OUT,
                 "--arch", "topk", "--latents", "128", "--k", "8", "--batch-size", "256",
                 "--steps", "30", "--lr", "3e-3", "--eval-rows", "512",
                 "--out", str(run / "saes" / "plt")]) in (0, None)
    assert main(["features", "--run", str(run), "--sae", "plt", "--tokens", "1200",
                 "--batch", "16", "--top", "3", "--window", "64,64", "--samples", "1",
                 "--quantile-bins", "2"]) in (0, None)
    return run


@pytest.fixture(scope="module")
def model():
    from interp.models import load

    return load("othello").requires_grad_(False)


@pytest.fixture(scope="module")
def plt(plt_run):
    from interp.sae.io import load_sae

    tc = load_sae(plt_run / "saes" / "plt").eval()
    assert tc.cfg.transcoder and not tc.cfg.skip
    return tc


def with_skip(tc):
    """The PLT with a random skip term: a skip transcoder whose skip path is far from 0."""
    from interp.sae.core import SAEConfig, SparseAutoencoder

    cfg = SAEConfig.from_dict({**tc.cfg.to_dict(), "skip": True})
    skip = SparseAutoencoder(cfg)
    skip.load_state_dict(tc.state_dict(), strict=False)
    with torch.no_grad():
        skip.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    return skip.eval()


def mlp_io(model, tokens):
    """(x_in, y) at the MLP's input and output hooks of the clean model."""
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK_IN, HOOK_OUT])
    return cache[HOOK_IN], cache[HOOK_OUT]


def tokens_of(n=3, t=12, seed=0):
    return torch.randint(1, 61, (n, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ feature store
def test_feature_store_codes_come_from_the_input_hook(plt_run, model, plt):
    """Every recorded activation of a top example equals the transcoder's code of
    ln2.hook_normalized at that token, recomputed from the stored context by hand."""
    from interp.features import FeatureStore

    with FeatureStore(plt_run / "features" / "plt.duckdb") as fs:
        assert (fs.meta["hook"], fs.meta["hook_out"]) == (HOOK_IN, HOOK_OUT)
        alive = [f["latent"] for f in fs.by_density(0.0, 1.0, n=4)]
        pages = [fs.feature(j) for j in alive]
    assert pages
    for page in pages:
        ex = page["top_examples"][0]
        assert ex["window_start"] == 0  # the whole context up to the token is stored
        toks = torch.tensor([ex["token_ids"]])
        x_in, y = mlp_io(model, toks)
        with torch.no_grad():
            codes = plt.encode(x_in[0])[:, page["latent"]]
            from_output = plt.encode(y[0])[:, page["latent"]]  # same width: a silent mistake
        acts = torch.tensor(ex["acts"])
        torch.testing.assert_close(acts[1:], codes[1:], atol=1e-4, rtol=1e-4)
        assert ex["value"] == pytest.approx(float(codes[ex["pos"]]), abs=1e-4)
        assert not torch.allclose(acts[1:], from_output[1:], atol=1e-3)


def test_logit_effects_are_the_decoder_in_the_output_space(plt_run, model, plt):
    """W_dec (rows in hook_mlp_out's space, the residual stream) through ln_final's centring
    and gain, then W_U: the store's top tokens and values, by hand."""
    from interp.features import FeatureStore, logit_effects
    from interp.features.logits import residual_directions

    d = plt.W_dec.detach().float()
    by_hand = ((d - d.mean(1, keepdim=True)) * model.ln_final.w) @ model.W_U
    top = by_hand.topk(5, dim=1)
    # asked with the hook it reads, the transcoder still maps the hook it writes
    torch.testing.assert_close(residual_directions(plt, model, HOOK_IN), d)
    eff = logit_effects(plt, model, HOOK_IN, 5)
    torch.testing.assert_close(torch.from_numpy(eff["pos_values"]), top.values, atol=1e-5,
                               rtol=1e-5)
    with FeatureStore(plt_run / "features" / "plt.duckdb") as fs:
        assert fs.meta["logit_effects"]
        boosted = fs.feature(5)["logits"]["boosted"]
    assert [b["token_id"] for b in boosted[:3]] == top.indices[5, :3].tolist()
    assert boosted[0]["value"] == pytest.approx(float(top.values[5, 0]), rel=1e-4)


# ------------------------------------------------------------------ probes
def test_probes_on_transcoder_latents_read_its_input_hook(plt_run, model, plt):
    from interp.probes.datasets import example_rows, make_dataset, probe_features

    ds = make_dataset("othello-mine-d3", 8)
    x, y, info = probe_features(model, ds, "sae:plt", {"plt": plt}, max_examples=200)
    assert info["hook"] == HOOK_IN and x.shape[1] == plt.cfg.d_sae
    rows = example_rows(ds, 200, 0)
    x_in, _ = mlp_io(model, ds.tokens)
    with torch.no_grad():
        ref = plt.encode(x_in[rows[:, 0], rows[:, 1]])
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    from interp.cli import main  # the CLI checks both of its hooks against the model

    out = plt_run / "probe.json"
    assert main(["probe", "--task", "othello-mine-d3", "--source",
                 f"sae:{plt_run / 'saes' / 'plt'}", "--k", "1", "--contexts", "8",
                 "--examples", "200", "--out", str(out)]) in (0, None)
    (res,) = json.loads(out.read_text())["sources"].values()
    assert res["info"]["hook"] == HOOK_IN and res["info"]["units"] == 128


# ------------------------------------------------------------------ splice
@pytest.mark.parametrize("skip", [False, True], ids=["plt", "skip"])
def test_splice_keeps_the_error_so_the_model_is_unchanged(model, plt, skip):
    """acts = codes of the MLP's input, err = true mlp_out - full prediction (skip term
    included), and the spliced model's output is the model's, bit for bit."""
    from interp.circuits.splice import SplicedModel

    tc = with_skip(plt) if skip else plt
    spliced = SplicedModel(model, {HOOK_OUT: tc})
    toks = tokens_of()
    res = spliced.run(toks)
    assert torch.equal(res.logits, model(toks))
    x_in, y = mlp_io(model, toks)
    with torch.no_grad():
        out = tc(x_in.reshape(-1, 128))
    st = res.hooks[HOOK_OUT]
    torch.testing.assert_close(st.acts, out.dense().reshape(3, 12, -1))
    torch.testing.assert_close(st.err, y - out.x_hat.reshape(y.shape), atol=1e-5, rtol=1e-5)
    if skip:  # the skip term is in the prediction, not in the error
        y_hat_no_skip = out.dense() @ tc.W_dec + tc.b_dec
        assert not torch.allclose(st.err, y - y_hat_no_skip.reshape(y.shape), atol=1e-3)
    # an intervention that changes nothing changes nothing
    same = spliced.run(toks, {HOOK_OUT: lambda h, a, e: (a.clone(), e.clone())})
    assert torch.equal(same.logits, res.logits)


@pytest.mark.parametrize("skip", [False, True], ids=["plt", "skip"])
def test_steering_and_ablation_move_mlp_out_by_the_decoder_rows(model, plt, skip):
    """Steering latent i by +c adds c * W_dec[i] to hook_mlp_out (at the chosen positions
    only); zero-ablating latents subtracts their a_j W_dec[j]. Against a plain hook that
    does the same to the clean model by hand."""
    from interp.ablations import ablate_latents, steer
    from interp.circuits.splice import SplicedModel

    tc = with_skip(plt) if skip else plt
    spliced = SplicedModel(model, {HOOK_OUT: tc})
    toks = tokens_of()
    x_in, y = mlp_io(model, toks)
    with torch.no_grad():
        acts = tc(x_in.reshape(-1, 128)).dense().reshape(3, 12, -1)
    latent, c, pos = int(acts[:, -1].sum(0).argmax()), 7.5, [4, 11]
    row = tc.W_dec[latent].detach()

    def steered(a, e):
        a = a.clone()
        a[:, pos, latent] += c
        return a, e

    res = spliced.run(toks, {HOOK_OUT: lambda h, a, e: steered(a, e)}, capture=(HOOK_OUT,))
    delta = res.captured[HOOK_OUT] - y
    expected = torch.zeros_like(y)
    expected[:, pos] = c * row
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)

    def add_by_hand(act, hook):
        act = act.clone()
        act[:, pos] += c * row
        return act

    by_hand = model.run_with_hooks(toks, fwd_hooks=[(HOOK_OUT, add_by_hand)])
    torch.testing.assert_close(res.logits, by_hand, atol=1e-4, rtol=1e-4)
    rep = steer(spliced, HOOK_OUT, toks, latent, alpha=c, positions=pos)
    from interp.ablations import report

    ref = report(model(toks), by_hand, toks)
    assert rep.loss_after == pytest.approx(ref.loss_after, abs=1e-5)
    # zero ablation of the most active latents: y - sum_j a_j W_dec[j], by hand
    latents = acts[:, -1].sum(0).topk(3).indices.tolist()
    removed = acts[..., latents] @ tc.W_dec[latents].detach()
    ablated = model.run_with_hooks(toks, fwd_hooks=[(HOOK_OUT, lambda a, hook: a - removed)])
    rep = ablate_latents(spliced, HOOK_OUT, toks, latents)
    assert rep.loss_after == pytest.approx(report(model(toks), ablated, toks).loss_after,
                                           abs=1e-5)
    assert rep.loss_clean == pytest.approx(ref.loss_clean, abs=1e-6)


def test_a_transcoder_is_spliced_where_it_writes_or_refused(model, plt):
    from interp.circuits.splice import SplicedModel
    from interp.errors import DataError

    with pytest.raises(DataError, match=f"splice it at {HOOK_OUT}"):
        SplicedModel(model, {HOOK_IN: plt})
    bare = copy.deepcopy(plt)
    bare.cfg.metadata = {k: v for k, v in plt.cfg.metadata.items() if k != "hook_name_out"}
    with pytest.raises(DataError, match="does not record the hooks it reads and writes"):
        SplicedModel(model, {HOOK_OUT: bare})
    assert SplicedModel(model, {HOOK_OUT: plt}).reads == {HOOK_OUT: HOOK_IN}


def test_cli_ablate_and_steer_a_transcoder_latent(plt_run, capsys):
    from interp.cli import main

    folder = str(plt_run / "saes" / "plt")
    assert main(["ablate", "--sae", folder, "--latents", "3,5", "--task", "othello-legal",
                 "--prompts", "4"]) in (0, None)
    assert main(["ablate", "--sae", folder, "--latents", "3", "--alpha", "4",
                 "--task", "othello-legal", "--prompts", "4"]) in (0, None)
    out = capsys.readouterr().out
    assert f"zero-ablated latents [3, 5] at {HOOK_OUT}" in out
    assert f"steered latent 3 by alpha=4.0 at {HOOK_OUT}" in out


# ------------------------------------------------------------------ circuits
def random_transcoder(layer, seed):
    """An untrained transcoder of othello's block ``layer`` MLP (for a second hook)."""
    from interp.sae.core import SAEConfig, SparseAutoencoder

    hook_in, hook_out = mlp_io_hooks(layer)
    tc = SparseAutoencoder(SAEConfig(d_in=128, d_sae=64, arch="topk", k=4, d_out=128,
                                     skip=True, seed=seed,
                                     metadata={"hook_name": hook_in, "hook_name_out": hook_out}))
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    return tc.eval()


def test_graph_mode_node_scores_match_attribution_patching(model, plt):
    """Edges are vector-Jacobian products in graph mode, where a transcoder's nodes are
    computed from its input differentiably; the node scores it gives must equal AtP's (which
    passes gradients through the true activation). Two transcoders, one with a skip term."""
    from interp.circuits.attribution import Node, edge_attribution, node_attribution
    from interp.circuits.splice import SplicedModel
    from interp.circuits.tasks import make_task

    spliced = SplicedModel(model, {mlp_io_hooks(0)[1]: random_transcoder(0, 1),
                                   HOOK_OUT: with_skip(plt)})
    task = make_task("othello-legal", model, n=4)
    atp = node_attribution(spliced, task, method="atp", patch="counterfactual")
    nodes = []
    for h, s in atp.items():
        d_sae = s.shape[1] - 1
        pos, col = divmod(int(s[:, :-1].abs().argmax()), d_sae)
        nodes += [Node(h, pos, col), Node.error_term(h, task.clean.shape[1] - 1)]
    edges, scores = edge_attribution(spliced, task, nodes, patch="counterfactual")
    for n in nodes:
        want = float(atp[n.hook][n.position, n.column(spliced.saes[n.hook].cfg.d_sae)])
        assert scores[n] == pytest.approx(want, rel=1e-3, abs=1e-6), n
    assert any(e.upstream.hook != e.downstream for e in edges if isinstance(e.downstream, Node))


def test_cli_circuit_over_a_transcoder(plt_run):
    """Nodes are the transcoder's latents and error at the hook it writes; faithfulness is
    computed with them."""
    from interp.cli import main

    out = plt_run / "circuit.json"
    assert main(["circuit", "--sae", str(plt_run / "saes" / "plt"), "--task", "othello-legal",
                 "--prompts", "4", "--method", "atp", "--max-nodes", "8",
                 "--out", str(out)]) in (0, None)
    g = json.loads(out.read_text())
    hooks = {n.get("hook") for n in g["nodes"] if n.get("kind") in ("latent", "error")}
    assert hooks == {HOOK_OUT}


def test_a_feature_readout_of_a_transcoder_latent(model, plt):
    """``--metric feature:TC:LATENT``: the latent's pre-activation from its input hook (no
    b_dec inside: it lives in the output space)."""
    from interp.circuits.tasks import Readout

    r = Readout.from_sae(plt, 7)
    assert r.hook == HOOK_IN
    x_in, _ = mlp_io(model, tokens_of())
    with torch.no_grad():
        torch.testing.assert_close(r(x_in), plt.encode_pre(x_in[:, -1])[:, 7], atol=1e-5,
                                   rtol=1e-5)


# ------------------------------------------------------------------ the app
APP = str(Path(__file__).resolve().parents[1] / "apps" / "interp_app.py")


def app(monkeypatch, run, to=None, **query):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("INTERP_RUN", str(run))
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = str(v)
    if to:
        at.switch_page(f"app_pages/{to}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_app_overview_lists_the_transcoder_with_its_hooks(monkeypatch, plt_run):
    at = app(monkeypatch, plt_run)
    table = at.dataframe[0].value
    row = table[table["SAE"] == "plt"].iloc[0]
    assert row["kind"] == "transcoder"
    assert row["hook"] == f"reads {HOOK_IN} → writes {HOOK_OUT}"
    others = table[~table["SAE"].str.contains("plt")]  # shipped PLT sets are transcoders
    assert set(others["kind"]) == {"SAE"}
    assert set(table[table["SAE"].str.startswith("othello/skip_plt/")]["kind"]) == {
        "skip transcoder"}


def test_app_feature_page_of_a_transcoder_latent(monkeypatch, plt_run):
    from interp.features import FeatureStore

    with FeatureStore(plt_run / "features" / "plt.duckdb") as fs:
        alive = next(i for i, d in enumerate(fs.summary()["density"]) if d > 0)
    at = app(monkeypatch, plt_run, "features", sae="plt", latent=alive)
    captions = "\n".join(c.value for c in at.caption)
    assert f"reads `{HOOK_IN}` → writes `{HOOK_OUT}`" in captions
    assert f"its logit effects are its decoder row at `{HOOK_OUT}`" in captions
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("logit" in t.lower() for t in titles)  # the logit-effect figure


def test_app_ablations_page_steers_a_transcoder_latent(monkeypatch, plt_run):
    at = app(monkeypatch, plt_run, "ablations", sae="plt", latents=5)
    assert at.selectbox(key="ablate_sae").value == "plt"
    loss0 = at.metric[1].value
    at.selectbox(key="ablate_mode").set_value("steer: add alpha x decoder direction").run()
    at.number_input(key="ablate_alpha").set_value(30.0).run()
    assert not at.exception and not at.error
    assert at.metric[1].value != loss0


def test_app_circuits_and_probes_pages_take_a_transcoder(monkeypatch, plt_run):
    at = app(monkeypatch, plt_run, "circuits")
    at.selectbox(key="circuit_task").set_value("othello-legal")
    at.multiselect(key="circuit_saes").set_value(["plt"])
    at.slider(key="circuit_prompts").set_value(4)
    at.slider(key="circuit_max_nodes").set_value(5)
    at.button(key="circuit_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception or at.error]
    node = at.selectbox(key="circuit_node").value
    assert node.startswith(HOOK_OUT)  # its latents are nodes where it writes
    labels = [p.proto.label for p in at.get("page_link")]
    assert f"open the feature page of plt latent {int(node.split('|')[-1])}" in labels
    at = app(monkeypatch, plt_run, "probes", property="othello-mine-d3", sae="plt")
    at.multiselect(key="probe_sources").set_value(["sae:plt"])
    at.multiselect(key="probe_ks").set_value([1])
    at.number_input(key="probe_contexts").set_value(8)
    at.number_input(key="probe_examples").set_value(300)
    at.button(key="probe_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception or at.error]
    assert set(at.dataframe[0].value["source"]) == {"sae:plt"}
