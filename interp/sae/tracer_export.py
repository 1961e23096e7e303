"""Export transcoders in circuit-tracer's format, read by circuit-tracer's own loaders.

circuit-tracer (0.5.0) builds attribution graphs over a replacement model whose MLPs are
replaced by a set of per-layer transcoders (PLTs) or by one cross-layer transcoder (CLT).
Its folder, as its cache writes and ``load_transcoders_from_cache`` reads it:

- ``config.yaml``: ``model_kind`` (``transcoder_set`` or ``cross_layer_transcoder``),
  ``model_name``, ``feature_input_hook`` and ``feature_output_hook`` (inside a block:
  circuit-tracer reads ``blocks.L.<hook>``), ``scan`` (an id its feature pages use); ours
  adds an ``interp`` key (sources, activations, version) that it ignores.
- a transcoder set: ``layer_L.safetensors`` for L = 0..n-1, every layer of the model, one
  width. Keys: ``W_enc`` (d_sae, d_model), its rows the encoder directions
  (``z = x @ W_enc.T + b_enc``: no input shift), ``W_dec`` (d_sae, d_model), ``b_enc``
  (d_sae), ``b_dec`` (d_model); ``activation_function.threshold`` (d_sae) makes it
  JumpReLU ``z * (z > theta)``, without it ReLU; ``W_skip`` (d_model, d_model) adds
  ``x @ W_skip.T`` (every layer or none).
- a CLT: per layer ``W_enc_L.safetensors`` holding ``W_enc_L`` (d_sae, d_model), ``b_enc_L``,
  ``b_dec_L`` (d_model: the bias of layer L's MLP output) and ``threshold_L`` (JumpReLU on
  every layer, or on none: ReLU), and ``W_dec_L.safetensors`` holding ``W_dec_L``
  (d_sae, n - L, d_model), block j writing to layer L + j. Its loader reads no skip term.

We write float32. circuit-tracer loads the folder with
``load_transcoders_from_cache(FOLDER_NAME, cache_dir=PARENT, dtype=torch.float32)`` (or
``CIRCUIT_TRACER_CACHE_DIR=PARENT circuit-tracer attribute --transcoder_set FOLDER_NAME``);
its ``load_clt`` defaults to bfloat16: pass ``dtype``.

What maps and what does not:
- Activations: circuit-tracer's loaders build ReLU or JumpReLU only (its ``TopK`` module is
  used by none, and its files hold no k). relu -> ReLU; jumprelu (learned threshold),
  batchtopk and matryoshka (inference: one learned threshold) -> JumpReLU, exactly our
  inference rule. topk, hierarchical_topk and ksparse keep k latents per token: refused.
- Hooks: circuit-tracer feeds ``blocks.L.<feature_input_hook>`` to the encoder unchanged
  and applies no LayerNorm itself. Ours read ``blocks.L.ln2.hook_normalized`` (the MLP's
  input centred and divided by its scale, before the LayerNorm's weight and bias: in
  TransformerLens ``hook_normalized`` comes before them), exported as
  ``ln2.hook_normalized``: the same tensor. Its replacement model freezes
  ``ln2.hook_scale``, so the graph stays linear. A transcoder of
  ``hook_resid_mid`` exports as ``hook_resid_mid``. The output must be ``hook_mlp_out``.
- Model: circuit-tracer's TransformerLens replacement model wraps each block's MLP as
  ``mlp.old_mlp`` (and the unembedding as ``unembed.old_unembed``);
  :func:`load_replacement_weights` loads a model's weights into
  ``TransformerLensReplacementModel.from_config(model.cfg, transcoders)`` under those names.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file

from interp.errors import DataError, MismatchError, UsageError
from interp.sae.core import Architecture, SparseAutoencoder
from interp.version import code_version

CONFIG_FILE = "config.yaml"
TRANSCODER_SET, CLT = "transcoder_set", "cross_layer_transcoder"
OUTPUT_SITE = "hook_mlp_out"
# every file an export writes besides config.yaml; an export removes old ones first
TENSOR_FILES = re.compile(r"^(layer|W_enc|W_dec)_\d+\.safetensors$")
_IN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CLTLayer(NamedTuple):
    """One layer L of a cross-layer transcoder over n layers, on raw activations."""

    W_enc: torch.Tensor            # (d_model, d_sae): ours and SAELens's layout
    b_enc: torch.Tensor            # (d_sae,)
    W_dec: torch.Tensor            # (d_sae, n - L, d_model): block j writes layer L + j
    b_dec: torch.Tensor            # (d_model,) the bias of layer L's MLP output
    threshold: torch.Tensor | None  # (d_sae,) JumpReLU's; None: ReLU


def tracer_activation(arch: Architecture) -> str:
    """'relu' or 'jumprelu': what circuit-tracer computes for a dictionary of ``arch``;
    an architecture it cannot express is refused."""
    if arch.threshold_inference:
        return "jumprelu"
    if not arch.uses_k and arch.rectified:
        return "relu"
    raise DataError(f"circuit-tracer's transcoders apply ReLU or a JumpReLU threshold, not "
                    f"top-k: a {arch.name} transcoder cannot be exported (train relu, "
                    f"jumprelu, batchtopk or matryoshka)")


def block_site(hook: str) -> tuple[int, str]:
    """(L, site) of ``blocks.L.<site>``: circuit-tracer names hooks inside a block."""
    m = _IN_BLOCK.match(hook or "")
    if not m:
        raise DataError(f"circuit-tracer reads hooks inside a block (blocks.L.<hook>); got "
                        f"{hook!r}")
    return int(m.group(1)), m.group(2)


def replacement_state_dict(state_dict: dict) -> dict:
    """A TransformerLens model's weights as circuit-tracer's replacement model names them:
    it wraps each MLP and the unembedding, so ``blocks.L.mlp.*`` -> ``blocks.L.mlp.old_mlp.*``
    and ``unembed.*`` -> ``unembed.old_unembed.*`` (the rest unchanged)."""
    rename = ((re.compile(r"^(blocks\.\d+\.mlp)\."), r"\1.old_mlp."),
              (re.compile(r"^unembed\."), "unembed.old_unembed."))
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rename:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def load_replacement_weights(replacement_model: torch.nn.Module, state_dict: dict) -> None:
    """Load a TransformerLens model's weights into circuit-tracer's replacement model built
    from its config (``TransformerLensReplacementModel.from_config(model.cfg, transcoders)``);
    the transcoders keep their own. Any other key missing or left over is refused."""
    missing, unexpected = replacement_model.load_state_dict(
        replacement_state_dict(state_dict), strict=False)
    missing = [k for k in missing if not k.startswith("transcoders.")]
    if missing or unexpected:
        raise MismatchError(f"the weights do not fit circuit-tracer's replacement model: "
                            f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}")


# ------------------------------------------------------------------ checks
def _resolve(i: int, spec) -> tuple[str, SparseAutoencoder]:
    if isinstance(spec, SparseAutoencoder):
        return f"transcoder #{i}", spec
    from interp.runs import resolve_sae

    return str(spec), resolve_sae(spec).sae


def _model_of(metadata: list[dict], model_name: str | None):
    """The model every dictionary was trained on (``model_name`` or their metadata),
    loaded; dictionaries of two models are refused."""
    names = {md.get("model_name") for md in metadata} - {None}
    digests = {md.get("model_digest") for md in metadata} - {None}
    if len(names) > 1 or len(digests) > 1:
        raise MismatchError(f"the dictionaries come from different models "
                            f"({', '.join(sorted(names | digests))}); export one model's")
    model_name = model_name or next(iter(names), None)
    if model_name is None:
        raise UsageError("the dictionaries do not record their model: give it (--model)")
    from interp.models import load

    return model_name, load(model_name)


def _check_layers(layers: list[int], labels: list[str], n_layers: int) -> None:
    seen: dict[int, str] = {}
    for layer, label in zip(layers, labels):
        if layer in seen:
            raise DataError(f"two transcoders for layer {layer}: {seen[layer]} and {label}")
        seen[layer] = label
    missing = sorted(set(range(n_layers)) - set(seen))
    extra = sorted(set(seen) - set(range(n_layers)))
    if missing or extra:
        raise DataError(f"circuit-tracer needs one transcoder per layer 0..{n_layers - 1} of "
                        f"the model; " + (f"missing layer(s) {missing}" if missing else
                                          f"the model has no layer(s) {extra}"))


def _one_value(what: str, values: list, labels: list[str]) -> None:
    if len(set(values)) > 1:
        pairs = ", ".join(f"{label}: {v}" for label, v in zip(labels, values))
        raise DataError(f"circuit-tracer takes one {what} for every layer; got {pairs}")


def _check_set(resolved: list[tuple[str, SparseAutoencoder]], model_name: str | None
               ) -> tuple[str, str, list[int]]:
    """(model name, feature_input_hook, layers) of a valid transcoder set; else one line."""
    from interp.provenance import check_dictionary

    labels = [label for label, _ in resolved]
    for label, sae in resolved:
        if not sae.cfg.transcoder:
            raise DataError(f"{label} is an SAE (it reads and writes one hook); circuit-tracer "
                            f"takes transcoders of the MLPs")
        tracer_activation(sae.architecture)
    name, model = _model_of([s.cfg.metadata or {} for _, s in resolved], model_name)
    layers, sites = [], []
    for label, sae in resolved:
        md = sae.cfg.metadata or {}
        (layer, site), (layer_out, site_out) = (block_site(md.get("hook_name")),
                                                block_site(md.get("hook_name_out")))
        if site_out != OUTPUT_SITE or layer_out != layer:
            raise DataError(f"{label} writes {md.get('hook_name_out')}: circuit-tracer "
                            f"replaces MLPs, so a transcoder of layer {layer} must write "
                            f"blocks.{layer}.{OUTPUT_SITE}")
        check_dictionary(sae, name=label, model=model, model_name=name)
        layers.append(layer)
        sites.append(site)
    _check_layers(layers, labels, model.cfg.n_layers)
    _one_value("input hook", sites, labels)
    _one_value("width (d_sae)", [s.cfg.d_sae for _, s in resolved], labels)
    _one_value("skip setting", [s.cfg.skip for _, s in resolved], labels)
    return name, sites[0], layers


# ------------------------------------------------------------------ writing
def _clear(out: Path) -> None:
    """Remove the tensors of an earlier export (a layer count may shrink) and its config:
    circuit-tracer counts the files, and a config is written last, when the rest is."""
    if out.is_dir():
        for f in out.iterdir():
            if TENSOR_FILES.match(f.name) or f.name == CONFIG_FILE:
                f.unlink()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
              str(path))


def _write_config(out: Path, kind: str, model_name: str, site_in: str, extra: dict) -> None:
    import yaml

    cfg = {"model_kind": kind, "model_name": model_name, "feature_input_hook": site_in,
           "feature_output_hook": OUTPUT_SITE, "scan": f"interp/{model_name}/{out.name}",
           "interp": {"version": code_version(), **extra}}
    (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))


def _plt_tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """One layer's file: the activation scales folded in (on a copy), circuit-tracer's
    layout (W_enc and W_skip transposed from ours)."""
    sae = copy.deepcopy(sae).cpu()
    sae.fold_activation_scale(float(sae.activation_scale), sae.output_scale)
    tensors = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": sae.b_enc,
               "b_dec": sae.b_dec}
    threshold = sae.inference_threshold()
    if threshold is not None:
        tensors["activation_function.threshold"] = threshold
    if sae.cfg.skip:
        tensors["W_skip"] = sae.W_skip.T
    return tensors


def export_circuit_tracer(dictionaries: Sequence, out_dir: str | Path,
                          model_name: str | None = None) -> Path:
    """Write per-layer transcoders (one per layer of the model: folders, shipped names or
    loaded ``SparseAutoencoder`` transcoders) -- or one cross-layer transcoder folder --
    as a circuit-tracer folder ``out_dir`` (see the module docstring). Everything is
    checked (one model, every layer once, one width, input hook, skip setting, an
    activation circuit-tracer has) before anything is written."""
    if not dictionaries:
        raise UsageError("name the transcoders to export (one per layer), or one CLT")
    clt = _clt_of(dictionaries[0]) if len(dictionaries) == 1 else None
    if clt is not None:
        return export_clt_dictionary(clt, out_dir, model_name)
    resolved = [_resolve(i, d) for i, d in enumerate(dictionaries)]
    name, site_in, layers = _check_set(resolved, model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    by_layer = sorted(zip(layers, resolved), key=lambda t: t[0])
    for layer, (_, sae) in by_layer:
        _save(_plt_tensors(sae), out / f"layer_{layer}.safetensors")
    _write_config(out, TRANSCODER_SET, name, site_in, {
        "sources": [label for _, (label, _) in by_layer],
        "activations": [tracer_activation(s.architecture) for _, (_, s) in by_layer],
        "skip": bool(resolved[0][1].cfg.skip), "d_sae": resolved[0][1].cfg.d_sae})
    return out


# ------------------------------------------------------------------ cross-layer transcoders
def export_clt(layers: Sequence[CLTLayer], out_dir: str | Path, model_name: str,
               feature_input_hook: str = "ln2.hook_normalized", extra: dict | None = None
               ) -> Path:
    """Write a cross-layer transcoder over every layer 0..n-1 of a model from its
    per-layer tensors (:class:`CLTLayer`, raw activations) as circuit-tracer's CLT folder."""
    n = len(layers)
    if n == 0:
        raise DataError("a cross-layer transcoder needs at least one layer")
    d_model, d_sae = layers[0].W_enc.shape
    if len({lay.threshold is None for lay in layers}) > 1:
        raise DataError("circuit-tracer's CLT applies JumpReLU on every layer or ReLU on "
                        "every layer; these layers mix them")
    for i, lay in enumerate(layers):
        shapes = {"W_enc": (d_model, d_sae), "b_enc": (d_sae,), "b_dec": (d_model,),
                  "W_dec": (d_sae, n - i, d_model)}
        if lay.threshold is not None:
            shapes["threshold"] = (d_sae,)
        for key, shape in shapes.items():
            if tuple(getattr(lay, key).shape) != shape:
                raise DataError(f"CLT layer {i}: {key} has shape "
                                f"{tuple(getattr(lay, key).shape)}, expected {shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    for i, lay in enumerate(layers):
        enc = {f"W_enc_{i}": lay.W_enc.T, f"b_enc_{i}": lay.b_enc, f"b_dec_{i}": lay.b_dec}
        if lay.threshold is not None:
            enc[f"threshold_{i}"] = lay.threshold
        _save(enc, out / f"W_enc_{i}.safetensors")
        _save({f"W_dec_{i}": lay.W_dec}, out / f"W_dec_{i}.safetensors")
    _write_config(out, CLT, model_name, feature_input_hook, {"n_layers": n, "d_sae": d_sae,
                                                             **(extra or {})})
    return out


# ---- the CLT of interp.sae.clt (a colleague's module; its interface as of issue 15):
# a CrossLayerTranscoder whose layer-i encoder is a SparseAutoencoder transcoder writing
# the concatenated outputs of layers i..n-1; decoder_blocks(i), output_bias(); metadata
# model_name, hook_names, hook_names_out. Adapt here if that interface changes.
def _clt_of(spec):
    """The cross-layer transcoder ``spec`` names (a CLT folder or object), else None."""
    try:
        from interp.sae.clt import CrossLayerTranscoder, is_clt_folder, load_clt
    except ImportError:  # no CLT module: nothing is a CLT
        return None
    if isinstance(spec, CrossLayerTranscoder):
        return spec
    if isinstance(spec, (str, Path)) and is_clt_folder(spec):
        return load_clt(spec)
    return None


def export_clt_dictionary(clt, out_dir: str | Path, model_name: str | None = None) -> Path:
    """Export an ``interp.sae.clt.CrossLayerTranscoder`` over every layer of its model."""
    activation = tracer_activation(clt.architecture)
    md = clt.cfg.metadata or {}
    name, model = _model_of([md], model_name)
    _check_layers(list(clt.cfg.layers), [f"encoder {i}" for i in range(clt.cfg.n_layers)],
                  model.cfg.n_layers)
    hooks_in, hooks_out = md.get("hook_names") or [], md.get("hook_names_out") or []
    ins, outs = [block_site(h) for h in hooks_in], [block_site(h) for h in hooks_out]
    layers = list(clt.cfg.layers)
    if [L for L, _ in ins] != layers or outs != [(L, OUTPUT_SITE) for L in layers]:
        raise DataError(f"the CLT must read blocks.L.<hook> and write blocks.L.{OUTPUT_SITE} "
                        f"for its layers {layers}; it records {hooks_in} -> {hooks_out}")
    _one_value("input hook", [s for _, s in ins], hooks_in)
    widths = (clt.cfg.layer.d_in, clt.cfg.d_out)
    if widths != (model.cfg.d_model,) * 2:
        raise MismatchError(f"the CLT reads width {widths[0]} and writes {widths[1]}, but "
                            f"model {name!r} has d_model={model.cfg.d_model}")
    clt = copy.deepcopy(clt).cpu()
    clt.fold_activation_scales()
    bias = clt.output_bias()
    layers = [CLTLayer(enc.W_enc, enc.b_enc, clt.decoder_blocks(i), bias[i],
                       enc.inference_threshold()) for i, enc in enumerate(clt.encoders)]
    return export_clt(layers, out_dir, name, ins[0][1], {"activation": activation})
