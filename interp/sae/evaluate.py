"""SAE evaluation: reconstruction on stored activations (MSE, FVU, L0, dead and dense
latents, density) and the model with the SAE spliced in (CE-loss recovered, KL)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from interp.data.sources import OthelloSource, check_fits, make_source
from interp.data.sources import batches as token_batches
from interp.errors import DataError, InterpError, unknown
from interp.hooks import flat_units, with_first_position
from interp.sae.core import DENSE_FREQUENCY, SparseAutoencoder



@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable, scale: float = 1.0,
                           k: int | None = None, scale_out: float | None = None) -> dict:
    """Metrics over ``batches`` of raw activations (multiplied by ``scale`` on the way in).

    A batch is x (B, d_in), reconstructed by an SAE, or an (x, y) pair of a transcoder's
    input and output hooks at the same rows (y multiplied by ``scale_out``, default
    ``scale``); the figures are then of y. FVU is sum ||y - y_hat||^2 / sum ||y - mean(y)||^2
    over all rows; ``k`` evaluates a top-k SAE at k' = k (HierarchicalTopK's any-k
    inference). Returns floats and the per-latent firing frequency (``density``, a list).
    """
    was = sae.training
    sae.eval()
    scale_out = scale if scale_out is None else scale_out
    n, sq_err, l0 = 0, 0.0, 0.0
    sum_y = sum_y2 = None
    device = sae.b_dec.device
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
    try:
        for batch in batches:
            x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
            if y is None and sae.cfg.transcoder:
                raise DataError("a transcoder is evaluated on (input, output) pairs of its "
                                "two hooks, not on its input hook alone")
            x = x.to(device).float() * scale
            y = x if y is None else y.to(device).float() * scale_out
            out = sae.forward_at_k(x, k) if k is not None else sae(x)
            sq_err += float((out.x_hat - y).double().square().sum())
            ys = y.double()
            sum_y = ys.sum(0) if sum_y is None else sum_y + ys.sum(0)
            sum_y2 = float(ys.square().sum()) + (0.0 if sum_y2 is None else sum_y2)
            l0 += float(out.l0().sum())
            fired += out.fired_counts().double()
            n += x.shape[0]
    finally:
        sae.train(was)
    if n == 0:
        raise DataError("no rows to evaluate on (the store or the --tokens budget is empty)")
    total_var = sum_y2 - float(sum_y.square().sum()) / n
    density = (fired / n).cpu()
    return {"mse": sq_err / n, "fvu": sq_err / max(total_var, 1e-12), "l0": l0 / n,
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_FREQUENCY).double().mean()),
            "n_tokens": n, "density": density.tolist()}


def splice_hook(sae: SparseAutoencoder, scale: float = 1.0, keep: dict | None = None):
    """A TransformerLens hook function that replaces an activation (batch, pos, *units)
    by the SAE's reconstruction (units flattened to d_in and back: ``flat_units``); the
    forward output is stored in ``keep["out"]`` when given."""

    if sae.cfg.transcoder:  # its output belongs at another hook: splice_hooks puts it there
        raise DataError("a transcoder cannot be spliced at one hook: it reads "
                        f"{sae.cfg.metadata.get('hook_name')} and writes "
                        f"{sae.cfg.metadata.get('hook_name_out')}")

    def hook_fn(act, hook):
        out = sae(flat_units(act, sae.cfg.d_in).reshape(-1, sae.cfg.d_in) * scale)
        if keep is not None:
            keep["out"] = out
        return (out.x_hat / scale).reshape(act.shape).to(act.dtype)

    return hook_fn


def splice_hooks(sae: SparseAutoencoder, keep_first: bool = False) -> list[tuple[str, object]]:
    """The TransformerLens hooks that put a saved dictionary into its model: an SAE replaces
    its hook by its reconstruction; a transcoder keeps its input hook's activation and
    replaces its output hook by its prediction from it (the MLP replaced). ``keep_first``
    leaves position 0 as the model computes it (``with_first_position``)."""
    if not isinstance(sae, SparseAutoencoder):  # a cross-layer transcoder splices itself
        return sae.splice_hooks(keep_first)
    md = sae.cfg.metadata or {}
    if not sae.cfg.transcoder:
        fn = splice_hook(sae)
        return [(md.get("hook_name"), lambda act, hook: with_first_position(
            fn(act, hook), act, keep_first))]
    kept: dict = {}

    def keep_input(act, hook):
        kept["x"] = act

    def predict(act, hook):
        x = flat_units(kept.pop("x"), sae.cfg.d_in).reshape(-1, sae.cfg.d_in)
        flat_units(act, sae.cfg.out_dim)  # the output hook's width checked the same way
        y_hat = sae(x.float()).x_hat.reshape(act.shape).to(act.dtype)
        return with_first_position(y_hat, act, keep_first)

    return [(md.get("hook_name"), keep_input), (md.get("hook_name_out"), predict)]


def written_hook(sae: SparseAutoencoder) -> str:
    """The hook whose activation the dictionary replaces (a transcoder's output hook)."""
    md = sae.cfg.metadata or {}
    return md.get("hook_name_out") if sae.cfg.transcoder else md.get("hook_name")


def kl_per_token(clean_logits: torch.Tensor, spliced_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || spliced) of the next-token distributions, one value per position."""
    lp = clean_logits.float().log_softmax(-1)
    lq = spliced_logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T-1) cross-entropy of predicting tokens[:, 1:]."""
    lp = logits[:, :-1].float().log_softmax(-1)
    return -lp.gather(-1, tokens[:, 1:, None])[..., 0]


@torch.no_grad()
def compare_with_splice(model, token_batches: Iterable[torch.Tensor], spliced_hooks,
                        ablation_hooks, cache_names: Iterable[str] = (), on_cache=None) -> dict:
    """The model with ``spliced_hooks`` against the model itself and against it with
    ``ablation_hooks(cache)`` (the hooks replaced by zeros or means), on every batch: mean
    next-token CE of the three, KL(clean || spliced) and top-1 agreement per token, and
    CE-loss recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean). The clean run
    caches ``cache_names``, given to ``ablation_hooks`` and to ``on_cache`` (per batch).
    Position 0 (the BOS prediction of token 1 included) counts like any other."""
    names = set(cache_names)
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_ablated": 0.0, "kl": 0.0,
            "top1_agreement": 0.0}
    n = 0
    for tokens in token_batches:
        tokens = tokens.to(model.cfg.device)
        clean, cache = model.run_with_cache(tokens, names_filter=lambda h: h in names)
        if on_cache is not None:
            on_cache(cache)
        spliced = model.run_with_hooks(tokens, fwd_hooks=spliced_hooks)
        ablated = model.run_with_hooks(tokens, fwd_hooks=ablation_hooks(cache))
        sums["ce_clean"] += float(_next_token_ce(clean, tokens).sum())
        sums["ce_spliced"] += float(_next_token_ce(spliced, tokens).sum())
        sums["ce_ablated"] += float(_next_token_ce(ablated, tokens).sum())
        sums["kl"] += float(kl_per_token(clean, spliced)[:, :-1].sum())
        sums["top1_agreement"] += float((clean[:, :-1].argmax(-1)
                                         == spliced[:, :-1].argmax(-1)).sum())
        n += tokens.shape[0] * (tokens.shape[1] - 1)
    if n == 0:
        raise DataError("no token batches to evaluate on (the token source gave no context)")
    res = {k: v / n for k, v in sums.items()}
    gap = res["ce_ablated"] - res["ce_clean"]
    res["ce_loss_recovered"] = ((res["ce_ablated"] - res["ce_spliced"]) / gap if gap
                                else float("nan"))
    res["n_tokens"] = n
    return res


def spliced_metrics(model, sae: SparseAutoencoder, hook: str,
                    token_batches: Iterable[torch.Tensor], scale: float = 1.0,
                    ablation: str = "zero") -> dict:
    """How much of the model's next-token loss survives replacing ``hook`` by the SAE (a
    transcoder: its output hook by its prediction from its input hook), with the replaced
    hook zero- or mean-ablated (``ablation``) as the baseline (``compare_with_splice``)."""
    if ablation not in ("zero", "mean"):
        raise unknown("ablation", ablation, ["zero", "mean"])
    if sae.cfg.transcoder:
        hook, fwd = written_hook(sae), splice_hooks(sae)
    else:
        fwd = [(hook, splice_hook(sae, scale))]

    def ablate_hooks(cache):
        mean = cache[hook].mean((0, 1), keepdim=True)

        def ablate(act, hook):
            return torch.zeros_like(act) if ablation == "zero" else mean.expand_as(act)
        return [(hook, ablate)]

    was = sae.training
    sae.eval()
    try:
        res = compare_with_splice(model, token_batches, fwd, ablate_hooks, [hook])
    finally:
        sae.train(was)
    res["ablation"] = ablation
    return res


def eval_token_source(model_name: str, spec: str | None = None, model=None):
    """Token source for spliced evaluation: ``spec`` if given, else held-out data of an
    embedded model (othello games from a seed no harvest or training uses; pycode's test
    split)."""
    if spec:
        return make_source(spec, model=model)
    if model_name == "othello":
        return OthelloSource(seed=EVAL_OTHELLO_SEED)
    if model_name == "pycode":
        return make_source("pycode:test", model=model)
    raise DataError(f"name a token source for evaluating on {model_name!r} (--source), or "
                    f"the activation store harvested from it (--store: its held-out contexts)")


def recorded_store(path: str | None, model_name: str):
    """The activation store a dictionary records it was trained on, when it is still there
    (complete) and holds ``model_name``'s activations; else None."""
    from interp.activations.store import open_store

    if not path or not Path(path, "manifest.json").exists():
        return None
    try:
        st = open_store(path)
    except DataError:
        return None
    return st if st.manifest.get("model") == model_name else None


def held_out_tokens(m, model_name: str, source: str | None, contexts: int,
                    context_size: int | None, store=None) -> tuple[list[torch.Tensor], str]:
    """The contexts spliced metrics run on, in batches of 16, and what they are: ``source``
    when named; else an embedded model's held-out data (``eval_token_source``); else the last
    ``contexts`` contexts of ``store`` (whose last rows the trainer holds out), at the
    store's context length."""
    from interp.models.zoo import ZOO

    if source or store is None or model_name in ZOO:  # ZOO: eval_token_source's own data
        src = eval_token_source(model_name, source, m)
        n_ctx = min(m.cfg.n_ctx, int(context_size or 128))
        check_fits(src, m, n_ctx, label=model_name)
        toks = list(token_batches(src, n_ctx, 16, max_contexts=contexts))
        return toks, json.dumps(src.describe())
    n = min(contexts, store.n_contexts)
    ids = torch.from_numpy(store.tokens(range(store.n_contexts - n, store.n_contexts))).long()
    if int(ids.max()) >= m.cfg.d_vocab:
        raise DataError(f"the store {store.path} holds token ids up to {int(ids.max())}, "
                        f"beyond the vocabulary of {model_name!r} ({m.cfg.d_vocab})")
    return list(ids.split(16)), f"the last {n} contexts of the store {store.path}"


EVAL_OTHELLO_SEED = 987_654_321


def evaluate_sae(sae_dir: str, store: str | None = None, model: str | None = None,
                 source: str | None = None, tokens: int = 50_000, contexts: int = 64,
                 k: int | None = None, write: bool = True, out: str | None = None) -> dict:
    """Every metric of a saved SAE; writes ``eval.json`` and plotly figures (HTML) into its
    folder (or ``out``) when ``write``. The SAE is checked against the store and the model
    first (``interp.provenance``): another model, hook or width is refused. ``eval.json``
    records the store, hook and model it was computed on.

    - with ``store``: MSE, FVU, L0, dead/dense fractions and the latent density on the
      store's last ``tokens`` rows (an any-k SAE such as HierarchicalTopK: also at every
      k' of its grid);
    - with ``model`` (default: the SAE's own model, when it loads): CE-loss recovered
      (zero and mean ablation) and KL of the model with the SAE spliced in, on
      ``contexts`` held-out contexts.
    """
    from interp.activations.store import open_store
    from interp.provenance import check_dictionary
    from interp.runs import resolve_sae
    from interp.viz.sae import density_histogram, fvu_by_k, training_curves

    if tokens <= 0 or contexts <= 0:
        raise DataError(f"--tokens and --contexts must be positive, got {tokens}, {contexts}")
    named = resolve_sae(sae_dir)
    sae, folder = named.sae, named.folder
    hook = sae.cfg.metadata.get("hook_name")
    res: dict = {"sae": str(sae_dir), "arch": sae.cfg.arch, "d_in": sae.cfg.d_in,
                 "d_sae": sae.cfg.d_sae, "hook": hook}
    if sae.cfg.transcoder:
        res.update(d_out=sae.cfg.out_dim, hook_out=written_hook(sae), skip=sae.cfg.skip)
    figures = {}
    st = open_store(store) if store else None
    if st is not None:
        hook = check_dictionary(sae, name=sae_dir, store=st)
        res["store"] = str(st.path)
    model_name = model or sae.cfg.metadata.get("model_name")
    if st is not None and not model and st.manifest.get("model"):
        model_name = st.manifest["model"]  # checked above: the SAE's own model
    m = _load_model(model_name, explicit=bool(model), res=res) if model_name and hook else None
    if m is not None:
        check_dictionary(sae, name=sae_dir, model=m, model_name=model_name, hook=hook)
        res["model"] = str(model_name)
    if st is not None:
        rows = (max(0, st.n_rows - tokens), st.n_rows)
        hooks = [hook, written_hook(sae)] if sae.cfg.transcoder else hook  # (x, y) pairs
        held_out = lambda: st.batches(4096, hooks, shuffle=False, row_range=rows)  # noqa: E731
        rec = reconstruction_metrics(sae, held_out(), k=k)
        figures["density"] = density_histogram(rec.pop("density"))
        res["reconstruction"] = rec
        if sae.eval_k_grid() and k is None:
            res["reconstruction_by_k"] = {
                str(kp): without_density(reconstruction_metrics(sae, held_out(), k=kp))
                for kp in sae.eval_k_grid()}
            figures["fvu_by_k"] = fvu_by_k(res["reconstruction_by_k"])
    if m is not None:
        res.update(_spliced_results(m, str(model_name), sae, hook, source, contexts, st))
    if write:
        if (folder / "train_log.jsonl").exists():
            figures["training_curves"] = training_curves(folder / "train_log.jsonl")
        _write_results(res, figures, Path(out) if out is not None else folder)
    return res


def without_density(metrics: dict) -> dict:
    """The metrics without the per-latent density list (for logs and per-k' tables)."""
    return {key: v for key, v in metrics.items() if key != "density"}


def _load_model(name: str, explicit: bool, res: dict):
    """The model to splice into, or None (noted in ``res``) when the SAE's own model does
    not load; a model asked for explicitly raises instead."""
    from interp.models import load

    try:
        return load(name)
    except InterpError as e:
        if explicit:  # asked for explicitly: say why not
            raise
        res["spliced_skipped"] = f"the SAE's model could not be loaded: {e}"
        return None


def _spliced_results(m, model_name: str, sae: SparseAutoencoder, hook: str,
                     source: str | None, contexts: int, store) -> dict:
    """CE-loss recovered and KL on ``contexts`` held-out contexts (``held_out_tokens``: of
    ``source``, the model's own held-out text, or ``store``'s or the store the SAE records),
    zero and mean ablation."""
    meta = sae.cfg.metadata
    toks, spliced_on = held_out_tokens(m, model_name, source, contexts,
                                       meta.get("context_size"),
                                       store or recorded_store(meta.get("store"), model_name))
    spliced = {a: spliced_metrics(m, sae, hook, toks, ablation=a) for a in ("zero", "mean")}
    return {"spliced_on": spliced_on, "spliced": spliced,
            "ce_loss_recovered": spliced["zero"]["ce_loss_recovered"],
            "kl": spliced["zero"]["kl"]}


def _write_results(res: dict, figures: dict, dest: Path) -> None:
    """``eval.json`` and the figures (HTML) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "eval.json").write_text(json.dumps(res, indent=2) + "\n")
    for name, fig in figures.items():
        fig.write_html(str(dest / f"{name}.html"), include_plotlyjs="cdn")
