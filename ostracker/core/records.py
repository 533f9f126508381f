"""Every on-disk format of the job DB, in one place, and the checks that read them back.

Layout of a state directory (mode 0700, every file 0600)::

    lock             flock(2) taken to hand out the next ID; holds a copy of it
    last-id          the highest ID ever given (IDs are never reused)
    jobs/N/          one directory per submission
        job.json     the header: backend, template, array spec, who/where/when (written once)
        state.json   a single job's state record (local backend)
        tasks.log    an array's task records: a line "I TAB RECORD" per change of task I,
                     the last one of I its record (``tasklog``); an array of an earlier
                     version has I.json, task I's record, instead
        cancel.json  "every task of this array that has not started is cancelled"
        summary.json the JobInfo of every task of an ended array, for fast listing
        stopped.json Slurm IDs this user stopped with SIGTSTP (Slurm backend)
        dropped.json array tasks cancelled alone while queued: Slurm forgets them (Slurm backend)
        reaper.lock  held (flock) by the job's reaper for as long as it lives
        control      a Unix socket: what commands tell the job's reaper ("terminated I"),
                     while it lives
        held.json    which of its tasks that have not started are held ("release" removes it)
        on_end.json  how the job's --on-end command ended
        spawned, I.spawned   made by a waiting job's process as it is created, removed once
                     its record names it: with neither, a "starting" record whose reaper
                     died means the process was never created, and the job waits again
        stdout, stderr, I.stdout, I.stderr   output captured by default
    history          one line per ended job, compacted there by its reaper (``history``)
    history.lock     flock(2) taken to add lines to ``history`` or write it anew
    ended/N/         what an ended job keeps beside its line: its non-empty captured
                     output and on_end.json (none of it: no directory)
    sessions/NAME    a DRMAA2 job session, registered (``ostracker.drmaa2``)
    schedule/        what waits to start, and who decides when (local backend)
        lock         held (flock) by the scheduler for as long as it lives
        socket       a Unix socket: "something changed", from commands and reapers
        wait.N       job N waits for the scheduler to start it (empty: an index)
        queue.NAME   queue NAME: {"slots": N}
        slot.NAME.K  slot K of queue NAME is taken: the ID of the task that holds it

Every record is a JSON object with ``"schema": SCHEMA_VERSION``.  A reader
never trusts one: ``Header.from_dict``, ``check_task_record``,
``check_cancel_marker`` and ``infos_from_summary`` check every key they use —
its type, and its range where a later step needs one (a time that
``datetime`` takes, an exit status a process can have, a finite number that
JSON can carry, text that can be printed) — so that a damaged, hand-edited or
copied-in record becomes a StorageError naming its file (one job reports it,
the others are listed as before), never an exception that escapes and hides
every job.  A key that a later version adds is kept and ignored; an older
record without a key reads it as null.

The summary is a cache of its array's task records, and carries a check
(``SUMMARY_CHECK``): a listing copies its JobInfos into ``status --json``
unparsed only when the check holds; a summary that fails it is ignored and the
task records are read instead; one without a check (the first release's) is
parsed and checked before it is used.
"""

from __future__ import annotations

import json
from zlib import crc32

from .errors import InvalidArgument, StorageError
from .models import (STATE_BY_NAME, ArraySpec, JobInfo, JobTemplate, task_id_string,
                     timestamp)

SCHEMA_VERSION = 1

HEADER = "job.json"
SINGLE_STATE = "state.json"
CANCEL = "cancel.json"
SUMMARY = "summary.json"
STOPPED = "stopped.json"
DROPPED = "dropped.json"
REAPER_LOCK = "reaper.lock"
# A task record "Queued" with this sub_state and a "token": its reaper is starting it,
# and the process, if it got as far, has OSTRACKER_TOKEN=token in its environment.
STARTING = "starting"
TOKEN_VARIABLE = "OSTRACKER_TOKEN"
CONTROL = "control"  # the socket on which a reaper hears commands, while it lives
HELD = "held.json"
ON_END = "on_end.json"
TASK_LOG = "tasks.log"  # an array's task records, one line per change (``tasklog``)

# The summary file: this prefix, a JSON list of JobInfo objects, then its check
# (``SUMMARY_CHECK``: the array's ID, the list's inside's length and CRC-32), then "}".
# A summary of the first release ends right after the list: ``...]}``.
SUMMARY_PREFIX = b'{"schema": %d, "infos": ' % SCHEMA_VERSION
SUMMARY_CHECK = b'], "array_id": "%d", "length": %d, "crc32": %d}'
# The largest integer a record may hold (a signed 64-bit one); a PID is a C int.
_LIMIT = 1 << 63
_PID_LIMIT = 1 << 31
# The task states the local backend records (the others are Slurm's).
RECORD_STATES = frozenset({"Queued", "Running", "Suspended", "Requeued", "Done", "Failed",
                           "Undetermined"})
# Where a listing's JobInfos leave their template out (``JobInfo.to_dict(False)``).
# Inside a JSON string a quote is escaped, so these bytes can only be that key and
# its value, wherever the key stands in the object.
TEMPLATE_SLOT = '"job_template": null'
_TEMPLATE_SLOT = TEMPLATE_SLOT.encode()



def task_record_name(index: int | None) -> str:
    """File name of the state record of a single job (None) or of array task ``index``."""
    return SINGLE_STATE if index is None else f"{index}.json"


def spawned_name(index: int | None) -> str:
    """The mark a waiting job's process leaves as it is created (``I.spawned``)."""
    return "spawned" if index is None else f"{index}.spawned"


def captured_output_name(index: int | str | None, stream: str) -> str:
    """File name, in the job directory, of the output captured when no path was given."""
    return stream if index is None else f"{index}.{stream}"


def is_kept_when_ended(name: str) -> bool:
    """Whether a file of a job's directory stays once the job is compacted
    (``history``): captured output, if not empty, and how --on-end ended."""
    stem, _, stream = name.rpartition(".")
    return name in ("stdout", "stderr", ON_END) or \
        (stream in ("stdout", "stderr") and stem.isdigit())


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
    boot name dead processes), ``slurm_job_id`` the Slurm backend's.  A local job
    that waits for the scheduler keeps the submitter's whole ``environment`` and
    ``umask``: the scheduler starts it as the submit would have, not in its own.
    """

    __slots__ = ("job_id", "backend", "array", "template", "submission_time",
                 "submission_machine", "job_owner", "uid", "boot_id", "slurm_job_id",
                 "environment", "umask")

    def __init__(self, *, job_id: int, backend: str, array: ArraySpec | None,
                 template: JobTemplate, submission_time: str, submission_machine: str,
                 job_owner: str, uid: int, boot_id: str | None = None,
                 slurm_job_id: str | None = None, environment: dict | None = None,
                 umask: int | None = None):
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
        self.environment = environment
        self.umask = umask

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
        if self.environment is not None:
            data["environment"] = self.environment
            data["umask"] = self.umask
        return data

    @classmethod
    def from_dict(cls, job_id: int, data, path: str) -> "Header":
        """The header that ``data`` (parsed JSON) holds; StorageError if it is damaged.

        A header without ``backend`` was written before there was a second
        backend: it is a local job's.  A key this version does not know is
        ignored (a later version may add keys); a header that names another
        job (``id``, where it has one) is damaged: it was copied in.
        """
        try:
            if data.get("id", str(job_id)) != str(job_id):
                raise ValueError("another job's header")
            backend = _text(data.get("backend", "local"))
            array = data["array"]
            if array is not None:
                listed = array.get("indices")
                if listed is not None and not (isinstance(listed, list) and
                                               all(_integer(i) is i for i in listed)):
                    raise TypeError("indices")
                array = ArraySpec(_integer(array["begin"]), _integer(array["end"]),
                                  _integer(array["step"], listed is not None),
                                  _integer(array["max_parallel"], True), listed)
            header = cls(job_id=job_id, backend=backend,
                         array=array, template=_template(data["template"]),
                         submission_time=_time(data["submission_time"]),
                         submission_machine=_text(data["submission_machine"]),
                         job_owner=_text(data["job_owner"]),
                         uid=_integer(data["uid"], high=1 << 32),
                         boot_id=_text(data["boot_id"]) if backend == "local" else None,
                         slurm_job_id=_slurm_id(data["slurm_job_id"])
                         if backend == "slurm" else None,
                         environment=_environment(data.get("environment"), True),
                         umask=_integer(data.get("umask"), True, high=0o1000))
        except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument):
            raise damaged(path) from None
        return header


def _text(value, optional: bool = False):
    """``value`` if it is a string that can be printed: no surrogate but those that
    stand for undecodable bytes (``surrogateescape``, as in arguments from argv)."""
    if isinstance(value, str):
        if not value.isascii():
            value.encode("utf-8", "surrogateescape")  # UnicodeEncodeError: a ValueError
        return value
    if optional and value is None:
        return value
    raise TypeError("not a string")


def _path(value, optional: bool = False):
    """A string that the OS can take: a path, a command, an argument (no NUL)."""
    if _text(value, optional) is not None and "\0" in value:
        raise ValueError("NUL")
    return value


def _integer(value, optional: bool = False, low: int = 0, high: int = _LIMIT):
    """``value`` if it is an integer in [low, high) (never a bool)."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value < high:
        return value
    if optional and value is None:
        return value
    raise TypeError("not an integer in range")


def _number(value, optional: bool = True):
    """``value`` if it is a finite number, 0 or more (json.loads takes NaN and Infinity,
    which ``json.dumps`` would write back as no JSON)."""
    if optional and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 <= value < _LIMIT:  # False for NaN
        raise TypeError("not a finite number")
    return value


def _slurm_id(value) -> str:
    """Slurm's job ID as a header keeps it: digits (a number in older headers)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return value
    return str(_integer(value))


# The last day of each month, as records spell it (February 29 is checked apart).
_LAST_DAY = {"01": "31", "02": "28", "03": "31", "04": "30", "05": "31", "06": "30",
             "07": "31", "08": "31", "09": "30", "10": "31", "11": "30", "12": "31"}
# Dates and UTC offsets found good ("2026-11-24T", "+00:00"): a listing's times share few.
_GOOD_PARTS: set[str] = set()


def _time(value, optional: bool = False):
    """``value`` if it is a time as records spell it (``2026-11-24T02:03:04.123456+00:00``).

    Checked by hand, not with ``re`` or ``datetime``, which the reaper need not load;
    every field in its range, so that ``datetime.fromisoformat`` and ``astimezone``
    take what passed (years 1900-9998: a year 1 or 9999 overflows in another zone).
    The fields are compared as text: equal widths of ASCII digits sort as numbers.
    """
    if optional and value is None:
        return value
    if isinstance(value, str) and len(value) in (25, 32) and value.isascii():
        date, offset, fraction = value[:11], value[-6:], value[19:-6]
        if (date in _GOOD_PARTS or _good_date(date)) and \
                (offset in _GOOD_PARTS or _good_offset(offset)) and \
                value[13] + value[16] == "::" and \
                (value[11:13] + value[14:16] + value[17:19]).isdigit() and \
                value[11:13] < "24" and value[14:16] < "60" and value[17:19] < "60" and \
                (not fraction or (fraction[0] == "." and fraction[1:].isdigit())):
            return value
    raise ValueError("not a time")


def _good_date(date: str) -> bool:
    """``YYYY-MM-DDT``, a day that exists, in years 1900-9998."""
    year, month, day = date[0:4], date[5:7], date[8:10]
    last = _LAST_DAY.get(month)
    if date[4] + date[7] + date[10] == "--T" and last is not None and \
            (year + day).isdigit() and "1900" <= year <= "9998" and "01" <= day and \
            (day <= last or (day == "29" and month == "02" and int(year) % 4 == 0 and
                             (int(year) % 100 != 0 or int(year) % 400 == 0))):
        _GOOD_PARTS.add(date)
        return True
    return False


def _good_offset(offset: str) -> bool:
    """``+HH:MM`` or ``-HH:MM``, less than a day."""
    if offset[0] in "+-" and offset[3] == ":" and (offset[1:3] + offset[4:]).isdigit() and \
            offset[1:3] < "24" and offset[4:] < "60":
        _GOOD_PARTS.add(offset)
        return True
    return False


def _environment(value, optional: bool = False):
    """An environment: names to values, each a string the OS can take."""
    if optional and value is None:
        return value
    if not isinstance(value, dict):
        raise TypeError("environment")
    for word in (*value, *value.values()):
        _path(word)
    return value


def _template(data) -> JobTemplate:
    """The JobTemplate of a header, every field of the type it must have."""
    args = data["args"]
    environment = _environment(data["job_environment"])
    if not isinstance(args, list):
        raise TypeError("args")
    for word in args:
        _path(word)
    get = data.get
    return JobTemplate(remote_command=_path(data["remote_command"]), args=args,
                       job_name=_text(data.get("job_name"), True),
                       working_directory=_path(data["working_directory"]),
                       job_environment=environment,
                       input_path=_path(data.get("input_path"), True),
                       output_path=_path(data.get("output_path"), True),
                       error_path=_path(data.get("error_path"), True),
                       queue_name=_text(get("queue_name"), True),
                       min_slots=_integer(get("min_slots"), True, 1),
                       priority=_integer(get("priority"), True, -_LIMIT),
                       start_time=_time(get("start_time"), True),
                       submit_as_hold=_flag(get("submit_as_hold")),
                       dependency=_text(get("dependency"), True),
                       join_files=_flag(get("join_files")),
                       resource_limits=_limits(get("resource_limits")),
                       deadline_time=_time(get("deadline_time"), True),
                       retries=_integer(get("retries"), True),
                       retry_delay=_number(get("retry_delay")),
                       kill_after=_number(get("kill_after")),
                       warning_signal=_text(get("warning_signal"), True),
                       on_end=_path(get("on_end"), True),
                       session_name=_text(get("session_name"), True))


def _limits(value):
    """resource_limits: DRMAA2 key names to whole numbers, or null."""
    if value is not None:
        if not isinstance(value, dict):
            raise TypeError("resource_limits")
        for key, number in value.items():
            _text(key)
            _integer(number)
    return value


def _flag(value) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise TypeError("not a boolean")


# -- task records (state.json, I.json) ------------------------------------------------------

def new_record(state: str, sub_state: str | None = None, task_id: str | None = None) -> dict:
    """A task record in ``state``, every other field not known yet.

    ``task_id`` (``7``, ``7.3``), when given, is written as ``id``: a reader then
    knows a record copied in from another job for what it is.
    """
    record = {"schema": SCHEMA_VERSION, "state": state, "sub_state": sub_state, "pid": None,
              "start_ticks": None, "boot_id": None, "dispatch_time": None,
              "dispatch_monotonic": None, "finish_time": None, "wallclock_time": None,
              "exit_status": None, "terminating_signal": None, "rusage": None}
    if task_id is not None:
        record["id"] = task_id
    return record


def cancelled_record(marker: dict | None) -> dict:
    """The record of an array task that never started because ``marker`` cancelled it."""
    reason = (marker or {}).get("reason")
    return new_record("Failed", reason if isinstance(reason, str) and reason else "cancelled")


def check_cancel_marker(marker, path: str) -> dict | None:
    """``marker`` (cancel.json, parsed) if it is one: an object whose reason, if any, is text."""
    if marker is not None:
        try:
            _text(marker.get("reason"), True)
        except (TypeError, ValueError):
            raise damaged(path) from None
    return marker


def held_tasks(marker: dict | None, array: ArraySpec | None):
    """The indices of the tasks that ``held.json`` (parsed) holds, as a container
    (``None`` stands for a single job): every task when its ``tasks`` is null."""
    if marker is None:
        return ()
    tasks = marker.get("tasks")
    if tasks is None:
        return array.indices() if array is not None else (None,)
    if not isinstance(tasks, list):
        raise TypeError("held tasks")
    return frozenset(task for task in tasks if type(task) is int)


def check_task_record(record: dict, path: str, task_id: str | None = None) -> dict:
    """The record with every key a reader uses, each of its type; else StorageError.

    A task that runs (or ran) names its process: Running and Suspended need a PID.
    A record that names another task (``id``, where it has one) was copied in.
    Keys a later version adds are kept; keys an older one did not write read as null.
    """
    try:
        state = record["state"]
        if state not in RECORD_STATES:
            raise ValueError("state")
        get = record.get
        if task_id is not None and get("id", task_id) != task_id:
            raise ValueError("another task's record")
        _text(get("sub_state"), True)
        _integer(get("exit_status"), True, high=256)
        _text(get("terminating_signal"), True)
        _text(get("boot_id"), True)
        _time(get("dispatch_time"), True)
        _time(get("finish_time"), True)
        _number(get("wallclock_time"))
        _number(get("dispatch_monotonic"))
        _extension(get("rusage"))
        _integer(get("start_ticks"), True)
        _integer(get("reaper_pid"), True, 1, _PID_LIMIT)
        _integer(get("pid"), state not in ("Running", "Suspended"), 1, _PID_LIMIT)
        _slots(get("slots"))
        _integer(get("attempt"), True, 1)
    except (KeyError, TypeError, ValueError):
        raise damaged(path) from None
    complete = new_record(state)
    complete.update(record)
    return complete


def _extension(value):
    """An extension_list as records keep it (rusage): names to numbers (or null)."""
    if value is not None:
        if not isinstance(value, dict):
            raise TypeError("extension_list")
        for key, item in value.items():
            if not key.isascii():  # a JSON object's keys are strings
                _text(key)
            if not (type(item) is int and 0 <= item < _LIMIT):  # the usual, in short
                _number(item)
    return value


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
        slots=record.get("slots"),
        attempt=record.get("attempt") or 1,
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
    """The summary file of an ended array: its tasks' JobInfos, templates left out, and
    the check (``SUMMARY_CHECK``) by which a reader knows the list whole and this array's.

    The check vouches for the JobInfos: a reader copies them unparsed.  So they are
    checked here, as a reader would (a task record damaged before the reaper summed it
    up, a task that had not ended): when one fails, the summary goes without a check,
    readers find the same fault, and read the task records instead, which say it.
    """
    try:
        inside = _vouched(infos)
    except (ValueError, TypeError, KeyError):
        return [SUMMARY_PREFIX, json.dumps([info.to_dict(with_template=False)
                                            for info in infos]).encode(), b"}"]
    check = SUMMARY_CHECK % (int(infos[0].array_id), len(inside), crc32(inside))
    return [SUMMARY_PREFIX, b"[", inside, check]


def _vouched(infos: list[JobInfo]) -> bytes:
    """The JobInfos as a JSON list's inside, templates null, each checked as a reader of a
    summary or a history line checks it (which then copies them unparsed); ValueError,
    TypeError or KeyError if one fails."""
    dicts = [info.to_dict(with_template=False) for info in infos]
    for data in dicts:
        _summary_info(data, None)
    return json.dumps(dicts, allow_nan=False)[1:-1].encode()


# -- the history: one line per ended job ---------------------------------------------------

def history_line(header: Header, infos: list[JobInfo]) -> bytes:
    """The history's line of an ended job: ``ID TAB BACKEND TAB CRC32 TAB HEADER TAB
    TEMPLATE TAB INFOS LF``, where HEADER is the header's JSON but its template,
    TEMPLATE the template as JobInfo has it, INFOS its JobInfos' list's inside
    (templates null) and CRC32 that of everything after it.  Compact JSON holds no raw
    tab or newline, so the split is exact.

    A line is written only for JobInfos a reader can take unparsed (``_vouched``);
    ValueError, TypeError or KeyError when one fails (the job then stays as it is).
    """
    without_template = {key: value for key, value in header.to_dict().items()
                        if key != "template"}  # it is the next field
    body = b"\t".join([json.dumps(without_template, separators=(",", ":")).encode(),
                       json.dumps(header.template.to_dict()).encode(), _vouched(infos)])
    return b"%d\t%s\t%d\t%s\n" % (header.job_id, header.backend.encode(),
                                    crc32(body), body)


class EndedEntry:
    """A job's line of the history, taken apart and checked (its CRC) only when it is
    used, and parsed only as far as asked: a listing of ten thousand ended jobs copies
    their JobInfos unparsed."""

    __slots__ = ("job_id", "_line", "_path", "_fields")

    def __init__(self, job_id: int, line: bytes, path: str):
        self.job_id = job_id
        self._line = line
        self._path = path
        self._fields: tuple[bytes, bytes, bytes, bytes] | None = None

    def _checked(self) -> tuple[bytes, bytes, bytes, bytes]:
        """(backend, header, template, infos), as the line has them, kept for the next
        call; StorageError if the line is damaged."""
        if self._fields is None:
            self._fields = self._split()
        return self._fields

    def _split(self) -> tuple[bytes, bytes, bytes, bytes]:
        """The line's fields, its check verified (nothing kept)."""
        try:
            _, backend, check, body = self._line.split(b"\t", 3)
            if not check.isdigit() or len(check) > 10 or crc32(body) != int(check):
                raise ValueError("no check")
            header, template, infos = body.split(b"\t")
        except ValueError:
            raise self.damage() from None
        return backend, header, template, infos

    @property
    def backend(self) -> str:
        return self._checked()[0].decode(errors="replace")

    def header(self) -> Header:
        _, header, template, _ = self._checked()
        try:
            data = json.loads(header)
            data["template"] = json.loads(template)
        except (ValueError, RecursionError, TypeError):
            raise self.damage() from None
        return Header.from_dict(self.job_id, data, self._path)

    def encoded_infos(self) -> bytes:
        """The JobInfos as JSON objects, comma-separated, templates in: ASCII, as the line
        holds them.  The line's fields are not kept: a listing of ten thousand jobs
        takes each once, and would otherwise hold a second copy of the history."""
        _, _, template, infos = self._fields or self._split()
        return infos.replace(_TEMPLATE_SLOT, b'"job_template": ' + template)

    def infos(self, header: Header, only=None) -> list[JobInfo]:
        """The JobInfos of every task (with ``only``, of those tasks alone)."""
        try:
            text = self._checked()[3].decode()
        except UnicodeDecodeError:
            raise self.damage() from None
        infos = infos_from_summary(text, header.template, self.job_id,
                                   header.array.indices() if header.array else [None], only)
        if infos is None:
            raise self.damage()
        return infos

    def damaged(self) -> bool:
        try:
            self._checked()
        except StorageError:
            return True
        return False

    def damage(self) -> StorageError:
        return StorageError(f"damaged record of job {self.job_id} in {self._path}")


def history_line_id(line: bytes) -> int | None:
    """The ID a line of the history begins with (None: none that can be believed)."""
    head = line[:line.find(b"\t")]
    return int(head) if head.isdigit() and len(head) < 17 else None


def summary_body(data: bytes | None, array_id: int) -> tuple[str, bool] | None:
    """The inside of a summary's JSON list (JobInfos, templates null), and whether it is
    known intact: ``(text, True)`` when its check holds for array ``array_id`` (the
    JobInfos may be copied as they are); ``(text, False)`` for a summary of the first
    release, which has no check (parse it, ``infos_from_summary``, before using it);
    None when it is neither: damaged, or another array's.
    """
    start = len(SUMMARY_PREFIX) + 1
    if data is None or not data.startswith(SUMMARY_PREFIX + b"["):
        return None
    end = data.rfind(b'], "array_id": ', start)
    try:
        if end >= 0:
            inside = data[start:end]
            if data[end:] != SUMMARY_CHECK % (array_id, len(inside), crc32(inside)):
                return None
            return inside.decode(), True
        if data.endswith(b"]}"):
            return data[start:-2].decode(), False
    except UnicodeDecodeError:
        pass
    return None


def infos_from_summary(body: str, template: JobTemplate, array_id: int,
                       indices, only=None) -> list[JobInfo] | None:
    """The JobInfos of a summary's body (with ``only``, of those tasks alone), or None
    unless it holds exactly the JobInfos of array ``array_id``'s tasks ``indices``, in
    order, every field asked for of its type (``[None]``: of the single job
    ``array_id``, as a history line holds it).

    A key missing (a summary from before it existed) reads as null.
    """
    expected = str(array_id)
    wanted = [(task_id_string(array_id, index), None if index is None else expected, index)
              for index in indices]
    try:
        items = json.loads(f"[{body}]")
        if [(data.get("id"), data.get("array_id"), data.get("task_id")) for data in items] \
                != wanted:
            return None
        return [_summary_info(data, template) for data, index in zip(items, indices)
                if only is None or index in only]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _summary_info(data: dict, template: JobTemplate | None) -> JobInfo:
    """One JobInfo of a summary, each field checked as its record's was; a summary sums
    up an ended array, so the task has ended."""
    get = data.get
    machines = get("allocated_machines")
    if machines is not None and (not isinstance(machines, list) or
                                 not all(isinstance(_text(name), str) for name in machines)):
        raise TypeError("allocated_machines")
    return JobInfo(
        id=_text(data["id"]), array_id=_text(get("array_id"), True),
        task_id=_integer(get("task_id"), True),
        job_name=_text(get("job_name"), True), state=STATE_BY_NAME[_ended(data["state"])],
        sub_state=_text(get("sub_state"), True),
        exit_status=_integer(get("exit_status"), True, high=256),
        terminating_signal=_text(get("terminating_signal"), True),
        pid=_integer(get("pid"), True, 1, _PID_LIMIT), allocated_machines=machines,
        submission_machine=_text(get("submission_machine"), True),
        job_owner=_text(get("job_owner"), True), uid=_integer(get("uid"), True, high=1 << 32),
        submission_time_text=_time(get("submission_time"), True),
        dispatch_time_text=_time(get("dispatch_time"), True),
        finish_time_text=_time(get("finish_time"), True),
        wallclock_seconds=_number(get("wallclock_time")),
        extension_list=_extension(get("extension_list")), job_template=template,
        slots=_slots(get("slots")), attempt=_integer(get("attempt", 1), False, 1))


def _slots(value):
    """The slot numbers a task held: a list of integers, or null."""
    if value is not None and not (isinstance(value, list) and
                                  all(_integer(slot) is slot for slot in value)):
        raise TypeError("slots")
    return value


def _ended(name):
    if name not in ("Done", "Failed", "Undetermined"):
        raise ValueError("not an end")
    return name
