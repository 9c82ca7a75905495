"""``python -m tfgated.zoo list [PATTERN]`` and ``python -m tfgated.zoo info NAME [--json]``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfgated.cli.common import add_debug_flag, run_command
from tfgated.io import json_default


def _millions(value):
    return "-" if value is None else f"{value / 1e6:.3f}M"


def format_table(names):
    """A plain-text table: name, family, dataset, params, MACs, weights status."""
    from tfgated.zoo import registry

    golden = registry.golden()
    rows = [("name", "family", "dataset", "params", "MACs", "weights")]
    for name in names:
        preset = registry.get_preset(name)
        measured = golden.get(name) or {}
        rows.append(
            (
                name,
                preset["family"],
                str(preset.get("dataset") or "-"),
                _millions(measured.get("params")),
                _millions(measured.get("macs")),
                registry.weights_status(name),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def card_text(name):
    """The markdown card of ``name``: the committed file, or one rendered from the preset."""
    from tfgated.zoo import registry

    data = registry.info(name)
    if data["card"]:
        with open(data["card"], encoding="utf-8") as f:
            return f.read()
    return f"# {name}\n\n{data['description']}\n\n```json\n{json.dumps(data, indent=2, default=json_default)}\n```\n"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tfgated.zoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the presets as a table")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'sipa*'")
    details = commands.add_parser("info", help="print a model card")
    details.add_argument("name")
    details.add_argument("--json", action="store_true", help="print the card as JSON data")
    add_debug_flag(listing)
    add_debug_flag(details)
    return parser


def _run(args):
    from tfgated.zoo import registry

    if args.command == "list":
        names = registry.list_models(args.pattern)
        if not names:
            print(f"No model matches {args.pattern!r}.", file=sys.stderr)
            return 1
        print(format_table(names))
        return 0
    if args.json:
        print(json.dumps(registry.info(args.name), indent=2, default=json_default))
    else:
        print(card_text(args.name))
    return 0


def main(argv=None) -> int:
    """Run the zoo command on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command(lambda: _run(args), debug=args.debug)
