"""The one user-facing error type. The CLI prints it on one line and exits non-zero."""


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
