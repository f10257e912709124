"""The one user-facing error type. The CLI prints it on one line and exits non-zero."""

import errno
import os


class OptimizeError(Exception):
    """A problem the user can fix: `message` says what is wrong, `fix` what to do about it."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message, fix)  # both args, so the error survives pickling across processes
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class GateFailure(OptimizeError):
    """The run went as asked and a stage (or the evaluated pair) did not pass a check or gate.

    The CLI exits 1 for it, and 2 for every other OptimizeError (usage or input), so CI can
    tell "the model regressed" from "bad invocation".
    """


# The environment faults a user can fix, by errno, and what to do about each. An OSError
# with another errno is a bug and keeps its traceback.
_OS_FIXES = {
    errno.ENOSPC: "free disk space, or write to a larger disk",
    errno.EDQUOT: "free space within your disk quota, or write elsewhere",
    errno.EFBIG: "a file outgrew the file-size limit (ulimit -f) or the file system: raise the limit or write elsewhere",
    errno.EACCES: "choose a location you may write to, or fix its permissions",
    errno.EPERM: "choose a location you may write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOTDIR: "a file stands where a directory is needed: choose another path",
    errno.EISDIR: "a directory stands where a file is needed: choose another path",
    errno.EEXIST: "something stands in the way: choose another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def environment_error(e: OSError) -> OptimizeError | None:
    """The OptimizeError for a fixable environment fault (disk full, read-only, ...), or None for anything else."""
    fix = _OS_FIXES.get(e.errno)  # type: ignore[arg-type]
    if fix is None:
        return None
    where = f": {e.filename}" if e.filename else ""
    return OptimizeError(f"{e.strerror or os.strerror(e.errno)}{where}", fix)  # type: ignore[arg-type]
