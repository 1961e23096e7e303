"""What a feature page adds to the feature store's statistics (as Neuronpedia and
SAEDashboard show it), computed live from the model and the dictionary:

- :func:`similar_decoders`: the latents whose decoder directions are closest to this one's
  (cosine of the rows of ``W_dec``, the same dictionary);
- :func:`correlated_neurons`: the Pearson correlation of every latent with every MLP
  neuron (``blocks.L.mlp.hook_post`` of the dictionary's layer L) over a sample of tokens,
  from streamed sums (sum a, sum a^2, sum n, sum n^2, sum a n^T), so memory does not grow
  with the sample;
- :func:`dictionary_acts`: every latent's activation at every token of some prompts (the
  codes the feature store records: the inference rule of the dictionary's architecture,
  zero at BOS), for text the user types;
- :func:`ablation_loss_change`: the next-token loss at every position with the latent
  zero-ablated through the error-preserving splice (``interp.circuits.splice``: the
  dictionary spliced at the hook it writes, its error kept, so only the latent's decoder
  row leaves the activation), minus the clean loss;
- :func:`example_contexts`: the whole contexts of a store's examples, replayed from the
  token source the build streamed (a window shows a few tokens; an Othello board or an
  ablation needs the whole context).

Shapes: N prompts of T tokens, m latents, u neurons.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from interp.errors import DataError, InterpError
from interp.hooks import flat_units, layer_of, sae_hook, stop_layer


# ------------------------------------------------------------------ decoder similarity
def similar_decoders(W_dec: torch.Tensor, latent: int, n: int = 10) -> list[dict]:
    """The ``n`` latents with the highest cosine similarity between their decoder row and
    ``latent``'s (itself excluded), each {latent, cosine}, most similar first."""
    W = W_dec.detach().float()
    if not 0 <= latent < W.shape[0]:
        raise DataError(f"latent {latent} is out of range: the dictionary has {W.shape[0]}")
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit[latent]
    cos[latent] = -float("inf")
    top = cos.topk(min(n, W.shape[0] - 1))
    return [{"latent": int(i), "cosine": float(v)} for v, i in zip(top.values, top.indices)]


# ------------------------------------------------------------------ activations
def _encode_dense(sae, x: torch.Tensor) -> torch.Tensor:
    """(R, m) activations of rows x (R, d_in) by the store's rule (``features.codes``)."""
    from interp.features.codes import encode

    codes = encode(sae, x)
    if codes.acts is not None:
        return codes.acts.clamp_min(0)
    dense = torch.zeros(x.shape[0], sae.cfg.d_sae)
    return dense.scatter_(1, codes.indices.long(), codes.values.float().clamp_min(0))


@torch.no_grad()
def hook_acts(model, tokens: torch.Tensor, hooks: Sequence[str], batch_size: int = 32):
    """Yield (batch slice, {hook: (B, T, units flattened)}) over ``tokens`` in batches,
    running the model only as far as the last hook."""
    stop = stop_layer(list(hooks), model.cfg.n_layers)
    for s in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[s:s + batch_size].to(model.cfg.device),
                                        names_filter=list(hooks), stop_at_layer=stop)
        yield slice(s, s + batch_size), {h: flat_units(cache[h]).float().cpu() for h in hooks}


@torch.no_grad()
def dictionary_acts(model, sae, tokens: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(N, T, m) every latent's activation on ``tokens`` (N, T) at the hook the dictionary
    reads (a transcoder's input, an attention SAE's concatenated heads); 0 at position 0
    (BOS), as in a feature store."""
    tokens = torch.as_tensor(tokens).long()
    hook = sae_hook(sae)
    out = torch.zeros(*tokens.shape, sae.cfg.d_sae)
    for sl, acts in hook_acts(model, tokens, [hook], batch_size):
        x = acts[hook]
        out[sl] = _encode_dense(sae, x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
    out[:, 0] = 0
    return out


def neuron_hook(sae_or_hook) -> str:
    """``blocks.L.mlp.hook_post`` of the layer a dictionary (or hook) reads."""
    hook = sae_or_hook if isinstance(sae_or_hook, str) else sae_hook(sae_or_hook)
    layer = layer_of(hook)
    if layer is None:
        raise DataError(f"{hook} is not in a block: no MLP neurons of its layer")
    return f"blocks.{layer}.mlp.hook_post"


# ------------------------------------------------------------------ correlated neurons
class _CorrSums:
    """Streamed sums for the Pearson correlation of every column of a with every column of
    b (float64)."""

    def __init__(self, m: int, u: int):
        self.n = 0
        self.sa, self.sb = torch.zeros(m, dtype=torch.float64), torch.zeros(u, dtype=torch.float64)
        self.saa, self.sbb = torch.zeros_like(self.sa), torch.zeros_like(self.sb)
        self.sab = torch.zeros(m, u, dtype=torch.float64)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.double(), b.double()
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def corr(self) -> torch.Tensor:
        n = max(self.n, 1)
        cov = self.sab / n - torch.outer(self.sa / n, self.sb / n)
        va = (self.saa / n - (self.sa / n) ** 2).clamp_min(0)
        vb = (self.sbb / n - (self.sb / n) ** 2).clamp_min(0)
        den = torch.outer(va.sqrt(), vb.sqrt())
        return torch.where(den > 1e-12, cov / den.clamp_min(1e-30),
                           torch.zeros_like(cov)).float()


@torch.no_grad()
def correlated_neurons(model, sae, tokens: torch.Tensor, batch_size: int = 32
                       ) -> torch.Tensor:
    """(m, u) Pearson correlation of every latent with every neuron of the MLP of the
    dictionary's layer (``neuron_hook``) over the tokens of ``tokens`` (N, T), BOS
    excluded; 0 where a latent or neuron does not vary."""
    tokens = torch.as_tensor(tokens).long()
    hook, nhook = sae_hook(sae), neuron_hook(sae)
    if nhook not in model.hook_dict:
        raise DataError(f"the model has no {nhook} (no MLP at that layer)")
    sums = None
    for _, acts in hook_acts(model, tokens, [hook, nhook], batch_size):
        x, neurons = acts[hook][:, 1:], acts[nhook][:, 1:]
        a = _encode_dense(sae, x.reshape(-1, x.shape[-1]))
        b = neurons.reshape(-1, neurons.shape[-1])
        if sums is None:
            sums = _CorrSums(a.shape[1], b.shape[1])
        sums.add(a, b)
    return sums.corr()


def top_correlated(corr: torch.Tensor, latent: int, n: int = 10) -> list[dict]:
    """The ``n`` neurons most correlated with ``latent`` (by r, positive first), each
    {neuron, r}."""
    r = corr[int(latent)]
    top = r.topk(min(n, r.shape[0]))
    return [{"neuron": int(i), "r": float(v)} for v, i in zip(top.values, top.indices)]


# ------------------------------------------------------------------ ablation
def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N, T-1) next-token cross-entropy at each position (predicting token t+1 at t)."""
    lp = logits[:, :-1].float().log_softmax(-1)
    return -lp.gather(-1, tokens[:, 1:, None].to(lp.device))[..., 0]


@torch.no_grad()
def ablation_loss_change(model, sae, tokens: torch.Tensor, latent: int,
                         batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Zero-ablate ``latent`` at every position of ``tokens`` (N, T) through the splice
    (the dictionary at the hook it writes, its error kept): {clean, ablated, delta} (N, T-1)
    next-token losses (``delta`` = ablated - clean: positive where the latent helped), and
    ``acts`` (N, T) the latent's activation in the spliced run."""
    from interp.circuits.splice import SplicedModel
    from interp.sae.evaluate import written_hook

    tokens = torch.as_tensor(tokens).long()
    if not 0 <= latent < sae.cfg.d_sae:
        raise DataError(f"latent {latent} is out of range: the dictionary has {sae.cfg.d_sae}")
    hook = written_hook(sae)
    spliced = SplicedModel(model, {hook: sae})

    def zero(name, a, e):
        a = a.clone()
        a[..., latent] = 0
        return a, e

    parts = {"clean": [], "ablated": [], "acts": []}
    for s in range(0, tokens.shape[0], batch_size):
        batch = tokens[s:s + batch_size].to(model.cfg.device)
        clean = spliced.run(batch)
        parts["clean"].append(per_token_loss(clean.logits, batch).cpu())
        parts["acts"].append(clean.hooks[hook].acts[..., latent].float().cpu())
        parts["ablated"].append(per_token_loss(spliced.run(batch, {hook: zero}).logits,
                                               batch).cpu())
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["delta"] = out["ablated"] - out["clean"]
    return out


# ------------------------------------------------------------------ store examples
def example_contexts(meta: dict, examples: Sequence[dict], model=None,
                     max_replay: int = 4096) -> list[np.ndarray | None]:
    """The whole context (n_ctx token ids) of each example of a feature store whose
    metadata is ``meta``, replayed from the token source the build streamed (contexts are
    numbered in stream order); None for an example whose context cannot be rebuilt (a
    source this machine cannot read), does not hold the example's window, or lies past
    ``max_replay`` contexts of a source that must be read from its start to get there
    (Othello games are generated from any index at once)."""
    from interp.data.sources import contexts_range, from_description

    out: list[np.ndarray | None] = [None] * len(examples)
    if not examples:
        return out
    wanted = sorted({int(e["context"]) for e in examples})
    try:
        source = from_description(meta.get("source") or {}, model)
        if not hasattr(source, "contexts_from"):
            wanted = [c for c in wanted if c < max_replay]
        if not wanted:
            return out
        it = contexts_range(source, int(meta["n_ctx"]), wanted[0], wanted[-1] + 1)
        found = {c: ctx for c, ctx in zip(range(wanted[0], wanted[-1] + 1), it)
                 if c in set(wanted)}
    except (InterpError, OSError, KeyError, ValueError):
        return out
    for i, e in enumerate(examples):
        ctx = found.get(int(e["context"]))
        if ctx is None:
            continue
        ids = np.asarray(e["token_ids"])
        start = int(e["window_start"])
        inside = ids >= 0
        window = ctx[start:start + len(ids)]
        if len(window) == len(ids) and np.array_equal(window[inside], ids[inside]):
            out[i] = np.asarray(ctx, dtype=np.int64)
    return out


def sample_contexts(meta: dict, n: int, model=None, start: int = 0) -> torch.Tensor | None:
    """(n, n_ctx) contexts of a feature store's token source (the model's own data), or
    None when it cannot be read here."""
    from interp.data.sources import contexts_range, from_description

    try:
        source = from_description(meta.get("source") or {}, model)
        rows = list(contexts_range(source, int(meta["n_ctx"]), start, start + n))
    except (InterpError, OSError, KeyError, ValueError):
        return None
    return torch.from_numpy(np.stack(rows).astype(np.int64)) if rows else None
