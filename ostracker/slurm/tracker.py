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

IDs are ostracker's own series, shared with the local backend in one state
directory: a script keeps using ``N`` and ``N.I`` whichever backend runs
the job, and IDs are never reused even when a cluster's are.
"""

from __future__ import annotations

import signal
import time

from ..core.base import Submission, TrackerBase
from ..core.errors import InvalidArgument, PermissionDenied, StorageError, TrackerError
from ..core.models import ArraySpec, JobInfo, JobState, JobTemplate, complete_template, \
    task_id_string
from ..core.records import DROPPED, HEADER, SCHEMA_VERSION, STOPPED, Header, damaged
from . import commands as slurm
from .script import batch_script, sbatch_args

_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
_NOT_STARTED = frozenset({JobState.QUEUED, JobState.QUEUED_HELD})
_CANCELLED_QUEUED = "CANCELLED, before it started"  # as Slurm's own such jobs read


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
        if job is None and account and "state" in account and \
                not (account.get("shared") and slurm_task in dropped):
            state, sub_state = account["state"], account["sub_state"]
            exit_status, signal_name = account["exit_status"], account["terminating_signal"]
            start, end, nodes = account["start"], account["end"], account["nodes"]
        elif job is None and slurm_task in dropped:
            state, sub_state = JobState.FAILED, _CANCELLED_QUEUED
            exit_status = signal_name = start = nodes = None
            end = dropped[slurm_task]
        elif job is None:
            state, sub_state = JobState.UNDETERMINED, \
                f"Slurm no longer knows job {slurm_task} and keeps no accounting of it"
            exit_status = signal_name = start = end = nodes = None
        else:
            state, sub_state = job.state, job.sub_state
            exit_status, signal_name = job.exit_status, job.terminating_signal
            start, end, nodes = job.start_time, job.end_time, job.nodes
            run = self.runs[slurm_task] = {"start": job.start_time, "restarts": job.restarts}
            if state is JobState.RUNNING and slurm_task in stopped and \
                    _same_run(stopped[slurm_task], run):  # not a run before a requeue
                state, sub_state = JobState.SUSPENDED, f"{sub_state}; stopped by SIGTSTP"
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
            extension_list=extension, job_template=self.template)


class SlurmTracker(TrackerBase):
    """DRMAA2 JobTracker whose jobs Slurm runs: the methods and IDs of ``JobTracker``.

    ``add_job`` returns once ``sbatch`` accepted the job.  Hold and release
    work here; suspend and resume use ``scontrol`` where the user may
    (operators), else SIGTSTP and SIGCONT through ``scancel``.
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
        job_id = self.store.allocate_id()
        # From sbatch to the written record, an interrupt (Ctrl-C, a kill from a
        # script's timeout) would leave a Slurm job that ostracker knows nothing
        # of: it is held until the record exists, and sbatch (which inherits the
        # mask) finishes its submission.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            return self._sbatch(job_id, template, array)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _sbatch(self, job_id: int, template: JobTemplate, array: ArraySpec | None) -> str:
        """Hand the job to sbatch and record it; nothing is left of it if either fails."""
        try:
            args = sbatch_args(self.store, job_id, template, array)
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
        return [(target, [submission.info(i, job, accounts.get(submission.slurm_task_id(i)),
                                          *notes[submission.job_id])
                          for submission, i, job in group])
                for target, group in zip(targets, tasks)]

    # -- control ---------------------------------------------------------------------------

    def _act(self, submission, index, infos, action):
        """One Slurm command for all the tasks: an array's pending ones are one job to Slurm."""
        if action in ("suspend", "resume"):
            targets = [info.extension_list["slurm_job_id"] for info in infos]
        else:  # the whole array at once, its pending tasks included
            targets = [submission.slurm_task_id(index)]
        listed = ",".join(targets)
        if action == "terminate":
            slurm.run(["scancel", listed])
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
