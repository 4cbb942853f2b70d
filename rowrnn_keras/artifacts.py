"""Atomic file writes: a reader sees the old complete file or the new complete file, never half."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import InputError


def check_writable(target: Path, suffix: str) -> None:
    """Refuse, before any slow work, an output path that is of the wrong kind or cannot be written."""
    if target.is_dir():
        raise InputError(f"{target}: is a directory; give the {suffix} file to write")
    if target.suffix != suffix:
        raise InputError(f"{target}: output file must end in {suffix}")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{target}: {parent} is not a directory")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise InputError(f"{target}: directory {parent} is not writable")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` (same suffix); rename it onto `target` on success.

    On any exception, or if nothing was written, the temporary file is removed and `target`
    is left exactly as it was.
    """
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{target}: is a directory, cannot write a file there")
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=directory
        )
    except OSError as exc:
        raise InputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise RuntimeError(f"{target}: nothing was written")
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, payload: object) -> Path:
    return write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")
