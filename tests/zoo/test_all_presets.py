"""One test over every registered preset (timm-style) plus the golden complexity check.

* every preset: built at its ``input_shape`` and counted with
  :func:`tfgated.complexity.count`; the counts must equal ``zoo/complexity.json``
  (regenerate with ``python -m tfgated.zoo.make_golden`` when a change is meant);
* every *distinct code path*: presets that differ only in the activation loss's
  target, weight or kind (PB/PG) build the same network, and presets that differ only in
  size (depth, widths, blocks, growth rate, stem and head widths, SIPA resource or
  scaling, gate granularity, input shape, number of classes: ResNet-101 against
  ResNet-50, ResNet-110 against ResNet-20) build it from the same layers, so one
  of them, the smallest, stands for the others. It is built at its
  ``test_input_shape`` (small inputs keep the ImageNet presets fast), run forward
  in every inference style for gated models (threshold, always_on, stochastic,
  ensemble via ``tfgated.predict``), then saved and reloaded with
  ``safe_mode=True`` with equal threshold outputs.
"""

import json

import keras
import numpy as np
import pytest

import tfgated
from tfgated.complexity import count
from tfgated.zoo import registry

# Keras' numpy conversion warns once per variable read; thousands of captured warnings cost time.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NAMES = registry.list_models()
GOLDEN = registry.golden()
LOSS_ONLY_KEYS = ("target", "weight", "loss_kind")
SIZE_ONLY_KEYS = ("depth", "widths", "blocks", "growth_rate", "resource", "resolution", "width",
                  "stem_filters", "stem_stride", "last_filters", "exit_filters", "exit_pool_size")


def _signature(name):
    """Everything that determines the network built at the preset's input shape (the loss settings do not)."""
    preset = registry.get_preset(name)
    gates = preset["gates"]
    if gates is not None:
        gates = {k: v for k, v in gates.items() if k not in LOSS_ONLY_KEYS}
    shape = preset["input_shape"]
    return json.dumps([preset["family"], preset["arch"], gates, list(shape), preset["num_classes"]],
                      sort_keys=True, default=str)


def _code_path(name):
    """What decides which layers and code a preset runs (not its size, target or loss)."""
    preset = registry.get_preset(name)
    gates = preset["gates"]
    if gates is not None:
        gates = {k: v for k, v in gates.items() if k not in LOSS_ONLY_KEYS + ("granularity",)}
    arch = {k: v for k, v in preset["arch"].items() if k not in SIZE_ONLY_KEYS}
    return json.dumps([preset["family"], arch, gates], sort_keys=True, default=str)


def _representatives(names):
    """One preset per code path: the one with the fewest parameters (``zoo/complexity.json``)."""
    chosen = {}
    for name in sorted(names, key=lambda n: (GOLDEN.get(n, {}).get("params", 0), n)):
        chosen.setdefault(_code_path(name), name)
    return sorted(chosen.values())


REPRESENTATIVES = _representatives(NAMES)


def test_the_registry_holds_every_family():
    assert NAMES, "no presets registered"
    assert {"sipa_cifar100", "sipa_cifar100_exit", "sipa_fashion_mnist", "sipa_fashion_mnist_gated"} <= set(NAMES)


_MEASURED = {}


def _measure(name):
    """Counts of preset ``name`` built at its input shape, shared by identical networks."""
    key = _signature(name)
    if key not in _MEASURED:
        model = registry.build(name)
        report = count(model)
        bn = sum(r.params for r in report.rows if r.class_name == "BatchNormalization")
        _MEASURED[key] = {
            "params": report.params,
            "params_without_bn": report.params - bn,
            "macs": report.macs,
            "outputs": len(model.outputs),
            "gates": len(tfgated.gate_layers(model)),
            "input_shape": [int(v) for v in model.input.shape[1:]],
        }
        keras.backend.clear_session()
    return _MEASURED[key]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_complexity_matches_the_golden_file(name):
    assert name in GOLDEN, f"{name} is missing from zoo/complexity.json: run `python -m tfgated.zoo.make_golden`"
    measured = _measure(name)
    assert measured == {k: GOLDEN[name][k] for k in measured}, (
        f"{name} changed; if intended, run `python -m tfgated.zoo.make_golden` and review the diff"
    )


def _check_probabilities(outputs, batch, num_classes):
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    for out in outputs:
        out = np.asarray(out)
        assert out.shape[0] == batch and out.shape[-1] >= 2
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-4)
    assert np.asarray(outputs[0]).shape == (batch, num_classes)


def _call(model, x):
    """One eager forward pass in inference mode (no tf.function tracing: fast for big graphs)."""
    outputs = model(x, training=False)
    if isinstance(outputs, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in outputs]
    return keras.ops.convert_to_numpy(outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_forward_in_every_style_and_safe_reload(name, tmp_path):
    preset = registry.get_preset(name)
    shape = tuple(preset.get("test_input_shape") or preset["input_shape"])
    model = registry.build(name, input_shape=shape)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    model.run_eagerly = True  # tfgated.predict's model.predict without tracing the big graph
    gated = bool(tfgated.gate_layers(model))
    if gated:
        for style in ("always_on", "stochastic"):
            tfgated.set_inference_style(model, style)
            _check_probabilities(_call(model, x), 2, preset["num_classes"])
        ensemble = tfgated.predict(model, x, style="ensemble", samples=2)
        _check_probabilities(list(ensemble) if len(model.outputs) > 1 else ensemble, 2, preset["num_classes"])
        tfgated.set_inference_style(model, "threshold")
    expected = _call(model, x)
    _check_probabilities(expected, 2, preset["num_classes"])

    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    if gated:
        assert tfgated.get_inference_style(reloaded) == "threshold"
    actual = _call(reloaded, x)
    pairs = zip(actual, expected) if isinstance(expected, list) else [(actual, expected)]
    for a, e in pairs:
        np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-4)
    keras.backend.clear_session()
