"""OS processes: starting them, knowing them again, and signalling their groups.

A PID alone is not an identity: once a process has ended, its number is given
to the next one.  A job's process is therefore known by ``(pid, start_ticks)``
— the start time in clock ticks since boot, field 22 of ``/proc/PID/stat`` —
together with the boot it ran in.  Every signal goes through ``identify`` first,
so a record whose process is gone, or whose PID now names another process, is
never signalled.

This module reads /proc directly rather than through psutil: it is used by the
reaper and by every control command, which must stay light.
"""

from __future__ import annotations

import os
import signal

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# Signals a job must find at their default action, whatever the reaper (or the
# shell that started ostracker) ignored or caught: the SIG_IGN trap.
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def boot_id() -> str:
    """The kernel's ID of this boot: records from an earlier boot name dead processes."""
    with open(_BOOT_ID_PATH) as handle:
        return handle.read().strip()


class ProcessStat:
    """What /proc/PID/stat says of a process that a caller cares about."""

    __slots__ = ("state", "pgid", "start_ticks")

    def __init__(self, state: str, pgid: int, start_ticks: int):
        self.state = state  # one letter: R, S, D, T (stopped), t, Z (zombie), X ...
        self.pgid = pgid
        self.start_ticks = start_ticks


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None.

    The command name (field 2) is in parentheses and may itself hold ") ".
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:  # gone (ENOENT, ESRCH) or vanishing while read
        return None
    return raw[raw.rindex(b")") + 2:].split()


def _every_stat():
    """The stat fields of every process on the machine, in one pass over /proc."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields is not None:
                yield fields


def stat(pid: int) -> ProcessStat | None:
    """The process ``pid`` as /proc shows it now, or None if there is none."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return ProcessStat(state=fields[0].decode(), pgid=int(fields[2]), start_ticks=int(fields[19]))


def owner(pid: int) -> int | None:
    """The user ID that owns process ``pid``, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None


def identify(pid: int, start_ticks: int) -> ProcessStat | None:
    """The process if ``pid`` still names the one that started at ``start_ticks``."""
    current = stat(pid)
    if current is None or current.start_ticks != start_ticks:
        return None
    return current


GONE = "its process is gone"


def signal_group(pid: int, start_ticks: int, signum: int) -> str | None:
    """Send ``signum`` to the process group led by the job's process.

    Returns None once sent, or why nothing was sent: ``GONE`` when that process
    ended or its PID now names another process, or another reason when it no
    longer leads its own group or belongs to another user (a setuid program).
    """
    current = identify(pid, start_ticks)
    if current is None:
        return GONE
    if current.pgid != pid:
        return "its process left its process group"
    if owner(pid) != os.getuid():
        return "its process belongs to another user"
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return GONE
    except PermissionError:
        return "its process group is not ours to signal"
    return None


def stopped_in_vfork(pid: int) -> bool:
    """Whether ``pid`` cannot run because the child it vforked is stopped.

    A shell such as dash starts commands with vfork and waits, uninterruptibly
    (state D), until the child execs.  If SIGTSTP stops the child before that,
    the shell cannot stop — it never sees the signal — yet nothing of the job
    runs until SIGCONT: the job is suspended all the same.
    """
    current = stat(pid)
    if current is None or current.state != "D":
        return False
    return any(int(fields[1]) == pid and fields[0] in (b"T", b"t") for fields in _every_stat())


def live_groups(pgids: set[int]) -> set[int]:
    """Which of the process groups ``pgids`` still hold a live (not zombie) process.

    Zombies are left out: once killed, a job's children wait to be reaped by
    init, which may take its time, but they can no longer do anything.  One
    pass over /proc, whatever the number of groups asked about.
    """
    return {int(fields[2]) for fields in _every_stat()
            if fields[0] not in (b"Z", b"X") and int(fields[2]) in pgids}


def resolve_command(command: str, path_variable: str | None) -> str:
    """The file to execute: ``command`` itself if it holds a ``/``, else its PATH match.

    Raises FileNotFoundError when no executable of that name is on the PATH.
    """
    if "/" in command:
        return command
    for directory in (path_variable or os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"command not found in PATH: {command}")


def spawn(executable: str, argv: list[str], environment: dict[str, str],
          stdin_fd: int, stdout_fd: int, stderr_fd: int) -> int:
    """Start a job process in a new process group of the caller's session.

    The group lets control signals reach every process the job starts; staying
    in the caller's session keeps the group from being orphaned, which would make
    Linux discard SIGTSTP.  Signal dispositions and mask are reset to defaults.
    posix_spawn reports exec errors (ENOENT, EACCES, ENOEXEC) as OSError.
    """
    actions = [(os.POSIX_SPAWN_DUP2, stdin_fd, 0),
               (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
               (os.POSIX_SPAWN_DUP2, stderr_fd, 2)]
    return os.posix_spawn(executable, argv, environment, file_actions=actions,
                          setpgroup=0, setsigdef=_DEFAULT_SIGNALS, setsigmask=())
