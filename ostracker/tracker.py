"""The DRMAA2 JobTracker of the OS process backend: the seam between the CLI and jobs.

Writers: ``add_job`` writes a submission's header and hands it to a reaper
(``launch``); the reaper is the one writer of results; control commands only
signal, except that cancelling a queued task writes its record under the job
lock.  Readers never write: a record that says Running while its reaper is
gone (its lock is free) is *derived* on read — from the process itself while
it lives, ``Undetermined`` once it is gone — and a record from an earlier boot
is ``Undetermined`` without looking at any PID.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable

from . import proc
from .errors import (InvalidArgument, InvalidState, JobNotFound, StartError, StorageError,
                     TrackerError, UnsupportedOperation, WaitTimeout)
from .launch import launch
from .models import (ENDED_NAMES, ENDED_STATES, SCHEMA_VERSION, STATE_BY_NAME, ArraySpec,
                     JobInfo, JobState, JobTemplate, encode_infos, fill_template, timestamp)
from .reaper import (cancelled_record, captured_output_name, expand_path, new_record,
                     task_id_string, task_record_name)
from .store import CANCEL, HEADER, SUMMARY, SUMMARY_PREFIX, Store

CONTROL_TIMEOUT = 5.0  # seconds a job may take to stop, continue or die after its signal
_REAPER_LOST = "reaper lost"


def parse_job_id(text: str) -> tuple[int, int | None]:
    """``"7"`` -> (7, None); ``"7.3"`` -> (7, 3).  Anything else is a usage error."""
    job, dot, task = text.partition(".")
    if not (job.isascii() and job.isdigit() and int(job) > 0) or \
            (dot and not (task.isascii() and task.isdigit())):
        raise InvalidArgument(f"bad job ID {text!r}: expected N or N.I")
    return int(job), int(task) if dot else None


def owner_name(uid: int) -> str:
    """The user name of ``uid`` (the number itself where it has none)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def backend_job_ids(store: Store, backend: str) -> list[int]:
    """IDs of the submissions in ``store`` that ``backend`` ran (its headers say).

    A damaged header is listed too, so that whoever reads that job reports it.
    """
    found = []
    for job_id in store.job_ids():
        try:
            header = store.read(job_id, HEADER)
        except StorageError:
            header = {"backend": backend}
        if header is not None and header.get("backend", "local") == backend:
            found.append(job_id)
    return found


def complete_template(template: JobTemplate, is_array: bool) -> JobTemplate:
    """Check a template and fill in its defaults; bad values are usage errors."""
    if not template.remote_command:
        raise InvalidArgument("no command given")
    words = [template.remote_command, *template.args,
             *template.job_environment.keys(), *template.job_environment.values()]
    if any("\0" in word for word in words):
        raise InvalidArgument("command, arguments and environment cannot hold NUL bytes")
    for key in template.job_environment:
        if not key or "=" in key:
            raise InvalidArgument(f"bad environment variable name {key!r}")
    if template.job_name is not None and not template.job_name.strip():
        raise InvalidArgument("job name cannot be empty")
    try:
        cwd = os.path.abspath(template.working_directory or os.getcwd())
    except FileNotFoundError:
        raise StartError("the current directory no longer exists: give -C/--cwd") from None
    if template.input_path is not None:
        # Expanded with stand-ins for the ID and index that no real path holds:
        # equal here means the same file for every task.  (The reaper checks
        # the real paths too, for the coincidences this cannot see.)
        def where(path):
            expanded = expand_path(path, "\0J", "\0A" if is_array else None)
            return os.path.normpath(os.path.join(cwd, expanded))
        for other, option in ((template.output_path, "stdout"),
                              (template.error_path, "stderr")):
            if other is not None and where(other) == where(template.input_path):
                raise InvalidArgument(f"stdin and {option} are the same file: {other}")
    return JobTemplate(
        remote_command=template.remote_command,
        args=list(template.args),
        job_name=template.job_name or os.path.basename(template.remote_command),
        working_directory=cwd,
        job_environment=dict(template.job_environment),
        input_path=template.input_path,
        output_path=template.output_path,
        error_path=template.error_path,
    )


class SubmissionBase:
    """What every backend knows of a submission: its ID, and the array it may be."""

    job_id: int
    array: ArraySpec | None

    @property
    def is_array(self) -> bool:
        return self.array is not None

    def indices(self) -> Iterable[int | None]:
        return self.array.indices() if self.is_array else [None]

    def check_index(self, index: int | None) -> None:
        task_id = task_id_string(self.job_id, index)
        if index is not None and not self.is_array:
            raise JobNotFound(f"no such job: {task_id} (job {self.job_id} is not an array)")
        if index is not None and index not in self.array:
            raise JobNotFound(f"no such job: {task_id} (not a task of array {self.job_id})")


class TrackerBase:
    """The JobTracker methods that every backend does alike, by IDs and array specs alone.

    Every method that names a job takes its ID as a string: ``"7"`` for a single
    job or a whole array, ``"7.3"`` for task 3 of array 7.  A backend provides
    ``_submit``, ``_submission``, ``_task_info`` and ``_infos_of`` (every task of a
    submission), and the methods that differ.
    """

    store: Store
    # Seconds between two ``has_ended`` calls of a follower (``output -f``): what
    # asking costs decides, a lock probe here, a query to a cluster elsewhere.
    POLL_INTERVAL = 0.1

    def add_job(self, template: JobTemplate) -> str:
        """Submit one job and return its ID (StartError, or the backend's error, says why not)."""
        return self._submit(template, None)

    def add_array_job(self, template: JobTemplate, begin: int, end: int, step: int = 1,
                      max_parallel: int | None = None) -> str:
        """Submit an array of tasks BEGIN..END by STEP, at most MAX_PARALLEL at once."""
        return self._submit(template, ArraySpec(begin, end, step, max_parallel))

    def list_array_jobs(self, array_id: str) -> list[str]:
        """Task IDs (``N.I``) of array ``array_id``."""
        job_id, index = parse_job_id(array_id)
        submission = self._submission(job_id)
        if index is not None or not submission.is_array:
            raise InvalidArgument(f"job {array_id} is not an array")
        return [task_id_string(job_id, i) for i in submission.array.indices()]

    def _named(self, job_ids: Iterable[str] | None, errors: list | None):
        """(submission, index) of each job named (an array: index None), or of all.

        Listing all, a job deleted meanwhile or run by the other backend is left
        out; a damaged one goes to ``errors`` (without it, it raises), so that it
        does not hide the others.
        """
        named = [parse_job_id(text) for text in job_ids] if job_ids is not None else \
            [(job_id, None) for job_id in self.store.job_ids()]
        for number, index in named:
            try:
                submission = self._submission(number)
                submission.check_index(index)
            except JobNotFound:
                if job_ids is not None:
                    raise
                continue
            except StorageError as error:
                if errors is None:
                    raise
                errors.append(error)
                continue
            yield submission, index

    def _one_task(self, job_id: str):
        """(submission, index) of a single job or one task; a whole array is refused."""
        number, index = parse_job_id(job_id)
        submission = self._submission(number)
        if index is None and submission.is_array:
            raise InvalidArgument(f"job {job_id} is an array: name one task, {job_id}.I")
        submission.check_index(index)
        return submission, index

    def job_info(self, job_id: str) -> JobInfo:
        """JobInfo of one single job or array task (an array ID is refused: use job_infos)."""
        return self._task_info(*self._one_task(job_id))

    def wait(self, job_id: str, timeout: float | None = None,
             states: Iterable[JobState] = ENDED_STATES) -> list[JobInfo]:
        """Block until the job (every task of an array) is in one of ``states``.

        Returns the JobInfos (one for a single job or task); raises WaitTimeout.
        """
        return self.wait_jobs([job_id], timeout=timeout, states=states)

    def output_path(self, job_id: str, stream: str = "stdout") -> str:
        """Where the job's stdout (or stderr) went: its own path or the captured file."""
        submission, index = self._one_task(job_id)
        template = submission.template
        pattern = template.output_path if stream == "stdout" else template.error_path
        if pattern is None:
            return self.store.path(submission.job_id, captured_output_name(index, stream))
        path = expand_path(pattern, task_id_string(submission.job_id, index), index)
        return os.path.join(template.working_directory, path)

    def delete_job(self, job_id: str) -> None:
        """Remove an ended job (or a whole ended array) and the output ostracker captured."""
        number, index = parse_job_id(job_id)
        if index is not None:
            raise UnsupportedOperation(
                f"cannot delete one task ({job_id}): delete the array {number} as a whole")
        with self.store.job_lock(number):
            submission = self._submission(number)
            self._remove_if_ended(submission, self._infos_of(submission))

    def _remove_if_ended(self, submission, infos: list[JobInfo]) -> None:
        """Remove the submission's directory unless one of its tasks has not ended."""
        for info in infos:
            if not info.state.ended:
                raise InvalidState(f"job {info.id} is {info.state.value}: "
                                   "only ended jobs can be deleted")
        self.store.remove_job_dir(submission.job_id)


class _Submission(SubmissionBase):
    """One submission (a single job or an array) as read from its directory."""

    def __init__(self, tracker: "JobTracker", job_id: int):
        self.tracker = tracker
        self.store = tracker.store
        self.job_id = job_id
        header = self.store.read(job_id, HEADER)
        if header is None:
            raise JobNotFound(f"no such job: {job_id}")
        if header.get("backend", "local") != "local":
            raise JobNotFound(f"no such job: {job_id} with the local backend (it is a "
                              f"{header['backend']} job: give --backend {header['backend']})")
        try:
            self.array = ArraySpec.from_dict(header["array"]) if header["array"] else None
            self.template = JobTemplate.from_dict(header["template"])
            for key in ("submission_time", "submission_machine", "job_owner", "uid", "boot_id"):
                header[key]
            self.header = header
        except (KeyError, TypeError, ValueError):
            raise StorageError(f"damaged record {self.store.path(job_id, HEADER)}") from None
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
        record = self.store.read(self.job_id, task_record_name(index))
        if record is not None and record.get("state") not in STATE_BY_NAME:
            path = self.store.path(self.job_id, task_record_name(index))
            raise StorageError(f"damaged record {path}")
        return record

    def derive(self, index: int | None, record: dict | None) -> dict:
        """The record as it stands: repaired on read when reaper or machine is gone."""
        if record is not None and record["state"] in ENDED_NAMES:
            return record
        if record is None:
            marker = self.cancel_marker()
            if marker is not None:
                return cancelled_record(marker)
            if self.header["boot_id"] != self.tracker.boot_id:
                return new_record("Undetermined", "machine rebooted before the job started")
        elif record.get("boot_id") != self.tracker.boot_id:
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
            yield index, self.derive(index, self.record(index))

    def started_indices(self) -> list[int]:
        """Indices of the array's tasks that have a record (started or cancelled)."""
        names = os.listdir(self.store.job_dir(self.job_id))
        return sorted(int(name[:-5]) for name in names
                      if name.endswith(".json") and name[:-5].isdigit())

    def _summary_text(self) -> str | None:
        """An ended array's JobInfos as its reaper wrote them: a JSON list's inside,
        template slots null (see encode_infos).

        None while the array runs, or if the summary is missing or damaged:
        the task records, which it only sums up, are then read instead.
        """
        if not self.is_array or self.reaper_alive():
            return None
        try:
            data = self.store.read_bytes(self.job_id, SUMMARY)
        except StorageError:
            return None
        if data is None or not data.startswith(SUMMARY_PREFIX) or not data.endswith(b"]}"):
            return None
        return data[len(SUMMARY_PREFIX) + 1:-2].decode()

    def infos(self, indices=None) -> list[JobInfo]:
        summary = self._summary_text() if indices is None else None
        if summary is not None:
            try:
                return [JobInfo.from_dict(data, self.template)
                        for data in json.loads(f"[{summary}]")]
            except (ValueError, KeyError, TypeError):
                pass  # damaged: the task records below
        return [JobInfo.from_record(self.job_id, index, self.header, self.template, record)
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

    def __init__(self, state_dir: str | None = None):
        self.store = Store(state_dir)
        self.boot_id = proc.boot_id()

    # -- submitting ----------------------------------------------------------------

    def _submit(self, template: JobTemplate, array: ArraySpec | None) -> str:
        template = complete_template(template, array is not None)
        uid = os.getuid()
        header = {
            "schema": SCHEMA_VERSION,
            "array": array.to_dict() if array else None,
            "template": template.to_dict(),
            "submission_time": timestamp(),
            "submission_machine": os.uname().nodename,
            "job_owner": owner_name(uid),
            "uid": uid,
            "boot_id": self.boot_id,
        }
        job_id = self.store.allocate_id()
        header["id"] = str(job_id)
        lock_fd = self.store.open_reaper_lock(job_id)
        try:
            # fsync'd by the reaper once the job runs: submit's latency holds no disk flush.
            self.store.write(job_id, HEADER, header, durable=False)
            launch(self.store, job_id, header, lock_fd)
        except StartError as error:
            raise StartError(f"job {job_id} could not start: {error}") from None
        finally:
            os.close(lock_fd)
        return str(job_id)

    # -- reading ---------------------------------------------------------------------

    def _submission(self, job_id: int) -> _Submission:
        return _Submission(self, job_id)

    def list_jobs(self) -> list[str]:
        """IDs of every local job in the DB: single jobs and arrays (not their tasks)."""
        return [str(job_id) for job_id in backend_job_ids(self.store, "local")]

    def _task_info(self, submission: _Submission, index: int | None) -> JobInfo:
        return submission.infos([index])[0]

    def _infos_of(self, submission: _Submission) -> list[JobInfo]:
        return submission.infos()

    def job_state(self, job_id: str) -> tuple[JobState, str | None]:
        """(state, sub_state) of a job or task; of an array, its state derived from its tasks."""
        number, index = parse_job_id(job_id)
        submission = self._submission(number)
        if index is None and submission.is_array:
            return array_state(submission.infos()), None
        info = self.job_info(job_id)
        return info.state, info.sub_state

    def job_infos(self, job_ids: Iterable[str] | None = None,
                  errors: list[TrackerError] | None = None) -> list[JobInfo]:
        """JobInfo of the named jobs (an array stands for its tasks), or of all jobs.

        With ``errors``, a job that cannot be read is reported there and skipped,
        so one damaged record does not hide the others; without it, it raises.
        """
        return [info for infos in self._each(job_ids, errors, _Submission.infos)
                for info in infos]

    def job_infos_json(self, job_ids: Iterable[str] | None = None,
                       errors: list[TrackerError] | None = None) -> str:
        """``job_infos`` as a JSON list, the way ``status --json`` prints it.

        An ended array is copied from the summary its reaper wrote, neither
        parsed nor encoded again: listing thousands of ended tasks costs little
        more than reading one file.
        """
        parts = self._each(job_ids, errors, _Submission.encoded_infos)
        return "[" + ", ".join(part for part in parts if part) + "]"

    def _each(self, job_ids, errors, read):
        """``read(submission, indices)`` for each job named (all tasks: None), or for all."""
        for submission, index in self._named(job_ids, errors):
            try:
                yield read(submission, None if index is None else [index])
            except StorageError as error:  # a damaged task record
                if errors is None:
                    raise
                errors.append(error)

    # -- waiting ---------------------------------------------------------------------

    def wait_jobs(self, job_ids: list[str], timeout: float | None = None, any_job: bool = False,
                  states: Iterable[JobState] = ENDED_STATES) -> list[JobInfo]:
        """Block until all (or with ``any_job``, one) of the jobs reach ``states``.

        Returns the JobInfos of the jobs that got there.  Polls with a backoff up
        to 25 ms; while a job's reaper lives and ended states are awaited, a poll
        costs one lock probe, whatever the size of the array.
        """
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout cannot be negative")
        states = frozenset(states)
        pending = {text: parse_job_id(text) for text in job_ids}
        for number, index in pending.values():
            self._submission(number).check_index(index)
        deadline = None if timeout is None else time.monotonic() + timeout
        reached: dict[str, list[JobInfo]] = {}
        delay = 0.001
        while True:
            for text, (number, index) in list(pending.items()):
                infos = self._reached(number, index, states)
                if infos is not None:
                    reached[text] = infos
                    del pending[text]
            if not pending or (any_job and reached):
                return [info for text in job_ids if text in reached for info in reached[text]]
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g} s waiting for "
                                  + ", ".join(pending))
            pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 1.5, 0.025)

    def _reached(self, number: int, index: int | None, states: frozenset) -> list[JobInfo] | None:
        if states <= ENDED_STATES and index is None and self.store.reaper_alive(number):
            return None  # the cheap probe: a living reaper means tasks still to end
        submission = self._submission(number)
        infos = submission.infos(None if index is None else [index])
        return infos if all(info.state in states for info in infos) else None

    # -- control -------------------------------------------------------------------

    def job_control(self, job_id: str, action: str) -> None:
        """DRMAA2 job control: suspend, resume, terminate (hold, release unsupported).

        An array ID acts on every task that can take the action, and fails only
        if none could.  Returns once the job's record shows the effect.
        """
        if action in ("hold", "release"):
            raise UnsupportedOperation(
                f"{action} is not supported by the OS process backend (--backend local)")
        if action not in ("suspend", "resume", "terminate"):
            raise InvalidArgument(f"unknown job control action {action!r}")
        number, index = parse_job_id(job_id)
        submission = self._submission(number)
        submission.check_index(index)
        cancelled = False
        if action == "terminate" and submission.is_array and index is None:
            cancelled = self._cancel_queued(submission)
        # Of a whole array, only tasks that started can take a signal; the queued
        # rest is cancelled by the marker above (or, for suspend/resume, left be).
        targets = [index] if index is not None else \
            submission.started_indices() if submission.is_array else [None]
        acted, refusals = [], []
        for task_index, record in submission.records(targets):
            try:
                if self._control_task(submission, task_index, record, action):
                    acted.append(task_index)
            except InvalidState as refusal:
                refusals.append(refusal)
        if index is not None or not submission.is_array:
            if refusals:
                raise refusals[0]
        elif not acted and not cancelled:
            raise InvalidState(f"array {number} has no task that can be {_PAST[action]}")
        self._await_effect(submission, acted, action)

    def _control_task(self, submission: _Submission, index, record, action) -> bool:
        """Signal one task (or cancel it if queued); False if it ended meanwhile."""
        task_id = task_id_string(submission.job_id, index)
        state = JobState(record["state"])
        allowed = {"suspend": {JobState.RUNNING}, "resume": {JobState.SUSPENDED},
                   "terminate": {JobState.RUNNING, JobState.SUSPENDED, JobState.QUEUED}}[action]
        if state not in allowed:
            raise InvalidState(f"job {task_id} is {state.value}: cannot {action} it")
        if state is JobState.QUEUED:
            started = self._cancel_task(submission, index)
            if started is None:
                return True
            return self._control_task(submission, index, started, action)
        signum = {"suspend": signal.SIGTSTP, "resume": signal.SIGCONT,
                  "terminate": signal.SIGKILL}[action]
        refusal = proc.signal_group(record["pid"], record["start_ticks"], signum)
        if refusal == proc.GONE and action == "terminate":
            return False  # it ended by itself meanwhile
        if refusal is not None:
            raise InvalidState(f"job {task_id}: {refusal}: cannot {action} it")
        return True

    def _cancel_task(self, submission: _Submission, index: int) -> dict | None:
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
        return submission.derive(index, record)

    def _cancel_queued(self, submission: _Submission) -> bool:
        """Cancel every task of an array that has not started; True if there was one."""
        with self.store.job_lock(submission.job_id):
            queued = submission.reaper_alive() and submission.cancel_marker() is None and any(
                not os.path.exists(self.store.path(submission.job_id, task_record_name(i)))
                for i in submission.array.indices())
            if queued:
                self.store.write(submission.job_id, CANCEL, {
                    "schema": SCHEMA_VERSION, "time": timestamp(),
                    "reason": "cancelled before it started"})
        submission._cancel = False  # read the marker again
        return queued

    def _await_effect(self, submission: _Submission, indices: list, action: str) -> None:
        """Wait (bounded) until the records show what the signal did.

        For terminate, also until every process of each killed group is gone:
        the leader's record says Failed as soon as it dies, its children may
        take a moment longer.
        """
        # A resumed job may run to its end before we look: that is resumed too.
        wanted = {"suspend": {JobState.SUSPENDED}, "resume": {JobState.RUNNING, *ENDED_STATES},
                  "terminate": ENDED_STATES}[action]
        deadline = time.monotonic() + CONTROL_TIMEOUT
        remaining = list(indices)
        delay = 0.001
        while remaining:
            records = list(_Submission(self, submission.job_id).records(remaining))
            remaining = [i for i, record in records if JobState(record["state"]) not in wanted]
            for i, record in records:
                if i in remaining and JobState(record["state"]).ended:
                    raise InvalidState(f"job {task_id_string(submission.job_id, i)} ended "
                                       f"({record['state']}) before it could {_NOUN[action]}")
            if action == "terminate" and not remaining:
                groups = {record["pid"]: i for i, record in records if record.get("pid")}
                remaining = [groups[pgid] for pgid in proc.live_groups(set(groups))]
            if not remaining:
                return
            if time.monotonic() >= deadline:
                ids = ", ".join(task_id_string(submission.job_id, i) for i in remaining)
                hint = " (does it ignore SIGTSTP?)" if action == "suspend" else ""
                raise InvalidState(f"job {ids} did not {_NOUN[action]} within "
                                   f"{CONTROL_TIMEOUT:g} s{hint}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.025)

    # -- deleting ----------------------------------------------------------------------

    def delete_finished(self) -> list[str]:
        """Delete every job whose tasks have all ended; return their IDs."""
        deleted = []
        for job_id in self.list_jobs():
            try:
                self.delete_job(job_id)
                deleted.append(job_id)
            except (InvalidState, JobNotFound):
                pass
        return deleted

    def has_ended(self, job_id: str) -> bool:
        """Whether the job (every task of an array) has ended."""
        number, index = parse_job_id(job_id)
        return self._reached(number, index, ENDED_STATES) is not None


_PAST = {"suspend": "suspended", "resume": "resumed", "terminate": "terminated"}
_NOUN = {"suspend": "stop", "resume": "continue", "terminate": "end"}


def array_state(infos: list[JobInfo]) -> JobState:
    """An array's own state, derived from its tasks' as SPEC section 2 orders them
    (Slurm's Requeued and held states after Queued)."""
    present = {info.state for info in infos}
    for state in (JobState.RUNNING, JobState.SUSPENDED, JobState.QUEUED, JobState.REQUEUED,
                  JobState.QUEUED_HELD, JobState.REQUEUED_HELD, JobState.FAILED):
        if state in present:
            return state
    if JobState.UNDETERMINED in present:
        return JobState.UNDETERMINED
    return JobState.DONE

