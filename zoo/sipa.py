"""SIPA: the EfficientNet-style network of Lee, Bae, Oh, Yun (MicroNet Challenge 2019, CIFAR-100).

A Keras 3 reimplementation of the architecture found in SIPA's "Searching" step,
as published in the authors' reference code (github.com/Lee-Gihun/MicroNet_OSI-AI:
``models/utils.py`` default block arguments, ``models/EfficientNet.py``,
``models/early_exit/layers.py``, ``Config/main.json``, README table):

* input upsampled by nearest neighbour to ``ceil(H * r)`` with the resolution
  coefficient ``r = round(resolution ** resource, 2)``; the reference uses
  ``resolution=1.4`` and ``resource=2`` ("available resources"), so
  ``r = 1.96`` and a 32x32 CIFAR image becomes 63x63;
* stem: 3x3 stride-2 convolution to ``round_filters(24)`` channels, BN, swish;
* ten MBConv blocks (expansion 1x1 conv, 3x3 depthwise conv, squeeze-and-
  excitation with ``max(1, int(block_input_channels * 0.2))`` squeezed
  channels, 1x1 projection; identity skip with drop-connect where stride 1 and
  the channels match), from the reference's seven block strings, scaled by
  width 0.9 and depth 1.0 (EfficientNet's ``round_filters`` with divisor 8);
* head: 1x1 convolution to ``round_filters(150) = 136`` channels, BN, swish,
  global average pooling, dropout 0.2, dense classifier (softmax output).

Spatial sizes follow the reference exactly: its convolutions use *static* "same"
padding computed once for the un-upsampled image size (32), so a stride-2
3x3 convolution pads 0 before and 1 after and 63 -> 31 -> 15 -> 7 (not 32 -> 16 -> 8).
This module reproduces that with explicit ``ZeroPadding2D`` layers
(``padding_size``, default the input height).

Counting convention of the reference (README table, "obtained by hand"): 470,776
parameters = convolution and dense weights plus biases, *BatchNorm excluded*
(folded); about 117.6M math operations per example (60.46M multiplications +
57.13M additions at 32 bits, MicroNet rules). Keras' ``count_params`` adds the
BatchNorm variables (4 per channel).

Early exit (SIPA's "Accelerating", paper Figure 8): ``exit_after=k`` attaches an
exit head after MBConv block ``k`` (the reference uses block 4, the fifth):
3x3 depthwise conv, BN, swish, 1x1 conv to ``round_filters(exit_filters)``
channels, BN, swish, global average pooling, dense classifier. The model then
has two outputs, **main first**: ``[main_probabilities, exit_probabilities]``.
At test time the reference answers with the exit when its max softmax
probability exceeds a confidence threshold (see ``tfgated``'s exit utilities).

Channel gates (the "structured alternative" to SIPA's magnitude pruning):
``gates={"kind": ..., "granularity": g}`` puts a :func:`tfgated.channel_gate`
on the expanded channels of every MBConv block, after the depthwise
convolution's activation and before squeeze-and-excitation: a closed channel is
then zero into both SE and the projection, so folding removes it from the
expansion, the depthwise convolution, SE and the projection. (Gated right after
the expansion, a closed channel would leave the depthwise batch norm as a
nonzero constant that SE rescales per image, so no fold could drop it.) Dependent gates
read the block input as context. Blocks without an identity skip keep their
most probable gate open (``force_open``), so no block can cut the network.

Deviation from the reference: plain ``BatchNormalization`` instead of ghost
batch normalization (4 splits); nearest-neighbour resizing uses TensorFlow's
pixel-centre convention (PyTorch's ``nn.Upsample`` picks ``floor(i * in / out)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import keras

import tfgated
from tfgated.blocks import SIPA_REFERENCE_BLOCKS as REFERENCE_BLOCKS
from tfgated.blocks import decode_block
from tfgated.complexity import gate_mac_weights
from tfgated.gate_settings import GateSettings
from tfgated.losses import GateActivationLoss
from tfgated.models import ACTIVATION_LOSS_NAME
from tfgated.zoo import papers
from tfgated.zoo.inputs import pixel_preprocessing
from tfgated.zoo.registry import make_options, register_family

BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
BN_EPSILON = 1e-5
#: Interpolations of the input upsampling (:attr:`SipaConfig.upsampling`); SIPA's is nearest neighbour.
UPSAMPLING = ("nearest", "bilinear")


# -- block arguments and scaling ---------------------------------------------------


def round_filters(filters, width, divisor=8):
    """EfficientNet's channel scaling: ``filters * width`` rounded to a multiple
    of ``divisor``, never more than 10% below the exact value."""
    if width == 1.0:
        return int(filters)
    exact = filters * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * exact:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats, depth):
    """EfficientNet's depth scaling: ``ceil(repeats * depth)``."""
    return repeats if depth == 1.0 else int(math.ceil(depth * repeats))


def expand_blocks(blocks, width=0.9, depth=1.0, divisor=8):
    """The per-block arguments after scaling, one dict per MBConv block."""
    expanded = []
    for block in blocks:
        args = decode_block(block)
        args["filters_in"] = round_filters(args["filters_in"], width, divisor)
        args["filters_out"] = round_filters(args["filters_out"], width, divisor)
        for repeat in range(round_repeats(args.pop("repeats"), depth)):
            expanded.append(dict(args))
            args = {**args, "filters_in": args["filters_out"], "stride": 1}
    return expanded


def resolution_coefficient(resolution, resource):
    """The reference's effective input scale: ``round(resolution ** resource, 2)``."""
    return round(math.pow(resolution, resource), 2)


def upsampled_size(size, resolution, resource):
    """Side of the upsampled input: ``ceil(size * resolution_coefficient)``."""
    return int(math.ceil(size * resolution_coefficient(resolution, resource)))


def static_same_padding(kernel, stride, size):
    """The reference's static "same" padding for a ``size`` image:
    ``(before, after)`` with ``pad = max((ceil(size / stride) - 1) * stride + kernel - size, 0)``."""
    pad = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


# -- layers ------------------------------------------------------------------------


def _bn(name):
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _conv_padding(x, kernel, stride, padding_size, name):
    """Pad ``x`` like the reference; returns (tensor, Keras padding mode)."""
    if stride == 1:
        return x, "same"
    before, after = static_same_padding(kernel, stride, padding_size)
    x = keras.layers.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pad")(x)
    return x, "valid"


def _channel_gate(x, granularity, settings, context, name, force_open):
    return tfgated.channel_gate(
        x, granularity, kind=settings.kind, context=context, name=name, force_open=force_open, **settings.gate_kwargs
    )


def mbconv_block(
    inputs,
    args,
    index,
    activation="swish",
    drop_rate=0.0,
    padding_size=32,
    gates=None,
    granularity=None,
):
    """One MBConv block named ``block{index}_...``; returns ``(outputs, [z, ...])``.

    ``args`` is one dict of :func:`expand_blocks`; ``gates`` a
    :class:`tfgated.gate_settings.GateSettings` or None.
    """
    prefix = f"block{index}"
    filters_in = inputs.shape[-1]
    if filters_in != args["filters_in"]:
        raise ValueError(
            f"Block {index} expects {args['filters_in']} input channels. Received: {filters_in}"
        )
    expanded = filters_in * args["expand"]
    residual = args["id_skip"] and args["stride"] == 1 and filters_in == args["filters_out"]
    zs = []
    x = inputs
    if args["expand"] != 1:
        x = keras.layers.Conv2D(expanded, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = _bn(f"{prefix}_expand_bn")(x)
        x = keras.layers.Activation(activation, name=f"{prefix}_expand_activation")(x)
    x, padding = _conv_padding(x, args["kernel"], args["stride"], padding_size, f"{prefix}_dwconv")
    x = keras.layers.DepthwiseConv2D(
        args["kernel"], strides=args["stride"], padding=padding, use_bias=False, name=f"{prefix}_dwconv"
    )(x)
    x = _bn(f"{prefix}_bn")(x)
    x = keras.layers.Activation(activation, name=f"{prefix}_activation")(x)
    if gates is not None:  # after the depthwise activation: a closed channel is 0 into SE and projection
        x, z = _channel_gate(x, granularity, gates, inputs, f"{prefix}_expand", not residual)
        zs.append(z)
    if args["se_ratio"] is not None and 0 < args["se_ratio"] <= 1:
        squeezed = max(1, int(filters_in * args["se_ratio"]))
        s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_squeeze")(x)
        s = keras.layers.Conv2D(squeezed, 1, activation=activation, name=f"{prefix}_se_reduce")(s)
        s = keras.layers.Conv2D(expanded, 1, activation="sigmoid", name=f"{prefix}_se_expand")(s)
        x = keras.layers.Multiply(name=f"{prefix}_se_excite")([x, s])
    x = keras.layers.Conv2D(args["filters_out"], 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = _bn(f"{prefix}_project_bn")(x)
    if residual:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x, zs


def exit_head(x, num_classes, filters, activation="swish", name="exit_head"):
    """SIPA's early-exit module (reference ``EarlyExitBlock``): depthwise 3x3,
    BN, act, 1x1 conv to ``filters``, BN, act, global average pooling, softmax
    classifier. Returns the exit probabilities."""
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = _bn(f"{name}_dwconv_bn")(x)
    x = keras.layers.Activation(activation, name=f"{name}_dwconv_activation")(x)
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    x = _bn(f"{name}_conv_bn")(x)
    x = keras.layers.Activation(activation, name=f"{name}_conv_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=f"{name}_predictions")(x)


def _block_granularities(granularity, blocks):
    """One granularity per block from an int or a per-block list."""
    if granularity is None:
        granularity = 1
    if isinstance(granularity, int):
        values = [granularity] * len(blocks)
    else:
        values = [int(g) for g in granularity]
        if len(values) != len(blocks):
            raise ValueError(
                f"Expected one granularity per MBConv block ({len(blocks)}). "
                f"Received: granularity={granularity}"
            )
    for index, (g, args) in enumerate(zip(values, blocks)):
        channels = args["filters_in"] * args["expand"]
        if g < 1 or channels % g:
            raise ValueError(
                f"Expected granularity to divide {channels} channels (block {index}). "
                f"Received: granularity={g}"
            )
    return values


# -- the family builder --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SipaConfig:
    """Architecture arguments of :func:`build_sipa` (a preset's ``arch``).

    Attributes:
        blocks: block strings or dicts (see :func:`decode_block`).
        width, depth: compound scaling coefficients (channels, repeats).
        resolution, resource: the input is resized by ``round(resolution ** resource, 2)``;
            no resizing when that is 1.
        upsampling: interpolation of that resizing: ``"nearest"`` (SIPA's) or ``"bilinear"``
            (``benchmarks/sipa_factors.py`` compares them).
        stem_filters, head_filters: unscaled stem and head channels.
        divisor: channel rounding divisor of :func:`round_filters`.
        activation: Keras activation of the whole network (``"swish"``).
        dropout: dropout before the classifier.
        drop_connect: maximum drop-connect rate; block ``i`` of ``n`` uses
            ``drop_connect * i / n`` on its identity branch.
        exit_after: index of the MBConv block followed by the early-exit head,
            or None. With an exit the model outputs ``[main, exit]``.
        exit_filters: unscaled channels of the exit head's 1x1 convolution.
        padding_size: image side for which the static "same" padding of
            strided convolutions is computed (reference: the un-upsampled
            side, the default).
    """

    blocks: tuple = REFERENCE_BLOCKS
    width: float = 0.9
    depth: float = 1.0
    resolution: float = 1.4
    resource: float = 2
    stem_filters: int = 24
    head_filters: int = 150
    divisor: int = 8
    activation: str = "swish"
    dropout: float = 0.2
    drop_connect: float = 0.2
    exit_after: Optional[int] = None
    exit_filters: int = 150
    padding_size: Optional[int] = None
    upsampling: str = "nearest"

    def __post_init__(self):
        if self.upsampling not in UPSAMPLING:
            raise ValueError(f"Expected upsampling in {UPSAMPLING}. Received: upsampling={self.upsampling!r}")
        if self.resolution <= 0 or self.resource < 0:
            raise ValueError(
                "Expected resolution > 0 and resource >= 0. "
                f"Received: resolution={self.resolution}, resource={self.resource}"
            )
        if not 0 <= self.dropout < 1 or not 0 <= self.drop_connect < 1:
            raise ValueError(
                "Expected dropout and drop_connect in [0, 1). "
                f"Received: dropout={self.dropout}, drop_connect={self.drop_connect}"
            )

    def filters(self, filters):
        """``filters`` scaled by this config's width (:func:`round_filters`)."""
        return round_filters(filters, self.width, self.divisor)

    def expanded_blocks(self):
        """The per-block arguments after scaling (:func:`expand_blocks`), the exit index checked."""
        block_args = expand_blocks(self.blocks, self.width, self.depth, self.divisor)
        exit_after = self.exit_after
        if exit_after is not None and not (isinstance(exit_after, int) and 0 <= exit_after < len(block_args) - 1):
            raise ValueError(
                f"Expected exit_after to be a block index in [0, {len(block_args) - 2}]. Received: exit_after={exit_after}"
            )
        if block_args[0]["filters_in"] != self.filters(self.stem_filters):
            raise ValueError(
                f"Expected the first block to take the stem's {self.filters(self.stem_filters)} channels. "
                f"Received: {block_args[0]['filters_in']}"
            )
        return block_args


def _check_shape_and_classes(input_shape, num_classes):
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"Expected input_shape (height, width, channels). Received: input_shape={input_shape}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Expected num_classes to be a positive integer. Received: num_classes={num_classes}")
    return input_shape


def _stem(inputs, config, padding_size):
    """Upsampling (when the resolution coefficient is not 1) and the strided stem convolution."""
    x = inputs
    if resolution_coefficient(config.resolution, config.resource) != 1.0:
        height = upsampled_size(inputs.shape[1], config.resolution, config.resource)
        width_px = upsampled_size(inputs.shape[2], config.resolution, config.resource)
        x = keras.layers.Resizing(height, width_px, interpolation=config.upsampling, name="upsample")(x)
    x, padding = _conv_padding(x, 3, 2, padding_size, "stem_conv")
    x = keras.layers.Conv2D(
        config.filters(config.stem_filters), 3, strides=2, padding=padding, use_bias=False, name="stem_conv"
    )(x)
    x = _bn("stem_bn")(x)
    return keras.layers.Activation(config.activation, name="stem_activation")(x)


def _top(x, num_classes, config):
    """Head convolution, pooling, dropout and the softmax classifier."""
    x = keras.layers.Conv2D(config.filters(config.head_filters), 1, use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = keras.layers.Activation(config.activation, name="top_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if config.dropout > 0:
        x = keras.layers.Dropout(config.dropout, name="top_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


@register_family("sipa", options=SipaConfig)
def build_sipa(num_classes=100, input_shape=(32, 32, 3), gates=None, name=None, preprocessing=None, **config):
    """Build a (gated, early-exit) SIPA network outputting softmax probabilities.

    Args:
        num_classes: classes of the classifier(s).
        input_shape: ``(H, W, C)`` of the un-upsampled images.
        gates: ``None`` or gate settings (:mod:`tfgated.gate_settings`);
            ``granularity`` is channels per gate, an int or one per MBConv block
            (default 1), dividing every gated block's expansion channels.
        name: model name (default ``"sipa"``).
        preprocessing: ``None`` (the model takes prepared inputs) or a preset's ``input``
            entry (raw pixels in, :func:`tfgated.zoo.inputs.pixel_preprocessing`).
        **config: architecture arguments, the fields of :class:`SipaConfig`.
    """
    input_shape = _check_shape_and_classes(input_shape, num_classes)
    config = make_options(SipaConfig, config)
    block_args = config.expanded_blocks()
    settings = GateSettings.from_config(gates, default_granularity=1, extra_keys=())
    granularities = _block_granularities(settings.granularity, block_args) if settings else [None] * len(block_args)
    padding_size = input_shape[0] if config.padding_size is None else int(config.padding_size)

    inputs = keras.Input(shape=input_shape, name="image")
    x = _stem(pixel_preprocessing(inputs, preprocessing), config, padding_size)
    zs, exit_output = [], None
    for index, args in enumerate(block_args):
        x, block_zs = mbconv_block(
            x,
            args,
            index,
            activation=config.activation,
            drop_rate=config.drop_connect * index / len(block_args),
            padding_size=padding_size,
            gates=settings,
            granularity=granularities[index],
        )
        zs.extend(block_zs)
        if index == config.exit_after:
            exit_output = exit_head(x, num_classes, config.filters(config.exit_filters), config.activation)
    outputs = _top(x, num_classes, config)
    if settings is not None:
        loss_arguments = settings.loss_arguments()
        by_macs = loss_arguments.pop("gate_weights", None) == "macs"
        outputs = GateActivationLoss(**loss_arguments, name=ACTIVATION_LOSS_NAME)([outputs, *zs])
    model = keras.Model(inputs, outputs if exit_output is None else [outputs, exit_output], name=name or "sipa")
    if settings is not None and by_macs:  # the target is a fraction of the gated MACs
        model.get_layer(ACTIVATION_LOSS_NAME).set_gate_weights(gate_mac_weights(model))
    return model


CARD_NOTES = """
SIPA (Lee, Bae, Oh, Yun, MicroNet Challenge 2019, CIFAR-100 track), reimplemented in Keras from the
authors' reference code (github.com/Lee-Gihun/MicroNet_OSI-AI). Ten MBConv blocks (k3; strides
1,1,2,1,1,1,1,2,1,1; channels 24->16->24->40->40->48->64->64->80->80->96 after width 0.9), SE ratio 0.2
of the block input, swish, head 1x1 conv to 136 channels, dropout 0.2, dense classifier.

**Reference counting convention** (README table "obtained by hand", MicroNet rules): parameters are
convolution and dense weights plus biases with BatchNorm folded away: 470,776 for `sipa_cifar100`
(this card's "parameters without BatchNorm"); math operations count every multiplication and addition
(convolutions, SE, swish, pooling, upsampling, residual additions): 60,456,692 multiplications +
57,132,604 additions = 117,589,296 per 32x32 image at 32 bits before pruning, with a 63x63 upsampled
input. Scored at 16-bit parameters and inputs with 32-bit accumulators (multiplications count half),
the README scores the unpruned network at parameter storage 0.006534 and math operations 0.008447
(fractions of WideResNet-28-10's 36.5M / 10.49B), 0.014981 in all; the final entry (64% pruned, exit
pruned to 50%) scores 0.005798 at 80.04% top-1.
`tfgated.micronet.micronet_score(model, bits)` computes that score; the MACs above count only the
multiply-accumulates of convolutions and dense layers, so they are smaller than the MicroNet count.

Spatial sizes follow the reference's static padding (computed for the un-upsampled side): 63 -> 31 ->
15 -> 7. Early exit (`exit_after=4`, reference "MBConvBlock[4]"): outputs `[main, exit]`, main first;
the exit head adds 20,660 parameters without BatchNorm (reference: 20,660). Channel gates (`gates`)
sit after each block's expansion activation (block 0: after its depthwise activation); blocks
without an identity skip keep their most probable gate open. Deviations: plain BatchNorm instead of
ghost BatchNorm (4 splits); TensorFlow's nearest-neighbour pixel convention.
"""

# -- presets -----------------------------------------------------------------------

_CIFAR_RECIPE = {
    "optimizer": "sgd",
    "learning_rate": 0.13,
    "momentum": 0.9,
    "nesterov": False,  # the reference: torch.optim.SGD(momentum=0.9)
    "weight_decay": 1e-5,
    "epochs": 1200,
    "batch_size": 128,
    "schedule": "cosine",
    "label_smoothing": 0.3,
    "mixup_alpha": 1.0,
    "autoaugment": "cifar100 (authors' policy)",
    "no_bias_decay": True,
    "precision_bits": 16,
    "pruning": {"method": "global magnitude, layer-wise normalized", "sparsity": 0.64, "epochs_per_round": 600},
}
_FASHION_RECIPE = {
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "momentum": 0.9,
    "weight_decay": 1e-5,
    "epochs": 30,
    "batch_size": 128,
    "schedule": "cosine",
    "label_smoothing": 0.1,
    "precision_bits": 16,
}
_FASHION_ARCH = {"resolution": 1.4, "resource": 1, "width": 0.9, "depth": 1.0}


def _fashion_preset(description, recipe=_FASHION_RECIPE, gates=None):
    """A Fashion-MNIST preset of the SIPA structure (28x28x1, 10 classes)."""
    return {
        "family": "sipa",
        "arch": _FASHION_ARCH,
        "gates": gates,
        "dataset": "fashion_mnist",
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "recipe": recipe,
        "weights": None,
        "paper": papers.SIPA_FASHION,
        "description": description,
    }


PRESETS = {
    "sipa_cifar100": {
        "family": "sipa",
        "arch": {"resolution": 1.4, "resource": 2, "width": 0.9, "depth": 1.0},
        "gates": None,
        "dataset": "cifar100",
        "input_shape": [32, 32, 3],
        "num_classes": 100,
        "recipe": _CIFAR_RECIPE,
        "weights": None,
        "paper": papers.SIPA_CIFAR100,
        "description": (
            "SIPA's searched EfficientNet-style network for CIFAR-100 (MicroNet Challenge 2019): "
            "10 MBConv blocks with squeeze-and-excitation and swish, width 0.9, depth 1.0, input "
            "upsampled 32 -> 63 (resolution 1.4 per resource unit, 2 units: 1.96). 470,776 parameters "
            "without BatchNorm, about 117.6M math operations per image at 32 bits before pruning."
        ),
    },
    "sipa_cifar100_exit": {
        "family": "sipa",
        "arch": {"resolution": 1.4, "resource": 2, "width": 0.9, "depth": 1.0, "exit_after": 4},
        "gates": None,
        "dataset": "cifar100",
        "input_shape": [32, 32, 3],
        "num_classes": 100,
        "recipe": {
            **_CIFAR_RECIPE,
            "exit": {"loss": "softsmoothing (1 + max softmax) * CE", "epochs": 800, "threshold": 0.85,
                     "freeze_backbone": True},
        },
        "weights": None,
        "paper": papers.SIPA_CIFAR100_EXIT,
        "description": (
            "sipa_cifar100 with SIPA's early-exit head after MBConv block 4 (the fifth): depthwise 3x3, "
            "1x1 conv to 136 channels, pooling, classifier (20,660 parameters without BatchNorm). "
            "Outputs [main, exit] probabilities, main first."
        ),
    },
    "sipa_fashion_mnist": _fashion_preset(
        "The SIPA block structure for 28x28 grey Fashion-MNIST: same 10 MBConv blocks and width 0.9, "
        "input upsampled in the model by nearest neighbour 28 -> 40 (resolution 1.4, one resource "
        "unit), 10 classes."
    ),
    "sipa_fashion_mnist_pruned": _fashion_preset(
        "sipa_fashion_mnist after SIPA's Pruning step: half of the prunable weights (convolution and "
        "dense kernels) are exact zeros, chosen by global magnitude ranking with layer-wise "
        "normalization in two rounds (30%, then 50%), fine-tuned 1 and 7 epochs, then 12 more at 50%; the "
        "network is the same, its MicroNet storage counts the non-zeros plus a 1-bit mask.",
        recipe={
            **_FASHION_RECIPE,
            "augment": "pad2_crop_flip",
            "pruning": {"method": "global magnitude, layer-wise normalized", "schedule": [0.3, 0.5],
                        "sparsity": 0.5, "epochs_per_round": [1, 7], "extra_epochs_at_final_sparsity": 12,
                        "learning_rate": 0.01, "start": "sipa_fashion_mnist (shipped weights)"},
        },
    ),
    "sipa_fashion_mnist_exit": {
        **_fashion_preset(
            "sipa_fashion_mnist with SIPA's early-exit head after MBConv block 4 (the fifth, as the "
            "reference): depthwise 3x3, BN, swish, 1x1 conv to 136 channels, BN, swish, pooling, "
            "classifier. Outputs [main, exit] probabilities, main first; at SIPA's threshold 0.85 an "
            "example whose maximum exit probability is above it stops at the exit. The backbone is "
            "sipa_fashion_mnist's shipped weights, frozen with its batch-norm statistics, so the main "
            "output is sipa_fashion_mnist's.",
            recipe={
                **_FASHION_RECIPE,
                "exit": {"loss": "softsmoothing (1 + max softmax) * CE", "epochs": 8, "threshold": 0.85,
                         "freeze_backbone": True, "update_main_statistics": False,
                         "optimizer": "adam 1e-3, cosine decay", "start": "sipa_fashion_mnist (shipped weights)"},
            },
        ),
        "arch": {**_FASHION_ARCH, "exit_after": 4},
        "paper": papers.SIPA_FASHION_EXIT,
    },
    "sipa_fashion_mnist_gated": _fashion_preset(
        "sipa_fashion_mnist with independent Gumbel channel gates on every MBConv block's expanded "
        "channels (8 channels per gate, after the depthwise activation, before squeeze-and-excitation), "
        "per-batch activation loss with target 0.5 of the gated MACs: learned structured pruning as an "
        "alternative to SIPA's magnitude pruning; folding removes the closed channels.",
        recipe={
            **_FASHION_RECIPE,
            "learning_rate": 0.01,
            "epochs": 6,
            "augment": "pad2_crop_flip",
            "start": "sipa_fashion_mnist (shipped weights): python -m tfgated train --init-from sipa_fashion_mnist",
            "fine_tune": {"epochs": 6, "learning_rate": 0.01, "gates": "frozen (--gate gradient_scale=0 --gate "
                          "weight=0), logits set to +-10 by their threshold decision first",
                          "command": "python benchmarks/sipa_learned_pruning.py"},
        },
        gates={"kind": "independent", "loss_kind": "per_batch", "target": 0.5, "target_measure": "macs",
               "weight": 10.0, "granularity": 8, "open_probability": 0.9, "gradient_scale": 200},
    ),
}

