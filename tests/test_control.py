"""Job control (README, "Job control"): real signals to real process groups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CLI, poll, proc_state
from ostracker.local import proc

THREE_PROCESSES = ["sh", "-c", "sleep 100 & sleep 100 & wait"]


def status_of(run, job_id):
    result = run("status", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def record(run, job_id):
    return status_of(run, job_id)[0]


def group_members(pgid):
    """PIDs of the live processes in process group ``pgid`` (from /proc)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            current = proc.stat(int(name))
            if current is not None and current.pgid == pgid and current.state not in "ZX":
                members.append(int(name))
    return members


def running_job(submit, run, *command):
    job_id = submit("--", *command)
    poll(lambda: record(run, job_id)["state"] == "Running", message="Running")
    return job_id, record(run, job_id)["pid"]


def test_suspend_stops_every_process_of_the_group_and_resume_continues_them(run, submit):
    """suspend: all three processes show T in /proc; resume: none does."""
    job_id, pid = running_job(submit, run, *THREE_PROCESSES)
    members = poll(lambda: len(group_members(pid)) == 3 and group_members(pid),
                   message="three processes")
    result = run("suspend", job_id)
    assert result.returncode == 0, result.stderr
    assert record(run, job_id)["state"] == "Suspended"  # suspend returned after the record
    assert all(proc_state(member) == "T" for member in members)
    result = run("resume", job_id)
    assert result.returncode == 0, result.stderr
    assert record(run, job_id)["state"] == "Running"
    assert all(proc_state(member) in ("S", "R") for member in members)


def test_terminate_kills_the_whole_group(run, submit):
    """terminate: Failed with SIGKILL, and no process of the group is left."""
    job_id, pid = running_job(submit, run, *THREE_PROCESSES)
    poll(lambda: len(group_members(pid)) == 3, message="three processes")
    result = run("terminate", job_id)
    assert result.returncode == 0, result.stderr
    assert group_members(pid) == []  # terminate returned once the group was gone
    job = record(run, job_id)
    assert (job["state"], job["terminating_signal"], job["exit_status"]) == \
        ("Failed", "SIGKILL", None)
    assert run("wait", job_id).returncode == 128 + signal.SIGKILL


def test_terminate_a_suspended_job(run, submit):
    """A stopped group still dies of SIGKILL."""
    job_id, _ = running_job(submit, run, "sleep", "100")
    assert run("suspend", job_id).returncode == 0
    assert run("terminate", job_id).returncode == 0
    assert record(run, job_id)["terminating_signal"] == "SIGKILL"


def test_state_follows_signals_sent_from_outside(run, submit):
    """kill -STOP from outside gives Suspended, kill -CONT Running again."""
    job_id, pid = running_job(submit, run, "sleep", "100")
    os.kill(pid, signal.SIGSTOP)
    poll(lambda: record(run, job_id)["state"] == "Suspended", message="Suspended")
    assert proc_state(pid) == "T"
    os.kill(pid, signal.SIGCONT)
    poll(lambda: record(run, job_id)["state"] == "Running", message="Running")
    assert proc_state(pid) in ("S", "R")


def test_sigint_from_outside_is_recorded_as_the_terminating_signal(run, submit):
    """kill -INT gives Failed with terminating_signal SIGINT (the SIG_IGN trap)."""
    job_id, pid = running_job(submit, run, "sleep", "100")
    os.kill(pid, signal.SIGINT)
    poll(lambda: record(run, job_id)["state"] == "Failed", message="Failed")
    assert record(run, job_id)["terminating_signal"] == "SIGINT"


def test_a_suspended_job_does_not_finish_while_suspended(run, submit):
    """A job suspended for longer than its run time is still there, Suspended."""
    job_id, pid = running_job(submit, run, "sleep", "2")  # longer than a busy suspend takes
    assert run("suspend", job_id).returncode == 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert record(run, job_id)["state"] == "Suspended"
        assert proc_state(pid) == "T"
        time.sleep(0.1)
    assert run("resume", job_id).returncode == 0
    assert run("wait", job_id, "--timeout", "10").returncode == 0


@pytest.mark.parametrize("action, state, setup", [
    ("suspend", "Done", "ended"),
    ("resume", "Done", "ended"),
    ("terminate", "Done", "ended"),
    ("resume", "Running", "running"),
    ("suspend", "Suspended", "suspended"),
])
def test_wrong_state_is_refused_and_the_record_is_unchanged(run, submit, action, state, setup):
    """Control of a job in the wrong state: exit 1, the job and its state named, no change."""
    if setup == "ended":
        job_id = submit("--", "true")
        assert run("wait", job_id).returncode == 0
    else:
        job_id, _ = running_job(submit, run, "sleep", "100")
        if setup == "suspended":
            assert run("suspend", job_id).returncode == 0
    before = record(run, job_id)
    result = run(action, job_id)
    assert result.returncode == 1
    assert f"job {job_id} is {state}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    after = record(run, job_id)
    before.pop("wallclock_time"), after.pop("wallclock_time")
    assert after == before


def test_suspend_of_a_queued_task_is_refused(run, submit, tmp_path):
    """A queued task cannot be suspended: exit 1 naming it as Queued."""
    gate = tmp_path / "gate"
    job_id = submit("--array", "1-2", "--max-parallel", "1", "--",
                    "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    result = run("suspend", f"{job_id}.2")
    assert result.returncode == 1
    assert f"job {job_id}.2 is Queued" in result.stderr
    gate.touch()


def test_several_ids_act_on_those_that_can_and_report_the_others(run, submit):
    """suspend A B C: A and C stop, B (ended) is reported, exit 1."""
    first, _ = running_job(submit, run, "sleep", "100")
    ended = submit("--", "true")
    assert run("wait", ended).returncode == 0
    third, _ = running_job(submit, run, "sleep", "100")
    result = run("suspend", first, ended, third)
    assert result.returncode == 1
    assert f"job {ended} is Done" in result.stderr
    assert record(run, first)["state"] == "Suspended"
    assert record(run, third)["state"] == "Suspended"


def test_suspend_stops_with_sigstop_what_ignores_sigtstp(run, submit):
    """A tree whose processes ignore SIGTSTP: suspend falls back to SIGSTOP and verifies it.

    Every process of the job, the shell and its background child, shows T in
    /proc before suspend returns; resume continues them all.
    """
    job_id, pid = running_job(submit, run, "sh", "-c", "trap '' TSTP; sleep 100 & wait")
    child = poll(lambda: [p for p in group_members(pid) if p != pid], message="the child")[0]
    result = run("suspend", job_id)
    assert result.returncode == 0, result.stderr
    assert proc_state(pid) == "T" and proc_state(child) == "T"
    assert record(run, job_id)["state"] == "Suspended"
    assert run("resume", job_id).returncode == 0
    poll(lambda: proc_state(child) not in ("T", None), message="the child running again")
    assert record(run, job_id)["state"] == "Running"


def test_terminating_queued_tasks_frees_their_places(run, submit, tmp_path):
    """Cancelled queued tasks never start; the rest of the array goes on to the end."""
    gate = tmp_path / "gate"
    done = tmp_path / "done"
    done.mkdir()
    job_id = submit("--array", "1-5", "--max-parallel", "1", "--", "sh", "-c",
                    f"while [ ! -e {gate} ]; do sleep 0.02; done; touch {done}/$TASK_ID")
    for task in (3, 4):
        result = run("terminate", f"{job_id}.{task}")
        assert result.returncode == 0, result.stderr
    cancelled = record(run, f"{job_id}.3")
    assert (cancelled["state"], cancelled["pid"], cancelled["dispatch_time"]) == \
        ("Failed", None, None)
    assert "cancel" in cancelled["sub_state"]
    gate.touch()
    assert run("wait", job_id, "--timeout", "30").returncode == 1  # two tasks Failed
    assert sorted(os.listdir(done)) == ["1", "2", "5"]
    states = {job["id"]: job["state"] for job in status_of(run, job_id)}
    assert states == {f"{job_id}.{i}": s for i, s in
                      [(1, "Done"), (2, "Done"), (3, "Failed"), (4, "Failed"), (5, "Done")]}


def test_terminating_an_array_kills_running_tasks_and_cancels_queued_ones(run, submit):
    """terminate N: running tasks get SIGKILL, queued ones never start, the array ends."""
    job_id = submit("--array", "1-6", "--max-parallel", "2", "--", "sleep", "100")
    poll(lambda: sum(j["state"] == "Running" for j in status_of(run, job_id)) == 2,
         message="two running tasks")
    result = run("terminate", job_id)
    assert result.returncode == 0, result.stderr
    assert run("wait", job_id, "--timeout", "10").returncode == 1
    jobs = status_of(run, job_id)
    assert sorted(j["terminating_signal"] for j in jobs if j["pid"]) == ["SIGKILL"] * 2
    assert all(j["state"] == "Failed" and j["dispatch_time"] is None
               for j in jobs if not j["pid"])
    assert len(jobs) == 6


def test_a_reused_pid_is_never_signalled(run, submit, state_dir):
    """A record whose PID now names an unrelated process: no signal reaches that process."""
    job_id, pid = running_job(submit, run, "sleep", "100")
    reaper = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    os.kill(reaper, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: proc_state(pid) is None, message="job process gone")
    # An unrelated process that leads its own group, as the job's process did.
    victim = subprocess.Popen(["sleep", "100"], start_new_session=True)
    try:
        path = os.path.join(state_dir, "jobs", job_id, "state.json")
        with open(path) as handle:
            stale = json.load(handle)
        stale["pid"] = victim.pid  # the PID "was reused"; start_ticks stay the job's
        with open(path, "w") as handle:
            json.dump(stale, handle)
        assert record(run, job_id)["state"] == "Undetermined"
        for action in ("suspend", "terminate"):
            assert run(action, job_id).returncode == 1
        assert proc_state(victim.pid) in ("S", "R")
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_signal_group_checks_identity_before_signalling():
    """proc.signal_group refuses a live PID whose start time is not the recorded one."""
    victim = subprocess.Popen(["sleep", "100"], start_new_session=True)
    try:
        ticks = proc.stat(victim.pid).start_ticks
        assert proc.signal_group(victim.pid, ticks + 1, signal.SIGKILL) == proc.GONE
        assert victim.poll() is None
        assert proc.signal_group(victim.pid, ticks, signal.SIGSTOP) is None
        poll(lambda: proc_state(victim.pid) == "T", message="stopped")
    finally:
        victim.kill()
        victim.wait()


def test_racing_control_commands_leave_one_consistent_record(run, submit, state_dir,
                                                             keep_records):
    """Concurrent suspend/resume/terminate on one job: the record ends valid and Failed."""
    job_id, _ = running_job(submit, run, *THREE_PROCESSES)
    actions = ["suspend", "resume"] * 4 + ["terminate"] * 2
    racers = [subprocess.Popen([*CLI, action, job_id], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for action in actions]
    for racer in racers:
        _, err = racer.communicate(timeout=30)
        assert "Traceback" not in err
        assert racer.returncode in (0, 1)
    run("terminate", job_id)  # in case every terminate lost the race to a suspend
    job = record(run, job_id)
    assert (job["state"], job["terminating_signal"]) == ("Failed", "SIGKILL")
    with open(os.path.join(state_dir, "jobs", job_id, "state.json")) as handle:
        assert json.load(handle)["state"] == "Failed"
    assert not any(name.endswith(".tmp")
                   for name in os.listdir(os.path.join(state_dir, "jobs", job_id)))


def test_api_job_control(tracker, tmp_path):
    """job_control through the API: the same rules, errors of the TrackerError family."""
    from ostracker import InvalidState, JobState, JobTemplate, TrackerError

    job_id = tracker.add_job(JobTemplate("sleep", ["100"]))
    pid = tracker.job_info(job_id).pid
    tracker.job_control(job_id, "suspend")
    assert tracker.job_state(job_id)[0] is JobState.SUSPENDED
    assert proc_state(pid) == "T"
    with pytest.raises(InvalidState):
        tracker.job_control(job_id, "suspend")
    with pytest.raises(InvalidState):
        tracker.job_control(job_id, "hold")  # not queued
    tracker.job_control(job_id, "resume")
    tracker.job_control(job_id, "terminate")
    assert tracker.job_info(job_id).terminating_signal == "SIGKILL"
    with pytest.raises(TrackerError):
        tracker.job_control(job_id, "terminate")
    poll(lambda: not tracker.store.reaper_alive(int(job_id)), message="reaper gone")
