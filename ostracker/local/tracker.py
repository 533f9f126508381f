"""The DRMAA2 JobTracker of the OS process backend: jobs run as processes on this machine.

Writers: ``add_job`` writes a submission's header and hands it to a reaper
(``launch``); the reaper is the one writer of results; control commands only
signal, except that cancelling a queued task writes its record under the job
lock.  Readers never write: a record that says Running while its reaper is
gone (its lock is free) is *derived* on read — from the process itself while
it lives, ``Undetermined`` once it is gone — and a record from an earlier boot
is ``Undetermined`` without looking at any PID.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

from ..core.base import ALLOWED, Submission, Target, TrackerBase
from ..core.errors import (InvalidArgument, InvalidState, JobNotFound, StartError, StorageError,
                           TrackerError)
from ..core.models import (ENDED_NAMES, ENDED_STATES, ArraySpec, Ended, JobInfo, JobState,
                           JobTemplate, complete_template, epoch, task_id_string, timestamp)
from ..core.records import (CANCEL, CONTROL, HEADER, HELD, SCHEMA_VERSION, STARTING, SUMMARY,
                            TOKEN_VARIABLE, Header, cancelled_record, check_cancel_marker,
                            check_task_record, encode_infos, fill_template, held_tasks,
                            info_from_record, infos_from_summary, new_record, summary_body)
from . import proc
from .board import Board

_REAPER_LOST = "reaper lost"
SUSPEND_GRACE = 1.0  # seconds a job's processes may take to stop on SIGTSTP, then SIGSTOP


class LocalSubmission(Submission):
    """One submission as read from its directory: its tasks' records, repaired on read."""

    def __init__(self, tracker: "JobTracker", header: Header):
        super().__init__(tracker, header)
        self.boot_id = tracker.boot_id
        self._reaper_alive: bool | None = None
        self._cancel: dict | None | bool = False  # False: not read yet
        self._cancel_error: StorageError | None = None
        self._held = None

    def held(self):
        """The indices of the tasks held (``records.held_tasks``), read once."""
        if self._held is None:
            marker = self.store.read(self.job_id, HELD)
            try:
                self._held = held_tasks(marker, self.array)
            except (TypeError, AttributeError):
                raise StorageError(f"damaged record {self.store.path(self.job_id, HELD)}") \
                    from None
        return self._held

    def reaper_alive(self) -> bool:
        if self._reaper_alive is None:
            self._reaper_alive = self.store.reaper_alive(self.job_id)
        return self._reaper_alive

    def cancel_marker(self) -> dict | None:
        """The array's cancel marker (None: none), read once; StorageError if damaged."""
        if self._cancel_error is not None:
            raise self._cancel_error  # read once: a million queued tasks ask
        if self._cancel is False:
            self._cancel = self._read_cancel()
        return self._cancel

    def _read_cancel(self) -> dict | None:
        try:
            return check_cancel_marker(self.store.read(self.job_id, CANCEL),
                                       self.store.path(self.job_id, CANCEL))
        except StorageError as error:
            self._cancel_error = error
            raise

    # -- state derivation ------------------------------------------------------

    def record(self, index: int | None) -> dict | None:
        """The task's record, checked (every key present, of its type); None if it has none."""
        record = self.store.read_task(self.job_id, index)
        if record is not None:
            record = check_task_record(record, self.store.task_path(self.job_id, index),
                                       task_id_string(self.job_id, index))
        return record

    def repaired(self, index: int | None, record: dict | None) -> dict:
        """The record as it stands: repaired on read when reaper or machine is gone."""
        if record is not None and record["state"] in ENDED_NAMES:
            return record
        if record is None:
            marker = self.cancel_marker()
            if marker is not None:
                return cancelled_record(marker)
            if index in self.held():
                return new_record("QueuedHeld", "held")
            if self.template.waits and (self.template.queue_name is not None or
                                        not self.reaper_alive()):
                return self.tracker.waiting_record(self)  # the scheduler starts it
            if self.header.boot_id != self.boot_id:
                return new_record("Undetermined", "machine rebooted before the job started")
        elif record.get("boot_id") != self.boot_id:
            return dict(record, state="Undetermined", sub_state="machine rebooted while it ran")
        if self.reaper_alive():
            if record is None:
                return new_record("Queued")
            if _is_starting(record):
                return _started(record, "its reaper is starting it", record.get("reaper_pid"))
            if record["state"] == "Running" and proc.stopped_in_vfork(record["pid"]):
                return dict(record, state="Suspended",
                            sub_state="stopped: its leader waits on a stopped child")
            return record
        # The reaper writes its last record before its lock falls free: read again.
        record = self.record(index)
        if record is None:
            self._cancel_error = None
            marker = self._read_cancel()
            if marker is not None:
                return cancelled_record(marker)
            return new_record("Undetermined", f"{_REAPER_LOST} before the job started")
        if record["state"] in ENDED_NAMES:
            return record
        if _is_starting(record):
            if self.template.waits:
                from .reaper import never_spawned

                if never_spawned(self.store, self.job_id, index, record):
                    return self.tracker.waiting_record(self)  # the scheduler starts it again
            return _started(record, f"{_REAPER_LOST} while it started the job")
        alive = proc.identify(record["pid"], record["start_ticks"]) \
            if record["pid"] is not None and record["start_ticks"] is not None else None
        if alive is None or alive.state in "ZX":
            return dict(record, state="Undetermined",
                        sub_state=f"{_REAPER_LOST}; the process ended, its exit status is unknown")
        state = "Suspended" if alive.state in "Tt" else "Running"
        return dict(record, state=state,
                    sub_state=f"{_REAPER_LOST}; state read from the live process")

    def records(self, indices: Iterable[int | None] | None = None, errors: list | None = None):
        """(index, derived record) for the given tasks, or all of them.

        A task whose record (or, not started, its array's cancel marker) cannot be
        read raises its StorageError; with ``errors``, it is reported there instead
        (once per damaged file), left out, and the submission marked ``damaged``:
        one damaged task does not hide the others.
        """
        for index in (self.indices() if indices is None else indices):
            try:
                record = self.repaired(index, self.record(index))
            except StorageError as error:
                if errors is None:
                    raise
                self._damaged(error, errors)
                continue
            yield index, record
        if self.is_array and errors is not None:  # a line of the log that names no task
            damage = self.store.task_log(self.job_id).damage()
            if damage is not None:
                self._damaged(damage, errors)

    def _damaged(self, error: StorageError, errors: list) -> None:
        if self.damaged is None or str(error) not in map(str, errors):
            errors.append(error)
        self.damaged = self.damaged or error

    def started_indices(self) -> list[int]:
        """Indices of the array's tasks that have a record (started or cancelled)."""
        return self.store.task_indices(self.job_id)

    def _summary(self) -> tuple[str, bool] | None:
        """An ended array's JobInfos as its reaper wrote them (a JSON list's inside,
        templates null) and whether the summary's check vouches for them (else they
        must be parsed first: ``records.summary_body``); None while the array runs, or
        if the summary is missing or damaged: the task records, which it only sums up,
        are then read instead.
        """
        if not self.is_array or self.reaper_alive():
            return None
        try:
            return summary_body(self.store.read_bytes(self.job_id, SUMMARY), self.job_id)
        except StorageError:
            return None

    def infos(self, indices=None, errors: list | None = None) -> list[JobInfo]:
        """The tasks' JobInfos (all of them, or ``indices``); ``errors`` as in ``records``."""
        summary = self._summary() if indices is None else None
        if summary is not None:
            infos = infos_from_summary(summary[0], self.template, self.job_id,
                                       self.array.indices())
            if infos is not None:
                return infos
        return self._record_infos(indices, errors)

    def _record_infos(self, indices, errors: list | None) -> list[JobInfo]:
        return [info_from_record(self.header, index, record)
                for index, record in self.records(indices, errors)]

    def encoded_infos(self, indices=None, errors: list | None = None) -> str:
        """The JobInfos of the tasks as JSON objects, comma-separated (a list's inside).

        An ended array's summary is copied as it is, neither parsed nor encoded,
        when its check says it is whole and its JobInfos have every key; one
        without a check (the first release's) or from before a key existed is
        parsed and encoded again, the missing keys as an old record reads them.
        """
        summary = self._summary() if indices is None else None
        if summary is not None:
            text, intact = summary
            if intact and '"attempt": ' in text[:4096]:  # a JobInfo has the latest keys
                return fill_template(text, self.template)
            infos = infos_from_summary(text, self.template, self.job_id, self.array.indices())
            return encode_infos(infos if infos is not None else
                                self._record_infos(indices, errors))
        return encode_infos(self.infos(indices, errors))


class JobTracker(TrackerBase):
    """DRMAA2 JobTracker for OS processes on this machine.

    ``add_job`` returns once the job runs; ``add_array_job`` once its first task does.
    """

    BACKEND = "local"
    DESCRIPTION = "the OS process backend (--backend local)"
    POLLS_IN_FULL = True  # a read is a read of the records, whatever it is for
    SUBMISSION = LocalSubmission
    STATES = (JobState.QUEUED, JobState.QUEUED_HELD, JobState.RUNNING, JobState.SUSPENDED,
              JobState.REQUEUED, JobState.DONE, JobState.FAILED, JobState.UNDETERMINED)
    ALLOWED = {action: ALLOWED[action] for action in ("suspend", "resume", "signal")} | {
        "terminate": frozenset({JobState.RUNNING, JobState.SUSPENDED, JobState.QUEUED,
                                JobState.QUEUED_HELD, JobState.REQUEUED}),
        "hold": frozenset({JobState.QUEUED}),
        "release": frozenset({JobState.QUEUED_HELD})}

    def __init__(self, state_dir: str | None = None, scheduling: bool = True):
        """``scheduling``: if work waits, tell the scheduler (start one if none is alive:
        one killed, say), as every command does; the scheduler's own tracker does not."""
        super().__init__(state_dir)
        self.boot_id = proc.boot_id()
        self._killed: dict[str, tuple] = {}  # task ID -> its tree, as terminate killed it
        self.board = Board(self.store)
        self._ahead: dict[int, int] | None = None  # waiting job -> jobs ahead in its queue
        # (job ID, pipe) of the last job this tracker launched: its reaper says there how
        # it ended (``ended_as``); one pipe at most is kept open.
        self._told: tuple[str, object] | None = None
        self._explaining = False  # reading what a waiting job waits for (one level deep)
        if scheduling and self.board.waiting():
            # Tell it (start one if none lives): whatever a command killed before its word
            # changed, the scheduler looks at it now.
            from .scheduler import poke

            poke(self.store, self.board)

    # -- scheduling ------------------------------------------------------------------

    def _submit_waiting(self, template: JobTemplate, array: ArraySpec | None) -> str:
        """Record a job that waits (README, "Scheduling") and leave it to the scheduler.

        In this order, so that a kill at any point loses nothing: the header
        (with the submitter's environment, which the scheduler starts the job
        in) and the hold, under the reaper lock; then the board's entry; then
        the scheduler is told.  Before the entry exists the job reads as an
        interrupted submission; after, the scheduler owns it.
        """
        self._check_waits(template, array)
        job_id = self.store.allocate_id()
        try:
            umask = os.umask(0o77)
            os.umask(umask)
            header = Header.new(job_id, self.BACKEND, template, array, boot_id=self.boot_id,
                                environment=dict(os.environ), umask=umask)
            lock_fd = self.store.open_reaper_lock(job_id)
            try:
                if array is not None:
                    self.store.create_task_log(job_id)
                if template.submit_as_hold:
                    self.store.write(job_id, HELD, {"schema": SCHEMA_VERSION, "tasks": None})
                self.store.write(job_id, HEADER, header.to_dict())
                self.board.add_waiting(job_id)
            finally:
                os.close(lock_fd)
        except BaseException:
            try:
                self.board.remove_waiting(job_id)
                self.store.remove_job_dir(job_id)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        from .scheduler import poke

        poke(self.store, self.board)
        return str(job_id)

    def _check_waits(self, template: JobTemplate, array: ArraySpec | None) -> None:
        """Refuse at submit what could never start: an unknown queue, more slots than it
        has, a dependency on a job that does not exist."""
        if template.queue_name is not None:
            size = self.board.queue_size(template.queue_name)
            name = template.queue_name
            if size is None:
                raise TrackerError(f"no such queue: {name} (create it: ostracker queue "
                                   f"{name} --slots N)")
            wanted = template.min_slots or 1
            if 0 < size < wanted:
                raise TrackerError(f"queue {name} has {size} slot{'s' * (size > 1)}, the job "
                                   f"needs {wanted} (grow it: ostracker queue {name} "
                                   f"--slots {wanted})")
        if template.dependency is not None:
            from ..core.schedule import parse_dependency

            # JobNotFound if there is no such job, array or task
            list(self._targets_of(parse_dependency(template.dependency).job_ids(), None))

    def waiting_record(self, submission: "LocalSubmission") -> dict:
        """The record of a task that waits for the scheduler: what it waits for.

        Only the state of the jobs it depends on is read, not what they wait for:
        a chain of a thousand dependencies costs one level, not a thousand.
        """
        if not self.board.is_waiting(submission.job_id):
            return new_record("Undetermined", "its submit was interrupted before it was "
                                              "queued")
        if self._explaining:
            return new_record("Queued", "waiting")
        self._explaining = True
        try:
            return new_record("Queued", self._waits_for(submission.header))
        finally:
            self._explaining = False

    def _waits_for(self, header: Header) -> str:
        """What a waiting job waits for, first that which it must see first."""
        template = header.template
        if template.start_time is not None:
            import time

            if epoch(template.start_time) > time.time():
                return f"waiting until {template.start_time}"
        if template.dependency is not None:
            from ..core.schedule import parse_dependency

            verdict, why = parse_dependency(template.dependency).evaluate(self._states_of)
            if verdict == "never":
                return f"dependency never satisfied: {why}"
            if verdict == "wait":
                return f"waiting for {why}"
        queue = template.queue_name
        if queue is None:
            return "waiting for the scheduler"
        size = self.board.queue_size(queue)
        if size is None:
            return f"waiting for queue {queue}, which does not exist"
        if size == 0:
            return f"waiting for queue {queue}, which is paused (0 slots)"
        wanted = template.min_slots or 1
        ahead = self._jobs_ahead().get(header.job_id, 0)
        return f"waiting for {wanted} slot{'s' * (wanted > 1)} of queue {queue} " \
               f"({ahead} job{'s' * (ahead != 1)} ahead)"

    def _states_of(self, job_id: str):
        try:
            return [info.state for info in self.job_infos([job_id])]
        except JobNotFound:
            return None
        except TrackerError:
            return [JobState.UNDETERMINED]

    def _jobs_ahead(self) -> dict[int, int]:
        """Waiting job -> how many waiting jobs of its queue start before it (read once)."""
        if self._ahead is None:
            order: dict[str, list] = {}
            for job_id in self.board.waiting():
                try:
                    template = self._header(job_id).template
                except TrackerError:
                    continue
                if template.queue_name is not None:
                    order.setdefault(template.queue_name, []).append(
                        (-(template.priority or 0), job_id))
            self._ahead = {job_id: place for jobs in order.values()
                           for place, (_, job_id) in enumerate(sorted(jobs))}
        return self._ahead

    # -- queues -------------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        return sorted(self.board.queues())

    def queues(self) -> list[dict]:
        """Every queue: name, slots, slots in use, and its jobs running, queued and held."""
        sizes = self.board.queues()
        counts = {name: {"in_use": 0, "running": 0, "queued": 0, "held": 0} for name in sizes}
        for job_id in self.board.waiting():
            try:
                infos = self.job_infos([str(job_id)])
            except TrackerError:
                continue
            for info in infos:  # each task of an array; none that has started
                if info.queue_name in counts and info.state is JobState.QUEUED:
                    counts[info.queue_name]["queued"] += 1
                elif info.queue_name in counts and info.state is JobState.QUEUED_HELD:
                    counts[info.queue_name]["held"] += 1
        holders: dict[str, int] = {}  # a slot whose holder has ended is free (its file,
        for (queue, _), holder in self.board.claims().items():  # the scheduler's to remove)
            holders[holder] = holders.get(holder, 0) + 1
        for holder, slots in holders.items():
            try:
                info = self.job_info(holder)
            except TrackerError:
                continue
            if info.queue_name in counts and not info.state.ended:
                counts[info.queue_name]["running"] += 1
                counts[info.queue_name]["in_use"] += slots
        return [{"name": name, "slots": sizes[name], **counts[name]} for name in sorted(sizes)]

    def queue(self, name: str) -> dict:
        for queue in self.queues():
            if queue["name"] == name:
                return queue
        raise JobNotFound(f"no such queue: {name} (create it: ostracker queue {name} "
                          "--slots N)")

    def set_queue(self, name: str, slots: int) -> None:
        """Create or resize a queue; a larger one starts waiting jobs at once."""
        from .scheduler import poke

        self.board.set_queue(name, slots)
        poke(self.store, self.board)

    def delete_queue(self, name: str) -> None:
        """Remove a queue that no job waits in or runs in."""
        queue = self.queue(name)
        if queue["in_use"] or queue["queued"] or queue["held"] or queue["running"]:
            raise InvalidState(f"queue {name} is not empty: {queue['running']} running, "
                               f"{queue['queued']} queued, {queue['held']} held")
        self.board.delete_queue(name)

    # -- submitting ----------------------------------------------------------------

    def _submit(self, template: JobTemplate, array: ArraySpec | None) -> str:
        template = complete_template(template, array is not None)
        if template.min_slots is not None and template.queue_name is None:
            raise InvalidArgument("min_slots counts slots of a queue: give queue_name too "
                                  "(submit --slots takes -q)")
        _check_limits(template)
        if template.waits:
            from .standby import release

            release()  # the scheduler starts it, not this process
            return self._submit_waiting(template, array)
        from .launch import launch

        self._forget_told()
        job_id = self.store.allocate_id()
        try:
            header = Header.new(job_id, self.BACKEND, template, array, boot_id=self.boot_id)
            lock_fd = self.store.open_reaper_lock(job_id)
            try:
                if array is not None:
                    self.store.create_task_log(job_id)
                # fsync'd by the reaper once the job runs: submit's latency holds no disk flush.
                self.store.write(job_id, HEADER, header.to_dict(), durable=False)
            except BaseException:
                os.close(lock_fd)
                raise
        except BaseException:
            # No lock or no header (a full disk, no inode left): nothing of the job can
            # run or be read, so nothing of it is left behind.
            try:
                self.store.remove_job_dir(job_id)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        try:
            self._told = (str(job_id), launch(self.store, header, lock_fd, tell_end=True)[1])
        except StartError as error:
            first = array.begin if array else None
            if not self.store.has_task(job_id, first):
                # Nothing ran (no process starts before its task's record exists)
                # and nothing says why: leave no trace of the job.
                self.store.remove_job_dir(job_id)
            elif self._runs(task_id_string(job_id, first)):
                return str(job_id)  # its reaper died once it had started it: tracked all the same
            raise StartError(f"job {job_id} could not start: {error}") from None
        finally:
            os.close(lock_fd)
        return str(job_id)

    def ended_as(self, job_id: str) -> Ended | None:
        """What the reaper of the job launched last says as the job ends (``launch``)."""
        if self._told is None or self._told[0] != job_id:
            return None
        from .launch import hear_end

        pipe, self._told = self._told[1], None  # read once, even if interrupted
        return hear_end(pipe)

    def _forget_told(self) -> None:
        if self._told is not None:
            self._told[1].close()
            self._told = None

    def _runs(self, task_id: str) -> bool:
        """Whether the task's process runs (found by its record, or the token in it).

        Asked twice, 0.2 s apart: a process forked behind a gate whose reaper died
        before opening it is alive for an instant, then exits without running.
        """
        import time

        for pause in (0.0, 0.2):
            time.sleep(pause)
            try:
                if self.job_info(task_id).state not in (JobState.RUNNING, JobState.SUSPENDED):
                    return False
            except TrackerError:
                return False
        return True

    # -- reading ---------------------------------------------------------------------

    def _read(self, targets, errors=None, final=True):
        return list(self._each(targets, errors, "infos"))

    def _encoded(self, targets, errors):
        """As the base's, but an ended array is copied from the summary its reaper
        wrote (or a compacted job from its history line), neither parsed nor encoded
        again: listing thousands of ended tasks costs little more than reading one file.
        """
        return self._each(targets, errors, "encoded_infos")

    def _each(self, targets, errors, how: str):
        """(target, what the submission's method ``how`` gives) for each target.

        A job compacted by its reaper since it was listed or while it was read (its
        directory left ``jobs/`` under the reader: ``Store.at_home``) is read from its
        history line, which was written before the directory moved.
        """
        for target in targets:
            submission, index = target
            indices = None if index is None else [index]
            try:
                try:
                    if self._moved(submission):  # since it was listed: not read in vain
                        raise JobNotFound(f"no such job: {submission.job_id}")
                    result = getattr(submission, how)(indices, errors)
                    if self._moved(submission):  # while it was read
                        raise JobNotFound(f"no such job: {submission.job_id}")
                except JobNotFound:
                    if submission.ended:
                        raise
                    # Its directory (which this Store may still hold) is not read again.
                    submission = self._ended_submission(submission.job_id)
                    target = submission, index
                    result = getattr(submission, how)(indices, errors)
                yield target, result
            except JobNotFound:
                if errors is None:
                    raise
                # deleted while it was read: as if it had been before
            except StorageError as error:
                if errors is None:
                    raise
                errors.append(error)

    def _moved(self, submission: Submission) -> bool:
        """Whether a submission read from ``jobs/N`` has left it (compacted, or deleted)."""
        return not submission.ended and not self.store.at_home(submission.job_id)

    def _may_have_reached(self, target: Target, states: frozenset) -> bool:
        """While a whole job's reaper lives, some task of it has not ended: one lock probe."""
        submission, index = target
        return not (states <= ENDED_STATES and index is None and submission.reaper_alive())

    def _sleep_until_changed(self, targets, states, seconds):
        """Waiting for jobs to end: sleep in the kernel (``poll`` on pidfds) until one of
        them may have: a whole job's reaper exits once every task of it has ended and
        its last record is written (as nq's waiters sleep on a lock); a task that runs
        ends with its process.  False (the loop polls) while one of them has neither:
        a task waiting to start, a job waiting for the scheduler."""
        if not states <= ENDED_STATES:
            return False
        import select

        pidfds = []
        try:
            for submission, index in targets:
                pidfd = self._end_of(submission, index)
                if pidfd is None:
                    return False
                pidfds.append(pidfd)
            poller = select.poll()
            for pidfd in pidfds:
                poller.register(pidfd, select.POLLIN)
            poller.poll(None if seconds is None else max(0, int(seconds * 1000) + 1))
        finally:
            for pidfd in pidfds:
                os.close(pidfd)
        return True

    def _end_of(self, submission: "LocalSubmission", index: int | None) -> int | None:
        """A pidfd that becomes readable when the target may have ended, or None."""
        job_id = submission.job_id
        if index is None or not submission.is_array:
            try:
                reaper = self.store.reaper_pid(job_id)
            except StorageError:
                return None
            if reaper is None:  # a reaper of an earlier version: its first task's record
                first = submission.array.begin if submission.is_array else None
                try:
                    reaper = (submission.record(first) or {}).get("reaper_pid")
                except StorageError:
                    return None
            return proc.pidfd_of(reaper, lambda: self.store.reaper_alive(job_id))
        try:
            record = submission.record(index)
        except StorageError:
            return None
        if record is None or record["state"] not in ("Running", "Suspended"):
            return None
        return proc.pidfd_of(record["pid"], lambda: proc.identify(
            record["pid"], record.get("start_ticks") or -1) is not None)

    # -- control -------------------------------------------------------------------

    def _control_candidates(self, submission, index):
        """Of a whole array, the tasks that started, and the first that has not (if any):
        it stands for the queued rest, which one marker cancels.  Read so, a control
        of an array of a million tasks costs what its started tasks cost.
        """
        if index is not None or not submission.is_array or submission.ended:
            return super()._control_candidates(submission, index)
        started = submission.started_indices()
        infos = submission.infos(started)
        seen = set(started)
        queued = next((i for i in submission.array.indices() if i not in seen), None)
        if queued is not None:
            infos += submission.infos([queued])
        return infos

    def _act(self, submission, index, infos, action, signum=None, grace=None):
        """Signal each task's whole tree; cancel the queued (and requeued) ones of a
        terminate; hold or release queued ones."""
        if action in ("hold", "release"):
            return self._hold(submission, index, infos, action == "hold")
        acted = []
        queued = [info.task_id for info in infos
                  if info.state in (JobState.QUEUED, JobState.QUEUED_HELD, JobState.REQUEUED)]
        if queued and index is None and submission.is_array:
            self._cancel_queued(submission)  # every task not started, in one marker
            acted += queued
            queued = []
        started = [info.task_id for info in infos
                   if info.state not in (JobState.QUEUED, JobState.QUEUED_HELD, JobState.REQUEUED)]
        for task_index in queued:
            record = self._cancel_task(submission, task_index)
            if record is None:
                acted.append(task_index)
            else:
                started.append(task_index)  # it started meanwhile: signal it instead
        refusals = []
        for task_index, record in submission.records(started):
            try:
                if self._control_task(submission, task_index, record, action, signum, grace):
                    acted.append(task_index)
            except InvalidState as refusal:
                refusals.append(refusal)
        if refusals and not acted:
            raise refusals[0]
        if acted and len(started) < len(infos):  # queued ones were cancelled
            self._changed(submission)
        return acted

    def _hold(self, submission: "LocalSubmission", index, infos, hold: bool) -> list:
        """Hold (or release) the tasks ``infos`` that have not started, under the job lock,
        which a reaper takes to start a task: each is started or held, never both.

        ``held.json`` lists the held tasks; ``"tasks": null`` holds every task
        that has not started (a single job, a whole array).
        """
        job_id = submission.job_id
        array = submission.array
        with self.store.job_lock(job_id):
            targets = [info.task_id for info in infos
                       if not self.store.has_task(job_id, info.task_id)]
            if not targets:
                return []
            marker = self.store.read(job_id, HELD)
            held = set(held_tasks(marker, array))
            if hold:
                tasks = None if index is None else sorted(held | set(targets))
            elif index is None:
                tasks = []
            else:
                tasks = sorted(held - set(targets))
            if tasks == []:
                self.store.unlink(job_id, HELD)
            else:
                self.store.write(job_id, HELD, {"schema": SCHEMA_VERSION, "tasks": tasks})
        if not hold:
            self._changed(submission)
        return targets

    def _changed(self, submission: "LocalSubmission") -> None:
        """Tell whoever starts the job's tasks to look again: its reaper, the scheduler."""
        if submission.reaper_alive():
            tell_reaper(self.store.job_dir(submission.job_id), "changed")
        if submission.template.waits:
            from .scheduler import poke

            poke(self.store, self.board)

    def _control_task(self, submission: LocalSubmission, index, record, action,
                      signum: int | None = None, grace: float | None = None) -> bool:
        """Signal one started task's whole tree; False if it had ended meanwhile.

        Its record names its process by PID and start time: a PID now given to
        another process is never signalled.
        """
        task_id = task_id_string(submission.job_id, index)
        if record["pid"] is None and record["state"] not in ENDED_NAMES:
            record = _await_pid(submission, index)  # its reaper is starting it right now
        if record["state"] in ENDED_NAMES:
            if action == "terminate":
                return False
            raise InvalidState(f"job {task_id} is {record['state']}: cannot {action} it")
        if record["pid"] is None:
            raise InvalidState(f"job {task_id} is still starting: cannot {action} it yet")
        leader = record["pid"]
        reaper = record.get("reaper_pid") if submission.reaper_alive() else None
        if proc.identify(leader, record.get("start_ticks") or -1) is None:
            if reaper is not None:
                return True  # it ended, and its reaper is about to say so: await that
            raise InvalidState(f"job {task_id}: {proc.GONE}: cannot {action} it")
        if proc.owner(leader) != os.getuid():
            raise InvalidState(f"job {task_id}: its process belongs to another user: "
                               f"cannot {action} it")
        tree = (leader, task_id, reaper)
        if action == "suspend":
            self._stop(task_id, tree)
        elif action == "resume":
            proc.signal_members(proc.job_tree(*tree), signal.SIGCONT, leader)
        elif action == "signal":
            proc.signal_members(proc.job_tree(*tree), signum, leader)
        else:
            if reaper is not None:
                tell_reaper(self.store.job_dir(submission.job_id),
                            f"terminated {'-' if index is None else index}")
            if grace:
                _end_gracefully(tree, grace)
            proc.signal_members(proc.job_tree(*tree), signal.SIGKILL, leader)
            self._killed[task_id] = tree
            if reaper is None:
                self._record_terminated(submission, index, record)
        return True

    def _stop(self, task_id: str, tree: tuple) -> None:
        """SIGTSTP to the task's tree; SIGSTOP to what has not stopped after a grace.

        A process that ignores or handles SIGTSTP gets SIGSTOP, as Torque's
        ``qsig -s suspend`` does; so does a job whose reaper died, since Linux
        discards SIGTSTP sent to an orphaned process group.  Raises if a process
        still runs after both.
        """
        leader = tree[0]
        proc.signal_members(proc.job_tree(*tree), signal.SIGTSTP, leader)
        running = _await_stopped(tree, SUSPEND_GRACE)
        if running:
            proc.signal_members(running, signal.SIGSTOP)
            running = _await_stopped(tree, SUSPEND_GRACE)
        if running:
            raise InvalidState(f"job {task_id}: process {running[0].pid} did not stop "
                               "on SIGTSTP nor SIGSTOP")

    def _record_terminated(self, submission: LocalSubmission, index, record: dict) -> None:
        """The end of a task whose reaper is gone, which no one else will write."""
        with self.store.job_lock(submission.job_id):
            ended = dict(record, state="Failed", sub_state="terminated",
                         terminating_signal="SIGKILL", exit_status=None, finish_time=timestamp())
            self.store.write_task(submission.job_id, index, ended)

    def _cancel_task(self, submission: LocalSubmission, index: int) -> dict | None:
        """Cancel a queued (or requeued) task for good; if the reaper started it meanwhile,
        its record.

        Under the job lock, which the reaper also holds from its check to the
        task's first record (and to the record of its next attempt): the task is
        either cancelled or started, never both.
        """
        with self.store.job_lock(submission.job_id):
            record = submission.record(index)
            if record is None or record["state"] == "Requeued":
                reason = "cancelled before it started" if record is None else \
                    f"terminated while requeued ({record['sub_state']})"
                ended = new_record("Failed", reason, task_id_string(submission.job_id, index))
                if record is not None:
                    ended = dict(record, state="Failed", sub_state=reason)
                ended["finish_time"] = timestamp()
                self.store.write_task(submission.job_id, index, ended)
                return None
        return record

    def _cancel_queued(self, submission: LocalSubmission) -> None:
        """Cancel every task of an array that has not started (under the job lock)."""
        with self.store.job_lock(submission.job_id):
            if (submission.reaper_alive() or submission.template.waits) and \
                    submission.cancel_marker() is None:
                self.store.write(submission.job_id, CANCEL, {
                    "schema": SCHEMA_VERSION, "time": timestamp(),
                    "reason": "cancelled before it started"})

    def _late(self, infos, action):
        """As the base's; a terminated job also until every process of its tree is gone.

        The leader's record says Failed as soon as it dies; the rest of its
        tree may take a moment longer.
        """
        late = super()._late(infos, action)
        if action == "terminate":
            late += [info for info in infos if info not in late and info.id in self._killed
                     and proc.job_tree(*self._killed[info.id])]
        return late

    def _hint(self, action):
        return " (does it ignore SIGTSTP?)" if action == "suspend" else ""


def _check_limits(template: JobTemplate) -> None:
    """Refuse a resource limit above this user's hard limit: the job could not have it."""
    if not template.resource_limits:
        return
    import resource

    from ..core.limits import RESOURCE_LIMITS

    for key, value in template.resource_limits.items():
        which = RESOURCE_LIMITS[key][0]
        if which is None:
            continue
        hard = resource.getrlimit(getattr(resource, which))[1]
        if hard != resource.RLIM_INFINITY and value > hard:
            raise TrackerError(f"--limit {key}={value} is above your hard limit ({hard}): "
                               "the job cannot have it")


def _is_starting(record: dict) -> bool:
    return record["state"] == "Queued" and record.get("sub_state") == STARTING


def _started(record: dict, otherwise: str, reaper: int | None = None) -> dict:
    """A "starting" record as it stands: its process, found by its token, if it runs.

    The reaper writes "starting" before it starts the process and "Running"
    (with the PID) once it has time to (README, "Design"); until then, or when
    that second write waits for disk space, or the reaper died in between, the
    process can only be known by the token in its environment: among the
    children of its live ``reaper``, else anywhere.
    """
    token = record.get("token")
    found = proc.find_by_environment(f"{TOKEN_VARIABLE}={token}", reaper) \
        if isinstance(token, str) else None
    if found is None:
        if otherwise.startswith(_REAPER_LOST):
            return dict(record, state="Undetermined", sub_state=otherwise)
        return record
    return dict(record, state="Suspended" if found.state in "Tt" else "Running", pid=found.pid,
                start_ticks=found.start_ticks,
                sub_state=f"{otherwise}; state read from the live process")


def _await_pid(submission: LocalSubmission, index: int | None) -> dict:
    """The task's record once it names a process (or has ended), waiting up to 2 s."""
    import time

    deadline = time.monotonic() + 2.0
    while True:
        fresh = LocalSubmission(submission.tracker, submission.header)
        record = fresh.repaired(index, fresh.record(index))
        if record["pid"] is not None or record["state"] in ENDED_NAMES or \
                time.monotonic() >= deadline:
            return record
        time.sleep(0.005)


def _end_gracefully(tree: tuple, grace: float) -> None:
    """SIGTERM to the task's tree; return once it is gone, or after ``grace`` seconds."""
    import time

    proc.signal_members(proc.job_tree(*tree), signal.SIGTERM, tree[0])
    deadline = time.monotonic() + grace
    delay = 0.005
    while proc.job_tree(*tree) and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def _await_stopped(tree: tuple, grace: float) -> list:
    """The processes of the tree that still run after ``grace`` seconds (polled)."""
    import time

    deadline = time.monotonic() + grace
    delay = 0.002
    while True:
        # A shell waiting (state D) for the child it vforked, which stopped before it
        # exec'd, cannot stop, nor run: stopped all the same (see LocalSubmission.repaired).
        running = [member for member in proc.job_tree(*tree) if member.state not in "Tt" and
                   not (member.state == "D" and proc.stopped_in_vfork(member.pid))]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def tell_reaper(job_dir: str, message: str) -> bool:
    """One command to a job's reaper through its control socket; False if nobody heard it."""
    import socket

    try:
        directory = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
            sender.setblocking(False)
            sender.sendto(message.encode(), f"/proc/self/fd/{directory}/{CONTROL}")
        return True
    except OSError:
        return False  # ECONNREFUSED, ENOENT: the reaper is gone; EAGAIN: it is flooded
    finally:
        os.close(directory)
