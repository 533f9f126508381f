"""The commands of README, "Commands and exit statuses" (other than submit and job control), through the real CLI.

Real processes throughout: jobs are started with ``ostracker submit``, signalled
from outside with kill(2), and their reapers found in /proc.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import CLI, cleanup, poll, proc_state
import ostracker

INFO_FIELDS = ["id", "array_id", "task_id", "job_name", "state", "sub_state", "exit_status",
               "terminating_signal", "pid", "allocated_machines", "submission_machine",
               "job_owner", "uid", "submission_time", "dispatch_time", "finish_time",
               "wallclock_time", "extension_list", "job_template"]
RUSAGE_FIELDS = ["ru_maxrss", "ru_swap", "ru_inblock", "ru_outblock", "system_time_ms",
                 "user_time_ms"]
TEMPLATE_FIELDS = ["remote_command", "args", "working_directory", "job_environment",
                   "input_path", "output_path", "error_path", "job_name"]
ISO_MICRO_UTC_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$")


# -- helpers -------------------------------------------------------------------------------

def no_traceback(result):
    assert "Traceback" not in result.stderr, result.stderr


def one_line_error(result):
    no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    return lines[0]


def records(run, *job_ids):
    result = run("status", *job_ids, "--json")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    return json.loads(result.stdout)


def record(run, job_id):
    found = [r for r in records(run, job_id) if r["id"] == job_id]
    assert len(found) == 1, found
    return found[0]


def state_of(run, job_id):
    return record(run, job_id)["state"]


def running_job(submit, run, *command):
    """Submit ``command``; return (ID, PID) once it reads Running."""
    job_id = submit("--", *command)
    poll(lambda: state_of(run, job_id) == "Running", message=f"job {job_id} Running")
    return job_id, record(run, job_id)["pid"]


def ended_job(submit, run, *command, options=()):
    """Submit ``command`` and wait for it to end; return its ID."""
    job_id = submit(*options, "--", *command)
    result = run("wait", job_id, "--timeout", 20)
    assert result.returncode != 124, f"job {job_id} did not end"
    return job_id


def parent_pid(pid):
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    return int(raw[raw.rindex(b")") + 2:].split()[1])  # field 4: ppid


def kill_quietly(pid, signum=signal.SIGKILL):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def table_rows(text):
    """The ``status`` table as (header line, {ID: row line})."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "empty table"
    rows = {}
    for line in lines[1:]:
        rows[line.split()[0]] = line
    return lines[0], rows


# -- status ----------------------------------------------------------------------------------

def test_status_table_shows_spec_columns_for_all_jobs_and_for_named_ids(run, submit):
    """status: a table with ID, name, state, exit, PID, start, wall clock, command; IDs narrow it."""
    done = ended_job(submit, run, "sh", "-c", "exit 0", options=("-n", "first-job"))
    failed = ended_job(submit, run, "sh", "-c", "exit 5")
    long_id, long_pid = running_job(submit, run, "sleep", "30")

    result = run("status")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    header, rows = table_rows(result.stdout)
    upper = header.upper()
    for column in ("ID", "NAME", "STATE", "EXIT", "PID", "START", "WALL", "COMM"):
        assert column in upper, f"column {column} missing in header {header!r}"
    assert set(rows) == {done, failed, long_id}

    done_record = record(run, done)
    assert "first-job" in rows[done] and "Done" in rows[done]
    assert str(done_record["pid"]) in rows[done].split()
    assert re.search(r"\d\d:\d\d:\d\d", rows[done]), f"no start time in {rows[done]!r}"
    assert "sh -c" in rows[done] and "exit 0" in rows[done]
    assert "Failed" in rows[failed] and "5" in rows[failed].split()
    assert "Running" in rows[long_id] and str(long_pid) in rows[long_id].split()
    assert "sleep 30" in rows[long_id]

    result = run("status", failed, long_id)
    assert result.returncode == 0, result.stderr
    _, rows = table_rows(result.stdout)
    assert set(rows) == {failed, long_id}


def test_status_json_is_a_list_of_records_one_per_job_and_array_task(run, submit):
    """status --json: a JSON list with one README "JobInfo" record per single job and array task."""
    single = ended_job(submit, run, "true")
    array = ended_job(submit, run, "true", options=("--array", "1-3"))
    everything = records(run)
    assert isinstance(everything, list)
    assert sorted(r["id"] for r in everything) == sorted(
        [single, f"{array}.1", f"{array}.2", f"{array}.3"])
    for item in everything:
        assert set(INFO_FIELDS) <= set(item), set(INFO_FIELDS) - set(item)
        assert item["state"] == "Done"
    assert [r["id"] for r in records(run, single)] == [single]
    assert [r["task_id"] for r in records(run, array)] == [1, 2, 3]
    assert all(r["array_id"] == array for r in records(run, array))


def test_status_state_filter_is_repeatable_and_case_insensitive(run, submit):
    """status --state done / --state Running --state FAILED keep only jobs in those states."""
    done = ended_job(submit, run, "true")
    failed = ended_job(submit, run, "false")
    running, _ = running_job(submit, run, "sleep", "30")

    assert [r["id"] for r in json.loads(run("status", "--state", "done", "--json").stdout)] \
        == [done]
    result = run("status", "--state", "Running", "--state", "FAILED", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(r["id"] for r in json.loads(result.stdout)) == sorted([failed, running])

    result = run("status", "--state", "dOnE")
    assert result.returncode == 0, result.stderr
    _, rows = table_rows(result.stdout)
    assert set(rows) == {done}


def test_status_unknown_state_name_is_a_usage_error(run, submit):
    """status --state bogus: exit 2 with a one-line error, no traceback."""
    submit("--", "true")
    result = run("status", "--state", "bogus")
    assert result.returncode == 2
    assert "bogus" in one_line_error(result)


def test_status_unknown_job_id_fails_with_exit_1(run, submit):
    """status of a well-formed ID that does not exist: exit 1, one-line error."""
    job = ended_job(submit, run, "true")
    result = run("status", str(int(job) + 100))
    assert result.returncode == 1
    assert str(int(job) + 100) in one_line_error(result)


@pytest.mark.parametrize("bad_id", ["abc", "1.x", "0", "-3"])
def test_status_malformed_job_id_is_a_usage_error(run, submit, bad_id):
    """status abc / 1.x / 0 / -3: exit 2, one-line error, never a traceback."""
    submit("--", "true")
    result = run("status", bad_id)
    assert result.returncode == 2, (result.returncode, result.stderr)
    one_line_error(result)


# -- info -----------------------------------------------------------------------------------

def test_info_prints_every_jobinfo_field_as_key_value_lines(run, submit):
    """info ID: `key: value` lines naming every README "JobInfo" field."""
    job = ended_job(submit, run, "sh", "-c", "exit 4")
    result = run("info", job)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert all(": " in line or line.endswith(":") for line in lines if line.strip()), lines
    keys = {line.split(":", 1)[0].strip() for line in lines if line.strip()}
    for field in INFO_FIELDS:
        assert any(key == field or key.startswith(field + ".") for key in keys), \
            f"{field} missing from info output"
    values = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
              for line in lines if ":" in line}
    assert values["id"] == job
    assert values["state"] == "Failed"
    assert values["exit_status"] == "4"


def test_info_json_is_an_object_with_every_field_correctly_typed(run, submit, info, tmp_path):
    """info ID --json: one object, README "JobInfo" keys, types, times in ISO 8601 with µs."""
    job = ended_job(submit, run, "sh", "-c", "echo hi", options=("-e", "SECRET_KEY=v1",
                                                              "-C", str(tmp_path)))
    data = info(job)
    assert isinstance(data, dict)
    assert set(INFO_FIELDS) <= set(data), set(INFO_FIELDS) - set(data)
    assert data["id"] == job and data["array_id"] is None and data["task_id"] is None
    assert data["state"] == "Done" and data["exit_status"] == 0
    assert data["terminating_signal"] is None
    assert isinstance(data["pid"], int) and data["pid"] > 0
    assert data["allocated_machines"] == [socket.gethostname()]
    assert data["submission_machine"] == socket.gethostname()
    import pwd
    assert data["uid"] == os.getuid()
    assert data["job_owner"] == pwd.getpwuid(os.getuid()).pw_name
    times = {}
    for key in ("submission_time", "dispatch_time", "finish_time"):
        assert ISO_MICRO_UTC_OFFSET.match(data[key]), data[key]
        times[key] = datetime.fromisoformat(data[key])
    assert times["submission_time"] <= times["dispatch_time"] <= times["finish_time"]
    assert isinstance(data["wallclock_time"], float) and data["wallclock_time"] >= 0
    assert abs(data["wallclock_time"] -
               (times["finish_time"] - times["dispatch_time"]).total_seconds()) < 0.01
    assert set(RUSAGE_FIELDS) <= set(data["extension_list"])
    assert all(isinstance(data["extension_list"][k], int) for k in RUSAGE_FIELDS)
    template = data["job_template"]
    assert set(TEMPLATE_FIELDS) <= set(template)
    assert template["remote_command"] == "sh" and template["args"] == ["-c", "echo hi"]
    assert template["job_environment"] == {"SECRET_KEY": "v1"}
    assert template["working_directory"] == str(tmp_path)


def test_info_of_an_array_is_a_json_list_of_its_tasks(run, submit):
    """info N --json for an array N: a list with one object per task, in index order."""
    array = ended_job(submit, run, "true", options=("--array", "1-5:2"))
    result = run("info", array, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    assert [d["id"] for d in data] == [f"{array}.1", f"{array}.3", f"{array}.5"]
    assert [d["task_id"] for d in data] == [1, 3, 5]
    assert all(d["array_id"] == array and d["state"] == "Done" for d in data)


def test_info_unknown_job_fails_with_exit_1(run, submit):
    """info of an ID that does not exist: exit 1, one-line error."""
    submit("--", "true")
    result = run("info", "4242")
    assert result.returncode == 1
    one_line_error(result)
    assert run("info", "4242", "--json").returncode == 1


# -- wait -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command, expected", [(["true"], 0), (["sh", "-c", "exit 3"], 3)])
def test_wait_exits_with_the_single_jobs_exit_status(run, submit, command, expected):
    """wait ID: the job's own exit status (0, 3)."""
    job = submit("--", *command)
    result = run("wait", job)
    assert result.returncode == expected, result.stderr
    no_traceback(result)


def test_wait_on_a_job_killed_by_sigterm_from_outside_exits_128_plus_15(run, submit):
    """kill -TERM PID from outside: wait exits 143, the record says Failed by SIGTERM."""
    job, pid = running_job(submit, run, "sleep", "30")
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    result = run("wait", job, "--timeout", 10)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    data = record(run, job)
    assert data["state"] == "Failed"
    assert data["terminating_signal"] == "SIGTERM"
    assert data["exit_status"] is None


def test_wait_on_several_jobs_exits_0_only_if_all_are_done(run, submit):
    """wait A B: 0 when both ended Done, 1 when one of them Failed."""
    ok1 = submit("--", "true")
    ok2 = submit("--", "sh", "-c", "sleep 0.2")
    bad = submit("--", "sh", "-c", "exit 7")
    result = run("wait", ok1, ok2)
    assert result.returncode == 0, result.stderr
    result = run("wait", ok1, bad)
    assert result.returncode == 1, result.stderr
    assert record(run, bad)["exit_status"] == 7


def test_wait_any_returns_when_the_first_job_ends_and_leaves_the_other_running(run, submit):
    """wait --any SHORT LONG: returns after the short job; the long one is still Running."""
    long_id, _ = running_job(submit, run, "sleep", "30")
    short = submit("--", "sleep", "1")
    started = time.monotonic()
    result = run("wait", "--any", short, long_id, timeout=20)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 10, f"wait --any took {elapsed:.1f} s"
    assert state_of(run, short) == "Done"  # it did wait for the short job
    assert state_of(run, long_id) == "Running"  # ... and not for the long one


def test_wait_timeout_runs_out_with_exit_124(run, submit):
    """wait --timeout 0.2 on a long job: exit 124 soon after, job still Running."""
    job, _ = running_job(submit, run, "sleep", "30")
    started = time.monotonic()
    result = run("wait", "--timeout", "0.2", job, timeout=20)
    elapsed = time.monotonic() - started
    assert result.returncode == 124, result.stderr
    assert elapsed < 3, f"wait --timeout 0.2 took {elapsed:.1f} s"
    no_traceback(result)
    assert state_of(run, job) == "Running"


@pytest.mark.parametrize("timeout", ["-1", "abc"])
def test_wait_bad_timeout_is_a_usage_error(run, submit, timeout):
    """wait --timeout -1 / abc: exit 2, one-line error."""
    job = submit("--", "true")
    result = run("wait", "--timeout", timeout, job)
    assert result.returncode == 2, (result.returncode, result.stderr)
    one_line_error(result)


def test_wait_unknown_job_fails_with_exit_1(run, submit):
    """wait on a well-formed ID that does not exist: exit 1 at once."""
    submit("--", "true")
    result = run("wait", "999", timeout=10)
    assert result.returncode == 1
    one_line_error(result)


# -- delete ---------------------------------------------------------------------------------

def test_delete_refuses_a_running_job_and_keeps_its_record(run, submit):
    """delete of a Running job: exit 1, message names job and state, record unchanged."""
    job, pid = running_job(submit, run, "sleep", "30")
    result = run("delete", job)
    assert result.returncode == 1
    line = one_line_error(result)
    assert job in line and "Running" in line, line
    data = record(run, job)
    assert data["state"] == "Running" and data["pid"] == pid
    assert proc_state(pid) in ("S", "R")


def test_delete_removes_an_ended_job_and_its_captured_output_files(run, submit, state_dir):
    """delete of an ended job: record gone, captured stdout/stderr files removed from the state dir."""
    job = ended_job(submit, run, "sh", "-c", "echo OUT-MARKER-123; echo ERR-MARKER-456 >&2")
    assert run("output", job).stdout == "OUT-MARKER-123\n"
    def files_holding_markers():
        found = []
        for root, _, files in os.walk(state_dir):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    content = handle.read()
                if b"OUT-MARKER-123" in content or b"ERR-MARKER-456" in content:
                    found.append(path)
        return found

    captured = [path for path in files_holding_markers()
                if Path(path).read_bytes() in (b"OUT-MARKER-123\n", b"ERR-MARKER-456\n")]
    assert len(captured) == 2, captured

    result = run("delete", job)
    assert result.returncode == 0, result.stderr
    for path in captured:
        assert not os.path.exists(path), f"{path} left behind"
    assert files_holding_markers() == []  # not merely moved aside
    assert run("status", job).returncode == 1
    assert records(run) == []
    leftovers = [os.path.join(root, name) for root, _, files in os.walk(state_dir)
                 for name in files if job in os.path.relpath(os.path.join(root, name), state_dir)
                 .split(os.sep)]
    assert leftovers == []


def test_delete_leaves_output_files_the_user_named(run, submit, tmp_path):
    """delete keeps files given with -o/--stderr: they are the user's."""
    out, err = tmp_path / "job-%j.out", tmp_path / "job.err"
    job = ended_job(submit, run, "sh", "-c", "echo to-out; echo to-err >&2",
                    options=("-o", str(out), "--stderr", str(err)))
    real_out = tmp_path / f"job-{job}.out"
    assert real_out.read_text() == "to-out\n"
    result = run("delete", job)
    assert result.returncode == 0, result.stderr
    assert real_out.read_text() == "to-out\n"
    assert err.read_text() == "to-err\n"


def test_delete_finished_deletes_every_ended_job_and_keeps_running_ones(run, submit):
    """delete --finished: Done, Failed and ended arrays go; Running jobs stay."""
    done = ended_job(submit, run, "true")
    failed = ended_job(submit, run, "false")
    array = ended_job(submit, run, "true", options=("--array", "1-2"))
    running, pid = running_job(submit, run, "sleep", "30")
    result = run("delete", "--finished")
    assert result.returncode == 0, result.stderr
    remaining = records(run)
    assert [r["id"] for r in remaining] == [running]
    assert remaining[0]["state"] == "Running"
    for gone in (done, failed, array):
        assert run("status", gone).returncode == 1


def test_delete_of_one_array_task_is_refused(run, submit):
    """delete N.I: refused (non-zero, one line), the array and the task stay."""
    array = ended_job(submit, run, "true", options=("--array", "1-2"))
    result = run("delete", f"{array}.1")
    assert result.returncode in (1, 2), result.returncode
    one_line_error(result)
    assert [r["id"] for r in records(run, array)] == [f"{array}.1", f"{array}.2"]


def test_delete_unknown_job_fails_with_exit_1(run, submit):
    """delete of an ID that does not exist: exit 1, one-line error."""
    ended_job(submit, run, "true")
    result = run("delete", "777")
    assert result.returncode == 1
    one_line_error(result)
    assert len(records(run)) == 1


def test_deleted_ids_are_never_reused(run, submit):
    """After deleting the newest jobs, the next submit still gets a larger ID."""
    first = ended_job(submit, run, "true")
    second = ended_job(submit, run, "true")
    assert run("delete", second).returncode == 0
    third = ended_job(submit, run, "true")
    assert int(third) > int(second) > int(first)
    assert run("delete", "--finished").returncode == 0
    fourth = submit("--", "true")
    assert int(fourth) > int(third)


# -- output ---------------------------------------------------------------------------------

def test_output_prints_captured_stdout_and_stderr(run, submit):
    """output ID prints the job's stdout; output --stderr its stderr."""
    job = ended_job(submit, run, "sh", "-c", "echo line-one; echo oops >&2; echo line-two")
    result = run("output", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line-one\nline-two\n"
    result = run("output", "--stderr", job)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "oops\n"


def test_output_reads_user_given_paths(run, submit, tmp_path):
    """output works when the job wrote to -o / --stderr paths of the user's (with %j)."""
    job = ended_job(submit, run, "sh", "-c", "echo mine; echo my-err >&2",
                    options=("-o", str(tmp_path / "o-%j.txt"),
                             "--stderr", str(tmp_path / "e-%j.txt")))
    assert run("output", job).stdout == "mine\n"
    assert run("output", job, "--stderr").stdout == "my-err\n"


def test_output_unknown_job_fails_with_exit_1(run, submit):
    """output of an ID that does not exist: exit 1, one-line error."""
    submit("--", "true")
    result = run("output", "31337")
    assert result.returncode == 1
    one_line_error(result)


def test_output_follow_streams_lines_and_exits_when_the_job_ends(run, submit, state_dir):
    """output -f: the first line arrives while the job runs; all lines come; exits 0 at the end."""
    script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done"
    job = submit("--", "sh", "-c", script)
    # Unbuffered: communicate() reads the pipe itself, and would miss what a buffered
    # readline() had taken beyond the first line (the follower, started late on a busy
    # machine, may write two lines at once).
    follower = subprocess.Popen([*CLI, "output", "-f", job], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)
    try:
        first = follower.stdout.readline()
        assert first == b"line1\n"
        assert state_of(run, job) == "Running", "first line only came after the job ended"
        rest, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert (first + rest).decode() == "".join(f"line{i}\n" for i in range(1, 6))
    assert state_of(run, job) == "Done"


# -- the state directory ---------------------------------------------------------------------

def test_state_dir_option_and_environment_variable_are_isolated(run, submit, state_dir, tmp_path):
    """--state-dir DIR and OSTRACKER_STATE_DIR each work and never see each other's jobs."""
    other = str(tmp_path / "other-state")
    try:
        in_env = ended_job(submit, run, "true")
        result = run("--state-dir", other, "submit", "--", "sh", "-c", "exit 2")
        assert result.returncode == 0, result.stderr
        in_option = result.stdout.strip()
        assert run("--state-dir", other, "wait", in_option).returncode == 2

        env_records = records(run)
        result = run("--state-dir", other, "status", "--json")
        assert result.returncode == 0, result.stderr
        option_records = json.loads(result.stdout)
        assert [(r["id"], r["state"]) for r in env_records] == [(in_env, "Done")]
        assert [(r["id"], r["state"]) for r in option_records] == [(in_option, "Failed")]
        assert os.path.isdir(os.path.join(other, "jobs"))
    finally:
        cleanup(other)


def test_state_dir_is_0700_and_every_file_in_it_0600(state_dir, tmp_path):
    """Even under umask 000: the state dir tree is 0700 dirs and 0600 files after some jobs."""
    env = dict(os.environ)

    def cli(*args):
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                              umask=0, timeout=60)

    assert not os.path.exists(state_dir)
    ids = []
    for options in ([], ["--array", "1-3"], ["-e", "TOKEN=secret"]):
        result = cli("submit", *options, "--", "sh", "-c", "echo out; echo err >&2")
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.strip())
    running = cli("submit", "--", "sleep", "30")
    assert running.returncode == 0, running.stderr
    for job in ids:
        assert cli("wait", job, "--timeout", "20").returncode == 0
    assert cli("status").returncode == 0

    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    wrong = []
    count = 0
    for root, dirs, files in os.walk(state_dir):
        for name in dirs:
            mode = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
            if mode != 0o700:
                wrong.append((os.path.join(root, name), oct(mode)))
        for name in files:
            count += 1
            mode = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
            if mode != 0o600:
                wrong.append((os.path.join(root, name), oct(mode)))
    assert count >= 10
    assert wrong == []


def test_version_and_python_dash_m_help_work(run):
    """ostracker --version prints the version; python -m ostracker --help lists the commands."""
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert ostracker.__version__ in result.stdout
    result = subprocess.run([sys.executable, "-m", "ostracker", "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for command in ("submit", "status", "info", "wait", "suspend", "resume", "terminate",
                    "hold", "release", "delete", "output"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.M), f"{command} not in --help"


# -- concurrency ------------------------------------------------------------------------------

def test_forty_concurrent_submits_get_forty_distinct_ids(state_dir):
    """40 `ostracker submit` at once: 40 distinct IDs, 40 records, none lost."""
    processes = [subprocess.Popen([*CLI, "submit", "--", "true"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(40)]
    ids = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        ids.append(out.strip())
    assert all(re.fullmatch(r"[1-9]\d*", i) for i in ids), ids
    assert len(set(ids)) == 40
    result = subprocess.run([*CLI, "status", "--json"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert sorted(r["id"] for r in listed) == sorted(ids)


# -- the state follows the process -------------------------------------------------------------

def test_state_follows_stop_and_continue_sent_from_outside(run, submit):
    """kill -STOP PID from outside: Suspended; kill -CONT: Running again."""
    job, pid = running_job(submit, run, "sleep", "30")
    subprocess.run(["kill", "-STOP", str(pid)], check=True)
    poll(lambda: state_of(run, job) == "Suspended", message="Suspended")
    assert proc_state(pid) == "T"
    subprocess.run(["kill", "-CONT", str(pid)], check=True)
    poll(lambda: state_of(run, job) == "Running", message="Running again")
    assert proc_state(pid) in ("S", "R")


def test_lost_reaper_is_seen_then_undetermined_then_deletable(run, submit):
    """kill -9 of the reaper: Running with a 'reaper' sub_state, then Undetermined once the job dies."""
    job, pid = running_job(submit, run, "sleep", "30")
    reaper = parent_pid(pid)
    assert reaper not in (1, os.getpid())
    try:
        os.kill(reaper, signal.SIGKILL)
        poll(lambda: proc_state(reaper) in (None, "Z"), message="reaper gone")
        assert proc_state(pid) in ("S", "R")
        data = poll(lambda: (lambda r: r["state"] == "Running" and r["sub_state"] and r)(
            record(run, job)), timeout=5, message="Running with a sub_state")
        assert "reaper" in data["sub_state"].lower(), data["sub_state"]
        assert data["pid"] == pid
    finally:
        kill_quietly(pid)
    data = poll(lambda: (lambda r: r["state"] == "Undetermined" and r)(record(run, job)),
                message="Undetermined")
    assert data["sub_state"], data
    result = run("delete", job)
    assert result.returncode == 0, result.stderr
    assert run("status", job).returncode == 1


def test_the_reaper_exits_and_leaves_no_zombie_after_the_job_ends(run, submit):
    """Once a job has ended, its process is reaped and its reaper process is gone."""
    job, pid = running_job(submit, run, "sleep", "2")  # (still running under load)
    reaper = parent_pid(pid)
    assert proc_state(reaper) not in (None, "Z")
    assert run("wait", job, "--timeout", 10).returncode == 0
    poll(lambda: proc_state(pid) is None, message="job process reaped (no zombie)")
    poll(lambda: proc_state(reaper) is None, message="reaper gone (not a zombie)")


def test_output_follow_exits_as_the_job_did(run, submit):
    job = submit("--", "sh", "-c", "echo hi; exit 3")
    result = run("output", "-f", job)
    assert (result.returncode, result.stdout) == (3, "hi\n")
    assert run("output", job).returncode == 0  # without -f: printing it is the success


def test_ctrl_c_on_submit_wait_says_the_job_goes_on(state_dir, info):
    import signal
    import subprocess

    from conftest import CLI, poll

    child = subprocess.Popen([*CLI, "submit", "--wait", "--", "sleep", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = child.stdout.readline().strip()
    poll(lambda: info(job)["state"] == "Running", message="the job to run")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130
    assert err == (f"ostracker: interrupted; job {job} goes on ('ostracker wait {job}' "
                   f"waits again, 'ostracker terminate {job}' ends it)\n")
    assert info(job)["state"] == "Running"



def test_status_with_no_jobs_says_so_to_a_person_only(run, state_dir):
    import os
    import pty
    import subprocess

    from conftest import CLI

    assert run("status").stdout == "" and run("status").stderr == ""  # a script: nothing
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([*CLI, "status"], stdout=follower, stderr=subprocess.PIPE,
                              text=True, timeout=30)
    finally:
        os.close(follower)
        os.close(leader)
    assert (done.returncode, done.stderr) == (0, "no jobs\n")


def test_the_table_says_a_job_never_ran(run, submit):
    """A job that ended without starting shows "never ran" as its exit, not a bare '-'."""
    run("submit", "--", "/nonexistent/command")
    held = submit("--hold", "--", "true")
    run("terminate", held)
    rows = [line.split() for line in run("status").stdout.splitlines()[1:]]
    assert [row[3:5] for row in rows] == [["never", "ran"], ["never", "ran"]]
