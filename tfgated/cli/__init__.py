"""The face: ``python -m tfgated`` subcommands, ``python -m tfgated.export`` and ``python -m tfgated.zoo``.

Each command is a module ``tfgated.cli.<command>`` with ``main(argv=None) -> int``: it parses
arguments, builds from the zoo, calls the mechanism (``tfgated``) and, where it deploys,
``tfgated.export``. Arrows go one way: the face may import every room; no room imports it.
"""
