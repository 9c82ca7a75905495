"""What every command shares: argument types, ``KEY=VALUE`` parsing, user errors as one line
and exit code 2 (``--debug`` or ``TFGATED_DEBUG=1`` for the traceback)."""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = [
    "DEBUG_ENV",
    "add_debug_flag",
    "add_style_argument",
    "check_input_shape",
    "error_line",
    "is_user_error",
    "parse_key_values",
    "parse_shape",
    "positive_float",
    "positive_int",
    "run_command",
]


def positive_int(text):
    """``argparse`` type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text):
    """``argparse`` type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_style_argument(parser, choices, default=None, help=None):
    """Add ``--style`` (the gates' inference style) to ``parser``, with ``--mode`` as a hidden alias.

    ``--mode`` was the flag's earlier name; old command lines keep working, and both store
    into ``args.style``.
    """
    parser.add_argument("--style", choices=choices, default=default, help=help)
    parser.add_argument("--mode", dest="style", choices=choices, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def parse_key_values(items, flag="--set"):
    """``["weight=10", "augment=flip"]`` -> dict (values parsed as JSON when possible)."""
    values = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"Expected {flag} KEY=VALUE. Received: {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        values[key] = value
    return values


#: Set to 1 to get tracebacks instead of one-line errors (as ``--debug`` does).
DEBUG_ENV = "TFGATED_DEBUG"

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_FOLDERS = tuple(
    os.path.join(os.path.dirname(_PACKAGE_ROOT), name) + os.sep for name in ("tfgated", "zoo", "export")
)


def add_debug_flag(parser):
    """Add ``--debug`` (show the traceback of an error instead of one line) to ``parser``."""
    parser.add_argument(
        "--debug", action="store_true",
        help=f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
    )
    return parser


def _raised_by_tfgated(error):
    """Whether the innermost frame of ``error``'s traceback is tfgated code (a deliberate raise)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OWN_FOLDERS)


def is_user_error(error):
    """A bad argument, file or environment rather than a bug: ``ValueError`` (with
    :class:`tfgated.io.ModelFileError`), ``OSError`` (a missing, unreadable or unwritable
    file), or a ``RuntimeError`` tfgated raised itself (a failed parity check, a failed
    conversion)."""
    if isinstance(error, (ValueError, OSError)):
        return True
    return isinstance(error, RuntimeError) and _raised_by_tfgated(error)


def error_line(error):
    """``error`` as one line for stderr: ``error: <message>`` with newlines folded."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
        if os.fspath(error.filename) not in message:
            message = f"{message} (file {os.fspath(error.filename)!r})"
    return f"error: {message}"


def run_command(main, debug=False):
    """Call ``main()`` and return its exit status; a user error (:func:`is_user_error`)
    becomes one line on stderr naming what is wrong, and exit status 2.

    With ``debug`` (``--debug``) or the environment variable ``TFGATED_DEBUG=1`` the error
    propagates with its traceback instead. Any other exception (a bug) propagates too.
    Ctrl-C prints one line and returns 130.
    """
    debug = debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        return main()
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(error_line(error), file=sys.stderr, flush=True)
        return 2


def parse_shape(text):
    """``"32,32,3"`` (or ``"32x32x3"``) -> ``(32, 32, 3)``: positive integers, batch axis excluded."""
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise ValueError(f"Expected an input shape like 32,32,3. Received: {text!r}")
    return shape


def check_input_shape(model, shape, path, flag="--input-shape"):
    """Refuse ``shape`` (from ``flag``) when it contradicts the input shape of the model loaded
    from ``path``: a saved model keeps its own input shape, so the flag would be ignored."""
    if shape is None:
        return
    own = tuple(model.inputs[0].shape[1:])
    fits = len(own) == len(shape) and all(d is None or d == s for d, s in zip(own, shape))
    if not fits:
        given = ",".join(map(str, shape))
        raise ValueError(
            f"{flag} {given} does not match the input shape {tuple(own)} of model file {os.fspath(path)!r}, "
            f"which keeps its own shape: drop {flag} (it only sets the shape of zoo presets and of "
            "inputs with unknown sizes)."
        )
