"""How busy the machine was while a stage ran: this process's CPU time against everyone's.

A stage's timing means little without the load it ran under (two cores shared with other jobs
can double it). :class:`CpuMeter` reads the process's own CPU time (``os.times``, all threads)
and, on Linux, the whole machine's busy CPU time from ``/proc/stat``; the difference is the CPU
time other processes took meanwhile. ``other_cpu_share`` is that time over the cores' capacity
(wall seconds x cores): 0.0 on an otherwise idle machine, 0.5 when other work kept one of two
cores busy throughout.
"""

from __future__ import annotations

import os
import time

__all__ = ["CpuMeter"]

_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds():
    """Busy CPU seconds of all cores since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal; guest is in user
    return busy / _USER_HZ


def _own_cpu_seconds():
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    """Measure wall time, this process's CPU time and other processes' CPU time between
    :meth:`start` and :meth:`stop` (a dict)."""

    def __init__(self):
        self._start = None

    def start(self):
        self._start = (time.time(), _own_cpu_seconds(), _machine_busy_seconds())
        return self

    def stop(self):
        wall0, own0, busy0 = self._start
        wall, own, busy = time.time() - wall0, _own_cpu_seconds() - own0, _machine_busy_seconds()
        cpus = os.cpu_count() or 1
        record = {"wall_seconds": wall, "cpu_seconds": own, "cpus": cpus,
                  "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        if busy is not None and busy0 is not None:
            other = max(0.0, (busy - busy0) - own)
            record["other_cpu_seconds"] = other
            record["other_cpu_share"] = other / max(wall * cpus, 1e-9)
        return record

