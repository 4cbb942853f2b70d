"""`rowrnn bench`: it runs, measures every engine it can, skips what is missing with the reason.

How fast anything is gets checked by reading the report of a real run (BENCHMARKS.md), never here.
"""

import json

import pytest

from helpers import rowrnn
from rowrnn.bench import metadata_architecture, model_flops, onnx_flops, percentiles


def test_flops_of_the_model_and_of_the_folded_graph(exported):
    # Dense(128) -> LSTM(128) -> Dense(10) on 28 rows of 28 pixels: the 7.6 MFLOP
    layers = [{"layer": "Dense", "units": 128}, {"layer": "LSTM", "units": 128}, {"layer": "Dense", "units": 10}]
    assert model_flops(layers) == 2 * (28 * 28 * 128 + 28 * 512 * 256 + 1280)
    assert model_flops([{"layer": "Conv2D", "units": None}, {"layer": "Dense", "units": 10}]) is None
    assert model_flops(None) is None  # an older file without `architecture_json`
    # the tiny export (32 units) records its layers as data; the graph folds Dense(32) into the
    # LSTM, which then reads 28 pixels per row
    recorded = metadata_architecture(exported.metadata)
    assert recorded == [{"layer": "Dense", "units": 32}, {"layer": "LSTM", "units": 32}, {"layer": "Dense", "units": 10}]
    assert model_flops(recorded) == 2 * (28 * 28 * 32 + 28 * 128 * (32 + 32) + 32 * 10)
    assert onnx_flops(exported.onnx_path) == 2 * (28 * 128 * (28 + 32) + 32 * 10)
    assert metadata_architecture({"architecture_json": "not json"}) is None


def test_percentiles_are_in_microseconds():
    result = percentiles([i * 1e-6 for i in range(1, 101)])
    assert result["calls"] == 100
    assert result["p50_us"] == pytest.approx(50.5)
    assert result["p50_us"] < result["p90_us"] < result["p99_us"] <= 100


@pytest.fixture(scope="module")
def bench_run(tiny_keras_model, exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = rowrnn(
        "bench", "--keras", tiny_keras_model, "--onnx", exported.onnx_path, "--int8", out / "missing.int8.onnx",
        "--calls", 40, "--images", 300, "--cold-starts", 1, "--json", out / "bench.json", "--plot", out / "bench.png",
        env={"ROWRNN_DATA": ""},
    )
    return result, out


def test_bench_prints_one_table_and_writes_json_and_png(bench_run):
    result, out = bench_run
    assert result.returncode == 0, result.stderr
    for engine in ("Keras predict", "Keras call", "ONNX fp32", "ONNX int8"):
        assert engine in result.stdout
    assert "ceiling" in result.stdout and "cold start" in result.stdout and "peak RSS" in result.stdout
    assert "bench: single-image latency" in result.stderr  # progress while it runs
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_report_fields_are_sane(bench_run):
    _, out = bench_run
    report = json.loads((out / "bench.json").read_text())
    engines = {row["engine"]: row for row in report["engines"]}
    assert [row["key"] for row in report["engines"]] == ["keras_predict", "keras_call", "onnx_fp32", "onnx_int8"]
    assert report["images"] == 300 and report["inputs"].startswith("synthetic")
    keras_p50 = engines["Keras predict"]["latency_us"]["p50_us"]
    for name in ("Keras predict", "Keras call", "ONNX fp32"):
        row = engines[name]
        latency = row["latency_us"]
        assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"]
        assert latency["calls"] == (40 if name == "ONNX fp32" else 10)  # Keras gets a tenth, at least 1 per round
        assert row["images_per_s"] > 0 and row["accuracy"] is None  # synthetic images carry no labels
        assert row["latency_speedup_vs_keras"] == pytest.approx(keras_p50 / latency["p50_us"])
        assert row["fraction_of_ceiling"] == pytest.approx(row["images_per_s"] / row["ceiling_images_per_s"])
        assert row["model_flops_per_image"] == 2 * (28 * 28 * 32 + 28 * 128 * (32 + 32) + 32 * 10)
    onnx_row = engines["ONNX fp32"]
    assert onnx_row["executed_flops_per_image"] < onnx_row["model_flops_per_image"]
    assert onnx_row["flop_use"] < onnx_row["fraction_of_ceiling"]
    assert engines["Keras predict"]["latency_speedup_vs_keras"] == pytest.approx(1.0)
    assert "missing.int8.onnx: not found" in engines["ONNX int8"]["skipped"]
    assert report["ceiling"]["gflops"] > 1
    assert 0 < report["cold_start"]["min_s"] <= report["cold_start"]["p50_s"]
    memory = report["peak_rss"]
    assert 10 < memory["predictor_mb"] < memory["keras_mb"]


def test_bench_without_models_still_measures_the_ceiling(tmp_path):
    result = rowrnn("bench", "--keras", tmp_path / "none.keras", "--onnx", tmp_path / "none.onnx",
                    "--int8", tmp_path / "none.int8.onnx", "--calls", 10, "--images", 10, "--json", tmp_path / "b.json",
                    env={"ROWRNN_DATA": ""})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert all("not found" in row["skipped"] for row in report["engines"])
    assert report["ceiling"]["gflops"] > 1 and "skipped" in report["cold_start"]
