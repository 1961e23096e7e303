"""Naming graph features on Othello (``interp.graphs.othello``), their activations on many
prompts (``interp.graphs.nodes.feature_activations``), attention-score pair terms
(``interp.graphs.build.attention_pairs``) and the intervention helpers the case study
(notebooks/04) uses: scaling several features at once, measuring attention scores,
ablation effects of every feature at once."""
import numpy as np
import pytest
import torch

from interp.data.othello import (EMPTY, MINE, THEIRS, generate_games, parse_square,
                                 replay)
from interp.graphs import attention_pairs, attention_targets, attribute, logit_targets
from interp.graphs.nodes import feature_activations
from interp.graphs.othello import (SQUARE_STATES, board_profile, profile_features,
                                   square_state_labels)
from interp.graphs.validate import (ablation_effects, propagate, run_intervention,
                                    validate)
from interp.sae.replacement import open_replacement


@pytest.fixture(scope="module")
def othello():
    from interp.models import load

    return load("othello")


@pytest.fixture(scope="module")
def rep():
    return open_replacement(["othello/plt", "othello/attn"])


GAMES = generate_games(3, seed=11)


@pytest.fixture(scope="module")
def attn_graph(othello, rep):
    """A graph of the first game's first 8 moves: the score of head 2.1 from position 8 to
    position 3."""
    toks = torch.from_numpy(GAMES.tokens()[0, :9])
    return attribute(othello, rep, toks,
                     targets=lambda n: attention_targets(n, othello, 2, 1, 8, 3))


def test_square_state_labels_follow_the_reference_engine():
    games = generate_games(3, seed=5)
    labels, valid = square_state_labels(games)
    assert labels.shape == (3, 61, len(SQUARE_STATES), 64) and not valid[:, 0].any()
    for n in range(3):
        moves = [int(m) for m in games.moves[n] if m >= 0]
        boards = replay(moves)
        for p in (1, 2, 17, len(moves)):
            board = replay(moves[:p - 1])[-1] if p > 1 else None
            after = boards[p - 1]
            state = after.state_from(after.to_move)
            got = {s: labels[n, p, i] for i, s in enumerate(SQUARE_STATES)}
            assert np.array_equal(got["empty"], state == EMPTY)
            assert np.array_equal(got["mine"], state == MINE)
            assert np.array_equal(got["theirs"], state == THEIRS)
            assert set(np.nonzero(got["played"])[0]) == {moves[p - 1]}
            if board is not None and not after.is_over():
                assert set(np.nonzero(got["legal"])[0]) == set(after.legal_moves())
                assert set(np.nonzero(got["flipped"])[0]) == set(board.flips(moves[p - 1]))


def test_board_profile_names_a_planted_feature():
    games = generate_games(40, seed=1)
    labels, valid = square_state_labels(games)
    c4 = parse_square("c4")
    theirs = torch.from_numpy(labels[:, :, SQUARE_STATES.index("theirs"), c4]).float()
    g = torch.Generator().manual_seed(0)
    acts = torch.stack([3 * theirs, torch.rand(theirs.shape, generator=g)], -1)
    prof = board_profile(acts[:, :60], games, ["planted", "noise"])
    label, corr = prof.top(0, 1)[0]
    assert label == "c4 theirs" and corr > 0.999
    assert prof.name(0).startswith("c4 theirs")
    row = prof.table(0, 1)[0]
    assert row["when active"] == pytest.approx(1.0)
    assert 0 < row["base rate"] < 1
    assert abs(prof.top(1, 1)[0][1]) < 0.2          # noise names nothing strongly
    assert prof.grid(0, "theirs").shape == (8, 8) and prof.grid(0, "theirs")[3, 2] > 0.999
    assert prof.frequency[0] == pytest.approx(float((theirs[:, :60][torch.from_numpy(
        valid[:, :60])] > 0).float().mean()))


def test_feature_activations_are_the_graphs_own(othello, attn_graph):
    """On the graph's prompt, a feature's activation over many prompts is its node value
    (a threshold transcoder and a top-k attention SAE)."""
    tokens = torch.from_numpy(GAMES.tokens()[:, :9])
    nodes = attn_graph.nodes
    picks = [0, nodes.n_features // 2, nodes.n_features - 1]
    names = [nodes.blocks[int(nodes.features[i, 0])].name for i in picks]
    assert any(n.startswith("attn") for n in names) and any(n.startswith("mlp") for n in names)
    feats = [(name, int(nodes.features[i, 2])) for name, i in zip(names, picks)]
    acts = feature_activations(othello, nodes.blocks, tokens, feats, batch_size=2)
    assert acts.shape == (3, 9, 3) and not acts[:, 0].any()
    for k, i in enumerate(picks):
        assert acts[0, int(nodes.features[i, 1]), k] == pytest.approx(
            float(nodes.activations[i]), rel=1e-4, abs=1e-5)
    prof = profile_features(othello, nodes.blocks, GAMES, feats)
    assert prof.corr.shape == (3, len(SQUARE_STATES), 64) and prof.n_positions > 0


def test_attention_pairs_add_up_to_the_score(othello, attn_graph):
    graph = attn_graph
    pairs = attention_pairs(othello, graph, graph.targets[1], top=5)
    terms = pairs.pair_terms()
    total = (terms.sum() + pairs.query_bias_terms.sum() + pairs.key_bias_terms.sum()
             + pairs.bias_bias)
    assert pairs.score == pytest.approx(graph.targets[0].value, rel=1e-4)
    assert float(total) == pytest.approx(pairs.score, rel=1e-4, abs=1e-4)
    # each side's target row is that side's shares against the whole other vector
    n = graph.target_start
    q_row, k_row = graph.adjacency[n, :n], graph.adjacency[n + 1, :n]
    scale = float(q_row.abs().max())
    assert torch.allclose(q_row, terms.sum(1) + pairs.key_bias_terms, atol=1e-4 * scale)
    assert torch.allclose(k_row, terms.sum(0) + pairs.query_bias_terms, atol=1e-4 * scale)
    assert len(pairs.top) == 5 and abs(pairs.top[0][2]) == pytest.approx(
        float(terms.abs().max()))
    with pytest.raises(Exception, match="attention target"):
        attention_pairs(othello, graph, logit_targets(graph.nodes, othello)[0])


def test_interventions_on_several_features_and_attention_scores(othello, attn_graph):
    graph = attn_graph
    clean = run_intervention(othello, graph, None, 1.0, "direct")["targets"]
    assert torch.allclose(clean, torch.tensor([graph.targets[0].value] * 2), atol=1e-4)
    # features at the key's position reach only the key side: in the frozen model with
    # everything else held, the score moves by exactly the key-side edges
    n = graph.target_start
    at_key = [i for i in range(graph.n_selected) if graph.feature_of(i)[1] == 3]
    key_side = sorted(at_key, key=lambda i: -abs(float(graph.adjacency[n + 1, i])))[:3]
    run = run_intervention(othello, graph, key_side, 0.0, "direct")["targets"]
    want = -float(graph.adjacency[n + 1, key_side].sum())
    assert float(run[0] - clean[0]) == pytest.approx(want, rel=1e-3, abs=1e-4)
    res = validate(othello, graph, key_side, 0.0, "direct")
    assert res["pearson"] > 0.9999
    # ablation effects: propagate for every feature at once
    effects = ablation_effects(graph, target=1)
    for f in key_side + [graph.n_selected - 1]:
        assert float(effects[f]) == pytest.approx(float(propagate(graph, f, 0.0)[n + 1]),
                                                  rel=1e-4, abs=1e-6)
    # features that do not feed each other (one block, one position) move together as the
    # sum of their moves; a scaled feature is set, not fed, so a chain would not add up
    b, p, _ = graph.feature_of(key_side[0])
    peers = [i for i in range(graph.n_selected) if graph.feature_of(i)[:2] == (b, p)][:3]
    assert len(peers) > 1 and not graph.adjacency[peers][:, peers].any()
    both = propagate(graph, peers, 0.5)
    assert torch.allclose(both, sum(propagate(graph, f, 0.5) for f in peers), atol=1e-5)
