import numpy as np
import pytest

from interp.data import pycode
from interp.data.pycode_labels import char_labels, label_texts, token_labels
from interp.data.sources import PycodeSource
from interp.errors import DataError
from interp.models.zoo import model_dir

SNIPPET = '''def f(x, y=[1, (2)]):  # note
    if x:
        return "a(b"
    return {'k': y}
'''


@pytest.fixture(scope="module")
def tok():
    return pycode.load_tokenizer(model_dir("pycode") / "tokenizer.json")


def at(src: str, needle: str, nth: int = 0) -> int:
    i = -1
    for _ in range(nth + 1):
        i = src.index(needle, i + 1)
    return i


def test_char_labels_on_a_known_snippet():
    lab = char_labels(SNIPPET)
    s = SNIPPET
    # keywords
    for kw in ("def", "if", "return"):
        assert lab["keyword"][at(s, kw)]
    assert not lab["keyword"][at(s, "f(")] and not lab["keyword"][at(s, "x")]
    # comment covers '#' to end of line, and nothing else
    c = at(s, "# note")
    assert lab["in_comment"][c:c + 6].all() and lab["in_comment"].sum() == 6
    # strings, with their quotes; brackets inside strings do not count
    q = at(s, '"a(b"')
    assert lab["in_string"][q:q + 5].all() and not lab["in_string"][q - 1]
    assert lab["in_string"][at(s, "'k'")] and lab["in_string"].sum() == 5 + 3
    # bracket depth: openers carry the outer depth, closers the inner one
    d = lab["bracket_depth"]
    assert d[at(s, "(")] == 0 and d[at(s, "x")] == 1
    assert d[at(s, "[")] == 1 and d[at(s, "1")] == 2 and d[at(s, "2")] == 3
    assert d[at(s, ")", 1)] == 1 and d[at(s, ":")] == 0   # the closer of f(...)
    assert d[at(s, "a(b")] == 0                            # inside a string
    assert d[at(s, "'k'")] == 1 and d[at(s, "}")] == 1 and d[-1] == 0
    # indentation level of the logical line; leading whitespace belongs to its line
    lv = lab["indent_level"]
    assert lv[at(s, "def")] == 0 and lv[at(s, "if")] == 1 and lv[at(s, "return")] == 2
    assert lv[at(s, "return", 1)] == 1
    assert lv[at(s, "        return") + 2] == 2


def test_labels_match_tokenize_on_a_corpus_file():
    """Every NAME keyword and COMMENT in a real file is labelled, via the tokenize module."""
    import io
    import keyword
    import tokenize

    rel, text = pycode.corpus_texts("test")[0]
    lab = char_labels(text)
    starts = np.cumsum([0] + [len(l) for l in text.splitlines(keepends=True)])
    kw_chars = comment_chars = 0
    for t in tokenize.generate_tokens(io.StringIO(text).readline):
        a = starts[t.start[0] - 1] + t.start[1]
        if t.type == tokenize.NAME and keyword.iskeyword(t.string):
            assert lab["keyword"][a], (rel, t)
            kw_chars += len(t.string)
        if t.type == tokenize.COMMENT:
            assert lab["in_comment"][a] and not lab["in_string"][a]
            comment_chars += len(t.string)
    assert kw_chars > 0 and lab["keyword"].sum() == kw_chars
    assert lab["in_comment"].sum() == comment_chars


def test_bpe_tokens_take_their_first_non_space_character(tok):
    src = "x = 1  # if\n"
    enc = tok.encode(src, add_special_tokens=False)
    lab = token_labels(src, enc.offsets)
    pieces = [src[a:b] for a, b in enc.offsets]
    for piece, comment, kw in zip(pieces, lab.in_comment, lab.keyword):
        if "#" in piece or "if" in piece:
            assert comment  # everything from '#' on is a comment, 'if' there is no keyword
            assert not kw
        elif piece.strip() in ("x", "=", "1"):
            assert not comment


def test_label_texts_ids_equal_the_corpus_encoding(tok):
    texts = [t for _, t in pycode.corpus_texts("test")[:3]]
    eot = tok.token_to_id(pycode.EOT_TOKEN)
    ids, labels = label_texts(tok, texts, eot)
    ref = np.concatenate([np.r_[np.asarray(e.ids), eot] for e in tok.encode_batch(texts)])
    np.testing.assert_array_equal(ids, ref)
    assert len(labels) == len(ids)
    assert not labels.in_string[ids == eot].any()


def test_not_python_is_refused():
    with pytest.raises(DataError, match="not tokenizable"):
        char_labels("def f(:\n  x = '''unterminated\n")


def test_corpus_split_is_deterministic_and_excludes_tests():
    files = pycode.corpus_files()
    assert [f.relpath for f in files] == sorted(f.relpath for f in files)
    assert not any("/test/" in f"/{f.relpath}" or "site-packages" in f.relpath for f in files)
    test = pycode.corpus_files("test")
    assert 0.05 < len(test) / len(files) < 0.15
    assert {f.relpath for f in test} == {f.relpath for f in files if f.split == "test"}
    with pytest.raises(ValueError, match="valid splits"):
        pycode.corpus_files("dev")


def test_source_labels_align_with_its_contexts(tok):
    src = PycodeSource(split="test")
    it = src.contexts(32)
    ctxs = np.stack([next(it) for _ in range(5)])
    labels = src.labels(32, start=0, count=5)
    assert labels.in_string.shape == (5, 32)
    bos = tok.token_to_id(pycode.BOS_TOKEN)
    assert (ctxs[:, 0] == bos).all() and not labels.keyword[:, 0].any()
    # a token that decodes to a keyword on its own is labelled a keyword unless it is in a
    # string or a comment
    for c in range(5):
        for p in range(1, 32):
            piece = tok.decode([int(ctxs[c, p])]).strip()
            if piece in ("def", "return", "import") and not (
                    labels.in_string[c, p] or labels.in_comment[c, p]):
                assert labels.keyword[c, p]
    with pytest.raises(DataError, match="out of range"):
        src.labels(32, start=10**9, count=1)
