"""The accumulator's results (numpy, see ``FeatureAccumulator.tables``) as the feature store's
Arrow tables, column by column (the schema: ``interp.features.store``'s docstring).

- ``features``: one row per latent (L rows); its histogram (L, bins) trimmed to the bins from
  its first to its last nonzero one (``hist_first``, ``hist_counts``), its top tokens as
  lists, and its logit effects (each (L, m)) as lists;
- ``examples``: one row per top example or interval sample; its window (W,) trimmed to the
  tokens inside the context (``window_start`` is the position of the first);
- ``token_latents`` as accumulated; ``vocab``: one row per token (V rows).

Imported by :func:`interp.features.write.write_store` when it writes (pyarrow is not
imported by ``import interp.features``).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def _lists(flat: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """An Arrow list column of consecutive runs of ``flat``, of ``lengths`` each."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat))


def _rows(values: np.ndarray) -> pa.ListArray:
    """An Arrow list column with one list per row of ``values`` (rows, width)."""
    rows, width = values.shape
    return _lists(values.reshape(-1), np.full(rows, width))


def _row_slices(values: np.ndarray, first: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """An Arrow list column of ``values[i, first[i]:first[i] + lengths[i]]`` for each row i
    of ``values`` (rows, width)."""
    width = values.shape[1]
    source = (first[:, None] + np.arange(width)[None, :]).clip(max=width - 1)
    shifted = np.take_along_axis(values, source, 1)
    return _lists(shifted[np.arange(width)[None, :] < lengths[:, None]], lengths)


def _histogram_columns(hist: np.ndarray) -> dict[str, pa.Array]:
    """``hist_first`` and ``hist_counts``: each latent's bins from its first nonzero one to
    its last (an empty list for a latent that never fired)."""
    nonzero = hist > 0
    fired = nonzero.any(1)
    first = np.where(fired, nonzero.argmax(1), 0)
    last = np.where(fired, hist.shape[1] - 1 - nonzero[:, ::-1].argmax(1), -1)
    lengths = (last - first + 1).clip(min=0)
    return {"hist_first": pa.array(first.astype(np.int32)),
            "hist_counts": _row_slices(hist.astype(np.int64), first, lengths)}


def _top_token_columns(latent_tokens: dict[str, np.ndarray], d_sae: int
                       ) -> dict[str, pa.Array]:
    """Each latent's top tokens, by total activation: ids, counts and sums as lists."""
    order = np.lexsort((-latent_tokens["sum"], latent_tokens["latent"]))
    lengths = np.bincount(latent_tokens["latent"], minlength=d_sae)
    return {name: _lists(latent_tokens[key][order].astype(dtype), lengths)
            for name, key, dtype in (("top_token_ids", "token_id", np.int32),
                                     ("top_token_counts", "count", np.int64),
                                     ("top_token_sums", "sum", np.float64))}


def feature_table(tables: dict, logits: dict[str, np.ndarray] | None) -> pa.Table:
    d_sae = len(tables["count"])
    columns = {
        "latent": pa.array(np.arange(d_sae, dtype=np.int32)),
        "count": pa.array(tables["count"].astype(np.int64)),
        "density": pa.array(tables["density"].astype(np.float64)),
        "mean_act": pa.array(tables["mean_act"].astype(np.float64)),
        "mean_all": pa.array(tables["mean_all"].astype(np.float64)),
        "max_act": pa.array(tables["max_act"].astype(np.float32)),
        **_histogram_columns(tables["hist"]),
        **_top_token_columns(tables["latent_tokens"], d_sae),
    }
    if logits is not None:
        for side in ("pos", "neg"):
            columns[f"logit_{side}_ids"] = _rows(logits[f"{side}_ids"].astype(np.int32))
            columns[f"logit_{side}_values"] = _rows(logits[f"{side}_values"].astype(np.float32))
    return pa.table(columns)


def example_table(examples: dict[str, np.ndarray], before: int) -> pa.Table:
    """``before``: the window's tokens before the example's own."""
    inside = examples["tokens"] >= 0
    first = inside.argmax(1)
    lengths = inside.sum(1)
    return pa.table({
        "latent": pa.array(examples["latent"].astype(np.int32)),
        "kind": pa.array(examples["kind"]),
        "bin": pa.array(examples["bin"].astype(np.int16)),
        "rank": pa.array(examples["rank"].astype(np.int16)),
        "value": pa.array(examples["value"].astype(np.float32)),
        "context": pa.array(examples["context"].astype(np.int64)),
        "pos": pa.array(examples["pos"].astype(np.int32)),
        "window_start": pa.array((examples["pos"] - before + first).astype(np.int32)),
        "token_ids": _row_slices(examples["tokens"], first, lengths),
        "acts": _row_slices(examples["acts"].astype(np.float32), first, lengths),
    })


def arrow_tables(tables: dict, logits: dict[str, np.ndarray] | None, vocab: list[str],
                 before: int) -> dict[str, pa.Table]:
    """The four data tables of the store, by name."""
    return {
        "features": feature_table(tables, logits),
        "examples": example_table(tables["examples"], before),
        "token_latents": pa.table({k: pa.array(v) for k, v in tables["token_latents"].items()}),
        "vocab": pa.table({"token_id": pa.array(np.arange(len(vocab), dtype=np.int32)),
                           "token": pa.array(vocab, pa.string()),
                           "count": pa.array(tables["token_counts"].astype(np.int64))}),
    }
