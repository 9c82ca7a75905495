"""``python -m tfgated COMMAND``: the command-line entry point (``--help`` lists every entry point).

``--help`` is answered here without importing TensorFlow; a command's module is imported only
when that command runs.
"""

from __future__ import annotations

import importlib
import sys

#: command -> the face module whose ``main(argv) -> int`` runs it
COMMANDS = {name: f"tfgated.cli.{name}" for name in ("run", "demo", "train", "evaluate", "score", "search")}

HELP = """\
usage: python -m tfgated COMMAND [options]    (python -m tfgated COMMAND --help for its options)

tfgated: Gumbel-softmax gated networks and the SIPA workflow for Keras 3.

Commands:
  run        the main job: search, improve, train, prune, early exit, 16 bits and
             TFLite/ONNX export on Fashion-MNIST, resumable (python -m tfgated run)
  demo       a shipped gated ResNet: closed gates, MACs saved, accuracy kept (about a minute)
  train      train a zoo preset with its recipe
  evaluate   evaluate a model or preset under an inference style
  score      MicroNet score of a model, layer by layer
  search     SIPA architecture search with KerasTuner

Other entry points:
  python -m tfgated.export   write a model as TFLite or ONNX, checked in its runtime (bench: latency)
  python -m tfgated.zoo      list the model zoo's presets and print their model cards

TensorFlow's own log lines are hidden; add --verbose to any command to see them.
"""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}. Expected one of: {', '.join(COMMANDS)} "
              "(python -m tfgated --help)", file=sys.stderr)
        return 2
    import tfgated

    tfgated.register_custom_objects()
    try:
        module = importlib.import_module(COMMANDS[command])
        return int(module.main(rest) or 0)
    except Exception:  # a bug: its traceback follows (SystemExit, from argparse, is not one)
        _point_at_native_log()
        raise


def _point_at_native_log():
    """After a crash in a quiet run, say where TensorFlow's own log lines went (if it wrote any)."""
    import os

    from tfgated.console import NATIVE_LOG

    if os.path.exists(NATIVE_LOG) and os.path.getsize(NATIVE_LOG) > 0:
        print(f"(TensorFlow's own log lines of this run: {NATIVE_LOG}; --verbose shows them on the console)",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
