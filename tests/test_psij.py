"""The PSI/J executor (``ostracker.psij``) through the real psij package, on every backend
of the registry: found by name as psij finds executors, real jobs, real effects."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from ostracker.core import registry
from ostracker.core.errors import InvalidState
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


# -- ended, deleted and unknown jobs; slots ------------------------------------------------

def _until(path, code=0, **spec):
    """A job that runs until ``path`` exists, then exits ``code``."""
    return _job("/bin/sh", "-c", f"while [ ! -e {path} ]; do sleep 0.05; done; exit {code}",
                **spec)


def _ostracker_logged(caplog) -> list:
    """What ostracker logged during the test (the watcher logs a round that failed)."""
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("ostracker")]


def test_cancel_of_a_job_that_has_ended_keeps_its_own_end(executor, state_dir, tmp_path):
    """PSI/J: a job may end before its cancel reaches the executor; it then never becomes
    CANCELED.  The jobs end here while this thread holds the executor's status lock, so
    that its watcher cannot report the end first: ``cancel`` itself finds them ended, and
    must raise nothing, report each end as it was (exit 0 COMPLETED, exit 3 FAILED with
    exit_code 3) before it returns, and leave ostracker's record as it was.  A second
    cancel, straight to the executor (psij's Job.cancel stops at a final state), neither."""
    from psij import JobState

    tracker = _tracker(executor, state_dir)
    final = {0: JobState.COMPLETED, 3: JobState.FAILED}
    jobs = {code: _until(tmp_path / f"go{code}", code) for code in final}
    seen = {code: _recorded(job) for code, job in jobs.items()}
    for job in jobs.values():
        executor.submit(job)
        job.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE])
    with executor._status_lock:  # an RLock: the watcher's reports wait, this thread's do not
        for code, job in jobs.items():
            (tmp_path / f"go{code}").touch()
            ended = tracker.wait(job.native_id, timeout=executor.timeout.total_seconds())[0]
            assert job.status.state == JobState.ACTIVE  # the executor has not seen the end
            job.cancel()
            assert (job.status.state, job.status.exit_code) == (final[code], code)
            executor.cancel(job)
            assert job.status.state == final[code]
            now = tracker.job_info(job.native_id)
            assert (now.state, now.sub_state, now.exit_status) == \
                (ended.state, ended.sub_state, code)
    for code in final:
        assert seen[code] == [JobState.QUEUED, JobState.ACTIVE, final[code]]


def test_a_watched_job_deleted_underneath_fails_once_and_the_watcher_ends(
        executor, state_dir, tmp_path, caplog):
    """``ostracker delete`` refuses a job that has not ended; one deleted after its end, before
    the watcher saw it, can never be read again.  The watcher must report it FAILED once,
    saying why, report the other jobs as before, and end with its last job rather than
    look for the deleted one forever.  It is kept from seeing the end by another job's
    callback, which it calls from its own thread, waiting until the job is deleted."""
    from psij import JobState

    gone, other = _until(tmp_path / "go"), _until(tmp_path / "go-other")
    seen = _recorded(gone)
    in_callback, go_on, watcher = threading.Event(), threading.Event(), []

    def hold_the_watcher(_, status):
        if status.state.final:
            watcher.append(threading.current_thread())
            in_callback.set()
            go_on.wait(executor.timeout.total_seconds())
    other.set_job_status_callback(hold_the_watcher)
    for job in (gone, other):
        executor.submit(job)
        job.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE])
    tracker = _tracker(executor, state_dir)  # (as ``delete`` with the executor's backend)
    with pytest.raises(InvalidState, match="only ended jobs can be deleted"):
        tracker.delete_job(gone.native_id)
    (tmp_path / "go-other").touch()
    assert in_callback.wait(executor.timeout.total_seconds())
    (tmp_path / "go").touch()
    tracker.wait(gone.native_id, timeout=executor.timeout.total_seconds())
    tracker.delete_job(gone.native_id)
    assert gone.status.state == JobState.ACTIVE
    go_on.set()
    status = gone.wait(timeout=executor.timeout)
    assert status is not None and status.state == JobState.FAILED
    assert status.message == f"ostracker has no job {gone.native_id} any more (deleted?)"
    assert other.wait(timeout=executor.timeout).state == JobState.COMPLETED
    poll(lambda: not watcher[0].is_alive(), message="the watcher to end with its last job")
    assert seen == [JobState.QUEUED, JobState.ACTIVE, JobState.FAILED]
    assert _ostracker_logged(caplog) == []


def test_cancel_of_a_job_deleted_before_the_watcher_saw_it_reports_it_failed(
        executor, state_dir, tmp_path):
    """A job deleted after its end, before the watcher saw it: ``cancel`` raises nothing
    (it has ended: nothing to cancel) and reports it FAILED, as the watcher would have,
    once; never CANCELED."""
    from psij import JobState

    tracker = _tracker(executor, state_dir)
    job = _until(tmp_path / "go")
    seen = _recorded(job)
    executor.submit(job)
    job.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE])
    with executor._status_lock:  # the watcher's reports wait, this thread's do not
        (tmp_path / "go").touch()
        tracker.wait(job.native_id, timeout=executor.timeout.total_seconds())
        tracker.delete_job(job.native_id)
        assert job.status.state == JobState.ACTIVE
        job.cancel()
        assert job.status.state == JobState.FAILED
        assert job.status.message == f"ostracker has no job {job.native_id} any more (deleted?)"
    assert job.wait(timeout=executor.timeout).state == JobState.FAILED
    assert seen == [JobState.QUEUED, JobState.ACTIVE, JobState.FAILED]


def test_a_running_jobs_end_is_seen_at_once_after_another_job_ended(executor, state_dir,
                                                                    tmp_path):
    """OstrackerExecutorConfig: "the end of a running local job is seen at once, through its
    pidfd", however long ``poll_interval`` is.  So too after a round in which another
    watched job ended (or was found deleted): that one is done with, and must not turn the
    watcher to polling every ``poll_interval`` s (60 here)."""
    import psij
    from psij import JobState

    from ostracker.psij import OstrackerExecutorConfig

    if executor.backend != "local":
        pytest.skip("only the local backend waits on pidfds")
    slow = psij.JobExecutor.get_instance("ostracker", config=OstrackerExecutorConfig(
        "local", state_dir, poll_interval=60))
    first, second = _until(tmp_path / "first"), _until(tmp_path / "second")
    for job in (first, second):
        slow.submit(job)
    (tmp_path / "first").touch()
    assert first.wait(timeout=executor.timeout).state == JobState.COMPLETED
    (tmp_path / "second").touch()
    status = second.wait(timeout=executor.timeout)
    assert status is not None, "the end was not seen within 10 s (poll_interval is 60 s)"


def test_a_job_submitted_while_the_watcher_waits_on_running_jobs_is_seen_soon(
        executor, state_dir, tmp_path):
    """The watcher waits in the kernel on the running jobs, for up to ``poll_interval`` s
    (60 here); a job submitted meanwhile is looked at within ``WAKE_WITHIN`` s, not once
    that wait is over."""
    import psij
    from psij import JobState

    from ostracker.psij import OstrackerExecutorConfig

    if executor.backend != "local":
        pytest.skip("only the local backend waits on pidfds")
    slow = psij.JobExecutor.get_instance("ostracker", config=OstrackerExecutorConfig(
        "local", state_dir, poll_interval=60))
    running, quick = _until(tmp_path / "go"), _job("/bin/true")
    slow.submit(running)
    running.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE])
    slow.submit(quick)
    status = quick.wait(timeout=executor.timeout)
    assert status is not None and status.state == JobState.COMPLETED
    (tmp_path / "go").touch()
    assert running.wait(timeout=executor.timeout).state == JobState.COMPLETED


BAD_IDS = ("", "abc", "1.2.3", "0", "-1", " 1", "1\n", "\u0663", "1.0", "9" * 5000)


def test_attach_refuses_an_unknown_or_malformed_id_and_starts_nothing(executor, state_dir,
                                                                      caplog):
    """attach() takes an ID as the CLI does ("007" is job 7); anything else, or an ID of no
    job, is an InvalidJobException saying which, and leaves the Job NEW and free to be
    attached again.  Nothing is written (the state directory is not even created) and no
    thread is started, so none can fail later."""
    from psij import InvalidJobException, Job, JobState

    job, threads = Job(), set(threading.enumerate())
    for native_id in BAD_IDS + ("7", "007"):
        with pytest.raises(InvalidJobException) as caught:
            executor.attach(job, native_id)
        assert "bad job ID" in caught.value.message or "no such job" in caught.value.message
        assert (job.status.state, job.executor, job.native_id) == (JobState.NEW, None, None)
    assert "no such job: 7" in caught.value.message  # "007" was read as 7
    assert not os.path.exists(state_dir)
    assert set(threading.enumerate()) <= threads
    done = _job("/bin/true")
    executor.submit(done)
    assert done.wait(timeout=executor.timeout).state == JobState.COMPLETED
    executor.attach(job, "00" + done.native_id)  # the same Job, after all those refusals
    assert (job.native_id, job.status.state) == (done.native_id, JobState.COMPLETED)
    with pytest.raises(InvalidJobException, match="no such job"):
        executor.attach(Job(), str(int(done.native_id) + 1))
    assert executor.list() == [done.native_id]
    assert _ostracker_logged(caplog) == []


def test_attach_quotes_a_bad_id_briefly_on_one_line(executor):
    """ostracker quotes an ID cut to about 40 characters and escaped (``brief``, ``!r``): an
    error about a 5,000-digit ID is a line, not 5,000 digits, so attach's must be too."""
    from psij import InvalidJobException, Job

    for native_id in ("9" * 5000, "1\n2"):
        with pytest.raises(InvalidJobException) as caught:
            executor.attach(Job(), native_id)
        message = caught.value.message
        assert len(message) < 200 and "\n" not in message, f"{len(message)}: {message[:80]}"


def test_cpu_cores_per_process_are_slots_of_the_jobs_queue(executor, state_dir, tmp_path,
                                                           info):
    """resources.cpu_cores_per_process is ``submit --slots``: the job waits until that many
    slots of its queue are free, then holds them all (OSTRACKER_SLOTS, ``info``'s slots).
    With one of a 2-slot queue's slots taken, a 2-core job waits; once it is freed, the
    job runs on both."""
    from psij import JobAttributes, JobState, ResourceSpecV1

    if executor.backend != "local":
        pytest.skip("OSTRACKER_SLOTS and queues of slots are the local backend's")
    _tracker(executor, state_dir).set_queue("psij", 2)
    queue = JobAttributes(queue_name="psij")
    blocker = _until(tmp_path / "go", attributes=queue)
    executor.submit(blocker)
    blocker.wait(timeout=executor.timeout, target_states=[JobState.ACTIVE])
    wide = _job("/bin/sh", "-c", 'echo "$OSTRACKER_SLOTS"', attributes=queue,
                stdout_path=tmp_path / "slots", resources=ResourceSpecV1(
                    cpu_cores_per_process=2, node_count=1, processes_per_node=1))
    executor.submit(wide)
    waiting = info(wide.native_id)
    assert waiting["job_template"]["min_slots"] == 2
    assert waiting["sub_state"].startswith("waiting for 2 slots of queue psij"), waiting
    assert wide.status.state == JobState.QUEUED
    (tmp_path / "go").touch()
    assert wide.wait(timeout=executor.timeout).state == JobState.COMPLETED
    assert (tmp_path / "slots").read_text() == "0 1\n"
    assert info(wide.native_id)["slots"] == [0, 1]


def test_more_than_one_process_or_node_and_cores_without_a_queue_are_refused(executor):
    """ostracker runs one process on one node, and a slot is always a queue's: a spec that
    asks for more, or for cores with no queue to count them in, is refused at submit
    (InvalidJobException, the job left NEW, nothing submitted), not run on less."""
    from psij import InvalidJobException, JobState, ResourceSpecV1

    one = "one process on one node"
    for resources, words in ((ResourceSpecV1(processes_per_node=2), one),
                             (ResourceSpecV1(node_count=2), one),
                             (ResourceSpecV1(process_count=2, cpu_cores_per_process=2), one),
                             (ResourceSpecV1(cpu_cores_per_process=2), "takes a queue")):
        job = _job("/bin/true", resources=resources)
        with pytest.raises(InvalidJobException) as caught:
            executor.submit(job)
        assert words in caught.value.message
        assert (job.status.state, job.native_id) == (JobState.NEW, None)
    assert executor.list() == []
