"""SAEs spliced into a TransformerLens model with error terms.

At each spliced hook the activation ``x`` is split into the SAE's latents ``a`` and an error
``err = x - x_hat(a)``. The hook's output is written so that its value is exactly ``x`` (not
``x_hat + err``, which can differ from ``x`` in the last bit), while gradients reach ``a``
and ``err`` (``d out / d a = W_dec``, ``d out / d err = I``) and pass to ``x`` unchanged, so
upstream gradients are the original model's:

    out = x + (decode(a) - decode(a).detach()) + (err - err.detach())

Nodes of a circuit are (hook, position, latent) and (hook, position, error). Interventions
(patching, ablation, steering) replace ``a`` and/or ``err`` at a hook and the output becomes
``x + (a' - a) @ W_dec + (err' - err)``, which leaves every unchanged coordinate exact.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.errors import DataError, unknown
from interp.sae.core import SparseAutoencoder

# intervention(hook, acts (B, T, m), err (B, T, d)) -> (acts', err'), either may be unchanged
Intervention = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class HookState:
    """One spliced hook in one forward pass."""

    x: torch.Tensor      # (B, T, d) the original activation
    acts: torch.Tensor   # (B, T, m) the SAE's latents (dense; a leaf when tracking grads)
    err: torch.Tensor    # (B, T, d) x - x_hat (a leaf when tracking grads)


@dataclass
class SpliceResult:
    logits: torch.Tensor
    hooks: dict[str, HookState] = field(default_factory=dict)
    captured: dict[str, torch.Tensor] = field(default_factory=dict)  # run(capture=...)


class _Fork(torch.autograd.Function):
    """Two copies of a tensor that are separate nodes of the graph (gradients add up)."""

    @staticmethod
    def forward(ctx, t):
        return t.clone(), t.clone()

    @staticmethod
    def backward(ctx, g1, g2):
        if g1 is None:
            return g2
        return g1 if g2 is None else g1 + g2


class SplicedModel:
    """A model with SAEs at a set of hook points; see the module docstring."""

    def __init__(self, model, saes: Mapping[str, SparseAutoencoder | str | Path]):
        from interp.provenance import check_dictionary
        from interp.sae.io import load_sae

        if not saes:
            raise DataError("splice at least one SAE: give {hook: SAE or SAE folder}")
        self.model = model
        order = list(model.hook_dict)
        self.saes: dict[str, SparseAutoencoder] = {}
        for hook, sae in saes.items():
            if hook not in model.hook_dict:
                raise unknown("hook", hook, order)
            sae = load_sae(sae) if isinstance(sae, (str, Path)) else sae
            self.saes[hook] = sae.eval()
        self.hooks = sorted(self.saes, key=order.index)  # in the model's order
        for hook in self.hooks:  # another model's SAE, or another hook's, is refused
            check_dictionary(self.saes[hook], name=f"for {hook}", model=model, hook=hook)

    # -------------------------------------------------------------- encoding
    def encode(self, hook: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(acts (B, T, m), err (B, T, d)) of the SAE at ``hook`` for activations x."""
        sae = self.saes[hook]
        shape = x.shape
        with torch.no_grad():
            out = sae(x.reshape(-1, shape[-1]).float())
            acts = out.dense().reshape(*shape[:-1], -1)
            err = (x.float() - out.x_hat.reshape(shape)).to(x.dtype)
        return acts, err

    def decode_delta(self, hook: str, delta_acts: torch.Tensor) -> torch.Tensor:
        """``delta_acts @ W_dec`` (no bias): what a change of the latents adds to x."""
        return delta_acts @ self.saes[hook].W_dec

    # -------------------------------------------------------------- running
    def run(self, tokens: torch.Tensor, interventions: Mapping[str, Intervention] | None = None,
            track_grads: bool = False, stop_at_layer: int | None = None,
            graph: bool = False, linear: bool = False, capture: tuple[str, ...] = ()
            ) -> SpliceResult:
        """Forward pass with every SAE spliced in.

        ``interventions[hook]`` may change that hook's latents and error. ``track_grads``
        makes each hook's ``acts`` and ``err`` leaves whose ``.grad`` a backward pass fills.
        ``graph`` instead computes each hook's ``acts`` and ``err`` from its input ``x``
        differentiably (gradients retained), so that the hook's output depends on upstream
        nodes only through them: vector-Jacobian products between hooks give edge effects.
        ``linear`` (with ``graph``) freezes attention patterns and LayerNorm scales in the
        backward pass, which makes the model between hooks linear where it has no MLP.
        ``capture`` names hooks (at or after the last spliced one) whose output is kept in
        ``result.captured``, differentiably: metrics that read a feature rather than logits.

        One function of ~70 lines on purpose: the hook closures share this call's state
        (the result, the interventions, the mode), and the modes are read best side by side.
        """
        interventions = dict(interventions or {})
        bad = sorted(set(interventions) - set(self.saes))
        if bad:
            raise DataError(f"interventions at {bad}, where no SAE is spliced; spliced: "
                            f"{self.hooks}")
        if graph and interventions:
            raise DataError("graph mode runs the clean model; interventions are not allowed")
        result = SpliceResult(logits=torch.empty(0))

        def splice(x: torch.Tensor, hook) -> torch.Tensor:
            name = hook.name
            if graph:
                return self._splice_graph(name, x, result)
            acts, err = self.encode(name, x.detach())
            state = HookState(x=x, acts=acts, err=err)
            if name in interventions:
                new_acts, new_err = interventions[name](name, acts, err)
                delta = torch.zeros_like(x)
                if new_acts is not acts:
                    delta = delta + self.decode_delta(name, new_acts - acts).to(x.dtype)
                if new_err is not err:
                    delta = delta + (new_err - err)
                state.acts, state.err = new_acts, new_err
                x = x + delta
            if track_grads:
                state.acts = state.acts.detach().requires_grad_(True)
                state.err = state.err.detach().requires_grad_(True)
                rec = self.decode_delta(name, state.acts).to(x.dtype)
                x = x + (rec - rec.detach()) + (state.err - state.err.detach())
            result.hooks[name] = state
            return x

        fwd = [(h, splice) for h in self.hooks]
        order = list(self.model.hook_dict)
        for h in capture:
            if h not in self.model.hook_dict:
                raise unknown("hook", h, order)
            if order.index(h) < order.index(self.hooks[-1]):
                raise DataError(f"the metric reads {h}, before the spliced hook "
                                f"{self.hooks[-1]}, whose nodes could not affect it; read a "
                                f"hook at or after it")

            def keep(t: torch.Tensor, hook) -> None:
                result.captured[hook.name] = t
            fwd.append((h, keep))
        if linear:
            freeze = lambda t, hook: t.detach()  # noqa: E731
            fwd += [(h, freeze) for h in self.model.hook_dict
                    if h.endswith("attn.hook_pattern") or h.endswith("hook_scale")]
        with torch.set_grad_enabled(track_grads or graph):
            result.logits = self.model.run_with_hooks(tokens, fwd_hooks=fwd,
                                                      stop_at_layer=stop_at_layer)
        return result

    def _splice_graph(self, name: str, x: torch.Tensor, result: SpliceResult) -> torch.Tensor:
        sae = self.saes[name]
        shape = x.shape
        if not x.requires_grad:  # the first hook of a frozen model: its nodes still need grads
            x = x.detach().requires_grad_(True)
        out = sae(x.reshape(-1, shape[-1]).float())
        # two copies of the latents: the node (acts) reaches the output only through the
        # decoder, its twin only through the error, so that d out / d acts = W_dec and
        # d out / d err = I while d out / d x stays the identity
        acts, twin = _Fork.apply(out.dense().reshape(*shape[:-1], -1))
        rec = self.decode_delta(name, acts).to(x.dtype)
        err = x - self.decode_delta(name, twin).to(x.dtype) - sae.b_dec.detach().to(x.dtype)
        acts.retain_grad()
        err.retain_grad()
        result.hooks[name] = HookState(x=x, acts=acts, err=err)
        node_sum = rec + err  # == x - b_dec; its gradient reaches x through acts and err
        return x.detach() + (node_sum - node_sum.detach())
