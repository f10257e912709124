"""Facts about the machine this runs on, from /proc/cpuinfo (Linux): CPU model and feature flags.

The stage cache keys on the flags (int8 reduce_range: auto depends on VNNI), the int8 stages
read them, and every speed figure names the CPU with `cpu_summary()`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _field(prefixes: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of `prefixes`; None where there is none."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(prefixes)), None)


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """CPU feature flags of this machine; empty where /proc/cpuinfo does not exist."""
    return frozenset((_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name as lscpu shows it, else platform.processor()."""
    return _field(("model name",), cpuinfo) or platform.processor()


def cpu_summary() -> str:
    """Model name, logical CPUs and the SIMD flags that decide the int8/int4 kernels (for speed figures)."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, flags {' '.join(flags)}"


PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> float:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota where one is set."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    return min(cores, int(quota) / int(period)) if quota != "max" else cores


def cpu_times(stat: Path = PROC_STAT) -> dict[str, tuple[int, int]] | None:
    """Per-CPU (busy, total) jiffies from /proc/stat ("cpu0", ...); None where it cannot be read.

    Busy counts everything but idle and iowait, niced work included: a nice-19 job still
    holds the core whenever nothing else wants it, which is all a spinning thread does.
    """
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu" and len(fields) >= 5:
            ticks = [int(f) for f in fields[:8]]
            out[name] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out or None


def idle_cores(before: dict[str, tuple[int, int]] | None, after: dict[str, tuple[int, int]] | None) -> float | None:
    """How many of this process's CPUs were idle between two cpu_times() samples; None if unknown."""
    if not before or not after:
        return None
    allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else set(after)
    idle = 0.0
    for name in allowed & set(before) & set(after):
        busy, total = (a - b for a, b in zip(after[name], before[name]))
        if total <= 0:
            return None
        idle += 1 - busy / total
    return idle


def sample_idle_cores(seconds: float = 0.1) -> float | None:
    """idle_cores over `seconds` from now (the caller is asleep meanwhile, so it is other processes' load)."""
    import time

    before = cpu_times()
    time.sleep(seconds)
    return idle_cores(before, cpu_times())
