"""The explorer in a real browser: Debian's Chromium driven by Playwright."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from app_server import serve
from conftest import small_config
from PIL import Image

from rvt import Preprocess, RvT, save_checkpoint

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "rvt_fashion_mnist.safetensors"


@pytest.mark.browser
def test_upload_switch_head_and_screenshot(tmp_path):
    # In CI a missing browser is a failure: .ci/run installs it.
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium"
    from playwright.sync_api import expect, sync_playwright

    if BUNDLED.is_file():
        checkpoint = BUNDLED
    else:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(tmp_path / "m.safetensors", RvT(**small_config(depth=3, heads=4)),
                                     [f"class {i}" for i in range(10)], Preprocess())
    arr = np.full((84, 84), 0, np.uint8)
    arr[10:74, 20:64] = 200
    Image.fromarray(arr).save(tmp_path / "upload.png")

    with serve(checkpoint) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            hosts = set()
            page.on("request", lambda request: hosts.add(urlparse(request.url).hostname))
            page.goto(url)
            page.locator("#input-img input[type=file]").set_input_files(str(tmp_path / "upload.png"))
            head_img = page.locator("#head-img img")
            expect(head_img).to_be_visible(timeout=60_000)
            expect(page.locator("#heads-img img")).to_be_visible(timeout=60_000)
            before = head_img.get_attribute("src")
            slider = page.locator("#head input[type=range]")
            slider.focus()
            slider.press("ArrowRight")
            expect(head_img).not_to_have_attribute("src", before, timeout=30_000)
            # Click a patch of the single-head view: the query switches from CLS to that patch.
            before = head_img.get_attribute("src")
            head_img.click()  # the centre patch (the element is letterboxed: clicks off the picture do nothing)
            expect(page.get_by_text("Query patch: row")).to_be_visible(timeout=30_000)
            expect(head_img).not_to_have_attribute("src", before, timeout=30_000)
            page.wait_for_timeout(800)  # let the new images fade in before the screenshot
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
            # Every other tab draws its panels from the same cached pass.
            for tab, element, action in (("Rollout", "#rollout-img img", None),
                                         ("Head statistics", "#stats-img img", None),
                                         ("Rotary", "#kernel-img img", None),
                                         ("Attributions", "#attr-img img", "Compute attribution")):
                page.get_by_role("tab", name=tab).click()
                if action:
                    page.get_by_role("button", name=action).click()
                expect(page.locator(element)).to_be_visible(timeout=60_000)
                page.wait_for_timeout(800)
                page.screenshot(path=str(ARTIFACTS / f"tab-{tab.split()[0].lower()}.png"), full_page=True)
            assert hosts <= {"127.0.0.1", "localhost"}, f"the page fetched from elsewhere: {hosts}"
        finally:
            browser.close()
