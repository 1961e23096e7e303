"""The feature view (Neuronpedia / SAEDashboard-like): what the Features page shows whole and
other pages compactly (``app_common.render_feature`` calls ``render_feature`` here).

From the feature store: density, histogram, logit effects, the tokens it fires on, top
examples and interval samples, drawn for the model: Othello positions as boards (the
board at the example's move, from the player to move's view), Python source as code,
other text as token chips. Computed live from the model and the dictionary (library code in
``interp.features.dashboard`` and ``interp.features.othello``, cached per dictionary): the
board profile (othello), the latents with the most similar decoder directions, the most
correlated MLP neurons (with a neuron's own board profile), the loss change on the top
examples when the latent is zero-ablated, and the latent's activations on a prompt typed
(or clicked on a board).
"""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

import app_common as C
from interp.errors import InterpError
from interp.viz.features import code_example_html, code_html, example_html, tokens_html

N_SAMPLE = 64          # contexts of the model's data for neuron correlations
STATS = {"correlation": "corr", "mean activation when the state holds": "mean_when"}


def view_kind(model_name: str | None) -> str:
    """How examples are drawn: othello boards, pycode code, else token chips."""
    return model_name if model_name in ("othello", "pycode") else "text"


def loadable(info) -> bool:
    """Whether the dictionary's weights can be loaded (not only its feature store)."""
    return info.source in ("run", "shipped") or info.folder is not None


# ------------------------------------------------------------------ cached computations
@st.cache_data(show_spinner=False)
def _contexts(path: str, latent: int) -> list:
    """The whole contexts of the latent's top examples and interval samples, in the order
    of ``page['top_examples']`` then each interval's examples (None where unknown)."""
    from interp.features.dashboard import example_contexts

    page = C.feature_page(path, latent)
    examples = page["top_examples"] + [e for q in page["quantiles"] for e in q["examples"]]
    meta = C.feature_store(path).meta
    model = None
    if meta.get("model") not in C.EMBEDDED:  # a text source needs the model's tokenizer
        try:
            model = C.model(meta["model"])
        except Exception:  # not on this machine: the contexts stay unknown
            return [None] * len(examples)
    return example_contexts(meta, examples, model)


def contexts_by_example(path: str, latent: int, page: dict) -> dict[tuple, np.ndarray]:
    """{(context, pos): whole context} of the page's examples that could be rebuilt."""
    examples = page["top_examples"] + [e for q in page["quantiles"] for e in q["examples"]]
    return {(e["context"], e["pos"]): c for e, c in zip(examples, _contexts(path, latent))
            if c is not None}


@st.cache_resource(show_spinner="board profile: every latent on 128 generated games")
def dictionary_profile(model_name: str, spec: str):
    from interp.features.othello import dictionary_profile as profile

    return profile(C.model(model_name), C.sae(spec, model_name))


@st.cache_resource(show_spinner="board profile of the neuron on 128 generated games")
def neuron_profile(model_name: str, layer: int, neuron: int):
    from interp.features.othello import neuron_profile as profile

    return profile(C.model(model_name), layer, [neuron])


@st.cache_resource(show_spinner="correlating every latent with the MLP neurons of its layer")
def neuron_correlations(model_name: str, spec: str, store_path: str):
    """(m, u) correlations over N_SAMPLE contexts of the store's own token source (else the
    model's held-out data); None when no data can be read."""
    from interp.features.dashboard import correlated_neurons, sample_contexts
    from interp.viz.prompts import corpus_contexts

    meta = C.feature_store(store_path).meta
    model = C.model(model_name)
    tokens = sample_contexts(meta, N_SAMPLE, model)
    if tokens is None:
        tokens = corpus_contexts(model_name, N_SAMPLE, int(meta["n_ctx"]))
    if tokens is None:
        return None
    return correlated_neurons(model, C.sae(spec, model_name), tokens)


@st.cache_data(show_spinner="ablating the latent on its top examples")
def loss_changes(model_name: str, spec: str, path: str, latent: int) -> list[dict]:
    """Per top example whose context could be rebuilt: its per-token loss change when the
    latent is zero-ablated (``interp.features.dashboard.ablation_loss_change``)."""
    from interp.features.dashboard import ablation_loss_change

    page = C.feature_page(path, latent)
    ctx = contexts_by_example(path, latent, page)
    rows = [(i, e, ctx[(e["context"], e["pos"])]) for i, e in enumerate(page["top_examples"])
            if (e["context"], e["pos"]) in ctx]
    if not rows:
        return []
    tokens = torch.from_numpy(np.stack([c for _, _, c in rows]))
    res = ablation_loss_change(C.model(model_name), C.sae(spec, model_name), tokens, latent)
    out = []
    for j, (i, e, _) in enumerate(rows):
        d, p = res["delta"][j], int(e["pos"])
        out.append({"rank": i + 1, "value": float(e["value"]), "pos": p,
                    "at_next": float(d[p]) if p < len(d) else float("nan"),
                    "mean_after": float(d[p:].mean()) if p < len(d) else float("nan"),
                    "delta": d.tolist()})
    return out


@st.cache_data(show_spinner=False)
def prompt_acts(model_name: str, spec: str, tokens: tuple) -> np.ndarray:
    """(T, m) every latent's activation on a typed prompt."""
    from interp.features.dashboard import dictionary_acts

    acts = dictionary_acts(C.model(model_name), C.sae(spec, model_name),
                           torch.tensor([tokens]))
    return acts[0].numpy()


# ------------------------------------------------------------------ examples
def _othello_cards(examples: list[dict], page: dict, ctx: dict, offset: int = 0,
                   size: int = 150) -> str:
    from interp.viz.othello import board_card, boards_html, position_at

    cards = []
    for i, e in enumerate(examples):
        full = ctx.get((e["context"], e["pos"]))
        if full is None and e["window_start"] == 0:
            full = [t for t in e["token_ids"] if t >= 0]
        j = e["max_index"]
        lo = max(0, j - 5)
        chips = tokens_html(e["tokens"][lo:j + 3], e["acts"][lo:j + 3], page["max_act"],
                            j - lo, " ")
        header = (f"<b>{e['value']:.3f}</b> &middot; #{offset + i + 1} &middot; move "
                  f"{e['pos']}: {e['tokens'][j]}")
        if full is None:
            cards.append(f"<div style='display:inline-block;width:154px;margin:4px'>{header}"
                         f"<br><small>board unknown (source not replayable)</small><br>"
                         f"{chips}</div>")
            continue
        try:
            cards.append(board_card(position_at(full, e["pos"]), header, chips, size))
        except InterpError:
            cards.append(f"<div style='display:inline-block;width:154px;margin:4px'>"
                         f"{header}<br><small>not a legal game</small><br>{chips}</div>")
    return boards_html(cards)


def examples_html(examples: list[dict], page: dict, kind: str, ctx: dict,
                  offset: int = 0) -> str:
    """The examples drawn for the model (``view_kind``), each with its activation."""
    if kind == "othello":
        return _othello_cards(examples, page, ctx, offset)
    if kind == "pycode":
        cells = [f"<div style='min-width:0'><div style='font-size:0.85em'><b>{e['value']:.3f}"
                 f"</b> &middot; #{offset + i + 1}</div>{code_example_html(e, page['max_act'])}"
                 f"</div>" for i, e in enumerate(examples)]
        return ("<div style='display:grid;grid-template-columns:repeat(2,minmax(0,1fr));"
                "column-gap:14px'>" + "".join(cells) + "</div>")
    return "\n".join(f"<div style='margin:2px 0'><span style='display:inline-block;width:5em'>"
                     f"{e['value']:.3f}</span>{example_html(e, page['max_act'])}</div>"
                     for e in examples)


def show_examples(info, latent: int, page: dict, kind: str, compact: bool) -> None:
    path = str(info.feature_store)
    ctx = contexts_by_example(path, latent, page) if kind == "othello" else {}
    n_top = 5 if compact else len(page["top_examples"])
    st.markdown(f"**Top activations** ({n_top})" + (
        ": the board at the move where it fires" if kind == "othello" else ""))
    st.markdown(examples_html(page["top_examples"][:n_top], page, kind, ctx),
                unsafe_allow_html=True)


def show_intervals(info, latent: int, page: dict, kind: str) -> None:
    path = str(info.feature_store)
    ctx = contexts_by_example(path, latent, page) if kind == "othello" else {}
    st.markdown("**Samples from each interval of the max activation**")
    for q in page["quantiles"]:
        with st.expander(f"{q['lo']:.3g} .. {q['hi']:.3g} ({len(q['examples'])} samples)",
                         expanded=q is page["quantiles"][0]):
            st.markdown(examples_html(q["examples"], page, kind, ctx), unsafe_allow_html=True)


# ------------------------------------------------------------------ live sections
def show_board_profile(info, latent: int, model_name: str) -> None:
    from interp.viz.othello import board_heatmaps

    st.markdown("**Board profile**: the latent against every square's state over 128 "
                "generated games (player to move's view)")
    try:
        prof = dictionary_profile(model_name, info.spec)
    except InterpError as e:
        C.show_error(e)
        return
    stat = STATS[st.radio("statistic", list(STATS), horizontal=True, key="feat_profile_stat",
                          label_visibility="collapsed")]
    st.plotly_chart(board_heatmaps(prof.values(latent, stat), value_name=(
        "r" if stat == "corr" else "mean act"), symmetric=stat == "corr", height=230),
        width="stretch")
    top = ", ".join(f"{name} ({r:+.2f})" for name, r in prof.top(latent, 5))
    st.caption(f"strongest square-states: {top} ({prof.profile.n_positions:,} positions; "
               f"mean activation {float(prof.mean_act[latent]):.3g})")


def show_similar(info, latent: int, model_name: str) -> None:
    from interp.features.dashboard import similar_decoders

    st.markdown("**Most similar decoder directions** (cosine, this dictionary)")
    rows = similar_decoders(C.sae(info.spec, model_name).W_dec, latent, 10)
    key = info.feature_store.stem
    cols = st.columns(2)
    for i, r in enumerate(rows):
        with cols[i % 2]:
            C.feature_link(key, r["latent"], f"latent {r['latent']}: {r['cosine']:.3f}")


def show_neurons(info, latent: int, model_name: str) -> None:
    from interp.features.dashboard import neuron_hook, top_correlated
    from interp.hooks import layer_of

    sae = C.sae(info.spec, model_name)
    hook = neuron_hook(sae)
    st.markdown(f"**Most correlated neurons** (`{hook}`, {N_SAMPLE} contexts of the data)")
    corr = neuron_correlations(model_name, info.spec, str(info.feature_store))
    if corr is None:
        st.caption("no data of this model could be read here")
        return
    rows = top_correlated(corr, latent, 10)
    st.dataframe([{"neuron": r["neuron"], "Pearson r": round(r["r"], 3)} for r in rows],
                 hide_index=True, width="stretch", height=210)
    if model_name == "othello" and rows:
        from interp.viz.othello import board_heatmaps

        n = st.selectbox("board profile of neuron", [r["neuron"] for r in rows],
                         key="feat_neuron")
        layer = layer_of(hook)
        prof = neuron_profile(model_name, layer, int(n))
        st.plotly_chart(board_heatmaps(prof.values(0, "corr", ("mine", "theirs", "legal")),
                                       title=f"neuron L{layer}.{n}: correlation",
                                       value_name="r", height=200), width="stretch")


def show_loss_change(info, latent: int, model_name: str, kind: str) -> None:
    st.markdown("**Next-token loss change when the latent is zero-ablated** (error kept: "
                "only its decoder row leaves the activation), on its top examples")
    rows = loss_changes(model_name, info.spec, str(info.feature_store), latent)
    if not rows:
        st.caption("the top examples' contexts cannot be rebuilt from this store's source")
        return
    st.dataframe([{"example": r["rank"], "activation": round(r["value"], 3),
                   "Δ loss of the next token": round(r["at_next"], 4),
                   "mean Δ loss from there on": round(r["mean_after"], 4)} for r in rows],
                 hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 250))
    n_top = len(C.feature_page(str(info.feature_store), latent)["top_examples"])
    st.caption(f"Δ loss of the next token: predicting the token after the one it fires on "
               f"(None when that is the context's last); positive: the latent helped. "
               f"{len(rows)} of the {n_top} top examples (those whose whole context could be "
               f"replayed from the store's token source).")
    with st.expander("per-token loss change of the top examples (red: loss up when ablated)"):
        page = C.feature_page(str(info.feature_store), latent)
        for r in rows[:5]:
            tokens, values, mark = _window_values(page["top_examples"][r["rank"] - 1],
                                                  r["delta"])
            if kind == "pycode":
                body = code_html(tokens, values, None, mark, diverging=True, label="Δ loss ")
            else:
                body = tokens_html(tokens, values, None, mark, " " if kind == "othello" else "",
                                   diverging=True, label="Δ loss ")
            st.markdown(f"#{r['rank']} {body}", unsafe_allow_html=True)


def _window_values(e: dict, delta: list[float]) -> tuple[list[str], list[float], int | None]:
    """An example window's tokens inside its context, each with the loss change of
    predicting it (``delta[t - 1]`` for the token at position t; none for the first), and
    the index of the token it fires on."""
    keep = [k for k, t in enumerate(e["token_ids"]) if t >= 0]
    values = []
    for k in keep:
        q = e["window_start"] + k
        values.append(delta[q - 1] if 0 < q <= len(delta) else 0.0)
    mark = keep.index(e["max_index"]) if e["max_index"] in keep else None
    return [e["tokens"][k] for k in keep], values, mark


def show_prompt(info, latent: int, model_name: str, kind: str, page: dict) -> None:
    """The latent's activation on every token of a prompt the user types (or clicks)."""
    from interp.models import token_strings
    from interp.viz.prompts import default_prompt, prompt_tokens

    st.markdown("**Activations on your own prompt**" + (
        ": click moves on the board or type them" if kind == "othello" else ""))
    if kind == "othello":
        from app_board import board_prompt

        text, _ = board_prompt("feat_try_moves", default=default_prompt(model_name), size=320)
    else:
        st.session_state.setdefault("feat_try_text", default_prompt(model_name))
        text = st.text_area("prompt", key="feat_try_text", height=110)
    try:
        tokens = prompt_tokens(model_name, C.model(model_name), text)[0].tolist()
    except InterpError as e:
        C.show_error(e)
        return
    acts = prompt_acts(model_name, info.spec, tuple(tokens))[1:, latent]   # BOS left out
    names = token_strings(model_name, tokens[1:])
    j = int(np.argmax(acts)) if len(acts) else 0
    fires = len(acts) and acts[j] > 0
    top, mark = page["max_act"] or None, j if fires else None
    if kind == "pycode":
        body = code_html(names, acts.tolist(), top, mark)
    else:
        body = tokens_html(names, acts.tolist(), top, mark, " " if kind == "othello" else "")
    if kind == "othello" and fires:  # the board where it fires most on this game
        from interp.viz.othello import board_card, position_at

        try:
            body += board_card(position_at(tokens, j + 1), f"<b>{acts[j]:.3f}</b> at move "
                               f"{j + 1}: {names[j]}", size=150)
        except InterpError:
            pass  # an illegal game: the chips alone
    st.markdown(body, unsafe_allow_html=True)
    st.caption((f"max {acts[j]:.3f} on token {j + 1} ({names[j]!r})" if fires else
                "it does not fire here") + f" of {len(names)}; shaded relative to the "
               f"store's max {page['max_act'] or 0:.3g}")


def guarded(section, *args) -> None:
    """Run one live section; its failure is shown in place and the rest of the page still
    renders."""
    try:
        section(*args)
    except Exception as e:  # an InterpError is the user's; anything else is shown with its type
        C.show_error(e)


def show_store_figures(page: dict) -> None:
    from interp.viz.features import feature_histogram, logit_effects_figure

    left, right = st.columns(2)
    left.plotly_chart(feature_histogram(page), width="stretch")
    right.plotly_chart(logit_effects_figure(page), width="stretch")
    left, right = st.columns(2)
    with left:
        st.markdown("**Tokens it fires on most**")
        st.dataframe([{"token": repr(t["token"]), "count": t["count"],
                       "mean act": round(t["mean_act"], 4)} for t in page["top_tokens"]],
                     hide_index=True, width="stretch", height=240)
    with right:
        if page["logits"]:
            st.markdown("**Logit effects** (boosted / suppressed)")
            rows = [{"boosted": repr(b["token"]), "+": round(b["value"], 3),
                     "suppressed": repr(s["token"]), "-": round(s["value"], 3)}
                    for b, s in zip(page["logits"]["boosted"], page["logits"]["suppressed"])]
            st.dataframe(rows, hide_index=True, width="stretch", height=240)


def render_feature(info, latent: int, compact: bool = False, model_name: str | None = None
                   ) -> None:
    """A feature page: numbers, top examples (boards / code / chips), and unless
    ``compact`` the store's figures, the live sections (board profile, similar decoders,
    correlated neurons, loss change on ablation, a prompt of one's own), interval samples
    and the ground-truth labels. ``model_name``: the store's model unless it records none."""
    path = str(info.feature_store)
    try:
        page = C.feature_page(path, int(latent))
    except InterpError as e:
        C.show_error(e)
        return
    latent = int(latent)
    fs = C.feature_store(path)
    model_name = fs.meta.get("model") or model_name
    kind = view_kind(model_name)
    C.show_transcoder_hooks(fs.meta)
    c = st.columns(5)
    c[0].metric("latent", f"{page['latent']}")
    c[1].metric("density", f"{page['density']:.3g}")
    c[2].metric("fires on", f"{page['count']:,} tok")
    c[3].metric("mean when firing", f"{page['mean_act'] or 0:.3g}")
    c[4].metric("max", f"{page['max_act'] or 0:.3g}")
    if page["count"] == 0:
        st.info(f"Latent {latent} never fired on the {fs.meta['n_tokens']:,} tokens of this "
                f"feature store (dead here).")
        return
    show_examples(info, latent, page, kind, compact)
    if compact:
        return
    show_store_figures(page)
    if loadable(info):
        if kind == "othello":
            guarded(show_board_profile, info, latent, model_name)
        left, right = st.columns(2)
        with left:
            guarded(show_similar, info, latent, model_name)
        with right:
            guarded(show_neurons, info, latent, model_name)
        guarded(show_loss_change, info, latent, model_name, kind)
        guarded(show_prompt, info, latent, model_name, kind, page)
    else:
        st.caption("This feature store's dictionary is not on this machine: the live "
                   "sections (board profile, similar latents, neurons, ablation) need it.")
    show_intervals(info, latent, page, kind)
    C.render_labels(info, latent, model_name)
