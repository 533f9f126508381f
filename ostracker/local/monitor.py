"""The DRMAA2 MonitoringSession of the OS process backend: every process as a job.

Any process on the machine, not only ostracker's, is shown as a DRMAA2 job
(README, "Monitoring"): its PID is the job ID, its start time the submission and
dispatch time, and what the OS knows of it (name, command line, working
directory, CPU, affinity, memory) goes in the ``extension_list``.

How it reads: one pass over the process table with ``psutil.process_iter``,
which reads each process inside ``oneshot()`` so that /proc/PID/stat is parsed
once for the many fields it holds.  A process that ends while it is read is
left out (psutil skips it); a field the OS refuses to show (another user's
working directory, AccessDenied) is None, never an error.

CPU usage is, by default, the average since the process started — CPU time
over wall clock, as drmaa2os reports it — which needs a single read.  With an
interval, every process is sampled over the *same* interval: one pass to take
the first reading of all, one sleep, one pass to take the second.

The only module that imports psutil: the reaper and every other command stay
clear of its import cost.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Iterable
from datetime import datetime, timezone

import psutil

from ..core.errors import InvalidArgument, JobNotFound
from ..core.models import brief, human_size, int_of_digits

# What one snapshot reads of each process; the owner is looked up from the real
# UID, as psutil's own username() does, but through a cache (see _owner_name).
# A process that ends while psutil reads it: NoSuchProcess, or, when its /proc entry is
# half gone (a readlink of cwd failing before the directory itself is), FileNotFoundError.
_GONE = (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError)
_ATTRS = ["name", "cmdline", "cwd", "uids", "create_time", "cpu_times", "memory_info",
          "cpu_affinity", "status"]
# States in which a tracked job's process group can still hold live processes.
_LIVE_JOB_STATES = ("Running", "Suspended")
_GLOB_CHARACTERS = frozenset("*?[")


def iso_time(epoch: float) -> str:
    """A POSIX time as ISO 8601 in UTC with microseconds, as job records spell times."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds")


class ProcessInfo:
    """DRMAA2 JobInfo of one OS process, with the OS's own view kept for the table.

    ``to_dict`` gives the JSON object of README, "Monitoring"; the attributes
    ``os_status`` (``running``, ``sleeping``, ``stopped``, ``zombie`` ...) and
    ``create_time`` (POSIX seconds) are what a table shows beside it.
    """

    __slots__ = ("pid", "os_status", "create_time", "wallclock_time", "job_owner", "uid",
                 "machine", "name", "argv", "working_directory", "cpu_usage", "cpu_affinity",
                 "rss", "vms", "job_id")

    def __init__(self, *, pid, os_status, create_time, wallclock_time, job_owner, uid, machine,
                 name, argv, working_directory, cpu_usage, cpu_affinity, rss, vms, job_id=None):
        self.pid = pid
        self.os_status = os_status
        self.create_time = create_time
        self.wallclock_time = wallclock_time
        self.job_owner = job_owner
        self.uid = uid
        self.machine = machine
        self.name = name
        self.argv = argv
        self.working_directory = working_directory
        self.cpu_usage = cpu_usage
        self.cpu_affinity = cpu_affinity
        self.rss = rss
        self.vms = vms
        self.job_id = job_id  # the ostracker job it belongs to, set by a --jobs listing

    def __repr__(self) -> str:
        return f"ProcessInfo(id={self.id!r}, name={self.name!r})"

    @property
    def id(self) -> str:
        return str(self.pid)

    @property
    def state(self) -> str:
        """Always ``Running``: a process the OS lists is, to DRMAA2, a running job."""
        return "Running"

    @property
    def dispatch_time(self) -> str | None:
        return None if self.create_time is None else iso_time(self.create_time)

    submission_time = dispatch_time

    @property
    def commandline(self) -> str | None:
        return None if self.argv is None else " ".join(self.argv)

    @property
    def memory_usage(self) -> str | None:
        return human_size(self.rss)

    def to_dict(self) -> dict:
        """The JSON object of README, "Monitoring" (``job_id`` only for a process of a job)."""
        started = self.dispatch_time
        extension = {
            "name": self.name,
            "commandline": self.commandline,
            "workingdir": self.working_directory,
            "cpu_usage": self.cpu_usage,
            "cpu_affinity": self.cpu_affinity,
            "memory_usage": self.memory_usage,
            "memory_usage_rss": self.rss,
            "memory_usage_vms": self.vms,
        }
        if self.job_id is not None:
            extension["job_id"] = self.job_id
        return {
            "id": self.id,
            "state": self.state,
            "submission_time": started,
            "dispatch_time": started,
            "wallclock_time": self.wallclock_time,
            "allocated_machines": [self.machine],
            "submission_machine": self.machine,
            "job_owner": self.job_owner,
            "extension_list": extension,
        }


class MonitoringSession:
    """DRMAA2 MonitoringSession: every OS process of this machine, seen as a job.

    Job IDs are PIDs as strings.  Nothing is kept between calls: each call
    reads the process table afresh.
    """

    TABLE = "processes"  # how ``output`` draws its jobs and machines
    NOT_FOUND = "process not found"
    OPTIONS = frozenset({"of_jobs", "interval"})  # what ``jobs`` takes beyond the filters

    def __init__(self):
        self.machine = os.uname().nodename
        self._owners: dict[int, str] = {}

    @staticmethod
    def parse_id(text: str) -> int:
        """A PID given on the command line; anything else is a usage error."""
        return parse_pid(text)

    # -- the DRMAA2 methods ----------------------------------------------------------

    def all_job_ids(self) -> list[str]:
        """The PID of every process on the machine, as job IDs (strings)."""
        return [str(pid) for pid in psutil.pids()]

    def job_info(self, pid: int | str) -> ProcessInfo:
        """The process ``pid`` as a job; JobNotFound when there is no such process."""
        return self.jobs([pid])[0]

    def machines(self) -> list[dict]:
        """This machine as DRMAA2 MachineInfo: the one machine of this backend."""
        return [machine_info(self.machine)]

    # -- listing -----------------------------------------------------------------------

    def jobs(self, pids: Iterable[int | str] | None = None, *, user: str | None = None,
             pattern: str | None = None, missing: list | None = None,
             of_jobs: list | None = None, interval: float | None = None
             ) -> list[ProcessInfo]:
        """The processes ``pids`` (all, sorted by PID, when None), filtered.

        ``user``: only processes of that user (a name, or a UID without a name).
        ``pattern``: only those whose name or command line holds it, or matches
        it as a glob when it has ``*``, ``?`` or ``[``.  ``of_jobs``: only the
        processes of these ostracker jobs (JobInfos), their ``job_id`` set (see
        ``job_groups``).  ``interval``: CPU usage over that many seconds from
        now, instead of since start.

        A named PID that is not there raises JobNotFound, or, with ``missing``,
        is added to that list and skipped.
        """
        wanted_uid = None if user is None else user_id(user)
        groups = None if of_jobs is None else job_groups(of_jobs)
        wanted = None if pids is None else list(dict.fromkeys(parse_pid(pid) for pid in pids))
        sampled = None if interval is None else self._first_cpu_reading(wanted, interval)
        attrs = _ATTRS if sampled is None else [*_ATTRS, "cpu_percent"]
        kept = []
        for process, fields in self._snapshot(wanted, attrs, missing, sampled or {}):
            if wanted_uid is not None and (fields["uids"] is None or
                                           fields["uids"].real != wanted_uid):
                continue
            if pattern is not None and not _matches(pattern, fields["name"], fields["cmdline"]):
                continue
            job_id = None
            if groups is not None:
                try:
                    job_id = groups.get(os.getpgid(process.pid))
                except ProcessLookupError:  # it ended since the snapshot read it
                    continue
                if job_id is None:
                    continue
            # A reading from the first pass counts only if it was of this very process.
            interval_cpu = fields["cpu_percent"] \
                if sampled is not None and sampled.get(process.pid) is process else None
            kept.append((process.pid, fields, job_id, interval_cpu))
        now = time.time()
        return [self._info(*entry, now) for entry in kept]

    def _first_cpu_reading(self, wanted: list[int] | None,
                           interval: float) -> dict[int, psutil.Process]:
        """Take the first CPU reading of every process, then sleep ``interval`` once.

        Returns the Process objects read, by PID: each keeps its first reading,
        and ``process_iter`` hands the same objects out again (psutil caches
        them, and replaces one whose PID was reused), so the second pass reads
        ``cpu_percent`` over the one common interval.
        """
        if wanted is None:
            candidates = psutil.process_iter()
        else:
            candidates = []
            for pid in wanted:
                try:
                    candidates.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass  # the snapshot reports it missing
        sampled = {}
        for process in candidates:
            try:
                process.cpu_percent(None)
            except psutil.Error:
                continue
            sampled[process.pid] = process
        time.sleep(interval)
        return sampled

    @staticmethod
    def _snapshot(wanted: list[int] | None, attrs: list[str], missing: list[int] | None,
                  sampled: dict[int, psutil.Process]):
        """(Process, fields) of each process: all of them, or those of ``wanted`` in order."""
        if wanted is None:
            for process in psutil.process_iter():
                try:
                    fields = process.as_dict(attrs, ad_value=None)
                except _GONE:
                    continue  # it ended while it was read
                yield process, fields
            return
        for pid in wanted:
            try:
                process = sampled.get(pid)
                if process is None or not process.is_running():
                    process = psutil.Process(pid)
                # as_dict reads inside oneshot(): one parse of /proc/PID/stat
                fields = process.as_dict(attrs, ad_value=None)
            except _GONE:
                if missing is None:
                    raise JobNotFound(f"process not found: {pid}") from None
                missing.append(pid)
                continue
            yield process, fields

    def _info(self, pid: int, fields: dict, job_id: str | None, interval_cpu: float | None,
              now: float) -> ProcessInfo:
        created = fields["create_time"]
        wallclock = None if created is None else max(0.0, now - created)
        times = fields["cpu_times"]
        if interval_cpu is not None:
            cpu = interval_cpu
        elif times is None or wallclock is None:
            cpu = None
        else:
            # Since start; also the right figure for a process born during an interval.
            cpu = (times.user + times.system) / wallclock * 100 if wallclock > 0 else 0.0
        uids = fields["uids"]
        memory = fields["memory_info"]
        affinity = fields["cpu_affinity"]
        return ProcessInfo(
            pid=pid,
            os_status=fields["status"],
            create_time=created,
            wallclock_time=wallclock,
            job_owner=None if uids is None else self._owner_name(uids.real),
            uid=None if uids is None else uids.real,
            machine=self.machine,
            name=fields["name"],
            argv=fields["cmdline"],
            working_directory=fields["cwd"],
            cpu_usage=None if cpu is None else round(cpu, 2),
            cpu_affinity=None if affinity is None else " ".join(map(str, affinity)),
            rss=None if memory is None else memory.rss,
            vms=None if memory is None else memory.vms,
            job_id=job_id,
        )

    def _owner_name(self, uid: int) -> str:
        """The user name of ``uid`` (the UID as text if it has none), looked up once."""
        name = self._owners.get(uid)
        if name is None:
            import pwd

            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._owners[uid] = name
        return name


# Linux PIDs are below 2**22 and UIDs below 2**32 - 1; a number given with more
# digits than these is checked by its length, before int() (which refuses more than
# 4,300 digits) and without asking the OS.
_PID_DIGITS, _UID_MAX = 18, 2 ** 32 - 2


def parse_pid(pid: int | str) -> int:
    """A PID given as int or decimal text; anything else is a usage error.

    A well-formed PID too long to be one (more than 18 digits) is JobNotFound,
    as any PID that names no process.
    """
    if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
        return pid
    if isinstance(pid, str) and pid.isascii() and pid.isdigit():
        if len(pid.lstrip("0")) > _PID_DIGITS:
            raise JobNotFound(f"process not found: {brief(pid)}")
        return int_of_digits(pid)
    shown = repr(brief(pid)) if isinstance(pid, str) else \
        repr(pid) if not isinstance(pid, int) or abs(pid) < 10 ** _PID_DIGITS else "(huge)"
    raise InvalidArgument(f"bad process ID {shown}: expected a number 0 or more")


def user_id(user: str) -> int:
    """The UID of a user name, or a UID given as a number; unknown names are usage errors.

    A number beyond what a UID can be is an unknown name too (``no such user``).
    """
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):  # ValueError: a name holding a NUL
        if user.isascii() and user.isdigit() and len(user.lstrip("0")) <= 10 and \
                int_of_digits(user) <= _UID_MAX:
            return int_of_digits(user)
        raise InvalidArgument(f"no such user: {brief(user)}") from None


def _matches(pattern: str, name: str | None, argv: list[str] | None) -> bool:
    """True if the name or command line holds ``pattern``, or matches it as a glob."""
    texts = [text for text in (name, None if argv is None else " ".join(argv)) if text]
    if _GLOB_CHARACTERS.intersection(pattern):
        return any(fnmatch.fnmatchcase(text, pattern) for text in texts)
    return any(pattern in text for text in texts)


def job_groups(job_infos) -> dict[int, str]:
    """Process group → job ID of the ostracker jobs among ``job_infos`` that can have processes.

    Each job leads a process group whose ID is the job's PID (README, "How a job is started"),
    so a process belongs to a job when its group ID is that PID.  Only Running
    and Suspended jobs count: an ended job's PID may name an unrelated process by now.
    """
    return {info.pid: info.id for info in job_infos
            if info.pid is not None and info.state.value in _LIVE_JOB_STATES}


def _socket_count() -> int:
    """Distinct ``physical id`` lines of /proc/cpuinfo; 1 where it has none (many ARM boards)."""
    try:
        with open("/proc/cpuinfo") as handle:
            ids = {line.partition(":")[2].strip() for line in handle
                   if line.startswith("physical id")}
    except OSError:
        return 1
    return max(1, len(ids))


def machine_info(name: str | None = None) -> dict:
    """This machine as DRMAA2 MachineInfo, in snake_case, memory in bytes.

    ``virt_memory`` is the swap space (what DRMAA2 implementations report as
    virtual memory); load, cores and uptime beyond DRMAA2's fields are in
    ``extension_list``.
    """
    import platform

    threads = psutil.cpu_count(logical=True) or 1
    cores = psutil.cpu_count(logical=False) or threads  # None where the OS will not say
    sockets = _socket_count()
    load = [round(value, 2) for value in os.getloadavg()]
    boot = psutil.boot_time()
    return {
        "name": name or os.uname().nodename,
        "available": True,
        "sockets": sockets,
        "cores_per_socket": max(1, cores // sockets),
        "threads_per_core": max(1, threads // cores),
        "load": load[0],
        "phys_memory": psutil.virtual_memory().total,
        "virt_memory": psutil.swap_memory().total,
        "machine_os": platform.system(),
        "machine_os_version": platform.release(),
        "machine_arch": platform.machine(),
        "extension_list": {
            "load_average": load,
            "cores": cores,
            "threads": threads,
            "boot_time": iso_time(boot),
            "uptime": round(time.time() - boot, 2),
        },
    }
