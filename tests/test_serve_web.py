"""The web page at GET / in a real headless browser (Debian's chromium driven by Playwright).

Needs /usr/bin/chromium (`apt-get install -y chromium`); Playwright's own browser download is never
used. The test uploads a PNG, waits for the streamed report, checks it block by block against an
in-process decode, and saves a screenshot.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from PIL import Image
from serve_support import API_APP, API_ARGS, local_generator, phantom_pngs, start_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium absent: apt-get install -y chromium"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


@pytest.fixture(scope="module")
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1100, "height": 1300})
        browser.close()


def test_upload_png_and_watch_report_arrive(url, page, tmp_path):
    nih = SHARED_DATA / "cxr_images_nih" / "00000001_000.png"
    png = nih if nih.exists() else phantom_pngs()[0]  # a real X-ray when ../shared is present
    run = local_generator().stream([[Image.open(png).convert("RGB")]], "en", mode="onestep")
    blocks = list(run)
    page.goto(url + "/")
    assert page.title() == "ECHO chest X-ray report"
    page.set_input_files("#images", str(png))
    assert page.locator("#preview img").count() == 1
    page.select_option("#language", "en")
    page.select_option("#mode", "onestep")
    page.click("#submit")
    page.wait_for_selector("#sections:not([hidden])", timeout=60_000)
    assert page.text_content("#report") == run.reports[0].text != ""
    assert page.locator("#blocks li").count() == len(blocks)
    assert page.text_content("#findings") == (run.reports[0].findings or "(none)")
    summary = page.text_content("#summary")
    assert f"{len(run.reports[0].tokens)} tokens" in summary and " ms total" in summary
    assert page.text_content("#status").startswith("Done in")
    shot = Path(os.environ.get("ECHO_SCREENSHOT_DIR", tmp_path)) / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] > 0
    print(f"screenshot: {shot}")


def test_page_shows_refusal_for_unsupported_file(url, page, tmp_path):
    gif = tmp_path / "x.gif"
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, format="GIF")
    gif.write_bytes(buf.getvalue())
    page.goto(url + "/")
    page.set_input_files("#images", str(gif))
    page.click("#submit")
    page.wait_for_selector("#status.error", timeout=30_000)
    assert page.text_content("#status").startswith("Error 415")
