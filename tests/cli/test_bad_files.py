"""Every command that reads a model file turns a damaged one into one clear line and exit code 2.

The damaged files: truncated, random bytes, empty, a zip whose ``model.weights.h5`` is cut or
zeroed (the zip itself intact), flipped bytes (a member failing its zip checksum), and a
``Lambda`` layer (refused by safe loading). Each command must print exactly one ``error:``
line naming the file (never "not found" for a file that exists, never a traceback) and
return 2; ``--debug`` / ``TFGATED_DEBUG=1`` show the traceback instead. Also here: weights
files for ``zoo.load(weights=PATH)``, ``--input-shape`` against a saved model, the zoo's
argument checks, and an export killed (SIGKILL) inside its write, whose temporary file the
next export removes.
"""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import tfgated
from tfgated.__main__ import main as cli_main
from tfgated.cli.export import main as export_main
from tfgated.cli.zoo import main as zoo_main
from tfgated.io import ModelFileError, load_model, load_weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: name -> what the one-line message must say about the file.
DAMAGE = {
    "truncated": "truncated or corrupt",
    "random": "truncated or corrupt",
    "empty": "truncated",
    "cut_weights": "weights (model.weights.h5) are truncated or corrupt",
    "zeroed_weights": "weights (model.weights.h5) are truncated or corrupt",
    "flipped": "fails the zip checksum",
}


def tiny_gated_model():
    """conv -> dependent channel gate -> pool -> softmax head, for 28x28x1 images (as in conftest.py,
    which a module cannot import when several test folders are collected together)."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x, z = tfgated.channel_gate(x, 2, "dependent", name="conv1")
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tfgated.gated_model(inputs, out, [z], target=0.6, name="tiny")


def _rezip(source, target, change):
    """Copy the zip ``source`` to ``target`` with ``change(bytes)`` applied to ``model.weights.h5``."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, change(data) if info.filename == "model.weights.h5" else data)


def damage(good, folder, kind):
    """A damaged copy of the ``.keras`` file ``good``: ``folder/<kind>.keras``."""
    path = os.path.join(folder, f"{kind}.keras")
    with open(good, "rb") as f:
        data = f.read()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "random":
        data = np.random.RandomState(0).bytes(len(data))
    elif kind == "empty":
        data = b""
    elif kind == "flipped":
        data = bytearray(data)
        start = data.find(b"model.weights.h5")  # the local header; its data follows
        for i in range(start + 200, start + 208):
            data[i] ^= 0xFF
        data = bytes(data)
    if kind in ("cut_weights", "zeroed_weights"):
        change = (lambda b: b[: len(b) // 3]) if kind == "cut_weights" else (lambda b: bytes(len(b)))
        _rezip(good, path, change)
        return path
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``{kind: path}``: a good tiny model, its damaged copies, a Lambda model, weights files."""
    folder = str(tmp_path_factory.mktemp("bad_files"))
    good = os.path.join(folder, "good.keras")
    model = tiny_gated_model()
    model.save(good)
    paths = {"good": good, **{kind: damage(good, folder, kind) for kind in DAMAGE}}
    inputs = keras.Input((28, 28, 1))
    paths["lambda"] = os.path.join(folder, "lambda.keras")
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs)).save(paths["lambda"])
    paths["weights"] = os.path.join(folder, "good.weights.h5")
    model.save_weights(paths["weights"])
    with open(paths["weights"], "rb") as f:
        data = f.read()
    for kind, bad in (("truncated", data[: len(data) // 2]), ("random", np.random.RandomState(1).bytes(len(data)))):
        paths[f"{kind}_weights"] = os.path.join(folder, f"{kind}.weights.h5")
        with open(paths[f"{kind}_weights"], "wb") as f:
            f.write(bad)
    return paths


def assert_one_line(err, path, says):
    """``err`` is one ``error:`` line naming ``path`` and saying ``says``; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and repr(path) in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in err and f"{path!r} not found" not in err and "does not exist" not in err


# -- the loader ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_load_model_names_damaged_file(files, kind):
    with pytest.raises(ModelFileError, match=DAMAGE[kind].replace("(", r"\(").replace(")", r"\)")) as info:
        load_model(files[kind])
    assert repr(files[kind]) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # every command's user error


def test_load_model_refuses_lambda_and_reports_missing(files, tmp_path):
    with pytest.raises(ModelFileError, match="safe loading refuses"):
        load_model(files["lambda"])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing.keras")
    assert load_model(files["good"]).name == "tiny"


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_load_weights_names_damaged_file(files, kind):
    path = files[f"{kind}_weights"]
    with pytest.raises(ModelFileError, match="truncated or corrupt") as info:
        load_weights(tiny_gated_model(), path)
    assert repr(path) in str(info.value)
    load_weights(tiny_gated_model(), files["weights"])


def test_zoo_load_names_damaged_weights_file(files):
    from tfgated import zoo

    with pytest.raises(ModelFileError, match="truncated or corrupt") as info:
        zoo.load("sipa_fashion_mnist", weights=files["random_weights"], compile=False)
    assert repr(files["random_weights"]) in str(info.value)


# -- the commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DAMAGE) + ["lambda"])
def test_score_one_line(files, kind, capsys):
    assert cli_main(["score", files[kind]]) == 2
    assert_one_line(capsys.readouterr().err, files[kind], DAMAGE.get(kind, "safe loading refuses"))


@pytest.mark.parametrize("kind", ["truncated", "random", "zeroed_weights", "lambda"])
def test_evaluate_one_line(files, kind, capsys):
    assert cli_main(["evaluate", "--model", files[kind], "--limit", "8"]) == 2
    assert_one_line(capsys.readouterr().err, files[kind], DAMAGE.get(kind, "safe loading refuses"))


@pytest.mark.parametrize("kind", ["truncated", "random", "cut_weights"])
def test_export_one_line(files, kind, tmp_path, capsys):
    out = str(tmp_path / "out.tflite")
    assert export_main(["--tflite", files[kind], "-o", out]) == 2
    assert_one_line(capsys.readouterr().err, files[kind], DAMAGE[kind])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["truncated", "random", "zeroed_weights"])
def test_train_model_file_one_line(files, kind, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert cli_main(["train", "--model", files[kind], "--run-dir", run_dir, "--epochs", "1", "--limit", "16"]) == 2
    assert_one_line(capsys.readouterr().err, files[kind], DAMAGE[kind])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "random", "cut_weights"])
def test_train_init_from_one_line(files, kind, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    argv = ["train", "--model", "sipa_fashion_mnist", "--init-from", files[kind], "--run-dir", run_dir,
            "--epochs", "1", "--limit", "16"]
    assert cli_main(argv) == 2
    assert_one_line(capsys.readouterr().err, files[kind], DAMAGE[kind])


def test_debug_shows_the_traceback(files, monkeypatch):
    with pytest.raises(ModelFileError):
        cli_main(["score", files["random"], "--debug"])
    with pytest.raises(ModelFileError):
        export_main(["--onnx", files["random"], "-o", "unused.onnx", "--debug"])
    monkeypatch.setenv("TFGATED_DEBUG", "1")
    with pytest.raises(ModelFileError):
        cli_main(["score", files["random"]])


def test_zoo_command_one_line(tmp_path, capsys):
    assert zoo_main(["info", "no_such_model"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no_such_model" in lines[0]
    damaged = str(tmp_path / "preset.json")
    with open(damaged, "wb") as f:
        f.write(b'{"family": "sipa", "arch": {' + bytes(range(128, 256)))
    assert zoo_main(["info", damaged]) == 2
    assert_one_line(capsys.readouterr().err, damaged, "is not valid JSON (it may be truncated or corrupt)")


def test_input_shape_must_match_a_model_file(files, tmp_path, capsys):
    assert cli_main(["score", files["good"], "--input-shape", "32,32,3"]) == 2
    err = capsys.readouterr().err
    assert_one_line(err, files["good"], "--input-shape 32,32,3 does not match the input shape (28, 28, 1)")
    assert export_main(["--tflite", files["good"], "--input-shape", "32,32,3", "-o", str(tmp_path / "x.tflite")]) == 2
    assert "does not match the input shape (28, 28, 1)" in capsys.readouterr().err
    assert cli_main(["score", files["good"], "--input-shape", "28,28,1"]) == 0


def test_zoo_overrides_are_checked():
    from tfgated import zoo

    with pytest.raises(ValueError, match=r"Expected granularity to be a list of .* Received: granularity=5"):
        zoo.load("gumbel_mobilenet_v2_fashion_mnist", granularity=5, compile=False)
    with pytest.raises(ValueError, match="Expected granularity to be a positive integer. Received: granularity=0"):
        tfgated.channel_gate(keras.Input((4, 4, 8)), granularity=0)


@pytest.mark.slow
def test_subprocess_prints_one_line(files):
    """The real process: exit status 2 and one ``error:`` line, nothing from Python's traceback."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TFGATED_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "tfgated", "score", files["cut_weights"]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.weights.h5" in errors[0] and "Traceback" not in done.stderr


# -- an export killed inside its write ------------------------------------------------------------

_KILLED_EXPORT = textwrap.dedent(
    """
    import os, signal, sys
    import tfgated.export.parity as parity
    from tfgated.cli.export import main

    def die(path, x, threads):  # the file's bytes are in its temporary file: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)

    parity._runtime_outputs = die
    main(["--tflite", sys.argv[1], "-o", sys.argv[2]])
    """
)


@pytest.mark.slow
def test_killed_export_leaves_nothing_after_the_next_run(files, tmp_path):
    out = str(tmp_path / "model.tflite")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, files["good"], out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = os.listdir(tmp_path)
    assert not os.path.exists(out) and any(name.startswith(".model.tflite.") for name in left), left
    assert export_main(["--tflite", files["good"], "-o", out]) == 0
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "model.tflite.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("model.tflite", "model.tflite.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask


# -- what run_command counts as a user error -------------------------------------------------------


def test_run_command_user_errors_and_bugs(capsys):
    from tfgated.cli.common import run_command
    from tfgated.export.parity import compare

    def unwritable():
        raise PermissionError(13, "Permission denied", "/read-only/history.csv")

    def two_lines():
        raise ValueError("first\nsecond")

    def bug():
        raise RuntimeError("an internal error")

    assert run_command(unwritable) == 2
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: '/read-only/history.csv'\n"
    assert run_command(two_lines) == 2
    assert capsys.readouterr().err == "error: first second\n"
    assert run_command(lambda: compare(np.zeros((2, 3)), np.zeros((2, 4)))) == 2  # ParityError
    assert capsys.readouterr().err.startswith("error: Output shape (2, 4) differs")
    with pytest.raises(RuntimeError, match="internal"):  # not raised by tfgated: a bug, with its traceback
        run_command(bug)


@pytest.mark.parametrize("no_check", [False, True])
def test_every_check_has_its_override_on_run(no_check, tmp_path, monkeypatch):
    """``python -m tfgated run --no-check`` reaches the export stage (a resumed run must be able to finish)."""
    import inspect
    from types import SimpleNamespace

    import tfgated.export
    from tfgated.cli import run
    from tfgated.cli.pipeline import deploy

    assert run.build_parser().parse_args(["--no-check"] if no_check else []).no_check is no_check
    assert "no_check" in inspect.signature(run.run_pipeline).parameters
    calls = []

    def fake_export(model, path, threshold, **options):
        calls.append(options)
        return SimpleNamespace(parity={"passed": True, "max_abs_diff": 0.0, "runtime": "none"})

    monkeypatch.setattr(tfgated.export, "export_early_exit", fake_export)
    monkeypatch.setattr(deploy, "_exported_accuracy", lambda run, path: 0.5)
    inputs = keras.Input((4,))
    with_exit = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)])
    info = SimpleNamespace(mean=[0.0], std=[1.0], input_shape=[4], class_names=["a", "b"])
    finished = {"quantize": {"row": {"stage": "quantize", "accuracy": 0.5}},
                "accelerate": {"calibration": {"threshold": 0.9}}}
    fake_run = SimpleNamespace(
        load_model=lambda stage: with_exit, test_arrays=lambda: (np.zeros((4, 4), "float32"), None),
        budget=SimpleNamespace(parity_examples=4), splits=lambda: SimpleNamespace(info=info),
        log=lambda message: None, allow_mismatch=no_check, need=finished.__getitem__,
    )
    deploy.stage_export(fake_run, str(tmp_path))
    assert [call["allow_mismatch"] for call in calls] == [no_check, no_check]


@pytest.mark.parametrize("name", ["bad.tflite", "bad.onnx"])
def test_bench_names_damaged_exported_file(name, tmp_path, capsys):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(np.random.RandomState(2).bytes(4000))
    assert export_main(["bench", path, "--runs", "1", "--warmup", "0"]) == 2
    assert_one_line(capsys.readouterr().err, path, "cannot be loaded by")


def test_export_names_damaged_representative_data(files, tmp_path, capsys):
    path = str(tmp_path / "inputs.npy")
    with open(path, "wb") as f:
        f.write(np.random.RandomState(3).bytes(300))
    assert export_main(["--tflite", files["good"], "--int8", "--representative-data", path,
                        "-o", str(tmp_path / "q.tflite")]) == 2
    assert_one_line(capsys.readouterr().err, path, "is not a readable .npy array")
