"""The PSI/J executor (``ostracker.psij``) through the real psij package, on every backend
of the registry: found by name as psij finds executors, real jobs, real effects."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest

from ostracker.core import registry
from ostracker.core.models import epoch

from conftest import SLURM_TIMEOUT, cancel_slurm_jobs, poll, proc_state, slurm_problem

REACHABLE = {"local": lambda: None, "slurm": slurm_problem}


@pytest.fixture(params=registry.names())
def executor(request, state_dir):
    """``get_instance("ostracker")`` over the test's state directory, one per backend.

    psij is imported here, not at collection: importing it loads every psij
    executor, and psij's local one sets a SIGCHLD handler in the process.
    """
    reason = REACHABLE[request.param]()
    if reason:
        pytest.skip(f"{request.param} not reachable: {reason}")
    psij = pytest.importorskip("psij", reason="psij-python is not installed "
                                              "(pip install '.[psij]')")
    from ostracker.psij import OstrackerExecutorConfig

    config = OstrackerExecutorConfig(backend=request.param, state_dir=state_dir)
    ex = psij.JobExecutor.get_instance("ostracker", config=config)
    ex.timeout = timedelta(seconds=SLURM_TIMEOUT if request.param == "slurm" else 10)
    yield ex
    cancel_slurm_jobs(state_dir)


def _job(*words, **spec):
    from psij import Job, JobSpec

    return Job(JobSpec(words[0], list(words[1:]), **spec))


def _recorded(job) -> list:
    """The states the job's callback is told of, in order (appended as they come)."""
    seen = []
    job.set_job_status_callback(lambda _, status: seen.append(status.state))
    return seen


def _tracker(executor, state_dir):
    return registry.open_tracker(executor.backend, state_dir)


def test_the_executor_is_found_by_name(executor):
    import psij

    assert "ostracker" in psij.JobExecutor.get_executor_names()
    assert type(psij.JobExecutor.get_instance("ostracker")).__name__ == "OstrackerExecutor"


def test_states_come_once_each_in_order_and_exit_0_completes(executor, state_dir):
    from psij import JobState

    job = _job("/bin/sh", "-c", "sleep 0.2")
    seen = _recorded(job)
    statuses = []
    job.set_job_status_callback(lambda _, status: (seen.append(status.state),
                                                   statuses.append(status)))
    on_executor = []
    executor.set_job_status_callback(lambda j, status: on_executor.append(status.state))
    executor.submit(job)
    assert job.native_id is not None and seen[0] == JobState.QUEUED
    status = job.wait(timeout=executor.timeout)
    assert status.state == JobState.COMPLETED and status.exit_code == 0
    wanted = [JobState.QUEUED, JobState.ACTIVE, JobState.COMPLETED]
    poll(lambda: len(seen) >= 3 and len(on_executor) >= 3, message="three callbacks")
    assert seen == on_executor == wanted
    # PSI/J itself fills in a state skipped over, and drops one said again: what only the
    # executor's reports carry shows that it said each of them, once.
    info = _tracker(executor, state_dir).job_info(job.native_id)
    assert statuses[0].metadata == {"nativeId": job.native_id}
    assert statuses[1].time == pytest.approx(epoch(info.dispatch_time_text), abs=1e-3)


def test_exit_3_fails_with_exit_code_3(executor):
    from psij import JobState

    job = _job("/bin/sh", "-c", "exit 3")
    executor.submit(job)
    status = job.wait(timeout=executor.timeout)
    assert status.state == JobState.FAILED
    assert status.exit_code == 3
    assert status.message


def test_cancel_ends_a_running_job_canceled_and_its_process_is_gone(executor, state_dir):
    from psij import JobState

    job = _job("/bin/sleep", "60")
    seen = _recorded(job)
    executor.submit(job)
    assert job.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE]).state == \
        JobState.ACTIVE
    pid = _tracker(executor, state_dir).job_info(job.native_id).pid
    if executor.backend == "local":
        assert proc_state(pid) is not None
    job.cancel()
    status = job.wait(timeout=executor.timeout)
    assert status.state == JobState.CANCELED, str(status)
    poll(lambda: len(seen) >= 3, message="three callbacks")
    assert seen == [JobState.QUEUED, JobState.ACTIVE, JobState.CANCELED]
    if executor.backend == "local":
        poll(lambda: proc_state(pid) is None, timeout=5, message=f"process {pid} to go")
    assert _tracker(executor, state_dir).job_info(job.native_id).state.ended


def test_wait_returns_once_active_and_none_after_a_timeout(executor, tmp_path):
    from psij import JobState

    job = _job("/bin/sh", "-c", f"while [ ! -e {tmp_path}/go ]; do sleep 0.05; done")
    executor.submit(job)
    assert job.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE]).state == \
        JobState.ACTIVE
    started = time.monotonic()
    assert job.wait(timeout=timedelta(seconds=0.3)) is None  # psij: None when timed out
    assert 0.25 <= time.monotonic() - started < 5
    (tmp_path / "go").touch()
    assert job.wait(timeout=executor.timeout).state == JobState.COMPLETED


def test_stdout_path_directory_and_environment_are_honoured(executor, tmp_path):
    from psij import JobState

    work = tmp_path / "work 100%"  # a space, and a % that must not become a code
    work.mkdir()
    out = work / "out%j.txt"
    job = _job("/bin/sh", "-c", 'pwd; echo "$FOO"; echo oops >&2', directory=work,
               environment={"FOO": "bar baz"}, stdout_path=out,
               stderr_path=work / "err.txt")
    executor.submit(job)
    assert job.wait(timeout=executor.timeout).state == JobState.COMPLETED
    assert out.read_text().splitlines() == [str(work), "bar baz"]
    assert (work / "err.txt").read_text() == "oops\n"


def test_duration_is_the_time_limit(executor, state_dir):
    from psij import JobAttributes, JobState

    job = _job("/bin/sleep", "60", attributes=JobAttributes(duration=timedelta(seconds=1.5)))
    executor.submit(job)
    info = _tracker(executor, state_dir).job_info(job.native_id)
    assert info.job_template.resource_limits == {"WALLCLOCK_TIME": 2}  # rounded up
    if executor.backend == "slurm":
        job.cancel()  # Slurm rounds it up to a minute and looks every 30 s: too slow here
        return
    started = time.monotonic()
    status = job.wait(timeout=executor.timeout)
    assert status.state == JobState.FAILED and "TIMEOUT" in status.message
    assert time.monotonic() - started < 5


def test_queue_name_is_the_jobs_queue(executor, state_dir):
    from psij import JobAttributes, JobState

    tracker = _tracker(executor, state_dir)
    if executor.backend == "local":
        queue = "psij"
        tracker.set_queue(queue, 1)
    else:
        partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True,
                                    text=True, check=True).stdout.split()
        queue = partitions[0].rstrip("*")
    job = _job("/bin/true", attributes=JobAttributes(queue_name=queue))
    seen = _recorded(job)
    executor.submit(job)
    assert tracker.job_info(job.native_id).job_template.queue_name == queue
    assert job.wait(timeout=executor.timeout).state == JobState.COMPLETED
    poll(lambda: len(seen) >= 3, message="three callbacks")
    assert seen == [JobState.QUEUED, JobState.ACTIVE, JobState.COMPLETED]


ATTACH = """
import sys, psij
from ostracker.psij import OstrackerExecutorConfig
state_dir, backend, native_id = sys.argv[1:]
ex = psij.JobExecutor.get_instance("ostracker",
                                   config=OstrackerExecutorConfig(backend, state_dir))
job = psij.Job()
seen = []
job.set_job_status_callback(lambda _, status: seen.append(str(status.state)))
ex.attach(job, native_id)
print(job.native_id, job.status.state, flush=True)
status = job.wait()
print(status.state, status.exit_code, ",".join(seen), flush=True)
"""


def test_attach_from_another_process_follows_the_job(executor, state_dir, tmp_path):
    from psij import JobState

    job = _job("/bin/sh", "-c", f"while [ ! -e {tmp_path}/go ]; do sleep 0.05; done")
    executor.submit(job)
    job.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE])
    child = subprocess.Popen([sys.executable, "-c", ATTACH, state_dir, executor.backend,
                              job.native_id], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == [job.native_id, "ACTIVE"]
        (tmp_path / "go").touch()
        out, _ = child.communicate(timeout=executor.timeout.total_seconds())
    finally:
        child.kill()
        child.wait()
    # What it saw when it attached, then the later change, through its callback.
    assert out.split() == ["COMPLETED", "0", "QUEUED,ACTIVE,COMPLETED"]
    assert child.returncode == 0


def test_list_has_every_job_of_the_state_directory(executor, state_dir):
    from ostracker.core.models import JobTemplate

    job = _job("/bin/true")
    executor.submit(job)
    other = _tracker(executor, state_dir).add_job(JobTemplate("true"))  # not through psij
    listed = executor.list()
    assert job.native_id in listed and other in listed


def test_custom_attributes_map_and_what_cannot_be_done_is_refused(executor, tmp_path):
    from psij import InvalidJobException, JobAttributes, JobState

    limits = JobAttributes(custom_attributes={"ostracker.limit.OPEN_FILES": 64,
                                              "slurm.constraint": "ignored by ostracker"})
    job = _job("/bin/sh", "-c", "ulimit -n", attributes=limits, stdout_path=tmp_path / "n")
    executor.submit(job)
    assert job.wait(timeout=executor.timeout).state == JobState.COMPLETED
    assert (tmp_path / "n").read_text().strip() == "64"
    for spec, words in (({"inherit_environment": False}, "inherit_environment"),
                        ({"attributes": JobAttributes(custom_attributes={"ostracker.nope": 1})},
                         "ostracker.nope"),
                        ({"attributes": JobAttributes(account="acct")}, "account")):
        refused = _job("/bin/true", **spec)
        with pytest.raises(InvalidJobException) as caught:
            executor.submit(refused)
        assert words in caught.value.message
        assert refused.status.state == JobState.NEW and refused.native_id is None


def test_custom_attributes_take_the_values_the_cli_options_take(executor, state_dir):
    """``ostracker.retries``, ``signal``, ``on_end`` and ``hold`` become the template's fields
    as ``--retries``, ``--signal``, ``--on-end`` and ``--hold`` make them; what those
    options refuse is refused, naming the attribute."""
    from psij import InvalidJobException, JobAttributes, JobState

    if executor.backend != "local":
        pytest.skip("--hold, --retries and --on-end are the local backend's")
    custom = {"ostracker.retries": "2", "ostracker.signal": "USR1@5",
              "ostracker.on_end": "true", "ostracker.hold": True}
    job = _job("/bin/true", attributes=JobAttributes(custom_attributes=custom))
    executor.submit(job)
    template = _tracker(executor, state_dir).job_info(job.native_id).job_template
    assert (template.retries, template.warning_signal, template.on_end,
            template.submit_as_hold) == (2, "SIGUSR1@5", "true", True)
    assert job.status.state == JobState.QUEUED  # held: it waits for release
    job.cancel()
    assert job.wait(timeout=executor.timeout).state == JobState.CANCELED
    for name, value in (("retries", "x"), ("on_end", " "), ("signal", "USR1@x")):
        refused = _job("/bin/true", attributes=JobAttributes(
            custom_attributes={f"ostracker.{name}": value}))
        with pytest.raises(InvalidJobException) as caught:
            executor.submit(refused)
        assert refused.native_id is None and (
            name != "on_end" or "ostracker.on_end cannot be empty" in caught.value.message)
