"""A Triton Inference Server model repository for an exported rowrnn model.

    DIR/<name>/config.pbtxt      platform onnxruntime_onnx, dims without the batch dim,
                                 dynamic batching with a max queue delay, version policy latest 1
    DIR/<name>/<version>/model.onnx  the model file, byte for byte (version 1 unless told)

Triton (and KServe, which runs it) and `rowrnn serve --model-repository` serve it with the same
Open Inference Protocol: a client changes only the URL. Writing another version into the same
directory rolls it out wherever the repository is polled (the policy serves the latest version).
Light: needs onnxruntime, not TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.contract import FULL_MODEL, TensorSpec
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


def config_pbtxt(name: str, max_batch: int, max_delay_ms: float) -> str:
    """Triton's model configuration (protobuf text format) for the rowrnn contract."""

    def tensors(specs: tuple[TensorSpec, ...]) -> str:  # Triton's dims leave out the batch dimension
        return ",\n".join(f'  {{ name: "{spec.name}" data_type: TYPE_FP32 dims: {list(spec.dims)} }}' for spec in specs)

    return "\n".join(
        [
            f'name: "{name}"',
            f'platform: "{PLATFORM}"',
            f"max_batch_size: {max_batch}",
            f"version_policy: {{ {VERSION_POLICY} }}",
            "input [",
            tensors(FULL_MODEL.inputs),
            "]",
            "output [",
            tensors(FULL_MODEL.outputs),
            "]",
            f"dynamic_batching {{ max_queue_delay_microseconds: {round(max_delay_ms * 1000)} }}",
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
) -> Path:
    """Write DIR/<name>/config.pbtxt and DIR/<name>/<version>/model.onnx; returns DIR/<name>.

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
    write_bytes_atomic(version_dir / "model.onnx", model.read_bytes())
    return model_dir
