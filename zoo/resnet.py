"""Gated ResNets (Herrmann, Bowen, Zabih, "Channel selection using Gumbel Softmax", ECCV 2020).

Two families, both plain functional Keras models built from standard layers plus the
tfgated gates:

``resnet_cifar`` (:func:`cifar_resnet`)
    He et al. 2016's CIFAR ResNet: ``6n + 2`` layers, a 3x3 stem, three stages of ``n``
    basic blocks with 16/32/64 channels (``widths``), global average pooling and a softmax
    classifier. The first block of stages 2 and 3 downsamples (stride 2); its shortcut is
    *option B* (1x1 convolution + batch norm projection), not He et al.'s option A (zero
    padding): option B is a plain layer every exporter understands and costs only a few
    thousand parameters. With layer gates every block computes ``relu(shortcut + z *
    branch(x))`` (``tfgated.residual_gate``, gate ``stage{s}_block{b}_gate``, dependent gates
    read the block input), the downsampling blocks included: there the projection shortcut
    always runs and only the residual branch is gated, ``relu(proj(x) + z * branch(x))``,
    so ResNet-110 has 54 gates, as in the Gumbel paper's supplement. ``gate_projection_blocks=
    False`` leaves the downsampling blocks ungated (ConvNet-AIG's form, 52 gates on
    ResNet-110): the form the shipped Fashion-MNIST gated ResNets were trained with, which
    their presets state. Also used, smaller, for 28x28x1 Fashion-MNIST.

``resnet_imagenet`` (:func:`imagenet_resnet`)
    ResNet-50/101/152 v1 with bottleneck blocks, layer for layer and name for name the
    structure of ``keras.applications.ResNet50``/``ResNet101``/``ResNet152`` ("conv1_conv",
    "conv2_block1_1_conv", ..., "conv5_block3_out", "avg_pool", "predictions"), so their
    ImageNet weights fill every ungated layer (:func:`load_keras_applications_weights`, or
    ``model.load_weights(h5_file, by_name=True)`` with the legacy keras-applications file).
    Two gate levels:

    * ``"layer"``: one gate per residual block, as in the paper ("ResNet-50 (16 gates)";
      ResNet-101 has 33): ``conv{s}_block{b}_add`` becomes ``shortcut + z * branch`` with
      gate ``conv{s}_block{b}_gate``, context = block input. In a stage's first block the
      projection shortcut always runs and only the branch is gated. With
      ``gate_projection_blocks=False`` the first blocks stay ungated (12 gates on ResNet-50).
    * ``"channel"``: channel gates inside *every* bottleneck branch, following the
      supplement ("each gate controls 16, 32, 64 or 128 filters in the four layers'
      expansions, and half that in the contractions"). Gated tensors, for stage ``s`` with
      expansion granularity ``g``: the contraction 1x1 conv's output after ReLU
      (``..._1_relu`` -> mask ``..._1_mask``, ``g/2`` filters per gate), the 3x3 conv's
      output after ReLU (``..._2_relu`` -> ``..._2_mask``, ``g/2``) and the expansion 1x1
      conv's output after batch norm, before the residual add (``..._3_bn`` ->
      ``..._3_mask``, ``g``). Every stage then has 8 + 8 + 16 gates per block. No gate is
      forced open: every gated tensor lies on a residual branch, so closing all of a
      tensor's gates cannot cut the network. Dependent gates read the block input.

The ``gates`` argument of both builders is ``None`` (dense network, exactly the
keras.applications model for ImageNet) or a dict::

    {"kind": "independent" | "dependent",       # default "independent"
     "loss_kind": "per_batch" | "per_gate",      # default "per_batch"
     "target": 0.5, "weight": 1.0,               # activation loss target rate and weight
     "level": "layer" | "channel",               # imagenet only; default "layer"
     "granularity": [16, 32, 64, 128],           # channel level: expansion filters per gate per stage
     "target_measure": "gates" | "macs",         # target a fraction of the gates or of the gated MACs
     "temperature", "open_probability", "hidden_units", "per_gate_hidden", "threshold",
     "gradient_scale", "inference_style", "seed"}  # passed to every GumbelGate

The common keys are checked by :class:`tfgated.gate_settings.GateSettings`. Presets
(:data:`PRESETS`) are plain data; see each preset's ``description`` and ``paper``.
"""

from __future__ import annotations

import keras
from keras import layers

import tfgated
from tfgated.gate_settings import GateSettings
from tfgated.zoo import papers
from tfgated.zoo.pretrained import load_keras_applications_weights  # noqa: F401  (part of this family's API)
from tfgated.zoo.inputs import pixel_preprocessing
from tfgated.zoo.registry import register_family

CIFAR_FAMILY = "resnet_cifar"
IMAGENET_FAMILY = "resnet_imagenet"

#: Blocks per stage of the ImageNet bottleneck ResNets (conv2_x .. conv5_x).
IMAGENET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
#: Bottleneck (contraction) filters of the four stages; the expansion has 4x as many.
IMAGENET_FILTERS = (64, 128, 256, 512)
#: Supplement: filters per gate in the four stages' expansions (contractions: half).
CHANNEL_GRANULARITY = (16, 32, 64, 128)

GATE_LEVELS = ("layer", "channel")
#: Gate keys of this family besides the common ones (tfgated.gate_settings.SETTING_KEYS).
_EXTRA_GATE_KEYS = ("level", "inference_style")

_BN_EPSILON = 1.001e-5  # keras.applications' value (Caffe's ResNets)


# -- gate configuration --------------------------------------------------------------


class _GateSpec:
    """Checked gate configuration of one model build; hands out per-gate kwargs.

    The common keys are checked by :class:`tfgated.gate_settings.GateSettings`; this
    family adds ``level`` and the per-stage ``granularity`` of channel gating.
    """

    def __init__(self, gates, levels):
        settings = GateSettings.from_config(gates, default_granularity=CHANNEL_GRANULARITY, extra_keys=_EXTRA_GATE_KEYS)
        self.settings = settings
        self.kind = settings.kind
        self.level = settings.extra.get("level", "layer")
        if self.level not in levels:
            raise ValueError(f"Expected gates['level'] in {list(levels)}. Received: level={self.level!r}")
        granularity = settings.granularity
        given = gates.to_config() if isinstance(gates, GateSettings) else gates
        if "granularity" in given and self.level != "channel":
            raise ValueError(
                "gates['granularity'] only applies to level='channel'. "
                f"Received: level={self.level!r}, granularity={granularity!r}"
            )
        if not isinstance(granularity, (list, tuple)):
            granularity = (granularity,)
        self.granularity = tuple(granularity)
        if len(self.granularity) != 4 or not all(
            isinstance(g, int) and g >= 2 and g % 2 == 0 for g in self.granularity
        ):
            raise ValueError(
                "Expected gates['granularity'] to be 4 even integers >= 2 (expansion filters per "
                f"gate of the four stages). Received: granularity={granularity!r}"
            )
        self.gate_kwargs = dict(settings.gate_kwargs)
        if "inference_style" in settings.extra:
            self.gate_kwargs["inference_style"] = settings.extra["inference_style"]
        self.seed = self.gate_kwargs.pop("seed", None)
        self._count = 0

    def kwargs(self):
        """GumbelGate kwargs for the next gate (distinct seeds when a seed is given)."""
        kwargs = dict(self.gate_kwargs)
        if self.seed is not None:
            kwargs["seed"] = int(self.seed) + self._count
        self._count += 1
        return kwargs


def _check_input_shape(input_shape, min_size):
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"Expected input_shape (height, width, channels) of positive integers. "
            f"Received: input_shape={input_shape!r}"
        )
    if shape[0] < min_size or shape[1] < min_size:
        raise ValueError(
            f"Expected an input of at least {min_size}x{min_size}. Received: input_shape={input_shape!r}"
        )
    return shape


def _check_gate_projection_blocks(value):
    if not isinstance(value, bool):
        raise ValueError(
            f"Expected gate_projection_blocks to be True or False. Received: gate_projection_blocks={value!r}"
        )


def _check_num_classes(num_classes):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Expected num_classes to be a positive integer. Received: num_classes={num_classes!r}")


def _finish(inputs, x, num_classes, spec, gate_tensors, name):
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    if spec is None:
        return keras.Model(inputs, outputs, name=name)
    return tfgated.gated_model(inputs, outputs, gates=gate_tensors, **spec.settings.loss_arguments(), name=name)


# -- CIFAR ResNet ----------------------------------------------------------------------


def _basic_block(x, filters, stride, name, spec, gate_tensors, gate_projection=True):
    """He et al.'s basic block, layer-gated when ``spec`` is set (a block with a projection
    shortcut only if ``gate_projection``: its shortcut always runs, its branch is gated)."""
    projection = stride != 1 or x.shape[-1] != filters
    block_input = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(y)
    if projection:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
        return _join(shortcut, y, name, spec if gate_projection else None, block_input, gate_tensors)
    return _join(x, y, name, spec, block_input, gate_tensors)


def _join(shortcut, branch, name, spec, context, gate_tensors):
    """``relu(shortcut + branch)``, or ``relu(shortcut + z * branch)`` with a layer gate when ``spec`` is set."""
    if spec is None:
        x = layers.Add(name=f"{name}_add")([shortcut, branch])
    else:
        x, z = tfgated.residual_gate(shortcut, branch, spec.kind, context=context, name=name, **spec.kwargs())
        gate_tensors.append(z)
    return layers.Activation("relu", name=f"{name}_out")(x)


@register_family(CIFAR_FAMILY)
def cifar_resnet(num_classes=10, input_shape=(32, 32, 3), gates=None, depth=110, widths=(16, 32, 64), name=None,
                 preprocessing=None, gate_projection_blocks=True):
    """CIFAR-style ResNet (``depth = 6n + 2``) with optional layer gates.

    Args:
        num_classes: classes of the softmax classifier.
        input_shape: ``(height, width, channels)``, at least 8x8 (e.g. 32x32x3 or 28x28x1).
        gates: ``None`` for the dense network, or a gate dict (see the module docstring;
            only ``level="layer"``).
        depth: ``6n + 2`` layers, e.g. 20, 32, 44, 56, 110 (``n`` basic blocks per stage).
        widths: channels of the three stages (the stem has ``widths[0]``).
        name: model name; defaults to ``"resnet{depth}"`` or ``"gumbel_resnet{depth}"``.
        preprocessing: ``None`` (the model takes prepared inputs) or a preset's ``input``
            entry: the model takes raw pixels and scales/normalizes them itself
            (:func:`tfgated.zoo.inputs.pixel_preprocessing`).
        gate_projection_blocks: with gates, also gate the residual branch of the two
            downsampling blocks (their projection shortcut always runs), as the paper does
            (``6n`` gates). ``False``: those blocks stay ungated (``6n - 2`` gates).

    Returns:
        An uncompiled ``keras.Model`` mapping images to softmax probabilities. Gated models
        end with the ``activation_loss`` layer (:func:`tfgated.gated_model`).
    """
    _check_num_classes(num_classes)
    input_shape = _check_input_shape(input_shape, 8)
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"Expected depth = 6n + 2 with n >= 1 (8, 14, 20, ..., 110). Received: depth={depth!r}")
    widths = tuple(widths)
    if len(widths) != 3 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"Expected widths to be 3 positive integers. Received: widths={widths!r}")
    _check_gate_projection_blocks(gate_projection_blocks)
    spec = None if gates is None else _GateSpec(gates, levels=("layer",))
    blocks = (depth - 2) // 6
    name = name or (f"resnet{depth}" if spec is None else f"gumbel_resnet{depth}")

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="conv1_conv")(
        pixel_preprocessing(inputs, preprocessing)
    )
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    gate_tensors = []
    for stage, filters in enumerate(widths, start=1):
        for block in range(1, blocks + 1):
            stride = 2 if (stage > 1 and block == 1) else 1
            x = _basic_block(
                x, filters, stride, f"stage{stage}_block{block}", spec, gate_tensors, gate_projection_blocks
            )
    return _finish(inputs, x, num_classes, spec, gate_tensors, name)


# -- ImageNet bottleneck ResNet -----------------------------------------------------------


def _bottleneck_block(x, filters, stride, conv_shortcut, name, spec, granularity, gate_tensors,
                      gate_projection=True):
    """``keras.applications`` ``residual_block_v1`` with optional layer or channel gates (a
    layer gate on a block with a projection shortcut only if ``gate_projection``)."""
    block_input = x
    channel = spec is not None and spec.level == "channel"

    def mask(tensor, index, g):
        gated, z = tfgated.channel_gate(
            tensor, g, spec.kind, context=block_input, name=f"{name}_{index}", **spec.kwargs()
        )
        gate_tensors.append(z)
        return gated

    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    y = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    if channel:
        y = mask(y, 1, granularity // 2)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(y)
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    if channel:
        y = mask(y, 2, granularity // 2)
    y = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_3_bn")(y)
    if channel:
        y = mask(y, 3, granularity)
    layer_gated = spec is not None and spec.level == "layer" and (gate_projection or not conv_shortcut)
    return _join(shortcut, y, name, spec if layer_gated else None, block_input, gate_tensors)


@register_family(IMAGENET_FAMILY)
def imagenet_resnet(num_classes=1000, input_shape=(224, 224, 3), gates=None, depth=50, name=None,
                    preprocessing=None, gate_projection_blocks=True):
    """ImageNet ResNet-50/101/152 v1 (keras.applications layout and names) with optional gates.

    Args:
        num_classes: classes of the softmax classifier ("predictions").
        input_shape: ``(height, width, channels)``, at least 32x32.
        gates: ``None`` for the dense keras.applications network, or a gate dict (see the
            module docstring) with ``level="layer"`` (one gate per block) or ``"channel"``.
        depth: 50, 101 or 152.
        name: model name; defaults to ``"resnet{depth}"`` or ``"gumbel_resnet{depth}"``.
        preprocessing: ``None`` (the model takes prepared inputs, e.g. keras.applications'
            "caffe" preprocessing for its pretrained weights) or a preset's ``input`` entry
            (raw pixels in, :func:`tfgated.zoo.inputs.pixel_preprocessing`).
        gate_projection_blocks: at ``level="layer"``, also gate the residual branch of each
            stage's first block (its projection shortcut always runs), as the paper does
            (ResNet-50: 16 gates); ``False`` leaves those four blocks ungated (12 gates).

    Returns:
        An uncompiled ``keras.Model`` mapping images to softmax probabilities.
    """
    _check_num_classes(num_classes)
    input_shape = _check_input_shape(input_shape, 32)
    if depth not in IMAGENET_BLOCKS:
        raise ValueError(f"Expected depth in {sorted(IMAGENET_BLOCKS)}. Received: depth={depth!r}")
    _check_gate_projection_blocks(gate_projection_blocks)
    spec = None if gates is None else _GateSpec(gates, levels=GATE_LEVELS)
    name = name or (f"resnet{depth}" if spec is None else f"gumbel_resnet{depth}")

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(pixel_preprocessing(inputs, preprocessing))
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    gate_tensors = []
    granularities = spec.granularity if spec is not None else CHANNEL_GRANULARITY
    for index, (blocks, filters) in enumerate(zip(IMAGENET_BLOCKS[depth], IMAGENET_FILTERS)):
        stage = index + 2
        for block in range(1, blocks + 1):
            first = block == 1
            stride = 2 if (first and stage > 2) else 1
            x = _bottleneck_block(
                x,
                filters,
                stride,
                conv_shortcut=first,
                name=f"conv{stage}_block{block}",
                spec=spec,
                granularity=granularities[index],
                gate_tensors=gate_tensors,
                gate_projection=gate_projection_blocks,
            )
    return _finish(inputs, x, num_classes, spec, gate_tensors, name)


def resnet50(num_classes=1000, input_shape=(224, 224, 3), gates=None, name=None):
    """Shortcut for ``imagenet_resnet(depth=50, ...)``."""
    return imagenet_resnet(num_classes=num_classes, input_shape=input_shape, gates=gates, depth=50, name=name)


def resnet101(num_classes=1000, input_shape=(224, 224, 3), gates=None, name=None):
    """Shortcut for ``imagenet_resnet(depth=101, ...)``."""
    return imagenet_resnet(num_classes=num_classes, input_shape=input_shape, gates=gates, depth=101, name=name)


# -- presets ------------------------------------------------------------------------------------

_KIND_TAGS = {"ind": "independent", "dep": "dependent"}
_LOSS_TAGS = {"pb": "per_batch", "pg": "per_gate"}
_KIND_WORDS = {
    "ind": "data-independent gates (Ind: learned pruning)",
    "dep": "data-dependent gates on the block input (Dep: conditional computation)",
}
_LOSS_WORDS = {
    "pb": "per-batch activation loss (PB: one target for the mean over batch and all gates)",
    "pg": "per-gate activation loss (PG: every gate pulled to the target)",
}

#: He et al. 2016's CIFAR schedule (164 epochs = 64k iterations at batch 128, lr / 10 at 32k and 48k).
_CIFAR_RECIPE = {
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "epochs": 164,
    "batch_size": 128,
    "schedule": {"kind": "piecewise", "boundaries_epochs": [82, 123], "factor": 0.1},
    "warmup": {"epochs": 1, "learning_rate": 0.01},
    "augment": "pad4_crop_flip",
    "loss": "sparse_categorical_crossentropy",
    "note": (
        "He et al. 2016's ResNet-110 CIFAR schedule. They warm up at a constant 0.01 for ~400 "
        "iterations; tfgated.recipes reads 'warmup' as a 1-epoch linear warm-up. The Gumbel paper's "
        "own CIFAR schedule is not transcribed here."
    ),
}

#: The usual ImageNet ResNet schedule (He et al. 2016; ConvNet-AIG trains gated ResNets 100 epochs).
_IMAGENET_RECIPE = {
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "epochs": 100,
    "batch_size": 256,
    "schedule": {"kind": "piecewise", "boundaries_epochs": [30, 60, 90], "factor": 0.1},
    "augment": "random_resized_crop_flip",
    "loss": "sparse_categorical_crossentropy",
    "note": (
        "A standard ImageNet ResNet schedule, not verified against the paper's. Start from the "
        "keras.applications weights with load_keras_applications_weights (they expect "
        "keras.applications.resnet.preprocess_input, i.e. 'caffe' BGR mean subtraction)."
    ),
}

#: Fashion-MNIST: sized to reach >= 0.92 test accuracy in about 40 minutes on 2 CPU cores.
_FASHION_RECIPE = {
    "optimizer": "adam",
    "learning_rate": 2e-3,
    "weight_decay": 1e-4,
    "epochs": 15,
    "batch_size": 128,
    "schedule": {"kind": "cosine"},
    "augment": "pad2_crop_flip",
    "validation_split": 0.1,
    "loss": "sparse_categorical_crossentropy",
    "note": "Our budget recipe for the 2-core benchmark machine; not from either paper.",
}

#: The Ind study presets (PB and PG): the setting under which data-independent gates polarize on Fashion-MNIST
#: (benchmarks/gate_polarization.py, issue 24 study 1): SGD with momentum, and the gate logits' gradient
#: x100 (``gradient_scale``), so the gates take steps of learning rate x 100 = 5; Adam's steps of about
#: its learning rate (2e-3) leave a logit that starts at 4 almost where it was.
_FASHION_IND_RECIPE = {
    **_FASHION_RECIPE,
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "momentum": 0.9,
    "epochs": 6,
    "note": ("Our budget recipe for Ind gates: SGD 0.05 (cosine, momentum 0.9), gate "
             "gradients x100, 6 epochs from scratch; under it the gates polarize (benchmarks/gate_polarization.py)."),
}

_FASHION_ARCH = {"depth": 20, "widths": [12, 24, 48]}
_FASHION_WHY = (
    "ResNet-20 (n=3; every gated preset gates all 9 of its blocks as the paper does, the "
    "2 downsampling blocks on their residual branch while the projection shortcut always runs) "
    "at 3/4 width (12/24/48 channels, ~0.16M parameters, "
    "~17.5M MACs per 28x28 image against ~31M at full width). The full-width 0.27M-parameter "
    "ResNet-20 takes ~200 s per Fashion-MNIST epoch on the 2-core machine; at 3/4 width an epoch "
    "of 54,000 images takes about 100 s there, so 12 epochs (benchmarks/train_fashion_mnist.py "
    "--epochs 12) train in about 20 minutes. "
    "Keeping ResNet-20's depth keeps enough gated blocks to study; narrower nets (8/16/32) train "
    "faster but leave little accuracy margin over 0.92 once half the blocks are switched off."
)


def _preset(family, arch, gates, dataset, input_shape, num_classes, recipe, paper, description, test_shape=None):
    preset = {
        "family": family,
        "arch": dict(arch),
        "gates": None if gates is None else dict(gates),
        "dataset": dataset,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "recipe": {k: (dict(v) if isinstance(v, dict) else v) for k, v in recipe.items()},
        "weights": None,
        "paper": paper,
        "description": description,
    }
    if test_shape is not None:
        preset["test_input_shape"] = list(test_shape)
    return preset


def _gates(kind_tag, loss_tag, target, **extra):
    return {"kind": _KIND_TAGS[kind_tag], "loss_kind": _LOSS_TAGS[loss_tag], "target": target, "weight": 1.0, **extra}


_COMBOS = [(k, l) for k in ("ind", "dep") for l in ("pb", "pg")]


def _cifar_presets():
    """CIFAR-10 ResNet-110 (supplement Table 2)."""
    presets = {}
    arch110 = {"depth": 110, "widths": [16, 32, 64]}
    presets["resnet110_cifar10"] = _preset(
        CIFAR_FAMILY, arch110, None, "cifar10", (32, 32, 3), 10, _CIFAR_RECIPE,
        papers.RESNET110_CIFAR10,
        "Dense ResNet-110 for CIFAR-10 (n=18 basic blocks per stage, 16/32/64 channels, option-B "
        "projection shortcuts on the two downsampling blocks): the ungated baseline of the Gumbel "
        "paper's CIFAR experiments.",
    )
    for kind, loss in _COMBOS:
        for target in (0.4, 0.5, 0.6):
            presets[f"gumbel_resnet110_cifar10_{kind}_{loss}_t{target}"] = _preset(
                CIFAR_FAMILY, arch110, _gates(kind, loss, target), "cifar10", (32, 32, 3), 10, _CIFAR_RECIPE,
                papers.gumbel_resnet110(_KIND_TAGS[kind], target),
                f"ResNet-110 on CIFAR-10 with a Gumbel layer gate on each of the 54 residual blocks "
                f"(in the 2 downsampling blocks the projection shortcut always runs and the branch "
                f"is gated), {_KIND_WORDS[kind]}, "
                f"{_LOSS_WORDS[loss]}, target rate t={target}.",
            )
    return presets


def _imagenet_presets():
    """ImageNet ResNet-50 / ResNet-101, dense and gated."""
    presets = {}
    for depth in (50, 101):
        presets[f"resnet{depth}_imagenet"] = _preset(
            IMAGENET_FAMILY, {"depth": depth}, None, "imagenet2012", (224, 224, 3), 1000, _IMAGENET_RECIPE,
            papers.keras_applications_resnet(depth),
            f"Dense ResNet-{depth} v1, layer for layer and name for name keras.applications.ResNet{depth}; "
            "fill it with load_keras_applications_weights.",
            test_shape=(64, 64, 3),
        )

    def imagenet_gumbel(depth, kind, loss, target, level):
        what = (
            f"a Gumbel layer gate on each residual block ({sum(IMAGENET_BLOCKS[depth])} gates; in the 4 "
            "projection blocks the projection shortcut always runs and the branch is gated)"
            if level == "layer"
            else "Gumbel channel gates in every bottleneck (16/32/64/128 filters per gate on the "
            "expansion output, half that on the two contraction-width outputs; the target is a "
            "fraction of the gated MACs, dependent gates have per-gate hidden units)"
        )
        gates = _gates(kind, loss, target, level=level)
        if level == "channel":  # the paper's form: a target fraction of the gated MACs, per-gate hidden units
            gates["target_measure"] = "macs"
            if kind == "dep":
                gates["per_gate_hidden"] = True
        return _preset(
            IMAGENET_FAMILY, {"depth": depth}, gates, "imagenet2012", (224, 224, 3), 1000, _IMAGENET_RECIPE,
            papers.gumbel_imagenet_resnet(depth, level),
            f"ResNet-{depth} v1 on ImageNet with {what}, {_KIND_WORDS[kind]}, {_LOSS_WORDS[loss]}, "
            f"target rate t={target}. Every keras.applications layer keeps its name, so the ImageNet "
            "weights load with load_keras_applications_weights.",
            test_shape=(64, 64, 3),
        )

    for kind, loss in _COMBOS:
        for target in (0.4, 0.5, 0.6):
            presets[f"gumbel_resnet50_imagenet_{kind}_{loss}_t{target}"] = imagenet_gumbel(50, kind, loss, target, "layer")
    for kind, loss in _COMBOS:
        presets[f"gumbel_resnet50_imagenet_channel_{kind}_{loss}_t0.5"] = imagenet_gumbel(50, kind, loss, 0.5, "channel")
    for kind, loss in _COMBOS:
        presets[f"gumbel_resnet101_imagenet_{kind}_{loss}_t0.5"] = imagenet_gumbel(101, kind, loss, 0.5, "layer")
    return presets


def _fashion_presets():
    """Fashion-MNIST (small, for the 2-core benchmark)."""
    presets = {}
    fashion_paper = papers.FASHION_RESNET
    presets["resnet_fashion_mnist"] = _preset(
        CIFAR_FAMILY, _FASHION_ARCH, None, "fashion_mnist", (28, 28, 1), 10, _FASHION_RECIPE, fashion_paper,
        "Dense baseline of the Fashion-MNIST gated ResNets. " + _FASHION_WHY,
    )
    presets["gumbel_resnet_fashion_mnist"] = _preset(
        CIFAR_FAMILY, _FASHION_ARCH, _gates("dep", "pb", 0.5), "fashion_mnist", (28, 28, 1), 10,
        _FASHION_RECIPE, fashion_paper,
        f"Gated ResNet-20 for Fashion-MNIST, {_KIND_WORDS['dep']}, {_LOSS_WORDS['pb']}, t=0.5. " + _FASHION_WHY,
    )
    for kind, loss in _COMBOS:
        polarizing = kind == "ind"  # Ind gates train under the recipe that polarizes them (study 1)
        for target in (0.4, 0.6):
            presets[f"gumbel_resnet_fashion_mnist_{kind}_{loss}_t{target}"] = _preset(
                CIFAR_FAMILY, _FASHION_ARCH,
                _gates(kind, loss, target, gradient_scale=100.0) if polarizing else _gates(kind, loss, target),
                "fashion_mnist", (28, 28, 1), 10,
                _FASHION_IND_RECIPE if polarizing else _FASHION_RECIPE, fashion_paper,
                f"Gated ResNet-20 for Fashion-MNIST, {_KIND_WORDS[kind]}, {_LOSS_WORDS[loss]}, "
                f"t={target} (Ind/Dep x PB/PG benchmark). " + _FASHION_WHY,
            )
    return presets


#: Every ResNet preset of the zoo, by name (plain data; see the registry for ``load``).
PRESETS = {**_cifar_presets(), **_imagenet_presets(), **_fashion_presets()}
