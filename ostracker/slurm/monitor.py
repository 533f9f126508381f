"""The DRMAA2 MonitoringSession of a Slurm cluster: every job in it, and its nodes."""

from __future__ import annotations

import time

from ..core.errors import InvalidArgument
from ..core.models import brief
from . import commands as slurm


class SlurmMonitoringSession:
    """DRMAA2 MonitoringSession of a Slurm cluster: every job in it, and its nodes.

    The methods of the local ``MonitoringSession`` (``jobs``, ``machines``,
    ``parse_id``), without its options for local processes.
    """

    TABLE = "cluster"  # how ``output`` draws its jobs and machines
    NOT_FOUND = "no such Slurm job"
    OPTIONS = frozenset()  # what ``jobs`` takes beyond the filters: nothing

    @staticmethod
    def parse_id(text: str) -> str:
        """A Slurm job or array task ID (``4711``, ``4711_3``); anything else is a usage error."""
        number, sep, task = text.partition("_")
        if not (number.isascii() and number.isdigit() and
                (not sep or (task.isascii() and task.isdigit()))):
            raise InvalidArgument(f"{brief(text)!r} is not a Slurm job ID (N or N_I)")
        return text

    def jobs(self, slurm_ids: list[str] | None = None, *, user: str | None = None,
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
        """The cluster's nodes as DRMAA2 MachineInfos (``sinfo``, ``scontrol show node``)."""
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
