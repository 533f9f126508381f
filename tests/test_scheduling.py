"""Scheduling on the local backend: queues and slots, priorities, dependencies, begin
times, holds (README, "Scheduling").

Order is observed, never assumed: each job appends its start and end times
(``CLOCK_REALTIME`` in nanoseconds, from ``date +%s%N``) and its slots to a
file, and the checks read those.  Jobs that must run "for a while" wait for a
flag file that the test creates, instead of sleeping a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest import poll, proc_state

# A job that logs "start SLOTS TIME", waits for FLAG (if given) or sleeps, logs "end TIME".
LOGGER = ('echo "start $OSTRACKER_SLOTS|$(date +%s%N)" >> "$LOG"; '
          'if [ -n "$FLAG" ]; then while [ ! -e "$FLAG" ]; do sleep 0.01; done; '
          'else sleep "${NAP:-0.2}"; fi; echo "end $(date +%s%N)" >> "$LOG"')


def logged(path):
    """(start ns, end ns or None, slots) of the job that logged to ``path``."""
    start = end = None
    slots = []
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            word, _, rest = line.partition(" ")
            if word == "start":
                numbers, _, moment = rest.rpartition("|")
                slots, start = [int(n) for n in numbers.split()], int(moment)
            elif word == "end":
                end = int(rest)
    return start, end, slots


@pytest.fixture
def job(submit, tmp_path):
    """Submit a logging job; returns (ID, its log path).  ``flag``: it runs until that file
    exists; ``nap``: it sleeps that long instead."""
    count = iter(range(1_000_000))

    def submit_job(*options, flag=None, nap=None, name=None):
        log = tmp_path / f"log-{next(count)}"
        env = ["-e", f"LOG={log}"]
        if flag is not None:
            env += ["-e", f"FLAG={flag}"]
        if nap is not None:
            env += ["-e", f"NAP={nap}"]
        job_id = submit(*options, *env, *(["-n", name] if name else []),
                        "--", "sh", "-c", LOGGER)
        return job_id, str(log)
    return submit_job


def state_of(info, job_id):
    data = info(job_id)
    return data["state"], data["sub_state"]


def wait_ended(run, *job_ids, timeout=30):
    result = run("wait", *job_ids, "--timeout", timeout)
    assert result.returncode != 124, f"jobs {job_ids} did not end"
    return result


def overlap(intervals):
    """The largest number of intervals that hold one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


# -- queues and slots --------------------------------------------------------------------

def test_a_queue_runs_at_most_its_slots_and_no_slot_twice(run, job, info):
    assert run("queue", "q", "--slots", "2").returncode == 0
    jobs = [job("-q", "q", nap=0.3) for _ in range(6)]
    wait_ended(run, *[job_id for job_id, _ in jobs])
    runs = [logged(log) for _, log in jobs]
    assert all(start and end for start, end, _ in runs)
    assert overlap([(start, end) for start, end, _ in runs]) <= 2
    for i, (start, end, slots) in enumerate(runs):
        assert len(slots) == 1 and slots[0] in (0, 1)
        for other_start, other_end, other_slots in runs[i + 1:]:
            if other_start < end and start < other_end:  # they ran at once
                assert set(slots).isdisjoint(other_slots)
    first = info(jobs[0][0])
    assert first["queue_name"] == "q" and first["slots"] == runs[0][2]
    assert first["job_template"]["queue_name"] == "q"


def test_order_is_priority_then_submission(run, job):
    assert run("queue", "q", "--slots", "0").returncode == 0  # paused while they come
    low1 = job("-q", "q", nap=0.05)
    high1 = job("-q", "q", "--priority", "5", nap=0.05)
    low2 = job("-q", "q", nap=0.05)
    high2 = job("-q", "q", "--priority", "5", nap=0.05)
    negative = job("-q", "q", "--priority=-3", nap=0.05)
    assert run("queue", "q", "--slots", "1").returncode == 0
    order = [high1, high2, low1, low2, negative]
    wait_ended(run, *[job_id for job_id, _ in order])
    starts = [logged(log)[0] for _, log in order]
    assert starts == sorted(starts)


def test_a_job_gets_all_its_slots_and_nothing_passes_it(run, job, tmp_path):
    assert run("queue", "q", "--slots", "3").returncode == 0
    flag = tmp_path / "go"
    small = job("-q", "q", flag=flag)
    poll(lambda: logged(small[1])[0], message="the first job to start")
    big = job("-q", "q", "--slots", "3", nap=0.05)
    behind = job("-q", "q", nap=0.05)  # 2 slots are free, but the big job comes first
    result = run("info", behind[0], "--json")
    assert json.loads(result.stdout)["state"] == "Queued"
    flag.touch()
    wait_ended(run, small[0], big[0], behind[0])
    assert logged(big[1])[2] == [0, 1, 2]
    assert logged(behind[1])[0] >= logged(big[1])[0]


def test_growing_a_queue_starts_waiting_jobs_and_shrinking_stops_none(run, job, info,
                                                                     tmp_path):
    assert run("queue", "q", "--slots", "1").returncode == 0
    flag = tmp_path / "go"
    first = job("-q", "q", flag=flag)
    second = job("-q", "q", flag=flag)
    poll(lambda: logged(first[1])[0], message="the first job to start")
    assert state_of(info, second[0]) == ("Queued", "waiting for 1 slot of queue q "
                                                   "(0 jobs ahead)")
    assert run("queue", "q", "--slots", "2").returncode == 0
    poll(lambda: logged(second[1])[0], message="the second job to start once grown")
    assert run("queue", "q", "--slots", "0").returncode == 0
    assert info(first[0])["state"] == info(second[0])["state"] == "Running"
    shown = json.loads(run("queue", "q", "--json").stdout)
    assert shown == {"name": "q", "slots": 0, "in_use": 2, "running": 2, "queued": 0,
                     "held": 0}
    flag.touch()
    wait_ended(run, first[0], second[0])


def test_a_paused_queue_takes_any_job_and_starts_none(run, job, info):
    assert run("queue", "q", "--slots", "0").returncode == 0
    waiting = job("-q", "q", "--slots", "4", nap=0)
    assert state_of(info, waiting[0]) == ("Queued", "waiting for queue q, which is paused "
                                                    "(0 slots)")
    assert run("queue", "q", "--slots", "4").returncode == 0
    wait_ended(run, waiting[0])
    assert logged(waiting[1])[2] == [0, 1, 2, 3]


def test_what_could_never_start_is_refused_at_submit(run, state_dir):
    unknown = run("submit", "-q", "nosuch", "--", "true")
    assert unknown.returncode == 1
    assert "no such queue: nosuch" in unknown.stderr and "ostracker queue nosuch" in unknown.stderr
    assert run("queue", "small", "--slots", "2").returncode == 0
    large = run("submit", "-q", "small", "--slots", "3", "--", "true")
    assert large.returncode == 1 and "--slots 3" in large.stderr
    assert run("submit", "--slots", "2", "--", "true").returncode == 2  # no queue
    assert run("submit", "-q", "bad/name", "--", "true").returncode == 2
    assert run("status", "-q").stdout == ""  # nothing was recorded


def test_queue_from_the_environment(run, job, info):
    assert run("queue", "q", "--slots", "1").returncode == 0
    result = run("submit", "--", "sh", "-c", "echo $OSTRACKER_QUEUE",
                 env={"OSTRACKER_QUEUE": "q"})
    assert result.returncode == 0
    job_id = result.stdout.strip()
    wait_ended(run, job_id)
    assert run("output", job_id).stdout == "q\n"
    assert info(job_id)["queue_name"] == "q"


def test_the_queue_command(run, job, tmp_path):
    assert run("queue").stdout == ""
    assert run("queue", "b", "--slots", "3").stdout.split()[-6:] == ["b", "3", "0", "0", "0", "0"]
    assert run("queue", "a", "--slots", "1").returncode == 0
    listed = json.loads(run("queue", "--json").stdout)
    assert [q["name"] for q in listed] == ["a", "b"]
    flag = tmp_path / "go"
    running = job("-q", "a", flag=flag)
    queued = job("-q", "a", nap=0)
    held = job("-q", "a", "--hold", nap=0)
    poll(lambda: logged(running[1])[0], message="the job to start")
    assert json.loads(run("queue", "a", "--json").stdout) == {
        "name": "a", "slots": 1, "in_use": 1, "running": 1, "queued": 1, "held": 1}
    refused = run("queue", "a", "--delete")
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert run("queue", "nosuch").returncode == 1
    assert run("queue", "--slots", "2").returncode == 2
    assert run("queue", "a", "--slots", "-1").returncode == 2
    assert run("queue", "a", "--slots", "9" * 5000).returncode == 2
    flag.touch()
    run("terminate", held[0])
    wait_ended(run, running[0], queued[0])
    assert run("queue", "a", "--delete").returncode == 0
    assert [q["name"] for q in json.loads(run("queue", "--json").stdout)] == ["b"]


# -- dependencies ------------------------------------------------------------------------

def test_afterok_starts_after_success_and_fails_after_failure(run, job, info, tmp_path):
    flag = tmp_path / "go"
    first = job(flag=flag)
    then = job("-d", f"afterok:{first[0]}", nap=0)
    assert state_of(info, then[0]) == ("Queued", f"waiting for afterok:{first[0]}")
    flag.touch()
    wait_ended(run, then[0])
    assert logged(then[1])[0] >= logged(first[1])[1]
    assert info(then[0])["dependency"] == f"afterok:{first[0]}"

    failing = run("submit", "--", "sh", "-c", "exit 3").stdout.strip()
    never = job("-d", f"afterok:{failing}", nap=0)
    result = wait_ended(run, never[0])
    assert result.returncode == 1
    assert state_of(info, never[0]) == (
        "Failed", f"dependency never satisfied: afterok:{failing} ({failing} Failed)")
    assert not os.path.exists(never[1])  # it never ran


def test_afternotok_afterany_after_and_any_of(run, job, info, tmp_path):
    flag = tmp_path / "go"
    failing = job(flag=flag)
    not_ok = job("-d", f"afternotok:{failing[0]}", nap=0)
    any_end = job("-d", f"afterany:{failing[0]}", nap=0)
    started = job("-d", f"after:{failing[0]}", nap=0)
    wait_ended(run, started[0])  # `after` needs it started, not ended
    assert logged(failing[1])[1] is None
    either = job("-d", f"afterok:{failing[0]}?afterany:{started[0]}", nap=0)
    wait_ended(run, either[0])
    run("terminate", failing[0])
    wait_ended(run, not_ok[0], any_end[0])
    assert info(not_ok[0])["state"] == info(any_end[0])["state"] == "Done"


def test_dependencies_on_array_tasks_and_whole_arrays(run, job, info, submit):
    array = submit("--array", "1-3", "--", "sh", "-c", 'exit $(( TASK_ID == 2 ))')
    on_task = job("-d", f"afterok:{array}.1", nap=0)
    on_array = job("-d", f"afterok:{array}", nap=0)
    wait_ended(run, on_task[0], on_array[0])
    assert info(on_task[0])["state"] == "Done"
    assert info(on_array[0])["sub_state"].startswith("dependency never satisfied")


def test_a_job_after_an_array_task_starts_as_that_task_ends(run, job, info, submit, tmp_path):
    """The reaper tells the scheduler when a task ends, not only when it exits itself: a job
    after task 1 starts while task 2 of the array runs on."""
    array = submit("--array", "1-2", "-e", f"GO={tmp_path}/go", "--", "sh", "-c",
                   'while [ ! -e "$GO$TASK_ID" ]; do sleep 0.01; done')
    after, log = job("-d", f"afterok:{array}.1", nap=0)
    try:
        assert state_of(info, after)[1] == f"waiting for afterok:{array}.1"
        (tmp_path / "go1").touch()
        poll(lambda: logged(log)[1] is not None, timeout=20, message="the job after task 1")
        assert info(f"{array}.2")["state"] == "Running"
    finally:
        (tmp_path / "go2").touch()
    wait_ended(run, array, after)


def test_bad_dependencies_are_refused(run):
    assert run("submit", "-d", "afterok:999", "--", "true").returncode == 1
    for bad in ("afterok", "afterok:", "before:1", "afterok:x", "afterok:1,afterany:1?after:1",
                "afterok:" + "9" * 5000):
        result = run("submit", "-d", bad, "--", "true")
        assert result.returncode in (1, 2), bad
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert run("status", "-q").stdout == ""


# -- begin times -------------------------------------------------------------------------

def test_begin_waits_until_its_time(run, job, info):
    waiting = job("--begin", "now+2", nap=0)
    data = info(waiting[0])
    begin = data["job_template"]["start_time"]
    assert data["state"] == "Queued" and data["sub_state"] == f"waiting until {begin}"
    wait_ended(run, waiting[0])
    from datetime import datetime

    assert logged(waiting[1])[0] / 1e9 >= datetime.fromisoformat(begin).timestamp()


@pytest.mark.parametrize("spec", ["tomorrow", "25:00", "2026-13-01", "now+", "now+1y",
                                  "now+" + "9" * 5000, "1e9", ""])
def test_bad_begin_times_are_usage_errors(run, spec):
    result = run("submit", "--begin", spec, "--", "true")
    assert result.returncode == 2 and "bad time" in result.stderr


def test_begin_forms(run, info, submit):
    for spec in ("23:59", "2099-01-02", "2099-01-02T03:04", "2099-01-02T03:04:05+02:00"):
        job_id = submit("--begin", spec, "--", "true")
        assert info(job_id)["state"] == "Queued"
    assert info(job_id)["job_template"]["start_time"] == "2099-01-02T01:04:05.000000+00:00"


# -- holds -------------------------------------------------------------------------------

def test_hold_and_release(run, job, info, tmp_path):
    held = job("--hold", nap=0)
    assert state_of(info, held[0]) == ("QueuedHeld", "held")
    assert run("hold", held[0]).returncode == 1  # held already: not queued
    assert run("release", held[0]).returncode == 0
    wait_ended(run, held[0])
    assert logged(held[1])[0]
    assert run("release", held[0]).returncode == 1  # ended: not held


def test_a_held_job_never_starts_whatever_else_frees(run, job, info, tmp_path):
    assert run("queue", "q", "--slots", "1").returncode == 0
    flag = tmp_path / "go"
    running = job("-q", "q", flag=flag)
    waiting = job("-q", "q", nap=0)
    assert run("hold", waiting[0]).returncode == 0
    refused = run("hold", running[0])
    assert refused.returncode == 1 and "Running" in refused.stderr
    flag.touch()
    wait_ended(run, running[0])
    poll(lambda: not json.loads(run("queue", "q", "--json").stdout)["in_use"],
         message="the slot to be free")
    assert state_of(info, waiting[0]) == ("QueuedHeld", "held")
    assert not os.path.exists(waiting[1])
    assert run("terminate", waiting[0]).returncode == 0
    assert state_of(info, waiting[0]) == ("Failed", "cancelled before it started")


def test_hold_and_release_an_arrays_queued_tasks(run, info, submit, tmp_path):
    flag = tmp_path / "go"
    array = submit("--array", "1-4", "--max-parallel", "1", "--", "sh", "-c",
                   f'echo $TASK_ID >> {tmp_path}/ran; while [ ! -e {flag} ]; do sleep 0.01; done')
    poll(lambda: os.path.exists(tmp_path / "ran"), message="task 1 to start")
    assert run("hold", f"{array}.3").returncode == 0
    assert info(f"{array}.3")["state"] == "QueuedHeld"
    flag.touch()
    poll(lambda: info(f"{array}.4")["state"] == "Done", message="task 4 to end")
    assert info(f"{array}.3")["state"] == "QueuedHeld"
    assert run("release", f"{array}.3").returncode == 0
    wait_ended(run, array)
    assert open(tmp_path / "ran").read().split() == ["1", "2", "4", "3"]


def test_a_held_array_starts_when_released(run, info, submit, tmp_path):
    array = submit("--hold", "--array", "0-2", "--", "sh", "-c", f"echo $TASK_ID >> {tmp_path}/ran")
    assert {task["state"] for task in info(array)} == {"QueuedHeld"}
    assert run("release", f"{array}.1").returncode == 0
    wait_ended(run, f"{array}.1")
    assert info(f"{array}.0")["state"] == "QueuedHeld"
    assert run("release", array).returncode == 0
    wait_ended(run, array)
    assert sorted(open(tmp_path / "ran").read().split()) == ["0", "1", "2"]


# -- how the scheduler lives -------------------------------------------------------------

def scheduler_pid(state_dir):
    try:
        with open(os.path.join(state_dir, "schedule", "lock")) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and proc_state(pid) not in (None, "Z") else None


def test_the_scheduler_exists_only_while_something_waits(run, job, state_dir):
    assert run("queue", "q", "--slots", "0").returncode == 0
    jobs = [job("-q", "q", nap=0) for _ in range(5)]
    pid = poll(lambda: scheduler_pid(state_dir), message="a scheduler")
    poll(lambda: proc_state(pid) == "S", message="the scheduler to sleep")
    assert run("queue", "q", "--slots", "5").returncode == 0
    wait_ended(run, *[job_id for job_id, _ in jobs])
    poll(lambda: scheduler_pid(state_dir) is None, message="the scheduler to leave")


def test_a_killed_scheduler_loses_nothing_and_the_next_command_starts_one(run, job, info,
                                                                          state_dir):
    assert run("queue", "q", "--slots", "0").returncode == 0
    waiting = job("-q", "q", nap=0)
    pid = poll(lambda: scheduler_pid(state_dir), message="a scheduler")
    os.kill(pid, signal.SIGKILL)
    poll(lambda: proc_state(pid) in (None, "Z"), message="the scheduler to die")
    assert info(waiting[0])["state"] == "Queued"
    assert run("queue", "q", "--slots", "1").returncode == 0
    wait_ended(run, waiting[0])
    assert len(open(waiting[1]).read().splitlines()) == 2  # ran once


def test_a_slot_stays_taken_while_a_job_whose_reaper_died_runs(run, job, info, tmp_path):
    assert run("queue", "q", "--slots", "1").returncode == 0
    flag = tmp_path / "go"
    orphan = job("-q", "q", flag=flag)
    waiting = job("-q", "q", nap=0)
    poll(lambda: logged(orphan[1])[0], message="the first job to start")
    record = json.load(open(os.path.join(os.environ["OSTRACKER_STATE_DIR"], "jobs",
                                         orphan[0], "state.json")))
    os.kill(record["reaper_pid"], signal.SIGKILL)
    poll(lambda: proc_state(record["reaper_pid"]) in (None, "Z"), message="the reaper to die")
    time.sleep(0.3)  # a scheduler that freed the slot now would start the second job
    assert info(waiting[0])["state"] == "Queued"
    flag.touch()
    poll(lambda: logged(waiting[1])[1], message="the second job to run once the first ended")
    assert logged(waiting[1])[0] >= logged(orphan[1])[1]


def test_the_job_starts_as_the_submit_would_have_started_it(run, info, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    result = run("submit", "--hold", "--", "sh", "-c", "echo $MY_VARIABLE; pwd; umask",
                 env={"MY_VARIABLE": "from the submitter"}, cwd=here)
    job_id = result.stdout.strip()
    assert "MY_VARIABLE" not in info(job_id)["job_template"]["job_environment"]
    assert run("release", job_id).returncode == 0
    wait_ended(run, job_id)
    lines = run("output", job_id).stdout.splitlines()
    assert lines[:2] == ["from the submitter", str(here)]
    umask = os.umask(0o22)
    os.umask(umask)
    assert int(lines[2], 8) == umask


def test_array_tasks_take_slots_one_task_at_a_time(run, submit, info, tmp_path):
    """An array in a queue: each task takes its slots; other jobs of the queue share it,
    in order (priority, then ID and task index); --max-parallel still bounds the array."""
    assert run("queue", "q", "--slots", "3").returncode == 0
    log = tmp_path / "log"
    body = (f'echo "$JOB_ID $OSTRACKER_SLOTS|$(date +%s%N)" >> {log}; sleep 0.2; '
            f'echo "$JOB_ID end|$(date +%s%N)" >> {log}')
    wide = submit("-q", "q", "--array", "1-6", "--", "sh", "-c", body)
    narrow = submit("-q", "q", "--array", "1-3%1", "--", "sh", "-c", body)
    wait_ended(run, wide, narrow)
    starts, ends, slots = {}, {}, {}
    for line in open(log).read().splitlines():
        head, _, moment = line.rpartition("|")
        task, _, rest = head.partition(" ")
        if rest == "end":
            ends[task] = int(moment)
        else:
            starts[task], slots[task] = int(moment), [int(n) for n in rest.split()]
    assert len(starts) == len(ends) == 9
    assert overlap([(starts[t], ends[t]) for t in starts]) <= 3
    assert overlap([(starts[t], ends[t]) for t in starts if t.startswith(f"{narrow}.")]) == 1
    for a in starts:
        for b in starts:
            if a < b and starts[a] < ends[b] and starts[b] < ends[a]:
                assert set(slots[a]).isdisjoint(slots[b]), (a, b)
    assert [info(f"{wide}.{i}")["slots"] for i in (1, 2)] == [slots[f"{wide}.1"],
                                                              slots[f"{wide}.2"]]
    # its tasks start in order (as their reaper dispatched them: two started in the same
    # instant may run their first command in either order)
    dispatched = [info(f"{wide}.{i}")["dispatch_time"] for i in range(1, 7)]
    assert dispatched == sorted(dispatched)
    poll(lambda: json.loads(run("queue", "q", "--json").stdout)["in_use"] == 0,
         message="every slot free")


def test_hold_a_task_of_an_array_in_a_queue(run, submit, info, tmp_path):
    assert run("queue", "q", "--slots", "0").returncode == 0
    array = submit("-q", "q", "--array", "1-3", "--", "sh", "-c",
                   f"echo $TASK_ID >> {tmp_path}/ran")
    assert run("hold", f"{array}.2").returncode == 0
    assert run("queue", "q", "--slots", "2").returncode == 0
    poll(lambda: info(f"{array}.3")["state"] == "Done", message="task 3 to end")
    assert info(f"{array}.2")["state"] == "QueuedHeld"
    assert run("release", f"{array}.2").returncode == 0
    wait_ended(run, array)
    assert sorted(open(tmp_path / "ran").read().split()) == ["1", "2", "3"]
    assert run("status", "-q", array).stdout.split() == [f"{array}.{i}" for i in (1, 2, 3)]


def test_terminate_an_array_waiting_in_a_queue(run, submit, info, tmp_path):
    assert run("queue", "q", "--slots", "1").returncode == 0
    flag = tmp_path / "go"
    array = submit("-q", "q", "--array", "1-3", "--", "sh", "-c",
                   f"echo $TASK_ID >> {tmp_path}/ran; while [ ! -e {flag} ]; do sleep 0.01; done")
    poll(lambda: info(f"{array}.1")["state"] == "Running", message="task 1 to start")
    assert run("terminate", array).returncode == 0
    assert {task["state"] for task in info(array)} == {"Failed"}
    poll(lambda: json.loads(run("queue", "q", "--json").stdout)["in_use"] == 0,
         message="the slot to be free")
    assert open(tmp_path / "ran").read().split() == ["1"]


def test_a_long_chain_of_dependencies(run, submit, info):
    """Each link waits for the one before; reading one reads one level, not the chain."""
    first = submit("--hold", "--", "true")
    chain = [first]
    for _ in range(150):
        chain.append(submit("-d", f"afterok:{chain[-1]}", "--", "true"))
    assert info(chain[-1])["sub_state"] == f"waiting for afterok:{chain[-2]}"
    assert run("release", first).returncode == 0
    wait_ended(run, chain[-1], timeout=60)
    assert {job["state"] for job in json.loads(run("status", "--json").stdout)} == {"Done"}
