"""The DRMAA2 session layer (``ostracker.drmaa2``) on every backend of the registry: the
drmaa2os simpletracker scenarios, translated to this API."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ostracker.core import registry

from conftest import SLURM_TIMEOUT, cancel_slurm_jobs, slurm_problem

REACHABLE = {"local": lambda: None, "slurm": slurm_problem}


@pytest.fixture(params=registry.names())
def manager(request, state_dir):
    from ostracker.drmaa2 import SessionManager

    reason = REACHABLE[request.param]()
    if reason:
        pytest.skip(f"{request.param} not reachable: {reason}")
    sm = SessionManager(state_dir=state_dir, backend=request.param)
    sm.timeout = SLURM_TIMEOUT if request.param == "slurm" else 10.0
    sm.backend = request.param
    yield sm
    cancel_slurm_jobs(state_dir)


def test_a_session_reopened_from_another_process_sees_earlier_jobs(manager, state_dir):
    from ostracker.drmaa2 import JobTemplate

    js = manager.create_job_session("nightly")
    job = js.run_job(JobTemplate("true"))
    other = manager.create_job_session("other")
    other.run_job(JobTemplate("true"))
    code = ("import sys; from ostracker.drmaa2 import SessionManager; "
            f"js = SessionManager(state_dir=sys.argv[1], backend={manager.backend!r})"
            ".open_job_session('nightly'); print(' '.join(j.id for j in js.get_jobs()))")
    seen = subprocess.run([sys.executable, "-c", code, state_dir], capture_output=True,
                          text=True, check=True).stdout.split()
    assert seen == [job.id]
    assert manager.get_job_session_names() == ["nightly", "other"]
    job.wait_terminated(manager.timeout)


def test_max_parallel_1_runs_tasks_one_after_another(manager, tmp_path):
    from ostracker.drmaa2 import JobTemplate

    js = manager.create_job_session("bulk")
    body = f'date +%s%N >> {tmp_path}/$TASK_ID; sleep 0.3; date +%s%N >> {tmp_path}/$TASK_ID'
    array = js.run_bulk_jobs(JobTemplate("sh", ["-c", body]), 1, 3, 1, max_parallel=1)
    assert [job.id for job in array.get_jobs()] == [f"{array.id}.{i}" for i in (1, 2, 3)]
    array.wait_terminated(manager.timeout * 3)
    spans = sorted(tuple(map(int, (tmp_path / str(i)).read_text().split())) for i in (1, 2, 3))
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), spans


def test_terminating_a_queued_task_fails_it_and_it_never_starts(manager, tmp_path):
    from ostracker.drmaa2 import JobState, JobTemplate

    js = manager.create_job_session("cancel")
    body = f"touch {tmp_path}/$TASK_ID; sleep 30"
    array = js.run_bulk_jobs(JobTemplate("sh", ["-c", body]), 1, 2, 1, max_parallel=1)
    first, second = array.get_jobs()
    first.wait_started(manager.timeout)
    second.terminate()
    assert second.get_state()[0] is JobState.FAILED
    first.terminate()
    array.wait_terminated(manager.timeout)
    assert not (tmp_path / "2").exists()


def test_wait_with_timeout_0_returns_at_once(manager):
    from ostracker.drmaa2 import JobTemplate, WaitTimeout

    js = manager.create_job_session("zero")
    job = js.run_job(JobTemplate("sleep", ["30"]))
    job.wait_started(manager.timeout)
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        job.wait_terminated(timeout=0)
    with pytest.raises(WaitTimeout):
        js.wait_any_terminated([job], timeout=0)
    assert time.monotonic() - started < 5
    assert job.wait_started(timeout=0) is job  # reached already: at once, no error
    job.terminate()


def test_times_stay_the_same_across_calls(manager):
    from ostracker.drmaa2 import JobTemplate

    js = manager.create_job_session("times")
    job = js.run_job(JobTemplate("true"))
    job.wait_terminated(manager.timeout)
    first, again = job.get_info(), job.get_info()
    assert first.submission_time == again.submission_time is not None
    assert first.dispatch_time == again.dispatch_time is not None


def test_get_jobs_matches_as_drmaa2os_does(manager):
    from ostracker.drmaa2 import JobInfo, JobState, JobTemplate

    js = manager.create_job_session("filter")
    ok = js.run_job(JobTemplate("true")).wait_terminated(manager.timeout)
    bad = js.run_job(JobTemplate("sh", ["-c", "exit 3"])).wait_terminated(manager.timeout)
    assert js.get_jobs({"state": JobState.DONE}) == [ok]
    assert js.get_jobs({"exit_status": 3}) == [bad]
    assert js.get_jobs({"id": ok.id}) == [ok]
    info = bad.get_info()
    assert js.get_jobs({"submission_time": info.submission_time}) == [bad]  # a lower bound
    assert js.get_jobs({"allocated_machines": info.allocated_machines}) == [ok, bad] or \
        manager.backend == "slurm"
    assert js.get_jobs(JobInfo(**{**_blank(), "exit_status": 0})) == [ok]
    assert len(js.get_jobs()) == 2
    ok.reap()
    assert js.get_jobs() == [bad]


def test_sessions_are_created_once_opened_if_there_and_destroyed(manager):
    from ostracker.drmaa2 import Capability, InvalidArgument, SessionManager

    manager.create_job_session("a")
    with pytest.raises(InvalidArgument):
        manager.create_job_session("a")
    with pytest.raises(InvalidArgument):
        manager.open_job_session("b")
    assert manager.open_job_session("a").get_session_name() == "a"
    manager.destroy_job_session("a")
    assert manager.get_job_session_names() == []
    assert SessionManager.supports(Capability.BULK_JOBS_MAXPARALLEL)
    assert not SessionManager.supports(Capability.CALLBACK)


def _blank() -> dict:
    """Every JobInfo field unset (a filter sets some)."""
    fields = ("id", "array_id", "task_id", "job_name", "state", "sub_state", "exit_status",
              "terminating_signal", "pid", "allocated_machines", "submission_machine",
              "job_owner", "uid", "submission_time_text", "dispatch_time_text",
              "finish_time_text", "wallclock_seconds", "extension_list", "job_template")
    return dict.fromkeys(fields)


def test_submit_session_puts_a_cli_job_in_the_session(run, state_dir):
    from ostracker.drmaa2 import SessionManager

    js = SessionManager(state_dir=state_dir).create_job_session("cli")
    job_id = run("submit", "--session", "cli", "--wait", "--", "true").stdout.strip()
    assert [job.id for job in js.get_jobs()] == [job_id]
    assert os.path.isfile(os.path.join(state_dir, "sessions", "cli"))
