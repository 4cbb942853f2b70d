"""The backup `rowrnn train` keeps in its output directory, so a killed run can be resumed.

`OUT/backup/` holds one complete training state, written at every epoch end:

    latest.weights.h5        model and optimizer variables   } the names Keras's BackupAndRestore
    training_metadata.json   {"epoch": finished epochs, ...} } reads back
    best.keras               the best model so far (ModelCheckpoint's file)
    state.json               what the model does not hold: the configuration and a digest of the
                             training data it belongs to, the history, the early-stopping state, and
                             the sha256 of every other file

Keras 3 overwrites `latest.weights.h5` in place and then the metadata: a kill during the write
leaves a truncated HDF5 file that crashes the next run, or weights one epoch ahead of their epoch
number. Here each backup is built whole in a private scratch directory and swapped in with two
renames (`backup` -> `backup.old`, scratch -> `backup`); a reader that finds only `backup.old`
(a kill between the renames) takes it back. So the backup on disk is always one complete state.

No TensorFlow here: the CLI checks a backup before the slow import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rowrnn_keras.config import TrainConfig
from runtime.errors import InputError, one_line
from runtime.files import private_prefix, sha256_file
from runtime.mnist import Mnist

BACKUP_DIR = "backup"
OLD_SUFFIX = ".old"
STATE_FILE = "state.json"
WEIGHTS_FILE = "latest.weights.h5"  # keras.callbacks.BackupAndRestore's names
KERAS_METADATA_FILE = "training_metadata.json"
BEST_MODEL_FILE = "best.keras"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Backup:
    """A complete backup read from disk."""

    path: Path
    state: dict

    @property
    def epoch(self) -> int:
        """Epochs finished; a resumed run starts at this (0-based) epoch."""
        return int(self.state["epoch"])

    @property
    def finished(self) -> bool:
        """Training ended (every epoch ran, or early stopping) but the artifacts were not published."""
        return bool(self.state["finished"])


def fingerprint(config: TrainConfig, mnist: Mnist) -> dict:
    """What a backup must match to be resumed: every training setting and the training data."""
    images, labels = mnist.train_images, mnist.train_labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    digest = hashlib.sha256()
    for array in (images, labels):
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(memoryview(array).cast("B"))  # no copy: these arrays are C-contiguous slices
    return {"config": config.to_dict(), "train_data_sha256": digest.hexdigest()}


def backup_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / BACKUP_DIR


def recover(out_dir: str | os.PathLike) -> Path:
    """Finish or undo a swap a kill interrupted; return where the (possibly absent) backup is."""
    current = backup_path(out_dir)
    old = current.with_name(BACKUP_DIR + OLD_SUFFIX)
    if current.is_dir():
        if old.exists():  # the swap finished; removing the previous state did not
            shutil.rmtree(old, ignore_errors=True)
    elif old.is_dir():  # killed between the two renames: the previous state is the complete one
        os.replace(old, current)
    return current


def read_backup(out_dir: str | os.PathLike, readonly: bool = False) -> Backup | None:
    """The backup in `out_dir`, or None. One that cannot be read is refused, not ignored.

    `readonly`: read another process's backup (a multi-worker chief's) without repairing it.
    """
    if not readonly:
        return read_backup_at(recover(out_dir))
    current = backup_path(out_dir)
    newest = lambda: current if current.is_dir() else current.with_name(BACKUP_DIR + OLD_SUFFIX)  # noqa: E731
    try:
        return read_backup_at(newest())
    except InputError:  # its owner may have been finishing a swap (backup.old renamed to backup) meanwhile
        return read_backup_at(newest())


def read_backup_at(path: Path) -> Backup | None:
    """The backup in directory `path` (None if there is none), its files checked against state.json."""
    if not path.is_dir():
        return None
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {state.get('format_version')!r}, expected {FORMAT_VERSION}")
        for name, digest in state["files"].items():
            if sha256_file(path / name) != digest:
                raise ValueError(f"{name} does not match its recorded sha256")
        int(state["epoch"]), bool(state["finished"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{path}: cannot resume from this backup ({one_line(exc, limit=200)}); add --restart to discard it"
        ) from None
    return Backup(path, state)


def describe_differences(expected: dict, found: dict) -> list[str]:
    """'epochs 5 (backup: 20)' for every setting that differs; the data as one item."""
    differences = []
    ours, theirs = expected["config"], found.get("config", {})
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            differences.append(f"{key} {ours.get(key)} (backup: {theirs.get(key)})")
    if expected["train_data_sha256"] != found.get("train_data_sha256"):
        differences.append("other training data")
    return differences


def resume_point(
    out_dir: str | os.PathLike, config: TrainConfig, mnist: Mnist, restart: bool = False, readonly: bool = False
) -> Backup | None:
    """The backup this run continues from, or None to start afresh.

    A backup of another configuration or other data is refused (one line naming what differs);
    `restart` discards whatever backup there is (`readonly`: ignores it).
    """
    if restart:
        if not readonly:
            discard(out_dir)
        return None
    backup = read_backup(out_dir, readonly)
    if backup is None:
        return None
    differences = describe_differences(fingerprint(config, mnist), backup.state["fingerprint"])
    if differences:
        raise InputError(
            f"{backup.path}: an interrupted run with other settings left this backup "
            f"({'; '.join(differences)}); run that command again to resume it, or add --restart to discard it"
        )
    return backup


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk (a power cut, not only a kill, keeps the backup)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_backup(out_dir: str | os.PathLike, fill: Callable[[Path], None], state: dict) -> Path:
    """Write a new complete backup: `fill(scratch)` writes the files, then `state.json` records
    their digests, and the whole directory replaces the previous backup at once."""
    out_dir = Path(out_dir)
    scratch = Path(tempfile.mkdtemp(prefix=private_prefix() + "backup-", dir=out_dir))
    try:
        fill(scratch)
        files = sorted(p.name for p in scratch.iterdir())
        state = {
            **state,
            "format_version": FORMAT_VERSION,
            "files": {name: sha256_file(scratch / name) for name in files},
        }
        (scratch / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        for name in (*files, STATE_FILE):
            fsync_path(scratch / name)
        return swap_in(scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # gone already unless something failed


def swap_in(scratch: Path, out_dir: Path) -> Path:
    """`scratch` becomes the backup; at every instant one complete backup is on disk (`recover`)."""
    current = backup_path(out_dir)
    old = current.with_name(BACKUP_DIR + OLD_SUFFIX)
    if current.is_dir():
        if old.exists():
            shutil.rmtree(old)
        os.replace(current, old)
    os.replace(scratch, current)
    fsync_path(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return current


def discard(out_dir: str | os.PathLike) -> None:
    """Remove the backup (a finished run, or --restart). Each directory is renamed away before it is
    deleted, so a kill midway leaves a complete backup or none, never half of one; the previous
    state goes first, or `recover` would bring it back."""
    current = backup_path(out_dir)
    for path in (current.with_name(BACKUP_DIR + OLD_SUFFIX), current):
        if not (path.exists() or path.is_symlink()):
            continue
        trash = path.with_name(f"{private_prefix()}discarded-{path.name}")  # a dead run's is a leftover
        os.replace(path, trash)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash)
        else:
            trash.unlink()
