"""``python -m tfgated train --strategy multi_worker``: two worker processes on 127.0.0.1 ports
(``TF_CONFIG``), compared with a single-process run on the same data; the chief alone writes the
run folder; a killed worker leaves a state the next launch of both resumes from.

Each launch starts two TensorFlow processes that train together over gRPC collectives, so the
tests are slow (about a minute per launch on two CPU cores) and bounded by timeouts.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

TIMEOUT = 400


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _argv(model_file, run, epochs):
    # a tiny learning rate keeps the weights at their (shared) initialization, so the distributed
    # and the single-process run see the same model: their losses and gate metrics must agree
    return [sys.executable, "-m", "tfgated", "train", "--model", model_file, "--limit", "200", "--epochs",
            str(epochs), "--batch-size", "50", "--lr", "1e-9", "--run-dir", run, "--verbose", "0"]


def _env(fault=None, tf_config=None, cwd=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    for key in ("TFGATED_FAULT", "TF_CONFIG"):
        env.pop(key, None)
    if fault:
        env["TFGATED_FAULT"] = fault
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _cluster(model_file, run, tmp_path, epochs, faults=(None, None)):
    """Launch the two workers; returns their Popen objects (worker 0 is the chief)."""
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        cwd = tmp_path / f"cwd{index}"
        cwd.mkdir(exist_ok=True)
        procs.append(subprocess.Popen(
            _argv(model_file, run, epochs) + ["--strategy", "multi_worker"], env=_env(faults[index], config),
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    return procs


def _finish(procs, timeout=TIMEOUT):
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _metrics(run):
    with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)["test"]


def test_two_workers_agree_with_one_process_and_only_the_chief_writes(tmp_path, model_file):
    single = str(tmp_path / "single")
    proc = subprocess.run(_argv(model_file, single, 2), env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = str(tmp_path / "multi")
    results = _finish(_cluster(model_file, run, tmp_path, 2))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    # the chief alone wrote the run folder: the same files as the single-process run, its PID in the lock
    assert sorted(os.listdir(run)) == sorted(os.listdir(single))
    assert not os.listdir(tmp_path / "cwd1")  # the other worker wrote nothing where it ran either
    chief_log = results[0][1]
    assert '"test"' in chief_log
    one, two = _rows(os.path.join(single, "history.csv")), _rows(os.path.join(run, "history.csv"))
    assert [r["epoch"] for r in two] == ["0", "1"]
    for a, b in zip(one, two):  # validation: threshold inference, deterministic
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-3)
        assert float(b["val_gate_activation"]) == pytest.approx(float(a["val_gate_activation"]), abs=0.02)
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=0.05)  # training: Gumbel noise
    m1, m2 = _metrics(single), _metrics(run)
    assert m2["examples"] == m1["examples"] == 200
    assert m2["gate_activation"] == pytest.approx(m1["gate_activation"], abs=0.02)
    assert m2["top1"] == pytest.approx(m1["top1"], abs=0.02)


def test_a_killed_worker_leaves_a_state_the_next_launch_resumes_from(tmp_path, model_file):
    run = str(tmp_path / "multi")
    # worker 1 dies half-way through its epoch-1 history row (CSV row 4: gate rates and history of
    # epochs 0 and 1); the chief committed epoch 0 and waits for it in the next collective op (saving
    # the epoch-1 checkpoint reads the variables collectively) until it fails or is killed too
    procs = _cluster(model_file, run, tmp_path, 3, faults=(None, "history.row@4"))
    try:
        assert procs[1].wait(timeout=TIMEOUT) == -signal.SIGKILL, procs[1].communicate()[1][-3000:]
        pointer = os.path.join(run, "backup", "latest.json")
        deadline = time.time() + 60
        while time.time() < deadline and not os.path.exists(pointer) and procs[0].poll() is None:
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate()
    with open(pointer, encoding="utf-8") as f:
        assert json.load(f)["epoch"] == 1
    results = _finish(_cluster(model_file, run, tmp_path, 3))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert [r["epoch"] for r in _rows(os.path.join(run, "history.csv"))] == ["0", "1", "2"]
    assert not os.path.exists(os.path.join(run, "backup")) and _metrics(run)["examples"] == 200
