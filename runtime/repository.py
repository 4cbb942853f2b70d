"""A Triton Inference Server model repository for an exported rowrnn model.

    DIR/<name>/config.pbtxt      platform onnxruntime_onnx, dims without the batch dim,
                                 dynamic batching with a max queue delay, version policy latest 1
    DIR/<name>/<version>/model.onnx  the model file, byte for byte (version 1 unless told)

With `step=True` (`rowrnn triton-repo --step`), the step model too (MODEL.step.onnx beside MODEL):

    DIR/<name>/<version>/model.step.onnx   beside the model: `rowrnn serve` serves <name>-stream from it
    DIR/<name>-stream/config.pbtxt         for Triton: sequence batching with implicit state h and c
    DIR/<name>-stream/<version>/model.onnx the step model, byte for byte

so that Triton and `rowrnn serve --model-repository DIR` both serve `<name>-stream`: one row per
request with Triton's sequence parameters, the LSTM state kept in the server.

Triton (and KServe, which runs it) and `rowrnn serve --model-repository` serve it with the same
Open Inference Protocol: a client changes only the URL. Writing another version into the same
directory rolls it out wherever the repository is polled (the policy serves the latest version).
Light: needs onnxruntime, not TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.contract import FULL_MODEL, STATE_NAMES, STATE_OUT_NAMES, TensorSpec, step_model_io, step_path_for
from runtime.errors import InputError, require_file
from runtime.files import write_bytes_atomic, write_text_atomic
from runtime.predictor import Predictor

PLATFORM = "onnxruntime_onnx"  # what Triton calls a model that onnxruntime runs
MODEL_VERSION = "1"  # the version directory written unless told otherwise
# Triton's own default: the newest version serves, so writing version N+1 replaces version N.
VERSION_POLICY = "latest: { num_versions: 1 }"
# How a served model batches, here and in `rowrnn serve` (serve.settings takes these): Triton then
# batches as `rowrnn serve` does, so scaling out changes nothing for clients.
DEFAULT_MAX_BATCH = 64  # images per session call
DEFAULT_MAX_DELAY_MS = 2.0  # how long the first request of a batch waits for company
# The stream model's sequences, here and in `rowrnn serve` (serve.settings takes these).
STREAM_SUFFIX = "-stream"  # NAME-stream: the stream model of NAME
DEFAULT_MAX_SEQUENCES = 1024  # live sequences at once
DEFAULT_SEQUENCE_IDLE_S = 60.0  # a sequence without a row for this long is dropped


def tensors_pbtxt(specs: tuple[TensorSpec, ...]) -> str:
    """Triton's input or output list; its dims leave out the batch dimension."""
    return ",\n".join(f'  {{ name: "{spec.name}" data_type: TYPE_FP32 dims: {list(spec.dims)} }}' for spec in specs)


def model_config_head(
    name: str, max_batch: int, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> list[str]:
    """The lines every model configuration starts with: name, platform, batching bound, version
    policy, and the tensors a client sends and reads."""
    return [
        f'name: "{name}"',
        f'platform: "{PLATFORM}"',
        f"max_batch_size: {max_batch}",
        f"version_policy: {{ {VERSION_POLICY} }}",
        "input [",
        tensors_pbtxt(inputs),
        "]",
        "output [",
        tensors_pbtxt(outputs),
        "]",
    ]


def config_pbtxt(name: str, max_batch: int, max_delay_ms: float) -> str:
    """Triton's model configuration (protobuf text format) for the rowrnn contract."""

    return "\n".join(
        [
            *model_config_head(name, max_batch, FULL_MODEL.inputs, FULL_MODEL.outputs),
            f"dynamic_batching {{ max_queue_delay_microseconds: {round(max_delay_ms * 1000)} }}",
            "instance_group [ { count: 1 kind: KIND_CPU } ]",
            "",
        ]
    )


def step_config_pbtxt(
    name: str, hidden: int, max_batch: int, max_delay_ms: float, max_sequences: int, idle_s: float
) -> str:
    """Triton's configuration of a step model with `hidden` LSTM units, served statefully.

    The row is the one input a client sends; h and c are implicit state (Triton feeds each
    sequence's h_out and c_out back as its next h and c, and a zero state at its start), so the
    state never leaves the server. No START/END control inputs: Triton's backends refuse a
    control input the model does not take, and the implicit state already starts every sequence
    from its initial (zero) state. The `oldest` strategy batches rows of different sequences into
    one call, one row per sequence, as `rowrnn serve` does.
    """
    io = step_model_io(hidden)
    row = tuple(spec for spec in io.inputs if spec.name not in STATE_NAMES)
    answers = tuple(spec for spec in io.outputs if spec.name not in STATE_OUT_NAMES)
    states = ",\n".join(
        f'    {{ input_name: "{state}" output_name: "{state_out}" data_type: TYPE_FP32 dims: [{hidden}]\n'
        f'      initial_state: [ {{ name: "zero {state}" data_type: TYPE_FP32 dims: [{hidden}] zero_data: true }} ] }}'
        for state, state_out in zip(STATE_NAMES, STATE_OUT_NAMES, strict=True)
    )
    return "\n".join(
        [
            *model_config_head(name, max_batch, row, answers),
            "sequence_batching {",
            f"  max_sequence_idle_microseconds: {round(idle_s * 1e6)}",
            f"  oldest {{ max_candidate_sequences: {max_sequences} "
            f"max_queue_delay_microseconds: {round(max_delay_ms * 1000)} }}",
            "  state [",
            states,
            "  ]",
            "}",
            "instance_group [ { count: 1 kind: KIND_CPU } ]",
            "",
        ]
    )


def write_triton_repository(
    model: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    name: str = "rowrnn",
    max_batch: int = DEFAULT_MAX_BATCH,
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
    version: int = int(MODEL_VERSION),
    step: bool = False,
    max_sequences: int = DEFAULT_MAX_SEQUENCES,
    sequence_idle_s: float = DEFAULT_SEQUENCE_IDLE_S,
) -> Path:
    """Write DIR/<name>/config.pbtxt and DIR/<name>/<version>/model.onnx; returns DIR/<name>.
    With `step`, the step model too (the module's docstring): MODEL.step.onnx must be beside MODEL.

    The model is checked against the rowrnn contract first (the config describes that contract),
    and each file is written atomically: a server polling the repository never sees half a model.
    The version directory is created before its model file lands in it, and a poll that finds the
    directory without the file waits for it.
    """
    model = require_file(model, "an .onnx model file")
    if not name or any(c in name for c in '/\\"') or name in (".", ".."):
        raise InputError(f"--name {name!r} is not a usable model directory name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"--version must be a whole number >= 1, got {version!r}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be at least 1, got {max_batch}")
    if not max_delay_ms >= 0:
        raise InputError(f"--max-delay-ms must be a non-negative number, got {max_delay_ms}")
    with Predictor(model, threads=1):  # refuses anything that is not a rowrnn model
        pass
    hidden = step_hidden(model, max_sequences, sequence_idle_s) if step else None
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory")
    model_dir = directory / name
    version_dir = model_dir / str(version)
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{version_dir}: cannot create ({exc.strerror or exc})") from None
    # the configuration first: a server polling the repository never sees a model without one
    write_text_atomic(model_dir / "config.pbtxt", config_pbtxt(name, max_batch, max_delay_ms))
    if hidden is not None:  # the step model lands before the model: a polling server loads both at once
        step_bytes = step_path_for(model).read_bytes()
        write_bytes_atomic(version_dir / step_path_for("model.onnx").name, step_bytes)
        stream_dir = directory / (name + STREAM_SUFFIX)
        (stream_dir / str(version)).mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            stream_dir / "config.pbtxt",
            step_config_pbtxt(name + STREAM_SUFFIX, hidden, max_batch, max_delay_ms, max_sequences, sequence_idle_s),
        )
        write_bytes_atomic(stream_dir / str(version) / "model.onnx", step_bytes)
    write_bytes_atomic(version_dir / "model.onnx", model.read_bytes())
    return model_dir


def step_hidden(model: Path, max_sequences: int, sequence_idle_s: float) -> int:
    """The hidden size of MODEL's step model (checked against the contract by opening it)."""
    from runtime.stream import StreamingPredictor

    step_path = step_path_for(model)
    if not step_path.is_file():
        raise InputError(
            f"{step_path}: no step model beside {model.name} (write one with rowrnn export OUT.onnx --step)"
        )
    if max_sequences < 1:
        raise InputError(f"--max-sequences must be at least 1, got {max_sequences}")
    if not sequence_idle_s > 0:
        raise InputError(f"--sequence-idle-s must be above 0, got {sequence_idle_s}")
    return StreamingPredictor(step_path, intra_op_threads=1).hidden
