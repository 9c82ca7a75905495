"""A quiet console for the command-line entry points, set up before TensorFlow is imported.

It lives in the mechanism (no imports beyond the standard library) because ``python -m
tfgated ...`` runs ``tfgated/__init__.py`` before any command module: that is where the
console is made quiet, before ``tfgated.zoo`` or ``tfgated.export`` import TensorFlow.

TensorFlow writes C++ log lines (``I0000 ... port.cc: oneDNN custom operations are on``,
``cuda_platform.cc: failed call to cuInit``, ``flatbuffer_export.cc``) straight to the
process's standard error, partly through absl before ``TF_CPP_MIN_LOG_LEVEL`` is read, and
LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate``. :func:`quiet_console`
therefore does two things before the first TensorFlow import:

* sets ``TF_CPP_MIN_LOG_LEVEL=3``, ``GRPC_VERBOSITY=ERROR``, ``GLOG_minloglevel=3`` (unless
  the user set them) and raises the Python loggers of TensorFlow, absl and tf2onnx to ERROR;
* points the native standard error (file descriptor 2) at a log file
  (:data:`NATIVE_LOG`, in the temporary folder), while Python's ``sys.stderr`` keeps the
  console: Python warnings, errors and tracebacks still reach the user.

This module imports nothing heavy; ``--verbose`` (or ``TFGATED_VERBOSE=1``) skips it all.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import warnings

__all__ = ["NATIVE_LOG", "QUIET_ENVIRONMENT", "quiet_console", "wants_verbose"]

#: Environment variables set (when unset) before TensorFlow is imported.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "3"}
#: Where TensorFlow's native log lines go in a quiet run (one file per process).
NATIVE_LOG = os.path.join(tempfile.gettempdir(), f"tfgated-native-{os.getpid()}.log")
_QUIET_LOGGERS = ("tensorflow", "absl", "tf2onnx", "h5py", "keras_tuner")


def wants_verbose(argv):
    """True when ``argv`` holds ``--verbose`` (with or without a value) or ``TFGATED_VERBOSE=1`` is set."""
    if os.environ.get("TFGATED_VERBOSE", "") not in ("", "0"):
        return True
    return any(arg == "--verbose" or arg.startswith("--verbose=") for arg in argv)


def quiet_console(argv=None, native_log=NATIVE_LOG):
    """Silence TensorFlow's logging unless ``argv`` asks for ``--verbose``; call before importing TF.

    Returns the file the native log lines go to, or None when nothing was changed (verbose,
    or TensorFlow already imported, when it is too late to set its environment).
    """
    argv = sys.argv[1:] if argv is None else argv
    if wants_verbose(argv) or "tensorflow" in sys.modules:
        return None
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Library deprecation notices are for the library's authors, not for the user of a command.
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # Keras' advice to library code (``shuffle=True`` ignored for a tf.data dataset, ...).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")
    _redirect_native_stderr(native_log)
    return native_log


def _redirect_native_stderr(path):
    """Point file descriptor 2 at ``path``; ``sys.stderr`` keeps writing to the console."""
    try:
        sys.stderr.flush()
        console = os.dup(2)
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except (OSError, AttributeError, ValueError):
        return  # no real descriptor 2 (embedded interpreter): leave it as it is
    os.dup2(log_fd, 2)
    os.close(log_fd)
    atexit.register(_remove_if_empty, path)
    sys.stderr = os.fdopen(console, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")


def _remove_if_empty(path):
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass
