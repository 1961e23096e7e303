"""Load any model the workbench can study as a TransformerLens ``HookedTransformer``.

``load(name)`` accepts:
- an embedded model (``othello``, ``pycode``), shipped in ``saes/models/``;
- a folder of ours (``config.json`` with a ``transformer_config``, ``model.safetensors``);
- a local Hugging Face model folder (``config.json`` + weights, as ``save_pretrained`` writes)
  of a family TransformerLens converts: GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Mistral, ...,
  and Gemma-2 of any size (its config built here: ``OWN_CONFIGS``); converted and processed
  as ``HookedTransformer.from_pretrained`` does (``_processing``), checked against
  ``transformers`` per family in ``tests/test_own_models.py``;
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

from interp.errors import InterpError, first_line, unknown
from interp.models.io import CorruptModelError, load_model_folder
from interp.models.zoo import ZOO, model_dir


class ModelUnavailableError(InterpError, RuntimeError):
    """A known model whose weights cannot be had here (offline, no cache)."""


def embedded_models() -> list[str]:
    return list(ZOO)


def pretrained_names() -> list[str]:
    from transformer_lens import loading_from_pretrained as loading

    return list(loading.OFFICIAL_MODEL_NAMES) + list(loading.make_model_alias_map())


def official_name(name: str) -> str:
    """TransformerLens's official name of a pretrained ``name`` or alias (``gpt2-small`` ->
    ``gpt2``; what :func:`load` records, and how SAELens releases name models); embedded
    models, folders and names it does not know stay as they are."""
    if name in ZOO or Path(name).expanduser().exists():
        return name
    from transformer_lens import loading_from_pretrained as loading

    try:
        return loading.get_official_model_name(name)
    except ValueError:
        return name


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
            cfg = _read_config(path)
            if "transformer_config" in cfg:
                return load_model_folder(path, device)
            return _load_hf_folder(path, cfg, device)
        raise CorruptModelError(f"{path} is a folder but has no config.json; a model folder "
                                f"needs config.json and its weights")
    return _load_pretrained(name, device, **from_pretrained_kwargs)


def _read_config(path: Path) -> dict:
    """A model folder's config.json as a dict; anything else is refused naming the file."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptModelError(f"{path / 'config.json'} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CorruptModelError(f"{path / 'config.json'} is not a model config (a JSON "
                                f"object)")
    return cfg


# config keys TransformerLens reads that recent transformers no longer write, by model_type:
# the key it wants -> the key that holds the value (GPT2Config(...).save_pretrained writes
# n_positions but not n_ctx with transformers 5)
CONFIG_ALIASES = {"gpt2": {"n_ctx": "n_positions"}}

# TransformerLens picks an architecture from the folder's *path* before it reads config.json
# ("llama" anywhere in it means Llama without reading the config; "gemma" means one of the
# published Gemma sizes): a local folder is converted from a copy of its config under this
# neutral name, and the families that TransformerLens only knows at published sizes get
# their config from ours (below)
NEUTRAL_NAME = "checkpoint"


@contextlib.contextmanager
def _config_for_conversion(raw: dict):
    """A temporary folder named ``NEUTRAL_NAME`` holding the config ``raw`` with the keys
    TransformerLens needs filled in from their aliases (``CONFIG_ALIASES``); the weights
    stay where they are."""
    missing = {k: raw[v] for k, v in CONFIG_ALIASES.get(raw.get("model_type"), {}).items()
               if k not in raw and v in raw}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / NEUTRAL_NAME
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**raw, **missing}))
        yield folder


def _gemma2_config(hf) -> dict:
    """TransformerLens's config for a Gemma-2 checkpoint of any size, read from its Hugging
    Face config (TransformerLens hard-codes the published sizes by name)."""
    rope = getattr(hf, "rope_parameters", None) or {}
    kinds = {"sliding_attention": "local", "full_attention": "global"}
    layer_types = getattr(hf, "layer_types", None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention"
        for i in range(hf.num_hidden_layers)]
    return {
        "d_model": hf.hidden_size, "d_head": hf.head_dim, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings, "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_activation, "initializer_range": hf.initializer_range,
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_base": rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0)),
        "rotary_dim": hf.head_dim,
        "use_attn_scale": True, "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": hf.num_key_value_heads,
        "window_size": hf.sliding_window, "use_local_attn": True,
        "attn_types": [kinds[t] for t in layer_types],
        "attn_scores_soft_cap": hf.attn_logit_softcapping or -1.0,
        "output_logits_soft_cap": hf.final_logit_softcapping or -1.0,
        "gated_mlp": True, "final_rms": True, "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM", "tokenizer_name": None,
        "quantization_method": None,
    }


# families TransformerLens converts only at their published sizes, by name: ours reads the
# config instead (architecture -> the function that builds TransformerLens's config dict)
OWN_CONFIGS = {"Gemma2ForCausalLM": _gemma2_config}
# families it cannot convert from a local folder at all, and what to do instead
NOT_FROM_FOLDERS = {
    "GemmaForCausalLM": "Gemma (1) is converted only at its published sizes: load "
                        "google/gemma-2b or google/gemma-7b by name",
    "Gemma3ForCausalLM": "Gemma-3 is converted only at its published sizes: load it by "
                         "name (google/gemma-3-270m, google/gemma-3-1b-pt, ...)",
}


@contextlib.contextmanager
def _own_config(architecture: str | None, hf_config):
    """While converting, TransformerLens's config for ``architecture`` comes from
    ``OWN_CONFIGS`` (so all its later processing, folding and defaults still apply)."""
    build = OWN_CONFIGS.get(architecture)
    if build is None:
        yield
        return
    from transformer_lens import loading_from_pretrained as loading

    original = loading.convert_hf_model_config
    loading.convert_hf_model_config = lambda *_a, **_k: build(hf_config)
    try:
        yield
    finally:
        loading.convert_hf_model_config = original


def _processing(cfg) -> dict:
    """The weight processing HookedTransformer.from_pretrained applies to ``cfg``'s family:
    folding and centring, except where they would change the model's output (a norm after
    the sublayer; a logit soft cap, which is not invariant to a constant added to the
    logits)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    post_norm = cfg.original_architecture in POST_NORM_ARCHITECTURES
    soft_cap = cfg.output_logits_soft_cap is not None and cfg.output_logits_soft_cap > 0
    return {"fold_ln": not post_norm, "center_writing_weights": not post_norm,
            "center_unembed": not soft_cap}


def _load_hf_folder(path: Path, raw: dict, device):
    """A local Hugging Face checkpoint (its config.json read as ``raw``), converted and
    processed like from_pretrained does."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    arch = (raw.get("architectures") or [None])[0]
    if arch in NOT_FROM_FOLDERS:  # before the weights are read
        raise ModelUnavailableError(f"the model in {path} is a {arch}: TransformerLens "
                                    f"cannot convert it from a local folder; "
                                    f"{NOT_FROM_FOLDERS[arch]}")
    hf_logging.disable_progress_bar()  # one line per refusal; our commands show their own
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise CorruptModelError(f"cannot load the Hugging Face model in {path} (its weights "
                                f"are missing, truncated or corrupt): {first_line(e)}") from e
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError):
        pass  # a model without a tokenizer still runs on token ids
    try:
        with _config_for_conversion(raw) as cfg_path, _own_config(arch, hf_model.config):
            cfg = loading.get_pretrained_model_config(str(cfg_path),
                                                      hf_cfg=hf_model.config.to_dict(),
                                                      fold_ln=True, device=str(device))
        cfg.model_name = path.name
        # the tokenizer is the folder's (given below) or none: never the temporary config's
        cfg.tokenizer_name = str(path) if tokenizer is not None else None
        state = loading.get_pretrained_state_dict(str(path), cfg, hf_model)
    except (KeyError, ValueError, NotImplementedError, AttributeError) as e:
        raise ModelUnavailableError(
            f"TransformerLens cannot convert the model in {path} (architecture {arch}): {e}"
        ) from e
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, fold_value_biases=True, **_processing(cfg))
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
            f"(cause: {type(e).__name__}: {first_line(e, 200)})"
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
