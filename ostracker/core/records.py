"""Every on-disk format of the job DB, in one place, and the checks that read them back.

Layout of a state directory (mode 0700, every file 0600)::

    lock             flock(2) taken to hand out the next ID; holds a copy of it
    last-id          the highest ID ever given (IDs are never reused)
    jobs/N/          one directory per submission
        job.json     the header: backend, template, array spec, who/where/when (written once)
        state.json   a single job's state record (local backend)
        I.json       an array task's state record, written when task I starts or is cancelled
        cancel.json  "every task of this array that has not started is cancelled"
        summary.json the JobInfo of every task of an ended array, for fast listing
        stopped.json Slurm IDs this user stopped with SIGTSTP (Slurm backend)
        reaper.lock  held (flock) by the job's reaper for as long as it lives
        stdout, stderr, I.stdout, I.stderr   output captured by default

Every record is a JSON object with ``"schema": SCHEMA_VERSION``.  A reader
never trusts one: ``Header.from_dict`` and ``check_task_record`` check every
key they use, so that a damaged or hand-edited record becomes a StorageError
naming its file (one job reports it, the others are listed as before), never a
KeyError or TypeError that escapes and hides every job.  A key that a later
version adds is optional to readers: an older record without it reads as null.
"""

from __future__ import annotations

import json

from .errors import InvalidArgument, StorageError
from .models import (STATE_BY_NAME, ArraySpec, JobInfo, JobTemplate, task_id_string,
                     timestamp)

SCHEMA_VERSION = 1

HEADER = "job.json"
SINGLE_STATE = "state.json"
CANCEL = "cancel.json"
SUMMARY = "summary.json"
STOPPED = "stopped.json"
REAPER_LOCK = "reaper.lock"

# The summary file: this prefix, a JSON list of JobInfo objects, then "}".
SUMMARY_PREFIX = b'{"schema": %d, "infos": ' % SCHEMA_VERSION
# Where a listing's JobInfos leave their template out (``JobInfo.to_dict(False)``).
# Inside a JSON string a quote is escaped, so these bytes can only be that key and
# its value, wherever the key stands in the object.
TEMPLATE_SLOT = '"job_template": null'



def task_record_name(index: int | None) -> str:
    """File name of the state record of a single job (None) or of array task ``index``."""
    return SINGLE_STATE if index is None else f"{index}.json"


def captured_output_name(index: int | str | None, stream: str) -> str:
    """File name, in the job directory, of the output captured when no path was given."""
    return stream if index is None else f"{index}.{stream}"


def damaged(path: str) -> StorageError:
    return StorageError(f"damaged record {path}")


def owner_name(uid: int) -> str:
    """The user name of ``uid`` (the number itself where it has none)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- the header (job.json) ----------------------------------------------------------------

class Header:
    """A submission's header: what was submitted, by whom, where, and which backend runs it.

    Written once, at submission, and never replaced (its flock is the job's
    mutation lock).  ``boot_id`` is the local backend's (records of an earlier
    boot name dead processes), ``slurm_job_id`` the Slurm backend's.
    """

    __slots__ = ("job_id", "backend", "array", "template", "submission_time",
                 "submission_machine", "job_owner", "uid", "boot_id", "slurm_job_id")

    def __init__(self, *, job_id: int, backend: str, array: ArraySpec | None,
                 template: JobTemplate, submission_time: str, submission_machine: str,
                 job_owner: str, uid: int, boot_id: str | None = None,
                 slurm_job_id: str | None = None):
        self.job_id = job_id
        self.backend = backend
        self.array = array
        self.template = template
        self.submission_time = submission_time
        self.submission_machine = submission_machine
        self.job_owner = job_owner
        self.uid = uid
        self.boot_id = boot_id
        self.slurm_job_id = slurm_job_id

    @classmethod
    def new(cls, job_id: int, backend: str, template: JobTemplate, array: ArraySpec | None,
            **extra) -> "Header":
        """The header of a submission made now by this user on this machine."""
        import os

        uid = os.getuid()
        return cls(job_id=job_id, backend=backend, array=array, template=template,
                   submission_time=timestamp(), submission_machine=os.uname().nodename,
                   job_owner=owner_name(uid), uid=uid, **extra)

    def to_dict(self) -> dict:
        data = {"schema": SCHEMA_VERSION, "id": str(self.job_id), "backend": self.backend,
                "array": self.array.to_dict() if self.array else None,
                "template": self.template.to_dict(), "submission_time": self.submission_time,
                "submission_machine": self.submission_machine, "job_owner": self.job_owner,
                "uid": self.uid}
        if self.boot_id is not None:
            data["boot_id"] = self.boot_id
        if self.slurm_job_id is not None:
            data["slurm_job_id"] = self.slurm_job_id
        return data

    @classmethod
    def from_dict(cls, job_id: int, data, path: str) -> "Header":
        """The header that ``data`` (parsed JSON) holds; StorageError if it is damaged.

        A header without ``backend`` was written before there was a second
        backend: it is a local job's.
        """
        try:
            backend = data.get("backend", "local")
            array = data["array"]
            if array is not None:
                array = ArraySpec(**{key: _integer(array[key], key == "max_parallel")
                                     for key in ArraySpec.__slots__})
            header = cls(job_id=job_id, backend=_text(backend),
                         array=array, template=_template(data["template"]),
                         submission_time=_time(data["submission_time"]),
                         submission_machine=_text(data["submission_machine"]),
                         job_owner=_text(data["job_owner"]), uid=_integer(data["uid"]),
                         boot_id=_text(data["boot_id"]) if backend == "local" else None,
                         slurm_job_id=str(_integer(int(data["slurm_job_id"])))
                         if backend == "slurm" else None)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument):
            raise damaged(path) from None
        return header


def _text(value, optional: bool = False):
    if isinstance(value, str) or (optional and value is None):
        return value
    raise TypeError("not a string")


def _integer(value, optional: bool = False):
    if (isinstance(value, int) and not isinstance(value, bool)) or (optional and value is None):
        return value
    raise TypeError("not an integer")


def _time(value, optional: bool = False):
    """``value`` if it is a time as records spell it (``2026-11-24T02:03:04.123456+00:00``).

    Checked by hand, not with ``re`` or ``datetime``, which the reaper need not load.
    """
    if optional and value is None:
        return value
    if isinstance(value, str) and value.isascii() and len(value) in (25, 32):
        digits = value[0:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16] + \
            value[17:19] + value[-5:-3] + value[-2:]
        fraction = value[19:-6]
        if digits.isdigit() and value[4] + value[7] + value[10] + value[13] + value[16] + \
                value[-3] == "--T:::" and value[-6] in "+-" and \
                (not fraction or (fraction[0] == "." and fraction[1:].isdigit())):
            return value
    raise ValueError("not a time")


def _template(data) -> JobTemplate:
    """The JobTemplate of a header, every field of the type it must have."""
    args = data["args"]
    environment = data["job_environment"]
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise TypeError("args")
    if not isinstance(environment, dict) or \
            not all(isinstance(value, str) for value in environment.values()):
        raise TypeError("job_environment")
    return JobTemplate(remote_command=_text(data["remote_command"]), args=args,
                       job_name=_text(data.get("job_name"), True),
                       working_directory=_text(data["working_directory"]),
                       job_environment=environment,
                       input_path=_text(data.get("input_path"), True),
                       output_path=_text(data.get("output_path"), True),
                       error_path=_text(data.get("error_path"), True))


# -- task records (state.json, I.json) ------------------------------------------------------

def new_record(state: str, sub_state: str | None = None) -> dict:
    """A task record in ``state``, every other field not known yet."""
    return {"schema": SCHEMA_VERSION, "state": state, "sub_state": sub_state, "pid": None,
            "start_ticks": None, "boot_id": None, "dispatch_time": None,
            "dispatch_monotonic": None, "finish_time": None, "wallclock_time": None,
            "exit_status": None, "terminating_signal": None, "rusage": None}


def cancelled_record(marker: dict | None) -> dict:
    """The record of an array task that never started because ``marker`` cancelled it."""
    reason = (marker or {}).get("reason")
    return new_record("Failed", reason if isinstance(reason, str) and reason else "cancelled")


def check_task_record(record: dict, path: str) -> dict:
    """``record`` itself if every field a reader uses has its type; else StorageError.

    A task that runs (or ran) names its process: Running and Suspended need a PID.
    """
    try:
        state = record["state"]
        if state not in STATE_BY_NAME:
            raise ValueError("state")
        get = record.get
        _text(get("sub_state"), True)
        _integer(get("exit_status"), True)
        _text(get("terminating_signal"), True)
        _text(get("boot_id"), True)
        _time(get("dispatch_time"), True)
        _time(get("finish_time"), True)
        for key in ("wallclock_time", "dispatch_monotonic"):
            value = get(key)
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, float))):
                raise TypeError(key)
        rusage = get("rusage")
        if rusage is not None and not isinstance(rusage, dict):
            raise TypeError("rusage")
        _integer(get("start_ticks"), True)
        _integer(get("pid"), state not in ("Running", "Suspended"))
    except (KeyError, TypeError, ValueError):
        raise damaged(path) from None
    return record


def info_from_record(header: Header, index: int | None, record: dict) -> JobInfo:
    """The JobInfo of a task, from its submission's header and its (checked) state record."""
    dispatched = record.get("dispatch_time")
    machine = header.submission_machine
    template = header.template
    return JobInfo(
        id=task_id_string(header.job_id, index),
        array_id=None if header.array is None else str(header.job_id),
        task_id=index,
        job_name=template.job_name,
        state=STATE_BY_NAME[record["state"]],
        sub_state=record.get("sub_state"),
        exit_status=record.get("exit_status"),
        terminating_signal=record.get("terminating_signal"),
        pid=record.get("pid"),
        allocated_machines=[machine] if dispatched else None,
        submission_machine=machine,
        job_owner=header.job_owner,
        uid=header.uid,
        submission_time_text=header.submission_time,
        dispatch_time_text=dispatched,
        finish_time_text=record.get("finish_time"),
        wallclock_seconds=record.get("wallclock_time"),
        extension_list=record.get("rusage"),
        job_template=template,
    )


# -- JobInfos as JSON: listings and the summary ------------------------------------------------

def encode_infos(infos: list[JobInfo]) -> str:
    """Infos of one submission as JSON objects, comma-separated (a list's inside).

    The list is encoded in one call with each template left null, and the
    template, encoded once, is put in each slot: a third of the work of
    encoding each record whole, for a large array.
    """
    if not infos:
        return ""
    text = json.dumps([info.to_dict(with_template=False) for info in infos])[1:-1]
    return fill_template(text, infos[0].job_template)


def fill_template(text: str, template: JobTemplate) -> str:
    """Put ``template``, encoded once, in every template slot of encoded JobInfos."""
    return text.replace(TEMPLATE_SLOT, f'"job_template": {json.dumps(template.to_dict())}')


def summary_chunks(infos: list[JobInfo]) -> list[bytes]:
    """The summary file of an ended array: its tasks' JobInfos, templates left out."""
    body = json.dumps([info.to_dict(with_template=False) for info in infos]).encode()
    return [SUMMARY_PREFIX, body, b"}"]


def summary_body(data: bytes | None) -> str | None:
    """The inside of a summary's JSON list (JobInfos, templates null), or None if damaged."""
    if data is None or not data.startswith(SUMMARY_PREFIX) or not data.endswith(b"]}"):
        return None
    try:
        return data[len(SUMMARY_PREFIX) + 1:-2].decode()
    except UnicodeDecodeError:
        return None


def infos_from_summary(body: str, template: JobTemplate) -> list[JobInfo] | None:
    """The JobInfos of a summary's body, or None if it does not parse as JobInfos.

    A key missing (a summary from before it existed) reads as null.
    """
    try:
        items = json.loads(f"[{body}]")
        return [JobInfo(
            id=data["id"], array_id=data.get("array_id"), task_id=data.get("task_id"),
            job_name=data.get("job_name"), state=STATE_BY_NAME[data["state"]],
            sub_state=data.get("sub_state"), exit_status=data.get("exit_status"),
            terminating_signal=data.get("terminating_signal"), pid=data.get("pid"),
            allocated_machines=data.get("allocated_machines"),
            submission_machine=data.get("submission_machine"), job_owner=data.get("job_owner"),
            uid=data.get("uid"), submission_time_text=data.get("submission_time"),
            dispatch_time_text=data.get("dispatch_time"),
            finish_time_text=data.get("finish_time"),
            wallclock_seconds=data.get("wallclock_time"),
            extension_list=data.get("extension_list"), job_template=template)
            for data in items]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
