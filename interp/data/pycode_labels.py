"""Per-token ground truth for Python source, from the standard ``tokenize`` module.

For every BPE token of a file: is it inside a string literal, inside a comment, a keyword,
the bracket depth, and the indentation level of its logical line. These are the known
answers that probes and SAE features on the ``pycode`` model are checked against.

How a BPE token gets its label: labels are first computed for every character of the
source, then each BPE token takes the label of its first non-whitespace character (its
first character when it is all whitespace), so ``" if"`` is a keyword and ``" #"`` is in a
comment. Per character:

- ``in_string``: covered by a ``STRING`` token (or, on Python >= 3.12, by the parts of an
  f-string), quotes and prefixes included;
- ``in_comment``: covered by a ``COMMENT`` token, ``#`` included;
- ``keyword``: covered by a ``NAME`` token for which ``keyword.iskeyword`` holds
  (soft keywords such as ``match`` are not counted);
- ``bracket_depth``: brackets opened before the character and not yet closed before it, so
  an opening bracket has its outer depth and a closing bracket its inner one;
- ``indent_level``: the number of ``INDENT`` minus ``DEDENT`` tokens before the logical line
  holding the character; whitespace takes the level of the next token, so a line's leading
  indentation belongs to that line.
"""
from __future__ import annotations

import io
import keyword
import tokenize
from dataclasses import dataclass

import numpy as np

from interp.errors import DataError

LABEL_NAMES = ("in_string", "in_comment", "keyword", "bracket_depth", "indent_level")
BOOLEAN_LABELS = ("in_string", "in_comment", "keyword")
PYCODE_CLASSES = ("in-string", "in-comment", "keyword", "in-brackets", "indented")
_OPEN, _CLOSE = set("([{"), set(")]}")
_STRING_TYPES = {tokenize.STRING}
for _name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"):  # Python >= 3.12
    if hasattr(tokenize, _name):
        _STRING_TYPES.add(getattr(tokenize, _name))


@dataclass
class TokenLabels:
    """Labels of a token sequence; every field has one entry per token."""

    in_string: np.ndarray      # bool
    in_comment: np.ndarray     # bool
    keyword: np.ndarray        # bool
    bracket_depth: np.ndarray  # int16
    indent_level: np.ndarray   # int16

    def __len__(self) -> int:
        return len(self.in_string)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in LABEL_NAMES}

    def binary_classes(self) -> dict[str, np.ndarray]:
        """The five yes/no classes probes and evaluations use, by name (``PYCODE_CLASSES``):
        the three boolean labels, "in-brackets" (depth > 0) and "indented" (level > 0)."""
        return {"in-string": np.asarray(self.in_string, dtype=bool),
                "in-comment": np.asarray(self.in_comment, dtype=bool),
                "keyword": np.asarray(self.keyword, dtype=bool),
                "in-brackets": np.asarray(self.bracket_depth) > 0,
                "indented": np.asarray(self.indent_level) > 0}

    @staticmethod
    def empty(n: int) -> "TokenLabels":
        b = np.zeros(n, dtype=bool)
        i = np.zeros(n, dtype=np.int16)
        return TokenLabels(b, b.copy(), b.copy(), i, i.copy())

    @staticmethod
    def concat(parts: list["TokenLabels"]) -> "TokenLabels":
        return TokenLabels(**{k: np.concatenate([getattr(p, k) for p in parts])
                              for k in LABEL_NAMES})

    def __getitem__(self, idx) -> "TokenLabels":
        return TokenLabels(**{k: getattr(self, k)[idx] for k in LABEL_NAMES})


def char_labels(source: str) -> dict[str, np.ndarray]:
    """Labels of every character of ``source`` (see module docstring).

    Raises :class:`DataError` when ``source`` is not tokenizable Python.
    """
    n = len(source)
    line_start = [0]
    for line in source.splitlines(keepends=True):
        line_start.append(line_start[-1] + len(line))

    def offset(row: int, col: int) -> int:
        return line_start[row - 1] + col if row - 1 < len(line_start) else n

    in_string = np.zeros(n, dtype=bool)
    in_comment = np.zeros(n, dtype=bool)
    is_keyword = np.zeros(n, dtype=bool)
    depth_step = np.zeros(n + 1, dtype=np.int32)   # +1 after an opener, -1 after a closer
    level = np.full(n, -1, dtype=np.int32)          # -1: whitespace, filled from the right
    current_level = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.INDENT:
                current_level += 1
                continue
            if tok.type == tokenize.DEDENT:
                current_level -= 1
                continue
            if tok.type == tokenize.ENDMARKER:
                break
            a, b = offset(*tok.start), offset(*tok.end)
            if tok.type in (tokenize.NEWLINE, tokenize.NL):
                continue  # newlines take the next line's level, like other whitespace
            level[a:b] = current_level
            if tok.type in _STRING_TYPES:
                in_string[a:b] = True
            elif tok.type == tokenize.COMMENT:
                in_comment[a:b] = True
            elif tok.type == tokenize.NAME and keyword.iskeyword(tok.string):
                is_keyword[a:b] = True
            elif tok.type == tokenize.OP:
                if tok.string in _OPEN:
                    depth_step[a + 1] += 1
                elif tok.string in _CLOSE:
                    depth_step[a + 1] -= 1
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        raise DataError(f"not tokenizable Python source: {e}") from e
    depth = np.cumsum(depth_step[:n])
    # whitespace between tokens takes the level of the next token (the trailing run: the last)
    filled = level.copy()
    next_level = current_level
    for i in range(n - 1, -1, -1):
        if filled[i] < 0:
            filled[i] = next_level
        else:
            next_level = filled[i]
    return {"in_string": in_string, "in_comment": in_comment, "keyword": is_keyword,
            "bracket_depth": np.maximum(depth, 0).astype(np.int16),
            "indent_level": filled.astype(np.int16)}


def token_labels(source: str, offsets: list[tuple[int, int]]) -> TokenLabels:
    """Labels of BPE tokens given by their character ``offsets`` into ``source``."""
    chars = char_labels(source)
    n = len(source)
    picks = np.empty(len(offsets), dtype=np.int64)
    for j, (a, b) in enumerate(offsets):
        pick = a
        for c in range(a, b):
            if not source[c].isspace():
                pick = c
                break
        picks[j] = min(pick, n - 1) if n else 0
    if n == 0:
        return TokenLabels.empty(len(offsets))
    return TokenLabels(**{k: v[picks] for k, v in chars.items()})


def label_texts(tokenizer, texts: list[str], eot_id: int | None = None
                ) -> tuple[np.ndarray, TokenLabels]:
    """Token ids of ``texts`` (each followed by ``eot_id`` when given) and their labels.

    ``tokenizer`` is a ``tokenizers.Tokenizer``; the ids equal
    :func:`interp.data.pycode.encode_corpus`'s for the same texts. ``<|endoftext|>`` gets
    all-false / zero labels.
    """
    ids, labels = [], []
    for text, enc in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False)):
        ids.append(np.asarray(enc.ids, dtype=np.int32))
        labels.append(token_labels(text, enc.offsets))
        if eot_id is not None:
            ids.append(np.asarray([eot_id], dtype=np.int32))
            labels.append(TokenLabels.empty(1))
    if not ids:
        raise DataError("no texts to label")
    return np.concatenate(ids), TokenLabels.concat(labels)
