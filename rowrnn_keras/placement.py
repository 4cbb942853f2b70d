"""Device placement: the tf.distribute strategy for `--distribute`, and what metrics.json says of it."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from rowrnn_keras.config import MULTI_WORKER_BUGS, multi_worker_task


@dataclass(frozen=True)
class Placement:
    """Where training runs: the tf.distribute strategy and what metrics.json says about it."""

    strategy: tf.distribute.Strategy
    kind: str  # TrainConfig.distribute
    devices: list[str]
    is_chief: bool  # writes the artifacts (always, except non-chief workers of a multi-worker run)


def short_device(name: str) -> str:
    """'/job:localhost/replica:0/task:0/device:CPU:1' -> 'CPU:1' (other jobs keep job and task)."""
    spec = tf.DeviceSpec.from_string(name)
    prefix = "" if spec.job in (None, "localhost") else f"/job:{spec.job}/task:{spec.task}/"
    return f"{prefix}{spec.device_type}:{spec.device_index or 0}"


MULTI_WORKER_BROKEN = (
    f"--distribute multi-worker: model.fit fails in Keras {keras.__version__} with TensorFlow {tf.__version__} "
    f'("unsupported type PerReplica": {MULTI_WORKER_BUGS}); '
    "--distribute mirrored trains on every device of one machine"
)


def place(kind: str) -> Placement:
    """The strategy for `--distribute`: none (TensorFlow's default: one device), mirrored (every
    local GPU, else every logical CPU device), or multi-worker (TF_CONFIG's cluster)."""
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return Placement(strategy, kind, [short_device(d) for d in strategy.extended.worker_devices], True)
    if kind == "multi-worker":
        is_chief = multi_worker_task().is_chief  # checked before the strategy starts its server
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Placement(strategy, kind, [short_device(d) for d in strategy.extended.worker_devices], is_chief)
    gpus = tf.config.list_logical_devices("GPU")
    return Placement(
        tf.distribute.get_strategy(),
        kind,
        [short_device((gpus or tf.config.list_logical_devices("CPU"))[0].name)],
        True,
    )
