"""The page, end to end in a real headless Chromium (Debian's, driven by Playwright's Python package):
upload two images, drag the exemplar box with the mouse, press Find, wait for the boxes, check the
drawn count against the API's answer, filter with the slider, download results.json, redraw the
box; then the same on a touch screen. Saves a screenshot to outputs/test_artifacts/serve_page.png.

`make test` installs Debian's chromium when it is missing (`make browser`); this test is skipped,
saying so, only where no chromium could be installed.
"""
import json
import os
import sys
import re
import shutil

import httpx
import pytest

from detector.server.load_test import start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = [sys.executable, os.path.join(ROOT, "tools", "serve.py")]  # the server the tests start

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCREENSHOT = os.path.join(ROOT, "outputs", "test_artifacts", "serve_page.png")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# No sandbox (we run as root), no GPU, and none of the background connections this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine, and `make browser` could not install Debian's chromium "
                             "(it needs root and apt-get): the page's end-to-end test cannot run")


@pytest.fixture(scope="module")
def server(serve_files):
    proc, url = start_server(SERVE, serve_files["ckpt"], "--threads", "1")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)  # a fresh profile
        yield b
        b.close()


def api(url, serve_files, box, threshold, same=False):
    files = {"query": ("query.png", open(serve_files["query"], "rb").read(), "image/png")}
    if not same:
        files["support"] = ("support.png", open(serve_files["support"], "rb").read(), "image/png")
    r = httpx.post(url + "/api/predict", files=files, data={"support_box": box, "score_threshold": str(threshold)})
    assert r.status_code == 200, r.text
    return r.json()


def sent_box(request) -> str:
    """The ``support_box`` field of a multipart request the page sent."""
    m = re.search(rb'name="support_box"\r\n\r\n([^\r]*)\r\n', request.post_data_buffer)
    return m.group(1).decode()


def drawn(page) -> int:
    count = int(page.get_attribute("#count", "data-count"))
    assert int(page.get_attribute("#result-canvas", "data-drawn")) == count
    return count


def orange_pixels(page) -> int:
    """Pixels of the boxes' colour on the result canvas."""
    return page.evaluate("""() => { const c = document.getElementById('result-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 240 && Math.abs(d[i+1] - 122) < 12 && d[i+2] < 15) n++;
        return n; }""")


def drag(page, selector, start, end):
    """A mouse drag from ``start`` to ``end``, fractions of the element's box."""
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=8)
    page.mouse.up()


def test_upload_drag_find_filter_download_redraw(server, browser, serve_files, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    held, requests = [], []
    page.route("**/api/predict", lambda route: (held.append(route), requests.append(route.request)))
    page.goto(server + "/")
    page.wait_for_function("() => document.getElementById('model-info').textContent.includes('mobilenetv2_100')")
    assert page.is_disabled("#find")
    page.set_input_files("#query-file", serve_files["query"])
    page.set_input_files("#support-file", serve_files["support"])
    page.wait_for_selector("#support-canvas.loaded")
    drag(page, "#support-canvas", (0.1, 0.2), (0.7, 0.8))  # the support is 50 x 40 pixels
    x, y, w, h = (float(v) for v in page.input_value("#box-input").split(","))
    assert abs(x - 5) <= 1 and abs(y - 8) <= 1 and abs(w - 30) <= 1 and abs(h - 24) <= 1

    page.click("#find")
    page.wait_for_function("() => document.body.dataset.state === 'busy'")
    page.wait_for_function("() => true")  # let the route handler take the request
    while not held:
        page.wait_for_timeout(20)
    assert page.is_visible(".busy-veil .spinner") and page.is_disabled("#find")  # the progress state
    held.pop().continue_()
    page.wait_for_function("() => document.body.dataset.state === 'done'")
    box = sent_box(requests[0])
    threshold = float(page.input_value("#threshold"))
    answer = api(server, serve_files, box, threshold)
    assert drawn(page) == len(answer["detections"]) > 0 and orange_pixels(page) > 50

    everything = api(server, serve_files, box, 0.0)["detections"]
    page.locator("#threshold").fill(str(sorted(d["score"] for d in everything)[len(everything) // 2]))
    middle = float(page.input_value("#threshold"))  # the slider's value (steps of 0.01)
    assert 0 < drawn(page) == len(api(server, serve_files, box, middle)["detections"]) == sum(
        d["score"] >= middle for d in everything) < len(everything)  # filtered live, no new request
    with page.expect_download() as download:
        page.click("#download")
    saved = json.loads(open(download.value.path()).read())
    assert saved == [api(server, serve_files, box, middle) | {"image": "query.png"}]
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert open(SCREENSHOT, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    drag(page, "#support-canvas", (0.5, 0.1), (0.95, 0.6))  # redraw: no upload, the old result goes
    assert page.input_value("#box-input") != box and page.get_attribute("#count", "data-count") == "0"
    page.unroute("**/api/predict")
    page.click("#find")
    page.wait_for_function("() => document.body.dataset.state === 'done'")
    assert len(requests) == 1  # the first one only went through the route
    new_box = page.input_value("#box-input")
    assert drawn(page) == len(api(server, serve_files, new_box, middle)["detections"])
    page.close()


def test_a_touch_screen_draws_the_box_and_finds(server, browser, serve_files):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(server + "/")
    page.set_input_files("#query-file", serve_files["query"])
    page.tap("#same-image")
    page.wait_for_selector("#support-canvas.loaded")
    box = page.locator("#support-canvas").bounding_box()
    cdp = context.new_cdp_session(page)

    def touch(kind, fx=None, fy=None):
        points = [] if fx is None else [{"x": box["x"] + fx * box["width"], "y": box["y"] + fy * box["height"]}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", 0.25, 0.25)
    for i in range(1, 9):
        touch("touchMove", 0.25 + 0.05 * i, 0.25 + 0.05 * i)
    touch("touchEnd")
    x, y, w, h = (float(v) for v in page.input_value("#box-input").split(","))
    assert abs(x - 20) <= 1 and abs(y - 15) <= 1 and abs(w - 32) <= 1 and abs(h - 24) <= 1  # query is 80 x 60
    page.wait_for_timeout(500)  # a tap right after a drag is taken as part of the same gesture, as by a person
    page.tap("#find")
    page.wait_for_function("() => document.body.dataset.state === 'done'")
    answer = api(server, serve_files, page.input_value("#box-input"), float(page.input_value("#threshold")), same=True)
    assert drawn(page) == len(answer["detections"])
    context.close()


def test_refusals_show_the_server_message(server, browser, serve_files, tmp_path):
    page = browser.new_page()
    page.goto(server + "/")
    page.set_input_files("#query-file", serve_files["query"])
    page.set_input_files("#support-file", serve_files["support"])
    page.fill("#box-input", "400,400,10,10")
    page.dispatch_event("#box-input", "change")
    page.click("#find")
    page.wait_for_function("() => document.body.dataset.state === 'error'")
    assert "outside the support image" in page.text_content("#status")
    assert not page.is_disabled("#find")  # the user can fix the box and try again
    page.close()
