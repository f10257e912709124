"""Peak resident memory of this process, per named phase.

A 1.1B-parameter model is 4.6 GB in fp32, and export, quantization and the
benchmark each hold it in some form: whether a step fits on a shared machine is
decided by its peak RSS, not by the final file size. `ru_maxrss` gives one peak
per process, so a sampler reads /proc/<pid>/statm every few milliseconds and
charges each sample to the phases that are open. The sampler is a separate
process: a thread would stall whenever a C extension holds the GIL (protobuf
serialization, torch's ONNX export), which is exactly when memory peaks.

The sampler costs the process it watches: each read of statm takes that process's
memory-map lock, and on 2 cores the sampler's wake-ups take a core from a 2-thread
session (BENCHMARKS 5.3: an int8 decoder step +18-26% with it running). Code that times
something inside a PeakRss runs the timed part under `paused()`: the sampler then blocks
on an event (no reads; one wake-up a second) until the block ends.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1 << 30
MAX_PHASES = 64  # phases per PeakRss (slots in the shared arrays)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (anonymous + file-backed pages), in bytes."""
    return _statm(pid)[0]


def anon_bytes(pid: int | str = "self") -> int:
    """Resident memory not backed by a file: what the process really costs the machine.

    Pages of memory-mapped files (a checkpoint loaded with mmap, ORT's mapped external
    data) count in RSS but the kernel can drop them; these cannot be dropped.
    """
    resident, shared = _statm(pid)
    return resident - shared


def max_rss_bytes() -> int:
    """The kernel's high-water mark of RSS for this process's own memory (VmHWM).

    Not `ru_maxrss`: Linux keeps that across fork and execve, so a child spawned by a
    parent holding 10 GB reports at least 10 GB whatever it does itself. VmHWM
    belongs to the address space, which execve replaces. `ru_maxrss` (KiB) is the
    fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_high_water() -> bool:
    """Reset this process's VmHWM to its RSS now (Linux >= 4.0), so the next `max_rss_bytes` is the peak since; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _statm(pid: int | str) -> tuple[int, int]:
    """(resident, resident file-backed + shmem) bytes, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm") as f:
        fields = f.read().split()
    return int(fields[1]) * _PAGE, int(fields[2]) * _PAGE


def _sampler(pid: int, open_mask, peaks, ready, stop, interval_s: float, sampling, reading, count) -> None:
    """Sampler process body: peaks[2i] = max RSS, peaks[2i+1] = max anon while phase i is open.

    Each sample is taken holding `reading` and only while `sampling` is set; while it is
    clear the sampler blocks on it (waking once a second to exit if `pid` has died).
    `count` counts the samples taken.
    """
    ready.set()
    while not stop.is_set():
        if not sampling.is_set():
            if not sampling.wait(1.0) and not os.path.exists(f"/proc/{pid}"):
                return  # the watched process died while paused (killed): no one will resume or stop us
            continue
        with reading:
            if not sampling.is_set():
                continue
            try:
                resident, shared = _statm(pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            mask = open_mask.value
            i = 0
            while mask:
                if mask & 1:
                    peaks[2 * i] = max(peaks[2 * i], resident)
                    peaks[2 * i + 1] = max(peaks[2 * i + 1], resident - shared)
                mask >>= 1
                i += 1
            count.value += 1
        time.sleep(interval_s)


@dataclass
class PhasePeak:
    seconds: float = 0.0  # wall-clock duration (summed over entries)
    start_bytes: int = 0  # RSS when the phase (last) opened
    end_bytes: int = 0  # RSS when it (last) closed
    peak_bytes: int = 0  # highest RSS seen while open
    peak_anon_bytes: int = 0  # highest anonymous (not file-backed) RSS seen while open
    set_high_water: bool = False  # the process's ru_maxrss rose while open: peak_bytes is exact

    def to_json(self) -> dict:
        gib = lambda b: round(b / GIB, 3)  # noqa: E731
        return {
            "seconds": round(self.seconds, 2),
            "start_gib": gib(self.start_bytes),
            "end_gib": gib(self.end_bytes),
            "peak_gib": gib(self.peak_bytes),
            "peak_anon_gib": gib(self.peak_anon_bytes),
            "set_high_water": self.set_high_water,
        }


@dataclass
class PeakRss:
    """Use as a context manager; `phase(name)` then charges the samples taken while it is open.

    Phases may nest: a sample counts for every open phase. A phase opened twice under
    the same name keeps the larger peak and the summed duration. Besides the samples,
    a phase during which the kernel's ru_maxrss rose gets that exact value as its peak.
    `paused()` stops the sampler for a timed block; `samples` counts what it has taken.
    """

    interval_s: float = 0.002
    phases: dict[str, PhasePeak] = field(default_factory=dict)
    _slots: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> "PeakRss":
        ctx = multiprocessing.get_context("spawn")  # never fork a process holding gigabytes
        self._mask = ctx.Value("Q", 0, lock=False)
        self._peaks = ctx.Array("q", 2 * MAX_PHASES, lock=False)
        self._stop, ready = ctx.Event(), ctx.Event()
        self._sampling, self._reading = ctx.Event(), ctx.Lock()
        self._sampling.set()
        self._count = ctx.Value("Q", 0, lock=False)
        args = (os.getpid(), self._mask, self._peaks, ready, self._stop, self.interval_s, self._sampling, self._reading, self._count)
        self._proc = ctx.Process(target=_sampler, args=args, daemon=True)
        self._proc.start()
        while not ready.wait(0.1):  # phases opened before the first sample would be missed
            if not self._proc.is_alive():
                raise RuntimeError(
                    f"the memory sampler process exited with code {self._proc.exitcode} before sampling; "
                    "a script using PeakRss must guard its entry point with `if __name__ == '__main__':` (spawn re-imports it)"
                )
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampling.set()  # a paused sampler wakes up to see the stop
        self._proc.join()

    @property
    def sampling(self) -> bool:
        """Whether the sampler is reading (False inside `paused()`)."""
        return self._sampling.is_set()

    @property
    def samples(self) -> int:
        """Samples taken so far (they stop counting inside `paused()`)."""
        return self._count.value

    @contextmanager
    def paused(self):
        """Stop sampling for the block (a timed region): no sample is taken from entry to exit."""
        if not self._sampling.is_set():  # nested: already paused
            yield
            return
        self._sampling.clear()
        with self._reading:  # a sample under way finishes; the next one sees the clear event
            pass
        try:
            yield
        finally:
            self._sampling.set()

    @contextmanager
    def phase(self, name: str):
        """Time `name` and record its peak RSS while the block runs."""
        if name not in self._slots:
            if len(self._slots) == MAX_PHASES:
                raise ValueError(f"more than {MAX_PHASES} phases")
            self._slots[name] = len(self._slots)
            self.phases[name] = PhasePeak()
        slot, p = self._slots[name], self.phases[name]
        p.start_bytes = rss_bytes()
        p.peak_anon_bytes = max(p.peak_anon_bytes, anon_bytes())
        high_water = max_rss_bytes()
        self._mask.value |= 1 << slot
        start = time.perf_counter()
        try:
            yield p
        finally:
            p.seconds += time.perf_counter() - start
            p.end_bytes = rss_bytes()
            p.peak_anon_bytes = max(p.peak_anon_bytes, anon_bytes())
            self._mask.value &= ~(1 << slot)
            p.peak_bytes = max(p.peak_bytes, self._peaks[2 * slot], p.start_bytes, p.end_bytes)
            p.peak_anon_bytes = max(p.peak_anon_bytes, self._peaks[2 * slot + 1])
            if max_rss_bytes() > high_water:
                p.set_high_water = True
                p.peak_bytes = max(p.peak_bytes, max_rss_bytes())

    def to_json(self) -> dict:
        return {name: p.to_json() for name, p in self.phases.items()}
