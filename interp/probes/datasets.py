"""Probing datasets (token-level labels from the embedded models' ground truth, or the user's
labelled text) and the activations probes are fitted on (a hook's units or SAE latents).

Built-in properties (``make_dataset``):

- ``othello-{empty,mine,theirs}-SQ``: the square's state after the move just read, from the
  view of the player to move (``SQ`` like ``d3``); ``othello-legal-SQ``: the square is a legal
  next move; ``othello-flipped-SQ``: the move just read flipped it.
- ``pycode-in-string``, ``pycode-in-comment``, ``pycode-keyword``, ``pycode-in-brackets``
  (bracket depth > 0), ``pycode-indented`` (indentation level > 0), ``pycode-indent-N``
  (level exactly N), on held-out code.
- Multi-class (probed one class against the rest): ``othello-state-SQ`` (empty / mine /
  theirs), ``pycode-indent-level`` (0, 1, 2, 3, 4 or more).

User data: a ``.csv`` (header ``text,label``) or ``.jsonl`` (``{"text", "label"}``) of
sequences with one label each: 0/1 (both present) or 0..K-1 (every class present, probed one
against the rest); the activations are then aggregated over positions (``aggregate="mean"``
or ``"max"``). Or token-level: ``.jsonl`` lines ``{"text", "spans": [[start, end], ...]}``
(character offsets): a token is positive when it overlaps a span. The file is checked before
anything is tokenized; bytes that are not UTF-8, a missing column or field, a label that is
not an integer (0.9) or a set of labels that is not 0/1 or 0..K-1 ({0, 2}) is a one-line
``DataError`` naming the file (and line).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.data.pycode_labels import PYCODE_CLASSES
from interp.errors import DataError, unknown
from interp.hooks import flat_units, sae_hook, unknown_hook

PROBE_OTHELLO_SEED = 424_242
OTHELLO_KINDS = ("empty", "mine", "theirs", "legal", "flipped")
PYCODE_PROPS = PYCODE_CLASSES


@dataclass
class ProbeDataset:
    name: str
    model: str | None
    tokens: torch.Tensor        # (C, T) contexts
    labels: torch.Tensor        # (C, T) token labels 0/1, -1 = not used; or (C,) per sequence
    description: str = ""

    @property
    def per_sequence(self) -> bool:
        return self.labels.ndim == 1


def builtin_names() -> list[str]:
    return ([f"othello-{k}-SQ" for k in OTHELLO_KINDS + ("state",)]
            + [f"pycode-{p}" for p in PYCODE_PROPS] + ["pycode-indent-N", "pycode-indent-level"])


def make_dataset(name: str, n_contexts: int = 256, model=None) -> ProbeDataset:
    if name.endswith((".csv", ".jsonl")):
        return load_labelled_text(name, model)
    if name.startswith("othello-"):
        return _othello(name, n_contexts)
    if name.startswith("pycode-"):
        return _pycode(name, n_contexts)
    raise unknown("probing dataset", name, builtin_names() + ["FILE.csv", "FILE.jsonl"])


def _othello(name: str, n: int) -> ProbeDataset:
    from interp.data import othello as oth

    parts = name.split("-")
    if len(parts) != 3 or parts[1] not in OTHELLO_KINDS + ("state",):
        raise unknown("othello property", name, [f"othello-{k}-SQ" for k in OTHELLO_KINDS])
    kind = parts[1]
    try:
        sq = oth.parse_square(parts[2])
    except Exception:
        raise DataError(f"{parts[2]!r} is not a square: use a1 .. h8") from None
    games = oth.generate_games(n, np.random.default_rng(PROBE_OTHELLO_SEED))
    t = 60
    tokens = torch.from_numpy(games.tokens(with_bos=True)[:, :t])
    if kind == "state":
        lab = games.board_state()[:, :, sq].astype(np.int64)
    elif kind in ("empty", "mine", "theirs"):
        state = {"empty": oth.EMPTY, "mine": oth.MINE, "theirs": oth.THEIRS}[kind]
        lab = games.board_state()[:, :, sq] == state
    elif kind == "legal":
        lab = games.legal_mask()[:, :, sq]
    else:
        lab = games.flipped_mask()[:, :, sq]
    labels = np.full((n, t), -1, dtype=np.int64)
    valid = games.valid()
    labels[:, 1:] = np.where(valid[:, :t - 1], lab[:, :t - 1], -1)  # position p read move p-1
    return ProbeDataset(name, "othello", tokens, torch.from_numpy(labels),
                        f"{kind} at {parts[2]} after the move just read")


def _pycode(name: str, n: int, n_ctx: int = 64) -> ProbeDataset:
    from interp.data.sources import PycodeSource

    prop = name[len("pycode-"):]
    ctx, lab = PycodeSource(split="test").labelled_contexts(n_ctx, 0, n)
    classes = lab.binary_classes()
    if prop in classes:
        y = classes[prop]
    elif prop == "indent-level":
        y = np.minimum(lab.indent_level, 4)
    elif prop.startswith("indent-") and prop[7:].isdigit():
        y = lab.indent_level == int(prop[7:])
    else:
        raise unknown("pycode property", name, [f"pycode-{p}" for p in PYCODE_PROPS]
                      + ["pycode-indent-N"])
    labels = torch.from_numpy(y.astype(np.int64))
    labels[:, 0] = -1  # BOS
    return ProbeDataset(name, "pycode", torch.from_numpy(ctx.astype(np.int64)), labels,
                        f"token {prop.replace('-', ' ')}")


LABELLED_FORMS = ("a .csv with a header row text,label, or a .jsonl of {\"text\": ..., "
                  "\"label\": 0 or 1} (or {\"text\", \"spans\": [[start, end], ...]})")


def _label(value, where: str) -> int:
    """An integer class label from a CSV cell or a JSON value (1, "1", 1.0, true); anything
    else (0.9, "yes", null) is a DataError naming ``where``."""
    v = value
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        try:
            v = float(v.strip()) if v.strip() else None
        except ValueError:
            v = None
    if isinstance(v, (int, float)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    raise DataError(f"{where}: label {shown} is not an integer class; labels are 0 and 1 "
                    f"(or 0..K-1 for K classes)")


def check_labels(labels: list[int], where: str) -> None:
    """Sequence labels are 0/1 with both present, or 0..K-1 with every class present."""
    found = sorted(set(labels))
    if found == [0, 1] or (len(found) > 2 and found == list(range(len(found)))):
        return
    counts = ", ".join(f"{c}: {labels.count(c)}" for c in found[:8])
    if len(found) < 2:
        raise DataError(f"{where}: every label is {found[0]} ({len(labels)} examples); a probe "
                        f"needs both classes 0 and 1")
    raise DataError(f"{where}: labels are {{{', '.join(map(str, found[:8]))}"
                    f"{', ...' if len(found) > 8 else ''}}} (counts {counts}); use 0 and 1 for a "
                    f"binary property, or 0..K-1 with every class present for K classes")


def _read_csv(path: Path) -> list[tuple[int, str, int]]:
    """(line, text, label) rows of a labelled-text CSV."""
    from interp.data.sources import read_text_lines

    read_text_lines(path)  # UTF-8, else an error naming the line
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if not fields:
            raise DataError(f"{path} is empty; expected {LABELLED_FORMS}")
        if not {"text", "label"} <= set(fields):
            raise DataError(f"{path} needs the columns text and label in its header row, has "
                            f"{', '.join(map(repr, fields))}")
        reader.fieldnames = fields
        try:
            for r in reader:
                n = reader.line_num
                if all(v in (None, "") for k, v in r.items() if k is not None):
                    continue  # a blank line
                if r["text"] is None or r["label"] is None:
                    cells = sum(v is not None for k, v in r.items() if k is not None)
                    raise DataError(f"{path}: line {n} has {cells} of the header's "
                                    f"{len(fields)} cells ({','.join(fields)}); text and "
                                    f"label are needed")
                rows.append((n, r["text"], _label(r["label"], f"{path}: line {n}")))
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({e})") from None
    return rows


def _text_record(path: Path, n: int, line: str, other: str, form: str) -> dict:
    """Line ``n`` of a JSONL file as an object with a string ``text`` and an ``other`` field
    (label or spans); ``form`` says what a line should be."""
    try:
        r = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {n} is not valid JSON ({e.msg}); expected {form}") \
            from None
    if not isinstance(r, dict) or "text" not in r or other not in r:
        has = (", ".join(map(repr, r)) or "no fields") if isinstance(r, dict) else \
            f"a JSON {type(r).__name__}, not an object"
        raise DataError(f"{path}: line {n} needs the fields text and {other} (it has {has}); "
                        f"expected {form}")
    if not isinstance(r["text"], str):
        raise DataError(f"{path}: line {n}: text is {json.dumps(r['text'])[:40]}, expected "
                        f"a string")
    return r


def _read_jsonl(path: Path, numbered: list[tuple[int, str]]) -> list[tuple[int, str, int]]:
    """(line, text, label) rows of a labelled-text JSONL file."""
    form = '{"text": ..., "label": 0 or 1} per line'
    rows = []
    for n, line in numbered:
        r = _text_record(path, n, line, "label", form)
        rows.append((n, r["text"], _label(r["label"], f"{path}: line {n}")))
    return rows


def load_labelled_text(path: str | Path, model) -> ProbeDataset:
    """Sequences with one class label each (0/1, or 0..K-1 for K classes), from CSV
    (header ``text,label``) or JSONL (``{"text", "label"}``); JSONL lines with ``spans``
    instead give token-level labels (``_token_spans``). The file is checked before anything
    is tokenized: UTF-8, the columns, integer labels with every class present."""
    from interp.data.sources import read_text_lines

    path = Path(path)
    if not path.exists():
        raise DataError(f"no labelled-text file at {path}")
    if model is None or getattr(model, "tokenizer", None) is None:
        raise DataError("labelled text needs a model with a tokenizer (--model)")
    if path.suffix == ".jsonl":
        numbered = read_text_lines(path)
        if not numbered:
            raise DataError(f"{path} is empty; expected {LABELLED_FORMS}")
        try:
            first = json.loads(numbered[0][1])
        except json.JSONDecodeError:
            first = None
        if isinstance(first, dict) and "spans" in first:
            return _token_spans(path, model, numbered)
        rows = _read_jsonl(path, numbered)
    else:
        rows = _read_csv(path)
    if not rows:
        raise DataError(f"{path} holds no examples (only a header); expected {LABELLED_FORMS}")
    check_labels([lbl for _, _, lbl in rows], str(path))
    labels = torch.tensor([lbl for _, _, lbl in rows])
    toks = [model.to_tokens(t, prepend_bos=True)[0].tolist() for _, t, _ in rows]
    tokens, lengths = _pad(toks, model, _pad_id(model))
    ds = ProbeDataset(path.stem, None, tokens, labels, f"labelled text from {path.name}")
    ds.lengths = lengths  # type: ignore[attr-defined]
    return ds


def _pad_id(model) -> int:
    pad = model.tokenizer.pad_token_id
    return pad if pad is not None else 0


def _pad(seqs: list[list[int]], model, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) rows right-padded with ``fill`` and cut at the model's n_ctx; their lengths."""
    t = min(max(len(s) for s in seqs), model.cfg.n_ctx)
    out = torch.full((len(seqs), t), fill, dtype=torch.long)
    lengths = torch.tensor([min(len(s), t) for s in seqs])
    for i, s in enumerate(seqs):
        out[i, :lengths[i]] = torch.tensor(s[:t], dtype=torch.long)
    return out, lengths


def _token_spans(path: Path, model, numbered: list[tuple[int, str]]) -> ProbeDataset:
    """Token-level labels from character spans, with the tokenizer's offsets."""
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else 0
    form = '{"text": ..., "spans": [[start, end], ...]} per line (token-level labels)'
    seqs, labs = [], []
    for n, line in numbered:
        row = _text_record(path, n, line, "spans", form)
        try:
            spans = [(a, b) for a, b in row["spans"]]
            if not all(type(v) is int and v >= 0 for ab in spans for v in ab) \
                    or any(a > b for a, b in spans):
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {n}: spans is {json.dumps(row['spans'])[:60]}; "
                            f"expected [[start, end], ...] character offsets (integers, "
                            f"0 <= start <= end)") from None
        enc = tok(row["text"], return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        lab = [int(any(s < e and a < e and s < b for a, b in spans)) for s, e in offsets]
        seqs.append([bos] + ids)
        labs.append([-1] + lab)
    tokens, _ = _pad(seqs, model, _pad_id(model))
    labels, _ = _pad(labs, model, -1)
    return ProbeDataset(path.stem, None, tokens, labels, f"token spans from {path.name}")


# ------------------------------------------------------------------ activations
@torch.no_grad()
def probe_features(model, ds: ProbeDataset, source: str, saes: dict | None = None,
                   max_examples: int = 10_000, aggregate: str = "mean", seed: int = 0,
                   batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x (N, U), y (N,), info) for a source ``hook:NAME`` (the hook's units, e.g. neurons at
    ``blocks.1.mlp.hook_post``) or ``sae:NAME`` (that SAE's latents at its hook; NAME a key
    of ``saes``). Token-level datasets keep labelled positions (at most ``max_examples``,
    sampled with both classes kept); sequence-level ones aggregate over positions."""
    kind, _, name = source.partition(":")
    if kind not in ("hook", "sae") or not name:
        raise DataError(f"unknown probe source {source!r}: use hook:HOOK_NAME or sae:SAE")
    sae = None
    if kind == "sae":
        if not saes or name not in saes:
            raise unknown("SAE", name, list(saes or {}))
        sae = saes[name].eval()
        hook = sae_hook(sae, name)
    else:
        hook = name
    if hook not in model.hook_dict:
        raise unknown_hook(model, hook)
    rows = example_rows(ds, max_examples, seed)
    feats, ys = [], []
    for i in range(0, ds.tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(ds.tokens[i:i + batch_size], names_filter=[hook])
        act = flat_units(cache[hook], sae.cfg.d_in if sae is not None else None)
        if sae is not None:
            b, t, d = act.shape
            act = sae(act.reshape(-1, d).float()).dense().reshape(b, t, -1)
        if ds.per_sequence:
            lengths = getattr(ds, "lengths", torch.full((act.shape[0],), act.shape[1]))
            lengths = lengths[i:i + batch_size]
            mask = torch.arange(act.shape[1])[None] < lengths[:, None]
            if aggregate == "max":
                agg = act.masked_fill(~mask[..., None], -torch.inf).amax(1)
            elif aggregate == "mean":
                agg = (act * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            else:
                raise unknown("aggregate", aggregate, ["mean", "max"])
            feats.append(agg)
            ys.append(ds.labels[i:i + batch_size])
        else:
            sel = rows[(rows[:, 0] >= i) & (rows[:, 0] < i + batch_size)]
            feats.append(act[sel[:, 0] - i, sel[:, 1]])
            ys.append(ds.labels[sel[:, 0], sel[:, 1]])
    x, y = torch.cat(feats).float(), torch.cat(ys)
    info = {"source": source, "hook": hook, "units": x.shape[1], "examples": len(y),
            "positives": int((y == 1).sum()), "classes": sorted(torch.unique(y).tolist())}
    return x, y, info


def example_rows(ds: ProbeDataset, max_examples: int, seed: int) -> torch.Tensor:
    """(N, 2) (context, position) of labelled tokens: all positives up to half the budget,
    negatives filling the rest, sorted."""
    if ds.per_sequence:
        return torch.zeros(0, 2, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    if int(ds.labels.max()) > 1:  # multi-class: a uniform sample of the labelled tokens
        rows = torch.nonzero(ds.labels >= 0)
        rows = rows[torch.randperm(len(rows), generator=g)[:max_examples]]
        return rows[torch.argsort(rows[:, 0] * ds.labels.shape[1] + rows[:, 1])]
    pos = torch.nonzero(ds.labels == 1)
    neg = torch.nonzero(ds.labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError(f"dataset {ds.name} has {len(pos)} positive and {len(neg)} negative "
                        f"tokens; a probe needs both (use more contexts)")
    n_pos = min(len(pos), max_examples // 2)
    n_neg = min(len(neg), max_examples - n_pos)
    pos = pos[torch.randperm(len(pos), generator=g)[:n_pos]]
    neg = neg[torch.randperm(len(neg), generator=g)[:n_neg]]
    rows = torch.cat([pos, neg])
    order = torch.argsort(rows[:, 0] * ds.labels.shape[1] + rows[:, 1])
    return rows[order]
