"""ActivationStream: an activation store's reading interface over the model's own forward
passes, for models whose activations are too large to store. The trainer's store objective
reads either one (``interp train --model M --hook H --tokens N``, no ``--store``).

Layout. ``P`` kept positions per context (the harvest's rule: all but BOS), ``E`` held-out
contexts (``ceil(eval_rows / P)``) and ``N`` training contexts (``ceil(tokens / P)``), taken
from the token source in order::

    source contexts [0, E)        held out: the evaluation rows, never trained on
    source contexts [E, E + N)    training, cut into buffers of C contexts (R = C * P rows)

Rows are numbered as in a store whose last ``eval_rows`` rows are held out: row
``r < N * P`` is training context ``E + r // P`` at kept position ``r % P``, and rows
``N * P ..`` are the first ``eval_rows`` held-out rows in order. So ``n_rows - eval_rows``
is where training ends, and the trainer's ``row_range`` arguments mean what they mean for
a store. The held-out contexts come first so that they stay the same for any ``tokens``.

Training order. Epoch ``e`` reads the buffers in order; buffer ``i`` runs its C contexts
through the model (stopping after the last block a hook needs) and permutes its rows with a
generator seeded by ``(seed, e * n_buffers + i)``; the epoch's rows are then cut into
batches. Every hook shares the permutation, so a transcoder's (x, y) rows stay paired.
Batch ``b`` is thus a function of (seed, b) alone, and a run resumed at ``b`` regenerates
only the buffer that holds it. That costs the forward passes of one buffer (at most C
contexts), plus, for a source that cannot jump to a context (text: HF datasets, local
files), reading and tokenizing the source up to that buffer's first context; othello jumps
straight there.

Memory: one buffer's rows of every hook (R x the hooks' summed widths x 4 bytes), the
held-out rows once evaluated, and a batch. Under torchrun every process computes every
buffer and keeps its share of each batch: the forward passes are repeated, not split.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from interp.activations.harvest import HarvestConfig, harvest_plan
from interp.data.sources import check_token_ids, contexts_range
from interp.errors import DataError, unknown
from interp.hooks import flat_units, stop_layer

# rows shuffled together: what a streaming trainer usually holds (about 64k tokens), far
# more than one batch, and a quarter of a GiB per 1024-wide hook
BUFFER_TOKENS = 2**16
FORWARD_CONTEXTS = 32  # contexts per forward pass (the harvest's default)

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout


class ActivationStream:
    """The activations at ``hooks`` of ``model`` (a name for ``interp.models.load``, or
    ``loaded_model`` already loaded) over ``tokens`` training tokens of ``source``, plus
    ``eval_rows`` held-out rows, read like an ``ActivationStore`` (module docstring)."""

    def __init__(self, model: str, hooks: Sequence[str], tokens: int,
                 source: str | None = None, n_ctx: int | None = None, eval_rows: int = 0,
                 device: str = "cpu", buffer_tokens: int | None = None, loaded_model=None):
        # the harvest's checks and shapes: the rows a harvest of these settings would store
        plan = harvest_plan(HarvestConfig(model=model, hooks=list(hooks), n_tokens=tokens,
                                          out="", source=source, n_ctx=n_ctx,
                                          device=str(device)), loaded_model, str(device))
        if not isinstance(eval_rows, int) or eval_rows < 0:
            raise DataError(f"--eval-rows must be 0 or more, got {eval_rows!r}")
        self.model, self.source = plan.model, plan.source
        self.n_ctx, self.positions, self.widths = plan.n_ctx, plan.positions, plan.widths
        per_ctx = len(self.positions)
        self.eval_rows = eval_rows
        self.held_out_contexts = math.ceil(eval_rows / per_ctx)
        self.train_contexts = plan.n_contexts
        self.buffer_contexts = max(1, (buffer_tokens or BUFFER_TOKENS) // per_ctx)
        self.buffer_rows = self.buffer_contexts * per_ctx
        self.n_buffers = math.ceil(self.train_contexts / self.buffer_contexts)
        self.n_train_rows = self.train_contexts * per_ctx
        self.n_rows = self.n_train_rows + eval_rows
        self.stop_at = stop_layer(list(self.widths), self.model.cfg.n_layers)
        self.path = f"stream:{model}"  # where a store's folder is named: no folder here
        # a store's manifest keys that say what the rows are (the trainer's identity and
        # metadata read them), and the stream's layout
        self.manifest = {**plan.meta, "dtype": "float32", "n_ctx": self.n_ctx,
                         "positions": self.positions,
                         "hooks": {h: {"d_in": d} for h, d in self.widths.items()},
                         "stream": {"held_out_contexts": self.held_out_contexts,
                                    "training_contexts": self.train_contexts,
                                    "buffer_contexts": self.buffer_contexts}}
        self._buffer_cache: tuple[int, dict[str, torch.Tensor]] | None = None
        self._held_out: dict[str, torch.Tensor] | None = None
        mib = self.buffer_rows * sum(self.widths.values()) * 4 / 2**20
        log.info(f"{self.path}: {self.n_train_rows:,} training rows from {self.train_contexts:,}"
                 f" contexts in {self.n_buffers} buffer(s) of {self.buffer_contexts} contexts "
                 f"({mib:.1f} MiB each); {self.held_out_contexts} held-out contexts before them")

    # ------------------------------------------------------------------ metadata
    @property
    def hooks(self) -> list[str]:
        return list(self.widths)

    def d_in(self, hook: str | None = None) -> int:
        return self.widths[self.resolve_hook(hook)]

    def resolve_hook(self, hook: str | None) -> str:
        """``hook``, or the stream's only hook when None; unknown names list the valid ones."""
        if hook is None:
            if len(self.hooks) > 1:
                raise DataError(f"this stream reads several hooks; name one of {self.hooks}")
            return self.hooks[0]
        if hook not in self.widths:
            raise unknown("hook of this stream", hook, self.hooks)
        return hook

    def __repr__(self) -> str:
        return (f"ActivationStream({self.path!r}, hooks={self.hooks}, rows={self.n_rows}, "
                f"buffers={self.n_buffers})")

    # ------------------------------------------------------------------ forward passes
    def _run(self, first: int, count: int) -> dict[str, torch.Tensor]:
        """hook -> (count * P, width) float32 rows of source contexts first .. first+count-1,
        in a store's order (context after context, the kept positions of each in order)."""
        kept = torch.tensor(self.positions, device=self.model.cfg.device)
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.widths}

        def capture(act, hook):
            rows = flat_units(act.index_select(1, kept))  # trailing dims flattened
            parts[hook.name].append(rows.reshape(-1, rows.shape[-1]).float())

        contexts = contexts_range(self.source, self.n_ctx, first, first + count)
        done = 0
        with torch.no_grad(), self.model.hooks(fwd_hooks=[(h, capture) for h in self.widths]):
            while chunk := list(itertools.islice(contexts, FORWARD_CONTEXTS)):
                tokens = np.stack(chunk)
                check_token_ids(tokens, self.model, self.source, self.manifest["model"])
                self.model(torch.from_numpy(tokens).to(self.model.cfg.device),
                           stop_at_layer=self.stop_at)
                done += len(chunk)
        if done < count:  # a short buffer would shift every later batch: refuse it
            raise DataError(f"the token source {self.source.spec()} ran out after {first + done}"
                            f" contexts; the stream reads {self.held_out_contexts} held-out and "
                            f"{self.train_contexts} training contexts: give fewer --tokens")
        return {h: torch.cat(p) if p else torch.empty(0, self.widths[h])
                for h, p in parts.items()}

    def _buffer(self, i: int) -> dict[str, torch.Tensor]:
        """Training buffer ``i``'s rows in row order; the last buffer computed is kept (the
        init sample's reads and the first training batches share the first)."""
        if self._buffer_cache is None or self._buffer_cache[0] != i:
            self._buffer_cache = None  # free it before the next one is computed
            first = i * self.buffer_contexts
            count = min(self.buffer_contexts, self.train_contexts - first)
            self._buffer_cache = (i, self._run(self.held_out_contexts + first, count))
        return self._buffer_cache[1]

    def _held_out_rows(self) -> dict[str, torch.Tensor]:
        """The held-out rows (computed once)."""
        if self._held_out is None:
            rows = self._run(0, self.held_out_contexts)
            self._held_out = {h: t[:self.eval_rows] for h, t in rows.items()}
        return self._held_out

    # ------------------------------------------------------------------ random access
    def read(self, rows: np.ndarray | Sequence[int], hook: str | None = None,
             dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Activations of the given rows, in the given order: (len(rows), width). Training
        rows cost the forward passes of the buffers holding them (the trainer's init sample
        reads the first buffer only); held-out rows are computed once."""
        hook = self.resolve_hook(hook)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"row out of range [0, {self.n_rows})")
        out = torch.empty(rows.size, self.widths[hook])
        held = rows >= self.n_train_rows
        if held.any():
            sel = np.flatnonzero(held)
            out[sel] = self._held_out_rows()[hook][rows[sel] - self.n_train_rows].cpu()
        buffer_of = rows // self.buffer_rows
        for i in np.unique(buffer_of[~held]):
            sel = np.flatnonzero(~held & (buffer_of == i))
            out[sel] = self._buffer(int(i))[hook][rows[sel] - i * self.buffer_rows].cpu()
        return out if dtype is None else out.to(dtype)

    # ------------------------------------------------------------------ streaming
    def batches(self, batch_size: int, hook: str | Sequence[str] | None = None,
                shuffle: bool = True, seed: int = 0, epochs: int | None = 1,
                start_batch: int = 0, drop_last: bool = False,
                dtype: torch.dtype | None = torch.float32,
                row_range: tuple[int, int] | None = None,
                part: tuple[int, int] = (0, 1)) -> Iterator:
        """Batches as ``ActivationStore.batches`` yields them (a list of hooks: tuples of
        their rows, aligned) over one of two row ranges: the training rows (``row_range``
        None or (0, n_rows - eval_rows)), epoch after epoch in the order of the module
        docstring; or the held-out rows ((n_rows - eval_rows, n_rows)), in order, once.
        ``part=(rank, world)``: rank's contiguous share of every batch."""
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        rank, world = part
        if world > 1 and (batch_size % world or not drop_last):
            raise DataError(f"splitting batches over {world} processes needs a batch size "
                            f"divisible by {world} (got {batch_size}) and drop_last")
        several = isinstance(hook, (list, tuple))
        names = [self.resolve_hook(h) for h in hook] if several else [self.resolve_hook(hook)]
        train = self.n_train_rows
        lo, hi = (0, train) if row_range is None else (int(row_range[0]), int(row_range[1]))
        if (lo, hi) == (0, train):
            batches = self._training_batches(names, batch_size, shuffle, seed, epochs,
                                             start_batch, drop_last)
        elif (lo, hi) == (train, self.n_rows) and lo < hi:
            held = self._held_out_rows()
            stop = hi - lo - (hi - lo) % batch_size if drop_last else hi - lo
            batches = (tuple(held[h][a:a + batch_size] for h in names)
                       for a in range(start_batch * batch_size, stop, batch_size))
        else:
            raise DataError(f"a stream reads its training rows [0, {train}) or its held-out "
                            f"rows [{train}, {self.n_rows}), not [{lo}, {hi})")
        local = batch_size // world
        for batch in batches:
            batch = tuple(t[rank * local:(rank + 1) * local] if world > 1 else t for t in batch)
            batch = tuple(t if dtype is None else t.to(dtype) for t in batch)
            yield batch if several else batch[0]

    def _training_batches(self, hooks: list[str], size: int, shuffle: bool, seed: int,
                          epochs: int | None, start_batch: int, drop_last: bool) -> Iterator:
        """The training rows' batches from batch ``start_batch`` on, epoch after epoch
        (``epochs`` None: endless); ``drop_last`` drops each epoch's short last batch."""
        n = self.n_train_rows
        per_epoch = n // size if drop_last else math.ceil(n / size)
        if per_epoch == 0:
            raise DataError(f"the stream has {n:,} training rows: too few for a batch of {size}")
        epoch, first = divmod(start_batch, per_epoch)
        while epochs is None or epoch < epochs:
            batches = self._epoch_batches(hooks, epoch, first * size, size, seed, shuffle)
            yield from itertools.islice(batches, per_epoch - first)
            epoch, first = epoch + 1, 0

    def _epoch_batches(self, hooks: list[str], epoch: int, first_row: int, size: int,
                       seed: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of ``size`` rows of ``epoch`` from its row ``first_row`` on (buffer after
        buffer, each permuted); the short remainder last. Only the buffers from the one
        holding ``first_row`` are computed."""
        pieces: list[tuple[torch.Tensor, ...]] = []  # the batch being gathered
        have = 0
        for i in range(first_row // self.buffer_rows, self.n_buffers):
            rows = self._buffer(i)
            n = rows[hooks[0]].shape[0]
            order = torch.from_numpy(self._order(i, epoch, seed, shuffle, n))
            at = max(0, first_row - i * self.buffer_rows)
            while at < n:
                take = min(size - have, n - at)
                idx = order[at:at + take].to(rows[hooks[0]].device)
                pieces.append(tuple(rows[h][idx] for h in hooks))  # one order for every hook
                have, at = have + take, at + take
                if have == size:
                    yield _joined(pieces)
                    pieces, have = [], 0
        if pieces:
            yield _joined(pieces)

    def _order(self, i: int, epoch: int, seed: int, shuffle: bool, n: int) -> np.ndarray:
        """The order of buffer ``i``'s ``n`` rows in ``epoch``: a permutation seeded by
        (seed, the buffer's index in the whole stream), so a resumed run draws it again."""
        if not shuffle:
            return np.arange(n)
        return np.random.default_rng([seed, epoch * self.n_buffers + i]).permutation(n)


def _joined(pieces: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """One batch from pieces (tuples of aligned tensors, one per hook), in order."""
    return tuple(p[0] if len(p) == 1 else torch.cat(p) for p in zip(*pieces))
