"""Study 8 of issue 24: SIPA's discussion claims about upsampling and about the search factors.

SIPA (Lee et al., MicroNet Challenge 2019) upsamples its input by nearest neighbour before the
stem and says upsampling helps, and that among the factors of its search the expansion ratio
matters most. This script changes one factor of ``sipa_fashion_mnist`` at a time and trains each
arm from scratch under the preset's recipe (SGD 0.05, cosine, label smoothing 0.1; float32) for
``--epochs`` epochs on the first ``--limit`` training images, then scores it on the whole test split:

* ``nearest``: the preset as it is (input 28 -> 40 by nearest neighbour, SIPA's form);
* ``bilinear``: the same size, bilinear interpolation;
* ``no_upsampling``: resolution 1.0, the network runs at 28x28;
* ``expansion_3``: every expansion ratio 6 -> 3;
* ``kernel_5``: every depthwise kernel 3 -> 5;
* ``se_0``: no squeeze-and-excitation;
* ``width_0.7``: width coefficient 0.9 -> 0.7;
* ``depth_0.5``: depth coefficient 1.0 -> 0.5 (the three two-block stages keep one block).

For every arm: test top-1, MACs and parameters, and against ``nearest`` the change in top-1 and in
MACs. A factor's sensitivity is the change in top-1 per halving of the MACs (``points_per_mac_halving``,
log2 of the MAC ratio), so factors that cut different amounts of work compare. One seed per arm:
``--seeds`` repeats the reference arm to put a noise figure beside the differences, and ``--repeat ARM``
trains an arm with a second seed as well (its mean is then compared).

    python benchmarks/sipa_factors.py              # 8 arms + 1 repeat, about 30 minutes on 2 cores
    python benchmarks/sipa_factors.py --quick      # smoke run, output under runs/

Each arm keeps a resumable run folder and a row file under ``runs/sipa_factors/``. Writes
``benchmarks/results/sipa_factors.json`` and ``sipa_factors.png`` (top-1 against MACs per arm).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from study_runs import resumable_rows, write_result  # noqa: E402

RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(os.path.dirname(HERE), "runs")
PRESET = "sipa_fashion_mnist"
REFERENCE = "nearest"


def _blocks(**change):
    """SIPA's reference blocks with ``change`` applied to every block (``expand`` 1 stays 1)."""
    from tfgated.blocks import SIPA_REFERENCE_BLOCKS, decode_block, encode_block

    blocks = []
    for text in SIPA_REFERENCE_BLOCKS:
        args = decode_block(text)
        for key, value in change.items():
            if not (key == "expand" and args["expand"] == 1):
                args[key] = value
        blocks.append(encode_block(args))
    return tuple(blocks)


#: arm -> (what it changes, factor, architecture overrides of the preset (a callable: built lazily))
ARMS = {
    "nearest": ("the preset: 28 -> 40 by nearest neighbour (SIPA's form)", "upsampling", dict),
    "bilinear": ("28 -> 40 by bilinear interpolation", "upsampling", lambda: {"upsampling": "bilinear"}),
    "no_upsampling": ("no upsampling: resolution 1.0, 28x28 throughout", "upsampling", lambda: {"resolution": 1.0}),
    "expansion_3": ("every expansion ratio 6 -> 3", "expansion", lambda: {"blocks": _blocks(expand=3)}),
    "kernel_5": ("every depthwise kernel 3 -> 5", "kernel", lambda: {"blocks": _blocks(kernel=5)}),
    "se_0": ("no squeeze-and-excitation", "se_ratio", lambda: {"blocks": _blocks(se_ratio=0.0)}),
    "width_0.7": ("width coefficient 0.9 -> 0.7", "width", lambda: {"width": 0.7}),
    "depth_0.5": ("depth coefficient 1.0 -> 0.5", "depth", lambda: {"depth": 0.5}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--epochs", type=int, default=2, help="training epochs per arm (default 2)")
    p.add_argument("--limit", type=int, default=12000, help="first N training images (default 12000; 0: all)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of the reference arm (default 2: one repeat)")
    p.add_argument("--repeat", nargs="*", choices=list(ARMS), default=[],
                   help="arms also trained with seed 1, e.g. one whose difference stands out (default: none)")
    p.add_argument("--run-dir", default=None, help="default runs/sipa_factors[_quick]")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/sipa_factors.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 arms, 256 images, 1 epoch")
    args = p.parse_args(argv)
    if REFERENCE not in args.arms:
        p.error(f"--arms must include the reference arm {REFERENCE!r}")
    if args.quick:
        args.arms, args.limit, args.epochs, args.seeds = [REFERENCE, "bilinear", "expansion_3"], 256, 1, 1
    name = "sipa_factors_quick" if args.quick else "sipa_factors"
    args.run_dir = args.run_dir or os.path.join(RUNS, name)
    args.output = args.output or (
        os.path.join(args.run_dir, "sipa_factors.json") if args.quick else os.path.join(RESULTS, "sipa_factors.json")
    )
    return args


def recipe_overrides(epochs):
    """The preset's training recipe as switches for a model file (float32: its 16 bits are deployment)."""
    import dataclasses

    from tfgated import zoo
    from tfgated.recipes import Recipe

    recipe, _ignored = Recipe.from_preset(zoo.get_preset(PRESET)["recipe"])
    defaults = Recipe()
    changed = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
               if getattr(recipe, f.name) != getattr(defaults, f.name)}
    return {**changed, "epochs": epochs}


def arm_name(point):
    arm, seed = point
    return arm if seed == 0 else f"{arm}_seed{seed}"


def train_arm(point, folder, args):
    """Build the arm's network, train it in ``folder`` (resumable) and return its row."""
    import keras

    from tfgated import zoo
    from tfgated.cli.train import TrainOptions, train
    from tfgated.complexity import count

    arm, seed = point
    overrides = ARMS[arm][2]()
    initial = os.path.join(folder, "initial.keras")
    if not os.path.exists(initial):
        keras.utils.set_random_seed(seed)
        zoo.load(PRESET, weights=None, compile=False, **overrides).save(initial)
    model_size = count(keras.models.load_model(initial, compile=False))
    t0 = time.time()
    metrics = train(initial, os.path.join(folder, "run"),
                    TrainOptions(limit=args.limit or None, overrides=recipe_overrides(args.epochs), seed=seed,
                                 verbose=2))
    test = metrics["test"]
    return {"arm": arm, "seed": seed, "what": ARMS[arm][0], "factor": ARMS[arm][1],
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
            "top1": test["top1"], "test_examples": test["examples"], "macs": float(model_size.macs),
            "params": int(model_size.params), "seconds": time.time() - t0}


def compare(rows):
    """Each arm (the mean over its seeds) against the reference arm's mean: change in top-1 and in MACs."""
    by_arm = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    refs = by_arm[REFERENCE]
    ref_top1 = sum(r["top1"] for r in refs) / len(refs)
    ref_macs = refs[0]["macs"]
    out = []
    for arm, runs in by_arm.items():
        if arm == REFERENCE:
            continue
        top1 = sum(r["top1"] for r in runs) / len(runs)
        ratio = runs[0]["macs"] / ref_macs
        points = 100.0 * (top1 - ref_top1)
        halvings = -math.log2(ratio)
        out.append({"arm": arm, "factor": runs[0]["factor"], "top1": top1, "seeds": [r["top1"] for r in runs],
                    "top1_change_points": points, "mac_ratio": ratio,
                    "points_per_mac_halving": points / halvings if abs(halvings) > 0.05 else None})
    return {"reference_top1": ref_top1, "reference_seeds": [r["top1"] for r in refs],
            "reference_spread_points": 100.0 * (max(r["top1"] for r in refs) - min(r["top1"] for r in refs)),
            "arms": out}


def verdicts(comparison):
    """SIPA's two claims on the measured arms."""
    by = {a["arm"]: a for a in comparison["arms"]}
    spread = comparison["reference_spread_points"]
    result = {}
    if "no_upsampling" in by:
        change = by["no_upsampling"]["top1_change_points"]
        result["upsampling_helps"] = {"nearest_minus_none_points": -change, "holds": bool(-change > spread),
                                      "noise_points": spread}
    if "bilinear" in by:
        change = by["bilinear"]["top1_change_points"]
        result["nearest_vs_bilinear"] = {"nearest_minus_bilinear_points": -change, "noise_points": spread}
    search = [a for a in comparison["arms"] if a["factor"] not in ("upsampling",)
              and a["points_per_mac_halving"] is not None]
    if search:
        changes = {a["arm"]: a["top1_change_points"] for a in search}
        largest = max(changes, key=lambda arm: abs(changes[arm]))
        result["expansion_matters_most"] = {"top1_change_points": changes, "largest": largest,
                                            "holds": bool(ARMS[largest][1] == "expansion"
                                                          and abs(changes[largest]) > spread),
                                            "noise_points": spread}
    return result


def table(rows, comparison):
    by = {a["arm"]: a for a in comparison["arms"]}
    lines = ["| arm | change | MACs | params | top-1 | top-1 change (points) | points per MAC halving |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = by.get(r["arm"]) if r["arm"] != REFERENCE else None
        change = "-" if c is None else f"{c['top1_change_points']:+.2f}"
        per = "-" if c is None or c["points_per_mac_halving"] is None else f"{c['points_per_mac_halving']:+.2f}"
        seed = f" (seed {r['seed']})" if r["seed"] else ""
        lines.append(f"| {r['arm']}{seed} | {r['what']} | {r['macs'] / 1e6:.2f}M | {r['params']:,} | {r['top1']:.4f} "
                     f"| {change} | {per} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfgated.io import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        color = "black" if r["arm"] == REFERENCE else ("#d62728" if r["factor"] == "upsampling" else "#1f77b4")
        ax.scatter(r["macs"] / 1e6, r["top1"], color=color, s=20)
        ax.annotate(r["arm"], (r["macs"] / 1e6, r["top1"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (millions, log scale)")
    ax.set_ylabel("test top-1")
    ax.set_title("sipa_fashion_mnist, one factor changed at a time (red: upsampling)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from tfgated.io import machine_info

    os.makedirs(args.run_dir, exist_ok=True)
    started = time.time()
    command = "python benchmarks/sipa_factors.py " + " ".join(argv if argv is not None else sys.argv[1:])
    points = [(REFERENCE, seed) for seed in range(args.seeds)] + [(a, 0) for a in args.arms if a != REFERENCE]
    points += [(a, 1) for a in args.repeat if a != REFERENCE]
    rows = resumable_rows(points, arm_name, args.run_dir, "sipa_factors_row.json",
                          lambda point, folder: train_arm(point, folder, args),
                          lambda row: f"top-1 {row['top1']:.4f} at {row['macs'] / 1e6:.2f}M MACs")
    comparison = compare(rows)
    result = {
        "benchmark": "sipa_factors",
        "command": command,
        "quick": args.quick,
        "preset": PRESET,
        "epochs": args.epochs,
        "train_images": args.limit or "all (54,000 after the validation split)",
        "recipe_overrides": recipe_overrides(args.epochs),
        "paper": {"source": "Lee et al., SIPA (MicroNet Challenge 2019), discussion",
                  "claims": ["upsampling the input by nearest neighbour helps",
                             "among the searched factors the expansion ratio matters most"]},
        "rows": rows,
        "comparison": comparison,
        "verdicts": verdicts(comparison),
        "table_markdown": table(rows, comparison),
        "seconds_total": time.time() - started,
        "machine": machine_info(),
    }
    write_result(result, args.output, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
