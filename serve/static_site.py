"""The page's files, for `rowrnn serve` and for `rowrnn site DIR`: a static site that needs no server.

Both serve the same layout, so the page's relative URLs work in both:

    index.html                 the page (meta tags say which engines it has)
    page/page.js, page.css     the page's code and look; page/preprocess.mjs, page/engine.mjs
    page/model.json            what the footer says about the model, and the step model's state size
    page/model.onnx            the model; page/model.step.onnx, the step model (the heat map), if any
    page/ort/…                 onnxruntime-web's WASM build (serve.web_runtime)
    manifest.json              (site only) every file's sha256 and size, and where each came from

Imports only `runtime` and the standard library: writing a site needs neither TensorFlow nor the
web server.
"""

from __future__ import annotations

import json
import os
import shutil
from html import escape
from pathlib import Path

from runtime.contract import step_path_for
from runtime.errors import InputError
from runtime.files import check_directory_writable, private_prefix, remove_leftovers, sha256_file
from runtime.predictor import BUNDLED_MODEL, Predictor
from runtime.stream import StreamingPredictor
from serve import web_runtime

PAGE_DIR = Path(__file__).with_name("page")
PAGE_ASSETS = {  # the page's own files, and how they are served
    "page.js": "text/javascript; charset=utf-8",
    "preprocess.mjs": "text/javascript; charset=utf-8",
    "engine.mjs": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
PAGE_TEMPLATE = (PAGE_DIR / "index.html").read_text(encoding="utf-8")  # read once: the server fills it per request
ORT_TYPES = {".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm"}
MODEL_FILE, STEP_FILE, DESCRIPTION_FILE, MANIFEST_FILE = "model.onnx", "model.step.onnx", "model.json", "manifest.json"
GENERATOR = "rowrnn site"
# The page loads nothing from anywhere else and runs no inline code; WebAssembly may be compiled
# ('wasm-unsafe-eval'), JavaScript may not be evaluated from strings. In a <meta> tag too, so the
# static site keeps it on any host; the server adds what a <meta> policy cannot say (frame-ancestors).
PAGE_POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'"
)


def step_model_beside(model: Path) -> Path | None:
    """MODEL.step.onnx beside MODEL.onnx (`rowrnn export --step`), if there is one."""
    step = step_path_for(model)
    return step if step.is_file() else None


def model_description(name: str, parameters: dict[str, str], streaming: StreamingPredictor | None) -> dict:
    """page/model.json: what the page's footer says, and the step model's state size.
    `parameters`: the model's metadata and its `size_bytes`, as the metadata endpoints give them."""
    return {
        "name": name,
        "architecture": parameters.get("architecture"),
        "test_accuracy": parameters.get("test_accuracy"),
        "size_bytes": int(parameters["size_bytes"]),
        "step_hidden": None if streaming is None else streaming.hidden,
    }


def page_html(name: str, *, steps: bool, server: bool, browser: bool) -> bytes:
    """index.html for a model called `name`: which engines the page has (the browser's needs
    onnxruntime-web and the model files; the server's, `rowrnn serve`), and a step model or not."""
    fields = {
        "MODEL_NAME": escape(name, quote=True),
        "STEPS": str(int(steps)),
        "SERVER": str(int(server)),
        "BROWSER": str(int(browser)),
        "POLICY": PAGE_POLICY,
    }
    html = PAGE_TEMPLATE
    for field, value in fields.items():
        html = html.replace("{{" + field + "}}", value)
    return html.encode("utf-8")


def site_files(model: Path, runtime_dir: Path) -> dict[str, bytes | Path]:
    """Every file of the static site for `model`: its path in the site -> its bytes or source file."""
    with Predictor(model, threads=1) as predictor:
        step = step_model_beside(model)
        streaming = StreamingPredictor(step) if step else None
        parameters = {**predictor.metadata, "size_bytes": str(model.stat().st_size)}
        description = model_description(predictor.path.stem, parameters, streaming)
    files: dict[str, bytes | Path] = {
        "index.html": page_html(description["name"], steps=step is not None, server=False, browser=True),
        f"page/{MODEL_FILE}": model,
        f"page/{DESCRIPTION_FILE}": json.dumps(description, indent=2).encode() + b"\n",
        **{f"page/{asset}": PAGE_DIR / asset for asset in PAGE_ASSETS},
        **{f"page/ort/{name}": runtime_dir / name for name in web_runtime.FILES},
    }
    if step is not None:
        files[f"page/{STEP_FILE}"] = step
    return files


def manifest(directory: Path, model: Path) -> dict:
    """What is in the site: each file's sha256 and size, and where the parts came from."""
    listed = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return {
        "generator": GENERATOR,
        "model": {"file": model.name, "sha256": sha256_file(model)},
        "onnxruntime_web": {
            "version": web_runtime.VERSION,
            "npm_integrity": web_runtime.TARBALL_INTEGRITY,
            "license": web_runtime.LICENSE,
        },
        "files": {
            p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in listed
        },
    }


def check_site_target(directory: Path) -> None:
    """A new or empty directory, or a site an earlier `rowrnn site` wrote (replaced whole)."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory; give a directory for the site")
    check_directory_writable(directory)
    if not directory.exists() or not any(directory.iterdir()):
        return
    try:
        generator = json.loads((directory / MANIFEST_FILE).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    if generator != GENERATOR:
        raise InputError(
            f"{directory}: exists and is not a site `rowrnn site` wrote (no {MANIFEST_FILE} of ours); "
            f"give a new or empty directory"
        )


def write_site(directory: str | os.PathLike, model: str | os.PathLike | None = None, cache: Path | None = None) -> dict:
    """Write the static site for `model` (default: the bundled one) into `directory`; return its manifest.

    The whole site is built in a scratch directory beside `directory` and swapped in with two
    renames: DIR is the previous site or the new one, each whole (between the renames, for an
    instant, it is absent; a failure there puts the previous one back). onnxruntime-web comes from the cache, fetched
    by npm the first time (serve.web_runtime).
    """
    directory, model = Path(directory), Path(model) if model is not None else BUNDLED_MODEL
    check_site_target(directory)
    runtime_dir = web_runtime.ensure_web_runtime(cache)
    files = site_files(model, runtime_dir)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(parent, f".{directory.name}.rowrnn-*")
    scratch = parent / f".{directory.name}{private_prefix()}new"
    old = parent / f".{directory.name}{private_prefix()}old"
    try:
        for name, content in files.items():
            target = scratch / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        written = manifest(scratch, model)
        (scratch / MANIFEST_FILE).write_text(json.dumps(written, indent=2) + "\n")
        for path in scratch.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if directory.exists():
            directory.rename(old)
        try:
            scratch.rename(directory)
        except BaseException:
            if old.exists() and not directory.exists():
                old.rename(directory)  # the previous site stays, whole
            raise
        shutil.rmtree(old, ignore_errors=True)  # only once the new site is in place
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written
