"""Straight-through Gumbel gates and the layers that apply them.

A gate decides; an apply layer acts on the decision:

* :class:`GumbelGate` turns a context tensor into binary gate values ``z`` of
  shape ``(batch, units)``. ``kind="independent"`` keeps one trainable logit per
  gate ("Ind", learned pruning); ``kind="dependent"`` computes the logits with a
  small gate network on the context (global average pool, dense, batch norm,
  ReLU, dense), as in ConvNet-AIG ("Dep", conditional computation). The hidden
  layer is shared by the layer's gates, or with ``per_gate_hidden=True`` each
  gate has ``hidden_units`` of its own, as in the Gumbel paper's code (one
  16-unit hidden layer and batch norm per gate).
* :class:`ChannelMask` multiplies groups of ``granularity`` channels of a
  feature map by the gate values.
* :class:`GatedResidual` computes ``shortcut + z * branch`` (layer gating).

Training always draws hard 0/1 samples in the forward pass and uses the
gradient of the relaxed sample (straight-through Gumbel estimator; for a binary
gate the difference of two Gumbel variables is logistic noise). At inference the
gate follows its *inference style*, stored in a non-trainable variable so it can
be switched on a built (even compiled or reloaded) model without retracing:

``threshold``   on iff ``sigmoid(logit) > threshold`` (deterministic)
``always_on``   every gate is 1 (the dense network)
``stochastic``  a fresh hard Gumbel sample per call

The ensemble style (mean of N stochastic passes) is a model-level operation: see
:mod:`tfgated.inference`.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
from keras import ops

KINDS = ("independent", "dependent")
GATE_STYLES = ("threshold", "always_on", "stochastic")
STYLE_IDS = {name: index for index, name in enumerate(GATE_STYLES)}

#: Initial open probability: sigmoid(4), the logit the paper's reference code starts from.
DEFAULT_OPEN_PROBABILITY = 0.982


def _logit(p):
    return math.log(p / (1.0 - p))


def _check_probability(name, value, *, open_interval=False):
    low_ok = value > 0 if open_interval else value >= 0
    high_ok = value < 1 if open_interval else value <= 1
    if not (low_ok and high_ok):
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"Expected {name} in {interval}. Received: {name}={value}")


def check_unit_interval(name, value):
    """``value`` as a float in ``[0, 1]``; a ValueError naming ``name`` otherwise (also for bools,
    NaN and anything that is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"Expected {name} to be a number. Received: {name}={value!r}")
    if not 0.0 <= float(value) <= 1.0 or math.isnan(float(value)):
        raise ValueError(f"Expected {name} in [0, 1]. Received: {name}={value}")
    return float(value)


def check_positive_int(name, value):
    """Raise Keras' style of error unless ``value`` is an integer >= 1 (``bool`` excluded)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected {name} to be a positive integer. Received: {name}={value!r}")
    return value


def check_seed(seed, name="seed"):
    """Raise Keras' style of error unless ``seed`` is ``None`` or a non-negative integer."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"Expected {name} to be None or a non-negative integer. Received: {name}={seed!r}")
    return seed


def scale_gradient(x, scale):
    """``x`` in the forward pass, ``scale`` times its gradient in the backward pass."""
    if scale == 1.0:
        return x
    return ops.stop_gradient(x) + scale * (x - ops.stop_gradient(x))


def check_kind(kind):
    """Raise a clear error if ``kind`` is not a gate kind (:data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"Expected kind to be one of {list(KINDS)}. Received: kind={kind!r}")
    return kind


def check_style(style, allowed=GATE_STYLES):
    """Raise a clear error if ``style`` is not one of ``allowed``."""
    if style not in allowed:
        raise ValueError(
            f"Unknown inference style. Expected one of {list(allowed)}. Received: style={style!r}"
        )
    return style


@keras.saving.register_keras_serializable(package="tfgated")
class GumbelGate(keras.layers.Layer):
    """Binary straight-through Gumbel gates.

    Args:
        units: number of gates produced per example.
        kind: ``"independent"`` (one trainable logit per gate, learned pruning)
            or ``"dependent"`` (a gate network on the context tensor).
        temperature: Gumbel-softmax temperature of the relaxed sample (> 0).
        open_probability: initial probability that a gate is open, in (0, 1).
            Defaults to sigmoid(4) ~ 0.982 as in the paper's reference code;
            ConvNet-AIG starts at about 0.85.
        hidden_units: width of the dependent gate network's hidden layer (per gate
            when ``per_gate_hidden``).
        per_gate_hidden: dependent gates only: give every gate its own
            ``hidden_units`` hidden units (one dense layer of ``units *
            hidden_units`` from the pooled context, batch norm, ReLU, and a head
            that reads each gate's own units), the Gumbel paper's form. ``False``
            (the default, and what configs saved without it mean): one hidden
            layer shared by all ``units`` gates.
        force_open: keep the most probable gate open, so a non-residual layer
            never loses all its channels.
        threshold: open-probability threshold of the ``threshold`` style.
        inference_style: initial inference style (see module docstring).
        seed: seed of the gate noise.
        gradient_scale: factor on the gradient that reaches the gate's logits
            in training (the forward pass is unchanged). Under SGD it is a
            learning-rate multiplier for the gates (logits or gate network):
            independent gates on a warm-started network see per-gate gradients
            too small to separate them within a few epochs at the network's
            learning rate. Adaptive optimizers (Adam) normalize it away.
            ``0`` freezes the gates: the network trains around a fixed
            learned selection (fine-tuning after learned pruning).

    Call arguments:
        inputs: the context tensor, rank >= 2 with the batch first. Independent
            gates only read its batch size; dependent gates pool it over all
            axes but the first and the last.
        training: draws straight-through samples when true.

    Returns:
        Gate values of shape ``(batch, units)``, each 0 or 1 in the forward pass.
    """

    #: Variables that hold settings (the inference style), not learned values: a warm
    #: start (:func:`tfgated.train.transfer_weights`) leaves them as the model has them.
    SETTING_VARIABLES = ("style_id", "threshold_value")

    #: The constructor arguments :meth:`get_config` saves, each kept as the attribute of
    #: the same name (subclasses change the tuple to save their own).
    CONFIG_ARGUMENTS = (
        "units",
        "kind",
        "temperature",
        "open_probability",
        "hidden_units",
        "per_gate_hidden",
        "force_open",
        "threshold",
        "inference_style",
        "seed",
        "gradient_scale",
    )

    def __init__(
        self,
        units,
        kind="independent",
        temperature=1.0,
        open_probability=DEFAULT_OPEN_PROBABILITY,
        hidden_units=16,
        per_gate_hidden=False,
        force_open=False,
        threshold=0.5,
        inference_style="threshold",
        seed=None,
        gradient_scale=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("units", units)
        check_kind(kind)
        check_seed(seed)
        if not temperature > 0:
            raise ValueError(f"Expected temperature > 0. Received: temperature={temperature}")
        _check_probability("open_probability", open_probability, open_interval=True)
        _check_probability("threshold", threshold, open_interval=True)
        if not gradient_scale >= 0:
            raise ValueError(f"Expected gradient_scale >= 0. Received: gradient_scale={gradient_scale}")
        check_positive_int("hidden_units", hidden_units)
        check_style(inference_style)
        self.units = units
        self.kind = kind
        self.temperature = float(temperature)
        self.open_probability = float(open_probability)
        self.hidden_units = hidden_units
        if not isinstance(per_gate_hidden, bool):
            raise ValueError(
                f"Expected per_gate_hidden to be True or False. Received: per_gate_hidden={per_gate_hidden!r}"
            )
        self.per_gate_hidden = per_gate_hidden
        self.force_open = bool(force_open)
        self.threshold = float(threshold)
        self.inference_style = inference_style
        self.seed = seed
        self.gradient_scale = float(gradient_scale)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Set by static_inference_style(): trace the current style as a constant.
        self.static_style = False
        if kind == "dependent":
            self.hidden = keras.layers.Dense(self.hidden_width, use_bias=False, name="hidden")
            self.norm = keras.layers.BatchNormalization(name="norm")
            self.head = self._make_head(units, open_probability)

    @property
    def hidden_width(self):
        """Units of the dependent gate network's hidden layer, all gates together."""
        return self.hidden_units * (self.units if self.per_gate_hidden else 1)

    def _make_head(self, units, open_probability):
        initializers = {
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.01),
            "bias_initializer": keras.initializers.Constant(_logit(open_probability)),
        }
        if self.per_gate_hidden:  # gate g reads only its own hidden units: kernel (units, hidden_units)
            return keras.layers.EinsumDense(
                "bgh,gh->bg", output_shape=(units,), bias_axes="g", name="head", **initializers
            )
        return keras.layers.Dense(units, name="head", **initializers)

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                f"Expected a context tensor of rank >= 2 (batch first). Received: shape={input_shape}"
            )
        if self.kind == "independent":
            self.logits = self.add_weight(
                name="logits",
                shape=(self.units,),
                initializer=keras.initializers.Constant(_logit(self.open_probability)),
            )
        else:
            channels = input_shape[-1]
            self.hidden.build((None, channels))
            self.norm.build((None, self.hidden_width))
            per_gate = (None, self.units, self.hidden_units)
            self.head.build(per_gate if self.per_gate_hidden else (None, self.hidden_units))
        self.build_style_variables()

    def build_style_variables(self):
        """Create the non-trainable ``style_id`` and ``threshold_value`` variables
        (subclasses with their own gate network call this from ``build``)."""
        self.style_id = self.add_weight(
            name="style_id",
            shape=(),
            dtype="int32",
            trainable=False,
            initializer=keras.initializers.Constant(STYLE_IDS[self.inference_style]),
        )
        self.threshold_value = self.add_weight(
            name="threshold_value",
            shape=(),
            trainable=False,
            initializer=keras.initializers.Constant(self.threshold),
        )

    # -- decisions ---------------------------------------------------------------

    def compute_logits(self, inputs, training=None):
        """Gate logits (log-odds of "open"), shape ``(batch, units)``."""
        if self.kind == "independent":
            batch = ops.shape(inputs)[0]
            return ops.broadcast_to(ops.cast(self.logits, self.compute_dtype), (batch, self.units))
        pooled = inputs
        if len(pooled.shape) > 2:
            pooled = ops.mean(pooled, axis=tuple(range(1, len(pooled.shape) - 1)))
        hidden = ops.relu(self.norm(self.hidden(pooled), training=training))
        if self.per_gate_hidden:
            hidden = ops.reshape(hidden, (-1, self.units, self.hidden_units))
        return self.head(hidden)

    def reset_noise(self, seed=None, stream=0):
        """Restart the gate noise from ``seed`` (default: the gate's own ``seed``).

        The noise of the ``stochastic`` style (and of training) comes from a seed
        generator whose state advances with every call; after ``reset_noise(s)`` the
        same calls on the same inputs draw exactly the same samples, in any process.
        Gates reset from one ``seed`` on different ``stream`` numbers draw independent
        noise (:func:`tfgated.inference.reset_gate_noise` numbers them).
        """
        seed = self.seed if seed is None else seed
        if seed is None:
            raise ValueError(
                f"Gate {self.name!r} has no seed of its own: pass reset_noise(seed=...). Received: seed=None"
            )
        check_seed(seed)
        check_seed(stream, "stream")
        state = self.seed_generator.state
        state.assign(ops.cast(ops.convert_to_tensor([seed, stream * 2**20]), state.dtype))
        return self

    def _logistic_noise(self, shape, dtype):
        eps = 1e-6
        u = keras.random.uniform(shape, minval=eps, maxval=1.0 - eps, seed=self.seed_generator)
        u = ops.cast(u, dtype)
        return ops.log(u) - ops.log(1.0 - u)

    def call(self, inputs, training=None):
        logits = self.compute_logits(inputs, training=training)
        if training:
            logits = scale_gradient(logits, self.gradient_scale)
            noise = self._logistic_noise(ops.shape(logits), logits.dtype)
            sampled = ops.cast(logits + noise > 0, logits.dtype)
            soft = ops.sigmoid((logits + noise) / self.temperature)
            z = soft + ops.stop_gradient(sampled - soft)
        elif self.static_style:
            z = self._static_decision(logits)
        else:
            z = self._dynamic_decision(logits)
        if self.force_open and self.units > 1:
            most_probable = ops.one_hot(ops.argmax(logits, axis=-1), self.units, dtype=logits.dtype)
            z = ops.maximum(z, most_probable)
        elif self.force_open:
            z = ops.ones_like(z)
        return z

    def _sample(self, logits):
        noise = self._logistic_noise(ops.shape(logits), logits.dtype)
        return ops.cast(logits + noise > 0, logits.dtype)

    def _dynamic_decision(self, logits):
        """Inference decision chosen by the ``style_id`` variable inside the graph."""
        probabilities = ops.sigmoid(logits)
        threshold = ops.cast(self.threshold_value, logits.dtype)
        thresholded = ops.cast(probabilities > threshold, logits.dtype)
        style = self.style_id
        return ops.where(
            ops.equal(style, STYLE_IDS["threshold"]),
            thresholded,
            ops.where(ops.equal(style, STYLE_IDS["always_on"]), ops.ones_like(logits), self._sample(logits)),
        )

    def _static_decision(self, logits):
        """Inference decision fixed at trace time by ``inference_style``: no noise op unless stochastic."""
        if self.inference_style == "always_on":
            return ops.ones_like(logits)
        if self.inference_style == "threshold":
            return ops.cast(ops.sigmoid(logits) > self.threshold, logits.dtype)
        return self._sample(logits)

    def probabilities(self, inputs=None, training=False):
        """Open probabilities ``sigmoid(logits)``; independent gates need no input."""
        if self.kind == "independent" and inputs is None:
            return ops.sigmoid(self.logits)
        if inputs is None:
            raise ValueError(f"Gate {self.name!r} is data-dependent: pass the context tensor.")
        return ops.sigmoid(self.compute_logits(inputs, training=training))

    # -- inference style -----------------------------------------------------------

    def set_inference_style(self, style, threshold=None):
        """Switch the inference style (and optionally the threshold) in place."""
        check_style(style)
        if threshold is not None:
            _check_probability("threshold", threshold, open_interval=True)
            self.threshold = float(threshold)
        self.inference_style = style
        if self.built:
            self.style_id.assign(STYLE_IDS[style])
            self.threshold_value.assign(self.threshold)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        # The saved variables are the truth: keep the Python attributes in step.
        self.inference_style = GATE_STYLES[int(keras.ops.convert_to_numpy(self.style_id))]
        saved = float(keras.ops.convert_to_numpy(self.threshold_value))
        if abs(saved - self.threshold) > 1e-6:
            self.threshold = saved

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in self.CONFIG_ARGUMENTS}}


@keras.saving.register_keras_serializable(package="tfgated")
class ChannelMask(keras.layers.Layer):
    """Multiplies groups of ``granularity`` channels by their gate.

    Gate ``j`` controls channels ``[j * granularity, (j + 1) * granularity)``.

    Call arguments:
        inputs: ``[features, gates]`` with features ``(batch, ..., channels)``
            and gates ``(batch, channels // granularity)``.
    """

    def __init__(self, granularity=1, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("granularity", granularity)
        self.granularity = granularity

    def build(self, input_shape):
        features_shape, gates_shape = input_shape
        channels = features_shape[-1]
        if channels % self.granularity:
            raise ValueError(
                f"Expected granularity to divide {channels} channels. "
                f"Received: granularity={self.granularity}"
            )
        expected = channels // self.granularity
        if gates_shape[-1] is not None and gates_shape[-1] != expected:
            raise ValueError(
                f"Expected {expected} gates for {channels} channels at granularity "
                f"{self.granularity}. Received: {gates_shape[-1]} gates"
            )
        self.channels = channels

    def call(self, inputs):
        features, gates = inputs
        mask = ops.repeat(ops.cast(gates, features.dtype), self.granularity, axis=-1)
        for _ in range(len(features.shape) - 2):
            mask = ops.expand_dims(mask, axis=1)
        return features * mask

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "granularity": self.granularity}


@keras.saving.register_keras_serializable(package="tfgated")
class GatedResidual(keras.layers.Layer):
    """Layer gating of a residual branch: ``shortcut + z * branch``.

    Call arguments:
        inputs: ``[shortcut, branch, gates]`` with gates of shape ``(batch, 1)``.
    """

    def build(self, input_shape):
        shortcut_shape, branch_shape, gates_shape = input_shape
        if tuple(shortcut_shape[1:]) != tuple(branch_shape[1:]):
            raise ValueError(
                "Expected the shortcut and the branch to have the same shape. "
                f"Received: shortcut={shortcut_shape}, branch={branch_shape}"
            )
        if gates_shape[-1] != 1:
            raise ValueError(f"Expected one gate per example. Received: gates shape={gates_shape}")

    def call(self, inputs):
        shortcut, branch, gates = inputs
        z = ops.cast(gates, branch.dtype)
        for _ in range(len(branch.shape) - 2):
            z = ops.expand_dims(z, axis=1)
        return shortcut + z * branch

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def channel_gate(
    features,
    granularity=1,
    kind="independent",
    context=None,
    name=None,
    **gate_kwargs,
):
    """Functional helper: gate the channels of ``features``.

    Returns ``(gated_features, gates)``; feed ``gates`` to the activation loss.
    ``context`` defaults to ``features`` (dependent gates pool it).
    """
    check_positive_int("granularity", granularity)
    check_kind(kind)
    channels = features.shape[-1]
    if channels is None:
        raise ValueError(f"Expected features with a known channel count. Received: shape={features.shape}")
    if channels % granularity:
        raise ValueError(
            f"Expected granularity to divide {channels} channels. Received: granularity={granularity}"
        )
    prefix = name or "channel"
    gate = GumbelGate(channels // granularity, kind=kind, name=f"{prefix}_gate", **gate_kwargs)
    z = gate(features if context is None else context)
    gated = ChannelMask(granularity, name=f"{prefix}_mask")([features, z])
    return gated, z


def residual_gate(shortcut, branch, kind="independent", context=None, name=None, **gate_kwargs):
    """Functional helper: ``shortcut + z * branch`` with one gate per example.

    ``context`` (the block input in ConvNet-AIG) defaults to ``shortcut``.
    Returns ``(output, gates)``.
    """
    prefix = name or "residual"
    gate = GumbelGate(1, kind=kind, name=f"{prefix}_gate", **gate_kwargs)
    z = gate(shortcut if context is None else context)
    output = GatedResidual(name=f"{prefix}_add")([shortcut, branch, z])
    return output, z


@contextlib.contextmanager
def static_inference_style(model):
    """Within this context the gates of ``model`` trace their current inference
    style as a Python constant: the graph holds no style switch and, unless the
    style is stochastic, no random op (which TFLite cannot run). Exporters trace
    models under it; a style change inside the context needs a retrace.
    """
    gates = [layer for layer in model._flatten_layers() if isinstance(layer, GumbelGate)]
    previous = [gate.static_style for gate in gates]
    for gate in gates:
        gate.static_style = True
    try:
        yield model
    finally:
        for gate, value in zip(gates, previous):
            gate.static_style = value
