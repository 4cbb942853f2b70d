"""`rowrnn train --backend jax`: the same run on Keras's JAX backend, in one process or in several
(`--distribute data-parallel`, keras.distribution), tested as real processes on 127.0.0.1.

The processes of a cluster each feed their part of every global batch; only process 0 writes. The
library runs in subprocesses: Keras picks its backend once, at import, and this test process runs
Keras on TensorFlow.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, TINY_TRAIN, assert_one_line_error, free_port, real_mnist_dir, require_module, rowrnn
from rowrnn.extras import select_keras_backend
from rowrnn_keras.config import Cluster, TrainConfig
from rowrnn_keras.pipeline import Splits, for_devices, steps_per_epoch, training_dataset
from rowrnn_keras.placement import check_devices, devices_per_process
from runtime.errors import InputError

ARTIFACTS = {"model.keras", "history.csv", "curves.png", "metrics.json"}
# The run the cluster tests share: 4 000 real images (3 600 train), 2 epochs of 29 global batches of 128.
RUN = ("--limit", "4000", "--epochs", "2", "--batch-size", "128")
LOGS = ("out", "err", "tmp")  # what `start` makes beside a process's LOG path
DEADLINE_S = 900  # a whole two-process run, waiting for the heavy lock included


def need_jax() -> None:
    require_module("jax", "jax", "the jax extra is not installed (pip install 'rowrnn[jax]')")


def train_command(out: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rowrnn",
        "train",
        "--data",
        str(real_mnist_dir()),
        "--out",
        str(out),
        "--backend",
        "jax",
        *RUN,
        *options,
    ]


def start(command: list[str], log: Path, cores: str | None = None, host_devices: int | None = None) -> subprocess.Popen:
    """A training process; stdout and stderr go to files (a full pipe would stall it), its temporary
    files into a directory of its own (LOG.tmp). `cores`: the cores it may run on (`taskset -c`),
    which are also its JAX CPU devices under data-parallel; default all. `host_devices`: set that
    number through XLA_FLAGS instead."""
    log.with_suffix(".tmp").mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(log.with_suffix(".tmp"))}
    env.pop("XLA_FLAGS", None)
    if host_devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={host_devices}"
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, text=True)


def finish(processes: list[subprocess.Popen], deadline_s: float) -> list[int]:
    """Wait for every process until the deadline; kill what is left (then the test fails)."""
    deadline = time.monotonic() + deadline_s
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait(30)


def cluster_options(port: int, processes: int, index: int) -> list[str]:
    return [
        "--distribute",
        "data-parallel",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        str(processes),
        "--process-id",
        str(index),
    ]


def run_cluster(tmp_path: Path, name: str, processes: int = 2, *extra: str) -> tuple[list[int], list[Path]]:
    """`processes` processes of one run, all writing to tmp_path/name, one JAX device each (XLA_FLAGS:
    as machines of one core would have); their exit codes and logs."""
    port = free_port()
    logs = [tmp_path / f"{name}-{i}.log" for i in range(processes)]
    running = [
        start(train_command(tmp_path / name, *cluster_options(port, processes, i), *extra), log, host_devices=1)
        for i, log in enumerate(logs)
    ]
    return finish(running, DEADLINE_S), logs


def final_digest(log: Path) -> str:
    (line,) = [x for x in log.with_suffix(".out").read_text().splitlines() if x.startswith("final weights sha256 ")]
    return line.split()[-1]


def losses(out: Path, column: str) -> list[float]:
    return [float(row[column]) for row in csv.DictReader((out / "history.csv").open())]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: one JAX process, the same run and global batch."""
    need_jax()
    out = tmp_path_factory.mktemp("jax") / "one"
    (code,) = finish([start(train_command(out), out.with_suffix(".log"))], DEADLINE_S)
    assert code == 0, out.with_suffix(".err").read_text()[-3000:]
    return out


@pytest.mark.slow
def test_jax_backend_trains_records_it_and_its_model_exports_with_parity(one_process):
    metrics = json.loads((one_process / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["config"]["backend"] == "jax"
    assert metrics["strategy"] == "none" and metrics["processes"] == 1 and "jax" in metrics["versions"]
    assert {p.name for p in one_process.iterdir()} >= ARTIFACTS
    assert not (one_process / "backup").exists()  # a finished run removes its backup, as on TensorFlow
    assert metrics["epochs"] == 2 and metrics["steps_per_epoch"] == 29
    assert len(metrics["epoch_seconds"]) == 2 and sum(metrics["epoch_seconds"]) == pytest.approx(
        metrics["train_seconds"], abs=0.01
    )
    assert metrics["test_accuracy"] > 0.3  # 2 epochs, measured 0.54; chance is 0.1
    # `rowrnn export` runs Keras on TensorFlow: the JAX-trained file is an ordinary Keras model
    exported = rowrnn("export", one_process / "model.onnx", "--model", one_process / "model.keras")
    assert exported.returncode == 0, exported.stderr[-2000:]
    report = json.loads((one_process / "model.parity.json").read_text())
    assert report["argmax_agreement"] == 1.0 and report["max_abs_logit_diff"] <= 1e-4


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, list[int], list[Path]]:
    """The run of `one_process` on two processes: its directory, exit codes and logs."""
    need_jax()
    tmp_path = tmp_path_factory.mktemp("cluster")
    codes, logs = run_cluster(tmp_path, "two")
    return tmp_path, codes, logs


@pytest.mark.slow
def test_two_processes_train_as_one_and_only_the_chief_writes(two_processes, one_process):
    tmp_path, codes, logs = two_processes
    assert codes == [0, 0], [log.with_suffix(".err").read_text()[-2000:] for log in logs]
    out = tmp_path / "two"
    assert {p.name for p in out.iterdir()} >= ARTIFACTS
    assert not (out / "backup").exists()
    # process 1 wrote nothing anywhere it was told to: it has no output directory of its own
    assert {p.name for p in tmp_path.iterdir()} == {"two", *(f"two-{i}.{s}" for i in range(2) for s in LOGS)}
    assert "process 1: process 0 wrote" in logs[1].with_suffix(".out").read_text()
    assert not list(logs[1].with_suffix(".tmp").glob("rowrnn-process-*"))  # nor is its private place left
    # the weights both processes hold at the end are the same bits
    digests = [final_digest(log) for log in logs]
    assert digests[0] == digests[1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_weights_sha256"] == digests[0]
    assert metrics["strategy"] == "data-parallel" and metrics["processes"] == 2 and metrics["replicas"] == 2
    assert metrics["devices"] == ["process 0/CPU:0", "process 1/CPU:0"]
    assert metrics["steps_per_epoch"] == 29  # --batch-size stays the global batch
    # The same training as one process with the same global batch: each process computed the gradient
    # of its half and they were summed across processes, so only the rounding of those sums differs.
    # Measured: equal to the 6 digits history.csv keeps; stated tolerance 1e-4 relative.
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert losses(out, column) == pytest.approx(losses(one_process, column), rel=1e-4), column
    exported = rowrnn("export", out / "model.onnx", "--model", out / "model.keras")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads((out / "model.parity.json").read_text())["argmax_agreement"] == 1.0


def test_a_process_feeds_its_part_of_every_global_batch():
    """Side by side, in process order, the parts of two processes are the one-process batches,
    augmentation included: the cluster trains on exactly the batches one process would."""
    config = TrainConfig(**{**TINY_TRAIN, "augment_shift": 0.08, "augment_rotation_degrees": 10.0, "epochs": 2})
    rng = np.random.default_rng(0)
    images, labels = rng.random((100, 28, 28), np.float32), rng.integers(0, 10, 100).astype(np.int32)
    whole = list(training_dataset(config, images, labels).as_numpy_iterator())
    parts = [list(training_dataset(config, images, labels, shard=(i, 2, 1)).as_numpy_iterator()) for i in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 8  # 4 batches of 32 (the last of 4) per epoch
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert len(x0) == len(x1) == len(x) // 2
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
        np.testing.assert_allclose(np.concatenate([x0, x1]), x, atol=1e-6)
    plain = TrainConfig(**{**TINY_TRAIN, "epochs": 2})
    assert not np.allclose(next(training_dataset(plain, images, labels).as_numpy_iterator())[0], whole[0][0])


def test_each_process_splits_its_part_of_a_batch_over_its_devices():
    """Two processes of two devices each: every device takes an equal part, so a batch of 30 feeds
    7 images to each device (14 to a process) and its last 2 are left out; the last batch of the
    epoch, 10 images, feeds 2 to each device and leaves out 2."""
    config = TrainConfig(**{**TINY_TRAIN, "batch_size": 30, "epochs": 1})
    rng = np.random.default_rng(0)
    images, labels = rng.random((40, 28, 28), np.float32), rng.integers(0, 10, 40).astype(np.int32)
    whole = list(training_dataset(config, images, labels).as_numpy_iterator())
    parts = [list(training_dataset(config, images, labels, shard=(i, 2, 2)).as_numpy_iterator()) for i in range(2)]
    for (_, y), part0, part1, size in zip(whole, *parts, [14, 4], strict=True):
        assert len(part0[1]) == len(part1[1]) == size
        np.testing.assert_array_equal(np.concatenate([part0[1], part1[1]]), y[: 2 * size])


@pytest.mark.parametrize(
    ("cores", "batch_size", "processes", "devices"),
    [(2, 128, 1, 2), (2, 128, 2, 2), (1, 128, 2, 1), (3, 128, 1, 2), (3, 96, 1, 3), (8, 6, 4, 1), (64, 32, 1, 32)],
)
def test_a_process_takes_a_device_per_core_as_long_as_they_divide_its_part_of_a_batch(
    cores, batch_size, processes, devices
):
    assert devices_per_process(cores, batch_size, processes) == devices


def test_a_last_batch_that_would_leave_a_device_without_an_image_is_left_out():
    """33 images in batches of 32 over 2 devices: the last batch, 1 image, cannot feed both devices
    (an empty part would average over nothing), so each epoch has one batch; 34 images keep two."""
    assert [steps_per_epoch(33, 32, 2), steps_per_epoch(34, 32, 2), steps_per_epoch(33, 32)] == [1, 2, 2]
    config = TrainConfig(**{**TINY_TRAIN, "batch_size": 32, "epochs": 2})
    rng = np.random.default_rng(0)
    images, labels = rng.random((33, 28, 28), np.float32), rng.integers(0, 10, 33).astype(np.int32)
    batches = list(training_dataset(config, images, labels, shard=(0, 1, 2)).as_numpy_iterator())
    assert [len(y) for _, y in batches] == [32, 32]
    assert [len(y) for _, y in training_dataset(config, images, labels).as_numpy_iterator()] == [32, 1, 32, 1]


@pytest.mark.parametrize(
    ("local", "total", "needle"),
    [
        (3, 6, "process 1 has 3 JAX devices, which do not divide its part of every batch (64 images)"),
        (2, 6, "the processes have different numbers of JAX devices (6 in all, 2 in process 1)"),
    ],
)
def test_device_counts_that_cannot_share_the_batch_are_refused(local, total, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        check_devices(local, total, 128, Cluster("h:1", 2, 1))
    check_devices(2, 4, 128, Cluster("h:1", 2, 1))  # what rowrnn chooses itself passes


@pytest.mark.parametrize("cores", [1, 2])
def test_a_process_counts_the_cores_it_may_run_on(cores):
    if len(os.sched_getaffinity(0)) < cores:
        pytest.skip(f"this machine lets the tests use fewer than {cores} cores")
    allowed = ",".join(map(str, sorted(os.sched_getaffinity(0))[:cores]))
    code = "from rowrnn_keras.placement import usable_cores; print(usable_cores())"
    result = subprocess.run(
        ["taskset", "-c", allowed, sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == [str(cores)], result.stderr[-2000:]


def test_a_device_count_from_xla_flags_that_cannot_share_the_batch_is_refused_before_anything_runs(tmp_path):
    need_jax()
    out = tmp_path / "out"
    process = start(train_command(out, "--distribute", "data-parallel"), tmp_path / "three.log", host_devices=3)
    assert finish([process], 300) == [2]
    stderr = (tmp_path / "three.err").read_text()
    assert stderr == (
        "rowrnn: error: process 0 has 3 JAX devices, which do not divide its part of every batch (128 images): "
        "give XLA_FLAGS' --xla_force_host_platform_device_count a divisor, or leave it out\n"
    )
    assert not (out / "backup").exists() and not (out / "metrics.json").exists()


# Where XLA puts the gradient sum of data-parallel training: the partitioner all-reduces the LSTM's
# weight gradients inside the backward loop over the time steps, once per step of that loop.
ALL_REDUCE_PROBE = r"""
import json, os, re
import jax, jax.numpy as jnp, keras, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from rowrnn_keras.model import create_model
model = create_model()
mesh = Mesh(np.array(jax.devices()), ("batch",))
trainable = [v.value for v in model.trainable_variables]
fixed = [v.value for v in model.non_trainable_variables]
def loss(trainable, x, y):
    logits, _ = model.stateless_call(trainable, fixed, x)
    return jnp.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
shard, whole = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
grad = jax.jit(jax.grad(loss), in_shardings=(whole, shard, shard), out_shardings=whole)
hlo = grad.lower(trainable, np.zeros((128, 28, 28), np.float32), np.zeros(128, np.int32)).compile().as_text()
bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
computations = re.split(r"\n(?=\S)", hlo)
def name(c):
    m = re.match(r"(?:ENTRY )?%?([\w.\-]+)", c)
    return m.group(1) if m else ""
counts = {"in_loop_body": 0, "elsewhere": 0}
for c in computations:
    n = len(re.findall(r" all-reduce\(", c))
    counts["in_loop_body" if name(c) in bodies else "elsewhere"] += n
print(json.dumps(counts))
"""


@pytest.mark.slow
def test_xla_all_reduces_the_lstm_gradients_inside_the_backward_loop():
    """Why data-parallel gains little here and two processes are slow (BENCHMARKS.md): the gradient
    sum runs once per time step. When an XLA fixes this, this test fails: measure again."""
    need_jax()
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", ALL_REDUCE_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["in_loop_body"] >= 1, counts


def test_validation_keeps_the_images_its_devices_share_evenly():
    splits = Splits(*[(np.zeros((n, 28, 28), np.float32), np.arange(n)) for n in (10, 7, 3)])
    assert len(for_devices(splits, 2).validation[0]) == 6 and for_devices(splits, 2).validation[1][-1] == 5
    assert len(for_devices(splits, 1).validation[0]) == 7
    assert len(for_devices(splits, 2).train[0]) == 10 and len(for_devices(splits, 2).test[0]) == 3


class Fed(Exception):
    """Raised by the stand-in for model.fit once it has what training would be fed."""


def test_a_process_of_a_cluster_trains_on_its_part_of_every_global_batch(tmp_path, monkeypatch):
    """The wiring, not only the pipeline: what fit_model hands model.fit in process 1 of 2 is that
    process's half of every one-process batch. (Both processes feeding the whole batch would train
    exactly like one process, DataParallel's mean over [batch, batch] being the mean over the batch,
    so the two-process run's loss history and identical weights could not tell.)"""
    import keras
    import tensorflow as tf

    from helpers import synthetic_digits
    from rowrnn_keras.config import Cluster
    from rowrnn_keras.pipeline import make_splits
    from rowrnn_keras.placement import Placement
    from rowrnn_keras.train import fit_model, new_state
    from runtime.mnist import Mnist

    config = TrainConfig(**{**TINY_TRAIN, "epochs": 1})
    splits = make_splits(Mnist(*synthetic_digits(200, 1), *synthetic_digits(20, 2), source="synthetic"), config)
    cluster = Cluster("127.0.0.1:9", num_processes=2, process_id=1)
    placement = Placement("data-parallel", "tensorflow", ["CPU:0"], 2, tf.distribute.get_strategy().scope, cluster)
    fed = []

    def fit(model, x, **kwargs):
        fed.extend(x.take(kwargs["steps_per_epoch"]).as_numpy_iterator())
        raise Fed

    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(Fed):
        fit_model(config, splits, tmp_path / "model.keras", tmp_path, new_state({}), 0, placement=placement)
    whole = list(training_dataset(config, *splits.train).take(len(fed)).as_numpy_iterator())
    assert len(fed) == len(whole) > 1
    for (x, y), (part_x, part_y) in zip(whole, fed, strict=True):
        half = len(y) // 2
        assert len(part_y) == half
        np.testing.assert_array_equal(part_y, y[half : 2 * half])
        np.testing.assert_array_equal(part_x, x[half : 2 * half])


def test_keras_on_another_backend_is_refused_in_one_line():
    import keras  # noqa: F401  (this process runs Keras on TensorFlow)

    need_jax()
    with pytest.raises(InputError, match="Keras already runs on tensorflow in this process; jax was asked for"):
        select_keras_backend("jax")


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--backend", "jax", "--distribute", "mirrored"], "--distribute mirrored needs --backend tensorflow"),
        (["--distribute", "data-parallel"], "--distribute data-parallel needs --backend jax"),
        (["--backend", "pytorch"], "--backend must be one of tensorflow, jax, got 'pytorch'"),
        (["--distribute", "multi-worker"], "--distribute must be one of none, mirrored, data-parallel"),
        (
            ["--backend", "jax", "--distribute", "data-parallel", "--num-processes", "2"],
            "--num-processes 2 needs --coordinator HOST:PORT",
        ),
        (
            ["--backend", "jax", "--num-processes", "2", "--coordinator", "127.0.0.1:9"],
            "--num-processes 2 needs --backend jax --distribute data-parallel",
        ),
        (["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"], "--process-id 2 is out of range"),
        (["--process-id", "-1"], "--process-id -1 is out of range for --num-processes 1 (0-0)"),
        (["--num-processes", "2", "--coordinator", "no-port"], "--coordinator 'no-port' is not HOST:PORT"),
        (
            ["--backend", "jax", "--distribute", "data-parallel", "--num-processes", "3", "--coordinator", "h:1"],
            "--batch-size 128 is not a multiple of --num-processes 3",
        ),
    ],
)
def test_a_launch_that_cannot_work_is_refused_in_one_line_before_anything_runs(tmp_path, options, needle):
    result = rowrnn("train", "--data", tmp_path / "not-read", "--out", tmp_path / "out", *options)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out").exists()


def launch(tmp_path: Path, *processes: tuple[int, int, tuple[str, ...]]) -> list[str]:
    """Processes (process id, process count, other options) of a launch that must be refused before
    anything trains: each exits 2 with one line, within a bound (the 20 s
    --connect-timeout and the imports), and nothing is written. Returns the lines, in order."""
    port = free_port()
    started = time.monotonic()
    running = []
    for n, (index, count, options) in enumerate(processes):
        command = [
            *(sys.executable, "-m", "rowrnn", "train", "--data", str(real_mnist_dir())),
            *("--out", str(tmp_path / "out"), "--batch-size", "96", "--connect-timeout", "20", "--backend", "jax"),
            *cluster_options(port, count, index),
            *options,
        ]
        running.append(start(command, tmp_path / f"launch-{n}.log"))
    bound_s = 150
    codes = finish(running, bound_s)
    assert time.monotonic() - started < bound_s
    errors = [(tmp_path / f"launch-{n}.err").read_text() for n in range(len(processes))]
    assert codes == [2] * len(processes), errors
    for stderr in errors:
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out").exists()
    return [stderr.strip() for stderr in errors]


def test_a_process_that_cannot_reach_the_coordinator_gives_up_in_one_line(tmp_path):
    need_jax()
    (line,) = launch(tmp_path, (1, 2, ()))
    assert "process 1 cannot reach process 0 at 127.0.0.1:" in line and "within 20 s" in line, line


def test_processes_started_with_other_counts_are_refused_in_one_line(tmp_path):
    need_jax()
    for line in launch(tmp_path, (0, 2, ()), (1, 3, ())):
        assert "process 1 was started with --num-processes 3, process 0 with 2: every process needs the same" in line


def test_processes_started_with_other_settings_are_refused_in_one_line(tmp_path):
    need_jax()
    for line in launch(tmp_path, (0, 2, ("--epochs", "3")), (1, 2, ("--epochs", "4"))):
        assert "process 1 was started with other settings: epochs 4 (process 0: 3)" in line, line


def test_a_duplicate_process_id_is_refused_and_a_missing_one_named(tmp_path):
    """Processes 0, 1, 1 of 3: the second 1 is refused at once; process 0 then waits its timeout
    for process 2 and says so; the first 1 learns that the run did not start."""
    need_jax()
    lines = launch(tmp_path, (0, 3, ()), (1, 3, ()), (1, 3, ()))
    assert "process 2 of 3 did not join within 20 s" in lines[0], lines
    duplicate = [line for line in lines[1:] if "another process already joined as process 1" in line]
    waiting = [line for line in lines[1:] if "process 0 at 127.0.0.1:" in line and "did not start the run" in line]
    assert len(duplicate) == len(waiting) == 1, lines


@pytest.mark.slow
def test_two_processes_hold_the_weights_of_one_process_over_two_local_devices(tmp_path, two_processes):
    """The same DataParallel over two devices, in one process given two cores (one JAX CPU device per
    core, no gloo): the processes' parts of each batch and their summed gradients are exactly the
    one-process ones. (The processes run unpinned, on the same cores: a process pinned to one core
    rounds its gradient sums differently.)"""
    _, codes, logs = two_processes
    assert codes == [0, 0]
    out = tmp_path / "local"
    two_cores = ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))
    process = start(train_command(out, "--distribute", "data-parallel"), tmp_path / "local.log", two_cores)
    assert finish([process], DEADLINE_S) == [0], (tmp_path / "local.err").read_text()[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["devices"] == ["CPU:0", "CPU:1"] and metrics["processes"] == 1
    assert metrics["final_weights_sha256"] == final_digest(logs[0])


def backup_epoch(out: Path) -> int | None:
    try:
        return json.loads((out / "backup" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


LOST_BOUND_S = 30  # a killed process's connection closes at once; the others stop within this


def kill_mid_epoch_2(running: list, victim: int, out: Path, err: Path) -> tuple[int, float]:
    """SIGKILL process `victim` once the run is backed up at epoch 1; the other's exit code and
    seconds it took to exit after the kill. Both processes are finished either way."""
    survivor = running[1 - victim]
    try:
        deadline = time.monotonic() + DEADLINE_S
        while backup_epoch(out) != 1 and time.monotonic() < deadline and survivor.poll() is None:
            time.sleep(0.05)
        assert backup_epoch(out) == 1, err.read_text()[-2000:]
        time.sleep(1.0)  # into epoch 2 (~10 s long here)
        running[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code = survivor.wait(timeout=LOST_BOUND_S + 30)
        return code, time.monotonic() - killed_at
    finally:
        finish(running, 30)


@pytest.mark.slow
def test_a_killed_process_stops_the_others_in_one_line_and_a_rerun_ends_as_an_uninterrupted_one(
    tmp_path, two_processes
):
    _, codes, logs = two_processes
    assert codes == [0, 0]
    port = free_port()
    out = tmp_path / "killed"
    command = lambda i, port=port: train_command(out, *cluster_options(port, 2, i))  # noqa: E731
    running = [start(command(i), tmp_path / f"first-{i}.log", host_devices=1) for i in range(2)]
    code, waited = kill_mid_epoch_2(running, 1, out, tmp_path / "first-0.err")
    assert backup_epoch(out) == 1  # the kill landed mid-epoch 2: its end was never backed up
    assert not (out / "metrics.json").exists()
    assert code == 1 and waited < LOST_BOUND_S, (code, waited)
    print(f"process 0 stopped {waited:.1f} s after process 1 was killed")  # shown with -s
    assert (tmp_path / "first-0.err").read_text() == (  # this line and nothing else
        "rowrnn: error: process 1 of 2 was lost (its connection closed); "
        "run every process again to resume from the last backup\n"
    )
    # process 1 run again where it cannot see process 0's backup: it would start afresh while process
    # 0 resumes, so they would wait on each other's collectives; both refuse, in one line, at once
    apart_port = free_port()
    apart = [command(0, apart_port), train_command(tmp_path / "elsewhere", *cluster_options(apart_port, 2, 1))]
    refused = [start(c, tmp_path / f"apart-{i}.log", host_devices=1) for i, c in enumerate(apart)]
    assert finish(refused, 150) == [2, 2]
    for i in range(2):
        line = (tmp_path / f"apart-{i}.err").read_text()
        assert line.startswith("rowrnn: error: process 1 would start afresh, process 0 would resume after epoch 1 (")
        assert line.count("\n") == 1, line
    assert backup_epoch(out) == 1 and not (tmp_path / "elsewhere").exists()
    # process 0 alone given --restart: refused as well, and its backup is still there
    alone_port = free_port()
    alone = [command(0, alone_port) + ["--restart"], command(1, alone_port)]
    refused = [start(c, tmp_path / f"alone-{i}.log", host_devices=1) for i, c in enumerate(alone)]
    assert finish(refused, 150) == [2, 2]
    for i in range(2):
        line = (tmp_path / f"alone-{i}.err").read_text()
        assert line.startswith("rowrnn: error: process 1 would resume after epoch 1 (") and line.count("\n") == 1
        assert "process 0 would start afresh" in line, line
    assert backup_epoch(out) == 1
    # every process run again: they resume from process 0's backup and end as the uninterrupted run
    rerun = [start(command(i), tmp_path / f"again-{i}.log", host_devices=1) for i in range(2)]
    assert finish(rerun, DEADLINE_S) == [0, 0], (tmp_path / "again-0.err").read_text()[-2000:]
    assert "resuming at epoch 2/2" in (tmp_path / "again-0.out").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at_epochs"] == [2]
    uninterrupted = final_digest(logs[0])
    assert [final_digest(tmp_path / f"again-{i}.log") for i in range(2)] == [uninterrupted] * 2
    assert metrics["final_weights_sha256"] == uninterrupted


@pytest.mark.slow
def test_a_killed_process_0_is_named_by_the_others(tmp_path):
    """Process 0 runs the coordinator and writes: the others cannot go on without it, and say so."""
    need_jax()
    port = free_port()
    out = tmp_path / "chief-killed"
    running = [
        start(train_command(out, *cluster_options(port, 2, i)), tmp_path / f"p{i}.log", host_devices=1)
        for i in range(2)
    ]
    code, waited = kill_mid_epoch_2(running, 0, out, tmp_path / "p1.err")
    assert code == 1 and waited < LOST_BOUND_S, (code, waited)
    assert (tmp_path / "p1.err").read_text() == (
        "rowrnn: error: process 0 of 2 was lost (its connection closed); "
        "run every process again to resume from the last backup\n"
    )
