"""Atomic file writes: a reader sees the old complete file or the new complete file, never half.

Temporary files and scratch directories carry the writing process's pid in their name
(`.rowrnn-<pid>-`): a process killed with SIGKILL cannot clean up after itself, so the next
writer into the same place removes what dead processes left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import InputError

LEFTOVER_PID = re.compile(r"\.rowrnn-(\d+)-")


def private_prefix() -> str:
    """Name part that marks a temporary as this process's."""
    return f".rowrnn-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(directory: Path, pattern: str) -> None:
    """Delete entries matching `pattern` in `directory` that a dead rowrnn process left behind."""
    for leftover in directory.glob(pattern):
        match = LEFTOVER_PID.search(leftover.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def check_writable(target: Path, suffix: str) -> None:
    """Refuse, before any slow work, an output file path of the wrong kind or in an unwritable place."""
    if target.is_dir():
        raise InputError(f"{target}: is a directory; give the {suffix} file to write")
    if target.suffix != suffix:
        raise InputError(f"{target}: output file must end in {suffix}")
    check_directory_writable(target.parent, target)


def check_directory_writable(directory: Path, output: Path | None = None) -> None:
    """Refuse, before any slow work, an output directory that cannot be created or written to."""
    name = output or directory
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{name}: {directory} is not a directory")
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{name}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{name}: directory {existing} is not writable")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
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
        remove_leftovers(directory, f".{target.stem}.rowrnn-*.tmp{target.suffix}")
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.stem}{private_prefix()}", suffix=f".tmp{target.suffix}", dir=directory
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike[str], payload: object) -> Path:
    return write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")
