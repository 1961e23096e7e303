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

A hook with several unit dims (``attn.hook_z``: heads x d_head) is spliced in its flattened
(B, T, n_heads * d_head) layout, the layout its SAE was trained on, and handed back to the
model in its own shape.

A transcoder is spliced at the hook it writes (e.g. ``blocks.L.hook_mlp_out``), keyed by
that hook: its latents are computed from the hook it reads (``blocks.L.ln2.hook_normalized``)
in the same forward pass, and its error is ``err = y - y_hat`` with ``y`` the true output
(the MLP's) and ``y_hat`` its full prediction. The MLP is thus replaced by the transcoder
plus its error: unchanged output without interventions, and ablating or steering a latent
moves the output hook by ``(a' - a) @ W_dec``. A skip transcoder's ``x_in @ W_skip`` is
not a node: like the residual stream around the MLP, it follows its input as the model runs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from interp.errors import DataError, unknown
from interp.hooks import flat_units
from interp.sae.core import SparseAutoencoder

# intervention(hook, acts (B, T, m), err (B, T, d)) -> (acts', err'), either may be unchanged
Intervention = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class HookState:
    """One spliced hook in one forward pass."""

    x: torch.Tensor      # (B, T, d) the original activation, units flattened (flat_units);
    #                      a transcoder's: the hook it writes (its d is d_out)
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
        # {hook written: hook read} of the transcoders, whose latents come from another hook
        self.reads: dict[str, str] = {}
        for hook in self.hooks:  # another model's SAE, or another hook's, is refused
            read = self._hook_read(hook, self.saes[hook])
            check_dictionary(self.saes[hook], name=f"for {hook}", model=model, hook=read)
            if read != hook:
                self.reads[hook] = read

    @staticmethod
    def _hook_read(hook: str, sae: SparseAutoencoder) -> str:
        """The hook whose activation the dictionary spliced at ``hook`` encodes: ``hook``
        for an SAE; a transcoder's input hook (``hook`` must be the one it writes)."""
        if not sae.cfg.transcoder:
            return hook
        from interp.sae.evaluate import written_hook

        read, written = (sae.cfg.metadata or {}).get("hook_name"), written_hook(sae)
        if not read or not written:
            raise DataError(f"the transcoder for {hook} does not record the hooks it reads "
                            f"and writes (metadata hook_name, hook_name_out)")
        if hook != written:
            raise DataError(f"the transcoder given for {hook} reads {read} and writes "
                            f"{written}: splice it at {written}, where its latents and error "
                            f"are nodes")
        return read

    # -------------------------------------------------------------- encoding
    def encode(self, hook: str, x: torch.Tensor, x_in: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(acts (B, T, m), err (B, T, d)) of the SAE at ``hook`` for activations x
        (B, T, *units), units flattened to d (``flat_units``). A transcoder's latents come
        from ``x_in``, the activation of the hook it reads, and ``err = x - y_hat``."""
        sae = self.saes[hook]
        x = flat_units(x, sae.cfg.out_dim)
        x_in = x if x_in is None else flat_units(x_in, sae.cfg.d_in)
        with torch.no_grad():
            out = sae(x_in.reshape(-1, sae.cfg.d_in).float())
            acts = out.dense().reshape(*x.shape[:2], -1)
            err = (x.float() - out.x_hat.reshape(x.shape)).to(x.dtype)
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

        One function of ~80 lines on purpose: the hook closures share this call's state
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
        inputs: dict[str, torch.Tensor] = {}  # a transcoder's input, by the hook it writes

        def keep_input(t: torch.Tensor, hook, written: str) -> None:
            inputs[written] = t

        def splice(x_hook: torch.Tensor, hook) -> torch.Tensor:
            # nodes live in the flattened (B, T, d) layout; the model gets its own shape back
            name = hook.name
            x = flat_units(x_hook, self.saes[name].cfg.out_dim)
            x_in = (flat_units(inputs.pop(name), self.saes[name].cfg.d_in)
                    if name in self.reads else x)
            if graph:
                return self._splice_graph(name, x, x_in, result).reshape(x_hook.shape)
            acts, err = self.encode(name, x.detach(), x_in.detach())
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
            return x.reshape(x_hook.shape)

        # a transcoder reads its input after any splice there (graph mode: through its nodes)
        fwd = [(h, splice) for h in self.hooks] + [
            (read, partial(keep_input, written=h)) for h, read in self.reads.items()]
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
        # inference_mode(False): gradients through the splice even when the caller's thread
        # is in inference mode (set_grad_enabled alone cannot leave it); seen once in the
        # app's server under load, where a circuit's metric came back without a graph
        with torch.inference_mode(False), torch.set_grad_enabled(track_grads or graph):
            result.logits = self.model.run_with_hooks(tokens, fwd_hooks=fwd,
                                                      stop_at_layer=stop_at_layer)
        return result

    def _splice_graph(self, name: str, x: torch.Tensor, x_in: torch.Tensor,
                      result: SpliceResult) -> torch.Tensor:
        """``x`` (B, T, d), units already flattened; ``x_in`` is ``x`` for an SAE, a
        transcoder's input (B, T, d_in) otherwise."""
        sae = self.saes[name]
        same = x_in is x
        if not x.requires_grad:  # the first hook of a frozen model: its nodes still need grads
            x = x.detach().requires_grad_(True)
        if same or not x_in.requires_grad:
            x_in = x if same else x_in.detach().requires_grad_(True)
        flat_in = x_in.reshape(-1, sae.cfg.d_in).float()
        out = sae(flat_in)
        # two copies of the latents: the node (acts) reaches the output only through the
        # decoder, its twin only through the error, so that d out / d acts = W_dec and
        # d out / d err = I while d out / d x stays the identity (a transcoder: x is its
        # output, so d out / d its input stays the MLP's own Jacobian)
        acts, twin = _Fork.apply(out.dense().reshape(*x.shape[:2], -1))
        rec = self.decode_delta(name, acts).to(x.dtype)
        skip = sae.skip_term(flat_in)  # not a node: its gradient cancels out of node_sum
        skip = 0.0 if skip is None else skip.reshape(x.shape).to(x.dtype)
        err = (x - self.decode_delta(name, twin).to(x.dtype) - sae.b_dec.detach().to(x.dtype)
               - skip)
        acts.retain_grad()
        err.retain_grad()
        result.hooks[name] = HookState(x=x, acts=acts, err=err)
        node_sum = rec + skip + err  # == x - b_dec; its gradient reaches x via acts and err
        return x.detach() + (node_sum - node_sum.detach())
