"""Features: pick an SAE with a feature store, search latents (by id, by token, by density),
and read a feature page. Deep link: ``?page=features&sae=STORE&latent=123``."""
import streamlit as st

import app_common as C

st.title("Features")
run = C.existing_run()
model_name = C.run_model(run)
stores = [i for i in C.sae_infos(run, model_name) if i.feature_store is not None]
broken = C.show_store_problems(run)  # unreadable stores: their error, not "no store"
if not stores:
    if broken:
        st.stop()
    st.info(f"No feature store in {run}/features/. Build one with `interp features --run "
            f"{run} --sae SAE --tokens 100000` (SAE: a folder in {run}/saes or a shipped SAE "
            f"name from `interp saes`).")
    st.stop()

by_key = {i.feature_store.stem: i for i in stores}
by_name = {i.name: i.feature_store.stem for i in stores}
qp = st.query_params
want_sae = qp.get("sae")
want_sae = want_sae if want_sae in by_key else by_name.get(want_sae)
if "feat_sae" not in st.session_state or (
        want_sae and want_sae != st.session_state.get("_feat_sae_seen")):
    st.session_state["feat_sae"] = want_sae or next(iter(by_key))
    st.session_state["_feat_sae_seen"] = want_sae

top = st.columns([2, 1])
key = top[0].selectbox("SAE (feature store)", list(by_key), key="feat_sae",
                       format_func=lambda k: by_key[k].label)
info = by_key[key]
fs = C.feature_store(str(info.feature_store))
m = fs.meta
hooks = C.hooks_text(m["hook"], m.get("hook_out"), "`")
st.caption(f"{m['model']} {hooks}, {fs.d_sae:,} latents, {m['n_tokens']:,} tokens streamed; "
           f"file {info.feature_store}")

want = qp.get("latent")
if "feat_latent" not in st.session_state or (want is not None
                                             and want != st.session_state.get("_feat_latent_seen")):
    try:
        start = int(want)
    except (TypeError, ValueError):
        common = fs.by_density(0.0, 0.1, n=1)
        start = common[0]["latent"] if common else 0
    st.session_state["feat_latent"] = min(max(start, 0), fs.d_sae - 1)
    st.session_state["_feat_latent_seen"] = want
if st.session_state["feat_latent"] >= fs.d_sae:
    st.session_state["feat_latent"] = fs.d_sae - 1
latent = int(top[1].number_input(f"latent (0..{fs.d_sae - 1})", min_value=0,
                                 max_value=fs.d_sae - 1, step=1, key="feat_latent"))
qp["sae"] = key
qp["latent"] = str(latent)
st.session_state["_feat_sae_seen"], st.session_state["_feat_latent_seen"] = key, str(latent)


def result_links(rows: list[dict], what) -> None:
    for r in rows:
        C.feature_link(key, r["latent"], f"latent {r['latent']}: {what(r)}")


by_token, by_density = st.tabs(["search by token", "search by density"])
with by_token:
    c = st.columns([2, 1])
    token = c[0].text_input("token (a string, e.g. `d3` or `return`, or #id)", key="feat_token")
    order = c[1].selectbox("order by", ["mean", "specificity", "count", "frac"],
                           key="feat_token_order")
    if token:
        try:
            t = int(token[1:]) if token.startswith("#") and token[1:].isdigit() else token
            rows = fs.search_by_token(t, n=10, by=order)
        except Exception as e:
            C.show_error(e)
            rows = []
        if rows:
            st.caption(f"latents that fire most on {token!r} ({rows[0]['token_count']:,} "
                       f"occurrences)")
        result_links(rows, lambda r: f"fires on {r['frac']:.0%} of them, mean "
                                     f"{r['mean_on_token']:.3g}, specificity "
                                     f"{r['specificity']:.2f}")
with by_density:
    c = st.columns([2, 1])
    lo, hi = c[0].slider("log10 density range", -7.0, 0.0, (-3.0, -1.0), 0.25,
                         key="feat_density")
    asc = c[1].radio("order", ["densest first", "sparsest first"], key="feat_density_order",
                     horizontal=True) == "sparsest first"
    rows = fs.by_density(10 ** lo if lo > -7 else 0.0, 10 ** hi, n=10,
                         order="asc" if asc else "desc")
    if not rows:
        st.caption("no latent in this range")
    result_links(rows, lambda r: f"density {r['density']:.3g}, max {r['max_act']:.3g}, "
                                 f"fires on {', '.join(map(repr, r['top_tokens']))}")

st.divider()
st.subheader(f"{info.name} · latent {latent}")
C.render_feature(info, latent, model_name=model_name)
if info.source != "store" or info.folder is not None:
    C.page_link("ablations", "ablate or steer this latent", sae=info.name, latents=latent)
