"""`export_model`: the library call behind `rowrnn export`.

Describe the I/O (the contract in runtime.contract) -> convert (export.convert) -> validate
(export.validate) -> write atomically. A model that fails a check is never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.convert import convert, format_rewrites  # noqa: F401 (format_rewrites: for the CLI)
from export.defaults import (
    DEFAULT_ATOL,
    DEFAULT_MAX_INT8_DROP,
    DEFAULT_OPSET,
    MAX_ATOL,
    MAX_OPSET,
    MIN_OPSET,
    QUANTIZE_CHOICES,
)
from export.step import export_step, step_failure
from export.validate import accuracy, check_contract, op_counts, parity_report
from rowrnn_keras.data import load_mnist
from rowrnn_keras.model import architecture_layers, format_architecture, load_trained_model
from runtime.contract import FULL_MODEL, IMAGE_SHAPE, scale_pixels, step_path_for
from runtime.errors import CheckFailed, InputError
from runtime.files import check_writable, sha256_file, write_bytes_atomic, write_json_atomic
from runtime.idx import encode_idx
from runtime.mnist import FILES, resolve_data_dir

# What the model's `parity` metadata repeats from the report: no local paths (a shipped model
# must not say where its maker's files were).
PARITY_METADATA_KEYS = ("passed", "atol", "max_abs_logit_diff", "argmax_agreement", "images", "inputs", "inputs_sha256")


@dataclass(frozen=True)
class ValidationSet:
    rows: np.ndarray  # float32 [N, 28, 28] in [0, 1]
    labels: np.ndarray | None  # None for synthetic inputs
    source: str  # what the inputs are, for people: never a local path (it goes into the metadata)
    checksums: dict[str, str] = field(default_factory=dict)  # name -> sha256 of the data checked on


@dataclass
class ExportResult:
    onnx_path: Path
    report_path: Path
    report: dict
    int8_path: Path | None = None
    step_path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def synthetic_rows(n: int = 512, seed: int = 0) -> np.ndarray:
    """Inputs for parity when no MNIST is at hand: noise, blank, full, and stroke-like digits."""
    rng = np.random.default_rng(seed)
    rows = rng.random((n, *IMAGE_SHAPE), dtype=np.float32)
    rows[: n // 4] *= rng.random((n // 4, *IMAGE_SHAPE)) < 0.15  # sparse speckle
    rows[n // 4] = 0.0
    rows[n // 4 + 1] = 1.0
    for image in rows[n // 2 :]:  # thick random strokes on black, like handwriting
        image[:] = 0.0
        for _ in range(rng.integers(1, 4)):
            (r0, c0), (r1, c1) = rng.integers(4, 24, (2, 2))
            for t in np.linspace(0.0, 1.0, 40):
                r, c = int(r0 + t * (r1 - r0)), int(c0 + t * (c1 - c0))
                image[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 1.0
    return rows


def validation_set(data_dir: str | os.PathLike | None) -> ValidationSet:
    """The MNIST test set when a data directory is given (or $ROWRNN_DATA), else synthetic inputs.

    The checksums identify the data without naming where it was: for MNIST, the sha256 of the two
    uncompressed test files (`gunzip -c t10k-images-idx3-ubyte.gz | sha256sum` gives the same).
    """
    if resolve_data_dir(data_dir) is None:
        rows = synthetic_rows()
        return ValidationSet(
            rows, None, "synthetic (no MNIST directory given)", {"synthetic_rows_float32": sha256_hex(rows.tobytes())}
        )
    mnist = load_mnist(data_dir)
    checksums = {
        FILES["test_images"]: sha256_hex(encode_idx(mnist.test_images)),
        FILES["test_labels"]: sha256_hex(encode_idx(mnist.test_labels)),
    }
    return ValidationSet(
        scale_pixels(mnist.test_images), mnist.test_labels.astype(np.int64), "MNIST test set", checksums
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)


def int8_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".int8.onnx")


def report_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".parity.json")


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime dynamic quantization: int8 weights, activations quantized per call."""
    with tempfile.TemporaryDirectory(prefix="rowrnn-int8-") as scratch:
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        source.write_bytes(model.SerializeToString())
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint via root
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return onnx.load(target)


def export_model(
    keras_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    quantize: str | None = None,
    max_int8_drop: float = DEFAULT_MAX_INT8_DROP,
    validation: ValidationSet | None = None,
    step: bool = False,
) -> ExportResult:
    """Convert a trained `.keras` model to an ONNX file that meets the contract and matches Keras.

    Raises InputError for bad arguments and CheckFailed when parity or the int8 accuracy bound
    fails; in both cases no .onnx file is written (the parity report is, to explain the failure).
    `validation` overrides the inputs parity is checked on (default: `validation_set(data_dir)`).
    `step` also writes the step model `OUT.step.onnx` (export.step), under its own parity check.
    """
    keras_path, output = Path(keras_path), Path(output)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset} is not supported; choose {MIN_OPSET}-{MAX_OPSET}")
    if not 0 < atol <= MAX_ATOL:
        raise InputError(f"--atol {atol:g} must be in (0, {MAX_ATOL:g}]")
    if not 0 <= max_int8_drop <= 1:
        raise InputError(f"--max-int8-drop {max_int8_drop * 100:g} must be between 0 and 100 points")
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise InputError(f"--quantize {quantize!r} is not supported; choose {', '.join(QUANTIZE_CHOICES)}")
    check_writable(output, ".onnx")
    model = load_trained_model(keras_path)
    inputs = validation or validation_set(data_dir)

    proto, rewrites = convert(model, opset)
    check_contract(proto)
    keras_logits = model.predict(inputs.rows, batch_size=1024, verbose=0)  # the original model, unfolded
    report = parity_report(keras_logits, proto, inputs.rows, atol, inputs.labels)
    report.update(
        inputs=inputs.source,
        inputs_sha256=inputs.checksums,
        opset=opset,
        ops=op_counts(proto),
        rewrites={r.name: r.to_dict() for r in rewrites},
        source_model=str(keras_path),
    )
    test_accuracy = report["onnx_test_accuracy"]
    report_path = write_json_atomic(report_path_for(output), report)
    if not report["passed"]:
        raise CheckFailed(
            f"ONNX does not match Keras: max-abs logit diff {report['max_abs_logit_diff']:.3g} "
            f"(atol {atol:g}), argmax agreement {report['argmax_agreement']:.4%}; see {report_path}"
        )

    layers = architecture_layers(model)
    metadata = {
        **FULL_MODEL.metadata(),
        "architecture": format_architecture(layers),  # for people
        "architecture_json": json.dumps(layers),  # for code: [{"layer": "Dense", "units": 128}, ...]
        "hidden_units": str(next((layer["units"] for layer in layers if layer["layer"] == "LSTM"), "")),
        "source_model_sha256": sha256_file(keras_path),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "tf2onnx_version": tf2onnx.__version__,
        "onnx_version": onnx.__version__,
        "test_accuracy": "" if test_accuracy is None else f"{test_accuracy:.6f}",
        "parity": json.dumps({k: report[k] for k in PARITY_METADATA_KEYS}),
        "quantization": "none",
    }
    set_metadata(proto, metadata)
    int8_model = None
    if quantize == "int8":
        int8_model, int8_report = quantize_checked(proto, inputs, test_accuracy, max_int8_drop)
        report["int8"] = int8_report
        write_json_atomic(report_path, report)
    step_model = None
    if step:
        step_model, report["step"] = export_step(model, proto, inputs.rows, keras_logits, metadata, opset, atol)
        write_json_atomic(report_path, report)
        if not report["step"]["passed"]:
            raise CheckFailed(step_failure(report["step"], report_path))
    write_bytes_atomic(output, proto.SerializeToString())
    result = ExportResult(output, report_path, report, metadata=metadata)
    if int8_model is not None:
        result.int8_path = write_bytes_atomic(int8_path_for(output), int8_model.SerializeToString())
    if step_model is not None:
        result.step_path = write_bytes_atomic(step_path_for(output), step_model.SerializeToString())
    return result


def quantize_checked(
    proto: onnx.ModelProto, inputs: ValidationSet, fp32_accuracy: float | None, max_drop: float
) -> tuple[onnx.ModelProto, dict]:
    """Quantize, check the contract, measure the accuracy drop; refuse a drop beyond `max_drop`."""
    int8 = quantize_int8(proto)
    check_contract(int8, quantized=True)
    report: dict = {"size_bytes": len(int8.SerializeToString()), "fp32_size_bytes": len(proto.SerializeToString())}
    if fp32_accuracy is not None and inputs.labels is not None:
        int8_accuracy = accuracy(int8, inputs.rows, inputs.labels)
        drop = fp32_accuracy - int8_accuracy
        report.update(
            test_accuracy=int8_accuracy, fp32_test_accuracy=fp32_accuracy, accuracy_drop=drop, max_drop=max_drop
        )
        if drop > max_drop:
            raise CheckFailed(
                f"int8 model loses {drop:.2%} test accuracy ({int8_accuracy:.4f} vs {fp32_accuracy:.4f}), "
                f"more than the allowed {max_drop:.2%}"
            )
    else:
        report["test_accuracy"] = None
        report["note"] = "no MNIST directory: int8 accuracy not measured"
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    metadata.update(
        quantization="dynamic int8 (onnxruntime.quantization.quantize_dynamic)",
        test_accuracy="" if report["test_accuracy"] is None else f"{report['test_accuracy']:.6f}",
    )
    set_metadata(int8, metadata)
    return int8, report
