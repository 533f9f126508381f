"""The DRMAA2 JobTracker of the Slurm backend: the same methods, the jobs run by a cluster.

A submission is one record, as locally (``jobs/N/job.json``, with
``"backend": "slurm"`` and Slurm's job ID), and nothing more is written:
everything after ``sbatch`` is read from Slurm when asked, from ``squeue``
while slurmctld remembers the job and from ``sacct`` for what only accounting
keeps (MaxRSS, CPU times, jobs slurmctld has forgotten).  So ostracker and
Slurm never disagree, and there is no reaper to lose.  One exception: a job
stopped with ``scancel --signal=TSTP`` (where ``scontrol suspend`` is for
operators only) still reads RUNNING in Slurm, so ostracker notes it in
``stopped.json`` to report it Suspended.

IDs are ostracker's own series, shared with the local backend in one state
directory: a script keeps using ``N`` and ``N.I`` whichever backend runs
the job, and IDs are never reused even when a cluster's are.
"""

from __future__ import annotations

import signal

from ..core.base import Submission, TrackerBase
from ..core.errors import InvalidArgument, PermissionDenied, TrackerError
from ..core.models import ArraySpec, JobInfo, JobState, JobTemplate, complete_template, \
    task_id_string
from ..core.records import HEADER, SCHEMA_VERSION, STOPPED, Header
from . import commands as slurm
from .script import batch_script, sbatch_args

_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


class SlurmSubmission(Submission):
    """One Slurm submission (a single job or an array) as recorded in the state dir."""

    def __init__(self, tracker: "SlurmTracker", header: Header):
        super().__init__(tracker, header)
        self.slurm_id = header.slurm_job_id

    def slurm_task_id(self, index: int | None) -> str:
        return self.slurm_id if index is None else f"{self.slurm_id}_{index}"

    def stopped(self) -> set[str]:
        record = self.store.read(self.job_id, STOPPED)
        ids = record.get("slurm_ids") if record else None
        return {str(slurm_id) for slurm_id in ids} if isinstance(ids, list) else set()

    def info(self, index: int | None, job: slurm.SlurmJob | None, account: dict | None,
             stopped: set[str]) -> JobInfo:
        """The JobInfo of one task: Slurm's view of it, accounting where there is some."""
        slurm_task = self.slurm_task_id(index)
        extension = {"slurm_job_id": slurm_task}
        if job is None and account and "state" in account:
            state, sub_state = account["state"], account["sub_state"]
            exit_status, signal_name = account["exit_status"], account["terminating_signal"]
            start, end, nodes = account["start"], account["end"], account["nodes"]
        elif job is None:
            state, sub_state = JobState.UNDETERMINED, \
                f"Slurm no longer knows job {slurm_task} and keeps no accounting of it"
            exit_status = signal_name = start = end = nodes = None
        else:
            state, sub_state = job.state, job.sub_state
            exit_status, signal_name = job.exit_status, job.terminating_signal
            start, end, nodes = job.start_time, job.end_time, job.nodes
            if state is JobState.RUNNING and slurm_task in stopped:
                state, sub_state = JobState.SUSPENDED, f"{sub_state}; stopped by SIGTSTP"
        if state.ended and account:
            extension.update({key: account.get(key) for key in
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

    def _read(self, targets, errors=None, final=True):
        """Every target from one ``squeue``, and one ``sacct`` for the tasks slurmctld
        forgot and (when ``final``) those that ended.
        """
        targets = list(targets)
        if not targets:
            return []
        jobs = slurm.squeue()
        tasks = [[(submission, i, jobs.get(submission.slurm_task_id(i)))
                  for i in (submission.indices() if index is None else [index])]
                 for submission, index in targets]
        ended = [submission.slurm_task_id(i) for group in tasks for submission, i, job in group
                 if job is None or (final and job.ended)]
        accounts = slurm.sacct(ended) or {}
        stopped = {submission.job_id: submission.stopped() for submission, _ in targets}
        return [(target, [submission.info(i, job, accounts.get(submission.slurm_task_id(i)),
                                          stopped[submission.job_id])
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
        elif action in ("hold", "release"):
            slurm.run(["scontrol", action, listed])
        else:
            try:
                slurm.run(["scontrol", action, listed])
            except PermissionDenied:  # only operators may: signal the job's processes instead
                self._signal_stop(submission, action, targets)
        return [info.task_id for info in infos]

    def _signal_stop(self, submission: SlurmSubmission, action: str, targets: list[str]):
        """Suspend or resume by SIGTSTP or SIGCONT, noted in ``stopped.json`` (module doc)."""
        signal_name = "TSTP" if action == "suspend" else "CONT"
        with self.store.job_lock(submission.job_id):
            slurm.run(["scancel", "--full", f"--signal={signal_name}", ",".join(targets)])
            stopped = submission.stopped()
            stopped = stopped | set(targets) if action == "suspend" else stopped - set(targets)
            self.store.write(submission.job_id, STOPPED,
                             {"schema": SCHEMA_VERSION, "slurm_ids": sorted(stopped)})

    def _late(self, infos, action):
        """As the base's, but a cancelled job counts as terminated while COMPLETING: its
        processes are on their way out, which Slurm's KillWait may put off by 30 s.
        """
        return [info for info in super()._late(infos, action)
                if not (action == "terminate" and (info.sub_state or "").startswith("COMPLETING"))]
