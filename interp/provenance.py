"""Does a dictionary belong to this model, store and hook? One check, used wherever they meet.

Every dictionary records where it came from in its metadata: ``model_name``, ``model_digest``
(a hash of the model's weights, when known), ``hook_name`` and, in its config, ``d_in``.
A store's manifest records its ``model`` and ``model_meta`` (with the ``digest``) and the width
of every hook. :func:`check_dictionary` compares the two sides and refuses a mismatch with
one line naming both, so that no command evaluates, splices, probes or ablates a dictionary
on activations it was not trained on (eval, circuit, features, probe, ablate and the app
call it).

Identity of a model: the digest when both sides know it (names may differ for one model,
e.g. a folder given by two paths); otherwise the name.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from interp.errors import MismatchError, closest


# models TransformerLens converts on load (folding LayerNorms, centring weights): their
# parameters depend in the last bits on the device that did the arithmetic, so they are
# known by name only; the embedded models load their parameters bit for bit
CONVERTED_SOURCES = ("pretrained", "hf-folder")


def model_digest(model: torch.nn.Module) -> str | None:
    """sha256 (16 hex digits) of the model's parameters: names, dtypes, shapes and values;
    None for a model converted on load (``CONVERTED_SOURCES``: identified by its name).

    Computed once per model object."""
    cached = getattr(model, "_interp_digest", None)
    if cached:
        return cached
    if (getattr(model, "interp_meta", None) or {}).get("source") in CONVERTED_SOURCES:
        return None
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:16]
    model._interp_digest = digest
    return digest


def model_name_of(model) -> str | None:
    """The name the model was loaded by (our loaders record it), else TransformerLens's."""
    meta = getattr(model, "interp_meta", None) or {}
    return meta.get("name") or getattr(getattr(model, "cfg", None), "model_name", None)


def _same_name(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()  # one folder, two spellings
    if pa.exists() or pb.exists():
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    from interp.models import official_name

    return official_name(a) == official_name(b)  # gpt2-small and gpt2: one model


def _model_side(name: str | None, digest: str | None) -> str:
    return f"{name!r}" + (f" (weights {digest[:8]})" if digest else "")


def _check_model(label: str, ours: tuple[str | None, str | None],
                 theirs: tuple[str | None, str | None], where: str) -> None:
    """``where`` completes "but ... <model>": e.g. "the model is"."""
    (name, digest), (other, other_digest) = ours, theirs
    if digest and other_digest:
        same = digest == other_digest
    elif name and other:
        same = _same_name(str(name), str(other))
    else:
        return  # one side does not say: nothing to compare
    if not same:
        raise MismatchError(f"{label} was trained on {_model_side(name, digest)}, but "
                            f"{where} {_model_side(other, other_digest)}; use an SAE of "
                            f"that model, or the SAE's own model")


def _hooks_and_widths(sae, hook: str) -> list[tuple[str, int, str]]:
    """(hook, width, verb) of what the dictionary reads and, for a transcoder, writes (a
    cross-layer transcoder: every layer's input and output)."""
    md = sae.cfg.metadata or {}
    if md.get("hook_names_out"):
        return ([(h, sae.cfg.layer.d_in, "reads") for h in md["hook_names"]]
                + [(h, sae.cfg.d_out, "writes") for h in md["hook_names_out"]])
    out = [(hook, sae.cfg.d_in, "reads")]
    hook_out = (sae.cfg.metadata or {}).get("hook_name_out")
    if getattr(sae.cfg, "transcoder", False) and hook_out:
        out.append((hook_out, sae.cfg.out_dim, "writes"))
    return out


def _check_on_model(label: str, model, mname: str, hook: str, width: int, verb: str) -> None:
    if hook not in model.hook_dict:
        near = ", ".join(closest(hook, list(model.hook_dict), 3))
        raise MismatchError(f"{label} {verb} {hook}, which is not a hook of model {mname!r} "
                            f"(closest: {near})")
    from interp.hooks import hook_widths

    have = hook_widths(model, [hook])[hook]
    if have != width:
        raise MismatchError(f"{label} {verb} {hook} with width {width}, but {hook} of model "
                            f"{mname!r} has width {have}" if verb == "writes" else
                            f"{label} takes d_in={width}, but {hook} of model {mname!r} has "
                            f"width {have}")


def _check_in_store(label: str, store, hook: str, width: int, verb: str) -> None:
    if hook not in store.hooks:
        raise MismatchError(f"{label} {verb} {hook}, but the store {store.path} holds "
                            f"{', '.join(store.hooks)}; harvest {hook} or use an SAE of those "
                            f"hooks")
    if store.d_in(hook) != width:
        raise MismatchError(f"{hook} in the store {store.path} has d_in={store.d_in(hook)}, "
                            f"but {label} {'takes d_in' if verb == 'reads' else 'writes width'}"
                            f"={width}")


def check_dictionary(sae, *, name: str | Path | None = None, model=None,
                     model_name: str | None = None, store=None, hook: str | None = None) -> str:
    """Check ``sae`` against a model, a store and/or the hook it will be used at; returns
    that hook (the SAE's own when ``hook`` is None; for an SAE that does not record it, the
    store's hook when the store holds one). Raises :class:`MismatchError` naming
    both sides: another model (by digest, else name), a hook the SAE does not read, a hook
    the model or store lacks, another width. A transcoder's output hook (metadata
    ``hook_name_out``, width d_out) is checked the same way."""
    md = sae.cfg.metadata or {}
    label = f"the SAE {name}" if name else "the SAE"
    ours = (md.get("model_name"), md.get("model_digest"))
    sae_hook = md.get("hook_name")
    if hook is not None and sae_hook and hook != sae_hook:
        raise MismatchError(f"{label} reads {sae_hook}, not {hook}; use an SAE of {hook} "
                            f"or the hook {sae_hook}")
    hook = hook or sae_hook
    if model is not None:
        mname = model_name or model_name_of(model)
        _check_model(label, ours, (mname, model_digest(model)), "the model is")
        for h, width, verb in _hooks_and_widths(sae, hook) if hook else []:
            _check_on_model(label, model, mname, h, width, verb)
    elif model_name is not None:
        _check_model(label, ours, (model_name, None), "the model is")
    if store is not None:
        m = store.manifest
        theirs = (m.get("model"), (m.get("model_meta") or {}).get("digest"))
        _check_model(label, ours, theirs, f"the store {store.path} holds activations of")
        if not hook and len(store.hooks) == 1:
            hook = store.hooks[0]  # an SAE from elsewhere that does not say: its width must fit
        if not hook:
            raise MismatchError(f"{label} does not record its hook (metadata hook_name), and "
                                f"the store {store.path} holds {', '.join(store.hooks)}")
        for h, width, verb in _hooks_and_widths(sae, hook):
            _check_in_store(label, store, h, width, verb)
    return hook
