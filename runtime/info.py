"""`describe_model`: what `rowrnn info` prints about an ONNX file (needs the onnx package)."""

from __future__ import annotations

import collections
import math
import os
from typing import TYPE_CHECKING, Any

from runtime.errors import InputError, require_file

if TYPE_CHECKING:
    import onnx


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input's or output's dims, symbolic ones by name."""
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def describe_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Inputs/outputs with shapes, opsets, op counts, size and metadata of an ONNX file."""
    import onnx  # only `info` needs it; the predictor does not

    path = require_file(path, "an .onnx model file")
    try:
        model = onnx.load(path)
    except Exception as exc:  # noqa: BLE001  protobuf's DecodeError and friends: any of them means not ONNX
        raise InputError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model (no graph)")

    def elem(value: onnx.ValueInfoProto) -> str:
        return str(onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)).lower()

    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "producer": producer(model),
        "inputs": [{"name": v.name, "dtype": elem(v), "shape": dims(v)} for v in model.graph.input],
        "outputs": [{"name": v.name, "dtype": elem(v), "shape": dims(v)} for v in model.graph.output],
        "ops": dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items())),
        "parameters": sum(math.prod(t.dims) for t in model.graph.initializer),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def producer(model: onnx.ModelProto) -> str:
    """ "tf2onnx 1.17.0". tf2onnx writes its version as "<version> <git hash>", and a wheel has no
    hash: files exported before rowrnn cleaned that up say "1.17.0 None", and the "None" is dropped."""
    words = f"{model.producer_name} {model.producer_version}".split()
    return " ".join(word for word in words if word != "None")


def format_description(info: dict[str, Any]) -> str:
    """The `rowrnn info` text: a header line, inputs, outputs, op counts, then the metadata."""
    lines = [
        f"{info['path']}  ({info['size_bytes']:,} bytes, {info['parameters']:,} parameters)",
        f"producer: {info['producer']}   ir_version: {info['ir_version']}   opsets: "
        + ", ".join(f"{k} {v}" for k, v in info["opsets"].items()),
        "inputs:",
        *(f"  {v['name']}: {v['dtype']} {v['shape']}" for v in info["inputs"]),
        "outputs:",
        *(f"  {v['name']}: {v['dtype']} {v['shape']}" for v in info["outputs"]),
        f"ops ({sum(info['ops'].values())}): " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()),
        "metadata:",
        *(f"  {k}: {v}" for k, v in sorted(info["metadata"].items())),
    ]
    return "\n".join(lines)
