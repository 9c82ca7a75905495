"""The pipeline's per-stage table (SIPA Table 1): rows, markdown, summary files, the closing log lines."""

from __future__ import annotations

import os

from tfgated.cli.pipeline.state import STAGES, save_json
from tfgated.io import write_atomic

__all__ = [
    "ANCHOR",
    "LEGEND",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "format_table",
    "micronet",
    "score_row",
    "write_summary",
]

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
ACCURACY_PLOT = "accuracy_vs_score.png"

#: The small-model anchor of the dataset's own benchmark table (Fashion-MNIST: a 2-convolution
#: network under 100K parameters; github.com/zalandoresearch/fashion-mnist, benchmark table).
ANCHOR = {"fashion_mnist": {"accuracy": 0.925, "what": "Fashion-MNIST benchmark, 2-conv network < 100K parameters"}}

#: What the table's columns and rows mean (printed under the console table, written in summary.md).
LEGEND = """Columns: bits = the precision of the row's weights and of its MicroNet counting (budget
  precision_bits; 16: train, prune and accelerate ran with quantization-aware training, weights and
  activations fake-quantized to float16, and the searched network was rounded to float16);
  accuracy = top-1 on the test split; parameters = non-zero / all; storage in 32-bit
  parameter equivalents and MicroNet math operations per image, scored against WideResNet-28-10
  (36.5M parameters, 10.49B operations); total score = storage score + ops score (lower is better).
Rows: search = best searched network (short training); train = it, trained with the recipe the
  improve stage chose (improve itself makes no model: its validation accuracies are in its stage
  line); prune = after global magnitude pruning; accelerate = with the early-exit head, operations
  expected with exits; 16-bit = weights rounded to 16 bits (at precision_bits 16 they already
  are: the accelerate row's numbers again); export = the written TFLite file
  (with its exit), its accuracy measured in LiteRT."""


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


def _plot_accuracy_vs_score(rows, references, anchor, path):
    """Test accuracy against MicroNet score: every stage of the run, the shipped presets, the anchor."""
    from tfgated.plots import draw_figure

    def draw(figure):
        axes = figure.add_subplot(1, 1, 1)
        axes.plot([r["score"] for r in rows], [r["accuracy"] for r in rows], "o-", color="tab:blue",
                  label="this run")
        for index, r in enumerate(rows):  # labels alternate above and below: stages often coincide
            axes.annotate(r["stage"], (r["score"], r["accuracy"]), fontsize=7,
                          xytext=(4, 6 if index % 2 else -12), textcoords="offset points")
        scored = [p for p in references if p["score"] is not None]
        if scored:
            axes.scatter([p["score"] for p in scored], [p["accuracy"] for p in scored], marker="s",
                         color="tab:orange", label="shipped presets (16-bit)")
            for p in scored:
                axes.annotate(p["name"], (p["score"], p["accuracy"]), fontsize=7, xytext=(4, 4),
                              textcoords="offset points")
        if anchor is not None:
            axes.axhline(anchor["accuracy"], color="gray", linestyle="--", linewidth=1,
                         label=f"anchor {anchor['accuracy']:.3f} ({anchor['what']})")
        axes.set_xscale("log")
        axes.set_xlabel("MicroNet score (storage + math operations, WRN-28-10 = 2; lower is better)")
        axes.set_ylabel("test accuracy")
        axes.set_title("Accuracy against MicroNet score")
        axes.legend(fontsize=7, loc="lower right")

    return draw_figure(path, draw, size=(8, 5))


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


def _final_model(run, states):
    """The model the last table rows score: the 16-bit model with its exit (else the latest stage's)."""
    for stage in ("quantize", "accelerate", "prune", "train", "search"):
        if stage in states and os.path.exists(run.model_path(stage)):
            return run.model_path(stage)
    return None


def _machine_load(states, times):
    """The machine and how busy other processes kept it over the stages that ran in this process
    (:mod:`tfgated.cli.pipeline.machine`; stages resumed from an earlier process count as run then)."""
    from tfgated.io import machine_info

    records = [states[s]["machine"] for s in STAGES if s in states and "machine" in states[s]]
    info = machine_info()
    wall = sum(r["wall_seconds"] for r in records)
    info.update(stages_measured=len(records), cpu_seconds=sum(r["cpu_seconds"] for r in records))
    if records and all("other_cpu_seconds" in r for r in records):
        other = sum(r["other_cpu_seconds"] for r in records)
        info.update(other_cpu_seconds=other, other_cpu_share=other / max(wall * info["cpus"], 1e-9))
    return info


def _summary(run, states, times):
    """The summary dict: rows, times, plots, exported files and their parity, every stage's state."""
    from tfgated.cli.pipeline.report import nearest_reference, shipped_references

    rows = [states[s]["row"] for s in STAGES if s in states and states[s].get("row")]
    references = shipped_references(run.dataset)
    anchor = ANCHOR.get(run.dataset)
    plots = {os.path.join(run.plots_dir, name) for name in os.listdir(run.plots_dir) if name.endswith(".png")}
    accuracy_plot = None
    if rows:
        plots.add(_plot_stages(rows, os.path.join(run.plots_dir, "stages.png")))
        accuracy_plot = _plot_accuracy_vs_score(rows, references, anchor, os.path.join(run.run_dir, ACCURACY_PLOT))
    export_state = states.get("export") or {}
    threshold = (states.get("accelerate") or {}).get("calibration", {}).get("threshold")
    return {
        "dataset": run.dataset,
        "budget": run.budget.name,
        "run_dir": run.run_dir,
        "rows": rows,
        "stage_seconds": times,
        "total_seconds": float(sum(times.values())),
        "machine": _machine_load(states, times),
        "plots": sorted(plots),
        "accuracy_plot": accuracy_plot,
        "final_model": _final_model(run, states),
        "threshold": threshold,
        "exported": export_state.get("files", {}),
        "parity": export_state.get("parity", {}),
        "anchor": anchor,
        "nearest_preset": nearest_reference(rows[-1], references) if rows else None,
        "references": references,
        "stages": {s: {k: v for k, v in states[s].items() if k != "row"} for s in states},
    }


def _markdown(run, summary, table, steps):
    times = summary["stage_seconds"]
    timing = "\n".join(f"| {s} | {times[s]:.1f} |" for s in STAGES)
    return (
        f"# SIPA pipeline: {run.dataset}, budget {run.budget.name}\n\n"
        "Per-stage results (SIPA Table 1).\n\n"
        f"{table}\n\n{LEGEND}\n\n| stage | seconds |\n|---|---:|\n{timing}\n"
        f"| total | {summary['total_seconds']:.1f} |\n\n"
        f"Machine: {summary['machine']['cpus']} cores, {summary['machine']['platform']}{_load_note(summary['machine'])}\n\n"
        f"Plots: {', '.join(os.path.relpath(p, run.run_dir) for p in summary['plots'])}\n\n"
        f"Exported: {', '.join(os.path.relpath(p, run.run_dir) for p in summary['exported'].values())}\n\n"
        "```\n" + "\n".join(steps) + "\n```\n"
    )


def _load_note(machine):
    """`` (other processes used 12% of the 2 cores meanwhile)`` or ``""`` where not measured."""
    share = machine.get("other_cpu_share")
    if share is None:
        return ""
    return f" (other processes used {share:.0%} of the {machine['cpus']} cores meanwhile)"


def write_summary(run, states, times):
    """Write ``summary.json``, ``summary.md`` and the plots; log the table, its legend and the next
    steps; return the summary."""
    from tfgated.cli.pipeline.report import next_steps

    summary = _summary(run, states, times)
    table = format_table(summary["rows"])
    save_json(os.path.join(run.run_dir, SUMMARY_JSON), summary)
    steps = next_steps(summary, summary["final_model"], summary["threshold"], summary["nearest_preset"],
                       summary["anchor"])
    write_atomic(os.path.join(run.run_dir, SUMMARY_MD), _markdown(run, summary, table, steps))
    log = run.log
    log("")
    log(table)
    log(LEGEND)
    log("")
    log("Stage times: " + ", ".join(f"{s} {times[s]:.1f}s" for s in STAGES)
        + f"; total {summary['total_seconds']:.1f}s" + _load_note(summary["machine"]))
    for key, parity in summary["parity"].items():
        log(f"Parity {key}: {'passed' if parity.get('passed') else 'FAILED'} "
            f"(max |diff| {parity.get('max_abs_diff', float('nan')):.2e}, {parity.get('runtime')})")
    log(f"Plots: {run.plots_dir}; accuracy against MicroNet score: {summary['accuracy_plot']}")
    log(f"Exported: {', '.join(summary['exported'].values())}")
    log(f"Summary: {os.path.join(run.run_dir, SUMMARY_MD)} and {os.path.join(run.run_dir, SUMMARY_JSON)}")
    log("")
    for line in steps:
        log(line)
    return summary
