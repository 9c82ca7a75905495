"""``python -m tfgated score MODEL [--bits 16] [--fold] [--input-shape 32,32,3] [--all]``.

Prints the per-layer MicroNet breakdown and the total score
(:func:`tfgated.micronet.micronet_score`) of a ``.keras`` file, a run folder or a zoo
preset by name (with its shipped weights). ``--fold`` scores what an export runs: the
gates folded in threshold style (:func:`tfgated.export.fold.fold`), so the channels
and blocks that data-independent gates close are gone from the count.
"""

from __future__ import annotations

import argparse
import os
import sys

from tfgated.cli.common import add_debug_flag, check_input_shape, parse_shape, run_command

__all__ = ["build_parser", "main", "parse_shape"]


def build_parser():
    """The arguments of ``python -m tfgated score``."""
    parser = argparse.ArgumentParser(prog="python -m tfgated score", description="MicroNet score of a .keras model.")
    parser.add_argument("model", help="a .keras model file, a run folder holding model.keras, or a zoo preset name")
    parser.add_argument("--bits", type=int, choices=(16, 32), default=32, help="parameter/mult precision")
    parser.add_argument("--fold", action="store_true",
                        help="score the folded network (gates folded at threshold inference, closed channels and "
                             "blocks removed): what `python -m tfgated.export` writes")
    parser.add_argument("--input-shape", default=None, help="input shape without batch, e.g. 32,32,3")
    parser.add_argument("--all", action="store_true", help="also list layers with no cost")
    return add_debug_flag(parser)


def _load(spec, shape, fold):
    """The model of a file or run folder, or of a zoo preset name: its shipped weights, or
    fresh ones where it ships none (the score counts the architecture; only ``--fold``, whose
    gate decisions come from trained weights, refuses a preset without them)."""
    from tfgated.cli.export import is_preset, load_model

    if os.path.exists(spec) or not is_preset(spec):
        from tfgated.io import load_model as load_file

        model = load_file(spec)
        check_input_shape(model, shape, spec)
        return model
    from tfgated.zoo.registry import has_shipped_weights

    shipped = has_shipped_weights(spec)
    if fold and not shipped:
        from tfgated.zoo.registry import train_command

        raise ValueError(f"Preset {spec!r} ships no trained weights; --fold folds the gate decisions of trained weights. "
                         f"Train it with `{train_command(spec)}` and score the run's model.keras.")
    return load_model(spec, input_shape=shape, weights="default" if shipped else "none")


def _score(args):
    from tfgated.micronet import micronet_score

    shape = parse_shape(args.input_shape) if args.input_shape else None
    model = _load(args.model, shape, args.fold)
    if args.fold:
        from tfgated.export.fold import fold

        model, report = fold(model, style="threshold", return_report=True)
        print(report)
    report = micronet_score(model, bits=args.bits, input_shape=shape)
    print(report.table(skip_empty=not args.all))
    sys.stdout.flush()
    return 0


def main(argv=None):
    """Entry point of ``python -m tfgated score``; returns the exit status (2 for a missing,
    damaged or refused model file, or a malformed or contradicting ``--input-shape``)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _score(args), debug=args.debug)
