"""One writer per run folder: an exclusive ``flock`` on ``RUN_DIR/.lock``, held for the whole run.

:func:`run_folder_lock` is a context manager: it creates the folder when missing, takes an
exclusive, non-blocking ``fcntl.flock`` on the file ``.lock`` inside it and writes the
holder's PID (and host name) into that file. A second process asking for the same folder
gets :class:`RunFolderBusy` at once, naming the PID that holds it. The kernel drops a
``flock`` when its holder dies (also on ``SIGKILL``), so the lock of a killed run is taken
over by the next launch without any clean-up; the stale PID in the file is simply rewritten.

If the block fails and the folder was created for it and holds nothing but the lock file,
the folder is removed again: a failed start leaves no empty run folder behind.

:func:`is_chief` tells, from ``TF_CONFIG``, whether this process is the one of a
multi-worker cluster that writes the run folder (the ``chief`` task, else worker 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

__all__ = ["LOCK_NAME", "RunFolderBusy", "is_chief", "lock_holder", "run_folder_lock"]

LOCK_NAME = ".lock"


class RunFolderBusy(ValueError):
    """Another live process holds the run folder's lock (a ``ValueError``, so every command
    reports it as one line with exit status 2)."""


def lock_holder(folder, name=LOCK_NAME):
    """What the lock file ``name`` of ``folder`` says about its holder (``"PID 123 on host"``), or None."""
    try:
        with open(os.path.join(os.fspath(folder), name), encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


def _open_locked(path):
    """An fd of ``path`` holding an exclusive flock, or raise ``BlockingIOError``.

    After locking, the file must still be the one at ``path`` (a holder that removed
    it on exit leaves a lock on a deleted file): else retry on the new file.
    """
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _write_holder(fd):
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
    os.fsync(fd)


def _only_lock_left(folder, name):
    try:
        return set(os.listdir(folder)) <= {name}
    except OSError:
        return False


@contextlib.contextmanager
def run_folder_lock(folder, what="run folder", name=LOCK_NAME):
    """Hold the exclusive lock of ``folder`` for the ``with`` block (creating the folder).

    Args:
        folder: the run folder.
        what: how the message names the folder (``"run folder"``, ``"search project"``).
        name: the lock file's name in ``folder`` (a search locks ``.<project>.lock`` in its
            directory, outside the project folder that ``overwrite`` deletes).

    Raises:
        RunFolderBusy: another process holds the lock; the message names its PID.
    """
    folder = os.fspath(folder)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    try:
        fd = _open_locked(path)
    except BlockingIOError:
        holder = lock_holder(folder, name) or "another process"
        raise RunFolderBusy(
            f"The {what} {folder!r} is in use by {holder} (lock file {path!r}): only one process may "
            "write it. Wait for that run to finish or stop it, or use another folder."
        ) from None
    failed = False
    try:
        _write_holder(fd)
        yield folder
    except BaseException:
        failed = True
        raise
    finally:
        if failed and created and _only_lock_left(folder, name):
            with contextlib.suppress(OSError):
                os.remove(path)
                os.rmdir(folder)
        os.close(fd)


def is_chief(tf_config=None):
    """Whether this process writes the run folder: True outside a multi-worker cluster; in one
    (``TF_CONFIG``), for the ``chief`` task, or for worker 0 when the cluster has no chief."""
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text:
        return True
    config = json.loads(text) if isinstance(text, str) else text
    task = config.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return kind == "worker" and index == 0 and not has_chief
