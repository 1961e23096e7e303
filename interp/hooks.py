"""Hook-name rules, in one place: which layer a hook is in, where a forward pass may stop,
which hooks a model has and how wide they are, the default context length, and which hook
an SAE reads.

TransformerLens names hooks ``blocks.L.<site>`` inside block L (``hook_resid_pre``,
``hook_resid_mid``, ``hook_resid_post``, ``hook_mlp_out``, ``attn.hook_z``, ``mlp.hook_post``,
``ln2.hook_normalized``, ...) and ``hook_embed`` / ``hook_pos_embed`` / ``ln_final.*`` /
``unembed.*`` outside the blocks.
"""
from __future__ import annotations

import math
import re

import torch

from interp.errors import DataError, unknown

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens")
MAX_DEFAULT_N_CTX = 128  # the default context length is the model's, at most this


def layer_of(hook: str) -> int | None:
    """L of ``blocks.L.*``; None for a hook outside the blocks."""
    m = _BLOCK.match(hook)
    return int(m.group(1)) if m else None


def stop_layer(hooks: list[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs every hook (None: the whole model)."""
    last = -1
    for h in hooks:
        layer = layer_of(h)
        if layer is not None:
            last = max(last, layer)
        elif h not in BEFORE_BLOCKS:
            return None  # ln_final, unembed: needs the full model
    return last + 1  # n_layers is fine too: every block runs, the unembedding does not


def validate_hooks(model, hooks: list[str]) -> None:
    """Every hook is one of the model's (an unknown one is named with the closest)."""
    for h in hooks:
        if h not in model.hook_dict:
            raise unknown_hook(model, h)


# hooks some families do not have, and why: (site, the config test, the reason)
MISSING_BY_FAMILY = (
    ("hook_resid_mid", lambda c: c.parallel_attn_mlp,
     "attention and MLP read the same residual stream in parallel, so there is no "
     "hook_resid_mid"),
    ("hook_pos_embed", lambda c: c.positional_embedding_type == "rotary",
     "positions enter through rotary embeddings of queries and keys (attn.hook_rot_q, "
     "attn.hook_rot_k), so there is no hook_pos_embed"),
    ("hook_attn_in", lambda c: not c.use_attn_in,
     "hook_attn_in and hook_q_input exist only with model.set_use_attn_in(True)"),
)


def unknown_hook(model, hook: str):
    """The error for a hook ``model`` does not have: the closest names, and the family's
    reason when the hook is one its architecture lacks (Pythia has no hook_resid_mid)."""
    err = unknown("hook", hook, list(model.hook_dict))
    cfg = model.cfg
    why = [reason for site, lacks, reason in MISSING_BY_FAMILY
           if hook.endswith(site) and lacks(cfg)]
    if not why:
        return err
    return type(err)(f"{err}; {cfg.original_architecture or cfg.model_name}: {why[0]}")


def hook_widths(model, hooks: list[str], n_ctx: int = 2) -> dict[str, int]:
    """d_in of each hook (trailing dims flattened), from a one-context dry run that stops
    after the last block the hooks need."""
    widths: dict[str, int] = {}

    def grab(act, hook):
        if act.dim() < 3 or act.shape[1] != n_ctx:
            raise DataError(f"hook {hook.name!r} gives shape {tuple(act.shape)}, which is not "
                            f"(batch, position, ...); use position-indexed hooks such as "
                            f"resid_pre/post, mlp_out, attn_out, mlp.hook_post or attn.hook_z")
        widths[hook.name] = int(math.prod(act.shape[2:]))

    tokens = torch.zeros(1, n_ctx, dtype=torch.long, device=model.cfg.device)
    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(h, grab) for h in hooks],
                             stop_at_layer=stop_layer(hooks, model.cfg.n_layers))
    return widths


def flat_units(act: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """A hook's activation (batch, position, *units) as (batch, position, width): its unit
    dims flattened row-major, so ``attn.hook_z``'s (n_heads, d_head) becomes the heads
    concatenated. This is the layout a store holds and a dictionary reads; reshaping the
    result (or a reconstruction of it) to ``act.shape`` undoes it. ``width`` (a
    dictionary's d_in) is checked, so a head's d_head is never taken for the whole width."""
    flat = act.reshape(act.shape[0], act.shape[1], -1)
    if width is not None and flat.shape[-1] != width:
        raise DataError(f"the activation has units {tuple(act.shape[2:])} ({flat.shape[-1]} "
                        f"wide), but the dictionary reads d_in={width}")
    return flat


def with_first_position(new: torch.Tensor, act: torch.Tensor, keep_first: bool) -> torch.Tensor:
    """``new`` with position 0 taken from ``act`` when ``keep_first``: the BOS position,
    whose activations are the same in every context (it attends to itself only) and which
    harvests leave out, so no dictionary was trained on it; keeping it is adding a constant."""
    if not keep_first:
        return new
    return torch.cat([act[:, :1], new[:, 1:]], dim=1)


# the order TransformerLens runs the hooks of one block (a prefix names a group of hooks)
_SITE_ORDER = ("hook_resid_pre", "ln1.", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_rot", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
               "attn.hook_result", "hook_attn_out", "hook_resid_mid", "ln2.", "mlp.hook_pre",
               "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


# sites whose activation is the residual stream or a term added to it: a direction there
# is a residual-stream direction as it stands
_RESIDUAL_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                   "hook_mlp_out")


def is_residual_stream(hook: str) -> bool:
    """Whether ``hook`` is the residual stream or a term added to it (embeddings, a block's
    resid_pre/mid/post, attn_out, mlp_out)."""
    if hook in ("hook_embed", "hook_pos_embed"):
        return True
    return layer_of(hook) is not None and _BLOCK.sub("", hook) in _RESIDUAL_SITES


def mlp_io_hooks(layer: int) -> tuple[str, str]:
    """(input, output) hooks of the MLP of block ``layer``, as a transcoder reads and writes.

    The input is ``ln2.hook_normalized``: exactly what the MLP sees, after the LayerNorm
    (as circuit-tracer's GPT-2 transcoders read it), so the transcoder replaces the MLP as
    a function of its own input; ``hook_resid_mid`` would make it learn the LayerNorm too.
    """
    return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"


def hook_position(hook: str) -> tuple[int, int] | None:
    """Where ``hook`` runs in a forward pass, as a sortable (layer, site) pair; None for a
    hook whose place this table does not know."""
    if hook in BEFORE_BLOCKS:
        return (-1, 0)
    if hook.startswith(("ln_final.", "unembed.")):
        return (1 << 30, 0)
    layer = layer_of(hook)
    if layer is None:
        return None
    site = _BLOCK.sub("", hook)
    for i, prefix in enumerate(_SITE_ORDER):
        if site.startswith(prefix):
            return (layer, i)
    return None


def check_io_hooks(hook_in: str, hook_out: str) -> None:
    """Refuse a dictionary whose input hook is its output hook, or runs after it."""
    if hook_in == hook_out:
        raise DataError(f"the output hook is the input hook {hook_in!r}: that is an SAE; "
                        f"leave the output hook out")
    a, b = hook_position(hook_in), hook_position(hook_out)
    if a is not None and b is not None and a > b:
        raise DataError(f"input hook {hook_in!r} runs after output hook {hook_out!r}: a "
                        f"transcoder reads a hook that comes first (e.g. "
                        f"{' -> '.join(mlp_io_hooks(layer_of(hook_out) or 0))})")


def default_n_ctx(model, n_ctx: int | None = None) -> int:
    """``n_ctx`` when given, else the model's context length, at most 128."""
    return n_ctx or min(model.cfg.n_ctx, MAX_DEFAULT_N_CTX)


def sae_hook(sae, name: object = None) -> str:
    """The hook an SAE reads (its metadata ``hook_name``); refused when it does not say."""
    hook = (sae.cfg.metadata or {}).get("hook_name")
    if not hook:
        raise DataError(f"the SAE{' ' + str(name) if name else ''} does not record its hook "
                        f"(metadata hook_name)")
    return hook
