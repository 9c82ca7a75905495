"""``python -m tfgated.export``: the command lives in :mod:`tfgated.cli.export`."""
import sys

from tfgated.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
