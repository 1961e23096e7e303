"""Token sources: fixed-length contexts of token ids for a model.

A source yields 1-D int64 arrays of ``n_ctx`` token ids, each starting with BOS when the
tokenizer has one. Text is packed SAELens-style: documents are concatenated, each followed
by EOS, and the stream is cut into ``n_ctx - 1`` token chunks with BOS prepended.

Spec strings (``make_source``): ``othello``, ``pycode[:train|test]``, ``hf:DATASET[:SPLIT]``
or a local path (``.txt`` file or folder of them, ``.jsonl``, ``.parquet``).

Which source fits which model is decided here (``default_source``, ``check_fits``): the
``othello`` and ``pycode`` corpora are in the token ids of their own embedded model only;
text sources are tokenized with the model's tokenizer; and every id a source gives must lie
in the model's vocabulary, ``0 <= id < d_vocab``.
"""
from __future__ import annotations

import functools
import itertools
import json
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from interp.data import othello as oth
from interp.errors import DataError, first_line, unknown

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
# Training batches of the othello model use seeds (0, step); harvesting defaults elsewhere.
OTHELLO_HARVEST_SEED = 1_000_000
_TOKENIZE_BATCH = 64


class TokenSource:
    name: str = "source"

    def describe(self) -> dict:
        raise NotImplementedError

    def spec(self) -> str:
        """The spec string ``make_source`` takes for this source (for messages)."""
        return self.name

    def contexts(self, n_ctx: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


def pack(docs: Iterable[Sequence[int]], n_ctx: int, bos_id: int | None,
         eos_id: int | None) -> Iterator[np.ndarray]:
    """Concatenate ``docs`` (each followed by ``eos_id``) and cut into contexts of ``n_ctx``
    tokens, the first being ``bos_id`` when given; a final partial context is dropped."""
    body = n_ctx - 1 if bos_id is not None else n_ctx
    if body < 1:
        raise DataError(f"n_ctx must be at least 2 with a BOS token, got {n_ctx}")
    buf: list[int] = []
    for doc in docs:
        buf.extend(int(t) for t in doc)
        if eos_id is not None:
            buf.append(eos_id)
        while len(buf) >= body:
            chunk, buf = buf[:body], buf[body:]
            yield np.asarray(([bos_id] if bos_id is not None else []) + chunk, dtype=np.int64)


def batches(source: TokenSource, n_ctx: int, batch_size: int,
            max_contexts: int | None = None) -> Iterator[torch.Tensor]:
    """(B, n_ctx) int64 batches; the last may be smaller."""
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    it = source.contexts(n_ctx)
    if max_contexts is not None:
        it = itertools.islice(it, max_contexts)
    any_yielded = False
    while True:
        chunk = list(itertools.islice(it, batch_size))
        if not chunk:
            break
        any_yielded = True
        yield torch.from_numpy(np.stack(chunk))
    if not any_yielded:
        raise DataError(f"empty dataset: the token source {source.describe()} gave no "
                        f"context of {n_ctx} tokens")


def contexts_range(source: TokenSource, n_ctx: int, start: int = 0,
                   stop: int | None = None) -> Iterator[np.ndarray]:
    """Contexts ``start`` .. ``stop - 1`` of ``source`` (fewer where it runs out); a source
    with ``contexts_from`` skips to ``start`` without producing the contexts before it."""
    jump = getattr(source, "contexts_from", None)
    it = jump(n_ctx, start) if jump is not None else \
        itertools.islice(source.contexts(n_ctx), start, None)
    return it if stop is None else itertools.islice(it, max(0, stop - start))


def _labelled_split(split: str, tokenizer_path: Path):
    """(token ids, TokenLabels) of a whole pycode split, labelled once per process and
    tokenizer file: probing datasets, ground-truth evaluations and the app ask for several
    properties of the same split, and labelling it takes seconds."""
    stat = tokenizer_path.stat()
    return _labelled_split_of(split, str(tokenizer_path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _labelled_split_of(split: str, tokenizer_path: str, _mtime: int, _size: int):
    from interp.data import pycode
    from interp.data.pycode_labels import label_texts

    tok = _Tok(pycode.load_tokenizer(Path(tokenizer_path)))
    ids, labels = label_texts(tok.t, [t for _, t in pycode.corpus_texts(split)], tok.eos)
    ids.flags.writeable = False
    for v in labels.as_dict().values():
        v.flags.writeable = False
    return ids, labels


UTF8_BOM = b"\xef\xbb\xbf"


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every non-blank line of a UTF-8 text file (a BOM is allowed);
    bytes that are not UTF-8 are a DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes().removeprefix(UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise not_utf8(path, line, data[e.start]) from None
    return [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def not_utf8(path: Path, line: int, byte: int) -> DataError:
    return DataError(f"{path}: line {line} is not UTF-8 text (byte 0x{byte:02x}); save the file "
                     f"as UTF-8")


def read_jsonl(path: Path, fields: Sequence[str] = (), hint: str = "") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a JSONL file, streamed; a clear
    error names the line that is not UTF-8, not JSON or lacks one of ``fields``."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = (raw.removeprefix(UTF8_BOM) if n == 1 else raw).decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, n, raw[e.start]) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not valid JSON ({e.msg})") from e
            missing = [f for f in fields if not isinstance(row, dict) or f not in row]
            if missing:
                have = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}: line {n} has no field {', '.join(map(repr, missing))} "
                                f"(it has {have}){'; ' + hint if hint else ''}")
            yield n, row


def prefetch(it: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``it`` in a background thread, ``depth`` items ahead.

    Token generation (Othello games, tokenization) is numpy / Rust work that releases the
    GIL, so it overlaps with the model's forward pass. Exceptions reach the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def run() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # re-raised in the consumer's thread
            put(e)

    worker = threading.Thread(target=run, daemon=True, name="interp-prefetch")
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---------------------------------------------------------------- tokenizers
class _Tok:
    """One interface over HF tokenizers and ``tokenizers.Tokenizer`` objects."""

    def __init__(self, tokenizer):
        if tokenizer is None:
            raise DataError("this source needs a tokenizer (the model has none)")
        self.t = tokenizer
        self.is_hf = hasattr(tokenizer, "bos_token_id")
        if self.is_hf:
            self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
            self.name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        else:
            from interp.data.pycode import BOS_TOKEN, EOT_TOKEN
            self.bos, self.eos = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOT_TOKEN)
            self.name = "tokenizers.Tokenizer"

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if self.is_hf:
            return self.t(texts, add_special_tokens=False)["input_ids"]
        return [e.ids for e in self.t.encode_batch(texts, add_special_tokens=False)]


def _tokenized(tok: _Tok, texts: Iterable[str]) -> Iterator[list[int]]:
    it = iter(texts)
    while True:
        chunk = list(itertools.islice(it, _TOKENIZE_BATCH))
        if not chunk:
            return
        yield from tok.encode_many(chunk)


# ---------------------------------------------------------------- sources
class OthelloSource(TokenSource):
    """One random legal game per context: BOS + its first n_ctx-1 moves."""

    name = "othello"
    CHUNK = 1024

    def __init__(self, seed: int = OTHELLO_HARVEST_SEED, n_games: int | None = None):
        self.seed, self.n_games = int(seed), n_games

    def describe(self) -> dict:
        return {"kind": "othello", "seed": self.seed, "n_games": self.n_games}

    def _chunk(self, i: int) -> oth.OthelloGames:
        return oth.generate_games(self.CHUNK, np.random.default_rng([self.seed, i]))

    def games(self, start: int, count: int) -> oth.OthelloGames:
        """The games behind contexts start .. start+count-1 (for their labels)."""
        first, last = start // self.CHUNK, (start + count - 1) // self.CHUNK
        parts = [self._chunk(i) for i in range(first, last + 1)]
        lo = start - first * self.CHUNK
        fields = {k: np.concatenate([getattr(p, k) for p in parts])[lo:lo + count]
                  for k in ("moves", "black", "white", "flipped", "legal_next",
                            "next_player", "mover")}
        return oth.OthelloGames(**fields)

    def contexts(self, n_ctx: int) -> Iterator[np.ndarray]:
        return self.contexts_from(n_ctx, 0)

    def contexts_from(self, n_ctx: int, start: int) -> Iterator[np.ndarray]:
        """The contexts from number ``start`` on, without generating the games before
        its chunk (a rank of a parallel harvest starts in the middle)."""
        if not 2 <= n_ctx <= oth.MAX_MOVES + 1:
            raise DataError(f"othello contexts hold 2..61 tokens, got n_ctx={n_ctx}")
        produced = start
        first, skip = divmod(start, self.CHUNK)
        for i in itertools.count(first):
            toks = self._chunk(i).tokens(with_bos=True)[skip:, :n_ctx]
            skip = 0
            for row in toks:
                if self.n_games is not None and produced >= self.n_games:
                    return
                produced += 1
                yield row


class PycodeSource(TokenSource):
    """The standard-library corpus of one split, packed."""

    name = "pycode"

    def __init__(self, tokenizer_path: str | Path | None = None, split: str = "train"):
        from interp.data import pycode
        from interp.models.zoo import model_dir

        if split not in ("train", "test"):
            raise DataError(f"unknown pycode split {split!r}; valid: train, test")
        self.split = split
        self.tokenizer_path = Path(tokenizer_path or model_dir("pycode") / "tokenizer.json")
        self.tok = _Tok(pycode.load_tokenizer(self.tokenizer_path))

    def spec(self) -> str:
        return f"pycode:{self.split}"

    def describe(self) -> dict:
        from interp.data import pycode
        return {"kind": "pycode", "split": self.split, "python": pycode.python_version(),
                "tokenizer": str(self.tokenizer_path)}

    def contexts(self, n_ctx: int) -> Iterator[np.ndarray]:
        from interp.data import pycode
        texts = (t for _, t in pycode.corpus_texts(self.split))
        return pack(_tokenized(self.tok, texts), n_ctx, self.tok.bos, self.tok.eos)

    def labels(self, n_ctx: int, start: int = 0, count: int | None = None):
        """Ground truth (``TokenLabels`` of shape (count, n_ctx)) of contexts
        start .. start+count-1 as :meth:`contexts` yields them; BOS gets zero labels."""
        return self.labelled_contexts(n_ctx, start, count)[1]

    def labelled_contexts(self, n_ctx: int, start: int = 0, count: int | None = None):
        """(contexts (count, n_ctx) int64, their ``TokenLabels``): contexts start ..
        start+count-1 as :meth:`contexts` yields them, from the split tokenized and labelled
        once per process (no second pass over the corpus)."""
        from interp.data.pycode_labels import TokenLabels

        ids, labels = _labelled_split(self.split, self.tokenizer_path)
        body = n_ctx - 1
        available = len(ids) // body
        count = available - start if count is None else count
        if start < 0 or count < 0 or start + count > available:
            raise DataError(f"contexts {start}..{start + count - 1} out of range: the {self.split}"
                            f" split holds {available} contexts of {n_ctx} tokens")
        rows = labels[start * body:(start + count) * body]
        bos = TokenLabels.empty(count)
        ctx = np.concatenate([np.full((count, 1), self.tok.bos, dtype=np.int64),
                              ids[start * body:(start + count) * body].reshape(count, body)], 1)
        return ctx.astype(np.int64), TokenLabels(**{
            k: np.concatenate([getattr(bos, k)[:, None], getattr(rows, k).reshape(count, body)],
                              1) for k in bos.as_dict()})


class HFDatasetSource(TokenSource):
    """A Hugging Face dataset, streamed (never downloaded whole)."""

    name = "hf"

    def __init__(self, path: str, tokenizer, split: str = "train", text_column: str = "text",
                 config: str | None = None, streaming: bool = True):
        self.path, self.split, self.text_column = path, split, text_column
        self.config, self.streaming = config, streaming
        self.tok = _Tok(tokenizer)

    def spec(self) -> str:
        return f"hf:{self.path}:{self.split}"

    def describe(self) -> dict:
        return {"kind": "hf", "dataset": self.path, "config": self.config, "split": self.split,
                "text_column": self.text_column, "tokenizer": self.tok.name}

    def _dataset(self):
        import datasets

        try:
            return datasets.load_dataset(self.path, self.config, split=self.split,
                                         streaming=self.streaming)
        except Exception as e:  # hub, network and not-found errors have many types
            raise DataError(
                f"could not open the Hugging Face dataset {self.path!r} (split {self.split!r}): "
                f"the hub could not be reached or the dataset was not found "
                f"({type(e).__name__}: {first_line(e, 200)}). "
                f"Offline, give a local .txt/.jsonl/.parquet file as the source instead."
            ) from e

    def contexts(self, n_ctx: int) -> Iterator[np.ndarray]:
        ds = self._dataset()

        def texts():
            for row in ds:
                if self.text_column not in row:
                    raise DataError(f"dataset {self.path!r} has no column {self.text_column!r}; "
                                    f"its columns: {sorted(row)}")
                yield row[self.text_column]

        return pack(_tokenized(self.tok, texts()), n_ctx, self.tok.bos, self.tok.eos)


class LocalTextSource(TokenSource):
    """A .txt file (one document), a folder of .txt files, a .jsonl or a .parquet file."""

    name = "local"

    def __init__(self, path: str | Path, tokenizer, text_column: str = "text"):
        self.path, self.text_column = Path(path), text_column
        if not self.path.exists():
            raise DataError(f"no such file or folder: {self.path}")
        if self.path.is_file() and self.path.suffix not in TEXT_SUFFIXES:
            raise DataError(f"unsupported file type {self.path.suffix!r} for {self.path}; "
                            f"valid: {', '.join(TEXT_SUFFIXES)} or a folder of .txt files")
        self.tok = _Tok(tokenizer)

    def spec(self) -> str:
        return str(self.path)

    def describe(self) -> dict:
        return {"kind": "local", "path": str(self.path), "text_column": self.text_column,
                "tokenizer": self.tok.name}

    def texts(self) -> Iterator[str]:
        p = self.path
        if p.is_dir():
            files = sorted(p.rglob("*.txt"))
            if not files:
                raise DataError(f"the folder {p} holds no .txt files")
            for f in files:
                yield f.read_text(encoding="utf-8", errors="replace")
        elif p.suffix == ".txt":
            yield p.read_text(encoding="utf-8", errors="replace")
        elif p.suffix == ".jsonl":
            for n, row in read_jsonl(p, [self.text_column], "choose it with text_column"):
                yield str(row[self.text_column])
        else:
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(p)
            except Exception as e:
                raise DataError(f"{p} is not a readable parquet file ({e})") from e
            cols = pf.schema_arrow.names
            if self.text_column not in cols:
                raise DataError(f"{p} has no column {self.text_column!r}; its columns: {cols}")
            for batch in pf.iter_batches(columns=[self.text_column], batch_size=1024):
                for v in batch.column(0).to_pylist():
                    if v is not None:
                        yield str(v)

    def contexts(self, n_ctx: int) -> Iterator[np.ndarray]:
        return pack(_tokenized(self.tok, self.texts()), n_ctx, self.tok.bos, self.tok.eos)


SOURCE_KINDS = ["othello", "pycode", "pycode:train", "pycode:test", "hf:DATASET[:SPLIT]",
                "a path to .txt / folder / .jsonl / .parquet"]


# The embedded models' corpora (source name -> model): othello's tokens are board squares,
# pycode's its own 4096-token BPE, so each fits its own model and no other.
CORPUS_OF = {"othello": "othello", "pycode": "pycode"}
TEXT_SPECS = ["hf:DATASET[:SPLIT]", "a .txt/.jsonl/.parquet path"]


def model_name(model) -> str:
    """The name a loaded model goes by: its config's name (the embedded models and folders
    of ours), the TransformerLens official name, or the folder it came from."""
    meta = getattr(model, "interp_meta", None)
    name = meta.get("name") if isinstance(meta, dict) else None
    return str(name or getattr(getattr(model, "cfg", None), "model_name", None) or "?")


def default_source(model: str) -> str:
    """The source spec of an embedded model's own corpus (``model``: its name)."""
    for source, owner in CORPUS_OF.items():
        if model == owner:
            return source
    raise DataError(f"name a token source for {model!r} with --source (an HF dataset "
                    f"as hf:NAME, or a local .txt/.jsonl/.parquet file)")


def sources_for(model) -> list[str]:
    """The source specs that fit ``model`` (its own corpus; text when it has a tokenizer)."""
    name = model_name(model)
    own = ["pycode[:train|test]" if s == "pycode" else s
           for s, owner in CORPUS_OF.items() if owner == name]
    return own + (TEXT_SPECS if getattr(model, "tokenizer", None) is not None else [])


def check_token_ids(tokens, model, source: TokenSource, label: str | None = None) -> None:
    """Refuse token ids outside the model's vocabulary ``[0, d_vocab)``."""
    tokens = np.asarray(tokens)
    d_vocab = int(model.cfg.d_vocab)
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        label = label or model_name(model)
        bad = hi if hi >= d_vocab else lo
        raise DataError(f"the token source {source.spec()} gives token id {bad}, outside the "
                        f"vocabulary of the model {label!r} (ids 0..{d_vocab - 1}); sources "
                        f"that fit it: {', '.join(sources_for(model)) or 'none'}")


def check_fits(source: TokenSource, model, n_ctx: int, label: str | None = None) -> None:
    """Refuse, before anything is written, a source whose tokens are not ``model``'s: an
    embedded model's corpus with another model, or a first context (read here) that is
    missing (an empty source) or has ids outside the vocabulary. ``label``: the model as
    the user named it (default: its own name)."""
    name = model_name(model)
    label = label or name
    owner = CORPUS_OF.get(source.name)
    if owner is not None and owner != name:
        fit = ", ".join(sources_for(model)) or "none (it has no tokenizer)"
        raise DataError(f"the token source {source.spec()} is the corpus of the embedded model "
                        f"{owner!r} and does not fit the model {label!r}; sources that fit "
                        f"{label!r}: {fit}")
    first = next(contexts_range(source, n_ctx, 0, 1), None)
    if first is None:
        raise DataError(f"empty dataset: the token source {source.describe()} gave no "
                        f"context of {n_ctx} tokens")
    check_token_ids(first, model, source, label)


def from_description(desc: dict, model=None) -> TokenSource:
    """The source a ``describe()`` dict (a store manifest's ``source``, run.json's
    ``dataset``) stands for: the inverse of ``TokenSource.describe``."""
    kind = desc.get("kind") if isinstance(desc, dict) else None
    if kind == "othello":
        return OthelloSource(seed=desc.get("seed", OTHELLO_HARVEST_SEED),
                               n_games=desc.get("n_games"))
    if kind == "pycode":
        tok = desc.get("tokenizer")
        return PycodeSource(tokenizer_path=tok if tok and Path(tok).exists() else None,
                              split=desc.get("split", "train"))
    if kind == "hf":
        return HFDatasetSource(desc["dataset"], getattr(model, "tokenizer", None), split=desc.get("split", "train"),
                                 text_column=desc.get("text_column", "text"),
                                 config=desc.get("config"))
    if kind == "local":
        return LocalTextSource(desc["path"], getattr(model, "tokenizer", None),
                                 text_column=desc.get("text_column", "text"))
    raise DataError(f"the run's dataset {desc!r} is not a token source this version knows; "
                    f"give one with --source")


def make_source(spec: str, model=None, tokenizer=None, **kwargs) -> TokenSource:
    """A source from its spec string (see module docstring)."""
    spec = str(spec)
    if spec == "othello":
        return OthelloSource(**kwargs)
    if spec == "pycode" or spec.startswith("pycode:"):
        return PycodeSource(split=spec.split(":", 1)[1] if ":" in spec else "train", **kwargs)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        if not name:
            raise DataError("hf: needs a dataset name, e.g. hf:NeelNanda/pile-10k")
        return HFDatasetSource(name, tok, split=split or "train", **kwargs)
    path = Path(spec).expanduser()
    if path.exists() or path.suffix in TEXT_SUFFIXES:
        return LocalTextSource(path, tok, **kwargs)
    raise unknown("token source", spec, SOURCE_KINDS)
