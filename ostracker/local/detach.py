"""Detached lean interpreters: how ostracker starts the processes it leaves running.

A reaper, the scheduler and a standby reaper (``standby``) may live for days,
so each runs a fresh interpreter started with ``-I -S``: no user or site
packages, no ``PYTHON*`` variables, nothing loaded but what it needs (not
click).  The package's own directory is put on ``sys.path`` by hand: the
caller's ``BOOTSTRAP`` code gets it as ``sys.argv[1]``, its own arguments after.
"""

from __future__ import annotations

import os
import sys

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def exec_lean(bootstrap: str, args: list[str]) -> None:
    """Become a lean interpreter running ``bootstrap`` with ``args``; never returns
    (OSError if the interpreter cannot be executed)."""
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", bootstrap, _PACKAGE_PARENT,
                              *args])


def start_lean(bootstrap: str, args: list[str], keep: frozenset[int] = frozenset()) -> bool:
    """Start a lean interpreter running ``bootstrap``, detached from the caller: a double
    fork (no zombie is left with it) and ``setsid`` (no terminal hang-up or end of a
    cron run reaches it), its descriptors detached but ``keep`` (``detach_descriptors``).
    False if it could not even be forked."""
    try:
        child = os.fork()
    except OSError:
        return False
    if child:
        os.waitpid(child, 0)  # the middle process exits at once
        return True
    try:
        os.setsid()
        if os.fork() == 0:
            detach_descriptors(keep)
            for fd in keep:
                os.set_inheritable(fd, True)
            exec_lean(bootstrap, args)
    finally:
        os._exit(0)


def detach_descriptors(keep) -> None:
    """stdin/stdout/stderr to /dev/null (a shell reading ``$(ostracker submit ...)`` is
    not kept waiting); every other descriptor closed but ``keep``."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)
    low = 3
    for fd in sorted(keep) + [os.sysconf("SC_OPEN_MAX")]:
        os.closerange(low, fd)
        low = fd + 1
