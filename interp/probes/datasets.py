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

User data: a ``.csv`` (columns ``text``, ``label``) or ``.jsonl`` (``{"text", "label"}``) of
sequences with one label each; the activations are then aggregated over positions
(``aggregate="mean"`` or ``"max"``). Or token-level: ``.jsonl`` lines ``{"text", "spans":
[[start, end], ...]}`` (character offsets): a token is positive when it overlaps a span.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.errors import DataError, unknown

PROBE_OTHELLO_SEED = 424_242
OTHELLO_KINDS = ("empty", "mine", "theirs", "legal", "flipped")
PYCODE_PROPS = ("in-string", "in-comment", "keyword", "in-brackets", "indented")


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
    src = PycodeSource(split="test")
    ctx = np.stack([c for _, c in zip(range(n), src.contexts(n_ctx))])
    lab = src.labels(n_ctx, 0, len(ctx))
    if prop == "in-string":
        y = lab.in_string
    elif prop == "in-comment":
        y = lab.in_comment
    elif prop == "keyword":
        y = lab.keyword
    elif prop == "in-brackets":
        y = lab.bracket_depth > 0
    elif prop == "indented":
        y = lab.indent_level > 0
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


def load_labelled_text(path: str | Path, model) -> ProbeDataset:
    """Sequences with one 0/1 label each, from CSV (text,label) or JSONL ({text, label})."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no labelled-text file at {path}")
    if model is None or getattr(model, "tokenizer", None) is None:
        raise DataError("labelled text needs a model with a tokenizer (--model)")
    if path.suffix == ".jsonl":
        from interp.data.sources import read_jsonl

        first = next(read_jsonl(path), (0, {}))[1]
        if "spans" in first:
            return _token_spans(path, model)
    rows = []
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise DataError(f"{path} needs the columns text and label, has "
                                f"{reader.fieldnames}")
            rows = [(r["text"], r["label"]) for r in reader]
    else:
        from interp.data.sources import read_jsonl

        rows = [(r["text"], r["label"]) for _, r in read_jsonl(path, ["text", "label"])]
    if not rows:
        raise DataError(f"{path} holds no examples")
    try:
        labels = torch.tensor([int(float(lbl)) for _, lbl in rows])
    except ValueError as e:
        raise DataError(f"{path}: labels must be 0 or 1 ({e})") from e
    toks = [model.to_tokens(t, prepend_bos=True)[0].tolist() for t, _ in rows]
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


def _token_spans(path: Path, model) -> ProbeDataset:
    """Token-level labels from character spans, with the tokenizer's offsets."""
    from interp.data.sources import read_jsonl

    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else 0
    seqs, labs = [], []
    for n, row in read_jsonl(path, ["text", "spans"], "token-level lines need text and spans"):
        try:
            spans = [(int(a), int(b)) for a, b in row["spans"]]
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {n}: spans must be [[start, end], ...] character "
                            f"offsets") from None
        enc = tok(row["text"], return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        lab = [int(any(s < e and a < e and s < b for a, b in spans)) for s, e in offsets]
        seqs.append([bos] + ids)
        labs.append([-1] + lab)
    if not seqs:
        raise DataError(f"{path} holds no examples")
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
        hook = sae.cfg.metadata.get("hook_name")
    else:
        hook = name
    if hook not in model.hook_dict:
        raise unknown("hook", hook, list(model.hook_dict))
    rows = _example_rows(ds, max_examples, seed)
    feats, ys = [], []
    for i in range(0, ds.tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(ds.tokens[i:i + batch_size], names_filter=[hook])
        act = cache[hook]
        act = act.reshape(*act.shape[:2], -1)
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


def _example_rows(ds: ProbeDataset, max_examples: int, seed: int) -> torch.Tensor:
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
