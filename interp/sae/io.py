"""Save and load SAEs in SAELens's format: ``cfg.json`` + ``sae_weights.safetensors``.

``sae_lens.SAE.load_from_disk(folder)`` opens what :func:`save_sae` writes and computes the
same encodings and reconstructions (the activation scale is folded into the weights first).
How each architecture is written, as SAELens's inference architecture (its
``Architecture.saelens_name`` in ``interp.sae.core``):

- relu -> ``standard``; topk and hierarchical_topk (at its full K) -> ``topk``;
- jumprelu -> ``jumprelu``; batchtopk and matryoshka -> ``jumprelu`` with their learned
  inference threshold on every latent (their inference rule is exactly that);
- ksparse keeps negative values, which no SAELens architecture does: it is written in the
  same files with ``architecture: "ksparse"``, readable by :func:`load_sae` only.

Transcoders (``d_out`` set; ``skip``: plus ``W_skip``) are written in SAELens's transcoder
forms where it has one: relu -> ``transcoder`` / ``skip_transcoder``; jumprelu, batchtopk,
matryoshka -> ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` (no input shift:
``apply_b_dec_to_input`` false; ``d_out``; ``W_skip`` in SAELens's (d_out, d_in) layout;
the output hook as metadata ``hook_name_out``). SAELens has no top-k transcoder: topk,
hierarchical_topk and ksparse transcoders are written as ``interp_<arch>_transcoder``,
which SAELens refuses and :func:`load_sae` reads.

An SAE of ``attn.hook_z`` (d_in = n_heads * d_head, heads concatenated) is written with
``reshape_activations: "hook_z"``: SAELens then reads the hook's own (..., n_heads, d_head)
activations, as our splice does (``interp.hooks.flat_units``).

Our own full config is stored under the ``interp`` key of ``cfg.json`` (SAELens ignores
keys it does not know), so :func:`load_sae` restores the exact architecture. Folders that
SAELens wrote (standard, topk, jumprelu, batchtopk, and its transcoders) load too, with
``apply_b_dec_to_input: false`` and TopK's ``rescale_acts_by_decoder_norm`` folded into the
weights (:func:`fold_saelens_options`); a normalisation other than "none" is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from interp.errors import CorruptArtifactError, DataError
from interp.sae.core import ARCHS, FROM_SAELENS, SAEConfig, SparseAutoencoder
from interp.version import code_version

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


def save_sae(sae: SparseAutoencoder, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write ``sae`` (activation scale folded in, a copy: ``sae`` is not changed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    scale, scale_out = float(sae.activation_scale), sae.output_scale
    with torch.no_grad():  # fold_activation_scale's arithmetic, on copies
        W_enc, b_enc = sae.W_enc.detach() * scale, sae.b_enc.detach()
        W_dec, b_dec = sae.W_dec.detach() / scale_out, sae.b_dec.detach() / scale_out
    weights = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    if cfg.skip:  # SAELens's layout: (d_out, d_in)
        weights["W_skip"] = sae.W_skip.detach().T * (scale / scale_out)
    threshold = sae.inference_threshold()  # refuses a batch top-k SAE never trained
    if threshold is not None:
        weights["threshold"] = threshold
    weights = {k: v.float().contiguous().clone() for k, v in weights.items()}
    meta = {**cfg.metadata, **(metadata or {})}
    meta.setdefault("interp_version", code_version())
    # SAELens reads configs without a version as pre-6.0 ones and rebuilds their metadata
    meta.setdefault("sae_lens_version", _sae_lens_format_version())
    ours = cfg.to_dict()
    ours["metadata"] = meta
    cfg_json = {
        "architecture": saelens_form(cfg), "d_in": cfg.d_in, "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": not cfg.transcoder,
        "normalize_activations": "none",
        "reshape_activations": saelens_reshape(cfg, meta.get("hook_name")),
        "metadata": meta, "interp": ours,
    }
    if cfg.transcoder:
        cfg_json["d_out"] = cfg.d_out
    if cfg.architecture.saelens_takes_k:
        cfg_json.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    save_file(weights, str(folder / WEIGHTS_FILE))
    (folder / CFG_FILE).write_text(json.dumps(cfg_json, indent=2) + "\n")
    return folder


def saelens_form(cfg: SAEConfig) -> str:
    """The ``architecture`` written to cfg.json: SAELens's form of this SAE or transcoder."""
    name = cfg.architecture.saelens_name
    if not cfg.transcoder:
        return name
    base = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}.get(name)
    if base is None:  # no SAELens form: a name SAELens refuses rather than misreads
        return f"interp_{cfg.arch}_{'skip_' if cfg.skip else ''}transcoder"
    return base.replace("transcoder", "skip_transcoder") if cfg.skip else base


def saelens_reshape(cfg: SAEConfig, hook: str | None) -> str:
    """SAELens's ``reshape_activations``: ``hook_z`` for an SAE reading ``attn.hook_z``, so
    that SAELens takes (..., n_heads, d_head) input, flattens it as we do (heads
    concatenated) and gives its reconstruction back in that shape; "none" otherwise (a
    transcoder's output is not laid out as heads, so it is never reshaped)."""
    if hook and hook.endswith("attn.hook_z") and not cfg.transcoder:
        return "hook_z"
    return "none"


# SAELens's transcoder architectures -> (our activation, skip term)
SAELENS_TRANSCODERS = {"transcoder": ("relu", False), "skip_transcoder": ("relu", True),
                       "jumprelu_transcoder": ("jumprelu", False),
                       "jumprelu_skip_transcoder": ("jumprelu", True)}


def _sae_lens_format_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # not installed: the format we write is SAELens 6's
        return "6.0.0"


def _config_of(raw: dict, cfg_path: Path) -> SAEConfig:
    """Our config from a cfg.json: the ``interp`` key we wrote, or SAELens's own fields."""
    if "interp" in raw:
        return SAEConfig.from_dict(raw["interp"])
    arch = raw.get("architecture", "standard")
    if arch in SAELENS_TRANSCODERS:  # a transcoder SAELens wrote
        ours, skip = SAELENS_TRANSCODERS[arch]
        return SAEConfig(d_in=raw["d_in"], d_sae=raw["d_sae"], arch=ours, d_out=raw["d_out"],
                         skip=skip, b_dec_init="zeros", metadata=raw.get("metadata") or {})
    if arch not in FROM_SAELENS:
        raise DataError(f"SAELens architecture {arch!r} in {cfg_path} is not supported; "
                        f"supported: {sorted(FROM_SAELENS) + sorted(SAELENS_TRANSCODERS)}")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise DataError(f"{cfg_path}: normalize_activations="
                        f"{raw['normalize_activations']!r} is not supported; fold the "
                        f"normalization into the weights first")
    ours = ARCHS[FROM_SAELENS[arch]]
    return SAEConfig(d_in=raw["d_in"], d_sae=raw["d_sae"], arch=ours.name,
                     k=raw.get("k", 32) if ours.uses_k else 32,
                     b_dec_init="zeros", metadata=raw.get("metadata") or {})


def fold_saelens_options(raw: dict, weights: dict) -> dict:
    """The weights of an SAE SAELens wrote, with the options of its cfg.json that our one
    form ``z = (x - b_dec) W_enc + b_enc``, ``x_hat = a W_dec + b_dec`` lacks folded in
    (exactly, up to float rounding; a new dict):

    - ``apply_b_dec_to_input: false`` (the encoder reads x itself, as in Gemma Scope and
      most converted releases): ``b_enc += b_dec W_enc``;
    - ``rescale_acts_by_decoder_norm: true`` (TopK: z scaled by the decoder row norms n,
      codes decoded by the unit rows ``W_dec / n``): ``W_enc, b_enc *= n``,
      ``W_dec /= n``.
    """
    w = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    if raw.get("apply_b_dec_to_input") is False:
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    if raw.get("rescale_acts_by_decoder_norm"):
        n = w["W_dec"].norm(dim=-1)
        w["W_enc"], w["b_enc"] = w["W_enc"] * n, w["b_enc"] * n
        w["W_dec"] = w["W_dec"] / n.clamp(min=1e-12)[:, None]
    return w


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """An SAE from a folder written by :func:`save_sae` or by SAELens."""
    from interp.sae.clt import is_clt_folder

    folder = Path(folder)
    if is_clt_folder(folder):
        raise DataError(f"{folder} is a cross-layer transcoder (one encoder per layer, "
                        f"decoders to every later MLP): `interp eval` evaluates it as a "
                        f"replacement model; this command takes an SAE or a per-layer "
                        f"transcoder")
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.exists():
            raise CorruptArtifactError(f"SAE folder {folder} is missing {p.name} (an SAE folder "
                                       f"holds {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifactError(f"{cfg_path} is not valid JSON ({e})") from e
    missing = [k for k in ("d_in", "d_sae") if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise CorruptArtifactError(f"{cfg_path} is not an SAE config: it needs an object with "
                                   f"d_in, d_sae and architecture (missing {', '.join(missing)})")
    try:
        weights = load_file(str(w_path))
    except Exception as e:  # safetensors has its own error types for bad headers
        raise CorruptArtifactError(f"{w_path} is truncated or corrupt: {e}") from e
    cfg = _config_of(raw, cfg_path)
    sae = SparseAutoencoder(cfg)
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.out_dim),
                "b_enc": (cfg.d_sae,), "b_dec": (cfg.out_dim,)}
    if cfg.skip:
        expected["W_skip"] = (cfg.out_dim, cfg.d_in)
    if cfg.architecture.threshold_inference:
        expected["threshold"] = (cfg.d_sae,)
    for name, shape in expected.items():
        if name not in weights:
            raise CorruptArtifactError(f"{w_path} has no {name!r} (it has {sorted(weights)})")
        if tuple(weights[name].shape) != shape:
            raise CorruptArtifactError(f"{w_path}: {name} has shape "
                                       f"{tuple(weights[name].shape)}, its config needs {shape}")
    if "interp" not in raw and not cfg.transcoder:
        weights = fold_saelens_options(raw, weights)
    with torch.no_grad():
        sae.W_enc.copy_(weights["W_enc"])
        sae.b_enc.copy_(weights["b_enc"])
        sae.b_dec.copy_(weights["b_dec"])
        if cfg.tied:  # a saved tied ksparse SAE comes back untied (its scale is folded)
            sae.untie()
        sae._W_dec.copy_(weights["W_dec"])
        if cfg.skip:
            sae.W_skip.copy_(weights["W_skip"].T)
    if "threshold" in expected:
        try:
            sae.load_inference_threshold_(weights["threshold"])
        except DataError as e:
            raise DataError(f"{w_path}: {e}") from None
    return sae.to(device).eval()
