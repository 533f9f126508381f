"""The DRMAA2 JobTracker of the Slurm backend: the same methods, the jobs run by a cluster.

A submission is one record, as locally (``jobs/N/job.json``, with
``"backend": "slurm"`` and Slurm's job ID), and nothing more is written:
everything after ``sbatch`` is read from Slurm when asked, from ``squeue``
while slurmctld remembers the job and from ``sacct`` for what only accounting
keeps (MaxRSS, CPU times, jobs slurmctld has forgotten).  So ostracker and
Slurm never disagree, and there is no reaper to lose.  Two exceptions, where
Slurm does not tell what happened:

- a job stopped with ``scancel --signal=TSTP`` (where ``scontrol suspend`` is
  for operators only) still reads RUNNING in Slurm, so ostracker notes it in
  ``stopped.json`` to report it Suspended, with the run it was made for (its
  start time and restart count): once Slurm requeues the job and runs it
  again, the note no longer applies;
- an array's queued task cancelled alone is dropped by Slurm 22.05 from the
  array's pending tasks without a trace (neither ``squeue`` nor ``sacct``
  knows it ever after), so ostracker notes it in ``dropped.json`` to report
  it Failed, "CANCELLED, before it started"; what Slurm says of the task, if
  anything, wins over the note.

A job run with ``--retries`` or ``--on-end`` tells ostracker its attempt, and
a failed ``--on-end``, in its Slurm comment (``ostracker attempt=2 restarts=0
on_end=5``, written by its batch script with ``scontrol update``): ``squeue``
shows it from anywhere, where the state dir may not be shared with the node.

A job whose dependency can no longer be met stays pending in Slurm (unless
slurm.conf sets ``kill_invalid_depend``), with the reason
``DependencyNeverSatisfied``: ostracker reports it Failed, "dependency never
satisfied: ...", as the local backend does, and the first read that sees it
so cancels it, so that it does not wait in the cluster for ever.  Slurm keeps
the reason after the cancel, in ``squeue`` and in ``sacct``.

IDs are ostracker's own series, shared with the local backend in one state
directory: a script keeps using ``N`` and ``N.I`` whichever backend runs
the job, and IDs are never reused even when a cluster's are.
"""

from __future__ import annotations

import signal
import time

from ..core.base import Submission, TrackerBase
from ..core.errors import (InvalidArgument, InvalidState, JobNotFound, PermissionDenied,
                           StorageError, TrackerError, UnsupportedOperation)
from ..core.models import ArraySpec, JobInfo, JobState, JobTemplate, complete_template, \
    parse_job_id, task_id_string
from ..core.records import DROPPED, HEADER, SCHEMA_VERSION, STOPPED, Header, damaged
from ..core.schedule import Dependency, parse_dependency
from . import commands as slurm
from .script import batch_script, lifetime_args, sbatch_args, scheduling_args, slurm_signal

_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
_NOT_STARTED = frozenset({JobState.QUEUED, JobState.QUEUED_HELD})
_CANCELLED_QUEUED = "CANCELLED, before it started"  # as Slurm's own such jobs read
# The column of the ``queue`` table that a job in each state counts in.
_QUEUE_COLUMN = {JobState.RUNNING: "running", JobState.QUEUED: "queued",
                 JobState.REQUEUED: "queued", JobState.QUEUED_HELD: "held",
                 JobState.REQUEUED_HELD: "held"}
_FIXED_QUEUES = "its queues are Slurm partitions, which an administrator configures"


class SlurmSubmission(Submission):
    """One Slurm submission (a single job or an array) as recorded in the state dir."""

    def __init__(self, tracker: "SlurmTracker", header: Header):
        super().__init__(tracker, header)
        self.slurm_id = header.slurm_job_id
        # The run of each task that squeue showed in the last read, by Slurm ID:
        # {"start": epoch seconds, "restarts": N}, what a SIGTSTP note is tied to.
        self.runs: dict[str, dict] = {}

    def slurm_task_id(self, index: int | None) -> str:
        return self.slurm_id if index is None else f"{self.slurm_id}_{index}"

    def stopped(self) -> dict[str, dict | None]:
        """The tasks stopped by SIGTSTP (``stopped.json``): Slurm ID -> the run the stop
        was made for (None in a note written before runs were kept: any run).
        StorageError if that record is damaged: whether a task runs or is stopped
        is then unknown.
        """
        record = self.store.read(self.job_id, STOPPED)
        if record is None:
            return {}
        ids, runs = record.get("slurm_ids"), record.get("runs", {})
        if not isinstance(ids, list) or not all(isinstance(slurm_id, str) for slurm_id in ids) \
                or not isinstance(runs, dict) or not all(_is_run(run) for run in runs.values()):
            raise damaged(self.store.path(self.job_id, STOPPED))
        return {slurm_id: runs.get(slurm_id) for slurm_id in ids}

    def dropped(self) -> dict[str, int]:
        """The queued tasks cancelled alone (``dropped.json``): Slurm ID -> when (epoch
        seconds); StorageError if that record is damaged."""
        record = self.store.read(self.job_id, DROPPED)
        if record is None:
            return {}
        tasks = record.get("cancelled")
        if not isinstance(tasks, dict) or not all(
                isinstance(when, int) and not isinstance(when, bool) and 0 <= when < 1 << 40
                for when in tasks.values()):
            raise damaged(self.store.path(self.job_id, DROPPED))
        return tasks

    def info(self, index: int | None, job: slurm.SlurmJob | None, account: dict | None,
             stopped: dict[str, dict | None], dropped: dict[str, int]) -> JobInfo:
        """The JobInfo of one task: Slurm's view of it, accounting where there is some."""
        slurm_task = self.slurm_task_id(index)
        extension = {"slurm_job_id": slurm_task}
        attempt, on_end = _noted(job.comment, job.restarts) if job is not None else (1, None)
        if job is None and account and "state" in account and \
                not (account.get("shared") and slurm_task in dropped):
            state, sub_state, reason = account["state"], account["sub_state"], account["reason"]
            exit_status, signal_name = account["exit_status"], account["terminating_signal"]
            start, end, nodes = account["start"], account["end"], account["nodes"]
        elif job is None and slurm_task in dropped:
            state, sub_state = JobState.FAILED, _CANCELLED_QUEUED
            exit_status = signal_name = start = nodes = reason = None
            end = dropped[slurm_task]
        elif job is None:
            state, sub_state = JobState.UNDETERMINED, \
                f"Slurm no longer knows job {slurm_task} and keeps no accounting of it"
            exit_status = signal_name = start = end = nodes = reason = None
        else:
            state, sub_state, reason = job.state, job.sub_state, job.reason
            exit_status, signal_name = job.exit_status, job.terminating_signal
            start, end, nodes = job.start_time, job.end_time, job.nodes
            run = self.runs[slurm_task] = {"start": job.start_time, "restarts": job.restarts}
            if state is JobState.RUNNING and slurm_task in stopped and \
                    _same_run(stopped[slurm_task], run):  # not a run before a requeue
                state, sub_state = JobState.SUSPENDED, f"{sub_state}; stopped by SIGTSTP"
        if reason == slurm.NEVER_SATISFIED and start is None:  # pending, or cancelled for it
            state = JobState.FAILED
            sub_state = f"dependency never satisfied: {self.template.dependency}"
        if on_end and state.ended:
            failed = "--on-end failed: " + (f"killed by {slurm.signal_name(on_end - 128)}"
                                            if on_end > 128 else f"exit status {on_end}")
            sub_state = f"{sub_state}; {failed}" if sub_state else failed
        if state.ended:  # null where there is no accounting (yet)
            extension.update({key: (account or {}).get(key) for key in
                              ("ru_maxrss", "user_time_ms", "system_time_ms")})
        header = self.header
        return JobInfo(
            id=task_id_string(self.job_id, index),
            array_id=str(self.job_id) if self.is_array else None, task_id=index,
            job_name=self.template.job_name, state=state, sub_state=sub_state,
            exit_status=exit_status, terminating_signal=signal_name, pid=None,
            allocated_machines=slurm.expand_hostlist(nodes) if start else None,
            submission_machine=header.submission_machine, job_owner=header.job_owner,
            uid=header.uid, submission_time_text=header.submission_time,
            dispatch_time_text=slurm.iso_time(start), finish_time_text=slurm.iso_time(end),
            wallclock_seconds=float(end - start) if start and end else None,
            extension_list=extension, job_template=self.template, attempt=attempt)


class SlurmTracker(TrackerBase):
    """DRMAA2 JobTracker whose jobs Slurm runs: the methods and IDs of ``JobTracker``.

    ``add_job`` returns once ``sbatch`` accepted the job.  Hold and release
    work here; suspend and resume use ``scontrol`` where the user may
    (operators), else SIGTSTP and SIGCONT through ``scancel``.  Queues are
    Slurm's partitions: listed, never created, resized or deleted.
    """

    BACKEND = "slurm"
    DESCRIPTION = "the Slurm backend (--backend slurm)"
    SUBMISSION = SlurmSubmission
    CONTROL_TIMEOUT = 10.0  # slurmctld takes its time to show what a control did
    WAIT_BACKOFF = (0.02, 0.5)  # each read is a squeue
    POLL_INTERVAL = 1.0

    # -- submitting --------------------------------------------------------------------------

    def _submit(self, template: JobTemplate, array: ArraySpec | None) -> str:
        template = complete_template(template, array is not None)
        for key in template.job_environment:
            if not (key.isascii() and key.isidentifier()):
                raise InvalidArgument(f"environment variable name {key!r} cannot be passed "
                                      "to a Slurm job (letters, digits and _ only)")
        lifetime = lifetime_args(template, array is not None)  # its refusals cost no call
        scheduling = scheduling_args(template, self._slurm_dependency(template.dependency)) + \
            lifetime
        job_id = self.store.allocate_id()
        # From sbatch to the written record, an interrupt (Ctrl-C, a kill from a
        # script's timeout) would leave a Slurm job that ostracker knows nothing
        # of: it is held until the record exists, and sbatch (which inherits the
        # mask) finishes its submission.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            return self._sbatch(job_id, template, array, scheduling)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _sbatch(self, job_id: int, template: JobTemplate, array: ArraySpec | None,
                scheduling: list[str]) -> str:
        """Hand the job to sbatch and record it; nothing is left of it if either fails."""
        try:
            args = sbatch_args(self.store, job_id, template, array, scheduling)
            printed = slurm.run(args, stdin=batch_script(job_id, template, array is not None))
            slurm_id = printed.strip().split(";")[0]
            if not slurm_id.isdigit():
                raise TrackerError(f"sbatch printed no job ID: {printed.strip()!r}")
        except BaseException:
            self.store.remove_job_dir(job_id)  # nothing recorded: Slurm has no such job
            raise
        header = Header.new(job_id, self.BACKEND, template, array, slurm_job_id=slurm_id)
        try:
            self.store.write(job_id, HEADER, header.to_dict())
        except BaseException:
            # A job that ostracker cannot track must not run behind its back.
            try:
                slurm.run(["scancel", slurm_id])
            except TrackerError:
                pass  # the write's own error, below, is the one to report
            self.store.remove_job_dir(job_id)
            raise
        return str(job_id)

    def _slurm_dependency(self, text: str | None) -> str | None:
        """The template's dependency in Slurm's job IDs: job N (a single job, or an array
        whole) is its Slurm job ID, task N.I is ``A_I``; the same types and joiner.

        An ID that is no Slurm job of this state dir is refused before anything
        is submitted.  So is what Slurm would get wrong: it takes a job that
        slurmctld no longer knows (``MinJobAge`` after its end) for a dependency
        met, however the job ended (``_without_forgotten``).  A dependency that
        Slurm itself finds never met reads Failed (module doc), as locally.
        """
        if text is None:
            return None
        dependency = parse_dependency(text)
        targets = {}
        for job_id in dependency.job_ids():
            number, index = parse_job_id(job_id)
            try:
                submission = self._submission(number)
                submission.check_index(index)
            except JobNotFound as error:
                raise JobNotFound(f"dependency on {job_id}: {error}") from None
            targets[job_id] = (submission, index)
        dependency = self._without_forgotten(dependency, targets)
        return str(Dependency([(kind, [targets[job_id][0].slurm_task_id(targets[job_id][1])
                                       for job_id in ids])
                               for kind, ids in dependency.items], dependency.any))

    def _without_forgotten(self, dependency: Dependency, targets: dict) -> Dependency:
        """``dependency`` without the IDs it can never be met on whose jobs slurmctld has
        forgotten, which Slurm would take for met.

        Joined by ``,`` (all), one such ID makes the whole never met: InvalidState,
        nothing submitted.  Joined by ``?`` (any), it is left out: the others decide,
        and InvalidState only if none is left.  One read (a ``squeue``) and, only if
        some ID can never be met, one more ``squeue``.
        """
        read = self._read(list(targets.values()), final=False)
        states = {job_id: [info.state for info in infos]
                  for job_id, (_, infos) in zip(targets, read)}
        never = {}
        for kind, ids in dependency.items:
            for job_id in ids:
                verdict, why = Dependency([(kind, [job_id])], False).evaluate(states.get)
                if verdict == "never":
                    never[kind, job_id] = why
        if not never:
            return dependency
        known = slurm.squeue()
        forgotten = {}
        for (kind, job_id), why in never.items():
            submission, index = targets[job_id]
            if any(submission.slurm_task_id(i) not in known
                   for i in (submission.indices() if index is None else [index])):
                forgotten[kind, job_id] = (why, submission.slurm_id)
        items = [(kind, [job_id for job_id in ids if (kind, job_id) not in forgotten])
                 for kind, ids in dependency.items]
        items = [(kind, ids) for kind, ids in items if ids]
        if forgotten and (not dependency.any or not items):
            whys = ("?" if dependency.any else ",").join(why for why, _ in forgotten.values())
            jobs = sorted({slurm_id for _, slurm_id in forgotten.values()})
            raise InvalidState(f"dependency never satisfied: {whys}; not submitted, since "
                               f"Slurm, which no longer knows job{'s' * (len(jobs) > 1)} "
                               f"{', '.join(jobs)}, would take it for satisfied")
        return Dependency(items, dependency.any)

    # -- queues ----------------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        """The names of the partitions this user may see (one ``sinfo``)."""
        return list(slurm.partitions())

    def queues(self) -> list[dict]:
        """Every partition as a queue: name, slots (its CPUs), in_use (those allocated),
        and the counts of running, queued and held jobs (array tasks one by one).

        Those counts are of the user's own jobs in the partition, whoever submitted
        them (this state dir, another, sbatch itself), as ``squeue --me`` lists them:
        on a cluster, what waits ahead of one's job is the user's other jobs as much
        as this state dir's.  Other users' jobs show only in in_use.  One ``sinfo``
        and one ``squeue``.
        """
        sizes = slurm.partitions()
        counts = {name: dict.fromkeys(("running", "queued", "held"), 0) for name in sizes}
        for partitions, state, reason in slurm.active_jobs():
            column = _QUEUE_COLUMN.get(state)
            if column is None or reason == slurm.NEVER_SATISFIED:  # Failed, to ostracker
                continue
            for name in partitions:
                if name in counts:
                    counts[name][column] += 1
        return [{"name": name, "slots": slots, "in_use": in_use, **counts[name]}
                for name, (slots, in_use) in sizes.items()]

    def queue(self, name: str) -> dict:
        """One partition as ``queues`` gives it; JobNotFound if there is no such one."""
        for queue in self.queues():
            if queue["name"] == name:
                return queue
        raise JobNotFound(f"no such queue: {name}")

    def set_queue(self, name: str, slots: int) -> None:
        """Refused: a partition's size is slurm.conf's."""
        raise UnsupportedOperation(f"the Slurm backend cannot create or resize queues: "
                                   f"{_FIXED_QUEUES}")

    def delete_queue(self, name: str) -> None:
        """Refused: a partition is slurm.conf's."""
        raise UnsupportedOperation(f"the Slurm backend cannot delete queues: {_FIXED_QUEUES}")

    # -- reading -------------------------------------------------------------------------

    def _read(self, targets_given, errors=None, final=True):
        """Every target from one ``squeue``, and one ``sacct`` for the tasks slurmctld
        forgot and (when ``final``) those that ended.
        """
        targets = []
        notes = {}
        for target in targets_given:
            submission = target[0]
            try:
                notes[submission.job_id] = (submission.stopped(), submission.dropped())
            except StorageError as error:  # that job reports it; the others are read
                if errors is None:
                    raise
                errors.append(error)
                submission.damaged = error
                continue
            targets.append(target)
        if not targets:
            return []
        jobs = slurm.squeue()
        tasks = [[(submission, i, jobs.get(submission.slurm_task_id(i)))
                  for i in (submission.indices() if index is None else [index])]
                 for submission, index in targets]
        # Accounting for the tasks squeue no longer lists (but, when polling, those
        # noted as dropped) and, when final, those that ended.  An array with tasks
        # squeue no longer lists is asked of whole (``-j A``): only that lists its
        # tasks that never started.
        asked = [(submission, i, job) for group in tasks for submission, i, job in group
                 if (job is None and (final or submission.slurm_task_id(i) not in
                                      notes[submission.job_id][1]))
                 or (final and job is not None and job.ended)]
        whole = {submission.slurm_id for submission, _, job in asked
                 if job is None and submission.is_array}
        accounts = slurm.sacct(list(dict.fromkeys(
            submission.slurm_id if submission.slurm_id in whole else submission.slurm_task_id(i)
            for submission, i, _ in asked))) or {}
        self._cancel_never_satisfied(tasks)
        return [(target, [submission.info(i, job, accounts.get(submission.slurm_task_id(i)),
                                          *notes[submission.job_id])
                          for submission, i, job in group])
                for target, group in zip(targets, tasks)]

    @staticmethod
    def _cancel_never_satisfied(tasks):
        """scancel the jobs that squeue shows pending for a dependency never to be met
        (module doc): an array whole, since none of its tasks could start.  Best effort:
        a read reports them Failed all the same, and the next one tries again."""
        doomed = sorted({submission.slurm_id for group in tasks for submission, _, job in group
                         if job is not None and not job.ended
                         and job.reason == slurm.NEVER_SATISFIED})
        if doomed:
            try:
                slurm.run(["scancel", ",".join(doomed)])
            except TrackerError:
                pass

    # -- control ---------------------------------------------------------------------------

    def _act(self, submission, index, infos, action, signum=None, grace=None):
        """One Slurm command for all the tasks: an array's pending ones are one job to Slurm.

        ``signal``: ``scancel --full --signal=SIG``, to every process of each task (as
        ``--full`` does, the batch shell's children too).  ``terminate`` with a grace:
        SIGTERM to the running tasks in the same way, up to ``grace`` seconds for them to
        end (``_end_gracefully``), then ``scancel`` for what is left, as without a grace.
        """
        if action == "signal":
            return self._signal(infos, signum)
        if action in ("suspend", "resume"):
            targets = [info.extension_list["slurm_job_id"] for info in infos]
        else:  # the whole array at once, its pending tasks included
            targets = [submission.slurm_task_id(index)]
        listed = ",".join(targets)
        if action == "terminate":
            if grace and self._end_gracefully(infos, grace):
                return [info.task_id for info in infos]
            try:
                slurm.run(["scancel", listed])
            except InvalidState:
                if not grace:
                    raise
                # it ended in its grace, after the last look: as asked
            if index is not None and submission.is_array and infos[0].state in _NOT_STARTED:
                self._note_dropped(submission, targets[0])
        elif action in ("hold", "release"):
            slurm.run(["scontrol", action, listed])
        else:
            try:
                slurm.run(["scontrol", action, listed])
            except PermissionDenied:  # only operators may: signal the job's processes instead
                self._signal_stop(submission, action, targets)
        return [info.task_id for info in infos]

    def _signal(self, infos, signum: int) -> list:
        """``scancel --full --signal=SIG`` to the tasks (each running or suspended).

        With several tasks, one that has just ended is no failure of the others; a
        lone task that has is (Slurm's refusal, in one line).
        """
        targets = [info.extension_list["slurm_job_id"] for info in infos]
        try:
            slurm.run(["scancel", "--full", f"--signal={slurm_signal(signum)}",
                       ",".join(targets)])
        except (InvalidState, JobNotFound):
            if len(targets) == 1:
                raise
        return [info.task_id for info in infos]

    GRACE_POLL = 0.5  # seconds between two looks (squeue) at tasks given SIGTERM

    def _end_gracefully(self, infos, grace: float) -> bool:
        """SIGTERM to the running tasks (``scancel --full --signal=TERM``: every process of
        each), then wait up to ``grace`` seconds for them to end.  True if every task
        acted on was running and none is left; False if some task still has to be
        cancelled (queued, suspended: Slurm cannot signal one, or still running).
        """
        running = [info.extension_list["slurm_job_id"] for info in infos
                   if info.state is JobState.RUNNING]
        if not running:
            return False
        try:
            slurm.run(["scancel", "--full", "--signal=TERM", ",".join(running)])
        except (InvalidState, JobNotFound):
            if len(running) == 1:
                return False  # it ended meanwhile, or cannot take a signal: cancel it
        deadline = time.monotonic() + grace
        while True:
            jobs = slurm.squeue()
            left = [slurm_id for slurm_id in running
                    if jobs.get(slurm_id) is not None and not jobs[slurm_id].ended]
            if not left or time.monotonic() >= deadline:
                return not left and len(running) == len(infos)
            time.sleep(min(self.GRACE_POLL, max(0.0, deadline - time.monotonic())))

    def _note_dropped(self, submission: SlurmSubmission, slurm_task: str):
        """Note in ``dropped.json`` a queued task of an array cancelled alone (module doc)."""
        with self.store.job_lock(submission.job_id):
            dropped = submission.dropped()
            dropped[slurm_task] = int(time.time())
            self.store.write(submission.job_id, DROPPED,
                             {"schema": SCHEMA_VERSION, "cancelled": dropped})

    def _signal_stop(self, submission: SlurmSubmission, action: str, targets: list[str]):
        """Suspend or resume by SIGTSTP or SIGCONT, noted in ``stopped.json`` with the run
        each stop was made for (module doc)."""
        signal_name = "TSTP" if action == "suspend" else "CONT"
        with self.store.job_lock(submission.job_id):
            slurm.run(["scancel", "--full", f"--signal={signal_name}", ",".join(targets)])
            stopped = submission.stopped()
            for slurm_task in targets:
                if action == "suspend":
                    stopped[slurm_task] = submission.runs.get(slurm_task)
                else:
                    stopped.pop(slurm_task, None)
            self.store.write(submission.job_id, STOPPED, {
                "schema": SCHEMA_VERSION, "slurm_ids": sorted(stopped),
                "runs": {slurm_task: run for slurm_task, run in sorted(stopped.items())
                         if run is not None}})

    def _late(self, infos, action):
        """As the base's, but a cancelled job counts as terminated while COMPLETING: its
        processes are on their way out, which Slurm's KillWait may put off by 30 s.
        """
        return [info for info in super()._late(infos, action)
                if not (action == "terminate" and (info.sub_state or "").startswith("COMPLETING"))]


def _noted(comment: str | None, restarts: int) -> tuple[int, int | None]:
    """(attempt, --on-end's exit status or None) from a job's Slurm comment, as its batch
    script notes them (``ostracker attempt=2 restarts=0 on_end=5``); a note of an
    earlier run of a requeued job (another restart count), or none: (1, None).
    """
    words = (comment or "").split()
    if words[:1] != ["ostracker"]:
        return 1, None
    fields = dict(word.partition("=")[::2] for word in words[1:])
    numbers = {key: int(value) for key, value in fields.items()
               if value.isascii() and value.isdigit() and len(value) < 10}
    if numbers.get("restarts") != (restarts or 0):
        return 1, None
    return max(1, numbers.get("attempt", 1)), numbers.get("on_end") or None


def _is_run(run) -> bool:
    """Whether ``run`` (from ``stopped.json``) is {"start": epoch seconds or null,
    "restarts": N}."""
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63
    return isinstance(run, dict) and "start" in run and \
        (run["start"] is None or count(run["start"])) and count(run.get("restarts"))


def _same_run(note: dict | None, run: dict) -> bool:
    """Whether a SIGTSTP note was made for ``run`` (a note without one: for any run)."""
    return note is None or (note["start"], note["restarts"]) == (run["start"], run["restarts"])
