"""Tests of tfgated.search: SIPA fitness, the options, the hypermodel's space, resuming.

The command line (``python -m tfgated search``, distributed search) is tested in
tests/cli/test_search_command.py."""

import json
import math

import keras
import keras_tuner
import numpy as np
import pytest

import tfgated.zoo
from tfgated import search
from tfgated.zoo.sipa import build_sipa
from tiny_fixtures import TINY_SIPA_ARCH as TINY_ARCH, TINY_SIPA_SPACE as TINY_SPACE


def hypermodel_of(**options):
    """A hypermodel building tfgated.zoo.sipa networks, from flat options."""
    return search.SIPAHyperModel.from_options(build_sipa, **options)


def tiny_hypermodel(**kwargs):
    return hypermodel_of(base_arch=TINY_ARCH, **{**TINY_SPACE, **kwargs})


@pytest.fixture(scope="module")
def tiny_data():
    from tfgated.data import load_dataset

    return load_dataset("fashion_mnist", batch_size=64, limit=200, validation_split=0.1)


# -- fitness --------------------------------------------------------------------------


def test_fitness_step_indicator_is_literal_reading():
    assert search.sipa_fitness(0.9, 100, 200) == (0.9, 0.0)
    assert search.sipa_fitness(0.9, 200, 200) == (0.9, 0.0)  # at the budget: not exceeding
    fitness, penalty = search.sipa_fitness(0.9, 201, 200, alpha=0.5, w=2.0)
    assert penalty == pytest.approx(0.25) and fitness == pytest.approx(0.65)
    # The step penalty does not depend on how far the budget is exceeded.
    assert search.sipa_fitness(0.9, 1e9, 200) == search.sipa_fitness(0.9, 201, 200)


def test_fitness_hinge_indicator_is_relative_excess():
    fitness, penalty = search.sipa_fitness(0.8, 300, 200, alpha=2.0, indicator="hinge")
    assert penalty == pytest.approx(2.0 * 0.5) and fitness == pytest.approx(-0.2)
    assert search.sipa_fitness(0.8, 150, 200, indicator="hinge") == (0.8, 0.0)
    assert search.sipa_fitness(0.8, 1e9, None) == (0.8, 0.0)


def test_fitness_rejects_bad_arguments():
    with pytest.raises(ValueError, match="indicator='sigmoid'"):
        search.sipa_fitness(0.5, 1, 1, indicator="sigmoid")
    with pytest.raises(ValueError, match="threshold=0"):
        search.sipa_fitness(0.5, 1, 0)


# -- block strings and the search space -------------------------------------------------


def test_block_strings_round_trip():
    for block in (*search.REFERENCE_BLOCKS, "r3_k5_s2_e3_i16_o24_se0_noskip", "r1_k3_s1_e6_i8_o8"):
        decoded = search.decode_block(block)
        assert search.encode_block(decoded) == block
    assert search.decode_block("r3_k5_s2_e3_i16_o24_se0_noskip") == {
        "repeats": 3, "kernel": 5, "stride": 2, "expand": 3, "filters_in": 16, "filters_out": 24,
        "se_ratio": 0.0, "id_skip": False,
    }
    with pytest.raises(ValueError, match="Received: 'k3'"):
        search.decode_block("k3")


def test_default_hyperparameters_reproduce_the_base_architecture():
    hypermodel = search.SIPAHyperModel(build_sipa, space=search.SearchSpace(constraint="none"))
    hp = keras_tuner.HyperParameters()
    arch = hypermodel.architecture(hp)
    assert arch["blocks"] == list(search.REFERENCE_BLOCKS)
    assert (arch["depth"], arch["width"], arch["resolution"], arch["resource"]) == (1.0, 0.9, 1.4, 1)
    names = {p.name: p for p in hp.space}
    # Stride: searchable only where the base block has stride 2 (blocks 2 and 5).
    assert isinstance(names["b2_stride"], keras_tuner.engine.hyperparameters.Choice)
    assert set(names["b2_stride"].values) == {1, 2}
    assert isinstance(names["b0_stride"], keras_tuner.engine.hyperparameters.Fixed)
    assert set(names["b1_kernel"].values) == {3, 5}
    assert set(names["b1_expand"].values) == {1, 3, 6}
    assert set(names["b1_se"].values) == {0.0, 0.1, 0.2, 0.25}


def test_enforced_compound_constraint_derives_resolution_and_chains_channels():
    hypermodel = search.SIPAHyperModel(build_sipa, space=search.SearchSpace(constraint="enforce", resolution_range=(1.0, 2.0)))
    hp = keras_tuner.HyperParameters()
    hypermodel.architecture(hp)
    assert "resolution" not in hp.values
    hp.values.update({"depth": 1.2, "width": 0.8, "b0_channels": 1.25, "b2_stride": 1, "b3_se": 0.0})
    arch = hypermodel.architecture(hp)
    assert arch["resolution"] == pytest.approx(round(math.sqrt(2 / (1.2 * 0.64)), 2))
    assert hypermodel.compound_product(arch) == pytest.approx(2.0, rel=0.02)
    blocks = [search.decode_block(b) for b in arch["blocks"]]
    assert blocks[0]["filters_out"] == 24  # 16 * 1.25 = 20 -> multiple of 8
    assert all(b["filters_in"] == a["filters_out"] for a, b in zip(blocks, blocks[1:]))
    assert blocks[2]["stride"] == 1 and blocks[3]["se_ratio"] == 0.0


def test_approximate_constraint_admits_sipas_own_coefficients():
    """SIPA's depth 1, width 0.9, resolution 1.4 (product 1.588): enforce cannot give them
    (it derives 1.57); the approximate constraint with its tolerance keeps them."""

    def resolution_of(constraint, **values):
        hypermodel = search.SIPAHyperModel(build_sipa, space=search.SearchSpace(
            constraint=constraint, width_range=(0.5, 1.2), resolution_range=(1.0, 2.0)))
        hp = keras_tuner.HyperParameters()
        hypermodel.architecture(hp)
        hp.values.update({"depth": 1.0, "width": 0.9, "resolution": 1.4, **values})
        arch = hypermodel.architecture(hp)
        return arch["resolution"], hypermodel.compound_product(arch)

    assert resolution_of("enforce") == (1.57, pytest.approx(1.9966, abs=1e-4))
    assert resolution_of("approximate") == (1.4, pytest.approx(1.5876))
    # outside the band [1.5, 2.5] the resolution moves to its nearest edge (2 decimals, inside it)
    assert resolution_of("approximate", resolution=1.2)[0] == 1.37  # sqrt(1.5 / 0.81) = 1.3608
    assert resolution_of("approximate", resolution=2.0)[0] == 1.75  # sqrt(2.5 / 0.81) = 1.7568
    assert resolution_of("approximate", width=0.6)[0] == 2.0  # band above the range: its top
    tight = search.SearchSpace(constraint_tolerance=0.05, resolution_range=(1.0, 2.0))
    assert search.approximate_resolution(1.4, 1.0, 0.9, tight) == 1.54  # 1.5876 is 21% off: not within 5%
    with pytest.raises(ValueError, match="constraint_tolerance=1.5"):
        search.SearchSpace(constraint_tolerance=1.5)


def test_resolution_coefficient_is_raised_to_the_resource_as_in_the_reference():
    """The reference's main.py: round(1.4 ** 2, 2) = 1.96 scales the side, 32 -> 63 (its README's
    63x63 input), so "resolution 1.4" is gamma, not the input scale and not an area factor."""
    from tfgated.zoo.sipa import resolution_coefficient, upsampled_size

    assert resolution_coefficient(1.4, 2) == 1.96 and upsampled_size(32, 1.4, 2) == 63
    assert resolution_coefficient(1.4, 1) == 1.4 and upsampled_size(28, 1.4, 1) == 40
    model = build_sipa(num_classes=100, input_shape=(32, 32, 3), resolution=1.4, resource=2, width=0.9)
    assert model.get_layer("upsample").output.shape[1:3] == (63, 63)


def test_penalized_constraint_lowers_fitness():
    hypermodel = hypermodel_of(constraint="penalize", constraint_weight=0.5)
    arch = {"depth": 1.0, "width": 1.0, "resolution": 2.0}  # product 4, target 2
    metrics = hypermodel.fitness_metrics(0.9, arch, {"macs": 1.0, "params": 1.0, "cost": 1.0})
    assert metrics["fitness"] == pytest.approx(0.9 - 0.5 * 1.0)
    assert metrics["compound_product"] == pytest.approx(4.0)


def test_flat_options_are_sorted_into_space_and_fitness():
    hypermodel = hypermodel_of(kernel_sizes=[3], budget=5e6, indicator="hinge", learning_rate=0.01, name="h")
    assert hypermodel.space == search.SearchSpace(kernel_sizes=(3,))
    assert hypermodel.fitness == search.FitnessOptions(budget=5e6, indicator="hinge")
    assert (hypermodel.learning_rate, hypermodel.name) == (0.01, "h")
    space, fitness, rest = search.split_options({"divisor": 4, "bits": 32, "other": 1})
    assert (space.divisor, fitness.bits, rest) == (4, 32, {"other": 1})


def test_hypermodel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="measure='flops'"):
        search.FitnessOptions(measure="flops")
    with pytest.raises(ValueError, match="constraint='soft'"):
        search.SearchSpace(constraint="soft")
    with pytest.raises(ValueError, match="budget=-1"):
        hypermodel_of(budget=-1)
    with pytest.raises(ValueError, match="width_range"):
        search.SearchSpace(width_range=(1.2, 0.5))
    with pytest.raises(ValueError, match="scaling_step=0"):
        search.SearchSpace(scaling_step=0)
    with pytest.raises(ValueError, match=r"Unknown search option\(s\) \['depth'\]"):
        hypermodel_of(depth=1.0)
    with pytest.raises(ValueError, match="builder=None"):
        search.SIPAHyperModel(None)
    with pytest.raises(ValueError, match="space"):
        search.SIPAHyperModel(build_sipa, space={"kernel_sizes": (3,)})
    with pytest.raises(ValueError, match="algorithm='grid'"):
        search.make_tuner(tiny_hypermodel(), algorithm="grid")


def test_the_given_builder_builds_the_models():
    hypermodel = search.SIPAHyperModel(build_sipa)
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.name == "sipa" and model.output_shape == (None, 10)
    # Approximate constraint at the defaults (SIPA's depth 1.0, width 0.9, resolution 1.4, one
    # resource unit here): 1.4 is kept, 28 -> ceil(39.2) = 40.
    assert model.get_layer("upsample").output.shape[1:3] == (40, 40)
    costs = hypermodel.costs(model)
    assert costs["cost"] == costs["macs"] > 1e6

    seen = []

    def builder(num_classes, input_shape, **arch):
        seen.append(arch)
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))

    micronet = search.FitnessOptions(measure="micronet")
    model = search.SIPAHyperModel(builder, fitness=micronet).build(keras_tuner.HyperParameters())
    assert len(seen) == 1 and seen[0]["blocks"] and model.compiled and model.output_shape == (None, 10)
    score = search.SIPAHyperModel(build_sipa, fitness=micronet).costs(model)["cost"]
    assert 0 < score < 1e-3


# -- searching and resuming ----------------------------------------------------------


@pytest.mark.slow
def test_search_resumes_from_finished_trials(tmp_path, tiny_data):
    """Two trials, then a new tuner on the same folder with max_trials=3 runs exactly one more
    (the third is chosen by the Gaussian process: 2 random initial points)."""
    hypermodel = tiny_hypermodel(budget=1.0)  # every model exceeds 1 MAC: fitness = A - 1
    fit_args = dict(validation_data=tiny_data.validation, epochs=1, verbose=0)
    tuner = search.make_tuner(hypermodel, max_trials=2, directory=tmp_path, num_initial_points=2, seed=3)
    tuner.search(tiny_data.train, **fit_args)
    assert sorted(tuner.oracle.trials) == ["0", "1"]

    resumed = search.make_tuner(hypermodel, max_trials=3, directory=tmp_path, num_initial_points=2, seed=3)
    assert sorted(resumed.oracle.trials) == ["0", "1"]
    built = []
    original = hypermodel.build_model
    hypermodel.build_model = lambda arch: built.append(arch) or original(arch)
    resumed.search(tiny_data.train, **fit_args)
    hypermodel.build_model = original
    assert len(built) == 1 and sorted(resumed.oracle.trials) == ["0", "1", "2"]

    rows = search.trial_table(resumed)
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    baseline = hypermodel.architecture(keras_tuner.HyperParameters())  # the defaults
    assert rows[0]["arch"] == search.arch_summary(baseline)  # the first trial is the base architecture
    for row in rows:
        assert 0 <= row["val_accuracy"] <= 1 and row["macs"] > 0
        assert row["fitness"] == pytest.approx(row["val_accuracy"] - 1.0)
    assert len({json.dumps(r["hyperparameters"], sort_keys=True) for r in rows}) == 3
    text = search.format_table(rows)
    assert "fitness" in text and rows[2]["arch"] in text

    preset = search.best_preset(resumed, dataset="fashion_mnist")
    best = next(r for r in rows if r["trial"] == preset["search"]["trial"])
    assert best["fitness"] == pytest.approx(max(r["fitness"] for r in rows))
    assert preset["search"]["fitness"] == pytest.approx(best["fitness"])
    assert preset["family"] == "sipa" and preset["gates"] is None and preset["weights"] is None
    path = tmp_path / "best.json"
    path.write_text(json.dumps(preset))
    model = tfgated.zoo.load(str(path))
    assert model.output_shape == (None, 10) and model.compiled
    macs = search.SIPAHyperModel(build_sipa).costs(model)["macs"]
    assert macs == best["macs"]


def test_numpy_gaussian_process_interpolates():
    from tfgated.search.oracles import _NumpyGaussianProcess

    gp = _NumpyGaussianProcess(alpha=1e-6)
    x = np.linspace(0, 1, 8)[:, None]
    y = np.sin(4 * x[:, 0])
    mean, std = gp.fit(x, y).predict(x, return_std=True)
    np.testing.assert_allclose(mean, y, atol=1e-3)
    assert std.max() < 0.05
    _, far = gp.predict(np.array([[3.0]]), return_std=True)
    assert far[0] > 10 * std.max()
