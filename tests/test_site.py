"""The model in the browser: onnxruntime-web runs the page's ONNX files in Debian's chromium.

The static site `rowrnn site` writes is served by `python -m http.server` from a temporary
directory; `rowrnn serve`'s page is tested for its choice of engine. onnxruntime-web comes from
the cache (.ci/run fills it before the tests): nothing is downloaded here, and the `rowrnn site`
runs have npm set offline, so a missing cache fails instead of fetching.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, SERVER_BOOT, assert_one_line_error, rowrnn, unavailable
from runtime import BUNDLED_MODEL, Predictor, StreamingPredictor, preprocess_image
from runtime.files import sha256_file
from serve import web_runtime
from test_page import ONE, ZERO, PageWatch, mouse_strokes

STEP_MODEL = BUNDLED_MODEL.with_name("mnist.step.onnx")
PARITY_IMAGES = 256
NO_NPM_DOWNLOADS = {"npm_config_offline": "true"}  # a cache miss fails: npm may not fetch in a test


def function(body: str) -> str:
    """A predicate for wait_for_function: a function, not an expression string, which Playwright would
    `eval` inside the page, and the site's Content-Security-Policy (rightly) forbids that."""
    return f"() => {body}"


@pytest.fixture(scope="module")
def web_runtime_cache() -> Path:
    found = web_runtime.cached_files()
    if found is None:
        message = (
            f"onnxruntime-web {web_runtime.VERSION} is not in the cache {web_runtime.cache_dir()}: "
            "fetch it once with `rowrnn site DIR` (.ci/run does, before the tests)"
        )
        unavailable("browser", message)
    return found


@pytest.fixture(scope="module")
def site(web_runtime_cache, tmp_path_factory) -> Path:
    """`rowrnn site DIR` for the bundled model, as a user runs it."""
    directory = tmp_path_factory.mktemp("site") / "site"
    result = rowrnn("site", directory, env=NO_NPM_DOWNLOADS)
    assert result.returncode == 0, result.stderr
    assert f"wrote {directory}/" in result.stdout
    return directory


class StaticServer:
    """`python -m http.server` serving a directory on a free loopback port, stopped by its PID."""

    def __init__(self, directory: Path, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline, line = time.monotonic() + timeout, ""
        while "port" not in line:  # "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stdout], [], [], remaining)[0]:
                self.stop()
                raise AssertionError(f"http.server did not start within {timeout} s")
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError(f"http.server exited with {self.process.returncode}")
        self.url = f"http://127.0.0.1:{int(line.split(' port ')[1].split()[0])}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, 15)
        self.process.wait(30)
        self.process.stdout.close()


@contextlib.contextmanager
def served_statically(directory: Path):
    server = StaticServer(directory)
    try:
        yield server
    finally:
        server.stop()


class RequestLog:
    """Every request the page makes, and every response's type, in order."""

    def __init__(self, page) -> None:
        self.requests: list[str] = []
        self.types: dict[str, str] = {}
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", lambda r: self.types.__setitem__(r.url, r.headers.get("content-type", "")))


def open_page(browser, url: str, viewport=None, **context_options):
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 860}, **context_options)
    page = context.new_page()
    log, watch = RequestLog(page), PageWatch(page, url.split("/?")[0].rstrip("/"))
    page.goto(url)
    page.wait_for_function(function("document.body.dataset.engine !== 'loading'"), timeout=60_000)
    return context, page, log, watch


def draw_and_read(page, strokes) -> dict:
    """Clear, draw `strokes` with the mouse, wait for the answer; what the page shows."""
    page.keyboard.press("Escape")
    mouse_strokes(page, strokes)
    page.wait_for_function(
        function(
            "document.getElementById('label').dataset.state === 'answer' || !document.getElementById('error').hidden"
        ),
        timeout=30_000,
    )
    return page.evaluate("""() => ({
        label: document.getElementById('label').textContent,
        engine: document.getElementById('engine').dataset.engine,
        said: document.getElementById('engine').textContent,
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        heatShown: !document.getElementById('belief').hidden,
    })""")


def test_site_files_match_their_manifest_and_the_pins(site):
    manifest = json.loads((site / "manifest.json").read_text())
    listed = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == listed
    for name, entry in manifest["files"].items():
        assert sha256_file(site / name) == entry["sha256"] and (site / name).stat().st_size == entry["bytes"]
    for name, digest in web_runtime.FILES.items():
        assert manifest["files"][f"page/ort/{name}"]["sha256"] == digest
    assert manifest["files"]["page/model.onnx"]["sha256"] == sha256_file(BUNDLED_MODEL) == manifest["model"]["sha256"]
    assert manifest["files"]["page/model.step.onnx"]["sha256"] == sha256_file(STEP_MODEL)
    html = (site / "index.html").read_text()
    assert "script-src 'self' 'wasm-unsafe-eval';" in html and "'unsafe-eval'" not in html.replace(
        "'wasm-unsafe-eval'", ""
    )
    assert 'name="rowrnn-server" content="0"' in html and 'name="rowrnn-browser" content="1"' in html


def browser_engine_outputs(page, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The page's own browser engine (page.js's, not a test copy) on float32 [N, 28, 28] rows, in one
    call: logits [N, 10], the heat maps [N, 28, 10], and the milliseconds the call took."""
    out = page.evaluate(
        """async ({rows, count}) => {
        const bytes = Uint8Array.from(atob(rows), (c) => c.charCodeAt(0));
        const engine = await (await import("./page/page.js")).browserEngine();
        const started = performance.now();
        const result = await engine.classify(new Float32Array(bytes.buffer), count);
        return {logits: Array.from(result.logits), steps: Array.from(result.steps), ms: performance.now() - started};
    }""",
        {"rows": base64.b64encode(rows.astype(np.float32).tobytes()).decode(), "count": len(rows)},
    )
    return (
        np.array(out["logits"], np.float32).reshape(len(rows), 10),
        np.array(out["steps"], np.float32).reshape(len(rows), 28, 10),
        out["ms"],
    )


def test_browser_parity_on_mnist_test_images(browser, site, mnist):
    """The page's own engine (page.js's, not a test copy) against runtime.Predictor and
    StreamingPredictor on the first 256 MNIST test images."""
    images = mnist.test_images[:PARITY_IMAGES]
    rows = images.astype(np.float32) / 255.0
    with served_statically(site) as server:
        context, page, _, watch = open_page(browser, server.url + "/")
        assert page.evaluate("document.body.dataset.engine") == "browser"
        logits, steps, _ = browser_engine_outputs(page, rows)
        context.close()
    with Predictor(BUNDLED_MODEL) as predictor:
        expected = predictor.predict(rows)
    np.testing.assert_allclose(logits, expected.logits, rtol=0, atol=1e-5)
    assert (logits.argmax(axis=1) == expected.labels).all()
    np.testing.assert_allclose(steps, StreamingPredictor(STEP_MODEL).row_probabilities(rows), rtol=0, atol=1e-5)
    assert watch.problems == []


def mnist_derived_pngs(mnist, count: int = 24) -> list[bytes]:
    """MNIST test digits as a user's files might hold them: dark on light or light on dark, grey,
    RGB or RGBA, enlarged 2-6 times (smoothly), off-centre on a larger sheet."""
    from PIL import Image

    rng = np.random.default_rng(23)
    files = []
    for index in range(count):
        digit = mnist.test_images[index]
        dark_on_light = index % 2 == 0
        size = int(rng.integers(56, 169))
        image = Image.fromarray(255 - digit if dark_on_light else digit).resize((size, size), Image.Resampling.BILINEAR)
        sheet = Image.new(
            "L", (size + int(rng.integers(0, 60)), size + int(rng.integers(0, 60))), 255 if dark_on_light else 0
        )
        sheet.paste(
            image, (int(rng.integers(0, sheet.width - size + 1)), int(rng.integers(0, sheet.height - size + 1)))
        )
        sheet = sheet.convert(("L", "RGB", "RGBA")[index % 3])
        png = io.BytesIO()
        sheet.save(png, "PNG")
        files.append(png.getvalue())
    return files


def random_strokes(rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    return [
        [(float(x), float(y)) for x, y in rng.uniform(0.15, 0.85, (int(rng.integers(2, 6)), 2))]
        for _ in range(int(rng.integers(1, 3)))
    ]


def test_js_preprocessing_agrees_with_runtime(browser, site, mnist):
    """The page's preprocessing (preprocess.mjs) and runtime.preprocess_image on the same images:
    drawings made with the mouse (the pad's pixels against its PNG) and MNIST-derived PNG files
    (decoded by the browser, as the page opens a file). 28x28 within 1 grey level on >= 99 %."""
    rng = np.random.default_rng(0)
    drawings = [ONE, ZERO] + [random_strokes(rng) for _ in range(10)]
    compared = []  # (browser, python) 28x28 in [0, 1]
    with served_statically(site) as server:
        context, page, _, watch = open_page(browser, server.url + "/")
        for strokes in drawings:
            draw_and_read(page, strokes)
            out = page.evaluate("""async () => {
                const {preprocessPixels} = await import("./page/preprocess.mjs");
                const pad = document.getElementById("pad");
                const pixels = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height);
                return {rows: Array.from(preprocessPixels(pixels.data, pixels.width, pixels.height)),
                        png: pad.toDataURL("image/png")};
            }""")
            png = base64.b64decode(out["png"].split(",", 1)[1])
            compared.append((np.array(out["rows"], np.float32), preprocess_image(png).ravel()))
        for png in mnist_derived_pngs(mnist):
            rows = page.evaluate(
                """async (png) => {
                const {preprocessPixels} = await import("./page/preprocess.mjs");
                const {pixelsOf} = await import("./page/page.js");
                const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
                const pixels = pixelsOf(await createImageBitmap(new Blob([bytes], {type: "image/png"})));
                return Array.from(preprocessPixels(pixels.data, pixels.width, pixels.height));
            }""",
                base64.b64encode(png).decode(),
            )
            compared.append((np.array(rows, np.float32), preprocess_image(png).ravel()))
        context.close()
    levels = np.abs(
        np.rint(np.array([b for b, _ in compared]) * 255) - np.rint(np.array([p for _, p in compared]) * 255)
    )
    assert len(compared) == 36 and (levels <= 1).mean() >= 0.99, f"within 1 level: {(levels <= 1).mean():.4%}"
    # stricter than that bar, as README says: every pixel of every image equal (both sides compute
    # Pillow's Lanczos in the same float32 steps; decoding PNG is exact on both)
    assert levels.max() == 0, f"{(levels > 0).sum()} pixels differ, by up to {levels.max():.0f} grey levels"
    assert watch.problems == []


def test_static_site_reads_a_drawn_1_and_0_with_no_request_after_load_and_offline(browser, site, screenshots):
    with served_statically(site) as server:
        context, page, log, watch = open_page(browser, server.url + "/")
        page.wait_for_load_state("networkidle")
        loaded = list(log.requests)
        assert page.evaluate("document.body.dataset.engine") == "browser"
        assert "onnxruntime-web 1.31.1, WebAssembly" in page.text_content("#engines")
        for digit, strokes in (("1", ONE), ("0", ZERO)):
            shown = draw_and_read(page, strokes)
            assert shown["label"] == digit and shown["error"] is None, shown
            assert shown["engine"] == "browser" and shown["said"].startswith("Answered by your browser")
            assert shown["heatShown"]
            page.screenshot(path=screenshots / f"site-desktop-{digit}.png", full_page=True)
        assert log.requests == loaded  # nothing after load: the drawings never left the page
    # the server is gone: the page still answers
    shown = draw_and_read(page, ONE)
    assert shown["label"] == "1" and shown["engine"] == "browser" and shown["error"] is None
    assert log.requests == loaded
    assert all(url.startswith(server.url + "/") for url in loaded), loaded  # nothing from another origin
    files = {urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] for url in loaded}
    assert files >= {"ort-wasm-simd-threaded.wasm", "model.onnx", "model.step.onnx"}
    assert log.types[server.url + "/page/ort/ort-wasm-simd-threaded.wasm"] == "application/wasm"
    assert log.types[server.url + "/page/ort/ort.wasm.min.mjs"].startswith("text/javascript")
    assert watch.problems == []  # no console error: no CSP violation, no failed load
    context.close()


def test_static_site_at_phone_width(browser, site, screenshots):
    with served_statically(site) as server:
        context, page, _, watch = open_page(
            browser, server.url + "/", viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
        shown = draw_and_read(page, ZERO)
        assert shown["label"] == "0" and shown["engine"] == "browser"
        page.screenshot(path=screenshots / "site-phone.png", full_page=True)
        assert watch.problems == []
        context.close()


def test_served_page_answers_in_the_browser_and_says_so(browser, start_server, web_runtime_cache, screenshots):
    server = start_server(BUNDLED_MODEL)
    with urllib.request.urlopen(server.url + "/page/ort/ort-wasm-simd-threaded.wasm", timeout=30) as response:
        assert response.headers["content-type"] == "application/wasm"
        policy = response.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy and "frame-ancestors 'none'" in policy
    with urllib.request.urlopen(server.url + "/page/ort/ort.wasm.min.mjs", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/javascript")
    for unknown in ("/page/ort/ort.min.mjs", "/page/ort/..%2Fpage.js", "/page/model.int8.onnx"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + unknown, timeout=30)
        assert refused.value.code == 404

    context, page, log, watch = open_page(browser, server.url + "/")
    assert page.evaluate("document.body.dataset.engine") == "browser"
    shown = draw_and_read(page, ZERO)
    assert shown == {**shown, "label": "0", "engine": "browser", "error": None}
    assert not any("/v1/classify" in url for url in log.requests)  # the drawing stayed in the browser
    page.screenshot(path=screenshots / "page-browser-engine.png", full_page=True)
    context.close()

    context, page, log, _ = open_page(browser, server.url + "/?engine=server")
    assert page.evaluate("document.body.dataset.engine") == "server"
    assert "?engine=server" in page.text_content("#engines")
    shown = draw_and_read(page, ONE)
    assert shown == {**shown, "label": "1", "engine": "server", "error": None}
    assert shown["said"].startswith("Answered by the server")
    assert any(url.endswith("/v1/classify?model=rowrnn&steps=1") for url in log.requests)  # the page's model
    assert not any("/page/ort/" in url for url in log.requests)  # onnxruntime-web was never loaded
    context.close()
    assert watch.problems == []


def test_model_files_stay_behind_the_api_key(start_server, web_runtime_cache):
    server = start_server(BUNDLED_MODEL, "--api-key", "sesame")
    for name in ("model.onnx", "model.step.onnx", "model.json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + "/page/" + name, timeout=30)
        assert refused.value.code == 401
    request = urllib.request.Request(server.url + "/page/model.onnx", headers={"Authorization": "Bearer sesame"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == BUNDLED_MODEL.read_bytes()


def test_site_writer_imports_neither_tensorflow_nor_the_web_server(tmp_path, web_runtime_cache):
    modules = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", SERVER_BOOT, "site", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, **NO_NPM_DOWNLOADS, "ROWRNN_TEST_MODULES": str(modules)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(modules.read_text())
    assert "serve.static_site" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "starlette", "uvicorn")]


def test_site_over_a_directory_that_is_not_a_site_is_refused(tmp_path, web_runtime_cache):
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(rowrnn("site", tmp_path, env=NO_NPM_DOWNLOADS), str(tmp_path), "not a site")
    assert_one_line_error(
        rowrnn("site", tmp_path / "notes.txt", env=NO_NPM_DOWNLOADS), "notes.txt: exists and is not a directory"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_second_site_replaces_the_first_whole(tmp_path, web_runtime_cache, exported_step):
    target = tmp_path / "site"
    assert rowrnn("site", target, env=NO_NPM_DOWNLOADS).returncode == 0
    result = rowrnn("site", target, "--model", exported_step.onnx_path, env=NO_NPM_DOWNLOADS)
    assert result.returncode == 0, result.stderr
    assert (target / "page/model.onnx").read_bytes() == Path(exported_step.onnx_path).read_bytes()
    description = json.loads((target / "page/model.json").read_text())
    assert description["step_hidden"] == StreamingPredictor(exported_step.step_path).hidden
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no scratch left behind


def test_without_npm_a_missing_cache_is_one_line(tmp_path):
    env = {"ROWRNN_CACHE": str(tmp_path / "cache"), "PATH": os.path.dirname(sys.executable)}  # no npm on PATH
    result = rowrnn("site", tmp_path / "site", env=env)
    assert_one_line_error(result, "onnxruntime-web 1.31.1 is not in the cache", "npm is not installed")
    assert not (tmp_path / "site").exists()


def test_an_unreachable_registry_is_one_line(tmp_path):
    if not web_runtime.shutil.which("npm"):
        unavailable("browser", "npm is not installed (.ci/run installs it)")
    env = {
        "ROWRNN_CACHE": str(tmp_path / "cache"),
        "npm_config_cache": str(tmp_path / "npm-cache"),
        "npm_config_registry": "http://127.0.0.1:9/",
        "npm_config_fetch_retries": "0",
        "npm_config_fetch_timeout": "5000",
    }  # a closed loopback port: refused at once, nothing leaves
    result = rowrnn("site", tmp_path / "site", env=env)
    assert_one_line_error(result, "npm could not fetch onnxruntime-web@1.31.1")
    assert not (tmp_path / "site").exists()


def test_a_tampered_tarball_is_refused(tmp_path):
    import tarfile

    from runtime.errors import CheckFailed

    tarball = tmp_path / "onnxruntime-web-1.31.1.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        data = b"export const evil = 1;"
        member = tarfile.TarInfo("package/dist/ort.wasm.min.mjs")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    with pytest.raises(CheckFailed, match="is not the pinned"):
        web_runtime.unpack_checked(tarball, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_static_site_opens_an_image_file_and_refuses_a_bad_one(browser, site, mnist, tmp_path):
    from PIL import Image

    png = tmp_path / "mnist-test-0.png"
    Image.fromarray(255 - mnist.test_images[0]).resize((112, 112), Image.Resampling.BILINEAR).save(
        png
    )  # a 7, dark on light
    bad = tmp_path / "digit.png"
    bad.write_bytes(b"this is not an image")
    with served_statically(site) as server:
        context, page, log, watch = open_page(browser, server.url + "/")
        page.wait_for_load_state("networkidle")
        loaded = list(log.requests)
        page.set_input_files("#file", bad)
        page.wait_for_function(function("!document.getElementById('error').hidden"))
        assert "digit.png: not an image this browser can decode" in page.text_content("#error")
        page.set_input_files("#file", png)
        page.wait_for_function(function("document.getElementById('label').dataset.state === 'answer'"))
        with Predictor(BUNDLED_MODEL) as predictor:
            expected = int(predictor.predict(preprocess_image(png)).labels[0])
        assert page.text_content("#label") == str(expected) == str(int(mnist.test_labels[0]))
        assert page.evaluate("document.getElementById('error').hidden")
        assert log.requests == loaded  # the files were read in the page, sent nowhere
        assert watch.problems == []
        context.close()


# ------------------------------------------------------------ README's figures: benchmarks/results/browser.json

BENCH_JSON = REPO / "benchmarks" / "results" / "browser.json"
LOAD_ROWS = {  # README's row name -> browser_bench.py's page
    "static site (`rowrnn site`, `python -m http.server`), browser engine": "static site, browser engine",
    "`rowrnn serve`'s page, browser engine": "rowrnn serve, browser engine",
    "`rowrnn serve`'s page, `?engine=server`": "rowrnn serve, server engine",
}


def browser_tables(report: dict) -> dict[str, list[str]]:
    """README's two measured tables under "In the browser", row name -> cells, from the benchmark's JSON."""
    import statistics

    rows = {}
    for name, key in LOAD_ROWS.items():
        loads = report["load"][key]
        size = statistics.median(x["bytes"] for x in loads)
        ready = statistics.median(x["engine_ready_ms"] for x in loads) / 1000
        rows[name] = [
            f"{size / 1e6:.2f} MB" if size > 1e6 else f"{size / 1e3:.0f} KB",
            "—" if key.endswith("server engine") else f"{ready:.2f} s",
            f"{statistics.median(x['first_answer_ms'] for x in loads) / 1000:.2f} s",
        ]
    here, there = (
        report["per_drawing"]["static site, browser engine"],
        report["per_drawing"]["rowrnn serve, server engine"],
    )
    rows["browser (static site)"] = [
        f"{here['ms']['p50']:.1f} ms ({here['ms']['p90']:.1f} ms)",
        f"preprocessing {here['preprocess_ms']['p50']:.1f} ms; the model and the 28 steps of the heat map, the rest",
    ]
    rows["server (`?engine=server`)"] = [
        f"{there['ms']['p50']:.1f} ms ({there['ms']['p90']:.1f} ms)",
        "PNG encoding, POST `/v1/classify?steps=1`, preprocessing and both models on the server, JSON",
    ]
    return rows


def scientific(value: float) -> str:
    """4.77e-06 -> '4.8e-6', as the documents write it."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def readme_rows(section_text: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells[1:]
        for line in section_text.splitlines()
        if line.startswith("| ") and not line.startswith("|--")
        for cells in [[cell.strip() for cell in line.strip().strip("|").split("|")]]
    }


def test_readmes_browser_figures_are_the_benchmarks():
    """Every figure README gives under "In the browser" is read from benchmarks/results/browser.json."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## In the browser") : readme.index("## The bundled model")]
    report = json.loads(BENCH_JSON.read_text())
    shown = readme_rows(section)
    for name, cells in browser_tables(report).items():
        assert shown.get(name) == cells, name
    parity = report["parity"]
    assert (
        f"logits within {scientific(parity['max_abs_logit_diff'])} of `runtime.Predictor`, argmax agreement "
        f"{100 * parity['argmax_agreement']:g} %" in " ".join(section.split())
    )
    assert f"heat map within {scientific(parity['max_abs_heat_map_diff'])}" in " ".join(section.split())
    assert f"The site is {report['site_bytes'] / 1e6:.1f} MB ({report['site_bytes_gzip'] / 1e6:.1f} MB" in " ".join(
        section.split()
    )
    assert f"answers in {report['browser_vs_server_p50']:.2f}× the server's" in " ".join(section.split())


def test_a_swap_that_fails_keeps_the_previous_site(tmp_path, web_runtime_cache, monkeypatch):
    """The new site's rename fails (a full disk, a signal): DIR is the previous site again, whole."""
    from serve import static_site

    target = tmp_path / "site"
    static_site.write_site(target, cache=web_runtime_cache)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    real_rename = Path.rename

    def failing_rename(self, destination):
        if Path(destination) == target and ".rowrnn-" in self.name and self.name.endswith("new"):
            raise OSError("injected: the new site's rename failed")
        return real_rename(self, destination)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        static_site.write_site(target, cache=web_runtime_cache)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # neither scratch nor the old copy left
