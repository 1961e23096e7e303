"""Save and load the embedded models (config.json + model.safetensors [+ tokenizer.json])."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from interp.errors import CorruptArtifactError
from interp.models.zoo import ZooSpec


class CorruptModelError(CorruptArtifactError):
    """A model folder exists but its files are missing, truncated or inconsistent."""


def save_zoo_model(model, spec: ZooSpec, out_dir: Path, meta: dict | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {k: v.detach().contiguous().clone() for k, v in model.named_parameters()}
    save_file(params, str(out_dir / "model.safetensors"), metadata={"model": spec.name})
    if (out_dir / "tokenizer.json").exists():
        from interp.data.pycode import save_hf_tokenizer
        save_hf_tokenizer(out_dir / "tokenizer.json", out_dir)
    config = {"name": spec.name, "description": spec.description,
              "transformer_config": spec.transformer_config(), **(meta or {})}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_model_folder(folder: Path, device: str | torch.device = "cpu"):
    """A HookedTransformer from one of our model folders."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    cfg_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.exists():
            raise CorruptModelError(f"model folder {folder} is missing {p.name}")
    try:
        config = json.loads(cfg_path.read_text())
        tcfg = HookedTransformerConfig(**config["transformer_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptModelError(f"{cfg_path} is not a valid model config: {e}") from e
    try:
        params = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CorruptModelError(f"{weights_path} is truncated or corrupt: {e}") from e
    tokenizer = None
    if (folder / "tokenizer_config.json").exists():
        from interp.data.pycode import hf_tokenizer
        tokenizer = hf_tokenizer(folder)
    model = HookedTransformer(tcfg, tokenizer=tokenizer, move_to_device=False)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    for k, v in params.items():
        if k in shapes and tuple(v.shape) != shapes[k]:
            raise CorruptModelError(f"{weights_path}: {k} has shape {tuple(v.shape)}, "
                                    f"its config needs {shapes[k]}")
    missing, unexpected = model.load_state_dict(params, strict=False)
    expected = {k for k, _ in model.named_parameters()}
    missing_params = [k for k in missing if k in expected]
    if missing_params or unexpected:
        raise CorruptModelError(
            f"{weights_path} does not match its config: missing {missing_params[:5]}, "
            f"unexpected {list(unexpected)[:5]}")
    model.eval()
    model.interp_meta = config  # provenance for run.json and manifests
    return model.to(device)
