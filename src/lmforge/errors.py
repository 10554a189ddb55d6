"""Errors a user can act on.

Every error says what is wrong, where (a file and line, a field or a flag), and what to do about it. The CLI prints
one and exits with code 2; the server answers 4xx with the message as JSON ``detail``. Validation collects all
problems first and raises one error that lists them, so a user fixes a file in one pass, not one line per run.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_LISTED_PROBLEMS = 12


class LmforgeError(Exception):
    """A problem the user can fix; never a bug in lmforge."""

    exit_code = 2

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        fix: str | None = None,
        problems: Iterable[str] = (),
    ) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.what if not self.where else f"{self.where}: {self.what}"]
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  - ... and {len(self.problems) - len(shown)} more")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class DataError(LmforgeError):
    """Input data is missing, unreadable or does not fit the task."""


class ConfigError(LmforgeError):
    """A config file, flag or override is invalid."""


class ModelLoadError(LmforgeError):
    """A model or tokenizer cannot be found or loaded."""


class RunDirError(LmforgeError):
    """A run dir is missing, incomplete, or would be overwritten."""


class CheckpointError(LmforgeError):
    """A checkpoint cannot be resumed from: changed after it was written, unsafe to load, or made for another model."""
