"""User-facing errors and the per-file problem log.

A user mistake (a corrupt image, a malformed XML, a missing file) never ends in a bare traceback:
a single :class:`BlastscopeError` ends a command with one line, and a :class:`ProblemLog` collects
per-file problems so that a run goes on with the rest and ends with a summary.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["BlastscopeError", "Problem", "ProblemLog", "describe_os_error"]


class BlastscopeError(Exception):
    """An error caused by the user's input; its message names the file, the problem and the fix.

    The CLI prints it as one line (``error: <message>``) and exits with status 2.
    """


_OS_FIXES = {
    errno.ENOSPC: "free disk space or choose another output folder",
    errno.EDQUOT: "free disk space (quota) or choose another output folder",
    errno.EACCES: "check the folder's permissions or choose another output folder",
    errno.EPERM: "check the folder's permissions or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.ENOENT: "check that the folder exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder; give a file name",
    errno.EEXIST: "a file of that name is in the way (a folder is needed there); move it or choose another path",
    errno.EIO: "the disk reported an input/output error; check it",
}


def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: ``<path>: <errno's meaning> (<ENAME>); <fix>``.

    >>> describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/a/last.pt"))
    'runs/a/last.pt: No space left on device (ENOSPC); free disk space or choose another output folder'
    """
    path = str(e.filename) if e.filename is not None else "(file not named by the system)"
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    code = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    meaning = e.strerror or (os.strerror(e.errno) if e.errno is not None else (str(e) or type(e).__name__))
    fix = _OS_FIXES.get(e.errno, "check the path")
    return f"{path}: {meaning}{f' ({code})' if code else ''}; {fix}"


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
