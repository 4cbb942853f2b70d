"""Killing `rowrnn train` or `rowrnn export` never leaves a partial artifact; Ctrl-C is one line.

Each run is stopped with SIGKILL or SIGINT at a point read off the file system (during start-up,
mid-run, while writing). Afterwards every artifact path must hold the previous complete file or a
complete new one, never a partial file; a later run must succeed and clear what the killed ones
left behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import REPO
from runtime import Predictor

SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT}


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "ROWRNN_DATA": ""}
    # A background job inherits SIGINT ignored (so Python installs no handler): restore the default.
    return subprocess.Popen([sys.executable, "-m", "rowrnn", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_when(process: subprocess.Popen, ready: Callable[[], bool], sig: signal.Signals, timeout: float = 120) -> tuple[int, str]:
    """Send `sig` as soon as `ready()` holds (polled every millisecond); return (exit code, stderr)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(sig)
            break
        time.sleep(0.001)
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def after(seconds: float) -> Callable[[], bool]:
    moment = time.monotonic() + seconds
    return lambda: time.monotonic() >= moment


def any_match(directory: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(directory.glob(pattern))


def assert_stopped_cleanly(sig: signal.Signals, code: int, stderr: str, may_finish: bool) -> None:
    if code == 0 and may_finish:
        return  # the run finished before the signal arrived: its artifacts are checked as new ones
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, (code, stderr)
    else:
        assert code == 130, (code, stderr)
        assert stderr.strip().splitlines() == ["rowrnn: interrupted"], stderr


def assert_whole(path: Path, previous: bytes, is_complete: Callable[[Path], None]) -> None:
    """The previous bytes, or a complete new file: never missing, never partial."""
    assert path.exists(), f"{path.name} disappeared"
    if path.read_bytes() != previous:
        is_complete(path)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".rowrnn-" in p.name)


# ---------------------------------------------------------------- completeness of each artifact


def complete_keras(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None and "config.json" in archive.namelist()


def complete_json(path: Path) -> None:
    json.loads(path.read_text())


def complete_csv(path: Path) -> None:
    text = path.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.endswith("\n") and rows and all(len(row) == len(rows[0]) for row in rows)


def complete_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND"


def complete_onnx(path: Path) -> None:
    Predictor(path)  # loads and meets the contract


TRAIN_ARTIFACTS = {"model.keras": complete_keras, "history.csv": complete_csv, "curves.png": complete_png,
                   "metrics.json": complete_json}
EXPORT_ARTIFACTS = {"model.onnx": complete_onnx, "model.parity.json": complete_json, "model.int8.onnx": complete_onnx}


def kill_at_each_point(out: Path, artifacts: dict, command: list, points: dict, sig: signal.Signals) -> None:
    """Stop `command` at each point in turn; after each, every artifact is whole. Then a normal
    run (`command` minus its last two arguments) succeeds and clears the leftovers."""
    for point, ready in points.items():
        previous = {name: (out / name).read_bytes() for name in artifacts}
        code, stderr = stop_when(start(*command), ready(), sig)
        assert_stopped_cleanly(sig, code, stderr, may_finish=point != "starting")
        for name, is_complete in artifacts.items():
            try:
                assert_whole(out / name, previous[name], is_complete)
            except Exception as exc:
                raise AssertionError(f"{sig.name} while {point}: {name} is not whole: {exc!r}") from exc
    again = start(*command[:-2])
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert leftovers(out) == [], "the killed runs' temporaries were not cleared"
    for name, is_complete in artifacts.items():
        is_complete(out / name)


@pytest.mark.slow
@pytest.mark.parametrize("sig_name", list(SIGNALS))
def test_killed_train_keeps_artifacts_whole(tmp_path_factory, mnist_dir, sig_name):
    first = tmp_path_factory.getbasetemp() / "train-kill-first"
    args = ["--data", mnist_dir, "--limit", 600, "--epochs", 3, "--hidden-units", 8, "--batch-size", 64]
    if not first.exists():
        done = start("train", "--out", first, *args)
        assert done.wait(timeout=300) == 0, done.stderr.read()
    out = Path(shutil.copytree(first, tmp_path_factory.mktemp("train-kill") / "out"))
    points = {
        "starting": lambda: after(0.3),
        "training": lambda: any_match(out, ".rowrnn-*/model.keras"),  # best-epoch checkpoint in scratch
        "publishing": lambda: any_match(out, ".rowrnn-*/metrics.json"),  # the last file before the renames
    }
    # --seed 1 makes every new artifact differ from the previous one
    kill_at_each_point(out, TRAIN_ARTIFACTS, ["train", "--out", out, *args, "--seed", "1"], points, SIGNALS[sig_name])


@pytest.mark.parametrize("sig_name", list(SIGNALS))
def test_killed_export_keeps_artifacts_whole(tmp_path_factory, tiny_keras_model, sig_name):
    first = tmp_path_factory.getbasetemp() / "export-kill-first"
    if not first.exists():
        done = start("export", first / "model.onnx", "--model", tiny_keras_model, "--quantize", "int8")
        assert done.wait(timeout=300) == 0, done.stderr.read()
    out = Path(shutil.copytree(first, tmp_path_factory.mktemp("export-kill") / "out"))
    report = out / "model.parity.json"
    report_before = report.read_bytes()
    points = {
        "starting": lambda: after(0.3),
        "report-written": lambda: (lambda: report.exists() and report.read_bytes() != report_before),
        "writing-model": lambda: any_match(out, ".model.rowrnn-*.tmp.onnx"),
    }
    # --atol changes the report, so "report-written" can tell the new one from the previous
    command = ["export", out / "model.onnx", "--model", tiny_keras_model, "--quantize", "int8", "--atol", "0.001"]
    kill_at_each_point(out, EXPORT_ARTIFACTS, command, points, SIGNALS[sig_name])
