"""Streaming per-latent statistics of SAE codes, in memory independent of the number of tokens.

Letters in shapes: L latents (d_sae), V tokens of the vocabulary (d_vocab), N = ``top_n``,
Q = ``quantile_bins`` (intervals of a latent's max activation), S = ``samples_per_bin``,
W = before + 1 + after (a window's width), C entries (positive activations) of a batch.
A batch is ``tokens`` (B, n_ctx) and the codes of its recorded positions (position 0, BOS,
is skipped when ``skip_bos``): code row ``b * kept + (p - first_pos)``.

:class:`FeatureAccumulator` keeps, for each latent:

- its firing count (L,), activation sum (L,) and max (L,), and a histogram (L, bins) of its
  nonzero activations over the fixed bins of ``FeatureConfig.hist_edges``;
- :class:`TopExamples`: its N largest activations (L, N) with their context and position
  and a window of W tokens around each, with the latent's activation at every window token;
- :class:`IntervalSamples`: S samples from each of the Q intervals ``[q, q+1) / Q * max`` of
  its running max (Neuronpedia's "subsample intervals") by priority sampling: one uniform
  random key per activation and the S largest keys kept per (latent, interval); when a
  latent's max grows, its samples move to their interval of the new max, so every sample
  lies in its interval of the final max and is a uniform draw from it;

and :class:`TokenLatentSums`, the count and sum of every (token, latent) pair that fired
(for "which latents fire on this token" and "which tokens does this latent fire on"), and
each token's count (V,).

All of it is vectorised torch over the batch's positive codes: a batch's candidates for the
top N and the samples are first filtered against the current thresholds (the N-th value,
the smallest key of the interval), so after the first batches only a handful survive and
their windows are the only ones gathered.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from interp.errors import DataError
from interp.features.codes import Codes
from interp.features.config import FeatureConfig

# (token, latent) pairs are accumulated in a dense table up to this many cells, else sparsely
DENSE_TOKEN_LATENT_CELLS = 2**23
# the sparse (token, latent) table merges its buffered entries once they are this many
SPARSE_FLUSH = 2**22


def rank_within(groups: torch.Tensor, scores: torch.Tensor, n_groups: int,
                descending: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """An order of the entries by (group, score) and each ordered entry's rank in its
    group: ``order, rank`` with ``groups[order]`` ascending and scores descending within."""
    if scores.dtype == torch.float32 and n_groups < 2**29:
        # one sort of an int64 key: group in the high bits, then the float's bits mapped to
        # an order-preserving integer (negative floats have their magnitude bits flipped)
        bits = scores.contiguous().view(torch.int32).to(torch.int64)
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        bits = (2**31 - bits) if descending else (bits + 2**31)
        order = torch.sort(groups.to(torch.int64) * 2**33 + bits).indices
    else:
        by_score = torch.argsort(scores, descending=descending, stable=True)
        order = by_score[torch.argsort(groups[by_score], stable=True)]
    ordered_groups = groups[order]
    counts = torch.bincount(ordered_groups, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[ordered_groups]
    return order, rank


class Entries(NamedTuple):
    """Positive activations of a batch, each (C,): code row, latent, value."""
    rows: torch.Tensor
    latents: torch.Tensor
    values: torch.Tensor

    def select(self, mask: torch.Tensor) -> "Entries":
        return Entries(self.rows[mask], self.latents[mask], self.values[mask])


class Batch(NamedTuple):
    """One recorded batch: tokens (B, n_ctx) int64, its codes, and the index of its first
    context in the token stream."""
    tokens: torch.Tensor
    codes: Codes
    first_context: int


class Windows:
    """Where a code row sits in its batch, and the window of tokens around it."""

    def __init__(self, n_ctx: int, first_pos: int, before: int, after: int):
        self.n_ctx, self.first_pos = n_ctx, first_pos
        self.kept = n_ctx - first_pos  # recorded positions per context
        self.offsets = torch.arange(-before, after + 1)
        self.width = before + after + 1

    def gather(self, entries: Entries, batch: Batch
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(context in the stream (C,), position (C,), window token ids (C, W), window
        activations of the entry's latent (C, W)); outside the context, tokens are -1 and
        activations 0 (also at unrecorded positions)."""
        context = entries.rows // self.kept
        position = entries.rows % self.kept + self.first_pos
        window_pos = position[:, None] + self.offsets[None, :]
        inside = (window_pos >= 0) & (window_pos < self.n_ctx)
        clamped = window_pos.clamp(0, self.n_ctx - 1)
        tokens = batch.tokens[context[:, None], clamped].to(torch.int32).masked_fill_(~inside, -1)
        coded = inside & (window_pos >= self.first_pos)
        code_rows = context[:, None] * self.kept + (clamped - self.first_pos).clamp_min(0)
        acts = batch.codes.at(code_rows.reshape(-1), entries.latents.repeat_interleave(self.width))
        acts = acts.view(-1, self.width).float().masked_fill_(~coded, 0.0)
        return context + batch.first_context, position, tokens, acts


class TopExamples:
    """The N largest activations of each latent, with their windows.

    ``values`` (L, N) sorted descending per latent (empty slots -inf), ``contexts`` (L, N)
    (-1: empty), ``positions`` (L, N), and ``slots`` (L, N): the row of the entry's window in
    the pools ``window_tokens`` / ``window_acts`` (L * N, W), which never move: a new entry
    takes over the slot of the entry it evicts."""

    def __init__(self, d_sae: int, top_n: int, windows: Windows):
        self.top_n, self.windows = top_n, windows
        self.values = torch.full((d_sae, top_n), -math.inf)
        self.contexts = torch.full((d_sae, top_n), -1, dtype=torch.int64)
        self.positions = torch.zeros(d_sae, top_n, dtype=torch.int32)
        self.slots = torch.arange(top_n, dtype=torch.int64).repeat(d_sae, 1)
        self.window_tokens = torch.full((d_sae * top_n, windows.width), -1, dtype=torch.int32)
        self.window_acts = torch.zeros(d_sae * top_n, windows.width)

    def merge(self, entries: Entries, batch: Batch) -> None:
        n = self.top_n
        keep = entries.values > self.values[entries.latents, n - 1]
        if not bool(keep.any()):
            return
        entries = entries.select(keep)
        touched, touched_index = torch.unique(entries.latents, return_inverse=True)
        n_touched = touched.numel()
        n_old = n_touched * n
        # candidates: the n current entries of every touched latent, then the batch's
        groups = torch.cat([torch.arange(n_touched).repeat_interleave(n), touched_index])
        scores = torch.cat([self.values[touched].reshape(-1), entries.values])
        order, rank = rank_within(groups, scores, n_touched)
        # every group holds its n old entries plus at least one candidate: n kept each
        in_top = rank < n
        chosen = order[in_top].view(n_touched, n)
        is_new = chosen >= n_old
        from_old = chosen.clamp(max=n_old - 1)
        old_slots = self.slots[touched].reshape(-1)
        contexts = self.contexts[touched].reshape(-1)[from_old]
        positions = self.positions[touched].reshape(-1)[from_old]
        slots = old_slots[from_old]
        new = chosen[is_new] - n_old  # index into ``entries``
        if new.numel():
            # a latent's evicted old entries and its new ones are equally many: the new
            # ones take over the evicted ones' window slots (both lists in latent order)
            dropped = order[~in_top]
            freed = old_slots[dropped[dropped < n_old]]
            context, position, tokens, acts = self.windows.gather(entries.select(new), batch)
            contexts[is_new] = context
            positions[is_new] = position.to(torch.int32)
            slots[is_new] = freed
            pool = touched[touched_index[new]] * n + freed
            self.window_tokens[pool] = tokens
            self.window_acts[pool] = acts
        self.values[touched] = scores[chosen]
        self.contexts[touched], self.positions[touched], self.slots[touched] = (
            contexts, positions, slots)

    def rows(self) -> dict[str, torch.Tensor]:
        """The filled entries, latent by latent, each latent's by rank (columns as
        :meth:`FeatureAccumulator.tables`'s examples; ``bin`` is -1)."""
        d_sae, n = self.values.shape
        latent = torch.arange(d_sae).repeat_interleave(n)
        filled = self.contexts.reshape(-1) >= 0
        pool = (latent * n + self.slots.reshape(-1))[filled]
        return {"latent": latent[filled], "bin": torch.full((int(filled.sum()),), -1),
                "rank": torch.arange(n).repeat(d_sae)[filled],
                "value": self.values.reshape(-1)[filled],
                "context": self.contexts.reshape(-1)[filled],
                "pos": self.positions.reshape(-1)[filled],
                "tokens": self.window_tokens[pool], "acts": self.window_acts[pool]}


class _Kept(NamedTuple):
    """The samples kept by one merge, each (K,): their group (touched latent * Q + interval),
    rank in it, key, value, context, position and window slot."""
    group: torch.Tensor
    rank: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    context: torch.Tensor
    position: torch.Tensor
    slot: torch.Tensor


class IntervalSamples:
    """S samples of each of the Q intervals of each latent's running max, by priority sampling.

    ``keys`` (L, Q, S) sorted descending per (latent, interval) (-1: empty), ``values``,
    ``contexts``, ``positions``, ``slots`` (L, Q, S); the window pools ``window_tokens`` /
    ``window_acts`` (L * Q * S, W). A latent's Q * S window slots are shared by its
    intervals, since a sample changes interval when the latent's max grows."""

    def __init__(self, d_sae: int, n_intervals: int, per_interval: int, windows: Windows,
                 seed: int):
        self.d_sae, self.n_intervals, self.per_interval = d_sae, n_intervals, per_interval
        self.windows = windows
        shape = (d_sae, n_intervals, per_interval)
        self.keys = torch.full(shape, -1.0)
        self.values = torch.zeros(shape)
        self.contexts = torch.full(shape, -1, dtype=torch.int64)
        self.positions = torch.zeros(shape, dtype=torch.int32)
        self.slots = torch.zeros(shape, dtype=torch.int64)
        pool = d_sae * n_intervals * per_interval
        self.window_tokens = torch.full((pool, windows.width), -1, dtype=torch.int32)
        self.window_acts = torch.zeros(pool, windows.width)
        self.generator = torch.Generator().manual_seed(seed)

    def interval(self, values: torch.Tensor, maxima: torch.Tensor) -> torch.Tensor:
        """The interval of the max each value lies in (the max itself: the last one)."""
        return (values / maxima * self.n_intervals).long().clamp_(0, self.n_intervals - 1)

    def merge(self, entries: Entries, batch: Batch, maximum: torch.Tensor,
              old_maximum: torch.Tensor) -> None:
        """Offer the batch's entries; ``maximum`` (L,) is each latent's max after the batch,
        ``old_maximum`` before it."""
        keys = torch.rand(entries.values.numel(), generator=self.generator)
        intervals = self.interval(entries.values, maximum[entries.latents])
        regrouped = maximum > old_maximum  # these latents' samples change interval: redo them
        keep = ((keys > self.keys[entries.latents, intervals, self.per_interval - 1])
                | regrouped[entries.latents])
        if not bool(keep.any()):
            return
        entries, keys, intervals = entries.select(keep), keys[keep], intervals[keep]
        touched = torch.unique(torch.cat([entries.latents, regrouped.nonzero(as_tuple=True)[0]]))
        kept = self._select(touched, entries, keys, intervals, maximum, batch)
        self.keys[touched] = -1.0
        latent = touched[kept.group // self.n_intervals]
        interval = kept.group % self.n_intervals
        self.keys[latent, interval, kept.rank] = kept.key
        self.values[latent, interval, kept.rank] = kept.value
        self.contexts[latent, interval, kept.rank] = kept.context
        self.positions[latent, interval, kept.rank] = kept.position
        self.slots[latent, interval, kept.rank] = kept.slot

    def _select(self, touched: torch.Tensor, entries: Entries, keys: torch.Tensor,
                intervals: torch.Tensor, maximum: torch.Tensor, batch: Batch) -> _Kept:
        """The S largest keys of each (touched latent, interval) among the touched latents'
        current samples (regrouped by ``maximum``) and the new entries."""
        n_intervals, slots_per_latent = self.n_intervals, self.n_intervals * self.per_interval
        n_touched = touched.numel()
        touched_index = torch.full((self.d_sae,), -1, dtype=torch.int64)
        touched_index[touched] = torch.arange(n_touched)
        old_keys = self.keys[touched].reshape(-1)
        old_filled = (old_keys >= 0).nonzero(as_tuple=True)[0]  # flat index in touched rows
        n_old = old_filled.numel()
        old_latent = old_filled // slots_per_latent  # index into ``touched``
        old_values = self.values[touched].reshape(-1)[old_filled]
        old_intervals = self.interval(old_values, maximum[touched[old_latent]])
        groups = torch.cat([old_latent * n_intervals + old_intervals,
                            touched_index[entries.latents] * n_intervals + intervals])
        scores = torch.cat([old_keys[old_filled], keys])
        order, rank = rank_within(groups, scores, n_touched * n_intervals)
        in_sample = rank < self.per_interval
        chosen = order[in_sample]  # candidate index: old samples first, then the entries
        is_new, is_old = chosen >= n_old, chosen < n_old
        kept = _Kept(group=groups[chosen], rank=rank[in_sample], key=scores[chosen],
                     value=torch.cat([old_values, entries.values])[chosen],
                     context=torch.empty(chosen.numel(), dtype=torch.int64),
                     position=torch.empty(chosen.numel(), dtype=torch.int32),
                     slot=torch.empty(chosen.numel(), dtype=torch.int64))
        from_old = old_filled[chosen[is_old]]
        kept.context[is_old] = self.contexts[touched].reshape(-1)[from_old]
        kept.position[is_old] = self.positions[touched].reshape(-1)[from_old]
        kept.slot[is_old] = self.slots[touched].reshape(-1)[from_old]
        new = chosen[is_new] - n_old  # index into ``entries``
        if new.numel():
            used = torch.zeros(n_touched, slots_per_latent, dtype=torch.bool)
            used[old_latent[chosen[is_old]], kept.slot[is_old]] = True
            self._place_new(kept, is_new, entries.select(new), touched, used, batch)
        return kept

    def _place_new(self, kept: _Kept, is_new: torch.Tensor, new: Entries,
                   touched: torch.Tensor, used: torch.Tensor, batch: Batch) -> None:
        """Gather the windows of the ``new`` kept samples into window slots of their latent
        that no kept sample holds (``used`` (touched, Q * S)); fills their context, position
        and slot in ``kept``."""
        slots_per_latent = used.shape[1]
        new_latent = kept.group[is_new] // self.n_intervals  # index into ``touched``
        need = torch.bincount(new_latent, minlength=touched.numel())
        free = ~used
        take = free & (free.cumsum(1) <= need[:, None])
        free_latent, free_slot = take.nonzero(as_tuple=True)  # latent-major ...
        by_latent = torch.argsort(new_latent, stable=True)  # ... as the new samples are then
        context, position, tokens, acts = self.windows.gather(new.select(by_latent), batch)
        where = is_new.nonzero(as_tuple=True)[0][by_latent]
        kept.context[where] = context
        kept.position[where] = position.to(torch.int32)
        kept.slot[where] = free_slot
        pool = touched[free_latent] * slots_per_latent + free_slot
        self.window_tokens[pool] = tokens
        self.window_acts[pool] = acts

    def rows(self) -> dict[str, torch.Tensor]:
        """The filled samples, latent by latent and interval by interval, each interval's
        by value (columns as :meth:`FeatureAccumulator.tables`'s examples)."""
        d_sae, n_intervals, per_interval = self.keys.shape
        slots_per_latent = n_intervals * per_interval
        latent = torch.arange(d_sae).repeat_interleave(slots_per_latent)
        interval = torch.arange(n_intervals).repeat_interleave(per_interval).repeat(d_sae)
        filled = self.keys.reshape(-1) >= 0
        values = self.values.reshape(-1)
        # samples of an interval in order of value (their keys are random)
        order, rank = rank_within((latent * n_intervals + interval)[filled], values[filled],
                                  d_sae * n_intervals)
        index = filled.nonzero(as_tuple=True)[0][order]
        pool = latent[index] * slots_per_latent + self.slots.reshape(-1)[index]
        return {"latent": latent[index], "bin": interval[index], "rank": rank,
                "value": values[index], "context": self.contexts.reshape(-1)[index],
                "pos": self.positions.reshape(-1)[index],
                "tokens": self.window_tokens[pool], "acts": self.window_acts[pool]}


class TokenLatentSums:
    """Count and activation sum of every (token, latent) pair that fired, keyed
    ``token * L + latent``: a dense table (V * L,) when it has at most
    ``DENSE_TOKEN_LATENT_CELLS`` cells, else sorted unique keys with their sums and counts,
    into which buffered entries are merged every ``SPARSE_FLUSH`` entries."""

    def __init__(self, d_vocab: int, d_sae: int):
        self.d_sae = d_sae
        self.dense = d_vocab * d_sae <= DENSE_TOKEN_LATENT_CELLS
        cells = d_vocab * d_sae if self.dense else 0
        self.keys = torch.zeros(0, dtype=torch.int64)  # sparse only
        self.sums = torch.zeros(cells, dtype=torch.float64)
        self.counts = torch.zeros(cells, dtype=torch.int64)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._buffered = 0

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.dense:
            self.sums.index_add_(0, keys, values.double())
            self.counts.index_add_(0, keys, torch.ones_like(keys))
            return
        self._buffer.append((keys, values.double()))
        self._buffered += keys.numel()
        if self._buffered >= SPARSE_FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self.dense or not self._buffer:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self._buffer])
        sums = torch.cat([self.sums] + [v for _, v in self._buffer])
        counts = torch.cat([self.counts] + [torch.ones_like(k) for k, _ in self._buffer])
        self._buffer, self._buffered = [], 0
        unique, inverse = torch.unique(keys, return_inverse=True)
        self.keys = unique
        self.sums = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, sums)
        self.counts = torch.zeros(unique.numel(), dtype=torch.int64).index_add_(0, inverse,
                                                                                 counts)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token ids, latents, counts, sums), each (pairs,), of every pair that fired."""
        if self.dense:
            keys = self.counts.nonzero(as_tuple=True)[0]
            counts, sums = self.counts[keys], self.sums[keys]
        else:
            self._flush()
            keys, counts, sums = self.keys, self.counts, self.sums
        return keys // self.d_sae, keys % self.d_sae, counts, sums


class FeatureAccumulator:
    """Streaming per-latent statistics over batches of (contexts, codes)."""

    def __init__(self, d_sae: int, d_vocab: int, n_ctx: int, cfg: FeatureConfig):
        self.cfg, self.d_sae, self.d_vocab, self.n_ctx = cfg, d_sae, d_vocab, n_ctx
        self.first_pos = 1 if cfg.skip_bos else 0
        self.kept = n_ctx - self.first_pos
        if self.kept < 1:
            raise DataError(f"n_ctx {n_ctx} leaves no position to record")
        windows = Windows(n_ctx, self.first_pos, *cfg.window)
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
        self.top = TopExamples(d_sae, cfg.top_n, windows)
        self.samples = IntervalSamples(d_sae, cfg.quantile_bins, cfg.samples_per_bin, windows,
                                       cfg.seed)
        self.token_latents = TokenLatentSums(d_vocab, d_sae)

    def add(self, tokens: torch.Tensor, codes: Codes) -> None:
        """One batch: ``tokens`` (B, n_ctx) and the codes of its kept positions, row
        ``b * kept + (p - first_pos)``."""
        n_contexts, n_ctx = tokens.shape
        if n_ctx != self.n_ctx or codes.n_rows != n_contexts * self.kept:
            raise DataError(f"batch of {tuple(tokens.shape)} tokens with {codes.n_rows} code "
                            f"rows; expected n_ctx={self.n_ctx} and {n_contexts * self.kept} "
                            f"rows")
        tokens = tokens.to(torch.int64)
        row_tokens = tokens[:, self.first_pos:].reshape(-1)
        self.token_counts += torch.bincount(row_tokens, minlength=self.d_vocab)[:self.d_vocab]
        entries = Entries(*codes.entries())
        batch = Batch(tokens, codes, self.n_contexts)
        self.n_contexts += n_contexts
        self.n_tokens += n_contexts * self.kept
        if entries.rows.numel() == 0:
            return
        entries = entries._replace(values=entries.values.float())
        old_max = self.max.clone()
        self._add_totals(entries)
        self.token_latents.add(row_tokens[entries.rows] * self.d_sae + entries.latents,
                               entries.values)
        self.top.merge(entries, batch)
        self.samples.merge(entries, batch, self.max, old_max)

    def _add_totals(self, entries: Entries) -> None:
        """Count, sum, max and histogram of each latent."""
        ones = torch.ones_like(entries.latents)
        self.count.index_add_(0, entries.latents, ones)
        self.sum.index_add_(0, entries.latents, entries.values.double())
        self.max.scatter_reduce_(0, entries.latents, entries.values, "amax")
        bins = torch.bucketize(entries.values, self.hist_inner, right=True)
        self.hist.view(-1).index_add_(0, entries.latents * self.n_bins + bins, ones)

    def token_latent_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token ids, latents, counts, sums) of every (token, latent) pair that fired."""
        return self.token_latents.pairs()

    def tables(self) -> dict:
        """Every result as numpy arrays (see :func:`interp.features.write.write_store` for
        the tables): per latent ``count``, ``density``, ``mean_act``, ``mean_all``,
        ``max_act`` (L,) and ``hist`` (L, bins); ``examples`` (top entries then interval
        samples, ``tokens``/``acts`` (rows, W)); ``token_latents`` (each token's top
        ``token_latents`` latents), ``latent_tokens`` (each latent's top ``top_tokens``
        tokens), both by total activation; ``token_counts`` (V,)."""
        count = self.count.numpy()
        n_tokens = max(self.n_tokens, 1)
        out = {"count": count, "density": count / n_tokens,
               "mean_act": np.where(count > 0, self.sum.numpy() / np.maximum(count, 1), 0.0),
               "mean_all": self.sum.numpy() / n_tokens, "max_act": self.max.numpy(),
               "hist": self.hist.numpy(), "examples": self._examples()}
        out.update(self._token_tables())
        out["token_counts"] = self.token_counts.numpy()
        return out

    def _examples(self) -> dict[str, np.ndarray]:
        top, samples = self.top.rows(), self.samples.rows()
        both = {k: torch.cat([top[k], samples[k]]).numpy() for k in top}
        return {"latent": both["latent"].astype(np.int32),
                "kind": np.array(["top"] * len(top["latent"])
                                 + ["quantile"] * len(samples["latent"])),
                "bin": both["bin"].astype(np.int16), "rank": both["rank"].astype(np.int16),
                **{k: both[k] for k in ("value", "context", "pos", "tokens", "acts")}}

    def _token_tables(self) -> dict[str, dict[str, np.ndarray]]:
        """Latents by token and tokens by latent, each by total activation."""
        tokens, latents, counts, sums = self.token_latent_pairs()
        order, rank = rank_within(tokens, sums, self.d_vocab)
        kept = rank < self.cfg.token_latents
        chosen = order[kept]
        token_latents = {"token_id": tokens[chosen].numpy().astype(np.int32),
                         "rank": rank[kept].numpy().astype(np.int32),
                         "latent": latents[chosen].numpy().astype(np.int32),
                         "count": counts[chosen].numpy(), "sum": sums[chosen].numpy()}
        order, rank = rank_within(latents, sums, self.d_sae)
        chosen = order[rank < self.cfg.top_tokens]
        latent_tokens = {"latent": latents[chosen].numpy(), "token_id": tokens[chosen].numpy(),
                         "count": counts[chosen].numpy(), "sum": sums[chosen].numpy()}
        return {"token_latents": token_latents, "latent_tokens": latent_tokens}
