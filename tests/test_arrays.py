"""Job arrays (README, "Job arrays"): indices, TASK_ID/JOB_ID, max-parallel, derived state, bad specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import poll
from ostracker import JobState
from ostracker.local import proc

# Each task writes a file named after its TASK_ID, holding its JOB_ID.
WRITE_TASK_FILE = 'printf "%s" "$JOB_ID" > "task-${TASK_ID-unset}"'


def statuses(run, *job_ids):
    result = run("status", *job_ids, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_id(run, job_id):
    return {record["id"]: record for record in statuses(run, job_id)}


def task_files(directory):
    """{file name: content} of the task-* files a WRITE_TASK_FILE array left in ``directory``."""
    return {name: (directory / name).read_text()
            for name in os.listdir(directory) if name.startswith("task-")}


def wait_array(run, job_id, expected=0, timeout=30):
    result = run("wait", job_id, "--timeout", timeout)
    assert result.returncode == expected, (result.returncode, result.stderr)


def gated_array(submit, tmp_path, spec="1-3", *options):
    """An array of tasks that each wait for the file ``go`` and then leave task-$TASK_ID.

    The waiting is done by one Python process that starts no children, so that a
    suspend in the middle of it is never caught between a fork and an exec.
    """
    gate = tmp_path / "go"
    script = (f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
              "open('task-' + os.environ.get('TASK_ID', 'unset'), 'w')"
              ".write(os.environ['JOB_ID'])")
    job_id = submit("--array", spec, *options, "-C", tmp_path, "--", sys.executable, "-c", script)
    return job_id, gate


def max_overlap(intervals):
    """The largest number of [start, end] intervals that hold one instant in common."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))  # an end before a start at a tie
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


# -- indices, TASK_ID and JOB_ID ------------------------------------------------------------------


def test_stepped_range_runs_each_index_with_task_id_and_job_id(submit, run, tmp_path):
    """1-10:2 runs tasks 1,3,5,7,9, each with TASK_ID=I and JOB_ID=N.I."""
    job_id = submit("--array", "1-10:2", "-C", tmp_path, "--", "sh", "-c", WRITE_TASK_FILE)
    wait_array(run, job_id)
    indices = [1, 3, 5, 7, 9]
    assert task_files(tmp_path) == {f"task-{i}": f"{job_id}.{i}" for i in indices}
    records = statuses(run, job_id)
    assert [r["id"] for r in records] == [f"{job_id}.{i}" for i in indices]
    assert [(r["array_id"], r["task_id"], r["state"]) for r in records] == \
        [(job_id, i, "Done") for i in indices]


def test_single_index_array_runs_that_one_task(submit, run, tmp_path):
    """--array 4 is an array of one task, 4."""
    job_id = submit("--array", "4", "-C", tmp_path, "--", "sh", "-c", WRITE_TASK_FILE)
    wait_array(run, job_id)
    assert task_files(tmp_path) == {"task-4": f"{job_id}.4"}
    assert [(r["id"], r["array_id"], r["task_id"]) for r in statuses(run, job_id)] == \
        [(f"{job_id}.4", job_id, 4)]


def test_index_zero_is_a_task_with_task_id_zero(submit, run, tmp_path):
    """--array 0-2 runs task 0 too, and TASK_ID=0 is set for it (not empty, not unset)."""
    job_id = submit("--array", "0-2", "-C", tmp_path, "--", "sh", "-c", WRITE_TASK_FILE)
    wait_array(run, job_id)
    assert task_files(tmp_path) == {f"task-{i}": f"{job_id}.{i}" for i in (0, 1, 2)}
    assert [r["task_id"] for r in statuses(run, job_id)] == [0, 1, 2]


def test_output_paths_expand_per_task(submit, run, tmp_path):
    """In an array, %a is the task index and %j the task ID (N.I) in -o/--stderr."""
    job_id = submit("--array", "2-3", "-C", tmp_path, "-o", "out-%a.txt", "--stderr", "err-%j",
                    "--", "sh", "-c", 'echo "o $TASK_ID"; echo "e $JOB_ID" >&2')
    wait_array(run, job_id)
    for i in (2, 3):
        assert (tmp_path / f"out-{i}.txt").read_text() == f"o {i}\n"
        assert (tmp_path / f"err-{job_id}.{i}").read_text() == f"e {job_id}.{i}\n"


def test_stdin_path_expands_per_task(submit, run, tmp_path):
    """--stdin in-%a.txt: each task reads its own input file."""
    for i in (1, 2):
        (tmp_path / f"in-{i}.txt").write_text(f"input of {i}\n")
    job_id = submit("--array", "1-2", "-C", tmp_path, "--stdin", "in-%a.txt", "-o", "out-%a",
                    "--", "cat")
    wait_array(run, job_id)
    assert [(tmp_path / f"out-{i}").read_text() for i in (1, 2)] == ["input of 1\n", "input of 2\n"]


def test_shared_output_path_collects_every_tasks_output(submit, run, tmp_path):
    """-o without %a: every task's output ends up in the one file, stale content gone."""
    shared = tmp_path / "shared.txt"
    shared.write_text("stale line\n" * 50)
    job_id = submit("--array", "1-6", "--max-parallel", "2", "-o", shared, "--",
                    "sh", "-c", 'echo "task $TASK_ID"')
    wait_array(run, job_id)
    assert sorted(shared.read_text().splitlines()) == [f"task {i}" for i in range(1, 7)]


def test_default_capture_is_per_task(submit, run):
    """Without -o, 'output N.I' prints what task I wrote."""
    job_id = submit("--array", "1-2", "--", "sh", "-c", 'echo "out $TASK_ID"')
    wait_array(run, job_id)
    for i in (1, 2):
        result = run("output", f"{job_id}.{i}")
        assert (result.returncode, result.stdout) == (0, f"out {i}\n")


# -- max parallel and Queued ----------------------------------------------------------------------


@pytest.mark.parametrize("options", [["--array", "1-12", "--max-parallel", "3"],
                                     ["--array", "1-12%3"]])
def test_max_parallel_bounds_the_tasks_running_at_once(submit, run, tmp_path, options):
    """At most 3 of 12 tasks run at once (records and processes agree), and 3 do."""
    # Each task leaves a marker while it runs and counts the markers it sees.
    script = ('touch "running.$TASK_ID"; ls running.* | wc -l >> counts; sleep 0.3; '
              'rm "running.$TASK_ID"')
    job_id = submit(*options, "-C", tmp_path, "--", "sh", "-c", script)
    wait_array(run, job_id)
    records = statuses(run, job_id)
    assert len(records) == 12 and all(r["state"] == "Done" for r in records)
    intervals = [(r["dispatch_time"], r["finish_time"]) for r in records]
    assert max_overlap(intervals) == 3, intervals
    counts = [int(line) for line in (tmp_path / "counts").read_text().split()]
    assert len(counts) == 12 and max(counts) <= 3, counts


def test_queued_tasks_have_no_pid_or_dispatch_time_until_they_start(submit, run, tmp_path):
    """With max-parallel 1, tasks 2 and 3 are Queued (pid, dispatch_time null) while 1 runs."""
    job_id, gate = gated_array(submit, tmp_path, "1-3", "--max-parallel", "1")
    records = by_id(run, job_id)
    first = records[f"{job_id}.1"]
    assert first["state"] == "Running" and isinstance(first["pid"], int)
    for i in (2, 3):
        queued = records[f"{job_id}.{i}"]
        assert (queued["state"], queued["pid"], queued["dispatch_time"], queued["finish_time"],
                queued["exit_status"]) == ("Queued", None, None, None, None), queued
    assert "Queued" in run("status", f"{job_id}.2").stdout
    assert task_files(tmp_path) == {}
    gate.touch()
    wait_array(run, job_id)
    records = statuses(run, job_id)
    assert [r["state"] for r in records] == ["Done"] * 3
    assert all(isinstance(r["pid"], int) for r in records)
    assert records[0]["finish_time"] <= records[1]["dispatch_time"]
    assert records[1]["finish_time"] <= records[2]["dispatch_time"]
    assert task_files(tmp_path) == {f"task-{i}": f"{job_id}.{i}" for i in (1, 2, 3)}


# -- the array ID stands for all its tasks --------------------------------------------------------


def test_array_id_in_status_and_info_stands_for_every_task(submit, run, tmp_path):
    """status N / info N show each task; status --json has array_id and task_id per task."""
    single = submit("--", "true")
    job_id = submit("--array", "1-3", "--", "true")
    wait_array(run, job_id)
    records = statuses(run, job_id)
    assert [(r["id"], r["array_id"], r["task_id"]) for r in records] == \
        [(f"{job_id}.{i}", job_id, i) for i in (1, 2, 3)]
    everything = statuses(run)
    assert [r["id"] for r in everything] == [single] + [f"{job_id}.{i}" for i in (1, 2, 3)]
    assert everything[0]["array_id"] is None and everything[0]["task_id"] is None
    table = run("status", job_id).stdout
    for i in (1, 2, 3):
        assert f"{job_id}.{i}" in table
    result = run("info", job_id, "--json")
    assert result.returncode == 0, result.stderr
    infos = json.loads(result.stdout)
    assert isinstance(infos, list)
    assert [i["id"] for i in infos] == [f"{job_id}.{i}" for i in (1, 2, 3)]
    text = run("info", job_id).stdout
    for i in (1, 2, 3):
        assert f"id: {job_id}.{i}" in text.splitlines()
    one = run("info", f"{job_id}.2", "--json")
    assert json.loads(one.stdout)["id"] == f"{job_id}.2"


def test_wait_on_an_array_exits_0_only_if_every_task_is_done(submit, run):
    """wait N: 0 when all tasks are Done; 1 (not the task's status) when one failed."""
    good = submit("--array", "1-3", "--", "sh", "-c", "exit 0")
    bad = submit("--array", "1-3", "--", "sh", "-c", '[ "$TASK_ID" != 2 ] || exit 5')
    wait_array(run, good, expected=0)
    wait_array(run, bad, expected=1)
    records = by_id(run, bad)
    assert [records[f"{bad}.{i}"]["state"] for i in (1, 2, 3)] == ["Done", "Failed", "Done"]
    assert records[f"{bad}.2"]["exit_status"] == 5


def test_array_state_is_derived_from_its_tasks(submit, run, tracker, tmp_path):
    """job_state(N): Running, then Suspended, Running again, Done; Failed if any task failed."""
    job_id, gate = gated_array(submit, tmp_path, "1-3", "--max-parallel", "1")
    assert tracker.job_state(job_id)[0] is JobState.RUNNING  # one Running, two Queued
    assert run("suspend", f"{job_id}.1").returncode == 0
    assert tracker.job_state(job_id)[0] is JobState.SUSPENDED  # one Suspended, two Queued
    assert run("resume", f"{job_id}.1").returncode == 0
    assert tracker.job_state(job_id)[0] is JobState.RUNNING
    gate.touch()
    wait_array(run, job_id)
    assert tracker.job_state(job_id)[0] is JobState.DONE
    failing = submit("--array", "1-3", "--", "sh", "-c", '[ "$TASK_ID" != 3 ]')
    wait_array(run, failing, expected=1)
    assert tracker.job_state(failing)[0] is JobState.FAILED


def group_states(pgid):
    """One-letter /proc states of the processes in process group ``pgid``."""
    states = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            current = proc.stat(int(name))
            if current is not None and current.pgid == pgid:
                states.append(current.state)
    return states


def test_suspend_and_resume_a_task_whose_shell_keeps_starting_commands(submit, run, tmp_path):
    """suspend N.I stops a shell loop that forks all the time (a typical task script)."""
    count = tmp_path / "count"
    job_id = submit("--array", "1-2", "--max-parallel", "1", "-C", tmp_path, "--", "sh", "-c",
                    'n=0; while :; do /bin/true; n=$((n+1)); '
                    '[ $((n % 20)) -ne 0 ] || echo $n > count; done')
    task = f"{job_id}.1"
    pid = statuses(run, task)[0]["pid"]

    def progress():
        try:
            return int(count.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    for attempt in range(15):  # each suspend has a fair chance to land between fork and exec
        result = run("suspend", task)
        assert result.returncode == 0, \
            f"attempt {attempt}: {result.stderr.strip()}; group states {group_states(pid)}"
        stopped_at = progress()
        time.sleep(0.05)
        assert progress() == stopped_at, f"attempt {attempt}: the loop went on while Suspended"
        if attempt == 0:
            assert statuses(run, task)[0]["state"] == "Suspended"
        result = run("resume", task)
        assert result.returncode == 0, result.stderr
        poll(lambda: progress() > stopped_at, timeout=5, message="the loop to go on")
    assert statuses(run, task)[0]["state"] == "Running"


def test_array_whose_first_task_cannot_start_fails_and_runs_nothing(run, state_dir, tmp_path):
    """First task cannot start: submit exits 1 with the cause, and no other task ever runs."""
    result = run("submit", "--array", "1-3", "-C", tmp_path / "missing", "--", "true")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "missing" in result.stderr
    records = statuses(run)
    assert len(records) == 3
    assert all(r["state"] == "Failed" and r["pid"] is None for r in records), records
    assert records[0]["sub_state"].startswith("could not start")


# -- array specs ----------------------------------------------------------------------------------

BAD_SPECS = ["", "abc", "1-", "-1", "5-1", "1-5:0", "1-5:-1", "1-5%0", "1.5", "1-10:2:3",
             "0-1000000", "1-3%", "%3", "1-3:", "1 - 3", "+1", "\u0661-\u0663", "1-3%-1"]


@pytest.mark.parametrize("options", [[f"--array={spec}"] for spec in BAD_SPECS] + [
    ["--array", "1-3", "--max-parallel", "0"],
    ["--array", "1-3", "--max-parallel", "-2"],
    ["--array", "1-3", "--max-parallel", "x"],
    ["--max-parallel", "2"],
], ids=repr)
def test_malformed_array_spec_is_a_usage_error_that_writes_nothing(run, state_dir, tmp_path,
                                                                   options):
    """A bad spec or --max-parallel: exit 2, one line, no job recorded, nothing run."""
    marker = tmp_path / "ran"
    result = run("submit", *options, "--", "touch", marker)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    jobs = os.path.join(state_dir, "jobs")
    assert not os.path.isdir(jobs) or os.listdir(jobs) == []
    time.sleep(0.05)  # a job started by mistake has had time to run
    assert not marker.exists()


def test_array_of_exactly_one_million_tasks_is_accepted(run, tmp_path):
    """0-999999 (the limit) is accepted, its last task Queued; terminate N ends it promptly."""
    result = run("submit", "--array=0-999999%2", "--", "sleep", "30")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    last = statuses(run, f"{job_id}.999999")[0]
    assert (last["state"], last["task_id"]) == ("Queued", 999999)
    started = time.monotonic()
    try:
        terminate = run("terminate", job_id, timeout=8)
        outcome = (terminate.returncode, terminate.stderr)
    except subprocess.TimeoutExpired:
        outcome = None  # checked last: the states below are what a user sees meanwhile
    took = time.monotonic() - started
    first = poll(lambda: [r for r in statuses(run, f"{job_id}.0") if r["state"] != "Running"],
                 message="task 0 killed")[0]
    assert (first["state"], first["terminating_signal"]) == ("Failed", "SIGKILL")
    last = statuses(run, f"{job_id}.999999")[0]
    assert (last["state"], last["pid"]) == ("Failed", None)
    assert outcome is not None, \
        f"terminate of a 1,000,000-task array still running after {took:.1f} s"
    assert outcome[0] == 0, outcome
    assert took < 5, f"terminate of a 1,000,000-task array took {took:.1f} s"


def test_an_array_of_listed_indices(run, submit, tmp_path):
    """``--array 0,4,8-10%2``: the tasks 0, 4, 8, 9 and 10, two at a time."""
    log = tmp_path / "log"
    array = submit("--array", "0,4,8-10%2", "--", "sh", "-c",
                   f'echo "$TASK_ID start $(date +%s%N)" >> {log}; sleep 0.2; '
                   f'echo "$TASK_ID end $(date +%s%N)" >> {log}')
    assert run("wait", array).returncode == 0
    assert run("status", "-q", array).stdout.split() == [f"{array}.{i}" for i in (0, 4, 8, 9, 10)]
    events = sorted((int(t), kind) for _, kind, t in (line.split() for line in
                                                       open(log).read().splitlines()))
    running = most = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most <= 2
    assert run("info", f"{array}.5").returncode == 1  # not one of its tasks
    for bad in ("1-3,2", "1,,2", "1-3%", "3,1-2%0"):
        assert run("submit", "--array", bad, "--", "true").returncode == 2, bad
