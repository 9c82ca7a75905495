"""tfgated.exits.heads: attaching SIPA's exit head and splitting the two-output model."""

import keras
import numpy as np
import pytest

from tfgated import complexity
from tfgated import exits as ee


def test_attach_exit_positions_structure_and_errors(tiny_model):
    model = tiny_model()
    assert ee.resolve_exit_layer(model, 1) == "block1_add"
    assert ee.resolve_exit_layer(model, "block1") == "block1_add"
    assert ee.resolve_exit_layer(model, "block1_bn") == "block1_bn"
    with pytest.raises(ValueError, match=r"'block7_'.*block0, block1, block2"):
        ee.resolve_exit_layer(model, 7)
    with_exit = ee.attach_exit(model, 1, channels=16)
    assert len(with_exit.outputs) == 2 and with_exit.outputs[1].shape[-1] == 4
    structure = ee.exit_structure(with_exit)
    assert [t.shape[-1] for t in structure.exit_points] == [8]
    assert len(structure.crossing) == 2  # block1 output and the stem's long skip
    assert structure.macs["main"] == complexity.count(model).macs
    assert structure.macs["head"] == 8 * 9 * 144 + 8 * 16 * 144 + 16 * 4
    assert structure.head_params == sum(layer.count_params() for layer in structure.head_layers)
    assert {layer.name for layer in structure.head_layers} >= {"exit_dwconv", "exit_conv", "exit_predictions"}
    with pytest.raises(ValueError, match="already use the exit name 'block0'"):
        ee.attach_exit(model, 1, name="block0")
    with pytest.raises(ValueError, match="two outputs"):
        ee.exit_structure(model)


def test_two_output_model_saves_and_loads_in_safe_mode(small_data, tiny_model, dataset, tmp_path):
    x, y = small_data
    model = tiny_model()
    with_exit = ee.attach_exit(model, 1, channels=16)
    ee.train_exit(with_exit, dataset(x[:64], y[:64]), epochs=1, verbose=0)
    path = str(tmp_path / "with_exit.keras")
    with_exit.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(with_exit.predict(x[:16], verbose=0), loaded.predict(x[:16], verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert ee.exit_structure(loaded).macs == ee.exit_structure(with_exit).macs
    a = ee.early_exit_predict(with_exit, x[:32], 0.4)
    b = ee.early_exit_predict(loaded, x[:32], 0.4)
    np.testing.assert_array_equal(a.exited, b.exited)
