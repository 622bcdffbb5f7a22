"""What a person sees: the real app in headless Chromium (Debian's package, driven by Playwright), at a
desktop size and a phone size.

Every tab runs its default example to completion; on a phone the outputs are on the first screen
right after Run; no broken image, no "\ufffd", no bare "Error"; Stop says the run was stopped; the
blog embed (docs/embed.html) runs an example inside the web component. With
WORDSWORLDS_SCREENSHOTS=docs/screenshots the tests also write the README's screenshots there.
"""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import socketserver
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY, free_port
from wordsworlds.world.scene import COLOURS

playwright = pytest.importorskip("playwright.sync_api", reason="make test installs playwright")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="make test installs Debian's chromium")

DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
SHOTS = os.environ.get("WORDSWORLDS_SCREENSHOTS")
BOTH_SIZES = [("desktop", DESKTOP), ("phone", PHONE)]
# Tabs 2 and 3 are checked at the phone size (the harder one); at both when taking screenshots.
SIZES = BOTH_SIZES if SHOTS else [("phone", PHONE)]
ROOT = Path(__file__).resolve().parents[1]
LANES = ("words-next-token", "words-masked-diffusion", "worlds-next-token", "worlds-denoising")


class ServerErrors(logging.Handler):
    """Collects what the server logs at ERROR level (a traceback in the console is a defect too)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(self.format(record))


@pytest.fixture(scope="module")
def live_url():
    """The app as `python app.py` serves it (FastAPI, /gradio.js, MCP), on loopback in this process.
    At the end, nothing may have been logged at ERROR level (e.g. h11's "Too little data for declared
    Content-Length" when a cached picture was rewritten while a browser read it)."""
    import uvicorn

    from wordsworlds.ui import CSS, build_demo
    from wordsworlds.ui.serve import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(build_demo(TINY), css=CSS), host="127.0.0.1", port=port,
                                           log_level="warning"))
    errors = ServerErrors()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.asgi", "gradio")]
    for logger in loggers:
        logger.addHandler(errors)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    for logger in loggers:
        logger.removeHandler(errors)
    assert errors.records == []


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        # Flags as the machine's notes advise: no background networking (nothing outside is reachable).
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        yield chromium
        chromium.close()


def open_page(browser, url: str, viewport: dict):
    page = browser.new_page(viewport=viewport)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url)
    page.get_by_role("button", name="Run all four").wait_for(timeout=60_000)
    return page


def open_chat_side(page):
    """Open tab 1's "The chat model beside the picture" and return it (a locator to search within)."""
    page.get_by_text("The chat model beside the picture").click()
    side = page.locator("#ww-chat-side")
    side.get_by_role("button", name="Run both").wait_for(timeout=10_000)
    return side


def assert_clean(page) -> None:
    """No broken image, no replacement character, no bare "Error" toast."""
    broken = page.evaluate("""() => [...document.querySelectorAll('img')]
        .filter(img => img.complete && img.src && img.naturalWidth === 0).map(img => img.src)""")
    assert broken == []
    text = page.inner_text("body")
    assert "\ufffd" not in text
    toasts = [t.strip() for t in page.locator(".toast-body").all_inner_texts()]
    assert all(t not in ("Error", "") for t in toasts), toasts


def shoot(page, name: str, results: str | None = None) -> None:
    """A screenshot for the README: the whole page at the desktop size; at the phone size, the screen
    a person sees with `results` (an element id) scrolled to the top."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    phone = page.viewport_size["width"] < 600
    if phone and results:
        page.evaluate(f"document.getElementById('{results}').scrollIntoView({{block: 'start'}})")
        page.wait_for_timeout(500)
    page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=not phone)


def on_first_screen(page, selector: str) -> bool:
    """Whether the element fills part of the window as the page now stands (no scrolling by the test)."""
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] < page.viewport_size["height"] and box["y"] + box["height"] > 100


def wait_for_text(locator, text: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while text not in locator.inner_text():
        assert time.time() < deadline, f"{text!r} never appeared in {locator.inner_text()[:300]!r}"
        time.sleep(0.2)


@pytest.mark.parametrize("size, viewport", BOTH_SIZES)
def test_words_vs_worlds_runs_its_four_lanes_with_the_outputs_on_the_first_screen(browser, live_url, size, viewport):
    page = open_page(browser, live_url, viewport)
    tabs = page.get_by_role("tab")
    assert [t.inner_text().strip() for t in tabs.all()][:3] == ["Words vs worlds", "Embeddings", "Hybrid"]
    assert all(t.is_visible() for t in tabs.all()[:3])  # one tap each, none behind a "more" menu
    page.get_by_role("button", name="Run all four").click()
    for lane in LANES:
        wait_for_text(page.locator(f"#ww-meter-{lane}"), "· done")
    # Without scrolling: the four lanes (two caption lanes, two pictures) are on the screen.
    for lane in LANES:
        box = page.locator(f"#ww-lane-{lane}").bounding_box()
        assert box and box["y"] + box["height"] <= viewport["height"], (lane, box)
    for lane in ("#ww-lane-words-next-token", "#ww-lane-words-masked-diffusion"):
        assert "cat" in page.locator(lane).inner_text(), lane  # each writes the caption of the scene asked for
    assert page.locator("#ww-lane-worlds-next-token img, #ww-lane-worlds-denoising img").count() == 2
    assert_clean(page)
    assert page.errors == []
    shoot(page, f"words_vs_worlds_{size}")
    page.close()


@pytest.mark.parametrize("size, viewport", BOTH_SIZES)
def test_what_only_one_process_can_do_fill_blanks_and_repaint(browser, live_url, size, viewport):
    page = open_page(browser, live_url, viewport)
    page.get_by_text("What only one process can do").click()
    page.get_by_role("button", name="Fill the blanks").click()
    for lane in LANES[:2]:
        wait_for_text(page.locator(f"#ww-meter-{lane}"), "given words")
    filled = page.locator("#ww-lane-words-masked-diffusion").inner_text()
    assert "blue" in filled and "right" in filled and "▢" not in filled
    page.get_by_role("button", name="Repaint").click()
    only = page.locator("#ww-only-one")
    wait_for_text(only, "Repainted in place", timeout_s=90)
    wait_for_text(only, "written again", timeout_s=90)
    deadline = time.time() + 90
    while only.inner_text().count("· done") < 2:  # both lanes' last frames
        assert time.time() < deadline, only.inner_text()[-400:]
        time.sleep(0.2)
    page.wait_for_timeout(500)
    assert only.locator("img").count() == 4  # before and after, per worlds lane
    assert_clean(page)
    assert page.errors == []
    shoot(page, f"only_one_process_{size}", "ww-only-one")
    page.close()


def test_the_chat_model_still_runs_beside_the_picture(browser, live_url):
    page = open_page(browser, live_url, DESKTOP)
    side = open_chat_side(page)
    side.get_by_role("button", name="Run both").click()
    meter = side.locator("#ww-image-meter")
    wait_for_text(meter, "· done")
    text_meter = side.locator("#ww-text-meter")
    wait_for_text(text_meter, "stopped by")
    deadline = time.time() + 60
    while "stopped by …" in text_meter.inner_text():  # "…" while the words are still being written
        assert time.time() < deadline, text_meter.inner_text()
        time.sleep(0.2)
    assert "stopped by eos" in text_meter.inner_text() or "stopped by max_new_tokens" in text_meter.inner_text()
    assert side.locator(".ww-images img").count() == 3
    assert_clean(page)
    assert page.errors == []
    page.close()


def test_stop_says_the_run_was_stopped_and_clearing_the_prompt_raises_no_toast(browser, live_url):
    page = open_page(browser, live_url, DESKTOP)
    side = open_chat_side(page)
    side.get_by_text("Decoding (words)").click()
    tokens = side.get_by_role("spinbutton").filter(has=page.locator(":scope")).and_(
        side.locator("input[aria-label*='Max new tokens']"))
    tokens.fill("200")
    tokens.press("Enter")
    side.get_by_role("button", name="Words only").click()
    text_meter = side.locator("#ww-text-meter")
    wait_for_text(text_meter, "tokens/s")
    side.get_by_role("button", name="Stop").click()
    wait_for_text(text_meter, "Stop pressed", timeout_s=10)
    side.get_by_label("Prompt").fill("")
    page.wait_for_timeout(1500)
    assert page.locator(".toast-body").count() == 0
    page.close()


@pytest.mark.parametrize("size, viewport", SIZES)
def test_the_explorer_embeds_its_words_and_reports_bad_input_once(browser, live_url, size, viewport):
    page = open_page(browser, live_url, viewport)
    page.get_by_role("tab", name="Embeddings").click()
    page.get_by_role("button", name="Embed").click()
    page.get_by_text("12 words ·").first.wait_for(timeout=120_000)
    assert on_first_screen(page, "#ww-explorer-results")
    neighbours = page.get_by_label("Nearest neighbours of the highlighted word").first.inner_text()
    # Opening the accordion must not change anything (an empty layer box once became layer 0).
    page.get_by_text("Custom axes and LLM layer").click()
    assert page.get_by_label("LLM layer (empty: the middle one)").input_value() == ""
    page.get_by_role("button", name="Embed").click()
    page.get_by_text("(12 cached)").first.wait_for(timeout=30_000)  # the second run, read from the cache
    assert page.get_by_label("Nearest neighbours of the highlighted word").first.inner_text() == neighbours
    assert_clean(page)
    shoot(page, f"embeddings_{size}", "ww-explorer-results")
    page.get_by_label("Words or phrases (comma or newline separated)").fill("")
    page.get_by_role("button", name="Embed").click()
    page.locator(".toast-body").first.wait_for(timeout=10_000)
    page.wait_for_timeout(1000)
    assert page.locator(".toast-body").count() == 1  # one error, not one per handler
    page.close()


@pytest.mark.parametrize("size, viewport", SIZES)
def test_the_hybrid_tab_runs_its_example_and_says_what_a_pass_is_against(browser, live_url, size, viewport):
    page = open_page(browser, live_url, viewport)
    page.get_by_role("tab", name="Hybrid").click()
    page.get_by_role("button", name="Run", exact=True).click()
    trace = page.get_by_text("Round 1").first
    trace.wait_for(timeout=120_000)
    assert on_first_screen(page, "#ww-hybrid-results")
    body = page.inner_text("body")
    # "a sunset over the sea" is drawable in the storybook world: planned as a sun over the sea at sunset, with
    # nothing said to be beyond it.
    assert "against the plan" in body and "at sunset" in body and "this world cannot draw" not in body
    assert_clean(page)
    shoot(page, f"hybrid_{size}", "ww-hybrid-results")
    page.close()


def test_a_blog_page_embeds_the_app_as_a_web_component(browser, live_url):
    """docs/embed.html, served from another origin as a blog would be, runs an example inside <gradio-app>."""
    html = (ROOT / "docs" / "embed.html").read_text().replace("http://127.0.0.1:7860", live_url)

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    with socketserver.TCPServer(("127.0.0.1", free_port()), Page) as blog:
        threading.Thread(target=blog.serve_forever, daemon=True).start()
        page = browser.new_page(viewport=DESKTOP)
        page.goto(f"http://127.0.0.1:{blog.server_address[1]}/")
        app = page.locator("gradio-app")
        app.get_by_role("button", name="Run all four").click(timeout=60_000)
        for lane in LANES:
            wait_for_text(app.locator(f"#ww-meter-{lane}"), "· done")
        assert app.locator("#ww-lane-worlds-next-token img, #ww-lane-worlds-denoising img").count() == 2
        assert_clean(page)
        page.close()
        blog.shutdown()


def test_the_app_is_an_mcp_server_with_the_tabs_as_tools(live_url):
    import json

    with urllib.request.urlopen(f"{live_url}/gradio_api/mcp/schema", timeout=30) as response:
        tools = {tool["name"]: tool for tool in json.load(response)}
    assert {"generate_text", "render_image", "run_hybrid"} <= set(tools)
    assert "diffusion model" in tools["render_image"]["description"]
    assert "steps" in json.dumps(tools["render_image"]) and "https://" not in json.dumps(tools)


def test_every_endpoint_names_its_values_and_gives_local_examples():
    from wordsworlds.ui import build_demo

    info = build_demo(TINY).get_api_info()["named_endpoints"]
    assert {"/two_by_two", "/fill_blanks", "/repaint", "/generate_text", "/render_image", "/compare", "/explore_noise", "/diffusion_tokens", "/embed_words",
            "/tokenize_words", "/run_hybrid"} <= set(info)
    for name, endpoint in info.items():
        for value in endpoint["parameters"] + endpoint["returns"]:
            assert not value["label"].startswith(("value_", "parameter_")), (name, value["label"])
        assert "https://" not in str(endpoint["parameters"]), name


def call_api(url: str, api_name: str, args_json: str) -> tuple[str, str]:
    """Call an endpoint the way any HTTP client can, bypassing the UI's sliders: (event, data) of the
    last server-sent event. `args_json` is raw JSON text, so NaN and Infinity can be sent too."""
    import httpx

    response = httpx.post(f"{url}/gradio_api/call/{api_name}", content='{"data": ' + args_json + "}",
                          headers={"Content-Type": "application/json"}, timeout=30)
    if response.status_code != 200:
        return "http", f"{response.status_code} {response.text[:200]}"
    event_id = response.json()["event_id"]
    event = data = ""
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = line.split(":", 1)[1].strip()
    return event, data


P = '"a red cat on the left"'
HOSTILE = {
    "generate_text": [f"[{P}, NaN, 0, 0, 1, 0]", f"[{P}, 4, Infinity, 0, 1, 0]", f"[{P}, 4, 0, -5, 1, 0]",
                      f"[{P}, 4, 0, 0, 1, -1]", f"[{P}, 4, 0, 0, 1, 1e30]", f'[{P}, "ten", 0, 0, 1, 0]',
                      '["", 4, 0, 0, 1, 0]', '["' + "x" * 100_000 + '", 4, 0, 0, 1, 0]', "[null, 4, 0, 0, 1, 0]",
                      '["a\\u0000b\\u001b[31m", 4, 0, 0, 1, 0]', f"[{P}, 4, 0, 0, NaN, 0]", f"[{P}, [4], 0, 0, 1, 0]"],
    "render_image": [f'[{P}, NaN, 5.0, "", 0, "ddim"]', f'[{P}, 4, -Infinity, "", 0, "ddim"]',
                     f'[{P}, 1e9, 5.0, "", 0, "ddim"]', f'[{P}, 4, 5.0, "' + "x" * 100_000 + '", 0, "ddim"]',
                     f'[{P}, 4, 5.0, "", -1, "ddim"]', f'[{P}, 4, 5.0, "", 0, "../../etc/passwd"]',
                     f'[{P}, 4, 5.0, "", 0, {{"__class__": "x"}}]', f'[{P}, 4, 5.0, "", 1e300, "ddim"]'],
    "two_by_two": [f'[{P}, NaN, 5.0, 0, "ddim"]', f'[{P}, 4, 5.0, -1, "ddim"]', '["' + "w " * 60 + '", 4, 5.0, 0, "ddim"]',
                   '["", 4, 5.0, 0, "ddim"]', f'[{P}, 4, 5.0, 0, "../x"]'],
    "fill_blanks": [f'["", {P}]', f'["a red cat", {P}]', f'["a ___ red ___ on the ceiling", {P}]',
                    '["' + "___ " * 40 + f'", {P}]', f"[null, {P}]", f"[5, {P}]", '["a ___", "' + "q " * 60 + '"]'],
    "repaint": [f'[{P}, {P}, "nowhere", 4, 5.0, 0, "ddim"]', f'[{P}, {P}, "60,60,10,10", 4, 5.0, 0, "ddim"]',
                f'[{P}, {P}, "left", NaN, 5.0, 0, "ddim"]', f'[{P}, "", "left", 4, 5.0, 0, "ddim"]',
                f'[{P}, {P}, "-1,0,4,4", 4, 5.0, 0, "ddim"]', f'[{P}, {P}, null, 4, 5.0, 0, "ddim"]'],
    # The replay endpoints: a run that was never kept, a traversal as a run id, wrong types, NaN steps.
    "replay": ['["nope", 5, null]', '["../../etc/passwd", 5, null]', '[null, 5, null]', '["x", NaN, null]',
               '["x", 5, "' + "t" * 100_000 + '"]', '[["x"], 5, null]'],
    "play": ['["nope", 0, null, 0.4]', '["x", 0, null, NaN]', '["x", 0, null, 1e9]'],
    "branch_text": ['["nope", 2, "green"]', '["x", NaN, "green"]', '["x", 2, null]', '["x", 2, "' + "g" * 100_000 + '"]'],
    "branch_image": [f'["nope", 8, {P}, null]', f'["x", NaN, {P}, null]', '["x", 8, "' + "p" * 100_000 + '", null]',
                     f'["x", 8, {P}, -1]'],
    "compare": [f'[{P}, 4, 0, 0, 1, 4, 5.0, "", NaN, "ddim"]', '["' + "y" * 3000 + '", 4, 0, 0, 1, 4, 5.0, "", 0, "ddim"]'],
    "run_hybrid": [f"[{P}, 0, true, true, 10, 5.0, 0]", f"[{P}, 1, true, true, 10, 5.0, NaN]",
                   f"[{P}, 1, true, true, 10, 1e9, 0]", '["' + "z" * 100_000 + '", 1, true, true, 10, 5.0, 0]'],
    "embed_words": ['["dog, cat", "", ["minilm"], "pca", 7, "", "", "", ""]',
                    '["dog, cat", "", ["smell"], "pca", 2, "", "", "", ""]',
                    '["dog, cat", "", ["minilm"], "pca", 2, "", "", "", "1e400"]',
                    '["dog, cat", "{} {}", ["minilm"], "pca", 2, "", "", "", ""]', '["", "", ["minilm"], "pca", 2, "", "", "", ""]'],
    "explore_noise": ['[{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 10, 0]',
                      '[{"path": "../../../../etc/passwd", "meta": {"_type": "gradio.FileData"}}, 10, 0]',
                      '[{"path": "%2e%2e/%2e%2e/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 10, 0]',
                      '[{"url": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}}, 10, 0]',
                      '[null, NaN, 0]'],
}


def test_hostile_api_calls_are_refused_with_a_message_before_any_model_work(live_url, monkeypatch, capfd):
    """The API bypasses the sliders: every such call is refused with a message that says what is wrong
    (never "upstream Gradio app has raised an exception"), no model runs, no traceback reaches the
    server's log, and the app answers after. (benchmarks/fuzz_api.py times many more such calls.)"""
    from wordsworlds import two_by_two
    from wordsworlds.engines import RemoteEngine, RemoteRuns
    from wordsworlds.explore import explorer
    from wordsworlds.words.captions import Captioner
    from wordsworlds.worlds.painter import Painter
    from wordsworlds.hybrid import loop
    from wordsworlds.words.next_token import TextGenerator
    from wordsworlds.worlds import noising
    from wordsworlds.worlds.diffusion import ImageGenerator

    def no_model_work(*args, **kwargs):
        raise AssertionError("a model ran on hostile input")

    for owner, name in [(TextGenerator, "stream"), (ImageGenerator, "stream"), (RemoteEngine, "stream"), (RemoteRuns, "stream"), (loop, "run_hybrid"),
                        (explorer, "embed"), (noising, "DDPMScheduler"), (Captioner, "forward"), (Painter, "forward"),
                        (two_by_two, "repaint_stream")]:
        monkeypatch.setattr(owner, name, no_model_work)
    refused = []
    for api_name, cases in HOSTILE.items():
        for args in cases:
            event, message = call_api(live_url, api_name, args)
            assert event in ("error", "http"), (api_name, args[:80], event, message[:200])
            assert message and message != "null" and "upstream Gradio app" not in message, (api_name, args[:80], message)
            assert "a model ran" not in message, (api_name, args[:80])
            refused.append(api_name)
    assert len(refused) == sum(map(len, HOSTILE.values()))
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.undo()
    import httpx

    too_big = httpx.post(f"{live_url}/gradio_api/upload", files={"files": ("big.png", b"\0" * (17 * 2**20))}, timeout=30)
    assert too_big.status_code == 413 and "16" in too_big.text  # Gradio's upload limit, set by ui/serve.py
    event, data = call_api(live_url, "render_image", f'[{P}, 2, 5.0, "", 0, "ddim"]')
    assert event == "complete" and "U-Net evaluations" in data  # still answering normally


@pytest.mark.parametrize("size, viewport", BOTH_SIZES)
def test_replay_pause_on_a_step_see_a_words_attention_and_branch_words_and_picture(browser, live_url, size, viewport):
    """The speaker's path: run, pause on step 5, scrub, the attention of "red" over the red cat (on the
    left), branch the words at word 3 and the picture at step 8, each beside the original."""
    page = open_page(browser, live_url, viewport)
    page.get_by_role("button", name="Run all four").click()
    replay = page.locator("#ww-replay")
    about = page.locator("#ww-replay-about")
    wait_for_text(about, "Step 64", timeout_s=90)  # the run is kept and shown at its end (the painter's 64 tokens)
    step_box = page.locator("#ww-replay-step input[type=number]")
    for step in ("12", "5"):  # scrub forward and back, then pause on step 5
        step_box.fill(step)
        step_box.press("Enter")
        wait_for_text(about, f"Step {step}")
    assert "denoising **step 5**" not in about.inner_text() and f"step 5 of {TINY.recipe.steps}" in about.inner_text()
    assert "red" in page.locator("#ww-replay-token input").input_value()
    page.wait_for_timeout(800)
    for view in ("painter", "x0", "noisy", "attention"):
        assert page.locator(f"#ww-replay-{view} img").count() == 1, view
    # Which pixels did "red" paint: its attention falls on the left half, where the red cat is.
    heat = page.evaluate("""async () => {
        const img = document.querySelector('#ww-replay-attention img');
        const bitmap = await createImageBitmap(await (await fetch(img.src)).blob());
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
        const ctx = canvas.getContext('2d'); ctx.drawImage(bitmap, 0, 0);
        const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
        let left = 0, right = 0;
        for (let i = 0; i < data.length; i += 4) {
            const x = (i / 4) % bitmap.width;
            const orange = data[i] - data[i + 2];  // the overlay is orange: red minus blue
            if (x < bitmap.width / 2) left += orange; else right += orange;
        }
        return [left, right];
    }""")
    assert heat[0] > 1.5 * heat[1], heat
    shoot(page, f"replay_{size}", "ww-replay")
    # Branch the words at the third word ("red"): click it, take the first other candidate.
    page.locator("#ww-replay-words-next-token .token").nth(2).click()
    page.wait_for_timeout(800)
    page.get_by_role("button", name="Branch the words").click()
    wait_for_text(replay, "written again", timeout_s=60)
    after = [t.strip() for t in page.locator("#ww-branch-words-after .token").all_inner_texts()]
    assert after[:2] == ["a", "large"] and after[2] in set(COLOURS) - {"red"}, after
    # Branch the picture at step 8 with the new prompt: a yellow sun instead of the red cat.
    page.get_by_role("button", name="Branch the picture").click()
    wait_for_text(replay, "the rest follow the change", timeout_s=60)
    page.wait_for_timeout(500)
    assert page.locator("#ww-branch-picture-after img").count() == 1
    assert_clean(page)
    assert page.errors == []
    shoot(page, f"branch_{size}", "ww-branch-words")
    page.close()
