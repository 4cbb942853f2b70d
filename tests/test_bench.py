"""`rowrnn bench`: it runs, measures every engine it can on the images it was given, skips what was
not given with the reason, refuses what was given and does not read, and fails when a measurement does.

How fast anything is gets checked by reading the report of a real run (BENCHMARKS.md), never here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, assert_one_line_error, foreign_model, rowrnn, synthetic_digits, write_idx, write_mnist_dir
from rowrnn.bench import metadata_architecture, model_flops, onnx_flops, percentiles
from runtime import Predictor
from runtime.contract import scale_pixels


def test_flops_of_the_model_and_of_the_folded_graph(exported):
    # Dense(128) -> LSTM(128) -> Dense(10) on 28 rows of 28 pixels: the 7.6 MFLOP
    layers = [{"layer": "Dense", "units": 128}, {"layer": "LSTM", "units": 128}, {"layer": "Dense", "units": 10}]
    assert model_flops(layers) == 2 * (28 * 28 * 128 + 28 * 512 * 256 + 1280)
    assert model_flops([{"layer": "Conv2D", "units": None}, {"layer": "Dense", "units": 10}]) is None
    assert model_flops(None) is None  # an older file without `architecture_json`
    # the tiny export (32 units) records its layers as data; the graph folds Dense(32) into the
    # LSTM, which then reads 28 pixels per row
    recorded = metadata_architecture(exported.metadata)
    assert recorded == [
        {"layer": "Dense", "units": 32},
        {"layer": "LSTM", "units": 32},
        {"layer": "Dense", "units": 10},
    ]
    assert model_flops(recorded) == 2 * (28 * 28 * 32 + 28 * 128 * (32 + 32) + 32 * 10)
    assert onnx_flops(exported.onnx_path) == 2 * (28 * 128 * (28 + 32) + 32 * 10)
    assert metadata_architecture({"architecture_json": "not json"}) is None


def test_percentiles_are_in_microseconds():
    result = percentiles([i * 1e-6 for i in range(1, 101)])
    assert result["calls"] == 100
    assert result["p50_us"] == pytest.approx(50.5)
    assert result["p50_us"] < result["p90_us"] < result["p99_us"] <= 100


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> Path:
    """A full-size MNIST directory whose test set is digits the tiny model learned, every third one
    labelled wrongly: an honest accuracy is near 2/3, never 1, and depends on which images and
    labels were paired."""
    from runtime.mnist import FILES

    directory = tmp_path_factory.mktemp("labelled")
    images, labels = synthetic_digits(10_000, 7)
    labels[::3] = (labels[::3] + 1) % 10
    write_idx(directory / FILES["test_images"], images, compress=False)
    write_idx(directory / FILES["test_labels"], labels, compress=False)
    write_idx(directory / FILES["train_images"], np.zeros((60_000, 28, 28), np.uint8), compress=False)
    write_idx(directory / FILES["train_labels"], np.zeros(60_000, np.uint8), compress=False)
    return directory


@pytest.fixture(scope="module")
def bench_run(tiny_keras_model, exported, labelled_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = rowrnn(
        "bench",
        "--keras",
        tiny_keras_model,
        "--onnx",
        exported.onnx_path,
        "--int8",
        out / "missing.int8.onnx",
        "--data",
        labelled_data,
        "--calls",
        40,
        "--images",
        300,
        "--cold-starts",
        1,
        "--json",
        out / "bench.json",
        "--plot",
        out / "bench.png",
    )
    return result, out


def test_bench_prints_one_table_and_writes_json_and_png(bench_run):
    result, out = bench_run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    lines = result.stdout.splitlines()
    for row in report["engines"]:  # each engine's line shows what the JSON holds
        line = next(line for line in lines if line.startswith(row["engine"]))
        if row["skipped"]:
            assert line.endswith(f"skipped: {row['skipped']}")
        else:
            assert f"{row['latency_us']['p50_us']:,.0f}" in line and f"{row['accuracy']:.2%}" in line, line
    assert "ceiling" in result.stdout and "cold start" in result.stdout and "peak RSS" in result.stdout
    assert "bench: single-image latency" in result.stderr  # progress while it runs
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_measures_what_it_was_asked_to_on_the_given_images(bench_run, tiny_keras_model, exported, labelled_data):
    _, out = bench_run
    report = json.loads((out / "bench.json").read_text())
    engines = {row["engine"]: row for row in report["engines"]}
    assert [row["key"] for row in report["engines"]] == ["keras_predict", "keras_call", "onnx_fp32", "onnx_int8"]
    # accuracy: each engine's answers on the first 300 test images against their labels, as
    # computed here without bench
    from rowrnn_keras.model import load_trained_model
    from runtime.mnist import describe_test_set, load_mnist_dir

    test = load_mnist_dir(labelled_data)
    assert report["images"] == 300 and report["inputs"] == describe_test_set(test.test_images)
    images, labels = test.test_images[:300], test.test_labels[:300]
    onnx_accuracy = float(np.mean(Predictor(exported.onnx_path).predict(images).labels == labels))
    keras_accuracy = float(
        np.mean(load_trained_model(tiny_keras_model).predict(scale_pixels(images), verbose=0).argmax(1) == labels)
    )
    assert 0.5 < onnx_accuracy < 0.8  # the wrong third counts against it
    assert engines["ONNX fp32"]["accuracy"] == pytest.approx(onnx_accuracy, abs=1e-9)
    for name in ("Keras predict", "Keras call"):
        assert engines[name]["accuracy"] == pytest.approx(keras_accuracy, abs=1e-9)
    for name in ("Keras predict", "Keras call", "ONNX fp32"):
        row = engines[name]
        latency = row["latency_us"]
        assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"]
        assert latency["calls"] == (40 if name == "ONNX fp32" else 10)  # Keras gets a tenth, at least 1 per round
        assert row["images_per_s"] > 0
        assert row["model_flops_per_image"] == 2 * (28 * 28 * 32 + 28 * 128 * (32 + 32) + 32 * 10)
    assert engines["ONNX fp32"]["executed_flops_per_image"] < engines["ONNX fp32"]["model_flops_per_image"]  # folded
    assert "missing.int8.onnx: not found" in engines["ONNX int8"]["skipped"]
    assert report["ceiling"]["gflops"] > 1
    assert 0 < report["cold_start"]["min_s"] <= report["cold_start"]["p50_s"] and report["cold_start"]["runs"] == 1
    memory = report["peak_rss"]
    assert memory["images"] == 300 and 10 < memory["predictor_mb"] < memory["keras_mb"]  # TensorFlow alone is larger
    assert "failures" not in report and "failed" not in memory


def test_bench_without_models_still_measures_the_ceiling(tmp_path):
    result = rowrnn(
        "bench",
        "--keras",
        tmp_path / "none.keras",
        "--onnx",
        tmp_path / "none.onnx",
        "--int8",
        tmp_path / "none.int8.onnx",
        "--calls",
        10,
        "--images",
        10,
        "--json",
        tmp_path / "b.json",
        env={"ROWRNN_DATA": ""},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert all("not found" in row["skipped"] for row in report["engines"])
    assert report["ceiling"]["gflops"] > 1 and "skipped" in report["cold_start"]
    assert report["inputs"] == "synthetic images, accuracy not measured: no MNIST directory (--data or $ROWRNN_DATA)"


@pytest.mark.parametrize(
    "given, needles",
    [
        (lambda tmp, exported: ["--data", tmp / "typo"], ["typo", "does not exist"]),
        (
            lambda tmp, exported: ["--data", write_mnist_dir(tmp / "small")],
            ["expected 60000 MNIST train images, found 120"],
        ),
        (lambda tmp, exported: ["--onnx", foreign_model(tmp / "foreign.onnx")], ["foreign.onnx"]),
        (lambda tmp, exported: ["--int8", exported.report_path], ["parity.json"]),
    ],
    ids=["data-typo", "data-not-mnist", "onnx-not-rowrnn", "int8-not-onnx"],
)
def test_bench_refuses_what_it_was_given_and_cannot_read(tmp_path, exported, given, needles):
    """Given data or models that do not read are refused in one line, not measured as synthetic
    images or skipped rows; nothing is written."""
    args = {
        "--onnx": exported.onnx_path,
        "--keras": tmp_path / "none.keras",
        "--int8": tmp_path / "none.onnx",
        **dict(zip(*[iter(given(tmp_path, exported))] * 2, strict=True)),
    }
    before = sorted(tmp_path.iterdir())
    result = rowrnn(
        "bench",
        *[item for pair in args.items() for item in pair],
        "--calls",
        10,
        "--images",
        10,
        "--json",
        tmp_path / "b.json",
        env={"ROWRNN_DATA": ""},
    )
    assert_one_line_error(result, *needles)
    assert sorted(tmp_path.iterdir()) == before and result.stdout == ""


# Runs `rowrnn bench` with its measuring children made to crash, as a child that runs out of memory would.
CRASHING_CHILDREN = """
import sys
import rowrnn.bench as bench
bench.PREDICTOR_CHILD = "import sys; sys.exit('predictor child crashed on purpose')"
bench.rowrnn_command = lambda: [sys.executable, "-c", "import sys; sys.exit('cold-start child crashed on purpose')"]
from rowrnn.cli import main
main(sys.argv[1:])
"""


def test_a_crashing_child_process_is_a_failure_not_a_skip(exported, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_CHILDREN,
            "bench",
            "--keras",
            tmp_path / "none.keras",
            "--onnx",
            exported.onnx_path,
            "--int8",
            tmp_path / "none.onnx",
            "--calls",
            "10",
            "--images",
            "10",
            "--cold-starts",
            "1",
            "--json",
            tmp_path / "b.json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "ROWRNN_DATA": ""},
    )
    assert result.returncode == 1, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("rowrnn:")]
    assert errors == [
        "rowrnn: check failed: 2 measurement(s) failed: "
        "cold start: `rowrnn predict one.png --model model.onnx`: exited with 1: cold-start child crashed on purpose; "
        "peak RSS: peak RSS of the predictor process: exited with 1: predictor child crashed on purpose"
    ], result.stderr
    assert "Traceback" not in result.stderr
    # the report still shows everything, the failures as failures
    assert "cold start: FAILED: `rowrnn predict" in result.stdout and "peak RSS: FAILED: " in result.stdout
    assert "skipped: `rowrnn" not in result.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    assert "crashed on purpose" in report["cold_start"]["failed"] and report["peak_rss"]["predictor_mb"] == "failed"
    assert report["engines"][2]["latency_us"]["calls"] == 10  # the in-process measurements were made
