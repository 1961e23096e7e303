"""Circuit tasks: clean prompts, optional counterfactual (patch) prompts, and a metric.

The metric reads the logits at the last position: by default the logit difference between
each prompt's answer token and its wrong token; ``metric="logprob"`` uses the answer's
log-probability instead. Built in (``make_task(name, model)``):

================== =====================================================================
``othello-legal``  a game prefix; answer = a square that is legal now, wrong = an empty
                   square that is not. Counterfactual: the same game whose last move is
                   another legal move, chosen so that the answer square is illegal there.
``pycode-bracket`` held-out code ending inside ``(...`` (the ``(`` at most 8 tokens back, no
                   bracket since); answer ``)``, wrong a newline. Counterfactual: the ``(``
                   replaced by a space.
``pycode-indent``  held-out code ending with ``):`` at the end of a line whose next line is
                   indented deeper; answer = that indented newline token, wrong = a plain
                   newline. Counterfactual: ``):`` replaced by ``)``.
================== =====================================================================

User tasks come from JSONL (``load_task_jsonl``): one object per line with ``clean``,
optional ``patch`` (texts; on every line or none), ``answer`` and ``wrong`` (each a token
string). The whole file is checked first (``read_task_jsonl``): bytes that are not UTF-8, a
line that is not a JSON object, a missing field or one of the wrong type is a one-line
``DataError`` naming the file and line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from interp.data.pycode import BOS_TOKEN
from interp.data.sources import read_text_lines
from interp.errors import DataError, unknown
from interp.hooks import unknown_hook

METRICS = ("logit_diff", "logprob", "feature")


@dataclass
class Readout:
    """A linear reading of one hook's activation at the last position,
    ``x[:, -1] @ direction + bias``: an SAE latent's pre-activation (its activation
    wherever it fires) or a linear probe's logit. Tasks with a readout use it as metric."""

    hook: str
    direction: torch.Tensor   # (d,)
    bias: float = 0.0
    name: str = ""

    @classmethod
    def from_sae(cls, sae, latent: int) -> "Readout":
        """Latent ``latent`` of ``sae`` (at the hook in its metadata: the hook it reads, a
        transcoder's input hook); the bias is its pre-activation at x = 0."""
        from interp.hooks import sae_hook

        hook = sae_hook(sae)
        if not 0 <= latent < sae.cfg.d_sae:
            raise DataError(f"latent {latent} is out of range: this SAE has latents "
                            f"0..{sae.cfg.d_sae - 1}")
        with torch.no_grad():
            w = sae.W_enc[:, latent].float().clone()
            bias = float(sae.encode_pre(sae.b_enc.new_zeros(1, sae.cfg.d_in))[0, latent])
        return cls(hook, w, bias, f"{hook} latent {latent}")

    @classmethod
    def from_probe(cls, hook: str, probe, d: int, name: str = "") -> "Readout":
        """A logistic probe's decision function (``interp.probes.sparse.LogisticProbe``)."""
        direction = torch.zeros(d)
        direction[probe.units] = probe.raw_weights()
        bias = probe.bias - float((probe.mu / probe.sd) @ probe.weight)
        return cls(hook, direction, bias, name or f"probe at {hook}")

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        """(N,) from the hook's activations (N, T, d)."""
        return acts[:, -1].float() @ self.direction.to(acts.device) + self.bias


@dataclass
class Task:
    name: str
    clean: torch.Tensor            # (N, T) token ids
    patch: torch.Tensor | None     # (N, T) counterfactual prompts, or None
    answer: torch.Tensor           # (N,) token ids
    wrong: torch.Tensor            # (N,) token ids
    metric_kind: str = "logit_diff"
    description: str = ""
    readout: Readout | None = None  # metric_kind "feature": the metric reads this

    def __post_init__(self) -> None:
        if self.metric_kind not in METRICS:
            raise unknown("metric", self.metric_kind, METRICS)
        if (self.metric_kind == "feature") != (self.readout is not None):
            raise DataError("the 'feature' metric needs a readout (Readout.from_sae or a "
                            "probe), and a readout needs metric_kind='feature'")
        if self.clean.ndim != 2 or self.clean.shape[0] == 0:
            raise DataError(f"task {self.name!r} has no prompts (clean has shape "
                            f"{tuple(self.clean.shape)})")
        if self.patch is not None and self.patch.shape != self.clean.shape:
            raise DataError(f"task {self.name!r}: patch prompts have shape "
                            f"{tuple(self.patch.shape)}, clean ones {tuple(self.clean.shape)}; "
                            f"positions are kept separate, so each pair must have equal length")
        n = self.clean.shape[0]
        if self.answer.shape != (n,) or self.wrong.shape != (n,):
            raise DataError(f"task {self.name!r}: need one answer and one wrong token per "
                            f"prompt ({n})")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def reads(self) -> tuple[str, ...]:
        """Hooks whose activations the metric reads (pass as ``SplicedModel.run(capture=)``)."""
        return (self.readout.hook,) if self.readout is not None else ()

    def use_readout(self, readout: Readout) -> "Task":
        """This task with the metric replaced by ``readout``."""
        return replace(self, metric_kind="feature", readout=readout)

    def metric(self, out, rows: slice | None = None) -> torch.Tensor:
        """(N,) the metric of each prompt at the last position, from the logits (N, T,
        vocab) or a ``SpliceResult`` (which a readout metric needs: run with
        ``capture=task.reads``)."""
        rows = rows or slice(None)
        if self.readout is not None:
            captured = getattr(out, "captured", {})
            if self.readout.hook not in captured:
                raise DataError(f"task {self.name!r} reads {self.readout.hook}: pass the "
                                f"result of SplicedModel.run(..., capture=task.reads)")
            return self.readout(captured[self.readout.hook])
        logits = out if isinstance(out, torch.Tensor) else out.logits
        last = logits[:, -1].float()
        ans, wrong = self.answer[rows].to(last.device), self.wrong[rows].to(last.device)
        idx = torch.arange(last.shape[0], device=last.device)
        if self.metric_kind == "logprob":
            return last.log_softmax(-1)[idx, ans]
        return last[idx, ans] - last[idx, wrong]

    def subset(self, n: int) -> "Task":
        return replace(self, clean=self.clean[:n],
                       patch=None if self.patch is None else self.patch[:n],
                       answer=self.answer[:n], wrong=self.wrong[:n])


# ------------------------------------------------------------------ othello
def othello_legal(n: int = 64, n_moves: int = 20, seed: int = 0) -> Task:
    from interp.data import othello as oth

    rng = np.random.default_rng(seed)
    games = oth.generate_games(max(4 * n, 64), rng)
    clean, patch, answer, wrong = [], [], [], []
    for g in range(len(games)):
        moves = [int(m) for m in games.moves[g, :n_moves]]
        if len(moves) < n_moves or min(moves) < 0:
            continue  # the game ended early
        before = oth.replay(moves[:-1])[-1]
        options = [s for s in before.legal_moves() if s != moves[-1]]
        if not options:
            continue
        alt = int(rng.choice(options))
        board = oth.replay(moves)[-1]
        now = board.legal_moves()
        alt_legal = set(oth.replay(moves[:-1] + [alt])[-1].legal_moves())
        flips = [s for s in now if s not in alt_legal]
        empty = [s for s in range(64) if board.cells[s // 8][s % 8] is None and s not in now]
        if not flips or not empty:
            continue
        toks = [oth.BOS] + [int(oth.SQUARE_TO_TOKEN[m]) for m in moves]
        clean.append(toks)
        patch.append(toks[:-1] + [int(oth.SQUARE_TO_TOKEN[alt])])
        answer.append(int(oth.SQUARE_TO_TOKEN[int(rng.choice(flips))]))
        wrong.append(int(oth.SQUARE_TO_TOKEN[int(rng.choice(empty))]))
        if len(clean) == n:
            break
    if len(clean) < n:
        raise DataError(f"only {len(clean)} othello-legal prompts found (asked for {n})")
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return Task("othello-legal", t(clean), t(patch), t(answer), t(wrong),
                description=f"after {n_moves} moves: logit of a legal square minus an empty "
                            f"illegal one; patch: another legal last move")


FLIPPED_HOOK = "blocks.3.hook_resid_post"


def othello_flipped(model, n: int = 64, n_moves: int = 20, square: str | None = None,
                    hook: str = FLIPPED_HOOK, seed: int = 0) -> Task:
    """Game prefixes whose last move flipped ``square`` (default: the square flipped most
    often at that move); the metric is a logistic probe for "the move just read flipped
    the square", fitted on other games at ``hook``. Counterfactual: another legal last
    move that does not flip it."""
    from interp.data import othello as oth
    from interp.probes.sparse import fit_logistic

    if model is None:
        raise DataError("othello-flipped fits its probe on the model: pass the model")
    if hook not in model.hook_dict:
        raise unknown_hook(model, hook)
    rng = np.random.default_rng(seed)
    games = oth.generate_games(max(40 * n, 2000), rng)
    last = n_moves - 1
    flipped = games.flipped_mask()[:, last]                 # (G, 64) by move n_moves - 1
    sq = oth.parse_square(square) if square else int(flipped.sum(0).argmax())
    clean, patch = [], []
    for g in np.flatnonzero(flipped[:, sq]):
        moves = [int(m) for m in games.moves[g, :n_moves]]
        if min(moves) < 0:
            continue
        before = oth.replay(moves[:-1])[-1]
        options = [s for s in before.legal_moves() if s != moves[-1] and sq not in before.flips(s)]
        if not options:
            continue
        toks = [oth.BOS] + [int(oth.SQUARE_TO_TOKEN[m]) for m in moves]
        clean.append(toks)
        patch.append(toks[:-1] + [int(oth.SQUARE_TO_TOKEN[int(rng.choice(options))])])
        if len(clean) == n:
            break
    if len(clean) < n:
        raise DataError(f"only {len(clean)} othello-flipped prompts for square "
                        f"{oth.square_name(sq)} (asked for {n}); try fewer or another square")
    # the probe: every position of 512 other games, label = the move just read flipped sq
    probe_games = oth.generate_games(512, np.random.default_rng(seed + 1))
    tokens = torch.from_numpy(probe_games.tokens(with_bos=True)[:, :60])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook][:, 1:].float()                        # position p + 1 read move p
    valid = torch.from_numpy(probe_games.valid()[:, :59])
    y = torch.from_numpy(probe_games.flipped_mask()[:, :59, sq])[valid].long()
    x = acts[valid]
    probe = fit_logistic(x, y, torch.arange(x.shape[1]))
    name = oth.square_name(sq)
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    token = t([c[-1] for c in clean])  # unused by the readout metric
    readout = Readout.from_probe(hook, probe, x.shape[1], f"probe '{name} just flipped' at {hook}")
    return Task("othello-flipped", t(clean), t(patch), token, token, "feature",
                f"after {n_moves} moves whose last flipped {name}: the logit of a probe for "
                f"'{name} just flipped' at {hook}; patch: a last move that does not flip it",
                readout)


# ------------------------------------------------------------------ pycode
def _pycode_stream() -> tuple[np.ndarray, object]:
    from interp.data import pycode
    from interp.models.zoo import model_dir

    tok = pycode.load_tokenizer(model_dir("pycode") / "tokenizer.json")
    return pycode.encode_corpus(tok, "test"), tok


def _pycode_task(name: str, model, n: int, n_ctx: int, find) -> Task:
    stream, tok = _pycode_stream()
    ids = {s: tok.token_to_id(s) for s in ("(", ")", "):", "Ġ", "Ċ", BOS_TOKEN)}
    if None in ids.values():
        raise DataError("the pycode tokenizer lacks a token this task needs")
    clean, patch, answer, wrong = [], [], [], []
    body = n_ctx - 1
    for i in range(body, len(stream)):
        found = find(stream, i, ids, tok)
        if found is None:
            continue
        window = stream[i - body:i].astype(np.int64)
        pat, ans, wr = found
        c = np.concatenate([[ids[BOS_TOKEN]], window])
        p = c.copy()
        for pos, new in pat:  # positions relative to the window's end (i)
            p[n_ctx - (i - pos)] = new
        clean.append(c), patch.append(p), answer.append(ans), wrong.append(wr)
        if len(clean) == n:
            break
    if len(clean) < n:
        raise DataError(f"only {len(clean)} {name} prompts in the held-out code (asked for {n})")
    t = lambda v: torch.tensor(np.array(v), dtype=torch.long)  # noqa: E731
    return Task(name, t(clean), t(patch), t(answer), t(wrong))


def pycode_bracket(model=None, n: int = 64, n_ctx: int = 32) -> Task:
    def find(stream, i, ids, tok):
        if stream[i] != ids[")"]:
            return None
        for back in range(1, 9):
            t = stream[i - back]
            if t == ids["("]:
                return [(i - back, ids["Ġ"])], ids[")"], ids["Ċ"]
            if any(ch in tok.id_to_token(int(t)) for ch in "()[]{}"):
                return None
        return None

    task = _pycode_task("pycode-bracket", model, n, n_ctx, find)
    task.description = "inside an open '(': logit of ')' minus a newline; patch: '(' -> ' '"
    return task


def pycode_indent(model=None, n: int = 64, n_ctx: int = 32) -> Task:
    def find(stream, i, ids, tok):
        if stream[i - 1] != ids["):"]:
            return None
        nxt = tok.id_to_token(int(stream[i]))
        if not (nxt.startswith("Ċ") and set(nxt[1:]) == {"Ġ"}):
            return None
        # the line ending in '):' must be less indented than the next one
        j = i - 2
        while j > i - 30 and not tok.id_to_token(int(stream[j])).startswith("Ċ"):
            j -= 1
        prev = tok.id_to_token(int(stream[j]))
        if not prev.startswith("Ċ") or len(prev) >= len(nxt):
            return None
        return [(i - 1, ids[")"])], int(stream[i]), ids["Ċ"]

    task = _pycode_task("pycode-indent", model, n, n_ctx, find)
    task.description = "after '):' ending a line: logit of the deeper indented newline minus " \
                       "a plain newline; patch: '):' -> ')'"
    return task


# ------------------------------------------------------------------ registry
BUILTIN = {"othello-legal": ("othello", othello_legal),
           "othello-flipped": ("othello", othello_flipped),
           "pycode-bracket": ("pycode", pycode_bracket),
           "pycode-indent": ("pycode", pycode_indent)}


def make_task(name: str, model=None, n: int = 64, metric: str = "logit_diff") -> Task:
    """A built-in task by name, or a JSONL file of prompts (needs ``model``'s tokenizer)."""
    if name.endswith(".jsonl"):
        return load_task_jsonl(name, model, metric=metric)
    if name not in BUILTIN:
        raise unknown("task", name, list(BUILTIN) + ["PATH.jsonl"])
    _, build = BUILTIN[name]
    task = build(n=n) if name == "othello-legal" else build(model, n=n)
    if task.readout is None:
        task.metric_kind = metric
    return task


TASK_LINE = ('{"clean": text, "patch": text (optional), "answer": token, "wrong": token}')
_TASK_FIELDS = {"clean": True, "patch": False, "answer": True, "wrong": True}  # required?


def _json_type(v) -> str:
    """How a JSON value is called in messages: a number, a list, null ..."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def read_task_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of a task JSONL file, every line checked: a JSON object with the
    text fields ``clean``, ``answer``, ``wrong`` and optionally ``patch`` (on every line or
    none). Each problem is a one-line DataError naming the file, the line and the form."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no task file at {path}" + (" (it is a folder)" if path.is_dir()
                                                       else ""))
    rows = []
    for n, line in read_text_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not valid JSON ({e.msg}); each line is "
                            f"{TASK_LINE}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is {_json_type(row)}, not a JSON object; each "
                            f"line is {TASK_LINE}")
        if row.get("patch", "") is None:
            del row["patch"]  # null: no counterfactual
        missing = [f for f, required in _TASK_FIELDS.items() if required and f not in row]
        if missing:
            raise DataError(f"{path}: line {n} has no {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(map(repr, row)) or 'no fields'}); each line is "
                            f"{TASK_LINE}")
        for f in _TASK_FIELDS:
            if f in row and not isinstance(row[f], str):
                what = "a token string" if f in ("answer", "wrong") else "a text string"
                raise DataError(f"{path}: line {n}: {f!r} is {_json_type(row[f])} "
                                f"({json.dumps(row[f])[:40]}), expected {what}; each line is "
                                f"{TASK_LINE}")
        rows.append((n, row))
    if not rows:
        raise DataError(f"{path} holds no prompts; each line is {TASK_LINE}")
    with_patch = [n for n, r in rows if "patch" in r]
    if with_patch and len(with_patch) < len(rows):
        without = next(n for n, r in rows if "patch" not in r)
        raise DataError(f"{path}: line {without} has no 'patch' but line {with_patch[0]} has "
                        f"one; give a patch (counterfactual) prompt on every line or on none")
    return rows


def load_task_jsonl(path: str | Path, model, metric: str = "logit_diff") -> Task:
    """Prompts from JSONL: {"clean": text, "patch": text (optional), "answer": token,
    "wrong": token} per line, tokenized by ``model.tokenizer`` (BOS prepended). The file is
    checked line by line (``read_task_jsonl``) before anything is tokenized."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no task file at {path}")
    numbered = read_task_jsonl(path)  # the file first: its problems do not depend on the model
    if model is None or getattr(model, "tokenizer", None) is None:
        name = getattr(model, "interp_meta", {}).get("name") if model is not None else None
        raise DataError("a JSONL task needs a model with a tokenizer"
                        + (f"; {name} has none (its tasks are the built-in ones: "
                           f"{', '.join(t for t, (m, _) in BUILTIN.items() if m == name)})"
                           if name else ""))
    lines = [n for n, _ in numbered]
    rows = [r for _, r in numbered]

    def toks(text: str) -> list[int]:
        return model.to_tokens(text, prepend_bos=True)[0].tolist()

    def single(tok: str, n: int, field: str) -> int:
        ids = model.to_tokens(tok, prepend_bos=False)[0].tolist()
        if len(ids) != 1:
            raise DataError(f"{path}: line {n}: {field} {tok!r} is {len(ids)} tokens; answer "
                            f"and wrong must be single tokens")
        return ids[0]

    clean = [toks(r["clean"]) for r in rows]
    has_patch = "patch" in rows[0]
    patch = [toks(r["patch"]) for r in rows] if has_patch else None
    first = len(clean[0])
    for i, n in enumerate(lines):
        for kind, seqs in (("clean", clean), ("patch", patch or [])):
            if seqs and len(seqs[i]) != first:
                raise DataError(f"{path}: line {n}: the {kind} prompt is {len(seqs[i])} tokens, "
                                f"line {lines[0]}'s clean one {first}; positions are kept "
                                f"separate, so all prompts (clean and patch) must have the "
                                f"same number of tokens")
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return Task(path.stem, t(clean), t(patch) if patch else None,
                t([single(r["answer"], n, "answer") for n, r in numbered]),
                t([single(r["wrong"], n, "wrong") for n, r in numbered]), metric)
