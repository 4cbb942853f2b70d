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
        "step model after 28 rows vs the full model, max-abs logit difference": scientific(
            parity["step"]["max_abs_logit_diff_vs_full_onnx"]
        ),
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
    allowed = {
        figures["test accuracy, 10 000 MNIST test images"],
        figures["int8 sibling (not shipped): test accuracy"],
        figures["training: validation accuracy at the best epoch"],
        figures["ONNX vs Keras, argmax agreement"],
    }
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


# ------------------------------------------------------------ rowrnn bench: benchmarks/results/bench.json


@pytest.fixture(scope="module")
def bench() -> dict:
    return json.loads((RESULTS / "bench.json").read_text())


def engines(bench: dict) -> dict[str, dict]:
    return {row["engine"]: row for row in bench["engines"]}


def microseconds(row: dict) -> str:
    return f"{row['latency_us']['p50_us']:.0f} µs"


def test_the_benchmark_table_is_the_committed_runs_report(bench):
    from rowrnn.bench import format_report

    block = section(BENCHMARKS, "## The table (`rowrnn bench`: `benchmarks/results/bench.json`)")
    assert f"```\n{format_report(bench)}\n```" in block
    assert bench["inputs"].startswith("MNIST test set") and bench["images"] == 10_000


def test_the_readme_speed_table_is_the_committed_run(bench):
    rows = table(section(README, "## Speed"), "engine")
    keras, fp32, int8 = (engines(bench)[name] for name in ("Keras predict", "ONNX fp32", "ONNX int8"))
    assert rows["Keras `predict`"] == [f"{keras['latency_us']['p50_us'] / 1000:.0f} ms", grouped(keras["images_per_s"])]
    for name, row in (("ONNX fp32 (`runtime.Predictor`)", fp32), ("ONNX int8", int8)):
        assert rows[name] == [
            f"{microseconds(row)} ({row['latency_speedup_vs_keras']:.0f}×)",
            f"{grouped(row['images_per_s'])} ({row['throughput_vs_keras']:.1f}×)",
        ], name
    memory, cold = bench["peak_rss"], bench["cold_start"]
    text = " ".join(section(README, "## Speed").split())
    assert f"exits in {cold['p50_s']:.2f} s" in text
    assert f"peaks at {memory['predictor_mb']:.0f} MB" in text and f"the same, {memory['keras_mb']:.0f} MB" in text
    assert f"load average {bench['machine']['load_average']:.2f}" in text


def test_the_streaming_speed_table_is_the_committed_run(bench):
    streaming = bench["streaming"]
    rows = table(section(README, "## Streaming"), "p50, one image")
    full = streaming["full_call_p50_us"]
    assert rows == {
        "one row (`Stream.push`)": [f"{streaming['step_p50_us']:.0f}", f"{streaming['step_p50_us'] / full:.2f}×"],
        "a streamed image (28 pushes)": [
            grouped(streaming["streamed_image_p50_us"]),
            f"{streaming['streamed_image_p50_us'] / full:.2f}×",
        ],
        "one full-model call (`Predictor.predict`)": [f"{full:.0f}", "1×"],
    }


def test_the_targets_are_judged_on_the_committed_run(bench):
    rows = table(section(BENCHMARKS, "## Targets"), "target")
    fp32, int8 = engines(bench)["ONNX fp32"], engines(bench)["ONNX int8"]
    memory, cold = bench["peak_rss"], bench["cold_start"]
    expected = {
        "fp32 single-image p50 ≥ 400× faster than Keras `predict`": (
            f"{fp32['latency_speedup_vs_keras']:.0f}×",
            fp32["latency_speedup_vs_keras"] >= 400,
        ),
        "fp32 throughput ≥ 2.5× Keras": (f"{fp32['throughput_vs_keras']:.1f}×", fp32["throughput_vs_keras"] >= 2.5),
        "fp32 throughput ≥ 80 % of the measured ceiling": (
            f"{fp32['fraction_of_ceiling'] * 100:.0f} %",
            fp32["fraction_of_ceiling"] >= 0.8,
        ),
        "predictor process peak RSS ≤ 0.2× a Keras process": (
            f"{memory['predictor_vs_keras']:.2f}×",
            memory["predictor_vs_keras"] <= 0.2,
        ),
        "fp32 single-image p50 ≤ 100 µs": (microseconds(fp32), fp32["latency_us"]["p50_us"] <= 100),
        "int8 single-image p50 ≤ 60 µs": (microseconds(int8), int8["latency_us"]["p50_us"] <= 60),
        "`rowrnn predict` cold start ≤ 0.5 s": (f"{cold['p50_s']:.2f} s", cold["p50_s"] <= 0.5),
    }
    assert rows.keys() == expected.keys()
    for target, (figure, met) in expected.items():
        measured, verdict = rows[target]
        assert measured.startswith(figure), (target, measured)
        assert verdict.startswith("met" if met else "missed"), (target, verdict)


# ------------------------------------------------------------ rowrnn anytime: benchmarks/results/anytime.json


def test_the_anytime_tables_are_the_committed_run():
    anytime = json.loads((RESULTS / "anytime.json").read_text())
    streaming = section(README, "## Streaming")
    after = table(streaming, "rows read")
    header = next(line for line in streaming.splitlines() if line.startswith("| rows read |"))
    rows_read = [int(cell) for cell in header.strip("| ").split(" | ")[1:]]
    assert after["test accuracy"] == [f"{anytime['accuracy_after_rows'][k - 1] * 100:.1f} %" for k in rows_read]
    exits = table(streaming, "early exit at")
    for stop in anytime["early_exit"]:
        assert exits[f"{stop['threshold']:g}"] == [
            f"{stop['accuracy'] * 100:.2f} %",
            f"{stop['mean_rows']:.1f}",
            f"{stop['stopped_early'] * 100:.1f} %",
            f"{stop['batch_time_saved'] * 100:.0f} %",
            f"{stop['one_at_a_time_time_saved'] * 100:.0f} %",
        ]
    assert (
        exits["(never: all 28 rows)"][0]
        == percent(anytime["full_accuracy"])
        == bundled_figures()["test accuracy, 10 000 MNIST test images"]
    )
    assert anytime["model"] == "runtime/models/mnist.step.onnx"  # the bundled step model, not another


# ------------------------------------------------------------ benchmarks/train_bench.py: train_bench.json


def test_the_training_epoch_table_is_the_committed_run():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_bench

    report = json.loads((RESULTS / "train_bench.json").read_text())
    block = section(BENCHMARKS, "## Training: epoch time by backend (`benchmarks/train_bench.py`)")
    assert train_bench.format_markdown(report) in block
    assert [row["setup"] for row in report["rows"]] == [name for name, *_ in train_bench.SETUPS]
    # the ratios are those of the rows, measured in the same run
    tf_row, jax_row, parallel_row, two_row = report["rows"]
    ratios = report["ratios"]
    assert ratios["jax_vs_tensorflow"] == pytest.approx(jax_row["epoch_s"] / tf_row["epoch_s"], abs=1e-3)
    assert ratios["jax_data_parallel_vs_tensorflow"] == pytest.approx(
        parallel_row["epoch_s"] / tf_row["epoch_s"], abs=1e-3
    )
    assert ratios["jax_2x1_vs_1x2"] == pytest.approx(two_row["epoch_s"] / parallel_row["epoch_s"], abs=1e-3)
    assert parallel_row["devices"] == ["CPU:0", "CPU:1"] and len(jax_row["devices"]) == 1
    # the default run's accuracies, and whether they meet the criterion, are the run's
    accuracy = report["accuracy"]
    assert accuracy, "the committed report has no default run (it was made with --accuracy-epochs 0)"
    runs = accuracy["runs"]
    difference = abs(runs["jax"]["test_accuracy"] - runs["tensorflow"]["test_accuracy"]) * 100
    assert accuracy["difference_points"] == pytest.approx(difference, abs=1e-3)
    assert accuracy["within"] == (difference <= accuracy["within_points"])
    # what README's "Training across machines" says was measured is this run
    readme = " ".join(
        section(README, "### Training across machines: `--backend jax --distribute data-parallel`").split()
    )
    assert f"{ratios['jax_vs_tensorflow']:.2f}x the TensorFlow backend's" in readme
    assert f"{ratios['jax_data_parallel_vs_tensorflow']:.2f}x" in readme
    assert f"{ratios['jax_2x1_vs_1x2']:.2f}x" in readme
    assert f"{accuracy['difference_points']:.2f} points" in readme
