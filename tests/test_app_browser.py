"""The app in a real browser: ``interp app`` on a free localhost port, headless Chromium
(Debian's ``chromium``, driven by Playwright through ``executable_path``) through every page;
it clicks a feature, a circuit node and the links between pages, and saves screenshots under
``tests/artifacts/``. ``make test`` installs Chromium (apt) and Playwright (dev extras); the
test skips, saying why, only when no browser can be found."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_MS = 120_000


def find_browser() -> str | None:
    path = os.environ.get("INTERP_CHROMIUM")
    if path and Path(path).exists():
        return path
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the browser test needs the playwright package (pip install -e '.[dev]')")
    exe = find_browser()
    if exe is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)} and $INTERP_CHROMIUM); "
                    f"`make test` installs Debian's chromium with apt-get where it can")
    return exe


@contextlib.contextmanager
def app_server(run, log_name: str = "app_server.log"):
    """``interp app RUN`` on a free port, its output in ``tests/artifacts/LOG_NAME``; the
    URL once it answers its health check; stopped (its process group) on exit. Shared by
    every browser test."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "w")
    proc = subprocess.Popen([sys.executable, "-m", "interp.cli", "app", str(run), "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://localhost:{port}"
    deadline = time.time() + 120
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"`interp app` did not start (exit {proc.poll()}); see "
                                   f"{ARTIFACTS / log_name}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def headless_chromium(chromium: str, args: tuple[str, ...] = ()):
    """Debian's chromium, headless, driven by Playwright (``args``: extra command-line flags)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", *args])
        yield browser
        browser.close()


def new_page(browser, height: int = 2000):
    """A page 1400 px wide (the screenshots' width) with the tests' timeout."""
    pg = browser.new_page(viewport={"width": 1400, "height": height})
    pg.set_default_timeout(TIMEOUT_MS)
    return pg


@contextlib.contextmanager
def browser_page(chromium: str, height: int = 2000):
    """A headless Chromium page 1400 px wide."""
    with headless_chromium(chromium) as browser:
        yield new_page(browser, height)


@pytest.fixture(scope="module")
def server(chromium, app_run):
    with app_server(app_run) as url:
        yield url


@pytest.fixture(scope="module")
def page(chromium, server):
    with browser_page(chromium) as pg:
        yield pg


def settle(pg) -> None:
    """Wait until the app has finished its script run (no running indicator)."""
    pg.wait_for_timeout(300)
    pg.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                         timeout=TIMEOUT_MS)
    pg.wait_for_timeout(300)


def open_page(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    pg.get_by_role("heading", name=title, exact=True).wait_for()
    settle(pg)


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_exception(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0, \
        pg.locator('[data-testid="stException"]').first.inner_text()


def test_every_page_in_chromium(server, page, app_run):
    pg = page
    pg.goto(server)
    pg.get_by_role("heading", name="Overview", exact=True).wait_for()
    pg.locator(".js-plotly-plot").first.wait_for()
    settle(pg)
    no_exception(pg)
    assert pg.get_by_text("FVU vs L0 across SAEs").count() >= 1
    shot(pg, "1_overview")

    open_page(pg, "Activations")
    no_exception(pg)
    shot(pg, "2_activations")

    # Features: search by density, click a latent, its page opens (URL carries it)
    open_page(pg, "Features")
    pg.get_by_role("tab", name="search by density").click()
    link = pg.locator('[data-testid="stPageLink"] a', has_text=re.compile(r"^latent \d+: density"))
    link.first.wait_for()
    text = link.nth(1).inner_text()
    latent = int(re.match(r"latent (\d+)", text).group(1))
    link.nth(1).click()
    pg.get_by_role("heading", name=f"topk · latent {latent}").wait_for()
    settle(pg)
    no_exception(pg)
    assert f"latent={latent}" in pg.url
    assert pg.locator('span[title]').count() > 0  # per-token highlighted contexts
    shot(pg, "3_feature_page")

    # Circuits: discover on othello-legal, click a node in the graph, open its feature page
    open_page(pg, "Circuits")
    pg.get_by_role("button", name="run discovery").click()
    pg.get_by_text("after pruning").wait_for()
    settle(pg)
    no_exception(pg)
    shot(pg, "4_circuit")
    before = pg.locator('[data-testid="stPageLink"] a', has_text="open the feature page").inner_text()
    plot = pg.locator(".js-plotly-plot").first  # the graph (the faithfulness curve follows)
    keys = plot.evaluate("p => p.data[p.data.length - 1].customdata")  # node keys, in order
    current = int(re.search(r"latent (\d+)$", before).group(1))
    i = next(i for i, k in enumerate(keys)
             if k != "output" and not k.endswith("|err") and int(k.split("|")[-1]) != current)
    point = plot.locator(".scatterlayer .trace").last.locator(".point").nth(i)
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(x - 30, y - 30)
    pg.mouse.move(x, y, steps=5)  # plotly clicks the hovered point
    pg.mouse.click(x, y)
    settle(pg)
    after = pg.locator('[data-testid="stPageLink"] a', has_text="open the feature page")
    after.wait_for()
    chosen = after.inner_text()
    latent = int(re.search(r"latent (\d+)$", chosen).group(1))
    assert latent == int(keys[i].split("|")[-1]), f"clicked {keys[i]}, selected {chosen!r}"
    shot(pg, "5_circuit_node")
    after.click()
    pg.get_by_role("heading", name=f"topk · latent {latent}").wait_for()
    settle(pg)
    no_exception(pg)
    shot(pg, "6_circuit_node_feature")

    # Probes: default sources (residual units and the run's SAE), k = 1, 2, 4, 8
    open_page(pg, "Probes")
    pg.get_by_role("button", name="run probes").click()
    pg.get_by_text("Top units of the largest sparse probe").wait_for()
    settle(pg)
    no_exception(pg)
    shot(pg, "7_probes")
    unit = pg.locator('[data-testid="stPageLink"] a', has_text=re.compile(r"^latent \d+ \(weight"))
    assert unit.count() >= 1

    # Ablations: steer a latent and see the next-token distribution move
    open_page(pg, "Ablations")
    pg.get_by_text("most likely next tokens at the last position").first.wait_for()
    no_exception(pg)
    shot(pg, "8_ablations")
