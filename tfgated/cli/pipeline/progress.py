"""One progress line per pipeline stage: elapsed time and an estimate of the stage's length.

The estimate scales the committed timing of a whole ``small``-budget run
(``benchmarks/results/pipeline_small_summary.json``: 1570 s on two CPU cores, the full
training split, five-block network of about 3M MACs) by the work a budget asks of each
stage, counted in training images times epochs. It is a rough guide (another network,
another machine load change it), never below the stage's time in a tiny run
(:data:`MINIMUM_SECONDS`), printed as ``~M:SS``.

On a terminal a :class:`StageProgress` rewrites one line every second
(``[3/7] train  0:42 elapsed, ~2:30 estimated``); elsewhere (a log file, a pipe) the stage
prints its estimate when it starts and its time when it is done, nothing in between.
"""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["SECONDS_PER_IMAGE_EPOCH", "StageProgress", "estimate_seconds", "format_duration"]

#: Seconds per training image per epoch of each stage in the committed small run
#: (stage seconds / (images x epochs x trials or rounds)): search 97.2 s / (4 x 1 x 10,800),
#: improve 118.5 s / (3 x 2 x 10,800), train 1081.2 s / (14 x 54,000), prune 166.4 s / (2 x 54,000),
#: accelerate 93.5 s / (2 x 54,000); quantize and export per test image (7.4 s and
#: 6.0 s / 10,000, the export's including the exported file's own test pass).
SECONDS_PER_IMAGE_EPOCH = {
    "search": 97.2 / (4 * 1 * 10800),
    "improve": 118.5 / (3 * 2 * 10800),
    "train": 1081.2 / (14 * 54000),
    "prune": 166.4 / (2 * 54000),
    "accelerate": 93.5 / (2 * 54000),
    "quantize": 7.4 / 10000,
    "export": 6.0 / 10000,
}

#: The least a stage takes, whatever its budget (building models, compiling, loading, plotting):
#: the stage times of a ``--budget tiny`` run (95 s in all) on the two cores shared with other jobs.
MINIMUM_SECONDS = {"search": 30.0, "improve": 14.1, "train": 8.8, "prune": 22.6, "accelerate": 10.7,
                   "quantize": 1.4, "export": 7.3}

FASHION_MNIST_TRAIN, FASHION_MNIST_TEST = 60000, 10000


def _improve_trials(budget):
    """Training runs of the Improving stage: the baseline and every candidate, once per seed."""
    groups = budget.improve_groups
    if groups == "sipa":
        from tfgated.improve import SIPA_GROUPS

        groups = SIPA_GROUPS
    return (1 + sum(len(candidates) for _, candidates in groups)) * max(1, budget.improve_seeds)


def _exit_prune_epochs(budget):
    """Fine-tuning epochs of the exit-path pruning rounds (0 without ``exit_prune``)."""
    if not budget.exit_prune:
        return 0
    return len(budget.exit_prune["schedule"]) * budget.exit_prune["epochs"]


def estimate_seconds(stage, budget, num_train=FASHION_MNIST_TRAIN, num_test=FASHION_MNIST_TEST):
    """Estimated seconds of ``stage`` under ``budget`` (see the module docstring)."""
    total = num_train if budget.limit is None else min(budget.limit, num_train)
    images = total * (1.0 - budget.validation_split)
    test = num_test if budget.limit is None else min(budget.limit, num_test)
    search_total = total if budget.search_limit is None else min(budget.search_limit, num_train)
    search_images = search_total * (1.0 - budget.validation_split)
    work = {
        "search": max(1, budget.search_trials) * budget.search_epochs * search_images,
        "improve": _improve_trials(budget) * budget.improve_epochs * search_images,
        "train": budget.train_epochs * images,
        "prune": len(budget.prune_schedule) * budget.prune_epochs * images,
        "accelerate": (budget.exit_epochs + _exit_prune_epochs(budget)) * images,
        "quantize": test,
        "export": test,
    }[stage]
    return max(MINIMUM_SECONDS[stage], work * SECONDS_PER_IMAGE_EPOCH[stage])


def format_duration(seconds):
    """``"M:SS"`` (or ``"H:MM:SS"`` from an hour)."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class StageProgress:
    """A context manager showing ``label  elapsed, ~estimate`` on one terminal line while a stage runs.

    :meth:`log` prints a message above the line (the line is cleared first and redrawn). With
    ``live=False`` or off a terminal (``stream.isatty()`` false) nothing is drawn and
    :meth:`log` calls ``emit``.
    """

    def __init__(self, label, estimate, emit=print, live=True, stream=None, interval=1.0):
        self.label = label
        self.estimate = estimate
        self.emit = emit
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.live = bool(live) and bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.start = None

    def line(self):
        elapsed = time.time() - self.start
        return f"{self.label}  {format_duration(elapsed)} elapsed, ~{format_duration(self.estimate)} estimated"

    def _draw(self):
        self.stream.write("\r" + self.line() + "\x1b[K")
        self.stream.flush()

    def _loop(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                self._draw()

    def log(self, message):
        if not self.live:
            self.emit(message)
            return
        with self._lock:
            if self.live:
                self.stream.write("\r\x1b[K")
            self.stream.write(message + "\n")
            if self.live:
                self._draw()
            self.stream.flush()

    def __enter__(self):
        self.start = time.time()
        if self.live:
            self._saved_stdout, sys.stdout = sys.stdout, _LineRouter(self.log)  # prints go above the line
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stdout.flush()
            sys.stdout = self._saved_stdout
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
        return False


class _LineRouter:
    """A text stream that hands every complete line to ``log`` (what a stage prints while the live
    line is drawn: Improving trials, pruning rounds)."""

    def __init__(self, log):
        self._log = log
        self._pending = ""

    def write(self, text):
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log(line.split("\r")[-1])
        return len(text)

    def flush(self):
        if self._pending:
            self._log(self._pending)
            self._pending = ""

    def isatty(self):
        return False
