"""Gated MobileNetV2 (Herrmann et al., ECCV 2020, supplement section 1.1).

The ungated part is exactly ``keras.applications.MobileNetV2`` at ``alpha=1.0``:
same layers, same order, same names (``Conv1``, ``bn_Conv1``,
``expanded_conv_depthwise``, ``block_1_expand``, ..., ``Conv_1``,
``predictions``), so the dense model has the same 3,538,984 parameters and
ImageNet weights copy into it by name (:func:`copy_weights`).

Gates (all added layers are new names, never a Keras one):

* ``block_{i}_input_gate`` / ``_mask``: the block input as the block's first
  convolution reads it (the expansion; in block 0 the depthwise convolution),
  ``g_inp`` channels per gate, as the Gumbel authors gate a block's input. The
  shortcut of a residual block reads the ungated input. ``input_gates=False``
  leaves them out (the form the shipped Fashion-MNIST weights were trained with).
* ``block_{i}_expand_gate`` / ``_mask``: the expansion channels, after the
  expansion ReLU6 and before the depthwise convolution, ``g_exp`` channels per
  gate. Block 0 has no expansion convolution; its depthwise output (before the
  projection) is gated instead, under the name ``expanded_conv_expand_gate``.
* ``block_{i}_project_gate`` / ``_mask``: the projected block output (after
  ``project_BN``), ``g_out`` channels per gate. In residual blocks this gates
  the branch before the addition; in non-residual blocks it gates the block
  output itself.

Every gate of a non-residual block (a stage's first block, whose output has no
shortcut around it) keeps one gate forced open, as the supplement prescribes,
so no layer loses all of its channels. Data-dependent gates read the block
input, so the decision exists before the gated convolutions run.

Granularity (channels per gate) per stage is the supplement's table
(:data:`IMAGENET_GRANULARITY`, columns ``g_inp``, ``g_out``, ``g_exp``).

The ImageNet presets follow the paper's form: data-dependent gates have per-gate
hidden units (``per_gate_hidden``) and the activation target is a fraction of the
gated MACs (``target_measure="macs"``).
"""

from __future__ import annotations

import keras

import tfgated
from tfgated.gate_settings import GateSettings
from tfgated.zoo import papers
from tfgated.zoo.inputs import pixel_preprocessing
from tfgated.zoo.registry import register_family

#: The MobileNetV2 body at alpha=1.0, one row per stage: the block row (expansion t,
#: output channels c, repeats n, first stride s) and its channels per gate (g_inp, g_out,
#: g_exp) from the table in section 1.1 of the Gumbel paper's supplement.
_IMAGENET_BODY = (
    ((1, 16, 1, 1), (8, 8, 16)),
    ((6, 24, 2, 2), (8, 8, 24)),
    ((6, 32, 3, 2), (8, 16, 24)),
    ((6, 64, 4, 2), (8, 16, 32)),
    ((6, 96, 3, 1), (16, 32, 48)),
    ((6, 160, 3, 2), (16, 32, 64)),
    ((6, 320, 1, 1), (32, 64, 64)),
)
IMAGENET_BLOCKS = tuple(blocks for blocks, _ in _IMAGENET_BODY)
IMAGENET_GRANULARITY = tuple(granularity for _, granularity in _IMAGENET_BODY)

#: A narrow MobileNetV2 for 28x28 grayscale images (Fashion-MNIST): stride-1 stem,
#: three stride-2 stages (28 -> 14 -> 7 -> 4). Its channels per gate are chosen (not
#: from the paper) to divide every expansion and output width: 4 gates per expansion
#: of the first block of a stage, 6 or 8 in the others, 2 to 4 per output.
_FASHION_MNIST_BODY = (((1, 8, 1, 1), (4, 4, 8)), ((6, 16, 2, 2), (4, 4, 12)),
                       ((6, 24, 2, 2), (4, 8, 24)), ((6, 32, 2, 2), (8, 8, 24)))
FASHION_MNIST_BLOCKS = tuple(blocks for blocks, _ in _FASHION_MNIST_BODY)
FASHION_MNIST_GRANULARITY = tuple(granularity for _, granularity in _FASHION_MNIST_BODY)

#: Batch-norm momentum of keras.applications.MobileNetV2 (the ImageNet presets keep it).
KERAS_BN_MOMENTUM = 0.999

#: Batch-norm momentum of the small (Fashion-MNIST) presets: Keras' own default. With
#: 0.999 the moving statistics trail a few epochs' training by about 1,000 steps, and
#: the model evaluates near chance (0.13 after 5 epochs) until they are re-estimated.
SMALL_BN_MOMENTUM = 0.99


def make_divisible(value, divisor=8, min_value=None):
    """Round ``value`` to a multiple of ``divisor`` as keras.applications does (at most 10% down)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def correct_pad(inputs, kernel_size=3):
    """Zero padding before a stride-2 'valid' convolution, as keras.applications pads."""
    rows, cols = inputs.shape[1:3]
    adjust = (1, 1) if rows is None else (1 - rows % 2, 1 - cols % 2)
    half = kernel_size // 2
    return ((half - adjust[0], half), (half - adjust[1], half))


def _granularity_rows(granularity, count):
    """``granularity`` as a list of int triples, or a ValueError in Keras' style."""
    expected = (
        f"Expected granularity to be a list of {count} rows (g_inp, g_out, g_exp) of positive "
        f"integers, one per block row. Received: granularity={granularity!r}"
    )
    if isinstance(granularity, (str, bytes)) or not hasattr(granularity, "__iter__"):
        raise ValueError(expected)
    rows = []
    for row in granularity:
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise ValueError(expected)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in row):
            raise ValueError(expected)
        rows.append(tuple(row))
    return rows


def _check_blocks(blocks, granularity):
    blocks = [tuple(int(v) for v in row) for row in blocks]
    for row in blocks:
        if len(row) != 4 or min(row) < 1 or row[3] not in (1, 2):
            raise ValueError(
                "Expected each block row to be (expansion, channels, repeats, stride) with positive "
                f"integers and stride 1 or 2. Received: {row}"
            )
    if granularity is not None:
        granularity = _granularity_rows(granularity, len(blocks))
        if len(granularity) != len(blocks):
            raise ValueError(
                f"Expected one granularity row (g_inp, g_out, g_exp) per block row ({len(blocks)}). "
                f"Received: {len(granularity)} rows"
            )
        for row in granularity:
            if len(row) != 3 or min(row) < 1:
                raise ValueError(
                    f"Expected granularity rows (g_inp, g_out, g_exp) of positive integers. Received: {row}"
                )
    return blocks, granularity


def _gate(features, granularity, settings, context, name, force_open):
    """Gate ``features`` in groups of ``granularity`` channels; returns (features, z)."""
    return tfgated.channel_gate(
        features, granularity, kind=settings.kind, context=context, name=name, force_open=force_open,
        **settings.gate_kwargs,
    )


def inverted_residual_block(inputs, expansion, stride, filters, block_id, gates=None, granularity=None,
                            bn_momentum=KERAS_BN_MOMENTUM, input_gates=True):
    """One MobileNetV2 block with keras.applications' layer names, optionally gated.

    Args:
        inputs: block input tensor.
        expansion, stride, filters: the block's expansion factor, stride and output channels.
        block_id: index of the block in the network (0 is the unexpanded first block).
        gates: normalized gate settings, or None for the dense block.
        granularity: (g_inp, g_out, g_exp) channels per gate.
        bn_momentum: momentum of the block's batch norms' moving statistics.
        input_gates: with ``gates``, also gate the input channels the block's first
            convolution reads (``g_inp`` per gate).

    Returns:
        ``(outputs, [z, ...])``: the block output and its gate tensors.
    """
    in_channels = inputs.shape[-1]
    residual = in_channels == filters and stride == 1
    x = inputs
    zs = []
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if gates is not None and input_gates:
        x, z = _gate(x, granularity[0], gates, inputs, f"{prefix}input", not residual)
        zs.append(z)
    if block_id:
        x = keras.layers.Conv2D(
            expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand"
        )(x)
        x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=bn_momentum, name=f"{prefix}expand_BN")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
        if gates is not None:
            x, z = _gate(x, granularity[2], gates, inputs, f"{prefix}expand", not residual)
            zs.append(z)
    if stride == 2:
        x = keras.layers.ZeroPadding2D(padding=correct_pad(x, 3), name=f"{prefix}pad")(x)
    x = keras.layers.DepthwiseConv2D(
        3,
        strides=stride,
        use_bias=False,
        padding="same" if stride == 1 else "valid",
        name=f"{prefix}depthwise",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=bn_momentum, name=f"{prefix}depthwise_BN")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    if gates is not None and not block_id:
        # Block 0 has no expansion convolution: gate its depthwise channels instead.
        x, z = _gate(x, granularity[2], gates, inputs, f"{prefix}expand", not residual)
        zs.append(z)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=bn_momentum, name=f"{prefix}project_BN")(x)
    if gates is not None:
        x, z = _gate(x, granularity[1], gates, inputs, f"{prefix}project", not residual)
        zs.append(z)
    if residual:
        x = keras.layers.Add(name=f"{prefix}add")([inputs, x])
    return x, zs


@register_family("mobilenet_v2")
def build(
    num_classes=1000,
    input_shape=(224, 224, 3),
    gates=None,
    blocks=IMAGENET_BLOCKS,
    stem_filters=32,
    stem_stride=2,
    last_filters=1280,
    dropout=0.0,
    bn_momentum=KERAS_BN_MOMENTUM,
    name=None,
    preprocessing=None,
    input_gates=True,
):
    """Build a (gated) MobileNetV2 classifier outputting softmax probabilities.

    Args:
        num_classes: classes of the ``predictions`` layer.
        input_shape: image shape, channels last.
        gates: None for the dense network, or a dict (see
            :mod:`tfgated.gate_settings`) with ``kind``,
            ``loss_kind`` ("per_batch"/"per_gate"), ``target``, ``weight``,
            ``granularity`` (one (g_inp, g_out, g_exp) row per row of
            ``blocks``; defaults to the supplement's table for the ImageNet
            body) and optional GumbelGate arguments (``temperature``,
            ``open_probability``, ``hidden_units``, ``per_gate_hidden``, ``threshold``,
            ``seed``, ``gradient_scale``, ``target_measure``).
        blocks: rows (expansion, channels, repeats, first stride).
        stem_filters, stem_stride: the ``Conv1`` stem.
        last_filters: channels of the final 1x1 convolution ``Conv_1``.
        dropout: dropout rate before the classifier (0 keeps the Keras structure).
        bn_momentum: momentum of every batch norm's moving statistics. The default, 0.999,
            is keras.applications'; it suits ImageNet-length training. Over a few thousand
            steps the moving statistics lag the weights and evaluation falls toward chance,
            so the small presets use 0.99.
        name: model name.
        preprocessing: ``None`` (the model takes prepared inputs) or a preset's ``input``
            entry (raw pixels in, :func:`tfgated.zoo.inputs.pixel_preprocessing`).
        input_gates: with ``gates``, gate each block's input channels as its first
            convolution reads them (the table's ``g_inp``), as the paper does; ``False``
            gates only expansions and projections.

    Returns:
        An uncompiled ``keras.Model``.
    """
    default_granularity = IMAGENET_GRANULARITY if tuple(map(tuple, blocks)) == IMAGENET_BLOCKS else None
    settings = GateSettings.from_config(gates, default_granularity, extra_keys=())
    if settings is not None and settings.granularity is None:
        raise ValueError(
            "Expected gates['granularity'] (one (g_inp, g_out, g_exp) row per block row) for a "
            "non-ImageNet MobileNetV2 body. Received: granularity=None"
        )
    blocks, granularity = _check_blocks(blocks, settings.granularity if settings else None)
    if stem_stride not in (1, 2):
        raise ValueError(f"Expected stem_stride to be 1 or 2. Received: stem_stride={stem_stride}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"Expected dropout in [0, 1). Received: dropout={dropout}")
    if not isinstance(input_gates, bool):
        raise ValueError(f"Expected input_gates to be True or False. Received: input_gates={input_gates!r}")
    if not 0.0 <= float(bn_momentum) < 1.0:
        raise ValueError(f"Expected bn_momentum in [0, 1). Received: bn_momentum={bn_momentum}")

    inputs = keras.Input(shape=tuple(input_shape))
    x = keras.layers.Conv2D(
        stem_filters, 3, strides=stem_stride, padding="same", use_bias=False, name="Conv1"
    )(pixel_preprocessing(inputs, preprocessing))
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=bn_momentum, name="bn_Conv1")(x)
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(x)

    all_z = []
    block_id = 0
    for row, (expansion, channels, repeats, stride) in enumerate(blocks):
        for repeat in range(repeats):
            x, zs = inverted_residual_block(
                x,
                expansion=expansion,
                stride=stride if repeat == 0 else 1,
                filters=make_divisible(channels, 8),
                block_id=block_id,
                gates=settings,
                granularity=granularity[row] if granularity else None,
                bn_momentum=bn_momentum,
                input_gates=input_gates,
            )
            all_z.extend(zs)
            block_id += 1

    x = keras.layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=bn_momentum, name="Conv_1_bn")(x)
    x = keras.layers.ReLU(6.0, name="out_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    if settings is None:
        return tfgated.gated_model(inputs, outputs, [], name=name or "mobilenet_v2")
    return tfgated.gated_model(inputs, outputs, all_z, **settings.loss_arguments(), name=name or "gumbel_mobilenet_v2")


def copy_weights(source, target, skip_missing=False):
    """Copy weights layer by layer, matched by name, from ``source`` into ``target``.

    Use it to load ``keras.applications.MobileNetV2(weights="imagenet")`` into a
    gated MobileNetV2: every Keras layer has its name in both; the gates keep
    their own initial weights.

    Args:
        source: a built model with the weights (e.g. a keras.applications model).
        target: the built model to receive them.
        skip_missing: if False, a weighted layer of ``source`` that ``target``
            lacks (or whose weight shapes differ) raises ValueError.

    Returns:
        The names of the layers copied.
    """
    target_layers = {layer.name: layer for layer in target.layers}
    copied = []
    for layer in source.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        other = target_layers.get(layer.name)
        shapes = [w.shape for w in weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            if skip_missing:
                continue
            found = None if other is None else [tuple(w.shape) for w in other.weights]
            raise ValueError(
                f"Cannot copy layer {layer.name!r}: expected the target to have it with weight "
                f"shapes {shapes}. Received: {found}"
            )
        other.set_weights(weights)
        copied.append(layer.name)
    return copied


def _recipe(epochs, batch_size, learning_rate, optimizer="sgd", **extra):
    return {
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "momentum": 0.9,
        "weight_decay": 4e-5,
        "epochs": epochs,
        "batch_size": batch_size,
        "loss": "sparse_categorical_crossentropy",
        **extra,
    }


_PAPER = papers.GUMBEL_MOBILENET_V2


def _paper_gates(kind, loss, target):
    """The paper's form: target a fraction of the gated MACs; dependent gates with per-gate hidden units."""
    gates = {"kind": kind, "loss_kind": loss, "target": target, "weight": 1.0, "target_measure": "macs"}
    if kind == "dependent":
        gates["per_gate_hidden"] = True
    return gates


def _imagenet_preset(kind, loss, target):
    kind_name = {"independent": "Ind", "dependent": "Dep"}[kind]
    loss_name = {"per_batch": "PB", "per_gate": "PG"}[loss]
    return {
        "family": "mobilenet_v2",
        "arch": {},
        "gates": _paper_gates(kind, loss, target),
        "dataset": "imagenet2012",
        "input_shape": (224, 224, 3),
        "num_classes": 1000,
        "recipe": _recipe(epochs=120, batch_size=256, learning_rate=0.045, warm_start="imagenet"),
        "weights": None,
        "paper": _PAPER,
        "description": (
            f"MobileNetV2 (alpha 1.0, keras.applications layer names) with {kind_name} Gumbel channel "
            f"gates on every block input, expansion and projection at the supplement's granularities "
            f"(g_inp, g_exp, g_out), {loss_name} activation loss, target t={target} of the gated MACs"
            f"{'; per-gate hidden units' if kind == 'dependent' else ''}; one gate forced open in "
            "non-residual blocks. "
            "ImageNet weights of keras.applications.MobileNetV2 copy in with copy_weights()."
        ),
        "test_input_shape": (96, 96, 3),
    }


#: The small (Fashion-MNIST) presets' architecture, data and recipe.
_FASHION_ARCH = {
    "blocks": FASHION_MNIST_BLOCKS,
    "stem_filters": 16,
    "stem_stride": 1,
    "last_filters": 128,
    "bn_momentum": SMALL_BN_MOMENTUM,
}
_FASHION_DATA = {
    "dataset": "fashion_mnist",
    "input_shape": (28, 28, 1),
    "num_classes": 10,
    "recipe": _recipe(epochs=30, batch_size=128, learning_rate=0.05, schedule={"kind": "cosine"}),
}

PRESETS = {
    "mobilenet_v2_imagenet": {
        "family": "mobilenet_v2",
        "arch": {},
        "gates": None,
        "dataset": "imagenet2012",
        "input_shape": (224, 224, 3),
        "num_classes": 1000,
        "recipe": _recipe(epochs=300, batch_size=256, learning_rate=0.045),
        "weights": None,
        "paper": papers.MOBILENET_V2_IMAGENET,
        "description": (
            "Dense MobileNetV2 (alpha 1.0), layer for layer keras.applications.MobileNetV2: "
            "3,538,984 parameters."
        ),
        "test_input_shape": (96, 96, 3),
    },
    **{
        f"gumbel_mobilenet_v2_imagenet_{k[:3]}_{l_short}_t0.5": _imagenet_preset(k, loss, 0.5)
        for k in ("independent", "dependent")
        for loss, l_short in (("per_batch", "pb"), ("per_gate", "pg"))
    },
    "mobilenet_v2_fashion_mnist": {
        "family": "mobilenet_v2",
        "arch": _FASHION_ARCH,
        "gates": None,
        **_FASHION_DATA,
        "weights": None,
        "paper": papers.FASHION_MOBILENET,
        "description": (
            "Narrow dense MobileNetV2 for 28x28x1 images: stride-1 stem of 16 channels, 7 blocks "
            "(8/16/24/32 channels, three stride-2 stages), 128-channel head."
        ),
    },
    "gumbel_mobilenet_v2_fashion_mnist": {
        "family": "mobilenet_v2",
        # no input gates: the form the shipped weights (zoo/weights) were trained with
        "arch": {**_FASHION_ARCH, "input_gates": False},
        "gates": {
            "kind": "independent",
            "loss_kind": "per_batch",
            "target": 0.5,
            "weight": 1.0,
            "granularity": FASHION_MNIST_GRANULARITY,
        },
        **_FASHION_DATA,
        "weights": None,
        "paper": {
            "source": "Herrmann, Bowen, Zabih: Channel selection using Gumbel Softmax, ECCV 2020",
            "table": "none (the paper reports no Fashion-MNIST numbers)",
            "numbers": {},
        },
        "description": (
            "The narrow Fashion-MNIST MobileNetV2 with independent (learned-pruning) Gumbel channel "
            "gates on expansions and projections (no input gates: the shipped weights were trained "
            "without them, where the paper also gates each block's input), PB activation loss, "
            "t=0.5 of the gates (the paper: of the gated MACs). Granularities are our choice (the supplement's table is for the ImageNet body): they divide each width."
        ),
    },
}
