"""README.md and BENCHMARKS.md say what their sources say.

Every figure about a shipped artifact (the bundled model) is read back from the artifact, and every
measured table from the committed JSON it was written from: a rebuilt model or a new benchmark run
that the documents were not updated for fails here. Documents name no path that exists only around
this repository.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import onnx
import pytest

from helpers import REPO

MODELS = REPO / "runtime" / "models"
RESULTS = REPO / "benchmarks" / "results"
README = (REPO / "README.md").read_text()
BENCHMARKS = (REPO / "BENCHMARKS.md").read_text()


# ------------------------------------------------------------ reading the documents


def section(text: str, heading: str) -> str:
    """The text under a Markdown heading (exact line), up to the next heading of the same or a higher level."""
    match = re.search(rf"^{re.escape(heading)}$", text, re.M)
    assert match, f"no heading {heading!r}"
    level = len(heading) - len(heading.lstrip("#"))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, match.end())
    return text[match.end() : end.start() if end else len(text)]


def table(text: str, first_header: str) -> dict[str, list[str]]:
    """The Markdown table whose header row starts with `first_header`: first cell -> the other cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


# ------------------------------------------------------------ how the documents write numbers


def percent(fraction: float) -> str:
    return f"{fraction * 100:.2f} %"


def scientific(value: float) -> str:
    """6.67e-06 -> '6.7e-6'; 0 -> '0'."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def kilobytes(size: int) -> str:
    return f"{size / 1000:.0f} KB"


def grouped(value: float) -> str:
    """12345.6 -> '12 346' (the documents' thousands separator is a space)."""
    return f"{round(value):,}".replace(",", " ")


# ------------------------------------------------------------ the bundled model


def bundled_sources() -> tuple[dict[str, str], dict, dict]:
    metadata = {prop.key: prop.value for prop in onnx.load(MODELS / "mnist.onnx").metadata_props}
    parity = json.loads((MODELS / "mnist.parity.json").read_text())
    metrics = json.loads((MODELS / "mnist.metrics.json").read_text())
    return metadata, parity, metrics


def bundled_figures() -> dict[str, str]:
    """The bundled-model table's rows, computed from the shipped files."""
    metadata, parity, metrics = bundled_sources()
    return {
        "test accuracy, 10 000 MNIST test images": percent(float(metadata["test_accuracy"])),
        "ONNX vs Keras, max-abs logit difference": scientific(parity["max_abs_logit_diff"]),
        "ONNX vs Keras, mean-abs logit difference (worst batch size)": scientific(parity["worst_mean_abs_logit_diff"]),
        "ONNX vs Keras, argmax agreement": f"{parity['argmax_agreement'] * 100:g} %",
        "file size": kilobytes((MODELS / "mnist.onnx").stat().st_size),
        "step model after 28 rows vs the full model, max-abs logit difference":
            scientific(parity["step"]["max_abs_logit_diff_vs_full_onnx"]),
        "int8 sibling (not shipped): test accuracy": percent(parity["int8"]["test_accuracy"]),
        "int8 sibling (not shipped): file size": kilobytes(parity["int8"]["size_bytes"]),
        "training: best epoch (of epochs run)": f"{metrics['best_epoch']} (of {metrics['epochs']})",
        "training: validation accuracy at the best epoch": percent(metrics["val_accuracy"]),
        "training: time": f"{grouped(metrics['train_seconds'])} s ({metrics['seconds_per_epoch']:.0f} s/epoch)",
    }


def test_the_bundled_model_table_is_the_shipped_files():
    rows = table(section(README, "## The bundled model"), "the bundled model")
    assert {name: cells[0] for name, cells in rows.items()} == bundled_figures()


def test_the_bundled_reports_describe_the_shipped_files():
    """The sources agree with each other: the reports are the ones the shipped model was made with."""
    metadata, parity, metrics = bundled_sources()
    assert parity["passed"] and parity["step"]["passed"]
    assert float(metadata["test_accuracy"]) == pytest.approx(parity["onnx_test_accuracy"], abs=5e-7)
    assert parity["int8"]["fp32_size_bytes"] == (MODELS / "mnist.onnx").stat().st_size
    assert json.loads(metadata["parity"])["max_abs_logit_diff"] == parity["max_abs_logit_diff"]
    assert metrics["config"]["seed"] == 0 and metrics["test_images"] == 10_000
    assert "/" not in metrics["data_source"]  # shipped: names the data by checksum, never a local path
    # Keras's accuracy on the test set, from training; ONNX's may differ only where parity allows
    assert abs(metrics["test_accuracy"] - parity["onnx_test_accuracy"]) <= 1e-3


def test_every_accuracy_said_of_the_bundled_model_is_its_own():
    """A line that speaks of the bundled model may only repeat the table's percentages."""
    figures = bundled_figures()
    allowed = {figures["test accuracy, 10 000 MNIST test images"], figures["int8 sibling (not shipped): test accuracy"],
               figures["training: validation accuracy at the best epoch"], figures["ONNX vs Keras, argmax agreement"]}
    for line in README.splitlines():
        if "bundled" in line.lower() and not line.startswith("| training"):
            said = set(re.findall(r"\d+(?:\.\d+)? %", line))
            assert said <= allowed, line


def test_the_quick_start_names_the_bundled_models_accuracy_and_training_time():
    quick_start = section(README, "## Quick start")
    assert bundled_figures()["test accuracy, 10 000 MNIST test images"] + " on the MNIST test set" in quick_start
    minutes = round(bundled_sources()[2]["train_seconds"] / 60)
    assert f"# writes artifacts/ (about {minutes} min on 2 cores)" in quick_start


# ------------------------------------------------------------ the data


def test_the_mnist_checksums_are_those_of_the_real_files(mnist_dir):
    rows = table(section(README, "### Getting MNIST"), "file")
    assert len(rows) == 4
    for name, (_, checksum) in rows.items():
        name = name.strip("`")
        gz, raw = mnist_dir / f"{name}.gz", mnist_dir / name
        data = gzip.decompress(gz.read_bytes()) if gz.exists() else raw.read_bytes()
        assert checksum.strip("`") == hashlib.sha256(data).hexdigest(), name


# ------------------------------------------------------------ paths


@pytest.mark.parametrize("document", ["README.md", "BENCHMARKS.md", "docs", "scripts"])
def test_documents_name_no_path_from_around_this_repository(document):
    paths = [REPO / document] if (REPO / document).is_file() else sorted((REPO / document).rglob("*"))
    for path in paths:
        if path.is_file() and path.suffix in {".md", ".sh", ".py", ".txt", ""}:
            text = path.read_text()
            assert "../shared" not in text and "/work/" not in text, path
