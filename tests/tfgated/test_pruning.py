"""Tests for tfgated.pruning: schedules, rankings, masks during fit, strip/save, resume."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from tfgated.pruning import (
    ConstantSparsity,
    IterativePruningOptions,
    PolynomialDecay,
    PruningSummaries,
    UpdatePruningStep,
    get_pruning_state,
    iterative_pruning,
    prunable_weights,
    prune_low_magnitude,
    prune_once,
    sipa_schedule,
    sparsity_report,
    strip_pruning,
)
from tfgated.pruning.masks import _to_numpy


npv = _to_numpy


def conv_model(seed=0):
    """Tiny CNN with every prunable kernel kind plus a gate-named Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    g = keras.layers.Dense(8, activation="sigmoid", name="block1_gate")(x)
    x = keras.layers.Multiply()([x, g])
    out = keras.layers.Dense(3, activation="softmax", name="fc")(x)
    model = keras.Model(inp, out, name="tiny")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32") + (x[:, 0, 0, 0] > 1).astype("int32")
    return x, y


def kernels(model):
    return {k: npv(v) for k, v in prunable_weights(model).items()}


# ---------------------------------------------------------------- schedules


def test_constant_sparsity_follows_tfmot_semantics():
    s = ConstantSparsity(0.5, begin_step=10, end_step=30, frequency=10)
    assert s(9) == (False, 0.5)
    assert s(10) == (True, 0.5)
    assert s(15) == (False, 0.5)
    assert s(20) == (True, 0.5) and s(30) == (True, 0.5)
    assert s(40)[0] is False
    forever = ConstantSparsity(0.3, frequency=1)
    assert forever(0) == (True, 0.3) and forever(10_000) == (True, 0.3)


def test_polynomial_decay_values():
    s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=3, frequency=10)
    assert s(0) == (True, 0.0)
    should, value = s(50)
    assert should and value == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert s(55)[0] is False
    assert s(100) == (True, pytest.approx(0.8))
    assert s(200) == (False, pytest.approx(0.8))


def test_schedules_serialize_and_validate():
    for sched in (ConstantSparsity(0.25, 5, 50, 5), PolynomialDecay(0.1, 0.6, 0, 10, 2, 1)):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(sched))
        assert type(restored) is type(sched)
        assert restored.get_config() == sched.get_config()
    with pytest.raises(ValueError, match=r"target_sparsity=1\.0"):
        ConstantSparsity(1.0)
    with pytest.raises(ValueError, match="end_step=-1"):
        PolynomialDecay(0.0, 0.5, begin_step=0, end_step=-1)
    with pytest.raises(ValueError, match="frequency=0"):
        ConstantSparsity(0.5, frequency=0)


def test_sipa_schedule():
    s = sipa_schedule(0.7)
    assert s[:7] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.525, 0.55])
    assert s[-1] == pytest.approx(0.7)
    assert all(b > a for a, b in zip(s, s[1:]))
    assert s[-2] == pytest.approx(0.68)  # 2% steps at the end
    assert sipa_schedule(0.5) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


# ---------------------------------------------------------------- rankings


def test_prunable_kernels_skip_gates_bias_and_bn():
    keys = set(prunable_weights(conv_model()))
    assert keys == {"conv/kernel", "dw/kernel", "sep/depthwise_kernel",
                    "sep/pointwise_kernel", "fc/kernel"}


@pytest.mark.parametrize("ranking", ["global_normalized", "global", "layerwise"])
def test_prune_once_reaches_requested_sparsity(ranking):
    model = conv_model()
    gate_before = npv(model.get_layer("block1_gate").kernel)
    prune_once(model, 0.6, ranking=ranking)
    report = sparsity_report(model)
    assert report["total"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    if ranking == "layerwise":
        for key, row in report["layers"].items():
            assert row["sparsity"] == pytest.approx(0.6, abs=1.0 / row["total"] + 1e-9), key
    # gate layer untouched, and no output channel emptied (per-channel guarantee)
    np.testing.assert_array_equal(npv(model.get_layer("block1_gate").kernel), gate_before)
    if ranking != "global":
        for key, w in kernels(model).items():
            channels = w.reshape(-1, w.shape[-1] * (w.shape[-2] if "dw" in key or "depthwise" in key else 1))
            assert (np.abs(channels).sum(axis=0) > 0).all(), key
    with pytest.raises(ValueError, match="ranking="):
        prune_once(conv_model(), 0.5, ranking="magnitude")


def _mlp_with_tiny_layer():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((32,)),
        keras.layers.Dense(64, name="big"),
        keras.layers.Dense(16, name="tiny"),
        keras.layers.Dense(10, name="head"),
    ])
    tiny = model.get_layer("tiny")
    tiny.kernel.assign(npv(tiny.kernel) * 0.01)
    return model


def test_normalized_ranking_never_wipes_a_small_scale_layer():
    raw = prune_once(_mlp_with_tiny_layer(), 0.5, ranking="global")
    assert sparsity_report(raw)["layers"]["tiny/kernel"]["sparsity"] == 1.0  # failure mode

    norm = prune_once(_mlp_with_tiny_layer(), 0.5, ranking="global_normalized")
    layers = sparsity_report(norm)["layers"]
    assert sparsity_report(norm)["total"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert layers["tiny/kernel"]["sparsity"] < 0.6  # balanced, not wiped out
    # the normalization itself (without the per-channel guarantee) balances layers
    plain = prune_once(_mlp_with_tiny_layer(), 0.5, ranking="global_normalized",
                       min_weights_per_channel=0)
    assert sparsity_report(plain)["layers"]["tiny/kernel"]["sparsity"] < 0.6


def test_masks_are_monotone():
    model = conv_model()
    prune_once(model, 0.3)
    first = {k: w == 0 for k, w in kernels(model).items()}
    prune_once(model, 0.5)
    for key, w in kernels(model).items():
        assert (w[first[key]] == 0).all(), key
    assert sparsity_report(model)["total"]["sparsity"] == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------- fit, strip, save


def test_masks_stay_applied_during_fit_and_schedule_prunes(tmp_path):
    x, y = data()
    model = conv_model()
    prune_once(model, 0.5)
    zeros = {k: w == 0 for k, w in kernels(model).items()}
    before = kernels(model)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    after = kernels(model)
    for key in zeros:
        assert (after[key][zeros[key]] == 0).all(), key
        assert not np.allclose(after[key][~zeros[key]], before[key][~zeros[key]]), key

    # prune_low_magnitude with a schedule (tfmot's usage): returns the model, the
    # callback advances the schedule, sparsity rises to the final value during fit
    model2 = conv_model(seed=3)
    same = prune_low_magnitude(
        model2, pruning_schedule=PolynomialDecay(0.0, 0.7, begin_step=0, end_step=4, frequency=1))
    assert same is model2
    model2.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    assert get_pruning_state(model2).step == 8
    assert sparsity_report(model2)["total"]["sparsity"] == pytest.approx(0.7, abs=0.01)

    # strip: plain model, zeros kept through save/load with safe_mode=True
    stripped = strip_pruning(model2)
    assert get_pruning_state(stripped) is None
    path = str(tmp_path / "pruned.keras")
    stripped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert sparsity_report(loaded) == sparsity_report(stripped)
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0),
                               stripped.predict(x[:8], verbose=0), atol=1e-6)

    with pytest.raises(ValueError, match="prune_low_magnitude"):
        plain = conv_model()
        plain.fit(x[:16], y[:16], verbose=0, callbacks=[UpdatePruningStep()])


def test_prune_low_magnitude_is_layerwise_by_default_like_tfmot():
    x, y = data()
    model = prune_low_magnitude(conv_model(), pruning_schedule=ConstantSparsity(0.5, begin_step=0))
    assert isinstance(model, keras.Model) and get_pruning_state(model).ranking == "layerwise"
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    for key, row in sparsity_report(model)["layers"].items():
        assert row["sparsity"] == pytest.approx(0.5, abs=0.06), key
    sipa = prune_low_magnitude(conv_model(), ConstantSparsity(0.5), ranking="global_normalized")
    assert get_pruning_state(sipa).ranking == "global_normalized"


def test_optimizer_keeps_zeros_without_per_batch_work():
    """The mask is a variable constraint: zeros survive any optimizer step, also in a
    model whose train step was traced before pruning, and in a custom loop."""
    x, y = data()
    model = conv_model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # traces the train step unpruned
    prune_once(model, 0.5)
    zeros = {k: w == 0 for k, w in kernels(model).items()}
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # no callback at all
    grads = [keras.ops.ones_like(v) for v in model.trainable_variables]
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for key, w in kernels(model).items():
        assert (w[zeros[key]] == 0).all(), key
    assert "on_train_batch_end" not in vars(UpdatePruningStep)


def test_own_kernel_constraint_kept_and_restored_by_strip(tmp_path):
    keras.utils.set_random_seed(0)
    norm = keras.constraints.NonNeg()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, kernel_constraint=norm, name="fc1"),
                              keras.layers.Dense(2, name="fc2")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    prune_once(model, 0.5)
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    model.fit(x, np.ones((32, 2), "float32"), epochs=2, verbose=0)
    kernel = npv(model.get_layer("fc1").kernel)
    assert (kernel >= 0).all() and np.mean(kernel == 0) >= 0.5
    stripped = strip_pruning(model)
    assert stripped is model and model.get_layer("fc1").kernel.constraint is norm
    assert model.get_layer("fc2").kernel.constraint is None


def test_pruning_summaries_write_sparsity(tmp_path):
    with pytest.raises(ValueError, match="log_dir"):
        PruningSummaries(log_dir="")
    pytest.importorskip("tensorboard", reason="keras.callbacks.TensorBoard writes scalars through tensorboard")
    x, y = data(32)
    model = prune_low_magnitude(conv_model(), ConstantSparsity(0.5, begin_step=0))
    log_dir = str(tmp_path / "logs")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[UpdatePruningStep(), PruningSummaries(log_dir=log_dir)])
    files = [f for _, _, fs in os.walk(log_dir) for f in fs]
    assert any(f.startswith("events.out.tfevents") for f in files)


# ---------------------------------------------------------------- iterative pruning


def test_iterative_pruning_resumes_finished_rounds(tmp_path, capsys):
    x, y = data(48)
    calls = []

    def train_fn(model, callbacks):
        calls.append(1)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)

    def eval_fn(model):
        pred = np.argmax(model(x, training=False), axis=-1)
        return float(np.mean(pred == y))

    ckpt = str(tmp_path / "run")
    rows = iterative_pruning(conv_model(), options=IterativePruningOptions(
        schedule=[0.2, 0.4], train_fn=train_fn, eval_fn=eval_fn, checkpoint_dir=ckpt))
    assert len(calls) == 2
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["sparsity"] == 0.0
    assert [r["sparsity"] for r in rows[1:]] == pytest.approx([0.2, 0.4], abs=0.01)
    assert "Pruning round 2" in capsys.readouterr().out

    model = conv_model(seed=7)  # a fresh process would rebuild the model
    rows = iterative_pruning(model, options=IterativePruningOptions(
        schedule=[0.2, 0.4, 0.6], train_fn=train_fn, eval_fn=eval_fn, checkpoint_dir=ckpt))
    assert len(calls) == 3  # only round 3 ran
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert rows[3]["prunable_nonzero"] < rows[2]["prunable_nonzero"]
    with open(os.path.join(ckpt, "pruning_table.json")) as f:
        assert [r["round"] for r in json.load(f)] == [0, 1, 2, 3]
    assert os.path.exists(os.path.join(ckpt, "pruning_table.csv"))
    assert os.path.exists(os.path.join(ckpt, "round_003.keras"))
    # the round's checkpoint is a plain model with the zeros in it
    loaded = keras.saving.load_model(os.path.join(ckpt, "round_003.keras"), safe_mode=True)
    assert sparsity_report(loaded)["total"]["sparsity"] == pytest.approx(0.6, abs=0.01)

    with pytest.raises(ValueError, match="same run"):
        iterative_pruning(conv_model(), options=IterativePruningOptions(
            schedule=[0.3, 0.4], train_fn=train_fn, eval_fn=eval_fn, checkpoint_dir=ckpt))


def test_iterative_pruning_reinitialize_rewinds_survivors():
    init_model = conv_model(seed=5)
    initial = init_model.get_weights()
    x, y = data(32)
    init_model.fit(x, y, epochs=1, verbose=0)  # "trained" weights differ from initial ones
    rows = iterative_pruning(init_model, options=IterativePruningOptions(
        schedule=[0.5], fine_tune_epochs=0, reinitialize=True, initial_weights=initial, verbose=0))
    assert rows[-1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    init_by_path = dict(zip([w.path for w in init_model.weights], initial))
    for key, var in prunable_weights(init_model).items():
        w = npv(var)
        np.testing.assert_array_equal(w[w != 0], init_by_path[var.path][w != 0])
    with pytest.raises(ValueError, match="initial_weights"):
        iterative_pruning(conv_model(), options=IterativePruningOptions(
            schedule=[0.5], fine_tune_epochs=0, reinitialize=True))


def test_iterative_pruning_takes_epochs_per_round():
    import tensorflow as tf

    x, y = data(32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model = conv_model()
    seen = []

    class CountEpochs(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params["epochs"])

    options = IterativePruningOptions(schedule=[0.2, 0.4, 0.5], fine_tune_epochs=[2, 0, 1],
                                      fit_kwargs={"callbacks": [CountEpochs()], "verbose": 0}, verbose=0)
    rows = iterative_pruning(model, train, None, options)
    assert seen == [2, 1]  # round 2 was not fine-tuned
    assert [r["fine_tune_epochs"] for r in rows] == [0, 2, 0, 1]
    assert rows[-1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    for bad in ([1, 1], [1, -1, 1], [1, 1.5, 1], -1):
        with pytest.raises(ValueError, match="fine_tune_epochs"):
            IterativePruningOptions(schedule=[0.2, 0.4, 0.5], fine_tune_epochs=bad)


def test_iterative_pruning_checks_its_options():
    with pytest.raises(ValueError, match="IterativePruningOptions"):
        iterative_pruning(conv_model(), options={"schedule": [0.5]})
    with pytest.raises(ValueError, match="ranking='magnitude'"):
        IterativePruningOptions(ranking="magnitude")
    with pytest.raises(ValueError, match=r"schedule\[1\]"):
        IterativePruningOptions(schedule=[0.5, 1.0])
    with pytest.raises(ValueError, match="train_data or train_fn"):
        iterative_pruning(conv_model(), options=IterativePruningOptions(schedule=[0.5]))
    assert IterativePruningOptions().schedule == tuple(sipa_schedule())


def test_pruning_table_csv_keeps_keys_that_older_resumed_rows_lack(tmp_path):
    from tfgated.pruning.iterative import _write_table

    old = {"round": 0, "target_sparsity": 0.0, "val_accuracy": 0.9}  # written before rows had epochs
    new = {"round": 1, "target_sparsity": 0.3, "val_accuracy": 0.8, "fine_tune_epochs": 2}
    _write_table(str(tmp_path), [old, new])
    with open(tmp_path / "pruning_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["fine_tune_epochs"] == "" and rows[1]["fine_tune_epochs"] == "2"
    assert json.loads((tmp_path / "pruning_table.json").read_text())[1]["fine_tune_epochs"] == 2
