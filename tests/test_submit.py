"""How a job is started (README, "Submitting" and "JobInfo"): the real CLI, real processes, real effects.

Every test has the job itself report what it saw (its argv, environment, working
directory, stdin) into a file, and checks that file, not only ostracker's records.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from conftest import CLI, poll, proc_state

INFO_KEYS = {"id", "array_id", "task_id", "job_name", "state", "sub_state", "exit_status",
             "terminating_signal", "pid", "allocated_machines", "submission_machine",
             "job_owner", "uid", "submission_time", "dispatch_time", "finish_time",
             "wallclock_time", "extension_list", "queue_name", "slots", "attempt",
             "dependency", "job_template"}
TEMPLATE_KEYS = {"remote_command", "args", "working_directory", "job_environment",
                 "input_path", "output_path", "error_path", "job_name"}
RUSAGE_KEYS = {"ru_maxrss", "ru_swap", "ru_inblock", "ru_outblock", "system_time_ms",
               "user_time_ms"}
ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$")


def wait_ok(run, job_id, expected=0):
    """``ostracker wait ID`` with a timeout, asserting the job's exit status."""
    result = run("wait", job_id, "--timeout", "20")
    assert result.returncode == expected, (result.returncode, result.stderr)


def only_record(run):
    """The one job record of the state dir (``status --json``)."""
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 1, records
    return records[0]


def job_environment(path):
    """The environment an ``env -0`` job wrote to ``path``, as a dict."""
    entries = path.read_bytes().split(b"\0")[:-1]
    return dict(os.fsdecode(entry).partition("=")[::2] for entry in entries)


def executable_script(path, body):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


# -- RemoteCommand: where the executable comes from -----------------------------------------------


def test_command_is_looked_up_in_the_submitters_path(run, tmp_path):
    """A command without '/' is found through the PATH that submit inherited."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    executable_script(bindir / "only-here", 'echo "found $0"')
    out = tmp_path / "out"
    result = run("submit", "-o", out, "--", "only-here",
                 env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    wait_ok(run, result.stdout.strip())
    assert out.read_text() == f"found {bindir}/only-here\n"


def test_command_is_looked_up_in_the_job_environments_path(submit, run, tmp_path):
    """-e PATH=... is the PATH the command is looked up in (and the job's own PATH)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    executable_script(bindir / "only-here", 'echo "found $0 with PATH=$PATH"')
    out = tmp_path / "out"
    path = f"{bindir}:/usr/bin:/bin"
    job = submit("-e", f"PATH={path}", "-o", out, "--", "only-here")
    wait_ok(run, job)
    assert out.read_text() == f"found {bindir}/only-here with PATH={path}\n"


def test_bare_name_is_not_taken_from_the_working_directory(run, tmp_path):
    """A command without '/' that is only in the working dir (not on PATH) is not run."""
    marker = tmp_path / "ran"
    executable_script(tmp_path / "local-tool", f"touch {marker}")
    result = run("submit", "-C", tmp_path, "--", "local-tool", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "local-tool" in result.stderr
    assert not marker.exists()


def test_relative_command_path_is_resolved_against_the_working_directory(run, tmp_path):
    """-C DIR -- ./sub/tool runs DIR/sub/tool, whatever directory submit ran in."""
    workdir = tmp_path / "work"
    (workdir / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    executable_script(elsewhere / "decoy", "echo decoy")  # same relative name, wrong dir
    (elsewhere / "sub").mkdir()
    executable_script(elsewhere / "sub" / "tool", "echo decoy")
    executable_script(workdir / "sub" / "tool", 'echo "right tool in $(pwd -P)"')
    out = tmp_path / "out"
    result = run("submit", "-C", workdir, "-o", out, "--", "./sub/tool", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    wait_ok(run, result.stdout.strip())
    assert out.read_text() == f"right tool in {os.path.realpath(workdir)}\n"


# -- Args: any bytes, exactly ---------------------------------------------------------------------


def test_arguments_of_arbitrary_bytes_round_trip_exactly(submit, run, info, tmp_path):
    """Empty, spaced, quoted, non-UTF-8, shell-special and 100 KB arguments arrive byte-exact."""
    payload = [
        "",
        "two  words ",
        "it's \"quoted\" \\ back",
        os.fsdecode(b"\xff\xfe\x80 not utf-8 \xc3"),
        "$HOME `id` $(id) * ? ~ ;|&",
        "new\nline\ttab",
        "",
        "unicode \u00fc \u2603",
        "%j %a %%",
        "x" * 100_000,
    ]
    out = tmp_path / "argv.bin"
    job = submit("-o", out, "--", "printf", r"%s\0", *payload)
    wait_ok(run, job)
    assert out.read_bytes() == b"".join(os.fsencode(arg) + b"\0" for arg in payload)
    assert info(job)["job_template"]["args"] == [r"%s\0", *payload]


def test_option_like_words_after_double_dash_reach_the_job(run, tmp_path):
    """--wait, -n, --json, -o, -- after the first '--' are the job's, not ostracker's."""
    payload = ["--wait", "-n", "name", "--json", "-o", "elsewhere", "--array", "1-3",
               "--", "-h", "--help", "--version"]
    out = tmp_path / "argv.bin"
    result = run("submit", "-o", out, "--", "printf", r"%s\0", *payload)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d+\n", result.stdout), result.stdout  # no --json, no --wait
    job = result.stdout.strip()
    wait_ok(run, job)
    assert out.read_bytes() == b"".join(arg.encode() + b"\0" for arg in payload)
    assert not (tmp_path / "elsewhere").exists()
    record = only_record(run)
    assert (record["job_name"], record["array_id"]) == ("printf", None)


# -- JobName, WorkingDirectory, JobEnvironment ----------------------------------------------------


def test_name_option_and_default_name(submit, run, info):
    """-n sets the job name; the default is the command's base name."""
    named = submit("-n", "nightly backup", "--", "true")
    default = submit("--", "/bin/true")
    assert info(named)["job_name"] == "nightly backup"
    assert info(default)["job_name"] == "true"
    table = run("status").stdout
    assert "nightly backup" in table


def test_cwd_option_and_default_cwd(run, info, tmp_path):
    """-C DIR is the job's working directory; without it, the directory submit ran in."""
    given, here = tmp_path / "given", tmp_path / "here"
    given.mkdir()
    here.mkdir()
    out_given, out_here = tmp_path / "given.out", tmp_path / "here.out"
    first = run("submit", "-C", given, "-o", out_given, "--", "sh", "-c", "pwd -P", cwd=here)
    second = run("submit", "-o", out_here, "--", "sh", "-c", "pwd -P", cwd=here)
    for result in (first, second):
        assert result.returncode == 0, result.stderr
        wait_ok(run, result.stdout.strip())
    assert out_given.read_text() == os.path.realpath(given) + "\n"
    assert out_here.read_text() == os.path.realpath(here) + "\n"
    assert os.path.realpath(info(second.stdout.strip())["job_template"]["working_directory"]) \
        == os.path.realpath(here)


def test_env_overrides_and_adds_to_the_inherited_environment(run, info, tmp_path):
    """-e adds and overrides; the rest of the submitter's environment is inherited."""
    out = tmp_path / "env.bin"
    result = run("submit", "-e", "OVERRIDDEN=new", "-e", "ADDED=a=b c", "-e", "EMPTY=",
                 "-o", out, "--", "env", "-0",
                 env={"INHERITED": "from submitter", "OVERRIDDEN": "old"})
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    wait_ok(run, job)
    environment = job_environment(out)
    assert environment["INHERITED"] == "from submitter"
    assert environment["OVERRIDDEN"] == "new"
    assert environment["ADDED"] == "a=b c"
    assert environment["EMPTY"] == ""
    assert environment["PATH"] == os.environ["PATH"]
    assert info(job)["job_template"]["job_environment"] == \
        {"OVERRIDDEN": "new", "ADDED": "a=b c", "EMPTY": ""}


def test_single_job_gets_job_id_and_no_task_id(run, tmp_path, monkeypatch):
    """A single job sees JOB_ID=its ID and no TASK_ID."""
    monkeypatch.delenv("JOB_ID", raising=False)
    monkeypatch.delenv("TASK_ID", raising=False)
    out = tmp_path / "env.bin"
    result = run("submit", "-o", out, "--", "env", "-0")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    wait_ok(run, job)
    seen = job_environment(out)
    assert seen["JOB_ID"] == job
    assert "TASK_ID" not in seen


def test_job_submitted_from_inside_an_array_task_is_no_task(run, tmp_path):
    """A single job submitted from inside an array task gets its own JOB_ID and no TASK_ID."""
    out = tmp_path / "env.bin"
    result = run("submit", "-o", out, "--", "env", "-0", env={"JOB_ID": "99.3", "TASK_ID": "3"})
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    wait_ok(run, job)
    seen = job_environment(out)
    assert seen["JOB_ID"] == job
    assert "TASK_ID" not in seen, f"TASK_ID={seen['TASK_ID']!r} leaked into single job {job}"


# -- InputPath, OutputPath, ErrorPath -------------------------------------------------------------


def test_stdin_file_is_read_by_the_job(submit, run, tmp_path):
    """--stdin PATH (relative to the working dir) is the job's stdin."""
    (tmp_path / "input.txt").write_bytes(b"line one\nline \xff two\n")
    out = tmp_path / "out"
    job = submit("-C", tmp_path, "--stdin", "input.txt", "-o", out, "--", "cat")
    wait_ok(run, job)
    assert out.read_bytes() == b"line one\nline \xff two\n"


def test_default_stdin_is_dev_null(run, tmp_path):
    """Without --stdin the job reads /dev/null, not what was piped into submit."""
    out = tmp_path / "out"
    result = run("submit", "-o", out, "--", "sh", "-c", 'readlink /proc/$$/fd/0; cat; echo "[$?]"',
                 input="this must not reach the job\n")
    assert result.returncode == 0, result.stderr
    wait_ok(run, result.stdout.strip())
    assert out.read_text() == "/dev/null\n[0]\n"


def test_output_paths_expand_job_id_task_index_and_percent(submit, run, tmp_path):
    """%j is the job ID, %a empty for a single job, %% a '%'; relative to the working dir."""
    job = submit("-C", tmp_path, "-o", "out-%j-[%a]-100%%.txt", "--stderr", "err.%j%a%%",
                 "--", "sh", "-c", "echo to-out; echo to-err >&2")
    wait_ok(run, job)
    assert (tmp_path / f"out-{job}-[]-100%.txt").read_text() == "to-out\n"
    assert (tmp_path / f"err.{job}%").read_text() == "to-err\n"
    assert sorted(os.listdir(tmp_path)) == sorted([f"out-{job}-[]-100%.txt", f"err.{job}%",
                                                   "state"])


def test_default_capture_is_readable_with_output(submit, run):
    """Without -o/--stderr, 'output ID' and 'output ID --stderr' print what the job wrote."""
    job = submit("--", "sh", "-c", "echo to-out; echo more-out; echo to-err >&2")
    wait_ok(run, job)
    result = run("output", job)
    assert (result.returncode, result.stdout) == (0, "to-out\nmore-out\n")
    result = run("output", job, "--stderr")
    assert (result.returncode, result.stdout) == (0, "to-err\n")


def test_stdout_and_stderr_files_are_truncated_on_submit(submit, run, tmp_path):
    """An existing -o/--stderr file is truncated, not appended to."""
    out, err = tmp_path / "out", tmp_path / "err"
    out.write_text("stale stdout\n" * 100)
    err.write_text("stale stderr\n" * 100)
    job = submit("-o", out, "--stderr", err, "--", "sh", "-c", "echo new; echo NEW >&2")
    wait_ok(run, job)
    assert out.read_text() == "new\n"
    assert err.read_text() == "NEW\n"


@pytest.mark.parametrize("option, spelling", [("-o", "same"), ("--stdout", "./same"),
                                              ("--stderr", "same"), ("-o", "absolute"),
                                              ("-o", "same%a")])  # %a is empty for a single job
def test_stdin_equal_to_an_output_path_is_refused(run, state_dir, tmp_path, option, spelling):
    """--stdin equal to --stdout/--stderr: exit 2, the file untouched, no job recorded."""
    same = tmp_path / "same"
    same.write_text("precious input\n")
    target = str(same) if spelling == "absolute" else spelling
    result = run("submit", "-C", tmp_path, "--stdin", "same", option, target, "--",
                 "sh", "-c", "echo clobbered")
    assert result.returncode == 2, \
        f"not refused (exit {result.returncode}); the input file now holds {same.read_text()!r}"
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert same.read_text() == "precious input\n"
    assert json.loads(run("status", "--json").stdout) == []


# -- start failures -------------------------------------------------------------------------------


def _not_executable(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\ntouch ran\n")
    script.chmod(0o644)
    return ["-C", tmp_path, "--", "./script.sh"], ["script.sh", "Permission denied"]


def _unreadable_stdin(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0)
    return ["--stdin", secret, "--", "cat"], ["secret", "Permission denied"]


START_FAILURES = {
    "no such command": lambda tmp: (["--", "no-such-command-xyz"],
                                    ["no-such-command-xyz"]),
    "no such file": lambda tmp: (["--", str(tmp / "missing" / "tool")],
                                 ["missing/tool", "No such file or directory"]),
    "not executable": _not_executable,
    "missing working dir": lambda tmp: (["-C", tmp / "gone", "--", "true"],
                                        ["gone", "No such file or directory"]),
    "missing stdin": lambda tmp: (["--stdin", tmp / "absent.txt", "--", "cat"],
                                  ["absent.txt", "No such file or directory"]),
    "unreadable stdin": _unreadable_stdin,
    "stdout in a missing dir": lambda tmp: (["-o", tmp / "nodir" / "out", "--", "true"],
                                            ["nodir/out", "No such file or directory"]),
    "stderr in a missing dir": lambda tmp: (["--stderr", tmp / "nodir" / "err", "--", "true"],
                                            ["nodir/err", "No such file or directory"]),
}


@pytest.mark.parametrize("case", list(START_FAILURES))
def test_start_failure_exits_1_with_one_line_naming_the_cause(run, tmp_path, case):
    """A job that cannot start: exit 1, one line naming the cause, no ID, recorded Failed."""
    if case == "unreadable stdin" and os.geteuid() == 0:
        pytest.skip("root can read a file of mode 000")
    args, words = START_FAILURES[case](tmp_path)
    result = run("submit", *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "could not start" in lines[0]
    for word in words:
        assert word in lines[0]
    record = only_record(run)
    assert record["state"] == "Failed"
    assert record["sub_state"].startswith("could not start"), record["sub_state"]
    assert (record["pid"], record["exit_status"], record["dispatch_time"]) == (None, None, None)
    assert not (tmp_path / "ran").exists()
    wait = run("wait", record["id"], "--timeout", "5")
    assert wait.returncode == 1


# -- what submit prints and how it returns --------------------------------------------------------


def test_submit_prints_the_id_alone_and_returns_once_started(run):
    """stdout is the ID and a newline; the job runs by the time submit returns."""
    first = run("submit", "--", "sleep", "30")
    second = run("submit", "--", "sleep", "30")
    for result in (first, second):
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"[1-9]\d*\n", result.stdout), repr(result.stdout)
    assert int(second.stdout) > int(first.stdout)
    record = json.loads(run("status", first.stdout.strip(), "--json").stdout)[0]
    assert record["state"] == "Running"
    assert proc_state(record["pid"]) in ("R", "S", "D")


def test_submit_json_prints_every_jobinfo_key(run, tmp_path):
    """submit --json prints the job record (every README "JobInfo" key), not the bare ID."""
    result = run("submit", "--json", "-n", "js", "--", "sleep", "30")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert isinstance(record, dict)
    assert INFO_KEYS <= set(record), INFO_KEYS - set(record)
    assert TEMPLATE_KEYS <= set(record["job_template"])
    assert (record["job_name"], record["state"]) == ("js", "Running")
    assert isinstance(record["pid"], int) and record["dispatch_time"] is not None
    assert record["job_template"]["args"] == ["30"]
    status = json.loads(run("status", "--json").stdout)
    assert [r["id"] for r in status] == [record["id"]]


@pytest.mark.parametrize("script, expected, killed_by", [
    ("exit 0", 0, None),
    ("exit 7", 7, None),
    ("exit 255", 255, None),
    ("kill -TERM $$", 128 + signal.SIGTERM, "SIGTERM"),
    ("kill -KILL $$", 128 + signal.SIGKILL, "SIGKILL"),
])
def test_submit_wait_exits_with_the_jobs_status(run, script, expected, killed_by):
    """submit --wait exits with the job's exit status, or 128+N for signal N."""
    result = run("submit", "--wait", "--", "sh", "-c", script, timeout=30)
    assert result.returncode == expected, result.stderr
    assert re.fullmatch(r"\d+\n", result.stdout), repr(result.stdout)
    record = only_record(run)
    if killed_by:
        assert (record["exit_status"], record["terminating_signal"]) == (None, killed_by)
    else:
        assert (record["exit_status"], record["terminating_signal"]) == (expected, None)
    assert record["state"] == ("Done" if expected == 0 else "Failed")


def test_submit_json_wait_prints_the_record_after_the_end(run):
    """submit --json --wait prints the ended job's record and exits with its status."""
    result = run("submit", "--json", "--wait", "--", "sh", "-c", "exit 4", timeout=30)
    assert result.returncode == 4, result.stderr
    record = json.loads(result.stdout)
    assert (record["state"], record["exit_status"]) == ("Failed", 4)


# -- JobInfo of an ended job ----------------------------------------------------------------------


def _parse_time(text):
    assert isinstance(text, str) and ISO_8601.fullmatch(text), text
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() is not None
    return moment


def test_jobinfo_fields_of_a_finished_job(submit, run, info, tmp_path):
    """Every README "JobInfo" field of an ended job: type, format and value."""
    before = datetime.now(timezone.utc)
    job = submit("-n", "fields", "-C", tmp_path, "-e", "K=V", "-o", "o.txt", "--stderr", "e.txt",
                 "--", "sh", "-c", "sleep 0.3; exit 3")
    wait_ok(run, job, expected=3)
    after = datetime.now(timezone.utc)
    record = info(job)
    assert set(record) == INFO_KEYS
    assert record["id"] == job and isinstance(record["id"], str)
    assert (record["array_id"], record["task_id"]) == (None, None)
    assert (record["job_name"], record["state"]) == ("fields", "Failed")
    assert record["sub_state"] is None or isinstance(record["sub_state"], str)
    assert (record["exit_status"], record["terminating_signal"]) == (3, None)
    assert isinstance(record["pid"], int) and record["pid"] > 0
    host = socket.gethostname()
    assert record["allocated_machines"] == [host]
    assert record["submission_machine"] == host
    assert record["job_owner"] == pwd.getpwuid(os.getuid()).pw_name
    assert record["uid"] == os.getuid() and isinstance(record["uid"], int)
    submitted = _parse_time(record["submission_time"])
    dispatched = _parse_time(record["dispatch_time"])
    finished = _parse_time(record["finish_time"])
    assert before <= submitted <= dispatched <= finished <= after
    assert isinstance(record["wallclock_time"], float)
    assert record["wallclock_time"] == pytest.approx((finished - dispatched).total_seconds(),
                                                     abs=5e-3)
    assert 0.29 <= record["wallclock_time"] < 10
    extensions = record["extension_list"]
    assert set(extensions) == RUSAGE_KEYS
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in extensions.values()), extensions
    assert (record["queue_name"], record["slots"], record["attempt"], record["dependency"]) == \
        (None, None, 1, None)
    assert record["job_template"] == {
        "remote_command": "sh", "args": ["-c", "sleep 0.3; exit 3"], "job_name": "fields",
        "working_directory": str(tmp_path), "job_environment": {"K": "V"},
        "input_path": None, "output_path": "o.txt", "error_path": "e.txt"}


def test_running_job_has_no_end_fields_and_a_growing_wallclock(submit, info):
    """While running: finish_time, exit_status, terminating_signal null; wallclock grows."""
    job = submit("--", "sleep", "30")
    first = info(job)
    assert (first["state"], first["finish_time"], first["exit_status"],
            first["terminating_signal"]) == ("Running", None, None, None)
    time.sleep(0.05)
    second = info(job)
    assert isinstance(first["wallclock_time"], float)
    assert second["wallclock_time"] > first["wallclock_time"]


def test_ru_maxrss_reflects_the_jobs_memory(submit, run, info):
    """A job touching 60 MB shows ru_maxrss >= 60 MiB (in KiB); a tiny job does not."""
    touch = "b = bytearray(60 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    big = submit("--", sys.executable, "-c", touch)
    small = submit("--", "true")
    wait_ok(run, big)
    wait_ok(run, small)
    assert info(big)["extension_list"]["ru_maxrss"] >= 60 * 1024
    assert info(small)["extension_list"]["ru_maxrss"] < 60 * 1024


def test_stdin_that_is_a_link_to_the_output_file_is_refused(run, tmp_path):
    """A symlink to the stdout file given as --stdin is the same file: refused, nothing truncated."""
    target = tmp_path / "data.txt"
    target.write_text("precious input\n")
    (tmp_path / "link").symlink_to(target)
    result = run("submit", "--stdin", tmp_path / "link", "-o", target, "--", "cat")
    assert result.returncode == 1
    assert "stdin and stdout are the same file" in result.stderr
    assert target.read_text() == "precious input\n"


def test_stdout_to_dev_null_beside_the_default_stdin(run, tmp_path):
    """``-o /dev/null`` (stdin is /dev/null too, by default) is a device, not a file that
    could be clobbered: the job runs, and its stderr is still captured."""
    job = run("submit", "-o", "/dev/null", "--wait", "--", "sh", "-c",
              "echo out; echo err >&2").stdout.strip()
    assert run("info", job, "--json").returncode == 0
    assert json.loads(run("info", job, "--json").stdout)["state"] == "Done"
    assert run("output", job, "--stderr").stdout == "err\n"


# -- submit --wait: the reaper says how the job ended ---------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--", "true"], 0),
    (["--", "sh", "-c", "exit 3"], 3),
    (["--", "sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
    (["--retries", "1", "--", "sh", "-c", 'exit "$OSTRACKER_ATTEMPT"'], 2),
    (["--on-end", "sleep 30", "--", "sh", "-c", "exit 4"], 4),
    (["--array", "1-5", "--max-parallel", "2", "--", "true"], 0),
    (["--array", "1-5", "--", "sh", "-c", 'test "$TASK_ID" != 3'], 1),
], ids=["done", "exit-3", "sigterm", "retried", "on-end", "array-done", "array-failed"])
def test_submit_wait_exits_as_wait_does_and_leaves_the_job_ended(run, args, expected,
                                                                 state_dir):
    """``submit --wait`` takes the exit status from the reaper's word (README, "Commands and
    exit statuses"), the one ``wait`` reads from the records; when it returns the job
    has ended and (but with --on-end, whose CMD runs on) is compacted."""
    result = run("submit", "--wait", *args)
    job_id = result.stdout.strip()
    assert (result.returncode, result.stderr) == (expected, "")
    assert run("wait", job_id, "--timeout", "20").returncode == expected
    if "--on-end" not in args:
        assert not os.path.exists(os.path.join(state_dir, "jobs", job_id))  # compacted


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_submit_wait_reads_no_record(state_dir, tmp_path):
    """The submitter opens nothing of the state dir once the job started: the exit status
    comes on the reaper's pipe (strace of the submitting process alone)."""
    log = str(tmp_path / "strace.log")
    done = subprocess.run(["strace", "-qq", "-e", "trace=openat", "-o", log, *CLI, "submit",
                           "--wait", "--array", "1-3", "--", "sh", "-c", "exit $TASK_ID"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    with open(log) as handle:
        opened = [line for line in handle if line.startswith("openat(")]
    header = [i for i, line in enumerate(opened) if "job.json" in line]
    assert header, opened  # the header, written before the reaper starts
    assert opened[header[-1] + 1:] == []


def test_submit_wait_whose_reaper_is_killed_exits_as_wait_does(run, state_dir):
    """No word from a reaper killed (SIGKILL) while the job runs: ``submit --wait`` reads the
    records then, as ``wait`` does, and returns once the job's process has ended."""
    process = subprocess.Popen([*CLI, "submit", "--wait", "--", "sleep", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: run("status", "-q", "--state", "Running").stdout == "1\n",
             message="the job running")
        os.kill(_read_pid(os.path.join(state_dir, "jobs", "1", "reaper.lock")), signal.SIGKILL)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    waited = run("wait", "1", "--timeout", "20")
    assert (process.returncode, err) == (waited.returncode, waited.stderr), (out, err)
    assert out == "1\n"


def _read_pid(path):
    with open(path) as handle:
        return int(handle.read())


def _pid_in(path):
    """The PID a file holds, or None (not there, or not written yet)."""
    try:
        return _read_pid(path)
    except (OSError, ValueError):
        return None


# -- the reaper started ahead (README, "Decisions") -------------------------------------

def standbys(state_dir):
    """PIDs of the lean interpreters that a submit of ``state_dir`` started ahead of its
    job: reapers, and those still waiting for a job."""
    variable = b"OSTRACKER_STATE_DIR=" + os.fsencode(state_dir)
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if len(argv) > 4 and b"ostracker.local.standby" in argv[4] and \
                    proc_state(int(name)) not in (None, "Z"):
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if variable in handle.read().split(b"\0"):
                        found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_submit_starts_its_reaper_before_it_writes_the_job(state_dir, tmp_path):
    """``strace -f`` of a submit: the lean interpreter is executed before the job's header
    is written (it loads while the CLI does), and the job's process is its child."""
    log, parent = str(tmp_path / "strace.log"), tmp_path / "ppid"
    done = subprocess.run(["strace", "-f", "-qq", "-s", "200", "-o", log, "-e",
                           "trace=execve,rename,renameat,renameat2", *CLI, "submit", "--wait",
                           "--", "sh", "-c", f"echo $PPID > {parent}"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    with open(log) as handle:
        lines = handle.read().splitlines()
    started = [(i, int(line.split()[0])) for i, line in enumerate(lines)
               if " execve(" in line and "ostracker.local.standby" in line]
    header = [i for i, line in enumerate(lines) if "rename" in line and '"job.json"' in line]
    assert len(started) == 1 and header, lines
    assert started[0][0] < header[0]
    assert int(parent.read_text()) == started[0][1]


@pytest.mark.parametrize("args", [
    ["--array", "5-1", "--", "true"],      # refused by the CLI: exit 2
    ["--no-such-option", "--", "true"],     # a usage error: exit 2
    ["--", "/nonexistent/command"],         # handed over; it cannot start (a Failed job)
], ids=["bad-input", "usage", "cannot-start"])
def test_a_submit_that_starts_nothing_leaves_no_process(run, state_dir, args):
    result = run("submit", *args)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    poll(lambda: not standbys(state_dir), message="no process left by the submit")


def test_a_submit_whose_job_waits_lets_its_standby_go_at_once(run, state_dir):
    """``submit --hold --wait``: the job waits for a release, and no process waits for it
    meanwhile but the submitter; the scheduler starts it once released."""
    process = subprocess.Popen([*CLI, "submit", "--hold", "--wait", "--", "true"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: run("status", "-q", "--state", "QueuedHeld").stdout == "1\n",
             message="the job held")
        poll(lambda: not standbys(state_dir), message="the standby gone")
        assert process.poll() is None  # still waiting
        assert run("release", "1").returncode == 0
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out, err) == (0, "1\n", "")


def test_a_submit_whose_standby_never_came_forks_a_reaper_instead(state_dir, tmp_path):
    """The process that would start the standby killed (SIGKILL) before it could: the
    submit forks a reaper, as the Python API does, and the job runs to its end."""
    import faultinject as fi

    pidfile = str(tmp_path / "pidfile")
    process = subprocess.Popen([*fi.HARNESS, "submit", "--wait", "--", "sh", "-c", "exit 3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, FI_STOP="middle", FI_PIDFILE=pidfile))
    try:  # the submitter waits for that process, stopped right after its fork
        middle = poll(lambda: _pid_in(pidfile), message="the standby's parent stopped")
        os.kill(middle, signal.SIGKILL)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out, err) == (3, "1\n", "")
    result = subprocess.run([*CLI, "info", "1", "--json"], capture_output=True, text=True)
    job = json.loads(result.stdout)
    assert (job["state"], job["exit_status"]) == ("Failed", 3)
    assert not standbys(state_dir)
