"""A killed `rowrnn train` continues where it stopped, exactly as if it had not been stopped.

In-process tests interrupt a run with an exception at an epoch end; subprocess tests SIGKILL the
real command during an epoch and at each stage of writing the backup (a hook kills the process
from inside at that stage and leaves a marker file, so the test knows the kill landed there).
Every resumed run must end with the weights, history and model of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from test_train import event_scalars

import rowrnn_keras.train as train_module
from helpers import FIXTURE_SEED, REPO, assert_one_line_error, rowrnn, synthetic_digits, write_mnist_dir
from rowrnn_keras.backup import (
    BACKUP_DIR,
    OLD_SUFFIX,
    STATE_FILE,
    WEIGHTS_FILE,
    describe_differences,
    discard,
    fingerprint,
    read_backup,
    write_backup,
)
from rowrnn_keras.config import Cluster, TrainConfig
from rowrnn_keras.train import where_to_start
from runtime.errors import InputError
from runtime.mnist import Mnist

# Augmentation on: the resumed run must continue its random draws too.
SMALL = dict(
    hidden_units=8, dense_units=8, epochs=4, batch_size=32, learning_rate=3e-3, validation_size=60, seed=FIXTURE_SEED
)


def small_mnist() -> Mnist:
    return Mnist(*synthetic_digits(400, 1), *synthetic_digits(60, 2), source="synthetic")


class Interrupted(Exception):
    pass


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Make the next run stop with an exception once epoch `epoch` (1-based) is backed up."""
    real = train_module.ResumableBackup.on_epoch_end

    def on_epoch_end(self, index, logs=None):
        real(self, index, logs)
        if index + 1 == epoch:
            monkeypatch.setattr(train_module.ResumableBackup, "on_epoch_end", real)
            raise Interrupted(f"after epoch {epoch}")

    monkeypatch.setattr(train_module.ResumableBackup, "on_epoch_end", on_epoch_end)


def model_weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def assert_same_training(a: Path, b: Path) -> None:
    """Two output directories hold the results of bitwise-identical training."""
    metrics_a, metrics_b = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert metrics_a["final_weights_sha256"] == metrics_b["final_weights_sha256"]  # the last epoch's weights
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()
    for x, y in zip(model_weights(a / "model.keras"), model_weights(b / "model.keras"), strict=True):
        np.testing.assert_array_equal(x, y)  # the best epoch's model
    assert metrics_a["test_accuracy"] == metrics_b["test_accuracy"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_training_quietly(TrainConfig(**SMALL), out)
    return out


def run_training_quietly(config: TrainConfig, out: Path, **kwargs) -> dict:
    return train_module.run_training(config, small_mnist(), out, verbose=0, **kwargs)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, dict, list[str], Path]:
    """A run interrupted after epoch 2, then resumed: (out, metrics, notices, tensorboard dir)."""
    monkeypatch = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("resumed")
    logs = out / "logs"
    interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted):
        run_training_quietly(TrainConfig(**SMALL), out, tensorboard=logs)
    monkeypatch.undo()
    backup = read_backup(out)
    assert backup is not None and backup.epoch == 2 and len(backup.state["history"]["loss"]) == 2
    notices: list[str] = []
    metrics = run_training_quietly(TrainConfig(**SMALL), out, tensorboard=logs, log=notices.append)
    return out, metrics, notices, logs


def test_an_interrupted_run_resumes_and_ends_as_if_never_interrupted(resumed, uninterrupted):
    out, metrics, notices, _ = resumed
    assert notices == ["resuming at epoch 3/4"]
    assert metrics["resumed"] is True and metrics["resumed_at_epochs"] == [3]
    assert [int(row["epoch"]) for row in csv.DictReader((out / "history.csv").open())] == [1, 2, 3, 4]
    assert_same_training(out, uninterrupted)
    assert not (out / BACKUP_DIR).exists()  # a finished run removes its backup
    assert not [p.name for p in out.iterdir() if ".rowrnn-" in p.name]


def test_a_resumed_run_continues_its_tensorboard_run(resumed):
    _, metrics, _, logs = resumed
    assert len(list(logs.iterdir())) == 1  # the same run directory, continued
    scalars = event_scalars(logs)
    assert sorted(scalars["train"]["epoch_loss"]) == [0, 1, 2, 3]
    assert sorted(scalars["validation"]["epoch_accuracy"]) == [0, 1, 2, 3]
    assert len(list((next(logs.iterdir()) / "train").iterdir())) == 2  # one event file per session


def test_a_backup_of_other_settings_is_refused_and_restart_discards_it(tmp_path, monkeypatch, uninterrupted):
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_training_quietly(TrainConfig(**SMALL), tmp_path)
    before = (tmp_path / BACKUP_DIR / STATE_FILE).read_bytes()
    with pytest.raises(InputError) as refused:
        run_training_quietly(TrainConfig(**{**SMALL, "epochs": 5, "learning_rate": 1e-3}), tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "--restart" in message
    assert "epochs 5 (backup: 4)" in message and "learning_rate 0.001 (backup: 0.003)" in message
    assert (tmp_path / BACKUP_DIR / STATE_FILE).read_bytes() == before  # refused, not touched
    with pytest.raises(InputError, match="other training data"):
        train_module.run_training(
            TrainConfig(**SMALL),
            Mnist(*synthetic_digits(400, 9), *synthetic_digits(60, 2), source="other"),
            tmp_path,
            verbose=0,
        )
    notices: list[str] = []
    metrics = run_training_quietly(TrainConfig(**SMALL), tmp_path, restart=True, log=notices.append)
    assert notices == [] and metrics["resumed"] is False
    assert_same_training(tmp_path, uninterrupted)  # started afresh
    assert not (tmp_path / BACKUP_DIR).exists()


def test_keras_own_backup_write_is_not_atomic_which_is_why_ours_replaces_it(tmp_path):
    """Keras 3 writes latest.weights.h5 in place: a kill during the write leaves a truncated file
    and the next run crashes. If this starts to pass, Keras fixed it: ResumableBackup._save_model
    may then be dropped."""

    def model() -> keras.Model:
        built = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        built.compile("adam", "mse")
        return built

    x, y = np.zeros((8, 4)), np.zeros((8, 2))
    model().fit(
        x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)]
    )
    weights = tmp_path / "latest.weights.h5"
    with open(weights, "r+b") as stream:
        stream.truncate(weights.stat().st_size // 2)  # what a kill during Keras's write leaves
    with pytest.raises(OSError, match="truncated file"):
        model().fit(x, y, epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])


# ---------------------------------------------------------------- the backup directory itself (no TensorFlow)


def fake_state(epoch: int) -> dict:
    config = TrainConfig(**SMALL)
    return {"fingerprint": fingerprint(config, small_mnist()), "epoch": epoch, "finished": False, "history": {}}


def write_fake(out: Path, epoch: int) -> None:
    write_backup(out, lambda scratch: (scratch / WEIGHTS_FILE).write_bytes(b"weights %d" % epoch), fake_state(epoch))


def test_a_backup_is_swapped_in_whole_and_a_half_swap_is_recovered(tmp_path):
    write_fake(tmp_path, 1)
    write_fake(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [BACKUP_DIR]  # no scratch, no previous state left
    assert read_backup(tmp_path).epoch == 2
    # killed between the renames: only the previous state, under its old name
    current, old = tmp_path / BACKUP_DIR, tmp_path / (BACKUP_DIR + OLD_SUFFIX)
    os.replace(current, old)
    assert read_backup(tmp_path).epoch == 2 and current.is_dir() and not old.exists()
    # killed while removing the previous state: the new one stands, the rest goes
    write_fake(tmp_path, 3)
    old.mkdir()
    (old / STATE_FILE).write_text("{")
    assert read_backup(tmp_path).epoch == 3 and not old.exists()
    discard(tmp_path)
    assert list(tmp_path.iterdir()) == [] and read_backup(tmp_path) is None


@pytest.mark.parametrize("damage", ["weights-changed", "state-truncated", "state-missing", "other-format"])
def test_a_damaged_backup_is_refused_in_one_line_naming_restart(tmp_path, damage):
    write_fake(tmp_path, 2)
    backup = tmp_path / BACKUP_DIR
    if damage == "weights-changed":
        (backup / WEIGHTS_FILE).write_bytes(b"weights 3")
    elif damage == "state-truncated":
        (backup / STATE_FILE).write_text((backup / STATE_FILE).read_text()[:40])
    elif damage == "state-missing":
        (backup / STATE_FILE).unlink()
    else:
        state = json.loads((backup / STATE_FILE).read_text())
        (backup / STATE_FILE).write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(InputError, match=r"cannot resume from this backup .*; add --restart to discard it$"):
        read_backup(tmp_path)


def test_process_0_finishes_a_half_done_swap_before_saying_where_it_resumes(tmp_path):
    """Every process reads the backup process 0 reports: a `backup.old` left by a kill between the
    renames is renamed back before anyone reads it."""
    write_fake(tmp_path, 2)
    os.replace(tmp_path / BACKUP_DIR, tmp_path / (BACKUP_DIR + OLD_SUFFIX))
    config, chief = TrainConfig(**SMALL), Cluster("127.0.0.1:1", 2, 0)
    found, start = where_to_start(tmp_path, config, small_mnist(), False, chief)
    assert start == {"epoch": 2, "weights_sha256": None} and found.path == tmp_path / BACKUP_DIR
    assert sorted(p.name for p in tmp_path.iterdir()) == [BACKUP_DIR]
    # --restart: the backup is reported as not used, and left where it is (discarded after the join)
    assert where_to_start(tmp_path, config, small_mnist(), True, chief) == (None, {"epoch": 0, "weights_sha256": None})
    assert read_backup(tmp_path).epoch == 2


def test_a_backup_another_process_cannot_read_is_said_to_process_0_not_raised(tmp_path):
    write_fake(tmp_path, 2)
    (tmp_path / BACKUP_DIR / WEIGHTS_FILE).write_bytes(b"weights 3")
    config = TrainConfig(**SMALL)
    found, start = where_to_start(tmp_path, config, small_mnist(), False, Cluster("127.0.0.1:1", 2, 1))
    assert found is None
    assert "cannot resume from this backup (latest.weights.h5 does not match" in start["error"]
    for alone_or_chief in (Cluster(), Cluster("127.0.0.1:1", 2, 0)):  # their own error is theirs to raise
        with pytest.raises(InputError, match="cannot resume from this backup"):
            where_to_start(tmp_path, config, small_mnist(), False, alone_or_chief)


def test_differences_name_each_setting_and_the_data():
    config = TrainConfig(**SMALL)
    ours = fingerprint(config, small_mnist())
    theirs = fingerprint(
        TrainConfig(**{**SMALL, "seed": FIXTURE_SEED + 4}),
        Mnist(*synthetic_digits(400, 3), *synthetic_digits(60, 2), source="x"),
    )
    assert describe_differences(ours, ours) == []
    assert describe_differences(ours, theirs) == [
        f"seed {FIXTURE_SEED} (backup: {FIXTURE_SEED + 4})",
        "other training data",
    ]
    assert fingerprint(TrainConfig(**{**SMALL, "limit": 100}), small_mnist()) != ours


# ---------------------------------------------------------------- the real command, killed


TRAIN_ARGS = ["--limit", 1500, "--epochs", 4, "--hidden-units", 8, "--batch-size", 32]  # 43 steps/epoch


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return write_mnist_dir(tmp_path_factory.mktemp("idx"), n_train=60_000, n_test=10_000, compress=False)


@pytest.fixture(scope="module")
def reference(idx_dir, tmp_path_factory) -> Path:
    """The uninterrupted command: what every killed-and-resumed one must end as."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = rowrnn("train", "--data", idx_dir, "--out", out, *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    return out


def start_training(idx_dir: Path, out: Path, stderr: Path, hook: list | None = None) -> subprocess.Popen:
    """`python -m rowrnn train`, or the same through KILL_HOOK with `hook` = [stage, nth, marker];
    its stderr goes to the file `stderr`."""
    args = ["train", "--data", idx_dir, "--out", out, *TRAIN_ARGS]
    command = [sys.executable, "-m", "rowrnn"] if hook is None else [sys.executable, "-c", KILL_HOOK, *map(str, hook)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Nothing reads the output while the test waits (a full pipe would stall the run): stdout
    # (progress bars) is dropped, stderr kept in a file for the failure message.
    with open(stderr, "wb") as errors:
        return subprocess.Popen(
            [*command, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=errors
        )


def ended(process: subprocess.Popen, stderr: Path, timeout: float) -> tuple[int, str]:
    """(exit code, stderr) once `process` ends; killed, and the test failed, after `timeout` s."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        raise AssertionError(f"training still running after {timeout} s: {stderr.read_text()[-2000:]}") from None
    return process.returncode, stderr.read_text()


def backed_up_epoch(out: Path) -> int | None:
    """The epoch the backup on disk holds, read as a user's `cat` would (None while absent)."""
    try:
        return json.loads((out / BACKUP_DIR / STATE_FILE).read_text())["epoch"]
    except (OSError, ValueError):
        return None


def finish_and_compare(idx_dir: Path, out: Path, reference: Path, resumes_at: int) -> None:
    result = rowrnn("train", "--data", idx_dir, "--out", out, *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    assert f"resuming at epoch {resumes_at}/4" in result.stdout.splitlines()
    assert [int(row["epoch"]) for row in csv.DictReader((out / "history.csv").open())] == [1, 2, 3, 4]
    assert json.loads((out / "metrics.json").read_text())["resumed"] is True
    assert_same_training(out, reference)
    scalars = event_scalars(out / "logs")  # the command's default --tensorboard, continued by each session
    assert sorted(scalars["train"]["epoch_loss"]) == sorted(scalars["validation"]["epoch_accuracy"]) == [0, 1, 2, 3]
    leftovers = [p.name for p in out.iterdir() if ".rowrnn-" in p.name or p.name.startswith(BACKUP_DIR)]
    assert leftovers == [], "the killed runs' scratch and the backup are cleared"


@pytest.mark.slow
def test_sigkill_during_the_third_epoch_then_the_same_command_resumes_it(idx_dir, reference, tmp_path):
    out = tmp_path / "out"
    process = start_training(idx_dir, out, tmp_path / "train.stderr")
    deadline = time.monotonic() + 300
    while backed_up_epoch(out) != 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    process.kill()  # SIGKILL, as soon as epoch 2 is backed up: during epoch 3
    code, stderr = ended(process, tmp_path / "train.stderr", 60)
    assert code == -signal.SIGKILL, stderr
    backup = read_backup(out)
    assert backup is not None and backup.epoch == 2, "the kill must land after epoch 2 and before epoch 3 ended"
    finish_and_compare(idx_dir, out, reference, resumes_at=3)


# Runs `rowrnn train` (argv after the three hook arguments) and SIGKILLs it from inside at one
# stage of its `nth` backup write, after writing `marker`: the test then knows the kill landed there.
KILL_HOOK = r"""
import os, shutil, signal, sys
from pathlib import Path
stage, nth, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
import rowrnn_keras.backup as backup
import rowrnn_keras.callbacks as callbacks
writes = 0

def die():
    marker.write_text(stage)
    os.kill(os.getpid(), signal.SIGKILL)

real_write, real_swap, real_replace, real_rmtree = callbacks.write_backup, backup.swap_in, os.replace, shutil.rmtree

def write_backup(out_dir, fill, state):
    global writes
    writes += 1
    if writes != nth or stage != "weights-half-written":
        return real_write(out_dir, fill, state)
    def fill_then_die(scratch):
        fill(scratch)
        weights = scratch / backup.WEIGHTS_FILE
        with open(weights, "r+b") as stream:
            stream.truncate(weights.stat().st_size // 2)
        die()
    return real_write(out_dir, fill_then_die, state)

def swap_in(scratch, out_dir):
    if writes == nth and stage == "scratch-complete":
        die()
    return real_swap(scratch, out_dir)

def replace(source, target, *args, **kwargs):
    real_replace(source, target, *args, **kwargs)
    if writes == nth and stage == "between-renames" and Path(target).name == backup.BACKUP_DIR + backup.OLD_SUFFIX:
        die()

def rmtree(path, *args, **kwargs):
    if writes == nth and stage == "removing-previous" and Path(path).name == backup.BACKUP_DIR + backup.OLD_SUFFIX:
        for child in sorted(Path(path).iterdir())[:2]:
            child.unlink()
        die()
    return real_rmtree(path, *args, **kwargs)

callbacks.write_backup, backup.swap_in, os.replace, shutil.rmtree = write_backup, swap_in, replace, rmtree
from rowrnn.cli import main
main(sys.argv[4:])
"""

# (stage, which backup write of that process, the epoch a resumed run starts at afterwards)
KILL_STAGES = [
    ("weights-half-written", 3, 3),  # a fresh run, during epoch 3's backup: epoch 2's stands
    ("scratch-complete", 1, 3),  # resumed at 3, its first backup (epoch 3) written but not swapped in
    ("between-renames", 1, 3),  # only backup.old (epoch 2) on disk
    ("removing-previous", 1, 4),  # epoch 3 swapped in, epoch 2 half deleted
]


@pytest.mark.slow
def test_a_kill_at_each_stage_of_the_backup_write_leaves_a_whole_backup(idx_dir, reference, tmp_path):
    out = tmp_path / "out"
    for stage, nth, resumes_at in KILL_STAGES:
        marker = tmp_path / f"landed-{stage}"
        log = tmp_path / f"train-{stage}.stderr"
        code, stderr = ended(start_training(idx_dir, out, log, [stage, nth, marker]), log, 300)
        assert code == -signal.SIGKILL and marker.read_text() == stage, (stage, stderr[-2000:])
        backup = read_backup(out)  # complete: it reads, and its digests match its files
        assert backup is not None and backup.epoch == resumes_at - 1, stage
    finish_and_compare(idx_dir, out, reference, resumes_at=4)


# The command as a user runs it, then which heavy modules it had imported by the time it exited.
WHAT_WAS_IMPORTED = (
    "import sys\nfrom rowrnn.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
    "    print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
)


def test_cli_refuses_a_backup_of_other_settings_in_one_line_before_loading_tensorflow_or_restarts(idx_dir, tmp_path):
    from runtime.mnist import load_mnist_dir

    out = tmp_path / "out"
    out.mkdir()
    config = TrainConfig(epochs=4, batch_size=32, hidden_units=8, limit=1500)
    state = {"fingerprint": fingerprint(config, load_mnist_dir(idx_dir)), "epoch": 2, "finished": False, "history": {}}
    write_backup(out, lambda scratch: None, state)
    args = ["train", "--data", idx_dir, "--out", out, *TRAIN_ARGS[:-2], "--batch-size", 64]
    result = subprocess.run(
        [sys.executable, "-c", WHAT_WAS_IMPORTED, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert_one_line_error(result, f"{out / BACKUP_DIR}", "batch_size 64 (backup: 32)", "--restart")
    assert result.stdout.strip() == "[]"  # refused before the slow import, before any training
    assert read_backup(out).epoch == 2  # and left as it was
    restarted = rowrnn(*args, "--epochs", 1, "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert "resuming" not in restarted.stdout and not (out / BACKUP_DIR).exists()
    assert json.loads((out / "metrics.json").read_text())["resumed"] is False
