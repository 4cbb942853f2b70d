"""The row-by-row LSTM classifier: one 28-pixel image row per time step."""

from __future__ import annotations

import os
import zipfile

import keras

from rowrnn_keras.config import TrainConfig
from runtime.contract import IMAGE_SHAPE, NUM_CLASSES
from runtime.errors import InputError, one_line, require_file


def create_model(config: TrainConfig = TrainConfig()) -> keras.Sequential:
    """Input(28, 28) -> Dense(128) -> LSTM(128) -> Dense(10) logits, uncompiled."""
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE, name="rows"),
            keras.layers.Dense(config.dense_units, name="row_embedding"),
            # unit_forget_bias: the tutorial's forget bias 1.0
            keras.layers.LSTM(config.hidden_units, unit_forget_bias=True, name="lstm"),
            keras.layers.Dense(config.num_classes, name="logits"),
        ],
        name="rowrnn",
    )


def learning_rate_schedule(
    config: TrainConfig, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to `learning_rate`, then cosine decay to zero by the last step."""
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * min(config.warmup_epochs, config.epochs - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup
    )


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """Adam on softmax cross-entropy from logits, reporting accuracy."""
    optimizer = keras.optimizers.Adam(learning_rate_schedule(config, steps_per_epoch), clipnorm=config.clipnorm)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def load_trained_model(path: str | os.PathLike) -> keras.Model:
    """Load a `.keras` file and check it takes [batch, 28, 28] and gives [batch, 10]."""
    path = require_file(path, "a .keras model file", hint=" (train one with `rowrnn train`)")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras model file (expected a .keras zip archive)")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001  Keras raises many types for a damaged archive
        raise InputError(f"{path}: cannot load Keras model ({one_line(exc, limit=300)})") from None
    input_shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    output_shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else None
    if input_shape is None or input_shape[1:] != IMAGE_SHAPE:
        raise InputError(f"{path}: model input shape {input_shape} is not (batch, 28, 28)")
    if output_shape is None or output_shape[1:] != (NUM_CLASSES,):
        raise InputError(f"{path}: model output shape {output_shape} is not (batch, 10)")
    return model


def architecture_layers(model: keras.Model) -> list[dict[str, object]]:
    """The layer stack as data, e.g. [{"layer": "Dense", "units": 128}, {"layer": "LSTM", "units": 128},
    ...]: what code reads (bench's FLOP count, export's `hidden_units`); the ONNX metadata records it
    as `architecture_json`. `units` is None for a layer without units."""
    return [{"layer": type(layer).__name__, "units": getattr(layer, "units", None)} for layer in model.layers]


def format_architecture(layers: list[dict[str, object]]) -> str:
    """ "Dense(128) -> LSTM(128) -> Dense(10)": the display form of `architecture_layers`, for people."""
    return " -> ".join(f"{layer['layer']}({'' if layer['units'] is None else layer['units']})" for layer in layers)


def architecture(model: keras.Model) -> str:
    """The model's display string (the ONNX metadata's `architecture`); code reads `architecture_layers`."""
    return format_architecture(architecture_layers(model))
