"""runtime: the TensorFlow-free Predictor, its input contract, and refusing foreign models."""

import json
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

from helpers import REPO, foreign_model
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
        except Exception as exc:  # a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
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
        subprocess.Popen([sys.executable, "-c", script, str(exported.onnx_path), str(tmp_path / "images.npy"),
                          str(tmp_path / f"out{i}.npy")], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    for child in children:
        assert child.wait(timeout=120) == 0, child.stderr.read()
    expected = Predictor(exported.onnx_path).predict(images).probabilities
    for i in range(4):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{i}.npy"), expected)


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
