"""Tests of the gated ResNet family (zoo/resnet.py).

ImageNet models are built at 64x64 (weights do not depend on the input size) except the
one parameter check at 224x224; ResNet-101 is built once per kind of model.
"""

import numpy as np
import pytest

import keras
import tfgated
from tfgated.zoo import resnet as R

SMALL = (64, 64, 3)
HIDDEN = 16  # GumbelGate's default hidden_units
GATE_BOOKKEEPING = 2  # style_id + threshold_value: non-trainable scalars of every gate
LOSS_BOOKKEEPING = 1  # target_value of the activation_loss layer (non-trainable scalar)

# The block inputs of keras.applications' ResNets: (stage, input channels of block 1, of later blocks).
STAGES = [(2, 64, 256, 64), (3, 256, 512, 128), (4, 512, 1024, 256), (5, 1024, 2048, 512)]
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def gate_params(kind, context_channels, units):
    """Parameters a GumbelGate adds, counted by hand."""
    if kind == "independent":
        own = units  # one logit per gate
    else:  # Dense(C -> 16, no bias) + BatchNorm(16: gamma, beta, moving mean, moving var) + Dense(16 -> units)
        own = context_channels * HIDDEN + 4 * HIDDEN + HIDDEN * units + units
    return own + GATE_BOOKKEEPING


def expected_gate_params(depth, kind, level, gate_projection_blocks=True):
    """(number of gate layers, their parameters) of a gated keras.applications ResNet."""
    total, count = 0, 0
    for (stage, first_in, later_in, filters), blocks, g in zip(STAGES, BLOCKS[depth], R.CHANNEL_GRANULARITY):
        for block in range(1, blocks + 1):
            context = first_in if block == 1 else later_in
            if level == "layer":
                if block > 1 or gate_projection_blocks:  # the paper: every block
                    total += gate_params(kind, context, 1)
                    count += 1
            else:
                for units in (filters // (g // 2), filters // (g // 2), 4 * filters // g):
                    total += gate_params(kind, context, units)
                    count += 1
    return count, total + LOSS_BOOKKEEPING


def non_input_names(model):
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def randomize_bn_statistics(model, seed=0):
    """Give every batch norm non-trivial moving statistics so copying them matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )


@pytest.fixture(scope="module")
def app50():
    keras.utils.set_random_seed(1)
    model = keras.applications.ResNet50(weights=None, input_shape=SMALL)
    randomize_bn_statistics(model)
    return model


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).uniform(-1, 1, (2,) + SMALL).astype("float32")


def features(model):
    return keras.Model(model.inputs, model.get_layer("conv5_block3_out").output)


# -- ImageNet ResNet-50/101: structure, parameters, names --------------------------------------


def test_dense_resnet50_at_224_is_keras_applications():
    ours = R.resnet50()
    app = keras.applications.ResNet50(weights=None)
    assert ours.count_params() == app.count_params() == 25_636_712
    assert non_input_names(ours) == non_input_names(app)
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in app.weights]
    assert ours.output_shape == (None, 1000)


@pytest.mark.parametrize("kind", ["independent", "dependent"])
@pytest.mark.parametrize("level", ["layer", "channel"])
def test_gated_resnet50_adds_only_gate_parameters(app50, kind, level):
    model = R.resnet50(input_shape=SMALL, gates={"kind": kind, "level": level})
    count, extra = expected_gate_params(50, kind, level)
    gates = tfgated.gate_layers(model)
    assert len(gates) == count == (16 if level == "layer" else 48)  # the paper: "ResNet-50 (16 gates)"
    assert model.count_params() == app50.count_params() + extra
    # Every keras.applications layer is present under its own name with the same weight shapes.
    for layer in app50.layers[1:]:
        assert [w.shape for w in model.get_layer(layer.name).weights] == [w.shape for w in layer.weights]
    # The bookkeeping variables are non-trainable scalars.
    for gate in gates:
        assert gate.style_id.trainable is False and tuple(gate.style_id.shape) == ()
        assert gate.threshold_value.trainable is False and tuple(gate.threshold_value.shape) == ()
    if level == "layer":
        assert [g.name for g in gates][:4] == [
            "conv2_block1_gate", "conv2_block2_gate", "conv2_block3_gate", "conv3_block1_gate"
        ]
        assert isinstance(model.get_layer("conv2_block2_add"), tfgated.GatedResidual)
        # A projection block gates its branch; its projection shortcut is not behind the gate.
        assert isinstance(model.get_layer("conv3_block1_add"), tfgated.GatedResidual)
        add_inputs = [t._keras_history[0].name for t in model.get_layer("conv3_block1_add").input]
        assert add_inputs == ["conv3_block1_0_bn", "conv3_block1_3_bn", "conv3_block1_gate"]
    else:
        assert {model.get_layer(f"conv3_block1_{i}_mask").granularity for i in (1, 2, 3)} == {16, 32}
        assert model.get_layer("conv5_block3_3_mask").granularity == 128
        assert model.get_layer("conv2_block1_1_gate").units == 8
        assert model.get_layer("conv2_block1_3_gate").units == 16
    assert model.layers[-1].name == "activation_loss"


@pytest.mark.slow
def test_resnet101_dense_and_gated_parameters():
    app = keras.applications.ResNet101(weights=None, input_shape=SMALL)
    dense = R.resnet101(input_shape=SMALL)
    gated = R.resnet101(input_shape=SMALL, gates={"kind": "dependent"})
    assert dense.count_params() == app.count_params() == 44_707_176
    assert non_input_names(dense) == non_input_names(app)
    count, extra = expected_gate_params(101, "dependent", "layer")
    assert len(tfgated.gate_layers(gated)) == count == 33  # the paper's 33 blocks
    assert gated.count_params() == app.count_params() + extra
    assert set(non_input_names(app)) <= set(non_input_names(gated))


# -- ImageNet: weights from keras.applications ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "gates",
    [None, {"kind": "dependent", "level": "layer"}, {"kind": "independent", "level": "channel"}],
    ids=["dense", "layer-dep", "channel-ind"],
)
def test_copied_weights_reproduce_keras_applications(app50, image, gates):
    model = R.resnet50(input_shape=SMALL, gates=gates)
    copied = R.load_keras_applications_weights(model, app50)
    assert len(copied) == len([layer for layer in app50.layers if layer.weights])
    if gates is not None:
        tfgated.set_inference_style(model, "always_on")
    expected = features(app50)(image)
    got = features(model)(image)
    assert float(np.max(np.abs(np.asarray(got) - np.asarray(expected)))) < 1e-4
    probs = np.asarray(model(image))
    assert float(np.max(np.abs(probs - np.asarray(app50(image))))) < 1e-4
    if gates is not None:
        # Closing the gates changes the network: the gates really act.
        tfgated.set_inference_style(model, "threshold")
        for gate in tfgated.gate_layers(model):
            if gate.kind == "independent":
                gate.logits.assign(np.full(gate.logits.shape, -8.0, "float32"))
            else:
                gate.head.bias.assign(np.full(gate.head.bias.shape, -50.0, "float32"))
        closed = np.asarray(features(model)(image))
        assert float(np.max(np.abs(closed - np.asarray(expected)))) > 1e-2


@pytest.mark.slow
def test_legacy_h5_weights_load_by_name(app50, image, tmp_path):
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    path = str(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app50)
    model = R.resnet50(input_shape=SMALL, gates={"kind": "dependent"})
    R.load_keras_applications_weights(model, path)
    tfgated.set_inference_style(model, "always_on")
    diff = np.max(np.abs(np.asarray(features(model)(image)) - np.asarray(features(app50)(image))))
    assert float(diff) < 1e-4
    # Keras' own by-name loader finds the same layers, thanks to the shared names.
    other = R.resnet50(input_shape=SMALL, gates={"kind": "independent"})
    other.load_weights(path, by_name=True)
    tfgated.set_inference_style(other, "always_on")
    diff = np.max(np.abs(np.asarray(features(other)(image)) - np.asarray(features(app50)(image))))
    assert float(diff) < 1e-4


def test_weight_loading_errors(app50, tmp_path):
    cifar = R.cifar_resnet(depth=8)
    before = [keras.ops.convert_to_numpy(w) for w in cifar.weights]
    with pytest.raises(ValueError, match="conv1_conv"):
        R.load_keras_applications_weights(cifar, app50)
    assert all(np.array_equal(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, cifar.weights))  # untouched
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        R.load_keras_applications_weights(cifar, str(tmp_path / "missing.h5"))
    ten = R.resnet50(input_shape=SMALL, num_classes=10)
    with pytest.raises(ValueError, match="predictions"):
        R.load_keras_applications_weights(ten, app50)
    copied = R.load_keras_applications_weights(ten, app50, skip=("predictions",))
    assert "predictions" not in copied and "conv1_conv" in copied


# -- CIFAR ResNet ----------------------------------------------------------------------------------


def test_resnet110_gates_every_block():
    model = R.cifar_resnet(depth=110, gates={"kind": "independent"})
    names = [g.name for g in tfgated.gate_layers(model)]
    assert len(names) == 54  # the supplement's ResNet-110: 54 gates
    assert names[0] == "stage1_block1_gate" and names[-1] == "stage3_block18_gate"
    assert "stage2_block1_gate" in names and "stage3_block1_gate" in names
    assert model.get_layer("stage2_block1_0_conv").strides == (2, 2)  # option-B projection
    dense = R.cifar_resnet(depth=110)
    # 54 logits + bookkeeping, and nothing else, separate the two.
    assert model.count_params() == dense.count_params() + 54 * (1 + GATE_BOOKKEEPING) + LOSS_BOOKKEEPING
    assert 1.7e6 < dense.count_params() < 1.75e6  # He et al.: 1.7M
    assert model.output_shape == (None, 10)


def test_downsampling_block_gate_skips_the_branch_only():
    """``relu(proj(x) + z * branch(x))``: a closed gate leaves the projection shortcut."""
    model = R.cifar_resnet(input_shape=(8, 8, 2), depth=8, widths=(2, 4, 4), gates={"kind": "independent"})
    names = [g.name for g in tfgated.gate_layers(model)]
    assert names == ["stage1_block1_gate", "stage2_block1_gate", "stage3_block1_gate"]
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 2)).astype("float32")
    for gate in tfgated.gate_layers(model):
        gate.logits.assign(np.full(gate.logits.shape, -20.0, "float32"))
    name = "stage2_block1"
    probe = keras.Model(model.inputs, [model.get_layer(f"{name}_0_bn").output, model.get_layer(f"{name}_out").output])
    shortcut, out = (np.asarray(t) for t in probe(x))
    np.testing.assert_allclose(out, np.maximum(shortcut, 0.0), atol=1e-6)


@pytest.mark.parametrize("depth, old, paper", [(50, 12, 16), (101, 29, 33)])
def test_layer_gate_counts_without_building(depth, old, paper):
    """The paper's counts (ResNet-50: 16, ResNet-101: 33) from the block table the builder uses."""
    assert sum(R.IMAGENET_BLOCKS[depth]) == paper
    assert sum(R.IMAGENET_BLOCKS[depth]) - len(R.IMAGENET_BLOCKS[depth]) == old


def test_old_form_without_downsampling_gates():
    """``gate_projection_blocks=False``: downsampling blocks ungated (the form of earlier Fashion-MNIST weights)."""
    model = R.cifar_resnet(input_shape=(8, 8, 1), depth=8, widths=(2, 4, 4), gates={"kind": "independent"},
                           gate_projection_blocks=False)
    assert [g.name for g in tfgated.gate_layers(model)] == ["stage1_block1_gate"]
    assert isinstance(model.get_layer("stage2_block1_add"), keras.layers.Add)
    small = R.imagenet_resnet(input_shape=(32, 32, 3), gates={"kind": "independent"}, gate_projection_blocks=False)
    assert len(tfgated.gate_layers(small)) == 12
    with pytest.raises(ValueError, match="gate_projection_blocks"):
        R.cifar_resnet(depth=8, gates={"kind": "independent"}, gate_projection_blocks="no")
    for name, preset in R.PRESETS.items():  # every preset is in the paper's form (its weights retrained so)
        assert preset["arch"].get("gate_projection_blocks", True) is True, name


@pytest.mark.parametrize("kind", ["independent", "dependent"])
def test_every_inference_style_runs(kind):
    model = R.cifar_resnet(num_classes=10, input_shape=(28, 28, 1), depth=14, widths=(4, 8, 8), gates={"kind": kind})
    x = np.random.default_rng(1).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    for style in ("threshold", "always_on", "stochastic", "ensemble"):
        tfgated.set_inference_style(model, style, samples=3 if style == "ensemble" else None)
        probs = np.asarray(tfgated.predict(model, x))
        assert probs.shape == (3, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    rates = tfgated.gate_values(model, x)
    assert set(rates) == {f"stage{s}_block{b}_gate" for s in (1, 2, 3) for b in (1, 2)}


@pytest.mark.slow
def test_channel_gated_resnet50_runs_in_every_style(image):
    model = R.resnet50(input_shape=(32, 32, 3), num_classes=5, gates={"kind": "dependent", "level": "channel"})
    x = image[:, :32, :32, :]
    outputs = {}
    for style in ("threshold", "always_on", "stochastic"):  # eager calls: no 25M-parameter graph tracing
        tfgated.set_inference_style(model, style)
        outputs[style] = np.asarray(model(x, training=False))
        assert outputs[style].shape == (2, 5)
    # Fresh gates are open with probability 0.982: thresholding keeps them all open.
    np.testing.assert_allclose(outputs["threshold"], outputs["always_on"], atol=1e-6)


@pytest.mark.parametrize("kind", ["independent", "dependent"])
def test_save_and_load_safe_mode(tmp_path, kind):
    model = R.cifar_resnet(input_shape=(28, 28, 1), depth=14, widths=(4, 8, 8), gates={"kind": kind, "target": 0.4})
    tfgated.set_inference_style(model, "threshold", threshold=0.3)
    x = np.random.default_rng(2).uniform(0, 1, (4, 28, 28, 1)).astype("float32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert non_input_names(loaded) == non_input_names(model)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert tfgated.get_inference_style(loaded) == tfgated.get_inference_style(model)
    assert loaded.get_layer("activation_loss").target == pytest.approx(0.4)


@pytest.mark.slow
def test_fashion_mnist_preset_trains_a_few_steps():
    from tfgated.data import load_fashion_mnist_arrays

    (x, y), _ = load_fashion_mnist_arrays()
    x = (x[:128].astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    y = y[:128].astype("int32")
    preset = R.PRESETS["gumbel_resnet_fashion_mnist"]
    keras.utils.set_random_seed(0)
    model = R.cifar_resnet(
        num_classes=preset["num_classes"], input_shape=tuple(preset["input_shape"]), gates=preset["gates"], **preset["arch"]
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The gates start open with probability sigmoid(4) = 0.982 and 8 small steps barely move
    # them: the activation the loss reports is the share of open gates drawn, about 0.98.
    assert history.history["gate_activation"][-1] == pytest.approx(0.982, abs=0.02)
    # Every weight moves. Compare exactly: a gate's bias starts at logit 4 and Adam's steps on it
    # partly cancel (a change of ~2e-5 in 8 steps), under np.allclose's relative tolerance.
    unchanged = [w.path for b, w in zip(before, model.trainable_weights) if np.array_equal(b, keras.ops.convert_to_numpy(w))]
    assert unchanged == []


# -- presets and errors ----------------------------------------------------------------------------


def test_presets_are_plain_consistent_data():
    import json

    names = set(R.PRESETS)
    for kind in ("ind", "dep"):
        for loss in ("pb", "pg"):
            for t in ("0.4", "0.5", "0.6"):
                assert f"gumbel_resnet110_cifar10_{kind}_{loss}_t{t}" in names
                assert f"gumbel_resnet50_imagenet_{kind}_{loss}_t{t}" in names
            for t in ("0.4", "0.6"):
                assert f"gumbel_resnet_fashion_mnist_{kind}_{loss}_t{t}" in names
    assert {"resnet110_cifar10", "resnet50_imagenet", "resnet101_imagenet", "resnet_fashion_mnist"} <= names
    assert R.PRESETS["gumbel_resnet_fashion_mnist"]["gates"] == {
        "kind": "dependent", "loss_kind": "per_batch", "target": 0.5, "weight": 1.0
    }
    json.dumps(R.PRESETS)  # plain data
    required = {"family", "arch", "gates", "dataset", "input_shape", "num_classes", "recipe", "weights", "paper", "description"}
    for name, preset in R.PRESETS.items():
        assert required <= set(preset), name
        assert preset["family"] in (R.CIFAR_FAMILY, R.IMAGENET_FAMILY)
        assert {"optimizer", "learning_rate", "epochs", "batch_size"} <= set(preset["recipe"])
        assert {"source", "table", "numbers"} <= set(preset["paper"])
        if preset["gates"] is not None:
            levels = R.GATE_LEVELS if preset["family"] == R.IMAGENET_FAMILY else ("layer",)
            spec = R._GateSpec(preset["gates"], levels)
            if name == "gumbel_resnet_fashion_mnist":  # the untagged default: Dep, PB, t=0.5
                continue
            assert spec.settings.target == float(name.rsplit("_t", 1)[-1])
            assert ("_dep_" in name) == (spec.kind == "dependent")
            assert ("_pg_" in name) == (spec.settings.loss_kind == "per_gate")
            assert ("_channel_" in name) == (spec.level == "channel")


def test_registry_serves_the_presets():
    from tfgated.zoo import registry

    assert {R.CIFAR_FAMILY, R.IMAGENET_FAMILY} <= set(registry.list_families())
    assert set(registry.list_models("*resnet*")) >= set(R.PRESETS)
    assert len(registry.list_models("gumbel_resnet50_imagenet_*_t0.4")) == 4
    model = registry.load("gumbel_resnet_fashion_mnist_ind_pg_t0.4", widths=(4, 8, 8), depth=14)
    assert model.get_layer("activation_loss").loss_kind == "per_gate"
    assert model.get_layer("activation_loss").target == pytest.approx(0.4)
    assert [g.kind for g in tfgated.gate_layers(model)] == ["independent"] * 6  # ResNet-14: every one of its 6 blocks
    assert model.optimizer is not None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: R.cifar_resnet(depth=21), "depth=21"),
        (lambda: R.cifar_resnet(widths=(16, 32)), "widths"),
        (lambda: R.cifar_resnet(gates={"kind": "dependent", "level": "channel"}), "level='channel'"),
        (lambda: R.cifar_resnet(gates={"kind": "dependant"}), "kind='dependant'"),
        (lambda: R.cifar_resnet(gates={"kind": "independent", "tagret": 0.5}), "tagret"),
        (lambda: R.cifar_resnet(gates={"kind": "independent", "loss_kind": "pb"}), "loss_kind='pb'"),
        (lambda: R.cifar_resnet(gates={"kind": "independent", "target": 1.5}), "target=1.5"),
        (lambda: R.cifar_resnet(input_shape=(4, 4, 1)), "input_shape"),
        (lambda: R.imagenet_resnet(depth=34), "depth=34"),
        (lambda: R.imagenet_resnet(num_classes=0), "num_classes=0"),
        (
            lambda: R.imagenet_resnet(gates={"kind": "independent", "level": "channel", "granularity": [16, 32, 64]}),
            "granularity",
        ),
        (lambda: R.imagenet_resnet(gates={"kind": "independent", "granularity": [16, 32, 64, 128]}), "only applies"),
    ],
)
def test_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("loss", ["pb", "pg"])
@pytest.mark.parametrize("target", [0.4, 0.6])
def test_shipped_ind_presets_polarize_under_pb_only(loss, target):
    """The Ind presets ship weights trained by the polarizing recipe (SGD, gate gradients x100). With
    the per-batch loss at least 8 of their 9 gates are open with probability below 1% or above 99%;
    with the per-gate loss, which pulls each gate to the target by itself, at most 1 is (the paper's
    reason for PB)."""
    name = f"gumbel_resnet_fashion_mnist_ind_{loss}_t{target}"
    preset = tfgated.zoo.get_preset(name)
    assert preset["recipe"]["optimizer"] == "sgd" and preset["gates"]["gradient_scale"] == 100.0
    model = tfgated.zoo.load(name, weights="default", compile=False)
    p = np.concatenate([np.ravel(np.asarray(g.probabilities())) for g in tfgated.gate_layers(model)])
    assert p.size == 9
    polarized = np.sum((p < 0.01) | (p > 0.99))
    assert polarized >= 8 if loss == "pb" else polarized <= 1
