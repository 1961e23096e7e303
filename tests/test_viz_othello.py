"""Othello boards (``interp.viz.othello``) against the vectorised engine's ground truth, and
board profiles (``interp.features.othello``) of planted and real units."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from interp.data.othello import MINE, THEIRS, generate_games, parse_square, square_name
from interp.errors import DataError
from interp.viz.othello import (board_figure, board_heatmaps, board_svg, moves_of_tokens,
                                position, position_at)


@pytest.fixture(scope="module")
def games():
    return generate_games(12, 7)


def test_position_matches_the_engines_ground_truth(games):
    state, legal, flipped = games.board_state(), games.legal_mask(), games.flipped_mask()
    tokens = games.tokens(with_bos=True)
    checked = 0
    for g in range(len(games)):
        n = int(games.lengths[g])
        for t in (0, 1, 5, n // 2, n - 2, n - 1):
            p = position([int(m) for m in games.moves[g, :t + 1]])
            assert np.array_equal(p.state, state[g, t]), (g, t)
            assert set(p.legal) == set(np.nonzero(legal[g, t])[0]), (g, t)
            assert set(p.flipped) == set(np.nonzero(flipped[g, t])[0]), (g, t)
            assert p.played == games.moves[g, t]
            # the token at position t+1 is move t: the model's view there is this board
            q = position_at(tokens[g], t + 1)
            assert q.moves == p.moves and np.array_equal(q.state, p.state)
            checked += 1
    assert checked == 6 * len(games)
    assert position([]).legal == sorted(parse_square(s) for s in ("d3", "c4", "f5", "e6"))


def test_svg_board_marks_every_square_as_the_position_has_it(games):
    p = position([int(m) for m in games.moves[0, :21]])
    root = ET.fromstring(board_svg(p, 150, title="<move 21>"))
    found = {}
    for el in root.iter():
        if el.get("class") in ("mine", "theirs", "flipped", "legal", "played"):
            found.setdefault(el.get("class"), set()).add(el.get("data-sq"))
    for kind in ("mine", "theirs", "flipped", "legal", "played"):
        assert found.get(kind, set()) == {square_name(s) for s in p.squares(kind)}, kind
    assert len(found["mine"]) == int((p.state == MINE).sum())
    assert len(found["theirs"]) == int((p.state == THEIRS).sum())
    assert root.get("data-moves") == p.text
    assert "&lt;move 21&gt;" in board_svg(p, 150, title="<move 21>")  # escaped


def test_illegal_moves_and_tokens():
    with pytest.raises(DataError, match="move 2 .* not legal"):
        position(["f5", "f5"])
    p = position(["f5", "d6", "c3"])
    assert p.names == ["f5", "d6", "c3"] and p.to_move == 1  # black, white, black: white next
    from interp.data.othello import BOS, PAD, SQUARE_TO_TOKEN

    toks = [BOS] + [int(SQUARE_TO_TOKEN[m]) for m in p.moves] + [PAD, PAD]
    assert moves_of_tokens(toks) == p.moves


def test_clickable_board_and_heatmaps():
    p = position(["f5", "d6"])
    fig = board_figure(p)
    assert list(fig.data[-1].customdata) == [square_name(s) for s in p.legal]
    values = np.zeros(64)
    values[parse_square("c4")] = 1.0
    fig = board_heatmaps({"mine": values, "theirs": -values.reshape(8, 8)}, value_name="r")
    assert len(fig.data) == 2
    z, names = np.asarray(fig.data[0].z), np.asarray(fig.data[0].customdata)
    assert z.shape == (8, 8) and z[3, 2] == 1.0 and names[3, 2] == "c4"  # row 4, column c
    assert np.asarray(fig.data[1].z)[3, 2] == -1.0
    with pytest.raises(DataError, match="64 squares"):
        board_heatmaps({"mine": np.zeros(10)})


def test_board_profile_finds_a_planted_square_state():
    from interp.features.othello import square_profile
    from interp.graphs.othello import SQUARE_STATES

    g = generate_games(40, 3)
    state = g.board_state()                                   # (N, 60, 64) after move t
    c4 = parse_square("c4")
    acts = torch.zeros(40, 61, 3)
    acts[:, 1:, 0] = torch.from_numpy((state[:, :, c4] == MINE).astype(np.float32))
    acts[:, 1:, 1] = torch.from_numpy(g.legal_mask()[:, :, parse_square("e6")].astype(np.float32))
    acts[:, :, 2] = torch.rand(40, 61, generator=torch.Generator().manual_seed(0))
    prof = square_profile(acts, g, chunk=2)                  # two chunks
    assert prof.corr.shape == prof.mean_when.shape == (3, 6, 64) and prof.mean_act.shape == (3,)
    for f, (st, sq) in enumerate((("mine", "c4"), ("legal", "e6"))):
        flat = int(prof.corr[f].flatten().argmax())
        assert divmod(flat, 64) == (SQUARE_STATES.index(st), parse_square(sq))
        assert prof.corr[f, SQUARE_STATES.index(st), parse_square(sq)] == pytest.approx(1, 1e-5)
        assert prof.mean_when[f, SQUARE_STATES.index(st), parse_square(sq)] == pytest.approx(1)
    assert prof.top(0, 1)[0][0] == "c4 mine"
    assert prof.corr[2].abs().max() < 0.2                   # noise follows nothing
    heat = prof.values(0, "mean_when", ("mine", "theirs"))
    assert set(heat) == {"mine", "theirs"} and heat["mine"].shape == (64,)
    assert heat["theirs"][c4] == 0.0                         # never mine where it is theirs


def test_dictionary_and_neuron_profiles_on_the_othello_model():
    from interp.features.othello import dictionary_profile, neuron_profile
    from interp.models import load
    from interp.sae.core import SAEConfig, SparseAutoencoder

    model = load("othello").eval()
    sae = SparseAutoencoder(SAEConfig(d_in=512, d_sae=48, arch="topk", k=4, metadata={
        "hook_name": "blocks.1.mlp.hook_post"})).eval()
    g = generate_games(16, 5)
    prof = dictionary_profile(model, sae, g)
    assert prof.corr.shape == (48, 6, 64) and torch.isfinite(prof.corr).all()
    n = neuron_profile(model, 1, [3, 17], g)
    assert n.corr.shape == (2, 6, 64) and n.profile.features == ["L1.n3", "L1.n17"]
    # a transcoder-shaped neuron: the same as profiling the hook's unit directly
    from interp.features.othello import square_profile

    _, cache = model.run_with_cache(torch.from_numpy(g.tokens())[:, :60],
                                    names_filter="blocks.1.mlp.hook_post")
    ref = square_profile(cache["blocks.1.mlp.hook_post"][..., [3, 17]], g)
    torch.testing.assert_close(n.corr, ref.corr)


def test_probe_profile_is_the_profile_of_its_logit():
    """A probe over two neurons profiles like the weighted sum of their activations; a probe
    over latents like the same sum of the dictionary's codes; refusals in one line."""
    from interp.features.dashboard import dictionary_acts
    from interp.features.othello import probe_profile, square_profile
    from interp.models import load
    from interp.sae.core import SAEConfig, SparseAutoencoder

    model = load("othello").eval()
    g = generate_games(10, 3)
    tokens = torch.from_numpy(g.tokens())[:, :60]
    hook = "blocks.2.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    ref = square_profile((cache[hook][..., [5, 40]] @ torch.tensor([1.5, -0.5]))[..., None], g)
    got = probe_profile(model, [5, 40], [1.5, -0.5], hook=hook, games=g)
    torch.testing.assert_close(got.corr, ref.corr)
    torch.testing.assert_close(got.mean_when, ref.mean_when, equal_nan=True)
    sae = SparseAutoencoder(SAEConfig(d_in=128, d_sae=32, arch="topk", k=4, metadata={
        "hook_name": "blocks.3.hook_resid_post"})).eval()
    acts = dictionary_acts(model, sae, tokens)
    ref = square_profile((acts[..., [2, 9]] @ torch.tensor([1.0, 2.0]))[..., None], g)
    torch.testing.assert_close(probe_profile(model, [2, 9], [1.0, 2.0], sae=sae, games=g).corr,
                               ref.corr)
    with pytest.raises(DataError, match="either a hook's units or a dictionary's latents"):
        probe_profile(model, [1], [1.0], games=g)
    with pytest.raises(DataError, match="out of range: blocks.2.mlp.hook_post has 512"):
        probe_profile(model, [600], [1.0], hook=hook, games=g)


def test_board_prompt_reads_the_longest_legal_prefix():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))
    from app_board import parse_moves

    pos, problem = parse_moves("f5, D6 c3")
    assert pos.names == ["f5", "d6", "c3"] and problem is None
    pos, problem = parse_moves("f5 d6 zz c3")
    assert pos.names == ["f5", "d6"] and "before move 3" in problem and "'zz'" in problem
    pos, problem = parse_moves("f5 f5")
    assert pos.names == ["f5"] and "not legal" in problem
    assert parse_moves("")[0].names == [] and parse_moves("")[1] is None
