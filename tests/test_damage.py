"""Every kind of record, damaged every way: one job reports it, every other job is listed.

The contract (README, "Design", the state directory; "Decisions"): a damaged or
unexpected record makes the one job it belongs to report an error — one line
on stderr naming the record's path, exit 1 for the commands about that job —
while ``status`` (table, ``--json``, ``-q``, ``--state``) and ``delete
--finished`` list and handle every other job exactly as before, exit 0, and
``status --json`` stays valid JSON.  No traceback, ever; no other job hidden.
A key that a later version adds is accepted, and a damaged ``summary.json``
(a cache of its array's task records) is not an error at all: the task
records are read instead, and the listing is exact.

The jobs are real: a state directory is built once through the CLI (a Done, a
Failed and a still Running job beside the ones that get damaged: a single
job, an ended array, and an array terminated while its tasks were queued, so
that it has a cancel marker), and each case works on a private copy of it
with a job of its own running.  Then the table ``WAYS`` damages one record
kind each way.  ``tests/test_faults.py`` (its ``DAMAGE`` table) has the
plain cases — a state record truncated, garbage, empty, ``{}`` or a list, a
header that is no JSON, truncated, or ``{"schema": 1}`` — which are not
repeated here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import CLI, cleanup, damage_task_record, poll, task_records

# The records stay in jobs/N, not compacted into the history (tests/test_history.py
# damages that), so that each can be damaged.
pytestmark = pytest.mark.usefixtures("keep_records")

OTHER = "o"        # one of the good jobs: how its lines must look
DAMAGED = "d"      # the case must make the victim report an error
ACCEPTED = "a"     # the case is no damage: everything is listed as before


# -- the state directory: built once, copied for each case --------------------------------

SINGLE, ARRAY, CANCELLED = "4", "5", "6"  # the victims
VICTIM = {"header": SINGLE, "array header": ARRAY, "state": SINGLE, "task": ARRAY,
          "cancel": CANCELLED, "summary": ARRAY}
RECORD = {"header": "job.json", "array header": "job.json", "state": "state.json",
          "task": "2.json", "cancel": "cancel.json", "summary": "summary.json"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A state dir of ended jobs, made by the CLI: (path, {id: its status --json object}).

    1 Done; 2 Failed (exit 3); 3 an ended array of three; 4 a single job that
    prints ``four``; 5 an ended array 5.1-5.3, all Done; 6 an array terminated
    while 6.2 and 6.3 were queued (they have no record, only the cancel marker).
    """
    folder = str(tmp_path_factory.mktemp("damage") / "state")
    env = {**os.environ, "OSTRACKER_STATE_DIR": folder, "OSTRACKER_KEEP_RECORDS": "1"}

    def cli(*args):
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                              timeout=60)

    def submitted(*args):
        done = cli("submit", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    ids = [submitted("--", "true"), submitted("--", "sh", "-c", "exit 3"),
           submitted("--array", "1-3", "--", "true"),
           submitted("--", "echo", "four"),
           submitted("--array", "1-3", "--", "sh", "-c", "echo task $TASK_ID"),
           submitted("--array", "1-3", "--max-parallel", "1", "--", "sleep", "60")]
    assert ids == ["1", "2", "3", SINGLE, ARRAY, CANCELLED]

    def first_task_runs():
        done = cli("status", "--json", f"{CANCELLED}.1")
        return done.returncode == 0 and json.loads(done.stdout)[0]["state"] == "Running"
    try:
        poll(first_task_runs, message="task 6.1 to run")
        assert cli("terminate", CANCELLED).returncode == 0
        assert cli("wait", *ids).returncode == 1  # 2 and 6 failed
        listed = cli("status", "--json")
        assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    finally:
        cleanup(folder)
    jobs = {job["id"]: job for job in json.loads(listed.stdout)}
    assert [jobs[f"{CANCELLED}.{i}"]["state"] for i in (1, 2, 3)] == ["Failed"] * 3
    assert 2 not in task_records(os.path.join(folder, "jobs", CANCELLED)), \
        "a cancelled task has a record of its own: the cancel marker is never read"
    return folder, jobs


@pytest.fixture
def scene(base, state_dir, submit, run):
    """A private copy of ``base``, and job 7 running: (expected listing, job 7's ID)."""
    folder, jobs = base
    shutil.copytree(folder, state_dir, symlinks=True)
    running = submit("--", "sleep", "60")
    assert running == "7"
    expected = dict(jobs)
    expected[running] = {"id": running, "state": "Running"}
    return expected


# -- ways of damage ---------------------------------------------------------------------------

def raw(data: bytes):
    return lambda original, path: data


def changed(*keys, delete=False, **values):
    """The record with ``values`` set (or ``delete``d) in its object at ``keys``."""
    def damage(original, path):
        record = json.loads(original)
        target = record
        for key in keys:
            target = target[key]
        for key, value in values.items():
            if delete:
                del target[key]
            else:
                target[key] = value
        text = json.dumps(record)  # NaN and Infinity as json.dumps writes them
        for digits in (4000, 5000):  # a placeholder for an integer of so many digits
            text = text.replace(f'"<{digits} digits>"', "9" * digits)
        return text.encode()
    return damage


def without(*keys, within=()):
    return changed(*within, delete=True, **dict.fromkeys(keys))


def both(first, then):
    return lambda original, path: then(first(original, path), path)


def copied(job: str, name: str):
    """Another job's record of the same kind, copied in."""
    def damage(original, path):
        jobs = os.path.dirname(os.path.dirname(path))
        if name[:-5].isdigit():  # an array task's: its record, from that array's log
            return json.dumps(task_records(os.path.join(jobs, job))[int(name[:-5])]).encode()
        with open(os.path.join(jobs, job, name), "rb") as handle:
            return handle.read()
    return damage


def naming(other: bool):
    """The task record with ``id`` (as records will carry it) naming itself, or another."""
    def damage(original, path):
        job, name = os.path.basename(os.path.dirname(path)), os.path.basename(path)[:-5]
        task = job if name == "state" else f"{job}.{name}"
        return changed(id="3.1" if other else task)(original, path)
    return damage


def truncated(original, path):
    return original[:len(original) // 2]


DEEP = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError
BIG = "<5000 digits>"  # json.loads: ValueError (more than 4,300 digits)
LARGE = "<4000 digits>"  # parses, and must still be refused
TIME = "2026-11-24T02:03:04.123456+00:00"

HEADER_WAYS = {
    "empty": (raw(b""), DAMAGED),
    "a JSON list": (raw(b"[1, 2]"), DAMAGED),
    "a JSON number": (raw(b"42"), DAMAGED),
    "a JSON string": (raw(b'"job"'), DAMAGED),
    "JSON null": (raw(b"null"), DAMAGED),
    "nested 100,000 deep": (raw(DEEP), DAMAGED),
    "template a string": (changed(template="x"), DAMAGED),
    "template null": (changed(template=None), DAMAGED),
    "args not a list": (changed("template", args="a b"), DAMAGED),
    "args holding a number": (changed("template", args=["a", 1]), DAMAGED),
    "environment a list": (changed("template", job_environment=["A=1"]), DAMAGED),
    "environment value a number": (changed("template", job_environment={"A": 1}), DAMAGED),
    "environment value null": (changed("template", job_environment={"A": None}), DAMAGED),
    "command holding NUL": (changed("template", remote_command="tr\0ue"), DAMAGED),
    "working directory a number": (changed("template", working_directory=7), DAMAGED),
    "output path holding NUL": (changed("template", output_path="out\0put"), DAMAGED),
    "job name a lone surrogate": (changed("template", job_name="\ud800"), DAMAGED),
    "uid with 5,000 digits": (changed(uid=BIG), DAMAGED),
    "uid with 4,000 digits": (changed(uid=LARGE), DAMAGED),
    "uid a string": (changed(uid="0"), DAMAGED),
    "uid negative": (changed(uid=-1), DAMAGED),
    "uid true": (changed(uid=True), DAMAGED),
    "submission_time yesterday": (changed(submission_time="yesterday"), DAMAGED),
    "submission_time month 13": (changed(submission_time="2026-13-24T02:03:04.123456+00:00"),
                                 DAMAGED),
    "submission_time February 30": (
        changed(submission_time="2026-02-30T02:03:04.123456+00:00"), DAMAGED),
    "submission_time hour 24": (changed(submission_time="2026-11-24T24:03:04.123456+00:00"),
                                DAMAGED),
    "submission_time year 1": (changed(submission_time="0001-01-01T00:00:00.000000+01:00"),
                               DAMAGED),
    "submission_time without offset": (changed(submission_time=TIME[:-6]), DAMAGED),
    "submission_time a number": (changed(submission_time=1764000000), DAMAGED),
    "without template": (without("template"), DAMAGED),
    "without array": (without("array"), DAMAGED),
    "without submission_time": (without("submission_time"), DAMAGED),
    "without submission_machine": (without("submission_machine"), DAMAGED),
    "without job_owner": (without("job_owner"), DAMAGED),
    "without uid": (without("uid"), DAMAGED),
    "without boot_id": (without("boot_id"), DAMAGED),
    "without args": (without("args", within=("template",)), DAMAGED),
    "without remote_command": (without("remote_command", within=("template",)), DAMAGED),
    "another job's, copied in": (copied("1", "job.json"), DAMAGED),
    "backend an unknown name": (changed(backend="flux"), DAMAGED),
    "backend a number": (changed(backend=2), DAMAGED),
    "slurm_job_id garbage": (changed(backend="slurm", slurm_job_id="47; rm -rf ~"), DAMAGED),
    "slurm_job_id a fraction": (changed(backend="slurm", slurm_job_id=4711.5), DAMAGED),
    "extra unknown keys": (changed(later_key={"a": [1]}, priority=3), ACCEPTED),
    "extra unknown key in the template": (changed("template", later_key="x"), ACCEPTED),
}

ARRAY_HEADER_WAYS = {
    "array a list": (changed(array=[1, 3]), DAMAGED),
    "array begin -1": (changed("array", begin=-1), DAMAGED),
    "array begin after its end": (changed("array", begin=3, end=1), DAMAGED),
    "array step 0": (changed("array", step=0), DAMAGED),
    "array end 2**64": (changed("array", end=2 ** 64), DAMAGED),
    "array end with 5,000 digits": (changed("array", end=BIG), DAMAGED),
    "array max_parallel a string": (changed("array", max_parallel="2"), DAMAGED),
    "without array.step": (without("step", within=("array",)), DAMAGED),
    "extra unknown key in the array": (changed("array", later_key=1), ACCEPTED),
}

TASK_WAYS = {
    "a JSON number": (raw(b"7"), DAMAGED),
    "a JSON string": (raw(b'"Done"'), DAMAGED),
    "JSON null": (raw(b"null"), DAMAGED),
    "nested 100,000 deep": (raw(DEEP), DAMAGED),
    "pid with 5,000 digits": (changed(pid=BIG), DAMAGED),
    "pid with 4,000 digits": (changed(pid=LARGE), DAMAGED),
    "pid 2**40": (changed(pid=2 ** 40), DAMAGED),
    "pid a string": (changed(pid="123"), DAMAGED),
    "pid negative": (changed(pid=-5), DAMAGED),
    "pid 0": (changed(pid=0), DAMAGED),
    "Running without pid": (changed(state="Running", pid=None), DAMAGED),
    "Running, pid missing": (both(changed(state="Running"), without("pid")), DAMAGED),
    "state unknown": (changed(state="Finished"), DAMAGED),
    "state a Slurm one": (changed(state="RequeuedHeld"), DAMAGED),
    "state a number": (changed(state=1), DAMAGED),
    "without state": (without("state"), DAMAGED),
    "start_ticks a string": (changed(start_ticks="1"), DAMAGED),
    "dispatch_time yesterday": (changed(dispatch_time="yesterday"), DAMAGED),
    "dispatch_time month 13": (changed(dispatch_time="2026-13-24T02:03:04.123456+00:00"),
                               DAMAGED),
    "finish_time February 30": (changed(finish_time="2026-02-30T02:03:04.123456+00:00"),
                                DAMAGED),
    "finish_time year 9999 behind UTC": (
        changed(finish_time="9999-12-31T23:59:59.000000-01:00"), DAMAGED),
    "dispatch_time without offset": (changed(dispatch_time=TIME[:-6]), DAMAGED),
    "dispatch_time offset +24:00": (changed(dispatch_time=TIME[:-6] + "+24:00"), DAMAGED),
    "rusage a list": (changed(rusage=[1, 2]), DAMAGED),
    "rusage value a string": (changed("rusage", ru_maxrss="big"), DAMAGED),
    "rusage value NaN": (changed("rusage", ru_maxrss=float("nan")), DAMAGED),
    "wallclock_time a string": (changed(wallclock_time="x"), DAMAGED),
    "wallclock_time NaN": (changed(wallclock_time=float("nan")), DAMAGED),
    "wallclock_time Infinity": (changed(wallclock_time=float("inf")), DAMAGED),
    "wallclock_time negative": (changed(wallclock_time=-1.0), DAMAGED),
    "exit_status 256": (changed(exit_status=256), DAMAGED),
    "exit_status -1": (changed(exit_status=-1), DAMAGED),
    "exit_status a string": (changed(exit_status="0"), DAMAGED),
    "exit_status true": (changed(exit_status=True), DAMAGED),
    "sub_state a number": (changed(sub_state=5), DAMAGED),
    "sub_state a lone surrogate": (changed(sub_state="\udfff"), DAMAGED),
    "terminating_signal a list": (changed(terminating_signal=["SIGKILL"]), DAMAGED),
    "boot_id a number": (changed(boot_id=1), DAMAGED),
    "reaper_pid a string": (changed(reaper_pid="1"), DAMAGED),
    "dispatch_monotonic a string": (changed(dispatch_monotonic="1.5"), DAMAGED),
    "naming another task (id)": (naming(other=True), DAMAGED),
    "naming its own task (id)": (naming(other=False), ACCEPTED),
    "another job's, copied in": (None, DAMAGED),  # copied from job 1 or 3: see the test
    "extra unknown keys": (changed(later_key=[1, {"a": None}], cgroup="/x"), ACCEPTED),
}

CANCEL_WAYS = {
    "garbage": (raw(b"\x00\xff garbage"), DAMAGED),
    "truncated": (truncated, DAMAGED),
    "a JSON list": (raw(b'["cancelled"]'), DAMAGED),
    "JSON null": (raw(b"null"), DAMAGED),
    "reason a number": (changed(reason=5), DAMAGED),
    "reason a list": (changed(reason=["cancelled"]), DAMAGED),
    "extra unknown keys": (changed(by="terminate", later_key=[1]), ACCEPTED),
}


def _old_format(data: bytes) -> bytes:
    """A summary as the first release wrote it: the list, then ``}``, no check."""
    head, _, _ = data.rpartition(b'], "array_id": ')
    return head + b"]}"


def _summary(mutate):
    """The summary with its JobInfos changed by ``mutate`` (a list -> None), check kept."""
    def damage(original, path):
        prefix = b'{"schema": 1, "infos": '
        head, sep, check = original.rpartition(b'], "array_id": ')
        infos = json.loads(head[len(prefix):] + b"]")
        mutate(infos)
        return prefix + json.dumps(infos).encode()[:-1] + sep + check
    return damage


def _set_first(**values):
    return lambda infos: infos[0].update(values)


def _old(damage):
    return lambda original, path: _old_format(damage(original, path))


def _one_digit_changed(original, path):
    at = original.index(b'"exit_status": 0')
    return original[:at] + b'"exit_status": 1' + original[at + 16:]


SUMMARY_WAYS = {
    "valid prefix, garbage after": (
        lambda original, path: original[:len(original) // 3] + b"garbage]}", ACCEPTED),
    "truncated": (truncated, ACCEPTED),
    "empty": (raw(b""), ACCEPTED),
    "not JSON": (raw(b"\x00\xff garbage"), ACCEPTED),
    "a JSON list": (raw(b"[]"), ACCEPTED),
    "one digit changed, check kept": (_one_digit_changed, ACCEPTED),
    "infos with wrong types, check kept": (_summary(_set_first(pid="x", exit_status="0")),
                                           ACCEPTED),
    "another array's": (copied("3", "summary.json"), ACCEPTED),
    "another array's, without a check": (
        lambda original, path: _old_format(copied("3", "summary.json")(original, path)),
        ACCEPTED),
    "without a check (the first release's)": (
        lambda original, path: _old_format(original), ACCEPTED),
    "without a check, infos with wrong types": (
        _old(_summary(_set_first(pid="x"))), ACCEPTED),
    "without a check, a time of month 13": (
        _old(_summary(_set_first(dispatch_time="2026-13-24T02:03:04.123456+00:00"))),
        ACCEPTED),
    "without a check, wallclock NaN": (_old(_summary(_set_first(wallclock_time=float("nan")))),
                                       ACCEPTED),
    "without a check, a task missing": (_old(_summary(lambda infos: infos.pop())), ACCEPTED),
    "without a check, allocated_machines a string": (
        _old(_summary(_set_first(allocated_machines="vm"))), ACCEPTED),
    "without a check, nested deep": (
        lambda original, path: b'{"schema": 1, "infos": [' + DEEP + b"]}", ACCEPTED),
}

WAYS = {
    "header": HEADER_WAYS,
    "array header": ARRAY_HEADER_WAYS,
    "state": TASK_WAYS,
    "task": TASK_WAYS,
    "cancel": CANCEL_WAYS,
    "summary": SUMMARY_WAYS,
}
CASES = [(kind, way) for kind, ways in WAYS.items() for way in ways]


# -- what the commands must show ----------------------------------------------------------------

def stderr_of(result, path: str | None) -> None:
    """No traceback; exactly one line naming ``path`` (None: nothing on stderr)."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, result.stderr
    lines = result.stderr.splitlines()
    if path is None:
        assert lines == [], result.stderr
    else:
        assert len(lines) == 1 and path in lines[0], (path, result.stderr)


def same_job(shown: dict, expected: dict) -> bool:
    """Exactly as listed before the damage (a running job: its ID and state)."""
    if expected["state"] == "Running":
        return (shown["id"], shown["state"]) == (expected["id"], expected["state"])
    return shown == expected


def check_listings(run, expected: dict, path: str | None) -> None:
    """status (table, --json, -q, --state): exit 0, ``path`` reported once, the jobs listed."""
    ids = list(expected)
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    stderr_of(result, path)
    shown = json.loads(result.stdout)
    assert [job["id"] for job in shown] == ids
    assert all(same_job(job, expected[job["id"]]) for job in shown)
    result = run("status")
    assert result.returncode == 0, result.stderr
    stderr_of(result, path)
    rows = [line.split()[:3:2] for line in result.stdout.splitlines()[1:]]
    assert rows == [[job_id, expected[job_id]["state"]] for job_id in ids]
    result = run("status", "-q")
    assert result.returncode == 0 and result.stdout.split() == ids
    stderr_of(result, path)
    for state in ("Done", "failed"):
        result = run("status", "--state", state)
        assert result.returncode == 0, result.stderr
        stderr_of(result, path)
        wanted = [job_id for job_id in ids if expected[job_id]["state"].lower() == state.lower()]
        assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == wanted
    result = run("status", "--json", "--state", "Failed", "--state", "Running")
    assert result.returncode == 0, result.stderr
    stderr_of(result, path)
    assert [job["id"] for job in json.loads(result.stdout)] == \
        [job_id for job_id in ids if expected[job_id]["state"] in ("Failed", "Running")]


def check_own_commands(run, commands, path: str) -> None:
    """Each command about the damaged job: exit 1, one line naming ``path``."""
    for command in commands:
        result = run(*command)
        assert result.returncode == 1, (command, result.returncode, result.stderr)
        stderr_of(result, path)
        if "--json" in command:
            json.loads(result.stdout or "[]")


def check_delete_finished(run, state_dir, expected: dict, path: str | None,
                          victim: str) -> None:
    """delete --finished: exit 0, the damage said once; every other ended job gone, the
    running one and the damaged one (all of it) kept."""
    result = run("delete", "--finished")
    assert result.returncode == 0, result.stderr
    stderr_of(result, path)
    jobs = os.path.join(state_dir, "jobs")
    kept = sorted(name for name in os.listdir(jobs) if name.isdigit())
    if path is None:
        assert kept == ["7"]
    else:
        assert kept == sorted([victim, "7"])
        left = [job_id for job_id in expected if job_id.split(".")[0] in kept]
        result = run("status", "-q")
        assert result.returncode == 0 and result.stdout.split() == left
        stderr_of(result, path)


def damage_file(state_dir, kind, way) -> str:
    """Damage the record of ``kind`` as ``way`` says; return its path in the state dir."""
    victim, name = VICTIM[kind], RECORD[kind]
    folder = os.path.join(state_dir, "jobs", victim)
    if kind in ("task", "cancel"):
        # The summary would stand for the task records: gone, as when a reaper
        # was killed before it wrote one.
        os.unlink(os.path.join(folder, "summary.json"))
    damage, _ = WAYS[kind][way]
    path = os.path.join(folder, name)  # where an earlier version kept a task's record
    if kind in ("state", "task") and way == "another job's, copied in":
        source = ("1", "state.json") if kind == "state" else ("3", "2.json")
        damage = copied(*source)
    if kind in ("state", "task"):
        written = damage_task_record(folder, None if kind == "state" else int(name[:-5]),
                                     lambda original: damage(original, path))
        return f"/jobs/{victim}/{os.path.basename(written)}"
    with open(path, "rb") as handle:
        original = handle.read()
    with open(path, "wb") as handle:
        handle.write(damage(original, path))
    return f"/jobs/{victim}/{name}"


def left_out(kind: str, expected: dict) -> set[str]:
    """The IDs a listing cannot show when the record of ``kind`` is damaged."""
    victim = VICTIM[kind]
    if kind in ("header", "array header", "state"):
        return {job_id for job_id in expected if job_id.split(".")[0] == victim}
    if kind == "task":
        return {f"{victim}.2"}
    return {f"{victim}.2", f"{victim}.3"}  # cancel: the tasks that never started


OWN_COMMANDS = {
    "header": [["status", SINGLE], ["status", SINGLE, "--json"], ["info", SINGLE],
               ["wait", SINGLE], ["output", SINGLE], ["terminate", SINGLE],
               ["suspend", SINGLE], ["delete", SINGLE], ["status", "1", SINGLE]],
    "array header": [["status", ARRAY], ["info", ARRAY], ["info", f"{ARRAY}.1"],
                     ["wait", ARRAY], ["output", f"{ARRAY}.1"], ["terminate", ARRAY],
                     ["delete", ARRAY]],
    "state": [["status", SINGLE], ["status", SINGLE, "--json"], ["info", SINGLE, "--json"],
              ["wait", SINGLE], ["terminate", SINGLE], ["resume", SINGLE],
              ["delete", SINGLE], ["status", "1", SINGLE]],
    "task": [["status", ARRAY, "--json"], ["info", ARRAY], ["info", f"{ARRAY}.2"],
             ["wait", ARRAY], ["wait", f"{ARRAY}.2"], ["terminate", ARRAY],
             ["terminate", f"{ARRAY}.2"], ["delete", ARRAY]],
    "cancel": [["status", CANCELLED], ["info", f"{CANCELLED}.3"], ["wait", CANCELLED],
               ["delete", CANCELLED]],
}


# -- the cases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, way", CASES, ids=[f"{kind}: {way}" for kind, way in CASES])
def test_a_damaged_record_is_one_jobs_error_and_hides_no_other(scene, run, state_dir,
                                                               kind, way):
    expected = scene
    _, verdict = WAYS[kind][way]
    path = damage_file(state_dir, kind, way)
    victim = VICTIM[kind]
    if verdict == ACCEPTED:
        check_listings(run, expected, None)
        for command in (["status", victim], ["info", victim], ["wait", victim]):
            result = run(*command)
            assert result.returncode == (1 if victim == CANCELLED and command[0] == "wait"
                                         else 0), (command, result.stderr)
            stderr_of(result, None)
        check_delete_finished(run, state_dir, expected, None, victim)
        return
    others = {job_id: job for job_id, job in expected.items()
              if job_id not in left_out(kind, expected)}
    check_listings(run, others, path)
    if kind in ("header", "array header"):
        from ostracker import JobTracker  # the API lists it, so that whoever reads it says why

        assert JobTracker(state_dir).list_jobs() == ["1", "2", "3", SINGLE, ARRAY, CANCELLED,
                                                     "7"]
    check_own_commands(run, OWN_COMMANDS[kind], path)
    if kind in ("task", "cancel"):
        # the array's other tasks: listed by `status ID` (which says the damage, exit 1),
        # and each one alone as before
        result = run("status", victim)
        assert result.returncode == 1
        stderr_of(result, path)
        tasks = [job_id for job_id in others if job_id.startswith(f"{victim}.")]
        assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == tasks
        for task in tasks:
            result = run("info", task, "--json")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == expected[task]
    if kind == "state":
        # the output needs the header alone: it is printed as it was written
        result = run("output", SINGLE)
        assert (result.returncode, result.stdout, result.stderr) == (0, "four\n", "")
    check_delete_finished(run, state_dir, others, path, victim)


def test_the_table_counts_its_cases():
    """kinds x ways, as the report gives it (and the Slurm and running-array cases below)."""
    counts = {kind: len(ways) for kind, ways in WAYS.items()}
    assert sum(counts.values()) == len(CASES)
    print(f"\n{len(CASES)} cases: {counts}")


# -- an array whose reaper lives: its records are read, no summary -------------------------------

LIVE_WAYS = {
    "truncated": truncated,
    "Running without pid": changed(state="Running", pid=None),
    "finish_time month 13": changed(finish_time="2026-13-24T02:03:04.123456+00:00"),
    "wallclock_time NaN": changed(wallclock_time=float("nan")),
}


@pytest.mark.parametrize("way", LIVE_WAYS)
def test_a_damaged_task_of_a_running_array_hides_not_its_running_tasks(
        run, submit, state_dir, way):
    """Task 1 ended, 2 and 3 run; 1's record damaged: 2 and 3 are listed Running."""
    done = submit("--", "true")
    array = submit("--array", "1-3", "--", "sh", "-c", 'test "$TASK_ID" = 1 || exec sleep 60')
    poll(lambda: run("wait", "--timeout", "0", f"{array}.1").returncode == 0,
         message="task 1 to end")
    assert run("wait", done).returncode == 0
    path = os.path.join(state_dir, "jobs", array, "1.json")  # (an earlier version's name)
    damage_task_record(os.path.dirname(path), 1, lambda original: LIVE_WAYS[way](original, path))
    named = f"/jobs/{array}/tasks.log"
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    stderr_of(result, named)
    assert [(job["id"], job["state"]) for job in json.loads(result.stdout)] == \
        [(done, "Done"), (f"{array}.2", "Running"), (f"{array}.3", "Running")]
    result = run("status", "-q", "--state", "Running")
    assert result.returncode == 0 and result.stdout.split() == [f"{array}.2", f"{array}.3"]
    stderr_of(result, named)
    # the array as a whole cannot be known: commands about it say so, and act on nothing
    check_own_commands(run, [["status", array, "--json"], ["info", f"{array}.1"],
                             ["suspend", array], ["terminate", array], ["delete", array]],
                       named)
    assert [job["state"] for job in json.loads(run("status", "--json", f"{array}.2",
                                                   f"{array}.3").stdout)] == ["Running"] * 2
    result = run("delete", "--finished")
    assert result.returncode == 0
    stderr_of(result, named)
    assert sorted(os.listdir(os.path.join(state_dir, "jobs"))) == [array]
    # Each task alone can be acted on.  Once the array has ended, whatever summary its
    # reaper wrote of the damaged record, the listing is still valid JSON and says it.
    assert run("terminate", f"{array}.2", f"{array}.3").returncode == 0
    poll(lambda: run("wait", "--timeout", "0", array).returncode != 124,
         message="the array's reaper to end")
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    stderr_of(result, named)
    assert [(job["id"], job["state"]) for job in json.loads(result.stdout)] == \
        [(f"{array}.2", "Failed"), (f"{array}.3", "Failed")]


# -- a record without a key that readers and control use -----------------------------------------

def test_a_running_record_without_start_ticks_is_read_as_the_rest(run, submit, state_dir):
    """A Running record (its reaper gone) that lacks ``start_ticks``: no process can be
    named by it, so it is Undetermined; control refuses it in one line."""
    job = submit("--", "true")
    assert run("wait", job).returncode == 0
    path = os.path.join(state_dir, "jobs", job, "state.json")
    with open(path) as handle:
        record = json.load(handle)
    del record["start_ticks"]
    record.update(state="Running", finish_time=None, exit_status=None)
    with open(path, "w") as handle:
        json.dump(record, handle)
    result = run("status", "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert [(job["state"], job["sub_state"]) for job in json.loads(result.stdout)] == \
        [("Undetermined", "reaper lost; the process ended, its exit status is unknown")]
    for action in ("terminate", "suspend"):
        result = run(action, job)
        assert result.returncode == 1
        stderr_of(result, f"job {job} is Undetermined")


# -- Undetermined: its wall clock time does not grow -------------------------------------------

def test_an_undetermined_jobs_wallclock_time_is_null_and_stays_so(run, submit, state_dir):
    """A Running record whose reaper and process are gone: Undetermined, wallclock null."""
    job = submit("--", "true")
    assert run("wait", job).returncode == 0
    path = os.path.join(state_dir, "jobs", job, "state.json")
    with open(path) as handle:
        record = json.load(handle)
    record.update(state="Running", finish_time=None, wallclock_time=None, exit_status=None,
                  rusage=None)
    with open(path, "w") as handle:
        json.dump(record, handle)
    first = json.loads(run("info", job, "--json").stdout)
    assert first["state"] == "Undetermined"
    assert first["dispatch_time"] is not None and first["wallclock_time"] is None
    assert json.loads(run("info", job, "--json").stdout) == first  # read again: still null
    row = run("status").stdout.splitlines()[1].split()  # ID NAME STATE EXIT PID STARTED WALL
    assert row[2] == "Undetermined" and row[7] == "-"


# -- stopped.json (the Slurm backend) ---------------------------------------------------------

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_slurm")

STOPPED_WAYS = {
    "garbage": (raw(b"\x00\xff garbage"), DAMAGED),
    "truncated": (truncated, DAMAGED),
    "a JSON list": (raw(b'["4712"]'), DAMAGED),
    "slurm_ids a string": (changed(slurm_ids="4712"), DAMAGED),
    "slurm_ids holding a number": (changed(slurm_ids=[4712]), DAMAGED),
    "without slurm_ids": (without("slurm_ids"), DAMAGED),
    "extra unknown keys": (changed(later_key=1), ACCEPTED),
}


@pytest.fixture
def fake_slurm(state_dir, tmp_path, monkeypatch):
    """The fake Slurm commands of tests/fake_slurm first on PATH, the Slurm backend chosen."""
    if not os.path.exists(os.path.join(FAKES, "fake-slurm")):
        pytest.skip("tests/fake_slurm is not there")
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([FAKES, os.environ.get("PATH", "")]))
    monkeypatch.setenv("FAKE_SLURM_DIR", str(folder))
    monkeypatch.setenv("OSTRACKER_BACKEND", "slurm")
    for variable in ("SLURM_CONF", "SLURM_BITSTR_LEN", "SLURM_TIME_FORMAT"):
        monkeypatch.delenv(variable, raising=False)
    assert shutil.which("squeue") == os.path.join(FAKES, "squeue")

    with open(folder / "deny-suspend", "w"):
        pass  # scontrol suspend refused: ostracker stops by SIGTSTP, noted in stopped.json

    def fake(*args):
        done = subprocess.run([os.path.join(FAKES, "fake-slurm"), *map(str, args)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    return fake


@pytest.mark.parametrize("way", STOPPED_WAYS)
def test_a_damaged_stopped_record_is_its_slurm_jobs_error(fake_slurm, run, submit, state_dir,
                                                          way):
    """Slurm jobs 1 Running, 2 stopped by SIGTSTP (stopped.json), 3 Done; 2's note damaged."""
    ids = [submit("--", "true") for _ in range(3)]
    fake_slurm("start", "4711")
    fake_slurm("start", "4712")
    fake_slurm("start", "4713")
    fake_slurm("end", "4713", "0")
    assert run("suspend", ids[1]).returncode == 0
    path = os.path.join(state_dir, "jobs", ids[1], "stopped.json")
    with open(path, "rb") as handle:
        original = handle.read()
    damage, verdict = STOPPED_WAYS[way]
    with open(path, "wb") as handle:
        handle.write(damage(original, path))
    named = None if verdict == ACCEPTED else f"/jobs/{ids[1]}/stopped.json"
    expected = [(ids[0], "Running"), (ids[1], "Suspended"), (ids[2], "Done")]
    if named:
        del expected[1]
    for args in (["status", "--json"], ["status", "--json", "--state", "Running",
                                        "--state", "Done", "--state", "Suspended"]):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        stderr_of(result, named)
        assert [(job["id"], job["state"]) for job in json.loads(result.stdout)] == expected
    result = run("status", "-q")
    assert result.returncode == 0 and result.stdout.split() == [job for job, _ in expected]
    stderr_of(result, named)
    if named:
        check_own_commands(run, [["status", ids[1]], ["info", ids[1]], ["resume", ids[1]],
                                 ["wait", "--timeout", "0", ids[1]]], named)
    else:
        assert run("resume", ids[1]).returncode == 0
