"""rowrnn_keras.model: the tutorial's architecture, its schedule, and loading a trained file."""

import keras
import numpy as np
import pytest

from rowrnn_keras.config import TrainConfig
from rowrnn_keras.model import create_model, learning_rate_schedule, load_trained_model
from runtime.errors import InputError


def test_architecture_is_dense_lstm_dense():
    model = create_model()
    assert isinstance(model, keras.Sequential)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "LSTM", "Dense"]
    dense, lstm, head = model.layers
    assert dense.units == 128 and lstm.units == 128 and head.units == 10
    assert lstm.cell.unit_forget_bias
    # 28*128+128, 4*(128*128 + 128*128 + 128), 128*10+10
    assert model.count_params() == 3712 + 131584 + 1290


def test_forward_shapes_and_logits():
    model = create_model(TrainConfig(hidden_units=16, dense_units=8))
    out = model(np.zeros((3, 28, 28), np.float32))
    assert tuple(out.shape) == (3, 10)
    assert not np.allclose(keras.ops.sum(keras.ops.softmax(out), axis=1), 0)


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


def test_load_checks_file_and_shapes(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_trained_model(tmp_path / "absent.keras")
    with pytest.raises(InputError, match="is a directory"):
        load_trained_model(tmp_path)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a Keras model file"):
        load_trained_model(tmp_path / "junk.keras")
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
