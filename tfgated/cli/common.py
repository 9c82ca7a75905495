"""What every command shares: argument types, ``KEY=VALUE`` parsing, user errors as exit code 2."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_style_argument", "parse_key_values", "positive_float", "positive_int", "run_command"]


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


def run_command(main):
    """Call ``main()``; a user error (``ValueError``, ``FileNotFoundError``) becomes one line on
    stderr and exit status 2."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
