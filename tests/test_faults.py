"""Faults: concurrency, crashes, reboots, damage, a full disk, hostile state.

Real processes throughout: the real CLI, real reapers, kill -9, a real small
tmpfs, real rlimits.  Nothing sleeps to decide pass or fail; sleeps only place
a crash at a moment.  Every process a test starts is ended by it (or by the
``state_dir`` fixture's cleanup, for jobs and reapers).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid

import pytest

from conftest import CLI, _lock_held, damage_task_record, fill, lean_reaper, poll, proc_state
from ostracker.local import proc

NOBODY = 65534
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"

# These tests plant, damage and read the records of ended jobs in their directories:
# those jobs keep them there, not compacted into the history (tests/test_history.py).
pytestmark = pytest.mark.usefixtures("keep_records")


# -- helpers ---------------------------------------------------------------------------

def info_of(run, job_id, env=None):
    result = run("info", job_id, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def listing(run, *args):
    result = run("status", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def one_line(result):
    """The one line on stderr (and no traceback anywhere)."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    return lines[0]


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def gone(pid):
    return proc_state(pid) in (None, "Z", "X")


def kill9(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    poll(lambda: gone(pid), timeout=10, message=f"process {pid} gone")


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def running_job(run, submit, *command):
    job_id = submit("--", *command)
    job = poll(lambda: (lambda j: j["state"] == "Running" and j)(info_of(run, job_id)),
               message="Running")
    return job_id, job["pid"]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


def processes_with(word: str):
    """PIDs (not ours) whose command line holds ``word`` as one argument."""
    needle = word.encode()
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) != os.getpid() and needle in cmdline(int(name))]


def rewrite(path, **changes):
    with open(path) as handle:
        record = json.load(handle)
    record.update(changes)
    with open(path, "w") as handle:
        json.dump(record, handle)


def all_records_parse(state_dir):
    """Every .json under jobs/ parses (temp files, which start with a dot, aside), and every
    line of an array's tasks.log is a task's index and its record."""
    count = 0
    jobs = os.path.join(state_dir, "jobs")
    for folder, _, files in os.walk(jobs):
        for name in files:
            if name == "tasks.log":
                with open(os.path.join(folder, name), "rb") as handle:
                    lines = handle.read().split(b"\n")
                assert lines[-1] == b"", os.path.join(folder, name)  # no half line
                for line in lines[:-1]:
                    index, tab, body = line.partition(b"\t")
                    assert index.isdigit() and tab and isinstance(json.loads(body), dict), line
                count += len(lines) - 1
            elif name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(folder, name)) as handle:
                    assert isinstance(json.load(handle), dict), os.path.join(folder, name)
                count += 1
    return count


def has_ended(job):
    return job["state"] in ("Done", "Failed", "Undetermined")


def temp_files(root):
    return [os.path.join(folder, name) for folder, _, files in os.walk(root)
            for name in files if name.endswith(".tmp")]


@pytest.fixture
def bystanders():
    """Start unrelated processes (own group, optionally another user); kill them after."""
    started = []

    def start(uid=None):
        def demote():
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
        child = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                 preexec_fn=demote if uid is not None else None)
        started.append(child)
        poll(lambda: proc.stat(child.pid) is not None and cmdline(child.pid)[:1] == [b"sleep"],
             message="bystander exec'd")
        return child.pid, proc.stat(child.pid).start_ticks

    yield start
    for child in started:
        child.kill()
        child.wait()


def reaperless(run, submit, state_dir, *command):
    """A job whose reaper and process were both killed: its records are ours to age."""
    job_id, pid = running_job(run, submit, *command)
    kill9(parent_of(pid))
    kill_group(pid)
    poll(lambda: info_of(run, job_id)["state"] == "Undetermined", message="Undetermined")
    return job_id, os.path.join(state_dir, "jobs", job_id)


# -- concurrency -----------------------------------------------------------------------

WORKER = r"""
import json, random, subprocess, sys, time
role, stop, log, seed, cli_json = sys.argv[1:6]
stop, rng, CLI = float(stop), random.Random(int(seed)), json.loads(cli_json)
ops = []
def cli(*args):
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    ops.append({"argv": list(args), "rc": r.returncode, "out": r.stdout, "err": r.stderr})
    return r
def jobs(*filters):
    r = cli("status", "--json", *filters)
    try:
        return json.loads(r.stdout) if r.returncode == 0 else []
    except ValueError:
        return []  # logged: the test finds it
while time.time() < stop:
    if role == "submit":
        kind = rng.randrange(3)
        if kind == 0:
            cli("submit", "--", "sh", "-c", "sleep 0.2; exit 3")
        elif kind == 1:
            cli("submit", "--array", "1-4", "--max-parallel", "2", "--", "sh", "-c", "sleep 0.05")
        else:
            cli("submit", "-n", "quick", "--", "true")
    elif role == "submit-delete":
        r = cli("submit", "--", "sh", "-c", "sleep 0.05; exit 3")
        if r.returncode == 0:
            cli("wait", "--timeout", "1", r.stdout.strip())
            cli("delete", r.stdout.strip())
    elif role == "control":
        live = jobs("--state", "Running", "--state", "Suspended")
        if live:
            job = rng.choice(live)
            action = rng.choice(["suspend", "terminate"] if job["state"] == "Running"
                                else ["resume", "resume", "terminate"])
            whole = job["array_id"] is not None and rng.random() < 0.3  # the whole array
            cli(action, job["array_id"] if whole else job["id"])
    elif role == "delete":
        ended = sorted({j["array_id"] or j["id"] for j in jobs("--state", "Done",
                                                                 "--state", "Failed")})
        if ended:
            cli("delete", rng.choice(ended))
    else:
        cli("status")
        every = jobs()
        if every:
            cli("info", rng.choice(every)["id"], "--json")
with open(log, "w") as handle:
    json.dump(ops, handle)
"""

ROLES = ["submit", "submit", "submit", "submit-delete", "control", "control", "delete", "list"]


def test_eight_shells_at_once_lose_nothing_and_give_no_id_twice(run, state_dir, tmp_path):
    """8 workers submit, control, delete and list for ~4 s against one state dir."""
    stop = time.time() + 4.0
    workers = []
    for number, role in enumerate(ROLES):
        log = tmp_path / f"worker-{number}.json"
        child = subprocess.Popen([sys.executable, "-c", WORKER, role, str(stop), str(log),
                                  str(number), json.dumps(CLI)])
        workers.append((role, log, child))
    for _, _, child in workers:
        assert child.wait(timeout=90) == 0
    ops = [(role, op) for role, log, _ in workers for op in json.loads(log.read_text())]

    submitted, deleted = [], set()
    for role, op in ops:
        command, rc = op["argv"][0], op["rc"]
        assert "Traceback" not in op["err"], op
        assert len(op["err"].splitlines()) <= 1, op
        if command == "submit":
            assert rc == 0, op
            submitted.append(op["out"].strip())
        elif command in ("status", "info"):
            assert rc == 0 or (command == "info" and rc == 1), op
            if "--json" in op["argv"] and rc == 0:
                assert isinstance(json.loads(op["out"]), (list, dict)), op
        elif command in ("suspend", "resume", "terminate", "delete"):
            assert rc in (0, 1), op
            if command == "delete" and rc == 0:
                deleted.add(op["argv"][1])
        else:
            assert rc not in (2,), op
    assert len(submitted) == len(set(submitted)), "an ID was given twice"
    assert all(job_id.isdigit() for job_id in submitted)
    assert deleted <= set(submitted)

    # Nobody resumes a job that a worker left suspended: do it, then everything ends.
    for job in listing(run, "--state", "Suspended"):
        assert run("resume", job["id"]).returncode in (0, 1)
    present = {job["array_id"] or job["id"] for job in listing(run)}
    if present:
        result = run("wait", "--timeout", "30", *sorted(present, key=int))
        assert result.returncode in (0, 1), result.stderr
    records = all_records_parse(state_dir)

    lost = set(submitted) - deleted - present
    assert lost == set(), f"records lost: {sorted(lost)}"
    assert present <= set(submitted)
    for job_id in deleted:
        assert run("info", job_id).returncode == 1
    final = listing(run)
    for job in final:
        command = job["job_template"]["args"][-1] if job["job_template"]["args"] else \
            job["job_template"]["remote_command"]
        killed = (job["state"], job["terminating_signal"]) == ("Failed", "SIGKILL")
        cancelled = job["state"] == "Failed" and "cancel" in (job["sub_state"] or "")
        expected = {"sleep 0.2; exit 3": ("Failed", 3), "sleep 0.05; exit 3": ("Failed", 3),
                    "sleep 0.05": ("Done", 0), "true": ("Done", 0)}[command]
        assert killed or cancelled or (job["state"], job["exit_status"]) == expected, job
    # No process lives on behind an ended record.
    for folder, _, files in os.walk(os.path.join(state_dir, "jobs")):
        for name in files:
            if name == "state.json" or (name.endswith(".json") and name[:-5].isdigit()):
                with open(os.path.join(folder, name)) as handle:
                    record = json.load(handle)
                if record.get("pid") and record.get("start_ticks"):
                    alive = proc.identify(record["pid"], record["start_ticks"])
                    assert alive is None or alive.state in "ZX", (folder, name, record)
    print(f"\nconcurrency: {len(ops)} operations by {len(ROLES)} workers, {len(submitted)} "
          f"submits, {len(deleted)} deletes, {records} records checked, {len(lost)} lost")


# -- crashes ---------------------------------------------------------------------------

def test_reaper_killed_while_the_job_runs_reads_running_then_undetermined(run, submit):
    """kill -9 of the reaper right after submit: Running ("reaper lost"), then Undetermined."""
    job_id = submit("--", "sleep", "60")
    pid = info_of(run, job_id)["pid"]
    reaper = parent_of(pid)
    kill9(reaper)
    job = info_of(run, job_id)
    assert job["state"] == "Running" and "reaper" in job["sub_state"], job
    assert listing(run, "--state", "Running")[0]["id"] == job_id
    kill_group(pid)
    job = poll(lambda: (lambda j: j["state"] == "Undetermined" and j)(info_of(run, job_id)),
               message="Undetermined")
    assert "reaper" in job["sub_state"]
    assert run("wait", "--timeout", "10", job_id).returncode == 1
    result = run("delete", job_id)
    assert result.returncode == 0, result.stderr
    assert run("info", job_id).returncode == 1


def test_reaper_killed_while_array_tasks_are_queued_leaves_none_queued_forever(run, submit):
    """Queued tasks of a reaper that died read Undetermined, not Queued; the array is deletable."""
    job_id = submit("--array", "1-4", "--max-parallel", "1", "--", "sleep", "60")
    first = info_of(run, f"{job_id}.1")
    assert [t["state"] for t in listing(run, job_id)] == ["Running", "Queued", "Queued", "Queued"]
    kill9(parent_of(first["pid"]))
    tasks = listing(run, job_id)
    assert tasks[0]["state"] == "Running" and "reaper" in tasks[0]["sub_state"]
    for task in tasks[1:]:
        assert task["state"] == "Undetermined" and "reaper" in task["sub_state"], task
    kill_group(first["pid"])
    poll(lambda: all(t["state"] == "Undetermined" for t in listing(run, job_id)),
         message="all tasks Undetermined")
    assert run("wait", "--timeout", "10", job_id).returncode == 1
    assert run("terminate", job_id).returncode == 1
    result = run("delete", job_id)
    assert result.returncode == 0, result.stderr


CRASH_DELAYS = [0.0, 0.03, 0.06, 0.09, 0.1, 0.11, 0.12, 0.15, 0.2, 0.22, 0.25, 0.3]


@pytest.mark.parametrize("array", [False, True], ids=["single", "array"])
def test_reaper_killed_at_many_moments_never_leaves_a_job_running_or_queued(
        run, state_dir, array):
    """Sweep kill -9 over a job's life (between tasks, while writing a result)."""
    options = ["--array", "1-3", "--max-parallel", "1"] if array else []
    ids = []
    for delay in CRASH_DELAYS:
        result = run("submit", *options, "--", "sleep", "0.1")
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        reaper = poll(lambda: lean_reaper(state_dir, job_id) or
                      (run("wait", "--timeout", "0", job_id).returncode != 124 and -1),
                      timeout=10, message="the lean reaper")
        if reaper > 0:
            time.sleep(delay)  # places the crash; decides nothing
            kill9(reaper)
        ids.append(job_id)
    # Once the processes are gone every task has ended, one way or the other.
    poll(lambda: all(has_ended(t) for t in listing(run)), timeout=15,
         message="every task ended")
    assert all_records_parse(state_dir) >= len(ids)
    result = run("status")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for job_id in ids:
        assert run("wait", "--timeout", "10", job_id).returncode in (0, 1)
        result = run("delete", job_id)
        assert result.returncode == 0, result.stderr
    print(f"\ncrash points: {len(CRASH_DELAYS)} reaper kills ({'array' if array else 'single'})")


@pytest.fixture
def fifo(tmp_path):
    """A FIFO; at teardown whoever still waits to read it is let through (and sees EOF)."""
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    yield path
    writer = open_fifo_writer(path)
    if writer is not None:
        os.close(writer)


def open_fifo_writer(path):
    """A blocking write end of the FIFO once somebody is at its read end, else None."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise
    os.set_blocking(fd, True)
    return fd


def test_a_fifo_stdin_blocks_the_job_never_the_reaper_nor_control(run, state_dir, fifo):
    """--stdin FIFO that nobody opens: submit returns, the job waits Running in its open.

    terminate then ends it for good (it never reads the data written later),
    and the reaper, which never blocked, records it.
    """
    result = run("submit", "--stdin", fifo, "--", "cat", timeout=20)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    job = info_of(run, job_id)
    assert job["state"] == "Running" and job["pid"], job
    result = run("terminate", job_id, timeout=20)
    assert result.returncode == 0, result.stderr
    job = info_of(run, job_id)
    assert (job["state"], job["sub_state"]) == ("Failed", "terminated"), job
    assert open_fifo_writer(fifo) is None  # nobody reads the FIFO any more: the job never ran
    assert run("output", job_id).stdout == ""


def test_reaper_killed_while_the_job_waits_at_a_fifo_leaves_it_tracked(run, state_dir, fifo):
    """kill -9 of the reaper while the job's process blocks opening its FIFO stdin.

    The job is still tracked (Running, from its live process), it runs once the
    FIFO is opened, and terminate without a reaper records Failed "terminated".
    """
    result = run("submit", "--stdin", fifo, "--", "sh", "-c", "cat; sleep 100")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    with open(os.path.join(state_dir, "jobs", job_id, "state.json")) as handle:
        record = json.load(handle)
    kill9(record["reaper_pid"])
    job = poll(lambda: (lambda j: "reaper lost" in (j["sub_state"] or "") and j)(
        info_of(run, job_id)), message="the reaper seen lost")
    assert job["state"] == "Running" and job["pid"] == record["pid"], job
    writer = poll(lambda: open_fifo_writer(fifo), message="the job at the FIFO")
    os.write(writer, b"hello\n")
    os.close(writer)
    assert run("terminate", job_id).returncode == 0
    job = info_of(run, job_id)
    assert (job["state"], job["sub_state"], job["terminating_signal"]) == \
        ("Failed", "terminated", "SIGKILL"), job
    assert run("output", job_id).stdout == "hello\n"


def test_cli_killed_while_it_writes_leaves_every_record_readable(run, state_dir):
    """kill -9 of `submit` and of `delete` at many moments: status and new IDs still work."""
    base = run("submit", "--", "true")
    assert base.returncode == 0, base.stderr
    victims = []
    for _ in range(8):
        result = run("submit", "--", "true")
        assert result.returncode == 0, result.stderr
        victims.append(result.stdout.strip())
    assert run("wait", "--timeout", "10", *victims).returncode == 0
    kills = 0
    seen = {int(base.stdout), *map(int, victims)}
    for number in range(16):
        delay = number * 0.006
        if number % 2 == 0:
            args = ["submit", "--", "true"]
        else:
            args = ["delete", victims.pop()]
        child = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(delay)  # places the crash; decides nothing
        child.kill()
        out, err = child.communicate(timeout=10)
        assert "Traceback" not in err
        if out.strip().isdigit():
            seen.add(int(out))
        kills += 1
    jobs = os.path.join(state_dir, "jobs")
    seen |= {int(name) for name in os.listdir(jobs) if name.isdigit()}
    poll(lambda: all(has_ended(t) for t in listing(run)), timeout=15, message="all ended")
    result = run("status")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "Traceback" not in result.stdout
    all_records_parse(state_dir)
    result = run("delete", "--finished")
    assert result.returncode == 0, result.stderr
    assert listing(run) == []  # every job, Undetermined or not, could be deleted
    fresh = run("submit", "--", "true")
    assert fresh.returncode == 0, fresh.stderr
    assert int(fresh.stdout) > max(seen)
    print(f"\ncrash points: {kills} CLI kills (submit, delete)")


# -- reboot ----------------------------------------------------------------------------

def test_records_of_an_earlier_boot_read_undetermined_and_their_pids_are_never_signalled(
        run, submit, state_dir, bystanders):
    """boot_id of another boot in job.json and the task record: Undetermined, never signalled.

    The record names a live unrelated process, start time and all: only the
    boot differs, and that alone must keep every command off it.
    """
    pid, ticks = bystanders()
    job_id, folder = reaperless(run, submit, state_dir, "sleep", "60")
    rewrite(os.path.join(folder, "job.json"), boot_id=OTHER_BOOT)
    rewrite(os.path.join(folder, "state.json"), boot_id=OTHER_BOOT, state="Running",
            sub_state=None, pid=pid, start_ticks=ticks)
    array_id = submit("--array", "1-2", "--max-parallel", "1", "--", "sleep", "60")
    array_folder = os.path.join(state_dir, "jobs", array_id)
    first = info_of(run, f"{array_id}.1")["pid"]
    kill9(parent_of(first))
    kill_group(first)
    rewrite(os.path.join(array_folder, "job.json"), boot_id=OTHER_BOOT)
    damage_task_record(array_folder, 1, lambda data: json.dumps(dict(
        json.loads(data), boot_id=OTHER_BOOT, state="Running", pid=pid,
        start_ticks=ticks)).encode())

    job = info_of(run, job_id)
    assert job["state"] == "Undetermined" and job["sub_state"].startswith("machine rebooted"), job
    tasks = listing(run, array_id)
    assert [t["state"] for t in tasks] == ["Undetermined", "Undetermined"]
    assert all(t["sub_state"].startswith("machine rebooted") for t in tasks), tasks
    assert listing(run, "--state", "Running") == []
    for action in ("suspend", "terminate", "resume"):
        for target in (job_id, array_id, f"{array_id}.1"):
            assert run(action, target).returncode == 1
    monitored = run("monitor", "--jobs", "--json")
    assert monitored.returncode == 0, monitored.stderr
    assert all(p["id"] != str(pid) for p in json.loads(monitored.stdout))
    assert proc_state(pid) in ("S", "R")  # untouched: neither stopped nor killed
    assert run("wait", "--timeout", "10", job_id, array_id).returncode == 1
    for target in (job_id, array_id):
        result = run("delete", target)
        assert result.returncode == 0, result.stderr
    assert proc_state(pid) in ("S", "R")


def test_reused_pid_is_never_taken_for_the_job(run, submit, state_dir, bystanders):
    """Reaper dead, the record's PID now names another process (other start time)."""
    pid, ticks = bystanders()
    job_id, folder = reaperless(run, submit, state_dir, "sleep", "60")
    rewrite(os.path.join(folder, "state.json"), state="Running", sub_state=None, pid=pid,
            start_ticks=ticks + 1)
    job = info_of(run, job_id)
    assert job["state"] == "Undetermined", job
    assert listing(run, "--state", "Running") == []
    for action in ("suspend", "terminate"):
        assert run(action, job_id).returncode == 1
    monitored = json.loads(run("monitor", "--jobs", "--json").stdout)
    assert all(p["id"] != str(pid) for p in monitored)
    assert run("wait", "--timeout", "10", job_id).returncode == 1
    assert proc_state(pid) in ("S", "R")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process of another user")
def test_control_never_signals_a_process_of_another_user(run, submit, state_dir, bystanders):
    """A record naming another user's live process (identity matching): never signalled."""
    pid, ticks = bystanders(uid=NOBODY)
    job_id, folder = reaperless(run, submit, state_dir, "sleep", "60")
    rewrite(os.path.join(folder, "state.json"), state="Running", sub_state=None, pid=pid,
            start_ticks=ticks)
    result = run("suspend", job_id)
    assert result.returncode == 1
    one_line(result)
    assert proc_state(pid) in ("S", "R")
    result = run("terminate", job_id)
    assert proc_state(pid) in ("S", "R")
    # Nothing was signalled, so terminate cannot claim it ended the job.
    assert result.returncode == 1 or info_of(run, job_id)["state"] != "Running", \
        (result.returncode, info_of(run, job_id))


# -- damaged state ---------------------------------------------------------------------

def _truncate(path):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:len(data) // 2])


def _write(data):
    def damage(path):
        with open(path, "wb") as handle:
            handle.write(data)
    return damage


DAMAGE = {
    "truncated state": ("state.json", _truncate),
    "garbage state": ("state.json", _write(b"\xff\xfe\x00\x9c garbage \x00")),
    "empty state": ("state.json", _write(b"")),
    "state without keys": ("state.json", _write(b"{}")),
    "state a list": ("state.json", _write(b"[1, 2]")),
    "non-JSON header": ("job.json", _write(b"this is not JSON\n")),
    "truncated header": ("job.json", _truncate),
    "header without keys": ("job.json", _write(b'{"schema": 1}')),
}


def _three_jobs(run):
    ids = []
    for _ in range(3):
        result = run("submit", "--", "true")
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.strip())
    assert run("wait", *ids).returncode == 0
    return ids


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_record_is_named_and_hides_no_other_job(run, state_dir, name):
    """status lists every good job, names the bad one, exits 1 only when asked about it."""
    good1, bad, good2 = _three_jobs(run)
    record, damage = DAMAGE[name]
    damage(os.path.join(state_dir, "jobs", bad, record))
    try:
        _check_damage_is_named(run, good1, bad, good2)
    finally:  # conftest's cleanup reads every record and expects objects
        shutil.rmtree(os.path.join(state_dir, "jobs", bad))


def _check_damage_is_named(run, good1, bad, good2):
    result = run("status")
    assert result.returncode == 0, result.stderr
    assert f"/jobs/{bad}/" in one_line(result)
    shown = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert shown == [good1, good2]
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    assert [job["id"] for job in json.loads(result.stdout)] == [good1, good2]
    assert f"/jobs/{bad}/" in one_line(result)
    for command in (["status", bad], ["info", bad], ["status", good1, bad], ["wait", bad]):
        result = run(*command)
        assert result.returncode == 1, (command, result.returncode, result.stderr)
        assert f"/jobs/{bad}/" in one_line(result)
    assert run("status", good1, good2).returncode == 0
    fresh = run("submit", "--", "true")
    assert fresh.returncode == 0, fresh.stderr
    assert int(fresh.stdout) == int(good2) + 1


def test_several_damaged_records_get_one_line_each(run, state_dir):
    """Four jobs damaged four ways among good ones: four lines, each naming its job."""
    ids = _three_jobs(run) + _three_jobs(run) + _three_jobs(run)
    kinds = ["truncated state", "garbage state", "non-JSON header", "empty state"]
    bad = ids[1::2]
    for job_id, kind in zip(bad, kinds):
        record, damage = DAMAGE[kind]
        damage(os.path.join(state_dir, "jobs", job_id, record))
    try:
        for args in (["status"], ["status", "--json"], ["status", "--state", "Done"]):
            result = run(*args)
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
            lines = result.stderr.splitlines()
            assert len(lines) == len(bad), lines
            assert all(f"/jobs/{job_id}/" in line for job_id, line in zip(bad, lines)), lines
            if "--json" in args:
                shown = [job["id"] for job in json.loads(result.stdout)]
            else:
                shown = [line.split()[0] for line in result.stdout.splitlines()[1:]]
            assert shown == [job_id for job_id in ids if job_id not in bad]
    finally:
        for job_id in bad:
            shutil.rmtree(os.path.join(state_dir, "jobs", job_id))


def test_damaged_array_task_record_and_summary_are_named(run, submit, state_dir):
    """An ended array with a truncated task record and a garbage summary: named, others listed."""
    good = submit("--", "true")
    array = submit("--array", "1-3", "--", "true")
    assert run("wait", good, array).returncode == 0
    folder = os.path.join(state_dir, "jobs", array)
    damage_task_record(folder, 2, lambda data: data[:len(data) // 2])
    _write(b"\x00garbage")(os.path.join(folder, "summary.json"))
    result = run("status")
    assert result.returncode == 0, result.stderr
    assert f"/jobs/{array}/tasks.log (task 2)" in one_line(result)
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]][0] == good
    result = run("status", array)
    assert result.returncode == 1
    assert f"/jobs/{array}/tasks.log (task 2)" in one_line(result)
    assert run("info", f"{array}.1").returncode == 0


def test_unknown_entries_and_a_missing_jobs_directory_break_nothing(run, state_dir):
    """An unknown file and directory in jobs/, then no jobs/ at all: status works, IDs go on."""
    ids = _three_jobs(run)
    jobs = os.path.join(state_dir, "jobs")
    with open(os.path.join(jobs, "README"), "w") as handle:
        handle.write("not a job\n")
    os.mkdir(os.path.join(jobs, "stray"))
    os.mkdir(os.path.join(jobs, "77"))  # a numeric directory without a header
    result = run("status")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ids
    assert [job["id"] for job in listing(run)] == ids
    fresh = run("submit", "--", "true")
    assert fresh.returncode == 0, fresh.stderr
    assert int(fresh.stdout) > int(ids[-1]) and int(fresh.stdout) != 77
    assert run("wait", fresh.stdout.strip()).returncode == 0  # its reaper is done writing
    shutil.rmtree(jobs)
    result = run("status")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    again = run("submit", "--", "true")
    assert again.returncode == 0, again.stderr
    assert int(again.stdout) > int(fresh.stdout)


@pytest.mark.parametrize("damage", ["deleted", "garbage", "empty", "lower"])
def test_a_lost_or_damaged_counter_never_gives_an_id_again(run, state_dir, damage):
    """last-id deleted or damaged after the newest job was deleted: still a fresh ID."""
    ids = _three_jobs(run)
    assert run("delete", ids[-1]).returncode == 0
    counter = os.path.join(state_dir, "last-id")
    if damage == "deleted":
        os.unlink(counter)
    else:
        with open(counter, "w") as handle:
            handle.write({"garbage": "x\x00y", "empty": "", "lower": "1\n"}[damage])
    fresh = run("submit", "--", "true")
    assert fresh.returncode == 0, fresh.stderr
    assert int(fresh.stdout) > int(ids[-1]), "an ID was given twice"


# -- full disk -------------------------------------------------------------------------

def snapshot(root):
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or os.path.isdir(path):
                found[path] = "dir"
            elif stat.S_ISSOCK(os.lstat(path).st_mode):
                found[path] = "socket"  # a live reaper's control socket
            else:
                with open(path, "rb") as handle:
                    found[path] = handle.read()
    return found


def test_full_disk_submit_fails_clearly_and_changes_nothing(run, small_fs):
    """ENOSPC while submitting: one line, exit 1, last-id and every record as they were."""
    where, state = small_fs
    env = {"OSTRACKER_STATE_DIR": state}
    first = run("submit", "--", "true", env=env)
    assert first.returncode == 0, first.stderr
    assert run("wait", first.stdout.strip(), env=env).returncode == 0
    filler = fill(where)
    before = snapshot(state)
    result = run("submit", "--", "true", env=env)
    assert result.returncode == 1
    assert "No space left on device" in one_line(result)
    assert result.stdout == ""
    assert snapshot(state) == before
    assert temp_files(state) == []
    status = run("status", env=env)
    assert status.returncode == 0 and status.stderr == ""
    os.unlink(filler)
    again = run("submit", "--", "true", env=env)
    assert again.returncode == 0, again.stderr
    assert int(again.stdout) == int(first.stdout) + 1


def test_full_disk_when_the_reaper_writes_a_result_loses_nothing(run, small_fs):
    """ENOSPC for the job's final record: the reaper keeps it, and writes it once space returns.

    Meanwhile the job reads as it last was (its reaper lives), no temp file is
    left, and nothing is lost: the record says SIGKILL once the filler is gone.
    """
    where, state = small_fs
    env = {"OSTRACKER_STATE_DIR": state}
    result = run("submit", "--", "sleep", "60", env=env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    record_path = os.path.join(state, "jobs", job_id, "state.json")
    with open(record_path) as handle:
        previous = json.load(handle)
    assert previous["state"] == "Running"
    filler = fill(where)
    try:
        kill_group(previous["pid"])
        poll(lambda: proc_state(previous["pid"]) is None, message="the job reaped")
        with open(record_path) as handle:
            assert json.load(handle) == previous  # whole: the write that failed left nothing
        assert temp_files(state) == []
        assert info_of(run, job_id, env=env)["state"] == "Running"
    finally:
        os.unlink(filler)
    job = poll(lambda: (lambda j: j["state"] != "Running" and j)(info_of(run, job_id, env=env)),
               message="the result written once space returned")
    assert (job["state"], job["terminating_signal"]) == ("Failed", "SIGKILL"), job
    assert run("wait", job_id, env=env).returncode == 128 + signal.SIGKILL


def test_full_disk_cutting_a_history_line_short_keeps_the_job_whole(run, small_fs, tmp_path):
    """ENOSPC half-way through an ended job's history line: the part written is cut off
    again, the job stays in ``jobs/N`` and reads as it ended, and the next job's line
    follows the whole lines before it.

    The job's line (its template holds a 6,000-byte variable) needs two new pages of the
    tmpfs; once the job ended, one page is freed: its final record takes that page and
    gives back the one it replaces, and the line gets as far as the page's end.
    """
    where, state = small_fs
    env = {"OSTRACKER_STATE_DIR": state, "OSTRACKER_KEEP_RECORDS": "0"}  # (this module's 1)
    first = run("submit", "--wait", "--", "true", env=env)
    assert first.returncode == 0, first.stderr
    history = os.path.join(state, "history")
    poll(lambda: os.listdir(os.path.join(state, "jobs")) == [], message="compacted")
    before = open(history, "rb").read()
    go = tmp_path / "go"
    job = run("submit", "-e", "PAD=" + "x" * 6000, "--", "sh", "-c",
              f"while [ ! -e {go} ]; do sleep 0.01; done", env=env).stdout.strip()
    poll(lambda: info_of(run, job, env=env)["state"] == "Running", message="running")
    filler = fill(where)
    try:
        go.touch()
        record = os.path.join(state, "jobs", job, "state.json")
        poll(lambda: proc_state(json.load(open(record))["pid"]) is None, message="job ended")
        pages = -(-os.stat(filler).st_size // 4096)
        os.truncate(filler, (pages - 1) * 4096)  # one page free
        poll(lambda: json.load(open(record))["state"] != "Running", message="its result")
        reaper = os.path.join(state, "jobs", job, "reaper.lock")
        poll(lambda: not _lock_held(reaper), message="its reaper gone")
        assert open(history, "rb").read() == before  # the part written was cut off
        assert temp_files(state) == []
        status = run("status", "-q", env=env)
        assert (status.stdout.split(), status.stderr) == ([first.stdout.strip(), job], "")
        assert info_of(run, job, env=env)["state"] == "Done"
    finally:
        os.unlink(filler)
    second = run("submit", "--wait", "--", "true", env=env)
    assert second.returncode == 0, second.stderr
    lines = open(history, "rb").read().split(b"\n")
    assert [line.split(b"\t")[0].decode() for line in lines[:-1]] == \
        [first.stdout.strip(), second.stdout.strip()] and lines[-1] == b""
    status = run("status", "-q", env=env)
    assert status.stdout.split() == [first.stdout.strip(), job, second.stdout.strip()]
    assert status.stderr == ""


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_write_failing_with_efbig_changes_nothing_and_says_so(state_dir, run, submit):
    """RLIMIT_FSIZE: cancelling a queued task and submitting fail clearly, records intact."""
    array = submit("--array", "1-3", "--max-parallel", "1", "--", "sleep", "60")
    assert [t["state"] for t in listing(run, array)][1:] == ["Queued", "Queued"]
    # until the reaper has recorded task 1's PID, it still writes: no snapshot before
    poll(lambda: listing(run, f"{array}.1")[0]["sub_state"] is None, message="task 1's PID")

    def limited(*args):
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                              preexec_fn=_file_size_limit(64))
    before = snapshot(state_dir)
    result = limited("terminate", f"{array}.3")
    assert result.returncode == 1
    assert "File too large" in one_line(result)
    assert snapshot(state_dir) == before
    assert listing(run, f"{array}.3")[0]["state"] == "Queued"

    result = limited("submit", "--", "true")
    assert result.returncode == 1
    assert "File too large" in one_line(result)
    assert result.stdout == ""
    after = snapshot(state_dir)
    counter = os.path.join(state_dir, "last-id")
    assert int(after[counter]) >= int(before[counter])  # an ID may be spent, never taken back
    jobs = os.path.join(state_dir, "jobs") + os.sep
    assert {path: data for path, data in after.items()
            if path in before and path.startswith(jobs)} == \
        {path: data for path, data in before.items() if path.startswith(jobs)}
    assert temp_files(state_dir) == []
    status = run("status")
    assert status.returncode == 0 and status.stderr == "", status.stderr
    assert [t["id"] for t in json.loads(run("status", "--json").stdout)] == \
        [f"{array}.{i}" for i in (1, 2, 3)]
    fresh = run("submit", "--", "true")
    assert fresh.returncode == 0, fresh.stderr
    assert int(fresh.stdout) > int(array)


# -- security --------------------------------------------------------------------------

def test_state_dir_and_records_are_private_even_under_umask_000(state_dir, tmp_path):
    """0700 directories and 0600 files, lock, counter, records, cancel and summary included."""
    def cli(*args):
        return subprocess.run([*CLI, *args], capture_output=True, text=True, umask=0,
                              timeout=60)
    array = cli("submit", "--array", "1-3", "--max-parallel", "1", "--", "sleep", "1")
    assert array.returncode == 0
    assert cli("terminate", f"{array.stdout.strip()}.3").returncode == 0  # still queued
    single = cli("submit", "-e", "TOKEN=secret", "--", "sh", "-c", "echo out; echo err >&2")
    assert single.returncode == 0
    assert cli("wait", "--timeout", "20", array.stdout.strip(), single.stdout.strip()) \
        .returncode == 1
    names, wrong = set(), []
    for folder, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            names.add(name)
            if mode != (0o700 if name in dirs else 0o600):
                wrong.append((path, oct(mode)))
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert {"lock", "last-id", "job.json", "state.json", "tasks.log", "summary.json",
            "reaper.lock", "stdout", "stderr"} <= names
    assert wrong == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the state dir to another user")
@pytest.mark.parametrize("which", ["state", "jobs"])
def test_state_dir_owned_by_another_user_is_refused(run, state_dir, which):
    """A state dir (or its jobs/) of another user is refused, exit 1, nothing written."""
    assert run("submit", "--wait", "--", "true").returncode == 0
    target = state_dir if which == "state" else os.path.join(state_dir, "jobs")
    os.chown(target, NOBODY, NOBODY)
    before = snapshot(state_dir)
    for args in (["status"], ["submit", "--", "true"], ["info", "1"]):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "another user" in one_line(result)
        assert result.stdout == ""
    assert snapshot(state_dir) == before
    os.chown(target, 0, 0)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_group_or_world_writable_state_dir_is_refused(run, state_dir, mode):
    """Writable by others: refused with a clear message, mode left as it was."""
    assert run("submit", "--wait", "--", "true").returncode == 0
    os.chmod(state_dir, mode)
    before = snapshot(state_dir)
    for args in (["status"], ["submit", "--", "true"]):
        result = run(*args)
        assert result.returncode == 1
        assert "writable by others" in one_line(result)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == mode
    assert snapshot(state_dir) == before
    os.chmod(state_dir, 0o700)


def test_readable_only_state_dir_is_closed_again(run, state_dir):
    """0755 is ours and harmless to use once closed: the next write (submit) makes it 0700;
    a reader changes nothing (tests/test_files.py)."""
    assert run("submit", "--", "true").returncode == 0
    os.chmod(state_dir, 0o755)
    assert run("status").returncode == 0
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o755
    assert run("submit", "--", "true").returncode == 0
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700


def _decoy(tmp_path, record):
    """A file outside the state dir holding a believable record with a tell-tale value."""
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps(record))
    return decoy


@pytest.mark.parametrize("name", ["state.json", "job.json"])
def test_reader_does_not_follow_a_symlink_planted_for_a_record(run, submit, state_dir, tmp_path,
                                                                name):
    """jobs/N/<record> -> a file elsewhere: an error naming it, not the file's content."""
    keep = submit("--", "true")
    job_id = submit("--", "true")
    assert run("wait", keep, job_id).returncode == 0
    path = os.path.join(state_dir, "jobs", job_id, name)
    with open(path) as handle:
        record = json.load(handle)
    record.update({"exit_status": 42} if name == "state.json" else
                  {"template": dict(record["template"], job_name="DECOY")})
    decoy = _decoy(tmp_path, record)
    os.unlink(path)
    os.symlink(decoy, path)
    for args in (["info", job_id], ["status", job_id], ["delete", job_id], ["wait", job_id]):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert path in one_line(result) and "DECOY" not in result.stdout
    result = run("status")
    assert result.returncode == 0
    assert path in one_line(result)
    assert "42" not in result.stdout.split() and "DECOY" not in result.stdout
    assert os.path.islink(path) and json.loads(decoy.read_text()) == record


def test_writer_does_not_write_through_symlinks_planted_for_a_record(run, submit, state_dir,
                                                                      tmp_path):
    """The reaper's final record replaces a planted link (state.json) instead of writing into
    its target; a link planted at its temp name is not written through either."""
    decoys = []
    for temp in (False, True):
        job_id, pid = running_job(run, submit, "sleep", "60")
        folder = os.path.join(state_dir, "jobs", job_id)
        decoy = tmp_path / f"target-{job_id}"
        decoy.write_text("precious\n")
        decoys.append(decoy)
        reaper = parent_of(pid)
        link = os.path.join(folder, f".state.json.{reaper}.tmp" if temp else "state.json")
        if not temp:
            os.unlink(link)
        os.symlink(decoy, link)
        kill_group(pid)
        poll(lambda: run("wait", "--timeout", "0", job_id).returncode != 124,
             message="the job ended")
        # (a reader may see the job's end before its reaper's last record is written)
        poll(lambda: proc_state(reaper) is None, message="the reaper to exit")
        assert decoy.read_text() == "precious\n"
        if not temp:
            assert not os.path.islink(os.path.join(folder, "state.json"))
            assert info_of(run, job_id)["terminating_signal"] == "SIGKILL"
    assert all(d.read_text() == "precious\n" for d in decoys)


def test_counter_and_lock_planted_as_symlinks_are_not_followed(run, state_dir, tmp_path):
    """last-id -> a file holding 500: not read through; lock -> a file: no traceback."""
    assert run("submit", "--", "true").returncode == 0
    decoy = tmp_path / "counter"
    decoy.write_text("500\n")
    counter = os.path.join(state_dir, "last-id")
    os.unlink(counter)
    os.symlink(decoy, counter)
    result = run("submit", "--", "true")
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() != "501", "the counter was read through a planted link"
    assert decoy.read_text() == "500\n"
    lock = os.path.join(state_dir, "lock")
    os.unlink(lock)
    os.symlink(decoy, lock)
    result = run("submit", "--", "true")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1)
    if result.returncode == 1:
        one_line(result)
    assert decoy.read_text() == "500\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_job_environment_is_out_of_other_users_reach(run, submit, state_dir):
    """job.json is 0600 in a 0700 dir; another user reads neither it nor the reaper's argv."""
    secret = f"s3cret-{uuid.uuid4().hex}"
    job_id = submit("-e", f"TOKEN={secret}", "--", "sleep", "60")
    pid = info_of(run, job_id)["pid"]
    header = os.path.join(state_dir, "jobs", job_id, "job.json")
    assert secret in open(header).read()
    assert stat.S_IMODE(os.stat(header).st_mode) == 0o600

    def as_nobody(*argv):
        def demote():
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        return subprocess.run(list(argv), capture_output=True, text=True, preexec_fn=demote,
                              timeout=60, env={**os.environ, "OSTRACKER_STATE_DIR": state_dir})
    assert as_nobody("cat", header).returncode != 0
    assert as_nobody("ls", state_dir).returncode != 0
    try:
        seen = as_nobody(*CLI, "info", job_id, "--json")
    except PermissionError:
        pass  # another user cannot even start this interpreter: nothing to see
    else:
        assert seen.returncode != 0 and secret not in seen.stdout + seen.stderr
    reaper = parent_of(pid)
    for who in (reaper, pid):
        shown = as_nobody("cat", f"/proc/{who}/cmdline", f"/proc/{who}/environ")
        assert secret not in shown.stdout


def test_job_sees_only_stdin_stdout_stderr(run, state_dir, tmp_path):
    """Extra descriptors of the submitter, the reaper's lock, pipe and DB files: none reach a job
    (neither the first task, started before the reaper's exec, nor later ones)."""
    # listdir's own descriptor is closed by the time fstat looks: it drops out.
    code = ("import os\n"
            "def is_open(fd):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "    except OSError:\n"
            "        return False\n"
            "    return True\n"
            "fds = sorted(fd for fd in map(int, os.listdir('/proc/self/fd')) if is_open(fd))\n"
            "print(fds, [os.readlink('/proc/self/fd/%d' % fd) for fd in fds])\n")
    extra = open(tmp_path / "held-open", "w")
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(extra.fileno(), True)
        os.set_inheritable(read_end, True)
        result = subprocess.run([*CLI, "submit", "--array", "1-3", "--max-parallel", "1",
                                 "-o", str(tmp_path / "fds.%a"), "--", sys.executable, "-c",
                                 code], capture_output=True, text=True, timeout=60,
                                pass_fds=(extra.fileno(), read_end, write_end))
    finally:
        extra.close()
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert run("wait", "--timeout", "20", result.stdout.strip()).returncode == 0
    for index in (1, 2, 3):
        line = (tmp_path / f"fds.{index}").read_text()
        fds, targets = line.split("] ", 1)
        assert fds + "]" == "[0, 1, 2]", line
        captured = os.path.join(state_dir, "jobs", result.stdout.strip(), f"{index}.stderr")
        assert state_dir not in targets.replace(captured, ""), line
