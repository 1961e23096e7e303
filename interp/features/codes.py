"""One batch's SAE codes, as the feature-store build records them.

``encode(sae, x)`` maps ``x`` (N, d_in) to :class:`Codes`: sparse ``values``/``indices``
(N, K) for the k-sparse architectures (their forward pass keeps K latents per row), dense
``acts`` (N, d_sae) for the others, computed from the pre-activations without decoding.
Only positive activations count as firing.
"""
from __future__ import annotations

import torch


class Codes:
    """One batch's SAE codes: sparse ``values``/``indices`` (N, K) or dense ``acts``
    (N, d_sae). Only positive activations count as firing (ksparse's negative values are
    ignored)."""

    def __init__(self, values: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                 acts: torch.Tensor | None = None):
        self.values, self.indices, self.acts = values, indices, acts
        self._indices32: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return (self.acts if self.acts is not None else self.values).shape[0]

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, latents, values) of every positive activation, row-major."""
        if self.acts is not None:
            rows, latents = (self.acts > 0).nonzero(as_tuple=True)
            return rows, latents, self.acts[rows, latents]
        mask = self.values > 0
        rows = mask.nonzero(as_tuple=True)[0]
        return rows, self.indices[mask], self.values[mask]

    def at(self, rows: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Activation of latent ``latents[i]`` at row ``rows[i]`` (0 where it is not active)."""
        if self.acts is not None:
            return self.acts[rows, latents].clamp_min(0)
        if self._indices32 is None:  # int32 halves the gathered bytes
            self._indices32 = self.indices.to(torch.int32)
        hit = self._indices32[rows] == latents.to(torch.int32)[:, None]
        return torch.where(hit, self.values[rows], 0.0).sum(1).clamp_min(0)


def encode(sae, x: torch.Tensor) -> Codes:
    """The SAE's inference codes of ``x`` (N, d_in), without decoding dense archs (the rule
    per architecture is the SAE's own: ``SparseAutoencoder.inference_codes``)."""
    return Codes(*sae.inference_codes(x))
