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
from ..core.errors import InvalidState, StartError, StorageError
from ..core.models import (ENDED_NAMES, ENDED_STATES, ArraySpec, JobInfo, JobState,
                           JobTemplate, complete_template, task_id_string, timestamp)
from ..core.records import (CANCEL, HEADER, SCHEMA_VERSION, SUMMARY, Header, cancelled_record,
                            check_task_record, encode_infos, fill_template, info_from_record,
                            infos_from_summary, new_record, summary_body, task_record_name)
from . import proc

_REAPER_LOST = "reaper lost"
_SIGNALS = {"suspend": signal.SIGTSTP, "resume": signal.SIGCONT, "terminate": signal.SIGKILL}


class LocalSubmission(Submission):
    """One submission as read from its directory: its tasks' records, repaired on read."""

    def __init__(self, tracker: "JobTracker", header: Header):
        super().__init__(tracker, header)
        self.boot_id = tracker.boot_id
        self._reaper_alive: bool | None = None
        self._cancel: dict | None | bool = False  # False: not read yet

    def reaper_alive(self) -> bool:
        if self._reaper_alive is None:
            self._reaper_alive = self.store.reaper_alive(self.job_id)
        return self._reaper_alive

    def cancel_marker(self) -> dict | None:
        if self._cancel is False:
            self._cancel = self.store.read(self.job_id, CANCEL)
        return self._cancel

    # -- state derivation ------------------------------------------------------

    def record(self, index: int | None) -> dict | None:
        name = task_record_name(index)
        record = self.store.read(self.job_id, name)
        if record is not None:
            check_task_record(record, self.store.path(self.job_id, name))
        return record

    def repaired(self, index: int | None, record: dict | None) -> dict:
        """The record as it stands: repaired on read when reaper or machine is gone."""
        if record is not None and record["state"] in ENDED_NAMES:
            return record
        if record is None:
            marker = self.cancel_marker()
            if marker is not None:
                return cancelled_record(marker)
            if self.header.boot_id != self.boot_id:
                return new_record("Undetermined", "machine rebooted before the job started")
        elif record.get("boot_id") != self.boot_id:
            return dict(record, state="Undetermined", sub_state="machine rebooted while it ran")
        if self.reaper_alive():
            if record is None:
                return new_record("Queued")
            if record["state"] == "Running" and proc.stopped_in_vfork(record["pid"]):
                return dict(record, state="Suspended",
                            sub_state="stopped: its leader waits on a stopped child")
            return record
        # The reaper writes its last record before its lock falls free: read again.
        record = self.record(index)
        if record is None:
            marker = self.store.read(self.job_id, CANCEL)
            if marker is not None:
                return cancelled_record(marker)
            return new_record("Undetermined", f"{_REAPER_LOST} before the job started")
        if record["state"] in ENDED_NAMES:
            return record
        alive = proc.identify(record["pid"], record["start_ticks"]) \
            if record.get("start_ticks") is not None else None
        if alive is None or alive.state in "ZX":
            return dict(record, state="Undetermined",
                        sub_state=f"{_REAPER_LOST}; the process ended, its exit status is unknown")
        state = "Suspended" if alive.state in "Tt" else "Running"
        return dict(record, state=state,
                    sub_state=f"{_REAPER_LOST}; state read from the live process")

    def records(self, indices: Iterable[int | None] | None = None):
        """(index, derived record) for the given tasks, or all of them."""
        for index in (self.indices() if indices is None else indices):
            yield index, self.repaired(index, self.record(index))

    def started_indices(self) -> list[int]:
        """Indices of the array's tasks that have a record (started or cancelled)."""
        names = os.listdir(self.store.job_dir(self.job_id))
        return sorted(int(name[:-5]) for name in names
                      if name.endswith(".json") and name[:-5].isdigit())

    def _summary_text(self) -> str | None:
        """An ended array's JobInfos as its reaper wrote them (a JSON list's inside,
        templates null); None while the array runs, or if the summary is missing
        or damaged: the task records, which it only sums up, are then read instead.
        """
        if not self.is_array or self.reaper_alive():
            return None
        try:
            return summary_body(self.store.read_bytes(self.job_id, SUMMARY))
        except StorageError:
            return None

    def infos(self, indices=None) -> list[JobInfo]:
        summary = self._summary_text() if indices is None else None
        if summary is not None:
            infos = infos_from_summary(summary, self.template)
            if infos is not None:
                return infos
        return [info_from_record(self.header, index, record)
                for index, record in self.records(indices)]

    def encoded_infos(self, indices=None) -> str:
        """The JobInfos of the tasks as JSON objects, comma-separated (a list's inside).

        An ended array's summary is copied as it is, neither parsed nor encoded.
        """
        summary = self._summary_text() if indices is None else None
        if summary is not None:
            return fill_template(summary, self.template)
        return encode_infos(self.infos(indices))


class JobTracker(TrackerBase):
    """DRMAA2 JobTracker for OS processes on this machine.

    ``add_job`` returns once the job runs; ``add_array_job`` once its first task does.
    """

    BACKEND = "local"
    DESCRIPTION = "the OS process backend (--backend local)"
    SUBMISSION = LocalSubmission
    STATES = (JobState.QUEUED, JobState.RUNNING, JobState.SUSPENDED, JobState.DONE,
              JobState.FAILED, JobState.UNDETERMINED)
    ALLOWED = {action: ALLOWED[action] for action in ("suspend", "resume")} | {
        "terminate": frozenset({JobState.RUNNING, JobState.SUSPENDED, JobState.QUEUED})}

    def __init__(self, state_dir: str | None = None):
        super().__init__(state_dir)
        self.boot_id = proc.boot_id()

    # -- submitting ----------------------------------------------------------------

    def _submit(self, template: JobTemplate, array: ArraySpec | None) -> str:
        from .launch import launch

        template = complete_template(template, array is not None)
        job_id = self.store.allocate_id()
        header = Header.new(job_id, self.BACKEND, template, array, boot_id=self.boot_id)
        lock_fd = self.store.open_reaper_lock(job_id)
        try:
            # fsync'd by the reaper once the job runs: submit's latency holds no disk flush.
            self.store.write(job_id, HEADER, header.to_dict(), durable=False)
            launch(self.store, header, lock_fd)
        except StartError as error:
            raise StartError(f"job {job_id} could not start: {error}") from None
        finally:
            os.close(lock_fd)
        return str(job_id)

    # -- reading ---------------------------------------------------------------------

    def _read(self, targets, errors=None, final=True):
        read = []
        for target in targets:
            submission, index = target
            try:
                read.append((target, submission.infos(None if index is None else [index])))
            except StorageError as error:  # a damaged task record
                if errors is None:
                    raise
                errors.append(error)
        return read

    def _encoded(self, targets, errors):
        """As the base's, but an ended array is copied from the summary its reaper
        wrote, neither parsed nor encoded again: listing thousands of ended tasks
        costs little more than reading one file.
        """
        for submission, index in targets:
            try:
                yield submission.encoded_infos(None if index is None else [index])
            except StorageError as error:
                if errors is None:
                    raise
                errors.append(error)

    def _may_have_reached(self, target: Target, states: frozenset) -> bool:
        """While a whole job's reaper lives, some task of it has not ended: one lock probe."""
        submission, index = target
        return not (states <= ENDED_STATES and index is None and submission.reaper_alive())

    # -- control -------------------------------------------------------------------

    def _control_candidates(self, submission, index):
        """Of a whole array, the tasks that started, and the first that has not (if any):
        it stands for the queued rest, which one marker cancels.  Read so, a control
        of an array of a million tasks costs what its started tasks cost.
        """
        if index is not None or not submission.is_array:
            return super()._control_candidates(submission, index)
        started = submission.started_indices()
        infos = submission.infos(started)
        seen = set(started)
        queued = next((i for i in submission.array.indices() if i not in seen), None)
        if queued is not None:
            infos += submission.infos([queued])
        return infos

    def _act(self, submission, index, infos, action):
        """Signal each task's process group; cancel the queued ones of a terminate."""
        acted = []
        queued = [info.task_id for info in infos if info.state is JobState.QUEUED]
        if queued and index is None and submission.is_array:
            self._cancel_queued(submission)  # every task not started, in one marker
            acted += queued
            queued = []
        started = [info.task_id for info in infos if info.state is not JobState.QUEUED]
        for task_index in queued:
            record = self._cancel_task(submission, task_index)
            if record is None:
                acted.append(task_index)
            else:
                started.append(task_index)  # it started meanwhile: signal it instead
        refusals = []
        for task_index, record in submission.records(started):
            try:
                if self._signal_task(submission, task_index, record, action):
                    acted.append(task_index)
            except InvalidState as refusal:
                refusals.append(refusal)
        if refusals and not acted:
            raise refusals[0]
        return acted

    def _signal_task(self, submission: LocalSubmission, index, record, action) -> bool:
        """Signal one started task's process group; False if it ended meanwhile."""
        task_id = task_id_string(submission.job_id, index)
        if record["state"] in ENDED_NAMES:
            if action == "terminate":
                return False
            raise InvalidState(f"job {task_id} is {record['state']}: cannot {action} it")
        refusal = proc.signal_group(record["pid"], record["start_ticks"], _SIGNALS[action])
        if refusal == proc.GONE and action == "terminate":
            return False  # it ended by itself meanwhile
        if refusal is not None:
            raise InvalidState(f"job {task_id}: {refusal}: cannot {action} it")
        return True

    def _cancel_task(self, submission: LocalSubmission, index: int) -> dict | None:
        """Cancel a queued task for good; if the reaper started it meanwhile, its record.

        Under the job lock, which the reaper also holds from its check to the
        task's first record: the task is either cancelled or started, never both.
        """
        with self.store.job_lock(submission.job_id):
            record = submission.record(index)
            if record is None:
                record = new_record("Failed", "cancelled before it started")
                record["finish_time"] = timestamp()
                self.store.write(submission.job_id, task_record_name(index), record)
                return None
        return record

    def _cancel_queued(self, submission: LocalSubmission) -> None:
        """Cancel every task of an array that has not started (under the job lock)."""
        with self.store.job_lock(submission.job_id):
            if submission.reaper_alive() and submission.cancel_marker() is None:
                self.store.write(submission.job_id, CANCEL, {
                    "schema": SCHEMA_VERSION, "time": timestamp(),
                    "reason": "cancelled before it started"})

    def _late(self, infos, action):
        """As the base's; a terminated job also until every process of its group is gone.

        The leader's record says Failed as soon as it dies; its children may
        take a moment longer.
        """
        late = super()._late(infos, action)
        if action == "terminate" and not late:
            groups = {info.pid: info for info in infos if info.pid}
            late = [groups[pgid] for pgid in proc.live_groups(set(groups))]
        return late

    def _hint(self, action):
        return " (does it ignore SIGTSTP?)" if action == "suspend" else ""
