"""``python -m tfgated score MODEL.keras [--bits 16] [--input-shape 32,32,3] [--all]``.

Prints the per-layer MicroNet breakdown and the total score
(:func:`tfgated.micronet.micronet_score`).
"""

from __future__ import annotations

import argparse
import sys

from tfgated.cli.common import add_debug_flag, check_input_shape, parse_shape, run_command

__all__ = ["build_parser", "main", "parse_shape"]


def build_parser():
    """The arguments of ``python -m tfgated score``."""
    parser = argparse.ArgumentParser(prog="python -m tfgated score", description="MicroNet score of a .keras model.")
    parser.add_argument("model", help="path of a .keras model file (or a run folder holding model.keras)")
    parser.add_argument("--bits", type=int, choices=(16, 32), default=32, help="parameter/mult precision")
    parser.add_argument("--input-shape", default=None, help="input shape without batch, e.g. 32,32,3")
    parser.add_argument("--all", action="store_true", help="also list layers with no cost")
    return add_debug_flag(parser)


def _score(args):
    from tfgated.io import load_model
    from tfgated.micronet import micronet_score

    shape = parse_shape(args.input_shape) if args.input_shape else None
    model = load_model(args.model)
    check_input_shape(model, shape, args.model)
    report = micronet_score(model, bits=args.bits, input_shape=shape)
    print(report.table(skip_empty=not args.all))
    sys.stdout.flush()
    return 0


def main(argv=None):
    """Entry point of ``python -m tfgated score``; returns the exit status (2 for a missing,
    damaged or refused model file, or a malformed or contradicting ``--input-shape``)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _score(args), debug=args.debug)
