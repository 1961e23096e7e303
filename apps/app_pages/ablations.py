"""Ablations: type a prompt (othello: or click its moves on a board), ablate (zero / mean)
or steer (alpha / clamp) SAE latents, and see the next-token distribution and the metrics
change. Deep link:
``?page=ablations&sae=NAME&latents=12,40``."""
from dataclasses import asdict

import streamlit as st
import torch

import app_common as C
from interp.errors import DataError, InterpError
from interp.viz.prompts import (corpus_contexts, default_prompt, next_token_figure,
                                prompt_tokens, single_token, token_table)

MODES = {"zero ablation": "zero", "mean ablation": "mean",
         "steer: add alpha x decoder direction": "alpha", "clamp the latent": "clamp"}


def spliced_for(model_name: str, sae_spec: str):
    """The model with the SAE spliced in, and the hook its latents are intervened at (the
    hook it writes: a transcoder's output hook)."""
    from interp.circuits.splice import SplicedModel
    from interp.sae.evaluate import written_hook

    s = C.sae(sae_spec)
    hook = written_hook(s)
    return SplicedModel(C.model(model_name), {hook: s}), hook


@st.cache_data(show_spinner=False)
def active_latents(model_name: str, sae_spec: str, tokens: tuple, n: int = 8) -> list:
    spliced, hook = spliced_for(model_name, sae_spec)
    with torch.no_grad():
        acts = spliced.run(torch.tensor([tokens])).hooks[hook].acts[0, -1]
    top = acts.topk(n)
    return [(int(i), float(v)) for v, i in zip(top.values, top.indices) if v > 0]


@st.cache_data(show_spinner="running the model with and without the intervention")
def intervene(model_name: str, sae_spec: str, tokens: tuple, latents: tuple, mode: str,
              value: float, answer: int | None, wrong: int | None) -> dict:
    from interp.ablations import intervene as run_intervention
    from interp.circuits.tasks import Task

    spliced, hook = spliced_for(model_name, sae_spec)
    toks = torch.tensor([tokens])
    task = None
    if answer is not None and wrong is not None:
        task = Task("prompt", toks, None, torch.tensor([answer]), torch.tensor([wrong]),
                    description="logit(answer) - logit(wrong) at the last position")
    ref = corpus_contexts(model_name, 32, toks.shape[1]) if mode == "mean" else None
    if mode == "mean" and ref is None:
        raise DataError("mean ablation needs reference text of the model")
    rep = run_intervention(spliced, hook, toks, list(latents), mode,
                           None if mode in ("zero", "mean") else value, reference=ref, task=task)
    out = asdict(rep)
    out["loss_change"], out["metric_change"] = rep.loss_change, rep.metric_change
    return out


st.title("Ablations")
run = C.run_path()
model_name = C.model_context(run)
infos = [i for i in C.sae_infos(run, model_name) if i.folder is not None and i.hook]
if not infos:
    st.info(f"No SAE for {model_name} in the run or shipped.")
    st.stop()
m = C.model(model_name)
qp = st.query_params
names = [i.name for i in infos]
if "ablate_sae" not in st.session_state:
    want = qp.get("sae")
    st.session_state["ablate_sae"] = want if want in names else C.default_sae(infos)
chosen = st.selectbox("SAE", names, key="ablate_sae")
info = next(i for i in infos if i.name == chosen)
if model_name == "othello":  # a board: click legal moves, or type squares in its text box
    from app_board import board_prompt

    text, _ = board_prompt("ablate_prompt", default=default_prompt(model_name),
                           label="prompt (moves as squares, e.g. f5 d6 c3; or click a legal "
                                 "move on the board)")
else:
    st.session_state.setdefault("ablate_prompt", default_prompt(model_name))
    text = st.text_area("prompt", key="ablate_prompt", height=90)
try:
    tokens = tuple(prompt_tokens(model_name, m, text)[0].tolist())
except InterpError as e:
    C.show_error(e)
    st.stop()

active = active_latents(model_name, info.spec, tokens)
store = C.store_for(C.sae_infos(run, model_name), name=info.name)
with st.expander(f"latents most active at the last token ({len(active)})", expanded=True):
    for latent, v in active:
        if store is not None:
            C.feature_link(store.feature_store.stem, latent, f"latent {latent}: {v:.3f}")
        else:
            st.markdown(f"- latent {latent}: {v:.3f}")

if "ablate_latents" not in st.session_state:
    st.session_state["ablate_latents"] = qp.get("latents") or (
        str(active[0][0]) if active else "0")
c = st.columns([2, 2, 1])
latent_text = c[0].text_input("latents (comma-separated)", key="ablate_latents")
mode = MODES[c[1].selectbox("intervention", list(MODES), key="ablate_mode")]
value = None
if mode == "alpha":
    value = c[2].number_input("alpha", value=10.0, step=1.0, key="ablate_alpha")
elif mode == "clamp":
    value = c[2].number_input("value", value=0.0, step=0.5, key="ablate_clamp")
c = st.columns(2)
ans = c[0].text_input("answer token (optional, for a logit-difference metric; \\n for a "
                      "newline)",
                      key="ablate_answer")
wrong = c[1].text_input("wrong token", key="ablate_wrong")
try:
    latents = tuple(int(v) for v in latent_text.replace(" ", "").split(",") if v)
    if not latents:
        raise DataError("give at least one latent id")
    a = single_token(model_name, m, ans) if ans else None
    w = single_token(model_name, m, wrong) if wrong else None
    if (a is None) != (w is None):
        st.caption("give both an answer and a wrong token for the metric")
    res = intervene(model_name, info.spec, tokens, latents, mode,
                    float(value) if value is not None else 0.0, a, w)
except InterpError as e:
    C.show_error(e)
    st.stop()
except ValueError:
    st.error(f"latents are integer ids separated by commas, got {latent_text!r}")
    st.stop()

c = st.columns(4)
c[0].metric("next-token loss before", f"{res['loss_clean']:.4f}")
c[1].metric("after", f"{res['loss_after']:.4f}", f"{res['loss_change']:+.4f}",
            delta_color="inverse")
if res["metric_clean"] is not None:
    c[2].metric("logit diff before", f"{res['metric_clean']:.3f}")
    c[3].metric("after", f"{res['metric_after']:.3f}", f"{res['metric_change']:+.3f}")
st.plotly_chart(next_token_figure(model_name, res["top_clean"], res["top_after"],
                                  "most likely next tokens at the last position"),
                width="stretch")
c = st.columns(2)
c[0].markdown("**probability up most**")
c[0].dataframe(token_table(model_name, res["top_up"], "change"), hide_index=True)
c[1].markdown("**probability down most**")
c[1].dataframe(token_table(model_name, res["top_down"], "change"), hide_index=True)
