"""The monitoring session (README, "Monitoring"): OS processes as jobs, through the real CLI.

Real processes throughout: each test starts the ``sleep`` (or busy loop) it
looks at, in a working directory of its own, and reaps it at the end.
"""

from __future__ import annotations

import json
import os
import platform
import pty
import pwd
import re
import subprocess
import sys
import time

import psutil
import pytest

from conftest import CLI, poll, proc_state

JOB_FIELDS = ["id", "state", "submission_time", "dispatch_time", "wallclock_time",
              "allocated_machines", "submission_machine", "job_owner", "extension_list"]
EXTENSION_FIELDS = ["name", "commandline", "workingdir", "cpu_usage", "cpu_affinity",
                    "memory_usage", "memory_usage_rss", "memory_usage_vms"]
ISO_MICRO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
HUMAN_SIZE = re.compile(r"^(\d+ B|\d+\.\d (KiB|MiB|GiB|TiB|PiB))$")
ANSI_ESCAPE = "\x1b"


def start(argv, cwd=None):
    """Start a process the test owns; the caller reaps it with ``stop``."""
    return subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process):
    process.kill()
    process.wait(timeout=10)


@pytest.fixture
def sleeper(tmp_path):
    """A ``sleep 60`` running in a working directory of its own."""
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    process = start(["sleep", "60"], cwd=workdir)
    try:
        # the exec is done once /proc shows the new command line
        poll(lambda: psutil.Process(process.pid).cmdline() == ["sleep", "60"],
             message="sleep to start")
        process.workdir = str(workdir)
        yield process
    finally:
        stop(process)


@pytest.fixture
def busy():
    """A process that spins on a CPU."""
    process = start([sys.executable, "-c", "while True: pass"])
    try:
        poll(lambda: psutil.Process(process.pid).cpu_times().user > 0.05,
             message="busy loop to spin")
        yield process
    finally:
        stop(process)


def monitor_json(run, *args):
    result = run("monitor", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_id(objects):
    return {item["id"]: item for item in objects}


def unused_pid() -> int:
    """A PID no process can have: beyond the kernel's largest."""
    with open("/proc/sys/kernel/pid_max") as handle:
        return int(handle.read()) + 1


def table_rows(text):
    """The data rows of a table, split into columns at runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[1:]]


# -- one process, every field ----------------------------------------------------------------

def test_a_process_is_shown_as_a_job_with_every_field(run, sleeper):
    [job] = monitor_json(run, sleeper.pid)
    assert list(job) == JOB_FIELDS
    assert list(job["extension_list"]) == EXTENSION_FIELDS
    assert job["id"] == str(sleeper.pid)
    assert job["state"] == "Running"
    host = os.uname().nodename
    assert job["allocated_machines"] == [host] and job["submission_machine"] == host
    assert job["job_owner"] == pwd.getpwuid(os.getuid()).pw_name

    started = psutil.Process(sleeper.pid).create_time()
    assert ISO_MICRO_UTC.match(job["dispatch_time"]), job["dispatch_time"]
    assert job["submission_time"] == job["dispatch_time"]
    from datetime import datetime
    assert abs(datetime.fromisoformat(job["dispatch_time"]).timestamp() - started) < 1
    assert 0 <= job["wallclock_time"] < 60
    assert abs(job["wallclock_time"] - (time.time() - started)) < 5

    extension = job["extension_list"]
    assert extension["name"] == "sleep"
    assert extension["commandline"] == "sleep 60"
    assert extension["workingdir"] == sleeper.workdir
    assert isinstance(extension["cpu_usage"], float) and 0 <= extension["cpu_usage"] < 50
    cpus = [int(cpu) for cpu in extension["cpu_affinity"].split(" ")]
    assert cpus and all(0 <= cpu < os.cpu_count() for cpu in cpus)
    assert isinstance(extension["memory_usage_rss"], int) and extension["memory_usage_rss"] > 0
    assert extension["memory_usage_vms"] >= extension["memory_usage_rss"]
    assert HUMAN_SIZE.match(extension["memory_usage"]), extension["memory_usage"]


def test_the_full_list_holds_every_process_with_exactly_the_spec_fields(run, sleeper):
    jobs = monitor_json(run)
    ids = [job["id"] for job in jobs]
    assert str(os.getpid()) in ids and str(sleeper.pid) in ids
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    for job in jobs:
        assert list(job) == JOB_FIELDS, job
        assert list(job["extension_list"]) == EXTENSION_FIELDS, job
        assert job["state"] == "Running"


def test_several_pids_in_the_order_given_as_json_and_as_table(run, sleeper):
    pids = [sleeper.pid, os.getpid(), 1]
    assert [job["id"] for job in monitor_json(run, *pids)] == [str(pid) for pid in pids]

    result = run("monitor", *pids)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["PID", "USER", "STATE", "STARTED", "WALL", "CPU%", "RSS",
                              "NAME", "COMMAND"]
    assert [row.split()[0] for row in rows] == [str(pid) for pid in pids]
    assert re.search(r"  sleep +sleep 60$", rows[0])


def test_a_zombie_is_shown_not_an_error(run):
    process = start(["true"])
    try:
        poll(lambda: proc_state(process.pid) == "Z", message="the child to be a zombie")
        [job] = monitor_json(run, process.pid)
        assert job["id"] == str(process.pid)
        result = run("monitor", process.pid)
        assert result.returncode == 0, result.stderr
        assert " zombie " in result.stdout
    finally:
        process.wait(timeout=10)


def as_nobody(function):
    """Run ``function`` in a forked child that has dropped root; return what it returned."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(writer, json.dumps(function()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as handle:
        text = handle.read()
    _, status = os.waitpid(child, 0)
    assert status == 0 and text, "the unprivileged child failed"
    return json.loads(text)


def test_a_field_the_os_will_not_show_is_null(run, sleeper):
    from ostracker.local.monitor import MonitoringSession

    if os.getuid() == 0:
        # another user may not read our process's working directory
        job = as_nobody(lambda: MonitoringSession().job_info(sleeper.pid).to_dict())
        assert job["extension_list"]["commandline"] == "sleep 60"
    else:
        [job] = monitor_json(run, 1)  # init's
    assert job["extension_list"]["workingdir"] is None
    assert job["job_owner"] == "root"
    assert job["extension_list"]["memory_usage_rss"] > 0


def test_processes_that_come_and_go_during_the_snapshot_are_no_error(run):
    churn = start(["sh", "-c", "while :; do /bin/true; done"])
    try:
        for _ in range(3):
            result = run("monitor", "--json")
            assert result.returncode == 0, result.stderr
            json.loads(result.stdout)
    finally:
        stop(churn)


# -- unknown and malformed PIDs --------------------------------------------------------------

def test_an_unknown_pid_fails_with_process_not_found(run):
    pid = unused_pid()
    result = run("monitor", pid)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"ostracker: process not found: {pid}\n"
    assert run("monitor", "--json", pid).returncode == 1


def test_an_unknown_pid_among_known_ones_shows_the_others_and_fails(run):
    pid = unused_pid()
    result = run("monitor", "--json", os.getpid(), pid)
    assert result.returncode == 1
    assert [job["id"] for job in json.loads(result.stdout)] == [str(os.getpid())]
    assert result.stderr == f"ostracker: process not found: {pid}\n"


@pytest.mark.parametrize("args", [["abc"], ["--", "-3"], ["--interval", "0"],
                                  ["--interval", "x"], ["--user", "no-such-user-here"],
                                  ["--machine", "1"]])
def test_malformed_arguments_are_usage_errors(run, args):
    result = run("monitor", *args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


# -- filters --------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["root", "me"])
def test_user_filter_shows_only_that_users_processes(run, who):
    name = pwd.getpwuid(os.getuid()).pw_name if who == "me" else who
    jobs = monitor_json(run, "--user", name)
    assert jobs and all(job["job_owner"] == name for job in jobs)
    if name == pwd.getpwuid(os.getuid()).pw_name:
        assert str(os.getpid()) in by_id(jobs)
    result = run("monitor", "--user", name)
    assert result.returncode == 0
    assert {row[1] for row in table_rows(result.stdout)} == {name}


def test_name_filter_by_substring_and_by_glob(run, tmp_path):
    # sleep adds up its arguments: a command line no other process has
    marker = start(["sleep", "59", "1.25"], cwd=tmp_path)
    try:
        poll(lambda: (psutil.Process(marker.pid).cmdline() or [""])[0] == "sleep",
             message="sleep")  # (empty between its fork and its exec)
        for pattern in ["59 1.25", "sleep 59 1.2?", "*59 1.25", "sle*"]:
            jobs = monitor_json(run, "--name", pattern)
            assert str(marker.pid) in by_id(jobs), pattern
        for job in monitor_json(run, "--name", "sle*"):  # a glob matches the whole text
            ext = job["extension_list"]
            assert ext["name"].startswith("sle") or ext["commandline"].startswith("sle")
        for job in monitor_json(run, "--name", "59 1.25"):
            assert "59 1.25" in job["extension_list"]["commandline"]
        assert str(marker.pid) not in by_id(monitor_json(run, "--name", "59 1.250"))
        assert str(marker.pid) not in by_id(monitor_json(run, "--name", "*59"))
    finally:
        stop(marker)


def test_jobs_filter_shows_the_processes_of_ostracker_jobs_with_their_ids(run, submit, info,
                                                                          sleeper):
    job_id = submit("-n", "monitored", "--", "sleep", "60")
    job_pid = info(job_id)["pid"]
    # a job whose process starts another: the child is in the job's process group
    parent_id = submit("--", "sh", "-c", "sleep 59 & wait")
    parent_pid = info(parent_id)["pid"]
    child = poll(lambda: [p for p in psutil.Process(parent_pid).children()
                          if p.cmdline() == ["sleep", "59"]], message="the job's child")[0]

    jobs = by_id(monitor_json(run, "--jobs"))
    assert str(sleeper.pid) not in jobs and str(os.getpid()) not in jobs
    mine = jobs[str(job_pid)]
    assert mine["extension_list"]["job_id"] == job_id
    assert mine["extension_list"]["commandline"] == "sleep 60"
    assert list(mine["extension_list"]) == [*EXTENSION_FIELDS, "job_id"]
    assert jobs[str(parent_pid)]["extension_list"]["job_id"] == parent_id
    assert jobs[str(child.pid)]["extension_list"]["job_id"] == parent_id
    assert set(jobs) == {str(job_pid), str(parent_pid), str(child.pid)}

    result = run("monitor", "--jobs")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["JOB", "PID"]
    assert [job_id, str(job_pid)] in [row[:2] for row in table_rows(result.stdout)]

    assert run("terminate", job_id).returncode == 0
    assert str(job_pid) not in by_id(monitor_json(run, "--jobs"))


# -- CPU usage -------------------------------------------------------------------------------

def cpu_seconds(pid):
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_interval_samples_cpu_usage_over_one_common_interval(run, busy, sleeper):
    # The busy loop's share of a CPU while the command runs: near 100 % on an idle
    # machine, less when other work competes for the CPUs.
    cpu_before, wall_before = cpu_seconds(busy.pid), time.monotonic()
    jobs = by_id(monitor_json(run, "--interval", "0.2", busy.pid, sleeper.pid))
    share = (cpu_seconds(busy.pid) - cpu_before) / (time.monotonic() - wall_before) * 100
    assert jobs[str(busy.pid)]["extension_list"]["cpu_usage"] > min(50, share / 2), share
    assert jobs[str(sleeper.pid)]["extension_list"]["cpu_usage"] < 5

    began = time.monotonic()
    everything = by_id(monitor_json(run, "--interval", "0.5"))
    elapsed = time.monotonic() - began
    assert len(everything) > 5
    assert elapsed < 0.5 * 5, f"{elapsed:.1f} s: one sleep per process?"
    share = (cpu_seconds(busy.pid) - cpu_before) / (time.monotonic() - wall_before) * 100
    assert everything[str(busy.pid)]["extension_list"]["cpu_usage"] > min(50, share / 2), share


def test_interval_usage_is_now_not_since_start(run):
    """Busy for 0.3 s of CPU, then asleep: a share since start, nothing over an interval now.

    Counted in CPU time, not wall clock, so that a busy machine (which stretches
    the burst) changes the figures' size, never which one is larger.
    """
    burst = start([sys.executable, "-c", "import time\n"
                   "while time.process_time() < 0.3: pass\ntime.sleep(60)"])
    try:
        poll(lambda: proc_state(burst.pid) == "S" and cpu_seconds(burst.pid) >= 0.25,
             timeout=60, message="the burst to end")
        [average] = monitor_json(run, burst.pid)
        [now] = monitor_json(run, "--interval", "0.2", burst.pid)
        process = psutil.Process(burst.pid)
        times = process.cpu_times()
        ceiling = (times.user + times.system) / (time.time() - process.create_time()) * 100
        assert 0 < average["extension_list"]["cpu_usage"]
        assert average["extension_list"]["cpu_usage"] >= ceiling * 0.5  # since start
        assert now["extension_list"]["cpu_usage"] < 2  # it sleeps: nothing now
    finally:
        stop(burst)


def test_default_cpu_usage_is_the_average_since_start(run, busy):
    [job] = monitor_json(run, busy.pid)
    times = psutil.Process(busy.pid).cpu_times()
    wall = time.time() - psutil.Process(busy.pid).create_time()
    expected = (times.user + times.system) / wall * 100
    assert job["extension_list"]["cpu_usage"] == pytest.approx(expected, abs=25)
    assert job["extension_list"]["cpu_usage"] > 10


# -- the machine -----------------------------------------------------------------------------

def test_machine_as_json(run):
    result = run("monitor", "--machine", "--json")
    assert result.returncode == 0, result.stderr
    machine, = json.loads(result.stdout)  # a list of machines, as on a cluster
    assert machine["name"] == os.uname().nodename
    assert machine["available"] is True
    assert machine["sockets"] >= 1 and machine["cores_per_socket"] >= 1
    assert machine["threads_per_core"] >= 1
    extension = machine["extension_list"]
    assert machine["sockets"] * machine["cores_per_socket"] * machine["threads_per_core"] \
        <= extension["threads"] == os.cpu_count()
    assert 1 <= extension["cores"] <= extension["threads"]
    assert machine["phys_memory"] > 0 and machine["virt_memory"] >= 0
    assert len(extension["load_average"]) == 3
    assert all(isinstance(load, float) and load >= 0 for load in extension["load_average"])
    assert machine["load"] == extension["load_average"][0]
    assert machine["machine_os"] == platform.system()
    assert machine["machine_os_version"] == platform.release()
    assert machine["machine_arch"] == platform.machine()
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    assert abs(extension["uptime"] - uptime) < 5
    assert ISO_MICRO_UTC.match(extension["boot_time"])


def test_machine_as_key_value_lines(run):
    result = run("monitor", "--machine")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["name"] == os.uname().nodename
    assert lines["machine_os"] == platform.system()
    assert re.fullmatch(r"\d+ \(.*(B|iB)\)", lines["phys_memory"])
    assert len(lines["extension_list.load_average"].split()) == 3


# -- the table on a terminal and through a pipe ---------------------------------------------

def test_piped_table_lines_are_whole_and_plain(run, tmp_path):
    long_sleep = start(["sleep", "60", *["0"] * 150], cwd=tmp_path)
    try:
        poll(lambda: len(psutil.Process(long_sleep.pid).cmdline()) == 152, message="sleep")
        result = run("monitor", env={"COLUMNS": "40"})
        assert result.returncode == 0, result.stderr
        assert ANSI_ESCAPE not in result.stdout
        row = [line for line in result.stdout.splitlines()
               if line.split()[0] == str(long_sleep.pid)]
        assert row and row[0].endswith("sleep 60 " + " ".join(["0"] * 150))
    finally:
        stop(long_sleep)


def test_table_on_a_terminal_is_cut_to_its_width():
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen([*CLI, "monitor"], stdout=follower, stderr=subprocess.PIPE,
                                   env={**os.environ, "COLUMNS": "50", "LINES": "20"})
        os.close(follower)
        follower = None
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0, process.stderr.read()
        process.stderr.close()
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)
    lines = b"".join(chunks).decode().replace("\r\n", "\n").splitlines()
    assert len(lines) > 5
    assert max(len(line) for line in lines) <= 50
    assert lines[0].split()[:2] == ["PID", "USER"]


# -- the Python API -------------------------------------------------------------------------

def test_python_api(sleeper):
    from ostracker import JobNotFound, MonitoringSession

    session = MonitoringSession()
    ids = session.all_job_ids()
    assert str(os.getpid()) in ids and str(sleeper.pid) in ids
    job = session.job_info(sleeper.pid)
    assert job.id == str(sleeper.pid) and job.state == "Running"
    assert job.to_dict()["extension_list"]["workingdir"] == sleeper.workdir
    assert session.job_info(str(sleeper.pid)).name == "sleep"
    with pytest.raises(JobNotFound, match="process not found"):
        session.job_info(unused_pid())
    [machine] = session.machines()
    assert machine["name"] == os.uname().nodename
