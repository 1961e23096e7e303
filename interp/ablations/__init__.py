"""Ablation and steering experiments on SAE latents or neurons, and SHIFT-style checks.

All interventions on SAE latents go through ``interp.circuits.splice.SplicedModel`` (the
error term is kept, so only the chosen latents change the activation). ``hook`` is where the
dictionary is spliced, the hook it writes: a transcoder's output hook (``hook_mlp_out``),
whose latents are computed from its input hook and whose MLP is replaced by it plus its
error, so ablating or steering its latent moves the MLP's output by the decoder row:

- ``ablate_latents``: set latents to zero, to their mean over reference prompts (per
  position), or to their values on another (resampled) reference prompt;
- ``steer``: add ``alpha * W_dec[latent]`` to the activation, or clamp a latent to a value;
- ``intervene``: either of the two above by one mode name (what the CLI and the app call);
- ``ablate_units``: the same for a hook's own units (neurons), without an SAE;
- ``ablate_circuit``: mean-ablate everything outside (or inside) a circuit: the circuit
  evaluation's own code (``interp.circuits.faithfulness``);
- ``shift``: a probe's held-out accuracy before and after ablating latents judged irrelevant
  (Marks et al.'s SHIFT).

Each returns the change of the next-token loss, of a task metric when a task is given, and
the tokens whose probability at the last position moves most.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.circuits.splice import SplicedModel
from interp.errors import DataError, unknown
from interp.hooks import flat_units, unknown_hook

MODES = ("zero", "mean", "resample")


@dataclass
class EffectReport:
    loss_clean: float
    loss_after: float
    metric_clean: float | None = None
    metric_after: float | None = None
    top_up: list[tuple[int, float]] = field(default_factory=list)    # (token, prob change)
    top_down: list[tuple[int, float]] = field(default_factory=list)
    top_clean: list[tuple[int, float]] = field(default_factory=list)  # (token, probability)
    top_after: list[tuple[int, float]] = field(default_factory=list)  # most likely, after

    @property
    def loss_change(self) -> float:
        return self.loss_after - self.loss_clean

    @property
    def metric_change(self) -> float | None:
        if self.metric_clean is None:
            return None
        return self.metric_after - self.metric_clean


def _next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    lp = logits[:, :-1].float().log_softmax(-1)
    return float(-lp.gather(-1, tokens[:, 1:, None]).mean())


def _top(p: torch.Tensor, n: int) -> list[tuple[int, float]]:
    t = p.topk(min(n, len(p)))
    return [(int(i), float(v)) for v, i in zip(t.values, t.indices)]


def report(clean_logits, after_logits, tokens, task=None, top: int = 10) -> EffectReport:
    p0 = clean_logits[:, -1].float().softmax(-1).mean(0)
    p1 = after_logits[:, -1].float().softmax(-1).mean(0)
    d = p1 - p0
    up = d.topk(min(top, len(d)))
    down = (-d).topk(min(top, len(d)))
    rep = EffectReport(_next_token_loss(clean_logits, tokens),
                       _next_token_loss(after_logits, tokens),
                       top_up=[(int(i), float(v)) for v, i in zip(up.values, up.indices)],
                       top_down=[(int(i), -float(v)) for v, i in zip(down.values, down.indices)],
                       top_clean=_top(p0, top), top_after=_top(p1, top))
    if task is not None:
        rep.metric_clean = float(task.metric(clean_logits).mean())
        rep.metric_after = float(task.metric(after_logits).mean())
    return rep


def _check_latents(spliced: SplicedModel, hook: str, latents: list[int]) -> None:
    if hook not in spliced.saes:
        raise DataError(f"no SAE spliced at {hook!r}; spliced: {spliced.hooks}")
    m = spliced.saes[hook].cfg.d_sae
    bad = [j for j in latents if not 0 <= j < m]
    if bad or not latents:
        raise DataError(f"latents {bad or latents} out of range: the SAE at {hook} has {m}")


def _reference(tokens: torch.Tensor, reference: torch.Tensor | None,
               mode: str) -> torch.Tensor:
    """The prompts a mean or resample ablation takes its values from: ``reference``, else
    the prompts themselves (then at least two: one prompt's own values change nothing).
    Values are taken per position, so the reference prompts are as long as the prompts."""
    ref = reference if reference is not None else tokens
    if reference is None and tokens.shape[0] < 2:
        raise DataError(f"{mode} ablation of a single prompt needs reference prompts (its own "
                        f"values would change nothing): use a task, or zero ablation")
    if ref.shape[1] != tokens.shape[1]:
        raise DataError(f"{mode} ablation takes values per position: the reference prompts "
                        f"have {ref.shape[1]} tokens, the prompts {tokens.shape[1]}")
    return ref


@torch.no_grad()
def ablate_latents(spliced: SplicedModel, hook: str, tokens: torch.Tensor, latents: list[int],
                   mode: str = "zero", reference: torch.Tensor | None = None, task=None,
                   positions: list[int] | None = None, seed: int = 0) -> EffectReport:
    """Ablate ``latents`` of the SAE at ``hook`` on ``tokens`` (at ``positions``, default all).
    ``reference`` prompts (default: the prompts) give, per position, the mean (mode "mean")
    or the values of a randomly drawn reference prompt ("resample")."""
    if mode not in MODES:
        raise unknown("ablation mode", mode, MODES)
    _check_latents(spliced, hook, latents)
    idx = torch.tensor(latents)
    pos = slice(None) if positions is None else torch.tensor(positions)
    clean = spliced.run(tokens)
    if mode == "zero":
        values = None
    else:
        ref = _reference(tokens, reference, mode)
        ref_acts = spliced.run(ref).hooks[hook].acts[..., idx]    # (R, T, k)
        if mode == "mean":
            values = ref_acts.mean(0, keepdim=True)
        else:
            g = torch.Generator().manual_seed(seed)
            values = ref_acts[torch.randint(0, ref_acts.shape[0], (tokens.shape[0],),
                                            generator=g)]

    def intervene(name, a, e):
        a = a.clone()
        sub = a[:, pos][..., idx] if positions is not None else a[..., idx]
        new = torch.zeros_like(sub) if values is None else (
            values[:, pos] if positions is not None else values).expand_as(sub)
        if positions is None:
            a[..., idx] = new
        else:
            block = a[:, pos]
            block[..., idx] = new
            a[:, pos] = block
        return a, e

    after = spliced.run(tokens, {hook: intervene})
    return report(clean.logits, after.logits, tokens, task)


@torch.no_grad()
def steer(spliced: SplicedModel, hook: str, tokens: torch.Tensor, latent: int,
          alpha: float | None = None, clamp: float | None = None, task=None,
          positions: list[int] | None = None) -> EffectReport:
    """Add ``alpha * W_dec[latent]`` at ``hook`` (at ``positions``), or clamp the latent's
    activation to ``clamp``."""
    if (alpha is None) == (clamp is None):
        raise DataError("steer with exactly one of alpha (add the decoder direction) or clamp "
                        "(set the activation)")
    _check_latents(spliced, hook, [latent])
    pos = slice(None) if positions is None else torch.tensor(positions)
    clean = spliced.run(tokens)

    def intervene(name, a, e):
        a = a.clone()
        if clamp is not None:
            a[:, pos, latent] = clamp
        else:
            a[:, pos, latent] += alpha
        return a, e

    after = spliced.run(tokens, {hook: intervene})
    return report(clean.logits, after.logits, tokens, task)


STEERING = ("alpha", "clamp")


def intervene(spliced: SplicedModel, hook: str, tokens: torch.Tensor, latents: list[int],
              mode: str, value: float | None = None, reference: torch.Tensor | None = None,
              task=None) -> EffectReport:
    """One experiment on SAE latents, as the CLI and the app name it: ablate ``latents``
    (``mode`` zero / mean / resample, ``reference`` tokens for the last two) or steer one
    latent (``mode`` alpha: add ``value`` times its decoder direction; clamp: set it to
    ``value``)."""
    if mode in STEERING:
        if len(latents) != 1:
            raise DataError(f"steer one latent at a time (got {len(latents)}: {latents})")
        if value is None:
            raise DataError(f"steering by {mode} needs a value")
        return steer(spliced, hook, tokens, latents[0], task=task, **{mode: value})
    return ablate_latents(spliced, hook, tokens, latents, mode=mode, reference=reference,
                          task=task)


@torch.no_grad()
def ablate_units(model, hook: str, tokens: torch.Tensor, units: list[int], mode: str = "zero",
                 reference: torch.Tensor | None = None, task=None) -> EffectReport:
    """Ablate a hook's own units (e.g. neurons at ``blocks.1.mlp.hook_post``)."""
    if mode not in ("zero", "mean"):
        raise unknown("unit ablation mode", mode, ["zero", "mean"])
    if hook not in model.hook_dict:
        raise unknown_hook(model, hook)
    idx = torch.tensor(units)
    mean = None
    if mode == "mean":
        _, cache = model.run_with_cache(_reference(tokens, reference, mode),
                                        names_filter=[hook])
        mean = cache[hook][..., idx].mean(0, keepdim=True)
    clean = model(tokens)

    def hook_fn(act, hook):
        if int(idx.max()) >= act.shape[-1]:
            raise DataError(f"units {units} out of range: {hook.name} has {act.shape[-1]}")
        act = act.clone()
        act[..., idx] = 0 if mean is None else mean.expand_as(act[..., idx])
        return act

    after = model.run_with_hooks(tokens, fwd_hooks=[(hook, hook_fn)])
    return report(clean, after, tokens, task)


def ablate_circuit(spliced: SplicedModel, task, nodes, complement: bool = False,
                   ablate_errors: bool = True) -> dict:
    """Mean-ablate everything outside the circuit ``nodes`` (or, with ``complement``, the
    circuit itself); the metric before and after. The circuit evaluation's own code."""
    from interp.circuits.attribution import PatchValues
    from interp.circuits.faithfulness import node_masks, ablated_metric

    means = PatchValues(spliced, task, "mean")
    masks = node_masks(spliced, nodes, task.clean.shape[1], complement=complement)
    full = ablated_metric(spliced, task, None, means)
    after = ablated_metric(spliced, task, masks, means, ablate_errors)
    return {"metric_full": full, "metric_after": after, "nodes": len(nodes),
            "ablated": "circuit" if complement else "complement"}


@torch.no_grad()
def shift(spliced: SplicedModel, hook: str, latents: list[int], probe_hook: str,
          dataset, mode: str = "mean", max_examples: int = 4000, seed: int = 0) -> dict:
    """SHIFT-style: train a dense probe for ``dataset``'s property on ``probe_hook``
    activations, then measure its held-out accuracy on activations recomputed with the
    ``latents`` of the SAE at ``hook`` ablated. A drop means the probe relied on them."""
    from interp.probes.datasets import example_rows
    from interp.probes.sparse import fit_logistic, metrics, train_test_split

    _check_latents(spliced, hook, latents)
    if probe_hook not in spliced.model.hook_dict:
        raise unknown_hook(spliced.model, probe_hook)
    rows = example_rows(dataset, max_examples, seed)
    y = dataset.labels[rows[:, 0], rows[:, 1]]
    idx = torch.tensor(latents)
    clean = spliced.run(dataset.tokens)
    means = clean.hooks[hook].acts[..., idx].mean((0, 1))

    def grab(tokens, interventions=None):
        keep = {}

        def probe_fn(act, hook):
            keep["x"] = act
            return act

        spliced.model.add_hook(probe_hook, probe_fn)
        try:
            spliced.run(tokens, interventions)
        finally:
            spliced.model.reset_hooks()
        return flat_units(keep["x"])[rows[:, 0], rows[:, 1]].float()

    def ablate(name, a, e):
        a = a.clone()
        a[..., idx] = 0 if mode == "zero" else means
        return a, e

    x_clean = grab(dataset.tokens)
    x_abl = grab(dataset.tokens, {hook: ablate})
    tr, te = train_test_split(y, 0.25, seed)
    probe = fit_logistic(x_clean[tr], y[tr], torch.arange(x_clean.shape[1]))
    before = metrics(probe.decision(x_clean[te]), y[te])
    after = metrics(probe.decision(x_abl[te]), y[te])
    return {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "f1_before": before["f1"], "f1_after": after["f1"], "latents": latents,
            "hook": hook, "probe_hook": probe_hook, "examples": int(len(te))}
