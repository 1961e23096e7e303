import pytest
import torch

from interp.circuits.attribution import OUTPUT, Node, edge_attribution, node_attribution
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import make_task
from interp.errors import DataError
from interp.models import load
from interp.sae.core import SAEConfig, SparseAutoencoder

HOOKS = ["blocks.3.hook_resid_pre", "blocks.3.hook_resid_mid"]
M = 64


def frozen_sae(seed):
    sae = SparseAutoencoder(SAEConfig(d_in=128, d_sae=M, arch="topk", k=8, seed=seed)).eval()
    return sae.requires_grad_(False)


@pytest.fixture(scope="module")
def setup():
    model = load("othello").requires_grad_(False)
    spliced = SplicedModel(model, {h: frozen_sae(i) for i, h in enumerate(HOOKS)})
    return spliced, make_task("othello-legal", n=6)


def test_graph_mode_is_exact_and_gives_the_atp_node_scores(setup):
    spliced, task = setup
    res = spliced.run(task.clean, graph=True)
    assert torch.equal(res.logits.detach(), spliced.model(task.clean))
    atp = node_attribution(spliced, task)
    last = task.clean.shape[1] - 1
    nodes = [Node.from_column(h, last, j, M) for h in HOOKS for j in range(M + 1)]
    _, scores = edge_attribution(spliced, task, nodes)
    for n in nodes:
        assert scores[n] == pytest.approx(float(atp[n.hook][n.position, n.column(M)]), abs=1e-5)


@pytest.mark.parametrize("linear", [False, True])
def test_edges_out_of_a_node_add_up_to_its_effect(setup, linear):
    """At the last position every path from hook 1 to the metric runs through hook 2's
    latents and error there, so with all of them kept the edges out of a node sum to its
    node score (by the chain rule; in linear mode for the linearised model)."""
    spliced, task = setup
    last = task.clean.shape[1] - 1
    nodes = [Node.from_column(h, last, j, M) for h in HOOKS for j in range(M + 1)]
    edges, scores = edge_attribution(spliced, task, nodes, linear=linear)
    up = [n for n in nodes if n.hook == HOOKS[0] and abs(scores[n]) > 1e-4]
    assert up, "no upstream node has an effect"
    for u in up:
        out = sum(e.weight for e in edges if e.upstream == u)
        assert out == pytest.approx(scores[u], rel=1e-3, abs=1e-5)
    assert any(e.downstream == OUTPUT for e in edges)
    down = [n for n in nodes if n.hook == HOOKS[1]]
    for d in down:  # edges to the output from the last hook are its node scores
        e = [e.weight for e in edges if e.upstream == d and e.downstream == OUTPUT]
        assert e and e[0] == pytest.approx(scores[d], abs=1e-6)


def test_linear_mode_freezes_patterns_and_scales(setup):
    spliced, task = setup
    last = task.clean.shape[1] - 1
    nodes = [Node.error_term(HOOKS[0], last)]
    _, plain = edge_attribution(spliced, task, nodes)
    _, linear = edge_attribution(spliced, task, nodes, linear=True)
    assert plain[nodes[0]] != pytest.approx(linear[nodes[0]])


def test_edge_input_errors(setup):
    spliced, task = setup
    with pytest.raises(DataError, match="no nodes"):
        edge_attribution(spliced, task, [])
    with pytest.raises(DataError, match="no SAE is spliced"):
        edge_attribution(spliced, task, [Node("blocks.0.hook_resid_post", 0, 0)])
