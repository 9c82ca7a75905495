"""DenseNet-BC with Gumbel early exits (Herrmann et al., ECCV 2020, supplement section 1.2).

Dense blocks of bottleneck layers (BN-ReLU-1x1 conv to 4k channels, BN-ReLU-3x3
conv to k channels, concatenated to the input; k the growth rate) joined by
transitions (BN-ReLU-1x1 conv with compression, 2x2 average pooling), as in
Huang et al. (DenseNet-BC). Layer names follow keras.applications.DenseNet
(``conv2_block1_1_conv``, ``pool2_conv``, ...) with the block numbers starting at
2 like Keras.

Following the supplement, at the end of every dense block but the last an
intermediate classifier (MSDNet's: two 3x3 stride-2 convolutions to 128 channels with
BN and ReLU, 2x2 average pool, linear, softmax: ``exit{k}_classifier``,
:func:`tfgated.exits.msdnet_exit_classifier`) and a Gumbel exit gate
(:class:`tfgated.exits.ExitGate`: 3x3 conv to 128 channels, BN, 3x3 conv to 128
channels, BN, 4x4 average pool, linear, Gumbel; ``exit{k}_gate``) decide whether an
example leaves there. The architecture arguments ``exit_gate="one_conv_relu"`` and
``exit_classifier="bn_relu_pool"`` select the older forms (one convolution + BN + ReLU
in the gate; a BN-ReLU-pool-linear classifier) that the shipped
``gumbel_densenet_fashion_mnist_exit`` weights were trained with. The model's single
output is :class:`tfgated.exits.EarlyExitCombine`'s routed probabilities, so
``fit`` trains classifiers and exits end to end; :class:`tfgated.exits.ExitReach`
feeds the activation loss, whose target ``t`` is the share of post-exit dense
blocks an example runs on average.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras

import tfgated
from tfgated.exits import (
    DEFAULT_EXIT_PROBABILITY,
    EarlyExitCombine,
    ExitGate,
    ExitReach,
    msdnet_exit_classifier,
)
from tfgated.gate_settings import GateSettings
from tfgated.zoo import papers
from tfgated.zoo.inputs import pixel_preprocessing
from tfgated.zoo.registry import make_options, register_family


def dense_layer(x, growth_rate, name, bottleneck=True):
    """One DenseNet(-BC) layer; returns ``concat([x, new_features])``."""
    y = x
    if bottleneck:
        y = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_0_bn")(y)
        y = keras.layers.Activation("relu", name=f"{name}_0_relu")(y)
        y = keras.layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = keras.layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return keras.layers.Concatenate(name=f"{name}_concat")([x, y])


def transition(x, compression, name):
    """BN-ReLU-1x1 conv to ``compression`` x channels, then 2x2 average pooling."""
    channels = int(x.shape[-1] * compression)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    x = keras.layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv")(x)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


#: ``exit_gate`` forms: ExitGate arguments (the supplement's, and the older one of the shipped weights).
EXIT_GATE_FORMS = {
    "supplement": {"convolutions": 2, "activation": None},
    "one_conv_relu": {"convolutions": 1, "activation": "relu"},
}
#: ``exit_classifier`` forms: MSDNet's (the supplement's) and the older BN-ReLU-pool-linear one.
EXIT_CLASSIFIER_FORMS = ("msdnet", "bn_relu_pool")


def classifier(x, num_classes, name, grid=None):
    """BN, ReLU, average pool, linear, softmax (the final classifier, and the older exit form).

    ``grid=None`` pools globally (DenseNet's final classifier). ``grid=g`` average-pools in
    windows of ``H // g`` pixels (stride the same, valid padding) to about a g x g grid and
    flattens it, so a linear classifier on an early, wide feature map still sees where
    things are: on Fashion-MNIST a global pool of the first block's 40 channels is a poor
    classifier (0.60 validation accuracy after deep supervision).
    """
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    if grid is None:
        x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    else:
        window = max(1, min(int(x.shape[1]), int(x.shape[2])) // int(grid))
        x = keras.layers.AveragePooling2D(window, strides=window, name=f"{name}_pool")(x)
        x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)(x)


def _exit_settings(gates):
    if gates is None:
        return None
    if gates.get("kind", "dependent") != "dependent":
        raise ValueError(
            "Expected gates['kind'] to be 'dependent': an exit gate decides per example. "
            f"Received: kind={gates['kind']!r}"
        )
    if {"granularity", "hidden_units", "per_gate_hidden"} & set(gates):
        bad = sorted({"granularity", "hidden_units", "per_gate_hidden"} & set(gates))
        raise ValueError(
            f"Exit gates take no {bad}: their network is set by exit_filters and exit_pool_size. "
            f"Received: gates={gates}"
        )
    settings = GateSettings.from_config({**gates, "kind": "dependent"}, extra_keys=())
    return dataclasses.replace(
        settings, gate_kwargs={"open_probability": DEFAULT_EXIT_PROBABILITY, **settings.gate_kwargs}
    )


@dataclasses.dataclass(frozen=True)
class DenseNetConfig:
    """Architecture arguments of :func:`build` (a preset's ``arch``).

    Attributes:
        blocks: layers per dense block (DenseNet-BC-100: (16, 16, 16)).
        growth_rate: channels each layer adds (k).
        compression: channel factor of the transitions, in (0, 1].
        bottleneck: use the BC bottleneck 1x1 convolutions.
        stem_filters: channels of the stem convolution (default 2k).
        exit_filters, exit_pool_size: the exit gate network (128 and 4 in the paper).
        exit_pool_first: pool before the exit gate's convolutions (cheaper; the paper pools
            after them).
        exit_gate: ``"supplement"`` (conv-BN-conv-BN-pool-linear, :data:`EXIT_GATE_FORMS`)
            or ``"one_conv_relu"`` (conv-BN-ReLU-pool-linear, the shipped Fashion-MNIST form).
        exit_classifier: ``"msdnet"`` (the supplement's, MSDNet's classifier with
            ``exit_filters``-channel convolutions) or ``"bn_relu_pool"`` (BN, ReLU, pool,
            linear: :func:`classifier`, the shipped Fashion-MNIST form).
        exit_classifier_grid: for ``exit_classifier="bn_relu_pool"`` only: None pools
            globally, g pools each exit's features to about a g x g grid before its linear
            layer (see :func:`classifier`; the final classifier always pools globally).
    """

    blocks: tuple = (16, 16, 16)
    growth_rate: int = 12
    compression: float = 0.5
    bottleneck: bool = True
    stem_filters: Optional[int] = None
    exit_filters: int = 128
    exit_pool_size: int = 4
    exit_pool_first: bool = False
    exit_gate: str = "supplement"
    exit_classifier: str = "msdnet"
    exit_classifier_grid: Optional[int] = None

    def __post_init__(self):
        blocks = tuple(int(b) for b in self.blocks)
        if not blocks or min(blocks) < 1:
            raise ValueError(f"Expected blocks to be positive layer counts. Received: blocks={blocks}")
        object.__setattr__(self, "blocks", blocks)
        if not 0.0 < float(self.compression) <= 1.0:
            raise ValueError(f"Expected compression in (0, 1]. Received: compression={self.compression}")
        if not isinstance(self.growth_rate, int) or self.growth_rate < 1:
            raise ValueError(
                f"Expected growth_rate to be a positive integer. Received: growth_rate={self.growth_rate}"
            )
        if self.exit_gate not in EXIT_GATE_FORMS:
            raise ValueError(f"Expected exit_gate in {list(EXIT_GATE_FORMS)}. Received: exit_gate={self.exit_gate!r}")
        if self.exit_classifier not in EXIT_CLASSIFIER_FORMS:
            raise ValueError(
                f"Expected exit_classifier in {list(EXIT_CLASSIFIER_FORMS)}. "
                f"Received: exit_classifier={self.exit_classifier!r}"
            )
        grid = self.exit_classifier_grid
        if grid is not None and self.exit_classifier != "bn_relu_pool":
            raise ValueError(
                "exit_classifier_grid only applies to exit_classifier='bn_relu_pool'. "
                f"Received: exit_classifier={self.exit_classifier!r}, exit_classifier_grid={grid!r}"
            )
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 1):
            raise ValueError(
                f"Expected exit_classifier_grid to be None or a positive integer. Received: exit_classifier_grid={grid!r}"
            )
        stem = 2 * self.growth_rate if self.stem_filters is None else int(self.stem_filters)
        object.__setattr__(self, "stem_filters", stem)


def _exit(x, num_classes, exit_id, settings, config):
    """Exit ``exit_id``'s classifier probabilities and gate values on features ``x``."""
    name = f"exit{exit_id}_classifier"
    if config.exit_classifier == "msdnet":
        probabilities = msdnet_exit_classifier(x, num_classes, name, filters=config.exit_filters)
    else:
        probabilities = classifier(x, num_classes, name, config.exit_classifier_grid)
    gate = ExitGate(
        filters=config.exit_filters,
        pool_size=config.exit_pool_size,
        pool_first=config.exit_pool_first,
        name=f"exit{exit_id}_gate",
        **EXIT_GATE_FORMS[config.exit_gate],
        **settings.gate_kwargs,
    )
    return probabilities, gate(x)


@register_family("densenet", options=DenseNetConfig)
def build(num_classes=10, input_shape=(32, 32, 3), gates=None, name=None, preprocessing=None, **config):
    """Build a DenseNet(-BC) classifier, with Gumbel early exits when ``gates`` is given.

    Args:
        num_classes: classes of every classifier.
        input_shape: image shape, channels last (a CIFAR-style 3x3 stem, no stem pooling).
        gates: None (plain DenseNet, one classifier) or a dict with ``loss_kind``
            ("per_batch"/"per_gate"), ``target`` (average share of post-exit
            blocks run), ``weight`` and optionally ``kind`` (must be
            "dependent"), ``temperature``, ``open_probability`` (initial exit
            probability, default 0.25), ``threshold``, ``seed``, ``gradient_scale``.
        name: model name.
        preprocessing: ``None`` (the model takes prepared inputs) or a preset's ``input``
            entry (raw pixels in, :func:`tfgated.zoo.inputs.pixel_preprocessing`).
        **config: architecture arguments, the fields of :class:`DenseNetConfig`.

    Returns:
        An uncompiled ``keras.Model`` outputting softmax probabilities.
    """
    settings = _exit_settings(gates)
    config = make_options(DenseNetConfig, config)
    if settings is not None and len(config.blocks) < 2:
        raise ValueError(f"Expected at least 2 dense blocks for early exits. Received: blocks={config.blocks}")

    inputs = keras.Input(shape=tuple(input_shape))
    x = keras.layers.Conv2D(config.stem_filters, 3, padding="same", use_bias=False, name="conv1_conv")(
        pixel_preprocessing(inputs, preprocessing)
    )
    routed, exit_gates = [], []
    for index, layers in enumerate(config.blocks):
        stage = index + 2
        for layer in range(layers):
            x = dense_layer(x, config.growth_rate, f"conv{stage}_block{layer + 1}", config.bottleneck)
        if index == len(config.blocks) - 1:
            break
        if settings is not None:
            probabilities, z = _exit(x, num_classes, index + 1, settings, config)
            routed += [probabilities, z]
            exit_gates.append(z)
        x = transition(x, config.compression, f"pool{stage}")
    outputs = classifier(x, num_classes, "predictions")
    if settings is None:
        return tfgated.gated_model(inputs, outputs, [], name=name or "densenet")
    outputs = EarlyExitCombine(name="early_exit")([*routed, outputs])
    reach = ExitReach(name="exit_reach")(exit_gates)
    return tfgated.gated_model(inputs, outputs, [reach], **settings.loss_arguments(), name=name or "gumbel_densenet")


def _recipe(epochs, batch_size, learning_rate, **extra):
    return {
        "optimizer": "sgd",
        "learning_rate": learning_rate,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
        "epochs": epochs,
        "batch_size": batch_size,
        "loss": "sparse_categorical_crossentropy",
        **extra,
    }



PRESETS = {
    "gumbel_densenet_cifar10_exit": {
        "family": "densenet",
        "arch": {"blocks": [16, 16, 16], "growth_rate": 12, "compression": 0.5},
        "gates": {"kind": "dependent", "loss_kind": "per_batch", "target": 0.5, "weight": 1.0},
        "dataset": "cifar10",
        "input_shape": [32, 32, 3],
        "num_classes": 10,
        "recipe": _recipe(
            epochs=300, batch_size=64, learning_rate=0.1,
            schedule={"kind": "piecewise", "boundaries_epochs": [150, 225], "factor": 0.1},
        ),
        "weights": None,
        "paper": papers.DENSENET_CIFAR10_EXIT,
        "description": (
            "DenseNet-BC-100 (k=12) for CIFAR-10 with an intermediate classifier (MSDNet's: two 3x3 "
            "stride-2 convs to 128 channels, 2x2 average pool, linear) and a Gumbel exit gate (3x3 "
            "conv to 128 channels, BN, 3x3 conv to 128 channels, BN, 4x4 average pool, linear) after "
            "dense blocks 1 and 2; the routed output is trained end to end, the PB activation loss pulls the "
            "average share of post-exit blocks run to t=0.5."
        ),
        "test_input_shape": [32, 32, 3],
    },
    "gumbel_densenet_fashion_mnist_exit": {
        "family": "densenet",
        "arch": {
            "blocks": [3, 3, 3],
            "growth_rate": 8,
            "compression": 0.5,
            "exit_filters": 32,
            "exit_pool_size": 4,
            "exit_pool_first": True,
            # the older forms the shipped weights were trained with (zoo/weights)
            "exit_gate": "one_conv_relu",
            "exit_classifier": "bn_relu_pool",
            "exit_classifier_grid": 4,
        },
        # gradient_scale 0.1: at 1 the exit gates saturated within the first epoch (every image
        # out at exit 1, benchmarks/results/train_densenet_fashion_mnist_exit_grid4.json)
        "gates": {"kind": "dependent", "loss_kind": "per_batch", "target": 0.5, "weight": 1.0, "gradient_scale": 0.1},
        "dataset": "fashion_mnist",
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "recipe": _recipe(epochs=30, batch_size=128, learning_rate=0.1),
        "weights": None,
        "paper": papers.FASHION_DENSENET,
        "description": (
            "A small DenseNet-BC (3 blocks of 3 layers, k=8) for 28x28x1 images with Gumbel early "
            "exits after blocks 1 and 2 in the older forms its shipped weights were trained with, not "
            "the supplement's: exit gate network of one convolution + BN + ReLU (the supplement: two "
            "convolutions + BN, no ReLU), narrowed to 32 channels and pooled 4x4 before its "
            "convolution, 5% of the MACs instead of 52%; exit classifiers BN-ReLU pooled to a 4x4 grid "
            "+ linear (the supplement: MSDNet's two stride-2 convolutions), 0.1% of the MACs), PB activation loss at t=0.5. The paper number is the dense DenseNet-BC 768K of the Fashion-MNIST "
            "benchmark, a reference point rather than a target for this small model."
        ),
    },
}
