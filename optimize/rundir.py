"""The run directory: where it may be, and one run at a time in it.

A run rewrites everything inside its directory (stage directories are redone, `final/`
is replaced), so the input pair must lie outside it; and two runs on one directory
would delete each other's outputs, so a run holds an exclusive lock on it (flock: the
kernel releases it when the holder dies, even by kill -9).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from optimize.errors import OptimizeError

LOCK = ".lock"  # holds the pid of the run that holds the lock


def check_paths(model: Path, run_dir: Path) -> None:
    """Refuse an input pair inside (or equal to) the run directory, and a run directory that is a file."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OptimizeError(f"output {run_dir} is a file, not a directory", "pass a directory path with -o/--output")
    src, out = model.resolve(), run_dir.resolve()
    if src == out or out in src.parents:
        raise OptimizeError(
            f"the input pair {model} lies inside the run directory {run_dir}, which this run rewrites",
            f"copy it out first (cp -r {model} some/where) and pass that as --model, or pass another -o",
        )


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Create `run_dir` and hold an exclusive lock on it; a second run fails at once naming the holder."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OptimizeError(f"cannot create the run directory {run_dir}: {e.strerror}", "pass a writable -o/--output") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OptimizeError(
                f"run directory {run_dir} is in use by another optimize run (pid {holder})",
                "wait for it to finish, or pass another -o/--output",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
