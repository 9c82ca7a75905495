"""``model.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy`` with Keras 3.

Keras 3 (3.15, TensorFlow backend) cannot ``fit`` under a ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585, tensorflow/tensorflow#72388), for two reasons:

1. ``TensorFlowTrainer._maybe_symbolic_build`` averages the first distributed batch with
   ``strategy.reduce`` in eager mode, which the collective all-reduce cannot do:
   ``ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type``.
   Only the batch's shapes and dtypes matter there, so the local replica's batch is used.
2. ``reduce_per_replica`` reduces the scalar metric values of a train step with
   ``strategy.reduce("MEAN", v, axis=0)``: ``Invalid reduction dimension 0 for input with 0
   dimensions``. Scalars are reduced with ``axis=None`` (the mean over replicas).

:func:`enable_multi_worker_fit` patches both, once, and only changes what happens under a
multi-worker strategy. ``python -m tfgated train --strategy multi_worker`` calls it; call it
yourself before ``fit`` in a script of your own. ``tests/cli/test_multi_worker.py`` checks
the result against a single-process run.
"""

from __future__ import annotations

__all__ = ["enable_multi_worker_fit"]

_patched = False


def enable_multi_worker_fit():
    """Make Keras 3's ``fit``/``evaluate`` work under ``MultiWorkerMirroredStrategy`` (idempotent)."""
    global _patched
    if _patched:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    multi_worker = tf_trainer._collective_all_reduce_multi_worker  # noqa: SLF001
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build  # noqa: SLF001
    original_reduce = tf_trainer.reduce_per_replica

    def local(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy  # noqa: SLF001
        if strategy is not None and iterator is not None and data_batch is None and multi_worker(strategy):
            for _, _, it in iterator:
                data_batch = tf_trainer.tree.map_structure(lambda v: local(strategy, v), next(it))
                break
            iterator = None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            def reduce(v):
                if not tf_trainer._is_per_replica_instance(v):  # noqa: SLF001
                    return v
                rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=0 if rank else None)

            return tf_trainer.tree.map_structure(reduce, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build  # noqa: SLF001
    tf_trainer.reduce_per_replica = reduce_per_replica
    _patched = True
