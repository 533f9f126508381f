"""An array's task records as lines of one log (README, "Design", *An array's task records*).

What the log must keep: a file per task no more, every line whole, an unfinished
last line never read and cut off by the next writer, a damaged line hiding no
other task, and a control command's line never lost beside the reaper's.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

from conftest import poll, task_records


def _log(state_dir, job):
    return os.path.join(state_dir, "jobs", job, "tasks.log")


def _lines(path):
    with open(path, "rb") as handle:
        return handle.read().split(b"\n")


def _states(run, job):
    result = run("status", "--json", job)
    return result, [(task["id"], task["state"]) for task in json.loads(result.stdout or "[]")]


def test_an_array_keeps_its_records_in_one_log_at_most_three_lines_a_task(
        run, submit, state_dir, keep_records):
    """A line as a task starts, one as it ends, and one with its PID between (the first
    task's always; a later task's once the reaper has time, which a short one may
    not last: README, "Design")."""
    job = submit("--array", "1-20", "--max-parallel", "4", "--wait", "--", "true")
    folder = os.path.join(state_dir, "jobs", job)
    names = sorted(os.listdir(folder))
    assert not [name for name in names if name.endswith(".json") and name[0].isdigit()], names
    lines = _lines(_log(state_dir, job))
    assert lines[-1] == b""
    by_task = {}
    for line in lines[:-1]:
        index, _, body = line.partition(b"\t")
        by_task.setdefault(int(index), []).append(json.loads(body)["state"])
    assert by_task[1] == ["Queued", "Running", "Done"]
    assert all(by_task[index] in (["Queued", "Running", "Done"], ["Queued", "Done"])
               for index in range(2, 21)), by_task
    assert len(by_task) == 20
    assert [state for _, state in _states(run, job)[1]] == ["Done"] * 20


def test_an_unfinished_last_line_is_never_read_and_the_next_writer_cuts_it_off(
        run, submit, state_dir, tmp_path):
    gate = tmp_path / "go"
    job = submit("--array", "1-2", "--", "sh", "-c",
                 f"while [ ! -e {gate} ]; do sleep 0.01; done")
    poll(lambda: _states(run, job)[1] == [(f"{job}.1", "Running"), (f"{job}.2", "Running")],
         message="both tasks to run")
    log = _log(state_dir, job)
    with open(log, "ab") as handle:  # a writer killed half-way through its line
        handle.write(b'1\t{"schema": 1, "state": "Do')
    result, states = _states(run, job)
    assert result.returncode == 0 and result.stderr == ""
    assert states == [(f"{job}.1", "Running"), (f"{job}.2", "Running")]
    assert run("terminate", f"{job}.2").returncode == 0
    gate.touch()
    assert run("wait", job).returncode == 1  # 2 was terminated
    poll(lambda: not os.path.exists(log), message="the array to be compacted")
    result, states = _states(run, job)
    assert result.stderr == ""
    assert states == [(f"{job}.1", "Done"), (f"{job}.2", "Failed")]


def test_a_line_that_names_no_task_is_said_once_and_hides_no_task(run, submit, state_dir,
                                                                 tmp_path):
    gate = tmp_path / "go"
    job = submit("--array", "1-2", "--", "sh", "-c",
                 f"while [ ! -e {gate} ]; do sleep 0.01; done")
    poll(lambda: [state for _, state in _states(run, job)[1]] == ["Running"] * 2,
         message="both tasks to run")
    log = _log(state_dir, job)
    lines = _lines(log)
    lines.insert(1, b"\x00garbage without a tab")
    with open(log, "wb") as handle:
        handle.write(b"\n".join(lines))
    result, states = _states(run, job)
    assert states == [(f"{job}.1", "Running"), (f"{job}.2", "Running")]
    assert result.returncode == 1
    said = result.stderr.splitlines()
    assert len(said) == 1 and "tasks.log" in said[0] and "names no task" in said[0], said
    gate.touch()


def test_queued_tasks_terminated_one_by_one_while_others_run_are_all_recorded(
        run, submit, state_dir, keep_records):
    """terminate appends its lines beside the reaper's: none is lost, every line whole."""
    job = submit("--array", "1-40", "--max-parallel", "2", "--", "sh", "-c",
                 'test $((TASK_ID % 2)) = 0 || sleep 0.05')
    terminated = {}  # index -> when its terminate returned 0 (1: the task ran first)
    for index in range(40, 20, -2):
        if run("terminate", f"{job}.{index}").returncode == 0:
            terminated[index] = time.time()
    assert run("wait", job).returncode in (0, 1)
    folder = os.path.join(state_dir, "jobs", job)
    lines = _lines(_log(state_dir, job))
    assert lines[-1] == b"" and all(
        line.partition(b"\t")[0].isdigit() and json.loads(line.partition(b"\t")[2])
        for line in lines[:-1])
    records = task_records(folder)
    assert sorted(records) == list(range(1, 41))
    # A terminate that said it acted is never lost beside the reaper's lines: the task is
    # Failed, or it had started before and ended on its own as terminate came (which
    # then returns 0 too: the job has ended); a lost line would have let it start after.
    assert all(records[index]["state"] == "Failed" or
               datetime.fromisoformat(records[index]["dispatch_time"]).timestamp() < said
               for index, said in terminated.items()), \
        [(index, records[index]["state"], records[index]["dispatch_time"], said)
         for index, said in terminated.items()]
    assert all(record["state"] in ("Done", "Failed") for record in records.values())
    _, states = _states(run, job)
    assert len(states) == 40 and all(state in ("Done", "Failed") for _, state in states)
