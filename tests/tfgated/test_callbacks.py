"""GateRateLogger, TargetAnnealing, RecalibrateBatchNorm and the gate plots, on tiny gated models."""

import csv
import os

import keras
import numpy as np
import pytest

import tfgated
from tfgated import plots
from tfgated.callbacks import GateRateLogger, RecalibrateBatchNorm, TargetAnnealing, annealed_value, read_gate_csv


def tiny_model(kind="independent", target=0.9):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x, z1 = tfgated.channel_gate(x, 2, kind, context=inputs if kind == "dependent" else None, name="conv1")
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x, z2 = tfgated.residual_gate(x, y, "independent", name="block2")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = tfgated.gated_model(inputs, outputs, [z1, z2], target=target, name="tiny")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)


def test_gate_rate_logger_writes_csv_and_tensorboard(tmp_path, data):
    x, y = data
    model = tiny_model()
    logger = GateRateLogger(x[:32], tmp_path)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[logger])
    epochs, cols = read_gate_csv(tmp_path / "gate_rates.csv")
    assert list(epochs) == [0, 1, 2]  # as Keras counts (and the history CSV)
    assert set(cols) == {"mean", "conv1_gate", "block2_gate"}
    # the last row agrees with an independent measurement in the same (threshold) style
    rates = tfgated.gate_rates(model, x[:32])
    assert cols["conv1_gate"][-1] == pytest.approx(rates["conv1_gate"].mean())
    assert cols["mean"][-1] == pytest.approx(np.concatenate(list(rates.values())).mean())
    assert os.listdir(tmp_path / "gates")  # event files
    # resume: rerunning epoch 3 replaces its row instead of appending
    model.fit(x, y, epochs=4, initial_epoch=2, batch_size=16, verbose=0, callbacks=[logger])
    epochs, _ = read_gate_csv(tmp_path / "gate_rates.csv")
    assert list(epochs) == [0, 1, 2, 3]


def test_gate_rate_logger_accepts_datasets_and_checks_input(tmp_path, data):
    import tensorflow as tf

    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    logger = GateRateLogger(ds, tmp_path, max_examples=25)
    assert logger.probe.shape == (25, 8, 8, 1)
    with pytest.raises(ValueError, match="numpy array"):
        GateRateLogger([1, 2, 3], tmp_path)


def test_target_annealing_by_epochs_and_steps(data):
    x, y = data
    model = tiny_model(target=0.9)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: seen.append(model.get_layer("activation_loss").target)
    )
    anneal = TargetAnnealing(0.9, 0.5, epochs=4)
    hist = model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[anneal, record])
    assert seen == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert hist.history["gate_target"] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    layer = model.get_layer("activation_loss")
    assert float(np.asarray(layer.target_value)) == pytest.approx(0.5)

    model2 = tiny_model(target=1.0)
    anneal = TargetAnnealing(1.0, 0.0, steps=4, schedule="cosine")
    model2.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[anneal])  # 4 steps: 0..3
    assert anneal.current == pytest.approx(annealed_value(1.0, 0.0, 3 / 4, "cosine"))
    assert annealed_value(1.0, 0.0, 0.5, "cosine") == pytest.approx(0.5)
    assert annealed_value(1.0, 0.0, 2.0, "linear") == 0.0


@pytest.mark.slow
def test_target_annealing_changes_training_outcome(data):
    """Annealing to 0.1 closes more gates than training at a fixed 0.9 target."""
    x, y = data
    fixed, annealed = tiny_model(target=0.9), tiny_model(target=0.9)
    annealed.set_weights(fixed.get_weights())
    fixed.fit(x, y, epochs=6, batch_size=16, verbose=0)
    annealed.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[TargetAnnealing(0.9, 0.1, epochs=2)])
    p_fixed = np.concatenate(list(tfgated.gate_probabilities(fixed).values())).mean()
    p_annealed = np.concatenate(list(tfgated.gate_probabilities(annealed).values())).mean()
    assert p_annealed < p_fixed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=1.2, end=0.5, epochs=3), "start"),
        (dict(start=0.9, end=0.5), "exactly one"),
        (dict(start=0.9, end=0.5, epochs=3, steps=3), "exactly one"),
        (dict(start=0.9, end=0.5, epochs=0), "epochs"),
        (dict(start=0.9, end=0.5, steps=10, schedule="exp"), "schedule"),
    ],
)
def test_target_annealing_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TargetAnnealing(**kwargs)


@pytest.mark.slow
def test_plots_write_pngs(tmp_path, data):
    x, y = data
    model = tiny_model(kind="dependent")
    logger = GateRateLogger(x[:16], tmp_path)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[logger, keras.callbacks.CSVLogger(str(tmp_path / "h.csv"))])
    values = plots.gate_probability_values(model, x[:16])
    assert values.size == 16 * 4 + 1  # dependent: 4 gates x 16 examples; independent: 1
    assert ((values >= 0) & (values <= 1)).all()
    for path in (
        plots.plot_polarization(values, tmp_path / "polar.png"),
        plots.plot_polarization(tfgated.gate_probabilities(model), tmp_path / "polar2.png"),
        plots.plot_gate_rates(tmp_path / "gate_rates.csv", tmp_path / "rates.png"),
        plots.plot_history(tmp_path / "h.csv", tmp_path / "history.png"),
    ):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    with pytest.raises(ValueError, match="No gate probabilities"):
        plots.plot_polarization([], tmp_path / "empty.png")
    with open(tmp_path / "gate_rates.csv", newline="") as f:
        assert next(csv.reader(f))[:2] == ["epoch", "mean"]


def test_recalibrate_batch_norm_callback_reestimates_statistics_at_train_end(data):
    x, y = data
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    x = x + 3.0  # far from the initial moving mean 0
    callback = RecalibrateBatchNorm(x, batches=2, batch_size=32)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    assert callback.batches_used == 2
    conv_out = np.asarray(keras.Model(inputs, model.get_layer("conv").output)(x))
    np.testing.assert_allclose(np.asarray(model.get_layer("bn").moving_mean), conv_out.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    import tfgated.train

    assert tfgated.recalibrate_batch_norm is tfgated.train.recalibrate_batch_norm
    with pytest.raises(ValueError, match="batches"):
        RecalibrateBatchNorm(x, batches=0)
