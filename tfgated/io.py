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
  ``safe_mode=True``); a damaged or refused file raises :class:`ModelFileError` naming it.
* :func:`load_weights` — ``model.load_weights`` with the same checks for ``.weights.h5`` files.
* :func:`remove_stale_temporaries` — delete the temporary files a killed writer left for a target.

Temporary files are named ``.<file name>.<pid>.<random>.tmp[<ext>]`` in the target's folder
(so ``os.replace`` never crosses file systems); a write removes those of the same target
whose process is gone (:func:`remove_stale_temporaries`: what a SIGKILL left behind) and the target's parent folders are
created when missing (``makedirs=False`` to not). Written files get the ordinary mode
of a new file (``0o666`` minus the umask), not ``tempfile.mkstemp``'s ``0o600``.

This module is ``tfgated.io``; import names from it (``from tfgated.io import
write_json``) so that it never shadows the standard library's :mod:`io`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

__all__ = [
    "ModelFileError",
    "json_default",
    "load_model",
    "load_weights",
    "parse_json_object",
    "read_json_object",
    "remove_stale_temporaries",
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


#: After ``.<name>.``: ``<pid>.<mkstemp's 8 random characters>.tmp...`` (or, older, no pid).
_TEMP_NAME = re.compile(r"^(?:(\d+)\.)?[a-z0-9_]{8}\.tmp")


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_temporaries(path):
    """Delete the temporary files that writers of ``path`` left behind when they were killed
    (``.<name>.<pid>.<random>.tmp*`` next to it, of a process no longer running, and the
    older ``.<name>.<random>.tmp*`` without a process id). Returns the removed paths.

    Every atomic write (:func:`write_atomic`, :func:`save_model`, the exporters) calls it for
    its target first, so a rerun after a kill cleans up after the killed run."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        match = _TEMP_NAME.match(name[len(prefix):]) if name.startswith(prefix) else None
        if match is None or (match.group(1) and _pid_alive(int(match.group(1)))):
            continue
        stale = os.path.join(folder, name)
        try:
            os.remove(stale)
            removed.append(stale)
        except OSError:
            pass
    return removed


def _temp_file(path, suffix=".tmp", makedirs=True):
    """Create an empty temporary file next to ``path`` (named with this process id, after
    removing the stale ones of ``path``); return ``(fd, temp_path)``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    return tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=suffix)


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
        raise ValueError(
            f"Expected {what} to be a JSON object, but it is not valid JSON (it may be truncated or corrupt): {error}"
        ) from error
    if not isinstance(value, dict):
        raise ValueError(f"Expected {what} to be a JSON object. Received: a JSON {type(value).__name__}")
    return value


def read_json_object(path, what=None):
    """The JSON object (a dict) in the file at ``path``; see :func:`parse_json_object`.

    ``what`` names the file in errors (default: ``file <path>``).
    """
    what = what or f"file {os.fspath(path)!r}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:  # a binary or damaged file
        raise ValueError(f"Expected {what} to be a JSON object, but it is not valid JSON (it may be truncated "
                         f"or corrupt): {error}") from error
    return parse_json_object(text, what)


class ModelFileError(ValueError):
    """A model or weights file that exists but cannot be used: truncated, not a Keras
    file, damaged inside, or refused by safe loading. The message names the file."""


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_REDO = "Re-create it (train or export again) or copy it again from its source."


def _first_line(error):
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(error).__name__)


def _check_keras_zip(path):
    """Raise :class:`ModelFileError` unless ``path`` is a complete ``.keras`` zip whose
    members all pass their CRC check and that holds ``config.json``."""
    import zipfile

    if os.path.getsize(path) == 0:
        raise ModelFileError(f"Model file {path!r} is empty (0 bytes): it is truncated. {_REDO}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(
            f"Model file {path!r} is not a readable .keras file: it is truncated or corrupt "
            f"({_first_line(error)}). {_REDO}"
        ) from error
    if damaged is not None:
        raise ModelFileError(
            f"Model file {path!r} is corrupt: its member {damaged!r} fails the zip checksum. {_REDO}"
        )
    if "config.json" not in names:
        raise ModelFileError(f"Model file {path!r} is not a .keras file: it holds no config.json. {_REDO}")


def _is_refused_by_safe_mode(error):
    text = str(error)
    return "safe_mode" in text or "lambda" in text.lower() and "deserializ" in text.lower()


def load_model(path, *, compile=False):
    """Load a ``.keras`` file (or a run folder holding ``model.keras``) with ``safe_mode=True``.

    ``import tfgated`` registers every custom object the library defines (gates, exit
    gates and heads, ghost batch norm, pruning schedules, the soft-smoothing loss), so
    any file tfgated wrote loads here.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ModelFileError: (a ``ValueError``) the file exists but is truncated, random
            bytes, damaged inside the zip (a member failing its checksum, a cut or
            zeroed ``model.weights.h5``), or holds a layer that safe loading refuses
            (``Lambda``); the one-line message names the file and what to do.
    """
    import keras

    import tfgated

    tfgated.register_custom_objects()  # already done by `import tfgated`, except under `python -m tfgated`

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file {path!r} not found.")
    if path.endswith(".keras"):
        _check_keras_zip(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, OSError, EOFError, RuntimeError) as error:
        if _is_refused_by_safe_mode(error):
            raise ModelFileError(
                f"Model file {path!r} holds a layer that safe loading refuses (a Lambda layer runs "
                f"arbitrary Python code): rebuild the model without Lambda layers, or load it yourself "
                f"with keras.saving.load_model(..., safe_mode=False) only if you trust the file."
            ) from error
        if isinstance(error, (OSError, KeyError, EOFError, RuntimeError)):
            raise ModelFileError(
                f"Model file {path!r} is damaged: its weights (model.weights.h5) are truncated or corrupt "
                f"({_first_line(error)}). {_REDO}"
            ) from error
        raise ModelFileError(
            f"Model file {path!r} cannot be rebuilt: it is corrupt, not a tfgated/Keras model, or written "
            f"by an incompatible version ({type(error).__name__}: {_first_line(error)}). {_REDO}"
        ) from error


def load_weights(model, path):
    """``model.load_weights(path)`` for a ``.weights.h5`` (or ``.keras``) file, with the
    errors :func:`load_model` gives: ``FileNotFoundError`` when ``path`` does not exist,
    :class:`ModelFileError` naming it when it is truncated, not an HDF5 file, damaged, or
    does not fit ``model`` (other layers or shapes). Returns ``model``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path!r} not found.")
    if path.endswith(".keras"):
        _check_keras_zip(path)
    else:
        with open(path, "rb") as f:
            head = f.read(len(_HDF5_SIGNATURE))
        if head != _HDF5_SIGNATURE:
            what = "empty (0 bytes)" if not head else "not an HDF5 weights file"
            raise ModelFileError(f"Weights file {path!r} is {what}: it is truncated or corrupt. {_REDO}")
    try:
        model.load_weights(path)
    except (OSError, EOFError, RuntimeError) as error:
        raise ModelFileError(
            f"Weights file {path!r} is truncated or corrupt ({_first_line(error)}). {_REDO}"
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(
            f"Weights file {path!r} does not fit model {model.name!r} (other layers or shapes): "
            f"{_first_line(error)}"
        ) from error
    return model


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
