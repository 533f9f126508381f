"""A fake Slurm for ostracker's tests: sbatch, squeue, scontrol, scancel, sacct, sinfo.

After drmaa2os, which keeps fake ``sbatch``/``squeue`` scripts to test its
Slurm tracker without a cluster.  Each command here is a thin script that
calls ``main(NAME, ARGS)``; this module holds the logic.  All of them share
one state file, ``$FAKE_SLURM_DIR/state.json``, read and written under an
flock on ``$FAKE_SLURM_DIR/state.lock``, so concurrent calls are safe.  Every
call appends its argv (``[NAME, ARG...]``) as one JSON line to
``$FAKE_SLURM_DIR/calls.log``.

What the commands print is what Slurm 22.05.8 prints, checked against a real
22.05 cluster (``scripts/slurm-cluster``): ``squeue --json``'s keys and
numbers, the task string of an array's pending tasks (``2,4%1``), sacct's
``-P`` lines with their ``.batch`` steps and ``A_[2,4%1]`` lines, sinfo's
``-O`` columns, ``scontrol -o show node``'s line, and the error lines of each
command (some odd, all real).
``$FAKE_SLURM_DIR/version`` holding ``23.02`` makes ``squeue --json`` print
23.02's shape instead (number objects, a list of state and flags, an exit
code object).

Nothing runs by itself: jobs stay PENDING until a test moves them along
with ``fake-slurm`` (see ``control``), e.g. ``fake-slurm start 4711``,
``fake-slurm end 4711 3``, ``fake-slurm run 4711_2`` (runs the batch
script here, as slurmd would), ``fake-slurm forget 4711``.

Knobs, files in ``$FAKE_SLURM_DIR`` (``fake-slurm`` writes them):

* ``fail-CMD`` (``fail-scontrol-SUB`` for one scontrol subcommand): CMD prints
  the file's text to stderr and exits 1, doing nothing else.
* ``down``: slurmctld does not answer, as the real commands then say
  (sacct, which asks slurmdbd, still works).
* ``no-accounting``: sacct fails with "Slurm accounting storage is disabled".
* ``deny-suspend``: scontrol suspend/resume are refused with
  "Access/permission denied", as for every user who is no Slurm operator.
* ``kill-wait``: a cancelled running job stays COMPLETING (its processes
  ignore SIGTERM) until ``fake-slurm reap`` or ``fake-slurm end``.
* ``delay``: how many ``squeue --json`` looks still show a job as it was before scontrol
  or scancel changed it (counted, not timed: the same on a loaded machine)
  (until then squeue shows the job as before).
* ``sbatch-cluster``: sbatch --parsable prints ``ID;CLUSTER``.
* ``sbatch-gate``: a path; between Slurm taking the job and printing its ID, sbatch
  waits until it exists (so that a test can act in between, however loaded the machine).
* ``term-ends``: a running job given SIGTERM by ``scancel --signal=TERM`` ends by it
  (FAILED, signal 15), as one without a trap; holding ``0``: it ends COMPLETED, exit
  status 0, as one whose trap cleans up and exits.

sbatch honours what ostracker's scheduling options become: ``-p`` (a partition
of a node, else 22.05's refusal), ``--hold`` (priority 0, JobHeldUser),
``--dependency`` (reason Dependency), ``--begin`` (reason BeginTime),
``--cpus-per-task`` (the CPUs the job takes on its node, which sinfo's
``CPUsState`` counts), ``--nice`` (subtracted from the priority).  It takes the
limits' options (``--time``, ``--deadline``, ``--signal``) and keeps them among
the job's options, refusing a ``--signal`` that names no signal Slurm knows.
``scontrol update JobId=ID Comment=TEXT`` sets the comment that ``squeue --json``
shows (what a batch script does to note its attempt); ``fake-slurm run`` gives
the script ``SLURM_RESTART_COUNT`` once the job was requeued.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import signal
import sys
import time

FIRST_ID = 4711
BASE_PRIORITY = 4294901759  # what a fresh 22.05 job gets with priority/basic
TIME_LIMIT = 365 * 86400  # a running job's end_time is its start plus this (22.05 prints it)
DEFAULT_NODE = {"name": "fake1", "state": "idle", "cpus": 4, "sockets": 1, "cores": 4,
                "threads": 1, "memory": 7900, "load": "0.05", "free_memory": 6000,
                "partitions": ["debug*"], "arch": "x86_64",
                "os": "Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
# Flags that Slurm's job_state_string() prints instead of the base state, in its order.
FLAG_ORDER = ("COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED",
              "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD",
              "SIGNALING")
SIGNALS = {name[3:]: number for name, number in signal.Signals.__members__.items()
           if name.startswith("SIG") and not name.startswith("SIG_")}


class Failure(Exception):
    """Print ``message`` on stderr and exit with ``status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.message, self.status = message, status


# -- the shared state ----------------------------------------------------------------------

def directory() -> str:
    path = os.environ.get("FAKE_SLURM_DIR")
    if not path:
        raise Failure("fake Slurm: FAKE_SLURM_DIR is not set", 2)
    return path


def knob(name: str) -> str | None:
    """The text of knob file ``name``, or None if there is none."""
    try:
        with open(os.path.join(directory(), name)) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


class State:
    """The fake cluster, locked for the length of a ``with`` block and saved at its end."""

    def __init__(self, write: bool = True):
        self.write = write

    def __enter__(self) -> dict:
        folder = directory()
        self.lock = os.open(os.path.join(folder, "state.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.path = os.path.join(folder, "state.json")
        try:
            with open(self.path) as handle:
                self.data = json.load(handle)
        except FileNotFoundError:
            self.data = {"next_id": FIRST_ID, "jobs": [], "nodes": [dict(DEFAULT_NODE)],
                         "effects": []}
        self.write = apply_due_effects(self.data) or self.write
        return self.data

    def __exit__(self, kind, value, traceback):
        try:
            if kind is None and self.write:
                temporary = f"{self.path}.{os.getpid()}"
                with open(temporary, "w") as handle:
                    json.dump(self.data, handle, indent=1)
                os.replace(temporary, self.path)
        finally:
            os.close(self.lock)
        return False


def log_call(name: str, args: list[str]) -> None:
    line = json.dumps([name, *args]) + "\n"
    fd = os.open(os.path.join(directory(), "calls.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o600)
    try:
        os.write(fd, line.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


# -- jobs ----------------------------------------------------------------------------------

def new_job(data: dict, **fields) -> dict:
    job_id = data["next_id"]
    data["next_id"] += 1
    uid = os.getuid()
    job = {
        "job_id": job_id, "array_job_id": 0, "array_task_id": None, "pending": None,
        "max_parallel": None, "state": "PENDING", "flags": [], "reason": "None",
        "priority": BASE_PRIORITY, "restart_cnt": 0, "exit_code": 0,
        "submit_time": int(time.time()), "start_time": 0, "end_time": 0, "nodes": "",
        "name": "sbatch", "user_name": user_name(uid), "user_id": uid, "partition": "debug",
        "cwd": os.getcwd(), "script": "", "options": {}, "signals": [], "forgotten": False,
        "cancelled_by": None, "started": False, "cpus": 1,
        "account": {"maxrss": "3200K", "user_cpu": "00:00.010", "system_cpu": "00:00.005"},
    }
    job.update(fields)
    data["jobs"].append(job)
    return job


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def task_label(job: dict, index: int | None = None) -> str:
    """Slurm's name of a job or array task: ``4711``, ``4711_3``."""
    if index is None:
        index = job["array_task_id"]
    return f"{job['array_job_id']}_{index}" if job["array_job_id"] and index is not None \
        else str(job["job_id"])


def format_indices(indices: list[int], limit: int | None = None,
                   width: int | None = None) -> str:
    """Slurm 22.05's task string of an array: ``1,3,5,20-23%2``, or ``1-13:2`` for seven or
    more tasks by one stride; cut after about ``width`` characters with ``...``.
    """
    indices = sorted(indices)
    steps = {b - a for a, b in zip(indices, indices[1:])}
    if len(indices) >= 7 and len(steps) == 1 and steps != {1}:
        parts = [f"{indices[0]}-{indices[-1]}:{steps.pop()}"]
    else:
        parts, run = [], []
        for index in indices + [None]:
            if run and index is not None and index == run[-1] + 1:
                run.append(index)
                continue
            if run:
                parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = [index]
    text = ""
    for part in parts:
        piece = f",{part}" if text else part
        if width is not None and len(text) + len(piece) > width - 4:
            text += "..."
            break
        text += piece
    return text + (f"%{limit}" if limit else "")


def bitstr_width() -> int | None:
    """How much of an array's task string squeue prints: $SLURM_BITSTR_LEN, 64 by default."""
    value = os.environ.get("SLURM_BITSTR_LEN", "")
    if value.strip() == "0":
        return None
    return int(value) if value.strip().isdigit() else 64


def parse_array(text: str) -> tuple[list[int], int | None]:
    """sbatch's --array value: ``B-E[:S]`` or ``I``, comma-separated, ``%MAX`` at the end."""
    spec, _, limit = text.partition("%")
    indices = []
    for part in spec.split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or (step and not step.isdigit()):
            raise ValueError(text)
        indices.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    if not indices or (limit and not limit.isdigit()):
        raise ValueError(text)
    return sorted(set(indices)), int(limit) if limit else None


def visible(data: dict) -> list[dict]:
    return [job for job in data["jobs"] if not job["forgotten"]]


def pending_meta(job: dict) -> bool:
    """Whether ``job`` is the one record of an array's tasks (two or more) not started yet."""
    return bool(job["pending"])


def resolve(data: dict, text: str, include_forgotten: bool = False
            ) -> list[tuple[dict, int | None]]:
    """The (record, index) pairs that Slurm's ``text`` names; index is the pending task
    for a pending array record, else None.  Empty if Slurm knows no such job.
    """
    jobs = data["jobs"] if include_forgotten else visible(data)
    number, _, task = text.partition("_")
    if not number.isdigit() or (task and not task.isdigit()):
        return []
    number = int(number)
    if task:
        index = int(task)
        for job in jobs:
            if job["array_job_id"] == number and job["array_task_id"] == index \
                    and not pending_meta(job):
                return [(job, None)]
        for job in jobs:
            if job["array_job_id"] == number and pending_meta(job) and index in job["pending"]:
                return [(job, index)]
        return []
    whole = [job for job in jobs if job["array_job_id"] == number]
    if whole:  # the array: every task, the pending ones in one record
        return [(job, None) for job in whole]
    return [(job, None) for job in jobs if job["job_id"] == number]


def start_task(data: dict, job: dict, index: int | None, node: str) -> dict:
    """Start a pending job (or one pending task of an array); return its record."""
    if index is not None:  # split off with an ID of its own, as Slurm does
        job = _split(data, job, index)
    if job["state"] != "PENDING":
        raise Failure(f"fake-slurm: job {task_label(job)} is {job['state']}, not PENDING")
    if job["priority"] == 0:
        raise Failure(f"fake-slurm: job {task_label(job)} is held")
    now = int(time.time())
    job.update(state="RUNNING", reason="None", start_time=now, end_time=now + TIME_LIMIT,
               nodes=node, started=True, flags=[])
    return job


def end_job(job: dict, state: str, exit_code: int, reason: str | None = None) -> None:
    now = int(time.time())
    if not job["started"]:
        job["start_time"] = now  # a job ended while pending: Slurm sets both to the end
    job.update(state=state, exit_code=exit_code, end_time=now,
               flags=[flag for flag in job["flags"] if flag != "COMPLETING"])
    if reason is not None:
        job["reason"] = reason


def wait_status(code: int = 0, sig: int = 0) -> int:
    return sig if sig else code << 8


def apply_due_effects(data: dict) -> bool:
    """Carry out the control commands' effects that no look is left to hide; True if any
    was."""
    due = [effect for effect in data.get("effects", []) if effect["looks"] <= 0]
    data["effects"] = [effect for effect in data.get("effects", []) if effect["looks"] > 0]
    for effect in due:
        for job in data["jobs"]:
            if job["job_id"] == effect["job_id"]:
                job.update(effect["fields"])
    return bool(due)


def change(data: dict, job: dict, **fields) -> None:
    """Change a job as a control command does: at once, or after the ``delay`` knob."""
    delay = knob("delay")
    if delay:
        data["effects"].append({"looks": int(delay), "job_id": job["job_id"],
                                "fields": json.loads(json.dumps(fields))})
    else:
        job.update(fields)


# -- squeue --------------------------------------------------------------------------------

def printed_state(job: dict) -> str:
    for flag in FLAG_ORDER:
        if flag in job["flags"]:
            return flag
    return job["state"]


def squeue_record(job: dict) -> dict:
    """One job as 22.05's ``squeue --json`` (openapi/v0.0.38) prints it."""
    is_array = bool(job["array_job_id"])
    task_id = job["array_task_id"]
    task_string = ""
    if pending_meta(job):
        task_id = None
        task_string = format_indices(job["pending"], job["max_parallel"], bitstr_width())
    options = job["options"]
    return {
        "account": "", "accrue_time": job["submit_time"],
        "array_job_id": job["array_job_id"],
        "array_task_id": task_id if is_array else None,
        "array_max_tasks": job["max_parallel"] or 0,
        "array_task_string": task_string,
        "batch_flag": True, "batch_host": job["nodes"].split(",")[0] if job["nodes"] else "",
        "command": "", "comment": job.get("comment", ""), "cpus": job.get("cpus", 1),
        "current_working_directory": job["cwd"],
        "derived_exit_code": 0, "end_time": job["end_time"], "exit_code": job["exit_code"],
        "group_id": os.getgid(), "job_id": job["job_id"], "job_state": printed_state(job),
        "name": job["name"], "node_count": 1, "nodes": job["nodes"],
        "partition": job["partition"], "priority": job["priority"],
        "restart_cnt": job["restart_cnt"],
        "standard_error": options.get("error", ""), "standard_input": options.get("input", ""),
        "standard_output": options.get("output", ""),
        "start_time": job["start_time"], "state_description": "",
        "state_reason": job["reason"], "submit_time": job["submit_time"], "suspend_time": 0,
        "user_id": job["user_id"], "user_name": job["user_name"],
    }


def number_object(value, set_=None) -> dict:
    """23.02's ``{"set", "infinite", "number"}``."""
    return {"set": bool(value) if set_ is None else set_, "infinite": False,
            "number": value or 0}


def squeue_record_2302(job: dict) -> dict:
    """The same job as 23.02's ``squeue --json`` (openapi/v0.0.39) prints it."""
    record = squeue_record(job)
    status = record["exit_code"]
    sig = status & 0x7F
    record.update(
        job_state=[job["state"], *[flag for flag in FLAG_ORDER if flag in job["flags"]]],
        array_job_id=number_object(record["array_job_id"], True),
        array_task_id=number_object(record["array_task_id"],
                                    record["array_task_id"] is not None),
        array_max_tasks=number_object(record["array_max_tasks"], True),
        priority=number_object(record["priority"], True),
        exit_code={"status": ["SIGNALED"] if sig else ["EXITED"] if status else ["SUCCESS"],
                   "return_code": number_object(0 if sig else status >> 8, True),
                   "signal": {"id": number_object(sig, bool(sig)),
                              "name": signal.Signals(sig).name[3:] if sig in
                              signal.valid_signals() else ""}},
        derived_exit_code=number_object(0, True),
        **{key: number_object(record[key], True) for key in
           ("submit_time", "start_time", "end_time", "accrue_time", "suspend_time")})
    return record


def squeue(args: list[str]) -> str:
    json_out = "--json" in args
    known = {"--json", "--states=all", "--me", "-h", "--noheader", "-a", "--all"}
    rest = [arg for arg in args if arg not in known]
    if not json_out:
        return squeue_lines(rest, "--me" in args)
    if rest:
        raise Failure(f"squeue: unrecognized option '{rest[0]}'\n"
                      "Try \"squeue --help\" for more information")
    version = (knob("version") or "22.05").strip()
    meta = {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
            "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}}
    if version == "23.02":
        meta = {"plugin": {"type": "openapi/v0.0.39", "name": "Slurm OpenAPI v0.0.39"},
                "Slurm": {"version": {"major": 23, "micro": 6, "minor": 2},
                          "release": "23.02.6"}}
    if knob("down") is not None:  # 22.05 says so in the JSON, and exits 0
        return json.dumps({"meta": meta, "errors": [{
            "description": "Failed while looking for jobs", "error_number": -1,
            "error": "Unspecified error", "source": "slurm_load_jobs"}], "jobs": []}, indent=2)
    # 22.05 ignores --me and --states with --json: every job of the cluster is printed.
    state = State(write=False)
    with state as data:
        records = [squeue_record_2302(job) if version == "23.02" else squeue_record(job)
                   for job in visible(data)]
        for effect in data["effects"]:  # this look was one of those the effect waits out
            effect["looks"] -= 1
            state.write = True
    return json.dumps({"meta": meta, "errors": [], "jobs": records}, indent=2)


SQUEUE_CODES = {"i": None, "P": "partition", "T": None, "r": "reason", "Q": "priority"}


def squeue_lines(args: list[str], me: bool) -> str:
    """``squeue -h [-r] -o FORMAT [-t all] [-j IDS]``, FORMAT of ``%i %P %T %r %Q`` and
    text between them: the active jobs (conftest asks ``%i``; ``queue`` the rest).
    With ``-r`` each pending task of an array is a line of its own."""
    ids, states, fmt, expand = None, "active", "%i", False
    words = iter(args)
    for arg in words:
        if arg in ("-j", "--jobs"):
            ids = next(words, "").split(",")
        elif arg in ("-t", "--states"):
            states = next(words, "")
        elif arg in ("-o", "--format"):
            fmt = next(words, "")
        elif arg in ("-r", "--array"):
            expand = True
        else:
            raise Failure(f"squeue: unrecognized option '{arg}'")
    codes = fmt.split("%")[1:]
    if not all(code[:1] in SQUEUE_CODES for code in codes):
        raise Failure(f"squeue: the fake prints only %i %P %T %r %Q, not {fmt!r}")
    with State(write=False) as data:
        jobs = [job for job in visible(data) if (states.lower() == "all" or
                job["state"] in ("PENDING", "RUNNING", "SUSPENDED")) and
                (not me or job["user_id"] == os.getuid())]
    lines = []
    for job in jobs:
        if pending_meta(job) and expand:
            labels = [task_label(job, index) for index in job["pending"]]
        elif pending_meta(job):
            pending = format_indices(job["pending"], job["max_parallel"])
            labels = [f"{job['array_job_id']}_[{pending}]"]
        else:
            labels = [task_label(job)]
        for label in labels:
            if ids is None or label in ids or str(job["job_id"]) in ids or \
                    str(job["array_job_id"]) in ids:
                values = {"i": label, "T": printed_state(job)}
                lines.append(fmt.split("%")[0] + "".join(
                    str(values.get(code[0], job.get(SQUEUE_CODES[code[0]]))) + code[1:]
                    for code in codes))
    return "".join(line + "\n" for line in lines)


# -- partitions ----------------------------------------------------------------------------

def partition_names(data: dict) -> list[str]:
    """The partitions of the nodes, in the order they first appear (without the ``*``)."""
    names = [name.rstrip("*") for node in data["nodes"] for name in node["partitions"]]
    return list(dict.fromkeys(names))


def default_partition(data: dict) -> str:
    marked = [name.rstrip("*") for node in data["nodes"] for name in node["partitions"]
              if name.endswith("*")]
    return marked[0] if marked else partition_names(data)[0]


def cpus_state(data: dict, node: dict) -> list[int]:
    """A node's CPUs as sinfo's ``CPUsState`` counts them: allocated (to the jobs running
    there), idle, other (a node down or drained), total."""
    total = node["cpus"]
    if node["state"].rstrip("*~#$@+").split("+")[0] in ("down", "drained", "draining", "fail"):
        return [0, 0, total, total]
    allocated = min(total, sum(job.get("cpus", 1) for job in visible(data)
                               if job["state"] in ("RUNNING", "SUSPENDED")
                               and job["nodes"] == node["name"]))
    return [allocated, total - allocated, 0, total]


# -- sbatch --------------------------------------------------------------------------------

SBATCH_OPTIONS = {  # option -> key in the job's options; True: takes a value
    "-J": "job_name", "--job-name": "job_name", "-D": "chdir", "--chdir": "chdir",
    "-o": "output", "--output": "output", "-e": "error", "--error": "error",
    "-i": "input", "--input": "input", "-a": "array", "--array": "array",
    "--export": "export", "-p": "partition", "--partition": "partition",
    "-c": "cpus_per_task", "--cpus-per-task": "cpus_per_task", "-d": "dependency",
    "--dependency": "dependency", "-b": "begin", "--begin": "begin", "--nice": "nice",
    "-t": "time", "--time": "time", "--deadline": "deadline", "--signal": "signal",
}
# The signal names Slurm's commands know (proc_args.c's sig_name2num); others by number.
SLURM_SIGNAL_NAMES = {"HUP", "INT", "QUIT", "ABRT", "KILL", "ALRM", "TERM", "USR1", "USR2",
                      "URG", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "XCPU"}
SBATCH_FLAGS = {"-H": "hold", "--hold": "hold"}  # options that take no value


def sbatch(args: list[str], stdin: bytes) -> str:
    options, parsable = {}, False
    words = iter(args)
    for arg in words:
        if arg == "--parsable":
            parsable = True
            continue
        if arg in SBATCH_FLAGS:
            options[SBATCH_FLAGS[arg]] = True
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not arg.startswith("--") and len(arg) > 2 and arg[:2] in SBATCH_OPTIONS:
            name, eq, value = arg[:2], "=", arg[2:]  # -Jname
        if name not in SBATCH_OPTIONS:
            if arg.startswith("-"):
                raise Failure(f"sbatch: unrecognized option '{arg}'\n"
                              "Try \"sbatch --help\" for more information")
            raise Failure("sbatch: error: the fake reads the batch script from stdin only, "
                          f"not from {arg!r}")
        if not eq:
            value = next(words, None)
            if value is None:
                raise Failure(f"sbatch: option '{arg}' requires an argument")
        options[SBATCH_OPTIONS[name]] = value
    if knob("down") is not None:
        raise Failure("sbatch: error: Batch job submission failed: Unable to contact slurm "
                      "controller (connect failure)")
    script = stdin.decode("utf-8", "surrogateescape")
    if not script.startswith("#!"):
        raise Failure("sbatch: error: This does not look like a batch script.  The first line "
                      "must start with #! followed by the path to an interpreter.\n"
                      "sbatch: error: For instance: #!/bin/sh")
    if "\r\n" in script:
        raise Failure("sbatch: error: Batch script contains DOS line breaks (\\r\\n)\n"
                      "sbatch: error: instead of expected UNIX line breaks (\\n).")
    if "signal" in options:  # [B:]SIG[@SEC], SIG a name Slurm knows or a number
        sig, _, seconds = options["signal"].removeprefix("B:").partition("@")
        sig = sig.upper().removeprefix("SIG")
        if not (sig in SLURM_SIGNAL_NAMES or sig.isdigit()) or \
                (seconds and not (seconds.isdigit() and int(seconds) <= 0xFFFF)):
            raise Failure("sbatch: error: Invalid --signal specification")
    begin = None
    if "begin" in options:
        try:
            begin = time.mktime(time.strptime(options["begin"], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            raise Failure(f"sbatch: error: Invalid time specification {options['begin']}") \
                from None
    indices, limit = None, None
    if "array" in options:
        try:
            indices, limit = parse_array(options["array"])
        except ValueError:
            raise Failure("sbatch: error: Invalid job array specification") from None
    with State() as data:
        partition = options.get("partition")
        if partition is not None and partition not in partition_names(data):
            raise Failure(f"sbatch: error: invalid partition specified: {partition}\n"
                          "sbatch: error: Batch job submission failed: Invalid partition name "
                          "specified")
        reason = "JobHeldUser" if options.get("hold") else "Dependency" \
            if options.get("dependency") else "BeginTime" if begin and begin > time.time() \
            else "Priority"
        fields = {"name": options.get("job_name") or "sbatch",
                  "cwd": os.path.abspath(options.get("chdir") or os.getcwd()),
                  "partition": partition or default_partition(data), "script": script,
                  "options": options, "argv": ["sbatch", *args], "reason": reason,
                  "cpus": int(options.get("cpus_per_task", 1)),
                  "priority": 0 if options.get("hold") else
                  BASE_PRIORITY - int(options.get("nice", 0))}
        if indices is not None:
            # slurmdbd's copy of the pending tasks lags behind slurmctld's: 22.05's
            # sacct printed 6_[5,7,9%3] where 5 and 7 had run.  The fake's is the
            # list as submitted, the lag at its longest.
            job = new_job(data, **fields, pending=indices, max_parallel=limit,
                          db_pending=list(indices))
            job["array_job_id"] = job["job_id"]
            normalize(job)
        else:
            job = new_job(data, **fields)
    gate = knob("sbatch-gate")
    if gate:  # Slurm has the job; sbatch has not said so yet
        while not os.path.exists(gate.strip()):
            time.sleep(0.01)
    cluster = knob("sbatch-cluster")
    if parsable:
        return f"{job['job_id']};{cluster.strip()}\n" if cluster else f"{job['job_id']}\n"
    return f"Submitted batch job {job['job_id']}\n"


# -- scontrol, scancel ---------------------------------------------------------------------

def scontrol(args: list[str]) -> str:
    if args[:1] == ["-o"] or args[-1:] == ["-o"] or args[:1] == ["show"]:
        return show_node([arg for arg in args if arg != "-o"], "-o" in args)
    if args[:1] == ["update"]:
        return update(args[1:])
    if len(args) != 2 or args[0] not in ("hold", "release", "suspend", "resume", "requeue"):
        raise Failure(f"scontrol: the fake knows only hold/release/suspend/resume/requeue "
                      f"JOB_LIST, not {args!r}")
    action, job_list = args
    if knob("down") is not None:
        first = job_list.split(",")[0]
        raise Failure(f"Unexpected message received for job {first}\n"
                      "slurm_suspend error: Unexpected message received")
    if action in ("suspend", "resume") and knob("deny-suspend") is not None:
        raise Failure("slurm_suspend error: Access/permission denied")
    errors = []
    with State() as data:
        for text in job_list.split(","):
            targets = resolve(data, text)
            if not targets:
                if action in ("suspend", "resume"):
                    errors.append(f"Unexpected message received for job {text}")
                else:  # 22.05's own words, slurm_suspend and all
                    errors += [f"Invalid job id specified for job {text}",
                               "slurm_suspend error: Invalid job id specified"]
                continue
            whole_array = len(targets) > 1 or "_" not in text and targets[0][0]["array_job_id"]
            for job, index in targets:
                errors += _control(data, action, job, index, text, whole_array)
    if errors:
        raise Failure("\n".join(errors))
    return ""


def update(args: list[str]) -> str:
    """``scontrol update JobId=ID Comment=TEXT``: the only update the fake knows."""
    fields = dict(arg.partition("=")[::2] for arg in args)
    if set(fields) != {"JobId", "Comment"}:
        raise Failure(f"scontrol: the fake updates only JobId=ID Comment=TEXT, not {args!r}")
    if knob("down") is not None:
        raise Failure("slurm_update error: Unable to contact slurm controller "
                      "(connect failure)")
    with State() as data:
        targets = resolve(data, fields["JobId"])
        if len(targets) != 1 or targets[0][1] is not None:
            raise Failure("slurm_update error: Invalid job id specified")
        targets[0][0]["comment"] = fields["Comment"]
    return ""


def show_node(args: list[str], one_line: bool) -> str:
    """``scontrol -o show node [NAME]``: 22.05's line of each node (without -o it prints
    several lines a node; the fake does not).  Arch and OS only for a node that has them
    (one that never registered has neither).
    """
    if args[:1] != ["show"] or len(args) not in (2, 3) or args[1] not in ("node", "nodes"):
        raise Failure(f"scontrol: the fake shows only nodes, not {args!r}")
    if not one_line:
        raise Failure("scontrol: the fake shows nodes with -o only")
    if knob("down") is not None:
        raise Failure("slurm_load_node error: Unable to contact slurm controller "
                      "(connect failure)")
    with State(write=False) as data:
        nodes = [node for node in data["nodes"] if len(args) == 2 or node["name"] == args[2]]
    if not nodes:
        raise Failure(f"Node {args[2]} not found")
    lines = []
    for node in nodes:
        arch = f"Arch={node['arch']} " if node.get("arch") else ""
        system = f"OS={node['os']}  " if node.get("os") else ""  # (two spaces: 22.05's)
        state = node["state"].upper().rstrip("*~#$@+")
        partitions = ",".join(name.rstrip("*") for name in node["partitions"])
        lines.append(
            f"NodeName={node['name']} {arch}CoresPerSocket={node['cores']}  CPUAlloc=0 "
            f"CPUEfctv={node['cpus']} CPUTot={node['cpus']} CPULoad={node['load']} "
            "AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) "
            f"NodeAddr={node['name']} NodeHostName={node['name']} Version=22.05.8 {system}"
            f"RealMemory={node['memory']} AllocMem=0 FreeMem={node['free_memory']} "
            f"Sockets={node['sockets']} Boards=1 State={state} "
            f"ThreadsPerCore={node['threads']} TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A "
            f"Partitions={partitions}  BootTime=2026-01-05T09:00:00 "
            "SlurmdStartTime=2026-01-05T09:00:10 LastBusyTime=2026-01-05T09:10:00 "
            f"CfgTRES=cpu={node['cpus']},mem={node['memory']}M,billing={node['cpus']} "
            "AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s "
            "ExtSensorsWatts=0 ExtSensorsTemp=n/s")
    return "".join(line + "\n" for line in lines)


def _control(data, action, job, index, text, whole_array) -> list[str]:
    state = job["state"]
    if action in ("suspend", "resume"):
        if index is not None or state == "PENDING":
            return [] if whole_array else [f"Job is pending execution for job {text}"]
        if state in ENDED:
            return [] if whole_array else [f"Job has already finished for job {text}"]
        if action == "suspend" and state == "RUNNING":
            change(data, job, state="SUSPENDED")
        elif action == "resume" and state == "SUSPENDED":
            change(data, job, state="RUNNING")
        elif not whole_array:
            return [f"Job is not suspended for job {text}" if action == "resume" else
                    f"Job is not running for job {text}"]
        return []
    if action == "requeue":
        if state not in ("RUNNING", "SUSPENDED") and state not in ENDED:
            return [f"Job is pending execution for job {text}"]
        change(data, job, state="PENDING", reason="BeginTime", nodes="",
               restart_cnt=job["restart_cnt"] + 1, exit_code=0, started=False, flags=[])
        return []
    # hold, release: a running job takes them too, silently, and stays running (22.05)
    if state in ENDED:
        return [] if whole_array else [f"Job has already finished for job {text}",
                                       "slurm_suspend error: Job has already finished"]
    if index is not None:  # one pending task of several: split it off
        job = _split(data, job, index)
    if action == "hold":
        change(data, job, priority=0, reason="JobHeldUser")
    elif job["priority"] == 0:
        change(data, job, priority=BASE_PRIORITY, reason="None")
    return []


def _split(data: dict, job: dict, index: int) -> dict:
    """Give pending task ``index`` of array record ``job`` a record of its own."""
    job["pending"].remove(index)
    fields = json.loads(json.dumps({key: value for key, value in job.items()
                                    if key not in ("job_id", "db_pending")}))
    task = new_job(data, **{**fields, "pending": None, "array_task_id": index})
    normalize(job)
    return task


def normalize(job: dict) -> None:
    """An array record left with one pending task is that task's record (as in Slurm)."""
    if job["pending"] is not None and len(job["pending"]) == 1:
        job["array_task_id"], job["pending"] = job["pending"][0], None


def scancel(args: list[str]) -> str:
    sig, full, ids = None, False, []
    for arg in args:
        if arg in ("-f", "--full"):
            full = True
        elif arg.startswith("--signal="):
            sig = arg.partition("=")[2]
        elif arg.startswith("-"):
            raise Failure(f"scancel: unrecognized option '{arg}'")
        else:
            ids += arg.split(",")
    if not ids:
        raise Failure("scancel: error: No job identification provided")
    if knob("down") is not None:
        raise Failure(f"scancel: error: Kill job error on job id {ids[0]}: Unable to contact "
                      "slurm controller (connect failure)", 8)
    if sig is not None and sig.upper().removeprefix("SIG") not in SLURM_SIGNAL_NAMES and \
            not sig.isdigit():
        raise Failure(f"Unknown job signal: {sig}")  # 22.05's words, no prefix
    errors = []
    with State() as data:
        for text in ids:
            targets = resolve(data, text)
            if not targets:
                if sig is not None:  # a plain scancel of an unknown job says nothing (22.05)
                    errors.append(f"scancel: error: Kill job error on job id {text}: "
                                  "Invalid job id specified")
                continue
            for job, index in targets:
                if sig is not None:
                    if job["state"] in ("RUNNING", "SUSPENDED"):
                        job["signals"].append({"signal": sig.upper().removeprefix("SIG"),
                                               "full": full})
                        ends = knob("term-ends")
                        if ends is not None and job["state"] == "RUNNING" and \
                                sig.upper().removeprefix("SIG") in ("TERM", "15"):
                            if ends.strip() == "0":
                                end_job(job, "COMPLETED", 0)
                            else:
                                end_job(job, "FAILED", wait_status(sig=signal.SIGTERM))
                    elif "_" in text or len(targets) == 1:
                        errors.append(f"scancel: error: Kill job error on job id {text}: "
                                      "Job is pending execution")
                    continue
                _cancel(data, job, index, whole="_" not in text)
    if errors:
        raise Failure("\n".join(errors))
    return ""


def _cancel(data: dict, job: dict, index: int | None, whole: bool) -> None:
    now = int(time.time())
    state = job["state"]
    if state in ENDED:
        return
    if index is not None:
        # One pending task of several: 22.05 drops it from the array's pending
        # record, and neither squeue nor ``sacct -j A_I`` shows it ever after.
        job["pending"].remove(index)
        job.setdefault("dropped", []).append(index)
        normalize(job)
        return
    if state in ("RUNNING", "SUSPENDED"):
        if knob("kill-wait") is not None:  # processes that ignore SIGTERM: COMPLETING
            change(data, job, state="CANCELLED", flags=["COMPLETING"],
                   exit_code=wait_status(sig=signal.SIGTERM), end_time=now,
                   cancelled_by=os.getuid())
        else:
            change(data, job, state="CANCELLED", exit_code=wait_status(sig=signal.SIGTERM),
                   end_time=now, cancelled_by=os.getuid())
    else:  # pending (held or not): both times are the cancel's
        change(data, job, state="CANCELLED", start_time=now, end_time=now,
               cancelled_by=os.getuid())


# -- sacct ---------------------------------------------------------------------------------

SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "State", "ExitCode", "Start", "End",
                "NodeList", "MaxRSS", "UserCPU", "SystemCPU", "Reason")


def local_time(epoch: int | None, unset: str = "Unknown") -> str:
    """A time as sacct prints it: local, ISO 8601 unless $SLURM_TIME_FORMAT says otherwise."""
    if not epoch:
        return unset
    form = os.environ.get("SLURM_TIME_FORMAT", "standard")
    if form == "relative":  # today's times by the clock alone
        today = time.localtime().tm_yday == time.localtime(epoch).tm_yday
        return time.strftime("%H:%M:%S" if today else "%d %b %H:%M", time.localtime(epoch))
    if form not in ("standard", ""):
        return time.strftime(form, time.localtime(epoch))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def sacct(args: list[str]) -> str:
    fields, ids, parsable, header = None, None, False, True
    words = iter(args)
    for arg in words:
        if arg in ("-P", "--parsable2"):
            parsable = True
        elif arg in ("-n", "--noheader"):
            header = False
        elif arg.startswith("--format="):
            fields = arg.partition("=")[2].split(",")
        elif arg in ("-j", "--jobs"):
            ids = next(words, "").split(",")
        elif arg.startswith("--jobs="):
            ids = arg.partition("=")[2].split(",")
        else:
            raise Failure(f"sacct: unrecognized option '{arg}'")
    if not parsable or header or fields is None or ids is None:
        raise Failure("sacct: the fake prints only -P -n --format=... -j IDS")
    unknown = [field for field in fields if field not in SACCT_FIELDS]
    if unknown:
        raise Failure(f"sacct: error: Invalid field requested: \"{unknown[0]}\"")
    if knob("no-accounting") is not None:
        raise Failure("Slurm accounting storage is disabled")
    lines = []
    with State(write=False) as data:
        jobs = data["jobs"]
        chosen: list[tuple[dict, bool]] = []  # (record, as the array's pending line)
        for text in ids:
            number, _, task = text.partition("_")
            if not number.isdigit():
                raise Failure(f"sacct: error: Invalid job id: {text}")
            for job in sorted(jobs, key=lambda job: job["job_id"]):
                if task:  # one task: never one still in an array's pending line (22.05)
                    hit = job["array_job_id"] == int(number) and not pending_meta(job) and \
                        str(job["array_task_id"]) == task
                else:
                    hit = job["job_id"] == int(number) and not job["array_job_id"] or \
                        job["array_job_id"] == int(number)
                if hit and (job, pending_meta(job)) not in chosen:
                    chosen.append((job, pending_meta(job)))
        # 22.05 prints an array's pending line after its tasks' lines
        chosen.sort(key=lambda pair: (pair[0]["array_job_id"] or pair[0]["job_id"], pair[1]))
        for job, as_pending in chosen:
            lines += sacct_lines(job, fields, as_pending)
    return "".join(line + "\n" for line in lines)


def sacct_lines(job: dict, fields: list[str], as_pending: bool) -> list[str]:
    state = job["state"]
    sig = job["exit_code"] & 0x7F
    code = 0 if sig else job["exit_code"] >> 8
    if as_pending:  # slurmdbd's list (see sbatch)
        indices = job.get("db_pending") or job["pending"]
        label = f"{job['array_job_id']}_[{format_indices(indices, job['max_parallel'])}]"
    else:
        label = task_label(job)
    started = job["started"]
    account = job["account"]
    ended = state in ENDED
    job_state = f"CANCELLED by {job['cancelled_by']}" if state == "CANCELLED" and \
        job["cancelled_by"] is not None else state
    if state == "CANCELLED":
        exit_text = "0:0"  # the job line says 0:0; the signal is on the batch step
    else:
        exit_text = f"{code}:{sig}"
    values = {
        "JobID": label, "JobIDRaw": str(job["job_id"]), "JobName": job["name"],
        "State": job_state, "ExitCode": exit_text,
        "Start": local_time(job["start_time"]) if started else ("None" if ended else "Unknown"),
        "End": local_time(job["end_time"]) if ended else "Unknown",
        "NodeList": job["nodes"] if started else "None assigned",
        "MaxRSS": "", "UserCPU": account["user_cpu"] if started and ended else "00:00:00",
        "SystemCPU": account["system_cpu"] if started and ended else "00:00:00",
        # 22.05 keeps the reason of a job that never started (DependencyNeverSatisfied)
        "Reason": "None" if started else job["reason"],
    }
    lines = ["|".join(values[field] for field in fields)]
    if started:
        step = dict(values, JobID=f"{label}.batch", JobIDRaw=f"{job['job_id']}.batch",
                    JobName="batch", State=state if state != "CANCELLED" else "CANCELLED",
                    ExitCode=f"{code}:{sig}", MaxRSS=account["maxrss"] if ended else "",
                    Reason="")
        lines.append("|".join(step[field] for field in fields))
    return lines


# -- sinfo ---------------------------------------------------------------------------------

# sinfo -O fields of 22.05 (the ones a test may ask for); Arch and OS are not among them.
SINFO_FIELDS = {"NodeList": "name", "NodeHost": "name", "StateLong": "state", "CPUs": "cpus",
                "Sockets": "sockets", "Cores": "cores", "Threads": "threads",
                "Memory": "memory", "CPUsLoad": "load", "FreeMem": "free_memory",
                "Partition": None, "PartitionName": None, "CPUsState": None}


def sinfo(args: list[str]) -> str:
    spec, flags = None, set()
    words = iter(args)
    for arg in words:
        if arg in ("-h", "--noheader", "-N", "--Node"):
            flags.add({"--noheader": "h", "--Node": "N"}.get(arg, arg[1:]))
        elif arg in ("-O", "--Format"):
            spec = next(words, "")
        elif arg.startswith("--Format="):
            spec = arg.partition("=")[2]
        else:
            raise Failure(f"sinfo: unrecognized option '{arg}'")
    if knob("down") is not None:
        raise Failure("slurm_load_partitions: Unable to contact slurm controller "
                      "(connect failure)")
    if spec is None or "h" not in flags:
        raise Failure("sinfo: the fake prints only -h [-N] -O FIELDS")
    columns = []
    warnings = []
    for item in spec.split(","):
        name, _, rest = item.partition(":")
        suffix = rest.lstrip(".").lstrip("0123456789")
        if name not in SINFO_FIELDS:
            warnings.append(f"sinfo: error: Invalid job format specification: {name}")
        columns.append((name, suffix))
    with State(write=False) as data:
        # -N: a line per node and partition; else by partition, a line per node of it
        # (22.05 puts alike nodes on one line: the fake takes none for alike)
        pairs = [(node, partition) for node in data["nodes"] for partition in node["partitions"]]
        if "N" not in flags:
            order = partition_names(data)
            pairs.sort(key=lambda pair: order.index(pair[1].rstrip("*")))
        cpus = {node["name"]: cpus_state(data, node) for node in data["nodes"]}
    lines = []
    for node, partition in pairs:
        cells = []
        for name, suffix in columns:
            if name == "Partition":
                value = partition
            elif name == "PartitionName":
                value = partition.rstrip("*")
            elif name == "CPUsState":
                value = "/".join(map(str, cpus[node["name"]]))
            elif name in SINFO_FIELDS:
                value = str(node[SINFO_FIELDS[name]])
            else:
                value = ""
            cells.append(value + suffix)
        lines.append("".join(cells))
    if warnings:  # 22.05 warns about the field, prints it empty, and exits 0
        sys.stderr.write("\n".join(warnings) + "\n")
    return "".join(line + "\n" for line in lines)


# -- fake-slurm: moving jobs along ---------------------------------------------------------

CONTROL_HELP = """usage: fake-slurm COMMAND ...
  start ID[_I][,...] [NODE]      PENDING -> RUNNING (an array ID: every pending task)
  end ID[_I] EXIT                RUNNING/SUSPENDED -> COMPLETED (0) or FAILED
  end ID[_I] --signal SIG        ... -> FAILED by a signal (--state to choose the state)
  end ID[_I] EXIT --state STATE  ... -> STATE (TIMEOUT, NODE_FAIL, OUT_OF_MEMORY ...)
  run ID[_I]                     start, run the batch script here as slurmd would, end
  set ID[_I] STATE [REASON]      set the base state as is (also one Slurm does not have)
  flag ID[_I] FLAG|-FLAG         add or remove a state flag (COMPLETING, STOPPED ...)
  hold-admin ID[_I]              held by an operator (priority 0, JobHeldAdmin)
  priority ID[_I] N              set the priority as is
  requeue ID[_I]                 back to PENDING, restart_cnt + 1
  reap ID[_I]                    a COMPLETING (kill-wait) job's processes are gone
  account ID[_I] MAXRSS USERCPU SYSTEMCPU   what sacct reports of it
  forget ID                      slurmctld forgets it (MinJobAge); sacct still knows
  foreign NAME USER UID [STATE]  a job of another user
  node STATE [PARTITION...]      the node's state (and its partitions)
  add-node NAME CPUS PARTITION...  one more node (idle)
  platform [ARCH [OS]]           the node's Arch and OS (none: it never registered)
  knob NAME [TEXT] | unknob NAME set or remove a knob file
  show [ID[_I]]                  the records, as JSON
"""


def control(args: list[str]) -> str:
    known = {"start", "end", "run", "set", "flag", "hold-admin", "priority", "requeue", "reap",
             "account", "forget", "foreign", "node", "add-node", "platform", "knob", "unknob",
             "show"}
    if not args or args[0] not in known:
        raise Failure(CONTROL_HELP, 2)
    command, rest = args[0], args[1:]
    if command == "knob":
        with open(os.path.join(directory(), rest[0]), "w") as handle:
            handle.write(rest[1] if len(rest) > 1 else "")
        return ""
    if command == "unknob":
        try:
            os.unlink(os.path.join(directory(), rest[0]))
        except FileNotFoundError:
            pass
        return ""
    if command == "run":
        return run_job(rest)
    with State() as data:
        if command == "show":
            if not rest:
                return json.dumps(data, indent=1) + "\n"
            found = targets_of(data, rest[0], include_forgotten=True)
            return json.dumps([dict(job, pending_index=index) for job, index in found],
                              indent=1) + "\n"
        if command == "foreign":
            name, user, uid = rest[:3]
            job = new_job(data, name=name, user_name=user, user_id=int(uid), cwd="/tmp",
                          reason="Priority")
            job["account"] = {"maxrss": "", "user_cpu": "", "system_cpu": ""}
            if len(rest) > 3 and rest[3] == "RUNNING":
                start_task(data, job, None, data["nodes"][0]["name"])
            return f"{job['job_id']}\n"
        if command == "node":
            node = data["nodes"][0]
            node["state"] = rest[0]
            if len(rest) > 1:
                node["partitions"] = rest[1:]
            return ""
        if command == "add-node":
            data["nodes"].append(dict(DEFAULT_NODE, name=rest[0], cpus=int(rest[1]),
                                      cores=int(rest[1]), partitions=rest[2:]))
            return ""
        if command == "platform":
            node = data["nodes"][0]
            node["arch"] = rest[0] if rest else None
            node["os"] = rest[1] if len(rest) > 1 else None
            return ""
        if command == "forget":
            for job, _ in targets_of(data, rest[0]):
                job["forgotten"] = True
            return ""
        if command == "start":
            node = rest[1] if len(rest) > 1 else data["nodes"][0]["name"]
            for text in rest[0].split(","):
                targets = targets_of(data, text)
                if "_" in text or not targets[0][0]["array_job_id"]:
                    for job, index in targets:
                        start_task(data, job, index, node)
                    continue
                for job, _ in targets:  # a whole array: every pending task
                    while pending_meta(job):
                        start_task(data, job, job["pending"][0], node)
                    if job["state"] == "PENDING" and job["priority"] != 0:
                        start_task(data, job, None, node)
            return ""
        targets = targets_of(data, rest[0]) if rest else []
        jobs = [split_if_pending(data, job, index) for job, index in targets]
        if command == "end":
            exit_code, sig, state = 0, 0, None
            words = iter(rest[1:])
            for word in words:
                if word == "--signal":
                    name = next(words)
                    sig = int(name) if name.isdigit() else \
                        SIGNALS[name.upper().removeprefix("SIG")]
                elif word == "--state":
                    state = next(words)
                else:
                    exit_code = int(word)
            for job in jobs:
                if job["state"] not in ("RUNNING", "SUSPENDED") and \
                        "COMPLETING" not in job["flags"]:
                    if len(jobs) > 1:
                        continue
                    raise Failure(f"fake-slurm: job {task_label(job)} is {job['state']}: "
                                  "cannot end it")
                final = state or ("COMPLETED" if exit_code == 0 and not sig else "FAILED")
                end_job(job, final, wait_status(exit_code, sig),
                        "NonZeroExitCode" if final == "FAILED" else None)
            return ""
        for job in jobs:
            if command == "set":
                job["state"] = rest[1]
                if len(rest) > 2:
                    job["reason"] = rest[2]
                if rest[1] in ENDED and not job["end_time"]:
                    job["end_time"] = int(time.time())
            elif command == "flag":
                flag = rest[1]
                if flag.startswith("-"):
                    job["flags"] = [f for f in job["flags"] if f != flag[1:]]
                else:
                    job["flags"].append(flag)
            elif command == "hold-admin":
                job.update(priority=0, reason="JobHeldAdmin")
            elif command == "priority":
                job["priority"] = int(rest[1])
            elif command == "requeue":
                job.update(state="PENDING", reason="BeginTime", nodes="", exit_code=0,
                           restart_cnt=job["restart_cnt"] + 1, started=False, flags=[])
            elif command == "reap":
                job["flags"] = [f for f in job["flags"] if f != "COMPLETING"]
            elif command == "account":
                job["account"] = {"maxrss": rest[1], "user_cpu": rest[2],
                                  "system_cpu": rest[3]}
            else:
                raise Failure(CONTROL_HELP, 2)
    return ""


def targets_of(data: dict, text: str, include_forgotten: bool = False):
    found = resolve(data, text, include_forgotten)
    if not found:
        raise Failure(f"fake-slurm: no such job: {text}")
    return found


def split_if_pending(data: dict, job: dict, index: int | None) -> dict:
    """The record of one task, split off the array's pending record if it is in it."""
    return job if index is None else _split(data, job, index)


def expand_filename(pattern: str, job: dict) -> str:
    """Slurm's filename pattern: %A %a %j %J %x %u %N %n %t %s %%; none in a path with ``\\``,
    whose backslashes then escape the character that follows.
    """
    if "\\" in pattern:
        out, chars = [], iter(pattern)
        for char in chars:
            out.append(next(chars, "") if char == "\\" else char)
        return "".join(out)
    task = job["array_task_id"]
    codes = {"A": str(job["array_job_id"] or job["job_id"]),
             "a": str(task) if task is not None else "4294967294",
             "j": str(job["job_id"]), "J": str(job["job_id"]), "x": job["name"],
             "u": job["user_name"], "N": job["nodes"], "n": "0", "t": "0", "s": "batch",
             "%": "%"}
    out, chars = [], iter(pattern)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        code = next(chars, "")
        out.append(codes.get(code, "%" + code))
    return "".join(out)


def run_job(args: list[str]) -> str:
    """``fake-slurm run ID[_I]``: start the job, run its script here as slurmd would
    (``-D``, ``-i``/``-o``/``-e`` with Slurm's patterns, ``SLURM_*`` variables), end it.
    """
    with State() as data:
        targets = targets_of(data, args[0])
        if len(targets) != 1:
            raise Failure("fake-slurm run: name one job or task")
        job, index = targets[0]
        job = start_task(data, job, index, data["nodes"][0]["name"])
        job_id = job["job_id"]
        snapshot = json.loads(json.dumps(job))
    options = snapshot["options"]
    cwd = snapshot["cwd"]
    script = os.path.join(directory(), f"script-{job_id}")
    with open(script, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(snapshot["script"])
    os.chmod(script, 0o700)

    def stream(option: str, default: str, mode: str):
        path = expand_filename(options.get(option) or default, snapshot)
        return open(os.path.join(cwd, path), mode)

    environment = dict(os.environ, SLURM_JOB_ID=str(job_id), SLURM_JOB_NAME=snapshot["name"],
                       SLURM_SUBMIT_DIR=cwd, SLURM_JOB_NODELIST=snapshot["nodes"])
    if snapshot["restart_cnt"]:
        environment["SLURM_RESTART_COUNT"] = str(snapshot["restart_cnt"])
    if snapshot["array_job_id"]:
        environment.update(SLURM_ARRAY_JOB_ID=str(snapshot["array_job_id"]),
                           SLURM_ARRAY_TASK_ID=str(snapshot["array_task_id"]))
    try:
        stdin = stream("input", "/dev/null", "rb")
        stdout = stream("output", "slurm-%A_%a.out" if snapshot["array_job_id"]
                        else "slurm-%j.out", "wb")
        stderr = stream("error", "", "wb") if options.get("error") else stdout
    except OSError as error:  # slurmd cannot open them: the job fails at once
        os.unlink(script)
        finish(job_id, wait_status(1), None)
        return f"fake-slurm run: {error}\n"
    pid = os.fork()
    if pid == 0:  # the batch step
        try:
            os.chdir(cwd)
            for fd, handle in ((0, stdin), (1, stdout), (2, stderr)):
                os.dup2(handle.fileno(), fd)
            os.execve(script, [script], environment)
        finally:
            os._exit(127)
    for handle in (stdin, stdout, stderr):
        handle.close()
    _, status, usage = os.wait4(pid, 0)
    os.unlink(script)
    finish(job_id, status, usage)
    return ""


def finish(job_id: int, status: int, usage) -> None:
    """End a job that ``run`` ran, with its wait status (unless it was cancelled meanwhile)."""
    with State() as data:
        for job in data["jobs"]:
            if job["job_id"] != job_id:
                continue
            if usage is not None:
                job["account"] = {"maxrss": f"{usage.ru_maxrss}K",
                                  "user_cpu": cpu_time(usage.ru_utime),
                                  "system_cpu": cpu_time(usage.ru_stime)}
            if job["state"] == "RUNNING":
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
                final = "COMPLETED" if not sig and not code else "FAILED"
                end_job(job, final, wait_status(code, sig),
                        "NonZeroExitCode" if final == "FAILED" else None)


def cpu_time(seconds: float) -> str:
    """sacct's spelling of a CPU time: ``MM:SS.mmm`` below an hour."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:06.3f}"


# -- entry point ---------------------------------------------------------------------------

COMMANDS = {"squeue": squeue, "scontrol": scontrol, "scancel": scancel, "sacct": sacct,
            "sinfo": sinfo, "fake-slurm": control}


def main(name: str, args: list[str]) -> int:
    try:
        if name != "fake-slurm":  # the log is of the Slurm commands that were run
            log_call(name, args)
            failure = knob(f"fail-{name}")
            subcommand = next((arg for arg in args if not arg.startswith("-")), None)
            if name == "scontrol" and subcommand and failure is None:
                failure = knob(f"fail-scontrol-{subcommand}")
            if failure is not None:
                raise Failure(failure.rstrip("\n"))
        if name == "sbatch":
            output = sbatch(args, sys.stdin.buffer.read())
        else:
            output = COMMANDS[name](args)
    except Failure as failure:
        sys.stderr.write(failure.message + "\n")
        return failure.status
    sys.stdout.write(output)
    return 0
