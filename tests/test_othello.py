import numpy as np
import pytest

from interp.data import othello as oth
from interp.data.othello import BLACK, MINE, THEIRS, WHITE, OthelloBoard, parse_square as sq


def board_from(rows: list[str], to_move: int) -> OthelloBoard:
    """rows[0] is row 1; 'B', 'W' or '.' per column a..h."""
    b = OthelloBoard()
    b.cells = [[{"B": BLACK, "W": WHITE, ".": None}[c] for c in r] for r in rows]
    b.to_move = to_move
    return b


def test_square_names_round_trip():
    assert sq("a1") == 0 and sq("h1") == 7 and sq("h8") == 63 and sq("D3") == 19
    assert all(sq(oth.square_name(i)) == i for i in range(64))
    with pytest.raises(ValueError, match="a1..h8"):
        sq("i9")


def test_opening_moves_and_first_flip():
    b = OthelloBoard()
    assert b.legal_moves() == sorted([sq("d3"), sq("c4"), sq("f5"), sq("e6")])
    assert b.play(sq("d3")) == [sq("d4")]
    assert b.to_move == WHITE
    assert b.legal_moves() == sorted([sq("c3"), sq("e3"), sq("c5")])


def test_illegal_move_raises():
    with pytest.raises(ValueError, match="illegal move a1"):
        OthelloBoard().play(sq("a1"))


def test_multi_direction_flips():
    b = board_from(["........",
                    "........",
                    "........",
                    ".BW.....",
                    "...WW...",
                    ".....W..",
                    "......B.",
                    "........"], BLACK)
    # d4: left c4 is bracketed by b4; down-right e5, f6 by g7; down d5 is not (d6 empty)
    assert b.flips(sq("d4")) == sorted([sq("c4"), sq("e5"), sq("f6")])
    assert b.flips(sq("d4"), WHITE) == []


def test_pass_when_opponent_has_no_move():
    # black to move; after black plays, white has no legal move and black moves again
    b = board_from(["BBBBBBBB",
                    "BBBBBBBB",
                    "BBBBBBBB",
                    "BBBBBBBB",
                    "BBBBBBBB",
                    "BBBBBBBB",
                    "BBBBBBW.",
                    "BBBBBB..."[:8]], BLACK)
    # black h7 flips g7 (bracketed by f7)
    assert sq("h7") in b.legal_moves()
    b.play(sq("h7"))
    # white has no stones left -> no moves; black has none either -> game over
    assert b.is_over()


def test_pass_keeps_the_same_player():
    # white to move, white plays, then black cannot move but white can: white again
    b = board_from(["WWWWWWWW",
                    "WWWWWWWW",
                    "WWWWWWWW",
                    "WWWWWWWW",
                    "WWWWWWWW",
                    "WWWWWWBB",
                    "WWWWWW..",
                    "WWWWWW.."], WHITE)
    assert b.legal_moves() == sorted([sq("g7"), sq("h7")])
    assert b.legal_moves(BLACK) == []
    assert b.play(sq("g7")) == [sq("g6")]
    assert b.to_move == WHITE  # black had to pass
    assert not b.is_over()


def test_vectorised_engine_matches_reference():
    games = oth.generate_games(150, seed=3)
    state, flipped, legal = games.board_state(), games.flipped_mask(), games.legal_mask()
    passes = 0
    for i in range(len(games)):
        board = OthelloBoard()
        moves = [int(m) for m in games.moves[i] if m >= 0]
        for t, m in enumerate(moves):
            assert m in board.legal_moves()
            before = board.to_move
            assert games.mover[i, t] == before
            assert np.flatnonzero(flipped[i, t]).tolist() == board.play(m)
            over = board.is_over()
            assert games.next_player[i, t] == (-1 if over else board.to_move)
            passes += (not over) and board.to_move == before
            viewer = 1 - before if over else board.to_move
            np.testing.assert_array_equal(state[i, t], board.state_from(viewer))
            assert np.flatnonzero(legal[i, t]).tolist() == ([] if over else board.legal_moves())
        assert board.is_over() or len(moves) == 60
    assert passes > 0, "the sample should exercise passes"


def test_generator_is_deterministic_and_seed_dependent():
    a, b, c = oth.generate_games(64, 7), oth.generate_games(64, 7), oth.generate_games(64, 8)
    np.testing.assert_array_equal(a.moves, b.moves)
    assert (a.moves != c.moves).any()


def test_tokens_and_labels_shapes():
    g = oth.generate_games(10, 0)
    toks = g.tokens()
    assert toks.shape == (10, 61) and (toks[:, 0] == oth.BOS).all()
    assert set(np.unique(toks[:, 1:])) <= set(range(1, 62))
    # every real move token maps back to its square
    real = g.moves >= 0
    np.testing.assert_array_equal(oth.TOKEN_TO_SQUARE[toks[:, 1:]][real], g.moves[real])
    state = g.board_state()
    assert state.shape == (10, 60, 64)
    # after move t there are t + 5 stones on the board
    stones = (state != 0).sum(-1)
    np.testing.assert_array_equal(stones[real], (np.arange(60)[None] + 5).repeat(10, 0)[real])
    # the last mover's stone sits on its square, and it is "theirs" to the next player
    t0 = state[np.arange(10), 0, g.moves[:, 0]]
    assert (t0 == THEIRS).all() and MINE in state


def test_generate_rejects_bad_count():
    with pytest.raises(ValueError, match="positive"):
        oth.generate_games(0)


def test_training_target_is_uniform_over_the_legal_next_moves():
    from interp.models.train import othello_next_move_distribution

    g = oth.generate_games(20, 11)
    dist = othello_next_move_distribution(g, 60)
    assert dist.shape == (20, 60, oth.VOCAB_SIZE)
    for i in range(3):
        board = OthelloBoard()
        for t, m in enumerate(int(x) for x in g.moves[i] if x >= 0):
            legal = oth.SQUARE_TO_TOKEN[board.legal_moves()]
            np.testing.assert_allclose(dist[i, t, legal], 1 / len(legal))
            assert dist[i, t].sum() == pytest.approx(1) and dist[i, t, oth.SQUARE_TO_TOKEN[m]] > 0
            board.play(m)
