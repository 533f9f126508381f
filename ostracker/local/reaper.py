"""The reaper: the supervisor of one submission, an event loop that never loses a process or a result.

One reaper runs per submission.  Its life:

1. ``begin`` runs in a child that ``launch`` forked off the submitting process
   and detached with ``setsid`` (so no terminal hang-up or end of a cron run
   reaches it).  It points its stdin/stdout/stderr at /dev/null (so a shell
   reading ``$(ostracker submit ...)`` is not kept waiting), closes every other
   inherited descriptor, becomes the *child subreaper* of everything its jobs
   start (a process that leaves its job's group and loses its parent is
   adopted by the reaper, not by init, so the job's whole tree stays in
   reach), enters the working directory, binds the job's control socket (a
   command sent while it becomes the lean reaper waits there) and starts the
   first task.  It reports ``started PID`` — or the exact reason the task
   could not start — through the ready pipe that ``submit`` is blocked on.
   Then it execs a fresh, lean interpreter (``main``): the submitting process
   had click and more loaded, which a process that may live for days should
   not carry.  The task stays its child across the exec, the socket its own.
2. ``main`` runs the event loop (``Reaper.run``): it sleeps in ``poll`` on
   a SIGCHLD self-pipe, the status pipes of tasks being started, the job's
   control socket and the next timer, and handles what is ready: a task stopped,
   continued or ended (``wait4`` with WNOHANG) becomes a record; a freed slot
   starts the next queued task of an array; a timer retries a write that
   failed, or ends what a task left running.
3. When no task is left, an array's tasks' JobInfos are written into one
   summary file, pending fsyncs are drained, and the reaper exits, which drops
   its lock: readers take a free lock on a job that is not over as the sign
   that its reaper died.

How a task starts, so that no crash can leave a process untracked: the
reaper first writes the task's record as "starting", with a random token,
then starts the process with ``posix_spawn`` (as fast as a start can be; its
exec errors come back at once) with ``OSTRACKER_TOKEN=token`` in its
environment, then writes the record "Running" with its PID once the loop has
nothing else to do, or the task has run ``ANNOUNCE_AFTER`` seconds (a short
task of a busy array ends first, and is spared that write).  Until then, and
should the reaper die before, readers find the process by its token.
Where stdin or an output is a FIFO, which may block whoever opens it for
good, the task's process is forked instead and waits at a *gate* (a pipe):
the reaper writes its record with its PID, opens the gate, and the process
opens its own files (so a FIFO blocks the job, never the loop) and execs;
what fails comes back on a status pipe that exec closes, as CPython's
``subprocess`` does it.  A reaper killed before the gate opens leaves a
process that reads end-of-file there and exits without running anything.

No result is lost: a record that cannot be written (a full disk, EIO) is kept
in memory and written again, with a back-off, until it is; meanwhile no new
task starts, and the reaper does not exit while a record is unwritten or a
process of its jobs lives.
"""

from __future__ import annotations

import errno
import heapq
import os
import signal
import stat
import time

from ..core.errors import JobNotFound, StartError, StorageError
from ..core.history import compact
from ..core.models import (ENDED_NAMES, epoch, expand_path, is_per_task, task_id_string,
                           timestamp)
from ..core.records import (CANCEL, CONTROL, HEADER, HELD, ON_END, SCHEMA_VERSION, STARTING, SUMMARY,
                            TOKEN_VARIABLE, Header, cancelled_record, captured_output_name,
                            check_task_record, held_tasks, history_line, info_from_record,
                            new_record, spawned_name, summary_chunks)
from ..core.store import Flusher, Store
from . import detach, proc
from .board import Board

# Run by the lean interpreter (``detach``) that ``begin`` execs.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from ostracker.local.reaper import main; main(sys.argv[2:])")
_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_OPEN_NEW = _OPEN_WRITE | os.O_EXCL
LEFTOVER_GRACE = 2.0  # seconds between SIGTERM and SIGKILL to what a job left running
SUMMARY_PATIENCE = 60.0  # seconds an ended array's reaper tries to write its summary
# In a job's environment, "1": its records stay in its directory once it ends, not
# compacted into the history (README, "History"): for tools that read them there.
KEEP_RECORDS = "OSTRACKER_KEEP_RECORDS"
RECORD_PATIENCE = 600.0  # seconds a reaper whose job never started tries to write that
_RETRY_FIRST, _RETRY_LONGEST = 0.05, 2.0  # seconds between attempts at an unwritten record
# What a task's process says on its status pipe before it execs (else: nothing).
_WAITING = b"W"  # it is about to open a FIFO, which may block until someone opens the other end
_FAILED = b"E"   # followed by the reason it could not start; it exits 127
_CANCELLED = "cancelled before it started"
_EXPIRED = "DEADLINE: passed before it started"
KILL_AFTER = 30.0  # seconds from SIGTERM at a limit to SIGKILL (--kill-after; Slurm's KillWait)
_HELD = "held"
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENFILE, errno.EMFILE})
# Seconds a task may run before its "Running" record is written, however busy the loop.
ANNOUNCE_AFTER = 0.1


def rusage_fields(usage) -> dict:
    """The extension_list of an ended job, from wait4's rusage (ru_maxrss is KiB on Linux)."""
    return {
        "ru_maxrss": usage.ru_maxrss,
        "ru_swap": usage.ru_nswap,
        "ru_inblock": usage.ru_inblock,
        "ru_outblock": usage.ru_oublock,
        "system_time_ms": round(usage.ru_stime * 1000),
        "user_time_ms": round(usage.ru_utime * 1000),
    }


def _become_subreaper() -> None:
    """PR_SET_CHILD_SUBREAPER: orphans of the jobs' trees are adopted by this process.

    Kept across exec, so the lean reaper that ``begin`` execs is one too.
    """
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # 36: PR_SET_CHILD_SUBREAPER


class Task:
    """A task whose process the reaper started: its record, and how its start went."""

    __slots__ = ("index", "pid", "record", "status_fd", "said", "terminated", "limit", "alone")

    def __init__(self, index: int | None, pid: int, record: dict, status_fd: int | None):
        self.index = index
        self.pid = pid
        self.record = record
        self.status_fd = status_fd  # open until the process has exec'd (or failed to)
        self.said = b""             # what it said on its status pipe
        self.terminated = False     # `terminate` said it is killing it
        self.limit = None           # "TIMEOUT" or "DEADLINE" once a limit ended it
        self.alone = False          # it ended and no process of it is left (end_leftovers)


class Reaper:
    """Starts the tasks of one submission and turns their wait statuses into records."""

    def __init__(self, store: Store, header: Header, queue: str | None = None,
                 slots: list[int] = (), first: int | None = None):
        self.store = store
        self.job_id = header.job_id
        self.header = header
        self.template = header.template
        self.array = header.array
        self.boot_id = proc.boot_id()  # a job that waited may start after a reboot
        # A job that waited is started by the scheduler in the submitter's environment.
        self.environment = dict(os.environ if header.environment is None
                                else header.environment, **self.template.job_environment)
        if queue is not None:
            self.environment["OSTRACKER_QUEUE"] = queue
        self.queue = queue
        # index -> the slots of its queue that the scheduler gave the task; the scheduler
        # grants an array's tasks one at a time, and this reaper starts only those.
        self.task_slots: dict[int | None, list[int]] = {}
        if queue is not None:
            self.task_slots[first] = list(slots)
        self.running: dict[int, Task] = {}  # pid -> task
        # pid -> a running task whose record still says "starting", in the order they
        # started: its "Running" record waits until the loop has time (``announce``).
        self.unannounced: dict[int, Task] = {}
        self.queued: list[int] = []          # array indices not started yet, in order
        self.held: list[int] = []            # array indices that `hold` held, not started
        self.attempts: dict[int | None, int] = {}  # index -> its run, once it ran more than once
        self.retrying: set[int | None] = set()  # indices that wait for their next attempt
        self.lock_fd: int | None = None  # the reaper lock, which no child of ours may keep
        self.end_fd: int | None = None  # where a submitter waits to hear how the job ended
        self.outcome: tuple | None = None  # (state, exit status, signal) once the job ended
        self.deadline = epoch(self.template.deadline_time)  # --deadline, as a time.time()
        # What the disk did not take yet: a file's name, or ("task", index) for a task's
        # record -> (the record, or a file's chunks; durable).
        self.unwritten: dict[str | tuple, tuple[list[bytes] | dict, bool]] = {}
        self._retry_delay = _RETRY_FIRST
        self._retry_at: float | None = None
        self._timers: list = []  # heap of (when, sequence, callback)
        self._sequence = 0
        self._executable: str | None = None
        self._poller = None
        self._control = None  # the control socket (main loop only)
        self._board = Board(store)  # where the scheduler listens, if one does
        # Captured output of ended tasks that no process holds: a later task's file is one
        # of these, moved if it is empty, rather than a new inode (``_open_captured``).
        self._spares: list[str] = []

    # -- records -----------------------------------------------------------------

    def write(self, name: str, record: dict, durable: bool = True) -> bool:
        """Write a record now if the disk lets us, else keep it for a retry; True if written."""
        return self._put(name, record, durable)

    def write_task(self, index: int | None, record: dict, durable: bool = True) -> bool:
        """``write`` for the task's record (``Store.write_task``)."""
        return self._put(("task", index), record, durable)

    def _put(self, key: str | tuple, data: dict | list[bytes], durable: bool) -> bool:
        self.unwritten.pop(key, None)
        try:
            self._store_put(key, data, durable)
            return True
        except JobNotFound:
            return True  # the job was deleted: nobody is left to read it
        except StorageError:
            self.unwritten[key] = (data, durable)
            self._schedule_retry()
            return False

    def _store_put(self, key: str | tuple, data: dict | list[bytes], durable: bool) -> None:
        if isinstance(key, tuple):
            self.store.write_task(self.job_id, key[1], data, durable=durable)
        elif isinstance(data, dict):
            self.store.write(self.job_id, key, data, durable=durable)
        else:
            self.store.write_chunks(self.job_id, key, data, durable=durable)

    def _schedule_retry(self) -> None:
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _RETRY_LONGEST)

    def _retry_writes(self) -> None:
        self._retry_at = None
        for key, (data, durable) in list(self.unwritten.items()):
            try:
                self._store_put(key, data, durable)
            except JobNotFound:
                pass
            except StorageError:
                self._schedule_retry()
                return  # the disk is still full: the rest waits for the next round
            del self.unwritten[key]
        self._retry_delay = _RETRY_FIRST

    # -- starting ----------------------------------------------------------------

    def _paths(self, index: int | None, first: bool):
        """(stdin path, [(stream, path, captured, truncate)]) of a task, as its process opens
        them; a path None: the same file as stdout."""
        task_id = task_id_string(self.job_id, index)
        template = self.template
        again = self.attempts.get(index, 1) > 1  # a later attempt appends to what ran before
        stdin = None if template.input_path is None else \
            expand_path(template.input_path, task_id, index)
        outputs = []
        for stream, pattern in (("stdout", template.output_path),
                                ("stderr", template.error_path)):
            if stream == "stderr" and (template.join_files or (
                    pattern is not None and pattern == template.output_path)):
                outputs.append((stream, None, False, False))  # the same file as stdout
            elif pattern is None:  # captured in the state dir
                path = self.store.path(self.job_id, captured_output_name(index, stream))
                outputs.append((stream, path, True, not again))
            else:
                # A path shared by all tasks of an array is truncated once, by the first.
                outputs.append((stream, expand_path(pattern, task_id, index), False,
                                (first or is_per_task(pattern)) and not again))
        return stdin, outputs

    def spawn(self, index: int | None, first: bool = False) -> Task:
        """Start a task's process, named by a record before it can outlive the reaper.

        Two ways (module doc): ``posix_spawn`` after a "starting" record, the
        common one, as fast as a process can be started; or, where stdin or an
        output is a FIFO, a fork that waits at a gate and opens the FIFO
        itself.  StartError says why the task cannot start; ``_Cancelled``
        that ``terminate`` cancelled it before its record existed.
        """
        task_id = task_id_string(self.job_id, index)
        if self._executable is None:
            try:
                self._executable = proc.resolve_command(self.template.remote_command,
                                                        self.environment.get("PATH"))
            except FileNotFoundError as exc:
                raise StartError(str(exc)) from None
        if self.deadline is not None and self.deadline <= time.time():
            raise _Expired(_EXPIRED)
        environment = dict(self.environment, JOB_ID=task_id,
                           OSTRACKER_ATTEMPT=str(self.attempts.get(index, 1)))
        if self.queue is not None:
            environment["OSTRACKER_SLOTS"] = " ".join(map(str, self.task_slots[index]))
        if index is not None:
            environment["TASK_ID"] = str(index)
        else:
            environment.pop("TASK_ID", None)  # submitted from inside an array task
        stdin, outputs = self._paths(index, first)
        argv = [self.template.remote_command, *self.template.args]
        limits = _rlimits(self.template.resource_limits)
        if limits or _is_fifo(stdin) or any(_is_fifo(path) for _, path, captured, _ in outputs
                                            if path is not None and not captured):
            task = self._spawn_gated(index, argv, environment, stdin, outputs, limits)
        else:
            task = self._spawn_direct(index, argv, environment, stdin, outputs)
        self.running[task.pid] = task
        if first or self.template.waits:
            # The first task's record is handed to the lean reaper written; a job that
            # waited has its spawn mark, which goes with its "Running" record.
            self.announce(task)
        if not first:  # the first task's timers are set by the loop's process (_carry_on)
            self._arm(task)
        return task

    def announce(self, task: Task) -> None:
        """Write the "Running" record (PID, start ticks) of a task that ``posix_spawn``
        started, if it is not written yet.

        Deferred from the start until the loop has nothing else to do, or the
        task has run ``ANNOUNCE_AFTER`` seconds: a short task of a busy array
        then ends before it, and its end is its second record, not its third.
        Meanwhile its "starting" record's token names its process, among the
        reaper's children (``LocalSubmission.repaired``), as after a crash.
        """
        if self.unannounced.pop(task.pid, None) is None:
            return
        _note_start_ticks(task.record)
        if self.write_task(task.index, task.record, durable=False) and \
                self.template.waits:  # (if unwritten, kept, and the mark with it)
            try:
                self.store.unlink(self.job_id, spawned_name(task.index))
            except StorageError:
                pass

    def announce_due(self, everything: bool = False) -> None:
        """``announce`` the tasks that have run ``ANNOUNCE_AFTER`` seconds (all of them:
        ``everything``, when the loop is about to sleep)."""
        due = time.monotonic() - ANNOUNCE_AFTER
        for task in list(self.unannounced.values()):
            if not everything and task.record["dispatch_monotonic"] > due:
                return  # started after this one: not due either
            self.announce(task)

    # -- limits --------------------------------------------------------------------

    def _arm(self, task: Task) -> None:
        """The timers of a task that has started: its time limit or deadline, whichever
        comes first, and the warning signal before it (README, "Limits and retries")."""
        limits = self.template.resource_limits or {}
        ends = []
        if "WALLCLOCK_TIME" in limits:
            # From its dispatch (CLOCK_MONOTONIC is one clock for every process of a boot).
            ran = time.monotonic() - (task.record.get("dispatch_monotonic") or time.monotonic())
            ends.append((limits["WALLCLOCK_TIME"] - ran, "TIMEOUT"))
        if self.deadline is not None:
            ends.append((self.deadline - time.time(), "DEADLINE"))
        if not ends:
            return
        seconds, reason = min(ends)
        if self.template.warning_signal:  # one timer at a time: the warning's arms the limit's
            before = int(self.template.warning_signal.partition("@")[2] or 60)
            self.after(max(0.0, seconds - before), self._warn, task, reason, min(before, seconds))
        else:
            self.after(max(0.0, seconds), self._stop_at_limit, task, reason)

    def _warn(self, task: Task, reason: str, seconds: float) -> None:
        """The warning signal, then the limit ``seconds`` later."""
        name = self.template.warning_signal.partition("@")[0]
        self._signal_tree(task, getattr(signal.Signals, name))
        if self.running.get(task.pid) is task:
            self.after(max(0.0, seconds), self._stop_at_limit, task, reason)

    def _signal_tree(self, task: Task, signum: int) -> None:
        """``signum`` to every process of the task's tree, if the task still runs."""
        if self.running.get(task.pid) is task:
            proc.signal_members(proc.job_tree(task.pid, task_id_string(self.job_id, task.index),
                                              os.getpid()), signum)

    def _stop_at_limit(self, task: Task, reason: str) -> None:
        """SIGTERM to the tree at the limit; SIGKILL ``--kill-after`` seconds later."""
        if self.running.get(task.pid) is not task:
            return
        task.limit = reason
        self._signal_tree(task, signal.SIGTERM)
        grace = self.template.kill_after
        self.after(KILL_AFTER if grace is None else grace, self._signal_tree, task,
                   signal.SIGKILL)

    def _claim(self, index: int | None, record: dict) -> None:
        """Write the task's first record, unless ``terminate`` cancelled the task first,
        or ``hold`` held it.

        Under the job lock, which ``terminate`` and ``hold`` take to cancel or hold
        a task that has no record yet: the task is either cancelled (held) or
        recorded, never both.
        """
        try:
            with self.store.job_lock(self.job_id):
                if index is not None and self.store.exists(self.job_id, CANCEL):
                    raise _Cancelled(_CANCELLED, whole=True)
                existing = self.store.read_task(self.job_id, index)
                if existing is not None and \
                        not (index in self.retrying and existing.get("state") == "Requeued") and \
                        not (self.template.waits and
                             never_spawned(self.store, self.job_id, index, existing)):
                    raise _Cancelled(_CANCELLED)
                if self.store.exists(self.job_id, HELD) and index in held_tasks(
                        self.store.read(self.job_id, HELD), self.array):
                    raise _Held(_HELD)
                self.store.write_task(self.job_id, index, record, durable=False)
        except StorageError as error:
            raise _NotNow(f"cannot record the job: {error}") from None

    def _running_record(self, index: int | None, pid: int, extra: dict) -> dict:
        """The task's "Running" record; its start ticks are read as it is written."""
        record = new_record("Running", task_id=task_id_string(self.job_id, index))
        # CLOCK_MONOTONIC is one clock for all processes of a boot: the exec'd
        # reaper can measure the wall clock time of a task that begin() started.
        record.update(pid=pid, boot_id=self.boot_id, reaper_pid=os.getpid(),
                      dispatch_time=timestamp(), dispatch_monotonic=time.monotonic(), **extra)
        if self.queue is not None:
            record["slots"] = self.task_slots[index]
        record["attempt"] = self.attempts.get(index, 1)
        return record

    def _spawn_direct(self, index, argv, environment, stdin, outputs) -> Task:
        """``posix_spawn`` the task, its "starting" record written first.

        The record carries a token that the process finds in its environment
        (``OSTRACKER_TOKEN``): should the reaper die before it writes the PID,
        readers find the process by it (``LocalSubmission.repaired``).
        """
        opened = []
        try:
            try:
                opened.append(_open_input(stdin, None))
                for stream, path, captured, truncate in outputs:
                    if path is None:
                        opened.append(opened[-1])
                    elif captured:
                        opened.append(self._open_captured(index, stream, truncate))
                    else:
                        opened.append(_open_output(stream, path, False, truncate, opened[0],
                                                   None))
            except _Refused as refusal:
                raise StartError(str(refusal)) from None
            except OSError as exc:  # /dev/null, say, when no descriptor is left
                message = f"cannot open the job's files: {exc.strerror}"
                raise (_NotNow if exc.errno in _NO_ROOM else StartError)(message) from None
            token = os.urandom(8).hex()
            environment[TOKEN_VARIABLE] = token
            starting = new_record("Queued", STARTING, task_id_string(self.job_id, index))
            starting.update(token=token, reaper_pid=os.getpid(), boot_id=self.boot_id)
            self._claim(index, starting)
            actions = [(os.POSIX_SPAWN_DUP2, fd, number) for number, fd in enumerate(opened)]
            if self.template.waits:  # the process leaves a mark as it is created
                actions.append((os.POSIX_SPAWN_OPEN, 3, f"/proc/self/fd/"
                                f"{self.store.job_dir_fd(self.job_id)}/{spawned_name(index)}",
                                os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
            try:
                pid = os.posix_spawn(self._executable, argv, environment, file_actions=actions,
                                     setpgroup=0, setsigdef=proc.DEFAULT_SIGNALS,
                                     setsigmask=())
            except OSError as exc:
                raise StartError(f"cannot execute {self._executable}: {exc.strerror}") from None
        finally:
            for fd in set(opened):
                os.close(fd)
        task = Task(index, pid, self._running_record(index, pid, {"token": token}), None)
        self.unannounced[pid] = task
        return task

    def _open_captured(self, index: int | None, stream: str, truncate: bool = True) -> int:
        """The task's captured stdout or stderr, created private in the job's (held)
        directory, emptied (``truncate``: not for a later attempt, which appends); never
        through a link or a FIFO planted at its name.

        A first attempt's file is most often an ended task's empty one, moved (an
        inode costs up to a millisecond of kernel time on some file systems, a link
        and an unlink microseconds), or else new: created in one call (``O_EXCL``);
        only what is already at its name is opened, checked and emptied."""
        name = captured_output_name(index, stream)
        while truncate and self._spares:
            fd = self.store.reuse_empty_file(self.job_id, self._spares.pop(), name)
            if fd is not None:
                return fd
        try:
            try:
                if truncate:
                    return self.store.open_file(self.job_id, name, _OPEN_NEW)
            except FileExistsError:
                pass
            # Emptied only once checked: O_TRUNC would empty a file linked there first.
            fd = self.store.open_file(self.job_id, name, _OPEN_WRITE | os.O_NONBLOCK)
        except StorageError as error:
            raise _Refused(f"cannot open {stream}: {error}") from None
        except OSError as exc:
            message = f"cannot open {stream} {self.store.path(self.job_id, name)}: {exc.strerror}"
            if exc.errno in _NO_ROOM:  # the state dir's disk is full: the task waits for room
                raise _NotNow(message) from None
            raise _Refused(message) from None
        try:
            os.set_blocking(fd, True)
            if truncate:
                os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _spawn_gated(self, index, argv, environment, stdin, outputs, limits=()) -> Task:
        """Fork the task's process, which waits at a gate; record it; open the gate.

        The process opens its own stdin and outputs, so a FIFO that nobody opens
        blocks it, never the reaper.  If the record cannot be written, the
        process is killed at the gate, having run nothing.
        """
        gate_read, gate_write = os.pipe()
        status_read, status_write = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (gate_read, gate_write, status_read, status_write):
                os.close(fd)
            raise StartError(f"cannot fork: {exc.strerror}") from None
        if pid == 0:
            _run_task(gate_read, status_write, self._executable, argv, environment, stdin,
                      outputs, limits)
        os.close(gate_read)
        os.close(status_write)
        try:
            os.setpgid(pid, pid)  # also done by the process itself: whichever comes first
        except OSError:
            pass
        record = self._running_record(index, pid, {})
        _note_start_ticks(record)
        try:
            self._claim(index, record)  # taken after the fork: the process holds no lock
        except (StartError, _Cancelled):
            os.kill(pid, signal.SIGKILL)  # still at its gate: it ran nothing
            os.waitpid(pid, 0)
            for fd in (gate_write, status_read):
                os.close(fd)
            raise
        os.write(gate_write, b"g")
        os.close(gate_write)
        return Task(index, pid, record, status_read)

    def await_exec(self, task: Task) -> None:
        """Block until the task's process has exec'd (or is waiting at a FIFO, or failed).

        Only ``begin`` blocks so: the loop hears the status pipe among its other sources.
        """
        while task.status_fd is not None and _WAITING not in task.said[:1]:
            self.read_status(task, block=True)

    def read_status(self, task: Task, block: bool = False) -> None:
        """Take what the task's process said; at end of file (it exec'd or died) close the pipe."""
        os.set_blocking(task.status_fd, block)
        try:
            data = os.read(task.status_fd, 4096)
        except BlockingIOError:
            return
        task.said += data
        if not data:
            os.close(task.status_fd)
            if self._poller is not None:
                self._poller.unregister(task.status_fd)
            task.status_fd = None

    def start_failure(self, task: Task) -> str | None:
        """The reason the task could not start, if its process said one."""
        said = task.said.lstrip(_WAITING)
        if said.startswith(_FAILED):
            return said[1:].decode(errors="replace")
        return None

    def record_start_failure(self, index: int | None, error: str) -> None:
        self.record_end(index, f"could not start: {error}")

    def record_end(self, index: int | None, sub_state: str) -> None:
        """The record of a task that ends without having run: ``Failed``, and why."""
        record = new_record("Failed", sub_state, task_id_string(self.job_id, index))
        record["finish_time"] = timestamp()
        self.write_task(index, record)

    def cancel_rest(self, reason: str) -> None:
        """Mark every array task that has not started as cancelled."""
        self.queued = []
        self.write(CANCEL, {"schema": SCHEMA_VERSION, "time": timestamp(), "reason": reason})

    def start_queued(self) -> None:
        """Fill free slots with queued tasks that nobody cancelled meanwhile (``spawn``
        checks under the job lock).  Nothing starts while a record waits to be written.
        """
        limit = self.array.max_parallel or len(self.array)
        while self.queued and len(self.running) < limit and not self.unwritten:
            index = self.queued[0]
            try:
                task = self.spawn(index)
            except _Cancelled as cancelled:
                if cancelled.whole:  # the array's cancel marker: no task left starts
                    self.queued = []
                    return
                self.queued.pop(0)  # cancelled on its own
                continue
            except _Held:
                self.held.append(self.queued.pop(0))  # until `release` says otherwise
                continue
            except _Expired:
                self.cancel_rest(_EXPIRED)  # the deadline has passed for every task left
                return
            except JobNotFound:
                self.queued = []
                return
            except _NotNow:
                self._schedule_retry()  # the disk is full: try again later
                return
            except StartError as error:
                self.record_start_failure(index, str(error))
                self.queued.pop(0)
                continue
            except StorageError:
                self._schedule_retry()
                return
            self.queued.pop(0)
            if task.status_fd is not None:
                self._poller.register(task.status_fd, _READABLE)

    # -- what the tasks do ---------------------------------------------------------

    def record_status(self, task: Task, status: int, usage) -> None:
        record = task.record
        if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
            self.announce(task)
        if os.WIFSTOPPED(status):
            record.update(state="Suspended",
                          sub_state=f"stopped by {signal.Signals(os.WSTOPSIG(status)).name}")
            self.write_task(task.index, record, durable=False)
            return
        if os.WIFCONTINUED(status):
            record.update(state="Running", sub_state=None)
            self.write_task(task.index, record, durable=False)
            return
        del self.running[task.pid]
        self.unannounced.pop(task.pid, None)  # its end is all it needs now
        if task.status_fd is not None:  # what it said before it ended, all of it
            while task.status_fd is not None:
                self.read_status(task, block=True)
        failure = self.start_failure(task)
        if failure is not None:
            self.record_start_failure(task.index, failure)
            return
        record.update(finish_time=timestamp(), rusage=rusage_fields(usage),
                      wallclock_time=time.monotonic() - record["dispatch_monotonic"])
        if os.WIFSIGNALED(status):
            name = _signal_name(os.WTERMSIG(status))
            record.update(state="Failed", terminating_signal=name, sub_state=f"killed by {name}")
            if name == "SIGXCPU" and "CPU_TIME" in (self.template.resource_limits or {}):
                record["sub_state"] = "CPU_TIME limit reached: killed by SIGXCPU"
        else:
            code = os.WEXITSTATUS(status)
            record.update(state="Done" if code == 0 else "Failed", exit_status=code,
                          sub_state=None if code == 0 else f"exit status {code}")
        if task.limit is not None:  # ended by its limit, however it exited
            record.update(state="Failed",
                          sub_state=f"{task.limit}; {record['sub_state'] or 'exit status 0'}")
        elif task.terminated:
            record.update(state="Failed", sub_state="terminated")
        elif record["state"] == "Failed" and self._retry_later(task, record):
            return
        left = self.end_leftovers(task)
        if left:
            ended = f"{left} leftover process{'es' if left > 1 else ''} ended"
            record["sub_state"] = f"{record['sub_state']}; {ended}" if record["sub_state"] \
                else ended
        self.write_task(task.index, record)
        if task.alone and self.queued:  # (each is checked empty as it is taken)
            self._spares += self._captured_names(task.index)
        if self.array is None:
            self.outcome = (record["state"], record["exit_status"], record["terminating_signal"])

    def _captured_names(self, index: int | None) -> list[str]:
        """The names of the task's output captured in the job's directory."""
        return [captured_output_name(index, stream)
                for stream, _, captured, _ in self._paths(index, False)[1] if captured]

    def tell_scheduler(self) -> None:
        """Tasks ended: the scheduler (if one listens) may start what waited for them.
        Once for all that ``reap`` took at a time: one word wakes it."""
        import socket

        try:
            path = self._board.socket_path()
        except StorageError:
            return  # no board to read (damaged, no descriptor left): as when none listens
        if path is None:
            return  # nothing was ever scheduled in this state directory
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
                sender.setblocking(False)
                sender.sendto(b"ended", path)
        except OSError:
            pass  # no scheduler: the one that starts next reads the records

    def _retry_later(self, task: Task, record: dict) -> bool:
        """A failed task with attempts left: ``Requeued``, and started again after
        ``--retry-delay`` seconds; False if it has none left."""
        attempt = self.attempts.get(task.index, 1)
        if attempt > (self.template.retries or 0):
            return False
        delay = self.template.retry_delay or 0.0
        left = self.end_leftovers(task)
        record.update(state="Requeued", sub_state=f"attempt {attempt} failed "
                      f"({record['sub_state']}); attempt {attempt + 1} in {delay:g} s" +
                      (f"; {left} leftover process{'es' if left > 1 else ''} ended"
                       if left else ""))
        self.write_task(task.index, record)
        self.attempts[task.index] = attempt + 1
        self.retrying.add(task.index)
        self.after(delay, self._start_again, task.index)
        return True

    def _start_again(self, index: int | None) -> None:
        """The next attempt of a requeued task, unless ``terminate`` ended it meanwhile
        (its timer, which ``recheck_retrying`` may have come before, then finds nothing)."""
        if index not in self.retrying:
            return
        try:
            task = self.spawn(index)
            if task.status_fd is not None and self._poller is not None:
                self._poller.register(task.status_fd, _READABLE)
        except _Cancelled:  # its own record says so, or the array's cancel marker does
            try:
                record = self.store.read_task(self.job_id, index) or {}
            except StorageError:
                record = {"state": "Requeued", "sub_state": "its record unreadable"}
            if record.get("state") == "Requeued":
                self.record_end(index, f"terminated while requeued ({record['sub_state']})")
        except (_NotNow, StorageError):
            self.after(_RETRY_LONGEST, self._start_again, index)
            return
        except (StartError, _Expired) as error:
            self.record_end(index, str(error) if isinstance(error, _Expired)
                            else f"could not start: {error}")
        self.retrying.discard(index)

    def end_leftovers(self, task: Task) -> int:
        """SIGTERM to what the task's leader left running, SIGKILL ``LEFTOVER_GRACE`` s later.

        Returns how many processes were left.
        """
        if not self._may_have_leftovers(task):
            task.alone = True
            return 0  # the common case, decided without a pass over /proc
        left = proc.job_tree(task.pid, task_id_string(self.job_id, task.index), os.getpid())
        if left:
            proc.signal_members(left, signal.SIGTERM)
            self.after(LEFTOVER_GRACE, proc.signal_members, left, signal.SIGKILL)
        return len(left)

    def _may_have_leftovers(self, task: Task) -> bool:
        """Whether the task's process group still has a member, or the reaper a child that
        is no task of its own (what it adopted): two cheap looks, no pass over /proc."""
        try:
            os.killpg(task.pid, 0)
            return True
        except ProcessLookupError:
            pass
        except PermissionError:
            return True
        children = proc.children(os.getpid())
        return children is None or any(child not in self.running for child in children)

    def reap(self) -> bool:
        """Record every status change waiting; False once the reaper has no child left."""
        children, running = True, len(self.running)
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
            except ChildProcessError:
                children = False
                break
            if pid == 0:
                break
            task = self.running.get(pid)
            if task is not None:
                self.record_status(task, status, usage)
            # else: a process the reaper adopted from a job's tree; nothing to record
        if len(self.running) < running:  # tasks ended (reaping starts none)
            self.tell_scheduler()
        return children

    def _take_commands(self) -> None:
        """Every datagram waiting on the control socket, one command each."""
        while True:
            try:
                data = self._control.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            self.command(data.decode(errors="replace").strip())

    def command(self, line: str) -> None:
        """A command from the control socket: ``terminated INDEX`` (``-`` for a single job);
        ``changed``: tasks were released, or held or requeued ones cancelled; ``grant INDEX
        SLOT...``: the scheduler gives a task of an array in a queue its slots."""
        word, _, argument = line.partition(" ")
        if word == "changed":
            self.recheck_held()
            self.recheck_retrying()
        elif word == "grant" and self.queue is not None and self.array is not None:
            index, *slots = argument.split()
            if index.isdigit() and all(slot.isdigit() for slot in slots) and \
                    int(index) in self.array and int(index) not in self.task_slots:
                self.task_slots[int(index)] = [int(slot) for slot in slots]
                self.queued = sorted(self.queued + [int(index)])
        elif word == "terminated":
            index = None if argument == "-" else int(argument) if argument.isdigit() else -1
            for task in self.running.values():
                if task.index == index:
                    task.terminated = True

    def recheck_held(self) -> None:
        """Held tasks that were released go back to the queue, in order; cancelled ones go."""
        if not self.held:
            return
        try:
            held = held_tasks(self.store.read(self.job_id, HELD), self.array) \
                if self.store.exists(self.job_id, HELD) else set()
            cancelled = self.store.exists(self.job_id, CANCEL)
        except StorageError:
            return
        released = [index for index in self.held if index not in held]
        self.held = [] if cancelled else [index for index in self.held if index in held]
        if released and not cancelled:
            self.queued = sorted(self.queued + released)

    def recheck_retrying(self) -> None:
        """Requeued tasks that ``terminate`` ended (their record says ``Failed``, or the
        array's cancel marker is there) wait no longer for their next attempt's timer: that
        attempt is taken now, finds them cancelled and records their end, and the reaper
        can leave.  (A record still ``Running`` is one whose ``Requeued`` is unwritten.)"""
        if not self.retrying:
            return
        try:
            cancelled = self.store.exists(self.job_id, CANCEL)
            ended = [index for index in self.retrying if (cancelled and index is not None) or
                     (self.store.read_task(self.job_id, index) or {}).get("state") == "Failed"]
        except StorageError:
            return  # the timers still take them
        for index in ended:
            self._start_again(index)

    # -- the loop ------------------------------------------------------------------

    def after(self, seconds: float, callback, *args) -> None:
        """Call ``callback(*args)`` in ``seconds`` (a bound method and its arguments: a
        reaper of a thousand tasks with limits holds a thousand timers)."""
        self._sequence += 1
        heapq.heappush(self._timers, (time.monotonic() + seconds, self._sequence, callback,
                                      args))

    def _next_timeout(self) -> int | None:
        """Milliseconds until the next timer (None: none is set), for poll."""
        moments = [moment for moment in (self._retry_at, self._timers[0][0] if self._timers
                                         else None) if moment is not None]
        if not moments:
            return None
        return max(0, int((min(moments) - time.monotonic()) * 1000) + 1)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        if self._retry_at is not None and self._retry_at <= now:
            self._retry_writes()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback, args = heapq.heappop(self._timers)
            callback(*args)

    def run(self) -> None:
        """The event loop: until no task runs or waits, no record is unwritten, no child lives."""
        import select

        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._poller = poller = select.poll()
        poller.register(wake_read, _READABLE)
        for task in self.running.values():
            if task.status_fd is not None:
                poller.register(task.status_fd, _READABLE)
        if self._control is None:
            self._control = self._open_control()
        if self._control is not None:
            poller.register(self._control.fileno(), _READABLE)
            self._take_commands()  # what came before the loop, before what the tasks did
        children = self.reap()
        orphans_ended = False
        while True:
            if self.array is not None:
                self.start_queued()
            if children and not (self.running or self.queued or self._timers or orphans_ended):
                # Every task has ended, yet the reaper has children: what the jobs'
                # trees left, adopted by it as their subreaper.  They end with the job.
                orphans = proc.adopted(os.getpid())
                proc.signal_members(orphans, signal.SIGTERM)
                self.after(LEFTOVER_GRACE, proc.signal_members, orphans, signal.SIGKILL)
                orphans_ended = True
            # Timers left (SIGKILL to leftovers) no longer matter once no child is left.
            if not (children or self.running or self.unwritten or self.queued or self.held or
                    self.retrying):
                break
            self.announce_due()
            ready = poller.poll(0) if self.unannounced else None
            if not ready:  # nothing to do but the deferred records, then sleep
                self.announce_due(everything=True)
                ready = poller.poll(self._next_timeout())
            for fd, _ in ready:
                if fd == wake_read:
                    while True:
                        try:
                            if not os.read(wake_read, 512):
                                break
                        except BlockingIOError:
                            break
                elif self._control is not None and fd == self._control.fileno():
                    self._take_commands()
                else:
                    for task in list(self.running.values()):
                        if task.status_fd == fd:
                            self.read_status(task)
            children = self.reap()
            self._fire_timers()
        self._close_control()
        if self.store.flusher is not None:
            self.store.flusher.drain()
        infos = self.final_infos()
        if self.template.on_end is not None and self.outcome is not None:
            self.tell_end(infos)  # first: CMD's process must not keep the pipe open
            self.run_on_end()  # its process compacts the job once CMD has ended
        else:
            self.finish(infos)
            self.tell_end(infos)
        try:
            waiting = self._board.waiting()
        except StorageError:
            waiting = []  # no board to read (damaged, no descriptor left): as in ensure
        if waiting:  # a scheduler killed meanwhile: start the next one
            from .scheduler import ensure

            ensure(self.store, self._board)

    def _open_control(self):
        """The control socket: a Unix datagram socket in the job's directory.

        A socket, not a FIFO: a program that reads every file of the state
        dir (cp, tar, grep -r) gets ENXIO from it at once, where a FIFO would
        block it.  Bound through /proc/self/fd and the job directory that the
        store holds, so the path's length is never a problem and a moved state
        dir is followed; the directory (0700) keeps other users from sending.
        """
        import socket

        try:
            directory = self.store.job_dir_fd(self.job_id)  # held by the store: not closed here
        except (JobNotFound, StorageError):
            return None
        control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        umask = os.umask(0o177)  # the socket file is created 0600, as everything in the state dir
        try:
            control.bind(f"/proc/self/fd/{directory}/{CONTROL}")
            control.setblocking(False)
        except OSError:
            control.close()
            return None
        finally:
            os.umask(umask)
        return control

    def _close_control(self) -> None:
        if self._control is not None:
            try:
                self.store.unlink(self.job_id, CONTROL)
            except StorageError:
                pass
            self._control.close()

    def final_infos(self) -> list | None:
        """The JobInfo of every task, read back from the records once all have ended (an
        array's ``outcome`` with them); None if some task has not: the reaper of an array
        in a queue ends whenever no task it was given runs, and the scheduler may start
        another for the rest.  The one step whose cost grows with the array; it runs once,
        at the end."""
        try:
            if self.array is None:
                record = self.store.read_task(self.job_id, None)
                if record is None or record.get("state") not in ENDED_NAMES:
                    return None
                return [info_from_record(self.header, None, check_task_record(
                    record, self.store.task_path(self.job_id, None), str(self.job_id)))]
            self.store.forget_task_log(self.job_id)  # read whole, as it is on the disk now
            marker = self.store.read(self.job_id, CANCEL)
            indices = self.array.indices()
            records = self.store.read_tasks(self.job_id, indices)
            if self.queue is not None and marker is None and None in records:
                return None
            cancelled = cancelled_record(marker)
            infos = [info_from_record(self.header, index, record or cancelled)
                     for index, record in zip(indices, records)]
        except (JobNotFound, StorageError, KeyError):
            return None  # damaged: readers report it, from the records as they are
        states = {info.state.value for info in infos}
        self.outcome = ("Done" if states == {"Done"} else
                        "Failed" if "Failed" in states else "Undetermined", None, None)
        return infos

    def finish(self, infos: list | None) -> None:
        """The job has ended: compact it into the history (``core.history``), which
        readers then read instead of its directory.  Where that cannot be done (a
        full disk), the records stay, an array's summed up in its summary file, so that
        listing it reads one file."""
        if infos is None:
            return
        if self.environment.get(KEEP_RECORDS) == "1":
            line = None  # the user keeps the records where they are
        else:
            line = self._history_line(infos)
        if line is not None:
            try:
                with self.store.job_lock(self.job_id):  # no delete, hold or cancel meanwhile
                    if compact(self.store, line, self.job_id):
                        return
            except (JobNotFound, StorageError, OSError):
                pass  # deleted meanwhile (nothing is written), or its lock is unreadable
        if self.array is not None:
            self.write_summary(infos)

    def tell_end(self, infos: list | None) -> None:
        """Say how the job ended to the submitter that waits for it (``submit --wait``),
        once its records are final: ``ended STATE EXIT SIGNAL`` ("-" for none), a single
        job's as its record has them, an array's state (Done only if every task is).
        Nothing where its records could not be read back (``infos`` None): the pipe's
        end of file then sends the submitter to read them."""
        if self.end_fd is None:
            return
        if infos is not None:
            if self.array is None:
                info = infos[0]
                state, code, name = info.state.value, info.exit_status, info.terminating_signal
            else:
                state, code, name = self.outcome[0], None, None
            _report(self.end_fd, f"ended {state} {'-' if code is None else code} {name or '-'}")
        else:
            os.close(self.end_fd)
        self.end_fd = None

    def _history_line(self, infos: list) -> bytes | None:
        try:
            return history_line(self.header, infos)
        except (ValueError, TypeError, KeyError):
            return None  # a record that a reader would refuse: it reports it from there

    def write_summary(self, infos: list | None) -> None:
        """The JobInfo of every task in one file, so that listing an ended array that
        could not be compacted reads one.  Each JobInfo leaves its template out: it is
        in the header, and readers put it in."""
        if infos is None:
            return
        self.unwritten[SUMMARY] = (summary_chunks(infos), True)
        self.settle(SUMMARY_PATIENCE)

    def run_on_end(self) -> None:
        """``--on-end CMD``, once the job (an array: all of it) has ended: ``/bin/sh -c CMD``
        in a process of its own, which outlives the reaper (so that ``wait`` returns as the
        job ends, not as CMD does), records how CMD ended in ``on_end.json`` and, for a
        single job whose CMD failed, in its ``sub_state``; the job's state never changes.
        """
        if self.template.on_end is None or self.outcome is None:
            return
        try:
            if os.fork():
                return
        except OSError:
            return  # no process left for it: the job stands as it ended
        try:
            os.setsid()
            if self.lock_fd is not None:
                os.close(self.lock_fd)  # readers take the reaper for gone: so it is
            self.store.flusher = None  # its thread is the parent's: write durably here
            state, exit_status, signal_name = self.outcome
            environment = dict(self.environment, OSTRACKER_JOB_ID=str(self.job_id),
                               OSTRACKER_JOB_NAME=self.template.job_name or "",
                               OSTRACKER_JOB_STATE=state,
                               OSTRACKER_EXIT_STATUS="" if exit_status is None else
                               str(exit_status),
                               OSTRACKER_TERMINATING_SIGNAL=signal_name or "")
            null = os.open(os.devnull, os.O_RDWR)
            child = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", self.template.on_end],
                                   environment, setsigdef=proc.DEFAULT_SIGNALS,
                                   file_actions=[(os.POSIX_SPAWN_DUP2, null, fd)
                                                 for fd in (0, 1, 2)])
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            self.store.write(self.job_id, ON_END, {"schema": SCHEMA_VERSION, "command":
                                                   self.template.on_end, "exit_status": code,
                                                   "finish_time": timestamp()})
            if code != 0 and self.array is None:
                with self.store.job_lock(self.job_id):
                    record = self.store.read_task(self.job_id, None)
                    how = f"exit status {code}" if code > 0 else \
                        f"killed by {_signal_name(-code)}"
                    failed = f"--on-end failed: {how}"
                    record["sub_state"] = f"{record['sub_state']}; {failed}" \
                        if record.get("sub_state") else failed
                    self.store.write_task(self.job_id, None, record)
            self.finish(self.final_infos())
        except BaseException:  # noqa: BLE001 - nothing here may climb back into the reaper's code
            pass
        finally:
            os._exit(0)

    def settle(self, patience: float = RECORD_PATIENCE) -> None:
        """Write what is unwritten, retrying for at most ``patience`` seconds.

        For the end of the reaper, when no process of its jobs is left: a
        summary is only a faster way to read the task records, and a task that
        never started has nothing left to lose but its "could not start".
        """
        give_up = time.monotonic() + patience
        self._retry_writes()
        while self.unwritten and time.monotonic() < give_up:
            time.sleep(self._retry_delay)
            self._retry_writes()


_READABLE = 1  # select.POLLIN, without importing select where it is not needed


def _note_start_ticks(record: dict) -> None:
    """Put its process's start ticks in a "Running" record: with the PID, they name the
    process for good (``proc.identify``); None if it has ended already."""
    started = proc.stat(record["pid"])
    record["start_ticks"] = started.start_ticks if started else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _run_task(gate: int, status: int, executable: str, argv: list[str], environment: dict,
              stdin: str | None, outputs: list, limits=()) -> None:
    """In the forked process of a task: wait at the gate, set up, exec.  Never returns.

    Nothing here may raise out: whatever fails is said on the status pipe,
    and the process exits 127 (as a shell does for a command it cannot run).
    """
    try:
        # Nothing of the reaper's may stay open here, not even while waiting at the gate:
        # not its lock (whose holder readers take for the reaper), not the ready pipe
        # (that submit reads to its end), not the gate's write end (or a reaper that
        # dies would leave us waiting here for ever instead of reading end-of-file).
        low, high = sorted((gate, status))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
        if not os.read(gate, 1):
            os._exit(0)  # the reaper died before it recorded us: run nothing
        os.close(gate)
        os.setpgid(0, 0)
        for signum in proc.DEFAULT_SIGNALS:  # the SIG_IGN trap: the job starts clean
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if limits:
            import resource

            for which, value in limits:
                resource.setrlimit(which, (value, resource.getrlimit(which)[1]))
        opened = {0: _open_input(stdin, status)}
        for number, (stream, path, captured, truncate) in enumerate(outputs, start=1):
            opened[number] = opened[1] if path is None else \
                _open_output(stream, path, captured, truncate, opened[0], status)
        for number, fd in opened.items():
            os.dup2(fd, number)
        os.execve(executable, argv, environment)
    except _Refused as refusal:
        message = str(refusal)
    except OSError as exc:
        message = f"cannot execute {executable}: {exc.strerror}"
    except BaseException as exc:  # noqa: BLE001 - never climb back into the reaper's code
        message = f"cannot start: {exc}"
    try:
        os.write(status, _FAILED + message.encode(errors="replace"))
    finally:
        os._exit(127)


class _NotNow(StartError):
    """The task cannot start for want of room in the state dir: it waits, and is tried again."""


class _Cancelled(Exception):
    """A task that `terminate` cancelled before its record existed: it must not start;
    ``whole``: with every task of its array that has not started."""

    def __init__(self, message: str, whole: bool = False):
        super().__init__(message)
        self.whole = whole


class _Held(Exception):
    """A task that `hold` held before its record existed: it waits for `release`."""


class _Expired(Exception):
    """A task whose deadline passed before it started: it never starts."""


class _Refused(Exception):
    """Why a task's process will not exec: one line, said on its status pipe."""


def never_spawned(store: Store, job_id: int, index: int | None, record: dict) -> bool:
    """Whether ``record`` is the "starting" record of a waiting job whose reaper died before
    it created the process: no mark of the process (``I.spawned``), and no process with the
    record's token.  Such a job waits again, and may be started again.  Asked only where
    the job's reaper lock is free or taken by its next reaper (the old one is dead).
    """
    if record.get("state") != "Queued" or record.get("sub_state") != STARTING or \
            store.exists(job_id, spawned_name(index)):
        return False
    token = record.get("token")
    return not isinstance(token, str) or \
        proc.find_by_environment(f"{TOKEN_VARIABLE}={token}") is None


def _rlimits(limits: dict | None) -> list[tuple[int, int]]:
    """(setrlimit resource, value) of the template's resource limits, but the wall clock."""
    if not limits or set(limits) == {"WALLCLOCK_TIME"}:  # the usual: -t alone, a timer
        return []
    import resource

    from ..core.limits import RESOURCE_LIMITS

    return [(getattr(resource, RESOURCE_LIMITS[key][0]), value) for key, value in limits.items()
            if RESOURCE_LIMITS.get(key, (None,))[0] is not None]


def _is_fifo(path: str | None) -> bool:
    try:
        return path is not None and stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _open_input(path: str | None, status: int | None) -> int:
    if path is None:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    _say_if_fifo(path, status)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "Is a directory")
    except OSError as exc:
        raise _Refused(f"cannot open stdin {path}: {exc.strerror}") from None
    return fd


def _open_output(stream: str, path: str, captured: bool, truncate: bool, stdin: int,
                 status: int | None) -> int:
    """Open stdout or stderr; refuse the regular file that is stdin (it would be emptied or
    clobbered: a device such as /dev/null is fine), and (captured) any planted link.

    A file the user named is created with the user's umask, as a shell's
    redirection would; a captured one in the state dir is private, and never
    written through a link planted at its name.
    """
    try:
        existing = os.stat(path)
    except OSError:
        existing = None
    if existing is not None:
        read = os.fstat(stdin)
        if stat.S_ISREG(existing.st_mode) and \
                (existing.st_dev, existing.st_ino) == (read.st_dev, read.st_ino):
            raise _Refused(f"stdin and {stream} are the same file: {path}")
        if stat.S_ISFIFO(existing.st_mode):
            _say_if_fifo(path, status)
    try:
        if captured:  # never truncate a file that someone linked there: check, then truncate
            # O_NONBLOCK: a FIFO planted there fails at once (ENXIO) instead of blocking.
            fd = os.open(path, _OPEN_WRITE | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                os.close(fd)
                raise _Refused(f"cannot open {stream} {path}: not a private regular file")
            os.set_blocking(fd, True)
            if truncate:
                os.ftruncate(fd, 0)
            return fd
        return os.open(path, _OPEN_WRITE | (os.O_TRUNC if truncate else 0), 0o666)
    except OSError as exc:
        raise _Refused(f"cannot open {stream} {path}: {exc.strerror}") from None


def _say_if_fifo(path: str, status: int | None) -> None:
    """Tell the reaper before an open that may block for good (a FIFO nobody opens)."""
    if status is None:
        return
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            os.write(status, _WAITING)
    except OSError:
        pass


def _say_who(lock_fd: int) -> None:
    """The reaper's PID in its lock file, so that the scheduler can watch it (a pidfd)."""
    try:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, b"%d\n" % os.getpid(), 0)
    except OSError:
        pass  # a lock opened for reading only: the scheduler finds the reaper otherwise


def _report(ready_fd: int, word: str, keep: bool = False) -> None:
    """Tell the submitter; if it was killed meanwhile, the job goes on all the same.
    ``keep``: the pipe stays open, for the word on how the job ended (``tell_end``)."""
    try:
        os.write(ready_fd, f"{word}\n".encode())
    except OSError:
        pass  # EPIPE: nobody is waiting for the word any more
    if not keep:
        os.close(ready_fd)


def begin(store: Store, header: Header, ready_fd: int, lock_fd: int, queue: str | None = None,
          slots: list[int] = (), lean: bool = False, first: int | None = None,
          tell_end: bool = False) -> None:
    """First act of the reaper, in the freshly forked and detached child: see module doc.

    ``queue``, ``slots``: what the scheduler gave the job (an array: its task
    ``first``, the one this reaper starts first).  ``lean``: this
    process is a lean interpreter already (forked from the scheduler), so the
    reaper goes on in it instead of executing a fresh one.  ``tell_end``: the
    ready pipe stays open, and ``Reaper.tell_end`` says on it how the job ended
    (``launch.hear_end`` reads it).  Never returns: it
    runs (or execs) the lean reaper, or exits when nothing is left to watch.
    """
    detach.detach_descriptors({ready_fd, lock_fd})
    _become_subreaper()
    _say_who(lock_fd)
    if header.umask is not None:
        os.umask(header.umask)
    if first is None and header.array is not None:
        first = header.array.begin
    reaper = Reaper(store, header, queue, slots, first)
    reaper.lock_fd = lock_fd
    job_id = header.job_id
    indices = iter([first] if queue is not None else
                   reaper.array.indices() if reaper.array else [None])
    first = next(indices)
    try:
        try:
            os.chdir(reaper.template.working_directory)
        except OSError as exc:
            raise StartError(f"cannot enter working directory "
                             f"{reaper.template.working_directory}: {exc.strerror}") from None
        # Listening before the first task exists: a `terminate` that comes while this
        # process becomes the lean reaper waits in the socket, instead of being lost (the
        # task's SIGKILL would then read as a failure, and be retried).
        reaper._control = reaper._open_control()
        while True:
            try:
                task = reaper.spawn(first, first=True)
                break
            except _Cancelled:  # `terminate` came before the first record
                raise StartError(_CANCELLED) from None
            except _Held:  # `hold` came first: the next task that is not held starts
                first = next(indices, _HELD)
                if first == _HELD:
                    raise StartError(_HELD) from None
            except _Expired:
                reaper.record_end(first, _EXPIRED)
                if reaper.array is not None:
                    reaper.cancel_rest(_EXPIRED)
                raise StartError(_EXPIRED) from None
        reaper.await_exec(task)
        failure = reaper.start_failure(task)
        if failure is not None:
            os.waitpid(task.pid, 0)
            del reaper.running[task.pid]
            raise StartError(failure)
    except StartError as error:
        if not isinstance(error, _NotNow) and str(error) not in (_CANCELLED, _HELD, _EXPIRED):
            reaper.record_start_failure(first, str(error))
            if reaper.array is not None:
                reaper.cancel_rest(f"cancelled: task {first} could not start")
        _report(ready_fd, f"error {error}")
        if reaper.array is not None and str(error) != _HELD:
            reaper.write_summary(reaper.final_infos())
        reaper._close_control()
        reaper.settle()
        os._exit(0)
    _report(ready_fd, f"started {task.pid}", keep=tell_end)
    if tell_end:
        reaper.end_fd = ready_fd
    if lean:
        store.flusher = Flusher()
        _carry_on(reaper, task)
    # What the lean reaper inherits: the lock, the job's directory (so that a state
    # dir moved meanwhile is followed), the status pipe of a task not yet exec'd,
    # the pipe to tell the submitter how the job ended, and the task's record if
    # the disk did not take it yet (it must not be lost).
    directory = store.job_dir_fd(job_id)
    control = None if reaper._control is None else reaper._control.fileno()
    for fd in (lock_fd, directory, task.status_fd, control, reaper.end_fd):
        if fd is not None:
            os.set_inheritable(fd, True)
    import json

    args = [store.root, str(job_id), str(lock_fd), str(directory), str(task.pid),
            "" if first is None else str(first),
            "" if task.status_fd is None else str(task.status_fd),
            json.dumps(task.record) if reaper.unwritten else "",
            json.dumps([queue, list(slots)]), "" if control is None else str(control),
            "" if reaper.end_fd is None else str(reaper.end_fd)]
    detach.exec_lean(_BOOTSTRAP, args)


def main(argv: list[str]) -> None:
    """Entry point of the lean reaper that ``begin`` execs: wait out the submission."""
    import json

    root, job_id, lock_fd, directory, first_pid, first_index, status_fd, unwritten, given, \
        control, end = argv
    job_id, lock_fd, directory, first_pid = int(job_id), int(lock_fd), int(directory), \
        int(first_pid)
    os.set_inheritable(lock_fd, False)
    os.set_inheritable(directory, False)
    store = Store(root, Flusher())
    store.hold_job_dir(job_id, directory)
    queue, slots = json.loads(given)
    index = int(first_index) if first_index else None
    reaper = Reaper(store, Header.from_dict(job_id, store.read(job_id, HEADER),
                                            store.path(job_id, HEADER)), queue, slots, index)
    reaper.lock_fd = lock_fd
    if control:  # what was sent to it meanwhile is queued there
        import socket

        os.set_inheritable(int(control), False)
        reaper._control = socket.socket(fileno=int(control))
        reaper._control.setblocking(False)
    if end:
        reaper.end_fd = int(end)
        os.set_inheritable(reaper.end_fd, False)
    status = int(status_fd) if status_fd else None
    if status is not None:
        os.set_inheritable(status, False)
    if unwritten:  # begin() could not write it: it is ours to write now
        task = Task(index, first_pid, json.loads(unwritten), status)
        reaper.write_task(index, task.record, durable=False)
    else:
        task = Task(index, first_pid, store.read_task(job_id, index), status)
    reaper.running[first_pid] = task
    _carry_on(reaper, task)


def _carry_on(reaper: Reaper, task: Task) -> None:
    """The reaper's life after its first task started: the loop, until the end; then it
    exits without the interpreter's teardown (waiters wake as it exits: milliseconds
    sooner, and its records are all written and synced by then)."""
    reaper.store.flush_later(reaper.job_id, HEADER)  # written by submit without an fsync
    task.said = _WAITING  # begin() heard this much
    reaper._arm(task)
    if reaper.array is not None and reaper.queue is None:  # else the scheduler gives them
        reaper.queued = [i for i in reaper.array.indices() if i != task.index]
    reaper.run()
    os._exit(0)
