"""One onnxruntime session over a rowrnn model file: what `Predictor` and `StreamingPredictor` share."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import (  # onnxruntime's own error types
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoSuchFile,
)
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByOrt

from runtime.contract import ModelIO
from runtime.errors import InputError, one_line

# onnxruntime's errors for a file that is not a usable model; anything else (a provider that
# fails to start, out of memory) is not the file's fault and is raised as it is.
MODEL_FILE_ERRORS = (InvalidProtobuf, InvalidGraph, InvalidArgument, NotImplementedByOrt, NoSuchFile, Fail)


def open_session(
    path: Path,
    intra_op_threads: int | None = None,
    providers: list[str] | None = None,
    session_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """A CPU session on one core unless told otherwise, or an InputError naming the file.

    One core: an LSTM step is too small to split, and idle onnxruntime workers would spin on the
    cores of the app that embeds us (BENCHMARKS.md). A `session_options` the caller passes is used
    as it is, never changed.
    """
    if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
        raise InputError(f"intra_op_threads must be a whole number >= 1, got {intra_op_threads!r}")
    if session_options is not None and intra_op_threads is not None:
        # We would have to change the caller's object; say so instead.
        raise InputError(
            "give intra_op_threads or session_options, not both (set intra_op_num_threads on your SessionOptions)"
        )
    if session_options is None:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = intra_op_threads or 1
    try:
        return ort.InferenceSession(str(path), session_options, providers=providers or ["CPUExecutionProvider"])
    except MODEL_FILE_ERRORS as exc:
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X failed:Protobuf parsing failed."
        reason = one_line(exc).split(" failed:", 1)[-1].strip() or type(exc).__name__
        raise InputError(f"{path}: not a loadable ONNX model ({one_line(reason, limit=200)})") from None


def session_inputs(session: ort.InferenceSession) -> list[tuple[str, str, list[int | str | None]]]:
    """(name, type, dims after the batch dimension) of each input, in order."""
    return [(i.name, i.type, list(i.shape[1:])) for i in session.get_inputs()]


def expected_inputs(io: ModelIO) -> list[tuple[str, str, list[int | str | None]]]:
    """`session_inputs` of a session on a model that `io` describes."""
    return [(spec.name, "tensor(float)", list(spec.dims)) for spec in io.inputs]


def check_session(session: ort.InferenceSession, io: ModelIO, path: str | os.PathLike[str]) -> None:
    """Refuse a model whose inputs, outputs or metadata are not those `io` describes."""
    inputs = session_inputs(session)
    outputs = {o.name: (o.type, list(o.shape[1:])) for o in session.get_outputs()}
    if inputs != expected_inputs(io):
        expected = ", ".join(spec.describe() for spec in io.inputs)
        raise InputError(f"{path}: not a {io.kind}: inputs {inputs}, expected {expected}")
    for spec in io.outputs:
        if outputs.get(spec.name) != ("tensor(float)", list(spec.dims)):
            raise InputError(f"{path}: not a {io.kind}: output {spec.describe()} missing, has {outputs}")
    problem = io.metadata_problem(session.get_modelmeta().custom_metadata_map)
    if problem:
        raise InputError(f"{path}: {problem}")
