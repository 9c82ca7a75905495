"""``python -m tfgated COMMAND``: the command-line entry point.

Commands (each imported lazily, so ``--help`` is fast):

  run        the main job: the full SIPA workflow (search, improve, train, prune,
             early exit, 16-bit, TFLite/ONNX export) on Fashion-MNIST by default
  demo       build a gated model, train one epoch on real Fashion-MNIST, print gate rates and MACs
  train      train a zoo preset with its recipe
  evaluate   evaluate a model or preset under an inference style
  score      MicroNet score of a model, per layer
  search     SIPA architecture search with KerasTuner
"""

from __future__ import annotations

import importlib
import sys

#: command -> the face module whose ``main(argv) -> int`` runs it
COMMANDS = {name: f"tfgated.cli.{name}" for name in ("run", "demo", "train", "evaluate", "score", "search")}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"Unknown command {command!r}. Expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
