"""Fault injection with strace for the crash-point sweeps (tests/test_crash_points.py).

Two uses.

As a module, for the tests: ``Lab`` runs one *case* — a command of the real
CLI (``submit``, ``terminate``, ``delete``) with strace killing (SIGKILL) or
failing (ENOSPC) one OS call of one process — and checks ostracker's promises
from the outside: every live process whose environment holds the case's
marker (``-e MARK=uuid``) is listed by ``status --json`` with its PID in a
state that has not ended; ``delete --finished`` never removes it; once all
are gone nothing stays Queued/Running, ``wait`` returns, and a job whose
reaper lived has its real end.  ``Plan`` turns one traced run without a fault
into the list of crash points: one before every *effectful* OS call (one that
changes something another process can see: files of the state dir, pipes,
sockets, locks, processes, signals; reads of Python's own files, of /proc
and /etc are not), each aimed with strace's ``when=N`` at a call of its gap
whose per-syscall count is stable, and checked afterwards against the run's
own trace (``Hit``).

As a script (``python faultinject.py ARGS...``): the ostracker CLI with
``os.fork`` wrapped, so that the process whose role ``FI_STOP`` names
(``middle``: the first fork of the CLI, which starts the reaper a ``submit``
starts ahead of its job, README "Decisions"; ``reaper``: the middle's fork)
writes its PID to ``FI_PIDFILE`` and stops itself with SIGSTOP right after the
fork, before any of its own code runs (the first such process only).  The test attaches ``strace -p`` to it (only that process: strace's
``when=`` counts per syscall and per tracee, so a sweep over one process
needs that process alone traced), then sends SIGCONT.  The reaper stays the
same tracee across its exec of the lean interpreter, so one sweep covers the
reaper before and after its exec: while it loads and waits for the job, and as
it runs the job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
CLI = [PYTHON, "-m", "ostracker"]
HARNESS = [PYTHON, os.path.abspath(__file__)]
STRACE = shutil.which("strace")
ROLES = ("cli", "middle", "reaper")
ENDED = ("Done", "Failed", "Undetermined")

# -- the harness (script mode) ----------------------------------------------------------------


def _harness(argv: list[str]) -> None:
    target = os.environ.pop("FI_STOP", "")
    pidfile = os.environ.pop("FI_PIDFILE", "")
    role = ["cli"]
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid == 0:
            role[0] = ROLES[min(ROLES.index(role[0]) + 1, len(ROLES) - 1)]
            if role[0] == target:
                try:  # only the first: after a standby killed, submit forks a reaper
                    fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600)
                except FileExistsError:
                    return pid
                os.write(fd, b"%d\n" % os.getpid())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGSTOP)  # the tracer attaches, then SIGCONT
        return pid

    os.fork = fork
    sys.path.insert(0, REPO)
    from ostracker.command import main

    main(argv)


# -- strace itself ------------------------------------------------------------------------------

def strace_problem() -> str | None:
    """Why strace's fault injection cannot be used here (None when it can)."""
    if STRACE is None:
        return "strace is not installed (Debian package strace)"
    try:
        done = subprocess.run([STRACE, "-qq", "-o", "/dev/null", "-e", "trace=getpid",
                               "-e", "inject=getpid:signal=SIGKILL:when=1",
                               PYTHON, "-c", "import os; os.getpid()"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace does not run: {exc}"
    if "PTRACE" in done.stderr or "Operation not permitted" in done.stderr:
        return f"ptrace is not permitted here: {done.stderr.strip().splitlines()[-1]}"
    if done.returncode != -signal.SIGKILL and done.returncode != 128 + signal.SIGKILL:
        return (f"strace's signal injection does not work here (exit {done.returncode}: "
                f"{done.stderr.strip()[-200:]})")
    # Attaching to a process that is not strace's child (as the reaper sweeps do):
    # Yama's ptrace_scope 1 forbids it to non-root users.
    target = subprocess.Popen(["sleep", "30"])
    tracer = subprocess.Popen([STRACE, "-qq", "-o", "/dev/null", "-e", "trace=none",
                               "-p", str(target.pid)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while _tracer_of(target.pid) in (0, None) and tracer.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.002)
        if tracer.poll() is not None or _tracer_of(target.pid) in (0, None):
            tracer.kill()
            error = tracer.communicate()[1].strip()
            return f"strace cannot attach to a running process: {error[-200:]}"
    finally:
        tracer.kill()
        tracer.wait()
        target.kill()
        target.wait()
    return None


# -- traces -------------------------------------------------------------------------------------

@dataclass
class Call:
    pid: int | None
    name: str
    args: str
    ret: str
    killed: bool = False      # killed on entry (by our injection or anyone's SIGKILL)

    @property
    def injected(self) -> bool:
        return "(INJECTED)" in self.ret


_KILLED = re.compile(r"^(\w+)\((.*?)\s*<unfinished \.\.\.>\)\s*= \?$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_RETURN = re.compile(r"^(.*)\)\s+= (.*)$")  # greedy: the last ") = " (strace pads with spaces)


def parse_trace(path: str) -> tuple[list[Call], dict]:
    """Calls of every tracee in order, and each tracee's end (``exited with 0``,
    ``killed by SIGKILL``), from ``strace -o`` output (with or without ``-f`` PIDs)."""
    calls: list[Call] = []
    pending: dict = {}
    ends: dict = {}
    try:
        handle = open(path, errors="replace")
    except FileNotFoundError:
        return calls, ends
    with handle:
        for raw in handle:
            line = raw.rstrip("\n")
            pid = None
            head = re.match(r"^(\d+) +", line)
            if head:
                pid, line = int(head.group(1)), line[head.end():]
            if line.startswith("---"):
                continue
            if line.startswith("+++"):
                ends[pid] = line.strip("+ ")
                continue
            match = _KILLED.match(line)
            if match:
                calls.append(Call(pid, match.group(1), match.group(2), "?", killed=True))
                continue
            match = _RESUMED.match(line)
            if match:
                call = pending.pop(pid, None)
                if call is not None:
                    done = _RETURN.match(match.group(2))
                    if done:
                        call.args += done.group(1)
                        call.ret = done.group(2)
                    elif match.group(2).rstrip().endswith("= ?"):
                        call.ret = "?"
                continue
            match = _CALL.match(line)
            if not match:
                continue
            name, rest = match.groups()
            if rest.endswith("<unfinished ...>"):
                call = Call(pid, name, rest[:-len("<unfinished ...>")], "")
                pending[pid] = call
                calls.append(call)
                continue
            done = _RETURN.match(rest)
            if done:
                calls.append(Call(pid, name, done.group(1), done.group(2)))
    # A call that never returned, last of a tracee that SIGKILL ended, was killed on entry.
    last = {}
    for call in calls:
        last[call.pid] = call
    for pid, call in last.items():
        if call.ret in ("?", "") and "killed by SIGKILL" in ends.get(pid, ""):
            call.killed = True
    return calls, ends


# What changes something that another process can see (or that a crash leaves
# behind): a crash just before a call outside this set leaves the world exactly
# as a crash before the next call inside it.
_ALWAYS = {"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir",
           "fsync", "fdatasync", "ftruncate", "fchmod", "fchmodat", "flock", "clone", "clone3",
           "fork", "vfork", "execve", "wait4", "waitid", "kill", "tgkill", "tkill", "setpgid",
           "setsid", "prctl", "chdir", "fchdir", "bind", "sendto", "sendmsg", "recvfrom",
           "recvmsg", "pwrite64", "write", "writev", "dup2", "dup3", "close_range", "exit_group",
           "link", "linkat", "symlink", "symlinkat", "mknodat", "mkfifo"}
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
# Syscalls that the write-fault sweep fails with ENOSPC (where a full disk shows).
# (Not ftruncate: truncating to 0, all ostracker does, never needs space.)
WRITE_CLASS = {"write", "pwrite64", "writev", "renameat", "rename", "renameat2", "mkdirat",
               "mkdir", "fsync", "fdatasync", "bind", "openat", "link", "linkat"}


def _ignored_prefixes() -> tuple[str, ...]:
    # (The package the CLI runs, from REPO: not imported here, which would load the
    # installed one into the harness before it puts REPO first on sys.path.)
    return tuple({sys.base_prefix, sys.prefix, os.path.join(REPO, "ostracker"),
                  os.path.realpath(sys.base_prefix), "/proc/", "/sys/", "/etc/", "/usr/", "/lib",
                  "/dev/urandom", "/var/run/nscd", "/run/nscd"})


IGNORED = _ignored_prefixes()

def _fd_target(args: str) -> str | None:
    """What the first argument's descriptor names (strace -yy), e.g. ``pipe:[123]``."""
    match = re.match(r"^\s*-?\d+<(.+?)>(?:,|$)", args)
    return match.group(1) if match else None


def _open_path(args: str) -> str:
    """The path an openat opens, made absolute with its directory descriptor."""
    match = re.match(r'^\s*(?:AT_FDCWD|-?\d+)(?:<(.*?)>)?,\s*"((?:[^"\\]|\\.)*)"', args)
    if not match:
        return ""
    base, name = match.group(1) or "", match.group(2)
    return name if name.startswith("/") else f"{base}/{name}"


def _fd_key(args: str) -> str | None:
    """``5</path>``: the first argument's descriptor and what it names."""
    match = re.match(r"^\s*(-?\d+<.+?>)(?:,|$)", args)
    return match.group(1) if match else None


def effect_mask(calls: list[Call]) -> list[bool]:
    """Which calls of one tracee are effectful.

    A close is effectful when it drops something others see: a pipe end (the
    other side reads end-of-file), a bound socket (its name goes dead), a
    descriptor that holds an flock.  Closing a file just written, a directory,
    a record read or a socket never bound changes nothing anyone can see.
    """
    held: set[str] = set()
    return [_effectful(call, held) for call in calls]


def _effectful(call: Call, held: set) -> bool:
    if call.killed:
        return False
    name = call.name
    if name == "flock":
        key = _fd_key(call.args)
        if key and "LOCK_UN" not in call.args and call.ret.startswith("0"):
            held.add(key)
        return True
    if name in _ALWAYS:
        return True
    if name == "openat":
        flags = call.args.split('",', 1)[-1]
        return any(flag in flags for flag in _WRITE_FLAGS) and \
            not _open_path(call.args).startswith(IGNORED)
    if name == "connect":
        return "nscd" not in call.args
    if name in ("read", "close", "recvfrom"):
        target = _fd_target(call.args) or ""
        if target.startswith(("pipe:", "socket:")) or (name != "close" and
                                                       target.startswith("UNIX")):
            return True
        if name == "close":
            if target.startswith("UNIX") and '"' in target:
                return True  # a bound socket: the reaper's control socket
            key = _fd_key(call.args)
            if key in held:
                held.discard(key)
                return True
    return False


def signature(call: Call, state_dir: str) -> str:
    """The call, comparable across runs: no PIDs, descriptors, random names, data."""
    args = call.args.replace(state_dir, "$S").replace(os.path.dirname(state_dir), "$C")
    args = re.sub(r"AT_FDCWD<[^>]*>", "AT_FDCWD", args)
    args = re.sub(r"\b\d+<", "<", args)
    args = re.sub(r"\[\d+\]", "[]", args)
    args = re.sub(r"/proc/\d+", "/proc/N", args)
    args = re.sub(r"\.[0-9a-f]{12}\.tmp", ".R.tmp", args)
    args = re.sub(r"\.deleted-(\d+)-\d+", r".deleted-\1-PID", args)
    args = re.sub(r"(socket|UNIX|UNIX-STREAM):\[[^\]]*\]", r"\1", args)
    if call.name in ("write", "read", "pwrite64", "sendto", "recvfrom", "writev", "sendmsg",
                     "recvmsg"):
        args = args.split(",", 1)[0]
    elif call.name in ("clone", "clone3", "wait4", "waitid", "kill", "setpgid", "tgkill",
                       "exit_group", "close_range", "prctl"):
        args = re.sub(r"0x[0-9a-f]+", "X", args)
        args = re.sub(r"\d+", "N", args)
    elif call.name == "execve":
        args = args.split(",", 1)[0]
    elif call.name == "openat":
        args = args.rsplit(", 0", 1)[0]  # the mode
    return f"{call.name}({args[:160]})"


def main_calls(calls: list[Call], pid: int | None = None) -> list[Call]:
    """The calls of one tracee: ``pid``, or the first one seen (strace without -f
    prints no PIDs)."""
    if calls and calls[0].pid is None:
        return calls
    if pid is None and calls:
        pid = calls[0].pid
    return [call for call in calls if call.pid == pid]


# -- crash points ------------------------------------------------------------------------------

def effects(calls: list[Call], state_dir: str) -> tuple[list[int], list[str], list[tuple]]:
    """(indices of the effectful calls, their signatures, their keys).

    A key names an effectful call the same way in every run whatever the timing
    did to the rest of the path: its signature and how many times that signature
    came before it (``("renameat(...state.json)", 2)``: the second rename of state.json).
    """
    index = [i for i, effect in enumerate(effect_mask(calls)) if effect]
    sigs = [signature(calls[i], state_dir) for i in index]
    seen: dict = {}
    keys = []
    for sig in sigs:
        seen[sig] = seen.get(sig, 0) + 1
        keys.append((sig, seen[sig]))
    return index, sigs, keys


def ordinals(calls: list[Call]) -> list[int]:
    """For each call, how many calls of its syscall the tracee has made so far (strace's
    per-syscall, per-tracee count for ``when=``)."""
    seen: dict = {}
    out = []
    for call in calls:
        seen[call.name] = seen.get(call.name, 0) + 1
        out.append(seen[call.name])
    return out


START = ("(start)", 1)


@dataclass
class Point:
    """A fault point.  A kill: the process dies right after the effectful call ``key``
    (``START``: before the first), before the next one (``sig``).  ENOSPC: the
    effectful call ``key`` itself fails."""
    key: tuple
    sig: str            # what the fault keeps from happening
    phase: str          # "before exec" / "after exec" (the reaper), else ""
    spec: tuple         # (syscall, N): strace's when=N for that syscall
    fault: str = "kill"

    def name(self) -> str:
        if self.fault == "kill":
            after = "the start" if self.key == START else f"{self.key[0]} #{self.key[1]}"
            return f"after {after}, before {self.sig}"
        return f"{self.key[0]} #{self.key[1]} failing"


class Plan:
    """The effectful calls of one traced run without a fault, and how to aim at each."""

    # Syscalls whose per-tracee count a kill is not aimed with: their number varies
    # from run to run (timing, the number of processes that a /proc scan meets).
    VOLATILE = {"futex", "poll", "ppoll", "rt_sigreturn", "restart_syscall", "nanosleep",
                "clock_nanosleep", "sched_yield"}

    def __init__(self, calls: list[Call], state_dir: str, phased: bool = False):
        self.calls = calls
        self.state_dir = state_dir
        self.effect, self.sigs, self.keys = effects(calls, state_dir)
        self.ordinal = ordinals(calls)
        self.totals: dict = {}
        for call in calls:
            self.totals[call.name] = self.totals.get(call.name, 0) + 1
        # The exec that a phased process (the reaper) makes of its own.
        self.exec_at = next((i for i, call in enumerate(calls) if call.name == "execve"
                             and call.ret.startswith("0")), None) if phased else None

    def phase(self, index: int) -> str:
        if self.exec_at is None:
            return ""
        return "before exec" if index <= self.exec_at else "after exec"

    def kill_points(self) -> list[Point]:
        # strace's own exec of the command it runs cannot be faulted: not a point.
        first = 1 if self.effect and self.effect[0] == 0 and \
            self.calls[0].name == "execve" else 0
        points = []
        for k in range(first, len(self.effect)):
            key = START if k == 0 else self.keys[k - 1]
            spec = aim(self.calls, self.ordinal, self.totals, self.effect, k)
            points.append(Point(key, self.sigs[k], self.phase(self.effect[k]), spec))
        return points

    def write_points(self) -> list[Point]:
        """Every write-class effectful call (to a file, not a pipe), failed with ENOSPC."""
        points = []
        for k, i in enumerate(self.effect):
            call = self.calls[i]
            if call.name not in WRITE_CLASS:
                continue
            if call.name in ("write", "pwrite64", "writev", "fsync", "fdatasync") \
                    and not (_fd_target(call.args) or "").startswith("/"):
                continue  # a pipe: a full disk never fails it
            points.append(Point(self.keys[k], self.sigs[k], self.phase(i),
                                (call.name, self.ordinal[i]), fault="enospc"))
        return points

    def counts(self) -> dict:
        out = {"calls": len(self.calls), "effectful": len(self.effect)}
        if self.exec_at is not None:
            out["effectful before exec"] = sum(1 for i in self.effect if i <= self.exec_at)
            out["effectful after exec"] = sum(1 for i in self.effect if i > self.exec_at)
        return out


def aim(calls, ordinal, totals, effect, k) -> tuple:
    """(syscall, N) that stops the process just before effectful call ``k``: the rarest
    syscall among the calls since effectful call ``k - 1`` (rare syscalls are in no
    loop nor /proc scan, so their count is the same in every run)."""
    start = effect[k - 1] + 1 if k else 0
    best = None
    for i in range(start, effect[k] + 1):
        name = calls[i].name
        if name in Plan.VOLATILE:
            continue
        key = (totals.get(name, 0), -i)
        if best is None or key < best[0]:
            best = (key, (name, ordinal[i]))
    return best[1]


@dataclass
class Hit:
    """Where a faulted run's fault landed, read back from its own trace."""
    landed: bool              # the fault fired at all
    key: tuple | None         # the crash point it made (Point.key), else None
    k: int | None = None      # how many effectful calls that run made before it


def locate(calls: list[Call], spec: tuple, fault: str, state_dir: str) -> Hit:
    name, n = spec
    index, sigs, keys = effects(calls, state_dir)
    count = 0
    for i, call in enumerate(calls):
        if call.name != name:
            continue
        count += 1
        if count != n:
            continue
        if fault == "kill" and call.killed:
            k = sum(1 for j in index if j < i)
            return Hit(True, START if k == 0 else keys[k - 1], k)
        if fault != "kill" and call.injected:
            k = sum(1 for j in index if j < i)
            if k < len(index) and index[k] == i:
                return Hit(True, keys[k], k)
            return Hit(True, None, k)  # it failed a call that is not a write point
        return Hit(False, None)
    return Hit(False, None)


def reaim(plan: Plan, point: Point, spec: tuple, calls: list[Call], hit: Hit,
          state_dir: str) -> list[tuple]:
    """Better (syscall, N) for ``point`` after a run aimed with ``spec`` missed it, read
    from that run's own trace, nearest first."""
    name, n = spec
    index, _, keys = effects(calls, state_dir)
    order = ordinals(calls)
    if point.fault == "kill":
        where = _after(keys, point.key)
        if where is not None and where < len(index):
            # That run got past the point: count in its own trace.
            start = index[where - 1] + 1 if where else 0
            same = [i for i in range(start, index[where] + 1) if calls[i].name == name]
            if same:
                return [(name, order[same[-1]])]
            return [aim(calls, order, plan.totals, index, where)]
    else:
        where = next((k for k, key in enumerate(keys) if key == point.key), None)
        if where is not None and calls[index[where]].name == name:
            # Where that run made the write; if that was tried already (a count that
            # varies run to run: /proc scans), its neighbours.
            m = order[index[where]]
            return [(name, m + d) for d in (0, 1, -1, 2, -2, 3, -3) if m + d > 0]
    if hit.landed and hit.key is not None and name == point.spec[0]:
        # It died early: more calls of that syscall than the plan made so far (a /proc
        # scan over more processes).  At least the excess seen so far: add it, again.
        here = _after(plan.keys, hit.key) if point.fault == "kill" else \
            next((k for k, key in enumerate(plan.keys) if key == hit.key), None)
        if here is not None:
            end = plan.effect[here] if here < len(plan.effect) else len(plan.calls) - 1
            made = sum(1 for call in plan.calls[:end + 1] if call.name == name)
            guess = max(n + 1, point.spec[1] + n - made)
            return [(name, guess + d) for d in (0, 1, -1, 2)]
    return [(name, n + d) for d in (1, -1, 2, -2, 3) if n + d > 0]


def _after(keys: list, key: tuple) -> int | None:
    """The number of the effectful call that follows ``key`` (0 for START), or None."""
    if key == START:
        return 0
    return next((k + 1 for k, each in enumerate(keys) if each == key), None)


# -- processes ---------------------------------------------------------------------------------

def _stat(pid: int):
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19]), int(fields[2])  # state, start ticks, pgid


def alive(pid: int, ticks: int) -> bool:
    current = _stat(pid)
    return current is not None and current[1] == ticks and current[0] not in "ZX"


def marked(mark: str) -> dict:
    """Live processes whose environment holds MARK=mark: pid -> (start ticks, JOB_ID, pgid)."""
    needle = f"MARK={mark}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                env = handle.read().split(b"\0")
        except OSError:
            continue
        if needle not in env:
            continue
        current = _stat(int(name))
        if current is None or current[0] in "ZX":
            continue
        job = next((item[7:].decode() for item in env if item.startswith(b"JOB_ID=")), "?")
        found[int(name)] = (current[1], job, current[2])
    return found


def kill_marked(mark: str, timeout: float = 10.0) -> list:
    """SIGKILL every process of the marker until none is left; returns those killed."""
    killed = []
    deadline = time.monotonic() + timeout
    while True:
        live = marked(mark)
        if not live:
            return killed
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return killed
        time.sleep(0.01)


def case_processes(state: str) -> dict:
    """Live processes of a case (FI_CASE=state in their environment): pid -> command."""
    needle = f"FI_CASE={state}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        current = _stat(int(name))
        if current is not None and current[0] not in "ZX":
            found[int(name)] = command[:120]
    return found


def _feed_fifo(path: str, patience: float) -> None:
    """Open the FIFO for writing once its job opened it for reading, and close it: the
    job (``cat``) reads end-of-file and exits 0."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet; ENOENT: the case is over
            time.sleep(0.01)
            continue
        os.close(fd)
        return


def _tracer_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# -- cases ---------------------------------------------------------------------------------------

# Long enough that the lean reaper is in its loop before the first task ends, even on a
# loaded machine (else how many wakeups it sees, and so its path, varies); tasks end
# 0.1 s apart, one event at a time.
MARK_SINGLE = ["--", "sleep", "0.4"]
MARK_ARRAY = ["--array", "1-4", "--max-parallel", "2", "--", "sh", "-c",
              "exec sleep 0.$((TASK_ID + 2))"]

SCENARIOS = {"single": MARK_SINGLE, "array": MARK_ARRAY}
# and "fifo": ``--stdin FIFO -- cat``, the one start that forks a task which waits at a
# gate (posix_spawn starts the others); a thread of the Lab opens the FIFO's other end.

# Which process a kind traces, and how.
#   submit: the CLI running `submit` (strace runs it: only it is traced)
#   middle, reaper: that process of a submit, attached right after its fork
#   flusher: the reaper with -f (its flusher thread); only fsync is faulted, which
#            only that thread calls
#   terminate, delete, delete-finished: the CLI running that command
KINDS = ("submit", "middle", "reaper", "flusher", "terminate", "delete", "delete-finished")


@dataclass
class Outcome:
    label: str
    hit: Hit | None = None
    untracked: list = field(default_factory=list)
    said_failed: list = field(default_factory=list)  # "could not start", yet it runs
    stuck: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    tracebacks: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    repro: str = ""
    seconds: float = 0.0
    reaper_lived: bool = True   # the run's fault spared every reaper
    misaimed: bool = False      # ENOSPC landed on no file write: the run proves nothing
    cli: tuple = ()             # (rc, stdout, stderr) of the traced command
    setup: list = field(default_factory=list)  # commands run before the traced one

    def bad(self) -> bool:
        if self.misaimed:
            return False
        return bool(self.untracked or self.said_failed or self.stuck or self.lost or
                    self.tracebacks or self.problems)

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in
                 (("untracked", self.untracked), ("said_failed", self.said_failed),
                  ("stuck", self.stuck), ("lost", self.lost),
                  ("tracebacks", self.tracebacks), ("problems", self.problems)) if value]
        landed = "" if self.hit is None else \
            f" [landed: {'nowhere' if not self.hit.landed else self.hit.key}]"
        return f"{self.label}{landed}: {'; '.join(parts)}\n    repro: {self.repro}"


class Lab:
    """Runs cases in fresh state directories under ``root``."""

    CHECK_TIMEOUT = 10.0  # seconds for every job to read ended once its processes are gone
    TRACED_TIMEOUT = 20.0  # seconds a traced reaper may take (its jobs last < 1 s)
    CLI_TIMEOUT = 15.0  # seconds the submit or control command may take

    def __init__(self, root: str):
        self.root = root
        self._lock = threading.Lock()
        self._count = 0

    # -- plumbing --

    def _fresh(self) -> tuple[str, str]:
        with self._lock:
            self._count += 1
            number = self._count
        where = os.path.join(self.root, f"case{number}")
        os.makedirs(where)
        return where, uuid.uuid4().hex

    @staticmethod
    def _env(state: str) -> dict:
        # FI_CASE marks every process of the case (reapers, forked tasks...), so that
        # what a case leaves behind is found, reported and ended.
        env = dict(os.environ, OSTRACKER_STATE_DIR=state, PYTHONHASHSEED="0", FI_CASE=state)
        env.pop("FI_STOP", None)
        return env

    def cli(self, state: str, *args, timeout: float = 60, outcome: Outcome | None = None):
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=REPO, env=self._env(state), stdin=subprocess.DEVNULL)
        if outcome is not None and "Traceback" in done.stdout + done.stderr:
            outcome.tracebacks.append(f"{' '.join(args)}: {done.stderr[-2000:]}")
        return done

    @staticmethod
    def _strace_args(trace: str, spec: tuple | None, fault: str) -> list[str]:
        args = [STRACE, "-qq", "-yy", "-s", "120", "-o", trace]
        if spec is not None:
            name, n = spec
            action = "signal=SIGKILL" if fault == "kill" else "error=ENOSPC"
            args += ["-e", f"inject={name}:{action}:when={n}"]
        return args

    # -- one case --

    def run(self, kind: str, scenario: str = "single", spec: tuple | None = None,
            fault: str = "kill", label: str = "") -> tuple[Outcome, list[Call], str]:
        """Run ``kind`` (see KINDS) with the fault ``spec`` = (syscall, N) and check.

        Returns the outcome, the calls of the faulted process, and the state dir.
        """
        where, mark = self._fresh()
        state = os.path.join(where, "state")
        trace = os.path.join(where, "trace")
        outcome = Outcome(label or f"{kind} {scenario} {fault} {spec}")
        started = time.monotonic()
        if scenario == "fifo":
            fifo = os.path.join(where, "fifo")
            os.mkfifo(fifo, 0o600)
            job_args = ["submit", "-e", f"MARK={mark}", "--stdin", fifo, "--", "cat"]
            writer = threading.Thread(target=_feed_fifo, args=(fifo, 25.0), daemon=True)
            writer.start()
        else:
            job_args = ["submit", "-e", f"MARK={mark}", *SCENARIOS[scenario]]
        strace = self._strace_args(trace, spec, fault)
        flag = {"kill": "signal=SIGKILL", "enospc": "error=ENOSPC"}[fault]
        inject = "" if spec is None else f" -e inject={spec[0]}:{flag}:when={spec[1]}"
        said_failed: set[str] = set()
        if kind in ("submit", "terminate", "delete", "delete-finished"):
            if kind == "submit":
                argv = job_args
            else:
                argv = self._setup(kind, state, mark, outcome)
            setup = "" if kind == "submit" else \
                f"(after the setup: {'; '.join(outcome.setup)}) "
            outcome.repro = (f"cd {REPO}; {setup}OSTRACKER_STATE_DIR=... strace -qq -o /dev/null"
                             f"{inject} {shlex.join([*CLI, *argv])}")
            rc, out, err = self._traced_cli(strace, argv, state, outcome)
            calls = main_calls(parse_trace(trace)[0])
            outcome.misaimed = fault == "enospc" and _misaimed(trace)
            outcome.reaper_lived = True
        else:
            argv = job_args
            rc, out, err, calls, ends = self._attached(kind, strace, argv, state, where,
                                                       outcome, fault)
            outcome.repro = (f"cd {REPO}; FI_STOP={'reaper' if kind == 'flusher' else kind} "
                             f"FI_PIDFILE=pidfile {shlex.join([*HARNESS, *argv])} & "
                             f"(wait for pidfile) strace -qq -o /dev/null"
                             f"{' -f' if kind == 'flusher' else ''}{inject} "
                             f"-p $(cat pidfile) & (wait for TracerPid) "
                             f"kill -CONT $(cat pidfile)")
            outcome.reaper_lived = kind == "middle" or spec is None or \
                fault != "kill" or not any("killed by SIGKILL" in end for end in ends.values())
            for end in ends.values():
                if "exited with" in end and not end.endswith(" 0"):
                    outcome.problems.append(f"the traced process {end}")
            told = [call.args.split(", ", 1)[-1].rsplit(", ", 1)[0] for call in calls
                    if call.name == "write" and call.args.startswith("2<")]
            if any("Traceback" in line for line in told):
                first = next(i for i, line in enumerate(told) if "Traceback" in line)
                outcome.tracebacks.append("the traced process wrote to its stderr: " +
                                          " ".join(told[first:first + 16]))
        outcome.cli = (rc, out, err)
        if "Traceback" in out + err:
            outcome.tracebacks.append(err[-2000:])
        if kind in ("submit", "middle", "reaper", "flusher"):
            self._check_submit_result(rc, out, err, outcome, said_failed)
        elif rc not in (None, -signal.SIGKILL, 128 + signal.SIGKILL):
            if rc not in (0, 1) or (rc == 1 and len(err.strip().splitlines()) != 1):
                outcome.problems.append(f"{argv[0]} exit {rc}, stderr {err!r}")
        control = kind in ("terminate", "delete", "delete-finished")
        self._check(state, mark, outcome, said_failed, expect_done=not control,
                    linger=not control)
        self._leftovers(state, outcome)
        outcome.seconds = time.monotonic() - started
        return outcome, calls, state

    @staticmethod
    def _leftovers(state: str, outcome: Outcome, grace: float = 3.0) -> None:
        """Every process of the case is gone once its jobs ended (a reaper drains its
        fsyncs and exits): report any that is not, then end it."""
        deadline = time.monotonic() + grace
        while (left := case_processes(state)) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid, command in left.items():
            outcome.problems.append(f"process {pid} ({command}) still there after the case")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _setup(self, kind: str, state: str, mark: str, outcome: Outcome) -> list[str]:
        """Jobs for a control command to act on; returns that command's arguments."""
        def submit(*args):
            outcome.setup.append(shlex.join(["ostracker", "submit", *args]))
            done = self.cli(state, "submit", "-e", f"MARK={mark}", *args, outcome=outcome)
            if done.returncode != 0:
                outcome.problems.append(f"setup submit failed: {done.stderr.strip()}")
            return done.stdout.strip()
        if kind == "terminate":
            single = submit("--", "sleep", "30")
            array = submit("--array", "1-4", "--max-parallel", "2", "--", "sleep", "30")
            return ["terminate", single, array]
        ended = submit("--", "true")
        self.cli(state, "wait", "--timeout", "20", ended, outcome=outcome)
        submit("--", "sleep", "30")  # runs through the delete: must never be removed
        return ["delete", ended] if kind == "delete" else ["delete", "--finished"]

    def _traced_cli(self, strace: list[str], argv: list[str], state: str, outcome: Outcome):
        try:
            done = subprocess.run([*strace, *CLI, *argv], capture_output=True, text=True,
                                  timeout=self.CLI_TIMEOUT, cwd=REPO, env=self._env(state),
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            outcome.problems.append(f"{argv[0]} hung ({self.CLI_TIMEOUT:g} s)")
            return None, "", ""
        return done.returncode, done.stdout, done.stderr

    def _attached(self, kind, strace, argv, state, where, outcome, fault):
        """Run the harness CLI; attach ``strace`` to the stopped process of ``kind``."""
        pidfile = os.path.join(where, "pidfile")
        env = self._env(state)
        env.update(FI_STOP="reaper" if kind == "flusher" else kind, FI_PIDFILE=pidfile)
        if kind == "flusher":
            strace = [strace[0], "-f", *strace[1:]]
        harness = subprocess.Popen([*HARNESS, *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                                   stdin=subprocess.DEVNULL)
        tracer = None
        pid = None
        deadline = time.monotonic() + 30
        try:
            while pid is None:
                try:
                    with open(pidfile) as handle:
                        text = handle.read().split()
                    pid = int(text[0]) if text else None
                except FileNotFoundError:
                    pass
                if pid is None:
                    if harness.poll() is not None or time.monotonic() > deadline:
                        outcome.problems.append(f"no {kind} process stopped for the tracer")
                        break
                    time.sleep(0.002)
            if pid is not None:
                while (_stat(pid) or ("?",))[0] != "T" and time.monotonic() < deadline:
                    time.sleep(0.001)
                tracer = subprocess.Popen([*strace, "-p", str(pid)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
                while _tracer_of(pid) in (0, None) and time.monotonic() < deadline and \
                        tracer.poll() is None:
                    time.sleep(0.001)
                os.kill(pid, signal.SIGCONT)
            out, err = harness.communicate(timeout=self.CLI_TIMEOUT)
            rc = harness.returncode
        except subprocess.TimeoutExpired:
            harness.kill()
            out, err = harness.communicate()
            rc = None
            outcome.problems.append(f"{argv[0]} hung ({self.CLI_TIMEOUT:g} s)")
        ends = {}
        calls: list[Call] = []
        if tracer is not None:
            trace = os.path.join(where, "trace")
            deadline = time.monotonic() + self.TRACED_TIMEOUT
            while tracer.poll() is None:
                if fault == "enospc" and not outcome.misaimed and _misaimed(trace):
                    # ENOSPC from a pipe (the loop's wakeup pipe, whose count varies) or
                    # from an open for reading: no disk does that, and a reaper whose
                    # wakeup byte is lost sleeps for good.  The run proves nothing.
                    outcome.misaimed = True
                    kill_marked_tree(pid)
                if time.monotonic() > deadline:
                    outcome.problems.append(f"the traced process did not end within "
                                            f"{self.TRACED_TIMEOUT:g} s")
                    kill_marked_tree(pid)
                    break
                time.sleep(0.05)
            try:
                _, terr = tracer.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                tracer.kill()
                _, terr = tracer.communicate()
            if terr.strip():
                outcome.problems.append(f"strace: {terr.strip()[-300:]}")
            every, ends = parse_trace(os.path.join(where, "trace"))
            # flusher: the fsyncs of its thread, not the main thread's (the history's)
            calls = [call for call in every if call.pid != pid] if kind == "flusher" else \
                main_calls(every, pid)
        return rc, out, err, calls, ends

    # -- checks --

    @staticmethod
    def _check_submit_result(rc, out, err, outcome, said_failed) -> None:
        if rc == 0:
            if not out.strip():
                outcome.problems.append("submit exited 0 without an ID")
            return
        if rc is None or rc < 0 or rc == 128 + signal.SIGKILL:
            return  # killed: says nothing
        lines = err.strip().splitlines()
        if len(lines) != 1:
            outcome.problems.append(f"submit exit {rc}, not one line on stderr: {err!r}")
        match = re.search(r"job (\d+) could not start", err)
        if match:
            said_failed.add(match.group(1))

    def _tracked(self, state: str, live: dict, outcome: Outcome, when: str) -> None:
        """Each process alive before and after ``status --json`` is listed, with its PID,
        not ended."""
        done = self.cli(state, "status", "--json", outcome=outcome)
        if done.returncode != 0:
            outcome.problems.append(f"status --json {when} failed: {done.stderr.strip()}")
            return
        try:
            jobs = {job["id"]: job for job in json.loads(done.stdout)}
        except (ValueError, TypeError, KeyError):
            outcome.problems.append(f"status --json {when} is not a listing: {done.stdout!r}")
            return
        for pid, (ticks, job_id, pgid) in live.items():
            if not alive(pid, ticks):
                continue
            job = jobs.get(job_id)
            if job is None or job.get("pid") != pgid or job.get("state") in ENDED:
                seen = None if job is None else (job.get("state"), job.get("pid"),
                                                 job.get("sub_state"))
                outcome.untracked.append(f"{when}: pid {pid} of job {job_id} (group {pgid}) "
                                         f"runs; status says {seen}")

    def _check(self, state: str, mark: str, outcome: Outcome, said_failed: set,
               expect_done: bool, linger: bool = True) -> None:
        def failed_yet_running(live):
            for pid, (_, job_id, _) in live.items():
                if job_id.split(".")[0] in said_failed:
                    outcome.said_failed.append(f"submit said job {job_id} could not start, "
                                             f"yet pid {pid} of it runs")

        verified: set = set()
        live = marked(mark)
        failed_yet_running(live)
        if live:
            self._tracked(state, live, outcome, "after the command")
            verified |= set(live)
        # delete --finished while the processes may still run: it must leave them listed.
        before_delete = self._infos(state)
        files = _record_files(state)
        deleted = self.cli(state, "delete", "--finished", outcome=outcome)
        if deleted.returncode not in (0, 1):
            outcome.problems.append(f"delete --finished exit {deleted.returncode}: "
                                    f"{deleted.stderr.strip()}")
        live = marked(mark)
        if live:
            self._tracked(state, live, outcome, "after delete --finished")
            verified |= set(live)
        # Until every process is gone (a live reaper starts queued tasks meanwhile).
        deadline = time.monotonic() + (10 if linger else 0)
        checks = 0
        while live and time.monotonic() < deadline:
            failed_yet_running(live)
            fresh = {pid: info for pid, info in live.items() if pid not in verified}
            if fresh and checks < 3:
                self._tracked(state, fresh, outcome, "while the job runs")
                verified |= set(fresh)
                checks += 1
            time.sleep(0.02)
            live = marked(mark)
        if live:  # what the case left (terminate's setup jobs run 30 s): end it
            jobs = sorted({info[1].split(".")[0] for info in live.values()})
            self.cli(state, "terminate", *jobs, timeout=60, outcome=outcome)
            kill_marked(mark)
        # Nothing reads Queued/Running/Suspended for ever.
        infos = {}
        deadline = time.monotonic() + self.CHECK_TIMEOUT
        while True:
            infos = self._infos(state)
            if all(info["state"] in ENDED for info in infos.values()) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for job_id, info in infos.items():
            if info["state"] not in ENDED:
                outcome.stuck.append(f"job {job_id} still {info['state']} "
                                     f"({info['sub_state']}) {self.CHECK_TIMEOUT:g} s after "
                                     "its processes were gone")
        final = self.cli(state, "status", "--json", outcome=outcome)
        if final.returncode != 0:
            outcome.problems.append(f"final status --json failed: {final.stderr.strip()}")
        else:
            for job in json.loads(final.stdout):
                if job["state"] not in ENDED and job["id"] not in infos:
                    outcome.stuck.append(f"status --json says job {job['id']} is "
                                         f"{job['state']} once its processes were gone")
        if infos:
            ids = sorted({job_id.split(".")[0] for job_id in infos})
            try:
                waited = self.cli(state, "wait", "--timeout", "5", *ids, timeout=30,
                                  outcome=outcome)
                if waited.returncode == 124:
                    outcome.stuck.append(f"wait {' '.join(ids)} timed out")
            except subprocess.TimeoutExpired:
                outcome.stuck.append(f"wait {' '.join(ids)} hung")
        if expect_done and outcome.reaper_lived:
            # No result lost: a task that ran under a living reaper ends with its real
            # end.  A job that delete --finished removed while this check was not looking
            # is judged by what it read before, if it had ended then.
            seen = {job_id: info for job_id, info in before_delete.items()
                    if info["state"] in ENDED}
            seen.update(infos)
            files |= _record_files(state)
            for job_id, info in seen.items():
                if info["state"] == "Done" and info["exit_status"] == 0:
                    continue
                if info["pid"] is None and info["state"] == "Undetermined" and \
                        (info["sub_state"] or "").startswith("reaper lost before") and \
                        _record_name(job_id) not in files:
                    continue  # its submit died before any reaper could start it
                if info["state"] == "Failed" and job_id.split(".")[0] in said_failed:
                    continue
                outcome.lost.append(f"job {job_id}: {info['state']} ({info['sub_state']}), "
                                    f"exit {info['exit_status']}")

    @staticmethod
    def _infos(state: str) -> dict:
        from ostracker import JobTracker

        try:
            return {info.id: {"state": info.state.value, "sub_state": info.sub_state,
                              "exit_status": info.exit_status, "pid": info.pid,
                              "terminating_signal": info.terminating_signal}
                    for info in JobTracker(state).job_infos(errors=[])}
        except Exception as exc:  # noqa: BLE001 - a listing that fails is itself a finding
            return {"?": {"state": "unreadable", "sub_state": repr(exc), "exit_status": None,
                          "pid": None, "terminating_signal": None}}


def _misaimed(trace: str) -> bool:
    """Whether the trace shows an injected error on a call that is no file's."""
    try:
        with open(trace, errors="replace") as handle:
            text = handle.read()
    except OSError:
        return False
    for line in text.splitlines():
        if "(INJECTED)" not in line:
            continue
        line = re.sub(r"^\d+ +", "", line)  # strace -f: the PID
        if line.startswith(("write(", "writev(", "pwrite64(")) and \
                re.match(r"^\w+\(\d+<(?:pipe|socket|UNIX|anon_inode)", line):
            return True  # a pipe or a socket: no disk there
        if line.startswith("openat(") and not any(flag in line for flag in _WRITE_FLAGS):
            return True  # a file opened for reading: no disk says ENOSPC to that
    return False


def _record_name(job_id: str) -> tuple[str, int | None]:
    number, _, index = job_id.partition(".")
    return number, int(index) if index else None


def _record_files(state: str) -> set:
    """(job, task index) of every task record in the state dir: which tasks a reaper
    began to start."""
    from conftest import task_records

    jobs = os.path.join(state, "jobs")
    return {(job, index) for job in (os.listdir(jobs) if os.path.isdir(jobs) else [])
            for index in task_records(os.path.join(jobs, job))}


def kill_marked_tree(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    _harness(sys.argv[1:])
