"""Slurm's own commands, run and read: the only module that knows their spellings.

The Slurm backend drives a cluster through the commands its users know
(``sbatch``, ``squeue``, ``scontrol``, ``scancel``, ``sacct``, ``sinfo``), not
through a library: they are on every submit host, they carry the cluster's
configuration and authentication, and what they print is stable enough to
read.  This module runs them and turns what they print into plain values; it
knows nothing of ostracker's records.

Where versions differ it reads both spellings: ``squeue --json`` gives plain
numbers in Slurm 22.05 (times in epoch seconds, ``exit_code`` a wait status)
and ``{"set", "number"}`` objects from 23.02 on.  Exit codes come from
``squeue`` and ``sacct -P``, never from ``sacct --json`` (wrong in 22.05).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from ..core.errors import (InvalidState, JobNotFound, PermissionDenied, SlurmUnavailable,
                           TrackerError)
from ..core.models import JobState

# Slurm's base job states, as DRMAA2 states (held and requeued refined in job_state).
STATE_OF = {
    "PENDING": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED,
    "COMPLETED": JobState.DONE,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "REQUEUED": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED_HELD,
    "SPECIAL_EXIT": JobState.REQUEUED_HELD,
    "REQUEUE_CRON": JobState.REQUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED_HELD,
    "POWER_UP_NODE": JobState.QUEUED,
}
# State flags that say more than the base state, in the order in which 22.05's
# job_state_string picks one to print instead of it; 23.02+ lists them beside it.
FLAG_ORDER = ("COMPLETING", "CONFIGURING", "RESIZING", "RESV_DEL_HOLD", "REQUEUE_FED",
              "REQUEUE_HOLD", "REQUEUED", "SPECIAL_EXIT", "STOPPED", "REVOKED", "SIGNALING",
              "STAGE_OUT")
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
# The reason of a pending job whose dependency can no longer be met: Slurm leaves it
# pending (unless slurm.conf says kill_invalid_depend), and keeps the reason once it
# is cancelled, in squeue and in sacct.
NEVER_SATISFIED = "DependencyNeverSatisfied"
SIG_OOM = 125  # Slurm's "signal" for a job the out-of-memory killer ended (really SIGKILL)
# Slurm's commands print what these ask, whatever the user's own settings say:
# times as ISO 8601, and array task lists whole (by default cut after 64 bytes).
_ENVIRONMENT = {"SLURM_TIME_FORMAT": "standard", "SLURM_BITSTR_LEN": "0"}
COMMAND_TIMEOUT = 60.0  # seconds; Slurm's own retries against a dead slurmctld take ~10


def run(args: list[str], stdin: bytes | None = None) -> str:
    """Run one Slurm command and return its stdout; its error as one line otherwise.

    The error is Slurm's own line on stderr (its first ``error:`` line, else
    its last), classified: an unknown job is JobNotFound, a job in the wrong
    state InvalidState, a missing command or controller SlurmUnavailable.
    """
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, timeout=COMMAND_TIMEOUT,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              env={**os.environ, **_ENVIRONMENT})
    except FileNotFoundError:
        raise SlurmUnavailable(f"Slurm is not reachable: {args[0]} not found "
                               "(is Slurm's client installed and on PATH?)") from None
    except OSError as exc:
        raise SlurmUnavailable(f"Slurm is not reachable: cannot run {args[0]}: "
                               f"{exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"Slurm is not reachable: {args[0]} did not answer "
                               f"within {COMMAND_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise _classify(args[0], done.stderr.decode(errors="replace"))
    return done.stdout.decode(errors="surrogateescape")


def _classify(command: str, stderr: str) -> TrackerError:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "fatal:" in line]
    message = (errors or lines or [f"{command} failed"])[0 if errors else -1]
    for prefix in (f"{command}: error: ", f"{command}: fatal: ", "error: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    text = f"{command}: {message}"
    if "Unable to contact slurm controller" in message or "Could not establish a configuration" \
            in message or "Zero Bytes were transmitted" in message:
        return SlurmUnavailable(f"Slurm is not reachable: {text}")
    # 22.05's scontrol suspend/resume of a job it does not know says only this line.
    if "Invalid job id" in message or "Unexpected message received for job" in message:
        return JobNotFound(text)
    if "Access/permission denied" in message:
        return PermissionDenied(text)
    if any(words in message for words in (
            "no longer pending", "is pending execution", "already completing or completed",
            "can not be altered now", "not suspended", "not running", "Job is not pending",
            "Job has already finished",
            "Requested operation is presently disabled")):
        return InvalidState(text)
    return TrackerError(text)


# -- squeue --------------------------------------------------------------------------------

def _number(value):
    """A 22.05 plain number or a 23.02+ ``{"set", "infinite", "number"}`` object."""
    if isinstance(value, dict):
        return value.get("number") if value.get("set", True) and not value.get("infinite") \
            else None
    return value


def _base_state(value) -> str:
    """The one state name to go by: 22.05's string, or from 23.02+'s list of the
    base state and its flags, the flag 22.05 would have printed, else the base.
    """
    if isinstance(value, list):
        flags = [name for name in FLAG_ORDER if name in value]
        return flags[0] if flags else next((name for name in value if name in STATE_OF),
                                           value[0] if value else "")
    return value or ""


def _wait_status(value) -> tuple[int | None, str | None]:
    """(exit status, signal name) from squeue's exit_code (a wait status, or 23.02+'s object)."""
    if isinstance(value, dict):
        code = _number(value.get("return_code"))
        sig = _number((value.get("signal") or {}).get("id"))
        if sig:
            return None, signal_name(sig)
        return code, None
    value = _number(value)
    if value is None:
        return None, None
    if os.WIFSIGNALED(value):
        return None, signal_name(os.WTERMSIG(value))
    return os.WEXITSTATUS(value), None


def _failed_exit(state: JobState, exit_status: int | None) -> int | None:
    """No exit status 0 for a Failed job (cancelled, node failure): ``wait`` must not say 0."""
    return None if state is JobState.FAILED and exit_status == 0 else exit_status


def signal_name(number: int) -> str:
    if number == SIG_OOM:
        return "SIGKILL"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def iso_time(epoch: int | float | None) -> str | None:
    """Epoch seconds as ostracker's ISO 8601 (UTC, microseconds); 0 and None are unknown."""
    if not epoch:
        return None
    seconds = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + \
        f".{int(round((epoch - seconds) * 1e6)):06d}+00:00"


class SlurmJob:
    """One job or array task as Slurm reports it, in DRMAA2's terms."""

    __slots__ = ("slurm_id", "state", "sub_state", "reason", "exit_status",
                 "terminating_signal", "submit_time", "start_time", "end_time", "nodes", "name",
                 "user", "uid", "restarts", "comment", "extra")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    @property
    def ended(self) -> bool:
        return self.state.ended


def job_state(slurm_state: str, reason: str | None, held: bool, restarts: int
              ) -> tuple[JobState, str]:
    """DRMAA2 state and sub_state (Slurm's own state, and its reason when it gives one).

    A state this table does not know is taken for Queued, never for an end:
    Slurm's every end state is known, and a wrong end would let ``wait``
    return and ``delete`` remove a job that still runs.
    """
    state = STATE_OF.get(slurm_state, JobState.QUEUED)
    if state is JobState.QUEUED and restarts:
        state = JobState.REQUEUED
    if held and state is JobState.QUEUED:
        state = JobState.QUEUED_HELD
    elif held and state is JobState.REQUEUED:
        state = JobState.REQUEUED_HELD
    sub_state = slurm_state if reason in (None, "", "None") else f"{slurm_state} ({reason})"
    return state, sub_state


def _from_squeue(data: dict) -> SlurmJob:
    slurm_state = _base_state(data.get("job_state"))
    reason = data.get("state_reason")
    held = reason in HELD_REASONS or _number(data.get("priority")) == 0
    restarts = _number(data.get("restart_cnt")) or 0
    state, sub_state = job_state(slurm_state, reason, held, restarts)
    # A job that ended without ever getting a node (cancelled while pending) has
    # Slurm's cancel time as start and end, and exit code 0: none of it happened.
    started = state not in (JobState.QUEUED, JobState.QUEUED_HELD, JobState.REQUEUED,
                            JobState.REQUEUED_HELD) and bool(data.get("nodes"))
    if state.ended and not started:
        sub_state = f"{slurm_state}, before it started"
    exit_status, sig = _wait_status(data.get("exit_code")) if state.ended and started \
        else (None, None)
    exit_status = _failed_exit(state, exit_status)
    task = _number(data.get("array_task_id"))
    array_job = _number(data.get("array_job_id")) or 0
    slurm_id = f"{array_job}_{task}" if array_job and task is not None else str(data["job_id"])
    return SlurmJob(
        slurm_id=slurm_id, state=state, sub_state=sub_state, reason=reason,
        exit_status=exit_status, terminating_signal=sig,
        submit_time=_number(data.get("submit_time")),
        start_time=_number(data.get("start_time")) if started else None,
        end_time=_number(data.get("end_time")) if state.ended else None,
        nodes=data.get("nodes") or None, name=data.get("name"), user=data.get("user_name"),
        uid=_number(data.get("user_id")), restarts=restarts,
        comment=data.get("comment") or None,
        extra={"partition": data.get("partition") or None,
               "command": data.get("command") or None,
               "working_directory": data.get("current_working_directory") or None})


def squeue(everyone: bool = False) -> dict[str, SlurmJob]:
    """Every job slurmctld still remembers (this user's, or ``everyone``'s), by Slurm ID.

    Array tasks are keyed ``A_I``; tasks that have not started yet share one
    record, which is filed under each of their IDs.  Ended jobs stay known for
    ``MinJobAge`` seconds.  (22.05 ignores squeue's filters with ``--json``:
    they are given for later versions, which honour them.)
    """
    import json

    args = ["squeue", "--json", "--states=all"]
    if not everyone:
        args.append("--me")
    try:
        data = json.loads(run(args))
    except ValueError:
        raise SlurmUnavailable("squeue --json printed something that is not JSON") from None
    errors = [e for e in data.get("errors") or [] if e.get("error_number", -1) != 0 or
              e.get("description")]
    if errors:
        error = errors[0]
        raise SlurmUnavailable("Slurm is not reachable: squeue: "
                               f"{error.get('description') or error.get('error')} "
                               f"({error.get('source', 'squeue')})")
    own_uid = None if everyone else os.getuid()
    jobs: dict[str, SlurmJob] = {}
    for record in data.get("jobs") or []:
        if own_uid is not None and _number(record.get("user_id")) not in (None, own_uid):
            continue
        job = _from_squeue(record)
        pending = record.get("array_task_string") or ""
        array_job = _number(record.get("array_job_id")) or 0
        if pending and array_job:
            for index in _indices_of(pending, "squeue"):
                jobs[f"{array_job}_{index}"] = job
        else:
            jobs[job.slurm_id] = job
    return jobs


def active_jobs() -> list[tuple[list[str], JobState, str]]:
    """This user's jobs that have not ended, each array task on its own line (``-r``):
    (the partitions it may run in, its DRMAA2 state, Slurm's reason).

    Text, not ``--json``: 22.05 honours ``--me`` only there, and a pending job
    submitted to several partitions lists them all (``gpu,debug``).
    """
    jobs = []
    for line in run(["squeue", "--me", "-h", "-r", "-o", "%P|%T|%r|%Q"]).splitlines():
        fields = line.split("|")
        if len(fields) != 4:
            continue
        partitions, slurm_state, reason, priority = (field.strip() for field in fields)
        held = reason in HELD_REASONS or priority == "0"
        jobs.append((partitions.split(","), job_state(slurm_state, reason, held, 0)[0], reason))
    return jobs


def task_indices(text: str) -> list[int]:
    """Indices of Slurm's array task string: ``"1,3-9:2%4"`` -> [1, 3, 5, 7, 9]."""
    indices = []
    for part in text.split("%")[0].split(","):
        if not part:
            continue
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        indices.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return indices


def _indices_of(text: str, command: str) -> list[int]:
    try:
        return task_indices(text)
    except ValueError:
        raise TrackerError(f"{command}: cannot read the array task list {text!r}") from None


def expand_hostlist(text: str | None) -> list[str] | None:
    """Slurm's compressed host list as names: ``"n[1-2]-ib,login"`` -> n1-ib n2-ib login."""
    if not text:
        return None
    names, depth, start = [], 0, 0
    for at, char in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.extend(_expand_host(text[start:at]))
            start = at + 1
    return [name for name in names if name]


def _expand_host(pattern: str) -> list[str]:
    """One host pattern, its bracket groups expanded left to right (``r[1-2]n[1-2]``)."""
    opening = pattern.find("[")
    closing = pattern.find("]", opening)
    if opening < 0 or closing < 0:
        return [pattern]
    prefix, ranges, rest = pattern[:opening], pattern[opening + 1:closing], pattern[closing + 1:]
    names = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        for number in range(int(first), int(last or first) + 1):
            names.extend(_expand_host(f"{prefix}{number:0{len(first)}d}{rest}"))
    return names


# -- sacct ---------------------------------------------------------------------------------

SACCT_FIELDS = ("JobID", "State", "ExitCode", "Start", "End", "NodeList", "MaxRSS",
                "UserCPU", "SystemCPU", "Reason")


def sacct(slurm_ids: list[str]) -> dict[str, dict] | None:
    """Accounting of ended jobs by Slurm ID, or None when the cluster keeps none.

    For each job: state, exit status or signal, times and Slurm's reason from
    the job's own line (a cancelled job's signal from its batch step, where the
    job line says 0:0), MaxRSS (KiB) from its steps, CPU times (ms) summed over
    them.

    An array's tasks that never started share one line, ``9_[3-5%1]``, which
    22.05 prints only for ``-j 9`` (never for ``-j 9_3``), and which may still
    list tasks that ran since (22.05 printed ``6_[5,7,9%3]`` where 5 and 7 had
    run): a task's own line wins over it, wherever either stands.  An account
    taken from that shared line has ``"shared": True``.
    Missing accounting is not an error: the caller leaves those fields null.
    """
    if not slurm_ids:
        return {}
    try:
        text = run(["sacct", "-P", "-n", "--format=" + ",".join(SACCT_FIELDS),
                    "-j", ",".join(slurm_ids)])
    except TrackerError:
        return None  # "accounting storage is disabled", or no Slurm at all
    accounts: dict[str, dict] = {}
    shared: dict[str, dict] = {}  # from an array's A_[...] line: where a task has no line
    for line in text.splitlines():
        fields = dict(zip(SACCT_FIELDS, line.split("|")))
        if len(fields) != len(SACCT_FIELDS):
            continue
        job, _, step = fields["JobID"].partition(".")
        if step:
            account = accounts.setdefault(job, {})
            rss = _kibibytes(fields["MaxRSS"])
            if rss is not None:
                account["ru_maxrss"] = max(rss, account.get("ru_maxrss") or 0)
            if step == "batch" and account.get("state") is JobState.FAILED and \
                    account.get("terminating_signal") is None:
                sig_name = _sacct_exit(fields["ExitCode"])[1]
                if sig_name:
                    account.update(exit_status=None, terminating_signal=sig_name)
            continue
        account = _sacct_job(fields)
        array, _, pending = job.partition("_[")
        if pending:
            for index in _indices_of(pending.rstrip("]"), "sacct"):
                shared[f"{array}_{index}"] = dict(account, shared=True)
        else:
            accounts.setdefault(job, {}).update(account)
    for slurm_id, account in shared.items():
        if "state" not in accounts.get(slurm_id, {}):
            accounts[slurm_id] = account
    return accounts


def _sacct_exit(text: str) -> tuple[int | None, str | None]:
    """sacct's ``CODE:SIGNAL`` as (exit status, signal name)."""
    code, _, sig = text.partition(":")
    if sig.isdigit() and sig != "0":
        return None, signal_name(int(sig))
    return (int(code) if code.isdigit() else None), None


def _sacct_job(fields: dict) -> dict:
    slurm_state = fields["State"].split()[0] if fields["State"] else ""  # "CANCELLED by 0"
    state, sub_state = job_state(slurm_state, None, False, 0)
    started = fields["NodeList"] not in ("", "None assigned")
    exit_status, sig_name = _sacct_exit(fields["ExitCode"]) if started else (None, None)
    exit_status = _failed_exit(state, exit_status)
    if state.ended and not started:
        sub_state = f"{slurm_state}, before it started"
    return {"state": state, "sub_state": sub_state, "reason": fields["Reason"] or None,
            "exit_status": exit_status, "terminating_signal": sig_name,
            "start": _sacct_time(fields["Start"]) if started else None,
            "end": _sacct_time(fields["End"]) if state.ended else None,
            "nodes": fields["NodeList"] if started else None,
            "user_time_ms": _milliseconds(fields["UserCPU"]),
            "system_time_ms": _milliseconds(fields["SystemCPU"])}


def _sacct_time(text: str) -> float | None:
    """sacct's local time ``2026-11-24T04:18:55`` as epoch seconds (None if unknown)."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # Unknown, None
        return None


def _kibibytes(text: str) -> int | None:
    """sacct's ``MaxRSS`` (``1234K``, ``5M``, plain bytes) in KiB."""
    if not text:
        return None
    units = {"K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}
    try:
        if text[-1] in units:
            return round(float(text[:-1]) * units[text[-1]])
        return round(float(text) / 1024)
    except ValueError:
        return None


def _milliseconds(text: str) -> int | None:
    """sacct's CPU time ``[D-][HH:]MM:SS[.mmm]`` in milliseconds."""
    if not text:
        return None
    days, _, clock = text.rpartition("-")
    try:
        seconds = 0.0
        for part in clock.split(":"):
            seconds = seconds * 60 + float(part)
        return round((int(days or 0) * 86400 + seconds) * 1000)
    except ValueError:
        return None


# -- sinfo ---------------------------------------------------------------------------------

# (sinfo -O has no Arch or OS in 22.05: it warns, prints them empty and exits 0.)
SINFO_FIELDS = ("NodeList", "StateLong", "CPUs", "Sockets", "Cores", "Threads", "Memory",
                "CPUsLoad", "FreeMem", "Partition")
# Where the next field of a ``scontrol -o show node`` line begins: `` Key=``.
_NEXT_KEY = re.compile(r" +(?=[A-Za-z][A-Za-z0-9_]*=)")


def nodes() -> list[dict]:
    """The cluster's nodes as DRMAA2 MachineInfos (one per node; sizes in bytes), in the
    shape of the local backend's: a key that Slurm does not report is null.

    ``sinfo`` gives the sizes, the load, the state and the partitions (without
    the default partition's ``*``), ``scontrol -o show node`` the architecture and OS.
    """
    text = run(["sinfo", "-h", "-N", "-O", ",".join(f"{name}:|" for name in SINFO_FIELDS)])
    systems = node_systems()
    machines: dict[str, dict] = {}
    for line in text.splitlines():
        values = [value.strip() for value in line.split("|")]
        fields = dict(zip(SINFO_FIELDS, values))
        name = fields["NodeList"]
        partition = fields["Partition"].rstrip("*")  # "debug*": the default partition
        if name in machines:  # one line per partition the node is in
            machines[name]["extension_list"]["partitions"].append(partition)
            continue
        arch, os_text = systems.get(name, (None, None))
        system, _, release = (os_text or "").partition(" ")
        machines[name] = {  # the keys and order of the local backend's machine_info
            "name": name,
            "available": fields["StateLong"].rstrip("*~#$@+").split("+")[0]
            in ("idle", "mixed", "allocated", "completing"),
            "sockets": _int(fields["Sockets"]),
            "cores_per_socket": _int(fields["Cores"]),
            "threads_per_core": _int(fields["Threads"]),
            "load": _float(fields["CPUsLoad"]),
            "phys_memory": _mebibytes(fields["Memory"]),
            "virt_memory": None,  # sinfo does not tell a node's swap
            "machine_os": system or None,
            "machine_os_version": release.split(" ")[0] or None,
            "machine_arch": arch,
            "extension_list": {"state": fields["StateLong"], "cpus": _int(fields["CPUs"]),
                               "free_memory": _mebibytes(fields["FreeMem"]),
                               "partitions": [partition]},
        }
    return list(machines.values())


def partitions() -> dict[str, tuple[int | None, int | None]]:
    """The partitions this user may see, in sinfo's order: name -> (CPUs in all, CPUs
    allocated), None where sinfo gives no number.

    sinfo prints a line per group of a partition's nodes (``A/I/O/T``: allocated,
    idle, other, total); a partition's CPUs are the sum of its lines.
    """
    found: dict[str, tuple[int | None, int | None]] = {}
    for line in run(["sinfo", "-h", "-O", "PartitionName:|,CPUsState:|"]).splitlines():
        name, _, cpus = (part.strip() for part in line.partition("|"))
        if not name:
            continue
        counts = cpus.rstrip("|").split("/")
        total, allocated = (_int(counts[3]), _int(counts[0])) if len(counts) == 4 else \
            (None, None)
        before = found.get(name, (0, 0))
        found[name] = (_sum(before[0], total), _sum(before[1], allocated))
    return found


def _sum(first: int | None, second: int | None) -> int | None:
    return None if first is None or second is None else first + second


def node_systems() -> dict[str, tuple[str | None, str | None]]:
    """Each node's (Arch, OS) from ``scontrol -o show node``: one line per node,
    ``NodeName=n1 Arch=x86_64 ... OS=Linux 6.1.0-18-amd64 #1 SMP ... RealMemory=...``.

    OS holds spaces: it runs up to the next `` Key=``.  A node that never
    registered has neither (or ``(null)``): None.
    """
    systems = {}
    for line in run(["scontrol", "-o", "show", "node"]).splitlines():
        fields = {}
        for item in _NEXT_KEY.split(line.strip()):
            key, _, value = item.partition("=")
            fields.setdefault(key, value.strip())
        name = fields.get("NodeName")
        if name:
            systems[name] = tuple(None if fields.get(key) in (None, "", "(null)") else
                                  fields[key] for key in ("Arch", "OS"))
    return systems


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _mebibytes(text: str) -> int | None:
    return int(text) * 1024 * 1024 if text.isdigit() else None

