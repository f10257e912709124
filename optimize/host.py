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
