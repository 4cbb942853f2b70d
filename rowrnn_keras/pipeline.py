"""The input pipeline: the splits `model.fit` sees, and the training batches of every epoch,
shuffled and augmented as pure functions of (seed, epoch, step), so a resumed run is the same run."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf

from rowrnn_keras.config import TrainConfig
from rowrnn_keras.data import split_validation
from runtime.contract import IMAGE_SHAPE, scale_pixels
from runtime.mnist import Mnist


@dataclass(frozen=True)
class Splits:
    """float32 images in [0, 1] and integer labels, ready for `model.fit`."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def validation_size_for(config: TrainConfig, n_train: int) -> int:
    """The configured hold-out, but at most a tenth of a `--limit`ed training set."""
    return max(1, min(config.validation_size, n_train // 10))


def make_splits(mnist: Mnist, config: TrainConfig) -> Splits:
    """Limit, hold out the validation images, scale pixels. The test split is never touched."""
    images, labels = mnist.train_images, mnist.train_labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    (train_x, train_y), (val_x, val_y) = split_validation(
        images, labels, validation_size_for(config, len(images)), config.seed
    )
    as_xy = lambda x, y: (scale_pixels(x), y.astype(np.int32))  # noqa: E731
    return Splits(
        as_xy(train_x, train_y),
        as_xy(val_x, val_y),
        as_xy(mnist.test_images, mnist.test_labels),
    )


def steps_per_epoch(count: int, batch_size: int, devices: int = 1) -> int:
    """Training batches in an epoch of `count` images over `devices` devices in all: the last,
    partial batch only if it leaves every device an image (an empty part would average over nothing)."""
    full, rest = divmod(count, batch_size)
    return full + (rest >= devices)


def for_devices(splits: Splits, devices: int) -> Splits:
    """The splits data-parallel training over `devices` devices of a process validates on: the
    validation images less the last (count mod devices), as each device takes an equal part of every
    batch (Keras splits a process's batch evenly). Training batches are cut in `training_dataset`."""
    images, labels = splits.validation
    whole = len(images) - len(images) % devices
    return replace(splits, validation=(images[:whole], labels[:whole]))


def transform_batch(images: tf.Tensor, shift_x: tf.Tensor, shift_y: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Shift [batch, 28, 28] images by (shift_x, shift_y) pixels and rotate them by `angle`
    radians about their centre: one bilinear resampling, black outside the image."""
    c = (IMAGE_SHAPE[0] - 1) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # ImageProjectiveTransformV3 maps each output pixel (x, y) to the input point it reads:
    # the inverse of "rotate about the centre, then shift", i.e. R(-angle)(p - c - shift) + c.
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [
            cos,
            sin,
            c - cos * (c + shift_x) - sin * (c + shift_y),
            -sin,
            cos,
            c + sin * (c + shift_x) - cos * (c + shift_y),
            zeros,
            zeros,
        ],
        axis=1,
    )
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None],
        transforms=transforms,
        output_shape=IMAGE_SHAPE,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return moved[..., 0]


def augment_batch(
    config: TrainConfig, images: tf.Tensor, seed: tf.Tensor, rows: tuple[tf.Tensor, tf.Tensor] | None = None
) -> tf.Tensor:
    """Random shifts up to `augment_shift` x 28 px and rotations up to `augment_rotation_degrees`
    (uniform, as keras's RandomTranslation and RandomRotation draw them), drawn statelessly from
    `seed`: the same seed gives the same images, in this run or in a resumed one.

    `rows`: (start, batch size) when `images` are rows start.. of a larger batch (a process's part
    of the global batch): they get the draws they would get in the whole batch.
    """
    start, size = rows if rows is not None else (0, tf.shape(images)[0])
    draws = tf.random.stateless_uniform([size, 3], seed, minval=-1.0, maxval=1.0)[start : start + tf.shape(images)[0]]
    shift = config.augment_shift * IMAGE_SHAPE[0]
    angle = math.radians(config.augment_rotation_degrees)
    return transform_batch(images, draws[:, 0] * shift, draws[:, 1] * shift, draws[:, 2] * angle)


def training_dataset(
    config: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    first_epoch: int = 0,
    shard: tuple[int, int, int] = (0, 1, 1),
) -> tf.data.Dataset:
    """The training batches of every epoch from `first_epoch` on, shuffled and augmented.

    Each epoch's order and each batch's augmentation are pure functions of (seed, epoch) and
    (seed, step), not of a random state that advances as the run goes: a run resumed at epoch 8
    sees exactly the batches the interrupted one would have. Augmentation runs in the input
    pipeline, so the saved model is exactly the Dense-LSTM-Dense network.

    `shard`: (this process, processes, devices per process). Each process yields its equal,
    contiguous part of every global batch, augmented as in the whole batch: side by side, in process
    order, the parts are the one-process batch. Every device takes an equal part, so the last batch
    of an epoch loses its last (size mod (processes x devices per process)) images, and is left out
    when that leaves a device none (`steps_per_epoch`).
    """
    count = len(images)
    index, processes, local_devices = shard
    steps = steps_per_epoch(count, config.batch_size, processes * local_devices)
    all_images, all_labels = tf.constant(images), tf.constant(labels)
    shuffle_key = tf.constant([config.seed, 0], tf.int64)
    augment_key = tf.constant([config.seed, 1], tf.int64)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.random.experimental.stateless_fold_in(shuffle_key, epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed)
        return tf.data.Dataset.from_tensor_slices(order).batch(config.batch_size).take(steps)

    def load(step: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        size = tf.shape(indices)[0]
        part = size // (processes * local_devices) * local_devices
        mine = indices[index * part : (index + 1) * part]
        batch = tf.gather(all_images, mine)
        if config.augment_shift or config.augment_rotation_degrees:
            seed = tf.random.experimental.stateless_fold_in(augment_key, step)
            batch = augment_batch(config, batch, seed, rows=(index * part, size))
        return batch, tf.gather(all_labels, mine)

    dataset = (
        tf.data.Dataset.range(first_epoch, config.epochs)
        .flat_map(epoch_batches)
        .enumerate(start=first_epoch * steps)
        .map(load)
        .prefetch(2)
    )
    options = tf.data.Options()
    # Several workers split each batch between them (the default, FILE, needs files to shard).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
