"""What the study scripts of issue 24 share: one resumable row per configuration, and the result written once.

A study trains one configuration after another in its own run folder. Each finished configuration
leaves a row file there, so a killed study restarts where it stopped and a finished one is read
back instead of trained again. :func:`resumable_rows` runs that loop; :func:`write_result` writes
the result JSON and its plot beside it and prints the table.
"""

from __future__ import annotations

import json
import os


def resumable_rows(points, name_of, run_dir, row_file, compute, summary):
    """The row of every point: read from ``run_dir/NAME/row_file`` or computed and saved there.

    Args:
        points: the configurations, in training order.
        name_of: ``point -> NAME``, the configuration's folder under ``run_dir``.
        compute: ``(point, folder) -> row`` (a dict) for a configuration without a row file.
        summary: ``row -> str``, the progress line printed after a row is computed.
    """
    from tfgated.io import write_json

    rows = []
    for i, point in enumerate(points):
        name = name_of(point)
        folder = os.path.join(run_dir, name)
        path = os.path.join(folder, row_file)
        tag = f"[{i + 1}/{len(points)}] {name}"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows.append(json.load(f))
            print(f"{tag}: loaded from {path}", flush=True)
            continue
        print(f"{tag}: started", flush=True)
        os.makedirs(folder, exist_ok=True)
        row = compute(point, folder)
        write_json(path, row)
        rows.append(row)
        print(f"{tag}: {summary(row)}", flush=True)
    return rows


def write_result(result, output, plot):
    """Write ``result`` to ``output`` (JSON) and ``plot(result["rows"], PNG)`` beside it; print the table."""
    from tfgated.io import write_json

    write_json(output, result, sort_keys=True)
    png = os.path.splitext(output)[0] + ".png"
    plot(result["rows"], png)
    print(result["table_markdown"])
    for key in ("claims", "verdicts"):
        if key in result:
            print(json.dumps(result[key], indent=1))
    print(f"Wrote {output} and {png}")
