"""The pipeline's per-stage table (SIPA Table 1): rows, markdown, summary files, the closing log lines."""

from __future__ import annotations

import os

from tfgated.cli.pipeline.state import STAGES, save_json
from tfgated.io import write_atomic

__all__ = ["SUMMARY_JSON", "SUMMARY_MD", "format_table", "micronet", "score_row", "write_summary"]

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def micronet(model, bits):
    """:func:`tfgated.micronet.micronet_score` of ``model`` at ``bits``."""
    from tfgated.micronet import micronet_score

    return micronet_score(model, bits=bits)


def score_row(stage, accuracy, report, bits, extra=None):
    """One table row from a MicroNet report (``ops`` may be replaced by expected ops in ``extra``)."""
    from tfgated.micronet import WRN_OPS, WRN_PARAMS

    extra = dict(extra or {})
    ops = float(extra.pop("ops", report.ops))
    row = {
        "stage": stage,
        "accuracy": float(accuracy),
        "params": int(report.params),
        "nonzero_params": int(report.nonzero),
        "storage": float(report.params_storage),
        "ops": ops,
        "bits": int(bits),
        "storage_score": float(report.params_storage) / WRN_PARAMS,
        "ops_score": ops / WRN_OPS,
    }
    row["score"] = row["storage_score"] + row["ops_score"]
    row.update(extra)
    return row


def format_table(rows):
    """SIPA Table 1 style markdown table of the per-stage rows."""
    lines = [
        "| stage | bits | accuracy | parameters | storage (32-bit eq.) | MicroNet ops | storage score "
        "| ops score | total score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['bits']} | {r['accuracy']:.4f} | {r['nonzero_params']:,} / {r['params']:,} | "
            f"{r['storage']:,.0f} | {r['ops']:,.0f} | {r['storage_score']:.6f} | {r['ops_score']:.6f} | "
            f"{r['score']:.6f} |"
        )
    return "\n".join(lines)


def _plot_stages(rows, path):
    """Test accuracy and MicroNet score (storage + math operations) per stage."""
    from tfgated.plots import draw_figure

    names = [r["stage"] for r in rows]
    positions = range(len(rows))

    def draw(figure):
        left = figure.add_subplot(1, 2, 1)
        right = figure.add_subplot(1, 2, 2)
        left.bar(positions, [r["accuracy"] for r in rows], color="tab:blue")
        left.set_ylim(max(0.0, min(r["accuracy"] for r in rows) - 0.1), 1.0)
        left.set_title("test accuracy")
        right.bar(positions, [r["storage_score"] for r in rows], label="storage")
        right.bar(positions, [r["ops_score"] for r in rows], bottom=[r["storage_score"] for r in rows],
                  label="math ops")
        right.set_title("MicroNet score (WRN-28-10 = 2)")
        right.legend(fontsize=8)
        for axes in (left, right):
            axes.set_xticks(positions)
            axes.set_xticklabels(names, rotation=30, ha="right", fontsize=8)

    return draw_figure(path, draw, size=(10, 4.5))


def _summary(run, states, times):
    """The summary dict: rows, times, plots, exported files and their parity, every stage's state."""
    rows = [states[s]["row"] for s in STAGES if s in states and states[s].get("row")]
    plots = {os.path.join(run.plots_dir, name) for name in os.listdir(run.plots_dir) if name.endswith(".png")}
    if rows:
        plots.add(_plot_stages(rows, os.path.join(run.plots_dir, "stages.png")))
    export_state = states.get("export") or {}
    return {
        "dataset": run.dataset,
        "budget": run.budget.name,
        "run_dir": run.run_dir,
        "rows": rows,
        "stage_seconds": times,
        "total_seconds": float(sum(times.values())),
        "plots": sorted(plots),
        "exported": export_state.get("files", {}),
        "parity": export_state.get("parity", {}),
        "stages": {s: {k: v for k, v in states[s].items() if k != "row"} for s in states},
    }


def _markdown(run, summary, table):
    times = summary["stage_seconds"]
    timing = "\n".join(f"| {s} | {times[s]:.1f} |" for s in STAGES)
    return (
        f"# SIPA pipeline: {run.dataset}, budget {run.budget.name}\n\n"
        "Per-stage results (SIPA Table 1). Accuracy on the test split; storage in 32-bit parameter "
        "equivalents and math operations per example under the MicroNet rules, normalized to "
        "WideResNet-28-10 (36.5M parameters, 10.49B operations). The accelerate and 16-bit rows count "
        "the exit head and the expected operations with early exit.\n\n"
        f"{table}\n\n| stage | seconds |\n|---|---:|\n{timing}\n| total | {summary['total_seconds']:.1f} |\n\n"
        f"Plots: {', '.join(os.path.relpath(p, run.run_dir) for p in summary['plots'])}\n\n"
        f"Exported: {', '.join(os.path.relpath(p, run.run_dir) for p in summary['exported'].values())}\n"
    )


def write_summary(run, states, times):
    """Write ``summary.json``, ``summary.md`` and the stage plot; log the table; return the summary."""
    summary = _summary(run, states, times)
    table = format_table(summary["rows"])
    save_json(os.path.join(run.run_dir, SUMMARY_JSON), summary)
    write_atomic(os.path.join(run.run_dir, SUMMARY_MD), _markdown(run, summary, table))
    log = run.log
    log("")
    log(table)
    log("")
    log("Stage times: " + ", ".join(f"{s} {times[s]:.1f}s" for s in STAGES)
        + f"; total {summary['total_seconds']:.1f}s")
    for key, parity in summary["parity"].items():
        log(f"Parity {key}: {'passed' if parity.get('passed') else 'FAILED'} "
            f"(max |diff| {parity.get('max_abs_diff', float('nan')):.2e}, {parity.get('runtime')})")
    log(f"Plots: {run.plots_dir}")
    log(f"Exported: {', '.join(summary['exported'].values())}")
    log(f"Summary: {os.path.join(run.run_dir, SUMMARY_MD)} and {os.path.join(run.run_dir, SUMMARY_JSON)}")
    return summary
