"""Cross-layer transcoders (CLT): one encoder per layer, decoders into every later MLP.

A CLT over layers l_0 < ... < l_{n-1} reads each layer's MLP input x_L and writes every MLP
output y_L' (Anthropic's "Circuit Tracing", 2025): the features read at layer L write to
the outputs of layers L, L+1, ..., so ``y_hat_L' = sum_{L <= L'} a_L W_dec[L -> L'] + b``.

It is built from the one core: layer L's encoder and its decoders are one
``SparseAutoencoder`` transcoder whose output is the concatenation of its contributions to
the outputs of layers L..n-1 (``d_out = (n - L) * d_model``). So every activation of the
core (top-k family, ReLU, JumpReLU) works per layer with the same sparse kernels: only
the n encoder products ``x_L @ W_enc`` are dense; decoding and every gradient gather the
K active rows. What the CLT adds is the sum over source layers and the loss:

- the loss is summed over target layers of each output's squared error, every output
  normalised by its own scalar (E||s_L' y_L'||^2 = d_model): each layer counts alike;
- matryoshka sums it over nested prefixes of every layer's latents, hierarchical top-k
  averages it over k' = 1..K (every layer's top-k'), as the SAE does for one layer;
- AuxK: each layer's dead latents fit the residual of the outputs they write.

Layer L's output bias is one vector per target; the per-source copies are summed when
saved (``save_clt``) and loaded back into the diagonal block.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from interp.errors import CorruptArtifactError, DataError
from interp.hooks import flat_units, with_first_position
from interp.sae.core import (DENSE_FREQUENCY, SAEConfig, SparseAutoencoder, geometric_median,
                             sum_sq_error)

CLT_ARCHITECTURE = "interp_clt"   # cfg.json's ``architecture``: no SAELens form
WEIGHTS = "clt_weights.safetensors"


@dataclass
class CLTConfig:
    """``layer`` is the SAE config every layer's encoder shares (d_in = d_model of the MLP
    input, d_sae latents per layer, arch, k, options); ``layers`` the model layers, in
    order; ``d_out`` the MLP output's width."""

    layer: SAEConfig
    layers: tuple[int, ...]
    d_out: int
    metadata: dict = field(default_factory=dict)  # hooks_in, hooks_out, model, store...

    def __post_init__(self) -> None:
        self.layers = tuple(int(L) for L in self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def validate(self) -> "CLTConfig":
        if self.n_layers < 1:
            raise DataError("a cross-layer transcoder needs at least one layer")
        if list(self.layers) != sorted(set(self.layers)):
            raise DataError(f"CLT layers must be distinct and ascending, got {self.layers}")
        if self.layer.skip:
            raise DataError("a cross-layer transcoder has no skip term (train skip PLTs)")
        if self.layer.d_out is not None:
            raise DataError("a CLT's output widths follow from its layers: do not set d_out")
        self.layer.validate()
        return self

    def layer_config(self, i: int) -> SAEConfig:
        """The SAE config of the i-th layer's encoder: it writes the outputs i..n-1."""
        return replace(self.layer, d_out=(self.n_layers - i) * self.d_out,
                       seed=self.layer.seed + i, metadata={})

    def to_dict(self) -> dict:
        return json.loads(json.dumps({"layer": self.layer.to_dict(), "layers": self.layers,
                                      "d_out": self.d_out, "metadata": self.metadata}))

    @classmethod
    def from_dict(cls, d: dict) -> "CLTConfig":
        return cls(SAEConfig.from_dict(d["layer"]), tuple(d["layers"]), int(d["d_out"]),
                   dict(d.get("metadata") or {}))


@dataclass
class CLTOutput:
    """One forward pass: ``x_hat`` (B, n, d_out) the predicted outputs of every layer,
    ``outs`` each layer's ``SAEOutput`` (whose x_hat is its concatenated contributions)."""

    x_hat: torch.Tensor
    outs: list

    def fired_counts(self) -> torch.Tensor:
        """(n * d_sae,) rows each latent is active on, layer by layer."""
        return torch.cat([o.fired_counts() for o in self.outs])

    def l0(self) -> torch.Tensor:
        """(B,) active latents per row, summed over layers."""
        return sum(o.l0() for o in self.outs)

    def layer_l0(self) -> torch.Tensor:
        """(n,) mean active latents per row of each layer."""
        return torch.stack([o.l0().float().mean() for o in self.outs])


class CrossLayerTranscoder(nn.Module):
    def __init__(self, cfg: CLTConfig, sparse_kernels: bool = True):
        super().__init__()
        self.cfg = cfg.validate()
        self.encoders = nn.ModuleList(SparseAutoencoder(cfg.layer_config(i), sparse_kernels)
                                      for i in range(cfg.n_layers))
        n = cfg.n_layers
        # the training normalisation of each layer's input and output, (n, 1) so that it
        # broadcasts over (B, n, d) batches; folded into the weights when saved
        self.register_buffer("activation_scale", torch.ones(n, 1))
        self.register_buffer("activation_scale_out", torch.ones(n, 1))

    # -------------------------------------------------------------- the trainer's protocol
    @property
    def architecture(self):
        return self.cfg.layer.architecture

    @property
    def n_latents(self) -> int:
        return self.cfg.n_layers * self.cfg.layer.d_sae

    @property
    def encoder_dtype(self) -> torch.dtype:
        return self.encoders[0].encoder_dtype

    @encoder_dtype.setter
    def encoder_dtype(self, dtype: torch.dtype) -> None:
        for enc in self.encoders:
            enc.encoder_dtype = dtype

    def unit_norm_parameters(self) -> list[nn.Parameter]:
        return [p for enc in self.encoders for p in enc.unit_norm_parameters()]

    def synced_buffers(self) -> list[torch.Tensor]:
        return [b for enc in self.encoders for b in enc.synced_buffers()]

    def restart_running_statistics_(self) -> None:
        for enc in self.encoders:
            enc.restart_running_statistics_()

    def normalize_decoder(self) -> None:
        for enc in self.encoders:
            enc.normalize_decoder()

    def remove_parallel_grad(self) -> None:
        for enc in self.encoders:
            enc.remove_parallel_grad()

    @property
    def input_scale(self) -> torch.Tensor:
        return self.activation_scale

    @property
    def output_scale(self) -> torch.Tensor:
        return self.activation_scale_out

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer's input and output scale from a sample x, y (N, n, d), and each
        target's output bias (on the diagonal block) from the normalised outputs."""
        self._check_shapes(x, y)
        self.activation_scale.copy_(layer_scales(x))
        self.activation_scale_out.copy_(layer_scales(y))
        y = y * self.activation_scale_out
        rule = self.cfg.layer.b_dec_init
        for i, enc in enumerate(self.encoders):
            b = torch.zeros(self.cfg.n_layers - i, self.cfg.d_out, device=y.device)
            if rule != "zeros":  # on the diagonal block: the other sources add nothing
                b[0] = geometric_median(y[:, i]) if rule == "geometric_median" else y[:, i].mean(0)
            enc.b_dec.copy_(b.flatten())
        return self.input_scale.clone(), self.output_scale.clone()

    def eval_k_grid(self) -> list[int]:
        return []

    # -------------------------------------------------------------- forward
    def _check_shapes(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        n, d = self.cfg.n_layers, self.cfg.layer.d_in
        if x.ndim != 3 or x.shape[1:] != (n, d):
            raise DataError(f"a CLT over {n} layers reads (rows, {n}, {d}); got "
                            f"{tuple(x.shape)}")
        if y is not None and (y.ndim != 3 or y.shape[1:] != (n, self.cfg.d_out)):
            raise DataError(f"a CLT over {n} layers writes (rows, {n}, {self.cfg.d_out}); "
                            f"the target has {tuple(y.shape)}")

    def _assemble(self, contributions: list[torch.Tensor]) -> torch.Tensor:
        """(B, n, d_out) the sum over source layers i of their contributions (B, (n-i) d)
        at targets i..n-1: one output tensor, filled in place (``_Assemble``)."""
        return _Assemble.apply(self.cfg.n_layers, self.cfg.d_out, *contributions)

    def _place(self, i: int, contribution: torch.Tensor) -> torch.Tensor:
        """(B, n, d_out) layer i's contributions (B, (n-i) * d_out) at targets i..n-1."""
        B = contribution.shape[0]
        return F.pad(contribution.reshape(B, self.cfg.n_layers - i, self.cfg.d_out),
                     (0, 0, i, 0))

    def forward(self, x: torch.Tensor, step: int | None = None) -> CLTOutput:
        self._check_shapes(x)
        outs = [enc(x[:, i], step) for i, enc in enumerate(self.encoders)]
        return CLTOutput(self._assemble([o.x_hat for o in outs]), outs)

    def encode_layer(self, i: int, x: torch.Tensor):
        """Layer i's ``SAEOutput`` on its input x (B, d_in) (its x_hat: contributions)."""
        return self.encoders[i](x)

    # -------------------------------------------------------------- loss
    def loss(self, x: torch.Tensor, step: int = 0, dead: torch.Tensor | None = None,
             generator: torch.Generator | None = None, y: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, CLTOutput, dict]:
        """The joint loss on normalised inputs x and outputs y (B, n, d): reconstruction
        summed over target layers (see the module doc), each layer's sparsity terms, AuxK."""
        if y is None:
            raise DataError("a cross-layer transcoder fits MLP outputs: give y")
        self._check_shapes(x, y)
        out = self.forward(x, step)
        arch = self.architecture
        if arch.nested_prefixes:
            mse = self._matryoshka_mse(out, generator, y)
        elif arch.any_k:
            mse = self._hierarchical_mse(out, y)
        else:
            mse = sum_sq_error(out.x_hat, y)
        terms = {"mse": mse}
        for i, (enc, o) in enumerate(zip(self.encoders, out.outs)):
            for name, value in enc.sparsity_terms(o).items():
                terms[name] = terms.get(name, 0) + value
        if arch.aux_k and dead is not None and dead.any():
            residual = (y - out.x_hat).detach()
            m = self.cfg.layer.d_sae
            aux = 0
            for i, (enc, o) in enumerate(zip(self.encoders, out.outs)):
                dead_i = dead[i * m:(i + 1) * m]
                if dead_i.any():
                    aux = aux + enc.aux_loss(x[:, i], o, dead_i,
                                             residual[:, i:].flatten(1))
            terms["aux"] = self.cfg.layer.aux_alpha * aux
        total = sum(terms.values())
        return total, out, {k: float(v.detach()) for k, v in terms.items()}

    def _matryoshka_mse(self, out: CLTOutput, generator, y: torch.Tensor) -> torch.Tensor:
        total = y.new_zeros(())
        for m in self.encoders[0].prefix_sizes(generator):
            y_hat = self._assemble([enc.decode_sparse(o.values * (o.indices < m), o.indices)
                                    for enc, o in zip(self.encoders, out.outs)])
            total = total + sum_sq_error(y_hat, y)
        return total

    def _hierarchical_mse(self, out: CLTOutput, y: torch.Tensor) -> torch.Tensor:
        """Mean over k' = 1..K of the error with every layer's top-k' latents: the
        cumulative sums of each layer's sorted contributions (memory B * K * n * d_out)."""
        B, K = y.shape[0], self.cfg.layer.k
        y_hats = 0
        for i, (enc, o) in enumerate(zip(self.encoders, out.outs)):
            contrib = o.values.unsqueeze(-1) * enc.W_dec[o.indices]      # (B, K, d_i)
            partial = contrib.cumsum(1) + enc.b_dec
            y_hats = y_hats + F.pad(partial.reshape(B, K, self.cfg.n_layers - i,
                                                    self.cfg.d_out), (0, 0, i, 0))
        return (y_hats - y.unsqueeze(1)).square().sum((2, 3)).mean()

    # -------------------------------------------------------------- in the model
    def splice_hooks(self, keep_first: bool = False) -> list[tuple[str, object]]:
        """TransformerLens hooks that replace every covered MLP output by the CLT's
        prediction: each input hook's activation is kept; at layer i's output hook, layer
        i's encoder runs and the output is the sum of the contributions of layers <= i
        (those of earlier layers computed at their own output hooks in this forward).
        ``keep_first``: position 0 as the model computes it
        (``interp.hooks.with_first_position``)."""

        md = self.cfg.metadata
        kept: dict[int, torch.Tensor] = {}
        written: dict[int, torch.Tensor] = {}   # layer -> its contributions (rows, n-i, d)
        d_in, d_out, n = self.cfg.layer.d_in, self.cfg.d_out, self.cfg.n_layers

        def keep(i):
            def fn(act, hook):
                if i == 0:  # a new forward pass
                    written.clear()
                kept[i] = act
            return fn

        def predict(i):
            def fn(act, hook):
                x = flat_units(kept.pop(i), d_in).reshape(-1, d_in).float()
                flat_units(act, d_out)
                written[i] = self.encoders[i](x).x_hat.reshape(-1, n - i, d_out)
                y = sum(written[j][:, i - j] for j in range(i + 1))
                return with_first_position(y.reshape(act.shape).to(act.dtype), act,
                                           keep_first)
            return fn

        hooks = []
        for i, (h_in, h_out) in enumerate(zip(md["hook_names"], md["hook_names_out"])):
            hooks += [(h_in, keep(i)), (h_out, predict(i))]
        return hooks

    # -------------------------------------------------------------- weights by target
    def decoder_blocks(self, i: int) -> torch.Tensor:
        """(d_sae, n - i, d_out) layer i's decoder, block j writing to layer i + j."""
        enc = self.encoders[i]
        return enc.W_dec.reshape(enc.cfg.d_sae, self.cfg.n_layers - i, self.cfg.d_out)

    def output_bias(self) -> torch.Tensor:
        """(n, d_out) each target's bias: the sum of every source's copy."""
        return sum(self._place(i, enc.b_dec.unsqueeze(0))[0]
                   for i, enc in enumerate(self.encoders))

    @torch.no_grad()
    def fold_activation_scales(self) -> None:
        """Make the CLT read raw inputs and write raw outputs (its training scales folded
        into the weights, as ``SparseAutoencoder.fold_activation_scale`` does)."""
        s_in = self.activation_scale[:, 0]
        s_out = self.activation_scale_out[:, 0]
        for i, enc in enumerate(self.encoders):
            per_target = s_out[i:].repeat_interleave(self.cfg.d_out)      # ((n-i) d,)
            enc._W_enc.mul_(s_in[i])
            enc._W_dec.div_(per_target)
            enc.b_dec.div_(per_target)  # thresholds are on z: the folding keeps z
        self.activation_scale.fill_(1.0)
        self.activation_scale_out.fill_(1.0)


class _Assemble(torch.autograd.Function):
    """out[:, i:] += c_i for each source layer i, into one (B, n, d) tensor; the gradient
    of c_i is a view of the output's gradient (no padded copies, as F.pad + sum makes)."""

    @staticmethod
    def forward(ctx, n, d, *contributions):
        first = contributions[0]
        out = first.reshape(first.shape[0], n, d).clone()
        for i, c in enumerate(contributions[1:], start=1):
            out[:, i:].add_(c.reshape(c.shape[0], n - i, d))
        ctx.n, ctx.d = n, d
        return out

    @staticmethod
    def backward(ctx, g):
        n, d = ctx.n, ctx.d
        return (None, None, *(g[:, i:].reshape(g.shape[0], (n - i) * d) for i in range(n)))


def layer_scales(sample: torch.Tensor) -> torch.Tensor:
    """(n, 1) s_L with E||s_L x_L||^2 = d over a sample (N, n, d), per layer."""
    ms = sample.double().square().sum(-1).mean(0)                       # (n,)
    if bool((ms <= 0).any()):
        raise DataError("a layer's activation sample is all zeros; cannot normalize it")
    return (sample.shape[-1] / ms).sqrt().float().unsqueeze(1)


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def clt_metrics(clt: CrossLayerTranscoder, batches, scale=1.0, scale_out=1.0) -> dict:
    """Per layer: FVU of its MLP output, L0, dead and dense fractions of its latents; and
    the totals (FVU over all outputs, L0 summed over layers), over (x, y) batches of raw
    (B, n, d) activations (multiplied by the (n, 1) scales on the way in)."""
    was = clt.training
    clt.eval()
    n_layers, m = clt.cfg.n_layers, clt.cfg.layer.d_sae
    rows, l0 = 0, torch.zeros(n_layers, dtype=torch.float64)
    err_by_layer = torch.zeros(n_layers, dtype=torch.float64)
    sum_y = sum_y2 = None
    fired = torch.zeros(n_layers * m, dtype=torch.float64)
    device = clt.activation_scale.device
    try:
        for x, y in batches:
            x = x.to(device).float() * scale
            y = y.to(device).float() * scale_out
            out = clt(x)
            err = (out.x_hat - y).double().square()
            err_by_layer += err.sum((0, 2)).cpu()
            ys = y.double()
            sum_y = ys.sum(0) if sum_y is None else sum_y + ys.sum(0)            # (n, d)
            y2 = ys.square().sum((0, 2))
            sum_y2 = y2 if sum_y2 is None else sum_y2 + y2                      # (n,)
            l0 += torch.stack([o.l0().double().sum() for o in out.outs]).cpu()
            fired += out.fired_counts().double().cpu()
            rows += x.shape[0]
    finally:
        clt.train(was)
    if rows == 0:
        raise DataError("no rows to evaluate on (the store is empty)")
    var = (sum_y2 - sum_y.square().sum(-1) / rows).cpu()                        # (n,)
    density = (fired / rows).reshape(n_layers, m)
    per_layer = []
    for i, layer in enumerate(clt.cfg.layers):
        per_layer.append({
            "layer": layer, "fvu": float(err_by_layer[i] / var[i].clamp_min(1e-12)),
            "mse": float(err_by_layer[i] / rows), "l0": float(l0[i] / rows),
            "dead_fraction": float((density[i] == 0).double().mean()),
            "dense_fraction": float((density[i] > DENSE_FREQUENCY).double().mean())})
    return {"fvu": float(err_by_layer.sum() / var.sum().clamp_min(1e-12)),
            "mse": float(err_by_layer.sum() / rows), "l0": float(l0.sum() / rows),
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_FREQUENCY).double().mean()),
            "n_tokens": rows, "layers": per_layer, "density": density.flatten().tolist()}


# ------------------------------------------------------------------ saving
def save_clt(clt: CrossLayerTranscoder, folder: str | Path, metadata: dict | None = None
             ) -> Path:
    """Write ``cfg.json`` and ``clt_weights.safetensors`` (scales folded in, raw
    activations): per layer i ``W_enc.i`` (d_in, d_sae), ``b_enc.i`` (d_sae), ``W_dec.i``
    (d_sae, n - i, d_out), ``b_dec.i`` (d_out) the bias of target i, and for threshold
    activations ``threshold.i`` (d_sae) -- the layout circuit-tracer's CLTs use."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clt = _folded_copy(clt)
    bias = clt.output_bias()
    tensors = {}
    for i, enc in enumerate(clt.encoders):
        tensors[f"W_enc.{i}"] = enc.W_enc.detach().contiguous()
        tensors[f"b_enc.{i}"] = enc.b_enc.detach().contiguous()
        tensors[f"W_dec.{i}"] = clt.decoder_blocks(i).detach().contiguous()
        tensors[f"b_dec.{i}"] = bias[i].detach().contiguous()
        theta = enc.inference_threshold()
        if theta is not None:
            tensors[f"threshold.{i}"] = theta.contiguous()
    save_file({k: v.float().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS))
    cfg = clt.cfg.to_dict()
    cfg["metadata"] = {**cfg["metadata"], **(metadata or {})}
    meta = cfg["metadata"]
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": CLT_ARCHITECTURE, "activation": clt.cfg.layer.arch,
        "d_in": clt.cfg.layer.d_in, "d_out": clt.cfg.d_out, "d_sae": clt.cfg.layer.d_sae,
        "k": clt.cfg.layer.k, "layers": list(clt.cfg.layers),
        "hook_names": meta.get("hook_names"), "hook_names_out": meta.get("hook_names_out"),
        "model_name": meta.get("model_name"), "clt": cfg}, indent=2) + "\n")
    return folder


def _folded_copy(clt: CrossLayerTranscoder) -> CrossLayerTranscoder:
    copy = CrossLayerTranscoder(CLTConfig.from_dict(clt.cfg.to_dict()))
    copy.load_state_dict(clt.state_dict())
    copy.eval()
    copy.fold_activation_scales()
    return copy


def is_clt_folder(folder: str | Path) -> bool:
    p = Path(folder) / "cfg.json"
    try:
        return json.loads(p.read_text()).get("architecture") == CLT_ARCHITECTURE
    except (OSError, ValueError, AttributeError):
        return False


def load_clt(folder: str | Path, device: str | torch.device = "cpu") -> CrossLayerTranscoder:
    """A CLT ``save_clt`` wrote (raw activations: scales 1)."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "cfg.json").read_text())
        cfg = CLTConfig.from_dict(raw["clt"])
        weights = load_file(str(folder / WEIGHTS))
    except Exception as e:  # also safetensors' own errors for a truncated file
        raise CorruptArtifactError(f"{folder} is not a readable cross-layer transcoder "
                                   f"({e})") from e
    clt = CrossLayerTranscoder(cfg)
    n = cfg.n_layers
    with torch.no_grad():
        for i, enc in enumerate(clt.encoders):
            try:
                enc._W_enc.copy_(weights[f"W_enc.{i}"].T)
                enc.b_enc.copy_(weights[f"b_enc.{i}"])
                enc._W_dec.copy_(weights[f"W_dec.{i}"].reshape(cfg.layer.d_sae, -1))
                b = torch.zeros(n - i, cfg.d_out)
                b[0] = weights[f"b_dec.{i}"]
                enc.b_dec.copy_(b.flatten())
                if f"threshold.{i}" in weights:
                    enc.load_inference_threshold_(weights[f"threshold.{i}"])
            except (KeyError, RuntimeError) as e:
                raise CorruptArtifactError(f"{folder / WEIGHTS} does not match its cfg.json "
                                           f"at layer {cfg.layers[i]} ({e})") from e
    return clt.to(device).eval()
