"""Tests for tfgated.data on the real Fashion-MNIST files and on TFDS mock data.

TFDS note (tensorflow-datasets 4.9.10): ``tfds.testing.mock_data`` ignores the ``data_dir``
given to ``tfds.load`` and, with the default ``MockPolicy.AUTO``, looks for real metadata in
``tensorflow_datasets/testing/metadata``. The pip wheel does not ship that folder, so AUTO falls
back to ``MockPolicy.USE_CODE``: features come from the builder class (cifar images 32x32x3,
10/100 classes), splits are unknown (any split name is accepted, class names are generic), and
every split yields ``num_examples`` random examples. That works offline without any files; we
pass ``MockPolicy.USE_CODE`` explicitly so the tests do not depend on that fallback.
"""

import gzip
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfgated import data
from tfgated.data import (
    FASHION_MNIST_CLASS_NAMES,
    KNOWN_DATASETS,
    load_dataset,
    load_fashion_mnist_arrays,
    scaled_size,
)
from tfgated.data.tfds_sources import _TFDS_STATS

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="apt-get install dataset-fashion-mnist",
)


def collect(ds):
    """All (images, labels) of a batched dataset as numpy arrays."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def arrays():
    return load_fashion_mnist_arrays()


# ----------------------------------------------------------------- real Fashion-MNIST files


@needs_fmnist
def test_arrays_are_the_genuine_files(arrays):
    (x_train, y_train), (x_test, y_test) = arrays
    assert x_train.shape == (60000, 28, 28, 1) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28, 1) and x_test.dtype == np.uint8
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # Balanced classes: 6000 train and 1000 test images each.
    assert np.all(np.bincount(y_train) == 6000) and np.all(np.bincount(y_test) == 1000)
    assert y_train[0] == 9 and FASHION_MNIST_CLASS_NAMES[9] == "Ankle boot"
    assert len(FASHION_MNIST_CLASS_NAMES) == 10 and FASHION_MNIST_CLASS_NAMES[0] == "T-shirt/top"


@needs_fmnist
def test_info_counts_and_documented_stats():
    splits = load_dataset()
    info = splits.info
    assert (info.num_train, info.num_validation, info.num_test) == (54000, 6000, 10000)
    assert info.num_classes == 10 and info.input_shape == (28, 28, 1)
    assert info.class_names == FASHION_MNIST_CLASS_NAMES
    assert splits.validation is not None

    full = load_dataset(train_on_validation=True)
    assert full.validation is None
    assert (full.info.num_train, full.info.num_validation, full.info.num_test) == (60000, 0, 10000)
    # The values the module docstring documents for the full training set.
    assert full.info.mean == pytest.approx((0.2860,), abs=5e-5)
    assert full.info.std == pytest.approx((0.3530,), abs=5e-5)

    assert load_dataset(validation_split=0).validation is None


@needs_fmnist
def test_file_order_first_batch(arrays):
    (x_train, y_train), (x_test, y_test) = arrays
    splits = load_dataset(batch_size=4, validation_split=0, shuffle_buffer=0, pixels="unit", limit=10)
    x, y = next(iter(splits.train))
    assert x.shape == (4, 28, 28, 1) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert int(y[0]) == 9
    np.testing.assert_allclose(x.numpy(), x_train[:4] / 255.0, rtol=0, atol=1e-7)
    assert splits.info.mean == (0.0,) and splits.info.std == (1.0,)
    xt, yt = collect(splits.test)
    assert xt.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(yt, y_test[:10])


@needs_fmnist
def test_raw_pixels_and_statistics_of_the_full_training_split(arrays):
    (x_train, _), (x_test, _) = arrays
    raw = load_dataset(batch_size=8, validation_split=0.2, shuffle_buffer=0, pixels="raw", limit=16)
    x, _ = next(iter(raw.test))
    assert x.dtype == tf.float32
    np.testing.assert_array_equal(x.numpy(), x_test[:8].astype("float32"))  # exactly the pixel values
    assert raw.info.pixels == "raw" and raw.info.mean == (0.0,) and raw.info.std == (1.0,)
    # never the statistics of a limited subset or of what the carve-out leaves
    full_mean = float(x_train.mean(dtype=np.float64) / 255.0)
    for splits in (raw, load_dataset(limit=1000, batch_size=100), load_dataset(batch_size=100)):
        assert splits.info.statistics[0] == pytest.approx((full_mean,), abs=1e-9)
    small = load_dataset(limit=1000, batch_size=100)
    assert small.info.mean == pytest.approx((0.28604,), abs=1e-5) and small.info.std == pytest.approx((0.35302,), abs=1e-5)
    with pytest.raises(ValueError, match="Expected pixels to be one of"):
        load_dataset(pixels="bytes")


@needs_fmnist
def test_one_hot_labels(arrays):
    (_, y_train), _ = arrays
    splits = load_dataset(batch_size=5, validation_split=0, shuffle_buffer=0, limit=5, one_hot=True)
    _, y = next(iter(splits.train))
    assert y.shape == (5, 10) and y.dtype == tf.float32
    np.testing.assert_array_equal(np.argmax(y.numpy(), axis=1), y_train[:5])


@needs_fmnist
def test_validation_split_is_deterministic_and_disjoint(arrays):
    (x_train, _), _ = arrays
    n = 500
    keys = {x.tobytes() for x in x_train[:n]}
    assert len(keys) == n  # no duplicate images, so image bytes identify examples

    def split_keys(seed):
        s = load_dataset(limit=n, validation_split=0.2, seed=seed, batch_size=100, pixels="unit")
        xv, _ = collect(s.validation)
        xt, _ = collect(s.train)
        assert (s.info.num_train, s.info.num_validation) == (400, 100) == (len(xt), len(xv))
        as_key = lambda x: np.round(x * 255).astype(np.uint8).tobytes()  # noqa: E731
        return {as_key(x) for x in xt}, {as_key(x) for x in xv}

    train_a, val_a = split_keys(seed=7)
    train_b, val_b = split_keys(seed=7)
    train_c, val_c = split_keys(seed=8)
    assert val_a == val_b and train_a == train_b  # same seed, same split
    assert not train_a & val_a  # disjoint
    assert train_a | val_a == keys  # together: exactly the first n examples
    assert val_c != val_a  # another seed, another split
    # Validation is never shuffled; training reshuffles every epoch but keeps its examples.
    s = load_dataset(limit=n, validation_split=0.2, seed=7, batch_size=n)
    v1, v2 = collect(s.validation)[1], collect(s.validation)[1]
    np.testing.assert_array_equal(v1, v2)
    t1, t2 = collect(s.train)[1], collect(s.train)[1]
    assert not np.array_equal(t1, t2) and np.array_equal(np.sort(t1), np.sort(t2))


@needs_fmnist
def test_upscaling_replicates_pixels_nearest_neighbour(arrays):
    (x_train, _), _ = arrays
    kw = dict(batch_size=8, validation_split=0, shuffle_buffer=0, pixels="unit", limit=8)
    s40 = load_dataset(image_size=40, **kw)
    assert s40.info.input_shape == (40, 40, 1)
    x40 = next(iter(s40.train))[0].numpy()
    assert x40.shape == (8, 40, 40, 1)
    src = (x_train[:8] / 255.0).astype(np.float32)
    # Half-pixel-centre nearest neighbour: output pixel i copies input pixel floor((i+0.5)*28/40).
    idx = np.floor((np.arange(40) + 0.5) * 28 / 40).astype(int)
    np.testing.assert_allclose(x40, src[:, idx][:, :, idx], atol=1e-7)
    assert np.isin(np.unique(x40), np.unique(src)).all()  # no interpolated values

    x56 = next(iter(load_dataset(image_size=(56, 56), **kw).train))[0].numpy()
    np.testing.assert_allclose(x56, np.repeat(np.repeat(src, 2, axis=1), 2, axis=2), atol=1e-7)

    assert load_dataset(image_size=(30, 40), **kw).info.input_shape == (30, 40, 1)


@needs_fmnist
def test_normalization_uses_the_full_training_split_statistics():
    s = load_dataset(limit=1000, batch_size=250, shuffle_buffer=0, validation_split=0)
    xt, _ = collect(s.train)
    (x_train, _), _ = load_fashion_mnist_arrays()
    mean, std = s.info.statistics
    np.testing.assert_allclose(xt, (x_train[:1000] / 255.0 - mean[0]) / std[0], atol=1e-5)
    assert abs(xt.mean()) < 0.05 and abs(xt.std() - 1.0) < 0.05  # a subset: roughly standardised


@needs_fmnist
def test_augment_applies_to_training_only(arrays):
    (x_train, _), (x_test, _) = arrays
    kw = dict(batch_size=16, validation_split=0, shuffle_buffer=0, pixels="unit", limit=16)
    s = load_dataset(augment=lambda x: x[:, :, ::-1, :], **kw)
    np.testing.assert_allclose(collect(s.train)[0], x_train[:16, :, ::-1] / 255.0, atol=1e-7)
    np.testing.assert_allclose(collect(s.test)[0], x_test[:16] / 255.0, atol=1e-7)

    s = load_dataset(augment=keras.layers.RandomFlip("horizontal", seed=3), **kw)
    xt = collect(s.train)[0]
    src = x_train[:16] / 255.0
    same = np.all(np.isclose(xt, src), axis=(1, 2, 3))
    flipped = np.all(np.isclose(xt, src[:, :, ::-1]), axis=(1, 2, 3))
    assert np.all(same | flipped) and flipped.any()  # the layer ran in training mode
    np.testing.assert_allclose(collect(s.test)[0], x_test[:16] / 255.0, atol=1e-7)


def test_scaled_size():
    assert scaled_size(32, 1.4) == 45
    assert scaled_size(28, 1.4) == 39
    assert scaled_size(28, 40 / 28) == 40
    assert scaled_size(224, 1.0) == 224
    with pytest.raises(ValueError, match="gamma=0"):
        scaled_size(28, 0)
    with pytest.raises(ValueError, match="size=-3"):
        scaled_size(-3, 1.2)


# ----------------------------------------------------------------- TFDS through mock_data


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_mock(name, num_classes, tmp_path):
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        s = load_dataset(name, data_dir=str(tmp_path), batch_size=8, limit=None)
        info = s.info
        assert info.num_classes == num_classes and len(info.class_names) == num_classes
        assert info.input_shape == (32, 32, 3)
        assert (info.num_train, info.num_validation, info.num_test) == (18, 2, 20)
        assert info.mean == _TFDS_STATS[name][0]
        x, y = next(iter(s.train))
        assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32
        assert y.shape == (8,) and y.dtype == tf.int32
        assert np.all((y.numpy() >= 0) & (y.numpy() < num_classes))
        assert len(collect(s.validation)[1]) == 2 and len(collect(s.test)[1]) == 20

        s = load_dataset(name, data_dir=str(tmp_path), batch_size=4, image_size=40,
                         one_hot=True, pixels="unit", train_on_validation=True, limit=6)
        assert s.validation is None and s.info.num_train == 6 and s.info.num_test == 6
        x, y = next(iter(s.train))
        assert x.shape == (4, 40, 40, 3) and y.shape == (4, num_classes)
        assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0


def test_tfds_mock_imagenet_resizes_to_224_by_default(tmp_path):
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        s = load_dataset("imagenet2012", data_dir=str(tmp_path), batch_size=3, validation_split=0)
        assert s.info.input_shape == (224, 224, 3) and s.info.num_classes == 1000
        x, _ = next(iter(s.test))  # mock images have random sizes; all come out 224x224
        assert x.shape == (3, 224, 224, 3)


# ----------------------------------------------------------------- errors


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="mnist_typo") as err:
        load_dataset("mnist_typo")
    for known in KNOWN_DATASETS:
        assert known in str(err.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0"):
        load_dataset(batch_size=0)
    with pytest.raises(ValueError, match=r"validation_split=1\.0"):
        load_dataset(validation_split=1.0)
    with pytest.raises(ValueError, match=r"validation_split=-0\.1"):
        load_dataset(validation_split=-0.1)
    with pytest.raises(ValueError, match="image_size=0"):
        load_dataset(image_size=0)
    with pytest.raises(ValueError, match="augment"):
        load_dataset(augment="flip")


def test_cifar100_without_data_dir():
    with pytest.raises(ValueError, match="data_dir") as err:
        load_dataset("cifar100")
    assert "tfds build cifar100" in str(err.value)


def test_cifar100_empty_data_dir_real_tfds(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared") as err:
        load_dataset("cifar100", data_dir=str(tmp_path))
    assert "tfds build cifar100 --data_dir" in str(err.value) and str(tmp_path) in str(err.value)


def test_imagenet_hint_mentions_manual_tars(tmp_path):
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        load_dataset("imagenet2012", data_dir=str(tmp_path))


def test_missing_fashion_mnist_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(data_dir=str(tmp_path))
    monkeypatch.setenv(data.FASHION_MNIST_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_fashion_mnist_arrays()


@needs_fmnist
def test_env_var_overrides_default(tmp_path, monkeypatch):
    for f in os.listdir(FMNIST_DIR):
        shutil.copy(os.path.join(FMNIST_DIR, f), tmp_path / f)
    monkeypatch.setenv(data.FASHION_MNIST_ENV_VAR, str(tmp_path))
    (x, y), _ = load_fashion_mnist_arrays()
    assert x.shape == (60000, 28, 28, 1) and y[0] == 9


def _write_gz(path, payload):
    with gzip.open(path, "wb") as f:
        f.write(payload)


@needs_fmnist
@pytest.mark.parametrize(
    "kind,match",
    [
        ("not_gzip", "cannot decompress"),
        ("bad_magic", "magic number 0x00000803"),
        ("truncated", "holds 100 bytes"),
    ],
)
def test_corrupt_idx_file(tmp_path, kind, match):
    for f in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(FMNIST_DIR, f), tmp_path / f)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    if kind == "not_gzip":
        bad.write_bytes(b"this is not a gzip file at all")
    elif kind == "bad_magic":
        _write_gz(bad, (0x0801).to_bytes(4, "big") + bytes(100))
    else:  # header promises 60000 28x28 images, only 100 bytes follow
        header = b"".join(v.to_bytes(4, "big") for v in (0x0803, 60000, 28, 28))
        _write_gz(bad, header + bytes(100))
    with pytest.raises(ValueError, match=match) as err:
        load_dataset(data_dir=str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in str(err.value)
