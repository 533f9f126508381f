"""The DRMAA2 session layer over any JobTracker of the registry (README, "DRMAA2 sessions").

As the Go DRMAA2 implementation (drmaa2os) puts its session manager over its
trackers, so that code written against DRMAA2 reads the same::

    sm = SessionManager()                      # or SessionManager(state_dir=..., backend="slurm")
    js = sm.create_job_session("nightly")      # persistent: open_job_session("nightly") later,
    job = js.run_job(JobTemplate("sleep", ["1"]))              # from any process, sees its jobs
    job.wait_terminated(timeout=None).get_info().exit_status

A job session is a name: registered in the state directory (``sessions/``),
and written into the template of every job run in it (``session_name``, what
``submit --session`` writes too).  Its jobs are those whose template names it,
whichever process submitted them.  Timeouts are seconds; 0 looks once and
returns (or raises), None waits for as long as it takes.
"""

from __future__ import annotations

import enum

from .core import registry
from .core.errors import InvalidArgument, InvalidState, JobNotFound, WaitTimeout
from .core.models import ENDED_STATES, JobInfo, JobState, JobTemplate
from .core.schedule import parse_name

__all__ = ["SessionManager", "JobSession", "Job", "ArrayJob", "Capability", "JobTemplate",
           "JobState", "JobInfo", "WaitTimeout"]

SESSIONS = "sessions"  # the state directory's register of job session names
# States after which a job has started (or will never start: it ended).
_STARTED = frozenset({JobState.RUNNING, JobState.SUSPENDED, *ENDED_STATES})


class Capability(enum.Enum):
    """DRMAA2's optional features, as ``SessionManager.supports`` is asked about them."""

    ADVANCE_RESERVATION = "advance_reservation"
    RESERVE_SLOTS = "reserve_slots"
    CALLBACK = "callback"
    BULK_JOBS_MAXPARALLEL = "bulk_jobs_maxparallel"
    JT_EMAIL = "jt_email"
    JT_STAGING = "jt_staging"
    JT_DEADLINE = "jt_deadline"
    JT_MAXSLOTS = "jt_maxslots"
    JT_ACCOUNTINGID = "jt_accountingid"
    RT_STARTNOW = "rt_startnow"
    RT_DURATION = "rt_duration"
    RT_MACHINEOS = "rt_machineos"
    RT_MACHINEARCH = "rt_machinearch"


# What each backend really does: arrays bounded by a maximum, deadlines.  No
# reservations, no callbacks, no e-mail, no file staging, no maximum of slots
# (only a minimum), no accounting IDs.
SUPPORTED = frozenset({Capability.BULK_JOBS_MAXPARALLEL, Capability.JT_DEADLINE})


class SessionManager:
    """Creates, opens, lists and destroys persistent, named job sessions."""

    def __init__(self, state_dir: str | None = None, backend: str | None = None):
        self.tracker = registry.open_tracker(backend, state_dir)

    def create_job_session(self, name: str) -> "JobSession":
        """A new session; InvalidArgument if one of that name exists."""
        if not self.tracker.store.register(SESSIONS, parse_name(name, "session")):
            raise InvalidArgument(f"job session {name} exists: open it")
        return JobSession(self, name)

    def open_job_session(self, name: str) -> "JobSession":
        """A session created before, here or in another process; InvalidArgument if none."""
        if parse_name(name, "session") not in self.get_job_session_names():
            raise InvalidArgument(f"no job session {name}: create it")
        return JobSession(self, name)

    def destroy_job_session(self, name: str) -> None:
        """Forget the session (its jobs stay, as drmaa2os keeps them)."""
        if not self.tracker.store.unregister(SESSIONS, parse_name(name, "session")):
            raise InvalidArgument(f"no job session {name}")

    def get_job_session_names(self) -> list[str]:
        return self.tracker.store.names_in(SESSIONS)

    @staticmethod
    def supports(capability: Capability) -> bool:
        return capability in SUPPORTED


class JobSession:
    """The jobs run in one named session, and waiting for any of them."""

    def __init__(self, manager: SessionManager, name: str):
        self.manager = manager
        self.tracker = manager.tracker
        self.name = name

    def get_session_name(self) -> str:
        return self.name

    def run_job(self, template: JobTemplate) -> "Job":
        return Job(self, self.tracker.add_job(self._in_session(template)))

    def run_bulk_jobs(self, template: JobTemplate, begin: int, end: int, step: int = 1,
                      max_parallel: int | None = None) -> "ArrayJob":
        return ArrayJob(self, self.tracker.add_array_job(self._in_session(template), begin,
                                                         end, step, max_parallel))

    def _in_session(self, template: JobTemplate) -> JobTemplate:
        return JobTemplate.from_dict(dict(template.to_dict(), session_name=self.name))

    def get_jobs(self, filter: dict | JobInfo | None = None) -> list["Job"]:
        """The session's jobs (each array task a Job) whose JobInfo matches ``filter``, as
        drmaa2os matches: equal ID, exit status, terminating signal, state, sub_state,
        owner and queue; the times are lower bounds, ``wallclock_time`` a minimum, and
        ``allocated_machines`` must be among the job's.  Unset fields match anything."""
        wanted = _fields(filter)
        return [Job(self, info.id) for info in self.tracker.job_infos()
                if info.job_template.session_name == self.name and _matches(info, wanted)]

    def get_job_array(self, array_id: str) -> "ArrayJob":
        infos = self.tracker.job_infos([array_id])
        if infos[0].array_id is None or infos[0].job_template.session_name != self.name:
            raise JobNotFound(f"no job array {array_id} in session {self.name}")
        return ArrayJob(self, array_id)

    def wait_any_started(self, jobs: list["Job"], timeout: float | None = None) -> "Job":
        return self._wait_any(jobs, timeout, _STARTED)

    def wait_any_terminated(self, jobs: list["Job"], timeout: float | None = None) -> "Job":
        return self._wait_any(jobs, timeout, ENDED_STATES)

    def _wait_any(self, jobs, timeout, states) -> "Job":
        if not jobs:
            raise InvalidArgument("no jobs to wait for")
        done = self.tracker.wait_jobs([job.id for job in jobs], timeout=timeout,
                                      any_job=True, states=states)
        return next(job for job in jobs if job.id == done[0].id)


class Job:
    """One job (or one task of an array) of a session."""

    def __init__(self, session: JobSession, job_id: str):
        self.session = session
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def get_id(self) -> str:
        return self.id

    def get_session_name(self) -> str:
        return self.session.name

    def get_info(self) -> JobInfo:
        return self.session.tracker.job_info(self.id)

    def get_state(self) -> tuple[JobState, str | None]:
        return self.session.tracker.job_state(self.id)

    def get_job_template(self) -> JobTemplate:
        return self.get_info().job_template

    def suspend(self) -> None:
        self.session.tracker.job_control(self.id, "suspend")

    def resume(self) -> None:
        self.session.tracker.job_control(self.id, "resume")

    def hold(self) -> None:
        self.session.tracker.job_control(self.id, "hold")

    def release(self) -> None:
        self.session.tracker.job_control(self.id, "release")

    def terminate(self) -> None:
        self.session.tracker.job_control(self.id, "terminate")

    def wait_started(self, timeout: float | None = None) -> "Job":
        """Once it runs (or ended without running); WaitTimeout after ``timeout`` s."""
        self.session.tracker.wait(self.id, timeout=timeout, states=_STARTED)
        return self

    def wait_terminated(self, timeout: float | None = None) -> "Job":
        self.session.tracker.wait(self.id, timeout=timeout, states=ENDED_STATES)
        return self

    def reap(self) -> None:
        """Forget an ended job (``delete``); InvalidState for one that has not ended."""
        self.session.tracker.delete_job(self.id)


class ArrayJob(Job):
    """A job array of a session: its tasks are Jobs; control acts on every task that can."""

    def get_jobs(self) -> list[Job]:
        return [Job(self.session, task) for task in self.session.tracker.list_array_jobs(self.id)]

    def get_state(self) -> tuple[JobState, str | None]:
        from .core.base import array_state

        return array_state(self.session.tracker.job_infos([self.id])), None

    def get_info(self) -> JobInfo:
        raise InvalidState(f"job array {self.id} has no JobInfo of its own: ask its jobs")


def _fields(filter) -> dict:
    """The fields a filter sets: a dict, or a JobInfo's set fields (None: no filter)."""
    if filter is None:
        return {}
    if isinstance(filter, JobInfo):
        names = {"submission_time_text": "submission_time", "dispatch_time_text":
                 "dispatch_time", "finish_time_text": "finish_time",
                 "wallclock_seconds": "wallclock_time"}
        return {names.get(slot, slot): getattr(filter, slot) for slot in _FILTERED
                if getattr(filter, slot, None) is not None}
    return {key: value for key, value in filter.items() if value is not None}


# The JobInfo fields a filter may set (the rest: pid, uid, extension_list, the template,
# name no property two jobs share or can be compared so).
_FILTERED = ("id", "array_id", "task_id", "job_name", "state", "sub_state", "exit_status",
             "terminating_signal", "allocated_machines", "submission_machine", "job_owner",
             "queue_name", "submission_time_text", "dispatch_time_text", "finish_time_text",
             "wallclock_seconds")


def _matches(info: JobInfo, wanted: dict) -> bool:
    data = info.to_dict(with_template=False)
    for key, value in wanted.items():
        have = data.get(key)
        if key in ("submission_time", "dispatch_time", "finish_time"):
            moment = getattr(info, key)
            bound = value if not isinstance(value, str) else _time(value)
            if moment is None or moment < bound:
                return False
        elif key == "wallclock_time":
            if have is None or have < value:
                return False
        elif key == "allocated_machines":
            if not set(value) <= set(have or ()):
                return False
        elif key == "state":
            if have != (value.value if isinstance(value, JobState) else value):
                return False
        elif have != value:
            return False
    return True


def _time(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)
