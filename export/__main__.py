"""``python -m tfgated.export``: the command lives in :mod:`tfgated.cli.export`.

``tfgated/__init__.py`` made the console quiet before this package imported TensorFlow.
"""
import sys

import tfgated
from tfgated.cli.export import main

if __name__ == "__main__":
    tfgated.register_custom_objects()
    sys.exit(main())
