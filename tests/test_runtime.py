"""runtime: the TensorFlow-free Predictor, its input contract, and refusing foreign models."""

import json
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

from conftest import REPO, foreign_model
from runtime import InputError, Predictor, as_rows


@pytest.fixture(scope="module")
def predictor(exported):
    return Predictor(exported.onnx_path)


@pytest.fixture(scope="module")
def reference(tiny_keras_model):
    rows = np.random.default_rng(1).random((37, 28, 28), dtype=np.float32)
    logits = keras.models.load_model(tiny_keras_model)(rows, training=False).numpy()
    return rows, logits


def test_predictions_match_keras(predictor, reference):
    rows, logits = reference
    result = predictor.predict(rows)
    assert result.labels.dtype == np.int64 and result.labels.shape == (37,)
    assert result.probabilities.dtype == np.float32 and result.probabilities.shape == (37, 10)
    np.testing.assert_array_equal(result.labels, logits.argmax(axis=1))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.confidence, result.probabilities.max(axis=1))


@pytest.mark.parametrize(
    "shape", [(28, 28), (1, 28, 28), (5, 28, 28), (784,), (5, 784)], ids=str
)
def test_accepted_shapes(predictor, shape):
    rows = np.random.default_rng(0).random(shape, dtype=np.float32)
    result = predictor.predict(rows)
    expected = predictor.predict(rows.reshape(-1, 28, 28))
    assert len(result) == (1 if len(shape) == 1 or shape == (28, 28) else shape[0])
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)


def test_uint8_is_scaled_like_training(predictor):
    pixels = np.random.default_rng(2).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(
        predictor.predict(pixels).probabilities,
        predictor.predict(pixels.astype(np.float32) / 255).probabilities,
        atol=1e-6,
    )
    np.testing.assert_array_equal(as_rows(np.float64(1.0) * np.ones((28, 28))), np.ones((1, 28, 28), np.float32))


def test_huge_batch_is_chunked(predictor):
    rows = np.random.default_rng(3).random((2500, 28, 28), dtype=np.float32)
    whole = predictor.predict(rows)
    np.testing.assert_allclose(whole.probabilities[-7:], predictor.predict(rows[-7:]).probabilities, atol=1e-6)


def test_chunks_run_in_parallel_keep_their_order(exported):
    pixels = np.random.default_rng(4).integers(0, 256, (1000, 28, 28), dtype=np.uint8)  # 32 chunks
    serial = Predictor(exported.onnx_path, threads=1).predict_logits(pixels)
    parallel = Predictor(exported.onnx_path, threads=4).predict_logits(pixels)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("option", ["threads", "intra_op_threads"])
@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_thread_options_are_checked(exported, option, value):
    with pytest.raises(InputError, match=option):
        Predictor(exported.onnx_path, **{option: value})


def test_range_check_edges():
    # the one-pass check compares float bit patterns: its edges must match the [0, 1] rule exactly
    accepted = [0.0, -0.0, 1.0, np.float32(1e-45), np.nextafter(np.float32(1), np.float32(0))]
    for value in accepted:
        assert as_rows(np.full((28, 28), value, np.float32))[0, 0, 0] == value
    refused = [np.nextafter(np.float32(1), np.float32(2)), -1e-45, np.float32(np.nan) * -1, -np.inf]
    for value in refused:
        with pytest.raises(InputError):
            as_rows(np.full((28, 28), value, np.float32))




def test_foreign_models_are_refused(tmp_path):
    with pytest.raises(InputError, match="not a rowrnn model: inputs"):
        Predictor(foreign_model(tmp_path / "a.onnx", input_name="x"))
    with pytest.raises(InputError, match="not a rowrnn model: inputs"):
        Predictor(foreign_model(tmp_path / "b.onnx", shape=(None, 28, 27)))
    with pytest.raises(InputError, match="output 'logits'"):
        Predictor(foreign_model(tmp_path / "c.onnx", classes=5))
    with pytest.raises(InputError, match="format version None"):
        Predictor(foreign_model(tmp_path / "d.onnx"))
    # the same graph that claims the contract loads: the checks above are what refused it
    Predictor(foreign_model(tmp_path / "e.onnx", metadata={"format_version": "1"}))




def test_shared_predictor_is_thread_safe(predictor):
    rng = np.random.default_rng(4)
    batches = [rng.random((int(rng.integers(1, 9)), 28, 28), dtype=np.float32) for _ in range(40)]
    expected = [predictor.predict(b).probabilities for b in batches]
    mismatches = []

    def worker():
        for _ in range(5):
            for batch, want in zip(batches, expected):
                if not np.array_equal(predictor.predict(batch).probabilities, want):
                    mismatches.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mismatches


def test_runtime_never_imports_tensorflow(exported):
    script = f"""
import sys, json, numpy as np
from runtime import Predictor, preprocess_image
from runtime.inputs import load_input
p = Predictor({str(exported.onnx_path)!r})
p.predict(np.zeros((2, 28, 28), np.float32))
heavy = sorted(m for m in sys.modules if m.split('.')[0] in
               ('tensorflow', 'keras', 'tf2onnx', 'rowrnn_keras', 'export', 'onnx', 'matplotlib'))
print(json.dumps(heavy))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_source_of_runtime_imports_nothing_heavy():
    forbidden = ("tensorflow", "keras", "tf2onnx", "rowrnn_keras", "export")
    for path in (REPO / "runtime").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in forbidden, f"{path.name}: {line}"
