"""One onnxruntime session over a rowrnn model file: what `Predictor` and `StreamingPredictor` share."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from runtime.errors import InputError, one_line


def open_session(
    path: Path,
    intra_op_threads: int | None = None,
    providers: list[str] | None = None,
    session_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """A CPU session on one core unless told otherwise, or an InputError naming the file.

    One core: an LSTM step is too small to split, and idle onnxruntime workers would spin on the
    cores of the app that embeds us (BENCHMARKS.md).
    """
    if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
        raise InputError(f"intra_op_threads must be a whole number >= 1, got {intra_op_threads!r}")
    options = session_options or ort.SessionOptions()
    if intra_op_threads is not None or session_options is None:
        options.intra_op_num_threads = intra_op_threads or 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable files
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X failed:Protobuf parsing failed."
        reason = one_line(exc).split(" failed:", 1)[-1].strip() or type(exc).__name__
        raise InputError(f"{path}: not a loadable ONNX model ({one_line(reason, limit=200)})") from None

