"""The pieces of ``python -m tfgated run`` (:mod:`tfgated.cli.run`), the SIPA pipeline.

* :mod:`~tfgated.cli.pipeline.budgets` — how much work each stage does (``budgets.json``).
* :mod:`~tfgated.cli.pipeline.state` — the run folder: stage folders, finished-stage state, data.
* :mod:`~tfgated.cli.pipeline.stages` — stages 1-4: search, improve, train, prune.
* :mod:`~tfgated.cli.pipeline.deploy` — stages 5-7: accelerate (early exit), quantize, export.
* :mod:`~tfgated.cli.pipeline.summary` — the per-stage table (SIPA Table 1), its legend, the plots and the summary files.
* :mod:`~tfgated.cli.pipeline.report` — the shipped presets to compare with and the closing next steps.
* :mod:`~tfgated.cli.pipeline.progress` — one progress line per stage, estimated stage lengths.
"""

from tfgated.cli.pipeline.budgets import BUDGETS, SIPA_PRESETS, Budget, get_budget
from tfgated.cli.pipeline.state import STAGES, Run
from tfgated.cli.pipeline.summary import format_table

__all__ = ["BUDGETS", "SIPA_PRESETS", "STAGES", "Budget", "Run", "format_table", "get_budget"]
