"""The page, in a real browser: Debian's chromium driven by Playwright against `rowrnn serve`.

Draws real strokes with mouse events, drops in an MNIST test digit as a PNG, and checks that the
page shows what `runtime.Predictor` computes for the very image the page sent. Screenshots go
to $ROWRNN_SCREENSHOTS (default: the test's temporary directory).
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from runtime import BUNDLED_MODEL, Predictor, StreamingPredictor, preprocess_image

STEP_MODEL = BUNDLED_MODEL.with_name("mnist.step.onnx")


class PageWatch:
    """Everything that should never happen on the page: console errors, uncaught exceptions,
    requests to any other origin."""

    def __init__(self, page, origin: str) -> None:
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on(
            "request",
            lambda r: (
                r.url.startswith(origin)
                or r.url.startswith("data:")
                or r.url.startswith("blob:")
                or self.problems.append(f"request to another origin: {r.url}")
            ),
        )


def mouse_strokes(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes (points as fractions of the pad) with the mouse."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=4)
        page.mouse.up()


def draw(page, strokes: list[list[tuple[float, float]]]) -> dict:
    """Draw strokes (points as fractions of the pad) with the mouse; return the /v1/classify
    exchange the last stroke set off: the PNG the page sent and the JSON it got back."""
    with page.expect_response(lambda r: "/v1/classify" in r.url) as answer:
        mouse_strokes(page, strokes)
    response = answer.value
    return {"sent": response.request.post_data_buffer, "answer": response.json(), "status": response.status}


def shown(page) -> dict:
    page.wait_for_function("() => document.getElementById('label').dataset.state === 'answer'")
    return page.evaluate("""() => ({
        label: document.getElementById('label').textContent,
        values: [...document.querySelectorAll('#bars .value')].map(e => e.textContent),
        // as laid out on screen, in % of the track: a bar that is set but not drawn counts 0
        widths: [...document.querySelectorAll('#bars .fill')].map(
            e => 100 * e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width),
        top: [...document.querySelectorAll('#bars li.top')].map(e => e.dataset.digit),
        seenInk: document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data
            .reduce((sum, v, i) => i % 4 === 0 ? sum + v : sum, 0),
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        heatShown: !document.getElementById('belief').hidden,
        heatInk: document.getElementById('steps').getContext('2d').getImageData(0, 0, 10, 28).data
            .reduce((sum, v, i) => i % 4 === 0 ? sum + (255 - v) : sum, 0),
    })""")


def expected_for(png: bytes, predictor: Predictor) -> tuple[int, np.ndarray]:
    rows = preprocess_image(png)
    return int(predictor.predict(rows).labels[0]), np.rint(rows * 255).astype(np.uint8)


ONE = [[(0.5, 0.15), (0.52, 0.5), (0.53, 0.85)]]
ZERO = [[(0.5 + 0.22 * np.sin(t), 0.5 - 0.32 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 40)]]


@pytest.fixture
def served(start_server):
    from runtime import BUNDLED_MODEL as DEFAULT_MODEL

    server = start_server(DEFAULT_MODEL)
    return server, Predictor(DEFAULT_MODEL)


def test_drawn_digits_get_the_predictors_answer(browser, served, screenshots):
    server, predictor = served
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    watch = PageWatch(page, server.url)
    response = page.goto(server.url + "/?engine=server")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page.wait_for_function("() => document.getElementById('model').textContent.includes('LSTM')")
    assert "test accuracy" in page.text_content("#model")

    for digit, strokes in (("1", ONE), ("0", ZERO)):
        page.keyboard.press("Escape")
        exchange = draw(page, strokes)
        assert exchange["status"] == 200
        label, seen = expected_for(exchange["sent"], predictor)
        on_page = shown(page)
        assert on_page["label"] == str(label) == str(exchange["answer"]["label"])
        assert on_page["label"] == digit  # a clear 1 and 0 are read as such by the shipped model
        np.testing.assert_array_equal(np.array(exchange["answer"]["input"], np.uint8), seen)
        assert on_page["top"] == [digit] and sum(on_page["widths"]) == pytest.approx(100, abs=2)
        assert on_page["seenInk"] > 0  # the 28x28 preview is drawn
        # what the network believed after each row: the step model's answer for the same input
        steps = np.array(exchange["answer"]["steps"], np.float32)
        rows = preprocess_image(exchange["sent"])
        np.testing.assert_array_equal(steps, StreamingPredictor(STEP_MODEL).row_probabilities(rows)[0])
        np.testing.assert_allclose(steps[-1], exchange["answer"]["probabilities"], atol=1e-5)
        assert on_page["heatShown"] and on_page["heatInk"] > 0  # the heat map is drawn
        page.screenshot(path=screenshots / f"page-desktop-{digit}.png", full_page=True)

    page.keyboard.press("Escape")  # Clear empties everything
    cleared = page.evaluate("""() => ({
        label: document.getElementById('label').textContent,
        values: [...document.querySelectorAll('#bars .value')].map(e => e.textContent),
        seenInk: document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data.some(v => v > 0),
        heatShown: !document.getElementById('belief').hidden,
        padInk: (() => { const d = document.getElementById('pad').getContext('2d').getImageData(0, 0, 280, 280).data;
                         return d.some(v => v < 255); })(),
    })""")
    assert cleared == {"label": "–", "values": ["–"] * 10, "seenInk": False, "heatShown": False, "padInk": False}
    assert watch.problems == []


def test_an_mnist_digit_dropped_in_as_png(browser, served, mnist, screenshots, tmp_path):
    from PIL import Image

    server, predictor = served
    index = 0  # the first test image, a 7
    png = tmp_path / "mnist-test-0.png"
    Image.fromarray(mnist.test_images[index]).resize((112, 112), Image.Resampling.NEAREST).save(png)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/?engine=server")
    with page.expect_response(lambda r: "/v1/classify" in r.url) as answer:
        page.set_input_files("#file", png)
    assert answer.value.request.post_data_buffer == png.read_bytes()
    label, _ = expected_for(png.read_bytes(), predictor)
    assert shown(page)["label"] == str(label) == str(int(mnist.test_labels[index]))
    assert watch.problems == []


def test_a_bad_file_shows_an_error_and_the_page_keeps_working(browser, served, tmp_path):
    server, predictor = served
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/?engine=server")
    bad = tmp_path / "digit.png"
    bad.write_bytes(b"this is not an image")
    with page.expect_response(lambda r: "/v1/classify" in r.url) as answer:
        page.set_input_files("#file", bad)
    assert answer.value.status == 400
    page.wait_for_selector("#error:not([hidden])")
    assert "not a recognised image" in page.text_content("#error")
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (50, 50), 255).save(blank)
    with page.expect_response(lambda r: "/v1/classify" in r.url):
        page.set_input_files("#file", blank)
    page.wait_for_function("() => document.getElementById('error').textContent.includes('no digit found')")
    exchange = draw(page, ONE)  # and drawing still works
    assert exchange["status"] == 200 and shown(page)["error"] is None
    problems = [p for p in watch.problems if "400" not in p]  # the browser logs refused requests
    assert problems == []


def test_phone_width_keyboard_and_screenshot(browser, served, screenshots):
    server, _ = served
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
    page = context.new_page()
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/?engine=server")
    pad = page.locator("#pad").bounding_box()
    assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390  # fits the screen, no sideways scroll
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    draw(page, ONE)
    shown(page)
    page.screenshot(path=screenshots / "page-phone.png", full_page=True)
    # everything but drawing works from the keyboard: Tab reaches Clear, Enter clears
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "clear":
            break
    assert page.evaluate("document.activeElement.id") == "clear"
    page.keyboard.press("Enter")
    assert page.text_content("#label") == "–"
    assert watch.problems == []
    context.close()


def test_classify_endpoint_refuses_bad_images_with_400(served):
    from PIL import Image

    server, _ = served
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(png, "PNG")
    for body, message in (
        (b"", "no body"),
        (b"GIF89a broken", "not a recognised image"),
        (png.getvalue()[: len(png.getvalue()) // 2], "unreadable or truncated"),
        (Image.new("L", (9, 9), 128).tobytes(), "not a recognised image"),
    ):
        request = urllib.request.Request(
            server.url + "/v1/classify", data=body, method="POST", headers={"Content-Type": "image/png"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400
        assert message in json.loads(refused.value.read())["error"]


def test_steps_need_a_step_model_beside_the_model(exported, start_server):
    """`?steps=1` on a server whose model has no MODEL.step.onnx beside it: a clear 400."""
    from PIL import Image, ImageDraw

    server = start_server(exported.onnx_path)
    png, image = io.BytesIO(), Image.new("L", (40, 40), 255)
    ImageDraw.Draw(image).line([(20, 5), (21, 35)], fill=0, width=4)
    image.save(png, "PNG")
    request = urllib.request.Request(
        server.url + "/v1/classify?steps=1", data=png.getvalue(), method="POST", headers={"Content-Type": "image/png"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400 and "no step model" in json.loads(refused.value.read())["error"]
    with urllib.request.urlopen(server.url + "/", timeout=30) as page:
        assert b'name="rowrnn-steps" content="0"' in page.read()  # so the page never asks
