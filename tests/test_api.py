"""README, "A tour": Python: the Python API (JobTracker, JobTemplate, JobState, TrackerError), real processes."""

from __future__ import annotations

import os
import signal
import stat
import time
from datetime import datetime, timezone

import pytest

from conftest import cleanup, poll, proc_state
from ostracker import JobState, JobTemplate, JobTracker, TrackerError


def sleeper(seconds="30", **fields):
    return JobTemplate(remote_command="/bin/sleep", args=[str(seconds)], **fields)


def shell(script, **fields):
    return JobTemplate(remote_command="/bin/sh", args=["-c", script], **fields)


def state(tracker, job_id):
    return tracker.job_state(job_id)[0]


def test_add_job_starts_a_running_job_and_returns_its_id(tracker):
    """add_job returns a positive-integer ID string of a job that is Running with a live PID."""
    job = tracker.add_job(sleeper())
    assert isinstance(job, str) and job.isdigit() and int(job) > 0
    result = tracker.job_state(job)
    assert isinstance(result, tuple) and len(result) == 2
    assert result[0] is JobState.RUNNING
    pid = tracker.job_info(job).pid
    assert proc_state(pid) in ("S", "R")
    other = tracker.add_job(sleeper("0"))
    assert int(other) > int(job)


def test_job_state_of_ended_jobs_and_its_sub_state(tracker):
    """job_state -> (JobState.DONE, ...) after exit 0, (JobState.FAILED, sub_state) after exit 3."""
    done = tracker.add_job(shell("exit 0"))
    failed = tracker.add_job(shell("exit 3"))
    tracker.wait(done, timeout=10)
    tracker.wait(failed, timeout=10)
    assert tracker.job_state(done)[0] is JobState.DONE
    failed_state, sub_state = tracker.job_state(failed)
    assert failed_state is JobState.FAILED
    assert sub_state is None or isinstance(sub_state, str)
    assert tracker.job_info(failed).exit_status == 3


def test_job_info_has_every_field_with_datetimes_for_the_times(tracker, tmp_path):
    """job_info returns a JobInfo with the README "JobInfo" fields; the times are aware datetimes."""
    job = tracker.add_job(shell("echo hi", job_name="greeter", working_directory=str(tmp_path),
                                job_environment={"API_VAR": "1"}))
    tracker.wait(job, timeout=10)
    info = tracker.job_info(job)
    for field in ("id", "array_id", "task_id", "job_name", "state", "sub_state", "exit_status",
                  "terminating_signal", "pid", "allocated_machines", "submission_machine",
                  "job_owner", "uid", "submission_time", "dispatch_time", "finish_time",
                  "wallclock_time", "extension_list", "job_template"):
        assert hasattr(info, field), field
    assert info.id == job and info.array_id is None and info.task_id is None
    assert info.job_name == "greeter"
    assert info.state is JobState.DONE and info.exit_status == 0
    assert info.terminating_signal is None
    assert info.uid == os.getuid() and info.submission_machine == os.uname().nodename
    for moment in (info.submission_time, info.dispatch_time, info.finish_time):
        assert isinstance(moment, datetime) and moment.tzinfo is not None
    assert info.submission_time <= info.dispatch_time <= info.finish_time
    assert abs(info.finish_time - datetime.now(timezone.utc)).total_seconds() < 60
    assert isinstance(info.wallclock_time, float) and info.wallclock_time >= 0
    assert {"ru_maxrss", "user_time_ms", "system_time_ms"} <= set(info.extension_list)
    assert info.job_template.remote_command == "/bin/sh"
    assert info.job_template.args == ["-c", "echo hi"]
    assert info.job_template.job_environment == {"API_VAR": "1"}


def test_slots_without_a_queue_are_refused_and_nothing_runs(tracker, state_dir):
    """Slots are a queue's (README, "Scheduling"): min_slots with no queue_name would run
    the job on no slot at all, so it is refused, as ``submit --slots`` without -q is."""
    with pytest.raises(TrackerError, match="min_slots counts slots of a queue"):
        tracker.add_job(JobTemplate("true", min_slots=2))
    assert tracker.list_jobs() == [] and not os.path.exists(os.path.join(state_dir, "jobs"))


def test_add_array_job_with_step_gives_the_right_tasks(tracker):
    """add_array_job(begin=1, end=7, step=3) -> tasks N.1, N.4, N.7, each with TASK_ID set."""
    array = tracker.add_array_job(shell('test "$TASK_ID" = "${JOB_ID#*.}"'), begin=1, end=7,
                                  step=3)
    assert tracker.list_array_jobs(array) == [f"{array}.1", f"{array}.4", f"{array}.7"]
    tracker.wait(array, timeout=20)
    infos = [tracker.job_info(task) for task in tracker.list_array_jobs(array)]
    assert [i.task_id for i in infos] == [1, 4, 7]
    assert all(i.array_id == array for i in infos)
    assert all(i.state is JobState.DONE for i in infos), [(i.id, i.sub_state) for i in infos]
    assert tracker.job_state(array)[0] is JobState.DONE


def test_add_array_job_max_parallel_bounds_the_running_tasks(tracker):
    """max_parallel=2: never more than 2 tasks Running, the rest Queued, all end Done."""
    array = tracker.add_array_job(sleeper("0.3"), begin=0, end=4, max_parallel=2)
    tasks = tracker.list_array_jobs(array)
    assert tasks == [f"{array}.{i}" for i in range(5)]
    seen_queued = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Read the later tasks first: a task read Running has started, so an
        # earlier task read Running after it had not ended by then, and the
        # two ran together. In index order, tasks 2 and 3 could be read
        # Running, then end, and task 4 be read Running as it runs alone.
        states = [state(tracker, task) for task in reversed(tasks)]
        assert states.count(JobState.RUNNING) <= 2, states
        seen_queued |= JobState.QUEUED in states
        if all(s.ended for s in states):
            break
        time.sleep(0.02)
    assert seen_queued
    assert all(state(tracker, task) is JobState.DONE for task in tasks)


def test_list_jobs_lists_single_jobs_and_arrays_not_tasks(tracker):
    """list_jobs: the IDs of single jobs and arrays; list_array_jobs the N.I of an array."""
    single = tracker.add_job(sleeper("0"))
    array = tracker.add_array_job(sleeper("0"), begin=2, end=3)
    assert sorted(tracker.list_jobs(), key=int) == [single, array]
    assert tracker.list_array_jobs(array) == [f"{array}.2", f"{array}.3"]


def test_job_control_suspend_resume_terminate(tracker):
    """suspend stops the process (T in /proc), resume runs it again, terminate kills it: Failed."""
    job = tracker.add_job(sleeper())
    pid = tracker.job_info(job).pid
    tracker.job_control(job, "suspend")
    assert state(tracker, job) is JobState.SUSPENDED
    assert proc_state(pid) == "T"
    tracker.job_control(job, "resume")
    assert state(tracker, job) is JobState.RUNNING
    assert proc_state(pid) in ("S", "R")
    tracker.job_control(job, "terminate")
    tracker.wait(job, timeout=10)
    info = tracker.job_info(job)
    assert info.state is JobState.FAILED
    assert info.terminating_signal == "SIGKILL"
    poll(lambda: proc_state(pid) is None, message="job process gone")


@pytest.mark.parametrize("action", ["hold", "release"])
def test_hold_and_release_raise_a_tracker_error(tracker, action):
    """hold/release: a TrackerError subclass is raised and the job is untouched."""
    job = tracker.add_job(sleeper())
    with pytest.raises(TrackerError) as caught:
        tracker.job_control(job, action)
    assert isinstance(caught.value, TrackerError)
    assert state(tracker, job) is JobState.RUNNING


def test_control_in_a_wrong_state_raises_a_tracker_error(tracker):
    """resume of a Running job and suspend of an ended job raise TrackerError."""
    running = tracker.add_job(sleeper())
    with pytest.raises(TrackerError):
        tracker.job_control(running, "resume")
    ended = tracker.add_job(sleeper("0"))
    tracker.wait(ended, timeout=10)
    with pytest.raises(TrackerError):
        tracker.job_control(ended, "suspend")
    assert state(tracker, running) is JobState.RUNNING


def test_wait_with_timeout_raises_a_tracker_error(tracker):
    """wait(timeout=0.2) on a long job raises a TrackerError soon; the job keeps running."""
    job = tracker.add_job(sleeper())
    started = time.monotonic()
    with pytest.raises(TrackerError):
        tracker.wait(job, timeout=0.2)
    assert time.monotonic() - started < 3
    assert state(tracker, job) is JobState.RUNNING


def test_wait_for_other_states(tracker):
    """wait(states=(SUSPENDED,)) returns once a job stopped from outside reads Suspended."""
    job = tracker.add_job(sleeper())
    pid = tracker.job_info(job).pid
    os.kill(pid, signal.SIGSTOP)
    tracker.wait(job, timeout=10, states=(JobState.SUSPENDED,))
    assert state(tracker, job) is JobState.SUSPENDED
    os.kill(pid, signal.SIGCONT)
    tracker.wait(job, timeout=10, states=(JobState.RUNNING,))
    assert state(tracker, job) is JobState.RUNNING


def test_delete_job_removes_an_ended_job_and_refuses_a_running_one(tracker):
    """delete_job: an ended job disappears; a running one raises TrackerError and stays."""
    running = tracker.add_job(sleeper())
    ended = tracker.add_job(sleeper("0"))
    tracker.wait(ended, timeout=10)
    tracker.delete_job(ended)
    assert ended not in tracker.list_jobs()
    with pytest.raises(TrackerError):
        tracker.job_info(ended)
    with pytest.raises(TrackerError):
        tracker.delete_job(running)
    assert running in tracker.list_jobs()
    assert state(tracker, running) is JobState.RUNNING


@pytest.mark.parametrize("call", [
    lambda t: t.job_state("999"),
    lambda t: t.job_info("999"),
    lambda t: t.job_control("999", "suspend"),
    lambda t: t.job_control("999", "terminate"),
    lambda t: t.wait("999", timeout=1),
    lambda t: t.delete_job("999"),
    lambda t: t.list_array_jobs("999"),
    lambda t: t.job_info("abc"),
], ids=["job_state", "job_info", "suspend", "terminate", "wait", "delete_job",
        "list_array_jobs", "malformed"])
def test_unknown_job_ids_raise_tracker_errors(tracker, call):
    """Every method raises a TrackerError (not KeyError, OSError...) for an unknown or bad ID."""
    tracker.add_job(sleeper("0"))
    with pytest.raises(TrackerError):
        call(tracker)


def test_jobtracker_with_explicit_state_dir_is_separate(tracker, tmp_path):
    """JobTracker(state_dir=...) keeps its own private DB, apart from $OSTRACKER_STATE_DIR."""
    other_dir = str(tmp_path / "explicit")
    try:
        other = JobTracker(state_dir=other_dir)
        job = other.add_job(shell("exit 0"))
        other.wait(job, timeout=10)
        assert other.job_state(job)[0] is JobState.DONE
        assert other.list_jobs() == [job]
        assert tracker.list_jobs() == []
        assert stat.S_IMODE(os.stat(other_dir).st_mode) == 0o700
    finally:
        cleanup(other_dir)


def test_ended_as_says_how_the_last_job_submitted_here_ended(tracker):
    """ended_as: the reaper's word on the job this tracker submitted last (an array: its
    state only); None for any other job, and for one asked about twice."""
    first = tracker.add_job(shell("exit 3"))
    array = tracker.add_array_job(shell('test "$TASK_ID" != 2'), begin=1, end=3)
    assert tracker.ended_as(first) is None  # not the last: its pipe was closed
    assert tuple(tracker.ended_as(array)) == (JobState.FAILED, None, None)
    assert tracker.ended_as(array) is None
    last = tracker.add_job(shell("kill -TERM $$"))
    assert tuple(tracker.ended_as(last)) == (JobState.FAILED, None, "SIGTERM")
    assert tracker.job_info(last).state is JobState.FAILED  # its records say the same
    assert tracker.wait(first, timeout=20)[0].exit_status == 3
