"""Which kernels are pruned, and which of their weights: pure NumPy mask computation.

Prunable kernels are those of ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D``, ``Dense`` and
both kernels of ``SeparableConv1D/2D``, outside gate layers and excluded layers
(see :mod:`tfgated.pruning`). :func:`compute_masks` ranks their weights
(``global_normalized``, ``global`` or ``layerwise``) and returns 0/1 masks.
"""

from __future__ import annotations

import fnmatch
import re
import warnings

import keras
import numpy as np

from tfgated.pruning.schedules import _check_sparsity

RANKINGS = ("global_normalized", "global", "layerwise")

_GATE_NAME = re.compile(r"(^|_)gates?($|_)")

# (layer class, kernel attributes, whether the kernel's last two axes are channels)
_PRUNABLE = (
    (keras.layers.SeparableConv1D, (("depthwise_kernel", True), ("pointwise_kernel", False))),
    (keras.layers.SeparableConv2D, (("depthwise_kernel", True), ("pointwise_kernel", False))),
    (keras.layers.DepthwiseConv1D, (("kernel", True),)),
    (keras.layers.DepthwiseConv2D, (("kernel", True),)),
    (keras.layers.Conv1D, (("kernel", False),)),
    (keras.layers.Conv2D, (("kernel", False),)),
    (keras.layers.Conv3D, (("kernel", False),)),
    (keras.layers.Dense, (("kernel", False),)),
)


def _children(layer):
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "_layers", []))


def _is_gate(layer):
    return type(layer).__name__.endswith("Gate") or bool(_GATE_NAME.search(layer.name))


def _excluded(path, layer, exclude):
    if exclude is None:
        return False
    if callable(exclude):
        return bool(exclude(path, layer))
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


class _Kernel:
    """One prunable kernel: its key, variable and the shape of its channel view."""

    def __init__(self, key, layer, attr, variable, depthwise):
        self.key = key
        self.layer = layer
        self.attr = attr
        self.variable = variable
        shape = tuple(int(d) for d in variable.shape)
        channels = shape[-1] * shape[-2] if depthwise and len(shape) >= 2 else shape[-1]
        self.size = int(np.prod(shape))
        self.view = (self.size // channels, channels)  # rows x output channels
        self.mask = None  # keras.Variable, created by PruningState


def _find_kernels(model, exclude=None):
    if not model.built or not model.weights:
        raise ValueError(
            f"Expected a built model with weights to prune. Received: model '{model.name}' "
            "has no weights yet; call it on data or build it first."
        )
    if exclude is not None and not callable(exclude):
        if isinstance(exclude, str):
            exclude = (exclude,)
        exclude = tuple(exclude)
    found, seen = [], set()

    def visit(layer, prefix):
        for child in _children(layer):
            path = f"{prefix}{child.name}"
            if (
                id(child) in seen
                or _is_gate(child)
                or getattr(child, "tfgated_prunable", True) is False
                or _excluded(path, child, exclude)
            ):
                continue
            seen.add(id(child))
            for cls, attrs in _PRUNABLE:
                if isinstance(child, cls):
                    for attr, depthwise in attrs:
                        var = getattr(child, attr, None)
                        if isinstance(var, keras.Variable) and var.trainable:
                            found.append(_Kernel(f"{path}/{attr}", child, attr, var, depthwise))
                    break
            visit(child, path + "/")

    visit(model, "")
    keys = [k.key for k in found]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"Expected unique layer names to key pruning masks. Received duplicates: {dup}")
    return found


def prunable_weights(model, exclude=None):
    """Dict ``{"<layer path>/<attr>": kernel variable}`` of the kernels that are pruned.

    ``exclude``: glob patterns matched against layer paths (``"head*"``), or a
    callable ``(path, layer) -> bool``; matching layers and their sublayers are
    skipped.
    """
    return {k.key: k.variable for k in _find_kernels(model, exclude)}


# --------------------------------------------------------------------------- #
# Masks
# --------------------------------------------------------------------------- #


def _check_ranking(ranking):
    if ranking not in RANKINGS:
        raise ValueError(
            f"Expected ranking to be one of {RANKINGS}. Received: ranking={ranking!r}"
        )


def _to_numpy(variable):
    tensor = keras.ops.convert_to_tensor(variable)
    if hasattr(tensor, "numpy"):  # TF eager tensor: avoids NumPy 2's __array__ copy warning
        return np.asarray(tensor.numpy())
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _smallest(scores, k):
    """Boolean array marking exactly ``k`` entries with the smallest scores."""
    out = np.zeros(scores.shape, dtype=bool)
    if k <= 0:
        return out
    if k >= scores.size:
        out[:] = True
        return out
    idx = np.argpartition(scores, k - 1)[:k]
    out[idx] = True
    return out


def compute_masks(weights, sparsity, ranking="global_normalized", previous=None,
                  views=None, min_weights_per_channel=None):
    """Pure NumPy mask computation (used by :class:`PruningState`).

    Args:
      weights: dict key -> kernel array.
      sparsity: fraction of all entries (``global*``) or of each kernel
        (``layerwise``) to set to zero.
      ranking: one of :data:`RANKINGS`.
      previous: optional dict key -> 0/1 mask; entries already pruned rank lowest
        so masks only grow while the sparsity grows.
      views: dict key -> ``(rows, channels)``: how to read a kernel as output
        channels (default: last axis).
      min_weights_per_channel: weights always kept per output channel; default 1
        for ``global_normalized`` and ``layerwise``, 0 for ``global``.

    Returns:
      dict key -> float32 0/1 mask of the kernel's shape.
    """
    _check_ranking(ranking)
    sparsity = _check_sparsity("sparsity", sparsity)
    if min_weights_per_channel is None:
        min_weights_per_channel = 0 if ranking == "global" else 1
    keys = list(weights)
    scores, forced = {}, {}
    for key in keys:
        w = np.asarray(weights[key], dtype=np.float64)
        rows, channels = (views or {}).get(key, (w.size // max(w.shape[-1], 1), w.shape[-1]))
        score = np.abs(w).reshape(-1)
        if ranking == "global_normalized":
            norm = float(np.sqrt(np.sum(score**2)))
            if norm > 0:
                score = score / norm
        if previous is not None and key in previous:
            score = np.where(np.asarray(previous[key]).reshape(-1) > 0, score, -1.0)
        keep = np.zeros(score.shape, dtype=bool)
        m = min(int(min_weights_per_channel), rows)
        if m > 0:
            grid = score.reshape(rows, channels)
            top = np.argpartition(-grid, m - 1, axis=0)[:m]  # (m, channels)
            chosen = np.zeros(grid.shape, dtype=bool)
            np.put_along_axis(chosen, top, True, axis=0)
            keep = (chosen & (grid >= 0)).reshape(-1)
        scores[key], forced[key] = score, keep

    pruned = {}
    if ranking == "layerwise":
        for key in keys:
            s, keep = scores[key], forced[key]
            k = int(round(sparsity * s.size))
            k = min(k, s.size - int(keep.sum()))
            pruned[key] = _smallest(np.where(keep, np.inf, s), k)
    else:
        all_scores = np.concatenate([np.where(forced[k], np.inf, scores[k]) for k in keys])
        n_forced = int(sum(int(forced[k].sum()) for k in keys))
        k = int(round(sparsity * all_scores.size))
        if k > all_scores.size - n_forced:
            warnings.warn(
                f"Sparsity {sparsity} keeps fewer weights than one per output channel; "
                f"pruning {all_scores.size - n_forced} of {all_scores.size} instead.",
                stacklevel=3,
            )
            k = all_scores.size - n_forced
        flat = _smallest(all_scores, k)
        offset = 0
        for key in keys:
            n = scores[key].size
            pruned[key] = flat[offset : offset + n]
            offset += n
    return {
        key: (~pruned[key]).astype(np.float32).reshape(np.shape(weights[key])) for key in keys
    }
