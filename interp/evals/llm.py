"""Automated interpretability with an LLM: explain a latent from its examples, then score the
explanation by how well it lets the LLM predict the latent (the explain-then-score protocol
of SAEBench's autointerp and EleutherAI's delphi).

For each sampled latent (seeded, among those with enough examples in the model's own
held-out data: Othello games, pycode contexts, or ``tokens`` given for another model):

1. **Examples.** Activations come from ``interp.features.dashboard.dictionary_acts`` (the
   dictionary's own inference rule, any kind). An excerpt is the window
   ``[peak - before, peak + after]`` around a context's strongest activation (an Othello
   excerpt starts at the game's first move by default: the board depends on every move).
   *Top* excerpts are the contexts with the highest peaks; *interval-sampled* excerpts are
   one random context from each of equal-count intervals of the remaining peaks (weak as
   well as strong activations); *negative* excerpts are windows where the latent is 0 on
   every token. Top and sampled excerpts are split at random into an explanation set and a
   held-out scoring set.
2. **Explain.** The LLM sees the explanation set, strongest first, with the tokens where the
   latent exceeds ``mark_fraction`` of the excerpt's maximum wrapped in ``<<`` and ``>>``
   (delphi's marking), and answers one line ``Explanation: ...``.
3. **Score.** *Detection*: the held-out activating excerpts and the negatives, unmarked and
   shuffled, ``examples_per_prompt`` to a prompt; the LLM answers a list of 0/1 (is the
   latent active anywhere in this excerpt?). *Fuzzing*: the held-out activating excerpts,
   half marked correctly and half marked on as many random tokens where the latent is 0;
   the LLM answers a list of 0/1 (is the marking correct?). Each score is the balanced
   accuracy ``(TP / (TP + FN) + TN / (TN + FP)) / 2`` over the excerpts answered, so a
   constant answer scores 0.5; precision, recall, F1 and accuracy are reported beside it.
   (AUC needs graded answers; with 0/1 answers it equals the balanced accuracy.)

Prompts (written for this module, see ``explain_messages``, ``detection_messages``,
``fuzzing_messages``): a system message saying what the model and the data are, what a
latent is, how excerpts are written (Othello moves as squares; ``↵`` for line breaks) and the
exact answer format; a user message with the explanation (scoring only) and the numbered
excerpts.

HTTP: any OpenAI-compatible server, ``POST {llm_url}/chat/completions`` with temperature 0,
requests in a small thread pool. One test request first, so a wrong URL, key or model name
is refused in one line before any work. An answer that cannot be parsed, and a request that
still fails after retries (timeouts, 429, 5xx), is a failure of that latent, reported in
``details``, not a crash.

Shapes: N contexts of T tokens, m latents, L chosen latents.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from interp.errors import DataError, UnknownNameError, UsageError

log = logging.getLogger(__name__)

MARK_OPEN, MARK_CLOSE = "<<", ">>"
NEWLINE_SHOWN = "↵"  # excerpts are one line each in a prompt


# ------------------------------------------------------------------ configuration
@dataclass
class LLMEvalConfig:
    """What to show the LLM and how to talk to it; defaults follow delphi and SAEBench at a
    size a researcher's endpoint answers in minutes."""

    n_latents: int = 50          # latents sampled (seeded) among those with enough examples
    latents: tuple[int, ...] | None = None  # these latents instead of a sample
    seed: int = 0                # latent sample, example splits, shuffles, Othello games
    n_contexts: int = 1024       # contexts of the model's held-out data searched for examples
    n_ctx: int | None = None     # tokens per context (default: the model's, at most 128)
    n_explain_top: int = 10      # strongest excerpts shown to the explainer
    n_explain_sampled: int = 5   # interval-sampled excerpts shown to the explainer
    n_score_top: int = 5         # held-out strongest excerpts scored
    n_score_sampled: int = 5     # held-out interval-sampled excerpts scored
    n_score_negative: int = 10   # excerpts where the latent is 0 throughout (detection)
    examples_per_prompt: int = 10  # excerpts in one detection or fuzzing prompt
    window_before: int | None = None  # tokens before the peak (None: a whole Othello game
    #                                   from its first move; 24 tokens of text)
    window_after: int | None = None   # tokens after the peak (None: 4 moves; 8 tokens)
    mark_fraction: float = 0.3   # marked: activation > this fraction of the excerpt's max
    max_tokens_explanation: int = 200  # answer budget of an explanation request
    max_tokens_answer: int = 200       # answer budget of a scoring request
    timeout: float = 120.0       # seconds for one request
    retries: int = 2             # further attempts after a timeout, 429 or 5xx
    concurrency: int = 4         # requests in flight at once
    batch_size: int = 64         # contexts per forward pass

    @property
    def min_activating(self) -> int:
        """Contexts a latent must be active in to fill its explanation and scoring sets."""
        return (self.n_explain_top + self.n_explain_sampled + self.n_score_top
                + self.n_score_sampled)

    def validate(self) -> "LLMEvalConfig":
        """Refuse values that cannot work, naming the field, before anything runs."""
        at_least = {"n_latents": 1, "n_contexts": 2, "n_explain_top": 1, "n_explain_sampled": 0,
                    "n_score_top": 0, "n_score_sampled": 0, "n_score_negative": 1,
                    "examples_per_prompt": 1, "max_tokens_explanation": 1,
                    "max_tokens_answer": 1, "retries": 0, "concurrency": 1, "batch_size": 1}
        for name, low in at_least.items():
            if int(getattr(self, name)) < low:
                raise UsageError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.n_score_top + self.n_score_sampled < 1:
            raise UsageError("n_score_top + n_score_sampled must be at least 1: scoring needs "
                             "held-out activating excerpts")
        for name in ("window_before", "window_after", "n_ctx"):
            value = getattr(self, name)
            if value is not None and int(value) < (1 if name == "n_ctx" else 0):
                raise UsageError(f"{name} must be {'positive' if name == 'n_ctx' else 'at least 0'}"
                                 f" or None, got {value}")
        if not 0 <= self.mark_fraction < 1:
            raise UsageError(f"mark_fraction must be in [0, 1), got {self.mark_fraction}")
        if self.timeout <= 0:
            raise UsageError(f"timeout must be positive, got {self.timeout}")
        return self


def make_config(**options) -> LLMEvalConfig:
    """An ``LLMEvalConfig`` from keyword options; an unknown option is refused with the
    valid ones (a typo must not silently fall back to a default)."""
    valid = [f.name for f in fields(LLMEvalConfig)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} of the LLM eval; valid: "
                         f"{', '.join(valid)}")
    if options.get("latents") is not None:
        options["latents"] = tuple(int(i) for i in options["latents"])
    return LLMEvalConfig(**options).validate()


# ------------------------------------------------------------------ HTTP client
class RequestFailed(Exception):
    """One request that got no usable answer (after retries): a failure of the latent it
    was for, not of the run."""


class _Transient(Exception):
    """A failure worth another attempt (timeout, 429, 5xx, connection lost or refused)."""

    def __init__(self, message: str, unreachable: bool = False, wait: float | None = None):
        super().__init__(message)
        self.unreachable = unreachable
        self.wait = wait


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters: errors and
    reported failures are one line each."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def server_message(raw: bytes) -> str:
    """The message of an error body in the shapes servers use (OpenAI and vLLM
    ``{"error": {"message"}}`` or ``{"message"}``, Ollama ``{"error": "..."}``, FastAPI
    ``{"detail"}``), else the body's text."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return one_line(text) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return one_line(err["message"])
        for value in (err, body.get("message"), body.get("detail")):
            if value:
                return one_line(value if isinstance(value, str) else json.dumps(value))
    return one_line(text)


class ChatClient:
    """A minimal client of an OpenAI-compatible ``/chat/completions`` endpoint (the standard
    library only: the workbench adds no dependency for it). Thread-safe: it holds no
    connection state."""

    def __init__(self, url: str, model: str, api_key: str | None = None,
                 timeout: float = 120.0, retries: int = 2, backoff: float = 1.0):
        parsed = urllib.parse.urlparse(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--llm-url {url!r} is not an http(s) URL; give the API base of an "
                             f"OpenAI-compatible server, e.g. http://localhost:8000/v1")
        if not model:
            raise UsageError("give --llm-model: the name the LLM server knows the model by")
        self.url = str(url).rstrip("/")
        self.endpoint = (self.url if self.url.endswith("/chat/completions")
                         else self.url + "/chat/completions")
        self.model, self.api_key = str(model), api_key or None
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        """The text of the first choice (temperature 0). Raises ``RequestFailed`` when no
        usable answer came, and an ``InterpError`` when no request can succeed (server gone,
        key refused, model unknown)."""
        body = {"model": self.model, "messages": messages, "temperature": 0,
                "max_tokens": int(max_tokens)}
        return answer_text(self._post(body, retry_unreachable=True))

    def check(self) -> None:
        """One tiny request, so that a wrong URL, key or model name is refused in one line
        before the activations are computed."""
        body = {"model": self.model, "temperature": 0, "max_tokens": 4,
                "messages": [{"role": "user", "content": "Reply with the word OK."}]}
        try:
            answer_text(self._post(body, retry_unreachable=False))
        except RequestFailed as e:
            raise DataError(f"the LLM server at {self.url} did not answer a test request for "
                            f"model {self.model!r} ({e})") from None

    def _post(self, body: dict, retry_unreachable: bool) -> dict:
        """The JSON answer to ``body``, retrying transient failures with exponential
        backoff (or the server's Retry-After)."""
        last: _Transient | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(body)
            except _Transient as e:
                last = e
                if attempt == self.retries or (e.unreachable and not retry_unreachable):
                    break
                time.sleep(e.wait if e.wait is not None else self.backoff * 2 ** attempt)
        assert last is not None
        if last.unreachable:
            raise DataError(f"no LLM answered at {self.url} ({last}); give --llm-url of an "
                            f"OpenAI-compatible server (vLLM, Ollama: http://localhost:11434/v1, "
                            f"or a hosted one) and --llm-model")
        raise RequestFailed(str(last))

    def _post_once(self, body: dict) -> dict:
        """One POST; every failure becomes ``_Transient``, ``RequestFailed`` or an
        ``InterpError`` (``_status_error``)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise self._status_error(e) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Transient(f"no answer within {self.timeout:g} s") from None
            raise _Transient(_reason_text(e.reason), unreachable=True) from None
        except (TimeoutError, socket.timeout):
            raise _Transient(f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:  # reset or cut mid-answer
            raise _Transient(f"connection lost ({type(e).__name__})") from None
        try:
            return json.loads(raw)
        except ValueError:
            text = raw[:200].decode("utf-8", "replace")
            raise RequestFailed(f"the answer is not JSON: {one_line(text)}") from None

    def _status_error(self, e: urllib.error.HTTPError) -> Exception:
        """The exception for an HTTP error status: refused outright (key, model), retried
        (overload, server errors), or a failure of this request only."""
        message = server_message(e.read())
        if e.code in (401, 403):
            return UsageError(f"the LLM server at {self.url} refused the request (HTTP {e.code}: "
                              f"{message}); give its API key with --api-key or OPENAI_API_KEY")
        if e.code == 404:
            return UnknownNameError(f"the LLM server at {self.url} does not know model "
                                    f"{self.model!r} (HTTP 404: {message}); check --llm-model, "
                                    f"and that --llm-url is the API base (e.g. .../v1)")
        if e.code in (408, 409, 425, 429) or e.code >= 500:
            return _Transient(f"HTTP {e.code}: {message}", wait=_retry_after(e))
        return RequestFailed(f"HTTP {e.code}: {message}")


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    """The server's Retry-After in seconds (at most 30), if it sent a number."""
    try:
        return min(float(e.headers.get("Retry-After")), 30.0)
    except (TypeError, ValueError):
        return None


def _reason_text(reason: object) -> str:
    """Why a connection could not be made, in words a user acts on."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host not found"
    return one_line(reason, 120)


def answer_text(data: dict) -> str:
    """``choices[0].message.content`` of a chat completion ('' when the server sent none)."""
    try:
        content = data["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RequestFailed(f"the answer is not a chat completion: "
                            f"{one_line(json.dumps(data)[:200])}") from None
    return content if isinstance(content, str) else ""


# ------------------------------------------------------------------ parsing answers
_THINKING = re.compile(r"<think>.*?</think>", re.S | re.I)
_EXPLANATION_LINE = re.compile(r"^[\s*_#>`\"\[-]*explanation[\s*_`\]]*:[\s*_`]*(.+)$",
                               re.I | re.M)
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_BINARY_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}


def strip_reasoning(text: str) -> str:
    """The answer without a reasoning model's ``<think>...</think>`` block."""
    return _THINKING.sub("", text or "").strip()


def parse_explanation(text: str, max_chars: int = 400) -> str | None:
    """The explanation in an answer: the last ``Explanation: ...`` line (markdown emphasis
    allowed), or the whole answer when it is one short line; None otherwise (prose that
    never says which sentence is the explanation is a failure, not a guess)."""
    text = strip_reasoning(text)
    found = _EXPLANATION_LINE.findall(text)
    if found:
        candidate = found[-1]
    elif text and "\n" not in text and len(text) <= max_chars:
        candidate = re.sub(r"^[\s*_#>`\"\[-]*explanation[\s*_`\]]*:", "", text, flags=re.I)
    else:
        return None
    candidate = candidate.strip().strip("*_ ")
    if len(candidate) >= 2 and candidate[0] == candidate[-1] and candidate[0] in "\"'":
        candidate = candidate[1:-1].strip()  # the whole explanation quoted
    candidate = candidate.rstrip(".").strip()
    return candidate if 0 < len(candidate) <= max_chars else None


def parse_binary_list(text: str, n: int) -> list[int] | None:
    """``n`` answers 0/1 from an answer: the last bracketed list of exactly ``n`` values
    0/1/true/false/yes/no (a JSON list, alone or inside prose or an object), else numbered
    lines (``Excerpt 3: 1``), else an answer made only of ``n`` digits 0/1 and separators;
    None when none of these fits (a wrong count is a failure: the answers cannot be
    matched to the excerpts)."""
    text = strip_reasoning(text)
    for inner in reversed(_BRACKETED.findall(text)):
        words = [w.strip().strip("\"'").lower() for w in inner.split(",") if w.strip()]
        if len(words) == n and all(w in _BINARY_WORDS for w in words):
            return [_BINARY_WORDS[w] for w in words]
    numbered = re.findall(r"^\W*(?:excerpt|example)?\s*(\d+)\s*[:.)=-]\s*(1|0|yes|no|true|false)\b",
                          text, re.I | re.M)
    by_index = {int(i): _BINARY_WORDS[v.lower()] for i, v in numbered}
    if sorted(by_index) == list(range(1, n + 1)):
        return [by_index[i] for i in range(1, n + 1)]
    if text and re.fullmatch(r"[01\s,;.]+", text):
        digits = re.findall(r"[01]", text)
        if len(digits) == n:
            return [int(d) for d in digits]
    return None


# ------------------------------------------------------------------ the model's data
@dataclass
class Domain:
    """How a model's data is described to the LLM and written in excerpts."""

    model: str      # what the studied model is
    data: str       # what the excerpts are
    unit: str       # what one token is called
    joiner: str     # between token strings in an excerpt
    hint: str       # how to read an excerpt


def domain_of(model_name: str, from_first_move: bool = True) -> Domain:
    """The description of an embedded model's data, or of generic text."""
    if model_name == "othello":
        start = "a game from its first move" if from_first_move else "a stretch of a game"
        return Domain("a small GPT trained to predict legal moves of Othello games",
                      "Othello games", "move", " ",
                      f"Each excerpt is {start}, written as the squares played (columns a-h, "
                      f"rows 1-8). Black moves first and the players alternate, except that a "
                      f"player with no legal move passes, which is not written. A latent may "
                      f"respond to the move itself, to the position it creates, or to the "
                      f"moves that are legal next.")
    if model_name == "pycode":
        return Domain("a small GPT trained on Python source code", "Python source code",
                      "token", "", f"Each excerpt is a stretch of code split into tokens; line "
                      f"breaks are shown as {NEWLINE_SHOWN}.")
    return Domain(f"the language model {model_name}", "text", "token", "",
                  f"Line breaks are shown as {NEWLINE_SHOWN}.")


@dataclass
class Corpus:
    """The contexts searched for examples and how to show them."""

    tokens: torch.Tensor          # (N, T) token ids, BOS first
    lengths: np.ndarray           # (N,) tokens before the first Othello PAD (else T)
    strings: dict[int, str]       # token id -> the string shown
    domain: Domain
    before: int                   # window: tokens before the peak
    after: int                    # window: tokens after the peak


def load_corpus(model, model_name: str, cfg: LLMEvalConfig,
                tokens: torch.Tensor | None = None) -> Corpus:
    """The model's own held-out data (``interp.viz.prompts.corpus_contexts``: Othello games
    of the seed, pycode's test split) or ``tokens`` (N, T) for another model."""
    from interp.hooks import default_n_ctx
    from interp.models import token_strings
    from interp.viz.prompts import corpus_contexts

    n_ctx = default_n_ctx(model, cfg.n_ctx)
    if tokens is None:
        tokens = corpus_contexts(model_name, cfg.n_contexts, n_ctx, seed=cfg.seed)
        if tokens is None:
            raise DataError(f"the model {model_name!r} has no embedded corpus; pass tokens "
                            f"(N, T) token ids of its data (embedded: othello, pycode)")
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 2 or tokens.shape[0] < 2 or tokens.shape[1] < 2:
        raise DataError(f"tokens must be (N, T) with N, T >= 2, got {tuple(tokens.shape)}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise DataError(f"contexts of {tokens.shape[1]} tokens are longer than the model's "
                        f"n_ctx {model.cfg.n_ctx}")
    lengths = np.full(tokens.shape[0], tokens.shape[1])
    if model_name == "othello":
        from interp.data.othello import PAD

        is_pad = (tokens == PAD).numpy()
        lengths = np.where(is_pad.any(1), is_pad.argmax(1), tokens.shape[1])
    ids = sorted(set(tokens.unique().tolist()))
    shown = [re.sub(r"\r\n|\n|\r", NEWLINE_SHOWN, s) for s in token_strings(model_name, ids)]
    othello = model_name == "othello"
    before = cfg.window_before if cfg.window_before is not None else (
        tokens.shape[1] if othello else 24)
    after = cfg.window_after if cfg.window_after is not None else (4 if othello else 8)
    return Corpus(tokens, lengths, dict(zip(ids, shown)),
                  domain_of(model_name, from_first_move=before >= tokens.shape[1] - 1),
                  int(before), int(after))


def window_bounds(lengths: np.ndarray, T: int, before: int, after: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every anchor position p of every context: the excerpt ``[lo, hi)`` around it
    (BOS and Othello padding excluded) and whether p can anchor one. The one window rule of
    activating and negative excerpts. Each (N, T)."""
    p = torch.arange(T)[None, :]
    length = torch.as_tensor(lengths).long()[:, None]
    lo = (p - before).clamp_min(1).expand(len(lengths), T)
    hi = torch.minimum(p + after + 1, length)
    valid = (p >= 1) & (p < length)
    return lo, torch.maximum(hi, lo), valid


def zero_windows(active_NTm: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
    """(N, T, m) True where the window anchored at p holds no active token of the latent
    (cumulative counts, so every window costs two lookups)."""
    counts = torch.nn.functional.pad(active_NTm.int().cumsum(1), (0, 0, 1, 0))
    m = active_NTm.shape[2]
    inside = (counts.gather(1, hi[..., None].expand(-1, -1, m))
              - counts.gather(1, lo[..., None].expand(-1, -1, m)))
    return (inside == 0) & valid[..., None]


def _batch_acts(model, sae, corpus: Corpus, start: int, stop: int,
                latents: Sequence[int] | None = None) -> torch.Tensor:
    """(B, T, m or L) activations of contexts start..stop, 0 at BOS and Othello padding."""
    from interp.features.dashboard import dictionary_acts

    batch = corpus.tokens[start:stop]
    acts = dictionary_acts(model, sae, batch, batch_size=batch.shape[0])
    if latents is not None:
        acts = acts[..., list(latents)]
    lengths = torch.as_tensor(corpus.lengths[start:stop])
    keep = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
    return acts * keep[..., None]


@dataclass
class LatentCensus:
    """Per latent over the corpus: what decides whether it can be explained and scored."""

    n_contexts: int          # contexts searched
    n_active: np.ndarray     # (m,) contexts where it is active
    n_negative: np.ndarray   # (m,) contexts holding a window where it is 0 throughout
    acts: torch.Tensor | None = None  # (N, T, m) all activations, kept when they are small


KEEP_ACTS_LIMIT = 2 ** 24  # activations (N * T * m) the census keeps to spare a second pass


@torch.no_grad()
def census(model, sae, corpus: Corpus, batch_size: int) -> LatentCensus:
    """One pass over the corpus counting, for every latent, the contexts it is active in
    and the contexts that can give a negative excerpt (memory bounded by one batch, unless
    all activations fit in ``KEEP_ACTS_LIMIT``)."""
    N, T = corpus.tokens.shape
    lo, hi, valid = window_bounds(corpus.lengths, T, corpus.before, corpus.after)
    keep = N * T * sae.cfg.d_sae <= KEEP_ACTS_LIMIT
    n_active = n_negative = None
    kept = []
    for s in range(0, N, batch_size):
        acts = _batch_acts(model, sae, corpus, s, s + batch_size)
        kept += [acts] if keep else []
        active = acts > 0
        zero = zero_windows(active, lo[s:s + batch_size], hi[s:s + batch_size],
                            valid[s:s + batch_size])
        batch_active, batch_negative = active.any(1).sum(0), zero.any(1).sum(0)
        n_active = batch_active if n_active is None else n_active + batch_active
        n_negative = batch_negative if n_negative is None else n_negative + batch_negative
    return LatentCensus(N, n_active.numpy(), n_negative.numpy(),
                        torch.cat(kept) if keep else None)


def check_latents(latents: Sequence[int] | None, m: int) -> None:
    """Refuse latents a dictionary of ``m`` latents does not have."""
    bad = [i for i in latents or () if not 0 <= i < m]
    if bad:
        raise DataError(f"latents {bad} are out of range: the dictionary has {m} (0..{m - 1})")


def eligible(found: LatentCensus, cfg: LLMEvalConfig) -> np.ndarray:
    """(m,) the latents with enough examples: ``min_activating`` activating contexts and
    ``n_score_negative`` contexts with a silent window (SAEBench's "alive", made exact for
    what the protocol shows)."""
    return (found.n_active >= cfg.min_activating) & (found.n_negative >= cfg.n_score_negative)


def choose_latents(found: LatentCensus, cfg: LLMEvalConfig) -> tuple[list[int], dict[int, str]]:
    """The latents to evaluate (``cfg.latents``, or a seeded sample of the eligible ones)
    and, for each refused one of ``cfg.latents``, why."""
    m = len(found.n_active)
    enough = eligible(found, cfg)
    if cfg.latents is not None:
        check_latents(cfg.latents, m)
        refused = {int(i): (f"active in {found.n_active[i]} contexts, needs {cfg.min_activating}"
                            if found.n_active[i] < cfg.min_activating else
                            f"silent windows in {found.n_negative[i]} contexts, needs "
                            f"{cfg.n_score_negative}") for i in cfg.latents if not enough[i]}
        if len(refused) == len(set(cfg.latents)):
            raise DataError("no latent asked for has enough examples: " + "; ".join(
                f"{i}: {why}" for i, why in refused.items()) + "; search more contexts "
                "(n_contexts) or ask for fewer examples")
        return [int(i) for i in cfg.latents if enough[i]], refused
    candidates = np.flatnonzero(enough)
    if len(candidates) == 0:
        raise DataError(f"no latent is active in at least {cfg.min_activating} of the "
                        f"{found.n_contexts} contexts and silent in {cfg.n_score_negative}; "
                        f"search more contexts (n_contexts) or ask for fewer examples")
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(candidates, size=min(cfg.n_latents, len(candidates)), replace=False)
    return sorted(int(i) for i in chosen), {}


# ------------------------------------------------------------------ excerpts
@dataclass
class Excerpt:
    """A window of one context and the latent's activations on it."""

    context: int
    start: int
    end: int
    acts: np.ndarray          # (end - start,) the latent's activations
    kind: str                 # top | sampled | negative

    @property
    def peak(self) -> float:
        return float(self.acts.max()) if len(self.acts) else 0.0

    def true_marks(self, fraction: float) -> np.ndarray:
        """Tokens above ``fraction`` of the excerpt's maximum (and above 0)."""
        return (self.acts > fraction * self.peak) & (self.acts > 0)

    def text(self, corpus: Corpus, marks: np.ndarray | None = None) -> str:
        ids = corpus.tokens[self.context, self.start:self.end].tolist()
        return render_excerpt([corpus.strings[i] for i in ids], marks, corpus.domain.joiner)


def render_excerpt(pieces: Sequence[str], marks: Sequence[bool] | None, joiner: str) -> str:
    """Token strings joined, each run of marked tokens wrapped in one ``<<...>>`` (as delphi
    writes it)."""
    out, i = [], 0
    while i < len(pieces):
        if marks is not None and marks[i]:
            j = i
            while j < len(pieces) and marks[j]:
                j += 1
            out.append(MARK_OPEN + joiner.join(pieces[i:j]) + MARK_CLOSE)
            i = j
        else:
            out.append(pieces[i])
            i += 1
    return joiner.join(out)


@dataclass
class LatentPlan:
    """Everything shown to the LLM about one latent, decided before any request."""

    latent: int
    n_active: int
    explain: list[Excerpt]
    activating: list[Excerpt]          # held out, scored
    negative: list[Excerpt]
    fuzz_marks: list[np.ndarray] = field(default_factory=list)   # per activating excerpt
    fuzz_correct: list[bool] = field(default_factory=list)


def _interval_sample(contexts: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """One random context from each of ``n`` equal-count intervals of ``contexts`` (sorted by
    peak), so weak activations are shown as well as strong ones."""
    if n == 0 or len(contexts) == 0:
        return []
    return [int(rng.choice(part)) for part in np.array_split(contexts, min(n, len(contexts)))]


def plan_latent(latent: int, acts_NT: torch.Tensor, corpus: Corpus, cfg: LLMEvalConfig,
                rng: np.random.Generator) -> LatentPlan:
    """The explanation set, the held-out activating excerpts and the negatives of one
    latent, from its activations ``acts_NT`` over the corpus."""
    N, T = acts_NT.shape
    lo, hi, valid = window_bounds(corpus.lengths, T, corpus.before, corpus.after)
    peaks, anchors = acts_NT.max(1)
    order = torch.argsort(peaks, descending=True, stable=True).numpy()
    active = order[peaks.numpy()[order] > 0]
    n_top = cfg.n_explain_top + cfg.n_score_top
    top = rng.permutation(active[:n_top]).tolist()
    sampled = rng.permutation(_interval_sample(active[n_top:], cfg.n_explain_sampled
                                               + cfg.n_score_sampled, rng)).tolist()

    def excerpt(c: int, kind: str, p: int | None = None) -> Excerpt:
        p = int(anchors[c]) if p is None else p
        a, b = int(lo[c, p]), int(hi[c, p])
        return Excerpt(int(c), a, b, acts_NT[c, a:b].numpy().astype(np.float32), kind)

    explain = ([excerpt(c, "top") for c in top[:cfg.n_explain_top]]
               + [excerpt(c, "sampled") for c in sampled[:cfg.n_explain_sampled]])
    explain.sort(key=lambda e: -e.peak)
    activating = ([excerpt(c, "top") for c in top[cfg.n_explain_top:]]
                  + [excerpt(c, "sampled") for c in sampled[cfg.n_explain_sampled:]])
    zero = zero_windows((acts_NT > 0)[..., None], lo, hi, valid)[..., 0]
    used = {e.context for e in explain + activating}
    candidates = [c for c in np.flatnonzero(zero.any(1).numpy()) if c not in used]
    if len(candidates) < cfg.n_score_negative:  # few silent contexts: reuse shown ones
        candidates = np.flatnonzero(zero.any(1).numpy()).tolist()
    picked = rng.choice(candidates, size=min(cfg.n_score_negative, len(candidates)),
                        replace=False)
    negative = [excerpt(c, "negative", int(rng.choice(np.flatnonzero(zero[c].numpy()))))
                for c in sorted(int(c) for c in picked)]
    plan = LatentPlan(int(latent), int((peaks > 0).sum()), explain, activating, negative)
    plan.fuzz_marks, plan.fuzz_correct = fuzz_markings(activating, cfg.mark_fraction, rng)
    return plan


def fuzz_markings(excerpts: Sequence[Excerpt], fraction: float, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[bool]]:
    """Marks for fuzzing: half the excerpts (those that have silent tokens to mark) get as
    many marks on random tokens where the latent is 0, the rest their true marks."""
    can_be_wrong = [int(i) for i in rng.permutation(len(excerpts))
                    if (excerpts[i].acts == 0).any()]
    wrong_set = set(can_be_wrong[:len(excerpts) // 2])
    marks, correct = [], []
    for i, e in enumerate(excerpts):
        true = e.true_marks(fraction)
        if i in wrong_set:
            silent = np.flatnonzero(e.acts == 0)
            chosen = rng.choice(silent, size=min(int(true.sum()), len(silent)), replace=False)
            wrong = np.zeros(len(e.acts), dtype=bool)
            wrong[chosen] = True
            marks.append(wrong)
            correct.append(False)
        else:
            marks.append(true)
            correct.append(True)
    return marks, correct


# ------------------------------------------------------------------ prompts
def _numbered(texts: Sequence[str], label: str) -> str:
    return "\n".join(f"{label} {i}: {t}" for i, t in enumerate(texts, 1))


def explain_messages(domain: Domain, texts: Sequence[str]) -> list[dict]:
    """The explanation request: the marked excerpts, strongest first, and a one-line answer
    format so the explanation can be found in any reply."""
    system = (
        f"You are helping to understand the inner workings of {domain.model}. A sparse "
        f"dictionary (a sparse autoencoder) splits the model's internal activations into many "
        f"latents, each meant to stand for one recognisable pattern. Below are excerpts of "
        f"{domain.data} on which one such latent is active. In each excerpt the {domain.unit}s "
        f"where the latent is active are wrapped in {MARK_OPEN} and {MARK_CLOSE}. The excerpts "
        f"start with the strongest activations and go on to weaker ones. {domain.hint}\n\n"
        f"Work out what the wrapped {domain.unit}s have in common, in their context, and say it "
        f"as briefly as you can: a colleague will use your sentence to predict where the latent "
        f"is active. Reply with one line:\nExplanation: <at most 20 words>")
    return [{"role": "system", "content": system},
            {"role": "user", "content": "Excerpts:\n" + _numbered(texts, "Excerpt")}]


def _scoring_preamble(domain: Domain, n: int) -> str:
    return (f"You are testing an explanation of one latent of {domain.model} (a unit of a "
            f"sparse dictionary over the model's internal activations). You get the explanation "
            f"and {n} numbered excerpts of {domain.data}. {domain.hint}")


def _answer_format(n: int, one: str, zero: str) -> str:
    return (f"Reply with a JSON list of exactly {n} numbers in excerpt order, 1 for {one} and "
            f"0 for {zero}, and nothing else.")


def detection_messages(domain: Domain, explanation: str, texts: Sequence[str]) -> list[dict]:
    """The detection request: unmarked excerpts, some where the latent is active and some
    where it is silent; one 0/1 per excerpt."""
    n = len(texts)
    system = (f"{_scoring_preamble(domain, n)}\n\nThe latent is active somewhere in some of "
              f"the excerpts and nowhere in the others. Judging from the explanation alone, "
              f"decide for each excerpt whether the latent is active on at least one of its "
              f"{domain.unit}s. {_answer_format(n, 'active', 'not active')}")
    user = f"Explanation: {explanation}\n\nExcerpts:\n{_numbered(texts, 'Excerpt')}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def fuzzing_messages(domain: Domain, explanation: str, texts: Sequence[str]) -> list[dict]:
    """The fuzzing request: activating excerpts with some tokens wrapped, correctly or at
    random; one 0/1 per excerpt."""
    n = len(texts)
    system = (f"{_scoring_preamble(domain, n)}\n\nThe latent is active somewhere in every "
              f"excerpt, and in every excerpt some {domain.unit}s are wrapped in {MARK_OPEN} and "
              f"{MARK_CLOSE}. In some excerpts the wrapped {domain.unit}s are the ones where the "
              f"latent is active; in the others they were picked at random. Judging from the "
              f"explanation, decide for each excerpt whether its wrapped {domain.unit}s are the "
              f"ones where the latent is active. "
              f"{_answer_format(n, 'correctly wrapped', 'wrapped at random')}")
    user = f"Explanation: {explanation}\n\nExcerpts:\n{_numbered(texts, 'Excerpt')}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ------------------------------------------------------------------ scores
def binary_scores(predicted: Sequence[int | None], truth: Sequence[bool]) -> dict:
    """Balanced accuracy, precision, recall, F1 and accuracy of 0/1 answers (None: not
    answered, left out); a metric whose denominator is 0 is None."""
    pairs = [(bool(p), bool(t)) for p, t in zip(predicted, truth) if p is not None]
    tp = sum(p and t for p, t in pairs)
    fn = sum(not p and t for p, t in pairs)
    tn = sum(not p and not t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    tpr, tnr = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"balanced_accuracy": (tpr + tnr) / 2 if tpr is not None and tnr is not None
            else None,
            "precision": ratio(tp, tp + fp), "recall": tpr,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "accuracy": ratio(tp + tn, len(pairs)),
            "n_examples": len(truth), "n_answered": len(pairs)}


# ------------------------------------------------------------------ requests
@dataclass
class ScoringJob:
    """One scoring prompt: its excerpts' texts and truths, and the answer once asked."""

    plan_index: int
    task: str                 # detection | fuzzing
    texts: list[str]
    truth: list[bool]
    messages: list[dict]
    predictions: list[int] | None = None
    failure: str | None = None


def map_concurrently(fn: Callable, items: Sequence, workers: int) -> list:
    """``[fn(x) for x in items]`` with ``workers`` threads (LLM requests wait on the
    network, not the CPU); the first exception cancels what has not started and is
    raised."""
    if not items:
        return []
    pool = ThreadPoolExecutor(max_workers=min(workers, len(items)))
    futures = [pool.submit(fn, item) for item in items]
    try:
        results = [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _explain(client: ChatClient, plan: LatentPlan, corpus: Corpus, cfg: LLMEvalConfig
             ) -> tuple[str | None, str | None]:
    """(explanation, failure) of one latent."""
    texts = [e.text(corpus, e.true_marks(cfg.mark_fraction)) for e in plan.explain]
    try:
        answer = client.complete(explain_messages(corpus.domain, texts),
                                 cfg.max_tokens_explanation)
    except RequestFailed as e:
        return None, f"explanation request failed: {e}"
    explanation = parse_explanation(answer)
    if explanation is None:
        return None, f"no explanation in the answer: {one_line(answer, 200)!r}"
    return explanation, None


def scoring_jobs(index: int, plan: LatentPlan, explanation: str, corpus: Corpus,
                 cfg: LLMEvalConfig, rng: np.random.Generator) -> list[ScoringJob]:
    """The detection and fuzzing prompts of one latent, excerpts shuffled and cut into
    prompts of ``examples_per_prompt``."""
    detection = ([(e.text(corpus), True) for e in plan.activating]
                 + [(e.text(corpus), False) for e in plan.negative])
    fuzzing = [(e.text(corpus, m), ok)
               for e, m, ok in zip(plan.activating, plan.fuzz_marks, plan.fuzz_correct)]
    jobs = []
    for task, items, build in (("detection", detection, detection_messages),
                               ("fuzzing", fuzzing, fuzzing_messages)):
        items = [items[i] for i in rng.permutation(len(items))]
        for s in range(0, len(items), cfg.examples_per_prompt):
            chunk = items[s:s + cfg.examples_per_prompt]
            texts, truth = [t for t, _ in chunk], [ok for _, ok in chunk]
            jobs.append(ScoringJob(index, task, texts, truth,
                                   build(corpus.domain, explanation, texts)))
    return jobs


def _ask(client: ChatClient, job: ScoringJob, max_tokens: int) -> ScoringJob:
    """Send one scoring prompt and record its parsed answers or why there are none."""
    try:
        answer = client.complete(job.messages, max_tokens)
    except RequestFailed as e:
        job.failure = f"{job.task} request failed: {e}"
        return job
    job.predictions = parse_binary_list(answer, len(job.texts))
    if job.predictions is None:
        job.failure = (f"{job.task} answer is not {len(job.texts)} values 0/1: "
                       f"{one_line(answer, 200)!r}")
    return job


# ------------------------------------------------------------------ results
def _latent_result(plan: LatentPlan, explanation: str | None, failure: str | None,
                   jobs: Sequence[ScoringJob], corpus: Corpus, cfg: LLMEvalConfig) -> dict:
    """One latent's entry of ``details``: its explanation, both scores, its failures, and
    every excerpt shown with its truth and the LLM's answer (to read what went wrong)."""
    result = {"latent": plan.latent, "n_active_contexts": plan.n_active,
              "max_activation": max(e.peak for e in plan.explain),
              "explanation": explanation, "failures": [failure] if failure else []}
    result["examples"] = {"explain": [e.text(corpus, e.true_marks(cfg.mark_fraction))
                                      for e in plan.explain]}
    for task in ("detection", "fuzzing"):
        mine = [j for j in jobs if j.task == task]
        predicted = [p for j in mine for p in (j.predictions or [None] * len(j.texts))]
        truth = [t for j in mine for t in j.truth]
        result[task] = binary_scores(predicted, truth) if explanation else None
        result["failures"] += [j.failure for j in mine if j.failure]
        label = "activating" if task == "detection" else "correct"
        result["examples"][task] = [{"text": t, label: ok, "prediction": p}
                                    for t, ok, p in zip([t for j in mine for t in j.texts],
                                                        truth, predicted)]
    return result


def summarize(latents: Sequence[dict], n_requests: int) -> dict:
    """Means (and spreads) over the latents that got a score; None where none did."""
    summary: dict = {"n_latents": len(latents)}
    for task in ("detection", "fuzzing"):
        scores = [r[task]["balanced_accuracy"] for r in latents
                  if r[task] and r[task]["balanced_accuracy"] is not None]
        f1 = [r[task]["f1"] for r in latents if r[task] and r[task]["f1"] is not None]
        summary[task] = float(np.mean(scores)) if scores else None
        summary[f"{task}_std"] = float(np.std(scores)) if scores else None
        summary[f"{task}_f1"] = float(np.mean(f1)) if f1 else None
        summary[f"n_scored_{task}"] = len(scores)
    summary["n_explanation_failures"] = sum(r["explanation"] is None for r in latents)
    summary["n_failures"] = sum(len(r["failures"]) for r in latents)
    summary["n_requests"] = n_requests
    return summary


def run(model, sae, model_name: str, *, llm_url: str, llm_model: str,
        api_key: str | None = None, n_latents: int = 50, seed: int = 0,
        tokens: torch.Tensor | None = None, **options) -> dict:
    """Explain ``n_latents`` latents of ``sae`` with the LLM ``llm_model`` at ``llm_url`` and
    score the explanations by detection and fuzzing (module docstring). ``api_key`` (else
    ``OPENAI_API_KEY``) is sent as a Bearer token when there is one; ``tokens`` (N, T) are
    the data of a model without an embedded corpus; ``options`` are ``LLMEvalConfig``
    fields. Returns ``{"summary", "details", "config", "seconds"}``."""
    from interp.provenance import check_dictionary

    started = time.perf_counter()
    cfg = make_config(n_latents=n_latents, seed=seed, **options)
    check_dictionary(sae, model=model, model_name=model_name)
    check_latents(cfg.latents, sae.cfg.d_sae)
    client = ChatClient(llm_url, llm_model, api_key or os.environ.get("OPENAI_API_KEY"),
                        timeout=cfg.timeout, retries=cfg.retries)
    client.check()
    corpus = load_corpus(model, model_name, cfg, tokens)
    found = census(model, sae, corpus, cfg.batch_size)
    chosen, refused = choose_latents(found, cfg)
    rng = np.random.default_rng(cfg.seed)
    plans = [plan_latent(latent, acts, corpus, cfg, rng)
             for latent, acts in zip(chosen, _chosen_acts(model, sae, corpus, chosen, cfg,
                                                          found.acts))]
    log.info("explaining %d latents with %s at %s", len(plans), llm_model, client.url)
    explained = map_concurrently(lambda p: _explain(client, p, corpus, cfg), plans,
                                 cfg.concurrency)
    jobs = [job for i, (plan, (explanation, _)) in enumerate(zip(plans, explained))
            if explanation for job in scoring_jobs(i, plan, explanation, corpus, cfg, rng)]
    map_concurrently(lambda j: _ask(client, j, cfg.max_tokens_answer), jobs, cfg.concurrency)
    latents = [_latent_result(plan, explanation, failure,
                              [j for j in jobs if j.plan_index == i], corpus, cfg)
               for i, (plan, (explanation, failure)) in enumerate(zip(plans, explained))]
    config = {**asdict(cfg), "model": model_name, "llm_url": client.url, "llm_model": llm_model,
              "window_before": corpus.before, "window_after": corpus.after,
              "n_contexts": int(corpus.tokens.shape[0]), "n_ctx": int(corpus.tokens.shape[1])}
    return {"summary": summarize(latents, len(plans) + len(jobs)),
            "details": {"latents": latents,
                        "n_eligible_latents": int(eligible(found, cfg).sum()),
                        "refused_latents": {str(k): v for k, v in refused.items()}},
            "config": config, "seconds": time.perf_counter() - started}


@torch.no_grad()
def _chosen_acts(model, sae, corpus: Corpus, chosen: Sequence[int], cfg: LLMEvalConfig,
                 all_acts: torch.Tensor | None = None) -> list[torch.Tensor]:
    """(N, T) activations of each chosen latent: from the census's ``all_acts`` (N, T, m)
    when it kept them, else by a second pass (every latent's activations over a large
    corpus do not fit in memory)."""
    if not chosen:
        return []
    if all_acts is not None:
        acts = all_acts[..., list(chosen)]
    else:
        acts = torch.cat([_batch_acts(model, sae, corpus, s, s + cfg.batch_size, chosen)
                          for s in range(0, corpus.tokens.shape[0], cfg.batch_size)])
    return [acts[..., j].contiguous() for j in range(len(chosen))]
