"""Device placement: where `--backend` and `--distribute` train, and what metrics.json says of it.

TensorFlow: a tf.distribute strategy (none, mirrored). JAX: keras.distribution's DataParallel over
every device of every process (data-parallel; several processes join through JAX's coordinator), or
no distribution at all (none).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import keras
import tensorflow as tf

from rowrnn_keras.cluster import Link, join, stderr_held
from rowrnn_keras.config import Cluster, TrainConfig
from runtime.errors import InputError, one_line


@dataclass(frozen=True)
class Placement:
    """Where training runs and what metrics.json says about it."""

    kind: str  # TrainConfig.distribute
    backend: str  # TrainConfig.backend
    devices: list[str]  # every device that trains, in every process
    replicas: int  # copies of the model that each take a part of every batch
    scope: Callable[[], AbstractContextManager]  # the model is built inside it
    cluster: Cluster  # this process's place (one process: Cluster())
    link: Link | None = None  # the watch over the other processes (several processes)
    local_devices: int = 1  # the devices of this process that each take a part of every batch (data-parallel)

    @property
    def is_chief(self) -> bool:
        """Writes the artifacts and the backup (process 0)."""
        return self.cluster.is_chief

    def collectives(self) -> AbstractContextManager:
        """Around training, where the processes run collectives: their native error logs are held
        back (`cluster.stderr_held`), so a lost process is told in one line."""
        return contextlib.nullcontext() if self.link is None else stderr_held()

    def training_over(self) -> None:
        """No collective is left: a process that ends now is no longer a lost one."""
        if self.link is not None:
            self.link.release()

    def failed(self, seconds: float = 10.0) -> None:
        """Training raised: when a lost process is the cause, let the watch stop this one with the
        line naming it (a collective whose peer died fails with JAX's own, longer message)."""
        if self.link is not None and self.link.wait_for_loss(seconds):
            threading.Event().wait(seconds)  # the watch ends the process meanwhile

    @property
    def shard(self) -> tuple[int, int, int]:
        """(this process, processes, its devices): the part of every training batch this process feeds."""
        return self.cluster.process_id, self.cluster.num_processes, self.local_devices


def short_device(name: str) -> str:
    """'/job:localhost/replica:0/task:0/device:CPU:1' -> 'CPU:1' (other jobs keep job and task)."""
    spec = tf.DeviceSpec.from_string(name)
    prefix = "" if spec.job in (None, "localhost") else f"/job:{spec.job}/task:{spec.task}/"
    return f"{prefix}{spec.device_type}:{spec.device_index or 0}"


def place(config: TrainConfig, cluster: Cluster | None = None, resume: dict | None = None) -> Placement:
    """The placement for `config.backend` and `config.distribute`; `cluster`: this process's place
    in a multi-process run (joined here, before anything else runs on JAX); `resume`: where this
    process would resume (every process of a run must agree: see `cluster.describe_start`)."""
    cluster = cluster or Cluster()
    cluster.check_for(config)
    running = keras.backend.backend()
    if running != config.backend:
        raise InputError(
            f"--backend {config.backend}: this process's Keras runs on {running} "
            "(KERAS_BACKEND must be set before keras is first imported)"
        )
    if config.backend == "jax":
        return place_jax(config, cluster, resume)
    if config.distribute == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return Placement(
            "mirrored",
            "tensorflow",
            [short_device(d) for d in strategy.extended.worker_devices],
            strategy.num_replicas_in_sync,
            strategy.scope,
            cluster,
        )
    gpus = tf.config.list_logical_devices("GPU")
    device = short_device((gpus or tf.config.list_logical_devices("CPU"))[0].name)
    return Placement("none", "tensorflow", [device], 1, tf.distribute.get_strategy().scope, cluster)


def jax_device_names(devices: list) -> list[str]:
    """JAX devices as 'CPU:0' (one process) or 'process 1/CPU:0' (numbered within their process)."""
    processes = {d.process_index for d in devices}
    names, seen = [], dict.fromkeys(processes, 0)
    for device in devices:
        name = f"{device.platform.upper()}:{seen[device.process_index]}"
        seen[device.process_index] += 1
        names.append(name if len(processes) == 1 else f"process {device.process_index}/{name}")
    return names


def join_jax(cluster: Cluster) -> None:
    """Join the other processes through JAX's coordinator (process 0 runs it), with gloo for the
    collectives across processes on CPUs. They all are there already (`cluster.join`); JAX's own
    heartbeat timeout is longer than rowrnn's watch, which reports a lost process first."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        # jax.distributed directly, not keras.distribution.initialize: only this takes the timeouts
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
            initialization_timeout=cluster.connect_timeout_s,
            heartbeat_timeout_seconds=max(60, 3 * cluster.heartbeat_timeout_s),
        )
    except Exception as exc:  # noqa: BLE001 (jaxlib raises its own runtime error types for every failure)
        raise InputError(
            f"process {cluster.process_id} of {cluster.num_processes} could not join the run at "
            f"{cluster.coordinator} within {cluster.connect_timeout_s} s ({one_line(exc, limit=200)})"
        ) from None


@contextlib.contextmanager
def without_distribution() -> Iterator[None]:
    """Build models as plain, process-local ones (JAX): the best model is tested by each process on
    its own; a model under the distribution would give outputs spread over every process."""
    if keras.backend.backend() != "jax":
        yield
        return
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: `taskset` narrows it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def devices_per_process(cores: int, batch_size: int, processes: int) -> int:
    """How many CPU devices each process splits its part of every batch into: as many as its cores,
    but a number that divides that part, so every full batch is trained whole."""
    part = batch_size // processes
    return max(d for d in range(1, max(1, min(cores, part)) + 1) if part % d == 0)


def devices_from_xla_flags() -> int | None:
    """The CPU device count XLA_FLAGS sets (--xla_force_host_platform_device_count=N), if it does."""
    match = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(match.group(1)) if match else None


def split_cpu_into_devices(devices: int) -> None:
    """Give JAX `devices` CPU devices (XLA runs one step of this network on one core: data-parallel
    splits each process's part of the batch over its cores), unless XLA_FLAGS sets their number or
    JAX already runs (a second run in one process keeps the first one's). GPUs are not affected."""
    import jax

    if devices_from_xla_flags() is not None:
        return
    with contextlib.suppress(RuntimeError):  # JAX's backends are up: their devices stay
        jax.config.update("jax_num_cpu_devices", devices)


def check_devices(local: int, total: int, batch_size: int, cluster: Cluster) -> None:
    """Every process has as many devices, a number that divides its part of every batch: true of
    the counts rowrnn chooses, checked for those XLA_FLAGS sets (or a JAX already running keeps)."""
    part = batch_size // cluster.num_processes
    if part % local:
        raise InputError(
            f"process {cluster.process_id} has {local} JAX devices, which do not divide its part of every batch "
            f"({part} images): give XLA_FLAGS' --xla_force_host_platform_device_count a divisor, or leave it out"
        )
    if total != local * cluster.num_processes:
        raise InputError(
            f"the processes have different numbers of JAX devices ({total} in all, {local} in process "
            f"{cluster.process_id}): every process needs the same (XLA_FLAGS' --xla_force_host_platform_device_count)"
        )


def place_jax(config: TrainConfig, cluster: Cluster, resume: dict | None = None) -> Placement:
    link, cores, forced = None, usable_cores(), devices_from_xla_flags()
    if forced is not None and config.distribute == "data-parallel":  # before the processes meet: all refuse it
        check_devices(forced, forced * cluster.num_processes, config.batch_size, cluster)
    if cluster.is_multi_process:
        # every process is there, launched alike (XLA_FLAGS' device count too); each splits into as
        # many devices as the fewest cores allow
        link = join(cluster, {**config.to_dict(), "xla_host_devices": forced, "resume": resume}, cores)
        cores = link.fewest_cores
    if config.distribute == "data-parallel":
        split_cpu_into_devices(devices_per_process(cores, config.batch_size, cluster.num_processes))
    if cluster.is_multi_process:
        join_jax(cluster)
    import jax

    kind = config.distribute
    if kind == "data-parallel":
        devices = keras.distribution.list_devices()
        distribution = keras.distribution.DataParallel(devices=devices)
        # Each process feeds its own part of every global batch (pipeline.training_dataset's shard);
        # Keras would otherwise try to shard the tf.data pipeline itself.
        distribution.auto_shard_dataset = False
        keras.distribution.set_distribution(distribution)
        check_devices(jax.local_device_count(), jax.device_count(), config.batch_size, cluster)
        names = jax_device_names(jax.devices())
        return Placement(kind, "jax", names, len(names), distribution.scope, cluster, link, jax.local_device_count())
    return Placement(kind, "jax", jax_device_names(jax.devices()[:1]), 1, contextlib.nullcontext, cluster)
