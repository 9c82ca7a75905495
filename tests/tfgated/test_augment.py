"""AutoAugment: the transcribed policy tables, each operation on crafted images, and the layer
on real Fashion-MNIST batches (1 and 3 channels), inside ``tf.data`` and through its config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgated import augment
from tfgated.autoaugment import (
    AUTOAUGMENT_CIFAR10,
    AUTOAUGMENT_MICRONET,
    AUTOAUGMENT_OPS,
    AUTOAUGMENT_TABLES,
    AutoAugment,
    autoaugment_magnitude,
    autoaugment_op,
)

FILL = 128 / 255


def op(name, images, magnitude=0.0):
    return autoaugment_op(name, np.asarray(images, np.float32), magnitude).numpy()


# --------------------------------------------------------------------------- tables


def test_tables_have_25_two_step_sub_policies_of_known_operations():
    assert set(AUTOAUGMENT_TABLES) == {"cifar10", "micronet"}
    for table in (AUTOAUGMENT_CIFAR10, AUTOAUGMENT_MICRONET):
        assert len(table) == 25
        for p1, op1, level1, p2, op2, level2 in table:
            assert 0.0 <= p1 <= 1.0 and 0.0 <= p2 <= 1.0
            assert op1 in AUTOAUGMENT_OPS[1:] and op2 in AUTOAUGMENT_OPS[1:]
            assert level1 in range(10) and level2 in range(10)


def test_tables_match_the_reference_in_spot_checks():
    # Numbers read off Lee-Gihun/MicroNet_OSI-AI data_utils/autoaugment.py (CIFAR10Policy, CIFAR100Policy).
    assert AUTOAUGMENT_CIFAR10[0] == (0.1, "invert", 7, 0.2, "contrast", 6)
    assert AUTOAUGMENT_CIFAR10[3] == (0.5, "shearY", 8, 0.7, "translateY", 9)
    assert AUTOAUGMENT_CIFAR10[14] == (0.5, "solarize", 2, 0.0, "invert", 3)
    assert AUTOAUGMENT_CIFAR10[24] == (0.7, "translateY", 9, 0.9, "autocontrast", 1)
    assert AUTOAUGMENT_MICRONET[0] == (0.9879223132161143, "solarize", 1, 0.03867356636118723, "rotate", 8)
    assert AUTOAUGMENT_MICRONET[9] == (0.9958622271521873, "translateX", 1, 0.5779051595097715, "solarize", 6)
    assert AUTOAUGMENT_MICRONET[18] == (0.9533833283616566, "equalize", 8, 0.364953764116815, "equalize", 6)
    assert AUTOAUGMENT_MICRONET[24] == (0.787739760044718, "contrast", 7, 0.06780952440551483, "invert", 8)
    assert sum(row[0] + row[3] for row in AUTOAUGMENT_CIFAR10) == pytest.approx(26.7)


def test_magnitude_ranges_are_the_references():
    assert autoaugment_magnitude("shearX", 9) == pytest.approx(0.3)
    assert autoaugment_magnitude("shearY", 3) == pytest.approx(0.1)
    assert autoaugment_magnitude("translateY", 9) == pytest.approx(150 / 331)
    assert autoaugment_magnitude("rotate", 3) == pytest.approx(10.0)
    assert autoaugment_magnitude("rotate", 9) == pytest.approx(30.0)
    assert autoaugment_magnitude("brightness", 6) == pytest.approx(0.6)
    assert [autoaugment_magnitude("posterize", level) for level in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert autoaugment_magnitude("solarize", 0) == 256.0 and autoaugment_magnitude("solarize", 9) == 0.0
    assert autoaugment_magnitude("solarize", 4) == pytest.approx(256 - 4 * 256 / 9)
    assert autoaugment_magnitude("equalize", 8) == 0.0
    with pytest.raises(ValueError, match="level"):
        autoaugment_magnitude("rotate", 10)
    with pytest.raises(ValueError, match="Unknown AutoAugment operation"):
        autoaugment_magnitude("cutout", 3)


# --------------------------------------------------------------------------- operations


def ramp(height=16, width=16, low=0.2, high=0.6):
    return np.linspace(low, high, height * width, dtype=np.float32).reshape(1, height, width, 1)


def test_invert_and_brightness():
    x = ramp()
    np.testing.assert_allclose(op("invert", x), 1.0 - x, atol=1e-7)
    np.testing.assert_allclose(op("brightness", x, 0.5), np.minimum(1.5 * x, 1.0), atol=1e-6)
    np.testing.assert_allclose(op("brightness", x, -0.5), 0.5 * x, atol=1e-6)
    assert op("brightness", np.full((1, 4, 4, 1), 0.9), 0.9).max() == 1.0  # clipped


def test_solarize_inverts_levels_at_or_above_the_threshold():
    levels = np.array([0, 100, 142, 143, 200, 255], np.float32)
    x = (levels / 255).reshape(1, 1, 6, 1)
    threshold = autoaugment_magnitude("solarize", 4)  # 142.2
    out = np.round(op("solarize", x, threshold) * 255).ravel()
    np.testing.assert_array_equal(out, [0, 100, 142, 255 - 143, 255 - 200, 0])
    np.testing.assert_allclose(op("solarize", x, 256.0), x)  # level 0: nothing
    np.testing.assert_allclose(op("solarize", x, 0.0), 1.0 - x, atol=1e-7)  # level 9: everything


def test_posterize_to_4_bits_keeps_multiples_of_16():
    levels = np.array([0, 15, 16, 100, 200, 255], np.float32)
    out = op("posterize", (levels / 255).reshape(1, 1, 6, 1), 4.0) * 255
    np.testing.assert_allclose(out.ravel(), [0, 0, 16, 96, 192, 240], atol=1e-4)
    np.testing.assert_allclose(op("posterize", (levels / 255).reshape(1, 1, 6, 1), 8.0) * 255, levels.reshape(1, 1, 6, 1),
                               atol=1e-4)


def test_autocontrast_stretches_each_channel():
    x = np.concatenate([ramp(low=0.2, high=0.6), ramp(low=0.5, high=0.7), np.full_like(ramp(), 0.3)], axis=-1)
    out = op("autocontrast", x)
    np.testing.assert_allclose(out[..., 0].min(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 0].max(), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 0], (x[..., 0] - 0.2) / 0.4, atol=1e-5)
    np.testing.assert_allclose(out[..., 1], (x[..., 1] - 0.5) / 0.2, atol=1e-5)
    np.testing.assert_allclose(out[..., 2], 0.3)  # a flat channel stays


def test_equalize_follows_pils_lookup_table():
    # 64 levels (0..63), 64 pixels each: step = (4096 - 64) // 255 = 15, lut[i] = min(255, (7 + 64 i) // 15).
    levels = np.repeat(np.arange(64), 64).reshape(1, 64, 64, 1)
    out = np.round(op("equalize", levels / 255.0) * 255)
    expected = np.minimum(255, (7 + 64 * np.arange(64)) // 15)
    np.testing.assert_array_equal(out.reshape(64, 64)[:, 0], expected)
    assert out.min() == 0 and out.max() == 255
    flat = np.full((1, 8, 8, 1), 0.4, np.float32)  # one level: unchanged
    np.testing.assert_allclose(op("equalize", flat), np.round(flat * 255) / 255)


def test_color_contrast_and_sharpness():
    red = np.zeros((1, 4, 4, 3), np.float32)
    red[..., 0] = 1.0
    out = op("color", red, -0.9)  # factor 0.1 towards the grey 0.299
    np.testing.assert_allclose(out[0, 0, 0], [0.299 + 0.1 * 0.701, 0.9 * 0.299, 0.9 * 0.299], atol=1e-5)
    gray = ramp()
    np.testing.assert_allclose(op("color", gray, 0.9), gray)  # one channel: no saturation to change
    contrast = op("contrast", gray, -0.9)
    np.testing.assert_allclose(contrast.mean(), gray.mean(), atol=1e-5)
    np.testing.assert_allclose(contrast.std(), 0.1 * gray.std(), rtol=1e-3)
    dot = np.zeros((1, 7, 7, 1), np.float32)
    dot[0, 3, 3] = 1.0
    soft = op("sharpness", dot, -0.9)  # factor 0.1 towards PIL's SMOOTH filter
    np.testing.assert_allclose(soft[0, 3, 3, 0], 5 / 13 + 0.1 * (1 - 5 / 13), atol=1e-6)
    np.testing.assert_allclose(soft[0, 2, 3, 0], 0.9 / 13, atol=1e-6)
    edge = np.zeros((1, 5, 5, 1), np.float32)
    edge[0, 0, 2] = 1.0
    np.testing.assert_allclose(op("sharpness", edge, -0.9)[0, 0, 2, 0], 1.0)  # the border is not filtered


def test_translate_shifts_and_fills_grey():
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, 5, 10] = 1.0
    left = op("translateX", x, 0.25)  # 4 pixels: output (x, y) samples (x + 4, y)
    assert left[0, 5, 6, 0] == 1.0 and left[0, 5, 10, 0] == 0.0
    np.testing.assert_allclose(left[0, :, 12:, 0], FILL)
    right = op("translateX", x, -0.25)
    assert right[0, 5, 14, 0] == 1.0
    np.testing.assert_allclose(right[0, :, :4, 0], FILL)
    down = op("translateY", x, -0.25)
    assert down[0, 9, 10, 0] == 1.0 and down[0, 5, 10, 0] == 0.0


def test_rotate_by_the_largest_angle_moves_a_marked_pixel_counter_clockwise():
    x = np.zeros((1, 15, 15, 1), np.float32)
    x[0, 7, 13] = 1.0  # 6 pixels right of the centre (7, 7)
    out = op("rotate", x, autoaugment_magnitude("rotate", 9))  # 30 degrees
    # counter-clockwise: to (7 - 6 sin 30, 7 + 6 cos 30) = (4, 12.2); clockwise would give row 10
    assert out[0, 4, 12, 0] == 1.0
    assert out[0, 7, 13, 0] == 0.0 and out[0, 10, 12, 0] == 0.0
    assert out[0, 0, 0, 0] == pytest.approx(FILL)  # a corner comes from outside


def test_shear_shifts_rows_by_their_height_and_columns_by_their_width():
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, :, 8] = 1.0
    out = op("shearX", x, 0.3)  # output (x, y) samples (x + 0.3 (y + 0.5), y)
    assert out[0, 0, :, 0].argmax() == 8 and out[0, 10, :, 0].argmax() == 5
    line = np.transpose(x, (0, 2, 1, 3))  # a horizontal line at row 8
    down = op("shearY", line, 0.3)  # output (x, y) samples (x, y + 0.3 (x + 0.5))
    assert down[0, :, 0, 0].argmax() == 8 and down[0, :, 10, 0].argmax() == 5


@pytest.mark.parametrize("name,magnitude", [
    ("equalize", 0), ("autocontrast", 0), ("posterize", 5), ("solarize", 113.8), ("color", -0.6), ("contrast", 0.7),
    ("sharpness", 0.9), ("brightness", -0.3), ("rotate", 20.0), ("translateX", 0.2),
])
def test_operations_agree_with_pil(name, magnitude):
    """Within one 8-bit level of Pillow's ImageOps/ImageEnhance/affine on a random RGB image."""
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    u8 = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    u8[:, :10] //= 3
    image = pil.fromarray(u8)
    reference = {
        "equalize": lambda: ImageOps.equalize(image),
        "autocontrast": lambda: ImageOps.autocontrast(image),
        "posterize": lambda: ImageOps.posterize(image, 5),
        "solarize": lambda: ImageOps.solarize(image, 113.8),
        "color": lambda: ImageEnhance.Color(image).enhance(0.4),
        "contrast": lambda: ImageEnhance.Contrast(image).enhance(1.7),
        "sharpness": lambda: ImageEnhance.Sharpness(image).enhance(1.9),
        "brightness": lambda: ImageEnhance.Brightness(image).enhance(0.7),
        "rotate": lambda: image.rotate(20.0, fillcolor=(128, 128, 128)),
        "translateX": lambda: image.transform(image.size, pil.AFFINE, (1, 0, 4, 0, 1, 0), fillcolor=(128, 128, 128)),
    }[name]()
    ours = np.round(op(name, u8[None] / 255.0, magnitude)[0] * 255)
    assert np.abs(ours - np.asarray(reference, np.float64)).max() <= 1.0


# --------------------------------------------------------------------------- the layer


@pytest.fixture(scope="module")
def real_batches(fashion_mnist_small):
    """64 real Fashion-MNIST images, and a 3-channel version (tinted channels, levels on the 8-bit grid)."""
    gray = fashion_mnist_small[0][:64]
    rgb = np.concatenate([gray, 0.25 + 0.5 * gray, 0.9 - 0.6 * gray], axis=-1)
    return gray, np.round(rgb * 255).astype(np.float32) / 255


@pytest.mark.parametrize("policy", ["micronet", "cifar10"])
@pytest.mark.parametrize("channels", [1, 3])
def test_policy_keeps_shape_dtype_and_range_and_changes_some_images(real_batches, policy, channels):
    x = real_batches[0] if channels == 1 else real_batches[1]
    y = AutoAugment(policy, seed=3)(x).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    changed = np.abs(y - x).reshape(len(x), -1).max(axis=1) > 1e-6
    assert 5 < changed.sum() < len(x)  # most change; some draw no operation (probabilities below 1)


def test_draws_follow_the_table():
    layer = AutoAugment("micronet", seed=5)
    n = 20000
    choice, stages = layer._draw(n)
    choice = choice.numpy()
    counts = np.bincount(choice, minlength=25)
    assert counts.min() > 0.8 * n / 25 and counts.max() < 1.2 * n / 25
    for stage, (ops, magnitudes) in enumerate(stages):
        ops, magnitudes = ops.numpy(), magnitudes.numpy()
        for s, row in enumerate(AUTOAUGMENT_MICRONET):
            probability, name, level = row[3 * stage: 3 * stage + 3]
            mine = choice == s
            applied = ops[mine] != 0
            assert abs(applied.mean() - probability) < 0.08, (s, stage)
            assert set(ops[mine][applied]) == {AUTOAUGMENT_OPS.index(name)}
            np.testing.assert_allclose(np.abs(magnitudes[mine]), autoaugment_magnitude(name, level), rtol=1e-5)
            if name in ("shearX", "shearY", "translateX", "translateY", "contrast", "sharpness", "brightness",
                        "color") and level:
                assert 0.35 < (magnitudes[mine] < 0).mean() < 0.65  # a random sign
            elif name == "rotate":
                assert (magnitudes[mine] > 0).all()  # the reference rotates one way


def test_each_example_gets_its_own_operation(real_batches):
    x = tf.constant(real_batches[1][:4])
    layer = AutoAugment("cifar10")
    ops = [0, AUTOAUGMENT_OPS.index("invert"), AUTOAUGMENT_OPS.index("posterize"), AUTOAUGMENT_OPS.index("translateY")]
    magnitudes = [0.0, 0.0, 4.0, 0.25]
    out = layer._apply_stage(x, tf.constant(ops), tf.constant(magnitudes), set(range(1, len(AUTOAUGMENT_OPS)))).numpy()
    np.testing.assert_allclose(out[0], x[0])
    for i in (1, 2, 3):
        expected = op(AUTOAUGMENT_OPS[ops[i]], x[i: i + 1], magnitudes[i])[0]
        np.testing.assert_allclose(out[i], expected, atol=1e-6)


def test_unchanged_fraction_matches_the_policy():
    """With a 3-channel image every drawn operation changes it except the magnitude-0 ones
    (and 8-bit posterize, threshold-256 solarize): the unchanged fraction is their product."""
    def no_change(name, level):
        if name == "posterize":
            return level <= 1
        return level == 0 and name not in ("autocontrast", "equalize", "invert")

    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    image = np.stack([0.05 + 0.9 * xx, 0.1 + 0.5 * yy, 0.3 + 0.4 * xx * yy], axis=-1)
    image = (np.round(image * 255) / 255).astype(np.float32)
    n = 2048
    for policy, table in AUTOAUGMENT_TABLES.items():
        y = AutoAugment(policy, seed=7)(np.repeat(image[None], n, axis=0)).numpy()
        unchanged = (np.abs(y - image).reshape(n, -1).max(axis=1) < 1e-6).mean()
        expected = np.mean([(1 - p1 * (not no_change(o1, l1))) * (1 - p2 * (not no_change(o2, l2)))
                            for p1, o1, l1, p2, o2, l2 in table])
        assert abs(unchanged - expected) < 0.04, (policy, unchanged, expected)


def test_runs_inside_tf_data_map_in_graph_mode(real_batches):
    layer = augment.augmentation_layer("autoaugment_micronet", seed=11)
    assert isinstance(layer, AutoAugment) and layer.policy == "micronet"
    for x in real_batches:
        ds = tf.data.Dataset.from_tensor_slices(x).batch(16).map(lambda b: layer(b, training=True))
        out = np.concatenate(list(ds.as_numpy_iterator()))
        assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
        assert (np.abs(out - x).reshape(len(x), -1).max(axis=1) > 1e-6).sum() > 5


def test_inference_unbatched_and_value_range(real_batches):
    x = real_batches[1][:8]
    layer = AutoAugment("cifar10", seed=2)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    assert layer(x[0]).shape == x[0].shape
    scaled = AutoAugment("cifar10", value_range=(0, 255), seed=2)(x * 255).numpy()
    assert scaled.max() > 1.5 and scaled.min() >= 0.0 and scaled.max() <= 255.0


def test_config_round_trip_and_registration():
    layer = AutoAugment("cifar10", value_range=(0, 255), fill_value=0.25, seed=9, name="aa")
    config = layer.get_config()
    assert config["policy"] == "cifar10" and config["value_range"] == [0.0, 255.0] and config["seed"] == 9
    clone = AutoAugment.from_config(config)
    assert (clone.policy, clone.value_range, clone.fill_value, clone.seed, clone.name) == (
        "cifar10", (0.0, 255.0), 0.25, 9, "aa")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, AutoAugment) and restored.get_config() == config
    assert keras.saving.get_registered_name(AutoAugment) == "tfgated>AutoAugment"
    with pytest.raises(ValueError, match="Unknown AutoAugment policy"):
        AutoAugment("imagenet")


def test_policies_are_listed():
    assert {"autoaugment_cifar10", "autoaugment_micronet", "randaugment"} <= set(augment.AUGMENT_POLICIES)
    assert augment.augmentation_layer("autoaugment_cifar10").policy == "cifar10"


def test_authors_whole_augmentation_is_the_policy_then_pad4_crop_and_flip():
    """``autoaugment_micronet_crop_flip`` (what a preset's ``autoaugment`` key gives): the policy,
    then a 4-pixel zero pad and random crop, so some outputs carry zero rows or columns the
    policy alone (grey fill, images in [0.3, 0.7]) never makes; identity at inference."""
    x = np.random.default_rng(0).uniform(0.3, 0.7, (64, 32, 32, 3)).astype("float32")
    fn = augment.augmentation_layer("autoaugment_micronet_crop_flip", seed=5)
    out = np.asarray(tf.function(fn)(tf.constant(x)))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0

    def zero_edges(batch):
        rows = (np.abs(batch).max(axis=(2, 3)) == 0)[:, [0, -1]].any(axis=1)
        cols = (np.abs(batch).max(axis=(1, 3)) == 0)[:, [0, -1]].any(axis=1)
        return int((rows | cols).sum())

    assert zero_edges(out) > 10  # 64 * (1 - (1/9)^2) ~ 63 shifted; the policy's own ops may refill a few
    alone = np.asarray(augment.augmentation_layer("autoaugment_micronet", seed=5)(x, training=True))
    assert zero_edges(alone) == 0
    np.testing.assert_array_equal(np.asarray(fn(tf.constant(x), training=False)), x)
    from tfgated.recipes import Recipe

    recipe, _ = Recipe.from_preset({"autoaugment": "cifar100 (authors' policy)", "epochs": 1})
    assert recipe.augment == "autoaugment_micronet_crop_flip"
