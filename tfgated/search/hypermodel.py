"""The KerasTuner hypermodel of a SIPA search (:class:`SIPAHyperModel`).

It turns hyperparameters into builder keyword arguments (block strings and
scaling coefficients), builds the model with the builder it was given, and
logs SIPA's fitness per epoch. It knows no model family: the face passes
``tfgated.zoo.sipa.build_sipa`` (or any callable with its signature).
"""

from __future__ import annotations

import math

import keras
import keras_tuner

from tfgated.blocks import SIPA_REFERENCE_BLOCKS as REFERENCE_BLOCKS
from tfgated.blocks import decode_block, encode_block
from tfgated.search.options import OBJECTIVE_NAME, FitnessOptions, SearchSpace, sipa_fitness, split_options

#: The base architecture when none is given: the preset ``sipa_fashion_mnist``.
DEFAULT_BASE_ARCH = {"blocks": list(REFERENCE_BLOCKS), "resolution": 1.4, "resource": 1, "width": 0.9, "depth": 1.0}


def _round_channels(channels, divisor):
    """``channels`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return int(max(divisor, int(channels + divisor / 2) // divisor * divisor))


def arch_summary(arch):
    """A one-line summary: ``"d1.0 w0.9 r1.4 | k3s1e1o16se0.2 k5s1e6o24se0 ..."``."""
    blocks = " ".join(
        f"k{b['kernel']}s{b['stride']}e{b['expand']}o{b['filters_out']}se{b['se_ratio'] or 0:g}"
        for b in (decode_block(block) for block in arch.get("blocks", ()))
    )
    return f"d{arch.get('depth', 1.0):g} w{arch.get('width', 1.0):g} r{arch.get('resolution', 1.0):g} | {blocks}"


class _FitnessLogger(keras.callbacks.Callback):
    """Adds ``fitness`` and the cost metrics to the epoch logs, and keeps them per epoch."""

    def __init__(self, hypermodel, arch, costs):
        super().__init__()
        self.hypermodel = hypermodel
        self.arch = arch
        self.costs = costs
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        key = self.hypermodel.fitness.accuracy_key
        if key not in logs:
            raise ValueError(
                f"Expected the metric {key!r} in the epoch logs to compute the SIPA fitness "
                f"(pass validation data and an accuracy metric). Received logs: {sorted(logs)}"
            )
        metrics = self.hypermodel.fitness_metrics(float(logs[key]), self.arch, self.costs)
        logs.update(metrics)
        self.epochs.append({k: float(v) for k, v in logs.items()})


def approximate_resolution(resolution, depth, width, space):
    """``resolution`` moved into the band where ``depth * width**2 * resolution**2`` is
    within ``space.constraint_tolerance`` of ``space.compound_target`` (2 decimals, inside
    ``space.resolution_range``; where the range and the band do not meet, the range's
    nearest end)."""
    target, tol = space.compound_target, space.constraint_tolerance
    low = math.ceil(100 * math.sqrt(target * (1 - tol) / (depth * width**2)) - 1e-9) / 100
    high = math.floor(100 * math.sqrt(target * (1 + tol) / (depth * width**2)) + 1e-9) / 100
    if low <= high:
        resolution = min(max(resolution, low), high)
    return round(min(max(resolution, space.resolution_range[0]), space.resolution_range[1]), 2)


def _choice(hp, name, values, default):
    values = list(dict.fromkeys(values))
    if len(values) == 1:
        return hp.Fixed(name, values[0])
    return hp.Choice(name, values, default=default if default in values else values[0])


class SIPAHyperModel(keras_tuner.HyperModel):
    """KerasTuner hypermodel over SIPA's block arguments and compound scaling.

    Args:
        builder: ``builder(num_classes=..., input_shape=..., **arch) -> keras.Model``,
            the signature of ``tfgated.zoo.sipa.build_sipa`` (what ``python -m
            tfgated search`` passes). A model it returns compiled is trained as is.
        num_classes, input_shape: of the dataset (input before upsampling).
        base_arch: builder keyword arguments of the base network (default
            :data:`DEFAULT_BASE_ARCH`, the ``sipa_fashion_mnist`` preset's);
            ``blocks`` are the base blocks, ``depth``/``width``/``resolution``
            the default scaling values; other keys (``resource``,
            ``stem_filters``, ``head_filters``, ``dropout`` ...) pass through.
        space: a :class:`SearchSpace` (default: its defaults).
        fitness: a :class:`FitnessOptions` (default: no budget, MACs).
        learning_rate: Adam learning rate of the default compile.
        compile_fn: optional ``compile_fn(model)``; the default compiles with
            Adam, sparse categorical cross-entropy and ``accuracy``.
        name: the hypermodel's name.
    """

    def __init__(self, builder, num_classes=10, input_shape=(28, 28, 1), base_arch=None, space=None,
                 fitness=None, learning_rate=1e-3, compile_fn=None, name="sipa_search"):
        super().__init__(name=name, tunable=True)
        if not callable(builder):
            raise ValueError(
                "Expected builder to be callable like tfgated.zoo.sipa.build_sipa(num_classes, input_shape, "
                f"**arch). Received: builder={builder!r}"
            )
        for arg, value, cls in (("space", space, SearchSpace), ("fitness", fitness, FitnessOptions)):
            if value is not None and not isinstance(value, cls):
                raise ValueError(f"Expected {arg} to be a {cls.__name__} or None. Received: {arg}={value!r}")
        if compile_fn is not None and not callable(compile_fn):
            raise ValueError(f"Expected compile_fn to be None or callable. Received: compile_fn={compile_fn!r}")
        self.builder = builder
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.base_arch = dict(DEFAULT_BASE_ARCH if base_arch is None else base_arch)
        self.base_arch.setdefault("blocks", list(REFERENCE_BLOCKS))
        self.base_blocks = [decode_block(b) for b in self.base_arch["blocks"]]
        if not self.base_blocks:
            raise ValueError("Expected at least one base block. Received: blocks=[]")
        self.space = SearchSpace() if space is None else space
        self.fitness = FitnessOptions() if fitness is None else fitness
        self.learning_rate = float(learning_rate)
        self.compile_fn = compile_fn

    @classmethod
    def from_options(cls, builder, num_classes=10, input_shape=(28, 28, 1), base_arch=None, **options):
        """A hypermodel from flat keyword options (a JSON object such as ``--space-json``):
        :class:`SearchSpace` and :class:`FitnessOptions` fields, ``learning_rate``,
        ``compile_fn`` and ``name``. An unknown key raises ``ValueError`` naming it."""
        space, fitness, rest = split_options(options)
        unknown = sorted(set(rest) - {"learning_rate", "compile_fn", "name"})
        if unknown:
            known = sorted([*SearchSpace.__dataclass_fields__, *FitnessOptions.__dataclass_fields__,
                            "learning_rate", "compile_fn", "name"])
            raise ValueError(f"Unknown search option(s) {unknown}. Expected some of: {', '.join(known)}")
        return cls(builder, num_classes, input_shape, base_arch, space=space, fitness=fitness, **rest)

    # -- search space ------------------------------------------------------------

    def _scale(self, hp, name, value_range, default):
        low, high = value_range
        step = self.space.scaling_step
        if high - low < 1e-9:
            return float(hp.Fixed(name, round(low, 4)))
        steps = int(math.floor((high - low) / step + 1e-9))
        high = round(low + steps * step, 4)
        default = min(max(float(default), low), high)
        default = round(low + round((default - low) / step) * step, 4)
        # Rounded: KerasTuner's stepped floats carry binary noise (0.8999999999999999).
        return round(float(hp.Float(name, low, high, step=step, default=default)), 4)

    def _block(self, hp, index, base, filters_in):
        """The block string of base block ``index`` chosen by ``hp``."""
        space, prefix = self.space, f"b{index}"
        kernel = _choice(hp, f"{prefix}_kernel", (*space.kernel_sizes, base["kernel"]), base["kernel"])
        if base["stride"] == 2 and space.search_strides:
            stride = _choice(hp, f"{prefix}_stride", (1, 2), 2)
        else:
            stride = int(hp.Fixed(f"{prefix}_stride", int(base["stride"])))
        multiplier = _choice(hp, f"{prefix}_channels", space.channel_multipliers, 1.0)
        expand = _choice(hp, f"{prefix}_expand", (*space.expand_ratios, base["expand"]), base["expand"])
        base_se = float(base["se_ratio"] or 0.0)
        se_ratio = _choice(hp, f"{prefix}_se", (*space.se_ratios, base_se), base_se)
        return encode_block({
            "repeats": base["repeats"],
            "kernel": int(kernel),
            "stride": int(stride),
            "expand": int(expand),
            "filters_in": filters_in,
            "filters_out": _round_channels(base["filters_out"] * float(multiplier), space.divisor),
            "se_ratio": float(se_ratio),
            "id_skip": base["id_skip"],
        })

    def architecture(self, hp):
        """The builder keyword arguments chosen by ``hp`` (registers the
        hyperparameters on first use). ``blocks`` are block strings."""
        blocks = []
        filters_in = self.base_blocks[0]["filters_in"]
        for index, base in enumerate(self.base_blocks):
            blocks.append(self._block(hp, index, base, filters_in))
            filters_in = decode_block(blocks[-1])["filters_out"]
        space = self.space
        depth = self._scale(hp, "depth", space.depth_range, self.base_arch.get("depth", 1.0))
        width = self._scale(hp, "width", space.width_range, self.base_arch.get("width", 1.0))
        if space.constraint == "enforce":
            gamma = math.sqrt(space.compound_target / (depth * width**2))
            resolution = round(min(max(gamma, space.resolution_range[0]), space.resolution_range[1]), 2)
        else:
            resolution = self._scale(hp, "resolution", space.resolution_range, self.base_arch.get("resolution", 1.0))
        if space.constraint == "approximate":
            resolution = approximate_resolution(resolution, depth, width, space)
        return {**self.base_arch, "blocks": blocks, "depth": depth, "width": width, "resolution": resolution}

    def compound_product(self, arch):
        """``depth * width**2 * resolution**2`` of ``arch``."""
        return float(arch["depth"]) * float(arch["width"]) ** 2 * float(arch["resolution"]) ** 2

    # -- building --------------------------------------------------------------

    def build_model(self, arch):
        """The model of ``arch``: ``builder(num_classes, input_shape, **arch)`` (compiled only if the builder compiles)."""
        return self.builder(num_classes=self.num_classes, input_shape=self.input_shape, **arch)

    def compile_model(self, model):
        if self.compile_fn is not None:
            self.compile_fn(model)
            return model
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        return model

    def build(self, hp):
        model = self.build_model(self.architecture(hp))
        if not getattr(model, "compiled", False):
            self.compile_model(model)
        return model

    # -- fitness ---------------------------------------------------------------

    def costs(self, model):
        """``{"macs", "params", "cost"}`` of ``model``; ``cost`` is ``F`` (MACs or MicroNet score)."""
        from tfgated.complexity import count

        report = count(model)
        costs = {"macs": float(report.macs), "params": float(report.params)}
        if self.fitness.measure == "macs":
            costs["cost"] = costs["macs"]
        else:
            from tfgated.micronet import micronet_score

            costs["cost"] = float(micronet_score(model, bits=self.fitness.bits).score)
        return costs

    def fitness_metrics(self, accuracy, arch, costs):
        """The metrics logged per epoch: ``fitness``, ``penalty``, ``compound_product`` and ``costs``."""
        options, space = self.fitness, self.space
        fitness, penalty = sipa_fitness(
            accuracy, costs["cost"], options.budget, options.penalty, options.exponent, options.indicator
        )
        product = self.compound_product(arch)
        if space.constraint == "penalize":
            constraint_penalty = space.constraint_weight * abs(product - space.compound_target) / space.compound_target
            fitness -= constraint_penalty
            penalty += constraint_penalty
        return {"fitness": fitness, "penalty": penalty, "compound_product": product, **costs}

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """Train ``model`` (``model.fit(*args, **kwargs)``, validation data
        required) and return the metrics of its best-fitness epoch."""
        arch = self.architecture(hp)
        logger = _FitnessLogger(self, arch, self.costs(model))
        model.fit(*args, callbacks=[logger, *(callbacks or [])], **kwargs)
        if not logger.epochs:
            raise ValueError("Expected at least one training epoch. Received: epochs=0")
        return max(logger.epochs, key=lambda metrics: metrics[OBJECTIVE_NAME])
