"""The dashboard of a ``demo --quick`` run, opened in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs
them) and selenium (the ``dev`` extra). Without them the test is skipped, unless
``GI_REQUIRE_BROWSER=1`` is set (as in CI), where it fails instead. The browser
is driven through the chromedriver on this machine; nothing is downloaded and the
page is read from a ``file://`` URL.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

from gradinstructor.compare import METHODS
from gradinstructor.prune import CASES, CRITERIA

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900"]
SCREENSHOT = "dashboard_screenshot.png"


def _browser_or_skip() -> None:
    """Skip (or, with GI_REQUIRE_BROWSER=1, fail) when the browser cannot be driven."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    reasons = []
    if missing:
        reasons.append(f"{', '.join(missing)} not installed (apt-get install chromium "
                       "chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        reasons.append("selenium is not installed (pip install -e '.[dev]')")
    if reasons:
        reason = "headless Chromium unavailable: " + "; ".join(reasons)
        if os.environ.get("GI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; GI_REQUIRE_BROWSER=1 requires the browser test to run")
        pytest.skip(reason)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """A headless Chromium with a fresh profile, driven by the local chromedriver."""
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Both paths are given, so Selenium Manager has nothing to look up; keep it offline anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_loaded(driver, timeout: float = 30.0) -> None:
    """Until the document and every image in it have finished loading (or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return document.readyState === 'complete' && "
                                 "Array.from(document.images).every(i => i.complete)"):
            return
        time.sleep(0.1)
    raise AssertionError(f"the page did not finish loading in {timeout:.0f} s")


def _column(driver, selector: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(row => row.cells[0].textContent.trim())", selector)


def test_dashboard_of_the_quick_demo_in_headless_chromium(quick_demo_run, browser, tmp_path,
                                                           record_wall_time):
    assert quick_demo_run.result.returncode == 0, quick_demo_run.result.stderr[-3000:]
    page = quick_demo_run.path / "report.html"
    start = time.perf_counter()

    browser.get(page.as_uri())
    _wait_loaded(browser)

    assert browser.title == f"Grad-Instructor run {quick_demo_run.path.name}"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
        "complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))")
    srcs = [image["src"] for image in images]
    # the comparison's curves and schedule, the RL plot, a grid per layer, the prune plot
    assert len(images) >= 7, srcs
    broken = [image for image in images
              if not (image["complete"] and image["width"] > 0 and image["height"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    for name in ("plots/curves.png", "plots/schedule.png", "plots/rl.png", "plots/prune.png",
                 "gradcam/layer0.png", "gradcam/layer1.png", "gradcam/layer2.png"):
        assert name in srcs

    # one row per method in the comparison table, every case and criterion in the prune one
    assert _column(browser, "#comparison tbody tr") == list(METHODS)
    prune = browser.execute_script(
        "return Array.from(document.querySelectorAll('#prune tbody tr'))"
        ".map(row => Array.from(row.cells).slice(0, 2).map(c => c.textContent.trim()))")
    assert prune == [[case, criterion] for case in CASES for criterion in CRITERIA]
    assert browser.execute_script("return document.getElementById('missing')") is None
    # self-contained: every link and source resolves inside the folder, nothing is fetched
    urls = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]')).map(e => e.src || e.href)")
    assert len(urls) >= len(images)
    assert all(url.startswith(page.parent.as_uri() + "/") for url in urls), urls
    assert browser.execute_script(
        "return document.querySelectorAll('script, link, iframe, object, embed').length") == 0
    assert "http://" not in browser.page_source and "https://" not in browser.page_source

    # a full-page screenshot, kept beside the report as an artefact of the run
    width, height = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    browser.set_window_size(max(1280, width), height + 200)
    shot = tmp_path / SCREENSHOT
    assert browser.save_screenshot(str(shot))
    shutil.copyfile(shot, quick_demo_run.path / SCREENSHOT)
    record_wall_time("dashboard in headless Chromium", time.perf_counter() - start)

    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= height and pixels.shape[1] >= 1000
    assert pixels[..., :3].std() > 0.05  # not a blank page
    assert (quick_demo_run.path / SCREENSHOT).read_bytes() == Path(shot).read_bytes()
