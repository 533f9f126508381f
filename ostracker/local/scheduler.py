"""The scheduler: the one process that decides when waiting jobs start, alive only while
some job waits (README, "Scheduling").

No job that waits has a process of its own.  What waits is written on the
board (``board``): ``wait.N`` entries, queues, taken slots.  The scheduler
is started by whichever command leaves work waiting and finds the board's
lock free (``poke``), by a reaper that exits while work waits, and by any
later ``ostracker`` command that finds work waiting and no scheduler
(``JobTracker``); a second one finds the lock taken and exits at once.

Its loop: one pass over the board (``schedule``), then sleep in ``poll`` on
its socket (a datagram from submit, hold, release, terminate, ``queue``, and
each reaper whose task ends), the pidfds of the reapers whose tasks hold
slots or are waited on (a reaper killed with ``kill -9`` says nothing), and
the next begin time.  Nothing wakes it while nothing changes.

A pass, in order:
1. entries of jobs that have a record (started, failed to start, cancelled)
   are removed: they wait no more;
2. slots whose task has ended, and whose process group is empty, are freed;
   so are slots taken for a task that never started (a scheduler killed
   between taking them and starting it);
3. a job whose deadline has passed fails ("DEADLINE: passed before it
   started"); held jobs are passed over; a job whose begin time (or
   deadline) has not come sets the next wake-up; a dependency that can never
   be met fails the job ("dependency never satisfied: ..."); one not yet met
   is passed over;
4. a job that waits for nothing else starts; one in a queue starts if its
   queue has the slots it needs free, in order of priority, then ID (no
   backfill: the first that does not fit stops its queue for this pass).

Starting a job takes its slots, then its reaper lock (``flock``,
non-blocking): a job is started by whoever holds it, and a job whose reaper
lives is never started again; the reaper then records the task under the
job lock unless ``terminate`` cancelled it or ``hold`` held it meanwhile.  So
no kill at any point starts a job twice or loses one: the entry stays until
the job has a record that says it started (a "starting" record of a reaper
that died before it created the process does not: ``reaper.never_spawned``),
and the next pass (of this or the next scheduler) starts it.  A start that
fails for want of disk space is tried again a second later.

When nothing waits, the scheduler closes its socket, drops its lock, and
looks once more: work that came in between is its own again, or the next
scheduler's.
"""

from __future__ import annotations

import os
import select
import time

from ..core.errors import JobNotFound, StartError, StorageError, TrackerError
from ..core.models import JobState, epoch, parse_job_id, task_id_string, timestamp
from ..core.records import CANCEL, HEADER, SCHEMA_VERSION, Header, new_record
from ..core.store import Store
from . import detach, proc
from .board import Board

_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from ostracker.local.scheduler import main; main(sys.argv[2:])")
LEFTOVER_RECHECK = 0.05  # seconds between looks at a group that outlives its ended leader
LONGEST_SLEEP = 3600.0  # a begin time is looked at again at least this often (clock changes)
RETRY_START = 1.0  # seconds before a start that failed (no room to record it) is tried again


# -- the client side: any command that leaves work waiting ---------------------------------

def poke(store: Store, board: Board | None = None) -> None:
    """Tell the scheduler that something changed; start one if none is alive and work waits."""
    import socket

    board = board or Board(store)
    path = board.socket_path()
    if path is not None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
                sender.setblocking(False)
                sender.sendto(b"changed", path)
                return
        except BlockingIOError:
            return  # its queue is full: it has plenty to wake up for
        except OSError:
            pass  # ENOENT, ECONNREFUSED: no scheduler listens
    ensure(store, board)


def ensure(store: Store, board: Board | None = None) -> None:
    """Start a scheduler if work waits and none is alive."""
    board = board or Board(store)
    try:
        if board.waiting() and not board.scheduler_alive():
            start(store.root)
    except StorageError:
        pass  # the next command tries again; its own reading reports the damage


def start(root: str) -> None:
    """Start a scheduler, detached, in a lean interpreter (the next command tries again if
    it cannot be forked)."""
    detach.start_lean(_BOOTSTRAP, [root])


# -- the scheduler process ------------------------------------------------------------------

def main(argv: list[str]) -> None:
    """Entry point of the scheduler's lean interpreter: schedule while anything waits."""
    store = Store(argv[0])
    board = Board(store)
    lock = board.take_lock()
    if lock is not None:
        Scheduler(store, board, lock).run()


class Waiting:
    """What the scheduler keeps of a waiting job's header: its scheduling fields."""

    __slots__ = ("job_id", "header", "queue", "slots", "priority", "begin", "dependency",
                 "cursor", "deadline")

    def __init__(self, header: Header):
        from ..core.schedule import parse_dependency

        template = header.template
        self.job_id = header.job_id
        self.header = header
        # An array in a queue waits until its last task has started; before this
        # position in its indices every task has (they start in order, holds aside).
        self.cursor = 0
        self.queue = template.queue_name
        self.slots = template.min_slots or 1
        self.priority = template.priority or 0
        self.begin = epoch(template.start_time)
        self.deadline = epoch(template.deadline_time)
        self.dependency = parse_dependency(template.dependency) if template.dependency else None


class Scheduler:
    """The loop of the module doc."""

    def __init__(self, store: Store, board: Board, lock: int):
        from .tracker import JobTracker

        self.store = store
        self.board = board
        self.lock = lock
        self.tracker = JobTracker(store.root, scheduling=False)
        self.known: dict[int, Waiting] = {}  # job ID -> its scheduling fields
        self.watched: dict[int, int] = {}  # PID -> pidfd, of reapers and leftover groups
        self.wake_at: float | None = None  # time.time() of the next begin time or recheck
        self.holders: set[str] = set()  # IDs of the tasks that hold slots
        self.socket = None

    def run(self) -> None:
        while True:
            self._listen()
            while self.schedule():
                self._sleep()
            self._close_socket()
            os.close(self.lock)
            if not self.board.waiting():
                return
            lock = self.board.take_lock()  # work came in as we were leaving
            if lock is None:
                return  # and another scheduler has it
            self.lock = lock

    def _listen(self) -> None:
        import socket

        fd = self.board._dir(create=True)
        path = f"/proc/self/fd/{fd}/socket"
        try:
            os.unlink("socket", dir_fd=fd)  # a dead scheduler's: we hold the lock
        except FileNotFoundError:
            pass
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        umask = os.umask(0o177)
        try:
            self.socket.bind(path)
        finally:
            os.umask(umask)
        self.socket.setblocking(False)

    def _close_socket(self) -> None:
        try:
            os.unlink("socket", dir_fd=self.board._dir())
        except (OSError, TypeError):
            pass
        self.socket.close()
        for pidfd in self.watched.values():
            os.close(pidfd)
        self.watched = {}

    def _sleep(self) -> None:
        """Until a datagram, a watched process's end, or the next begin time."""
        poller = select.poll()
        poller.register(self.socket.fileno(), select.POLLIN)
        for pidfd in self.watched.values():
            poller.register(pidfd, select.POLLIN)
        timeout = None
        if self.wake_at is not None:
            timeout = int(max(0.0, min(self.wake_at - time.time(), LONGEST_SLEEP)) * 1000) + 1
        poller.poll(timeout)
        while True:
            try:
                self.socket.recv(64)
            except OSError:  # BlockingIOError: drained
                break

    # -- one pass ---------------------------------------------------------------------

    def schedule(self) -> bool:
        """One pass (module doc); True while some job still waits."""
        self.wake_at = None
        self._forget_ended()
        waiting = []
        for job_id in self.board.waiting():
            entry = self._waiting(job_id)
            if entry is not None:
                waiting.append(entry)
        taken = self._free_slots()
        queues = self.board.queues()
        ready: dict[str | None, list[Waiting]] = {}
        now = time.time()
        for entry in waiting:
            if entry.deadline is not None:
                if entry.deadline <= now:
                    self._fail(entry, "DEADLINE: passed before it started")
                    continue
                self._wake(entry.deadline)
            if self._held(entry):
                continue
            if entry.begin is not None and entry.begin > now:
                self._wake(entry.begin)
                continue
            if entry.dependency is not None and not self._dependency_met(entry):
                continue
            ready.setdefault(entry.queue, []).append(entry)
        for entry in ready.pop(None, []):
            self._start(entry, [])
        for queue, entries in ready.items():
            size = queues.get(queue, 0)
            free = [slot for slot in range(size) if (queue, slot) not in taken]
            units = []  # (order, entry, task index): one per job, one per task of an array
            for entry in entries:
                # at least one, so that one that does not fit stops those behind it
                for index in self._next_tasks(entry, max(1, len(free) // entry.slots)):
                    units.append(((-entry.priority, entry.job_id, index or 0), entry, index))
            for _, entry, index in sorted(units, key=lambda unit: unit[0]):
                if entry.slots > len(free):
                    break  # no backfill: those behind it wait too
                slots, free = free[:entry.slots], free[entry.slots:]
                self._start(entry, slots, queue, index)
        self._watch_dependencies(waiting)
        return bool(self.board.waiting())

    def _next_tasks(self, entry: Waiting, most: int) -> list:
        """The tasks of the job that may take slots now, in order, at most ``most``: a
        single job itself (None); an array's next tasks that have not started, are not
        held, were not given slots already, within its --max-parallel."""
        array = entry.header.array
        if array is None:
            return [None]
        prefix = f"{entry.job_id}."
        given = {holder for holder in self.holders if holder.startswith(prefix)}
        if array.max_parallel is not None:
            most = min(most, array.max_parallel - len(given))
        held = self._held_tasks(entry)
        found = []
        for index in array.indices()[entry.cursor:]:
            if len(found) >= most:
                break
            try:
                if f"{prefix}{index}" in given or index in held or \
                        self._recorded(entry.job_id, index):
                    continue
            except StorageError:  # unreadable for now: this pass gives it nothing
                self._wake(time.time() + RETRY_START)
                break
            found.append(index)
        return found

    def _waiting(self, job_id: int) -> Waiting | None:
        """The entry of a job that still waits; None (and its entry removed) if it waits no
        more (it started, was deleted, or its header is damaged: its readers say so).

        A file that cannot be read now (a full disk, EIO) removes nothing: the job is
        passed over, and looked at again a moment later.
        """
        entry = self.known.get(job_id)
        try:
            if entry is None:
                data = self.store.read(job_id, HEADER)
                try:
                    entry = Waiting(Header.from_dict(job_id, data,
                                                     self.store.path(job_id, HEADER)))
                except (StorageError, AttributeError, TrackerError):
                    entry = None  # deleted (no header) or damaged: it can never start
                else:
                    self.known[job_id] = entry
            if entry is not None and not self._started(entry):
                return entry
        except StorageError:
            self._wake(time.time() + RETRY_START)
            return None
        self.known.pop(job_id, None)
        self.board.remove_waiting(job_id)
        return None

    def _started(self, entry: Waiting) -> bool:
        """Whether the job waits no more: it (an array in a queue: its every task) has a
        record, or the array was cancelled."""
        job_id, array = entry.job_id, entry.header.array
        if not self.store.at_home(job_id):
            return True  # its directory left jobs/: it ran and was compacted, or was deleted
        if array is None:
            return self._recorded(job_id, None)
        if self.store.exists(job_id, CANCEL):
            return True
        if entry.queue is None:
            return self.store.reaper_alive(job_id) or self._recorded(job_id, array.begin)
        indices = array.indices()
        while entry.cursor < len(indices) and self._recorded(job_id, indices[entry.cursor]):
            entry.cursor += 1
        return entry.cursor >= len(indices)

    def _recorded(self, job_id: int, index: int | None) -> bool:
        """Whether the task has a record that says it started (or ended): not the
        "starting" record of a reaper that died before it created the process."""
        from .reaper import never_spawned

        record = self.store.read_task(job_id, index)
        return record is not None and (self.store.reaper_alive(job_id) or
                                       not never_spawned(self.store, job_id, index, record))

    def _held_tasks(self, entry: Waiting):
        from ..core.records import HELD, held_tasks

        try:
            return held_tasks(self.store.read(entry.job_id, HELD), entry.header.array)
        except (StorageError, TypeError, AttributeError):
            return entry.header.array.indices() if entry.header.array else (None,)

    def _held(self, entry: Waiting) -> bool:
        """Whether every task of the job that has not started is held."""
        held = self._held_tasks(entry)
        array = entry.header.array
        if array is None or not held:
            return bool(held)
        return all(index in held for index in array.indices()[entry.cursor:]
                   if not self.store.has_task(entry.job_id, index))

    def _dependency_met(self, entry: Waiting) -> bool:
        verdict, why = entry.dependency.evaluate(self._states_of)
        if verdict == "never":
            self._fail(entry, f"dependency never satisfied: {why}")
        return verdict == "met"

    def _states_of(self, job_id: str):
        try:
            return [info.state for info in self.tracker.job_infos([job_id])]
        except JobNotFound:
            return None
        except TrackerError:
            return [JobState.UNDETERMINED]  # damaged: it will never end Done

    def _fail(self, entry: Waiting, reason: str) -> None:
        """End a waiting job that can never start, under its lock, unless it started."""
        job_id = entry.job_id
        try:
            with self.store.job_lock(job_id):
                if entry.header.array is not None:
                    if not self.store.exists(job_id, CANCEL):
                        self.store.write(job_id, CANCEL, {"schema": SCHEMA_VERSION,
                                                          "time": timestamp(),
                                                          "reason": reason})
                elif not self.store.has_task(job_id, None):
                    record = new_record("Failed", reason, str(job_id))
                    record["finish_time"] = timestamp()
                    self.store.write_task(job_id, None, record)
        except (JobNotFound, StorageError):
            return  # the next pass tries again
        self.board.remove_waiting(job_id)
        self.known.pop(job_id, None)

    def _wake(self, moment: float) -> None:
        self.wake_at = moment if self.wake_at is None else min(self.wake_at, moment)

    # -- slots --------------------------------------------------------------------------

    def _free_slots(self) -> set[tuple[str, int]]:
        """Free the slots whose holder is done with them; the rest, taken (and their
        holders in ``self.holders``)."""
        taken = set()
        self.holders = set()
        verdicts: dict[str, bool] = {}
        for (queue, slot), holder in self.board.claims().items():
            if holder not in verdicts:
                verdicts[holder] = self._holds(holder)
            if verdicts[holder]:
                taken.add((queue, slot))
                self.holders.add(holder)
            else:
                self.board.free(queue, slot)
        return taken

    def _holds(self, task_id: str) -> bool:
        """Whether the task still needs its slots: it runs, or its reaper is starting it,
        or its group outlives its ended leader."""
        try:
            job_id, index = parse_job_id(task_id)
            info = self.tracker.job_info(task_id)
        except TrackerError:
            return False  # deleted, damaged, or nonsense written there: the slot is free
        if not info.state.ended:
            if info.state is JobState.QUEUED and not self.store.reaper_alive(job_id):
                return False  # taken for a start that never came: the job waits again
            self._watch(job_id, info.pid)
            return True
        if info.pid is not None and _group_lives(info.pid):
            self._wake(time.time() + LEFTOVER_RECHECK)
            return True
        return False

    def _watch(self, job_id: int, pid: int | None) -> None:
        """Wake up when the job's reaper exits (a killed reaper pokes nobody), or, if it is
        gone, when the task's process ``pid`` does (as readers found it: by its token, if
        the reaper died before it wrote the PID)."""
        if self.store.reaper_alive(job_id):
            self._watch_reaper(job_id)
            return
        if isinstance(pid, int) and pid not in self.watched:
            try:  # its reaper is gone: the task's own end frees the slot
                self.watched[pid] = os.pidfd_open(pid)
            except OSError:
                self._wake(time.time() + LEFTOVER_RECHECK)

    def _watch_reaper(self, job_id: int) -> None:
        """Wake up when the job's reaper (alive a moment ago) exits; soon, if it has."""
        try:
            reaper = self.store.reaper_pid(job_id)
        except StorageError:
            reaper = None
        if reaper is None:
            self._wake(time.time() + LEFTOVER_RECHECK)  # it has not said who it is yet
        elif reaper not in self.watched:
            pidfd = proc.pidfd_of(reaper, lambda: self.store.reaper_alive(job_id))
            if pidfd is not None:
                self.watched[reaper] = pidfd
            else:
                self._wake(time.time() + LEFTOVER_RECHECK)  # gone already: look again

    def _forget_ended(self) -> None:
        """Stop watching what has ended: before a pass, which then sees its end."""
        for pid, pidfd in list(self.watched.items()):
            if select.select([pidfd], [], [], 0)[0]:
                os.close(pidfd)
                del self.watched[pid]

    def _watch_dependencies(self, waiting: list[Waiting]) -> None:
        """Watch the reapers of the jobs that waiting jobs depend on."""
        for entry in waiting:
            if entry.dependency is None:
                continue
            for job_id in entry.dependency.job_ids():
                number = parse_job_id(job_id)[0]
                try:
                    if self.store.reaper_alive(number):
                        self._watch_reaper(number)
                except StorageError:
                    continue  # damaged: its readers say so; the dependency reads it failed

    # -- starting -----------------------------------------------------------------------

    def _start(self, entry: Waiting, slots: list[int], queue: str | None = None,
               index: int | None = None) -> None:
        """Start the job, or task ``index`` of an array in a queue (module doc): the slots,
        then its reaper lock and a reaper, or a word to the array's reaper that lives."""
        from .launch import launch
        from .tracker import tell_reaper

        job_id = entry.job_id
        task_id = task_id_string(job_id, index)
        taken = []
        try:
            for slot in slots:
                if not self.board.claim(queue, slot, task_id):
                    raise StorageError(f"slot {slot} of queue {queue} is taken")
                taken.append(slot)
            lock = self.store.open_reaper_lock(job_id, existing=True)
            if lock is None:
                # Its reaper lives: its end brings the next pass, which gives a task it
                # did not take (it was leaving) to the next reaper.
                self._watch_reaper(job_id)
                if index is None or not tell_reaper(
                        self.store.job_dir(job_id), f"grant {index} {' '.join(map(str, slots))}"):
                    raise StorageError("its reaper lives")  # started already, or not listening
                self.holders.add(task_id)
                return
            if not self.store.at_home(job_id):
                # It ran and its reaper compacted it since this pass looked (under the
                # reaper lock, no reaper is at work: what one did is done).
                os.close(lock)
                for slot in taken:
                    self.board.free(queue, slot)
                return
            try:
                launch(self.store, entry.header, lock, queue=queue, slots=slots, lean=True,
                       first=index)
            except StartError:
                # Its reaper wrote why, or found it held or cancelled, or found no room on
                # the disk to record it: the next pass (soon) sees which.
                self._wake(time.time() + RETRY_START)
            finally:
                os.close(lock)
            self.holders.add(task_id)
            self._watch_reaper(job_id)  # should it die before it says "ended"
        except (JobNotFound, StorageError):
            for slot in taken:
                self.board.free(queue, slot)
            self._wake(time.time() + RETRY_START)  # a full disk, say: try again


def _group_lives(leader: int) -> bool:
    """Whether process group ``leader`` still has a member."""
    try:
        os.killpg(leader, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
