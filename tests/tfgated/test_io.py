"""tfgated.io: atomic text/bytes/JSON writes, Keras model saves and matplotlib figures."""

import json
import os
import stat

import keras
import numpy as np
import pytest

from tfgated.io import save_figure, save_model, write_atomic, write_json


def _names(folder):
    return sorted(os.listdir(folder))


def _tiny_model():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="dense")(inputs)
    return keras.Model(inputs, outputs, name="tiny")


class _Unserializable:
    pass


def test_write_text_and_bytes(tmp_path):
    text_path = tmp_path / "a.txt"
    assert write_atomic(text_path, "héllo\r\nworld\n") == str(text_path)
    assert text_path.read_bytes() == "héllo\r\nworld\n".encode("utf-8")  # no newline translation
    bin_path = tmp_path / "b.bin"
    write_atomic(str(bin_path), b"\x00\x01\xff", fsync=True)
    assert bin_path.read_bytes() == b"\x00\x01\xff"
    write_atomic(bin_path, bytearray(b"xy"))
    assert bin_path.read_bytes() == b"xy"
    assert _names(tmp_path) == ["a.txt", "b.bin"]  # no temporary files left


def test_write_creates_folders_unless_told_not_to(tmp_path):
    path = tmp_path / "new" / "deeper" / "x.txt"
    write_atomic(path, "x")
    assert path.read_text() == "x"
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "y.txt", "y", makedirs=False)
    assert not (tmp_path / "missing").exists()


def test_written_file_has_ordinary_mode(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "m.txt"
    write_atomic(path, "m")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask


def test_write_rejects_other_types(tmp_path):
    path = tmp_path / "n.txt"
    with pytest.raises(TypeError, match="Expected data to be str or bytes. Received: data of type int"):
        write_atomic(path, 3)
    assert _names(tmp_path) == []


def test_write_json_format(tmp_path):
    path = tmp_path / "d.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"
    write_json(path, {"b": np.int64(3), "a": 1}, indent=None, sort_keys=True, default=int)
    assert path.read_text() == '{"a": 1, "b": 3}\n'
    assert json.loads(path.read_text()) == {"a": 1, "b": 3}


def test_failed_json_leaves_no_file(tmp_path):
    path = tmp_path / "bad.json"
    with pytest.raises(TypeError):
        write_json(path, {"x": _Unserializable()})
    assert _names(tmp_path) == []


def test_existing_file_replaced_only_on_success(tmp_path):
    path = tmp_path / "keep.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": _Unserializable()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert _names(tmp_path) == ["keep.json"]
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert _names(tmp_path) == ["keep.json"]


def test_failure_during_write_removes_temp(tmp_path):
    path = tmp_path / "old.txt"
    path.write_text("old")
    # memoryview of a released buffer raises inside f.write, after the temporary file was created
    view = memoryview(b"new")
    view.release()
    with pytest.raises(ValueError):
        write_atomic(path, view)
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["old.txt"]


def test_save_model_roundtrip_and_replace(tmp_path):
    model = _tiny_model()
    path = tmp_path / "m.keras"
    assert save_model(model, path) == str(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.ones((1, 4), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    model.get_layer("dense").kernel.assign(np.zeros((4, 2), "float32"))
    save_model(model, path)
    np.testing.assert_allclose(keras.saving.load_model(path).get_layer("dense").kernel.numpy(), 0.0)
    assert _names(tmp_path) == ["m.keras"]


def test_save_model_failure_keeps_old_file(tmp_path):
    class Failing:
        def save(self, filepath):
            with open(filepath, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")

    path = tmp_path / "m.keras"
    path.write_bytes(b"old model")
    with pytest.raises(OSError, match="disk full"):
        save_model(Failing(), path)
    assert path.read_bytes() == b"old model"
    assert _names(tmp_path) == ["m.keras"]
    with pytest.raises(OSError, match="disk full"):
        save_model(Failing(), tmp_path / "new.keras")
    assert _names(tmp_path) == ["m.keras"]


def test_save_model_rejects_other_extensions(tmp_path):
    with pytest.raises(ValueError, match=r"Expected a model path ending in \.keras \(or \.h5\)\. Received: path="):
        save_model(_tiny_model(), tmp_path / "m.zip")
    assert _names(tmp_path) == []


def test_save_figure(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = tmp_path / "f.png"
    assert save_figure(fig, png, dpi=50) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = tmp_path / "f.pdf"
    save_figure(fig, pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    noext = tmp_path / "plain"
    save_figure(fig, noext, format="png")
    assert noext.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="Expected a figure path with an extension"):
        save_figure(fig, tmp_path / "other")
    with pytest.raises(ValueError):  # unknown format: savefig raises, no file nor temp left
        save_figure(fig, tmp_path / "g.notaformat")
    assert _names(tmp_path) == ["f.pdf", "f.png", "plain"]


def test_next_write_removes_stale_temporaries(tmp_path):
    """What a killed writer left (its process gone) is removed by the next write of the same
    target; a live writer's temporary file, and other targets', stay."""
    import subprocess
    import sys

    from tfgated.io import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [f".out.tflite.{dead_pid}.abcd1234.tmp.tflite", ".out.tflite.zz_9k2x1.tmp"]
    kept = [f".out.tflite.{os.getpid()}.abcd1234.tmp.tflite", ".other.tflite.abcd1234.tmp", ".out.tflite.json.x1y2z3w4.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    write_atomic(tmp_path / "out.tflite", b"model")
    assert _names(tmp_path) == sorted(kept + ["out.tflite"])
    assert remove_stale_temporaries(tmp_path / "out.tflite") == []


def test_temporary_file_names_carry_the_process_id(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_json(tmp_path / "state.json", {"a": 1})
    assert seen and seen[0].startswith(f".state.json.{os.getpid()}.") and ".tmp" in seen[0]
