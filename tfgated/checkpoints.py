"""Crash-safe training state: a backup that is complete or absent, and CSV logs that survive a torn row.

:class:`CrashSafeBackup` is ``keras.callbacks.BackupAndRestore(double_checkpoint=True)`` with
a commit protocol. Keras' own double checkpoint copies the previous files and then rewrites
``latest.weights.h5`` and ``training_metadata.json`` in place: a kill inside the metadata
write leaves a torn JSON file that the next launch cannot read, and a kill between the two
writes pairs new weights with the old epoch number. Here every checkpoint is::

    BACKUP/epoch_0003.weights.h5   written to a temporary file, fsync'ed, then renamed
    BACKUP/latest.json             {"epoch": 3, "batch": 0, "weights": ..., "previous": {...}},
                                   replaced atomically after the weights file is complete

``latest.json`` is the commit: until it is replaced, the previous checkpoint stays the
valid one, and the previous weights file is kept (double checkpoint), so a weights file
that cannot be read (a damaged disk) falls back to the one before. Leftover temporary
files of a killed write are removed on the next launch. A backup folder in Keras' older
format (``training_metadata.json``) still restores.

CSV logs: :func:`append_csv_row` appends one row and flushes it to disk;
:func:`read_csv_rows` drops what a kill or a second writer can leave (a last line without
its newline, a repeated header line, rows with too many or too few fields), and
:func:`keep_csv_rows` rewrites a log atomically with the rows of the epochs before a
resumed epoch, so a resumed run's history has each epoch exactly once.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tempfile

import keras

from tfgated.faults import fault_point
from tfgated.io import write_atomic, write_json

__all__ = ["CrashSafeBackup", "append_csv_row", "keep_csv_rows", "read_csv_rows"]

POINTER = "latest.json"


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _weights_name(epoch, batch):
    return f"epoch_{epoch:04d}.weights.h5" if not batch else f"epoch_{epoch:04d}_batch_{batch:06d}.weights.h5"


class CrashSafeBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose checkpoints are complete or absent after a kill at any instant.

    Args:
        backup_dir: the folder of the checkpoints (this callback's alone).
        save_freq: ``"epoch"`` or a number of batches, as in Keras.
        delete_checkpoint: remove the folder when ``fit`` ends (Keras' default). A caller
            that saves the trained model afterwards passes False and removes the folder
            once the model file is written, so no instant exists with neither.
        write: write checkpoints (False on the non-chief workers of a multi-worker cluster:
            they restore from the chief's folder and save into a scratch file that is removed,
            since saving takes part in collective ops).
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True, write=True):
        super().__init__(os.fspath(backup_dir), save_freq=save_freq, double_checkpoint=True,
                         delete_checkpoint=delete_checkpoint)
        self.write = bool(write)
        self._pointer_path = os.path.join(self.backup_dir, POINTER)

    # ------------------------------------------------------------------ restore
    def on_train_begin(self, logs=None):
        if self.write:
            for leftover in glob.glob(os.path.join(glob.escape(self.backup_dir), ".*.tmp*")):
                os.remove(leftover)
        if os.path.exists(self._pointer_path):
            self._restore_from_pointer()
        elif os.path.exists(self._training_metadata_path) or os.path.exists(self._weights_path):
            self._restore_keras_format()

    def _restore_from_pointer(self):
        try:
            with open(self._pointer_path, encoding="utf-8") as f:
                pointer = json.load(f)
        except ValueError as error:  # only a hand-edited or damaged disk: it is replaced atomically
            raise ValueError(
                f"The training backup pointer {self._pointer_path!r} is damaged ({error}). "
                "Delete that folder to redo this training phase from its start."
            ) from error
        candidates = [pointer] + ([pointer["previous"]] if pointer.get("previous") else [])
        errors = []
        for entry in candidates:
            try:
                self._load_weights(os.path.join(self.backup_dir, entry["weights"]))
            except (OSError, ValueError, KeyError) as error:
                errors.append(f"{entry['weights']}: {error}")
                continue
            self.model._initial_epoch = int(entry["epoch"])  # noqa: SLF001 (Keras' resume protocol)
            if errors:
                print(f"Backup {entry['weights']} restored; newer one unreadable ({errors[0]})", flush=True)
            return
        raise ValueError(
            f"The training backup in {self.backup_dir!r} cannot be read ({'; '.join(errors)}). "
            "Delete that folder to redo this training phase from its start."
        )

    def _load_weights(self, path):
        if not self.model.built:
            raise ValueError(f"To restore from {self.backup_dir!r}, build the model before fit().")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)

    def _restore_keras_format(self):
        try:
            super().on_train_begin()
        except (OSError, ValueError) as error:
            raise ValueError(
                f"The training backup in {self.backup_dir!r} (written in Keras' in-place format) cannot "
                f"be read ({error}). Delete that folder to redo this training phase from its start."
            ) from error

    # ------------------------------------------------------------------ save
    def _save_model(self):
        if not self.write:
            # Saving reads the variables with collective ops: every worker must take part,
            # so a non-chief worker writes a scratch copy and throws it away.
            with tempfile.TemporaryDirectory(prefix="tfgated-backup-") as scratch:
                self.model.save_weights(os.path.join(scratch, "scratch.weights.h5"), overwrite=True)
            return
        fault_point("checkpoint.begin")
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch, batch = self._current_epoch, self._last_batch_seen
        name = _weights_name(epoch, batch)
        tmp = os.path.join(self.backup_dir, f".{name}.{os.getpid()}.tmp.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        fault_point("checkpoint.weights", partial_file=tmp)
        _fsync_file(tmp)
        os.replace(tmp, os.path.join(self.backup_dir, name))
        fault_point("checkpoint.renamed")
        previous = self._read_pointer()
        if previous is not None:
            previous.pop("previous", None)
            if previous.get("weights") == name:
                previous = previous.get("previous")
        write_json(self._pointer_path, {"epoch": epoch, "batch": batch, "weights": name, "previous": previous},
                   fsync=True)
        fault_point("checkpoint.committed")
        keep = {name} | ({previous["weights"]} if previous else set())
        for path in glob.glob(os.path.join(glob.escape(self.backup_dir), "epoch_*.weights.h5")):
            if os.path.basename(path) not in keep:
                os.remove(path)
        for legacy in (self._weights_path, self._prev_weights_path, self._training_metadata_path,
                       self._prev_training_metadata_path):
            if os.path.exists(legacy):
                os.remove(legacy)

    def _read_pointer(self):
        if not os.path.exists(self._pointer_path):
            return None
        with open(self._pointer_path, encoding="utf-8") as f:
            return json.load(f)

    def on_train_end(self, logs=None):
        if self.write:
            super().on_train_end(logs)


# ---------------------------------------------------------------------- CSV logs


def read_csv_rows(path):
    """``(fieldnames, rows)`` of a CSV log, without what a kill or a second writer leaves.

    A last line without its newline (a torn append), a repeated header line and rows whose
    field count differs from the header's are dropped. A missing or empty file gives
    ``([], [])``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return [], []
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # torn last row
    lines = [line.rstrip("\r") for line in lines if line.strip()]
    if not lines:
        return [], []
    header = next(csv.reader([lines[0]]))
    rows = []
    for values in csv.reader(lines[1:]):
        if values == header or len(values) != len(header):
            continue
        rows.append(dict(zip(header, values)))
    return header, rows


def _csv_text(fieldnames, rows, header=True):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fieldnames})
    return buffer.getvalue()


def keep_csv_rows(path, keep):
    """Rewrite the CSV log ``path`` atomically with the rows ``keep(row)`` accepts (and no
    damaged line); returns its fieldnames (``[]`` when the file is missing or empty)."""
    fieldnames, rows = read_csv_rows(path)
    if fieldnames:
        write_atomic(path, _csv_text(fieldnames, [r for r in rows if keep(r)]), fsync=True)
    return fieldnames


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def append_csv_row(path, row, fieldnames=None):
    """Append ``row`` (a dict) to the CSV log ``path`` and flush it to disk.

    A new (or empty) file gets the header ``fieldnames`` (default: the row's keys) first.
    When the file's header differs from the row's keys, the file is rewritten atomically
    with the union of both (old rows get empty cells). Returns the header used.
    """
    path = os.fspath(path)
    header, rows = read_csv_rows(path)
    wanted = list(fieldnames or row)
    if not header:
        write_atomic(path, _csv_text(wanted, []), fsync=True)
        header = wanted
    elif any(k not in header for k in wanted) or not _ends_with_newline(path):
        header = header + [k for k in wanted if k not in header]
        write_atomic(path, _csv_text(header, rows), fsync=True)
    line = _csv_text(header, [row], header=False)
    with open(path, "a", encoding="utf-8", newline="") as f:
        half = len(line) // 2
        f.write(line[:half])
        f.flush()
        fault_point("history.row")
        f.write(line[half:])
        f.flush()
        os.fsync(f.fileno())
    return header
