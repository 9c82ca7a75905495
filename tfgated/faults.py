"""Deterministic fault injection for the crash-safety tests: ``TFGATED_FAULT=<point>[@<hit>]``.

The code that writes a run's state calls :func:`fault_point` at named points (between the
steps of a checkpoint write, after a history row, ...). When the environment variable
``TFGATED_FAULT`` names that point, the process kills itself with ``SIGKILL`` there, exactly
as the kernel's out-of-memory killer or ``kill -9`` would: no ``finally`` block, no
``atexit`` handler, no flush runs. ``@<hit>`` (1-based, default 1) picks the hit: with
``TFGATED_FAULT=checkpoint.weights@2`` the process dies at the second checkpoint write.
``TFGATED_FAULT=<point>[@<hit>]:stop`` stops the process there (``SIGSTOP``) instead, so a
test can act while it holds its locks and then kill it.

Points (see ``docs/reliability.md``):

* ``checkpoint.begin``: an epoch's checkpoint write starts (nothing of it written yet).
* ``checkpoint.weights``: inside the write: the temporary weights file holds only the first
  half of its bytes (a kill while the data was being written).
* ``checkpoint.renamed``: the weights file is complete under its final name; the pointer
  ``latest.json`` still names the previous checkpoint.
* ``checkpoint.committed``: the pointer names the new checkpoint; older files not yet removed.
* ``history.row``: a row of a CSV log (history, gate rates) is half written (no newline yet).
* ``train.main_saved``: ``main.keras`` is written, the main phase's backup not yet removed.
* ``pruning.round_saved``: a pruning round's model is written, its masks not yet.

Without the variable :func:`fault_point` costs one dictionary look-up. It is a test hook,
not an API: nothing but the tests should set the variable.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV_VAR", "fault_point"]

ENV_VAR = "TFGATED_FAULT"
_hits = {}


def _requested():
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return None, 0, None
    spec, _, action = spec.partition(":")
    name, _, hit = spec.partition("@")
    return name.strip(), int(hit) if hit else 1, action or "kill"


def fault_point(name, partial_file=None):
    """SIGKILL this process when ``TFGATED_FAULT`` names ``name`` (at its requested hit).

    Args:
        name: the point's name (see the module docstring).
        partial_file: a file being written at this point: it is cut to half its size
            first, so the kill leaves what a kill in the middle of the write would.
    """
    wanted, hit, action = _requested()
    if wanted != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != hit:
        return
    if partial_file is not None and os.path.exists(partial_file):
        size = os.path.getsize(partial_file)
        with open(partial_file, "r+b") as f:
            f.truncate(size // 2)
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
