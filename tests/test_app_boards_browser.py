"""Boards, code and the live feature sections in a real browser (as ``test_app_browser.py``:
``interp app`` on a free port, headless Chromium through Playwright, screenshots at 1400 px
under ``tests/artifacts/``):

- an othello feature page: its top examples as boards, its board profile, similar decoder
  directions, correlated neurons, the loss change on ablation (``14_feature_boards.png``);
- a pycode feature page: examples as shaded source code (``15_feature_code.png``);
- the Ablations page with a board prompt: a click on a legal move appends it to the prompt,
  and typed moves redraw the board (``16_ablations_board.png``).

The run is a copy of the app tests' run (``app_run``) plus a feature store of the shipped
pycode SAE on 2,000 tokens."""
from __future__ import annotations

import shutil

import pytest

from test_app_browser import (ARTIFACTS, TIMEOUT_MS, app_server, browser_page,  # noqa: F401
                              chromium, no_exception, settle)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def boards_run(app_run, tmp_path_factory):
    from interp.features import FeatureConfig, build_for_run
    from interp.models.zoo import REPO_ROOT

    run = tmp_path_factory.mktemp("boards") / "run"
    shutil.copytree(app_run, run)
    build_for_run(None, str(REPO_ROOT / "saes/pycode/blocks.2.hook_resid_post/topk"),
                  FeatureConfig(n_tokens=2000, top_n=6, window=(16, 4), batch_size=16),
                  out=run / "features" / "pycode.duckdb", progress=False)
    return run


@pytest.fixture(scope="module")
def server(chromium, boards_run):
    with app_server(boards_run, "app_boards_server.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(chromium, server):
    with browser_page(chromium, height=1600) as pg:
        yield pg


def shot(pg, name: str) -> None:
    """The whole page at 1400 px: Streamlit scrolls inside its main container, so the
    viewport is made as tall as the content for the screenshot."""
    height = pg.evaluate("() => Math.max(...Array.from(document.querySelectorAll("
                         "'[data-testid=\"stMain\"], section.main, [data-testid=\"stAppViewContainer\"]'))"
                         ".map(e => e.scrollHeight), document.body.scrollHeight)")
    size = pg.viewport_size
    pg.set_viewport_size({"width": 1400, "height": int(height) + 40})
    pg.wait_for_timeout(800)   # plotly re-lays out its figures
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    pg.set_viewport_size(size)


def busy_latent(path) -> int:
    from interp.features import FeatureStore

    with FeatureStore(path) as fs:
        return fs.by_density(0.01, 0.1, n=1)[0]["latent"]


def open_feature(pg, server, key: str, latent: int) -> None:
    pg.goto(f"{server}/features?sae={key}&latent={latent}")
    pg.get_by_role("heading", name=f"· latent {latent}").wait_for()
    pg.get_by_text("Activations on your own prompt").wait_for()
    settle(pg)
    no_exception(pg)
    assert pg.locator('[data-testid="stAlertContentError"]').count() == 0, \
        pg.locator('[data-testid="stAlertContentError"]').first.inner_text()


def heatmap_panels(pg) -> int:
    """The most heatmap traces in one plotly figure of the page."""
    return pg.evaluate("() => Math.max(0, ...Array.from(document.querySelectorAll("
                       "'.js-plotly-plot')).map(p => (p.data || []).filter("
                       "t => t.type === 'heatmap').length))")


def test_othello_feature_page_shows_boards_and_profile(server, page, boards_run):
    pg = page
    latent = busy_latent(boards_run / "features" / "topk.duckdb")
    open_feature(pg, server, "topk", latent)
    boards = pg.locator("svg.othello-board")
    assert boards.count() >= 5 + 1      # the top examples and an interval's samples
    first = boards.first
    assert first.locator("rect.played").count() == 1
    assert first.locator("circle.mine").count() + first.locator("circle.theirs").count() >= 5
    assert first.locator("circle.legal").count() >= 1
    assert pg.get_by_text("Board profile").count() >= 1
    assert heatmap_panels(pg) == 6                       # empty .. played
    for title in ("Most similar decoder directions", "Most correlated neurons",
                  "Next-token loss change when the latent is zero-ablated"):
        assert pg.get_by_text(title).count() >= 1, title
    links = pg.locator('[data-testid="stPageLink"] a', has_text="latent ")
    assert links.count() >= 10
    shot(pg, "14_feature_boards")


def test_pycode_feature_page_shows_code(server, page, boards_run):
    pg = page
    latent = busy_latent(boards_run / "features" / "pycode.duckdb")
    open_feature(pg, server, "pycode", latent)
    code = pg.locator(".code-example")
    assert code.count() >= 6
    html = code.first.inner_html()
    assert "<br>" in html and "rgba(245,133,24" in html.replace(" ", "")
    assert "\n" in code.first.inner_text()               # line breaks as the source has them
    assert pg.locator("svg.othello-board").count() == 0
    assert pg.get_by_text("Next-token loss change").count() >= 1
    pg.get_by_text("per-token loss change of the top examples").click()  # as code, red/blue
    loss = pg.locator('[data-testid="stExpander"]', has_text="per-token loss change")
    loss.locator(".code-example").first.wait_for()
    shades = loss.locator(".code-example").first.inner_html().replace(" ", "")
    assert "rgba(220,38,38" in shades or "rgba(37,99,235" in shades
    shot(pg, "15_feature_code")


def click_point(pg, plot, i: int) -> None:
    point = plot.locator(".scatterlayer .trace").last.locator(".point").nth(i)
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(x - 30, y - 30)
    pg.mouse.move(x, y, steps=5)  # plotly clicks the hovered point
    pg.mouse.click(x, y)


def test_ablations_board_prompt(server, page):
    pg = page
    pg.goto(f"{server}/ablations")
    pg.get_by_role("heading", name="Ablations", exact=True).wait_for()
    pg.get_by_text("most likely next tokens at the last position").first.wait_for()
    settle(pg)
    no_exception(pg)
    box = pg.locator("textarea").first
    before = box.input_value().split()
    plot = pg.locator(".js-plotly-plot").first
    legal = plot.evaluate("p => p.data[p.data.length - 1].customdata")
    assert sorted(legal) == sorted(_legal_names(before))
    click_point(pg, plot, 0)
    settle(pg)
    pg.wait_for_function(f"() => document.querySelector('textarea').value.trim().split(/\\s+/)"
                         f".length === {len(before) + 1}", timeout=TIMEOUT_MS)
    after = box.input_value().split()
    assert after == before + [legal[0]]
    settle(pg)
    no_exception(pg)
    # typing still works: the board follows the text box
    box.fill("f5 d6 c3")
    box.press("Control+Enter")
    settle(pg)
    n = len(_legal_names(["f5", "d6", "c3"]))
    pg.wait_for_function("() => { const p = document.querySelector('.js-plotly-plot'); "
                         "return p && p.data && p.data[p.data.length - 1].customdata.length"
                         f" === {n}; }}", timeout=TIMEOUT_MS)
    plot = pg.locator(".js-plotly-plot").first
    now = plot.evaluate("p => p.data[p.data.length - 1].customdata")
    assert sorted(now) == sorted(_legal_names(["f5", "d6", "c3"]))
    pg.get_by_text("most likely next tokens at the last position").first.wait_for()
    no_exception(pg)
    shot(pg, "16_ablations_board")


def _legal_names(moves: list[str]) -> list[str]:
    from interp.data.othello import square_name
    from interp.viz.othello import position

    return [square_name(s) for s in position(moves).legal]
