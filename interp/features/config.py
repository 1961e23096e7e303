"""What a feature-store build records and how: :class:`FeatureConfig` and ``--window``.

The histogram of a latent's nonzero activations has fixed bins, the same for every latent:
``hist_edges()`` is ``[0, 10**lo, ..., 10**hi, inf]`` with ``hist_per_decade`` log-spaced
bins per decade, i.e. ``(hi - lo) * hist_per_decade + 2`` bins (an underflow bin below
``10**lo`` and an overflow bin above ``10**hi``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.errors import DataError


@dataclass
class FeatureConfig:
    n_tokens: int                       # tokens streamed (recorded positions; BOS not counted)
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
    seed: int = 0                       # seeds the priority-sampling keys
    device: str = "cpu"                 # where the model and the SAE run

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
