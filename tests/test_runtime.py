"""runtime: the TensorFlow-free Predictor, its input contract, and refusing foreign models."""

import json
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

from helpers import REPO
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
    np.testing.assert_allclose(result.logits, logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(result.probabilities, keras.ops.softmax(logits).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.confidence, result.probabilities.max(axis=1))


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (5, 28, 28), (784,), (5, 784)], ids=str)
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


def test_large_batches_are_chunked_in_parallel_and_keep_their_order(exported, predictor):
    """The one test of chunking: 2 500 images (79 chunks of 32) give, row for row, what the rows
    give alone, whether one worker or four run the chunks."""
    pixels = np.random.default_rng(3).integers(0, 256, (2500, 28, 28), dtype=np.uint8)
    serial = Predictor(exported.onnx_path, threads=1).predict(pixels)
    with Predictor(exported.onnx_path, threads=4) as pooled:
        parallel = pooled.predict(pixels)
        assert pooled._pool is not None  # the chunks really went to the pool
    assert len(parallel) == 2500
    for field in ("logits", "probabilities", "labels"):
        np.testing.assert_array_equal(getattr(parallel, field), getattr(serial, field))
    for start in (0, 31, 32, 1000, 2493):  # chunk edges and the ragged last chunk
        alone = predictor.predict(pixels[start : start + 7]).probabilities
        np.testing.assert_allclose(parallel.probabilities[start : start + 7], alone, atol=1e-6)


def test_close_stops_the_workers_and_the_predictor_still_works(exported):
    pixels = np.random.default_rng(6).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    predictor = Predictor(exported.onnx_path, threads=2)
    others = set(threading.enumerate())
    before = predictor.predict(pixels)
    workers = [t for t in set(threading.enumerate()) - others if t.name.startswith("rowrnn-predict")]
    assert workers  # this predictor's own pool
    predictor.close()
    assert not any(t.is_alive() for t in workers)
    np.testing.assert_array_equal(predictor.predict(pixels).logits, before.logits)  # serial now
    assert predictor._pool is None


def test_session_options_of_the_caller_are_not_changed(exported):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 3
    Predictor(exported.onnx_path, session_options=options)
    assert options.intra_op_num_threads == 3
    with pytest.raises(InputError, match="not both"):
        Predictor(exported.onnx_path, session_options=options, intra_op_threads=1)


def test_a_provider_failure_is_not_blamed_on_the_file(exported, monkeypatch):
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    def failing_session(*args, **kwargs):
        raise EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : provider failed to start")

    monkeypatch.setattr(ort, "InferenceSession", failing_session)
    with pytest.raises(EPFail):
        Predictor(exported.onnx_path)


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


def test_shared_predictor_is_thread_safe(predictor):
    """8 threads x 1 000 calls on one Predictor, batch sizes 1 to 300 (so also the chunked,
    pooled path): every result is identical to the same call made alone."""
    rng = np.random.default_rng(4)
    sizes = [1, 1, 2, 7, 31, 32, 33, 100, 300]
    batches = [rng.integers(0, 256, (sizes[i % len(sizes)], 28, 28), dtype=np.uint8) for i in range(50)]
    expected = [predictor.predict(batch).probabilities for batch in batches]
    mismatches, errors = [], []

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).integers(0, len(batches), 1000)
        try:
            for index in order:
                if not np.array_equal(predictor.predict(batches[index]).probabilities, expected[index]):
                    mismatches.append(index)
        except Exception as exc:  # noqa: BLE001  a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    assert not errors and not mismatches


def test_processes_load_one_model_at_once(exported, tmp_path):
    """Four processes open the same file at the same moment and agree with this one."""
    images = np.random.default_rng(5).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np; from runtime import Predictor\n"
        "p = Predictor(sys.argv[1]).predict(np.load(sys.argv[2])).probabilities\n"
        "np.save(sys.argv[3], p)"
    )
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(exported.onnx_path),
                str(tmp_path / "images.npy"),
                str(tmp_path / f"out{i}.npy"),
            ],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for child in children:
        _, stderr = child.communicate(timeout=120)  # reads the pipe while it waits
        assert child.returncode == 0, stderr
    expected = Predictor(exported.onnx_path).predict(images).probabilities
    for i in range(4):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{i}.npy"), expected)


def test_runtime_imports_nothing_heavy(exported, tmp_path):
    """Import hygiene of a running process. In a fresh one: the runtime API loads none of
    TensorFlow, Keras, tf2onnx, rowrnn_keras, export, onnx or matplotlib (README: `runtime` needs only
    numpy, onnxruntime and Pillow); then `rowrnn predict` adds no TensorFlow, Keras, tf2onnx or
    matplotlib (it is what the light install runs). The source's imports: test_imports.py."""
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    script = f"""
import sys, json, numpy as np
loaded = lambda names: sorted(m for m in sys.modules if m.split('.')[0] in names)
from runtime import Predictor, preprocess_image
from runtime.inputs import load_input
Predictor({str(exported.onnx_path)!r}).predict(load_input({str(tmp_path / "x.npy")!r}))
print(json.dumps(loaded(('tensorflow', 'keras', 'tf2onnx', 'rowrnn_keras', 'export', 'onnx', 'matplotlib'))))
from rowrnn.cli import main
try:
    main(["predict", {str(tmp_path / "x.npy")!r}, "--model", {str(exported.onnx_path)!r}])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(json.dumps(loaded(('tensorflow', 'keras', 'tf2onnx', 'matplotlib'))))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == [], "the runtime API"
    assert json.loads(lines[-1]) == [], "rowrnn predict"
