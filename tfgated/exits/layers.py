"""Gumbel early exits (Herrmann et al., ECCV 2020, supplement section 1.2).

After a stage of the network an intermediate classifier predicts class
probabilities and an :class:`ExitGate` decides, per example, whether the example
leaves there. The decision is a straight-through Gumbel sample, so exits train
end to end with the classifiers:

* :class:`ExitGate`: a :class:`~tfgated.gates.GumbelGate` whose logit ("leave
  here") comes from a small network on the stage's feature map. By default the
  supplement's: 3x3 convolution to ``filters`` (128) channels, batch
  normalization, a second 3x3 convolution and batch normalization, ``pool_size``
  x ``pool_size`` (4x4) average pooling, flatten, linear, Gumbel; no activation
  between them, as the supplement lists none. ``convolutions=1,
  activation="relu"`` is the older one-convolution form (conv, BN, ReLU, pool,
  linear) that the shipped Fashion-MNIST DenseNet was trained with. ``z = 1``
  means "exit". With ``pool_first=True`` the pooling comes first, which divides
  the convolutions' cost by ``pool_size**2`` (on a small network the paper's
  order can cost as much as the stages the exit saves).
* :func:`msdnet_exit_classifier`: the supplement's exit classifier, MSDNet's
  (Huang et al., ICLR 2018): two 3x3 stride-2 convolutions to 128 channels (each
  followed by batch norm and ReLU, MSDNet's ``ConvBasic``), 2x2 average pooling,
  linear, softmax.
* :class:`EarlyExitCombine`: ``[probs_1, z_1, ..., probs_K, z_K, final_probs]``
  -> the probabilities of the first exit whose gate is 1 (the final classifier
  when none is). The mixture weights ``z_k * prod_{j<k} (1 - z_j)`` are exactly
  0/1 in the forward pass and carry the straight-through gradient in training.
  It reports the share of examples leaving at each exit as metrics
  ``exit_{k}_share`` and ``final_share``.
* :class:`ExitReach`: ``[z_1, ..., z_K]`` -> ``(batch, K)`` with column ``k``
  equal to 1 iff the example passes exit ``k`` (runs the next stage). Feed it to
  the activation loss (:func:`tfgated.gated_model`): its mean is the share of
  gated stages computed, so the target ``t`` sets the average depth.

Inference styles follow the other gates (threshold, stochastic, ensemble); for
an exit gate ``always_on`` means *all computation on*: no example exits early
and every example gets the final classifier (the dense network).

The combined model computes every stage for every example (a static graph);
the saving comes from running the stages after an exit only for the examples
that pass it, which :func:`exit_shares` measures.

:func:`tfgated.graph.gate_structure` recognises these layers by two class
attributes, ``ExitGate.exits_early`` and ``EarlyExitCombine.routes_exits``, so
the graph module needs nothing from this package (which builds on it).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfgated.gates import STYLE_IDS, GumbelGate
from tfgated.inference import find_layers

__all__ = [
    "DEFAULT_EXIT_PROBABILITY",
    "EXIT_FILTERS",
    "EarlyExitCombine",
    "ExitGate",
    "ExitReach",
    "exit_classifier_outputs",
    "exit_gate_layers",
    "exit_reach",
    "exit_shares",
    "exit_weights",
    "gate_exit_shares",
    "msdnet_exit_classifier",
]

#: Channels of the exit networks' convolutions in the supplement (gate and classifier).
EXIT_FILTERS = 128

#: Initial exit probability: most examples reach the final classifier at first.
DEFAULT_EXIT_PROBABILITY = 0.25


@keras.saving.register_keras_serializable(package="tfgated")
class ExitGate(GumbelGate):
    """Per-example Gumbel "exit here" decision computed from a feature map.

    Args:
        filters: channels of the gate network's 3x3 convolutions (128 in the paper).
        pool_size: average-pooling window and stride (4 in the paper), clipped to
            the feature map size.
        pool_first: pool before the convolutions instead of after them (the paper's
            order): the same output size at ``1 / pool_size**2`` of the MACs.
        convolutions: 3x3 convolution + batch norm pairs, 2 in the supplement
            (1: the older form).
        activation: ``None`` (the supplement: no activation in the gate network) or
            ``"relu"`` after every batch norm (the older form).
        open_probability: initial probability of exiting, in (0, 1).
        **kwargs: ``temperature``, ``threshold``, ``inference_style``, ``seed``,
            ``gradient_scale`` and the Keras layer arguments, as for
            :class:`~tfgated.gates.GumbelGate` (``units``, ``kind``, ``hidden_units``,
            ``per_gate_hidden`` and ``force_open`` are fixed by this class: one decision,
            its own network).

    Call arguments:
        inputs: feature map ``(batch, height, width, channels)``.
        training: draws straight-through samples when true.

    Returns:
        ``(batch, 1)``: 1 where the example exits here. Under the
        ``always_on`` style always 0 (no early exit).
    """

    #: Read by :func:`tfgated.graph.gate_structure`: ``z = 1`` means "leave here".
    exits_early = True

    #: What :meth:`get_config` saves: the shared :class:`GumbelGate` settings and this class's own.
    CONFIG_ARGUMENTS = tuple(
        name
        for name in GumbelGate.CONFIG_ARGUMENTS
        if name not in ("units", "kind", "hidden_units", "per_gate_hidden", "force_open")
    ) + ("filters", "pool_size", "pool_first", "convolutions", "activation")

    #: What a config saved before ``convolutions``/``activation`` existed meant (read by
    #: :meth:`from_config`, so older ``.keras`` files rebuild the network they hold).
    LEGACY_FORM = {"convolutions": 1, "activation": "relu"}

    #: The activations the gate network may use between its layers.
    ACTIVATIONS = (None, "relu")

    def __init__(self, filters=128, pool_size=4, pool_first=False, open_probability=DEFAULT_EXIT_PROBABILITY,
                 convolutions=2, activation=None, **kwargs):
        # kind "independent": no built-in gate network, this class brings its own
        super().__init__(1, kind="independent", open_probability=open_probability, force_open=False, **kwargs)
        self.kind = "dependent"
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"Expected filters to be a positive integer. Received: filters={filters}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"Expected pool_size to be a positive integer. Received: pool_size={pool_size}")
        if convolutions not in (1, 2):
            raise ValueError(f"Expected convolutions to be 1 or 2. Received: convolutions={convolutions!r}")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"Expected activation in {list(self.ACTIVATIONS)}. Received: activation={activation!r}")
        self.filters = filters
        self.pool_size = pool_size
        self.pool_first = bool(pool_first)
        self.convolutions = convolutions
        self.activation = activation
        # the first pair keeps the names "conv"/"norm" of the one-convolution form (shipped weights)
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name="conv")
        self.norm = keras.layers.BatchNormalization(name="norm")
        if convolutions == 2:
            self.conv2 = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name="conv2")
            self.norm2 = keras.layers.BatchNormalization(name="norm2")
        self.head = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer=keras.initializers.Constant(
                float(np.log(open_probability / (1.0 - open_probability)))
            ),
            name="head",
        )

    def conv_norm_pairs(self):
        """The gate network's ``(Conv2D, BatchNormalization)`` pairs, in order."""
        pairs = [(self.conv, self.norm)]
        if self.convolutions == 2:
            pairs.append((self.conv2, self.norm2))
        return pairs

    def _pool_window(self, height, width):
        return (min(self.pool_size, height), min(self.pool_size, width))

    def build(self, input_shape):
        if len(input_shape) != 4 or None in tuple(input_shape[1:]):
            raise ValueError(
                "Expected a feature map (batch, height, width, channels) with known spatial size "
                f"and channels. Received: shape={input_shape}"
            )
        _, height, width, channels = input_shape
        window = self._pool_window(height, width)
        pooled = (height // window[0], width // window[1])
        conv_size = pooled if self.pool_first else (height, width)
        for conv, norm in self.conv_norm_pairs():
            conv.build((None, *conv_size, channels))
            norm.build((None, *conv_size, self.filters))
            channels = self.filters
        self.head.build((None, pooled[0] * pooled[1] * self.filters))
        self.build_style_variables()

    def compute_logits(self, inputs, training=None):
        """Exit logits, shape ``(batch, 1)``."""
        window = self._pool_window(inputs.shape[1], inputs.shape[2])
        x = inputs
        if self.pool_first:
            x = ops.average_pool(x, window, strides=window, padding="valid")
        for conv, norm in self.conv_norm_pairs():
            x = norm(conv(x), training=training)
            if self.activation == "relu":
                x = ops.relu(x)
        if not self.pool_first:
            x = ops.average_pool(x, window, strides=window, padding="valid")
        x = ops.reshape(x, (ops.shape(x)[0], -1))
        return self.head(x)

    def compute_macs(self, input_shape):
        """Multiply-accumulates of the gate network for one example of ``input_shape``.

        3x3 convolutions plus the linear head (pooling, normalization and the
        Gumbel decision are not MACs). For complexity counters: the generic
        dependent-gate formula of :class:`GumbelGate` does not apply here.
        """
        height, width, channels = (int(v) for v in input_shape[-3:])
        window = self._pool_window(height, width)
        pooled = (height // window[0]) * (width // window[1])
        conv_positions = pooled if self.pool_first else height * width
        conv_macs = conv_positions * 9 * self.filters * (channels + (self.convolutions - 1) * self.filters)
        return conv_macs + pooled * self.filters

    @classmethod
    def from_config(cls, config):
        # a config without the two keys was saved by the one-convolution form
        return cls(**{**cls.LEGACY_FORM, **config})

    def call(self, inputs, training=None):
        z = super().call(inputs, training=training)
        if training:
            return z
        never = ops.equal(self.style_id, STYLE_IDS["always_on"])
        return ops.where(never, ops.zeros_like(z), z)


def msdnet_exit_classifier(x, num_classes, name, filters=EXIT_FILTERS):
    """MSDNet's intermediate classifier on feature map ``x``: softmax probabilities.

    Layers (``name`` is the prefix and the name of the final dense layer):
    ``{name}_1_conv`` 3x3 stride 2 to ``filters`` channels (no bias), ``{name}_1_bn``,
    ``{name}_1_relu``, the same again as ``{name}_2_*``, ``{name}_pool`` 2x2 average
    pooling (clipped to the map), ``{name}_flatten`` and ``{name}``, linear + softmax.
    """
    if len(x.shape) != 4:
        raise ValueError(f"Expected a feature map (batch, height, width, channels). Received: shape={x.shape}")
    for k in (1, 2):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_{k}_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_{k}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{name}_{k}_relu")(x)
    window = (min(2, int(x.shape[1])), min(2, int(x.shape[2])))
    x = keras.layers.AveragePooling2D(window, strides=window, name=f"{name}_pool")(x)
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)(x)


def exit_reach(gates):
    """``[r_1, ..., r_K]`` for exit gates ``z_k``: ``r_k = prod_{j<=k} (1 - z_j)``, 1 where the
    example passes exits 1..k (tensors or NumPy arrays, each ``(batch, 1)``)."""
    reach, passing = [], None
    for z in gates:
        passing = (1.0 - z) if passing is None else passing * (1.0 - z)
        reach.append(passing)
    return reach


def exit_weights(gates):
    """Mixture weights ``[w_1, ..., w_K, w_final]`` (each ``(batch, 1)``) for exit gates ``z_k``.

    ``w_k = z_k * prod_{j<k} (1 - z_j)``: 1 for the first exit whose gate is 1;
    ``w_final`` is the last :func:`exit_reach`.
    """
    reach = exit_reach(gates)
    weights = [z if k == 0 else z * reach[k - 1] for k, z in enumerate(gates)]
    return weights + reach[-1:]


def _check_gate_shape(shape, what):
    if len(shape) != 2 or shape[-1] != 1:
        raise ValueError(f"Expected {what} of shape (batch, 1). Received: shape={shape}")


@keras.saving.register_keras_serializable(package="tfgated")
class EarlyExitCombine(keras.layers.Layer):
    """Route each example to the first exit whose gate is open.

    Call arguments:
        inputs: ``[probs_1, z_1, ..., probs_K, z_K, final_probs]``, probabilities
            of shape ``(batch, classes)`` and gates of shape ``(batch, 1)``.

    Returns:
        ``sum_k w_k * probs_k + w_final * final_probs`` (see :func:`exit_weights`).
    """

    #: Read by :func:`tfgated.graph.gate_structure`: this layer applies exit gates.
    routes_exits = True

    def build(self, input_shape):
        if len(input_shape) < 3 or len(input_shape) % 2 == 0:
            raise ValueError(
                "Expected inputs [probs_1, z_1, ..., probs_K, z_K, final_probs] (an odd number, "
                f"at least 3). Received: {len(input_shape)} inputs"
            )
        classes = input_shape[-1][-1]
        for index, shape in enumerate(input_shape):
            if index % 2 == 1:
                _check_gate_shape(shape, f"gate input {index}")
            elif len(shape) != 2 or shape[-1] != classes:
                raise ValueError(
                    f"Expected probabilities of shape (batch, {classes}) at input {index}. "
                    f"Received: shape={shape}"
                )
        self.num_exits = (len(input_shape) - 1) // 2
        self.share_trackers = [
            keras.metrics.Mean(name=f"exit_{k + 1}_share") for k in range(self.num_exits)
        ] + [keras.metrics.Mean(name="final_share")]

    def call(self, inputs):
        probabilities = list(inputs[0::2])
        gates = [ops.cast(z, probabilities[0].dtype) for z in inputs[1::2]]
        weights = exit_weights(gates)
        for tracker, weight in zip(self.share_trackers, weights):
            tracker.update_state(ops.mean(weight))
        return sum(w * p for w, p in zip(weights, probabilities))

    def compute_output_shape(self, input_shape):
        return input_shape[-1]


@keras.saving.register_keras_serializable(package="tfgated")
class ExitReach(keras.layers.Layer):
    """``[z_1, ..., z_K]`` -> ``(batch, K)``: column ``k`` is 1 iff the example passes exit ``k``.

    Its mean over the batch and columns is the share of gated stages computed:
    the quantity the activation loss should pull towards the target.
    """

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not isinstance(
            input_shape[0], (list, tuple)
        ):
            input_shape = [input_shape]
        for index, shape in enumerate(input_shape):
            _check_gate_shape(shape, f"gate input {index}")

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return ops.concatenate(exit_reach(inputs), axis=-1)

    def compute_output_shape(self, input_shape):
        if not isinstance(input_shape[0], (list, tuple)):
            input_shape = [input_shape]
        return (input_shape[0][0], len(input_shape))


def exit_gate_layers(model):
    """Every :class:`ExitGate` of ``model``, in model order."""
    return find_layers(model, ExitGate)


def exit_shares(model, x, batch_size=256):
    """Share of the examples of ``x`` leaving at each exit (last entry: the final classifier).

    Uses the gates' current inference style; returns a NumPy array of length K + 1.
    """
    gates = exit_gate_layers(model)
    if not gates:
        raise ValueError(f"Model {model.name!r} has no ExitGate layers.")
    probe = keras.Model(model.inputs, [gate.output for gate in gates])
    values = probe.predict(x, batch_size=batch_size, verbose=0)
    if len(gates) == 1:
        values = [values]
    return gate_exit_shares(values)


def gate_exit_shares(values):
    """Share of the examples leaving at each exit (last entry: the final classifier), from
    the exit gates' values ``[z_1, ..., z_K]`` (NumPy arrays, each ``(examples, 1)``)."""
    weights = exit_weights([np.asarray(v, dtype="float32") for v in values])
    return np.array([float(np.mean(w)) for w in weights])


def exit_classifier_outputs(model):
    """``[(gate, feature map, exit probabilities)]`` for each exit of a Gumbel-exit ``model``.

    Read from the model's :class:`EarlyExitCombine` inputs ``[probs_1, z_1, ..., final]``:
    the feature map is the exit gate's input, from which the exit's classifier also starts.
    """
    combines = find_layers(model, EarlyExitCombine)
    if len(combines) != 1:
        raise ValueError(f"Expected exactly one EarlyExitCombine in {model.name!r}. Found {len(combines)}.")
    inputs = list(combines[0].input)
    gate_of = {id(gate.output): gate for gate in exit_gate_layers(model)}
    exits = []
    for probabilities, z in zip(inputs[0:-1:2], inputs[1::2]):
        gate = gate_of.get(id(z))
        if gate is None:
            raise ValueError("Expected every gate input of the EarlyExitCombine to be an ExitGate's output.")
        exits.append((gate, gate.input, probabilities))
    return exits
