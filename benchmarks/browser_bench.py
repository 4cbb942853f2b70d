"""The model in the browser against the server round trip, in Debian's chromium, side by side.

    python benchmarks/browser_bench.py [--drawings 20] [--loads 3] [--json benchmarks/results/browser.json]

Needs the test extra (Playwright drives /usr/bin/chromium; it reuses the page tests' launch flags,
strokes and static server) and onnxruntime-web in the cache (`rowrnn site DIR` fetches it once).
Measures, on 127.0.0.1 (no network time: add your visitors' own):

- size: the site's bytes, and gzipped (what a host that compresses sends);
- load: a fresh browser context opens the static site `rowrnn site` writes (served by
  `python -m http.server`), or `rowrnn serve`'s page with ?engine=server; bytes transferred (the
  Resource Timing API's transferSize, headers included), time until the browser engine is ready, and
  time to first answer: a 1 drawn as soon as the page has loaded, from navigation start to the
  answer on screen;
- per drawing: the time the page itself reports (#engine's data-ms), from the end of a stroke (after
  the 150 ms pause the page waits for more strokes) to the answer on screen, for the browser engine
  (preprocessing + the model + the 28 step-model calls of the heat map) and the server (PNG
  encoding, POST /v1/classify?steps=1, the answer), drawings alternating between a 1 and a 0;
- parity: the browser engine's logits and heat map against runtime.Predictor and StreamingPredictor
  on the first 256 MNIST test images (if $ROWRNN_DATA is set).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from test_site import StaticServer, browser_engine_outputs, draw_and_read, function  # noqa: E402

from helpers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    start_server_process,  # noqa: E402
)
from runtime import BUNDLED_MODEL, Predictor, StreamingPredictor  # noqa: E402
from runtime.files import write_text_atomic  # noqa: E402
from serve import web_runtime  # noqa: E402
from serve.static_site import write_site  # noqa: E402
from test_page import ONE, ZERO  # noqa: E402

TRANSFERRED = """() => [performance.getEntriesByType("navigation")[0], ...performance.getEntriesByType("resource")]
    .reduce((total, entry) => total + entry.transferSize, 0)"""


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "min": round(ordered[0], 2),
        "n": len(ordered),
    }


def one_load(browser, url: str) -> dict:
    """A fresh context (empty cache): open `url`, draw a 1 once the page has loaded, time it all."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_function(function("document.body.dataset.engine !== 'loading'"), timeout=120_000)
    engine_ready_ms = page.evaluate("performance.now()")
    shown = draw_and_read(page, ONE)
    first_answer_ms = page.evaluate("performance.now()")
    page.wait_for_load_state("networkidle")
    result = {
        "bytes": page.evaluate(TRANSFERRED),
        "engine": shown["engine"],
        "label": shown["label"],
        "engine_ready_ms": round(engine_ready_ms, 1),
        "first_answer_ms": round(first_answer_ms, 1),
    }
    context.close()
    return result


def drawing_latencies(browser, url: str, drawings: int) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(function("document.body.dataset.engine !== 'loading'"), timeout=120_000)
    draw_and_read(page, ZERO)  # the first answer warms up what is lazily set up
    total, preprocess, engines, right = [], [], set(), 0
    for index in range(drawings):
        digit, strokes = ("1", ONE) if index % 2 == 0 else ("0", ZERO)
        shown = draw_and_read(page, strokes)
        timing = page.evaluate("() => ({...document.getElementById('engine').dataset})")
        engines.add(shown["engine"])
        right += shown["label"] == digit
        total.append(float(timing["ms"]))
        if "preprocessMs" in timing and shown["engine"] == "browser":
            preprocess.append(float(timing["preprocessMs"]))
    context.close()
    result = {"engine": "/".join(sorted(engines)), "read_right": f"{right}/{drawings}", "ms": percentiles(total)}
    if preprocess:
        result["preprocess_ms"] = percentiles(preprocess)
    return result


def parity(browser, url: str, images: np.ndarray) -> dict:
    rows = images.astype(np.float32) / 255.0
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(function("document.body.dataset.engine !== 'loading'"), timeout=120_000)
    logits, steps, milliseconds = browser_engine_outputs(page, rows)
    context.close()
    with Predictor(BUNDLED_MODEL) as predictor:
        expected = predictor.predict(rows)
    step_model = BUNDLED_MODEL.with_name("mnist.step.onnx")
    return {
        "images": len(rows),
        "max_abs_logit_diff": float(np.abs(logits - expected.logits).max()),
        "argmax_agreement": float((logits.argmax(axis=1) == expected.labels).mean()),
        "max_abs_heat_map_diff": float(np.abs(steps - StreamingPredictor(step_model).row_probabilities(rows)).max()),
        "browser_ms_for_all": round(milliseconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drawings", type=int, default=20)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if web_runtime.cached_files() is None:
        sys.exit("onnxruntime-web is not in the cache: run `rowrnn site DIR` once")
    report = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.python_version()}",
        "onnxruntime_web": web_runtime.VERSION,
        "chromium": None,
    }
    with tempfile.TemporaryDirectory() as scratch:
        site = Path(scratch) / "site"
        manifest = write_site(site, BUNDLED_MODEL)
        report["site_bytes"] = sum(entry["bytes"] for entry in manifest["files"].values())
        report["site_files"] = {name: entry["bytes"] for name, entry in manifest["files"].items()}
        # what a host that compresses (gzip, level 6: most servers' default) would send instead
        report["site_bytes_gzip"] = sum(len(gzip.compress((site / name).read_bytes(), 6)) for name in manifest["files"])
        static = StaticServer(site)
        server = start_server_process(BUNDLED_MODEL, "--log-level", "warning", log=Path(scratch) / "serve.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                report["chromium"] = browser.version
                pages = {
                    "static site, browser engine": static.url + "/",
                    "rowrnn serve, server engine": server.url + "/?engine=server",
                    "rowrnn serve, browser engine": server.url + "/",
                }
                report["load"] = {
                    name: [one_load(browser, url) for _ in range(args.loads)] for name, url in pages.items()
                }
                report["per_drawing"] = {
                    name: drawing_latencies(browser, url, args.drawings)
                    for name, url in pages.items()
                    if "rowrnn serve, browser" not in name
                }
                data = os.environ.get("ROWRNN_DATA")
                if data:
                    from runtime.mnist import load_mnist_dir

                    report["parity"] = parity(browser, static.url + "/", load_mnist_dir(data).test_images[:256])
                browser.close()
        finally:
            static.stop()
            server.stop()
    browser_ms = report["per_drawing"]["static site, browser engine"]["ms"]["p50"]
    server_ms = report["per_drawing"]["rowrnn serve, server engine"]["ms"]["p50"]
    report["browser_vs_server_p50"] = round(browser_ms / server_ms, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        write_text_atomic(args.json, text + "\n")  # a committed source: never half


if __name__ == "__main__":
    main()
