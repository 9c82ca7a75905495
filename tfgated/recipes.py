"""Training recipes: the "Improving" pieces of SIPA, each a switch.

SIPA (Lee et al., MicroNet Challenge 2019, section 2.2 and Appendix A.2)
improves a searched network by greedily adopting training tricks. Each trick
here is a small composable Keras piece with an on/off switch, gathered in one
:class:`Recipe`:

=====================  =====================================================
switch                 piece
=====================  =====================================================
``learning_rate``      initial learning rate
``cosine_decay``       ``keras.optimizers.schedules.CosineDecay`` over all
                       training steps (``warmup_epochs``: linear warmup);
                       off: constant, or step decay by ``lr_decay_factor``
                       at ``lr_boundaries`` (epochs; after the linear
                       warmup if ``warmup_epochs``)
``weight_decay``       decoupled weight decay (SGDW / AdamW)
``bias_decay``         ``False``: biases (batch-norm beta included) are
                       excluded from weight decay
``bn_decay``           ``False``: batch-norm gamma/beta are excluded
                       (default ``True``: SIPA found only no-bias-decay helps)
``gate_decay``         ``False``: gate logits/gate networks are excluded
``ghost_batch_norm``   virtual batch size of :class:`GhostBatchNormalization`
                       swapped in for every BN layer (0: off)
``mixup``              mixup alpha (0: off), a ``tf.data`` map on batches
``label_smoothing``    epsilon of label smoothing (SIPA uses 0.3; 0: off)
``label_smoothing_spread``  ``"others"``: the epsilon is shared by the other
                       classes (SIPA's definition, the default); ``"all"``:
                       by all classes (Keras'), see :mod:`tfgated.smoothing`
``activation``         ``"relu"``/``"swish"``: an architecture switch, passed
                       as override to ``tfgated.zoo.load(activation=...)``
``augment``            augmentation policy (Keras layers in the pipeline):
                       ``none``, ``flip``, ``shift_flip``,
                       ``pad2_crop_flip``, ``pad4_crop_flip``,
                       ``random_resized_crop_flip``, ``randaugment``,
                       ``augmix``, ``autoaugment_cifar10`` (AutoAugment's
                       CIFAR-10 policy), ``autoaugment_micronet`` (the SIPA
                       authors' searched CIFAR-100 policy),
                       ``autoaugment_micronet_crop_flip`` (that policy, then
                       their pad-4 crop and flip)
``stabilize_epochs``   "distribution stabilization": a short fine-tune with a
                       small constant LR (``stabilize_lr``) and only weak
                       augmentation (``stabilize_augment``), no mixup
``train_on_validation``  SIPA's "no validation data": train on train +
                       validation (for the final training, after Improving
                       has chosen with validation data)
``precision_bits``     16: quantization-aware training, weights and
                       activations fake-quantized to float16
                       (:func:`tfgated.quantization.quantize_model`); 32: off
=====================  =====================================================

Mixup and label smoothing need one-hot labels; :meth:`Recipe.datasets` and
:meth:`Recipe.compile` agree on this through :attr:`Recipe.one_hot`. Models
output softmax probabilities (the zoo's convention); pass
``from_logits=True`` to :meth:`Recipe.compile` otherwise.

Typical use::

    recipe = Recipe(epochs=30, learning_rate=0.1, label_smoothing=0.1)
    model = recipe.prepare_model(zoo.load(name, **recipe.model_overrides()))
    splits = recipe.datasets("fashion_mnist")
    history = fit_recipe(model, recipe, splits)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional

import keras

from tfgated.augment import AUGMENT_POLICIES, augmentation_layer, mixup_batch, pad_crop_flip
from tfgated.fused_norm import use_fused_batch_norm
from tfgated.ghost_norm import GhostBatchNormalization, plain_batch_norm, use_ghost_batch_norm
from tfgated.quantization import check_bits, quantize_model, strip_quantization
from tfgated.schedules import WarmupPiecewiseDecay
from tfgated.smoothing import SmoothedCrossentropy, SparseLabelSmoothingCrossentropy, check_smoothing

__all__ = [
    "AUGMENT_POLICIES",
    "GhostBatchNormalization",
    "Recipe",
    "WarmupPiecewiseDecay",
    "augmentation_layer",
    "fit_recipe",
    "mixup_batch",
    "pad_crop_flip",
    "plain_batch_norm",
    "use_ghost_batch_norm",
    "weight_decay_exclusions",
]

OPTIMIZERS = ("sgd", "adam")
#: How free-form zoo preset recipe keys map onto switches (see :meth:`Recipe.from_preset`).
PRESET_ALIASES = {"mixup_alpha": "mixup"}
#: Preset recipe keys that are not training switches (used by other stages or informative).
PRESET_IGNORED = ("loss", "note", "validation_split", "warm_start", "precision_bits", "pruning", "exit", "loss_weights")
ACTIVATIONS = ("relu", "swish")


# --------------------------------------------------------------------------- weight decay


def _is_gate_layer(layer):
    from tfgated.gates import GumbelGate

    return isinstance(layer, GumbelGate)


def weight_decay_exclusions(model, bias=True, batch_norm=True, gates=True):
    """Variables to exclude from weight decay.

    Args:
        model: a built model.
        bias: exclude every variable named ``bias`` and the ``beta`` (the bias) of every
            batch-norm layer, as the SIPA reference's ``adapted_weight_decay`` excludes every
            parameter named ``.bias`` (PyTorch's batch-norm beta included).
        batch_norm: exclude the ``gamma``/``beta`` of every batch-norm layer.
        gates: exclude every variable of gate layers (logits, gate networks):
            decay would pull the gates towards probability 0.5.

    Returns:
        A list of trainable variables (no duplicates).
    """
    from tfgated.inference import find_layers

    excluded, seen = [], set()

    def add(variable):
        if id(variable) not in seen:
            seen.add(id(variable))
            excluded.append(variable)

    if bias:
        for v in model.trainable_variables:
            if v.name == "bias" or v.path.endswith("/bias"):
                add(v)
        for layer in find_layers(model, keras.layers.BatchNormalization):
            if getattr(layer, "beta", None) is not None and layer.beta.trainable:
                add(layer.beta)
    if batch_norm:
        for layer in find_layers(model, keras.layers.BatchNormalization):
            for v in layer.trainable_variables:
                add(v)
    if gates:
        for layer in find_layers(model, keras.layers.Layer):
            if _is_gate_layer(layer):
                for v in layer.trainable_variables:
                    add(v)
    return excluded


# --------------------------------------------------------------------------- recipe


def _positive_int(value):
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


def _non_negative_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """All Improving switches of one training run (see the module docstring).

    Build with keyword arguments, :meth:`from_dict` or :meth:`replace`; any
    unknown switch name raises ``ValueError`` listing the valid ones.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    cosine_decay: bool = True
    lr_boundaries: tuple = ()
    lr_decay_factor: float = 0.1
    warmup_epochs: float = 0.0
    min_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    bias_decay: bool = False
    bn_decay: bool = True
    gate_decay: bool = False
    ghost_batch_norm: int = 0
    mixup: float = 0.0
    label_smoothing: float = 0.0
    label_smoothing_spread: str = "others"
    activation: Optional[str] = None
    augment: str = "none"
    stabilize_epochs: int = 0
    stabilize_lr: float = 0.001
    stabilize_augment: str = "flip"
    train_on_validation: bool = False
    precision_bits: int = 32

    def __post_init__(self):
        if not _positive_int(self.epochs):
            raise ValueError(f"Expected epochs to be a positive integer. Received: epochs={self.epochs!r}")
        if not _positive_int(self.batch_size):
            raise ValueError(
                f"Expected batch_size to be a positive integer. Received: batch_size={self.batch_size!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected optimizer to be one of {list(OPTIMIZERS)}. Received: optimizer={self.optimizer!r}")
        for name in ("learning_rate", "stabilize_lr"):
            value = getattr(self, name)
            if not _non_negative_number(value) or value == 0:
                raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
        for name in ("momentum", "warmup_epochs", "weight_decay", "mixup"):
            value = getattr(self, name)
            if not _non_negative_number(value):
                raise ValueError(f"Expected {name} >= 0. Received: {name}={value!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Expected momentum in [0, 1). Received: momentum={self.momentum!r}")
        if not _non_negative_number(self.min_lr_fraction) or self.min_lr_fraction > 1:
            raise ValueError(f"Expected min_lr_fraction in [0, 1]. Received: min_lr_fraction={self.min_lr_fraction!r}")
        if not _non_negative_number(self.label_smoothing) or self.label_smoothing >= 1:
            raise ValueError(f"Expected label_smoothing in [0, 1). Received: label_smoothing={self.label_smoothing!r}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"Expected warmup_epochs < epochs ({self.epochs}). Received: warmup_epochs={self.warmup_epochs!r}"
            )
        if isinstance(self.ghost_batch_norm, bool) or not isinstance(self.ghost_batch_norm, int) or self.ghost_batch_norm < 0:
            raise ValueError(
                "Expected ghost_batch_norm to be a virtual batch size (positive integer) or 0 (off). "
                f"Received: ghost_batch_norm={self.ghost_batch_norm!r}"
            )
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Expected activation to be None or one of {list(ACTIVATIONS)}. Received: activation={self.activation!r}"
            )
        for name in ("augment", "stabilize_augment"):
            if getattr(self, name) not in AUGMENT_POLICIES:
                raise ValueError(
                    f"Expected {name} to be one of {list(AUGMENT_POLICIES)}. Received: {name}={getattr(self, name)!r}"
                )
        if isinstance(self.stabilize_epochs, bool) or not isinstance(self.stabilize_epochs, int) or self.stabilize_epochs < 0:
            raise ValueError(
                f"Expected stabilize_epochs to be an integer >= 0. Received: stabilize_epochs={self.stabilize_epochs!r}"
            )
        if not isinstance(self.lr_boundaries, (tuple, list)) or any(
            isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0 for b in self.lr_boundaries
        ) or list(self.lr_boundaries) != sorted(self.lr_boundaries):
            raise ValueError(
                "Expected lr_boundaries to be increasing positive epochs. "
                f"Received: lr_boundaries={self.lr_boundaries!r}"
            )
        object.__setattr__(self, "lr_boundaries", tuple(self.lr_boundaries))
        if not _non_negative_number(self.lr_decay_factor) or self.lr_decay_factor > 1:
            raise ValueError(f"Expected lr_decay_factor in [0, 1]. Received: lr_decay_factor={self.lr_decay_factor!r}")
        check_smoothing(self.label_smoothing, self.label_smoothing_spread)
        check_bits(self.precision_bits)
        for name in ("nesterov", "cosine_decay", "bias_decay", "bn_decay", "gate_decay", "train_on_validation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Expected {name} to be True or False. Received: {name}={getattr(self, name)!r}")

    # -- construction ---------------------------------------------------------------

    @classmethod
    def switch_names(cls):
        """The valid switch names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_switches(cls, names):
        """Raise ``ValueError`` naming any unknown switch in ``names``."""
        valid = cls.switch_names()
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ValueError(
                f"Unknown improving switch(es) {unknown}. Valid switches: {', '.join(valid)}."
            )

    @classmethod
    def from_dict(cls, values: Optional[Dict[str, Any]] = None, **overrides):
        """A recipe from plain data (e.g. a zoo preset's ``"recipe"``), with overrides."""
        merged = {**(values or {}), **overrides}
        cls.check_switches(merged)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        coerced = {}
        for name, value in merged.items():
            default = fields[name].default
            # JSON/CLI values: ints where the default is float are fine; floats that are
            # whole numbers where an int is expected are turned into ints.
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            coerced[name] = value
        return cls(**coerced)

    @classmethod
    def from_preset(cls, recipe, **overrides):
        """A recipe from a zoo preset's free-form ``"recipe"`` dict, plus overrides.

        Known vocabulary is translated: ``schedule: "cosine"`` or
        ``{"kind": "cosine"}`` -> ``cosine_decay``; ``{"kind": "piecewise",
        "boundaries_epochs": [...], "factor": f}`` -> ``lr_boundaries`` /
        ``lr_decay_factor``; no schedule -> constant LR; ``warmup: {"epochs":
        e}`` -> ``warmup_epochs`` (linear from 0); ``mixup_alpha`` -> ``mixup``;
        ``no_bias_decay`` -> ``bias_decay``; ``autoaugment`` -> ``augment=
        "autoaugment_micronet_crop_flip"`` (the authors' searched CIFAR-100 policy followed
        by their pad-4 crop and flip, whatever the key's value); ``optimizer: "adamw"`` -> ``"adam"`` (decay is decoupled anyway).
        Keys of other stages (:data:`PRESET_IGNORED`) are skipped, ``precision_bits`` among
        them: a preset's is its deployment precision, so 16-bit quantization-aware training
        is asked for with the override ``precision_bits=16``. ``overrides``
        are switch names and are validated strictly.

        Returns:
            ``(recipe, ignored)``: the :class:`Recipe` and a dict of the preset
            keys that were not used.
        """
        values, ignored = {}, {}
        valid = set(cls.switch_names())
        values["cosine_decay"] = False
        for key, value in (recipe or {}).items():
            if key == "schedule":
                kind = value.get("kind") if isinstance(value, dict) else value
                if kind == "cosine":
                    values["cosine_decay"] = True
                elif kind == "piecewise":
                    values["lr_boundaries"] = tuple(value.get("boundaries_epochs", ()))
                    values["lr_decay_factor"] = float(value.get("factor", 0.1))
                elif kind not in (None, "constant"):
                    raise ValueError(f"Unsupported learning-rate schedule in preset recipe: {value!r}")
            elif key == "warmup":
                values["warmup_epochs"] = float(value.get("epochs", 0) if isinstance(value, dict) else value)
            elif key == "no_bias_decay":
                values["bias_decay"] = not value
            elif key == "autoaugment":
                values["augment"] = "autoaugment_micronet_crop_flip"
            elif key == "optimizer":
                values["optimizer"] = "adam" if value == "adamw" else value
            elif key in PRESET_IGNORED:
                ignored[key] = value
            elif key in PRESET_ALIASES:
                values[PRESET_ALIASES[key]] = value
            elif key in valid:
                values[key] = value
            else:
                ignored[key] = value
        return cls.from_dict(values, **overrides), ignored

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated like the constructor)."""
        return Recipe.from_dict(self.to_dict(), **changes)

    def to_dict(self):
        """Plain-data form (JSON-serializable)."""
        values = dataclasses.asdict(self)
        values["lr_boundaries"] = list(self.lr_boundaries)
        return values

    def to_json(self):
        """Canonical JSON (sorted keys): equal recipes give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True)

    # -- derived ------------------------------------------------------------------

    @property
    def one_hot(self):
        """Whether labels must be one-hot (mixup or label smoothing is on)."""
        return self.mixup > 0 or self.label_smoothing > 0

    def model_overrides(self):
        """Architecture overrides for ``tfgated.zoo.load(name, **overrides)``."""
        return {} if self.activation is None else {"activation": self.activation}

    def prepare_model(self, model):
        """Apply model-level switches to a built model: ghost batch norm (else, on TensorFlow, the
        fused batch-norm kernel: :func:`tfgated.fused_norm.use_fused_batch_norm`, same results,
        faster), then (``precision_bits=16``) :func:`tfgated.quantization.quantize_model`. Undo it
        all with :meth:`finish_model` after training."""
        if self.ghost_batch_norm:
            model = use_ghost_batch_norm(model, self.ghost_batch_norm)
        else:
            model = use_fused_batch_norm(model)
        return quantize_model(model, bits=self.precision_bits)

    @staticmethod
    def finish_model(model):
        """The trained model of a :meth:`prepare_model` result as users load and export it: without
        quantization wrappers (weights at the trained precision:
        :func:`tfgated.quantization.strip_quantization`), with Keras' own batch norm
        (:func:`plain_batch_norm`)."""
        return plain_batch_norm(strip_quantization(model))

    def for_plain_fit(self):
        """This recipe as a plain ``model.fit`` on integer labels can follow it.

        The optimizer, learning rate and its schedule (pass ``steps_per_epoch`` to
        :meth:`compile`), momentum and weight decay stay, so the learning rate
        follows the same curve as under :func:`fit_recipe`; label smoothing stays (compile with
        ``integer_labels=True``: :class:`tfgated.smoothing.SparseLabelSmoothingCrossentropy`);
        mixup is off (it mixes the images of :meth:`datasets`). :func:`tfgated.zoo.load`
        compiles with it.
        """
        return self.replace(mixup=0.0)

    @property
    def needs_steps_per_epoch(self):
        """Whether the learning-rate schedule needs the steps per epoch (cosine, warmup, steps)."""
        return bool(self.cosine_decay or self.warmup_epochs or self.lr_boundaries)

    def stabilization(self):
        """The recipe of the distribution-stabilization fine-tune, or ``None`` if off.

        A few epochs (``stabilize_epochs``) at the small constant learning rate
        ``stabilize_lr``, with weak augmentation (``stabilize_augment``) and
        neither mixup nor warmup, so the network adapts to the clean data
        distribution it is evaluated on.
        """
        if not self.stabilize_epochs:
            return None
        return self.replace(
            epochs=self.stabilize_epochs,
            learning_rate=self.stabilize_lr,
            cosine_decay=False,
            lr_boundaries=(),
            warmup_epochs=0.0,
            mixup=0.0,
            augment=self.stabilize_augment,
            ghost_batch_norm=self.ghost_batch_norm,
            stabilize_epochs=0,
        )

    def learning_rate_schedule(self, steps_per_epoch=None):
        """The learning rate: a float, a ``CosineDecay`` schedule (with warmup), a
        ``PiecewiseConstantDecay`` (step decay) or a :class:`WarmupPiecewiseDecay`."""
        if not self.needs_steps_per_epoch:
            return float(self.learning_rate)
        if not _positive_int(steps_per_epoch):
            raise ValueError(
                "Expected steps_per_epoch (a positive integer) for cosine decay, warmup or step decay. "
                f"Received: steps_per_epoch={steps_per_epoch!r}"
            )
        if self.lr_boundaries and not self.cosine_decay:
            boundaries = [int(round(b * steps_per_epoch)) for b in self.lr_boundaries]
            values = [float(self.learning_rate) * self.lr_decay_factor**i for i in range(len(boundaries) + 1)]
            if not self.warmup_epochs:
                return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
            return WarmupPiecewiseDecay(int(round(self.warmup_epochs * steps_per_epoch)), boundaries, values)
        total = self.epochs * steps_per_epoch
        warmup = int(round(self.warmup_epochs * steps_per_epoch))
        if not self.cosine_decay:
            # warmup then constant: a cosine decay that never decays
            decay_steps, alpha = 1, 1.0
        else:
            decay_steps, alpha = max(1, total - warmup), self.min_lr_fraction
        if warmup:
            return keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=0.0,
                decay_steps=decay_steps,
                alpha=alpha,
                warmup_target=float(self.learning_rate),
                warmup_steps=warmup,
            )
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=float(self.learning_rate), decay_steps=decay_steps, alpha=alpha
        )

    def build_optimizer(self, model, steps_per_epoch=None):
        """SGD(W) with Nesterov momentum or Adam(W), with the weight-decay exclusions."""
        lr = self.learning_rate_schedule(steps_per_epoch)
        wd = float(self.weight_decay) or None
        if self.optimizer == "sgd":
            optimizer = keras.optimizers.SGD(
                learning_rate=lr,
                momentum=self.momentum,
                nesterov=self.nesterov and self.momentum > 0,
                weight_decay=wd,
            )
        elif wd:
            optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd)
        else:
            optimizer = keras.optimizers.Adam(learning_rate=lr)
        if wd:
            excluded = weight_decay_exclusions(
                model, bias=not self.bias_decay, batch_norm=not self.bn_decay, gates=not self.gate_decay
            )
            optimizer.exclude_from_weight_decay(var_list=excluded)
        return optimizer

    def loss_and_metrics(self, from_logits=False, integer_labels=False):
        """Loss (with label smoothing, spread as ``label_smoothing_spread``) and the
        ``accuracy``/``top5`` metrics, for one-hot labels when :attr:`one_hot` unless ``integer_labels``."""
        if integer_labels and self.mixup > 0:
            raise ValueError(f"Mixup needs one-hot labels. Received: integer_labels=True with mixup={self.mixup}")
        if self.one_hot and not integer_labels:
            if self.label_smoothing_spread == "others":
                loss = SmoothedCrossentropy(float(self.label_smoothing), "others", from_logits=from_logits)
            else:
                loss = keras.losses.CategoricalCrossentropy(
                    from_logits=from_logits, label_smoothing=float(self.label_smoothing)
                )
            return loss, [
                keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
            ]
        if self.label_smoothing > 0:
            loss = SparseLabelSmoothingCrossentropy(
                float(self.label_smoothing), self.label_smoothing_spread, from_logits=from_logits
            )
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        metrics = [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ]
        return loss, metrics

    def compile(self, model, steps_per_epoch=None, from_logits=False, integer_labels=False, **compile_kwargs):
        """Compile ``model`` with this recipe's optimizer, loss and metrics.

        ``steps_per_epoch`` is needed when cosine decay or warmup is on. ``integer_labels``:
        ``fit`` gets integer labels even with label smoothing on (see :meth:`loss_and_metrics`).
        Returns ``model``.
        """
        loss, metrics = self.loss_and_metrics(from_logits=from_logits, integer_labels=integer_labels)
        if len(model.outputs) > 1:  # e.g. early-exit heads: one loss and metric set per output
            pairs = [self.loss_and_metrics(from_logits=from_logits, integer_labels=integer_labels) for _ in model.outputs]
            loss, metrics = [p[0] for p in pairs], [p[1] for p in pairs]
        model.compile(
            optimizer=self.build_optimizer(model, steps_per_epoch),
            loss=loss,
            metrics=metrics,
            **compile_kwargs,
        )
        return model

    def datasets(self, name="fashion_mnist", seed=42, **load_kwargs):
        """``tfgated.data.load_dataset`` with this recipe's batch size, labels and augmentation.

        Mixup (if on) is mapped over the training batches.
        """
        from tfgated.data import load_dataset

        if {"one_hot", "augment", "batch_size", "train_on_validation"} & set(load_kwargs):
            raise ValueError(
                "batch_size, one_hot, augment and train_on_validation come from the recipe; change the recipe instead."
            )
        splits = load_dataset(
            name,
            batch_size=self.batch_size,
            one_hot=self.one_hot,
            augment=augmentation_layer(self.augment, seed=seed),
            seed=seed,
            train_on_validation=self.train_on_validation,
            **load_kwargs,
        )
        if self.mixup > 0:
            import tensorflow as tf

            train = splits.train.map(mixup_batch(float(self.mixup), seed=seed), num_parallel_calls=tf.data.AUTOTUNE)
            splits = dataclasses.replace(splits, train=train)
        return splits

    def callbacks(self):
        """Callbacks this recipe needs (none today: schedules live in the optimizer)."""
        return []


def steps_per_epoch(dataset):
    """Batches per epoch of a finite ``tf.data`` dataset (counted if unknown)."""
    n = int(dataset.cardinality())
    if n < 0:
        n = sum(1 for _ in dataset)
    return max(1, n)


def fit_recipe(model, recipe, splits, callbacks=(), verbose="auto", initial_epoch=0, from_logits=False):
    """Compile ``model`` with ``recipe`` and fit it on ``splits`` (a ``DatasetSplits``).

    Runs only the main phase; for the stabilization fine-tune call it again
    with ``recipe.stabilization()`` and datasets built from that recipe.

    Returns:
        The Keras ``History``.
    """
    recipe.compile(model, steps_per_epoch=steps_per_epoch(splits.train), from_logits=from_logits)
    return model.fit(
        splits.train,
        validation_data=splits.validation,
        epochs=recipe.epochs,
        initial_epoch=initial_epoch,
        callbacks=list(callbacks) + recipe.callbacks(),
        verbose=verbose,
    )
