"""The reaper: the one process that starts a submission's tasks and records their fate.

One reaper runs per submission.  Its life:

1. ``begin`` runs in a child that ``launch`` forked off the submitting process
   and detached with ``setsid`` (so no terminal hang-up or end of a cron run
   reaches it).  It points its stdin/stdout/stderr at /dev/null (so a shell
   reading ``$(ostracker submit ...)`` is not kept waiting), closes every other
   inherited descriptor, enters the working directory and starts the first
   task.  It writes the task's record, then reports ``started`` — or the exact
   reason the task could not start — through the ready pipe that ``submit`` is
   blocked on.  Then it execs a fresh, lean interpreter (``main``): the
   submitting process had click and more loaded, which a process that may live
   for days should not carry.  The task stays its child across the exec.
2. ``main`` loops on ``os.wait4(-1, WUNTRACED | WCONTINUED)``: every stop,
   continue and end of a task becomes a record (state, times, exit status or
   signal, rusage), and a freed slot starts the next queued task of an array.
3. When no task is left, an array's tasks' JobInfos are written into one
   summary file, pending fsyncs are drained, and the reaper exits, which drops
   its lock: readers take a free lock on a job that is not over as the sign
   that its reaper died.

Tasks are started with ``posix_spawn`` in their own process group inside the
reaper's session (see ``proc.spawn``), never through ``subprocess.Popen``,
whose own bookkeeping would be fooled by our ``wait4``.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time

from ..core.errors import StartError
from ..core.models import expand_path, is_per_task, task_id_string, timestamp
from ..core.records import (CANCEL, HEADER, SCHEMA_VERSION, SUMMARY, Header, cancelled_record,
                            captured_output_name, info_from_record, new_record, summary_chunks,
                            task_record_name)
from ..core.store import Flusher, Store
from . import proc

_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
# Run by the fresh interpreter: -I and -S keep it from loading user and site
# packages; the package's own directory is put on sys.path by hand instead.
_BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from ostracker.local.reaper import main; main(sys.argv[2:])"


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


class Reaper:
    """Starts the tasks of one submission and turns their wait statuses into records."""

    def __init__(self, store: Store, header: Header):
        self.store = store
        self.job_id = header.job_id
        self.header = header
        self.template = header.template
        self.array = header.array
        self.boot_id = header.boot_id
        self.environment = dict(os.environ, **self.template.job_environment)
        self.running: dict[int, tuple[int | None, dict]] = {}  # pid -> (index, record)
        self._executable: str | None = None
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # every task's stdin

    # -- starting ------------------------------------------------------------

    def _open(self, pattern: str | None, index: int | None, stream: str, first: bool) -> int:
        if pattern is None:
            path = self.store.path(self.job_id, captured_output_name(index, stream))
            flags, truncate = _OPEN_WRITE | os.O_NOFOLLOW, True
        else:
            path = expand_path(pattern, task_id_string(self.job_id, index), index)
            flags = _OPEN_WRITE
            # A path shared by all tasks of an array is truncated once, by the first.
            truncate = first or is_per_task(pattern)
        try:
            return os.open(path, flags | (os.O_TRUNC if truncate else 0), 0o600 if pattern is None
                           else 0o666)
        except OSError as exc:
            raise StartError(f"cannot open {stream} {path}: {exc.strerror}") from None

    def _refuse_reading_an_output(self, stdin: int, task_id: str, index: int | None) -> None:
        """stdin must not be the file that stdout or stderr would truncate.

        Compared as files (device and inode), so that a symbolic link or another
        spelling of the same path is caught too.
        """
        read = os.fstat(stdin)
        for stream, pattern in (("stdout", self.template.output_path),
                                ("stderr", self.template.error_path)):
            if pattern is None:
                continue
            path = expand_path(pattern, task_id, index)
            try:
                written = os.stat(path)
            except OSError:
                continue  # not there yet: it cannot be the input
            if (written.st_dev, written.st_ino) == (read.st_dev, read.st_ino):
                raise StartError(f"stdin and {stream} are the same file: {path}")

    def start(self, index: int | None, first: bool = False) -> dict:
        """Start one task; record it Running and return the record, or raise StartError."""
        task_id = task_id_string(self.job_id, index)
        if self._executable is None:
            try:
                self._executable = proc.resolve_command(self.template.remote_command,
                                                        self.environment.get("PATH"))
            except FileNotFoundError as exc:
                raise StartError(str(exc)) from None
        environment = dict(self.environment, JOB_ID=task_id)
        if index is not None:
            environment["TASK_ID"] = str(index)
        else:
            environment.pop("TASK_ID", None)  # submitted from inside an array task
        opened = []
        try:
            if self.template.input_path is None:
                stdin = self._devnull
            else:
                path = expand_path(self.template.input_path, task_id, index)
                try:
                    stdin = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise StartError(f"cannot open stdin {path}: {exc.strerror}") from None
                opened.append(stdin)
                if stat.S_ISDIR(os.fstat(stdin).st_mode):
                    raise StartError(f"cannot open stdin {path}: Is a directory")
                self._refuse_reading_an_output(stdin, task_id, index)
            stdout = self._open(self.template.output_path, index, "stdout", first)
            opened.append(stdout)
            if self.template.error_path is not None and \
                    self.template.error_path == self.template.output_path:
                stderr = stdout
            else:
                stderr = self._open(self.template.error_path, index, "stderr", first)
                opened.append(stderr)
            argv = [self.template.remote_command, *self.template.args]
            try:
                pid = proc.spawn(self._executable, argv, environment, stdin, stdout, stderr)
            except OSError as exc:
                raise StartError(f"cannot execute {self._executable}: {exc.strerror}") from None
        finally:
            for fd in opened:
                os.close(fd)
        started = proc.stat(pid)  # a zombie still has its stat: only we can reap it
        record = new_record("Running")
        # CLOCK_MONOTONIC is one clock for all processes of a boot: the exec'd
        # reaper can measure the wall clock time of a task that begin() started.
        record.update(pid=pid, start_ticks=started.start_ticks if started else None,
                      boot_id=self.boot_id, dispatch_time=timestamp(),
                      dispatch_monotonic=time.monotonic())
        self.store.write(self.job_id, task_record_name(index), record, durable=False)
        self.running[pid] = (index, record)
        return record

    def record_start_failure(self, index: int | None, error: StartError) -> None:
        record = new_record("Failed", f"could not start: {error}")
        record["finish_time"] = timestamp()
        self.store.write(self.job_id, task_record_name(index), record)

    def cancel_rest(self, reason: str) -> None:
        """Mark every array task that has not started as cancelled."""
        self.store.write(self.job_id, CANCEL, {"schema": SCHEMA_VERSION,
                                               "time": timestamp(), "reason": reason})

    def start_queued(self, pending) -> None:
        """Fill free slots with queued tasks that nobody cancelled meanwhile.

        The job lock is held from the check to the record, so a ``terminate``
        of a queued task either sees the task Running or cancels it for good.
        """
        limit = self.array.max_parallel or len(self.array)
        while len(self.running) < limit:
            index = next(pending, None)
            if index is None:
                return
            with self.store.job_lock(self.job_id):
                if os.path.exists(self.store.path(self.job_id, CANCEL)):
                    return
                if os.path.exists(self.store.path(self.job_id, task_record_name(index))):
                    continue  # cancelled on its own
                try:
                    self.start(index)
                except StartError as error:
                    self.record_start_failure(index, error)

    # -- waiting ---------------------------------------------------------------

    def record_status(self, pid: int, status: int, usage) -> None:
        index, record = self.running[pid]
        if os.WIFSTOPPED(status):
            record.update(state="Suspended",
                          sub_state=f"stopped by {signal.Signals(os.WSTOPSIG(status)).name}")
            durable = False
        elif os.WIFCONTINUED(status):
            record.update(state="Running", sub_state=None)
            durable = False
        else:
            del self.running[pid]
            record.update(finish_time=timestamp(), rusage=rusage_fields(usage),
                          wallclock_time=time.monotonic() - record["dispatch_monotonic"])
            if os.WIFSIGNALED(status):
                name = signal.Signals(os.WTERMSIG(status)).name
                record.update(state="Failed", terminating_signal=name,
                              sub_state=f"killed by {name}")
            else:
                code = os.WEXITSTATUS(status)
                record.update(state="Done" if code == 0 else "Failed", exit_status=code,
                              sub_state=None if code == 0 else f"exit status {code}")
            durable = True
        self.store.write(self.job_id, task_record_name(index), record, durable=durable)

    def run(self) -> None:
        """Wait for every task, starting queued ones as slots free, then summarise."""
        pending = None
        if self.array is not None:
            started = {index for index, _ in self.running.values()}
            pending = (i for i in self.array.indices() if i not in started)
            self.start_queued(pending)
        while self.running:
            try:
                pid, status, usage = os.wait4(-1, os.WUNTRACED | os.WCONTINUED)
            except ChildProcessError:
                break
            if pid in self.running:
                self.record_status(pid, status, usage)
            if pending is not None:
                self.start_queued(pending)
        if self.array is not None:
            self.write_summary()
        if self.store.flusher is not None:
            self.store.flusher.drain()

    def write_summary(self) -> None:
        """The JobInfo of every task in one file, so that listing an ended array reads one.

        The one step whose cost grows with the array; it runs once, at the end.
        Each JobInfo leaves its template out: it is in the header, and readers put it in.
        """
        cancelled = cancelled_record(self.store.read(self.job_id, CANCEL))
        infos = [info_from_record(self.header, index,
                                  self.store.read(self.job_id, task_record_name(index))
                                  or cancelled)
                 for index in self.array.indices()]
        self.store.write_chunks(self.job_id, SUMMARY, summary_chunks(infos))


def _detach_descriptors(keep: set[int]) -> None:
    """stdin/stdout/stderr to /dev/null; every other descriptor closed but ``keep``."""
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


def _report(ready_fd: int, word: str) -> None:
    """Tell the submitter; if it was killed meanwhile, the job goes on all the same."""
    try:
        os.write(ready_fd, f"{word}\n".encode())
    except OSError:
        pass  # EPIPE: nobody is waiting for the word any more
    os.close(ready_fd)


def begin(store: Store, header: Header, ready_fd: int, lock_fd: int) -> None:
    """First act of the reaper, in the freshly forked and detached child: see module doc.

    Never returns: it execs the lean reaper, or exits when nothing is left to watch.
    """
    _detach_descriptors({ready_fd, lock_fd})
    reaper = Reaper(store, header)
    job_id = header.job_id
    first = reaper.array.begin if reaper.array else None
    try:
        try:
            os.chdir(reaper.template.working_directory)
        except OSError as exc:
            raise StartError(f"cannot enter working directory "
                             f"{reaper.template.working_directory}: {exc.strerror}") from None
        record = reaper.start(first, first=True)
    except StartError as error:
        reaper.record_start_failure(first, error)
        if reaper.array is not None:
            reaper.cancel_rest(f"cancelled: task {first} could not start")
            reaper.write_summary()
        _report(ready_fd, f"error {error}")
        os._exit(0)
    _report(ready_fd, f"started {record['pid']}")
    os.set_inheritable(lock_fd, True)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [store.root, str(job_id), str(lock_fd), str(record["pid"]),
            "" if first is None else str(first)]
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, package_parent, *args])


def main(argv: list[str]) -> None:
    """Entry point of the lean reaper that ``begin`` execs: wait out the submission."""
    root, job_id, lock_fd, first_pid, first_index = argv
    job_id, lock_fd, first_pid = int(job_id), int(lock_fd), int(first_pid)
    os.set_inheritable(lock_fd, False)
    store = Store(root, Flusher())
    store.flusher.add(store.path(job_id, HEADER))  # written by submit without an fsync
    reaper = Reaper(store, Header.from_dict(job_id, store.read(job_id, HEADER),
                                            store.path(job_id, HEADER)))
    index = int(first_index) if first_index else None
    reaper.running[first_pid] = (index, store.read(job_id, task_record_name(index)))
    reaper.run()
