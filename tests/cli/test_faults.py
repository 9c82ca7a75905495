"""Fault injection: real ``python -m tfgated train`` processes killed with SIGKILL at named points
(``TFGATED_FAULT``, :mod:`tfgated.faults`), inside the checkpoint write too, then rerun; two
processes on one run folder; a failed start leaves no folder. ``docs/reliability.md`` lists
what each test guarantees."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tfgated.__main__ import main as cli_main
from tfgated.checkpoints import append_csv_row, keep_csv_rows, read_csv_rows
from tfgated.runlock import RunFolderBusy, run_folder_lock

EPOCHS = 3


def _argv(model_file, run):
    return ["train", "--model", model_file, "--limit", "200", "--epochs", str(EPOCHS), "--batch-size", "50",
            "--run-dir", run, "--verbose", "0"]


def _launch(model_file, run, fault=None, wait=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    env.pop("TFGATED_FAULT", None)
    if fault:
        env["TFGATED_FAULT"] = fault
    cmd = [sys.executable, "-m", "tfgated", *_argv(model_file, run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _epochs(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def _pointer(run):
    with open(os.path.join(run, "backup", "latest.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_sigkill_at_every_point_then_the_rerun_resumes_with_a_consistent_history(tmp_path, model_file):
    run = str(tmp_path / "run")
    # 1. killed INSIDE the checkpoint write of epoch 1 (temporary weights file half written)
    rc, _, err = _launch(model_file, run, "checkpoint.weights@2")
    assert rc == -signal.SIGKILL, err[-2000:]
    assert _pointer(run)["epoch"] == 1  # the committed checkpoint is still epoch 0's (1 epoch done)
    assert glob.glob(os.path.join(run, "backup", ".*.tmp*"))  # the torn temporary file
    assert _epochs(os.path.join(run, "history.csv")) == ["0", "1"]  # epoch 1 logged, not committed
    # 2. rerun, killed half-way through its first CSV row (the gate rates of the redone epoch 1)
    rc, out, err = _launch(model_file, run, "history.row@1")
    assert rc == -signal.SIGKILL, err[-2000:]
    assert not glob.glob(os.path.join(run, "backup", ".*.tmp*"))  # leftovers removed on restore
    assert _epochs(os.path.join(run, "history.csv")) == ["0"]  # the redone epoch's old row dropped
    # 3. killed after the weights file of epoch 1 is renamed, before the pointer commits it
    rc, _, err = _launch(model_file, run, "checkpoint.renamed@1")
    assert rc == -signal.SIGKILL, err[-2000:]
    assert _pointer(run)["epoch"] == 1
    # 4. killed after main.keras is written, before the backup is removed
    rc, _, err = _launch(model_file, run, "train.main_saved")
    assert rc == -signal.SIGKILL, err[-2000:]
    assert os.path.exists(os.path.join(run, "main.keras")) and os.path.isdir(os.path.join(run, "backup"))
    # 5. the last rerun finishes
    rc, out, err = _launch(model_file, run)
    assert rc == 0, err[-2000:]
    assert "Main phase already done" in out
    assert _epochs(os.path.join(run, "history.csv")) == ["0", "1", "2"]
    assert _epochs(os.path.join(run, "gate_rates.csv")) == ["0", "1", "2"]
    assert os.path.exists(os.path.join(run, "metrics.json")) and not os.path.exists(os.path.join(run, "backup"))
    assert not glob.glob(os.path.join(run, "**", ".*.tmp*"), recursive=True)


@pytest.mark.slow
def test_a_second_training_is_refused_and_a_killed_holder_is_taken_over(tmp_path, model_file):
    run = str(tmp_path / "run")
    first = _launch(model_file, run, "checkpoint.begin@2:stop", wait=False)  # stops holding the lock
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not os.path.exists(os.path.join(run, "backup", "latest.json")):
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.5)
        rc, _, err = _launch(model_file, run)
        assert rc == 2
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and f"in use by PID {first.pid} " in lines[-1], err[-2000:]
        assert _epochs(os.path.join(run, "history.csv")) == ["0", "1"]  # the refused process wrote nothing
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock
        first.communicate()
    rc, out, err = _launch(model_file, run)  # the stale lock (and PID line) is taken over
    assert rc == 0, err[-2000:]
    assert _epochs(os.path.join(run, "history.csv")) == ["0", "1", "2"]


@pytest.mark.slow
def test_a_busy_run_folder_is_refused_with_the_holders_pid(tmp_path, model_file, capsys):
    run = str(tmp_path / "run")
    with run_folder_lock(run):
        assert cli_main(_argv(model_file, run)) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"in use by PID {os.getpid()} " in err
        with pytest.raises(RunFolderBusy, match="only one process may write it"):
            with run_folder_lock(run):
                pass
    assert os.listdir(run) == [".lock"]  # refused before anything was written


def test_failed_starts_leave_no_run_folder(tmp_path, model_file, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", "--model", model_file, "--run-dir", str(run), "--dataset", "cifar10"]) == 2
    assert not run.exists()
    # an annealing the run would refuse is refused before config.json is written
    argv = _argv(model_file, str(run))
    assert cli_main(argv + ["--anneal-target", "0.9", "1.5", "2"]) == 2
    assert "Expected end in [0, 1]" in capsys.readouterr().err
    assert cli_main(argv + ["--anneal-target", "0.9", "0.5", "2.5"]) == 2
    assert not run.exists()
    # a failure inside the locked block of a folder it created removes that folder again
    with pytest.raises(RuntimeError):
        with run_folder_lock(run):
            raise RuntimeError("boom")
    assert not run.exists()


def test_csv_logs_drop_a_torn_row_and_a_second_header(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.5\nepoch,loss\n1,1.2\n2,1.")  # a second writer's header, a torn row
    assert read_csv_rows(path) == (["epoch", "loss"], [{"epoch": "0", "loss": "1.5"}, {"epoch": "1", "loss": "1.2"}])
    append_csv_row(path, {"epoch": "2", "loss": "1.0", "accuracy": "0.5"})  # a new key widens the header
    header, rows = read_csv_rows(path)
    assert header == ["epoch", "loss", "accuracy"] and [r["epoch"] for r in rows] == ["0", "1", "2"]
    keep_csv_rows(path, lambda row: int(row["epoch"]) < 1)
    assert path.read_text() == "epoch,loss,accuracy\n0,1.5,\n"


@pytest.mark.slow
def test_busy_pipeline_and_search_folders_are_refused(tmp_path, capsys):
    run = str(tmp_path / "sipa")
    with run_folder_lock(run):
        assert cli_main(["run", "--budget", "tiny", "--run-dir", run, "--verbose", "0"]) == 2
        assert f"in use by PID {os.getpid()} " in capsys.readouterr().err
    assert os.listdir(run) == [".lock"]  # run.json not written
    directory = str(tmp_path / "search")
    with run_folder_lock(directory, name=".proj.lock"):
        argv = ["search", "--limit", "100", "--trials", "1", "--epochs", "1", "--directory", directory,
                "--project-name", "proj", "--output", str(tmp_path / "best.json"), "--verbose", "0"]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "search project" in err and f"in use by PID {os.getpid()} " in err
    assert os.listdir(directory) == [".proj.lock"]  # no project folder, no report
