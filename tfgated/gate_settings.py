"""One gate-settings object: how a model builder places its Gumbel gates and their loss.

A zoo preset's ``"gates"`` entry is plain data::

    {"kind": "independent" | "dependent",        # GumbelGate kind (tfgated.gates.KINDS)
     "loss_kind": "per_batch" | "per_gate",      # activation loss, PB or PG (tfgated.losses.LOSS_KINDS)
     "target": 0.5, "weight": 1.0,               # activation loss target rate and weight
     "granularity": ...,                         # family-specific: channels per gate
     "target_measure": "gates" | "macs",         # what the target is a fraction of (default "gates")
     "temperature", "open_probability", "hidden_units", "per_gate_hidden", "threshold", "seed",
     "gradient_scale"}

``target_measure="macs"`` makes the activation loss a weighted mean, each gate weighted
by the MACs it controls (:func:`tfgated.complexity.gate_mac_weights`), so the target is
a fraction of the gated MACs, as in the Gumbel authors' channel-gating code.

:meth:`GateSettings.from_config` checks it once, against the mechanism's own
vocabularies, and fills the defaults; builders read the attributes and pass
:meth:`GateSettings.loss_arguments` to :func:`tfgated.gated_model`.

Names: ``loss_kind`` is the activation loss (PB/PG); the inference *style*
(threshold, always_on, stochastic, ensemble) is a separate setting of the gates
(:func:`tfgated.set_inference_style`). Preset files and run folders written before
the rename spell ``loss_kind`` as ``"loss"``; :meth:`GateSettings.from_config`
still reads that spelling (:data:`LEGACY_KEYS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tfgated.gates import check_kind
from tfgated.losses import check_loss_kind, check_target, check_weight

#: :class:`tfgated.GumbelGate` keyword arguments a gate-settings dict may carry.
GATE_LAYER_ARGS = (
    "temperature", "open_probability", "hidden_units", "per_gate_hidden", "threshold", "seed", "gradient_scale"
)
#: The keys every family understands.
SETTING_KEYS = ("kind", "loss_kind", "target", "weight", "target_measure", "granularity", *GATE_LAYER_ARGS)
#: What the activation target is a fraction of: the gates, or the MACs they control.
TARGET_MEASURES = ("gates", "macs")
#: Older spellings, read from saved preset files and run configs: ``{old: new}``.
LEGACY_KEYS = {"loss": "loss_kind"}


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """Checked gate settings of one model build.

    Attributes:
        kind: ``"independent"`` or ``"dependent"`` (:data:`tfgated.gates.KINDS`).
        loss_kind: ``"per_batch"`` (PB) or ``"per_gate"`` (PG) activation loss.
        target: target activation rate in [0, 1].
        weight: activation loss weight (>= 0).
        target_measure: ``"gates"`` (the target is a fraction of the gates) or ``"macs"``
            (of the gated MACs).
        granularity: channels per gate (family-specific: an int, a per-stage list, or None).
        gate_kwargs: :class:`tfgated.GumbelGate` keyword arguments (:data:`GATE_LAYER_ARGS`).
        extra: family-specific keys (e.g. the ResNets' ``level``), unchanged.
    """

    kind: str = "independent"
    loss_kind: str = "per_batch"
    target: float = 0.5
    weight: float = 1.0
    target_measure: str = "gates"
    granularity: Any = None
    gate_kwargs: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_kind(self.kind)
        check_loss_kind(self.loss_kind)
        check_target(self.target)
        check_weight(self.weight)
        if self.target_measure not in TARGET_MEASURES:
            raise ValueError(
                f"Expected target_measure in {list(TARGET_MEASURES)}. Received: target_measure={self.target_measure!r}"
            )
        unknown = sorted(set(self.gate_kwargs) - set(GATE_LAYER_ARGS))
        if unknown:
            raise ValueError(f"Unknown gate arguments {unknown}. Expected keys among {list(GATE_LAYER_ARGS)}.")
        object.__setattr__(self, "target", float(self.target))
        object.__setattr__(self, "weight", float(self.weight))

    @classmethod
    def from_config(cls, config, default_granularity=None, extra_keys=None) -> Optional["GateSettings"]:
        """Settings from a preset's ``gates`` entry (``None`` stays ``None``).

        Args:
            config: ``None``, a gate-settings dict (see the module docstring) or a
                :class:`GateSettings` (returned with the family's defaults filled).
            default_granularity: the family's granularity when none is given.
            extra_keys: family-specific keys a builder accepts besides
                :data:`SETTING_KEYS`, kept in :attr:`extra`. ``None`` allows any
                extra key (the registry's check of a preset); a tuple makes
                unknown keys a ``ValueError``.
        """
        if config is None:
            return None
        if isinstance(config, GateSettings):
            config = config.to_config()
        if not isinstance(config, dict):
            raise ValueError(f"Expected gates to be None or a dict. Received: gates={config!r}")
        config = {LEGACY_KEYS.get(key, key): value for key, value in config.items()}
        if extra_keys is not None:
            unknown = sorted(set(config) - set(SETTING_KEYS) - set(extra_keys))
            if unknown:
                raise ValueError(
                    f"Unknown gate settings {unknown}. Expected keys among {[*SETTING_KEYS, *extra_keys]}."
                )
        common = {
            key: config[key] for key in ("kind", "loss_kind", "target", "weight", "target_measure") if key in config
        }
        return cls(
            **common,
            granularity=config.get("granularity", default_granularity),
            gate_kwargs={key: config[key] for key in GATE_LAYER_ARGS if key in config},
            extra={key: value for key, value in config.items() if key not in SETTING_KEYS},
        )

    def to_config(self):
        """The plain-data form (a preset's ``gates`` entry)."""
        config = {"kind": self.kind, "loss_kind": self.loss_kind, "target": self.target, "weight": self.weight}
        if self.target_measure != "gates":
            config["target_measure"] = self.target_measure
        if self.granularity is not None:
            config["granularity"] = self.granularity
        return {**config, **self.gate_kwargs, **self.extra}

    def loss_arguments(self):
        """Keyword arguments of :func:`tfgated.gated_model` / :class:`tfgated.losses.GateActivationLoss`."""
        arguments = {"target": self.target, "weight": self.weight, "loss_kind": self.loss_kind}
        if self.target_measure == "macs":
            arguments["gate_weights"] = "macs"
        return arguments
