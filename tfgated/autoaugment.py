"""AutoAugment with fixed policies as a Keras layer for the ``tf.data`` pipeline.

:class:`AutoAugment` applies one of two published policies (Cubuk et al., "AutoAugment:
Learning Augmentation Policies from Data", CVPR 2019): ``"cifar10"``, the paper's 25 CIFAR-10
sub-policies, and ``"micronet"``, the policy the SIPA authors searched on CIFAR-100 and train
with (:data:`AUTOAUGMENT_MICRONET`). The tables and the magnitude ranges are transcribed from
their reference repository; the operations are TensorFlow ports of the PIL ones it uses.
The augment policies ``autoaugment_cifar10`` and ``autoaugment_micronet`` of
:mod:`tfgated.augment` name this layer.
"""

from __future__ import annotations

import keras

__all__ = ["AUTOAUGMENT_CIFAR10", "AUTOAUGMENT_MICRONET", "AUTOAUGMENT_OPS", "AUTOAUGMENT_TABLES", "AutoAugment",
           "autoaugment_magnitude", "autoaugment_op"]


# --------------------------------------------------------------------------- AutoAugment

# Sub-policies ``(p1, op1, level1, p2, op2, level2)`` transcribed from the SIPA authors'
# reference repository, Lee-Gihun/MicroNet_OSI-AI, data_utils/autoaugment.py (commit a67c7ce,
# itself derived from DeepVoltaire/AutoAugment). ``CIFAR10Policy`` there: the 25 CIFAR-10
# sub-policies of Cubuk et al., "AutoAugment", CVPR 2019.
AUTOAUGMENT_CIFAR10 = (
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.8, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)

# ``CIFAR100Policy`` of the same file: the authors' own policy, searched on CIFAR-100 with their
# AutoML_autoaug.py (hyperopt over AutoAugment's search space without Cutout and SamplePairing).
# Their CIFAR-100 configurations (Config/*.json: "aug_policy": "cifar100") train with it.
AUTOAUGMENT_MICRONET = (
    (0.9879223132161143, "solarize", 1, 0.03867356636118723, "rotate", 8),
    (0.5906539642621361, "autocontrast", 2, 0.07767828867074882, "shearX", 9),
    (0.18063692212392612, "contrast", 3, 0.6762460359799197, "translateY", 1),
    (0.4677780879889155, "posterize", 0, 0.550614549256463, "contrast", 2),
    (0.793757777553684, "solarize", 4, 0.3124766163048942, "shearY", 2),
    (0.34171542012733713, "translateY", 8, 0.2643456363603939, "sharpness", 5),
    (0.648144686446862, "shearX", 5, 0.20297188174717734, "shearY", 9),
    (0.11474619948856418, "color", 3, 0.9131733124811067, "autocontrast", 6),
    (0.4558313172485038, "shearY", 0, 0.8892801924496353, "brightness", 5),
    (0.9958622271521873, "translateX", 1, 0.5779051595097715, "solarize", 6),
    (0.4200533622250595, "sharpness", 5, 0.5383153544721851, "brightness", 4),
    (0.6409842804847393, "shearY", 7, 0.5017245915965498, "autocontrast", 4),
    (0.6462913003816162, "translateX", 4, 0.27375024179538526, "solarize", 4),
    (0.932342104383339, "translateX", 5, 0.7433929014413744, "sharpness", 2),
    (0.557597831322841, "invert", 4, 0.22304480845915514, "brightness", 4),
    (0.539726520644713, "color", 4, 0.47647885461108325, "equalize", 6),
    (0.6939536342980013, "shearY", 4, 0.5242956429052371, "color", 4),
    (0.6018510250803771, "solarize", 1, 0.39765403790818454, "shearY", 7),
    (0.9533833283616566, "equalize", 8, 0.364953764116815, "equalize", 6),
    (0.1889691085868327, "translateX", 3, 0.5526677051817206, "sharpness", 0),
    (0.9785734237426628, "shearX", 4, 0.30821508771473094, "rotate", 7),
    (0.46711128198273516, "contrast", 8, 0.5407062800240695, "translateY", 9),
    (0.13242120490788128, "shearY", 9, 0.5510846119055629, "brightness", 6),
    (0.3967473536322406, "rotate", 3, 0.9257903359125218, "posterize", 1),
    (0.787739760044718, "contrast", 7, 0.06780952440551483, "invert", 8),
)

AUTOAUGMENT_TABLES = {"cifar10": AUTOAUGMENT_CIFAR10, "micronet": AUTOAUGMENT_MICRONET}

#: The operations; a sub-policy's op index is its position here (0: not applied).
AUTOAUGMENT_OPS = ("identity", "shearX", "shearY", "translateX", "translateY", "rotate", "color", "posterize",
                   "solarize", "contrast", "sharpness", "brightness", "autocontrast", "equalize", "invert")

# The reference's magnitude ranges, np.linspace(start, stop, 10)[level]; posterize's bits are
# rounded, and autocontrast, equalize and invert take none.
_MAGNITUDE_RANGES = {
    "shearX": (0.0, 0.3), "shearY": (0.0, 0.3),
    "translateX": (0.0, 150 / 331), "translateY": (0.0, 150 / 331),  # fractions of the width/height
    "rotate": (0.0, 30.0),  # degrees
    "color": (0.0, 0.9), "contrast": (0.0, 0.9), "sharpness": (0.0, 0.9), "brightness": (0.0, 0.9),
    "posterize": (8.0, 4.0),  # bits kept
    "solarize": (256.0, 0.0),  # threshold on the 0-255 scale
}

# Ops whose magnitude gets a random sign per example (shear, translate, and the enhancement
# factor 1 +- m); the reference's rotate has none (always counter-clockwise).
_SIGNED_OPS = ("shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness")


def autoaugment_magnitude(op, level):
    """The magnitude of ``op`` at ``level`` (0-9) in the reference's ranges (0 for unparametrized ops)."""
    if op not in AUTOAUGMENT_OPS[1:]:
        raise ValueError(f"Unknown AutoAugment operation {op!r}. Expected one of {list(AUTOAUGMENT_OPS[1:])}.")
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"Expected an integer level in [0, 9]. Received: level={level!r}")
    if op not in _MAGNITUDE_RANGES:
        return 0.0
    start, stop = _MAGNITUDE_RANGES[op]
    value = start + (stop - start) * level / 9
    return float(round(value)) if op == "posterize" else value


def _policy_arrays(policy):
    """``(ops, probabilities, magnitudes, signed)`` of a policy table, each ``(25, 2)``."""
    import numpy as np

    table = AUTOAUGMENT_TABLES[policy]
    ops = np.array([[AUTOAUGMENT_OPS.index(row[1]), AUTOAUGMENT_OPS.index(row[4])] for row in table], np.int32)
    probs = np.array([[row[0], row[3]] for row in table], np.float32)
    mags = np.array([[autoaugment_magnitude(row[1], row[2]), autoaugment_magnitude(row[4], row[5])]
                     for row in table], np.float32)
    signed = np.array([[row[1] in _SIGNED_OPS, row[4] in _SIGNED_OPS] for row in table])
    return ops, probs, mags, signed


# The operations on float images in [0, 1], shape (n, H, W, C), with a per-example magnitude ``m``
# (signed where the reference draws a sign). The reference works on 8-bit PIL images; here
# posterize, solarize and equalize work on the image rounded to 256 levels.


def _project(x, rows, fill, interpolation):
    """``ImageProjectiveTransformV3``: output pixel (x, y) samples the input at ``rows`` applied to it."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=rows, output_shape=tf.shape(x)[1:3], fill_value=tf.constant(fill, tf.float32),
        interpolation=interpolation, fill_mode="CONSTANT")


def _affine(x, m, fill, op):
    """Shear, translate or rotate, in PIL's conventions (an affine transform samples at pixel centres)."""
    import tensorflow as tf

    one, zero = tf.ones_like(m), tf.zeros_like(m)
    height, width = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    if op == "shearX":
        rows = [one, m, 0.5 * m, zero, one, zero]
    elif op == "shearY":
        rows = [one, zero, zero, m, one, 0.5 * m]
    elif op == "translateX":
        rows = [one, zero, m * width, zero, one, zero]
    elif op == "translateY":
        rows = [one, zero, zero, zero, one, m * height]
    else:  # rotate counter-clockwise by m degrees about the centre (PIL's Image.rotate)
        theta = m * (3.141592653589793 / 180.0)
        cos, sin = tf.cos(theta), tf.sin(theta)
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        rows = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    rows = tf.stack(rows + [zero, zero], axis=1)
    # The reference shears with bicubic resampling (bilinear here) and translates and rotates
    # with nearest-neighbour resampling.
    return _project(x, rows, fill, "BILINEAR" if op.startswith("shear") else "NEAREST")


def _gray(x):
    """PIL's ``L`` conversion (ITU-R 601-2 luma) of RGB images; other channel counts: the channel mean."""
    import tensorflow as tf

    if x.shape[-1] == 3:
        return tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114], x.dtype), axis=-1, keepdims=True)
    return tf.reduce_mean(x, axis=-1, keepdims=True)


def _blend(degenerate, x, factor):
    """PIL's ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, clipped."""
    import tensorflow as tf

    return tf.clip_by_value(degenerate + factor[:, None, None, None] * (x - degenerate), 0.0, 1.0)


def _sharpness_degenerate(x):
    """PIL's SMOOTH filter (3x3, centre 5, others 1, over 13) inside, the image itself on the border."""
    import tensorflow as tf

    height, width = tf.shape(x)[1], tf.shape(x)[2]
    total = 4.0 * x[:, 1:-1, 1:-1, :]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total += x[:, dy: height - 2 + dy, dx: width - 2 + dx, :]  # (sums, not a conv: safe on empty batches)
    smooth = tf.pad(total / 13.0, [[0, 0], [1, 1], [1, 1], [0, 0]])
    inner = tf.pad(tf.ones(tf.shape(x)[1:3] - 2, tf.bool), [[1, 1], [1, 1]])
    return tf.where(inner[None, :, :, None], smooth, x)


def _levels(x):
    import tensorflow as tf

    return tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0)


def _equalize(x):
    """PIL's ``ImageOps.equalize`` per example and channel, on the image rounded to 256 levels.

    Per channel histogram ``h``: ``step = (sum(h) - h[last non-zero level]) // 255``;
    ``lut[i] = min(255, (step // 2 + sum(h[:i])) // step)``; unchanged where ``step`` is 0.
    """
    import tensorflow as tf

    shape = tf.shape(x)
    n, channels = shape[0], shape[3]
    q = tf.cast(_levels(x), tf.int32)
    flat = tf.reshape(tf.transpose(q, [0, 3, 1, 2]), [n * channels, -1])  # (n*C, H*W)
    offsets = 256 * tf.range(n * channels)[:, None]
    hist = tf.math.bincount(tf.reshape(flat + offsets, [-1]), minlength=256 * n * channels,
                            maxlength=256 * n * channels)
    hist = tf.reshape(hist, [n * channels, 256])
    last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[1]), axis=1, output_type=tf.int32)
    step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, last, batch_dims=1)) // 255  # (n*C,)
    safe = tf.maximum(step, 1)[:, None]
    lut = tf.minimum(255, (safe // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    out = tf.gather(lut, flat, batch_dims=1)  # (n*C, H*W)
    out = tf.transpose(tf.reshape(out, [n, channels, shape[1], shape[2]]), [0, 2, 3, 1])
    return tf.cast(out, tf.float32) / 255.0


def autoaugment_op(op, images, magnitude, fill_value=128.0 / 255.0):
    """One operation on a batch of float images in [0, 1], ``(n, H, W, C)``.

    Args:
        op: a name of :data:`AUTOAUGMENT_OPS` other than ``"identity"``.
        images: the batch.
        magnitude: a scalar or one per example, signed, in the units of
            :func:`autoaugment_magnitude` (ignored by autocontrast, equalize and invert).
        fill_value: the fill of geometric operations.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(images, tf.float32)
    m = tf.broadcast_to(tf.cast(magnitude, tf.float32), tf.shape(x)[:1])
    return _apply_op(op, x, m, float(fill_value))


def _apply_op(op, x, m, fill):
    """Operation ``op`` on ``x`` at per-example magnitudes ``m``."""
    import tensorflow as tf

    if op in ("shearX", "shearY", "translateX", "translateY", "rotate"):
        return _affine(x, m, fill, op)
    if op == "color":  # saturation; a one-channel image has none to change
        return _blend(_gray(x), x, 1.0 + m) if x.shape[-1] == 3 else x
    if op == "contrast":  # towards the mean grey level
        return _blend(tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True), x, 1.0 + m)
    if op == "brightness":
        return _blend(tf.zeros_like(x), x, 1.0 + m)
    if op == "sharpness":
        return _blend(_sharpness_degenerate(x), x, 1.0 + m)
    if op == "posterize":  # keep the top m bits of the 8-bit level
        div = tf.pow(2.0, 8.0 - m)[:, None, None, None]
        return tf.floor(_levels(x) / div) * div / 255.0
    if op == "solarize":  # invert the levels at or above the threshold m (0-256)
        return tf.where(_levels(x) >= m[:, None, None, None], 1.0 - x, x)
    if op == "autocontrast":  # stretch each channel's [min, max] to [0, 1]
        low = tf.reduce_min(x, axis=[1, 2], keepdims=True)
        high = tf.reduce_max(x, axis=[1, 2], keepdims=True)
        return tf.where(high > low, (x - low) / tf.maximum(high - low, 1e-12), x)
    if op == "equalize":
        return _equalize(x)
    if op == "invert":
        return 1.0 - x
    raise ValueError(f"Unknown AutoAugment operation {op!r}.")


@keras.saving.register_keras_serializable(package="tfgated")
class AutoAugment(keras.layers.Layer):
    """AutoAugment with a fixed policy: per example, one of the 25 sub-policies drawn uniformly,
    each of its two operations applied with its probability at its magnitude.

    Operations and magnitudes follow the SIPA authors' reference (a DeepVoltaire/AutoAugment
    derivative; levels 0-9): shearX/Y by 0-0.3 (random sign), translateX/Y by 0-150/331 of the
    width/height (random sign), rotate 0-30 degrees (counter-clockwise only, as the reference),
    color (saturation), contrast, sharpness and brightness by the factor 1 +- (0-0.9) (random
    sign), posterize to 8-4 bits, solarize at the threshold 256-0 (of 255), autocontrast,
    equalize, invert; geometric operations fill with grey (``fill_value``, 128/255).

    Differences from the PIL reference: images stay float (posterize, solarize and equalize see
    them rounded to 256 levels, the other operations do not round); shears resample bilinearly
    (PIL: bicubic); color is the identity on one-channel images, and contrast, autocontrast and
    equalize act on the one channel as PIL does on an ``L`` image. Equalize is PIL's algorithm
    (per channel) on the rounded levels, not an approximation. Every operation but the shears
    agrees with Pillow within one 8-bit level (``tests/tfgated/test_augment.py``).

    The authors apply the policy before their pad-4 crop and flip; this layer is the policy
    alone (the augment policy ``autoaugment_micronet_crop_flip`` of :mod:`tfgated.augment` is both).

    Vectorized: each stage partitions the batch by operation (``tf.dynamic_partition``), so
    every example goes through one operation per stage. Speed on 2 CPU cores shared with a
    training run, in a ``tf.data`` map or ``tf.function``: about 2.5 ms per batch of 128 28x28x1
    images and 6-8 ms per batch of 128 32x32x3 images (about 50 ms eagerly).

    Args:
        policy: ``"micronet"`` (the SIPA authors' CIFAR-100 policy) or ``"cifar10"``.
        value_range: the images' range (``tfgated.data`` augments in ``(0, 1)``).
        fill_value: the fill of geometric operations, as a fraction of the range.
        seed: optional integer seed of the random draws.
        **kwargs: as for ``keras.layers.Layer``.
    """

    def __init__(self, policy="micronet", value_range=(0.0, 1.0), fill_value=128.0 / 255.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if policy not in AUTOAUGMENT_TABLES:
            raise ValueError(f"Unknown AutoAugment policy {policy!r}. Expected one of {sorted(AUTOAUGMENT_TABLES)}.")
        value_range = tuple(float(v) for v in value_range)
        if len(value_range) != 2 or not value_range[1] > value_range[0]:
            raise ValueError(f"Expected value_range=(low, high) with high > low. Received: value_range={value_range}")
        if not 0.0 <= float(fill_value) <= 1.0:
            raise ValueError(f"Expected fill_value in [0, 1]. Received: fill_value={fill_value}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Expected seed to be None or an integer. Received: seed={seed!r}")
        self.policy = policy
        self.value_range = value_range
        self.fill_value = float(fill_value)
        self.seed = seed
        self._ops, self._probs, self._mags, self._signed = _policy_arrays(policy)

    def _uniform(self, n, k, **kwargs):
        import tensorflow as tf

        return tf.random.uniform([n], seed=None if self.seed is None else self.seed + k, **kwargs)

    def call(self, inputs, training=True):
        import tensorflow as tf

        if not training:
            return inputs
        x = tf.convert_to_tensor(inputs)
        dtype, single = x.dtype, x.shape.rank == 3
        if single:
            x = x[None]
        if x.shape.rank != 4 or x.shape[-1] is None:
            raise ValueError(f"AutoAugment expects (batch, height, width, channels) images with known channels. "
                             f"Received shape: {x.shape}")
        low, high = self.value_range
        x = (tf.cast(x, tf.float32) - low) / (high - low)
        _, stages = self._draw(tf.shape(x)[0])
        for stage, (op, magnitude) in enumerate(stages):
            x = self._apply_stage(x, op, magnitude, set(self._ops[:, stage].tolist()))
        x = tf.clip_by_value(x, 0.0, 1.0) * (high - low) + low
        x = tf.cast(x, dtype)
        return x[0] if single else x

    def _draw(self, n):
        """The random choices for ``n`` examples: the sub-policy of each, and per stage the
        operation index (0 where its probability said no) and the signed magnitude."""
        import tensorflow as tf

        choice = self._uniform(n, 0, minval=0, maxval=len(self._ops), dtype=tf.int32)
        stages = []
        for stage in (0, 1):
            op = tf.gather(self._ops[:, stage], choice)
            applied = self._uniform(n, 2 * stage + 1) < tf.gather(self._probs[:, stage], choice)
            sign = tf.where(self._uniform(n, 2 * stage + 2) < 0.5, -1.0, 1.0)
            magnitude = tf.gather(self._mags[:, stage], choice)
            magnitude = tf.where(tf.gather(self._signed[:, stage], choice), sign * magnitude, magnitude)
            stages.append((tf.where(applied, op, 0), magnitude))
        return choice, stages

    def _apply_stage(self, x, op, magnitude, used):
        """Each example through its operation ``op`` (0: unchanged); only the ``used`` ones are built."""
        import tensorflow as tf

        count = len(AUTOAUGMENT_OPS)
        images = tf.dynamic_partition(x, op, count)
        magnitudes = tf.dynamic_partition(magnitude, op, count)
        positions = tf.dynamic_partition(tf.range(tf.shape(x)[0]), op, count)
        outs = [
            _apply_op(AUTOAUGMENT_OPS[k], images[k], magnitudes[k], self.fill_value) if k in used and k else images[k]
            for k in range(count)
        ]
        out = tf.dynamic_stitch(positions, outs)
        out.set_shape(x.shape)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(policy=self.policy, value_range=list(self.value_range), fill_value=self.fill_value,
                      seed=self.seed)
        return config
