"""``python -m tfgated.zoo``: runs :func:`tfgated.cli.zoo.main` (the console made quiet by ``tfgated/__init__.py``)."""
import tfgated
from tfgated.cli.zoo import main
tfgated.register_custom_objects()
raise SystemExit(main())
