"""`rowrnn anytime` (accuracy after k rows, early exit) and bench's streaming section."""

import json

import numpy as np
import pytest

from helpers import assert_one_line_error, rowrnn, synthetic_digits, write_mnist_dir
from rowrnn.anytime import format_anytime, format_streaming, measure_streaming, run_anytime
from runtime import Predictor, StreamingPredictor
from runtime.contract import scale_pixels
from runtime.errors import InputError

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


@pytest.fixture(scope="module")
def keras_beliefs(tiny_keras_model, digits) -> np.ndarray:
    """float [N, 28, 10]: the Keras model's probabilities after reading only the top k rows of each
    image (k = 1..28), computed by its own layers on truncated images: no ONNX, no step model,
    nothing of rowrnn.anytime or runtime.stream."""
    import keras

    model = keras.models.load_model(tiny_keras_model)
    rows = scale_pixels(digits[0])
    dense, lstm, head = model.layers
    return np.stack(
        [keras.ops.convert_to_numpy(keras.ops.softmax(head(lstm(dense(rows[:, :k]))))) for k in range(1, 29)], axis=1
    )


def first_confident_row(beliefs: np.ndarray, threshold: float) -> np.ndarray:
    """Rows (1-28) each image is read to when reading stops at the first row whose top probability
    reaches `threshold`, else at row 28."""
    confident = beliefs.max(axis=2) >= threshold
    confident[:, -1] = True
    return confident.argmax(axis=1) + 1


def test_accuracy_after_k_rows_is_the_models_accuracy_on_the_top_k_rows(report, exported_step, digits, keras_beliefs):
    images, labels = digits
    curve = report["accuracy_after_rows"]
    expected = (keras_beliefs.argmax(axis=2) == labels[:, None]).mean(axis=0)  # [28]
    # Keras and onnxruntime round differently: an image whose two best classes are within ~1e-6
    # may flip. Allowed: one image of 300 per k; reading k+1 rows (or k-1) changes far more.
    np.testing.assert_allclose(curve, expected, atol=1.01 / len(labels))
    assert np.abs(np.diff(expected)).max() > 5 / len(labels)  # the curve moves: an off-by-one row shows
    full = float(np.mean(Predictor(exported_step.onnx_path).predict(images).labels == labels))
    assert curve[-1] == pytest.approx(full) and report["full_accuracy"] == pytest.approx(full)
    assert report["images"] == 300 and report["inputs"] == "synthetic digits"


def test_early_exit_table_is_reading_until_confident(report, digits, keras_beliefs):
    """Each row of the table against stopping, image by image, at the first row whose top
    probability reaches the threshold (the Keras model's beliefs, computed independently)."""
    images, labels = digits
    assert [row["threshold"] for row in report["early_exit"]] == [0.3, 0.5, 0.99]
    for row in report["early_exit"]:
        read = first_confident_row(keras_beliefs, row["threshold"])
        answers = keras_beliefs[np.arange(len(read)), read - 1].argmax(axis=1)
        # as above: an image within rounding of the threshold or of a tie may differ
        assert row["accuracy"] == pytest.approx(np.mean(answers == labels), abs=1.01 / len(labels))
        assert np.abs(np.array(row["rows_histogram"]) - np.bincount(read, minlength=29)[1:]).sum() <= 2
        assert row["mean_rows"] == pytest.approx(read.mean(), abs=28 / len(labels))
        assert row["median_rows"] == pytest.approx(np.median(read), abs=1)
        assert row["stopped_early"] == pytest.approx(np.mean(read < 28), abs=1.01 / len(labels))
        assert row["batch_seconds"] > 0 and row["one_at_a_time_us_per_image"] > 0
        assert row["batch_time_saved"] < 1 and row["one_at_a_time_time_saved"] < 1
    means = [row["mean_rows"] for row in report["early_exit"]]
    assert means[0] < means[1] < means[2] <= 28  # the thresholds were applied: the lower, the sooner


def test_the_text_and_the_plot(report, tmp_path):
    text = format_anytime(report)
    assert "accuracy after k rows:" in text and " 28 " in text
    assert "threshold  accuracy  mean rows  stopped early  time saved  one at a time" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0.3 ", "0.5 ", "0.99 "))]) == 3
    from rowrnn_keras.plots import save_anytime

    assert save_anytime(report, tmp_path / "anytime.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_cli_anytime_prints_json_and_writes_the_plot(exported_step, mnist_dir, tmp_path):
    result = rowrnn(
        "anytime", "--model", exported_step.step_path, "--data", mnist_dir, "--json", "--plot", tmp_path / "a.png"
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["images"] == 10_000 and len(printed["accuracy_after_rows"]) == 28
    assert [r["threshold"] for r in printed["early_exit"]] == [0.9, 0.99, 0.999]
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    assert "anytime: early exit, timing round 1/3" in result.stderr


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "missing.step.onnx"], ["missing.step.onnx", "no such file"]),
        (["--plot", "chart.txt"], ["chart.txt", "must end in .png"]),
        (["--plot", "."], ["is a directory"]),
        (["--data", "no-such-dir"], ["no-such-dir", "does not exist"]),
        (["--data", "mnist"], ["expected 60000 MNIST train images, found 120"]),
    ],
    ids=["missing-model", "plot-suffix", "plot-directory", "missing-data", "not-mnist"],
)
def test_cli_anytime_bad_input_is_one_line(exported_step, tmp_path, args, needles):
    write_mnist_dir(tmp_path / "mnist")  # a directory of the right files, too few images
    defaults = {"--model": str(exported_step.step_path), "--data": "mnist"}
    options = dict(zip(args[::2], args[1::2], strict=True))
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
    with pytest.raises(InputError, match="a full rowrnn model, not a step model"):  # given, and wrong: refused
        measure_streaming(exported_step.onnx_path, exported_step.onnx_path, rows, 20)


def test_cli_bench_refuses_a_step_model_that_is_not_one_before_measuring(exported_step, tmp_path):
    result = rowrnn(
        "bench",
        "--keras",
        tmp_path / "none.keras",
        "--onnx",
        exported_step.onnx_path,
        "--int8",
        tmp_path / "none.onnx",
        "--step",
        exported_step.onnx_path,
        "--calls",
        10,
        "--images",
        10,
        env={"ROWRNN_DATA": ""},
    )
    assert_one_line_error(result, "model.onnx", "not a step model")
    assert result.stdout == ""


def test_cli_bench_reports_streaming(exported_step, tmp_path):
    result = rowrnn(
        "bench",
        "--keras",
        tmp_path / "none.keras",
        "--onnx",
        exported_step.onnx_path,
        "--int8",
        tmp_path / "none.onnx",
        "--step",
        exported_step.step_path,
        "--calls",
        56,
        "--images",
        20,
        "--cold-starts",
        1,
        "--json",
        tmp_path / "b.json",
        env={"ROWRNN_DATA": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "streaming (model.step.onnx): one-row step p50" in result.stdout
    streaming = json.loads((tmp_path / "b.json").read_text())["streaming"]
    assert streaming["step_calls"] == 50 and streaming["full_call_p50_us"] > 0  # 10 rounds of 56 // 10
