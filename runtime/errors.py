"""The two errors every rowrnn layer raises on purpose.

`InputError` is bad input (a file, an array, an option): callers fix their input.
`CheckFailed` is a check that ran and said no (parity, an accuracy bound): the input was
well-formed but the result is not trustworthy. The CLI maps them to exit codes 2 and 1.
"""

import os
from pathlib import Path


class InputError(ValueError):
    """Bad input: the message names the input and what is wrong with it."""


class CheckFailed(RuntimeError):
    """A validation check ran and failed (e.g. ONNX/Keras parity)."""


def one_line(message: object, limit: int | None = None) -> str:
    """`message` with all whitespace runs folded to single spaces, optionally cut at `limit`."""
    text = " ".join(str(message).split())
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def require_file(path: "str | os.PathLike[str]", expected: str, hint: str = "") -> Path:
    """`path` as a Path if it is an existing, non-empty regular file; else an InputError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file{hint}")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected {expected}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file, expected {expected}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty, expected {expected}")
    return path
