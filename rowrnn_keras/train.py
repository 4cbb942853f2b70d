"""Training: `fit_model` runs model.fit with the run's callbacks; `run_training` selects the best
epoch, tests it once and publishes every artifact. The input pipeline is in `pipeline`, device
placement in `placement`, the callbacks in `callbacks`, evaluation in `evaluate`."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rowrnn_keras import plots
from rowrnn_keras.backup import BEST_MODEL_FILE, Backup, discard, fingerprint, recover, resume_point
from rowrnn_keras.callbacks import ResumableBackup, ScalarTensorBoard
from rowrnn_keras.config import CURVES_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, Cluster, TrainConfig
from rowrnn_keras.evaluate import evaluate_model
from rowrnn_keras.model import compile_model, create_model
from rowrnn_keras.pipeline import Splits, for_devices, make_splits, steps_per_epoch, training_dataset
from rowrnn_keras.placement import Placement, place, without_distribution
from runtime.errors import InputError
from runtime.files import private_prefix, remove_leftovers, sha256_file, write_json_atomic
from runtime.mnist import Mnist

VALIDATION_BATCH = 1024  # images per validation batch (at most): forward only, so larger than training's


def seed_everything(seed: int) -> None:
    """Same seed on the same machine gives the same history."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass
class FitResult:
    model: keras.Model  # the best epoch's
    history: dict[str, list[float]]
    state: dict  # the backup state after the last epoch (rowrnn_keras.backup)
    steps_per_epoch: int


def new_state(data_and_config: dict) -> dict:
    """A fresh run's backup state (rowrnn_keras.backup); `data_and_config`: `fingerprint(...)`."""
    return {
        "fingerprint": data_and_config,
        "epoch": 0,
        "finished": False,
        "history": {},
        "checkpoint_best": None,
        "early_stopping": {},
        "train_seconds": 0.0,
        "epoch_seconds": [],
        "resumed_at": [],
        "weights_sha256": None,
        "run_name": time.strftime("run-%Y%m%d-%H%M%S"),
    }


def fit_model(
    config: TrainConfig,
    splits: Splits,
    checkpoint: Path,
    backup_to: Path,
    state: dict,
    verbose: int | str = "auto",
    *,
    placement: Placement | None = None,
    resume: Backup | None = None,
    tensorboard: Path | None = None,
) -> FitResult:
    """Train with model.fit; return the best-validation-accuracy model and the history.

    A backup is written into `backup_to` at every epoch end; `state` is what it carries besides
    the model (`new_state`, or the state of `resume`, the backup training continues from).
    `tensorboard`: a directory for Keras's TensorBoard logs, one subdirectory per run.
    """
    placement = placement or place(config)
    _, processes, local_devices = placement.shard
    steps = steps_per_epoch(len(splits.train[0]), config.batch_size, processes * local_devices)
    if resume is not None:
        if (resume.path / BEST_MODEL_FILE).exists():  # ModelCheckpoint carries on from the best so far
            shutil.copyfile(resume.path / BEST_MODEL_FILE, checkpoint)
        if resume.finished:  # killed after training, before publishing: nothing left to train
            return FitResult(load_best(checkpoint), state["history"], state, steps)
    seed_everything(config.seed)
    with placement.scope():
        model = compile_model(create_model(config), config, steps)
    best = keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_accuracy", mode="max", save_best_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience)
    callbacks: list[keras.callbacks.Callback] = [best, stopping]
    if tensorboard is not None:
        callbacks.append(ScalarTensorBoard(tensorboard / state["run_name"], write_graph=False))
    callbacks.append(ResumableBackup(resume, backup_to, state, checkpoint, best, stopping))
    first_epoch = resume.epoch if resume else 0
    model.fit(
        training_dataset(config, *splits.train, first_epoch=first_epoch, shard=placement.shard),
        steps_per_epoch=steps,
        epochs=config.epochs,
        initial_epoch=first_epoch,
        # every process feeds all of it: the means Keras reports over the copies are the means over it
        validation_data=splits.validation,
        # a multiple of this process's devices, which each take an equal part of every batch
        validation_batch_size=VALIDATION_BATCH // placement.local_devices * placement.local_devices,
        shuffle=False,  # the dataset shuffles itself, per epoch
        callbacks=callbacks,
        verbose=verbose,
    )
    return FitResult(load_best(checkpoint), state["history"], state, steps)


def load_best(checkpoint: Path) -> keras.Model:
    """The best epoch's model, process-local: each process tests it on its own."""
    with without_distribution():
        return keras.models.load_model(checkpoint)


def where_to_start(
    out_dir: Path, config: TrainConfig, mnist: Mnist, restart: bool, cluster: Cluster
) -> tuple[Backup | None, dict]:
    """The backup this process would resume from (None: afresh), and what it tells the others of it
    (`describe_resume`), changing nothing: a refused launch leaves the backup as it was (--restart
    discards it only once the launch is agreed on). Process 0 finishes a half-done swap of its
    backup first (`backup.recover`), so every process reads the same one. In a cluster, a backup
    another process cannot use is said to process 0, which refuses the whole launch with it."""
    if cluster.is_chief:
        recover(out_dir)
    try:
        found = resume_point(out_dir, config, mnist, restart, readonly=True)
    except InputError as exc:
        if cluster.is_chief or not cluster.is_multi_process:
            raise
        return None, {"error": str(exc)}
    return found, describe_resume(found)


def describe_resume(resume: Backup | None) -> dict:
    """Where a run starts: the epochs its backup finished and the weights it holds (none: afresh)."""
    return {
        "epoch": resume.epoch if resume else 0,
        "weights_sha256": resume.state.get("weights_sha256") if resume else None,
    }


def backend_versions(backend: str) -> dict[str, str]:
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    if backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    return versions


def history_csv(history: dict[str, list[float]]) -> str:
    columns = ["epoch", *sorted(history)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for epoch in range(len(next(iter(history.values())))):
        writer.writerow([epoch + 1, *(f"{history[c][epoch]:.6g}" for c in columns[1:])])
    return out.getvalue()


def prepare_out_dir(out_dir: Path) -> Path:
    """Create `out_dir` and a private scratch directory in it; fail early if it is not writable.

    Scratch directories of killed runs (their process is gone) are removed first.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out_dir, ".rowrnn-*")
        return Path(tempfile.mkdtemp(prefix=private_prefix(), dir=out_dir))
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot write to output directory ({exc.strerror or exc})") from None


def publish(source: Path, target: Path) -> None:
    """Atomically move a finished artifact into place (on disk first, so a crash keeps it whole)."""
    if target.is_dir():
        raise InputError(f"{target}: is a directory, cannot write the artifact there")
    with open(source, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(source, target)


def run_training(
    config: TrainConfig,
    mnist: Mnist,
    out_dir: str | Path,
    verbose: int | str = "auto",
    *,
    restart: bool = False,
    tensorboard: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
    cluster: Cluster | None = None,
) -> dict:
    """Train, select the best epoch on validation, test it once, and write every artifact.

    All artifacts are produced in a scratch directory first and moved into `out_dir` only when the
    whole run succeeded, each with an atomic rename: a failed run overwrites nothing. A backup in
    `out_dir/backup` (written at every epoch end, removed once the run has its results) lets the
    same call continue a killed run; `restart` discards it instead. `tensorboard`: a directory
    for TensorBoard logs. `log` receives the one-line notice that a run resumes. `cluster`: this
    process's place in a multi-process `--distribute data-parallel` run (only process 0 writes).
    """
    out_dir = Path(out_dir)
    cluster = cluster or Cluster()
    # The processes of a cluster join before anything runs, and must agree where they start.
    found, start = where_to_start(out_dir, config, mnist, restart, cluster)
    placement = place(config, cluster, start)
    # Only the chief writes into out_dir; the other processes write the same files to a private place.
    work_dir = out_dir if placement.is_chief else Path(tempfile.mkdtemp(prefix="rowrnn-process-"))
    scratch = prepare_out_dir(work_dir)
    try:
        if placement.is_chief:
            if restart:  # the launch is agreed on: now the backup goes
                discard(out_dir)
            resume = found
        else:  # read again: process 0 may have finished a swap of its backup meanwhile; the same one
            resume = resume_point(out_dir, config, mnist, restart, readonly=True)
            if describe_resume(resume) != start:
                raise InputError(f"{out_dir}: the backup changed while the processes joined; run every process again")
        state = resume.state if resume else new_state(fingerprint(config, mnist))
        if resume is not None:
            state["resumed_at"].append(resume.epoch + 1)
            log(
                f"resuming at epoch {resume.epoch + 1}/{config.epochs}"
                if not resume.finished
                else f"resuming after epoch {resume.epoch}/{config.epochs}: training had finished; evaluating"
            )
        splits = for_devices(make_splits(mnist, config), placement.local_devices)
        session_started = time.perf_counter()
        with placement.collectives():
            try:
                fit = fit_model(
                    config,
                    splits,
                    scratch / MODEL_FILE,
                    work_dir,
                    state,
                    verbose,
                    placement=placement,
                    resume=resume,
                    tensorboard=None
                    if tensorboard is None
                    else Path(tensorboard)
                    if placement.is_chief
                    else work_dir / "logs",
                )
            except Exception:
                placement.failed()  # a lost process: the watch ends this one, in one line
                raise
        placement.training_over()
        with without_distribution():  # each process tests the best model on its own
            test = evaluate_model(fit.model, *splits.test)
        history = fit.history
        # The run has its results: from here a kill loses it (seconds), but a later run with other
        # settings into the same directory finds no backup to refuse.
        discard(work_dir)
        best_epoch = int(np.argmax(history["val_accuracy"]))
        epochs_run = len(history["loss"])
        metrics = {
            "test_accuracy": test.accuracy,
            "val_accuracy": float(history["val_accuracy"][best_epoch]),
            "best_epoch": best_epoch + 1,
            "epochs": epochs_run,
            # every session's finished epochs (a killed session's unfinished epoch is not counted)
            "train_seconds": round(state["train_seconds"], 3),
            "seconds_per_epoch": round(state["train_seconds"] / epochs_run, 3),
            "epoch_seconds": state.get("epoch_seconds", []),  # each finished epoch's (the first compiles)
            "session_seconds": round(time.perf_counter() - session_started, 3),
            "resumed": bool(state["resumed_at"]),
            "resumed_at_epochs": state["resumed_at"],
            "backend": placement.backend,
            "strategy": placement.kind,
            "devices": placement.devices,
            "replicas": placement.replicas,
            "processes": placement.cluster.num_processes,
            "steps_per_epoch": fit.steps_per_epoch,
            "final_weights_sha256": state["weights_sha256"],  # the last epoch's, not the best one's
            "train_images": len(splits.train[0]),
            "validation_images": len(splits.validation[0]),
            "test_images": len(splits.test[0]),
            "data_source": mnist.source,
            "train_data_sha256": state["fingerprint"]["train_data_sha256"],  # the data, named without a path
            # published last, so a kill between renames can pair new reports with an older model:
            # this says which model they describe
            "model_sha256": sha256_file(scratch / MODEL_FILE),
            "test_per_class_accuracy": test.per_class_accuracy,
            "config": config.to_dict(),
            "versions": backend_versions(placement.backend),
        }
        (scratch / HISTORY_FILE).write_text(history_csv(history))
        plots.save_curves(history, scratch / CURVES_FILE)
        write_json_atomic(scratch / METRICS_FILE, metrics)
        # Everything exists: publish with same-filesystem renames, the model last.
        for name in (HISTORY_FILE, CURVES_FILE, METRICS_FILE, MODEL_FILE):
            publish(scratch / name, work_dir / name)
        return metrics
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not placement.is_chief:
            shutil.rmtree(work_dir, ignore_errors=True)
