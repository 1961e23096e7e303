"""Query a feature store (one DuckDB file per SAE, written by ``interp.features.write``).

Schema (every table sorted by its lookup key, which also has an index):

``metadata(key VARCHAR PRIMARY KEY, value VARCHAR)``
    JSON values: format, version, code_version, created, run, sae, sae_name, model, hook
    (the hook the codes are computed from), hook_out (a transcoder's only: the hook it
    writes, whose space its logit effects come from), d_in, d_sae, arch, d_vocab,
    n_tokens, n_contexts, n_ctx, first_pos, source, config, hist_edges, logit_effects,
    stream_seconds, build_seconds.
``features`` (one row per latent)
    latent INTEGER, count BIGINT (tokens it fires on), density DOUBLE (count / n_tokens),
    mean_act DOUBLE (mean over the tokens it fires on), mean_all DOUBLE (over all tokens),
    max_act FLOAT, hist_first INTEGER, hist_counts BIGINT[] (counts of bins hist_first ..,
    of the bins ``hist_edges`` in metadata), top_token_ids INTEGER[], top_token_counts
    BIGINT[], top_token_sums DOUBLE[] (the tokens it fires on most, by total activation),
    logit_pos_ids INTEGER[], logit_pos_values FLOAT[], logit_neg_ids INTEGER[],
    logit_neg_values FLOAT[] (the decoder row through the unembedding: most boosted and
    suppressed tokens; absent when the hook does not map to the residual stream).
``examples`` (top-n and interval samples)
    latent INTEGER, kind VARCHAR ('top' | 'quantile'), bin SMALLINT (interval of the max:
    [bin, bin+1) / quantile_bins * max_act; -1 for top), rank SMALLINT, value FLOAT,
    context BIGINT (index of the context in the token stream), pos INTEGER (the token's
    position), window_start INTEGER (position of token_ids[0]), token_ids INTEGER[],
    acts FLOAT[] (the latent's activation at each window token; 0 at BOS).
``token_latents`` (for each token, the latents with the largest total activation on it)
    token_id INTEGER, rank INTEGER, latent INTEGER, count BIGINT, sum DOUBLE.
``vocab``
    token_id INTEGER, token VARCHAR, count BIGINT (occurrences at recorded positions).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from interp.errors import CorruptArtifactError, DataError, UnknownNameError, closest, first_line
from interp.features.write import FORMAT, FORMAT_VERSION

_FEATURE_COLUMNS = ("latent, count, density, mean_act, mean_all, max_act, hist_first, "
                    "hist_counts, top_token_ids, top_token_counts, top_token_sums")
_LOGIT_COLUMNS = ", logit_pos_ids, logit_pos_values, logit_neg_ids, logit_neg_values"


class FeatureStore:
    """Read-only access to one feature store file; safe to share between threads."""

    def __init__(self, path: str | Path):
        import duckdb

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"no feature store at {self.path}; build one with `interp features "
                            f"--run RUN --sae SAE --tokens N`")
        try:
            self._con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.Error as e:
            raise CorruptArtifactError(f"{self.path} is not a feature store (not a DuckDB "
                                       f"file: {first_line(e)})") from e
        try:
            rows = self._con.execute("SELECT key, value FROM metadata").fetchall()
            meta = {k: json.loads(v) for k, v in rows}
        except (duckdb.Error, json.JSONDecodeError) as e:
            self._con.close()
            raise CorruptArtifactError(f"{self.path} is not a feature store (no readable "
                                       f"metadata table)") from e
        if meta.get("format") != FORMAT:
            self._con.close()
            raise CorruptArtifactError(f"{self.path} is a DuckDB file but not a feature store "
                                       f"(metadata format {meta.get('format')!r})")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            self._con.close()
            raise CorruptArtifactError(f"{self.path} has feature-store version "
                                       f"{meta['version']}, newer than this code reads "
                                       f"({FORMAT_VERSION}); update interp")
        self.meta = meta
        self.d_sae = int(meta["d_sae"])
        self.hist_edges = np.asarray(meta["hist_edges"], dtype=np.float64)
        self.quantile_bins = int(meta["config"]["quantile_bins"])
        self._local = threading.local()
        self._vocab: list[str] | None = None
        self._vocab_lock = threading.Lock()
        cols = _FEATURE_COLUMNS + (_LOGIT_COLUMNS if meta.get("logit_effects") else "")
        self._feature_sql = f"SELECT {cols} FROM features WHERE latent = ?"

    # ---------------------------------------------------------------- plumbing
    def _cur(self):
        """A cursor of this thread (DuckDB connections are not shared across threads)."""
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._con.cursor()
        return cur

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.meta
        return (f"FeatureStore({str(self.path)!r}: {m['model']} {m['hook']}, "
                f"{self.d_sae} latents, {m['n_tokens']:,} tokens)")

    @property
    def vocab(self) -> list[str]:
        """Token strings by id (read once)."""
        if self._vocab is None:
            with self._vocab_lock:
                if self._vocab is None:
                    rows = self._cur().execute(
                        "SELECT token FROM vocab ORDER BY token_id").fetchall()
                    self._vocab = [r[0] for r in rows]
        return self._vocab

    def token_str(self, ids) -> list[str]:
        v = self.vocab
        return [v[i] if 0 <= i < len(v) else f"#{i}" for i in ids]

    def _check_latent(self, latent) -> int:
        try:
            latent = int(latent)
        except (TypeError, ValueError):
            raise DataError(f"a latent is an integer id, got {latent!r}") from None
        if not 0 <= latent < self.d_sae:
            raise DataError(f"latent {latent} is out of range: this SAE has {self.d_sae} "
                            f"latents (0..{self.d_sae - 1})")
        return latent

    # ---------------------------------------------------------------- queries
    def feature(self, latent: int) -> dict:
        """Everything a feature page shows, in two indexed queries:

        ``latent, count, density, mean_act, mean_all, max_act``;
        ``histogram``: {edges (len(counts) + 1), counts} over the bins it fires in;
        ``top_tokens``: [{token_id, token, count, mean_act}] (tokens it fires on most);
        ``logits``: {boosted, suppressed}: [{token_id, token, value}] (None when unknown);
        ``top_examples``: [example] in order of value; ``quantiles``: [{bin, lo, hi,
        examples}] for each interval of the max that holds samples; an example is
        {value, context, pos, window_start, max_index (index of pos in the window),
        token_ids, tokens, acts}.
        """
        latent = self._check_latent(latent)
        cur = self._cur()
        row = cur.execute(self._feature_sql, [latent]).fetchone()
        cols = [d[0] for d in cur.description]
        f = dict(zip(cols, row))
        ex = cur.execute("SELECT kind, bin, value, context, pos, window_start, token_ids, acts "
                         "FROM examples WHERE latent = ? ORDER BY kind DESC, bin, rank",
                         [latent]).fetchall()
        counts = f.pop("hist_counts") or []
        first = f.pop("hist_first")
        edges = self.hist_edges[first:first + len(counts) + 1]
        ids, cnts, sums = f.pop("top_token_ids"), f.pop("top_token_counts"), f.pop("top_token_sums")
        page = {k: f[k] for k in ("latent", "count", "density", "mean_act", "mean_all",
                                  "max_act")}
        page["histogram"] = {"edges": edges.tolist(), "counts": list(counts)}
        names = self.token_str(ids)
        page["top_tokens"] = [{"token_id": i, "token": s, "count": c, "mean_act": t / c}
                              for i, s, c, t in zip(ids, names, cnts, sums)]
        if "logit_pos_ids" in f:
            page["logits"] = {
                "boosted": [{"token_id": i, "token": s, "value": v} for i, s, v in zip(
                    f["logit_pos_ids"], self.token_str(f["logit_pos_ids"]),
                    f["logit_pos_values"])],
                "suppressed": [{"token_id": i, "token": s, "value": v} for i, s, v in zip(
                    f["logit_neg_ids"], self.token_str(f["logit_neg_ids"]),
                    f["logit_neg_values"])]}
        else:
            page["logits"] = None
        top, bins = [], {}
        for kind, b, value, ctx, pos, start, tids, acts in ex:
            e = {"value": value, "context": ctx, "pos": pos, "window_start": start,
                 "max_index": pos - start, "token_ids": tids, "tokens": self.token_str(tids),
                 "acts": acts}
            if kind == "top":
                top.append(e)
            else:
                bins.setdefault(b, []).append(e)
        page["top_examples"] = top
        mx, Q = float(page["max_act"]), self.quantile_bins
        page["quantiles"] = [{"bin": b, "lo": mx * b / Q, "hi": mx * (b + 1) / Q,
                              "examples": bins[b]} for b in sorted(bins, reverse=True)]
        return page

    def search_by_token(self, token: int | str, n: int = 20, by: str = "mean") -> list[dict]:
        """Latents that fire most on a token (an id, or a string: every token spelled so, or
        failing that spelled so without surrounding spaces / in any case).

        Each: {latent, token_ids, count (firings on it), token_count (its occurrences),
        frac (count / token_count), mean_on_token (activation summed over the token's
        occurrences / token_count), mean_act (when firing), specificity (the share of the
        latent's total activation that falls on this token), density}. ``by`` orders them:
        ``mean`` (mean_on_token), ``count``, ``frac`` or ``specificity``; among the latents
        kept per token at build time (``token_latents``, by total activation).
        """
        orders = {"mean": "tl_sum", "count": "tl_count", "frac": "tl_count",
                  "specificity": "tl_sum / nullif(f.count * f.mean_act, 0)"}
        if by not in orders:
            raise DataError(f"by must be one of {sorted(orders)}, got {by!r}")
        ids = self.token_ids(token)
        cur = self._cur()
        placeholders = ", ".join("?" * len(ids))
        rows = cur.execute(
            f"""WITH t AS (SELECT latent, sum(count) AS tl_count, sum(sum) AS tl_sum
                           FROM token_latents WHERE token_id IN ({placeholders})
                           GROUP BY latent)
                SELECT t.latent, t.tl_count, t.tl_sum, f.count, f.mean_act, f.density
                FROM t JOIN features f ON f.latent = t.latent
                ORDER BY {orders[by]} DESC NULLS LAST, t.latent LIMIT ?""",
            [*ids, int(n)]).fetchall()
        tc = cur.execute(f"SELECT coalesce(sum(count), 0) FROM vocab WHERE token_id IN "
                         f"({placeholders})", ids).fetchone()[0]
        out = []
        for lat, cnt, s, fcount, fmean, dens in rows:
            total = fcount * fmean if fcount else 0.0
            out.append({"latent": lat, "token_ids": ids, "count": cnt, "token_count": tc,
                        "frac": cnt / tc if tc else 0.0, "mean_on_token": s / tc if tc else 0.0,
                        "mean_act": s / cnt if cnt else 0.0,
                        "specificity": s / total if total else 0.0, "density": dens})
        return out

    def token_ids(self, token: int | str) -> list[int]:
        """Token ids for an id or a string (exact spelling first, then stripped or any case)."""
        if isinstance(token, (int, np.integer)):
            t = int(token)
            if not 0 <= t < len(self.vocab):
                raise DataError(f"token id {t} is out of range (vocabulary of {len(self.vocab)})")
            return [t]
        s = str(token)
        v = self.vocab
        ids = [i for i, w in enumerate(v) if w == s]
        if not ids:
            key = s.strip().lower()
            ids = [i for i, w in enumerate(v) if w.strip().lower() == key and key]
        if not ids:
            near = closest(s, v, 8)
            raise UnknownNameError(f"no token {s!r} in the vocabulary of {self.meta['model']}"
                                   + (f"; closest: {', '.join(map(repr, near))}" if near else ""))
        return ids

    def by_density(self, lo: float = 0.0, hi: float = 1.0, n: int = 50,
                   order: str = "desc") -> list[dict]:
        """Up to ``n`` latents with lo <= density <= hi, by density (``desc`` or ``asc``),
        each {latent, density, count, mean_act, max_act, top_tokens (three strings)}."""
        if order not in ("desc", "asc"):
            raise DataError(f"order is 'desc' or 'asc', got {order!r}")
        if lo > hi:
            raise DataError(f"density range [{lo}, {hi}] is empty")
        rows = self._cur().execute(
            f"SELECT latent, density, count, mean_act, max_act, top_token_ids[1:3] "
            f"FROM features WHERE density BETWEEN ? AND ? "
            f"ORDER BY density {order.upper()}, latent LIMIT ?",
            [float(lo), float(hi), int(n)]).fetchall()
        return [{"latent": r[0], "density": r[1], "count": r[2], "mean_act": r[3],
                 "max_act": r[4], "top_tokens": self.token_str(r[5] or [])} for r in rows]

    def summary(self) -> dict:
        """Metadata and per-latent arrays for overview plots: {meta, n_tokens, d_sae, dead,
        latent, density, count, mean_act, max_act (numpy arrays)}; ``density`` feeds
        ``interp.viz.sae.density_histogram``."""
        cols = self._cur().execute(
            "SELECT latent, density, count, mean_act, max_act FROM features ORDER BY latent"
        ).fetchnumpy()
        out = {"meta": self.meta, "n_tokens": int(self.meta["n_tokens"]), "d_sae": self.d_sae}
        out.update({k: np.asarray(v) for k, v in cols.items()})
        out["dead"] = int((out["count"] == 0).sum())
        return out


def open_feature_store(path: str | Path) -> FeatureStore:
    return FeatureStore(path)


def find_feature_stores(run: str | Path) -> list[Path]:
    """The feature stores of a run folder (``RUN/features/*.duckdb``)."""
    return sorted(Path(run).glob("features/*.duckdb"))
