"""Tests of ``python -m tfgated search`` (tfgated.cli.search): user errors, preset files, and a
distributed search (a chief and a worker process) writing the best preset and the trial table."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tfgated.cli.search import load_preset_file, main
from tiny_fixtures import TINY_SIPA_ARCH as TINY_ARCH, TINY_SIPA_SPACE as TINY_SPACE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--trials", "0"], "--trials and --epochs >= 1"),
        (["--arch-json", "[1]"], "--arch-json to be a JSON object"),
        (["--space-json", '{"depth": 1}'], "Unknown search option(s) ['depth']"),
        (["--space-json", '{"width_range": [2, 1]}'], "width_range"),
        (["--constraint-tolerance", "1.5"], "constraint_tolerance in [0, 1)"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    output = tmp_path / "best.json"
    assert main([*argv, "--directory", str(tmp_path / "tuner"), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not output.exists() and not (tmp_path / "tuner").exists()


def test_load_preset_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_preset_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"family": "sipa", "arch": {}}))
    with pytest.raises(ValueError, match="lacks the keys"):
        load_preset_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_preset_file(bad)


# -- distributed search through the CLI -------------------------------------------------


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(tmp_path, role, port, trials=2):
    env = {
        **os.environ,
        "KERASTUNER_TUNER_ID": role,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [
        sys.executable, "-m", "tfgated", "search", "--dataset", "fashion_mnist", "--limit", "200",
        "--batch-size", "64", "--trials", str(trials), "--epochs", "1", "--budget-macs", "1e9",
        "--algorithm", "random", "--verbose", "0", "--arch-json", json.dumps(TINY_ARCH),
        "--space-json", json.dumps(TINY_SPACE), "--directory", str(tmp_path / role),
        "--output", str(tmp_path / "best.json"),
    ]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_distributed_search_chief_and_worker(tmp_path):
    port = _free_port()
    chief = _cli(tmp_path, "chief", port)
    worker = _cli(tmp_path, "worker0", port)
    try:
        worker_out, _ = worker.communicate(timeout=240)
        chief_out, _ = chief.communicate(timeout=60)
    finally:
        for process in (worker, chief):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert worker.returncode == 0, worker_out[-3000:]
    assert chief.returncode == 0, chief_out[-3000:]
    assert "Worker worker0 finished" in worker_out

    # The worker trained both trials (its checkpoints) ...
    worker_dir = tmp_path / "worker0" / "sipa"
    assert len(list(worker_dir.glob("trial_*/checkpoint.weights.h5"))) == 2
    # ... and the chief's oracle recorded them with their fitness.
    trials = [json.loads(p.read_text()) for p in sorted((tmp_path / "chief" / "sipa").glob("trial_*/trial.json"))]
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    for t in trials:
        assert "fitness" in t["metrics"]["metrics"] and "macs" in t["metrics"]["metrics"]
    assert "val acc" in chief_out and "Best trial" in chief_out

    # The chief wrote the best architecture as a preset and the trial table.
    preset = json.loads((tmp_path / "best.json").read_text())
    assert preset["family"] == "sipa" and preset["dataset"] == "fashion_mnist"
    assert preset["input_shape"] == [28, 28, 1] and preset["num_classes"] == 10
    assert preset["search"]["budget"] == 1e9 and preset["search"]["trials"] == 2
    table = json.loads((tmp_path / "best.trials.json").read_text())
    assert len(table) == 2
    assert (tmp_path / "best.trials.csv").read_text().startswith("trial,status,fitness,val_accuracy,macs")
    model = load_preset_file(tmp_path / "best.json")
    assert model.output_shape == (None, 10)
