"""Learning-rate schedules of :mod:`tfgated.recipes` that Keras does not ship."""

from __future__ import annotations

import keras

__all__ = ["WarmupPiecewiseDecay"]


@keras.saving.register_keras_serializable(package="tfgated")
class WarmupPiecewiseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``values[0]`` over ``warmup_steps``, then step decay.

    After the warmup the rate is ``values[i]`` between ``boundaries[i - 1]`` and
    ``boundaries[i]`` (absolute steps), as ``keras.optimizers.schedules.PiecewiseConstantDecay``.
    """

    def __init__(self, warmup_steps, boundaries, values):
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"Expected one more value than boundaries. Received: boundaries={boundaries!r}, values={values!r}"
            )
        self.warmup_steps = max(1, int(warmup_steps))
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]
        self.piecewise = keras.optimizers.schedules.PiecewiseConstantDecay(self.boundaries, self.values)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.values[0] * step / float(self.warmup_steps)
        return keras.ops.where(step < self.warmup_steps, warm, keras.ops.cast(self.piecewise(step), "float32"))

    def get_config(self):
        return {"warmup_steps": self.warmup_steps, "boundaries": self.boundaries, "values": self.values}
