"""The command line's console: ``--help`` without TensorFlow, no TensorFlow log line on the console,
and a tiny main job whose summary names files that load (``python -m tfgated ...`` as subprocesses)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tfgated.console import QUIET_ENVIRONMENT, wants_verbose

#: What TensorFlow's native logging (absl, TF C++, LiteRT) looks like on a console.
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} |oneDNN|cuda|cuInit|XNNPACK|absl::InitializeLog", re.MULTILINE | re.IGNORECASE)
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _environment():
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENVIRONMENT and k != "TFGATED_VERBOSE"}
    return env


def _python_m(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env=_environment())


def test_help_is_fast_plain_and_lists_every_entry_point():
    start = time.perf_counter()
    done = _python_m("tfgated", "--help", timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert seconds < 2.0, f"python -m tfgated --help took {seconds:.2f} s"
    out = done.stdout
    for command in ("run", "demo", "train", "evaluate", "score", "search"):
        assert re.search(rf"^  {command} ", out, re.MULTILINE), command
    assert "python -m tfgated.export" in out and "python -m tfgated.zoo" in out
    assert "``" not in out and ":mod:" not in out and "=====" not in out  # no reStructuredText
    assert not NATIVE_LOG_LINE.search(out + done.stderr)


def test_help_imports_no_tensorflow():
    # runpy does what `python -m tfgated --help` does: import the package (sys.argv[0] == "-m"), run __main__
    code = (
        "import runpy, sys\n"
        "sys.argv = ['-m', '--help']\n"
        "try:\n"
        "    runpy.run_module('tfgated', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TF-IMPORTED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'NO-TF')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_environment())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NO-TF")


def test_unknown_command_is_one_line_and_exit_status_2():
    done = _python_m("tfgated", "trian", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "unknown command 'trian'" in done.stderr


def test_wants_verbose(monkeypatch):
    monkeypatch.delenv("TFGATED_VERBOSE", raising=False)
    assert wants_verbose(["run", "--verbose"]) and wants_verbose(["run", "--verbose=1"])
    assert not wants_verbose(["run", "--budget", "tiny"])
    monkeypatch.setenv("TFGATED_VERBOSE", "1")
    assert wants_verbose([])


@pytest.mark.slow
def test_zoo_and_export_entry_points_keep_tensorflow_logs_off_the_console():
    for args in (("tfgated.zoo", "list", "sipa*"), ("tfgated.export", "--help")):
        done = _python_m(*args, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not NATIVE_LOG_LINE.search(done.stdout + done.stderr), (args, done.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Fashion-MNIST IDX files not installed")
def test_tiny_main_job_is_quiet_and_names_files_that_load(tmp_path):
    import numpy as np

    from tfgated.export import run_onnx, run_tflite
    from tfgated.exits import EarlyExitModel
    from tfgated.io import load_model

    run_dir = str(tmp_path / "run")
    done = _python_m("tfgated", "run", "--budget", "tiny", "--run-dir", run_dir, timeout=1500)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert not NATIVE_LOG_LINE.search(output), NATIVE_LOG_LINE.search(output).group(0)
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    # the summary and the console's next steps name the final model, the exported files and the plot
    final = summary["final_model"]
    assert "Next steps:" in done.stdout and final in done.stdout
    assert f"tfgated.io.load_model({final!r})" in done.stdout
    assert "python -m tfgated.export --tflite" in done.stdout
    assert os.path.exists(summary["accuracy_plot"]) and summary["accuracy_plot"] in done.stdout
    assert "anchor 0.925" in done.stdout and "nearest shipped preset" in done.stdout
    model = load_model(final)
    assert len(model.outputs) == 2  # the final model keeps its exit
    x = np.random.default_rng(0).uniform(0, 255, (16, 28, 28, 1)).astype("float32")
    probabilities = EarlyExitModel(model, summary["threshold"]).predict(x).probabilities
    for key, runner in (("tflite", run_tflite), ("onnx", run_onnx)):
        path = summary["exported"][key]
        assert path in done.stdout
        outputs = runner(path, x)
        assert outputs.shape == probabilities.shape
        # float16 TFLite may decide an image at the threshold the other way; ONNX is float32
        agreement = float(np.mean(outputs.argmax(axis=1) == probabilities.argmax(axis=1)))
        assert agreement >= (0.75 if key == "tflite" else 1.0), (key, agreement)
