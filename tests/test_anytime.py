"""`rowrnn anytime` (accuracy after k rows, early exit) and bench's streaming section."""

import json

import numpy as np
import pytest

from helpers import assert_one_line_error, rowrnn, synthetic_digits, write_mnist_dir
from rowrnn.anytime import format_anytime, format_streaming, measure_streaming, run_anytime
from runtime import Predictor, StreamingPredictor
from runtime.contract import scale_pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    """uint8 digits the tiny model learned (class k is a bar on rows 2k+4..2k+5) and their labels."""
    images, labels = synthetic_digits(300, 11)
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def report(exported_step, digits):
    streamer = StreamingPredictor(exported_step.step_path)
    return run_anytime(streamer, *digits, "synthetic digits", thresholds=(0.3, 0.5, 0.99))


def test_accuracy_after_k_rows_ends_at_the_full_models_accuracy(report, exported_step, digits):
    images, labels = digits
    curve = report["accuracy_after_rows"]
    assert len(curve) == 28 and all(0.0 <= a <= 1.0 for a in curve)
    full = float(np.mean(Predictor(exported_step.onnx_path).predict(images).labels == labels))
    assert curve[-1] == pytest.approx(full) and report["full_accuracy"] == pytest.approx(full)
    believed = StreamingPredictor(exported_step.step_path).row_probabilities(images)
    k = 13  # any k: the curve is the answer after reading the top k rows
    assert curve[k - 1] == pytest.approx(np.mean(believed[:, k - 1].argmax(axis=1) == labels))
    assert report["images"] == 300 and report["inputs"] == "synthetic digits"


def test_early_exit_table_agrees_with_predict_early(report, exported_step, digits):
    images, labels = digits
    streamer = StreamingPredictor(exported_step.step_path)
    assert [row["threshold"] for row in report["early_exit"]] == [0.3, 0.5, 0.99]
    for row in report["early_exit"]:
        result = streamer.predict_early(images, row["threshold"])
        assert row["accuracy"] == pytest.approx(np.mean(result.labels == labels))
        assert row["mean_rows"] == pytest.approx(result.rows.mean()) and 1 <= row["mean_rows"] <= 28
        assert row["rows_histogram"] == np.bincount(result.rows, minlength=29)[1:].tolist()
        assert row["stopped_early"] == pytest.approx(1 - row["rows_histogram"][-1] / 300)
        assert row["batch_seconds"] > 0 and row["one_at_a_time_us_per_image"] > 0
        assert row["batch_time_saved"] < 1 and row["one_at_a_time_time_saved"] < 1
    # a lower threshold never reads more rows
    means = [row["mean_rows"] for row in report["early_exit"]]
    assert means == sorted(means) and means[0] < 28


def test_the_text_and_the_plot(report, tmp_path):
    text = format_anytime(report)
    assert "accuracy after k rows:" in text and " 28 " in text
    assert "threshold  accuracy  mean rows  stopped early  time saved  one at a time" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0.3 ", "0.5 ", "0.99 "))]) == 3
    from rowrnn_keras.plots import save_anytime

    assert save_anytime(report, tmp_path / "anytime.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_cli_anytime_prints_json_and_writes_the_plot(exported_step, mnist_dir, tmp_path):
    result = rowrnn("anytime", "--model", exported_step.step_path, "--data", mnist_dir, "--json", "--plot", tmp_path / "a.png")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["images"] == 10_000 and len(printed["accuracy_after_rows"]) == 28
    assert [r["threshold"] for r in printed["early_exit"]] == [0.9, 0.99, 0.999]
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    assert "anytime: early exit, timing round 1/3" in result.stderr


@pytest.mark.parametrize("args, needles", [
    (["--model", "missing.step.onnx"], ["missing.step.onnx", "no such file"]),
    (["--plot", "chart.txt"], ["chart.txt", "must end in .png"]),
    (["--plot", "."], ["is a directory"]),
    (["--data", "no-such-dir"], ["no-such-dir", "does not exist"]),
    (["--data", "mnist"], ["expected 60000 MNIST train images, found 120"]),
], ids=["missing-model", "plot-suffix", "plot-directory", "missing-data", "not-mnist"])
def test_cli_anytime_bad_input_is_one_line(exported_step, tmp_path, args, needles):
    write_mnist_dir(tmp_path / "mnist")  # a directory of the right files, too few images
    defaults = {"--model": str(exported_step.step_path), "--data": "mnist"}
    options = dict(zip(args[::2], args[1::2]))
    merged = [item for key, value in {**defaults, **options}.items() for item in (key, str(tmp_path / value))]
    result = rowrnn("anytime", *merged)
    assert_one_line_error(result, *needles)
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]  # nothing written


def test_cli_anytime_needs_labelled_data_and_a_step_model(exported_step, tmp_path):
    result = rowrnn("anytime", "--model", exported_step.step_path, env={"ROWRNN_DATA": ""})
    assert_one_line_error(result, "needs the MNIST test set", "--data")
    result = rowrnn("anytime", "--model", exported_step.onnx_path, "--data", tmp_path)
    assert_one_line_error(result, "a full rowrnn model, not a step model", "--step")


def test_bench_streaming_section(exported_step):
    rows = scale_pixels(np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8))
    measured = measure_streaming(exported_step.step_path, exported_step.onnx_path, rows, calls=112, rounds=2)
    assert measured["step_calls"] == 112 and measured["streamed_images"] == 10
    assert 0 < measured["step_p50_us"] < measured["streamed_image_p50_us"]  # 28 pushes cost more than one
    assert measured["full_call_p50_us"] > 0
    line = format_streaming(measured)[0]
    assert "one-row step p50" in line and "vs one full-model call" in line
    missing = measure_streaming(exported_step.onnx_path.with_name("none.step.onnx"), exported_step.onnx_path, rows, 20)
    assert "not found (run `rowrnn export OUT.onnx --step`)" in format_streaming(missing)[0]
    wrong = measure_streaming(exported_step.onnx_path, exported_step.onnx_path, rows, 20)  # a full model as the step
    assert "not a step model" in wrong["skipped"]


def test_cli_bench_reports_streaming(exported_step, tmp_path):
    result = rowrnn("bench", "--keras", tmp_path / "none.keras", "--onnx", exported_step.onnx_path, "--int8", tmp_path / "none.onnx",
                    "--step", exported_step.step_path, "--calls", 56, "--images", 20, "--cold-starts", 1,
                    "--json", tmp_path / "b.json", env={"ROWRNN_DATA": ""})
    assert result.returncode == 0, result.stderr
    assert "streaming (model.step.onnx): one-row step p50" in result.stdout
    streaming = json.loads((tmp_path / "b.json").read_text())["streaming"]
    assert streaming["step_calls"] == 50 and streaming["full_call_p50_us"] > 0  # 10 rounds of 56 // 10
