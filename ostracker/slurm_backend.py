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

import os
import shlex
import signal
import time
from collections.abc import Iterable

from . import slurm
from .errors import (InvalidArgument, InvalidState, JobNotFound, PermissionDenied, StorageError,
                     TrackerError)
from .models import (ENDED_STATES, SCHEMA_VERSION, ArraySpec, JobInfo, JobState, JobTemplate,
                     encode_infos, timestamp)
from .reaper import (captured_output_name, expand_path, is_per_task, substitute_codes,
                     task_id_string)
from .store import HEADER, Store
from .tracker import (SubmissionBase, TrackerBase, array_state, backend_job_ids, complete_template,
                      owner_name, parse_job_id)

BACKEND = "slurm"
STOPPED = "stopped.json"  # Slurm IDs this user stopped with SIGTSTP (see the module doc)
CONTROL_TIMEOUT = 10.0  # seconds Slurm may take to show what a control command did
_ALLOWED = {
    "suspend": {JobState.RUNNING},
    "resume": {JobState.SUSPENDED},
    "terminate": {JobState.QUEUED, JobState.QUEUED_HELD, JobState.RUNNING, JobState.SUSPENDED,
                  JobState.REQUEUED, JobState.REQUEUED_HELD},
    "hold": {JobState.QUEUED, JobState.REQUEUED},
    "release": {JobState.QUEUED_HELD, JobState.REQUEUED_HELD},
}
_WANTED = {  # what the job shows once the action took effect (or it ended meanwhile)
    "suspend": {JobState.SUSPENDED, *ENDED_STATES},
    "resume": {JobState.RUNNING, *ENDED_STATES},
    "terminate": ENDED_STATES,
    "hold": {JobState.QUEUED_HELD, JobState.REQUEUED_HELD, JobState.RUNNING, *ENDED_STATES},
    "release": {JobState.QUEUED, JobState.REQUEUED, JobState.RUNNING, *ENDED_STATES},
}
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
_PAST = {"suspend": "suspended", "resume": "resumed", "terminate": "terminated",
         "hold": "held", "release": "released"}


# -- JobTemplate -> sbatch ----------------------------------------------------------------

def slurm_path(pattern: str, job_id: int, is_array: bool) -> str:
    """An ostracker path pattern in sbatch's spelling.

    ``%j`` is ostracker's ID (``7``, or ``7.%a`` for a task), ``%a`` the task
    index, ``%%`` a percent sign; any other ``%`` is escaped so that Slurm
    leaves it alone.  In a path holding a backslash Slurm expands nothing and
    takes ``\\`` for one backslash, so such a path is expanded here, which works
    unless it must differ per task.
    """
    if "\\" in pattern:
        if is_array and is_per_task(pattern):
            raise InvalidArgument(f"Slurm cannot name each task's file in a path with a "
                                  f"backslash: {pattern}")
        return expand_path(pattern, str(job_id), None).replace("\\", "\\\\")
    return substitute_codes(pattern, {"j": f"{job_id}.%a" if is_array else str(job_id),
                                      "a": "%a" if is_array else "", "%": "%%"}, unknown="%%")


def shell_word(word: str) -> str:
    """``word`` quoted for sh, any character but NUL; a carriage return is spelled
    ``$(printf '\\r')``, since sbatch refuses a script holding CR LF.
    """
    return shlex.quote(word).replace("\r", "'\"$(printf '\\r')\"'")


def batch_script(job_id: int, template: JobTemplate, is_array: bool) -> bytes:
    """The job as a shell script: the exact words, quoted, and the job's environment.

    The environment is exported here, not through ``--export=ALL,K=V``, which
    cannot carry a comma in a value.  JOB_ID and TASK_ID come last, as locally.
    """
    lines = ["#!/bin/sh", f"# ostracker job {job_id}, written for sbatch"]
    lines += [f"export {key}={shell_word(value)}"
              for key, value in template.job_environment.items()]
    if is_array:
        lines.append(f'export TASK_ID="$SLURM_ARRAY_TASK_ID" JOB_ID="{job_id}.'
                     '$SLURM_ARRAY_TASK_ID"')
    else:
        lines += [f"export JOB_ID={job_id}", "unset TASK_ID"]
    words = [template.remote_command, *template.args]
    # bash's exec takes a first word "-x" for an option, dash's knows no "--": env does.
    run = "exec env -- " if template.remote_command.startswith("-") else "exec "
    lines.append(run + " ".join(shell_word(word) for word in words))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def sbatch_args(store: Store, job_id: int, template: JobTemplate,
                array: ArraySpec | None) -> list[str]:
    is_array = array is not None
    job_dir = store.job_dir(job_id).replace("%", "%%")

    def output(pattern, stream):
        if pattern is None:  # captured in the job's directory, as locally; %a: the index
            pattern = f"{job_dir}/{captured_output_name('%a' if is_array else None, stream)}"
        return slurm_path(pattern, job_id, is_array)

    args = ["sbatch", "--parsable", "-J", template.job_name, "-D", template.working_directory,
            "--export=ALL", "-o", output(template.output_path, "stdout"),
            "-e", output(template.error_path, "stderr")]
    if template.input_path is not None:
        args += ["-i", slurm_path(template.input_path, job_id, is_array)]
    if is_array:
        spec = f"{array.begin}-{array.end}:{array.step}"
        args.append(f"--array={spec}%{array.max_parallel}" if array.max_parallel else
                    f"--array={spec}")
    return args


# -- one submission -----------------------------------------------------------------------

class _Submission(SubmissionBase):
    """One Slurm submission (a single job or an array) as recorded in the state dir."""

    def __init__(self, store: Store, job_id: int):
        self.store = store
        self.job_id = job_id
        header = store.read(job_id, HEADER)
        if header is None:
            raise JobNotFound(f"no such job: {job_id}")
        if header.get("backend", "local") != BACKEND:
            raise JobNotFound(f"no such job: {job_id} with the Slurm backend "
                              "(it is a local job: drop --backend slurm)")
        try:
            self.array = ArraySpec.from_dict(header["array"]) if header["array"] else None
            self.template = JobTemplate.from_dict(header["template"])
            self.slurm_id = str(header["slurm_job_id"])
            for key in ("submission_time", "submission_machine", "job_owner", "uid"):
                header[key]
        except (KeyError, TypeError, ValueError):
            raise StorageError(f"damaged record {store.path(job_id, HEADER)}") from None
        self.header = header

    def slurm_task_id(self, index: int | None) -> str:
        return self.slurm_id if index is None else f"{self.slurm_id}_{index}"

    def stopped(self) -> set[str]:
        record = self.store.read(self.job_id, STOPPED)
        return set(record.get("slurm_ids") or ()) if record else set()

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
            submission_machine=header["submission_machine"], job_owner=header["job_owner"],
            uid=header["uid"], submission_time_text=header["submission_time"],
            dispatch_time_text=slurm.iso_time(start), finish_time_text=slurm.iso_time(end),
            wallclock_seconds=float(end - start) if start and end else None,
            extension_list=extension, job_template=self.template)


class SlurmTracker(TrackerBase):
    """DRMAA2 JobTracker whose jobs Slurm runs: the methods and IDs of ``JobTracker``.

    ``add_job`` returns once ``sbatch`` accepted the job.  Hold and release
    work here; suspend and resume use ``scontrol`` where the user may
    (operators), else SIGTSTP and SIGCONT through ``scancel``.
    """

    POLL_INTERVAL = 1.0  # each has_ended is a squeue

    def __init__(self, state_dir: str | None = None):
        self.store = Store(state_dir)

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
        uid = os.getuid()
        header = {
            "schema": SCHEMA_VERSION, "id": str(job_id), "backend": BACKEND,
            "slurm_job_id": slurm_id, "array": array.to_dict() if array else None,
            "template": template.to_dict(), "submission_time": timestamp(),
            "submission_machine": os.uname().nodename, "job_owner": owner_name(uid),
            "uid": uid,
        }
        try:
            self.store.write(job_id, HEADER, header)
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

    def _submission(self, job_id: int) -> _Submission:
        return _Submission(self.store, job_id)

    def list_jobs(self) -> list[str]:
        """IDs of every Slurm job in the DB: single jobs and arrays (not their tasks)."""
        return [str(job_id) for job_id in backend_job_ids(self.store, BACKEND)]

    def _targets(self, job_ids: Iterable[str] | None, errors: list | None):
        """(submission, index) pairs named (an array: index None), or all of this backend."""
        return list(self._named(job_ids, errors))

    def _read(self, targets, accounting: bool = True) -> list[list[JobInfo]]:
        """The JobInfos of each target, from one ``squeue`` and one ``sacct``: for
        the tasks slurmctld forgot, and (unless ``accounting`` is off) those that ended.
        """
        if not targets:
            return []
        jobs = slurm.squeue()
        tasks = [[(submission, i, jobs.get(submission.slurm_task_id(i)))
                  for i in (submission.indices() if index is None else [index])]
                 for submission, index in targets]
        ended = [submission.slurm_task_id(i) for group in tasks for submission, i, job in group
                 if job is None or (accounting and job.ended)]
        accounts = slurm.sacct(ended) or {}
        stopped = {submission.job_id: submission.stopped() for submission, _ in targets}
        return [[submission.info(i, job, accounts.get(submission.slurm_task_id(i)),
                                 stopped[submission.job_id])
                 for submission, i, job in group] for group in tasks]

    def _task_info(self, submission: _Submission, index: int | None) -> JobInfo:
        return self._read([(submission, index)])[0][0]

    def _infos_of(self, submission: _Submission) -> list[JobInfo]:
        return self._read([(submission, None)])[0]

    def job_state(self, job_id: str) -> tuple[JobState, str | None]:
        """(state, sub_state) of a job or task; of an array, its state derived from its tasks."""
        infos = self.job_infos([job_id])
        if len(infos) == 1 and (infos[0].array_id is None or "." in job_id):
            return infos[0].state, infos[0].sub_state
        return array_state(infos), None

    def job_infos(self, job_ids: Iterable[str] | None = None,
                  errors: list[TrackerError] | None = None) -> list[JobInfo]:
        """JobInfo of the named jobs (an array stands for its tasks), or of all Slurm jobs."""
        return [info for group in self._read(self._targets(job_ids, errors)) for info in group]

    def job_infos_json(self, job_ids: Iterable[str] | None = None,
                       errors: list[TrackerError] | None = None) -> str:
        """``job_infos`` as a JSON list, the way ``status --json`` prints it."""
        groups = self._read(self._targets(job_ids, errors))
        return "[" + ", ".join(encode_infos(group) for group in groups if group) + "]"

    # -- waiting ---------------------------------------------------------------------------

    def wait_jobs(self, job_ids: list[str], timeout: float | None = None, any_job: bool = False,
                  states: Iterable[JobState] = ENDED_STATES) -> list[JobInfo]:
        """Block until all (or with ``any_job``, one) of the jobs reach ``states``.

        Each poll is one ``squeue`` for all of them, with a backoff to half a
        second; accounting is read once, for the jobs returned.
        """
        from .errors import WaitTimeout

        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout cannot be negative")
        states = frozenset(states)
        targets = self._targets(job_ids, None)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            groups = self._read(targets, accounting=False)
            reached = [all(info.state in states for info in group) for group in groups]
            if all(reached) or (any_job and any(reached)):
                done = [target for target, ok in zip(targets, reached) if ok]
                return [info for group in self._read(done) for info in group]
            if deadline is not None and time.monotonic() >= deadline:
                pending = ", ".join(text for text, done in zip(job_ids, reached) if not done)
                raise WaitTimeout(f"timed out after {timeout:g} s waiting for {pending}")
            pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 1.5, 0.5)

    def has_ended(self, job_id: str) -> bool:
        """Whether the job (every task of an array) has ended."""
        infos = self._read(self._targets([job_id], None), accounting=False)[0]
        return all(info.state.ended for info in infos)

    # -- control ---------------------------------------------------------------------------

    def job_control(self, job_id: str, action: str) -> None:
        """DRMAA2 job control through Slurm: suspend, resume, terminate, hold, release.

        An array ID acts on every task that can take the action, and fails only
        if none could.  Returns once Slurm shows the effect.
        """
        if action not in _ALLOWED:
            raise InvalidArgument(f"unknown job control action {action!r}")
        number, index = parse_job_id(job_id)
        submission = self._submission(number)
        submission.check_index(index)
        infos = self._read([(submission, index)])[0]
        fitting = [info for info in infos if info.state in _ALLOWED[action]]
        if not fitting:
            if index is not None or not submission.is_array:
                raise InvalidState(f"job {job_id} is {infos[0].state.value}: cannot {action} it")
            raise InvalidState(f"array {number} has no task that can be {_PAST[action]}")
        if action in ("suspend", "resume"):
            targets = [info.extension_list["slurm_job_id"] for info in fitting]
        else:  # the whole array at once, its pending tasks included
            targets = [submission.slurm_task_id(index)]
        self._act(submission, action, targets)
        self._await_effect(submission, index, {info.id for info in fitting}, action)

    def _act(self, submission: _Submission, action: str, targets: list[str]) -> None:
        listed = ",".join(targets)
        if action == "terminate":
            slurm.run(["scancel", listed])
        elif action in ("hold", "release"):
            slurm.run(["scontrol", action, listed])
        else:
            try:
                slurm.run(["scontrol", action, listed])
                return
            except PermissionDenied:
                pass  # only operators may: signal the job's processes instead
            signal_name = "TSTP" if action == "suspend" else "CONT"
            with self.store.job_lock(submission.job_id):
                slurm.run(["scancel", "--full", f"--signal={signal_name}", listed])
                stopped = submission.stopped()
                stopped = stopped | set(targets) if action == "suspend" else stopped - set(targets)
                self.store.write(submission.job_id, STOPPED,
                                 {"schema": SCHEMA_VERSION, "slurm_ids": sorted(stopped)})

    def _await_effect(self, submission: _Submission, index: int | None, task_ids: set[str],
                      action: str) -> None:
        """Wait (bounded) until Slurm shows what the action did to each task it acted on."""
        deadline = time.monotonic() + CONTROL_TIMEOUT
        delay = 0.01
        while True:
            infos = self._read([(submission, index)], accounting=False)[0]
            # A cancelled job is COMPLETING (Running) until its processes are gone,
            # which Slurm's KillWait may put off by 30 s: terminated all the same.
            late = [info.id for info in infos
                    if info.id in task_ids and info.state not in _WANTED[action]
                    and not (action == "terminate" and info.sub_state.startswith("COMPLETING"))]
            if not late:
                return
            if time.monotonic() >= deadline:
                raise InvalidState(f"job {', '.join(late)} was not {_PAST[action]} within "
                                   f"{CONTROL_TIMEOUT:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    # -- deleting ------------------------------------------------------------------------

    def delete_finished(self) -> list[str]:
        """Delete every Slurm job whose tasks have all ended; return their IDs."""
        targets = self._targets(None, [])
        deleted = []
        for (submission, _), infos in zip(targets, self._read(targets)):
            try:
                with self.store.job_lock(submission.job_id):
                    self._remove_if_ended(submission, infos)
                deleted.append(str(submission.job_id))
            except (InvalidState, JobNotFound):
                pass
        return deleted

class SlurmMonitoringSession:
    """DRMAA2 MonitoringSession of a Slurm cluster: every job in it, and its nodes."""

    def jobs(self, slurm_ids: list[str] | None = None, user: str | None = None,
             pattern: str | None = None, missing: list | None = None) -> list[dict]:
        """The cluster's jobs (all users'), as JobInfo-like dicts keyed by Slurm's IDs."""
        from fnmatch import fnmatchcase

        jobs = slurm.squeue(everyone=True)
        found = []
        for slurm_id, job in jobs.items():
            if slurm_ids is not None and slurm_id not in slurm_ids and \
                    slurm_id.partition("_")[0] not in slurm_ids:
                continue
            if user is not None and user not in (job.user, str(job.uid)):
                continue
            if pattern is not None and not (
                    fnmatchcase(job.name or "", pattern) if any(c in pattern for c in "*?[")
                    else pattern in (job.name or "")):
                continue
            found.append(_monitored(slurm_id, job))
        if missing is not None and slurm_ids is not None:
            listed = {info["id"] for info in found} | \
                {info["id"].partition("_")[0] for info in found}
            missing.extend(sid for sid in slurm_ids if sid not in listed)
        return found

    def machines(self) -> list[dict]:
        """The cluster's nodes as DRMAA2 MachineInfos (``sinfo``)."""
        return slurm.nodes()


def _monitored(slurm_id: str, job: slurm.SlurmJob) -> dict:
    start, end = job.start_time, job.end_time
    wallclock = None
    if start:
        wallclock = float((end or time.time()) - start)
    return {
        "id": slurm_id, "job_name": job.name, "state": job.state.value,
        "sub_state": job.sub_state, "exit_status": job.exit_status,
        "terminating_signal": job.terminating_signal,
        "allocated_machines": slurm.expand_hostlist(job.nodes) if start else None,
        "job_owner": job.user, "uid": job.uid,
        "submission_time": slurm.iso_time(job.submit_time),
        "dispatch_time": slurm.iso_time(start), "finish_time": slurm.iso_time(end),
        "wallclock_time": wallclock, "extension_list": job.extra,
    }
