"""Build a feature store: stream tokens through a model and an SAE and record every latent.

For each latent the build keeps, in bounded memory (independent of the number of tokens):

- the top-n activating tokens with a token window around each and the latent's activation
  at every token of the window (``top_n`` x window per latent);
- a few samples from each interval of the latent's max activation (Neuronpedia's
  "subsample intervals"): priority sampling, one uniform random key per activation and the
  largest keys kept per (latent, interval); intervals are of the running max and samples
  are moved to their interval of the new max when it grows, so every sample lies in its
  interval of the final max and is a uniform draw from it;
- a histogram of its nonzero activations over fixed log-spaced bins, its firing count
  (density = count / tokens), sum and max;
- (token, latent) sums and counts, for "which latents fire on this token" and "which tokens
  does this latent fire on".

All of it is vectorised torch over the batch's nonzero codes: a batch's candidates for the
top-n and the samples are first filtered against the current thresholds (the n-th value,
the smallest key of the interval), so after the first batches only a handful survive and
their windows are the only ones gathered. Logit effects (decoder rows through the
unembedding) are computed at the end in chunks of latents. The result is written to DuckDB
through Arrow in a few bulk inserts (``interp.features.store`` reads it), under a hidden
temporary name beside the output that ``os.replace`` then moves into place: a build that is
killed (even by SIGKILL) leaves no partial store at the output path, and the next build of
that path removes the temporary files of writers that are no longer running.

``parse_window`` reads ``--window BEFORE,AFTER``.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.errors import DataError, unknown
from interp.version import code_version

FORMAT = "interp-feature-store"
FORMAT_VERSION = 1
FEATURES_SUBDIR = "features"
# (token, latent) pairs are accumulated in a dense table up to this many cells, else sparsely
DENSE_TOKEN_LATENT_CELLS = 2**23
_SPARSE_FLUSH = 2**22
# sparse codes are recorded in chunks of at least this many token rows
RECORD_ROWS = 2**14


@dataclass
class FeatureConfig:
    n_tokens: int
    top_n: int = 20                     # top activating examples per latent
    window: tuple[int, int] = (12, 4)   # tokens shown before and after the max token
    batch_size: int = 64                # contexts per forward pass
    quantile_bins: int = 10             # intervals of the max activation ...
    samples_per_bin: int = 3            # ... and samples kept from each
    hist_decades: tuple[int, int] = (-3, 5)  # histogram: log10 range of its bins ...
    hist_per_decade: int = 16                # ... and bins per decade (plus under/overflow)
    top_tokens: int = 20                # per latent: its top tokens and logit effects
    token_latents: int = 64             # per token: the latents kept (by total activation)
    n_ctx: int | None = None            # None: the run's (or the SAE's) context length
    skip_bos: bool = True               # position 0 (BOS) is neither counted nor ranked
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "FeatureConfig":
        if self.n_tokens <= 0:
            raise DataError(f"--tokens must be positive, got {self.n_tokens}")
        for name in ("top_n", "batch_size", "quantile_bins", "samples_per_bin",
                     "hist_per_decade", "top_tokens", "token_latents"):
            if getattr(self, name) <= 0:
                raise DataError(f"{name} must be positive, got {getattr(self, name)}")
        self.window = parse_window(self.window)
        lo, hi = self.hist_decades
        if not lo < hi:
            raise DataError(f"hist_decades must be (lo, hi) with lo < hi, got {self.hist_decades}")
        return self

    def hist_edges(self) -> np.ndarray:
        """Edges of the histogram bins: 0, the log-spaced edges, inf (bins = edges - 1)."""
        lo, hi = self.hist_decades
        inner = np.logspace(lo, hi, (hi - lo) * self.hist_per_decade + 1)
        return np.concatenate([[0.0], inner, [np.inf]])


WINDOW_FORM = "BEFORE,AFTER (tokens shown before and after the max token, both >= 0, e.g. 12,4)"


def parse_window(window) -> tuple[int, int]:
    """``--window``: "BEFORE,AFTER" (or a pair of ints) -> (before, after); anything else
    ("12", "12,", "a,b", "-1,4", "1,2,3") is a one-line DataError naming ``--window``."""
    if isinstance(window, str):
        parts: list = [p.strip() for p in window.split(",")]
    elif isinstance(window, (tuple, list)):
        parts = list(window)
    else:
        parts = [window]
    shown = window if isinstance(window, str) else ",".join(map(str, parts))
    try:
        if len(parts) != 2 or not all(isinstance(p, str) or type(p) is int for p in parts):
            raise ValueError
        before, after = (int(p) for p in parts)
    except ValueError:
        raise DataError(f"--window takes {WINDOW_FORM}; got {shown!r}") from None
    if before < 0 or after < 0:
        raise DataError(f"--window takes {WINDOW_FORM}; got {shown!r}")
    return before, after


# ------------------------------------------------------------------ SAE codes
class Codes:
    """One batch's SAE codes: sparse ``values``/``indices`` (N, K) or dense ``acts``
    (N, d_sae). Only positive activations count as firing (ksparse's negative values are
    ignored)."""

    def __init__(self, values: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                 acts: torch.Tensor | None = None):
        self.values, self.indices, self.acts = values, indices, acts
        self._idx32: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return (self.acts if self.acts is not None else self.values).shape[0]

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, latents, values) of every positive activation, row-major."""
        if self.acts is not None:
            rows, lats = (self.acts > 0).nonzero(as_tuple=True)
            return rows, lats, self.acts[rows, lats]
        mask = self.values > 0
        rows = mask.nonzero(as_tuple=True)[0]
        return rows, self.indices[mask], self.values[mask]

    def at(self, rows: torch.Tensor, lats: torch.Tensor) -> torch.Tensor:
        """Activation of latent ``lats[i]`` at row ``rows[i]`` (0 where it is not active)."""
        if self.acts is not None:
            return self.acts[rows, lats].clamp_min(0)
        if self._idx32 is None:  # int32 halves the gathered bytes
            self._idx32 = self.indices.to(torch.int32)
        hit = self._idx32[rows] == lats.to(torch.int32)[:, None]
        return torch.where(hit, self.values[rows], 0.0).sum(1).clamp_min(0)


def encode(sae, x: torch.Tensor) -> Codes:
    """The SAE's inference codes of ``x`` (N, d_in), without decoding dense archs."""
    arch = sae.cfg.arch
    if arch in ("relu", "jumprelu") or arch in ("batchtopk", "matryoshka") and not sae.training:
        if arch in ("batchtopk", "matryoshka") and float(sae.threshold) < 0:
            sae(x[:1])  # raises its "no inference threshold yet" error
        z = sae.encode_pre(x)
        if arch == "relu":
            return Codes(acts=z.relu())
        theta = sae.log_threshold.exp() if arch == "jumprelu" else sae.threshold
        return Codes(acts=z * (z > theta))
    out = sae(x)
    if out.values is not None:
        return Codes(values=out.values, indices=out.indices)
    return Codes(acts=out.dense())


def rank_within(groups: torch.Tensor, scores: torch.Tensor, n_groups: int,
                descending: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """An order of the entries by (group, score) and each ordered entry's rank in its
    group: ``order, rank`` with ``groups[order]`` ascending and scores descending within."""
    if scores.dtype == torch.float32 and n_groups < 2**29:
        # one sort of an int64 key: group in the high bits, then the float's bits mapped to
        # an order-preserving integer (negative floats have their magnitude bits flipped)
        s = scores.contiguous().view(torch.int32).to(torch.int64)
        s = torch.where(s < 0, s ^ 0x7FFFFFFF, s)
        s = (2**31 - s) if descending else (s + 2**31)
        order = torch.sort(groups.to(torch.int64) * 2**33 + s).indices
    else:
        o1 = torch.argsort(scores, descending=descending, stable=True)
        o2 = torch.argsort(groups[o1], stable=True)
        order = o1[o2]
    g = groups[order]
    counts = torch.bincount(g, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[g]
    return order, rank


# ------------------------------------------------------------------ streaming statistics
class FeatureAccumulator:
    """Streaming per-latent statistics over batches of (contexts, codes)."""

    def __init__(self, d_sae: int, d_vocab: int, n_ctx: int, cfg: FeatureConfig):
        self.cfg, self.d_sae, self.d_vocab, self.n_ctx = cfg, d_sae, d_vocab, n_ctx
        self.first_pos = 1 if cfg.skip_bos else 0
        self.kept = n_ctx - self.first_pos
        if self.kept < 1:
            raise DataError(f"n_ctx {n_ctx} leaves no position to record")
        before, after = cfg.window
        self.offsets = torch.arange(-before, after + 1)
        W = self.W = before + after + 1
        n, Q, S = cfg.top_n, cfg.quantile_bins, cfg.samples_per_bin
        self.n_tokens = 0
        self.n_contexts = 0
        self.token_counts = torch.zeros(d_vocab, dtype=torch.int64)
        self.count = torch.zeros(d_sae, dtype=torch.int64)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae, dtype=torch.float32)
        edges = cfg.hist_edges()
        self.hist_inner = torch.tensor(edges[1:-1], dtype=torch.float32)
        self.n_bins = len(edges) - 1
        self.hist = torch.zeros(d_sae, self.n_bins, dtype=torch.int64)
        # top-n: values sorted per latent (descending; empty slots at -inf) with their
        # context, position and the slot of their window in a pool that never moves
        self.top_val = torch.full((d_sae, n), -math.inf)
        self.top_ctx = torch.full((d_sae, n), -1, dtype=torch.int64)
        self.top_pos = torch.zeros(d_sae, n, dtype=torch.int32)
        self.top_slot = torch.arange(n, dtype=torch.int64).repeat(d_sae, 1)
        self.top_tok = torch.full((d_sae * n, W), -1, dtype=torch.int32)
        self.top_act = torch.zeros(d_sae * n, W)
        # interval samples: keys sorted per (latent, interval) (descending; empty: -1); a
        # latent's Q * S window slots are shared by its intervals (samples change interval)
        self.q_key = torch.full((d_sae, Q, S), -1.0)
        self.q_val = torch.zeros(d_sae, Q, S)
        self.q_ctx = torch.full((d_sae, Q, S), -1, dtype=torch.int64)
        self.q_pos = torch.zeros(d_sae, Q, S, dtype=torch.int32)
        self.q_slot = torch.zeros(d_sae, Q, S, dtype=torch.int64)
        self.q_tok = torch.full((d_sae * Q * S, W), -1, dtype=torch.int32)
        self.q_act = torch.zeros(d_sae * Q * S, W)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # (token, latent) sums and counts
        self.tl_dense = d_vocab * d_sae <= DENSE_TOKEN_LATENT_CELLS
        if self.tl_dense:
            self.tl_sum = torch.zeros(d_vocab * d_sae, dtype=torch.float64)
            self.tl_cnt = torch.zeros(d_vocab * d_sae, dtype=torch.int64)
        else:
            self.tl_keys = torch.zeros(0, dtype=torch.int64)
            self.tl_sum = torch.zeros(0, dtype=torch.float64)
            self.tl_cnt = torch.zeros(0, dtype=torch.int64)
            self._buf: list[tuple[torch.Tensor, torch.Tensor]] = []
            self._buf_len = 0

    # ---------------------------------------------------------------- per batch
    def add(self, tokens: torch.Tensor, codes: Codes) -> None:
        """One batch: ``tokens`` (B, n_ctx) and the codes of its kept positions, row
        ``b * kept + (p - first_pos)``."""
        B, T = tokens.shape
        if T != self.n_ctx or codes.n_rows != B * self.kept:
            raise DataError(f"batch of {tuple(tokens.shape)} tokens with {codes.n_rows} code "
                            f"rows; expected n_ctx={self.n_ctx} and {B * self.kept} rows")
        tokens = tokens.to(torch.int64)
        row_tok = tokens[:, self.first_pos:].reshape(-1)
        self.token_counts += torch.bincount(row_tok, minlength=self.d_vocab)[:self.d_vocab]
        rows, lats, vals = codes.entries()
        ctx0 = self.n_contexts
        self.n_contexts += B
        self.n_tokens += B * self.kept
        if rows.numel() == 0:
            return
        vals = vals.float()
        ones = torch.ones_like(lats)
        self.count.index_add_(0, lats, ones)
        self.sum.index_add_(0, lats, vals.double())
        old_max = self.max.clone()
        self.max.scatter_reduce_(0, lats, vals, "amax")
        bins = torch.bucketize(vals, self.hist_inner, right=True)
        self.hist.view(-1).index_add_(0, lats * self.n_bins + bins, ones)
        self._add_token_latent(row_tok[rows] * self.d_sae + lats, vals)
        self._merge_top(rows, lats, vals, tokens, codes, ctx0)
        self._merge_samples(rows, lats, vals, old_max, tokens, codes, ctx0)

    def _windows(self, rows: torch.Tensor, lats: torch.Tensor, tokens: torch.Tensor,
                 codes: Codes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(context in batch, position, window token ids (C, W), window activations (C, W))
        of code rows ``rows`` for latents ``lats``; outside the context tokens are -1."""
        b = rows // self.kept
        p = rows % self.kept + self.first_pos
        q = p[:, None] + self.offsets[None, :]
        inside = (q >= 0) & (q < self.n_ctx)
        qc = q.clamp(0, self.n_ctx - 1)
        tok = tokens[b[:, None], qc].to(torch.int32).masked_fill_(~inside, -1)
        coded = inside & (q >= self.first_pos)
        r2 = b[:, None] * self.kept + (qc - self.first_pos).clamp_min(0)
        acts = codes.at(r2.reshape(-1), lats.repeat_interleave(self.W)).view(-1, self.W)
        acts = acts.float().masked_fill_(~coded, 0.0)
        return b, p, tok, acts

    def _merge_top(self, rows, lats, vals, tokens, codes, ctx0) -> None:
        n = self.cfg.top_n
        keep = vals > self.top_val[lats, n - 1]
        if not bool(keep.any()):
            return
        rows, lats, vals = rows[keep], lats[keep], vals[keep]
        U, inv = torch.unique(lats, return_inverse=True)
        u = U.numel()
        old = u * n
        groups = torch.cat([torch.arange(u).repeat_interleave(n), inv])
        scores = torch.cat([self.top_val[U].reshape(-1), vals])
        order, rank = rank_within(groups, scores, u)
        # every group holds its n old entries plus at least one candidate: n kept each
        in_top = rank < n
        sel = order[in_top].view(u, n)
        new = sel >= old
        src_old = sel.clamp(max=old - 1)
        old_slot = self.top_slot[U].reshape(-1)
        ctx = self.top_ctx[U].reshape(-1)[src_old]
        pos = self.top_pos[U].reshape(-1)[src_old]
        slot = old_slot[src_old]
        c = sel[new] - old
        if c.numel():
            # a latent's evicted old entries and its new ones are equally many: the new
            # ones take over the evicted ones' window slots (both lists in latent order)
            out = order[~in_top]
            freed = old_slot[out[out < old]]
            b, p, wtok, wact = self._windows(rows[c], lats[c], tokens, codes)
            ctx[new] = b + ctx0
            pos[new] = p.to(torch.int32)
            slot[new] = freed
            pool = U[inv[c]] * n + freed
            self.top_tok[pool] = wtok
            self.top_act[pool] = wact
        self.top_val[U] = scores[sel]
        self.top_ctx[U], self.top_pos[U], self.top_slot[U] = ctx, pos, slot

    def _merge_samples(self, rows, lats, vals, old_max, tokens, codes, ctx0) -> None:
        Q, S = self.cfg.quantile_bins, self.cfg.samples_per_bin
        QS = Q * S
        keys = torch.rand(vals.numel(), generator=self.gen)
        bins = (vals / self.max[lats] * Q).long().clamp_(0, Q - 1)
        changed = self.max > old_max  # these latents' samples change interval: redo them
        keep = (keys > self.q_key[lats, bins, S - 1]) | changed[lats]
        if not bool(keep.any()):
            return
        rows, lats, vals, keys, bins = rows[keep], lats[keep], vals[keep], keys[keep], bins[keep]
        U = torch.unique(torch.cat([lats, changed.nonzero(as_tuple=True)[0]]))
        u = U.numel()
        where = torch.full((self.d_sae,), -1, dtype=torch.int64)
        where[U] = torch.arange(u)
        o_key = self.q_key[U].reshape(-1)
        o_idx = (o_key >= 0).nonzero(as_tuple=True)[0]
        n_old = o_idx.numel()
        o_u = o_idx // QS
        o_val = self.q_val[U].reshape(-1)[o_idx]
        o_bin = (o_val / self.max[U[o_u]] * Q).long().clamp_(0, Q - 1)
        groups = torch.cat([o_u * Q + o_bin, where[lats] * Q + bins])
        scores = torch.cat([o_key[o_idx], keys])
        order, rank = rank_within(groups, scores, u * Q)
        in_s = rank < S
        kept = order[in_s]
        g, r = groups[kept], rank[in_s]
        is_new = kept >= n_old
        old_k = kept[~is_new]
        K = kept.numel()
        key = scores[kept]
        val = torch.cat([o_val, vals])[kept]
        ctx = torch.empty(K, dtype=torch.int64)
        pos = torch.empty(K, dtype=torch.int32)
        slot = torch.empty(K, dtype=torch.int64)
        ctx[~is_new] = self.q_ctx[U].reshape(-1)[o_idx[old_k]]
        pos[~is_new] = self.q_pos[U].reshape(-1)[o_idx[old_k]]
        slot[~is_new] = self.q_slot[U].reshape(-1)[o_idx[old_k]]
        c = kept[is_new] - n_old
        if c.numel():
            # new samples take a latent's window slots that no kept sample holds
            used = torch.zeros(u, QS, dtype=torch.bool)
            used[o_u[old_k], slot[~is_new]] = True
            need = torch.bincount(g[is_new] // Q, minlength=u)
            free = ~used
            take = free & (free.cumsum(1) <= need[:, None])
            fu, fs = take.nonzero(as_tuple=True)  # latent-major, as the new samples are
            new_u = g[is_new] // Q
            order_new = torch.argsort(new_u, stable=True)
            b, p, wtok, wact = self._windows(rows[c], lats[c], tokens, codes)
            idx_new = is_new.nonzero(as_tuple=True)[0][order_new]
            ctx[idx_new] = b[order_new] + ctx0
            pos[idx_new] = p[order_new].to(torch.int32)
            slot[idx_new] = fs
            pool = U[fu] * QS + fs
            self.q_tok[pool] = wtok[order_new]
            self.q_act[pool] = wact[order_new]
        self.q_key[U] = -1.0
        lat, qb = U[g // Q], g % Q
        self.q_key[lat, qb, r] = key
        self.q_val[lat, qb, r] = val
        self.q_ctx[lat, qb, r] = ctx
        self.q_pos[lat, qb, r] = pos
        self.q_slot[lat, qb, r] = slot

    def _add_token_latent(self, keys: torch.Tensor, vals: torch.Tensor) -> None:
        if self.tl_dense:
            self.tl_sum.index_add_(0, keys, vals.double())
            self.tl_cnt.index_add_(0, keys, torch.ones_like(keys))
            return
        self._buf.append((keys, vals.double()))
        self._buf_len += keys.numel()
        if self._buf_len >= _SPARSE_FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self.tl_dense or not self._buf:
            return
        keys = torch.cat([self.tl_keys] + [k for k, _ in self._buf])
        sums = torch.cat([self.tl_sum] + [v for _, v in self._buf])
        cnts = torch.cat([self.tl_cnt] + [torch.ones_like(k) for k, _ in self._buf])
        self._buf, self._buf_len = [], 0
        uniq, inv = torch.unique(keys, return_inverse=True)
        self.tl_keys = uniq
        self.tl_sum = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, sums)
        self.tl_cnt = torch.zeros(uniq.numel(), dtype=torch.int64).index_add_(0, inv, cnts)

    # ---------------------------------------------------------------- results
    def token_latent_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token ids, latents, counts, sums) of every (token, latent) pair that fired."""
        if self.tl_dense:
            keys = self.tl_cnt.nonzero(as_tuple=True)[0]
            cnt, sums = self.tl_cnt[keys], self.tl_sum[keys]
        else:
            self._flush()
            keys, cnt, sums = self.tl_keys, self.tl_cnt, self.tl_sum
        return keys // self.d_sae, keys % self.d_sae, cnt, sums

    def tables(self) -> dict:
        """Every result as numpy arrays (see :func:`write_store` for the tables)."""
        d, n, Q, S, W = (self.d_sae, self.cfg.top_n, self.cfg.quantile_bins,
                         self.cfg.samples_per_bin, self.W)
        count = self.count.numpy()
        nt = max(self.n_tokens, 1)
        out = {"count": count, "density": count / nt,
               "mean_act": np.where(count > 0, self.sum.numpy() / np.maximum(count, 1), 0.0),
               "mean_all": self.sum.numpy() / nt, "max_act": self.max.numpy(),
               "hist": self.hist.numpy()}
        # examples: top (bin -1) then interval samples, only filled slots
        lat_t = torch.arange(d).repeat_interleave(n)
        rank_t = torch.arange(n).repeat(d)
        ok_t = self.top_ctx.reshape(-1) >= 0
        lat_q = torch.arange(d).repeat_interleave(Q * S)
        bin_q = torch.arange(Q).repeat_interleave(S).repeat(d)
        key_q = self.q_key.reshape(-1)
        ok_q = key_q >= 0
        # samples of an interval in order of value (their keys are random)
        val_q = self.q_val.reshape(-1)
        grp = lat_q * Q + bin_q
        order_q, rank_q = rank_within(grp[ok_q], val_q[ok_q], d * Q)
        idx_q = ok_q.nonzero(as_tuple=True)[0][order_q]
        top_pool = (lat_t * n + self.top_slot.reshape(-1))[ok_t]
        q_pool = lat_q[idx_q] * (Q * S) + self.q_slot.reshape(-1)[idx_q]
        out["examples"] = {
            "latent": torch.cat([lat_t[ok_t], lat_q[idx_q]]).numpy().astype(np.int32),
            "kind": np.array(["top"] * int(ok_t.sum()) + ["quantile"] * idx_q.numel()),
            "bin": torch.cat([torch.full((int(ok_t.sum()),), -1), bin_q[idx_q]]).numpy()
            .astype(np.int16),
            "rank": torch.cat([rank_t[ok_t], rank_q]).numpy().astype(np.int16),
            "value": torch.cat([self.top_val.reshape(-1)[ok_t], val_q[idx_q]]).numpy(),
            "context": torch.cat([self.top_ctx.reshape(-1)[ok_t],
                                  self.q_ctx.reshape(-1)[idx_q]]).numpy(),
            "pos": torch.cat([self.top_pos.reshape(-1)[ok_t],
                              self.q_pos.reshape(-1)[idx_q]]).numpy(),
            "tokens": torch.cat([self.top_tok[top_pool], self.q_tok[q_pool]]).numpy(),
            "acts": torch.cat([self.top_act[top_pool], self.q_act[q_pool]]).numpy(),
        }
        # features by token, and tokens by feature
        tok, lat, cnt, sums = self.token_latent_pairs()
        order, rank = rank_within(tok, sums, self.d_vocab)
        sel = order[rank < self.cfg.token_latents]
        out["token_latents"] = {"token_id": tok[sel].numpy().astype(np.int32),
                                "rank": rank[rank < self.cfg.token_latents].numpy()
                                .astype(np.int32),
                                "latent": lat[sel].numpy().astype(np.int32),
                                "count": cnt[sel].numpy(), "sum": sums[sel].numpy()}
        order, rank = rank_within(lat, sums, d)
        m = rank < self.cfg.top_tokens
        sel = order[m]
        out["latent_tokens"] = {"latent": lat[sel].numpy(), "token_id": tok[sel].numpy(),
                                "count": cnt[sel].numpy(), "sum": sums[sel].numpy()}
        out["token_counts"] = self.token_counts.numpy()
        return out


# ------------------------------------------------------------------ logit effects
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def output_directions(sae, model, hook: str) -> torch.Tensor | None:
    """(d_sae, d_model): each decoder row as the residual-stream direction it writes,
    through ln_final's centering and gain (its 1/rms scale ignored); None when the hook's
    units do not map to the residual stream linearly."""
    D = sae.W_dec.detach().float().cpu()
    d_model = model.cfg.d_model
    m = _BLOCK.match(hook)
    if hook.endswith("mlp.hook_post") and m and D.shape[1] == model.cfg.d_mlp:
        D = D @ model.blocks[int(m.group(1))].mlp.W_out.detach().float().cpu()
    elif hook.endswith("attn.hook_z") and m:
        W_O = model.blocks[int(m.group(1))].attn.W_O.detach().float().cpu()  # (H, dh, d_model)
        if D.shape[1] != W_O.shape[0] * W_O.shape[1]:
            return None
        D = D @ W_O.reshape(-1, d_model)
    elif D.shape[1] != d_model:
        return None
    if not hook.startswith("ln_final"):
        norm = getattr(model.cfg, "normalization_type", None)
        if norm in ("LN", "LNPre"):
            D = D - D.mean(1, keepdim=True)
        if norm in ("LN", "RMS") and hasattr(model, "ln_final") and hasattr(model.ln_final, "w"):
            D = D * model.ln_final.w.detach().float().cpu()
    return D


def logit_effects(sae, model, hook: str, m: int, chunk: int = 1024
                  ) -> dict[str, np.ndarray] | None:
    """Top ``m`` boosted and suppressed tokens of every latent: ``(D @ W_U)`` in chunks of
    latents, never the whole (d_sae, d_vocab) product at once."""
    D = output_directions(sae, model, hook)
    if D is None:
        return None
    W_U = model.W_U.detach().float().cpu()
    m = min(m, W_U.shape[1])
    parts = {k: [] for k in ("pos_ids", "pos_values", "neg_ids", "neg_values")}
    for s in range(0, D.shape[0], chunk):
        eff = D[s:s + chunk] @ W_U
        top = eff.topk(m, dim=1)
        bot = eff.topk(m, dim=1, largest=False)
        parts["pos_ids"].append(top.indices)
        parts["pos_values"].append(top.values)
        parts["neg_ids"].append(bot.indices)
        parts["neg_values"].append(bot.values)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


# ------------------------------------------------------------------ build
def stream_features(model, sae, hook: str, source, cfg: FeatureConfig,
                    progress: bool = True) -> tuple[FeatureAccumulator, dict]:
    """Run ``cfg.n_tokens`` tokens of ``source`` through ``model`` up to ``hook`` and the SAE;
    returns the accumulator and timing information."""
    from interp.activations.harvest import stop_layer
    from interp.data.sources import batches, prefetch

    n_ctx = cfg.n_ctx or min(model.cfg.n_ctx, 128)
    acc = FeatureAccumulator(sae.cfg.d_sae, model.cfg.d_vocab, n_ctx, cfg)
    n_contexts = math.ceil(cfg.n_tokens / acc.kept)
    stop = stop_layer([hook], model.cfg.n_layers)
    captured: dict[str, torch.Tensor] = {}
    first = acc.first_pos

    def capture(act, hook):
        captured["x"] = act[:, first:]

    bar = tqdm(total=n_contexts * acc.kept, unit="tok", unit_scale=True, desc="features",
               disable=not progress)
    # sparse codes of several forward batches are recorded together: fewer, larger ops
    pending: list[tuple[torch.Tensor, Codes]] = []
    pending_rows = 0

    def record() -> None:
        nonlocal pending_rows
        if len(pending) == 1:
            acc.add(*pending[0])
        elif pending:
            acc.add(torch.cat([t for t, _ in pending]),
                    Codes(values=torch.cat([c.values for _, c in pending]),
                          indices=torch.cat([c.indices for _, c in pending])))
        pending.clear()
        pending_rows = 0

    t0 = time.perf_counter()
    model_seconds = 0.0  # the forward + encode share of the stream (the rest: recording)
    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook, capture)]):
        for tokens in prefetch(batches(source, n_ctx, cfg.batch_size, max_contexts=n_contexts)):
            tm = time.perf_counter()
            model(tokens.to(model.cfg.device), stop_at_layer=stop)
            x = captured.pop("x")
            x = x.reshape(-1, sae.cfg.d_in).to(sae.W_dec.device)
            codes = encode(sae, x)
            if x.is_cuda:
                torch.cuda.synchronize()
            model_seconds += time.perf_counter() - tm
            if codes.acts is not None:
                record()
                codes.acts = codes.acts.cpu()
                acc.add(tokens, codes)
            else:
                codes.values, codes.indices = codes.values.cpu(), codes.indices.cpu()
                pending.append((tokens, codes))
                pending_rows += codes.n_rows
                if pending_rows >= RECORD_ROWS:
                    record()
            bar.update(tokens.shape[0] * acc.kept)
        record()
    bar.close()
    if acc.n_contexts < n_contexts:
        print(f"note: the token source ran out after {acc.n_contexts} contexts "
              f"({n_contexts} requested)")
    return acc, {"stream_seconds": time.perf_counter() - t0, "model_seconds": model_seconds,
                 "n_ctx": n_ctx}


def build_feature_store(model, sae, hook: str, source, cfg: FeatureConfig, out: str | Path,
                        meta: dict | None = None, progress: bool = True) -> Path:
    """Stream, then write the store to ``out`` (a .duckdb file, replaced atomically)."""
    cfg.validate()
    check_sae_fits(model, sae, hook, cfg.n_ctx or min(model.cfg.n_ctx, 128))
    t0 = time.perf_counter()
    acc, info = stream_features(model, sae, hook, source, cfg, progress)
    with torch.inference_mode():
        tables = acc.tables()
        logits = logit_effects(sae, model, hook, cfg.top_tokens)
    model_name = (meta or {}).get("model") or getattr(model, "interp_meta", {}).get("name") \
        or model.cfg.model_name
    from interp.models import token_strings

    vocab = token_strings(str(model_name), range(model.cfg.d_vocab))
    metadata = {
        "format": FORMAT, "version": FORMAT_VERSION, "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": str(model_name),
        "hook": hook, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "arch": sae.cfg.arch,
        "d_vocab": model.cfg.d_vocab, "n_tokens": acc.n_tokens, "n_contexts": acc.n_contexts,
        "n_ctx": info["n_ctx"], "first_pos": acc.first_pos,
        "source": getattr(source, "describe", lambda: str(source))(),
        "config": {k: v for k, v in asdict(cfg).items() if k != "device"},
        "hist_edges": cfg.hist_edges().tolist(), "logit_effects": logits is not None,
        "stream_seconds": info["stream_seconds"], "model_seconds": info["model_seconds"],
        **(meta or {}),
    }
    metadata["build_seconds"] = time.perf_counter() - t0  # written last, see write_store
    return write_store(out, metadata, tables, logits, vocab, t0)


def check_sae_fits(model, sae, hook: str, n_ctx: int) -> None:
    """The SAE's hook is a hook of the model and its width is the SAE's d_in."""
    from interp.activations.harvest import probe_hook_widths

    if hook not in model.hook_dict:
        raise DataError(f"the SAE reads {hook!r}, which is not a hook of this model "
                        f"({model.cfg.model_name}); " +
                        str(unknown("hook", hook, list(model.hook_dict))))
    width = probe_hook_widths(model, [hook], n_ctx)[hook]
    if width != sae.cfg.d_in:
        raise DataError(f"the model's {hook} has width {width}, but the SAE takes "
                        f"d_in={sae.cfg.d_in}: this SAE was not trained on this model's hook")


def _list_array(values: np.ndarray, lengths: np.ndarray | None = None):
    """An Arrow list column from a (rows, width) array, or its first ``lengths`` entries."""
    import pyarrow as pa

    rows, width = values.shape
    if lengths is None:
        offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
        flat = values.reshape(-1)
    else:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        mask = np.arange(width)[None, :] < lengths[:, None]
        flat = values[mask]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat))


def temp_path(out: Path, pid: int | None = None) -> Path:
    """Where the store for ``out`` is written before ``os.replace`` moves it there: a hidden
    file beside it named with the writer's PID (DuckDB adds ``.wal`` and maybe ``.tmp``)."""
    return out.with_name(f".{out.name}.tmp-{os.getpid() if pid is None else pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove what a killed writer of ``out`` left (its temp file, WAL and spill folder),
    i.e. the temp files beside ``out`` whose PID is not a live process; the removed paths."""
    import shutil

    removed = []
    prefix = f".{out.name}.tmp-"
    for p in out.parent.iterdir() if out.parent.is_dir() else []:
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_store(out: str | Path, metadata: dict, tables: dict, logits: dict | None,
                vocab: list[str], t0: float | None = None) -> Path:
    """Write the DuckDB file (see ``interp.features.store`` for the schema)."""
    import duckdb
    import pyarrow as pa

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    remove_stale_temps(out)
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)
    d = len(tables["count"])
    # features: one row per latent, every list the page needs
    hist = tables["hist"]
    nz = hist > 0
    any_nz = nz.any(1)
    first = np.where(any_nz, nz.argmax(1), 0)
    last = np.where(any_nz, hist.shape[1] - 1 - nz[:, ::-1].argmax(1), -1)
    lengths = (last - first + 1).clip(min=0)
    cols = np.arange(hist.shape[1])
    src = (first[:, None] + cols[None, :]).clip(max=hist.shape[1] - 1)
    shifted = np.take_along_axis(hist, src, 1)
    lt = tables["latent_tokens"]
    lt_order = np.lexsort((-lt["sum"], lt["latent"]))
    lt_counts = np.bincount(lt["latent"], minlength=d)
    feats = {
        "latent": pa.array(np.arange(d, dtype=np.int32)),
        "count": pa.array(tables["count"].astype(np.int64)),
        "density": pa.array(tables["density"].astype(np.float64)),
        "mean_act": pa.array(tables["mean_act"].astype(np.float64)),
        "mean_all": pa.array(tables["mean_all"].astype(np.float64)),
        "max_act": pa.array(tables["max_act"].astype(np.float32)),
        "hist_first": pa.array(first.astype(np.int32)),
        "hist_counts": _list_array(shifted.astype(np.int64), lengths),
    }
    for name, key in (("top_token_ids", "token_id"), ("top_token_counts", "count"),
                      ("top_token_sums", "sum")):
        vals = lt[key][lt_order]
        offsets = np.concatenate([[0], np.cumsum(lt_counts)]).astype(np.int32)
        feats[name] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                               pa.array(vals.astype(
                                                   np.int32 if key == "token_id" else
                                                   np.int64 if key == "count" else np.float64)))
    if logits is not None:
        feats["logit_pos_ids"] = _list_array(logits["pos_ids"].astype(np.int32))
        feats["logit_pos_values"] = _list_array(logits["pos_values"].astype(np.float32))
        feats["logit_neg_ids"] = _list_array(logits["neg_ids"].astype(np.int32))
        feats["logit_neg_values"] = _list_array(logits["neg_values"].astype(np.float32))
    features = pa.table(feats)
    ex = tables["examples"]
    inside = ex["tokens"] >= 0
    w_first = inside.argmax(1)
    w_len = inside.sum(1)
    W = ex["tokens"].shape[1]
    src = (w_first[:, None] + np.arange(W)[None, :]).clip(max=W - 1)
    before = metadata["config"]["window"][0]
    examples = pa.table({
        "latent": pa.array(ex["latent"].astype(np.int32)),
        "kind": pa.array(ex["kind"]),
        "bin": pa.array(ex["bin"].astype(np.int16)),
        "rank": pa.array(ex["rank"].astype(np.int16)),
        "value": pa.array(ex["value"].astype(np.float32)),
        "context": pa.array(ex["context"].astype(np.int64)),
        "pos": pa.array(ex["pos"].astype(np.int32)),
        "window_start": pa.array((ex["pos"] - before + w_first).astype(np.int32)),
        "token_ids": _list_array(np.take_along_axis(ex["tokens"], src, 1), w_len),
        "acts": _list_array(np.take_along_axis(ex["acts"], src, 1).astype(np.float32), w_len),
    })
    tl = tables["token_latents"]
    token_latents = pa.table({k: pa.array(v) for k, v in tl.items()})
    vocab_t = pa.table({"token_id": pa.array(np.arange(len(vocab), dtype=np.int32)),
                        "token": pa.array(vocab, pa.string()),
                        "count": pa.array(tables["token_counts"].astype(np.int64))})
    con = duckdb.connect(str(tmp))
    try:
        con.execute("CREATE TABLE metadata (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.register("features_arrow", features)
        con.execute("CREATE TABLE features AS SELECT * FROM features_arrow ORDER BY latent")
        con.register("examples_arrow", examples)
        con.execute("CREATE TABLE examples AS SELECT * FROM examples_arrow "
                    "ORDER BY latent, kind DESC, bin, rank")
        con.register("token_latents_arrow", token_latents)
        con.execute("CREATE TABLE token_latents AS SELECT * FROM token_latents_arrow "
                    "ORDER BY token_id, rank")
        con.register("vocab_arrow", vocab_t)
        con.execute("CREATE TABLE vocab AS SELECT * FROM vocab_arrow ORDER BY token_id")
        con.execute("CREATE UNIQUE INDEX features_latent ON features (latent)")
        con.execute("CREATE INDEX examples_latent ON examples (latent)")
        con.execute("CREATE INDEX token_latents_token ON token_latents (token_id)")
        if t0 is not None:
            metadata["build_seconds"] = time.perf_counter() - t0
        con.executemany("INSERT INTO metadata VALUES (?, ?)",
                        [(k, json.dumps(v)) for k, v in metadata.items()])
        con.execute("CHECKPOINT")
    except BaseException:
        con.close()
        for p in (tmp, Path(str(tmp) + ".wal")):
            p.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------ runs
def resolve_run(run: str | Path) -> tuple[Path, dict]:
    """A run folder and its run.json; an unknown run names the runs that exist."""
    path = Path(run)
    if not (path / "run.json").exists():
        root = path.parent if path.parent != Path("") else Path(".")
        existing = sorted(str(p.parent) for p in root.glob("*/run.json"))
        near = ", ".join(existing[:8]) if existing else f"none under {root}/"
        from interp.errors import UnknownNameError

        raise UnknownNameError(f"unknown run {str(run)!r}: no run.json there (runs: {near}); "
                               f"create one with `interp harvest --out {run} ...`")
    try:
        return path, json.loads((path / "run.json").read_text())
    except json.JSONDecodeError as e:
        from interp.errors import CorruptArtifactError

        raise CorruptArtifactError(f"{path / 'run.json'} is not valid JSON ({e})") from e


def resolve_sae(spec: str, run_dir: Path | None = None):
    """(SAE, short name) from a folder, a shipped SAE's registry name, or a folder name under
    ``RUN/saes/``."""
    from interp.models.zoo import REPO_ROOT
    from interp.sae.io import load_sae
    from interp.sae.release import load_pretrained, registry

    path = Path(spec)
    if path.is_dir():
        sae = load_sae(path)
        folder = path.resolve()
        for root in ([run_dir.resolve() / "saes"] if run_dir else []) + [REPO_ROOT / "saes"]:
            if folder.is_relative_to(root):
                return sae, "--".join(folder.relative_to(root).parts)
        return sae, folder.name
    if spec in registry():
        return load_pretrained(spec), spec.replace("/", "--")
    if run_dir is not None and (run_dir / "saes" / spec / "cfg.json").exists():
        return load_sae(run_dir / "saes" / spec), spec.replace("/", "--")
    names = list(registry())
    if run_dir is not None:
        names = sorted(p.parent.name for p in run_dir.glob("saes/*/cfg.json")) + names
    raise unknown("SAE (a folder, a shipped SAE's name, or a folder name in RUN/saes)",
                  spec, names)


def default_out(run_dir: Path, sae_name: str) -> Path:
    return run_dir / FEATURES_SUBDIR / f"{sae_name}.duckdb"


def build_for_run(run: str | Path | None, sae: str, cfg: FeatureConfig,
                  out: str | Path | None = None, source: str | None = None,
                  progress: bool = True) -> Path:
    """``interp features``: the run's model and token source (or ``source``), the SAE's hook;
    writes ``RUN/features/<sae>.duckdb`` unless ``out`` is given."""
    from interp.activations.harvest import default_source
    from interp.data.sources import check_fits, make_source
    from interp.models import load
    from interp.provenance import check_dictionary

    cfg.validate()
    run_dir, run_meta = resolve_run(run) if run is not None else (None, {})
    sae_model, sae_name = resolve_sae(sae, run_dir)
    md = sae_model.cfg.metadata or {}
    hook = md.get("hook_name")
    if not hook:
        raise DataError(f"the SAE {sae} does not record its hook (metadata hook_name)")
    model_name = run_meta.get("model") or md.get("model_name")
    if not model_name:
        raise DataError(f"the SAE {sae} does not record its model: give --run")
    if out is None:
        if run_dir is None:
            raise DataError("give --out (or --run, whose features/ folder is the default)")
        out = default_out(run_dir, sae_name)
    if run_meta.get("hooks") and hook not in run_meta["hooks"]:
        print(f"note: the run harvested {run_meta['hooks']}; the SAE reads {hook} (the model "
              f"computes it)")
    model = load(model_name, device=cfg.device)
    check_dictionary(sae_model, name=sae, model=model, model_name=model_name, hook=hook)
    if cfg.n_ctx is None:
        n_ctx = None
        manifest = run_dir / "activations" / "manifest.json" if run_dir else None
        if manifest is not None and manifest.exists():
            n_ctx = json.loads(manifest.read_text()).get("n_ctx")
        n_ctx = n_ctx or md.get("context_size") or 128
        cfg.n_ctx = int(min(n_ctx, model.cfg.n_ctx))
    if source:
        src = make_source(source, model=model)
    elif run_meta.get("dataset"):
        from interp.data.sources import from_description

        src = from_description(run_meta["dataset"], model)
    else:
        src = make_source(default_source(model_name), model=model)
    check_fits(src, model, cfg.n_ctx, label=model_name)
    sae_model = sae_model.to(cfg.device)
    meta = {"run": str(run_dir) if run_dir else None, "sae": str(sae), "sae_name": sae_name,
            "model": str(model_name)}
    return build_feature_store(model, sae_model, hook, src, cfg, out, meta, progress)
