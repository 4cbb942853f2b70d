"""`--distribute mirrored`: training over several devices of one machine on TensorFlow.

The mirrored run uses two logical CPU devices (set up in a subprocess before TensorFlow starts),
so it runs on any machine. Training across processes and machines is JAX's (test_jax): TensorFlow's
MultiWorkerMirroredStrategy fails under Keras 3's model.fit (keras-team/keras#20585).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export.api import ValidationSet, export_model, synthetic_rows
from helpers import REPO, assert_one_line_error, rowrnn
from rowrnn_keras.model import load_trained_model

# Two logical CPU devices, then a tiny run of the library on synthetic digits (bars: no augmentation).
# With "resume": the same run again, interrupted after its first epoch and resumed.
TWO_DEVICE_RUN = r"""
import json, sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
from helpers import TINY_TRAIN, synthetic_digits
from rowrnn_keras.config import TrainConfig
from runtime.mnist import Mnist
import rowrnn_keras.train as train
out, distribute, resume = Path(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["resume"]
config = TrainConfig(**TINY_TRAIN, distribute=distribute)
mnist = Mnist(*synthetic_digits(600, 1), *synthetic_digits(200, 2), source="synthetic")  # 3 runs: kept short
runs = [train.run_training(config, mnist, out, verbose=0)]
if resume:
    real = train.ResumableBackup.on_epoch_end
    class Stop(Exception):
        pass
    def stop_after_first(self, epoch, logs=None):
        real(self, epoch, logs)
        train.ResumableBackup.on_epoch_end = real
        raise Stop()
    train.ResumableBackup.on_epoch_end = stop_after_first
    try:
        train.run_training(config, mnist, out / "resumed", verbose=0)
    except Stop:
        pass
    runs.append(train.run_training(config, mnist, out / "resumed", verbose=0))
print(json.dumps(runs))
"""


def two_device_runs(out: Path, distribute: str, *extra: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", TWO_DEVICE_RUN, str(out), distribute, *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mirrored_on_two_devices_trains_saves_exports_resumes_and_matches_one_device(tmp_path):
    mirrored, resumed = two_device_runs(tmp_path / "mirrored", "mirrored", "resume")
    assert mirrored["strategy"] == "mirrored" and mirrored["devices"] == ["CPU:0", "CPU:1"]
    assert mirrored["replicas"] == 2
    # --batch-size is the global batch: as many steps per epoch as on one device
    assert mirrored["steps_per_epoch"] == math.ceil(mirrored["train_images"] / 32)
    # a mirrored run resumes exactly too
    assert resumed["resumed_at_epochs"] == [2] and resumed["final_weights_sha256"] == mirrored["final_weights_sha256"]
    # and it is the same training as on one device, up to the order the replicas' gradients are summed in
    (single,) = two_device_runs(tmp_path / "single", "none")
    assert single["devices"] == ["CPU:0"] and single["replicas"] == 1
    # Measured over seeds 0-7 (both cores and pinned to one): the first epoch's losses are equal, and
    # where the sums run in another order the rounding difference grows to at most 2.1e-3 (relative)
    # by the third epoch. (Adam hides a constant gradient scale, such as a missing 1/replicas: doubled
    # gradients moved the first epoch's losses by only 1e-5-1e-4, so this does not claim to catch it.)
    histories = [list(csv.DictReader((tmp_path / run / "history.csv").open())) for run in ("mirrored", "single")]
    for column in ("loss", "val_loss"):
        mirrored_losses, single_losses = ([float(r[column]) for r in history] for history in histories)
        assert mirrored_losses[0] == pytest.approx(single_losses[0], rel=1e-4)
        assert mirrored_losses == pytest.approx(single_losses, rel=1e-2)
    # so it learned as much. On 600 images a one-device run stops anywhere between 37 % and 69 % (seeds
    # 0-7), too early for a fixed bar (test_train checks a run that learns fully); the two runs'
    # accuracies must agree within 10 of the 200 test images (measured: equal for 7 seeds of 0-7, one
    # image apart for seed 6 on two cores), and beat chance (10 %).
    assert mirrored["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=0.05)
    assert mirrored["test_accuracy"] > 0.1
    model = tmp_path / "mirrored" / "model.keras"
    load_trained_model(model)  # saved as an ordinary model: no strategy needed to load it
    result = export_model(
        model, tmp_path / "mirrored.onnx", validation=ValidationSet(synthetic_rows(), None, "synthetic")
    )
    assert result.report["argmax_agreement"] == 1.0 and result.report["max_abs_logit_diff"] <= 1e-4


def test_an_unknown_strategy_is_refused_in_one_line(tmp_path):
    result = rowrnn("train", "--out", tmp_path / "out", "--distribute", "tpu")
    assert_one_line_error(result, "--distribute must be one of none, mirrored, data-parallel", "'tpu'")
