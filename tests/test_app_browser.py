"""End to end in a real browser: Debian chromium driven by Playwright (no browser download).

Launches the app, picks the tiny model and a weight-free reward, trains, sees before/after images
and a plot (screenshot of the Train tab mid-run -> assets/screenshots/train-tab.png), does one
preference round with clicks, and downloads a LoRA that loads back.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RLR_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "assets" / "screenshots" / "train-tab.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"chromium not found at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(
                executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
        except Exception as error:  # noqa: BLE001
            pytest.skip(f"chromium does not start here: {error}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(tiny_pixel_dir, tmp_path_factory):
    os.environ["RLR_STUDIO_HOME"] = str(tmp_path_factory.mktemp("studio-browser"))
    from app import state
    from app.ui import build_app, launch_kwargs

    state.reset_all()
    demo = build_app(hosted=False, preload=False)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **launch_kwargs())
    yield url
    demo.close()
    state.reset_all()


def set_value(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.click()
    box.fill(value)
    box.press("Enter") if page.locator(f"#{elem_id} input").count() else None
    box.blur()


def test_train_preference_export_in_chromium(browser, app_url, tiny_pixel_dir, tmp_path):
    from rlr_core.diffusers_chain import load_model

    page = browser.new_page(viewport={"width": 1400, "height": 1900}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(app_url)
    page.wait_for_selector("#start-btn")

    from app.settings import tiny_model_available

    model = "tiny" if tiny_model_available() else str(tiny_pixel_dir)  # the bundled model once it is built
    if model != "tiny":
        set_value(page, "model", model)
    assert page.locator("#reward input").first.input_value() == "saturation"  # weight-free default
    set_value(page, "steps", "4")
    set_value(page, "eval-every", "2")
    set_value(page, "prompts", "a red circle on a blue background\na green square")
    page.click("#start-btn")

    status = page.locator("#status textarea")
    page.wait_for_function(
        "() => /iteration [1-9]\\//.test(document.querySelector('#status textarea').value)", timeout=90_000
    )
    page.wait_for_function(
        "() => /iteration [3-9]\\/|finished/.test(document.querySelector('#status textarea').value)", timeout=90_000
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)  # let the plots draw
    page.screenshot(path=str(SCREENSHOT), full_page=False)
    page.wait_for_function(
        "() => /finished 4 iterations/.test(document.querySelector('#status textarea').value)", timeout=120_000
    )
    assert "LoRA kept" in status.input_value()
    assert page.locator("#before-gallery img").count() >= 4
    page.wait_for_function("() => document.querySelectorAll('#after-gallery img').length >= 4")
    assert page.locator("#reward-plot canvas, #reward-plot svg").count() >= 1

    # one preference round with clicks
    page.get_by_role("tab", name="Preference").click()
    page.click("#pref-new")
    page.wait_for_function("() => document.querySelectorAll('#pref-gallery img').length >= 4", timeout=90_000)
    images = page.locator("#pref-gallery img")
    images.nth(0).click()
    images.nth(2).click()
    page.wait_for_function(
        "() => document.querySelectorAll('#pref-choices input[type=checkbox]:checked').length === 2"
    )
    page.click("#pref-update")
    page.wait_for_function(
        "() => /updates 1/.test(document.querySelector('#pref-counters').innerText)", timeout=90_000
    )
    assert re.search(r"clicks 2", page.locator("#pref-counters").inner_text())

    # export: download the LoRA and load it back
    page.get_by_role("tab", name="Export").click()
    page.click("#export-btn")
    link = page.locator("#lora-file a").first
    link.wait_for(timeout=60_000)
    with page.expect_download() as info:
        link.click()
    target = tmp_path / "downloaded.safetensors"
    info.value.save_as(str(target))
    chain = load_model(model, num_steps=10, lora_rank=4, device="cpu", dtype="float32")
    before = {k: v.clone() for k, v in chain.lora_state_dict().items()}
    chain.load_lora(str(target))
    after = chain.lora_state_dict()
    assert any(not (after[k] == before[k]).all() for k in before)  # the trained LoRA, not the fresh one
    page.close()
