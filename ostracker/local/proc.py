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
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


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
    try:  # os.open and one read: a stat line is far below 4 KiB, and no buffer is needed
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # gone (ENOENT, ESRCH)
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:  # vanishing while read
        return None
    finally:
        os.close(fd)
    if not raw:
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


class Member:
    """One process of a job's tree: who it is (PID and start ticks) and what it is doing."""

    __slots__ = ("pid", "start_ticks", "state", "pgid")

    def __init__(self, pid: int, start_ticks: int, state: str, pgid: int):
        self.pid, self.start_ticks, self.state, self.pgid = pid, start_ticks, state, pgid

    def __repr__(self) -> str:
        return f"Member({self.pid}, {self.state})"


def job_tree(leader: int, job_id: str, reaper: int | None) -> list[Member]:
    """Every live process of a job: its tree, also what left the job's process group.

    The tree is the leader's process group, everything descended from it, and
    every process that the reaper adopted (as the job's subreaper, it inherits
    what a job's process leaves behind when it dies) whose environment still
    names the job (``JOB_ID``, which every process of the job inherits unless
    it clears its environment), with their descendants.  Zombies are left
    out: they can do nothing.  One pass over /proc.
    """
    table = _live_processes()
    members = {pid for pid, (_, pgid, _, _) in table.items() if pgid == leader or pid == leader}
    if reaper is not None:
        tag = f"JOB_ID={job_id}".encode()
        members |= {pid for pid, (ppid, _, _, _) in table.items()
                    if ppid == reaper and pid not in members and tag in _environment(pid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pending = list(members)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in members:
                members.add(child)
                pending.append(child)
    return [Member(pid, table[pid][3], table[pid][2], table[pid][1]) for pid in sorted(members)]


def adopted(reaper: int) -> list[Member]:
    """The live children of ``reaper`` (a subreaper: what the jobs' trees left it)."""
    return [Member(pid, ticks, state, pgid)
            for pid, (ppid, pgid, state, ticks) in _live_processes().items() if ppid == reaper]


def _live_processes(pids: list[int] | None = None) -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, pgid, state, start ticks) of every process but zombies, one pass
    (of those in ``pids`` only, if given)."""
    if pids is None:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    table = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None and fields[0] not in (b"Z", b"X"):
            table[pid] = (int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19]))
    return table


def find_by_environment(entry: str, parent: int | None = None) -> Member | None:
    """The live process of this user whose environment holds ``entry`` (``KEY=value``).

    With ``parent``, among its children first: a few reads, where a pass over
    /proc reads every process (then made only if none of them is the one: the
    parent died, say, and its child was adopted by another).
    """
    wanted = entry.encode()
    uid = os.getuid()

    def among(pids: list[int] | None) -> Member | None:
        for pid, (_, pgid, state, ticks) in _live_processes(pids).items():
            if owner(pid) == uid and wanted in _environment(pid):
                return Member(pid, ticks, state, pgid)
        return None

    nearest = None if parent is None else children(parent)
    return (among(nearest) if nearest else None) or among(None)


def children(pid: int) -> list[int] | None:
    """The children of ``pid``'s main thread (which started them); None if unreadable."""
    try:
        fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:  # os calls, no buffered file: the reaper asks this at the end of every task
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return [int(child) for child in b"".join(chunks).split()]
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _environment(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


def signal_members(members: list[Member], signum: int, leader: int | None = None) -> None:
    """``signum`` to the leader's process group (in one call), and to each member outside it.

    Each PID is checked against its start ticks first: a process that ended
    meanwhile, its PID given to another, is never signalled.
    """
    if leader is not None and any(member.pid == leader for member in members):
        try:
            os.killpg(leader, signum)
        except (ProcessLookupError, PermissionError):
            pass
    for member in members:
        if leader is not None and member.pgid == leader:
            continue
        if identify(member.pid, member.start_ticks) is not None:
            try:
                os.kill(member.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass


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


def pidfd_of(pid, still_it) -> int | None:
    """A pidfd of ``pid`` if ``still_it()`` says, once it is open, that the PID was not
    given to another process meanwhile; else None."""
    if not isinstance(pid, int):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if still_it():
        return pidfd
    os.close(pidfd)
    return None
