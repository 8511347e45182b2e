"""The explorer in a real browser: Debian's Chromium driven by Playwright."""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from app_server import serve
from rvt.assets import BUNDLED_CHECKPOINT, EXAMPLES

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def mixed_uploads(root: Path) -> list[Path]:
    """Twenty files of the kinds that used to race or decode differently: grayscale and RGBA PNGs, JPEGs."""
    rng = np.random.default_rng(0)
    files = sorted(EXAMPLES.glob("*.png"))
    for i in range(10):
        item = np.zeros((64 + 8 * i, 48), np.uint8)
        item[8:-8, 8:40] = rng.integers(60, 255, (item.shape[0] - 16, 32))
        path = root / f"upload{i}.{'png' if i % 2 else 'jpg'}"
        if i % 3 == 0:  # a dark item on a transparent background
            Image.fromarray(np.dstack([255 - item] * 3 + [np.where(item > 0, 255, 0).astype(np.uint8)]),
                            "RGBA").save(path.with_suffix(".png"))
            path = path.with_suffix(".png")
        else:
            Image.fromarray(item).save(path)
        files.append(path)
    return files


@pytest.mark.browser
def test_uploads_one_pass_each_then_every_tab(tmp_path):
    # In CI a missing browser is a failure: .ci/run installs it.
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium"
    from playwright.sync_api import expect, sync_playwright

    uploads = mixed_uploads(tmp_path)
    assert len(uploads) >= 20
    with serve(BUNDLED_CHECKPOINT) as (url, service), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            hosts = set()
            page.on("request", lambda request: hosts.add(urlparse(request.url).hostname))
            page.goto(url)
            file_input = page.locator("#input-img input[type=file]")
            heads = page.locator("#heads-img img")
            previous = None
            for count, path in enumerate(uploads, start=1):
                file_input.set_input_files(str(path))
                deadline = time.monotonic() + 30
                while service.passes < count and time.monotonic() < deadline:
                    page.wait_for_timeout(50)
                assert service.passes == count, f"upload {count} ({path.name}) ran {service.passes - count + 1} passes"
                expect(heads).to_be_visible(timeout=30_000)
                if previous is not None:
                    expect(heads).not_to_have_attribute("src", previous, timeout=30_000)
                previous = heads.get_attribute("src")
            page.wait_for_timeout(500)
            assert service.passes == len(uploads), "a replaced image must not trigger a second pass"
            assert page.locator(".toast-body").count() == 0, "a valid upload showed an error"
            seen = page.locator("#seen-img img")
            expect(seen).to_be_visible()

            head_img = page.locator("#head-img img")
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
            passes = service.passes
            # Every other tab draws its panels from the same cached pass.
            for tab, element, action in (("Rollout", "#rollout-img img", None),
                                         ("Head statistics", "#stats-img img", None),
                                         ("Rotary", "#kernel-img img", None),
                                         ("Attributions", "#attr-img img", "Compute attribution")):
                page.get_by_role("tab", name=tab, exact=True).click()
                if action:
                    page.get_by_role("button", name=action).click()
                expect(page.locator(element)).to_be_visible(timeout=60_000)
                page.wait_for_timeout(800)
                page.screenshot(path=str(ARTIFACTS / f"tab-{tab.split()[0].lower()}.png"), full_page=True)
            assert service.passes == passes + 1  # only the attribution ran the model again
            # A new image while the statistics tab is open redraws it; the old attribution is cleared.
            page.get_by_role("tab", name="Head statistics", exact=True).click()
            stats = page.locator("#stats-img img")
            expect(stats).to_be_visible(timeout=30_000)
            before = stats.get_attribute("src")
            file_input.set_input_files(str(uploads[1]))
            expect(stats).not_to_have_attribute("src", before, timeout=30_000)
            page.get_by_role("tab", name="Attributions", exact=True).click()
            expect(page.locator("#attr-img img")).to_have_count(0, timeout=30_000)
            # Loading a model with an image shown re-runs it quietly: no error, one more pass.
            passes = service.passes
            page.get_by_text("Model", exact=True).click()
            page.get_by_role("button", name="Load model").click()
            deadline = time.monotonic() + 30
            while service.passes == passes and time.monotonic() < deadline:
                page.wait_for_timeout(50)
            page.wait_for_timeout(500)
            assert service.passes == passes + 1
            toasts = page.locator(".toast-body")
            assert toasts.count() == 0, f"loading a model showed: {toasts.all_inner_texts()}"
            assert hosts <= {"127.0.0.1", "localhost"}, f"the page fetched from elsewhere: {hosts}"
        finally:
            browser.close()


@pytest.mark.browser
def test_faithfulness_and_the_scene_editor(tmp_path):
    """The scorecard runs from its button; the scene editor draws on opening, and a click moves an object."""
    from playwright.sync_api import expect, sync_playwright

    with serve(BUNDLED_CHECKPOINT) as (url, service), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.locator("#input-img input[type=file]").set_input_files(str(sorted(EXAMPLES.glob("*.png"))[6]))
            expect(page.locator("#novelty")).to_contain_text("No sign that it is unlike", timeout=30_000)
            for tab in ("Faithfulness", "Scenes"):  # every tab is in the bar, none hidden in an overflow menu
                expect(page.get_by_role("tab", name=tab, exact=True)).to_be_visible()
            page.get_by_role("tab", name="Faithfulness", exact=True).click()
            page.get_by_role("button", name="Score every map").click()
            for element in ("#faith-table img", "#faith-curves img", "#faith-random img"):
                expect(page.locator(element)).to_be_visible(timeout=60_000)
            expect(page.locator("#faith-note")).to_contain_text("Failing the randomisation check")
            page.wait_for_timeout(800)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "tab-faithfulness.png"), full_page=True)

            page.get_by_role("tab", name="Scenes", exact=True).click()
            scene = page.locator("#scene-img img")
            expect(scene).to_be_visible(timeout=30_000)
            expect(page.locator("#scene-truth")).to_contain_text("Truth: red below blue")  # test scene 0
            box = scene.bounding_box()
            for which, x in (("blue", 0.2), ("red", 0.85)):  # blue to the left edge, red to the right one
                page.locator("#scene-click-moves").get_by_text(which, exact=True).click()
                before = scene.get_attribute("src")
                scene.click(position={"x": box["width"] * x, "y": box["height"] * 0.5})
                expect(scene).not_to_have_attribute("src", before, timeout=30_000)
            expect(page.locator("#scene-truth")).to_contain_text("Truth: red right of blue", timeout=30_000)
            expect(page.locator("#scene-pred")).to_contain_text("red right of blue")
            rotary_map = page.locator("#scene-map img").get_attribute("src")
            page.get_by_test_id("no position-radio-label").click()  # the same scene, the blind model
            expect(page.locator("#scene-map img")).not_to_have_attribute("src", rotary_map, timeout=30_000)
            page.wait_for_timeout(800)
            page.screenshot(path=str(ARTIFACTS / "tab-scenes.png"), full_page=True)
            assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
        finally:
            browser.close()


@pytest.mark.browser
def test_the_rotary_lab_with_no_image_then_with_one(tmp_path):
    """The lab draws before any upload; moving a control redraws its figures; with an image shown, the
    loaded model's head kernel and band usage appear."""
    from playwright.sync_api import expect, sync_playwright

    with serve(BUNDLED_CHECKPOINT) as (url, service), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.get_by_role("tab", name="Rotary lab", exact=True).click()
            steps = page.locator("#lab-steps img")
            expect(steps).to_be_visible(timeout=30_000)
            before = steps.get_attribute("src")
            rows = page.locator("#lab-rows input[type=range]")
            rows.focus()
            rows.press("ArrowRight")  # 7 -> 8 rows: every step per patch changes
            expect(steps).not_to_have_attribute("src", before, timeout=30_000)
            expect(page.locator("#lab-head-img img")).to_have_count(0)  # no image yet: no model figures
            assert service.passes == 0, "the lab without an image must not run the model"
            page.locator("#input-img input[type=file]").set_input_files(str(sorted(EXAMPLES.glob("*.png"))[0]))
            for element in ("#lab-head-img img", "#lab-usage-img img"):  # below the fold: lazy images
                expect(page.locator(element)).to_have_count(1, timeout=30_000)
                page.locator(element).scroll_into_view_if_needed()
                expect(page.locator(element)).to_be_visible(timeout=30_000)
            page.wait_for_timeout(800)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "tab-rotary-lab.png"), full_page=True)
            assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
        finally:
            browser.close()
