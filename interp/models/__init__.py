"""Load any model the workbench can study as a TransformerLens ``HookedTransformer``.

``load(name)`` accepts:
- an embedded model (``othello``, ``pycode``), shipped in ``saes/models/``;
- a folder of ours (``config.json`` with a ``transformer_config``, ``model.safetensors``);
- a local Hugging Face model folder (``config.json`` + weights, as ``save_pretrained`` writes);
- any TransformerLens pretrained name or alias (``gpt2``, ``pythia-70m``, ...), whose
  weights come from the Hugging Face hub or its local cache.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path

import torch

from interp.errors import InterpError, unknown
from interp.models.io import CorruptModelError, load_model_folder
from interp.models.zoo import ZOO, model_dir


class ModelUnavailableError(InterpError, RuntimeError):
    """A known model whose weights cannot be had here (offline, no cache)."""


def embedded_models() -> list[str]:
    return list(ZOO)


def pretrained_names() -> list[str]:
    from transformer_lens import loading_from_pretrained as loading

    return list(loading.OFFICIAL_MODEL_NAMES) + list(loading.make_model_alias_map())


def load(name: str, device: str | torch.device = "cpu", **from_pretrained_kwargs):
    """A HookedTransformer for ``name`` (see module docstring), in eval mode."""
    name = str(name)
    if name in ZOO:
        folder = model_dir(name)
        if not (folder / "model.safetensors").exists():
            raise CorruptModelError(
                f"the embedded model {name!r} is not in {folder}; it ships with the "
                f"repository, or rebuild it with `interp model train {name}`")
        return load_model_folder(folder, device)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").exists():
            cfg = json.loads((path / "config.json").read_text())
            if "transformer_config" in cfg:
                return load_model_folder(path, device)
            return _load_hf_folder(path, device)
        raise CorruptModelError(f"{path} is a folder but has no config.json; a model folder "
                                f"needs config.json and its weights")
    return _load_pretrained(name, device, **from_pretrained_kwargs)


# config keys TransformerLens reads that recent transformers no longer write, by model_type:
# the key it wants -> the key that holds the value (GPT2Config(...).save_pretrained writes
# n_positions but not n_ctx with transformers 5)
CONFIG_ALIASES = {"gpt2": {"n_ctx": "n_positions"}}


@contextlib.contextmanager
def _config_for_conversion(path: Path):
    """``path``, or a temporary folder holding its config.json with the keys TransformerLens
    needs filled in from their aliases (``CONFIG_ALIASES``); the weights stay where they are."""
    raw = json.loads((path / "config.json").read_text())
    missing = {k: raw[v] for k, v in CONFIG_ALIASES.get(raw.get("model_type"), {}).items()
               if k not in raw and v in raw}
    if not missing:
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps({**raw, **missing}))
        yield Path(tmp)


def _load_hf_folder(path: Path, device):
    """A local Hugging Face checkpoint, converted and processed like from_pretrained does."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CorruptModelError(f"cannot load the Hugging Face model in {path}: {e}") from e
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError):
        pass  # a model without a tokenizer still runs on token ids
    try:
        with _config_for_conversion(path) as cfg_path:
            cfg = loading.get_pretrained_model_config(str(cfg_path),
                                                      hf_cfg=hf_model.config.to_dict(),
                                                      fold_ln=True, device=str(device))
        cfg.model_name = path.name
        state = loading.get_pretrained_state_dict(str(path), cfg, hf_model)
    except (KeyError, ValueError, NotImplementedError, AttributeError) as e:
        arch = getattr(hf_model.config, "architectures", None)
        raise ModelUnavailableError(
            f"TransformerLens cannot convert the model in {path} (architecture {arch}): {e}"
        ) from e
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)
    model.eval()
    model.interp_meta = {"name": str(path), "source": "hf-folder"}
    return model.to(device)


def _load_pretrained(name: str, device, **kwargs):
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(name)
    except ValueError:
        raise unknown("model", name, embedded_models() + pretrained_names()) from None
    try:
        model = HookedTransformer.from_pretrained(official, device=str(device), **kwargs)
    except Exception as e:  # hub errors come in many types (OSError, HTTP, offline mode)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelUnavailableError(
            f"could not load the weights of {official!r}: they are not in the local Hugging "
            f"Face cache and the hub {'is disabled (HF_HUB_OFFLINE=1)' if offline else 'could not be reached'}. "
            f"Run once with network access to cache them, or use an embedded model "
            f"({', '.join(embedded_models())}) or a local model folder. "
            f"(cause: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from e
    model.eval()
    model.interp_meta = {"name": official, "source": "pretrained"}
    return model



def token_strings(name: str, ids) -> list[str]:
    """Readable strings of token ``ids`` of model ``name``, without loading its weights.

    Embedded models use their own vocabularies (Othello squares such as ``d3``; pycode's
    BPE pieces); other models their Hugging Face tokenizer from the local cache. When no
    tokenizer can be found the ids are shown as ``#id``.
    """
    decode = _decoder(str(name))
    return [decode(int(i)) for i in ids]


@functools.lru_cache(maxsize=8)
def _decoder(name: str):
    if name == "othello":
        from interp.data.othello import token_names

        names = token_names()
        return lambda i: names[i] if 0 <= i < len(names) else f"#{i}"
    if name == "pycode":
        from interp.data.pycode import load_tokenizer

        tok = load_tokenizer(model_dir("pycode") / "tokenizer.json")
        return lambda i: tok.decode([i], skip_special_tokens=False)
    try:
        from transformer_lens import loading_from_pretrained as loading
        from transformers import AutoTokenizer

        path = Path(name)
        source = str(path) if path.is_dir() else loading.get_official_model_name(name)
        hf = AutoTokenizer.from_pretrained(source, local_files_only=True)
        return lambda i: hf.decode([i])
    except Exception:  # no tokenizer here: ids are still informative
        return lambda i: f"#{i}"
