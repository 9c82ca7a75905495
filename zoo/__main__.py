"""``python -m tfgated.zoo``: runs :func:`tfgated.cli.zoo.main`."""
from tfgated.cli.zoo import main
raise SystemExit(main())
