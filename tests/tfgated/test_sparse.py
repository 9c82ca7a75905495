"""Gather-run-scatter execution (tfgated.sparse) against the masked Keras model."""

import keras
import numpy as np
import pytest

import tfgated
from tfgated.sparse import SparseModel, residual_branches, sparse_call, sparse_model, sub_batch_rows
from tiny_fixtures import residual_model, spread_gates, varied_images

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
    return varied_images()


@pytest.fixture(scope="module")
def model(images):
    built = residual_model()
    spread_gates(built, images)
    return built


def open_counts(model, x):
    return {k: int(v.sum()) for k, v in tfgated.gate_values(model, x).items()}


def test_finds_every_dependent_residual_gate(model):
    branches = residual_branches(model)
    assert [b.name for b in branches] == ["b0_add", "b1_add"]
    # each branch runs conv-bn-relu-conv on the gathered block input only
    assert [n.operation.name for n in branches[0].inner] == ["b0_conv1", "b0_bn1", "b0_relu", "b0_conv2"]
    assert len(branches[0].external) == 1


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_sparse_matches_masked_at_each_batch_size(model, images, batch):
    tfgated.set_inference_style(model, "threshold")
    x = images[:batch]
    dense = model.predict(x, batch_size=batch, verbose=0)
    sparse = tfgated.predict(model, x, batch_size=batch, execution="sparse")
    assert np.max(np.abs(dense - sparse)) <= TOLERANCE
    if batch == 64:  # the real case: some examples open, some closed
        assert all(0 < n < batch for n in open_counts(model, x).values())


@pytest.mark.parametrize("threshold, expected", [(0.999999, 0), (1e-6, 7)])
def test_every_gate_closed_or_open(model, images, threshold, expected):
    tfgated.set_inference_style(model, "threshold", threshold=threshold)
    try:
        x = images[:7]
        assert set(open_counts(model, x).values()) == {expected}  # sub-batches of size 0 or 7
        dense = model.predict(x, verbose=0)
        sparse = SparseModel(model).predict(x, verbose=0)
        assert np.max(np.abs(dense - sparse)) <= TOLERANCE
    finally:
        tfgated.set_inference_style(model, "threshold", threshold=0.5)


def test_sparse_model_saves_and_loads_in_safe_mode(model, images, tmp_path):
    tfgated.set_inference_style(model, "threshold")
    wrapped = sparse_model(model)
    assert sparse_model(model) is wrapped  # cached per model
    path = tmp_path / "sparse.keras"
    wrapped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, SparseModel)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0), atol=1e-6)


def test_sparse_model_keeps_its_stitch_through_saving(model, images, tmp_path):
    tfgated.set_inference_style(model, "threshold")
    scatter = SparseModel(model, stitch="scatter")
    path = tmp_path / "scatter.keras"
    scatter.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert (loaded.stitch, SparseModel(model).stitch) == ("scatter", "gather")
    dense = model.predict(images, verbose=0)
    assert np.max(np.abs(loaded.predict(images, verbose=0) - dense)) <= TOLERANCE
    with pytest.raises(ValueError, match="stitch to be one of"):
        SparseModel(model, stitch="scatter_add")


def test_each_example_finds_its_row_of_the_sub_batch():
    mask = np.array([False, True, True, False, True])
    # open examples: rows 0, 1, 2 of the gathered sub-batch; closed ones: the zero row after them
    assert np.asarray(sub_batch_rows(mask)).tolist() == [3, 0, 1, 3, 2]
    assert np.asarray(sub_batch_rows(np.zeros(3, bool))).tolist() == [0, 0, 0]


@pytest.mark.parametrize("threshold", [0.5, 0.999999, 1e-6])
def test_gather_and_scatter_stitches_agree(model, images, threshold):
    """The two ways back from the sub-batch give the masked model's outputs, with some, no and
    every example open."""
    tfgated.set_inference_style(model, "threshold", threshold=threshold)
    try:
        x = keras.ops.convert_to_tensor(images[:32])
        dense = np.asarray(model(x, training=False))
        for stitch in ("gather", "scatter"):
            out = np.asarray(sparse_call(model, residual_branches(model), stitch=stitch)(x))
            assert np.max(np.abs(out - dense)) <= TOLERANCE, stitch
    finally:
        tfgated.set_inference_style(model, "threshold", threshold=0.5)


def test_argument_checks(model, images):
    with pytest.raises(ValueError, match="execution to be one of"):
        tfgated.predict(model, images, execution="fast")
    with pytest.raises(ValueError, match="functional Keras model"):
        SparseModel(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="runs inference only"):
        SparseModel(model)(images[:2], training=True)
    with pytest.raises(ValueError, match="stitch to be one of"):
        sparse_call(model, residual_branches(model), stitch="scatter_add")


def test_early_exit_gathers_the_examples_that_stay(model, images):
    from tfgated.exits import EarlyExitModel, SparseExitModel, attach_exit

    tfgated.set_inference_style(model, "threshold")
    with_exit = attach_exit(model, "b0_add", channels=8)
    main, exit_probs = with_exit.predict(images, verbose=0)
    threshold = float(np.median(exit_probs.max(axis=1)))  # half the examples exit
    expected = EarlyExitModel(with_exit, threshold).predict(images).probabilities
    wrapped = SparseExitModel(with_exit, threshold)
    assert [b.name for b in wrapped.branches] == ["b1_add"]  # the gate after the exit is gathered too
    for batch in (1, 7, 64):
        got = wrapped.predict(images[:batch], batch_size=batch, verbose=0)
        assert np.max(np.abs(got - expected[:batch])) <= TOLERANCE
    everyone = SparseExitModel(with_exit, 1.0).predict(images, verbose=0)  # nobody exits
    assert np.max(np.abs(everyone - main)) <= TOLERANCE


def test_sparse_exit_model_saves_and_loads_in_safe_mode(model, images, tmp_path):
    from tfgated.exits import SparseExitModel, attach_exit

    wrapped = SparseExitModel(attach_exit(model, "b0_add", channels=8, name="save_exit"), 0.5)
    path = tmp_path / "exit.keras"
    wrapped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, SparseExitModel) and loaded.threshold == 0.5
    np.testing.assert_allclose(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0), atol=1e-6)


def test_predict_runs_an_early_exit_densely_and_sparsely(model, images):
    """tfgated.predict with exit_threshold: one array, the path each example took, the same
    for dense and sparse execution and for EarlyExitModel's split inference."""
    from tfgated.exits import EarlyExitModel, attach_exit

    tfgated.set_inference_style(model, "threshold")
    with_exit = attach_exit(model, "b0_add", channels=8, name="predict_exit")
    _main, exit_probs = with_exit.predict(images, verbose=0)
    threshold = float(np.median(exit_probs.max(axis=1)))
    expected = EarlyExitModel(with_exit, threshold).predict(images).probabilities
    dense = tfgated.predict(with_exit, images, exit_threshold=threshold)
    sparse = tfgated.predict(with_exit, images, exit_threshold=threshold, execution="sparse")
    assert dense.shape == expected.shape
    assert np.max(np.abs(dense - expected)) <= TOLERANCE
    assert np.max(np.abs(sparse - expected)) <= TOLERANCE
    with pytest.raises(ValueError, match="two outputs"):
        tfgated.predict(model, images, exit_threshold=0.5)
    with pytest.raises(ValueError, match="exit_threshold in"):
        tfgated.predict(with_exit, images, exit_threshold=1.5)
