"""The ``ostracker`` command's entry point: what must come before the CLI loads.

Loading the CLI (click) takes most of a short command's time.  Before it, the
standard descriptors are made safe, and a ``submit`` lets its backend prepare
(``registry.before_submit``: the local one starts the job's reaper, which then
loads at the same time).
"""

from __future__ import annotations

import os
import sys

# Global options that take a value, as the CLI's group has them.
_VALUED = ("--state-dir", "--backend")


def main(argv: list[str] | None = None) -> None:
    """``ostracker ARGS...``."""
    _reserve_standard_fds()
    backend = _submits_to(sys.argv[1:] if argv is None else argv)
    if backend is not None:  # "": the default
        from .core import registry

        registry.before_submit(backend)
    from .cli import main as run_cli

    run_cli(argv)


def _submits_to(args: list[str]) -> str | None:
    """The backend that ``args`` submit to, if they are a ``submit``, as far as can be
    told before the CLI parses them (a wrong guess costs time, nothing more)."""
    backend = os.environ.get("OSTRACKER_BACKEND") or None
    words = iter(args)
    for word in words:
        if word in _VALUED:
            value = next(words, "")
            if word == "--backend":
                backend = value
        elif word.startswith("--backend="):
            backend = word.partition("=")[2]
        elif not word.startswith("--state-dir="):  # the command
            return (backend or "") if word == "submit" else None
    return None


def _reserve_standard_fds() -> None:
    """A closed stdin, stdout or stderr: /dev/null, read-only, in its place.

    Then no file that ostracker (or a job it starts) opens later becomes
    descriptor 1 and takes what was meant for stdout, and writing to stdout
    fails with EBADF as on the closed descriptor: one line, exit 1, not
    click's silence.  Python leaves ``sys.stdout`` None when descriptor 1 was
    closed at its start, so an open one costs nothing here.
    """
    if sys.stdin is not None and sys.stdout is not None and sys.stderr is not None:
        return
    for fd, stream in ((0, sys.stdin), (1, sys.stdout), (2, sys.stderr)):
        if stream is not None:
            continue
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # every write: EBADF, "Bad file descriptor"
