"""Attribution graphs (interp.graphs): every edge against two independent references.

1. Autograd through TransformerLens with attention patterns and normalisation scales
   detached (circuit-tracer's construction): the gradient of a row's read at every write
   site, contracted with each node's vector, is that row.
2. Intervention in the model's own forward pass (``interp.graphs.validate``): scaling one
   feature with everything else held moves each node by exactly its edge.
On the shipped othello dictionaries (PLT, skip PLT, CLT, attention SAEs) and on a random
model of another family (rotary, RMSNorm, grouped-query attention, parallel attention and
MLP, gated MLP).
"""
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp.graphs import (attention_targets, attribute, feature_target, graph_scores,
                           logitdiff_target, prune)
from interp.graphs.build import _RowComputer
from interp.graphs.linear import UNEMBED_INPUT
from interp.graphs.validate import pearson, validate
from interp.hooks import flat_units, mlp_io_hooks
from interp.models import load
from interp.sae.core import SAEConfig, SparseAutoencoder
from interp.sae.replacement import Replacement, open_replacement


@pytest.fixture(scope="module")
def othello():
    return load("othello")


def game(length=16, seed=5):
    from interp.data.othello import generate_games

    return torch.as_tensor(generate_games(1, seed=seed).tokens()[0][:length]).long()


# ------------------------------------------------------------------ the autograd reference
def reference_rows(model, graph, reads_list):
    """Rows by autograd through the model with the freezes (see the module docstring)."""
    nodes = graph.nodes
    rows = []
    for reads in reads_list:
        leaves, seen = {}, {}

        def leaf(act, hook):
            x = act.detach().clone().requires_grad_(True)
            leaves[hook.name] = x
            return x

        def capture(act, hook):
            seen[hook.name] = act
            return act

        def write(act, hook):
            x = leaf(act, hook)
            for b in nodes.blocks:  # a skip transcoder's output follows its input
                if b.skip is not None and hook.name in b.writes:
                    s = flat_units(seen[b.read]) @ b.skip
                    x = x + (s - s.detach()).reshape(x.shape)
            return x

        def freeze(act, hook):
            return act.detach()

        hooks = [("hook_embed", leaf)]
        for name in model.hook_dict:
            if name.endswith("hook_pattern") or name.endswith("hook_scale"):
                hooks.append((name, freeze))
            if name.endswith("ln1.hook_normalized") or name == "ln_final.hook_normalized":
                hooks.append((name, capture))
        hooks += [(b.read, capture) for b in nodes.blocks]
        hooks += [(s, write) for s in nodes.error_sites]
        order = {n: i for i, n in enumerate(model.hook_dict)}
        hooks.sort(key=lambda h: order[h[0]])
        with torch.enable_grad():
            model.run_with_hooks(nodes.tokens[None], fwd_hooks=hooks)
            total = 0
            for site, pos, vec in reads:
                if site == UNEMBED_INPUT:
                    ln = model.ln_final
                    x = seen["ln_final.hook_normalized"] * getattr(ln, "w", 1) + getattr(ln, "b", 0)
                elif site.endswith("attn.input"):
                    layer = int(site.split(".")[1])
                    ln = model.blocks[layer].ln1
                    x = seen[f"blocks.{layer}.ln1.hook_normalized"] * getattr(ln, "w", 1) \
                        + getattr(ln, "b", 0)
                else:
                    x = flat_units(seen[site])
                total = total + x[0, pos] @ vec
            names = ["hook_embed"] + nodes.error_sites
            grads = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
        g = {n: (torch.zeros_like(leaves[n]) if gr is None else gr).reshape(
            1, nodes.n_pos, -1)[0] for n, gr in zip(names, grads)}
        row = torch.zeros(nodes.n_columns)
        for b, blk in enumerate(nodes.blocks):
            idx = nodes.block_features(b)
            pos, lat = nodes.features[idx, 1], nodes.features[idx, 2]
            for w, dec in zip(blk.writes, blk.decoders):
                row[idx] += (g[w][pos] * dec[lat]).sum(-1) * nodes.activations[idx]
        for s, site in enumerate(nodes.error_sites):
            start = nodes.error_column(s, 0)
            row[start:start + nodes.n_pos] = (g[site] * nodes.errors[site]).sum(-1)
        start = nodes.token_column(0)
        row[start:start + nodes.n_pos] = (g["hook_embed"] * nodes.token_vectors).sum(-1)
        rows.append(row)
    return torch.stack(rows)


def assert_rows_match(model, graph, n_features=6):
    """The graph's target rows and a few feature rows equal the autograd reference."""
    nodes = graph.nodes
    reads = [t.reads for t in graph.targets]
    picks = torch.linspace(0, graph.n_selected - 1, n_features).long().tolist()
    for i in picks:
        b, p, f = graph.feature_of(i)
        blk = nodes.blocks[b]
        reads.append([(blk.read, p, blk.encoder.W_enc[:, f].detach())])
    ref = reference_rows(model, graph, reads)
    ours = _RowComputer(nodes).rows(reads, nodes.n_columns)
    scale = float(ref.abs().max())
    assert scale > 0
    assert float((ours - ref).abs().max()) <= 1e-4 * scale
    # and the graph's stored rows (in node order) are these rows
    n_t = len(graph.targets)
    cols = torch.cat([graph.selected, torch.arange(nodes.n_features, nodes.n_columns)])
    stored = graph.adjacency[graph.target_start:, :len(cols)]
    assert torch.allclose(stored, ours[:n_t][:, cols], atol=1e-5 * scale)


@pytest.mark.parametrize("name", ["othello/plt", "othello/skip_plt", "othello/clt"])
def test_rows_equal_autograd_and_edges_equal_interventions(othello, name):
    graph = attribute(othello, open_replacement([name]), game())
    assert graph.n_selected == graph.nodes.n_features > 0
    assert_rows_match(othello, graph)
    top = graph.adjacency[graph.target_start:, :graph.n_selected].abs().sum(0).topk(4)
    res = validate(othello, graph, top.indices.tolist(), 0.5, "direct")
    assert res["pearson"] > 0.99999
    scale = float(res["measured"].abs().max())
    assert float((res["predicted"] - res["measured"]).abs().max()) <= 1e-4 * scale


def test_attention_sae_nodes(othello):
    """Transcoders plus attention-output SAEs at hook_z: features, errors and edges there."""
    graph = attribute(othello, open_replacement(["othello/plt", "othello/attn"]), game(12))
    names = {b.name for b in graph.nodes.blocks}
    assert {"attn.0", "mlp.0", "attn.5", "mlp.5"} <= names
    assert any(s.endswith("hook_z") for s in graph.nodes.error_sites)
    assert_rows_match(othello, graph)
    attn_feats = [i for i in range(graph.n_selected)
                  if graph.nodes.blocks[graph.feature_of(i)[0]].name.startswith("attn")]
    res = validate(othello, graph, attn_feats[:3], 0.0, "direct")
    assert res["pearson"] > 0.99999


def test_feature_logitdiff_and_attention_targets(othello):
    rep = open_replacement(["othello/plt"])
    toks = game(20)
    g0 = attribute(othello, rep, toks)
    b, p, f = g0.feature_of(g0.n_selected - 1)   # a late feature
    name = g0.nodes.blocks[b].name
    graph = attribute(othello, rep, toks, targets=lambda n: [
        feature_target(n, name, p, f), logitdiff_target(n, othello, 3, 7),
        *attention_targets(n, othello, 2, 1, 15, 4)])
    assert_rows_match(othello, graph)
    # a target's edges plus its constant part is its value: the constant does not depend on
    # the prompt's nodes, so two prompts' (value - edge sum) agree
    kinds = [t.kind for t in graph.targets]
    assert kinds == ["feature", "logitdiff", "attn_query", "attn_key"]


def test_capped_graph_keeps_the_most_influential_features(othello):
    rep = open_replacement(["othello/plt"])
    toks = game(20)
    full = attribute(othello, rep, toks)
    capped = attribute(othello, rep, toks, max_feature_nodes=300, batch_size=64)
    assert capped.n_selected == 300
    assert_rows_match(othello, capped)
    # the features it kept carry most of the full graph's feature influence
    from interp.graphs.prune import influence, normalize_rows

    inf = influence(normalize_rows(full.adjacency), full.target_weights())[:full.n_selected]
    kept = inf[capped.selected].sum() / inf.sum()
    assert kept > 0.6


def test_prune_and_scores(othello):
    graph = attribute(othello, open_replacement(["othello/plt"]), game(24))
    scores = graph_scores(graph)
    assert 0.5 < scores["replacement"] <= 1 and 0.5 < scores["completeness"] <= 1
    loose, tight = prune(graph, 0.9, 0.99), prune(graph, 0.5, 0.9)
    assert tight.n_nodes < loose.n_nodes and tight.n_edges < loose.n_edges
    assert loose.node_mask[graph.token_start:].all()  # tokens and targets always kept
    capped = prune(graph, 0.9, 0.99, max_features=20)
    assert int(capped.node_mask[:graph.n_selected].sum()) <= 20
    # every kept feature has an incoming and an outgoing kept edge
    m = loose.node_mask[:graph.n_selected]
    assert loose.edge_mask[:graph.n_selected][m].any(1).all()
    assert loose.edge_mask[:, :graph.n_selected][:, m].any(0).all()


# ------------------------------------------------------------------ another family
def llama_like():
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64,
        n_ctx=24, d_vocab=40, act_fn="silu", gated_mlp=True, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=8, parallel_attn_mlp=True, seed=1,
        model_name="tiny-llama-like", original_architecture="LlamaForCausalLM")
    return HookedTransformer(cfg).eval()


def random_transcoders(model, skip_layer=1):
    out = []
    for layer in range(model.cfg.n_layers):
        h_in, h_out = mlp_io_hooks(layer)
        sae = SparseAutoencoder(SAEConfig(
            d_in=model.cfg.d_model, d_sae=48, arch="relu", d_out=model.cfg.d_model,
            skip=layer == skip_layer, seed=layer,
            metadata={"model_name": model.cfg.model_name, "hook_name": h_in,
                      "hook_name_out": h_out}))
        with torch.no_grad():
            sae.b_enc.fill_(-0.05)
            if sae.cfg.skip:
                sae.W_skip.normal_(0, 0.05)
        out.append(sae.eval())
    return Replacement(out, [f"L{i}" for i in range(len(out))])


def test_another_family_rotary_rms_gqa_parallel():
    model = llama_like()
    toks = torch.randint(1, 40, (12,), generator=torch.Generator().manual_seed(0))
    graph = attribute(model, random_transcoders(model), toks)
    assert graph.nodes.n_features > 20
    assert_rows_match(model, graph)
    res = validate(model, graph, [0, graph.n_selected // 2], 0.0, "direct")
    assert res["pearson"] > 0.99999


def gemma2_like():
    """Gemma-2's quirks at toy size: RMSNorm after attention and MLP too, logit and score
    soft caps, local and global layers, grouped-query attention, wide heads; the
    unembedding scaled up so that the logit cap bends the logits."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=16, n_key_value_heads=2, d_mlp=64,
        n_ctx=24, d_vocab=40, act_fn="gelu_pytorch_tanh", gated_mlp=True,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16,
        use_normalization_before_and_after=True, attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0, use_local_attn=True, window_size=4,
        attn_types=["local", "global"], use_attn_scale=True, attn_scale=4.0, final_rms=True,
        seed=2, model_name="tiny-gemma2-like", original_architecture="Gemma2ForCausalLM")
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        model.unembed.W_U.mul_(60)
        for b in model.blocks:  # post-norm weights away from 1, so they matter
            b.ln1_post.w.uniform_(0.5, 1.5)
            b.ln2_post.w.uniform_(0.5, 1.5)
    return model


def test_gemma2_norms_after_sublayers_and_soft_caps():
    model = gemma2_like()
    toks = torch.randint(1, 40, (12,), generator=torch.Generator().manual_seed(0))
    graph = attribute(model, random_transcoders(model), toks)
    values = [t.value for t in graph.targets]
    assert max(abs(v) for v in values) > 10   # the cap bends these logits
    assert_rows_match(model, graph)
    for mode in ("direct", "replacement"):   # predicted vs measured, logits before the cap
        res = validate(model, graph, [0, graph.n_selected // 2], 0.0, mode)
        assert res["pearson"] > 0.999, (mode, res["pearson"])


def test_refusals(othello):
    from interp.errors import DataError

    with pytest.raises(DataError, match="every MLP replaced"):
        attribute(othello, open_replacement(["othello/attn"]), game(8))
    with pytest.raises(DataError, match="transcoders"):
        attribute(othello, open_replacement(["othello/blocks.3.hook_resid_post/topk"]),
                  game(8))
    rep = open_replacement(["othello/plt"])
    with pytest.raises(DataError, match="causal"):
        attribute(othello, rep, game(8), targets=lambda n: attention_targets(n, othello, 0, 0,
                                                                             2, 5))
    with pytest.raises(DataError, match="position"):
        attribute(othello, rep, game(8), targets=lambda n: [feature_target(n, "mlp.1", 0, 3)])
    with pytest.raises(DataError, match="no dictionary at"):
        attribute(othello, rep, game(8), targets=lambda n: [feature_target(n, "mlp.9", 2, 3)])


def test_pearson():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)


# ------------------------------------------------------------------ the command
def test_cli_graph_writes_our_json_tracer_json_and_figure(tmp_path):
    import json

    from interp.graphs.io import load_graph
    from refusals import run_cli

    out = tmp_path / "g" / "graph.json"
    tracer = tmp_path / "g" / "tracer.json"
    rc, stdout, err = run_cli(["graph", "--transcoders", "othello/plt", "--prompt",
                               "f5 d6 c3 d3 c4 f4", "--out", out, "--validate", "2",
                               "--tracer-json", tracer])
    assert rc == 0, err
    assert "replacement score" in stdout and "Pearson 1.0000" in stdout
    doc = load_graph(out)
    assert doc["model"] == "othello" and doc["token_labels"][1] == "f5"
    kinds = {n["kind"] for n in doc["nodes"]}
    assert {"feature", "token", "target"} <= kinds
    ids = {n["id"] for n in doc["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in doc["edges"])
    assert doc["validation"][0]["mode"] == "direct" and doc["validation"][0]["pearson"] > 0.9999
    assert out.with_suffix(".html").exists()
    t = json.loads(tracer.read_text())
    assert set(t) == {"metadata", "qParams", "nodes", "links"}
    t_ids = {n["node_id"] for n in t["nodes"]}
    assert all(link["source"] in t_ids and link["target"] in t_ids for link in t["links"])
    # a second run replaces its own files; a file of another kind is never overwritten
    rc, _, err = run_cli(["graph", "--transcoders", "othello/plt", "--prompt", "f5 d6",
                          "--out", out])
    assert rc == 0, err
    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    from refusals import refuse

    refuse(["graph", "--transcoders", "othello/plt", "--prompt", "f5 d6", "--out", other],
           "notes.json", watch=[other])


def test_cli_graph_targets_and_refusals(tmp_path):
    from refusals import refuse, run_cli

    out = tmp_path / "t.json"
    rc, stdout, err = run_cli(["graph", "--transcoders", "othello/clt", "--prompt",
                               "f5 d6 c3 d3 c4", "--out", out, "--target", "attn:2.1:4:1",
                               "--target", "logitdiff:f4,a1", "--target", "feature:3:4:10"])
    assert rc == 0, err
    assert "query side" in stdout and "key side" in stdout and "logit f4 - a1" in stdout
    base = ["graph", "--transcoders", "othello/plt", "--prompt", "f5 d6 c3", "--out",
            tmp_path / "x.json"]
    refuse(base + ["--target", "attn:2:1:3"], "not one of")
    refuse(base + ["--target", "logitdiff:f4,zz"], "not an Othello square")
    refuse(base + ["--target", "attn:1.0:1:3"], "causal")
    refuse(["graph", "--transcoders", "othello/plt", "--prompt", "f5 q9", "--out",
            tmp_path / "x.json"], "not Othello squares")
    refuse(["graph", "--transcoders", "othello/attn", "--prompt", "f5 d6", "--out",
            tmp_path / "x.json"], "every MLP replaced")
    refuse(["graph", "--transcoders", "othello/plt", "pycode/clt", "--prompt", "f5",
            "--out", tmp_path / "x.json"], "different models")
    refuse(base + ["--node-threshold", "1.5"], "node_threshold")
    refuse(base + ["--target", "feature:3:1:1", "--tracer-json", tmp_path / "tr.json"],
           "logit targets only")


def test_pycode_graph_from_a_clt(tmp_path):
    from interp.graphs.trace import trace

    doc, graph = trace(None, ["pycode/clt"], "def area(width, height):\n    return (width",
                       targets=["logits"], max_feature_nodes=500)
    assert doc["model"] == "pycode" and graph.n_selected == 500
    assert 0 < doc["scores"]["replacement"] <= 1


def test_graph_faithfulness_runs_the_circuit_code(othello):
    """Each prompt's pruned graph as a circuit, measured by the circuit code: the full
    model's metric is the task's own, whatever the ablation; the cap holds."""
    from interp.circuits.tasks import make_task
    from interp.graphs.faithful import circuit_nodes, graph_faithfulness

    task = make_task("othello-legal", othello, n=2)
    rep = open_replacement(["othello/plt"])
    zero = graph_faithfulness(othello, rep, task, n_prompts=2, max_features=20,
                              ablation="zero")
    cf = graph_faithfulness(othello, rep, task, n_prompts=2, max_features=20,
                            ablation="counterfactual")
    assert zero["mean_features"] <= 20
    logits = othello(task.clean[:2])[:, -1]
    metric = logits.gather(1, task.answer[:2, None]) - logits.gather(1, task.wrong[:2, None])
    for a, b, m in zip(zero["prompts"], cf["prompts"], metric[:, 0].tolist()):
        assert a["m_full"] == pytest.approx(m, abs=1e-3) and b["m_full"] == pytest.approx(m,
                                                                                          abs=1e-3)
    assert all(isinstance(r["faithfulness_pooled"], float) for r in (zero, cf))
    # the nodes handed to the circuit code sit at the hooks the transcoders write
    graph = attribute(othello, rep, task.clean[0])
    nodes = circuit_nodes(graph, prune(graph, 0.5, 0.9))
    assert nodes and all(n.hook.endswith("hook_mlp_out") for n in nodes)


def test_tracer_json_validates_with_circuit_tracers_own_models(tmp_path):
    """circuit-tracer's frontend schema (its pydantic models) accepts our graph JSON, in
    its own venv."""
    import subprocess

    from test_tracer_export import TRACER_PY, needs_tracer

    if needs_tracer.args[0]:
        pytest.skip(needs_tracer.kwargs["reason"])
    from refusals import run_cli

    path = tmp_path / "tracer.json"
    rc, _, err = run_cli(["graph", "--transcoders", "othello/plt", "--prompt", "f5 d6 c3 d3",
                          "--out", tmp_path / "g.json", "--tracer-json", path])
    assert rc == 0, err
    code = ("import json, sys\n"
            "from circuit_tracer.frontend.graph_models import Model\n"
            "m = Model.model_validate(json.load(open(sys.argv[1])))\n"
            "print(len(m.nodes), len(m.links))\n")
    r = subprocess.run([str(TRACER_PY), "-c", code, str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    n_nodes, n_links = map(int, r.stdout.split())
    assert n_nodes > 10 and n_links > 10
