"""The JobTracker contract, and every algorithm that all backends share.

A backend (``ostracker.local``, ``ostracker.slurm``) is a subclass of
``TrackerBase`` that supplies three things and nothing more:

- **submit**: ``_submit(template, array)`` starts the job, records its header
  and returns its ID;
- **read**: ``_read(targets)`` turns (submission, task index) pairs into
  JobInfos, as cheaply as the backend can read many at once;
- **act**: ``_act(submission, index, infos, action)`` sends one control action to the
  tasks that can take it (``index`` None: the whole array).

Everything else is written once, here: naming jobs and arrays, the one wait
loop (drmaa2os's ``WaitForState``), control and waiting for its effect,
delete, ``delete --finished``, output paths.  The tables of which state allows
which action, and which states show that it took effect, are class
attributes that a backend narrows.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable

from .errors import (InvalidArgument, InvalidState, JobNotFound, StorageError, TrackerError,
                     UnsupportedOperation, WaitTimeout)
from .models import (ENDED_STATES, ArraySpec, Ended, JobInfo, JobState, JobTemplate, expand_path,
                     parse_job_id, task_id_string)
from .records import HEADER, EndedEntry, Header, captured_output_name, encode_infos
from .store import Store

# What each job control action needs the job to be in (a backend may narrow it) ...
ALLOWED = {
    "suspend": frozenset({JobState.RUNNING}),
    "resume": frozenset({JobState.SUSPENDED}),
    "terminate": frozenset({JobState.QUEUED, JobState.QUEUED_HELD, JobState.RUNNING,
                            JobState.SUSPENDED, JobState.REQUEUED, JobState.REQUEUED_HELD}),
    "hold": frozenset({JobState.QUEUED, JobState.REQUEUED}),
    "release": frozenset({JobState.QUEUED_HELD, JobState.REQUEUED_HELD}),
    "signal": frozenset({JobState.RUNNING, JobState.SUSPENDED}),
}
# ... and the states that show it took effect.  A job that ends while it is
# being resumed, held or released is fine; one that ends while it is being
# suspended did not stop: that is reported.
WANTED = {
    "suspend": frozenset({JobState.SUSPENDED}),
    "resume": frozenset({JobState.RUNNING, *ENDED_STATES}),
    "terminate": ENDED_STATES,
    "hold": frozenset({JobState.QUEUED_HELD, JobState.REQUEUED_HELD, JobState.RUNNING,
                       *ENDED_STATES}),
    "release": frozenset({JobState.QUEUED, JobState.REQUEUED, JobState.RUNNING, *ENDED_STATES}),
    "signal": frozenset(JobState),  # the state follows what the processes do: no waiting
}
PAST = {"suspend": "suspended", "resume": "resumed", "terminate": "terminated",
        "hold": "held", "release": "released", "signal": "signalled"}
_VERB = {"suspend": "stop", "resume": "continue", "terminate": "end", "hold": "be held",
         "release": "be released", "signal": "be signalled"}


class Submission:
    """One submission (a single job or an array) as its header describes it."""

    ended = False  # read from the history (``EndedSubmission``)

    def __init__(self, tracker: "TrackerBase", header: Header):
        self.tracker = tracker
        self.store = tracker.store
        self.header = header
        self.job_id = header.job_id
        self.array: ArraySpec | None = header.array
        self.template: JobTemplate = header.template
        # Set by a read that left out a task it could not read (``_read`` with errors):
        # the submission is not known whole, and ``delete --finished`` leaves it.
        self.damaged: StorageError | None = None

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


class EndedSubmission(Submission):
    """An ended job as its line of the history (``core.history``) has it: the header is
    parsed only when asked for, so that listing ten thousand ended jobs as JSON copies
    their JobInfos and parses nothing."""

    ended = True

    def __init__(self, tracker: "TrackerBase", entry: EndedEntry):
        self.tracker = tracker
        self.store = tracker.store
        self.entry = entry
        self.job_id = entry.job_id
        self.damaged = None
        self._header: Header | None = None

    @property
    def header(self) -> Header:
        if self._header is None:
            self._header = self.entry.header()
        return self._header

    @property
    def array(self) -> ArraySpec | None:
        return self.header.array

    @property
    def template(self) -> JobTemplate:
        return self.header.template

    def reaper_alive(self) -> bool:
        return False

    def infos(self, indices=None, errors: list | None = None) -> list[JobInfo]:
        return self.entry.infos(self.header, None if indices is None else set(indices))

    def encoded_infos(self, indices=None, errors: list | None = None) -> str:
        if indices is None:
            return self._decoded(self.entry.encoded_infos())
        return encode_infos(self.infos(indices))

    def _decoded(self, data: bytes) -> str:
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise self.entry.damage() from None


Target = tuple[Submission, "int | None"]  # a submission and one task index (None: every task)


class TrackerBase(abc.ABC):
    """The DRMAA2 JobTracker: the same methods, IDs and errors whichever backend runs the jobs.

    Every method that names a job takes its ID as a string: ``"7"`` for a single
    job or a whole array, ``"7.3"`` for task 3 of array 7.
    """

    BACKEND: str  # the name the registry knows it by, recorded in each header
    DESCRIPTION: str  # what it is, in messages: "the Slurm backend (--backend slurm)"
    SUBMISSION = Submission  # the class that a backend's submissions are read into
    STATES = tuple(JobState)  # the states its jobs can be in (TAB offers them for --state)
    ALLOWED = ALLOWED
    CONTROL_TIMEOUT = 5.0  # seconds a job may take to show a control action's effect
    # Seconds between two reads of a wait: it backs off from the first to the second.
    # ``output -f`` asks ``has_ended`` every ``POLL_INTERVAL`` seconds.
    WAIT_BACKOFF = (0.001, 0.025)
    POLL_INTERVAL = 0.1
    # Whether a polling read (``_read(final=False)``) is as full as a final one: a wait
    # then returns what its last round read, not a second read of the same jobs.
    POLLS_IN_FULL = False

    def __init__(self, state_dir: str | None = None):
        self.store = Store(state_dir)

    # -- what a backend supplies ----------------------------------------------------------

    @abc.abstractmethod
    def _submit(self, template: JobTemplate, array: ArraySpec | None) -> str:
        """Start (or hand over) the job, record it, and return its ID."""

    @abc.abstractmethod
    def _read(self, targets: Iterable[Target], errors: list | None = None,
              final: bool = True) -> list[tuple[Target, list[JobInfo]]]:
        """The JobInfos of each target (every task of an array when its index is None).

        A target that cannot be read goes to ``errors`` and is left out (without
        ``errors``, its StorageError is raised).  ``final=False`` asks for a
        cheaper read, for polling: fields that cost more (accounting) may be null.
        """

    @abc.abstractmethod
    def _act(self, submission: Submission, index: int | None, infos: list[JobInfo],
             action: str, signum: int | None = None, grace: float | None = None) -> list:
        """Apply ``action`` to the tasks ``infos`` (each in a state that allows it) of the
        job named by ``index`` (None: the single job, or the whole array).  ``signum``:
        the signal of ``signal``; ``grace``: seconds a ``terminate`` waits after
        SIGTERM before SIGKILL (None: SIGKILL at once).

        Returns the indices of the tasks it acted on (None for a single job);
        a task that ended by itself meanwhile is left out.
        """

    # -- queues (README, "Scheduling"); a backend without them refuses ---------------------

    def queue_names(self) -> list[str]:
        return []

    def queues(self) -> list[dict]:
        """Every queue: ``name``, ``slots``, ``in_use``, ``running``, ``queued``, ``held``."""
        raise UnsupportedOperation(f"{self.DESCRIPTION} has no queues")

    def queue(self, name: str) -> dict:
        raise UnsupportedOperation(f"{self.DESCRIPTION} has no queues")

    def set_queue(self, name: str, slots: int) -> None:
        raise UnsupportedOperation(f"{self.DESCRIPTION} cannot create or resize queues")

    def delete_queue(self, name: str) -> None:
        raise UnsupportedOperation(f"{self.DESCRIPTION} cannot delete queues")

    def _control_candidates(self, submission: Submission, index: int | None) -> list[JobInfo]:
        """The tasks that a control action on (submission, index) may apply to: all of them,
        unless the backend knows a cheaper answer."""
        return self._read([(submission, index)])[0][1]

    def _late(self, infos: list[JobInfo], action: str) -> list[JobInfo]:
        """Of the tasks acted on, those that do not show the action's effect yet."""
        return [info for info in infos if info.state not in WANTED[action]]

    def _may_have_reached(self, target: Target, states: frozenset) -> bool:
        """False when the target cannot be in ``states`` yet, known without reading it."""
        return True

    # -- submitting -----------------------------------------------------------------------

    def add_job(self, template: JobTemplate) -> str:
        """Submit one job and return its ID (StartError, or the backend's error, says why not)."""
        return self._submit(template, None)

    def ended_as(self, job_id: str) -> Ended | None:
        """How the job that this tracker submitted last ended, as the backend's supervisor
        of it says it (blocking until then), with nothing to read; None where no one
        will say (another job, a backend that does not, a supervisor lost): ``wait``
        then reads it.  For ``submit --wait``: an exit status, at once."""
        return None

    def add_array_job(self, template: JobTemplate, begin: int, end: int, step: int = 1,
                      max_parallel: int | None = None, indices: list[int] | None = None) -> str:
        """Submit an array of tasks BEGIN..END by STEP (or ``indices``, a list), at most
        MAX_PARALLEL at once."""
        return self._submit(template, ArraySpec(begin, end, step, max_parallel, indices))

    def resubmit(self, job_id: str, failed_only: bool = False) -> str:
        """Submit a job again as a new one (same template, array and options); return its ID.

        ``failed_only``: of an array that has ended, only the tasks that did not end
        ``Done``, under their own indices; a task ID resubmits that task alone.
        """
        job_number, index = parse_job_id(job_id)
        submission = self._submission(job_number)
        submission.check_index(index)
        array = submission.array
        if index is not None:
            array = ArraySpec(0, 0, None, None, [index])
        if failed_only:
            infos = self.job_infos([job_id])
            if not all(info.state.ended for info in infos):
                raise InvalidState(f"job {job_id} has not ended: resubmit --failed takes the "
                                   "tasks that ended other than Done")
            failed = [info.task_id for info in infos if info.state is not JobState.DONE]
            if not failed:
                raise InvalidState(f"job {job_id} ended Done: nothing to resubmit with --failed")
            if array is not None:
                array = ArraySpec(0, 0, None, array.max_parallel, failed)
        return self._submit(submission.template, array)

    # -- naming jobs ----------------------------------------------------------------------

    def _header(self, job_id: int) -> Header:
        data = self.store.read(job_id, HEADER)
        if data is None:
            raise JobNotFound(f"no such job: {job_id}")
        return Header.from_dict(job_id, data, self.store.path(job_id, HEADER))

    def _submission(self, job_id: int) -> Submission:
        """Submission ``job_id`` of this backend, from its directory or, once compacted,
        from the history; JobNotFound names the other backend's.

        A backend that no version of ostracker here knows (a later one's, or a
        damaged name) is a StorageError: every backend reports that job, so that
        it is hidden from none.
        """
        try:
            header = self._header(job_id)
        except JobNotFound:
            return self._ended_submission(job_id)
        self._check_backend(job_id, header.backend, self.store.path(job_id, HEADER))
        return self.SUBMISSION(self, header)

    def _ended_submission(self, job_id: int) -> "EndedSubmission":
        """Submission ``job_id`` from its line of the history; JobNotFound if it has none."""
        entry = self.store.history.entry(job_id)
        if entry is None:
            raise JobNotFound(f"no such job: {job_id}")
        self._check_backend(job_id, entry.backend, self.store.history.path)
        return EndedSubmission(self, entry)

    def _check_backend(self, job_id: int, backend: str, path: str) -> None:
        if backend != self.BACKEND:
            from .registry import BACKENDS

            if backend not in BACKENDS:
                raise StorageError(f"unknown backend {backend!r} in {path}")
            raise JobNotFound(f"no such job: {job_id} with the {self.BACKEND} backend (it is "
                              f"a {backend} job: give --backend {backend})")

    def _ours(self, entry: EndedEntry) -> bool:
        """Whether the history's entry is this backend's job (a damaged line's is: whoever
        reads that job reports it)."""
        try:
            return entry.backend == self.BACKEND
        except StorageError:
            return True

    def list_jobs(self, last: int | None = None, ended: bool = True) -> list[str]:
        """IDs of every job of this backend in the DB: single jobs and arrays (not their tasks);
        with ``last``, only the ``last`` most recent (the highest IDs), read newest first;
        without ``ended``, none of the history's (TAB completion of ``suspend``: the
        jobs that have not ended are among the others).

        A damaged header is listed too, so that whoever reads that job reports it.
        """
        found = []
        live = self.store.job_ids()
        compacted = {job_id for job_id, _ in self._ended_entries(set(live), None)} \
            if ended else set()
        for job_id in sorted([*live, *compacted], reverse=True):
            if last is not None and len(found) >= last:
                break
            if job_id not in compacted:
                try:
                    self._submission(job_id)
                except JobNotFound:
                    continue  # deleted meanwhile, or the other backend's
                except StorageError:
                    pass
            found.append(str(job_id))
        return found[::-1]

    def list_array_jobs(self, array_id: str) -> list[str]:
        """Task IDs (``N.I``) of array ``array_id``."""
        job_id, index = parse_job_id(array_id)
        submission = self._submission(job_id)
        if index is not None or not submission.is_array:
            raise InvalidArgument(f"job {array_id} is not an array")
        return [task_id_string(job_id, i) for i in submission.array.indices()]

    def _targets_of(self, job_ids: Iterable[str] | None, errors: list | None,
                    active: bool = False) -> Iterable[Target]:
        """The targets named (an array: index None), or every job of this backend (with
        ``active``, of ``jobs/`` alone: what has not ended is there).

        Listing all, a job deleted meanwhile or run by the other backend is left
        out; a damaged one goes to ``errors`` (without it, it raises), so that it
        does not hide the others.  A generator: a listing reports each damaged
        job in its turn, header or task record.  Listing all, the jobs of
        ``jobs/`` come first and the history's after them (a job compacted
        while it was read is in one or the other: ``core.history``), not by ID.
        """
        if job_ids is not None:
            yield from self._named_targets([parse_job_id(text) for text in job_ids], True,
                                           errors)
            return
        live = self.store.job_ids()
        yield from self._named_targets([(job_id, None) for job_id in live], False, errors)
        if not active:
            for job_id, entry in sorted(self._ended_entries(set(live), errors)):
                yield EndedSubmission(self, entry), None

    def _ended_entries(self, live: set[int], errors: list | None):
        """(ID, entry) of this backend's jobs in the history, but those in ``live``."""
        for job_id, entry in self.store.history.entries(errors).items():
            if job_id not in live and self._ours(entry):
                yield job_id, entry

    def _named_targets(self, named, named_by_caller: bool, errors) -> Iterable[Target]:
        for job_number, index in named:
            try:
                submission = self._submission(job_number)
                submission.check_index(index)
            except JobNotFound:
                if named_by_caller:
                    raise
                continue
            except StorageError as error:
                if errors is None:
                    raise
                errors.append(error)
                continue
            yield submission, index

    def _fresh(self, target: Target) -> Target:
        """The target again, with nothing cached of what a read learned (a poll reads anew)."""
        if target[0].ended:
            return target  # it stays as it ended
        return self.SUBMISSION(self, target[0].header), target[1]

    def _one_task(self, job_id: str) -> Target:
        """The target of a single job or one task; a whole array is refused."""
        job_number, index = parse_job_id(job_id)
        submission = self._submission(job_number)
        if index is None and submission.is_array:
            raise InvalidArgument(f"job {job_id} is an array: name one task, {job_id}.I")
        submission.check_index(index)
        return submission, index

    # -- reading --------------------------------------------------------------------------

    def job_info(self, job_id: str) -> JobInfo:
        """JobInfo of one single job or array task (an array ID is refused: use job_infos)."""
        return self._read([self._one_task(job_id)])[0][1][0]

    def job_infos(self, job_ids: Iterable[str] | None = None,
                  errors: list[TrackerError] | None = None,
                  active: bool = False) -> list[JobInfo]:
        """JobInfo of the named jobs (an array stands for its tasks), or of all jobs, by ID
        (with ``active``, all that are in ``jobs/``: every job that has not ended, and
        those ended that are not compacted yet).

        With ``errors``, a job that cannot be read is reported there and skipped,
        so one damaged record does not hide the others; without it, it raises.
        """
        read = self._read(self._targets_of(job_ids, errors, active), errors)
        return [info for _, infos in _by_id(read, job_ids) for info in infos]

    def job_infos_json(self, job_ids: Iterable[str] | None = None,
                       errors: list[TrackerError] | None = None,
                       active: bool = False) -> list:
        """``job_infos`` as a JSON list, the way ``status --json`` prints it: its pieces,
        ASCII bytes or views of them, to be written one after the other (a newline ends
        the last).

        Listing all, the history's JobInfos are copied from its listing, or else from
        its lines as they are (``_all_json``), with no object made per job and nothing
        joined: ten thousand ended jobs cost little more than reading two files."""
        from .listing import SEPARATOR, followed

        if job_ids is not None:
            pieces = followed(part.encode() for _, part in self._encoded(
                self._targets_of(job_ids, errors), errors))
        else:
            live = self.store.job_ids()
            found = {target[0].job_id: part.encode() for target, part in self._encoded(
                self._named_targets([(job_id, None) for job_id in live], False, errors),
                errors)}
            pieces = followed(part for _, part in sorted(found.items())) if active else \
                self._all_json(found, set(live), errors)
        while pieces and not len(pieces[-1]):
            pieces.pop()
        if not pieces:
            return [b"[]\n"]
        pieces[-1] = pieces[-1][:-len(SEPARATOR)]
        return [b"[", *pieces, b"]\n"]

    def _all_json(self, found: dict[int, bytes], live: set[int], errors: list | None) -> list:
        """The JobInfos of ``found`` (``jobs/``'s, by ID) and of the history's jobs but
        ``live`` (in ``jobs/``, which wins) in ID order: pieces, each job's followed by
        ``", "``.  The history's come from its listing (``core.listing``) and the lines
        after it, or from every line; reading ``REFRESH_JOBS`` or more jobs makes a new
        listing.  Errors as a reading of every line gives them: a line that names no job
        once, then each damaged job's, by ID."""
        from .listing import REFRESH_JOBS, followed

        history = self.store.history
        listing, entries, nameless, read = history.listed_entries(self.BACKEND)
        read_parts, damaged = {}, {}
        for job_id, entry in entries.items():
            if self._ours(entry):
                try:
                    read_parts[job_id] = entry.encoded_infos()
                except StorageError as error:
                    damaged[job_id] = str(error)
        for job_id, message in listing.errors if listing is not None else ():
            if job_id is None:
                nameless = nameless or StorageError(message)
            elif job_id not in entries:  # (a later line of the job decides)
                damaged[job_id] = message
        if len(read_parts) + len(damaged) >= REFRESH_JOBS:
            parts = listing.parts() if listing is not None else {}
            for job_id in entries:  # a later line of the job, whatever it says, decides
                parts.pop(job_id, None)
            parts.update(read_parts)
            history.keep_listing(self.BACKEND, read, parts,
                                 [(None, str(nameless))] * (nameless is not None) +
                                 sorted(damaged.items()))
        reported = [StorageError(damaged[job_id]) for job_id in sorted(damaged)
                    if job_id not in live]
        if errors is not None:
            errors += [nameless] * (nameless is not None) + reported
        elif reported:
            raise reported[0]
        for job_id in live:
            read_parts.pop(job_id, None)
        if listing is not None:
            return listing.merged({**read_parts, **found}, live | entries.keys())
        return followed(part for _, part in sorted({**read_parts, **found}.items()))

    def _encoded(self, targets: list[Target], errors: list | None
                 ) -> Iterable[tuple[Target, str]]:
        """Each target with its JobInfos as JSON objects, comma-separated (a list's inside)."""
        return [(target, encode_infos(infos)) for target, infos in self._read(targets, errors)]

    def job_state(self, job_id: str) -> tuple[JobState, str | None]:
        """(state, sub_state) of a job or task; of an array, its state derived from its tasks."""
        infos = self.job_infos([job_id])
        if len(infos) == 1 and (infos[0].array_id is None or "." in job_id):
            return infos[0].state, infos[0].sub_state
        return array_state(infos), None

    def has_ended(self, job_id: str) -> bool:
        """Whether the job (every task of an array) has ended."""
        target, = self._targets_of([job_id], None)
        if not self._may_have_reached(target, ENDED_STATES):
            return False
        return all(info.state.ended for info in self._read([target], final=False)[0][1])

    def output_path(self, job_id: str, stream: str = "stdout") -> str:
        """Where the job's stdout (or stderr) went: its own path or the captured file."""
        import os

        submission, index = self._one_task(job_id)
        template = submission.template
        pattern = template.output_path if stream == "stdout" else template.error_path
        if pattern is None:
            name = captured_output_name(index, stream)
            if submission.ended:
                return self.store.ended_path(submission.job_id, name)
            return self.store.path(submission.job_id, name)
        path = expand_path(pattern, task_id_string(submission.job_id, index), index)
        return os.path.join(template.working_directory, path)

    def open_output(self, job_id: str, stream: str = "stdout"):
        """The job's stdout (or stderr) opened for reading, a binary file object.

        Output captured in the state dir is opened through the store: a link planted
        at its name is refused (StorageError naming it), never followed.  A path the
        user gave with -o/--stderr is the user's own, opened as it is.  Nothing there
        yet: FileNotFoundError; any other failure: OSError.
        """
        import os

        submission, index = self._one_task(job_id)
        template = submission.template
        if (template.output_path if stream == "stdout" else template.error_path) is None:
            name = captured_output_name(index, stream)
            try:
                fd = self.store.open_captured(submission.job_id, name, submission.ended)
            except FileNotFoundError:
                fd = None
                if not submission.ended:  # compacted meanwhile?
                    if self.store.at_home(submission.job_id):
                        if index is None or not self.has_ended(job_id):
                            raise
                    else:
                        try:
                            fd = self.store.open_captured(submission.job_id, name, True)
                        except FileNotFoundError:
                            pass
            if fd is None:
                import io

                # A compacted job's empty output leaves no file, and an ended task's
                # empty file may have become a later task's (README, "Design").
                return io.BytesIO()
            if index is None or submission.ended:
                return os.fdopen(fd, "rb")
            return _TaskOutput(fd, lambda: self.store.names_file(submission.job_id, name, fd))
        return open(self.output_path(job_id, stream), "rb")

    # -- waiting --------------------------------------------------------------------------

    def wait(self, job_id: str, timeout: float | None = None,
             states: Iterable[JobState] = ENDED_STATES) -> list[JobInfo]:
        """Block until the job (every task of an array) is in one of ``states``.

        Returns the JobInfos (one for a single job or task); raises WaitTimeout.
        """
        return self.wait_jobs([job_id], timeout=timeout, states=states)

    def wait_jobs(self, job_ids: list[str], timeout: float | None = None, any_job: bool = False,
                  states: Iterable[JobState] = ENDED_STATES) -> list[JobInfo]:
        """Block until all (or with ``any_job``, one) of the jobs reach ``states``.

        Returns the JobInfos of the jobs that got there, read once more in full (where
        the backend's polling reads are full, ``POLLS_IN_FULL``, what the last round read
        of the jobs it found there).  Each round reads the pending jobs in one
        ``_read``, skipping those that the backend knows cannot have got there; between
        rounds it sleeps in the kernel where the backend can tell when to wake, and
        otherwise backs off from the first to the second of ``WAIT_BACKOFF`` seconds.
        """
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout cannot be negative")
        states = frozenset(states)
        pending = dict(zip(job_ids, self._targets_of(job_ids, None)))
        deadline = None if timeout is None else time.monotonic() + timeout
        reached: dict[str, Target] = {}
        delay, longest = self.WAIT_BACKOFF
        while True:
            pending = {text: self._fresh(target) for text, target in pending.items()}
            asked = {text: target for text, target in pending.items()
                     if self._may_have_reached(target, states)}
            targets = list(asked.values())
            read_now = {}  # what this round read of the jobs it found there
            for text, (_, infos) in zip(asked, self._read(targets, final=False)):
                if all(info.state in states for info in infos):
                    reached[text] = pending.pop(text)
                    read_now[text] = infos
            if not pending or (any_job and reached):
                done = [text for text in job_ids if text in reached]
                if not (self.POLLS_IN_FULL and all(text in read_now for text in done)):
                    read_now = dict(zip(done, (infos for _, infos in self._read(
                        [reached[text] for text in done]))))
                return [info for text in done for info in read_now[text]]
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g} s waiting for "
                                  + ", ".join(pending))
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sleep_until_changed(list(pending.values()), states, left):
                time.sleep(delay if left is None else min(delay, left))
                delay = min(delay * 1.5, longest)

    def _sleep_until_changed(self, targets: list[Target], states: frozenset,
                             seconds: float | None) -> bool:
        """Sleep in the kernel until one of ``targets`` may have reached ``states``, at most
        ``seconds`` (None: for as long as it takes); False where the backend cannot, and the
        wait loop polls instead."""
        return False

    # -- control --------------------------------------------------------------------------

    def job_control(self, job_id: str, action: str, signum: int | None = None,
                    grace: float | None = None) -> None:
        """DRMAA2 job control: suspend, resume, terminate (``grace``: SIGTERM first, SIGKILL
        that many seconds later), hold, release; and ``signal`` (``signum`` to every
        process of the job, as Slurm's ``scancel --signal``).

        An array ID acts on every task that can take the action, and fails only
        if none could.  Returns once the job shows the effect (bounded by
        ``CONTROL_TIMEOUT``, after the grace); ``signal`` returns at once.
        """
        if action not in ALLOWED:
            raise InvalidArgument(f"unknown job control action {action!r}")
        if action not in self.ALLOWED:
            raise UnsupportedOperation(f"{action} is not supported by {self.DESCRIPTION}")
        job_number, index = parse_job_id(job_id)
        submission = self._submission(job_number)
        submission.check_index(index)
        infos = self._control_candidates(submission, index)
        fitting = [info for info in infos if info.state in self.ALLOWED[action]]
        if not fitting:
            if index is not None or not submission.is_array:
                raise InvalidState(f"job {job_id} is {infos[0].state.value}: cannot {action} it")
            raise InvalidState(f"array {job_number} has no task that can be {PAST[action]}")
        acted = self._act(submission, index, fitting, action, signum=signum, grace=grace)
        if action != "signal":
            self._await_effect(submission, acted, action, grace or 0.0)

    def _await_effect(self, submission: Submission, indices: list, action: str,
                      grace: float = 0.0) -> None:
        """Wait (bounded) until each task acted on shows what the action did."""
        deadline = time.monotonic() + self.CONTROL_TIMEOUT + grace
        remaining = list(indices)
        delay, longest = self.WAIT_BACKOFF
        while remaining:
            infos = [info for _, group in
                     self._read([self._fresh((submission, i)) for i in remaining], final=False)
                     for info in group]
            late = self._late(infos, action)
            for info in late:
                if info.state.ended and info.state not in WANTED[action]:
                    raise InvalidState(f"job {info.id} ended ({info.state.value}) before it "
                                       f"could {_VERB[action]}")
            remaining = [info.task_id for info in late]
            if not remaining:
                return
            if time.monotonic() >= deadline:
                ids = ", ".join(info.id for info in late)
                raise InvalidState(f"job {ids} did not {_VERB[action]} within "
                                   f"{self.CONTROL_TIMEOUT:g} s{self._hint(action)}")
            time.sleep(delay)
            delay = min(delay * 1.5, longest)

    def _hint(self, action: str) -> str:
        """What to add to "did not stop in time" (a backend knows the likely cause)."""
        return ""

    # -- deleting -------------------------------------------------------------------------

    def delete_job(self, job_id: str) -> None:
        """Remove an ended job (or a whole ended array) and the output ostracker captured."""
        job_number, index = parse_job_id(job_id)
        if index is not None:
            raise UnsupportedOperation(
                f"cannot delete one task ({job_id}): delete the array {job_number} as a whole")
        try:
            submission = self._submission(job_number)
        except StorageError:
            entry = self.store.history.entry(job_number)
            if entry is None or not entry.damaged():
                raise
            submission = None  # its line is damaged, but it is an ended job's: it goes
        if submission is None or submission.ended:
            self.store.history.remove({job_number})
            return
        with self.store.job_lock(job_number):  # the reaper compacts its job under this lock
            submission = self._submission(job_number)
            self._remove_if_ended(submission, self._read([(submission, None)])[0][1])

    def delete_finished(self, errors: list[TrackerError] | None = None,
                        older_than: float | None = None) -> list[str]:
        """Delete every job of this backend whose tasks have all ended (with ``older_than``,
        more than that many seconds ago); return their IDs.

        A job that cannot be read whole (a damaged record) is left, and reported in
        ``errors``; the others are deleted as if it were not there.
        """
        deleted = []
        errors = [] if errors is None else errors
        self.store.sweep_leftovers()  # what crashed submits and deletes left (README, Decisions)
        cutoff = None if older_than is None else time.time() - older_than
        compacted = set()
        for (submission, _), infos in self._read(self._targets_of(None, errors), errors):
            if submission.damaged is not None:
                continue
            if cutoff is not None and any(_ended_at(info) > cutoff for info in infos):
                continue
            if submission.ended:
                compacted.add(submission.job_id)
                continue
            try:
                with self.store.job_lock(submission.job_id):
                    self._remove_if_ended(submission, infos)
                deleted.append(str(submission.job_id))
            except InvalidState:
                pass
            except JobNotFound:  # compacted by its reaper meanwhile: its line goes
                if submission.job_id in self.store.history.entries():
                    compacted.add(submission.job_id)
        if compacted:
            self.store.history.remove(compacted)
        return sorted(deleted + [str(job_id) for job_id in compacted], key=int)

    def _remove_if_ended(self, submission: Submission, infos: list[JobInfo]) -> None:
        """Remove the submission (one read from its directory) unless one of its tasks
        has not ended: its directory, and a line that a reaper killed while it compacted
        the job left in the history."""
        for info in infos:
            if not info.state.ended:
                raise InvalidState(f"job {info.id} is {info.state.value}: "
                                   "only ended jobs can be deleted")
        self.store.remove_job_dir(submission.job_id)
        if submission.job_id in self.store.history.entries():
            self.store.history.remove({submission.job_id})


class _TaskOutput:
    """An array task's captured output, read while its reaper may give the file, once the
    task ended with it empty, to a later task (README, "Design", *Captured output*): what
    a read returns counts only if the file is still the task's afterwards; once it is
    not, the task wrote nothing and the reading is over."""

    def __init__(self, fd: int, still_its: Callable[[], bool]):
        self._fd = fd
        self._still_its = still_its
        self._over = False

    def read(self, size: int = -1) -> bytes:
        import os

        if size < 0:
            return b"".join(iter(lambda: self.read(1 << 16), b""))
        if self._over:
            return b""
        data = os.read(self._fd, size)
        if data and not self._still_its():
            self._over = True
            return b""
        return data

    def close(self) -> None:
        import os

        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _by_id(read: Iterable[tuple[Target, object]], job_ids) -> list:
    """A listing of all jobs, which reads ``jobs/`` before the history, put in ID order;
    jobs named are left in the order named."""
    read = list(read)
    return read if job_ids is not None else sorted(read, key=lambda item: item[0][0].job_id)


def _ended_at(info: JobInfo) -> float:
    """When the task ended (its finish time; one that never finished: when it was last
    known of), as a time.time(); now for one that has not ended."""
    if not info.state.ended:
        return time.time()
    moment = info.finish_time or info.dispatch_time or info.submission_time
    return moment.timestamp()


def array_state(infos: list[JobInfo]) -> JobState:
    """An array's own state, derived from its tasks' (README, "Jobs, IDs and states"):
    the first of this order that any task is in."""
    present = {info.state for info in infos}
    for state in (JobState.RUNNING, JobState.SUSPENDED, JobState.QUEUED, JobState.REQUEUED,
                  JobState.QUEUED_HELD, JobState.REQUEUED_HELD, JobState.FAILED):
        if state in present:
            return state
    if JobState.UNDETERMINED in present:
        return JobState.UNDETERMINED
    return JobState.DONE
