"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Readers of ``path`` (a resumed run, a parallel job, a crash-restart) see either the
old file or the complete new one, never a half-written file. If writing fails, the
temporary file is removed, ``path`` is left as it was, and the error propagates.

* :func:`write_atomic` — ``str`` (UTF-8) or ``bytes``.
* :func:`write_json` — ``json.dumps(obj, indent=2)`` plus a trailing newline.
* :func:`save_model` — ``model.save`` (Keras) to a temporary ``.keras`` file.
* :func:`save_figure` — ``fig.savefig`` (matplotlib) to a temporary file with the same extension.
* :func:`json_default` — the one ``default=`` for ``json.dumps`` of NumPy values and tuples.
* :func:`load_model` — the one ``.keras`` loader (every tfgated custom object registered,
  ``safe_mode=True``).

Temporary files are named ``.<file name>.<random>.tmp[<ext>]`` in the target's folder
(so ``os.replace`` never crosses file systems) and the target's parent folders are
created when missing (``makedirs=False`` to not). Written files get the ordinary mode
of a new file (``0o666`` minus the umask), not ``tempfile.mkstemp``'s ``0o600``.

This module is ``tfgated.io``; import names from it (``from tfgated.io import
write_json``) so that it never shadows the standard library's :mod:`io`.
"""

from __future__ import annotations

import json
import os
import tempfile

__all__ = [
    "json_default",
    "load_model",
    "parse_json_object",
    "read_json_object",
    "save_figure",
    "save_model",
    "write_atomic",
    "write_json",
]


def _umask():
    """The process umask (read from ``/proc`` on Linux, else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_file(path, suffix=".tmp", makedirs=True):
    """Create an empty temporary file next to ``path``; return ``(fd, temp_path)``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(folder, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix)


def _replace(tmp, path):
    """Give ``tmp`` a new file's ordinary mode and move it onto ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _remove_quietly(tmp):
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


def write_atomic(path, data, *, fsync=False, makedirs=True):
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Args:
        path: destination file (str or path-like).
        data: ``str`` (written as UTF-8, newlines untranslated) or bytes-like.
        fsync: flush the data to disk (``os.fsync``) before the rename.
        makedirs: create the missing parent folders of ``path``.

    Returns:
        ``path`` as a string.

    Raises:
        TypeError: ``data`` is neither ``str`` nor bytes-like (nothing is written).
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"Expected data to be str or bytes. Received: data of type {type(data).__name__}")
    fd, tmp = _temp_file(path, makedirs=makedirs)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def write_json(path, obj, indent=2, *, fsync=False, makedirs=True, **dumps_kwargs):
    """Write ``json.dumps(obj, indent=indent, **dumps_kwargs) + "\\n"`` atomically to ``path``.

    ``obj`` is serialized before any file is touched, so an object ``json`` cannot
    serialize raises (``TypeError``/``ValueError``) and leaves ``path`` as it was.
    ``dumps_kwargs`` go to :func:`json.dumps` (``sort_keys``, ``default``, ...).
    Returns ``path`` as a string.
    """
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + "\n"
    return write_atomic(path, text, fsync=fsync, makedirs=makedirs)


def save_model(model, path, *, makedirs=True):
    """``model.save`` to a temporary file of the same extension in the same folder, then ``os.replace``.

    Args:
        model: a ``keras.Model`` (anything with ``save(filepath)``).
        path: destination ending in ``.keras`` (or legacy ``.h5``): the temporary
            file keeps the extension, so Keras writes the format ``path`` names.
        makedirs: create the missing parent folders of ``path``.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: ``path`` does not end in ``.keras`` or ``.h5`` (nothing is written).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1]
    if ext not in (".keras", ".h5"):
        raise ValueError(f"Expected a model path ending in .keras (or .h5). Received: path={path!r}")
    fd, tmp = _temp_file(path, suffix=".tmp" + ext, makedirs=makedirs)
    os.close(fd)
    try:
        model.save(tmp)
        _replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def save_figure(fig, path, *, makedirs=True, **savefig_kwargs):
    """``fig.savefig`` to a temporary file with the same extension in the same folder, then ``os.replace``.

    ``savefig_kwargs`` go to ``savefig`` (``dpi``, ``bbox_inches``, ``format``, ...).
    Without ``format``, matplotlib picks the format from the extension of ``path``
    (which the temporary file shares); a ``path`` without an extension then raises
    ``ValueError`` (pass ``format=``). Returns ``path`` as a string.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1]
    if not ext and "format" not in savefig_kwargs:
        raise ValueError(
            f"Expected a figure path with an extension (.png, .pdf, ...) or a format=. Received: path={path!r}"
        )
    fd, tmp = _temp_file(path, suffix=".tmp" + ext, makedirs=makedirs)
    os.close(fd)
    try:
        fig.savefig(tmp, **savefig_kwargs)
        _replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def json_default(value):
    """``default=`` for :func:`json.dumps`: NumPy scalars and arrays, tuples and sets as JSON values.

    Anything else raises ``TypeError`` as :func:`json.dumps` itself would, so a value
    that has no faithful JSON form is never written as its ``str``.
    """
    import numpy as np

    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def parse_json_object(text, what):
    """``text`` parsed as JSON that must be an object (a dict).

    Raises ``ValueError`` naming ``what`` (e.g. ``"--arch-json"``, ``"preset file 'x.json'"``)
    when the text is not valid JSON or holds another JSON value.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Expected {what} to be a JSON object, but it is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"Expected {what} to be a JSON object. Received: a JSON {type(value).__name__}")
    return value


def read_json_object(path, what=None):
    """The JSON object (a dict) in the file at ``path``; see :func:`parse_json_object`.

    ``what`` names the file in errors (default: ``file <path>``).
    """
    with open(path, encoding="utf-8") as f:
        return parse_json_object(f.read(), what or f"file {os.fspath(path)!r}")


def load_model(path, *, compile=False):
    """Load a ``.keras`` file (or a run folder holding ``model.keras``) with ``safe_mode=True``.

    ``import tfgated`` registers every custom object the library defines (gates, exit
    gates and heads, ghost batch norm, pruning schedules, the soft-smoothing loss), so
    any file tfgated wrote loads here. Raises ``FileNotFoundError`` naming the path
    when it does not exist.
    """
    import keras

    import tfgated

    tfgated.register_custom_objects()  # already done by `import tfgated`, except under `python -m tfgated`

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file {path!r} not found.")
    return keras.saving.load_model(path, safe_mode=True, compile=compile)


def machine_info():
    """What a benchmark ran on, for its results JSON: platform, CPU count, Python, TensorFlow, Keras."""
    import platform
    import sys

    import keras
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
