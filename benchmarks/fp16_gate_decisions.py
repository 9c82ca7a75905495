"""Gate decisions of float16 TFLite files against Keras, with and without float32 gate networks.

For each shipped preset with data-dependent gates, the folded model's gate decisions (every
``<gate>_step`` layer) are made the output of a probe model, converted to TFLite float16 twice
(as the converter does it, every constant float16; and with the gate networks kept float32 by
:func:`tfgated.export.float16.keep_float32`, what the export does) and run in LiteRT on the first
1,000 test images fed as raw pixels; the decisions are compared with Keras'.

    python benchmarks/fp16_gate_decisions.py
    python benchmarks/fp16_gate_decisions.py --presets gumbel_resnet_fashion_mnist_dep_pg_t0.4

Writes ``benchmarks/results/fp16_gate_decisions.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = 1000


def decision_probe(model):
    """The folded ``model`` with its gate decisions as output, and the data-dependent gates' names."""
    import keras

    from tfgated.export.fold import fold

    folded, report = fold(model, return_report=True)
    steps = [keras.layers.Flatten()(folded.get_layer(f"{gate}_step").output) for gate in report.dependent_masked]
    out = steps[0] if len(steps) == 1 else keras.layers.Concatenate(name="decisions")(steps)
    return keras.Model(folded.inputs, out), tuple(report.dependent_masked)


def file_decisions(probe, scopes, x, folder):
    """Decisions of the probe's float16 file (gate networks float32 when ``scopes``) and its size."""
    from tfgated.export import run_file
    from tfgated.export.convert import convert_tflite, trace

    traced = trace(probe, lambda t: probe(t, training=False), 1)
    data = convert_tflite(traced.concrete, probe, "float16", float32_scopes=scopes)
    path = os.path.join(folder, f"probe_{len(scopes)}.tflite")
    with open(path, "wb") as f:
        f.write(data)
    return run_file(path, x) > 0.5


def measure(name, x, folder):
    from tfgated import zoo

    probe, scopes = decision_probe(zoo.load(name, compile=False))
    keras_decisions = probe.predict(x, batch_size=100, verbose=0) > 0.5
    row = {"preset": name, "gates": len(scopes), "decisions": int(keras_decisions.size),
           "keras_open_fraction": float(keras_decisions.mean())}
    for label, kept in (("all_float16", ()), ("gate_networks_float32", scopes)):
        differ = file_decisions(probe, kept, x, folder) != keras_decisions
        row[label] = {"decisions_differing": int(differ.sum()), "images_with_a_differing_decision": int(differ.any(axis=1).sum())}
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", default=None, help="default: every shipped preset with data-dependent gates")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "fp16_gate_decisions.json"))
    args = parser.parse_args(argv)

    from tfgated import zoo
    from tfgated.data import load_dataset
    from tfgated.io import write_json
    from tfgated.zoo import registry

    names = args.presets or [n for n in sorted(registry.weights_index()) if "_dep_" in n or n == "gumbel_resnet_fashion_mnist"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            dataset = zoo.get_preset(name).get("dataset") or "fashion_mnist"
            splits = load_dataset(dataset, batch_size=EXAMPLES, validation_split=0.0, limit=EXAMPLES, shuffle_buffer=0,
                                  pixels="raw")
            x = np.asarray(next(iter(splits.test))[0], "float32")
            rows.append(measure(name, x, folder))
            print(rows[-1], flush=True)
    write_json(args.output, {
        "benchmark": "fp16_gate_decisions",
        "description": f"gate decisions of float16 TFLite files against Keras on the first {EXAMPLES} test images "
                       "(raw pixels): every constant float16 (the converter alone) against gate networks kept float32",
        "examples": EXAMPLES,
        "rows": rows,
    }, sort_keys=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
