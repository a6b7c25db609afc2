"""The self-contained heatmap page: its embedded data against the records, and the page in a real browser.

The browser test drives Debian's Chromium (`apt-get install chromium`) with playwright; it never
downloads a browser, and skips with a message where none is installed.
"""
import base64
import dataclasses
import functools
import html
import http.server
import io
import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from lie_helpers.figures import page as page_figures
from lie_helpers.analysis.records import RunBrackets
from lie_helpers.data.attributes import ATTRIBUTES
from test_summaries import HAIR, STEPS, synthetic_records

LR = 5e-3
CAPTION = "profile 'x' · GENERATED <data> & more"


def embedded(page: str) -> dict:
    """The page's JSON data, read back as the browser does (the page escapes '</' as '<\\/')."""
    match = re.search(r'<script type="application/json" id="heatmap-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def decoded_values(data: dict) -> np.ndarray:
    """The embedded values decoded with numpy: float16 times each frame's scale."""
    n_checkpoints, n_pairs = len(data["steps"]), len(data["pairs"])
    halves = np.frombuffer(base64.b64decode(data["values"]), dtype="<f2").astype(np.float64)
    frames = halves.reshape(n_checkpoints, n_pairs, data["rows"], len(data["outputs"]))
    return frames * np.asarray(data["scale"]).reshape(n_checkpoints, n_pairs, 1, 1)


def full_size_records(seed=0):
    """Records of the default profile's shape: 21 checkpoints, 15 pairs, 32 images, 40 outputs."""
    g = torch.Generator().manual_seed(seed)
    steps, pairs = list(range(0, 1001, 50)), [(i, j) for i in range(6) for j in range(i + 1, 6)]
    values = torch.randn(len(steps), len(pairs), 32, 40, generator=g) * torch.logspace(0, 3, len(steps)).view(-1, 1, 1, 1)
    return RunBrackets(steps=steps, tensor_names=[], pairs=pairs, bracket_rms=None, gradient_rms=None,
                       logit_perturbation=values, batch_logits=None, seconds=None)


def test_embedded_values_round_trip_within_float16_precision():
    records = synthetic_records()   # magnitudes up to ~1e6: beyond float16's range unless scaled per frame
    records.logit_perturbation[2, 1] = 0.0   # an all-zero frame
    data = embedded(page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION, highlight=HAIR))
    assert data["steps"] == STEPS and [tuple(p) for p in data["pairs"]] == records.pairs
    assert data["outputs"] == list(ATTRIBUTES) and data["highlight"] == list(HAIR)
    assert (data["rows"], data["examples"], data["lr"]) == (8, 4, LR)
    original = records.logit_perturbation.double().numpy()
    frame_max = np.abs(original).max(axis=(2, 3), keepdims=True)
    assert np.abs(original).max() > 65504   # float16's largest finite value
    error = np.abs(decoded_values(data) - original)
    # float16: relative error 2^-11 for normal numbers, absolute 2^-25 of the frame's maximum below them
    assert np.all(error <= 2.0**-11 * np.abs(original) + 2.0**-25 * frame_max)
    assert np.all(decoded_values(data)[2, 1] == 0.0)


def test_colour_limits_are_percentiles_of_each_frame_and_of_each_pair():
    records = synthetic_records()
    data = embedded(page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION, percentile=95))
    magnitude = records.logit_perturbation.abs().double().numpy()
    for c in range(len(STEPS)):
        for p in range(len(records.pairs)):
            assert data["frame_limit"][c][p] == pytest.approx(np.percentile(magnitude[c, p], 95), rel=1e-12)
    for p in range(len(records.pairs)):
        assert data["fixed_limit"][p] == pytest.approx(np.percentile(magnitude[:, p], 95), rel=1e-12)
    assert len(data["colormap"]) == 256 and data["colormap"][0] != data["colormap"][-1]


def test_page_is_self_contained_and_labelled():
    records = synthetic_records()
    notes = ["Black_Hair", "</script><b>", "neither"] + [""] * 5
    page = page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION, highlight=HAIR, row_notes=notes)
    assert page.startswith("<!DOCTYPE html>")
    # everything but the data (whose base64 may spell anything) names no URL and loads nothing
    markup = page.replace(re.search(r'id="heatmap-data">(.*?)</script>', page, re.S).group(1), "").lower()
    for fetches in ("http", "://", "url(", "@import", "fetch(", "xmlhttprequest", "import("):
        assert fetches not in markup, fetches
    links = re.findall(r"""\b(?:href|src)\s*=\s*["']?([^"'\s>]*)""", markup)
    assert links == ["data:,"]   # the empty icon that keeps a browser from asking a host for /favicon.ico
    assert html.escape(CAPTION) in page and CAPTION not in page
    assert "<noscript>" in page and "JavaScript" in page
    assert "lr = 0.005" in page and "2.5e-05 × value logits" in page
    assert embedded(page)["row_notes"] == notes   # a '</script>' inside the data does not end the element
    assert len(re.findall(r"<script\b", page)) == 2


def test_full_size_page_is_two_bytes_per_value():
    records = full_size_records()
    page = page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION)
    n_values = records.logit_perturbation.numel()
    assert n_values == 21 * 15 * 32 * 40
    size = len(page.encode("utf-8"))
    assert 2 * n_values * 4 / 3 < size < 2 * n_values * 4 / 3 + 60_000   # base64 float16 plus the page itself


@pytest.mark.parametrize("change, message", [
    (dict(output_names=ATTRIBUTES[:39]), "output names"),
    (dict(highlight=("Black_Hair", "Purple_Hair")), "Purple_Hair"),
    (dict(lr=0.0), "lr must be positive"),
    (dict(pair=6), "pair 6"),
    (dict(row_notes=["a"] * 7), "one per batch image"),
])
def test_bad_input_stops_early(change, message):
    arguments = dict(output_names=ATTRIBUTES, lr=LR, caption=CAPTION, highlight=HAIR) | change
    with pytest.raises(ValueError, match=message):
        page_figures.heatmap_page(synthetic_records(), **arguments)


def test_pairs_beyond_the_batch_are_refused():
    records = synthetic_records()
    records.pairs[-1] = (2, 8)   # the batch has rows 0-7
    with pytest.raises(ValueError, match="beyond the 8 batch rows"):
        page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION)


# ----------------------------------------------------------------------------- in a real browser

@pytest.fixture
def chromium():
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("No Chromium on PATH: the page's browser test needs Debian's `apt-get install chromium` "
                    "(.ci/run installs it).")
    pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) drives the browser")
    return binary


def test_page_in_a_real_browser(chromium, tmp_path):
    """Opens at the last checkpoint; the slider, the pair menu and the scale toggle redraw; hovering reads
    the records' value; the pair's rows are boxed; no console error and no request but the page."""
    from playwright.sync_api import sync_playwright

    records = synthetic_records()
    values = records.logit_perturbation.double().numpy()
    path = tmp_path / "page.html"
    path.write_text(page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION, highlight=HAIR),
                    encoding="utf-8")
    url = path.as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        requests, problems = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
        page.goto(url)
        page.wait_for_selector("#readout[data-ready]")
        readout = lambda: page.eval_on_selector("#readout", "e => ({...e.dataset})")  # noqa: E731
        drawing = lambda: page.eval_on_selector("#heatmap", "c => c.toDataURL()")  # noqa: E731
        geometry = {k: float(v) for k, v in page.eval_on_selector("#heatmap", "c => ({...c.dataset})").items()}

        def assert_shows_largest(state, c, p):
            r, k = np.unravel_index(np.abs(values[c, p]).argmax(), values[c, p].shape)
            assert (int(state["checkpoint"]), int(state["pair"]), int(state["row"]), int(state["column"])) == (c, p, r, k)
            assert float(state["value"]) == pytest.approx(values[c, p, r, k], rel=2.0**-11)

        last = len(STEPS) - 1
        assert page.input_value("#checkpoint") == str(last) and f"step {STEPS[-1]}" in page.inner_text("#step-label")
        assert_shows_largest(readout(), last, 0)
        assert float(readout()["limit"]) == pytest.approx(np.percentile(np.abs(values[:, 0]), 99))
        first = drawing()

        page.focus("#checkpoint")
        page.keyboard.press("Home")
        assert_shows_largest(readout(), 0, 0)
        assert f"step {STEPS[0]}" in page.inner_text("#frame-title")
        at_step_0 = drawing()
        assert at_step_0 != first

        page.select_option("#pair", "3")
        assert_shows_largest(readout(), 0, 3)
        assert "[v1, v2]" in page.inner_text("#frame-title")
        other_pair = drawing()
        assert other_pair != at_step_0

        page.check("#scale-frame")
        assert float(readout()["limit"]) == pytest.approx(np.percentile(np.abs(values[0, 3]), 99))
        assert drawing() != other_pair

        # hover the centre of (row 2, Brown_Hair)
        r, k = 2, ATTRIBUTES.index("Brown_Hair")
        box = page.locator("#heatmap").bounding_box()
        page.mouse.move(box["x"] + geometry["left"] + (k + 0.5) * geometry["cellWidth"],
                        box["y"] + geometry["top"] + (r + 0.5) * geometry["cellHeight"])
        state = readout()
        assert (int(state["row"]), int(state["column"])) == (r, k)
        assert float(state["value"]) == pytest.approx(values[0, 3, r, k], rel=2.0**-11)
        assert float(state["logits"]) == pytest.approx(LR**2 * float(state["value"]), rel=1e-12)
        assert "Brown_Hair" in page.inner_text("#readout") and "logits at lr = 0.005" in page.inner_text("#readout")

        # pair (1, 2): the top edges of rows 1 and 2 are boxed in black, the edge between rows 4 and 5 is not
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(drawing().split(",", 1)[1]))).convert("RGB"))
        x = int(geometry["left"] + 10.5 * geometry["cellWidth"])
        edge = lambda row: pixels[int(geometry["top"] + row * geometry["cellHeight"]), x].tolist()  # noqa: E731
        assert edge(1) == edge(2) == [0, 0, 0]
        assert edge(5) != [0, 0, 0]
        browser.close()
    assert problems == []
    assert requests == [url]


def with_adam(records, seed=1):
    """`records` with Adam's bracket beside the SGD one: its own values, κ per checkpoint, NaN at step 0."""
    g = torch.Generator().manual_seed(seed)
    adam = torch.randn(records.logit_perturbation.shape, generator=g, dtype=torch.float64) * 1e3
    adam[0] = float("nan")
    scales = torch.stack([torch.linspace(0.1, 0.2, len(records.steps)), torch.ones(len(records.steps))], 1)
    scales[0] = float("nan")
    return dataclasses.replace(records, adam_logit_perturbation=adam, adam_scales=scales.double())


def test_adam_frames_are_embedded_beside_the_sgd_ones():
    records = with_adam(synthetic_records())
    data = embedded(page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION, highlight=HAIR))
    assert data["adam"]["defined"] == [False] + [True] * (len(STEPS) - 1)
    assert data["adam"]["kappa"][0] == 0 and data["adam"]["kappa"][1:] == pytest.approx(
        records.adam_scales[1:, 0].tolist())
    adam = decoded_values({**data, "values": data["adam"]["values"], "scale": data["adam"]["scale"]})
    original = records.adam_logit_perturbation.numpy()
    assert np.all(adam[0] == 0)
    np.testing.assert_allclose(adam[1:], original[1:], rtol=2.0**-10, atol=2.0**-11 * np.abs(original[1:]).max())
    assert embedded(page_figures.heatmap_page(synthetic_records(), ATTRIBUTES, lr=LR, caption=CAPTION))["adam"] is None


def test_the_optimizer_menu_shows_adams_bracket_in_a_real_browser(chromium, tmp_path):
    """Choosing Adam redraws its frames: the readout reads Adam's values, in logits at lr²·κ; step 0 says undefined."""
    from playwright.sync_api import sync_playwright

    records = with_adam(synthetic_records())
    adam = records.adam_logit_perturbation.numpy()
    path = tmp_path / "page.html"
    path.write_text(page_figures.heatmap_page(records, ATTRIBUTES, lr=LR, caption=CAPTION, highlight=HAIR),
                    encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        problems = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_selector("#readout[data-ready]")
        readout = lambda: page.eval_on_selector("#readout", "e => ({...e.dataset})")  # noqa: E731
        sgd = page.eval_on_selector("#heatmap", "c => c.toDataURL()")
        page.select_option("#kind", "1")
        state, last = readout(), len(STEPS) - 1
        assert state["kind"] == "adam" and int(state["checkpoint"]) == last
        r, k = np.unravel_index(np.abs(adam[last, 0]).argmax(), adam[last, 0].shape)
        assert (int(state["row"]), int(state["column"])) == (r, k)
        assert float(state["value"]) == pytest.approx(adam[last, 0, r, k], rel=2.0**-10)
        kappa = float(records.adam_scales[last, 0])
        assert float(state["logits"]) == pytest.approx(LR**2 * kappa * float(state["value"]), rel=1e-9)
        assert "Adam's bracket" in page.inner_text("#frame-title")
        assert page.eval_on_selector("#heatmap", "c => c.toDataURL()") != sgd
        page.focus("#checkpoint")
        page.keyboard.press("Home")
        assert "undefined here" in page.inner_text("#frame-title")
        page.select_option("#kind", "0")
        assert readout()["kind"] == "sgd" and "undefined" not in page.inner_text("#frame-title")
        browser.close()
    assert problems == []


def test_screenshot_is_a_png_of_the_whole_page(chromium, tmp_path):
    path = tmp_path / "page.html"
    path.write_text(page_figures.heatmap_page(synthetic_records(), ATTRIBUTES, lr=LR, caption=CAPTION),
                    encoding="utf-8")
    page_figures.screenshot_page(path, tmp_path / "page.png", browser=chromium, width=1000, scale=1.5)
    with Image.open(tmp_path / "page.png") as image:
        assert image.format == "PNG" and image.width == 1500 and image.height > 900


def test_page_from_a_static_host_requests_nothing_more(chromium, tmp_path):
    """Served over HTTP (as from GitHub Pages), the page asks for nothing but itself, not even a favicon."""
    from playwright.sync_api import sync_playwright

    (tmp_path / "page.html").write_text(page_figures.heatmap_page(synthetic_records(), ATTRIBUTES, lr=LR,
                                                                     caption=CAPTION), encoding="utf-8")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=tmp_path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/page.html"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            requests, problems = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(url, wait_until="networkidle")
            page.wait_for_selector("#readout[data-ready]")
            assert f"step {STEPS[-1]}" in page.inner_text("#frame-title")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert problems == []
    assert requests == [url]
