"""rowrnn_keras.model: the tutorial's architecture, its schedule, and loading a trained file."""

import keras
import numpy as np
import pytest

from rowrnn_keras.config import TrainConfig
from rowrnn_keras.model import (
    architecture,
    architecture_layers,
    create_model,
    format_architecture,
    learning_rate_schedule,
    load_trained_model,
)
from runtime.errors import InputError


def test_the_default_model_is_the_default_configs_dense_lstm_dense():
    """`create_model()` builds what `TrainConfig()` describes (one place holds the defaults, which
    `rowrnn train` shows too: test_cli), with each layer's weights wired as the architecture says."""
    model, config = create_model(), TrainConfig()
    assert isinstance(model, keras.Sequential)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "LSTM", "Dense"]
    dense, lstm, head = model.layers
    assert (dense.units, lstm.units, head.units) == (config.dense_units, config.hidden_units, config.num_classes)
    assert lstm.cell.unit_forget_bias
    d, h = config.dense_units, config.hidden_units
    # Dense over 28 pixels; LSTM's four gates over [input, state] plus bias; the 10-class head
    assert [w.shape for w in model.get_weights()] == [(28, d), (d,), (d, 4 * h), (h, 4 * h), (4 * h,), (h, 10), (10,)]


def numpy_forward(model: keras.Model, rows: np.ndarray) -> np.ndarray:
    """Dense -> LSTM (gates i, f, c, o; sigmoid and tanh) -> Dense, written out in numpy."""
    (a, a_bias), (kernel, recurrent, bias), (d, d_bias) = (layer.get_weights() for layer in model.layers)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    embedded = rows.astype(np.float64) @ a + a_bias
    state = cell = np.zeros((len(rows), recurrent.shape[0]))
    for step in range(rows.shape[1]):
        i, f, c, o = np.split(embedded[:, step] @ kernel + state @ recurrent + bias, 4, axis=1)
        cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(c)
        state = sigmoid(o) * np.tanh(cell)
    return state @ d + d_bias


def test_forward_pass_is_dense_lstm_dense_row_by_row():
    model = create_model(TrainConfig(hidden_units=16, dense_units=8))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    rows = rng.random((3, 28, 28), dtype=np.float32)
    out = np.asarray(model(rows))
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out, numpy_forward(model, rows), atol=1e-5, rtol=1e-5)
    assert not np.allclose(out[0], out[1])  # the logits depend on the image


def test_architecture_as_data_and_for_people():
    model = create_model(TrainConfig(hidden_units=16, dense_units=8))
    layers = architecture_layers(model)
    assert layers == [{"layer": "Dense", "units": 8}, {"layer": "LSTM", "units": 16}, {"layer": "Dense", "units": 10}]
    assert architecture(model) == format_architecture(layers) == "Dense(8) -> LSTM(16) -> Dense(10)"


def test_forget_gate_bias_starts_at_one():
    lstm = create_model(TrainConfig(hidden_units=4)).layers[1]
    bias = lstm.cell.bias.numpy()  # gates i, f, c, o
    np.testing.assert_array_equal(bias[4:8], 1.0)
    np.testing.assert_array_equal(bias[:4], 0.0)


def test_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(epochs=4, warmup_epochs=1, learning_rate=2e-3)
    schedule = learning_rate_schedule(config, steps_per_epoch=10)
    lr = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert lr[0] == pytest.approx(0.0, abs=1e-9)
    assert lr[1] == pytest.approx(1e-3, rel=1e-5)
    assert lr[2] == pytest.approx(2e-3, rel=1e-5)  # peak = --lr
    assert lr[2] > lr[3] > lr[4]
    assert lr[4] == pytest.approx(0.0, abs=1e-9)


def test_one_epoch_has_no_warmup():
    schedule = learning_rate_schedule(TrainConfig(epochs=1), steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"learning_rate": 0.0}, "learning rate"),
        ({"learning_rate": 5.0}, "learning rate"),
        ({"limit": 1}, "--limit"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_nonsense_config_is_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kwargs)


def test_load_checks_the_model_shapes(tmp_path):
    # missing, empty, broken files: the bad-input battery (test_bad_inputs.py)
    other = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(3)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(InputError, match=r"output shape .* is not \(batch, 10\)"):
        load_trained_model(tmp_path / "other.keras")
    wide = keras.Sequential([keras.Input((28, 30)), keras.layers.LSTM(4), keras.layers.Dense(10)])
    wide.save(tmp_path / "wide.keras")
    with pytest.raises(InputError, match=r"input shape .* is not \(batch, 28, 28\)"):
        load_trained_model(tmp_path / "wide.keras")
    good = create_model(TrainConfig(hidden_units=4, dense_units=4))
    good.save(tmp_path / "good.keras")
    assert load_trained_model(tmp_path / "good.keras").count_params() == good.count_params()
