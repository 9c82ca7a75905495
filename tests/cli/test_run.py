"""Tests of ``python -m tfgated run`` (tfgated.cli.run) on real Fashion-MNIST, tiny budget.

One tiny run is made in two invocations: the first stops after the pruning stage, the second
resumes (stages 1-4 skipped, their files untouched) and finishes; a third invocation finds
everything done. The other tests read that run folder.
"""

import contextlib
import io
import json
import os

import keras
import numpy as np
import pytest

from tfgated.cli import run as run_cli
from tfgated.cli.pipeline import BUDGETS, STAGES, Budget, Run, format_table, get_budget
from tfgated.cli.pipeline.deploy import round_to_float16

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="Fashion-MNIST IDX files (Debian dataset-fashion-mnist) not installed"
)

EARLY = ("search", "improve", "train", "prune")
LATE = ("accelerate", "quantize", "export")


def _run(argv):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = run_cli.main(argv)
    return status, buffer.getvalue()


def _stage_dir(run_dir, stage):
    return os.path.join(run_dir, f"{STAGES.index(stage) + 1:02d}_{stage}")


def _mtimes(run_dir, stages):
    found = {}
    for stage in stages:
        folder = _stage_dir(run_dir, stage)
        for name in ("state.json", "model.keras"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                found[path] = os.stat(path).st_mtime_ns
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("pipeline") / "run")
    argv = ["--budget", "tiny", "--run-dir", run_dir, "--verbose", "0"]
    status1, out1 = _run(argv + ["--stop-after", "prune"])
    states_after_first = {s: os.path.exists(os.path.join(_stage_dir(run_dir, s), "state.json")) for s in STAGES}
    mtimes = _mtimes(run_dir, EARLY)
    status2, out2 = _run(argv)
    return {
        "run_dir": run_dir,
        "argv": argv,
        "first": (status1, out1),
        "second": (status2, out2),
        "states_after_first": states_after_first,
        "mtimes": mtimes,
    }


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_stop_after_prune_runs_only_the_first_four_stages(tiny_run):
    status, out = tiny_run["first"]
    assert status == 0
    for index, stage in enumerate(EARLY, start=1):
        assert f"[{index}/7] {stage}: done in" in out
    assert "[5/7]" not in out
    assert "Stopped after stage 'prune'" in out
    assert tiny_run["states_after_first"] == {s: s in EARLY for s in STAGES}


@pytest.mark.slow
def test_resume_skips_finished_stages_and_keeps_their_files(tiny_run):
    status, out = tiny_run["second"]
    assert status == 0
    for index, stage in enumerate(EARLY, start=1):
        assert f"[{index}/7] {stage}: skipped (done)" in out
    for index, stage in enumerate(LATE, start=5):
        assert f"[{index}/7] {stage}: done in" in out
    assert tiny_run["mtimes"], "expected state and model files of the first four stages"
    assert _mtimes(tiny_run["run_dir"], EARLY) == tiny_run["mtimes"]


@pytest.mark.slow
def test_end_to_end_files_table_and_parity(tiny_run):
    run_dir = tiny_run["run_dir"]
    for stage in STAGES:
        with open(os.path.join(_stage_dir(run_dir, stage), "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        assert state["status"] == "done" and state["stage"] == stage and state["seconds"] >= 0
        assert state["machine"]["wall_seconds"] == state["seconds"] and state["machine"]["cpus"] == os.cpu_count()
        if stage not in ("improve", "export"):
            assert os.path.getsize(os.path.join(_stage_dir(run_dir, stage), "model.keras")) > 0
    summary = _summary(run_dir)
    assert [r["stage"] for r in summary["rows"]] == ["search", "train", "prune", "accelerate", "16-bit", "export"]
    machine = summary["machine"]  # stages 1-4 ran in the first invocation, 5-7 in the second: all measured
    assert machine["stages_measured"] == len(STAGES) and machine["cpus"] == os.cpu_count()
    assert machine["other_cpu_share"] == pytest.approx(
        machine["other_cpu_seconds"] / (summary["total_seconds"] * machine["cpus"]))
    for row in summary["rows"]:
        assert row["storage"] > 0 and row["ops"] > 0
        assert row["score"] == pytest.approx(row["storage"] / 36.5e6 + row["ops"] / 10.49e9)
    rows = {r["stage"]: r for r in summary["rows"]}
    # pruning removes weights and operations; the exit head adds parameters; 16 bits halve the storage
    assert rows["prune"]["nonzero_params"] < rows["train"]["nonzero_params"]
    assert rows["prune"]["ops"] < rows["train"]["ops"]
    assert rows["prune"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows["accelerate"]["params"] > rows["prune"]["params"]
    # precision_bits 16: every row is a 16-bit score, counted on float16 weights
    assert BUDGETS["tiny"].precision_bits == 16
    assert [r["bits"] for r in summary["rows"]] == [16] * len(summary["rows"])
    for key in ("storage", "ops", "score", "accuracy", "exit_ratio"):
        assert rows["16-bit"][key] == rows["accelerate"][key], key  # already 16-bit: rounding changes nothing
    # the export row scores the exported file: the 16-bit model with its exit
    assert {k: v for k, v in rows["export"].items() if k not in ("stage", "accuracy")} == {
        k: v for k, v in rows["16-bit"].items() if k not in ("stage", "accuracy")}
    # the exported files exist, carry the exit, parity was checked in LiteRT and ONNX Runtime and passed
    exported = summary["exported"]
    assert exported["tflite"].endswith(".tflite") and exported["onnx"].endswith(".onnx")
    for key, runtime in (("tflite", "litert"), ("onnx", "onnxruntime")):
        assert os.path.getsize(exported[key]) > 0
        assert os.path.exists(exported[key] + ".json")
        with open(exported[key] + ".json", encoding="utf-8") as f:
            sidecar = json.load(f)
        assert sidecar["early_exit"]["threshold"] == pytest.approx(rows["16-bit"]["threshold"])
        assert sidecar["early_exit"]["form"] == ("conditional" if key == "tflite" else "masked")
        assert summary["parity"][key]["passed"] is True
        assert summary["parity"][key]["runtime"] == runtime
        assert summary["parity"][key]["examples"] == BUDGETS["tiny"].parity_examples
    for plot in summary["plots"]:
        assert plot.endswith(".png") and os.path.getsize(plot) > 0
    assert any(p.endswith("stages.png") for p in summary["plots"])
    assert summary["accuracy_plot"] == os.path.join(run_dir, "accuracy_vs_score.png")
    assert os.path.getsize(summary["accuracy_plot"]) > 0
    # the printed and written table
    _, out = tiny_run["second"]
    with open(os.path.join(run_dir, "summary.md"), encoding="utf-8") as f:
        markdown = f.read()
    for text in (out, markdown):
        assert "| stage | bits | accuracy | parameters | storage (32-bit eq.) | MicroNet ops |" in text
        for stage in ("search", "train", "prune", "accelerate", "16-bit", "export"):
            assert f"| {stage} |" in text
        assert "Rows: search = best searched network" in text  # the legend
        assert "Next steps:" in text and summary["final_model"] in text
    assert "Parity tflite: passed" in out and "Parity onnx: passed" in out
    assert f"Plots: {os.path.join(run_dir, 'plots')}" in out
    assert "Stage times:" in out


# table row -> the stage whose model.keras the row measures
ROW_STAGES = {"search": "search", "train": "train", "prune": "prune", "accelerate": "accelerate",
              "16-bit": "quantize"}


@pytest.mark.slow
def test_row_accuracies_are_the_written_models_test_accuracies(tiny_run):
    from tfgated.exits import EarlyExitModel
    from tfgated.export import run_tflite
    from tfgated.io import load_model

    run_dir = tiny_run["run_dir"]
    summary = _summary(run_dir)
    rows = {r["stage"]: r for r in summary["rows"]}
    assert set(rows) == set(ROW_STAGES) | {"export"}
    x, y = Run("fashion_mnist", BUDGETS["tiny"], run_dir, seed=0).test_arrays()
    assert len(y) > 0
    for name, stage in ROW_STAGES.items():
        model = load_model(os.path.join(_stage_dir(run_dir, stage), "model.keras"))
        for w in model.get_weights():  # every scored model holds float16 values (precision_bits 16)
            if w.dtype.kind == "f":
                np.testing.assert_array_equal(w, w.astype(np.float16).astype(w.dtype), err_msg=name)
        if name == "train":  # counted at 16 bits: about half the storage of the 32-bit count
            from tfgated.micronet import micronet_score

            assert rows[name]["storage"] == pytest.approx(micronet_score(model, bits=16).params_storage)
            assert rows[name]["storage"] < 0.6 * micronet_score(model, bits=32).params_storage
        if name in ("accelerate", "16-bit"):
            result = EarlyExitModel(model, rows[name]["threshold"]).predict(x, labels=y)
            assert rows[name]["accuracy"] == result.accuracy, name
            assert rows[name]["exit_ratio"] == result.exit_ratio, name
        else:
            predictions = model.predict(x, batch_size=256, verbose=0)
            assert rows[name]["accuracy"] == float(np.mean(predictions.argmax(axis=1) == y)), name
    lite = run_tflite(summary["exported"]["tflite"], x)
    assert rows["export"]["accuracy"] == float(np.mean(lite.argmax(axis=1) == y))


@pytest.mark.slow
def test_exported_files_match_the_16bit_keras_network_with_its_exit(tiny_run):
    from tfgated.data import load_dataset
    from tfgated.exits import EarlyExitModel
    from tfgated.export import run_onnx, run_tflite

    run_dir = tiny_run["run_dir"]
    summary = _summary(run_dir)
    with_exit = keras.saving.load_model(os.path.join(_stage_dir(run_dir, "quantize"), "model.keras"), safe_mode=True)
    x = next(iter(load_dataset("fashion_mnist", limit=64, validation_split=0.25, seed=0).test))[0].numpy()[:16]
    expected = EarlyExitModel(with_exit, summary["stages"]["export"]["threshold"]).predict(x).probabilities
    np.testing.assert_allclose(run_onnx(summary["exported"]["onnx"], x), expected, atol=1e-4)
    lite = run_tflite(summary["exported"]["tflite"], x)
    assert (lite.argmax(1) == expected.argmax(1)).mean() >= 0.9
    # weights of the 16-bit stage are float16 values
    for w in with_exit.get_weights():
        if w.dtype.kind == "f":
            np.testing.assert_array_equal(w, w.astype(np.float16).astype(w.dtype))


@pytest.mark.slow
def test_third_run_finds_everything_done(tiny_run):
    run_dir = tiny_run["run_dir"]
    before = _mtimes(run_dir, STAGES)
    status, out = _run(tiny_run["argv"])
    assert status == 0
    for index, stage in enumerate(STAGES, start=1):
        assert f"[{index}/7] {stage}: skipped (done)" in out
    assert _mtimes(run_dir, STAGES) == before
    assert "| 16-bit | 16 |" in out


@pytest.mark.slow
def test_run_dir_of_another_budget_is_refused(tiny_run, capsys):
    status = run_cli.main(["--budget", "small", "--run-dir", tiny_run["run_dir"], "--verbose", "0"])
    assert status == 2
    err = capsys.readouterr().err
    assert "budget='tiny'" in err and "budget='small'" in err


def test_cifar100_without_prepared_data_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "cifar"
    status = run_cli.main(["--dataset", "cifar100", "--budget", "tiny", "--run-dir", str(run_dir)])
    assert status == 2
    assert "cifar100" in capsys.readouterr().err
    assert not run_dir.exists()


def test_bad_arguments():
    with pytest.raises(SystemExit):
        run_cli.build_parser().parse_args(["--budget", "huge"])
    with pytest.raises(ValueError, match="Unknown stage"):
        run_cli.run_pipeline(budget="tiny", stop_after="deploy")
    with pytest.raises(ValueError, match="Unknown budget"):
        run_cli.run_pipeline(budget="huge")


def test_round_to_float16_and_table():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.set_weights([np.full((3, 4), 0.1, "float32"), np.full((4,), 1 / 3, "float32")])
    round_to_float16(model)
    kernel, bias = model.get_weights()
    assert kernel[0, 0] == np.float32(np.float16(0.1)) and kernel[0, 0] != np.float32(0.1)
    assert bias[0] == np.float32(np.float16(1 / 3))
    row = {"stage": "prune", "bits": 32, "accuracy": 0.9, "params": 100, "nonzero_params": 40, "storage": 50.0,
           "ops": 1000.0, "storage_score": 50 / 36.5e6, "ops_score": 1000 / 10.49e9, "score": 0.0}
    table = format_table([row])
    assert table.splitlines()[2].startswith("| prune | 32 | 0.9000 | 40 / 100 | 50 | 1,000 |")


def test_budgets_are_data():
    assert list(BUDGETS) == ["tiny", "small", "paper"]
    tiny = get_budget("tiny")
    assert tiny is BUDGETS["tiny"] and tiny.name == "tiny"
    assert tiny.prune_schedule == (0.3, 0.5)
    assert get_budget(tiny) is tiny
    values = {k: v for k, v in tiny.to_dict().items() if k != "name"}
    assert Budget.from_dict("mine", values) == Budget(**{**tiny.to_dict(), "name": "mine"})
    with pytest.raises(ValueError, match=r"missing=\['train_epochs'\], unknown=\['train_epoch'\]"):
        Budget.from_dict("bad", {**{k: v for k, v in values.items() if k != "train_epochs"}, "train_epoch": 1})
    with pytest.raises(ValueError, match="Expected budget to be a name or a Budget"):
        get_budget(3)


def test_missing_model_of_a_finished_stage_names_the_fix(tmp_path):
    from tfgated.cli.pipeline.state import load_stage_model

    with pytest.raises(FileNotFoundError, match="of a finished stage is missing. Delete that stage's state.json"):
        load_stage_model(tmp_path / "01_search" / "model.keras")


def test_cpu_meter_separates_this_process_from_the_others(monkeypatch):
    from tfgated.cli.pipeline import machine

    clock = {"wall": 100.0, "own": 10.0, "busy": 1000.0}
    monkeypatch.setattr(machine.time, "time", lambda: clock["wall"])
    monkeypatch.setattr(machine, "_own_cpu_seconds", lambda: clock["own"])
    monkeypatch.setattr(machine, "_machine_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    meter = machine.CpuMeter().start()
    clock.update(wall=110.0, own=24.0, busy=1020.0)  # 10 s: this process 14 CPU s, the machine 20
    record = meter.stop()
    assert record["wall_seconds"] == 10.0 and record["cpu_seconds"] == 14.0
    assert record["other_cpu_seconds"] == pytest.approx(6.0) and record["other_cpu_share"] == pytest.approx(0.3)


def test_machine_busy_seconds_reads_proc_stat():
    from tfgated.cli.pipeline.machine import _machine_busy_seconds

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    first = _machine_busy_seconds()
    sum(i * i for i in range(2_000_000))  # some CPU work in between
    assert _machine_busy_seconds() > first > 0


def test_stage_estimates_count_seeds_candidates_and_exit_pruning():
    import dataclasses

    from tfgated.cli.pipeline.progress import estimate_seconds
    from tfgated.improve import SIPA_GROUPS

    paper = BUDGETS["paper"]
    one_seed = dataclasses.replace(paper, improve_seeds=1)
    trials = 1 + sum(len(candidates) for _, candidates in SIPA_GROUPS)
    assert estimate_seconds("improve", paper) == pytest.approx(paper.improve_seeds * estimate_seconds("improve", one_seed))
    per_trial = estimate_seconds("improve", one_seed) / trials
    assert per_trial == pytest.approx(estimate_seconds("improve", dataclasses.replace(one_seed, improve_groups=[])))
    no_prune = dataclasses.replace(paper, exit_prune=None)
    rounds = len(paper.exit_prune["schedule"]) * paper.exit_prune["epochs"]
    assert estimate_seconds("accelerate", paper) == pytest.approx(
        estimate_seconds("accelerate", no_prune) * (paper.exit_epochs + rounds) / paper.exit_epochs)
