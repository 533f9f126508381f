"""The DRMAA2 data types of ostracker, every backend's: checked once, where they enter.

Lifecycle (``JobState``) and the description of what to run (``JobTemplate``)
are separate types, as in DRMAA2; ``JobInfo`` is what a reader gets back.  Job
IDs (``7``, ``7.3``), array specs and output path patterns (``%j``, ``%a``)
are parsed here too.  How these are spelled on disk is ``records``' business.
"""

from __future__ import annotations

import enum
import time
from collections import namedtuple

from .errors import InvalidArgument, JobNotFound, StartError

MAX_ARRAY_TASKS = 1_000_000
# The most digits a job number, task index or count given as text may have: any ID
# that long is larger than any ever given, and it still fits a signed 64-bit integer.
MAX_DIGITS = 18
MAX_INDEX = 10 ** MAX_DIGITS - 1  # the largest array task index


class JobState(str, enum.Enum):
    """DRMAA2 job states, spelled exactly as DRMAA2 spells them."""

    UNDETERMINED = "Undetermined"
    QUEUED = "Queued"
    QUEUED_HELD = "QueuedHeld"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    REQUEUED = "Requeued"
    REQUEUED_HELD = "RequeuedHeld"
    DONE = "Done"
    FAILED = "Failed"

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        """True for the states a job never leaves."""
        return self in ENDED_STATES

    @classmethod
    def parse(cls, name: str) -> "JobState":
        """Accept a state name in any letter case; unknown names are usage errors."""
        for state in cls:
            if state.value.lower() == name.lower():
                return state
        choices = ", ".join(s.value for s in cls)
        raise InvalidArgument(f"unknown state {name!r} (choose from {choices})")


ENDED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.UNDETERMINED})
ENDED_NAMES = frozenset(state.value for state in ENDED_STATES)
STATE_BY_NAME = {state.value: state for state in JobState}  # faster than JobState(name)
# How a job ended, as its supervisor says it (``ended_as``): a single job's JobState, exit
# status and signal (as its JobInfo has them); an array's state (Done only if every task
# is), no more.
Ended = namedtuple("Ended", "state exit_status terminating_signal")


class JobTemplate:
    """What to run and how (DRMAA2 JobTemplate, the fields ostracker uses).

    The optional fields (README, "Scheduling" and "Limits and retries") are
    None (``submit_as_hold``, ``join_files`` False) when not given, and only given
    ones are written out: a template without them reads and prints as it did
    before they existed.  ``dependency`` is Slurm's ``--dependency`` text;
    ``session_name`` the DRMAA2 job session the job belongs to;
    ``kill_after``, ``warning_signal`` (``SIGUSR1@60``), ``retry_delay`` and
    ``on_end`` are ostracker's own; ``resource_limits`` maps DRMAA2's keys to
    seconds, bytes or counts.
    """

    FIELDS = ("remote_command", "args", "job_name", "working_directory", "job_environment",
              "input_path", "output_path", "error_path")
    OPTIONAL = ("queue_name", "min_slots", "priority", "start_time", "submit_as_hold",
                "dependency", "join_files", "resource_limits", "deadline_time", "retries",
                "retry_delay", "kill_after", "warning_signal", "on_end", "session_name")
    __slots__ = FIELDS + OPTIONAL

    def __init__(self, remote_command: str, args: list[str] | None = None,
                 job_name: str | None = None, working_directory: str | None = None,
                 job_environment: dict[str, str] | None = None, input_path: str | None = None,
                 output_path: str | None = None, error_path: str | None = None, *,
                 queue_name: str | None = None, min_slots: int | None = None,
                 priority: int | None = None, start_time: str | None = None,
                 submit_as_hold: bool = False, dependency: str | None = None,
                 join_files: bool = False, resource_limits: dict[str, int] | None = None,
                 deadline_time: str | None = None, retries: int | None = None,
                 retry_delay: float | None = None, kill_after: float | None = None,
                 warning_signal: str | None = None, on_end: str | None = None,
                 session_name: str | None = None):
        self.remote_command = remote_command
        self.args = list(args or [])
        self.job_name = job_name
        self.working_directory = working_directory
        self.job_environment = dict(job_environment or {})
        self.input_path = input_path
        self.output_path = output_path
        self.error_path = error_path
        self.queue_name = queue_name
        self.min_slots = min_slots
        self.priority = priority
        self.start_time = start_time
        self.submit_as_hold = bool(submit_as_hold)
        self.dependency = dependency
        self.join_files = bool(join_files)
        self.resource_limits = dict(resource_limits) if resource_limits else None
        self.deadline_time = deadline_time
        self.retries = retries
        self.retry_delay = retry_delay
        self.kill_after = kill_after
        self.warning_signal = warning_signal
        self.on_end = on_end
        self.session_name = session_name

    @property
    def waits(self) -> bool:
        """Whether the job may have to wait before it starts (a queue, a dependency, a
        begin time, a hold): the scheduler, not the submitter, starts it."""
        return bool(self.queue_name or self.dependency or self.start_time or
                    self.submit_as_hold)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.FIELDS}
        for name in self.OPTIONAL:
            value = getattr(self, name)
            if value is not None and value is not False:
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "JobTemplate":
        return cls(**{name: data.get(name) for name in cls.FIELDS},
                   **{name: data[name] for name in cls.OPTIONAL if name in data})

    def __eq__(self, other) -> bool:
        return isinstance(other, JobTemplate) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"JobTemplate({self.to_dict()!r})"


class ArraySpec:
    """Indices BEGIN..END (inclusive) by STEP, or a list of indices (``0,4,8-10``), at most
    MAX_PARALLEL at once.

    A list is kept sorted, ``begin``/``end`` its first and last index and
    ``step`` None; ``indices()`` is then a tuple, else a range: either is
    indexed, sliced and searched alike.
    """

    __slots__ = ("begin", "end", "step", "max_parallel", "listed", "_members")

    def __init__(self, begin: int, end: int, step: int | None = 1,
                 max_parallel: int | None = None, listed: list[int] | None = None):
        if listed is not None:
            listed = sorted(listed)
            if not listed:
                raise InvalidArgument("an array needs at least one index")
            if len(set(listed)) != len(listed):
                raise InvalidArgument("an index is listed twice in the array spec")
            begin, end, step = listed[0], listed[-1], None
        if begin < 0 or end < 0:
            raise InvalidArgument("array indices must be 0 or more")
        if begin > MAX_INDEX or end > MAX_INDEX:  # every task ID N.I stays one to name
            raise InvalidArgument(f"array indices must be {MAX_INDEX} or less")
        if begin > end:
            raise InvalidArgument(f"array begin {begin} is after end {end}")
        if listed is None and (step is None or step < 1):
            raise InvalidArgument("array step must be 1 or more")
        if max_parallel is not None and max_parallel < 1:
            raise InvalidArgument("max parallel must be 1 or more")
        # not len(): that overflows past sys.maxsize
        count = len(listed) if listed is not None else (end - begin) // step + 1
        if count > MAX_ARRAY_TASKS:
            raise InvalidArgument(
                f"array of {count:,} tasks is larger than the limit of {MAX_ARRAY_TASKS:,}")
        self.begin, self.end, self.step, self.max_parallel = begin, end, step, max_parallel
        self.listed = tuple(listed) if listed is not None else None
        self._members = frozenset(listed) if listed is not None else None

    def __len__(self) -> int:
        return len(self.listed) if self.listed is not None else \
            (self.end - self.begin) // self.step + 1

    def indices(self) -> range | tuple:
        return self.listed if self.listed is not None else \
            range(self.begin, self.end + 1, self.step)

    def __contains__(self, index: int) -> bool:
        if self._members is not None:
            return index in self._members
        return index in self.indices()

    def to_dict(self) -> dict:
        data = {"begin": self.begin, "end": self.end, "step": self.step,
                "max_parallel": self.max_parallel}
        if self.listed is not None:
            data["indices"] = list(self.listed)
        return data

    def __repr__(self) -> str:
        return f"ArraySpec({self.to_dict()!r})"

    @classmethod
    def from_dict(cls, data: dict) -> "ArraySpec":
        return cls(data["begin"], data["end"], data["step"], data["max_parallel"],
                   data.get("indices"))

    def spec(self) -> str:
        """As ``--array`` takes it: ``1-10:2``, or ``0,4,8-10`` for a list."""
        if self.listed is None:
            return f"{self.begin}-{self.end}:{self.step}"
        runs, start = [], 0
        for position in range(1, len(self.listed) + 1):
            if position == len(self.listed) or \
                    self.listed[position] != self.listed[position - 1] + 1:
                first, last = self.listed[start], self.listed[position - 1]
                runs.append(str(first) if first == last else f"{first}-{last}")
                start = position
        return ",".join(runs)


_ARRAY_ITEM = r"(\d+)(?:-(\d+)(?::(\d+))?)?"


def parse_array_spec(text: str, max_parallel: int | None = None) -> ArraySpec:
    """Slurm's ``--array``: ``BEGIN-END[:STEP]`` ranges and ``INDEX``es joined by ``,``,
    optionally ``%MAX`` at the end (``0,4,8-10%2``)."""
    import re  # only here: the reaper, which imports this module, never parses a spec

    items, percent, spec_max = text.partition("%")
    matches = [re.fullmatch(_ARRAY_ITEM, item) if item.isascii() else None
               for item in items.split(",")]
    if not all(matches) or (percent and not (spec_max.isascii() and spec_max.isdigit())):
        raise InvalidArgument(
            f"bad array spec {brief(text)!r}: expected BEGIN-END[:STEP] ranges and INDEXes "
            "joined by commas, then optionally %MAX")
    numbers = [n for match in matches for n in match.groups() if n] + \
        ([spec_max] if spec_max else [])
    if any(len(number.lstrip("0")) > MAX_DIGITS for number in numbers):
        raise InvalidArgument(f"bad array spec {brief(text)!r}: a number of more than "
                              f"{MAX_DIGITS} digits")
    if spec_max and max_parallel is not None and int_of_digits(spec_max) != max_parallel:
        raise InvalidArgument(
            f"array spec says %{spec_max} but --max-parallel says {max_parallel}")
    limit = max_parallel if max_parallel is not None else \
        (int_of_digits(spec_max) if spec_max else None)
    ranges = []
    for match in matches:
        begin, end, step = match.groups()
        ranges.append(ArraySpec(int_of_digits(begin),
                                int_of_digits(end if end is not None else begin),
                                int_of_digits(step or "1"), limit))
    if len(ranges) == 1:
        return ranges[0]
    if sum(len(r) for r in ranges) > MAX_ARRAY_TASKS:
        raise InvalidArgument(f"array of more than {MAX_ARRAY_TASKS:,} tasks is larger than "
                              "the limit")
    return ArraySpec(0, 0, None, limit, [i for r in ranges for i in r.indices()])


def parse_count(text: str) -> int:
    """A whole number of 1 or more given as decimal text (``--max-parallel``); else a usage error.

    Only ASCII digits (no sign, space, ``_`` or other scripts' digits), and at
    most ``MAX_DIGITS`` of them: checked before ``int()``, which refuses text
    of more than 4,300 digits with a ValueError.
    """
    if not (text.isascii() and text.isdigit() and text.strip("0")):
        raise InvalidArgument(f"{brief(text)!r} is not a whole number of 1 or more")
    if len(text.lstrip("0")) > MAX_DIGITS:
        raise InvalidArgument(f"{brief(text)!r} is too large (more than {MAX_DIGITS} digits)")
    return int_of_digits(text)


def int_of_digits(text: str) -> int:
    """The value of ASCII digits whose significant part is known to be short.

    Leading zeros are no digits of the value, but ``int()`` counts them
    towards its limit of 4,300: ``"0" * 5000 + "7"`` is 7, not a ValueError.
    """
    return int(text.lstrip("0") or "0")


def brief(text: str, limit: int = 40) -> str:
    """``text`` for a message: cut to about ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 16]}...({len(text):,} characters)"


def human_size(size: int | None) -> str | None:
    """``512 B``, ``12.3 MiB``, ``1.5 GiB``: a byte count as people read it."""
    if size is None:
        return None
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def timestamp() -> str:
    """Now, as ISO 8601 in UTC with microseconds (``2026-11-24T02:03:04.123456+00:00``).

    Written without the datetime module, which the reaper and ``submit`` need not load.
    """
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + \
        f".{nanoseconds // 1000:06d}+00:00"


def parse_time(text: str | None):
    """A timestamp as an aware datetime (None stays None)."""
    from datetime import datetime

    return None if text is None else datetime.fromisoformat(text)


def epoch(text: str | None) -> float | None:
    """A timestamp as a ``time.time()`` (None stays None)."""
    return None if text is None else parse_time(text).timestamp()


class JobInfo:
    """DRMAA2 JobInfo of one job or array task, as readers see it.

    Built by the tracker only, from keyword arguments named as the fields.  The
    three times are kept as the ISO 8601 text of the records and parsed into
    datetimes only when asked for: listing thousands of tasks as JSON copies
    them as they are.
    """

    __slots__ = ("id", "array_id", "task_id", "job_name", "state", "sub_state", "exit_status",
                 "terminating_signal", "pid", "allocated_machines", "submission_machine",
                 "job_owner", "uid", "submission_time_text", "dispatch_time_text",
                 "finish_time_text", "wallclock_seconds", "extension_list", "job_template",
                 "queue_name", "slots", "attempt", "dependency")

    def __init__(self, *, id, array_id, task_id, job_name, state, sub_state, exit_status,
                 terminating_signal, pid, allocated_machines, submission_machine, job_owner, uid,
                 submission_time_text, dispatch_time_text, finish_time_text, wallclock_seconds,
                 extension_list, job_template, slots=None, attempt=1):
        self.id = id
        self.array_id = array_id
        self.task_id = task_id
        self.job_name = job_name
        self.state = state
        self.sub_state = sub_state
        self.exit_status = exit_status
        self.terminating_signal = terminating_signal
        self.pid = pid
        self.allocated_machines = allocated_machines
        self.submission_machine = submission_machine
        self.job_owner = job_owner
        self.uid = uid
        self.submission_time_text = submission_time_text
        self.dispatch_time_text = dispatch_time_text
        self.finish_time_text = finish_time_text
        self.wallclock_seconds = wallclock_seconds
        self.extension_list = extension_list
        self.job_template = job_template
        self.queue_name = job_template.queue_name if job_template else None
        self.dependency = job_template.dependency if job_template else None
        self.slots = slots
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"JobInfo(id={self.id!r}, state={self.state.value!r})"

    @property
    def submission_time(self):
        return parse_time(self.submission_time_text)

    @property
    def dispatch_time(self):
        return parse_time(self.dispatch_time_text)

    @property
    def finish_time(self):
        return parse_time(self.finish_time_text)

    @property
    def wallclock_time(self) -> float | None:
        """Seconds from dispatch to finish (as the reaper measured it), or to now.

        Only a job that has not ended counts to now: one that ended without a
        measure (Undetermined: nobody saw it end) has none, and never grows.
        """
        if self.wallclock_seconds is not None:
            return self.wallclock_seconds
        if self.dispatch_time_text is None or (self.finish_time_text is None and
                                               self.state.ended):
            return None
        end = self.finish_time_text or timestamp()
        return (parse_time(end) - self.dispatch_time).total_seconds()

    def to_dict(self, with_template: bool = True) -> dict:
        """The JSON object of ``info --json`` (README, "JobInfo"), keys in that order.

        Without the template, ``job_template`` is null: ``records.encode_infos``
        puts the one template of a submission in each such slot.
        """
        fields = {
            "id": self.id,
            "array_id": self.array_id,
            "task_id": self.task_id,
            "job_name": self.job_name,
            "state": self.state.value,
            "sub_state": self.sub_state,
            "exit_status": self.exit_status,
            "terminating_signal": self.terminating_signal,
            "pid": self.pid,
            "allocated_machines": self.allocated_machines,
            "submission_machine": self.submission_machine,
            "job_owner": self.job_owner,
            "uid": self.uid,
            "submission_time": self.submission_time_text,
            "dispatch_time": self.dispatch_time_text,
            "finish_time": self.finish_time_text,
            "wallclock_time": self.wallclock_time,
            "extension_list": self.extension_list,
            "queue_name": self.queue_name,
            "slots": self.slots,
            "attempt": self.attempt,
            "dependency": self.dependency,
            "job_template": self.job_template.to_dict() if with_template else None,
        }
        return fields




# -- job IDs ---------------------------------------------------------------------------

def parse_job_id(text: str) -> tuple[int, int | None]:
    """``"7"`` -> (7, None); ``"7.3"`` -> (7, 3).  Anything malformed is a usage error.

    A well-formed ID names no job when its job number or task index has more
    than ``MAX_DIGITS`` digits (no ID that large is ever given): JobNotFound,
    exit 1, as for any other ID that does not exist, however long it is.  The
    length is checked before ``int()``, which refuses more than 4,300 digits.
    """
    job, dot, task = text.partition(".")
    if not (job.isascii() and job.isdigit() and job.strip("0")) or \
            (dot and not (task.isascii() and task.isdigit())):
        raise InvalidArgument(f"bad job ID {brief(text)!r}: expected N or N.I")
    if len(job.lstrip("0")) > MAX_DIGITS or len(task.lstrip("0")) > MAX_DIGITS:
        raise JobNotFound(f"no such job: {brief(text)}")
    return int_of_digits(job), int_of_digits(task) if dot else None


def task_id_string(job_id: int, index: int | None) -> str:
    """The ID of a single job (``7``) or of task ``index`` of array ``job_id`` (``7.3``)."""
    return str(job_id) if index is None else f"{job_id}.{index}"


# -- path patterns -------------------------------------------------------------------------

def substitute_codes(pattern: str, codes: dict[str, str], unknown: str = "%") -> str:
    """Replace each ``%X`` of ``pattern`` by ``codes[X]``; any other ``%X`` by ``unknown + X``."""
    out, chars = [], iter(pattern)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        code = next(chars, "")
        out.append(codes[code] if code in codes else unknown + code)
    return "".join(out)


def expand_path(pattern: str, job_id: str, index: int | None) -> str:
    """Replace ``%j`` (job ID), ``%a`` (task index, empty for a single job) and ``%%``."""
    return substitute_codes(pattern, {"j": job_id, "a": "" if index is None else str(index),
                                      "%": "%"})


def is_per_task(pattern: str | None) -> bool:
    """Whether a path pattern names a different file for each task."""
    return pattern is not None and ("%a" in pattern.replace("%%", "") or
                                    "%j" in pattern.replace("%%", ""))


def complete_template(template: JobTemplate, is_array: bool) -> JobTemplate:
    """Check a template and fill in its defaults; bad values are usage errors."""
    import os

    if not template.remote_command:
        raise InvalidArgument("no command given")
    words = [template.remote_command, *template.args,
             *template.job_environment.keys(), *template.job_environment.values()]
    if any("\0" in word for word in words):
        raise InvalidArgument("command, arguments and environment cannot hold NUL bytes")
    for key in template.job_environment:
        if not key or "=" in key:
            raise InvalidArgument(f"bad environment variable name {key!r}")
    if template.job_name is not None and not template.job_name.strip():
        raise InvalidArgument("job name cannot be empty")
    if template.join_files and template.error_path is not None:
        raise InvalidArgument("--join sends stderr where stdout goes: not with --stderr")
    try:
        cwd = os.path.abspath(template.working_directory or os.getcwd())
    except FileNotFoundError:
        raise StartError("the current directory no longer exists: give -C/--cwd") from None
    if template.input_path is not None:
        # Expanded with stand-ins for the ID and index that no real path holds:
        # equal here means the same file for every task.  (The reaper checks
        # the real paths too, for the coincidences this cannot see.)
        def where(path):
            expanded = expand_path(path, "\0J", "\0A" if is_array else None)
            return os.path.normpath(os.path.join(cwd, expanded))
        for other, option in ((template.output_path, "stdout"),
                              (template.error_path, "stderr")):
            if other is not None and where(other) == where(template.input_path):
                raise InvalidArgument(f"stdin and {option} are the same file: {other}")
    return JobTemplate(
        remote_command=template.remote_command,
        args=list(template.args),
        job_name=template.job_name or os.path.basename(template.remote_command),
        working_directory=cwd,
        job_environment=dict(template.job_environment),
        input_path=template.input_path,
        output_path=template.output_path,
        error_path=template.error_path,
        **{name: getattr(template, name) for name in JobTemplate.OPTIONAL},
    )
