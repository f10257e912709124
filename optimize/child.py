"""Work in a child process that dies with its parent.

The runner does every stage and every evaluation in a fresh process (own address space:
its peak RSS is measured, and the GBs an AED-L session keeps leave with it). Such a child
must never outlive the run: killed with its parent (SIGTERM, SIGINT or kill -9 of the
parent alone), it would sit idle holding its memory. Two mechanisms cover that:

- on Linux the child asks the kernel for SIGKILL when its parent dies (prctl
  PR_SET_PDEATHSIG), and exits at once if the parent is already gone;
- the parent kills the child in a `finally` when anything (Ctrl-C, an error) interrupts
  the wait.

The child ignores SIGINT: Ctrl-C reaches the whole foreground process group, and the
parent alone reports it (one line) and stops the child, instead of each child printing
its own KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Iterator

from optimize.errors import OptimizeError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Held back while a child starts: a Ctrl-C in the parent between fork and the first
# line of the child would leave a half-started child printing a traceback of its own.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RemoteTraceback(Exception):
    """The child's traceback text, attached as __cause__ of an exception it raised (a bug)."""

    def __str__(self) -> str:
        return self.args[0]


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when `parent_pid` (its parent) dies (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def _child_main(conn, parent_pid: int, fn: Callable, args: tuple) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent while it started us
    try:
        message = (True, fn(*args))
    except BaseException as e:  # noqa: BLE001 - sent to the parent, which re-raises it
        message = (False, (e, traceback.format_exc()))
    try:
        conn.send(message)
    except Exception as e:  # an exception that does not pickle: send its text
        conn.send((False, (RuntimeError(f"{type(message[1][0]).__name__}: {message[1][0]}"), traceback.format_exc() + str(e))))
    conn.close()


@contextlib.contextmanager
def _deferred(signals: tuple[int, ...]) -> Iterator[None]:
    """Hold `signals` back, then act on the first one that came meanwhile.

    They are blocked in this thread, and the child inherits the mask through exec, so
    its start-up cannot be interrupted (it unblocks them once it ignores SIGINT). Another
    thread of this process (onnxruntime's) may still take one: the handler then only records it.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signals}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending on this thread is handled now
    if caught:
        handler = previous[caught[0]]
        if callable(handler):
            handler(caught[0], None)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), caught[0])


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def run_in_child(what: str, fn: Callable, *args: Any) -> Any:
    """fn(*args) in a fresh (spawned) process; returns its result or re-raises its exception.

    `what` names the work in the error raised when the child dies without an answer
    (the out-of-memory killer, a kill from outside).
    """
    context = multiprocessing.get_context("spawn")  # fresh interpreter: own VmHWM, no inherited imports
    receive, send = context.Pipe(duplex=False)
    proc = context.Process(target=_child_main, args=(send, os.getpid(), fn, args), daemon=True)
    try:
        with _deferred(STOP_SIGNALS):  # a Ctrl-C meanwhile is raised after the start, inside this try
            proc.start()
            send.close()
        try:
            ok, value = receive.recv()
        except EOFError:
            proc.join()
            raise OptimizeError(
                f"the {what} process died without an answer ({_death(proc.exitcode)})",
                "at AED-L size that is usually the out-of-memory killer: free memory (dmesg shows the kill) and re-run; finished stages are cached",
            ) from None
        proc.join()
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
    if ok:
        return value
    error, text = value
    if not isinstance(error, OptimizeError):
        error.__cause__ = RemoteTraceback(text)
    raise error
