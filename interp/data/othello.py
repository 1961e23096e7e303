"""Othello: rules, a fast batched random-game generator, and per-move ground truth.

Squares are indexed ``row * 8 + col`` with rows ``1..8`` and columns ``a..h`` in the usual
notation, so ``a1`` is 0, ``h1`` is 7 and ``h8`` is 63. Black moves first from the standard
start (white on d4 and e5, black on d5 and e4).

Two engines share these rules:
- :class:`OthelloBoard`, a plain 8x8 board, easy to read; the reference in tests.
- :func:`generate_games`, a bitboard engine vectorised over many games with numpy (one
  ``uint64`` per colour per game), which is what training and harvesting use.

Token ids for the model: ``BOS=0``, the 60 playable squares (all but the four centre ones)
in index order as ``1..60``, and ``PAD=61`` after a game that ended before move 60.
A pass is not a token: the next token is simply the other player's move again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOARD_SQUARES = 64
CENTER = (27, 28, 35, 36)
PLAYABLE = tuple(i for i in range(BOARD_SQUARES) if i not in CENTER)
BOS, PAD = 0, 61
VOCAB_SIZE = 62
MAX_MOVES = 60
SQUARE_TO_TOKEN = np.full(BOARD_SQUARES, -1, dtype=np.int64)
SQUARE_TO_TOKEN[list(PLAYABLE)] = np.arange(1, 61)
TOKEN_TO_SQUARE = np.full(VOCAB_SIZE, -1, dtype=np.int64)
TOKEN_TO_SQUARE[1:61] = PLAYABLE

BLACK, WHITE = 0, 1
EMPTY, MINE, THEIRS = 0, 1, 2
BOARD_STATE_NAMES = ("empty", "mine", "theirs")

DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def square_name(square: int) -> str:
    return "abcdefgh"[square % 8] + str(square // 8 + 1)


def parse_square(name: str) -> int:
    name = name.strip().lower()
    if len(name) != 2 or name[0] not in "abcdefgh" or name[1] not in "12345678":
        raise ValueError(f"not an Othello square: {name!r}; valid squares are a1..h8")
    return (int(name[1]) - 1) * 8 + "abcdefgh".index(name[0])


def token_names() -> list[str]:
    return ["<bos>"] + [square_name(s) for s in PLAYABLE] + ["<pad>"]


class OthelloBoard:
    """A readable single-game engine (reference for the vectorised one)."""

    def __init__(self) -> None:
        self.cells = [[None] * 8 for _ in range(8)]  # None, BLACK or WHITE
        self.cells[3][3] = self.cells[4][4] = WHITE
        self.cells[3][4] = self.cells[4][3] = BLACK
        self.to_move = BLACK

    def copy(self) -> "OthelloBoard":
        other = OthelloBoard()
        other.cells = [row[:] for row in self.cells]
        other.to_move = self.to_move
        return other

    def flips(self, square: int, player: int | None = None) -> list[int]:
        player = self.to_move if player is None else player
        row, col = divmod(square, 8)
        if self.cells[row][col] is not None:
            return []
        flipped = []
        for dr, dc in DIRECTIONS:
            run = []
            r, c = row + dr, col + dc
            while 0 <= r < 8 and 0 <= c < 8 and self.cells[r][c] == 1 - player:
                run.append(r * 8 + c)
                r, c = r + dr, c + dc
            if run and 0 <= r < 8 and 0 <= c < 8 and self.cells[r][c] == player:
                flipped.extend(run)
        return sorted(flipped)

    def legal_moves(self, player: int | None = None) -> list[int]:
        return [s for s in range(BOARD_SQUARES) if self.flips(s, player)]

    def is_over(self) -> bool:
        return not self.legal_moves(BLACK) and not self.legal_moves(WHITE)

    def play(self, square: int) -> list[int]:
        """Play ``square`` for the side to move, then hand the turn over (passing if the
        opponent has no move). Returns the flipped squares."""
        flipped = self.flips(square)
        if not flipped:
            raise ValueError(f"illegal move {square_name(square)} for "
                             f"{'black' if self.to_move == BLACK else 'white'}")
        for s in [square, *flipped]:
            self.cells[s // 8][s % 8] = self.to_move
        self.to_move = 1 - self.to_move
        if not self.legal_moves() and self.legal_moves(1 - self.to_move):
            self.to_move = 1 - self.to_move  # pass
        return flipped

    def state_from(self, player: int) -> np.ndarray:
        """Board as EMPTY/MINE/THEIRS from ``player``'s view, shape (64,)."""
        out = np.zeros(BOARD_SQUARES, dtype=np.int8)
        for s in range(BOARD_SQUARES):
            v = self.cells[s // 8][s % 8]
            if v is not None:
                out[s] = MINE if v == player else THEIRS
        return out


# ---------------------------------------------------------------- bitboard engine
_U = np.uint64
_ALL = _U(0xFFFFFFFFFFFFFFFF)
_NOT_A = _U(0xFEFEFEFEFEFEFEFE)  # clears column a (col 0) after a shift towards h
_NOT_H = _U(0x7F7F7F7F7F7F7F7F)  # clears column h (col 7) after a shift towards a


def _shift(x: np.ndarray, direction: int) -> np.ndarray:
    if direction == 0:
        return (x << _U(1)) & _NOT_A      # col + 1
    if direction == 1:
        return (x >> _U(1)) & _NOT_H      # col - 1
    if direction == 2:
        return x << _U(8)                 # row + 1
    if direction == 3:
        return x >> _U(8)                 # row - 1
    if direction == 4:
        return (x << _U(9)) & _NOT_A      # row + 1, col + 1
    if direction == 5:
        return (x << _U(7)) & _NOT_H      # row + 1, col - 1
    if direction == 6:
        return (x >> _U(7)) & _NOT_A      # row - 1, col + 1
    return (x >> _U(9)) & _NOT_H          # row - 1, col - 1


def legal_bitboard(own: np.ndarray, opp: np.ndarray) -> np.ndarray:
    empty = ~(own | opp)
    moves = np.zeros_like(own)
    for d in range(8):
        run = _shift(own, d) & opp
        for _ in range(5):
            run |= _shift(run, d) & opp
        moves |= _shift(run, d) & empty
    return moves


def flips_bitboard(own: np.ndarray, opp: np.ndarray, move: np.ndarray) -> np.ndarray:
    flipped = np.zeros_like(own)
    for d in range(8):
        run = _shift(move, d) & opp
        for _ in range(5):
            run |= _shift(run, d) & opp
        closed = (_shift(run, d) & own) != 0
        flipped |= np.where(closed, run, _U(0))
    return flipped


_BITS = _U(1) << np.arange(64, dtype=np.uint64)


def bits_to_mask(bb: np.ndarray) -> np.ndarray:
    """uint64 array (...,) -> bool array (..., 64)."""
    return (bb[..., None] & _BITS) != 0


@dataclass
class OthelloGames:
    """A batch of games with per-move ground truth (N games, T=60 move slots).

    ``moves`` holds square indices, -1 after the game ended. After move t:
    ``black``/``white`` are the bitboards, ``flipped`` the squares move t flipped,
    ``next_player`` who moves next (-1 once the game is over) and ``legal_next`` that
    player's legal moves (0 once over).
    """

    moves: np.ndarray        # (N, 60) int8
    black: np.ndarray        # (N, 60) uint64
    white: np.ndarray        # (N, 60) uint64
    flipped: np.ndarray      # (N, 60) uint64
    legal_next: np.ndarray   # (N, 60) uint64
    next_player: np.ndarray  # (N, 60) int8
    mover: np.ndarray        # (N, 60) int8: who played move t (-1 after the end)

    def __len__(self) -> int:
        return self.moves.shape[0]

    @property
    def lengths(self) -> np.ndarray:
        return (self.moves >= 0).sum(1)

    def tokens(self, with_bos: bool = True) -> np.ndarray:
        """(N, 60) or (N, 61) int64 token ids, PAD after the game ends."""
        toks = np.where(self.moves >= 0, SQUARE_TO_TOKEN[np.maximum(self.moves, 0)], PAD)
        if with_bos:
            toks = np.concatenate([np.full((len(self), 1), BOS), toks], axis=1)
        return toks.astype(np.int64)

    def board_state(self) -> np.ndarray:
        """(N, 60, 64) int8: EMPTY/MINE/THEIRS after move t, from the view of the player
        who moves next (of the opponent of the last mover once the game is over)."""
        viewer = np.where(self.next_player >= 0, self.next_player, 1 - self.mover)
        b, w = bits_to_mask(self.black), bits_to_mask(self.white)
        mine = np.where((viewer == BLACK)[..., None], b, w)
        theirs = np.where((viewer == BLACK)[..., None], w, b)
        return (mine * MINE + theirs * THEIRS).astype(np.int8)

    def legal_mask(self) -> np.ndarray:
        """(N, 60, 64) bool: legal next moves after move t."""
        return bits_to_mask(self.legal_next)

    def flipped_mask(self) -> np.ndarray:
        """(N, 60, 64) bool: squares flipped by move t."""
        return bits_to_mask(self.flipped)

    def valid(self) -> np.ndarray:
        """(N, 60) bool: move slot t holds a real move."""
        return self.moves >= 0


def generate_games(n_games: int, seed: int | np.random.Generator = 0) -> OthelloGames:
    """Play ``n_games`` uniformly random legal games at once."""
    if n_games <= 0:
        raise ValueError(f"n_games must be positive, got {n_games}")
    rng = np.random.default_rng(seed)
    n = n_games
    black = np.full(n, _U((1 << 35) | (1 << 28)))
    white = np.full(n, _U((1 << 27) | (1 << 36)))
    to_move = np.zeros(n, dtype=np.int8)  # BLACK
    over = np.zeros(n, dtype=bool)
    out = {k: np.zeros((n, MAX_MOVES), dtype=np.uint64)
           for k in ("black", "white", "flipped", "legal_next")}
    moves = np.full((n, MAX_MOVES), -1, dtype=np.int8)
    next_player = np.full((n, MAX_MOVES), -1, dtype=np.int8)
    mover = np.full((n, MAX_MOVES), -1, dtype=np.int8)

    def own_opp():
        is_black = to_move == BLACK
        return np.where(is_black, black, white), np.where(is_black, white, black)

    own, opp = own_opp()
    legal = legal_bitboard(own, opp)
    for t in range(MAX_MOVES):
        playing = ~over
        # choose uniformly among legal moves: random score on each legal bit, argmax
        scores = rng.random((n, 64)) * bits_to_mask(legal)
        choice = scores.argmax(1)
        move_bb = np.where(playing, _BITS[choice], _U(0))
        flipped = flips_bitboard(own, opp, move_bb)
        own = own | move_bb | flipped
        opp = opp & ~flipped
        is_black = to_move == BLACK
        black = np.where(is_black, own, opp)
        white = np.where(is_black, opp, own)
        moves[:, t] = np.where(playing, choice, -1)
        mover[:, t] = np.where(playing, to_move, -1)
        out["black"][:, t], out["white"][:, t], out["flipped"][:, t] = black, white, flipped
        # hand over; pass back if the opponent cannot move; over if neither can
        to_move = np.where(playing, 1 - to_move, to_move).astype(np.int8)
        own, opp = own_opp()
        legal = legal_bitboard(own, opp)
        must_pass = playing & (legal == 0)
        to_move = np.where(must_pass, 1 - to_move, to_move).astype(np.int8)
        own, opp = own_opp()
        legal = np.where(must_pass, legal_bitboard(own, opp), legal)
        over = over | (legal == 0)
        next_player[:, t] = np.where(over, -1, to_move)
        out["legal_next"][:, t] = np.where(over, _U(0), legal)
        # slots after the end keep the final board
    return OthelloGames(moves=moves, next_player=next_player, mover=mover, **out)


def replay(moves: list[int]) -> list[OthelloBoard]:
    """Boards after each move of ``moves`` (square indices), with the reference engine."""
    board, boards = OthelloBoard(), []
    for m in moves:
        board.play(m)
        boards.append(board.copy())
    return boards
