"""A PSI/J executor over any JobTracker of the registry (README, "PSI/J").

Code written against ExaWorks' Portable Submission Interface for Jobs runs its
jobs through ostracker unchanged, locally or on Slurm::

    ex = psij.JobExecutor.get_instance("ostracker")    # found through psij-descriptors/
    job = psij.Job(psij.JobSpec("/bin/date", stdout_path="date.out"))
    ex.submit(job); job.wait()                           # job.native_id is ostracker's ID

A JobSpec becomes a JobTemplate (``_template``), refused with an
InvalidJobException where ostracker cannot do what it asks rather than run it
differently.  PSI/J's states are reported through its own machinery
(``_set_job_status``), each once and in order: the thread that submits,
attaches or cancels reports what it sees at once, and one watcher thread per
executor reports every later change of every job it has.  This module is the
only one that imports psij.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Optional

import psij
from packaging.version import Version
from psij import (InvalidJobException, Job, JobExecutorConfig, JobSpec, JobState, JobStatus,
                  SubmitException)

from . import __version__
from .core import registry
from .core.base import TrackerBase
from .core.errors import (InvalidArgument, InvalidState, JobNotFound, SlurmUnavailable,
                          TrackerError, UnsupportedOperation, WaitTimeout)
from .core.models import ENDED_STATES, JobInfo, JobTemplate, epoch
from .core.models import JobState as OsState

__all__ = ["OstrackerExecutor", "OstrackerExecutorConfig"]

logger = logging.getLogger(__name__)

_ACTIVE = frozenset({OsState.RUNNING, OsState.SUSPENDED})  # PSI/J has no suspended state
WAKE_WITHIN = 1.0  # seconds: a job submitted while the watcher waits in the kernel, seen
# How ostracker words the end of a job that ``terminate`` (or Slurm's scancel) ended:
# locally "terminated" or "cancelled before it started", on Slurm "CANCELLED ...".
_CANCELLED_PREFIXES = ("terminated", "cancelled", "CANCELLED")


class OstrackerExecutorConfig(JobExecutorConfig):
    """Where the executor keeps its jobs: which backend, which state directory.

    Each left None falls back as the CLI does: ``$OSTRACKER_BACKEND`` (else
    local) and ``$OSTRACKER_STATE_DIR`` (else the per-user state directory).
    ``poll_interval``: seconds between two looks at jobs that are waiting to
    start (default: 0.25 s, and the backend's own pace on Slurm, 1 s); the
    end of a running local job is seen at once, through its pidfd, and a job
    submitted meanwhile within a second.
    """

    def __init__(self, backend: Optional[str] = None, state_dir: Optional[str] = None,
                 poll_interval: Optional[float] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backend = backend
        self.state_dir = state_dir
        self.poll_interval = poll_interval


class OstrackerExecutor(psij.JobExecutor):
    """PSI/J's JobExecutor, submitting to ostracker; a Job's ``native_id`` is its job ID."""

    # What ``get_instance`` sets; also here, so that one built directly has a name.
    _NAME_ = "ostracker"
    _VERSION_ = Version(__version__)

    def __init__(self, url: Optional[str] = None,
                 config: Optional[JobExecutorConfig] = None) -> None:
        """``url`` is not used; ``config`` an OstrackerExecutorConfig (any other config:
        the defaults).  An unknown backend is a ValueError here, not at the first submit."""
        config = config or OstrackerExecutorConfig()
        super().__init__(url=url, config=config)
        # Read by name, not by class: psij loads this module from its file a second time,
        # so a config built from ``ostracker.psij`` is of another class than this one's.
        backend = getattr(config, "backend", None) or os.environ.get("OSTRACKER_BACKEND") \
            or None
        state_dir = getattr(config, "state_dir", None)
        try:
            # Two trackers: a tracker keeps caches that no two threads may share.  The
            # callers' is used under ``_lock``; the watcher's only by the watcher thread.
            self._tracker = registry.open_tracker(backend, state_dir)
            self._watcher_tracker = registry.open_tracker(backend, state_dir)
        except TrackerError as error:
            raise ValueError(f"ostracker executor: {error}") from None
        self.backend = self._tracker.BACKEND
        self._interval = getattr(config, "poll_interval", None) or \
            max(0.25, self._tracker.POLL_INTERVAL)
        # Only a backend that can sleep in the kernel until a job ends is waited on between
        # looks; on another, ``wait_jobs`` would poll it faster than ``_interval``.
        self._kernel_wait = type(self._tracker)._sleep_until_changed is not \
            TrackerBase._sleep_until_changed
        self._lock = threading.RLock()
        self._status_lock = threading.RLock()  # one status change at a time: each once
        self._changed = threading.Condition()  # guards what follows; wakes the watcher
        self._jobs: set[Job] = set()  # the jobs watched, not yet in a final state
        # Jobs that ``cancel`` has asked to end: CANCELED once ended.  Until it knows whether
        # the job took the cancel or had ended by itself, no one else reports their end (the
        # local reaper may word a cancelled job's end "killed by SIGKILL", not "terminated").
        self._cancelled: set[str] = set()
        self._cancelling: set[str] = set()
        self._woken = False
        self._watcher: Optional[threading.Thread] = None

    # -- psij's JobExecutor ---------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Submit the job to ostracker.  Returns once ostracker has it (a local job has then
        started): QUEUED, and ACTIVE if it runs, are reported before this returns.

        InvalidJobException: the spec asks for what ostracker does not do, or says it
        wrongly; SubmitException: ostracker could not take it (the backend's reason)."""
        spec = self._check_job(job)
        try:
            template = _template(spec)
            with self._lock:
                native_id = self._tracker.add_job(template)
                info = self._tracker.job_info(native_id)
        except InvalidJobException:
            job.executor = None  # as it was: the job may be fixed and submitted again
            raise
        except (InvalidArgument, UnsupportedOperation) as error:
            job.executor = None
            raise InvalidJobException(str(error), error) from None
        except TrackerError as error:
            job.executor = None
            raise SubmitException(str(error), error,
                                  transient=isinstance(error, SlurmUnavailable)) from None
        job._native_id = native_id
        self._watch(job)
        self._report(job, info)

    def cancel(self, job: Job) -> None:
        """Terminate the job (SIGKILL to its whole process tree locally, ``scancel`` on
        Slurm); CANCELED is reported once it has ended, before this returns when ostracker
        shows the end in time.  A job that had ended already keeps its own end (one
        deleted since: FAILED, as the watcher says of it)."""
        native_id = job.native_id
        if native_id is None or job.executor is not self:
            raise SubmitException(f"cannot cancel job {job.id}: it was not submitted to or "
                                  "attached by this executor")
        with self._changed:
            self._cancelling.add(native_id)
        try:
            with self._lock:
                self._tracker.job_control(native_id, "terminate")
        except (InvalidState, JobNotFound):
            pass  # it ended by itself (or is ending, or was deleted): that is reported
        except TrackerError as error:
            raise SubmitException(f"cannot cancel job {native_id}: {error}", error) from None
        else:
            with self._changed:
                self._cancelled.add(native_id)
        finally:
            with self._changed:
                self._cancelling.discard(native_id)
        self._refresh(job)

    def list(self) -> list[str]:
        """The native IDs of every job of this backend in the state directory, however
        submitted (CLI, API, PSI/J) and whatever their state: single jobs and array
        tasks (``7``, ``8.3``), each one that ``attach`` takes."""
        errors: list[TrackerError] = []
        with self._lock:
            ids = [info.id for info in self._tracker.job_infos(errors=errors)]
        for error in errors:
            logger.warning("ostracker executor: a job left out of list(): %s", error)
        return ids

    def attach(self, job: Job, native_id: str) -> None:
        """Follow an ostracker job submitted elsewhere (another process, the CLI): its
        current state is reported before this returns, every later change after."""
        if job.status.state != JobState.NEW:
            raise InvalidJobException("Job must be in the NEW state")
        if job.executor is not None:
            raise InvalidJobException("Job is already associated with an executor")
        try:
            with self._lock:
                info = self._tracker.job_info(str(native_id))
        except (JobNotFound, InvalidArgument) as error:  # (the error quotes the ID, cut short)
            raise InvalidJobException(f"cannot attach: {error}", error) from None
        except TrackerError as error:
            raise SubmitException(f"cannot attach: {error}", error) from None
        job.executor = self
        job._native_id = info.id  # as ostracker spells it: "007" is "7"
        self._watch(job)
        self._report(job, info)

    # -- reporting ------------------------------------------------------------------------

    def _report(self, job: Job, info: JobInfo) -> None:
        """Bring the job's PSI/J status up to what ``info`` says, through every state it
        passed (QUEUED, ACTIVE if it ran, then its end), each at most once.

        Under one lock, with the job's status checked first: the submitting thread and
        the watcher may both see the same change, and only one reports it.
        """
        with self._changed:
            cancelled = info.id in self._cancelled
            cancelling = info.id in self._cancelling
        steps = [JobStatus(JobState.QUEUED, time=epoch(info.submission_time_text),
                           metadata={"nativeId": info.id})]
        if info.dispatch_time_text is not None or info.state in _ACTIVE:
            steps.append(JobStatus(JobState.ACTIVE, time=epoch(info.dispatch_time_text)))
        if info.state in ENDED_STATES and not cancelling:
            steps.append(_end(info, cancelled))
        with self._status_lock:
            for status in steps:
                current = job.status.state
                if current.final or current == status.state or \
                        current.is_greater_than(status.state):
                    continue
                self._set_job_status(job, status)

    def _refresh(self, job: Job) -> None:
        """Report the job's state as ostracker has it now (after a cancel)."""
        try:
            with self._lock:
                info = self._tracker.job_info(job.native_id)
        except JobNotFound:
            self._report_gone(job)
            return
        except TrackerError as error:
            logger.warning("ostracker executor: cannot read job %s: %s", job.native_id, error)
            return
        self._report(job, info)

    def _report_gone(self, job: Job) -> None:
        """FAILED, once ostracker has no such job any more (only an ended job is deleted)."""
        with self._status_lock:
            self._set_job_status(job, JobStatus(
                JobState.FAILED, message=f"ostracker has no job {job.native_id} any more "
                "(deleted?)"))

    # -- the watcher ----------------------------------------------------------------------

    def _watch(self, job: Job) -> None:
        """Have the watcher follow the job; start it if none runs (it ends with its last job)."""
        with self._changed:
            self._jobs.add(job)
            self._woken = True
            self._changed.notify_all()
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._run, daemon=True,
                                                 name=f"ostracker psij watcher ({self.backend})")
                self._watcher.start()

    def _run(self) -> None:
        """Each round: read every job not yet final, report what changed, then sleep until
        one may change (in the kernel on the pidfds of running local jobs; else
        ``_interval`` s, cut short when a job is added)."""
        while True:
            with self._changed:
                self._jobs = {job for job in self._jobs if not job.status.final}
                if not self._jobs:
                    self._watcher = None
                    return
                jobs = {job: job.native_id for job in self._jobs}
                self._woken = False
            try:
                infos = self._read(sorted(set(jobs.values())))
                for job, native_id in jobs.items():
                    found = infos.get(native_id)
                    if isinstance(found, JobInfo):
                        self._report(job, found)
                    elif isinstance(found, JobNotFound):
                        self._report_gone(job)
                self._sleep(infos)
            except Exception:  # noqa: BLE001 - the watcher outlives a bad round
                logger.exception("ostracker executor: watching jobs failed; trying again")
                with self._changed:
                    self._changed.wait(self._interval)

    def _read(self, native_ids: list[str]) -> dict[str, JobInfo | TrackerError]:
        """Native ID -> its JobInfo, in one read; one by one when that fails, so that a
        deleted job (JobNotFound) does not hide the others, and one that cannot be read
        now is left for the next round."""
        try:
            return {info.id: info for info in self._watcher_tracker.job_infos(native_ids)}
        except TrackerError:
            found: dict[str, JobInfo | TrackerError] = {}
            for native_id in native_ids:
                try:
                    found[native_id] = self._watcher_tracker.job_info(native_id)
                except JobNotFound as error:
                    found[native_id] = error
                except TrackerError as error:
                    logger.warning("ostracker executor: cannot read job %s: %s", native_id,
                                   error)
            return found

    def _sleep(self, infos: dict) -> None:
        """Until a watched job may have changed, or ``_interval`` s; a job added meanwhile
        is seen within ``WAKE_WITHIN`` s."""
        # A job that ended, or was found deleted, this round is done with.
        followed = [native_id for native_id, info in infos.items()
                    if isinstance(info, JobInfo) and not info.state.ended]
        running = [native_id for native_id in followed if infos[native_id].state in _ACTIVE]
        if self._kernel_wait and running and len(running) == len(followed):
            # Only an end can come next to any of them (PSI/J has no suspended state).
            until = time.monotonic() + self._interval
            while not self._woken and (left := until - time.monotonic()) > 0:
                try:
                    self._watcher_tracker.wait_jobs(running, timeout=min(left, WAKE_WITHIN),
                                                    any_job=True)
                    return
                except WaitTimeout:
                    continue
                except TrackerError:
                    return  # a job deleted meanwhile: the next round says
            return
        with self._changed:
            if not self._woken:
                self._changed.wait(self._interval)


def _end(info: JobInfo, cancelled: bool) -> JobStatus:
    """The final PSI/J status of an ended job: COMPLETED only for Done (exit status 0);
    CANCELED when this executor (or ``terminate``, ``scancel``) ended it; else FAILED,
    with ostracker's sub_state as the message."""
    time = epoch(info.finish_time_text)
    metadata = {"state": info.state.value, "sub_state": info.sub_state,
                "terminating_signal": info.terminating_signal}
    if info.state is OsState.DONE and info.exit_status in (0, None):
        return JobStatus(JobState.COMPLETED, time=time, exit_code=0, metadata=metadata)
    if info.state is OsState.FAILED and \
            (cancelled or (info.sub_state or "").startswith(_CANCELLED_PREFIXES)):
        state = JobState.CANCELED
    else:
        state = JobState.FAILED
    message = info.sub_state or info.state.value
    if info.state is OsState.UNDETERMINED:
        message = f"ostracker lost track of the job: {message}"
    return JobStatus(state, time=time, exit_code=info.exit_status, message=message,
                     metadata=metadata)


# -- JobSpec -> JobTemplate ---------------------------------------------------------------

def _template(spec: JobSpec) -> JobTemplate:
    """The JobTemplate that runs ``spec``; InvalidJobException for what ostracker cannot do
    as asked (README, "PSI/J", for the table)."""
    if not spec.executable:
        raise InvalidJobException("the JobSpec has no executable")
    if not spec.inherit_environment:
        raise InvalidJobException("inherit_environment=False is not supported: an ostracker "
                                  "job starts with the submitter's environment plus "
                                  "JobSpec.environment")
    if getattr(spec, "pre_launch", None) is not None or \
            getattr(spec, "post_launch", None) is not None:
        raise InvalidJobException("pre_launch and post_launch are not supported: ostracker "
                                  "runs the executable itself, with no launcher script")
    if getattr(spec, "launcher", None) not in (None, "single"):
        raise InvalidJobException(f"launcher {spec.launcher!r} is not supported: ostracker "
                                  "runs one process, as the 'single' launcher does")
    attributes = spec.attributes
    for name in ("account", "reservation_id"):
        if getattr(attributes, name, None) is not None:
            raise InvalidJobException(f"JobAttributes.{name} is not supported by ostracker")
    seconds = attributes.duration.total_seconds()
    if not seconds > 0:
        raise InvalidJobException("JobAttributes.duration must be more than 0")
    fields: dict = {"resource_limits": {"WALLCLOCK_TIME": math.ceil(seconds)}}
    try:
        if attributes.queue_name is not None:
            from .core.schedule import parse_name

            fields["queue_name"] = parse_name(attributes.queue_name)
        slots = _slots(spec.resources)
        if slots is not None:
            if "queue_name" not in fields:
                raise InvalidJobException("resources.cpu_cores_per_process takes a queue: set "
                                          "JobAttributes.queue_name")
            fields["min_slots"] = slots
        for key, value in (attributes.custom_attributes or {}).items():
            if key.startswith("ostracker."):  # others are other executors' (slurm.*, pbs.*)
                _custom(key[len("ostracker."):], value, fields)
    except InvalidArgument as error:
        raise InvalidJobException(str(error), error) from None
    name = spec.name
    return JobTemplate(
        remote_command=spec.executable,
        args=list(spec.arguments or []),
        job_name=None if name == spec.executable else name,  # unnamed: the command's base name
        working_directory=None if spec.directory is None else str(spec.directory),
        job_environment=dict(spec.environment or {}),
        input_path=_literal(spec.stdin_path),
        output_path=_literal(spec.stdout_path),
        error_path=_literal(spec.stderr_path),
        **fields)


def _literal(path) -> Optional[str]:
    """A PSI/J path as ostracker takes it: a ``%`` in it is a ``%``, not ``%j`` or ``%a``."""
    return None if path is None else str(path).replace("%", "%%")


def _slots(resources) -> Optional[int]:
    """The slots the job takes (``submit --slots``), from a ResourceSpecV1 that asks for
    one process on one node; None when it asks for nothing more."""
    if resources is None:
        return None
    if resources.version != 1:
        raise InvalidJobException(f"ResourceSpec version {resources.version} is not supported")
    if resources.computed_process_count != 1 or resources.computed_node_count != 1:
        raise InvalidJobException("ostracker runs one process on one node: process_count, "
                                  "node_count and processes_per_node must be 1")
    for name in ("gpu_cores_per_process", "memory"):
        if getattr(resources, name, None) is not None:
            raise InvalidJobException(f"resources.{name} is not supported by ostracker (a "
                                      "memory limit: ostracker.limit.VIRTUAL_MEMORY)")
    if getattr(resources, "exclusive_node_use", False):
        raise InvalidJobException("resources.exclusive_node_use is not supported by ostracker")
    cores = resources.cpu_cores_per_process
    if cores is None or cores == 1:
        return None
    if not isinstance(cores, int) or cores < 1:
        raise InvalidJobException(f"bad resources.cpu_cores_per_process {cores!r}")
    return cores


def _custom(name: str, value: object, fields: dict) -> None:
    """One ``ostracker.NAME`` custom attribute into ``fields``, checked as the CLI checks
    the option of that name (README, "PSI/J"); InvalidArgument if bad."""
    from .core import limits, schedule

    if name.startswith("limit."):
        key, amount = limits.parse_limit(f"{name[len('limit.'):]}={_text(name, value)}")
        if key == "WALLCLOCK_TIME":
            raise InvalidArgument("the time limit is JobAttributes.duration, not "
                                  "ostracker.limit.WALLCLOCK_TIME")
        fields["resource_limits"][key] = amount
    elif name == "priority":
        fields["priority"] = schedule.parse_priority(_text(name, value))
    elif name == "dependency":
        fields["dependency"] = str(schedule.parse_dependency(_text(name, value)))
    elif name in ("begin", "deadline"):
        moment = schedule.time_text(schedule.parse_time_spec(_text(name, value)))
        fields["start_time" if name == "begin" else "deadline_time"] = moment
    elif name in ("hold", "join"):
        if not isinstance(value, bool):
            raise InvalidArgument(f"ostracker.{name} takes True or False, not {value!r}")
        fields["submit_as_hold" if name == "hold" else "join_files"] = value
    elif name == "session":
        fields["session_name"] = schedule.parse_name(_text(name, value), "session")
    elif name == "signal":
        fields["warning_signal"] = limits.parse_warning(_text(name, value))
    elif name == "retries":
        fields["retries"] = limits.parse_retries(_text(name, value))
    elif name in ("kill_after", "retry_delay"):
        fields[name] = _seconds(name, value)
    elif name == "on_end":
        try:
            fields["on_end"] = limits.check_on_end(_text(name, value))
        except InvalidArgument as error:
            raise InvalidArgument(f"ostracker.on_end {error}") from None
    else:
        raise InvalidArgument(f"unknown custom attribute ostracker.{name} (known: "
                              f"{', '.join(sorted(_CUSTOM))}, limit.NAME)")


_CUSTOM = ("priority", "dependency", "begin", "deadline", "hold", "join", "session", "signal",
           "retries", "kill_after", "retry_delay", "on_end")


def _text(name: str, value: object) -> str:
    """A custom attribute's value as the CLI's text: a string, or a whole number."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgument(f"ostracker.{name} takes a string or a whole number, not "
                              f"{value!r}")
    return str(value)


def _seconds(name: str, value: object) -> float:
    """Seconds, 0 or more (``--kill-after``, ``--retry-delay``)."""
    from .core.limits import MAX_SECONDS

    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 <= value <= MAX_SECONDS:
        raise InvalidArgument(f"ostracker.{name} takes a number of seconds from 0 to "
                              f"{MAX_SECONDS:,}, not {value!r}")
    return float(value)
