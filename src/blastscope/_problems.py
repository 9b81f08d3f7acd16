"""User-facing errors and the per-file problem log.

A user mistake (a corrupt image, a malformed XML, a missing file) never ends in a bare traceback:
a single :class:`BlastscopeError` ends a command with one line, and a :class:`ProblemLog` collects
per-file problems so that a run goes on with the rest and ends with a summary.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["BlastscopeError", "Problem", "ProblemLog"]


class BlastscopeError(Exception):
    """An error caused by the user's input; its message names the file, the problem and the fix.

    The CLI prints it as one line (``error: <message>``) and exits with status 2.
    """


@dataclass(frozen=True)
class Problem:
    """One problem with one input file.

    Attributes
    ----------
    path : str
        The file (or folder) concerned.
    message : str
        What is wrong, in a few words.
    fix : str
        What the user can do about it (may be empty).
    """

    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


@dataclass
class ProblemLog:
    """Collects per-file problems, printing each as one line as it happens.

    Parameters
    ----------
    stream : file-like, optional
        Where each problem line goes (default ``sys.stderr``); ``None`` keeps them silent.
    strict : bool
        When true the first problem raises :class:`BlastscopeError` instead of being skipped.
    max_lines : int
        Print at most this many problem lines (a dataset with thousands of bad files must not
        flood the terminal); the rest are counted, kept in :attr:`problems` and mentioned once.

    Examples
    --------
    >>> log = ProblemLog(stream=None)
    >>> log.add("a.bmp", "cannot read image", "re-copy the file")
    >>> len(log)
    1
    """

    stream: TextIO | None = field(default_factory=lambda: sys.stderr)
    strict: bool = False
    max_lines: int = 25
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: str | Path, message: str, fix: str = "") -> None:
        problem = Problem(str(path), message, fix)
        if self.strict:
            raise BlastscopeError(f"{problem} (--strict stops at the first problem)")
        self.problems.append(problem)
        if self.stream is None:
            return
        if len(self.problems) <= self.max_lines:
            print(f"skipped: {problem}", file=self.stream)
        elif len(self.problems) == self.max_lines + 1:
            print(f"skipped: ... more problems; only the first {self.max_lines} are printed", file=self.stream)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self):
        return iter(self.problems)

    def summary(self, n_ok: int, what: str = "images") -> str:
        """One line: how many items were usable and how many were skipped."""
        if not self.problems:
            return f"{n_ok} {what} ok, no problems"
        return f"{n_ok} {what} ok, {len(self.problems)} skipped (see the 'skipped:' lines above)"

    def finish(self, n_ok: int, what: str = "images") -> None:
        """Print the summary; raise :class:`BlastscopeError` when nothing usable is left."""
        if self.stream is not None:
            print(self.summary(n_ok, what), file=self.stream)
        if n_ok == 0:
            first = f" (first problem: {self.problems[0]})" if self.problems else ""
            raise BlastscopeError(f"no usable {what}{first}")
