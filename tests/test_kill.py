"""Killing `rowrnn train` or `rowrnn export` never leaves a partial artifact; Ctrl-C is one line.

Each run is stopped with SIGKILL or SIGINT inside a named stage: importing TensorFlow, training,
between two of train's renames, and halfway through writing each of export's artifacts. The runs go
through tests/stage_markers.py, which marks each stage's start and normal end in files and pauses
at the points where a signal must land (with half an artifact's bytes in its temporary file, say).
A kill counts as landed when its stage started and never finished; every test asserts that all its
kills landed, so none can pass by arriving after the work was done.

After each kill every artifact path must hold the previous complete file or a complete new one,
never a partial file; a later run must succeed and clear what the killed ones left behind.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import REPO
from runtime import Predictor
from runtime.files import sha256_file

SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT}
TESTS = Path(__file__).resolve().parent
MARKED_ROWRNN = f"import sys; sys.path.insert(1, {str(TESTS)!r}); import stage_markers; stage_markers.main()"


@dataclass
class Child:
    """A `rowrnn` process whose output goes to files: nobody reads its pipes while the test waits
    on it, and a full pipe would stall it."""

    process: subprocess.Popen
    logs: Path

    def wait(self, timeout: float) -> int:
        """Its exit code; killed (and the test failed) if it is still running after `timeout` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            raise AssertionError(
                f"`{' '.join(map(str, self.process.args[-6:]))}` still running after {timeout} s; "
                f"stderr: {self.stderr()}"
            ) from None

    def stderr(self) -> str:
        return (self.logs / "stderr.txt").read_text()


def start(*args, logs: Path, markers: Path | None = None) -> Child:
    """`rowrnn ARGS` in a new process, its stdout and stderr in files in `logs`; with `markers`,
    through stage_markers (see its docstring)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "ROWRNN_DATA": ""}
    command = [sys.executable, "-m", "rowrnn"]
    if markers is not None:
        env["ROWRNN_STAGE_DIR"] = str(markers)
        command = [sys.executable, "-c", MARKED_ROWRNN]
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout.txt", "wb") as stdout, open(logs / "stderr.txt", "wb") as stderr:
        # A background job inherits SIGINT ignored (so Python installs no handler): restore the default.
        process = subprocess.Popen(
            [*command, *map(str, args)],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    return Child(process, logs)


@dataclass(frozen=True)
class KillPoint:
    stage: str  # the stage that must be running when the signal lands (its markers' name)
    ready: str  # the marker whose appearance sends the signal


@dataclass
class Kills:
    """Which kills landed inside their stage, which did not."""

    landed: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.landed) + len(self.missed)
        return f"{len(self.landed)} of {total} kills landed inside their stage; missed: {self.missed or 'none'}"


def stop_at(child: Child, marker: Path, sig: signal.Signals, timeout: float = 300) -> tuple[int, str]:
    """Send `sig` as soon as `marker` exists (polled every millisecond); return (exit code, stderr).
    A run that neither reaches the marker nor ends within `timeout` s is killed and fails the test."""
    deadline = time.monotonic() + timeout
    while child.process.poll() is None and time.monotonic() < deadline:
        if marker.exists():
            child.process.send_signal(sig)
            break
        time.sleep(0.001)
    code = child.wait(max(deadline - time.monotonic(), 60))
    return code, child.stderr()


def assert_stopped_by(sig: signal.Signals, code: int, stderr: str) -> None:
    """The process ended by the signal: SIGKILL's -9, or Ctrl-C's one line and exit code 130."""
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


TRAIN_ARTIFACTS = {
    "model.keras": complete_keras,
    "history.csv": complete_csv,
    "curves.png": complete_png,
    "metrics.json": complete_json,
}
EXPORT_ARTIFACTS = {"model.onnx": complete_onnx, "model.parity.json": complete_json, "model.int8.onnx": complete_onnx}


def kill_at_each_point(
    out: Path,
    artifacts: dict,
    command: list,
    points: list[KillPoint],
    sig: signal.Signals,
    markers: Path,
    check: Callable[[KillPoint, dict[str, bytes]], None] = lambda point, previous: None,
) -> Kills:
    """Stop `command` at each point in turn; after each, every artifact is whole and `check` holds.
    Then a normal run (`command` minus its last two arguments) succeeds and clears the leftovers."""
    kills = Kills()
    for point in points:
        previous = {name: (out / name).read_bytes() for name in artifacts}
        run_markers = markers / f"{sig.name}-{point.stage}"
        run_markers.mkdir(parents=True)
        code, stderr = stop_at(
            start(*command, logs=run_markers / "logs", markers=run_markers), run_markers / point.ready, sig
        )
        landed = (run_markers / f"{point.stage}.entered").exists() and not (
            run_markers / f"{point.stage}.left"
        ).exists()
        (kills.landed if landed else kills.missed).append(point.stage)
        if not landed:
            continue  # counted; the test fails on the summary
        assert_stopped_by(sig, code, stderr)
        for name, is_complete in artifacts.items():
            try:
                assert_whole(out / name, previous[name], is_complete)
            except Exception as exc:
                raise AssertionError(f"{sig.name} while {point.stage}: {name} is not whole: {exc!r}") from exc
        if point.stage.startswith("write-") and sig == signal.SIGKILL:  # the half-written temporary is still there
            target = Path(point.stage.removeprefix("write-"))
            assert [
                n
                for n in leftovers(out)
                if n.startswith(f".{target.stem}.rowrnn-") and n.endswith(f".tmp{target.suffix}")
            ], leftovers(out)
        if sig == signal.SIGINT:
            assert leftovers(out) == [], "Ctrl-C left temporaries behind"
        check(point, previous)
    again = start(*command[:-2], logs=markers / f"{sig.name}-again")
    assert again.wait(timeout=300) == 0, again.stderr()
    assert leftovers(out) == [], "the killed runs' temporaries were not cleared"
    for name, is_complete in artifacts.items():
        is_complete(out / name)
    return kills


@pytest.mark.slow
@pytest.mark.parametrize("sig_name", list(SIGNALS))
def test_killed_train_keeps_artifacts_whole(tmp_path_factory, mnist_dir, sig_name):
    first = tmp_path_factory.getbasetemp() / "train-kill-first"
    args = ["--data", mnist_dir, "--limit", 600, "--epochs", 3, "--hidden-units", 8, "--batch-size", 64]
    if not first.exists():
        done = start("train", "--out", first, *args, logs=tmp_path_factory.mktemp("train-first-logs"))
        assert done.wait(timeout=300) == 0, done.stderr()
    out = Path(shutil.copytree(first, tmp_path_factory.mktemp("train-kill") / "out"))
    points = [
        KillPoint("importing", "importing.entered"),
        KillPoint("training", "checkpoint-saved"),  # the best epoch so far sits in the scratch directory
        KillPoint("publish-metrics.json", "renamed-metrics.json"),  # between it and the model's rename
    ]

    def between_renames_is_detectable(point: KillPoint, previous: dict[str, bytes]) -> None:
        if point.stage != "publish-metrics.json":
            return
        assert (out / "model.keras").read_bytes() == previous["model.keras"]  # the model was not renamed yet
        metrics = json.loads((out / "metrics.json").read_text())  # but the new reports were
        assert (out / "metrics.json").read_bytes() != previous["metrics.json"]
        assert metrics["model_sha256"] != sha256_file(out / "model.keras")  # and they say so

    # --seed 1 makes every new artifact differ from the previous one
    kills = kill_at_each_point(
        out,
        TRAIN_ARTIFACTS,
        ["train", "--out", out, *args, "--seed", "1"],
        points,
        SIGNALS[sig_name],
        tmp_path_factory.mktemp("train-markers"),
        between_renames_is_detectable,
    )
    assert not kills.missed, kills.summary()


@pytest.mark.parametrize("sig_name", list(SIGNALS))
def test_killed_export_keeps_artifacts_whole(tmp_path_factory, tiny_keras_model, sig_name):
    first = tmp_path_factory.getbasetemp() / "export-kill-first"
    if not first.exists():
        done = start(
            "export",
            first / "model.onnx",
            "--model",
            tiny_keras_model,
            "--quantize",
            "int8",
            logs=tmp_path_factory.mktemp("export-first-logs"),
        )
        assert done.wait(timeout=300) == 0, done.stderr()
    out = Path(shutil.copytree(first, tmp_path_factory.mktemp("export-kill") / "out"))
    points = [
        KillPoint("importing", "importing.entered"),  # nothing written yet (converting: the same)
        *(
            KillPoint(f"write-{name}", f"write-{name}.half")
            for name in ("model.parity.json", "model.onnx", "model.int8.onnx")
        ),
    ]
    # --atol changes the report, so a new one differs from the previous
    command = ["export", out / "model.onnx", "--model", tiny_keras_model, "--quantize", "int8", "--atol", "0.001"]
    kills = kill_at_each_point(
        out, EXPORT_ARTIFACTS, command, points, SIGNALS[sig_name], tmp_path_factory.mktemp("export-markers")
    )
    assert not kills.missed, kills.summary()
