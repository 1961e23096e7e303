"""The Graphs page in a real browser (``interp app`` on a free port, headless Chromium as in
``tests/test_app_browser.py``): an attribution graph of a 60-token Othello game (BOS + 59
moves, traced over othello/plt), a click on a node in the WebGL plot, a supernode, pinned
nodes and the pinned subgraph, a note, everything restored in a new session; a synthetic
5,000-node graph, its render and click times (printed: the README quotes them); the
Circuits page's grid view with a node clicked. Screenshots at 1400 px width in
``tests/artifacts/`` (9_graph_selected, 10_graph_supernode, 11_graph_pinned, 12_graph_5000,
13_circuit_grid)."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from test_app_browser import (app_server, chromium, headless_chromium,  # noqa: F401
                              new_page, no_exception, settle, shot)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLICK_BUDGET_S = 2.0   # a click on a node of the 5,000-node graph updates the selection
# Headless Chromium without a GPU composites the page in software and so reads every frame
# of a WebGL canvas back from the (software) GL (GLES2::ReadPixels: 0.8 s of each click on
# the 5,000-node plot here); a desktop browser composites on its GPU. These flags composite
# through the same software GL (SwiftShader), as a desktop browser does through its GPU.
GPU_COMPOSITING = ("--enable-gpu-compositing", "--use-angle=swiftshader",
                   "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    """A run with a traced 60-token game (othello/plt), a synthetic 5,000-node graph and a
    feature store of othello/plt/L0 (for the feature card's link)."""
    from app_fixtures import write_store_run
    from graph_fixtures import synthetic_graph
    from interp.data.othello import generate_games, token_names
    from interp.features import FeatureConfig, build_for_run
    from interp.graphs.io import save_graph
    from interp.graphs.trace import trace

    run = write_store_run(tmp_path_factory.mktemp("graphs") / "run")
    games = generate_games(8, np.random.default_rng(7))
    g = int(np.argmax(games.lengths >= 59))
    moves = " ".join(token_names()[t] for t in games.tokens(with_bos=False)[g][:59])
    doc, _ = trace("othello", ["othello/plt"], moves, targets=["logits"],
                   max_feature_nodes=256, out=run / "graphs" / "game60.json")
    assert len(doc["tokens"]) == 60
    save_graph(synthetic_graph(5000, 20000), run / "graphs" / "synthetic5000.json")
    build_for_run(run, "othello/plt/L0", FeatureConfig(n_tokens=1000, top_n=5, window=(4, 2),
                                                       batch_size=16), progress=False)
    return run


@pytest.fixture(scope="module")
def server(chromium, graph_run):  # noqa: F811
    with app_server(graph_run, "app_graph_server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium):  # noqa: F811
    with headless_chromium(chromium, GPU_COMPOSITING) as b:
        yield b


NODE_XY = """([id, k]) => {
  const gd = document.querySelectorAll('.js-plotly-plot')[k];
  const tr = gd._fullData[gd._fullData.length - 1];  // typed arrays decoded
  const i = Array.from(tr.customdata).indexOf(id);
  if (i < 0) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.getBoundingClientRect();
  return [r.left + xa._offset + xa.l2p(tr.x[i]), r.top + ya._offset + ya.l2p(tr.y[i])];
}"""


def wait_plot(pg, k: int = 0) -> None:
    pg.wait_for_function("""(k) => { const gd = document.querySelectorAll('.js-plotly-plot')[k];
      return gd && gd._fullData && gd._fullData.length > 0; }""", arg=k)


def plot_nodes(pg, k: int = 0) -> dict:
    """{"ids", "kinds" (marker colour codes), "text", "hover"} of the k-th plot's node trace."""
    wait_plot(pg, k)
    return pg.evaluate("""(k) => {
      const gd = document.querySelectorAll('.js-plotly-plot')[k];
      const tr = gd._fullData[gd._fullData.length - 1];
      return {ids: Array.from(tr.customdata), kinds: Array.from(tr.marker.color),
              text: Array.from(tr.text || []), hover: Array.from(tr.hovertext)};
    }""", k)


def click_node(pg, node: str, k: int = 0) -> float:
    """Hover, then click ``node`` in the k-th plot; returns the time of the click."""
    wait_plot(pg, k)
    pg.locator(".js-plotly-plot").nth(k).scroll_into_view_if_needed()
    xy = pg.evaluate(NODE_XY, [node, k])
    assert xy is not None, f"{node} is not drawn"
    x, y = xy
    pg.mouse.move(x - 25, y - 25)
    pg.mouse.move(x, y, steps=4)   # plotly clicks (and selects) the hovered point:
    pg.wait_for_timeout(250)       # let the (throttled) WebGL hover settle first
    t = time.perf_counter()
    pg.mouse.click(x, y)
    return t


SELECTED_TEXT = """() => { const m = Array.from(document.querySelectorAll(
  '[data-testid="stMarkdown"]')).find(e => e.innerText.startsWith('Selected:'));
  return m ? m.innerText : ''; }"""


def selected_shows(node: str) -> str:
    return f"() => ({SELECTED_TEXT})().includes({node!r})"


def choose(pg, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    box = pg.locator('[data-testid="stSelectbox"]', has_text=label).get_by_role("combobox")
    box.click()
    box.press_sequentially(option.rsplit("/", 1)[-1], delay=10)  # react-aria: keys, then pick
    pg.get_by_role("option", name=option, exact=True).wait_for()
    box.press("ArrowDown")
    box.press("Enter")


def wait_drawn(pg, node: str, drawn: bool = True, k: int = 0) -> None:
    """Wait until the k-th plot draws (or no longer draws) ``node``."""
    pg.wait_for_function("""([id, k, want]) => {
      const gd = document.querySelectorAll('.js-plotly-plot')[k];
      if (!gd || !gd._fullData || !gd._fullData.length) return false;
      const tr = gd._fullData[gd._fullData.length - 1];
      return Array.from(tr.customdata).includes(id) === want; }""", arg=[node, k, drawn])


RINGED = """([id, k]) => { const gd = document.querySelectorAll('.js-plotly-plot')[k];
  if (!gd || !gd._fullData || !gd._fullData.length) return false;
  const tr = gd._fullData[gd._fullData.length - 1];
  const i = Array.from(tr.customdata).indexOf(id);
  return i >= 0 && tr.marker.line.color[i] === 2; }"""


WATCH = """(id) => {  // browser-side times: the mouse down, and the page showing id as selected
  const t = window._sel = {id};
  document.addEventListener('mousedown', () => { t.down = performance.now(); },
                            {once: true, capture: true});
  const check = () => { if (!t.shown && (%s)().includes(id)) t.shown = performance.now(); };
  t.observer = new MutationObserver(check);
  t.observer.observe(document.body, {childList: true, subtree: true, characterData: true});
}""" % SELECTED_TEXT


def wait_selected(pg, node: str, t0: float, k: int = 0) -> tuple[float, float]:
    """After ``watch_selection`` and a click at ``t0``: wait until the page shows ``node`` as
    selected (its edges and card; the time is the browser's, from the mouse down to the
    DOM showing it), then until the plot rings it (drawn with its edges: the run after;
    polled every 50 ms from ``t0``). Both in seconds."""
    pg.wait_for_function("() => window._sel && window._sel.shown !== undefined", polling=50)
    shown = pg.evaluate("() => { window._sel.observer.disconnect(); "
                        "return (window._sel.shown - window._sel.down) / 1000; }")
    pg.wait_for_function(RINGED, arg=[node, k], polling=50)
    return shown, time.perf_counter() - t0


def click_and_wait(pg, node: str, k: int = 0) -> tuple[float, float]:
    """Click ``node`` in the k-th plot; (selection shown, plot redrawn) times in seconds."""
    wait_plot(pg, k)
    pg.evaluate(WATCH, node)
    return wait_selected(pg, node, click_node(pg, node, k), k)


def members_of(marks: dict) -> set[str]:
    return {m for s in marks["supernodes"] for m in s["members"]}


def open_graphs(pg, server) -> None:
    pg.goto(f"{server}/graphs")
    pg.get_by_role("heading", name="Graphs", exact=True).wait_for()
    pg.locator(".js-plotly-plot").first.wait_for()
    settle(pg)
    no_exception(pg)


# Known issue (README, "The app"): now and then the graph page keeps re-rendering after a
# click (a plot click lost, a dropdown detached for minutes); cause not found yet. One
# rerun in a new browser session, on the graph file as the fixture wrote it.
@pytest.mark.flaky(reruns=1, reruns_delay=5)
def test_graph_view_in_chromium(server, browser, graph_run):
    import shutil

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from interp.graphs.io import annotations, load_graph
    path = graph_run / "graphs" / "game60.json"
    pristine = path.with_name("game60.pristine")
    if pristine.exists():  # a rerun: drop the pins, supernodes and notes of the first try
        shutil.copy(pristine, path)
    else:
        shutil.copy(path, pristine)
    doc = load_graph(path)
    pg = new_page(browser)
    open_graphs(pg, server)
    nodes = plot_nodes(pg)
    assert set(nodes["ids"]) == {n["id"] for n in doc["nodes"]}
    # click a layer-0 feature (its transcoder has a feature store: the card links to it)
    features = sorted((n for n in doc["nodes"] if n["kind"] == "feature"),
                      key=lambda n: -n["influence"])
    current = pg.locator('[data-testid="stMarkdown"]', has_text="Selected:").inner_text()
    target = next(n for n in features if n["layer"] == 0 and n["id"] not in current)
    shown, ringed = click_and_wait(pg, target["id"])
    print(f"\n60-token graph: click -> selection shown {shown:.2f} s, plot redrawn with its "
          f"edges {ringed:.2f} s")
    settle(pg)
    no_exception(pg)
    link = pg.locator('[data-testid="stPageLink"] a', has_text="open the feature page")
    assert f"latent {target['latent']}" in link.inner_text()
    assert pg.get_by_text("Logit effects").count() == 1
    assert pg.get_by_text("Top activations").count() == 1
    shot(pg, "9_graph_selected")

    # pin it, then its strongest input (a click on the row of the incoming-edge table)
    pg.get_by_role("button", name="pin this node").click()
    settle(pg)
    table = pg.locator('[data-testid="stDataFrame"]').first
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    pg.mouse.click(box["x"] + 18, box["y"] + 35 + 18)   # the first row's selection box
    try:
        pg.wait_for_function(f"() => !({SELECTED_TEXT})().includes({target['id']!r})",
                             timeout=20_000)
    except Exception:
        shot(pg, "debug_row_click")
        raise AssertionError("a click on a row of the incoming edges did not move the "
                             "selection") from None
    sel = pg.locator('[data-testid="stMarkdown"]', has_text="Selected:").inner_text()
    second = re.search(r"\((\S+)\) ·", sel).group(1)
    pg.wait_for_function(RINGED, arg=[second, 0])   # the run after: its ring and edges
    settle(pg)
    second_label = re.match(r"Selected: (.*) \(", sel).group(1)
    pg.get_by_role("button", name="pin this node").click()
    settle(pg)

    # a supernode: the clicked feature and the two next features of layer 0
    click_and_wait(pg, target["id"])
    settle(pg)
    expander = pg.locator('[data-testid="stExpander"]', has_text="supernodes")
    if expander.locator("details").get_attribute("open") is None:
        expander.locator("summary").click()
    members = expander.locator('[data-testid="stMultiSelect"]')
    members.wait_for()
    box = members.locator("input")
    for _ in range(10):   # two more layer-0 features: type, click the first match
        if members.inner_text().count("mlp.0 #") >= 3:   # the selected chips' labels
            break
        box.click()
        box.press_sequentially("mlp.0 #", delay=10)
        try:   # (not "select all"); a re-render may detach the list: type again
            pg.locator('[role="option"]', has_text="mlp.0 #").first.click(timeout=15_000)
        except PlaywrightTimeout:
            pg.keyboard.press("Escape")
        settle(pg)
    pg.keyboard.press("Escape")
    expander.get_by_label("supernode name").fill("layer-0 group")
    expander.get_by_role("button", name="group").click()
    settle(pg)
    no_exception(pg)
    marks = annotations(load_graph(path))
    assert marks["supernodes"][0]["name"] == "layer-0 group"
    assert len(marks["supernodes"][0]["members"]) == 3
    assert target["id"] in marks["supernodes"][0]["members"]
    assert marks["pinned"] == [target["id"], second] and second not in members_of(marks)
    wait_drawn(pg, "super|layer-0 group")
    drawn = plot_nodes(pg)
    assert target["id"] not in drawn["ids"]
    settle(pg)   # the run after (its ring and edges) and the edge tables drawn
    assert pg.locator('[data-testid="stDataFrame"]').count() == 2
    shot(pg, "10_graph_supernode")

    # the pinned subgraph (the supernode holds a pinned node: pin the supernode too)
    pg.get_by_role("button", name="pin this node").click()
    settle(pg)
    pg.get_by_text("pinned only").click()
    pg.wait_for_function("""() => { const gd = document.querySelector('.js-plotly-plot');
      return gd && gd._fullData && gd._fullData.length
        && gd._fullData[gd._fullData.length - 1].customdata.length === 2; }""")
    settle(pg)
    no_exception(pg)
    drawn = plot_nodes(pg)
    assert set(drawn["ids"]) == {second, "super|layer-0 group"}
    shot(pg, "11_graph_pinned")
    # a note on the pinned input (last: saving a note redraws the figure's hover texts, and
    # a click on the plot while plotly mounts that figure can be lost; see the README)
    choose(pg, "selected node", second_label)
    pg.wait_for_function(RINGED, arg=[second, 0])
    settle(pg)
    pg.get_by_label("note on this node").fill("strongest input of the pinned feature")
    pg.get_by_role("button", name="save note").click()
    settle(pg)
    no_exception(pg)
    assert annotations(load_graph(path))["notes"] == {second: "strongest input of the pinned "
                                                              "feature"}
    pg.close()

    # a new session: the file's pins, supernode and note come back
    pg = new_page(browser)
    open_graphs(pg, server)
    wait_drawn(pg, "super|layer-0 group")
    drawn = plot_nodes(pg)
    assert "layer-0 group" in drawn["text"]
    hover = drawn["hover"][drawn["ids"].index(second)]
    assert "strongest input of the pinned feature" in hover
    assert pg.get_by_text("pinned:").count() == 1
    pg.close()


def test_5000_nodes_render_and_click_fast(server, browser, graph_run):
    pg = new_page(browser)
    open_graphs(pg, server)
    t0 = time.perf_counter()
    choose(pg, "saved in the run", str(graph_run / "graphs" / "synthetic5000.json"))
    pg.wait_for_function("""() => {
      const gd = document.querySelector('.js-plotly-plot');
      return gd && gd._fullData && gd._fullData.length > 0
        && gd._fullData[gd._fullData.length - 1].customdata.length === 5000; }""")
    render = time.perf_counter() - t0
    settle(pg)
    no_exception(pg)
    nodes = plot_nodes(pg)
    assert len(nodes["ids"]) == 5000
    current = pg.locator('[data-testid="stMarkdown"]', has_text="Selected:").inner_text()
    times, drawn = [], []
    for node in [i for i in nodes["ids"] if i.startswith("mlp.") and i not in current][:3]:
        shown, ringed = click_and_wait(pg, node)
        times.append(shown)
        drawn.append(ringed)
        settle(pg)
    print(f"\n5,000-node graph: render {render:.2f} s; click -> selection shown (its edges, "
          f"its card, the node as plotly's selection) {', '.join(f'{t:.2f}' for t in times)} s;"
          f" -> plot redrawn with its ring and edges {', '.join(f'{t:.2f}' for t in drawn)} s")
    no_exception(pg)
    shot(pg, "12_graph_5000")
    assert max(times) < CLICK_BUDGET_S, f"clicks took {times} s"
    pg.close()


def node_choice(pg) -> str:
    """The Circuits page's selected node (its selector's text)."""
    box = pg.locator('[data-testid="stSelectbox"]', has_text="node").last
    return box.get_by_role("combobox").input_value()


def test_circuit_grid_view_in_chromium(server, browser):
    pg = new_page(browser)
    pg.goto(f"{server}/circuits")
    pg.get_by_role("heading", name="Circuits", exact=True).wait_for()
    settle(pg)
    thumb = pg.locator('[data-testid="stSlider"]', has_text="prompts").get_by_role("slider")
    thumb.focus()
    for _ in range(3):          # 16 -> 4 prompts (steps of 4): a quicker discovery
        thumb.press("ArrowLeft")
    settle(pg)
    pg.get_by_role("button", name="run discovery").click()
    pg.get_by_text("after pruning").wait_for()
    settle(pg)
    no_exception(pg)
    nodes = plot_nodes(pg)
    chosen = node_choice(pg)
    latents = [i for i in nodes["ids"] if i != "output" and not i.endswith("|err")
               and f"latent {i.split('|')[-1]} " not in chosen]
    # the grid: one cell per (hook, position), its nodes spread, none on top of another
    xy = np.array(pg.evaluate(f"""(ids) => ids.map(id => ({NODE_XY})([id, 0]))""",
                              [i for i in nodes["ids"] if i != "output"]))
    gaps = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))[np.triu_indices(len(xy), 1)]
    assert gaps.min() >= 8.0, f"two circuit nodes {gaps.min():.1f} px apart"
    click_node(pg, latents[0])
    settle(pg)
    no_exception(pg)
    chosen = node_choice(pg)
    assert f"latent {latents[0].split('|')[-1]} " in chosen
    ring = pg.evaluate("""() => { const gd = document.querySelector('.js-plotly-plot');
      const tr = gd._fullData[gd._fullData.length - 1];
      return Array.from(tr.marker.line.color); }""")
    assert ring[nodes["ids"].index(latents[0])] == 2   # drawn as the selected node
    shot(pg, "13_circuit_grid")
    pg.close()
