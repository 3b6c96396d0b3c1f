"""User-facing errors.

Every failure a user can cause (a missing file, an unknown format, a bad config key ...) is raised as a
`TuneforgeError` carrying what went wrong and what to do about it. The CLI prints it as one line and exits
non-zero; the service turns it into an error response. Anything else escaping is a bug in tuneforge.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    """A problem the user can fix. `fix` says how."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class DataError(TuneforgeError):
    """The user's data cannot be read or used as asked."""


class ConfigError(TuneforgeError):
    """The run's configuration is invalid."""


class ModelError(TuneforgeError):
    """A model cannot be found or loaded."""


class RunDirError(TuneforgeError):
    """The run folder cannot be used for this run."""


class MemoryBudgetError(TuneforgeError):
    """The run would not fit in the memory this machine has free."""


class ExportError(TuneforgeError):
    """A model cannot be exported as asked."""
