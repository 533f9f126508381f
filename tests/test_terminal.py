"""What reaches the terminal, and what happens when stdout cannot take it.

Terminal safety (README, "Decisions"): a job's name, command and arguments are
the user's text, and may hold a newline (which would add a table row) or an
escape sequence (which would drive the terminal).  Tables and ``key: value``
lines show them escaped -- ``\\e``, ``\\n``, ``\\t``, ``\\r``, ``\\xNN``, and a
backslash as ``\\\\`` -- while JSON stays exact.  ``info`` quotes the
arguments as a shell would.

Writing stdout: a full disk (``/dev/full``), a closed descriptor and a reader
that went away are one line on stderr (none for a broken pipe), a non-zero
exit and never a traceback; what the command did stands.

``-e KEY`` takes the value from the submitter's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CLI, poll

FAKE_ROW = "x\n999   fake    Done     0"
TITLE = "t\x1b]2;PWNED\x07"


def lines_of(text: str) -> list[str]:
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def ended(run, job_id):
    return json.loads(run("info", job_id, "--json").stdout)["state"] in ("Done", "Failed")


# -- escaping ------------------------------------------------------------------------------


def test_a_name_with_a_newline_adds_no_row_to_status(run, submit):
    job_id = submit("-n", FAKE_ROW, "--", "true")
    poll(lambda: ended(run, job_id), message="the job to end")
    result = run("status")
    assert result.returncode == 0, result.stderr
    rows = lines_of(result.stdout)
    assert len(rows) == 2, result.stdout  # the header and the one job
    assert not any(row.startswith("999") for row in rows)
    assert rows[1].startswith(job_id) and "x\\n999   fake    Done     0" in rows[1]
    assert result.stdout.count("\n") == 2
    # the IDs alone, and JSON: exact
    assert run("status", "-q").stdout == f"{job_id}\n"
    assert json.loads(run("status", "--json").stdout)[0]["job_name"] == FAKE_ROW


def test_an_escape_sequence_in_a_name_or_argument_never_reaches_the_terminal(run, submit):
    args = ["a\tb", "c\rd", "e\x1b[2Jf", "g\x7fh\x01", "back\\slash"]
    job_id = submit("-n", TITLE, "--", "true", *args)
    poll(lambda: ended(run, job_id), message="the job to end")
    for command in (["status"], ["status", job_id], ["info", job_id]):
        result = subprocess.run([*CLI, *command], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert not any(byte < 32 and byte != 10 or byte == 127 for byte in out), out
    table = run("status", job_id).stdout
    assert "t\\e]2;PWNED\\x07" in table
    assert "'a\\tb' 'c\\rd' 'e\\e[2Jf' 'g\\x7fh\\x01' 'back\\\\slash'" in table
    info = lines_of(run("info", job_id).stdout)
    assert "job_name: t\\e]2;PWNED\\x07" in info
    assert "job_template.job_name: t\\e]2;PWNED\\x07" in info
    job = json.loads(run("info", job_id, "--json").stdout)
    assert job["job_name"] == TITLE and job["job_template"]["args"] == args
    # one line per field: no value spills onto a line of its own
    leaves = []

    def count(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                count(f"{prefix}.{key}", item)
        else:
            leaves.append(prefix)
    for key, value in job.items():
        count(key, value)
    assert [line.split(": ", 1)[0] for line in info] == leaves


def test_a_backslash_is_escaped_so_that_the_escapes_are_unambiguous(run, submit):
    real = submit("-n", "a\nb", "--", "true")
    spelled = submit("-n", "a\\nb", "--", "true")
    for job_id in (real, spelled):
        poll(lambda: ended(run, job_id), message="the jobs to end")
    names = {job_id: line.split(": ", 1)[1] for job_id in (real, spelled)
             for line in lines_of(run("info", job_id).stdout) if line.startswith("job_name: ")}
    assert names == {real: "a\\nb", spelled: "a\\\\nb"}


def test_bytes_that_are_not_utf8_are_shown_as_escapes(state_dir):
    """An argument of raw bytes (Python's surrogate escapes) prints, escaped, under UTF-8."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([*map(os.fsencode, CLI), b"submit", b"-n", b"n\xff\x9b", b"--wait",
                           b"--", b"true", b"\xfe"], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.decode().strip()
    for command in ([b"status"], [b"info", job_id.encode()]):
        result = subprocess.run([*map(os.fsencode, CLI), *command], capture_output=True,
                                env=env, timeout=60)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        assert b"n\\xff\\x9b" in result.stdout
    info = subprocess.run([*map(os.fsencode, CLI), b"info", job_id.encode()],
                          capture_output=True, env=env, timeout=60).stdout.decode()
    assert "job_template.args: '\\xfe'" in info


def test_info_quotes_the_arguments_and_keeps_other_lists_plain(run, submit):
    spaced = submit("--", "true", "a b", "c")
    apart = submit("--", "true", "a", "b", "c")
    quoted = submit("--", "true", "it's", "", "$HOME")
    for job_id in (spaced, apart, quoted):
        poll(lambda: ended(run, job_id), message="the jobs to end")

    def field(job_id, key):
        found = [line.split(": ", 1)[1] if ": " in line else ""
                 for line in lines_of(run("info", job_id).stdout) if line.startswith(key + ":")]
        assert len(found) == 1
        return found[0]
    assert field(spaced, "job_template.args") == "'a b' c"
    assert field(apart, "job_template.args") == "a b c"
    assert field(quoted, "job_template.args") == "'it'\"'\"'s' '' '$HOME'"
    host = json.loads(run("info", spaced, "--json").stdout)["allocated_machines"]
    assert field(spaced, "allocated_machines") == " ".join(host)


def test_monitor_shows_a_process_with_a_newline_in_its_arguments_as_one_row(run):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "x\n999 root fake", "\x1b]2;PWNED\x07"])
    try:
        poll(lambda: run("monitor", process.pid).returncode == 0, message="the process")
        result = run("monitor", process.pid)
        rows = lines_of(result.stdout)
        assert len(rows) == 2, result.stdout
        assert "x\\n999 root fake \\e]2;PWNED\\x07" in rows[1]
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        argv = json.loads(run("monitor", process.pid, "--json").stdout)[0]
        assert "x\n999 root fake" in argv["extension_list"]["commandline"]
    finally:
        process.kill()
        process.wait()


def test_the_slurm_views_and_machine_lines_escape_too():
    """The cluster's job and node tables and ``monitor --machine`` lines: the same escaping."""
    from ostracker.output import cluster_job_table, escape, machine_lines, node_table

    job = {"id": "4711", "job_owner": "me", "job_name": FAKE_ROW, "state": "Running",
           "sub_state": "RUNNING", "allocated_machines": ["n\x1b1"], "dispatch_time": None,
           "wallclock_time": 1.0}
    table = cluster_job_table([job])
    assert len(lines_of(table)) == 2 and "x\\n999" in table and "n\\e1" in table
    node = {"name": "n\n2", "load": 0.5, "phys_memory": 1024,
            "extension_list": {"state": "idle\x07", "cpus": 2, "free_memory": 512,
                               "partitions": ["p\r"]}}
    nodes = node_table([node])
    assert len(lines_of(nodes)) == 2 and "n\\n2" in nodes and "idle\\x07" in nodes
    lines = machine_lines({"name": "m\n1", "machine_os": "Linux\x1b[0m",
                           "extension_list": {"boot\ttime": "x"}})
    assert lines_of(lines) == ["name: m\\n1", "machine_os: Linux\\e[0m",
                               "extension_list.boot\\ttime: x"]
    assert escape("plain text, ünïcode") == "plain text, ünïcode"
    assert escape("\x9b\u202e\udcff") == "\\u009b\\u202e\\xff"


def test_an_error_message_is_one_line_whatever_it_quotes(run, state_dir):
    result = run("monitor", "--user", "no\nsuch\x1b[2J")
    assert result.returncode == 2
    assert lines_of(result.stderr) == ["ostracker: no such user: no\\nsuch\\e[2J"]
    # click's own usage messages quote some words as they are
    result = run("info", "1", "extra\nline\x1b[2J")
    assert result.returncode == 2
    assert lines_of(result.stderr) == ["ostracker info: Got unexpected extra argument "
                                       "(extra\\nline\\e[2J) (see 'ostracker info --help')"]


# -- stdout that cannot be written ---------------------------------------------------------


def run_into(stdout, *args, **kwargs):
    return subprocess.run([*CLI, *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=60, **kwargs)


def closed_stdout(*args):
    """``ostracker ARGS >&-``: the command with descriptor 1 closed, as a shell does it."""
    import shlex

    return subprocess.run(["sh", "-c", f"exec {shlex.join([*CLI, *args])} >&-"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)


def one_error(result, text):
    assert "Traceback" not in result.stderr, result.stderr
    assert lines_of(result.stderr) == [f"ostracker: {text}"], result.stderr


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["status", "-q"],
                                  ["info", "{id}"], ["info", "{id}", "--json"],
                                  ["wait", "{id}", "--json"], ["output", "{id}"],
                                  ["monitor", "{pid}"], ["monitor", "--machine"],
                                  ["--help"], ["--version"]])
def test_a_full_disk_on_stdout_is_one_line_and_exit_1(run, submit, args):
    job_id = submit("--", "echo", "hello")
    poll(lambda: ended(run, job_id), message="the job to end")
    args = [arg.format(id=job_id, pid=os.getpid()) for arg in args]
    with open("/dev/full", "w") as full:
        result = run_into(full, *args)
    assert result.returncode == 1
    if args[0].startswith("--"):  # click's own output: the error as it is
        one_error(result, "No space left on device")
    else:
        one_error(result, "cannot write output: No space left on device")


def test_output_still_buffered_at_the_exit_is_flushed_or_said():
    """What sits in stdout's buffer when ostracker leaves: written, or one line and exit 1."""
    code = "import sys; from ostracker.cli import _exit; sys.stdout.write('x'); _exit(0)"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-c", code], stdout=full, env=env,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1
    one_error(result, "cannot write output: No space left on device")


def test_a_submit_whose_id_cannot_be_printed_still_runs_its_job(run, state_dir, tmp_path):
    mark = tmp_path / "ran"
    with open("/dev/full", "w") as full:
        result = run_into(full, "submit", "--", "sh", "-c", f"echo ran > {mark}")
    assert result.returncode == 1
    one_error(result, "cannot write output: No space left on device (job 1 was submitted)")
    poll(mark.exists, message="the job to run")
    poll(lambda: ended(run, "1"), message="the job to end")
    assert json.loads(run("info", "1", "--json").stdout)["state"] == "Done"


def test_a_closed_stdout_is_one_line_and_exit_1(run, submit, state_dir, tmp_path):
    job_id = submit("--", "true")
    for args in (["status"], ["info", job_id], ["status", "--json"], ["--version"]):
        result = closed_stdout(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(lines_of(result.stderr)) == 1, \
            result.stderr
        assert "Bad file descriptor" in result.stderr
    mark = tmp_path / "ran"
    result = closed_stdout("submit", "--", "sh", "-c", f"echo ran > {mark}")
    assert result.returncode == 1
    one_error(result, "cannot write output: Bad file descriptor (job 2 was submitted)")
    poll(mark.exists, message="the job to run")
    assert mark.read_text() == "ran\n"


def test_a_closed_stdout_is_no_file_for_a_record_to_land_in():
    """Descriptor 1 stays taken (/dev/null, read-only): no file opened later becomes it."""
    code = ("import os, sys; from ostracker.command import _reserve_standard_fds; "
            "_reserve_standard_fds(); fd = os.open(os.devnull, os.O_RDONLY); "
            "print(fd, file=sys.stderr)")
    result = subprocess.run(["sh", "-c", 'exec "$0" -c "$1" >&- <&-', sys.executable, code],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stderr) > 2


def test_a_closed_stderr_changes_no_exit_status(run, submit):
    """`wait ID 2>&-`: the job's status still, not an error about the missing stream."""
    import shlex

    job_id = submit("--", "sh", "-c", "exit 3")
    result = subprocess.run(["sh", "-c", f"exec {shlex.join([*CLI, 'wait', job_id])} 2>&-"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (3, "")


def test_output_that_cannot_be_read_is_one_line(run, state_dir):
    """A file that fails to read (EIO from /proc/self/mem at offset 0): exit 1, one line."""
    result = run("submit", "-w", "-o", "/proc/self/mem", "--", "true")
    assert result.returncode == 0, result.stderr
    result = run("output", result.stdout.strip())
    assert result.returncode == 1 and result.stdout == ""
    one_error(result, "cannot read output of job 1: /proc/self/mem: Input/output error")


@pytest.mark.parametrize("unbuffered", ["1", None])  # PYTHONUNBUFFERED, set or not
def test_a_broken_pipe_exits_141_without_a_word(run, submit, unbuffered):
    job_id = submit("--array", "1-3000", "--max-parallel", "8", "--wait", "--", "true")
    assert job_id
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    for args in (["status"], ["status", "--json"], ["info", job_id]):
        reader = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env)
        assert reader.stdout.read(1)
        reader.stdout.close()  # the reader goes away with ~200 KB still to come
        assert reader.wait(timeout=60) == 141, args
        assert reader.stderr.read() == b""


def test_output_into_a_broken_pipe_exits_141(run, submit, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1_000_000)
    job_id = submit("--wait", "--", "cat", str(big))
    reader = subprocess.Popen([*CLI, "output", job_id], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert reader.stdout.read(1)
    reader.stdout.close()
    assert reader.wait(timeout=60) == 141
    assert reader.stderr.read() == b""


# -- -e KEY ---------------------------------------------------------------------------------


def test_env_key_alone_passes_the_submitters_value(run, state_dir, tmp_path):
    out = tmp_path / "env"
    secret = "s3cret=with=equals and spaces"
    result = run("submit", "-w", "-e", "OSTRACKER_TEST_SECRET", "-e", "PLAIN=1", "-o", out,
                 "--", "sh", "-c", 'printf "%s|%s" "$OSTRACKER_TEST_SECRET" "$PLAIN"',
                 env={"OSTRACKER_TEST_SECRET": secret})
    assert result.returncode == 0, result.stderr
    assert out.read_text() == f"{secret}|1"
    job = json.loads(run("info", result.stdout.strip(), "--json").stdout)
    assert job["job_template"]["job_environment"] == {"OSTRACKER_TEST_SECRET": secret,
                                                      "PLAIN": "1"}
    # set, but empty: the empty value
    result = run("submit", "-w", "-e", "OSTRACKER_TEST_EMPTY", "--", "true",
                 env={"OSTRACKER_TEST_EMPTY": ""})
    job = json.loads(run("info", result.stdout.strip(), "--json").stdout)
    assert job["job_template"]["job_environment"] == {"OSTRACKER_TEST_EMPTY": ""}


def test_env_key_that_is_not_set_is_a_usage_error(run, state_dir):
    env = {key: value for key, value in os.environ.items() if key != "OSTRACKER_TEST_UNSET"}
    result = subprocess.run([*CLI, "submit", "-e", "OSTRACKER_TEST_UNSET", "--", "true"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert len(lines_of(result.stderr)) == 1
    assert "'OSTRACKER_TEST_UNSET' is not set in this environment" in result.stderr
    assert not os.path.exists(os.path.join(state_dir, "jobs", "1"))


def test_the_status_table_is_drawn_as_tabulate_draws_a_plain_table():
    """``status`` draws its table itself (tabulate guesses each cell's type, 50 µs a row):
    the same text as tabulate's "plain" format, for cells of spaces, wide and accented
    letters, digits, and nothing."""
    import random

    from tabulate import tabulate

    from ostracker.output import text_table

    pick = random.Random(7)
    letters = ["a", "Z", " ", "é", "日", "-", "1", "10", "\u00a0", "x y", "\\e"]
    headers = ["ID", "NAME", "STATE", "EXIT", "PID", "STARTED", "WALL", "COMMAND"]
    for _ in range(500):
        rows = [["".join(pick.choice(letters) for _ in range(pick.randint(0, 6)))
                 for _ in headers] for _ in range(pick.randint(0, 5))]
        assert text_table(headers, rows) == tabulate(rows, headers=headers, tablefmt="plain",
                                                     disable_numparse=True), rows
