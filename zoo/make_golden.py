"""Regenerate the golden complexity file ``zoo/complexity.json`` and the model cards.

    python -m tfgated.zoo.make_golden            # every preset: JSON + cards/NAME.md
    python -m tfgated.zoo.make_golden --check    # exit 1 if the committed files are stale

For every preset the model is built at the preset's ``input_shape`` and counted
with :func:`tfgated.complexity.count` (pycls convention: parameters =
all weights incl. BatchNorm statistics, gate bookkeeping excluded; MACs =
multiply-accumulates of convolutions and dense layers per example). The file
also states ``params_without_bn`` (BatchNorm folded away, the MicroNet/SIPA
reference convention). ``tests/zoo/test_all_presets.py`` compares every preset
with this file, so a change that alters a model shows up in review.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfgated.io import write_atomic

COUNTER = "tfgated.complexity.count"


def measure(name):
    """The golden entry of preset ``name``: a JSON-able dict."""
    import keras

    from tfgated.complexity import count
    from tfgated.zoo import registry

    preset = registry.get_preset(name)
    model = registry.build(name)
    report = count(model)
    bn = sum(r.params for r in report.rows if r.class_name == "BatchNormalization")
    entry = {
        "family": preset["family"],
        "input_shape": [int(v) for v in preset["input_shape"]],
        "num_classes": int(preset["num_classes"]),
        "params": report.params,
        "params_without_bn": report.params - bn,
        "trainable_params": int(sum(int(keras.ops.size(w)) for w in model.trainable_weights)),
        "macs": report.macs,
        "outputs": len(model.outputs),
        "gates": len(_gate_layers(model)),
        "counter": COUNTER,
    }
    keras.backend.clear_session()
    return entry


def _gate_layers(model):
    import tfgated

    return tfgated.gate_layers(model)


def _millions(value):
    return f"{value / 1e6:.3f}M"


def family_notes(family):
    """The optional ``CARD_NOTES`` string of a family's module."""
    from tfgated.zoo import registry

    builder = registry._FAMILIES[family]
    return getattr(sys.modules[builder.__module__], "CARD_NOTES", "")


def input_section(preset):
    """The card's "Input" section: the input contract of the preset's model and its class names."""
    contract = preset.get("input")
    if contract is None:
        return ["## Input", "", "Prepared inputs (no dataset known: the model has no built-in preprocessing).", ""]
    mean = ", ".join(f"{v:.5g}" for v in contract["mean"])
    std = ", ".join(f"{v:.5g}" for v in contract["std"])
    names = contract.get("class_names")
    lines = [
        "## Input",
        "",
        f"Raw pixel values: {contract['dtype']} range {contract['range'][0]}-{contract['range'][1]} (any float or "
        f"integer dtype holding them), layout {contract['layout']}, shape {tuple(contract['shape'])}. The model scales "
        f"and normalizes inside its graph (`pixels_scale`, `pixels_normalize`): `(x / 255 - mean) / std` with mean "
        f"({mean}) and std ({std}), the statistics of the full {preset.get('dataset')} training split. Feed it "
        f'`tfgated.data.load_dataset("{preset.get("dataset")}", pixels="raw")`, or your own images as they are.',
        "",
    ]
    if names:
        lines += ["Class names (by label): " + ", ".join(f"{i} `{n}`" for i, n in enumerate(names)) + ".", ""]
    else:
        lines += [f"Class names: the label names of TFDS' `{preset.get('dataset')}`.", ""]
    return lines


def render_card(name, entry):
    """The markdown model card of preset ``name`` given its golden ``entry``."""
    from tfgated.zoo import registry

    preset = registry.get_preset(name)
    lines = [f"# {name}", "", preset["description"], ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| family | `{preset['family']}` |",
        f"| dataset | `{preset.get('dataset')}` |",
        f"| input shape | {tuple(preset['input_shape'])} |",
        f"| classes | {preset['num_classes']} |",
        f"| outputs | {entry['outputs']} (softmax probabilities{', main first' if entry['outputs'] > 1 else ''}) |",
        f"| parameters | {entry['params']:,} ({_millions(entry['params'])}) |",
        f"| parameters without BatchNorm | {entry['params_without_bn']:,} |",
        f"| MACs per example | {entry['macs']:,} ({_millions(entry['macs'])}) |",
        f"| gate layers | {entry['gates']} |",
        f"| weights | {registry.weights_status(name)} |",
        "",
        "## Counting convention",
        "",
        "Measured by `tfgated.complexity.count` on the preset's input shape: parameters are all "
        "weights including BatchNorm's moving statistics (Keras' `count_params`), without the gates' "
        "bookkeeping variables; MACs are the multiply-accumulates of convolutions and dense layers "
        "per example (bias, BatchNorm, activations, pooling, additions and gate masks count zero). "
        "\"Without BatchNorm\" is the folded count used by MicroNet-style tables. For gated models "
        "these are the counts with every gate open.",
        "",
    ]
    lines += input_section(preset)
    notes = family_notes(preset["family"])
    if notes:
        lines += ["## Family notes", "", notes.strip(), ""]
    lines += ["## Architecture", "", "```json", json.dumps(preset["arch"], indent=2, sort_keys=True), "```", ""]
    if preset["gates"] is not None:
        lines += ["## Gates", "", "```json", json.dumps(preset["gates"], indent=2, sort_keys=True), "```", ""]
    lines += ["## Training recipe", "", "```json", json.dumps(preset["recipe"], indent=2, sort_keys=True), "```", ""]
    shipped = preset.get("weights") or {}
    if shipped.get("measured"):
        m = shipped["measured"]
        lines += [
            "## Shipped weights",
            "",
            f"`zoo/weights/{shipped['file']}` (sha256 `{shipped['sha256'][:16]}...`), trained by `{shipped['trained_by']}`. "
            f'Measured on the full {preset.get("dataset")} test split ({m.get("examples", "?"):,} images) with '
            f'`tfgated.zoo.load("{name}", weights="default")`'
            + (f", {m['inference_style']} inference" if m.get("inference_style") else "")
            + f" (checked by `python -m tfgated.zoo.ship_weights {name} --verify`; `tests/zoo/test_weights.py`"
            f" checks the first {shipped.get('check', {}).get('examples', '?'):,} test images):",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| top-1 | {m['top1']:.4f} |",
            f"| top-5 | {m['top5']:.4f} |",
        ]
        if m.get("gate_activation") is not None:
            lines.append(f"| mean gate activation | {m['gate_activation']:.3f} |")
        if m.get("exit_ratio") is not None:
            lines += [f"| images leaving at the exit (threshold {m['exit_threshold']:g}) | {m['exit_ratio']:.1%} |",
                      f"| top-1 without the exit (main output only) | {m['top1_no_exit']:.4f} |"]
        if m.get("macs") is not None:
            lines.append(f"| measured MACs per image | {m['macs'] / 1e6:.2f}M of {m['dense_macs'] / 1e6:.2f}M |")
        if m.get("micronet_score_16bit") is not None:
            lines += [
                f"| sparsity of prunable weights | {m['sparsity']:.1%} |",
                f"| top-1 with float16 weights | {m['top1_float16_weights']:.4f} |",
                f"| MicroNet score, 16-bit | {m['micronet_score_16bit']:.6f} "
                f"({m['micronet_storage_16bit'] / 1e3:,.1f}K storage, {m['micronet_ops_16bit'] / 1e6:.2f}M ops) |",
            ]
            if m.get("micronet_score_16bit_with_exit") is not None:
                lines.append(f"| MicroNet score, 16-bit, with the exit (expected ops) | "
                             f"{m['micronet_score_16bit_with_exit']:.6f} ({m['micronet_ops_16bit_with_exit'] / 1e6:.2f}M ops) |")
        lines.append("")
        if shipped.get("note"):
            lines += [shipped["note"], ""]
    lines += usage_section(name, preset, shipped)
    lines += paper_section(preset, entry)
    return "\n".join(lines)


def usage_section(name, preset, shipped):
    """How to train and run the preset; an early-exit preset (a threshold in its recipe's ``exit``)
    runs with :class:`tfgated.exits.EarlyExitModel` (``[main, exit]`` outputs take no single label)."""
    from tfgated.zoo import registry

    threshold = registry.exit_threshold(name)
    weights = ("the shipped weights" if shipped.get("file") else "fresh weights (none shipped)")
    test = f'test = load_dataset("{preset.get("dataset") or "fashion_mnist"}", pixels="raw").test  # raw pixels, 0-255'
    if threshold is None:
        train = f"Train here: `{registry.train_command(name)}`."
        code = ["from tfgated import zoo", "from tfgated.data import load_dataset", "",
                f'model = zoo.load("{name}")  # {weights}, compiled per the recipe', test, "model.evaluate(test)"]
    else:
        train = ("Train the exit head here (on the backbone's weights, frozen): "
                 + (f"`{shipped['trained_by']}`." if shipped.get("trained_by") else "`tfgated.exits.train_exit`."))
        code = ["from tfgated import zoo", "from tfgated.data import load_dataset",
                "from tfgated.exits import EarlyExitModel", "",
                f'model = zoo.load("{name}")  # {weights}; outputs [main, exit] probabilities', test,
                f"result = EarlyExitModel(model, threshold={threshold:g}).predict(test)  # the rest runs only where needed",
                "print(result.accuracy, result.exit_ratio, result.mean_macs)"]
    return [train, "", "## Usage", "", "```python", *code, "```", ""]


def _shown(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.6g}"


def measured_value(preset, entry, field):
    """The measured counterpart ``field`` of a paper number: from the golden ``entry``
    (counts) or the shipped weights' measurement (accuracy, score); None if neither has it."""
    if field in entry:
        return entry[field]
    return ((preset.get("weights") or {}).get("measured") or {}).get(field)


def paper_section(preset, entry):
    """The card's "Paper" section: the paper's numbers (:mod:`tfgated.zoo.papers`) beside
    the numbers measured here."""
    paper = preset.get("paper")
    if not paper:
        return []
    lines = ["## Paper", "", f"Source: {paper.get('source', '-')}", "", f"Where: {paper.get('table', '-')}", ""]
    numbers = paper.get("numbers") or {}
    measured = paper.get("measured") or {}
    if numbers:
        lines += [
            "Published values (accuracies and shares as fractions; a range or a word as written); beside each, the same "
            "quantity measured here where there is one (`-`: none measured here).",
            "",
            "| quantity | paper | measured here |",
            "|---|---|---|",
        ]
        for key, value in numbers.items():
            field = measured.get(key)
            here = None if field is None else measured_value(preset, entry, field)
            shown = "-" if here is None else f"{_shown(here)} (`{field}`)"
            lines.append(f"| {key} | {value} | {shown} |")
        lines.append("")
    else:
        lines += ["No published number for this preset is transcribed.", ""]
    if paper.get("note"):
        lines += [paper["note"], ""]
    return lines


def generate(pattern="*"):
    """``(golden dict, {card path: text})`` for the presets matching ``pattern``;
    entries of other presets are kept from the committed golden file."""
    from tfgated.zoo import registry

    names = registry.list_models(pattern)
    golden = {} if pattern == "*" else registry.golden()
    cards = {}
    for name in names:
        golden[name] = measure(name)
        print(f"{name}: {golden[name]['params']:,} params, {golden[name]['macs']:,} MACs", flush=True)
        cards[os.path.join(registry.CARDS_DIR, f"{name}.md")] = render_card(name, golden[name])
    golden = dict(sorted(golden.items()))
    return golden, cards


def golden_text(golden):
    return json.dumps(golden, indent=1, sort_keys=True) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfgated.zoo.make_golden", description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default="*", help="only these presets (fnmatch)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfgated.zoo import registry

    golden, cards = generate(args.pattern)
    outputs = {registry.GOLDEN_PATH: golden_text(golden), **cards}
    if args.check:
        stale = []
        for path, text in outputs.items():
            if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
                stale.append(path)
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        write_atomic(path, text)
    print(f"wrote {registry.GOLDEN_PATH} and {len(cards)} cards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
