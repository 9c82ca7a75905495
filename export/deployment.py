"""What a deployer needs beside an exported preset: its real test images and their scores.

:class:`PresetEvaluation` holds the first ``examples`` test images of a preset's dataset as raw
pixels (the input contract of every zoo model), their labels, the input contract and the
weights' identity. The export CLI hands its images to the parity check (real inputs, not
random ones) and, once the file is written, :meth:`PresetEvaluation.sidecar_fields` scores the
file itself and the Keras model on them for the sidecar.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from tfgated.export.parity import run_file

#: Real test images scored for the sidecar's ``test_top1`` (and used by the parity check).
EVALUATION_EXAMPLES = 1000


@dataclasses.dataclass
class PresetEvaluation:
    """A preset's real test images and the facts its sidecar records.

    Attributes:
        preset: the preset name.
        images: float32 raw pixels ``(N, H, W, C)`` in ``[0, 255]`` (``[0, 1]``/normalized
            inputs when ``raw`` is false, for a model without built-in preprocessing).
        labels: int labels ``(N,)``.
        contract: the preset's ``input`` entry (dtype, range, layout, shape, mean/std, class names).
        weights: ``{"source": "shipped" | "file" | "none", "sha256": ... or None}``.
        card_top1: the card's top-1 on the same images (the shipped weights' ``check``), or None.
        raw: whether the model takes raw pixels.
    """

    preset: str
    images: Any
    labels: Any
    contract: Optional[dict]
    weights: dict
    card_top1: Optional[float] = None
    raw: bool = True

    @property
    def class_names(self):
        return (self.contract or {}).get("class_names")

    @classmethod
    def of_preset(cls, name, preset, weights, card_top1=None, examples=EVALUATION_EXAMPLES):
        """The evaluation of preset ``name`` (its dict ``preset``) or ``None`` when its dataset
        cannot be read on this machine (then the export checks parity on its default inputs)."""
        from tfgated.data import load_dataset

        raw = preset.get("input") is not None
        try:
            splits = load_dataset(
                preset.get("dataset") or "fashion_mnist", batch_size=examples, validation_split=0.0, limit=examples,
                shuffle_buffer=0, pixels="raw" if raw else "normalized",
            )
        except (FileNotFoundError, ValueError):
            return None
        images, labels = next(iter(splits.test))
        return cls(preset=name, images=np.asarray(images, "float32"), labels=np.asarray(labels), contract=preset.get("input"),
                   weights=weights, card_top1=card_top1, raw=raw)

    def top1(self, probabilities):
        """Share of the images whose arg-max class is the label."""
        return float(np.mean(np.argmax(np.asarray(probabilities), axis=-1) == self.labels))

    def keras_probabilities(self, model, exit_threshold=None):
        """The Keras model's probabilities on the images: for an early-exit model ``[main, exit]``
        with ``exit_threshold``, those of the path each image takes (what the file answers),
        without a threshold the main classifier's."""
        if exit_threshold is not None:
            from tfgated.exits import EarlyExitModel

            return EarlyExitModel(model, exit_threshold).predict(self.images, batch_size=64).probabilities
        outputs = model.predict(self.images, batch_size=64, verbose=0)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs

    def sidecar_fields(self, path, model, threads=None, exit_threshold=None):
        """The sidecar fields of the file ``path`` exported from ``model``: preset, weights,
        input contract, class names and ``test_top1`` of the file and of the Keras model (for an
        early exit, at ``exit_threshold``, as the file)."""
        keras_outputs = self.keras_probabilities(model, exit_threshold)
        return {
            "preset": self.preset,
            "weights": self.weights,
            "input_contract": self.contract,
            "class_names": self.class_names,
            "test_top1": {
                "examples": int(len(self.labels)),
                "images": f"the first {len(self.labels)} test images of the preset's dataset, "
                + ("raw pixels (0-255)" if self.raw else "normalized"),
                "file": self.top1(run_file(path, self.images, threads)),
                "keras": self.top1(keras_outputs),
                "card": self.card_top1,
            },
        }
