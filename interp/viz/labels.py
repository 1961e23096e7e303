"""Which ground-truth property of the embedded models a latent follows: the Pearson
correlation of every latent with every token-level property of ``interp.probes.datasets``
(othello: empty / mine / theirs / legal / flipped for each of the 64 squares; pycode: in a
string, in a comment, keyword, in brackets, indented, indentation levels), on a small
held-out sample. One forward pass and one matrix product for all latents at once, so a
feature page can show its best-matching labels cheaply.

Property names are the probe dataset names (``othello-mine-d3``, ``pycode-in-string``), so
the app can open the probe for a property directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.errors import DataError
from interp.hooks import flat_units, sae_hook, stop_layer

EMBEDDED = ("othello", "pycode")
LABEL_SEED = 515_151  # games / contexts apart from the probe datasets' own sample


@dataclass
class LabelCorrelations:
    names: list[str]          # P property names
    corr: np.ndarray          # (d_sae, P) Pearson r of each latent with each property
    positives: np.ndarray     # (P,) positive tokens per property in the sample
    n_tokens: int

    def top(self, latent: int, n: int = 5, min_positives: int = 5) -> list[dict]:
        """The ``n`` properties most correlated with ``latent`` (positive r first, by r),
        each {property, r, positives}; properties with fewer than ``min_positives`` positive
        tokens in the sample are left out (their r is noise)."""
        r = self.corr[int(latent)]
        ok = self.positives >= min_positives
        order = [j for j in np.argsort(-np.nan_to_num(r, nan=-2)) if ok[j]][:n]
        return [{"property": self.names[j], "r": float(r[j]),
                 "positives": int(self.positives[j])} for j in order]


def ground_truth(model_name: str, n_contexts: int = 64, n_ctx: int = 64
                 ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """(tokens (C, T), labels (C, T, P) float32 with NaN where a token has no label, names)
    for an embedded model."""
    if model_name == "othello":
        from interp.data import othello as oth

        games = oth.generate_games(n_contexts, np.random.default_rng(LABEL_SEED))
        t = oth.MAX_MOVES
        tokens = torch.from_numpy(games.tokens(with_bos=True)[:, :t])
        state = games.board_state()                              # (C, 60, 64)
        props = {"empty": state == oth.EMPTY, "mine": state == oth.MINE,
                 "theirs": state == oth.THEIRS, "legal": games.legal_mask(),
                 "flipped": games.flipped_mask()}
        names, cols = [], []
        for kind, mask in props.items():
            for sq in range(oth.BOARD_SQUARES):
                names.append(f"othello-{kind}-{oth.square_name(sq)}")
                cols.append(mask[:, :, sq])
        lab = np.stack(cols, -1).astype(np.float32)              # (C, 60, P), after move t
        labels = np.full((n_contexts, t, len(names)), np.nan, dtype=np.float32)
        valid = games.valid()[:, :t - 1]
        labels[:, 1:] = np.where(valid[..., None], lab[:, :t - 1], np.nan)  # p read move p-1
        return tokens, labels, names
    if model_name == "pycode":
        from interp.data.sources import PycodeSource

        src = PycodeSource(split="test")
        it = src.contexts(n_ctx)
        ctx = np.stack([next(it) for _ in range(n_contexts)])
        lab = src.labels(n_ctx, 0, len(ctx))
        props = {f"pycode-{k}": v for k, v in lab.binary_classes().items()}
        for level in range(1, 5):
            props[f"pycode-indent-{level}"] = lab.indent_level == level
        names = list(props)
        labels = np.stack([np.asarray(v, dtype=np.float32) for v in props.values()], -1)
        labels[:, 0] = np.nan  # BOS
        return torch.from_numpy(ctx.astype(np.int64)), labels, names
    raise DataError(f"ground-truth labels exist for the embedded models {EMBEDDED}, not "
                    f"{model_name!r}")


@torch.no_grad()
def latent_label_correlations(model, sae, model_name: str, n_contexts: int = 64,
                              batch_size: int = 32) -> LabelCorrelations:
    """Correlation of each latent of ``sae`` (at its hook) with each ground-truth property,
    over the labelled tokens of ``n_contexts`` held-out contexts."""
    hook = sae_hook(sae)
    tokens, labels, names = ground_truth(model_name, n_contexts)
    keep = ~np.isnan(labels).any(-1)                             # (C, T)
    acts = []
    layer = stop_layer([hook], model.cfg.n_layers)
    for i in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[i:i + batch_size], names_filter=[hook],
                                        stop_at_layer=layer)
        x = flat_units(cache[hook], sae.cfg.d_in)
        a = sae.eval()(x.reshape(-1, sae.cfg.d_in).float()).dense().reshape(*x.shape[:2], -1)
        acts.append(a[torch.from_numpy(keep[i:i + batch_size])])
    a = torch.cat(acts).double()                                 # (N, d_sae)
    y = torch.from_numpy(labels[keep]).double()                  # (N, P)
    a = a - a.mean(0)
    y = y - y.mean(0)
    denom = a.norm(dim=0)[:, None] * y.norm(dim=0)[None]
    corr = (a.T @ y) / denom
    corr = torch.where(denom > 0, corr, torch.full_like(corr, float("nan")))
    return LabelCorrelations(names, corr.float().numpy(),
                             (labels[keep] > 0).sum(0).astype(np.int64), int(keep.sum()))
