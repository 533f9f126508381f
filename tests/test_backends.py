"""The same scenarios against both backends, through the real CLI.

Every test here takes the ``backend`` fixture, parametrized ``local`` and
``slurm``: it sets OSTRACKER_BACKEND for the CLI and hands the test a small
helper around conftest's ``run``.  The Slurm runs are skipped, with the reason
shown, when no cluster answers (``sbatch`` on PATH and ``sinfo`` reporting a
usable node, checked once per session).  At teardown every Slurm job that the
test's state directory recorded is cancelled, and the test waits until none of
them holds a CPU any more, so that no test starves the next one.

Nothing sleeps and asserts: every "eventually" is a ``poll`` with a timeout
(longer for Slurm, whose scheduler takes a moment to start a job).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from ostracker.core import registry

from conftest import CLI, SLURM_TIMEOUT, cancel_slurm_jobs, poll, proc_state, slurm_problem

LOCAL_TIMEOUT = 10.0


# -- reachability and the backend fixture ---------------------------------------------------

class Backend:
    """The CLI with one backend chosen, and the few reads every scenario needs."""

    def __init__(self, name: str, run, state_dir: str):
        self.name = name
        self.run = run
        self.state_dir = state_dir
        self.timeout = SLURM_TIMEOUT if name == "slurm" else LOCAL_TIMEOUT
        self.other = "local" if name == "slurm" else "slurm"

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)

    def submit(self, *args, **kwargs) -> str:
        result = self.run("submit", *args, **kwargs)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        assert job_id.isdigit(), result.stdout
        return job_id

    def info(self, job_id: str) -> dict:
        result = self.run("info", job_id, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status(self, *job_ids: str) -> list[dict]:
        result = self.run("status", *job_ids, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def states(self, *job_ids: str) -> dict[str, str]:
        return {record["id"]: record["state"] for record in self.status(*job_ids)}

    def state(self, job_id: str) -> str:
        return self.info(job_id)["state"]

    def await_states(self, expected: dict[str, str], message: str | None = None):
        """Poll until each task/job ID in ``expected`` shows its state."""
        ids = sorted({key.split(".")[0] for key in expected})

        def reached():
            current = self.states(*ids)
            return all(current.get(key) == value for key, value in expected.items())
        poll(reached, timeout=self.timeout, interval=0.1,
             message=message or f"states {expected} (last: {self.states(*ids)})")


# Why a backend cannot be used here (None: it can), for each backend of the registry.
REACHABLE = {"local": lambda: None, "slurm": slurm_problem}


@pytest.fixture(params=registry.names())
def backend(request, monkeypatch, state_dir, run):
    """The CLI with OSTRACKER_BACKEND set; Slurm jobs cancelled at teardown."""
    name = request.param
    reason = REACHABLE[name]()
    if reason:
        pytest.skip(f"{name} not reachable: {reason}")
    monkeypatch.setenv("OSTRACKER_BACKEND", name)
    yield Backend(name, run, state_dir)
    cancel_slurm_jobs(state_dir)


def read(path) -> str:
    with open(path) as handle:
        return handle.read()


# -- 1. a single job ----------------------------------------------------------------------

AWKWARD_VALUE = 'a,b c "double" \'single\' $HOME $(x) `y` \\ two\nlines\tend'
AWKWARD_ARGS = ["two words", '"quoted"', "'single'", "*", "$HOME", "", "--wait", "-n"]
RECORDER = ('printf "%s" "$V" > env.txt; printf "%s\\n" "$@" > args.txt; '
            'printf "%s|%s\\n" "$JOB_ID" "${TASK_ID-unset}" > ids.txt; echo made > made.txt')


def test_single_job_runs_in_cwd_with_exact_env_and_args(backend, tmp_path, monkeypatch):
    """-C, -e and the words after -- reach the job byte for byte; it ends Done, wait exits 0."""
    # what the submitter has must not leak into the job's IDs
    monkeypatch.setenv("TASK_ID", "leaked-task")
    monkeypatch.setenv("JOB_ID", "leaked-job")
    job_id = backend.submit("-C", tmp_path, "-e", f"V={AWKWARD_VALUE}", "--",
                            "sh", "-c", RECORDER, "sh", *AWKWARD_ARGS)
    result = backend("wait", job_id, "--timeout", backend.timeout)
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / "made.txt") == "made\n"
    with open(tmp_path / "env.txt", "rb") as handle:
        assert handle.read() == AWKWARD_VALUE.encode()
    assert read(tmp_path / "args.txt") == "".join(f"{arg}\n" for arg in AWKWARD_ARGS)
    assert read(tmp_path / "ids.txt") == f"{job_id}|unset\n"
    record = backend.info(job_id)
    assert (record["id"], record["state"], record["exit_status"]) == (job_id, "Done", 0)
    assert record["job_template"]["working_directory"] == str(tmp_path)
    assert record["job_template"]["job_environment"] == {"V": AWKWARD_VALUE}
    if backend.name == "slurm":
        assert record["pid"] is None
        assert record["extension_list"]["slurm_job_id"].isdigit()
    else:
        assert isinstance(record["pid"], int) and record["pid"] > 0


def test_submit_wait_and_submit_json(backend, tmp_path):
    """submit --wait exits like wait (after the job's effect); submit --json gives the record."""
    result = backend("submit", "--wait", "-C", tmp_path, "--",
                     "sh", "-c", "echo waited > waited.txt; exit 0")
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / "waited.txt") == "waited\n"  # done before submit returned
    result = backend("submit", "--wait", "--", "sh", "-c", "exit 5")
    assert result.returncode == 5, result.stderr
    result = backend("submit", "--json", "-C", tmp_path, "--", "sh", "-c", "echo j > j.txt")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["id"].isdigit()
    assert record["state"] in ("Queued", "Running", "Done")
    assert record["job_template"]["remote_command"] == "sh"
    result = backend("wait", record["id"], "--timeout", backend.timeout)
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / "j.txt") == "j\n"
    assert backend.state(record["id"]) == "Done"


# -- 2. output --------------------------------------------------------------------------

def test_captured_stdout_and_stderr(backend):
    job_id = backend.submit("--", "sh", "-c", "echo to-out; echo to-err >&2; echo more-out")
    assert backend("wait", job_id, "--timeout", backend.timeout).returncode == 0
    result = backend("output", job_id)
    assert (result.returncode, result.stdout) == (0, "to-out\nmore-out\n"), result.stderr
    result = backend("output", job_id, "--stderr")
    assert (result.returncode, result.stdout) == (0, "to-err\n"), result.stderr


def test_array_output_path_names_the_ostracker_id(backend, tmp_path):
    """-o DIR/out-%j-%a.txt: the file of task N.3 is out-N.3-3.txt, with that task's output."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job_id = backend.submit("--array", "2-3", "-o", f"{out_dir}/out-%j-%a.txt", "--",
                            "sh", "-c", 'echo "task $TASK_ID of $JOB_ID"')
    assert backend("wait", job_id, "--timeout", backend.timeout).returncode == 0
    assert sorted(os.listdir(out_dir)) == [f"out-{job_id}.2-2.txt", f"out-{job_id}.3-3.txt"]
    assert read(out_dir / f"out-{job_id}.3-3.txt") == f"task 3 of {job_id}.3\n"
    result = backend("output", f"{job_id}.2")
    assert (result.returncode, result.stdout) == (0, f"task 2 of {job_id}.2\n"), result.stderr


# -- 3. arrays ------------------------------------------------------------------------

TIMED_TASK = ('date +%s.%N > "start-$TASK_ID"; echo "$TASK_ID $JOB_ID" > "task-$TASK_ID"; '
              'sleep 1; date +%s.%N > "end-$TASK_ID"')


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = highest = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start
        running += change
        highest = max(highest, running)
    return highest


def test_array_with_step_runs_each_task_at_most_two_at_a_time(backend, tmp_path):
    job_id = backend.submit("--array", "1-7:2", "--max-parallel", "2", "-C", tmp_path, "--",
                            "sh", "-c", TIMED_TASK)
    if backend.name == "slurm":
        # the node has 2 CPUs anyway: check that the limit itself reached Slurm
        slurm_id = backend.info(f"{job_id}.1")["extension_list"]["slurm_job_id"]
        shown = subprocess.run(["scontrol", "show", "job", slurm_id.split("_")[0]],
                               capture_output=True, text=True, timeout=30).stdout
        assert "ArrayTaskThrottle=2" in shown, shown
    result = backend("wait", job_id, "--timeout", 2 * backend.timeout)
    assert result.returncode == 0, result.stderr
    tasks = [1, 3, 5, 7]
    assert sorted(record["id"] for record in backend.status(job_id)) == \
        [f"{job_id}.{i}" for i in tasks]
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith("task-")) == \
        [f"task-{i}" for i in tasks]
    for i in tasks:
        assert read(tmp_path / f"task-{i}") == f"{i} {job_id}.{i}\n"
    intervals = [(float(read(tmp_path / f"start-{i}")), float(read(tmp_path / f"end-{i}")))
                 for i in tasks]
    assert max_overlap(intervals) <= 2, intervals
    assert all(state == "Done" for state in backend.states(job_id).values())


# -- 4. failures ----------------------------------------------------------------------

def test_exit_code_makes_the_job_failed_and_wait_passes_it_through(backend):
    job_id = backend.submit("--", "sh", "-c", "exit 3")
    result = backend("wait", job_id, "--timeout", backend.timeout)
    assert result.returncode == 3, result.stderr
    record = backend.info(job_id)
    assert (record["state"], record["exit_status"], record["terminating_signal"]) == \
        ("Failed", 3, None)


def test_array_with_one_failing_task_waits_to_1(backend):
    job_id = backend.submit("--array", "1-3", "--", "sh", "-c", '[ "$TASK_ID" != 2 ]')
    result = backend("wait", job_id, "--timeout", backend.timeout)
    assert result.returncode == 1, result.stderr
    records = {record["id"]: record for record in backend.status(job_id)}
    assert {key: (r["state"], r["exit_status"]) for key, r in records.items()} == {
        f"{job_id}.1": ("Done", 0), f"{job_id}.2": ("Failed", 1), f"{job_id}.3": ("Done", 0)}


# -- 5. suspend / resume / terminate --------------------------------------------------

def test_suspend_resume_terminate_reach_the_process(backend, tmp_path):
    pidfile = tmp_path / "pid"
    job_id = backend.submit("--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 100")
    poll(lambda: pidfile.exists() and read(pidfile).strip().isdigit(),
         timeout=backend.timeout, interval=0.05, message="the job's pidfile")
    pid = int(read(pidfile))
    poll(lambda: backend.state(job_id) == "Running", timeout=backend.timeout, interval=0.1,
         message="Running")
    poll(lambda: proc_state(pid) in ("S", "R"), timeout=5, message="the job sleeping")

    result = backend("suspend", job_id)
    assert result.returncode == 0, result.stderr
    assert backend.state(job_id) == "Suspended"
    poll(lambda: proc_state(pid) == "T", timeout=backend.timeout, interval=0.05,
         message=f"process {pid} stopped (T), last {proc_state(pid)}")

    result = backend("resume", job_id)
    assert result.returncode == 0, result.stderr
    assert backend.state(job_id) == "Running"
    poll(lambda: proc_state(pid) in ("S", "R"), timeout=backend.timeout, interval=0.05,
         message=f"process {pid} continued, last {proc_state(pid)}")

    result = backend("terminate", job_id)
    assert result.returncode == 0, result.stderr
    poll(lambda: backend.state(job_id) == "Failed", timeout=backend.timeout, interval=0.1,
         message="Failed after terminate")
    poll(lambda: proc_state(pid) in (None, "Z", "X"), timeout=backend.timeout, interval=0.05,
         message=f"process {pid} gone, last {proc_state(pid)}")

    result = backend("suspend", job_id)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"job {job_id} " in lines[0] and "Failed" in lines[0], lines[0]


# -- 6. hold / release ------------------------------------------------------------------

def test_hold_and_release(backend):
    array = backend.submit("--array", "1-3%1", "--", "sleep", "30")
    backend.await_states({f"{array}.1": "Running", f"{array}.2": "Queued",
                          f"{array}.3": "Queued"})
    result = backend("hold", array)
    assert result.returncode == 0, result.stderr
    assert backend.states(array) == {f"{array}.1": "Running", f"{array}.2": "QueuedHeld",
                                     f"{array}.3": "QueuedHeld"}
    result = backend("release", array)
    assert result.returncode == 0, result.stderr
    assert backend.states(array) == {f"{array}.1": "Running", f"{array}.2": "Queued",
                                     f"{array}.3": "Queued"}

    result = backend("terminate", array)
    assert result.returncode == 0, result.stderr
    assert set(backend.states(array).values()) == {"Failed"}
    result = backend("wait", array, "--timeout", backend.timeout)
    assert result.returncode == 1, result.stderr

    single = backend.submit("--", "sleep", "30")
    backend.await_states({single: "Running"})
    result = backend("hold", single)
    assert result.returncode == 1
    assert f"job {single} " in result.stderr and "Running" in result.stderr, result.stderr
    assert backend.state(single) == "Running"


# -- 6b. scheduling: a queue, a dependency, a begin time -------------------------------------

def stamp(path) -> str:
    """A job body that writes its start and end (nanoseconds) to ``path``."""
    return f'date +%s%N > {path}; sleep 1; date +%s%N >> {path}'


def queue_of(backend) -> str:
    """A queue to submit to: a fresh 1-slot queue here, the cluster's first partition there."""
    if backend.name == "local":
        assert backend("queue", "one", "--slots", "1").returncode == 0
        return "one"
    listed = json.loads(backend("queue", "--json").stdout)
    assert listed and all(set(q) >= {"name", "slots", "in_use"} for q in listed), listed
    return listed[0]["name"]


def test_a_queue_and_a_dependency(backend, tmp_path):
    """-q puts the job in a queue (a partition on Slurm); afterok starts the second only
    after the first ended Done, afterok on a failed job never starts its job."""
    queue = queue_of(backend)
    first = backend.submit("-q", queue, "--", "sh", "-c", stamp(tmp_path / "first"))
    second = backend.submit("-q", queue, "-d", f"afterok:{first}", "--",
                            "sh", "-c", stamp(tmp_path / "second"))
    assert backend.info(second)["dependency"] == f"afterok:{first}"
    assert backend("wait", second, "--timeout", backend.timeout).returncode == 0
    first_end = int(read(tmp_path / "first").split()[1])
    second_start = int(read(tmp_path / "second").split()[0])
    assert second_start >= first_end
    assert backend.info(first)["queue_name"] == queue
    failed = backend.submit("--", "sh", "-c", "exit 3")
    never = backend.submit("-d", f"afterok:{failed}", "--", "touch", str(tmp_path / "never"))
    backend("wait", never, "--timeout", backend.timeout)
    record = backend.info(never)
    assert record["state"] == "Failed", record
    assert "dependency never satisfied" in record["sub_state"], record
    assert not (tmp_path / "never").exists()


def test_begin_waits_queued_then_runs(backend, tmp_path):
    from datetime import datetime

    job_id = backend.submit("--begin", "now+3", "--", "sh", "-c", stamp(tmp_path / "begun"))
    record = backend.info(job_id)
    assert record["state"] == "Queued", record
    begin = datetime.fromisoformat(record["job_template"]["start_time"]).timestamp()
    if backend.name == "slurm":  # its scheduler looks at begin times every 30 s or so,
        poll(lambda: time.time() > begin + 0.5, timeout=10, message="the begin time")
        backend.submit("--", "true")  # and at once when a job comes in
    result = backend("wait", job_id, "--timeout", backend.timeout,
                     timeout=backend.timeout + 30)
    assert result.returncode == 0, result.stderr
    started = int(read(tmp_path / "begun").split()[0]) / 1e9
    assert started >= begin - 1  # Slurm's whole seconds


# -- 7. wait --------------------------------------------------------------------------

def test_wait_timeout_leaves_the_job_running(backend):
    job_id = backend.submit("--", "sleep", "30")
    backend.await_states({job_id: "Running"})
    started = time.monotonic()
    result = backend("wait", job_id, "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert result.returncode == 124, result.stderr
    assert 0.5 <= elapsed < 10, elapsed
    assert backend.state(job_id) == "Running"


def test_wait_any_returns_when_the_first_job_ends(backend, tmp_path):
    gate = tmp_path / "go"
    quick = backend.submit("--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    slow = backend.submit("--", "sleep", "30")
    # neither can end before the gate opens (slow may still be queued: that is fine)
    waiter = subprocess.Popen([*CLI, "wait", "--any", "--json", "--timeout",
                               str(2 * backend.timeout), slow, quick],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        backend.await_states({quick: "Running"})
        assert waiter.poll() is None, waiter.communicate()  # returned before anything ended
        gate.touch()
        out, err = waiter.communicate(timeout=2 * backend.timeout + 5)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, err
    ended = json.loads(out)
    ended = ended if isinstance(ended, list) else [ended]
    assert [record["id"] for record in ended] == [quick]
    states = backend.states(quick, slow)
    assert states[quick] == "Done" and states[slow] in ("Queued", "Running"), states


# -- 8. delete ------------------------------------------------------------------------

def test_delete_only_after_the_end_and_the_captured_output_goes(backend, tmp_path):
    gate = tmp_path / "go"
    job_id = backend.submit("--", "sh", "-c",
                            f"echo captured; while [ ! -e {gate} ]; do sleep 0.05; done")
    captured = os.path.join(backend.state_dir, "jobs", job_id, "stdout")
    poll(lambda: os.path.exists(captured) and read(captured) == "captured\n",
         timeout=backend.timeout, interval=0.05, message="the captured output")
    result = backend("delete", job_id)
    assert result.returncode == 1
    assert f"job {job_id} " in result.stderr and "Running" in result.stderr, result.stderr
    assert [record["id"] for record in backend.status()] == [job_id]

    gate.touch()
    assert backend("wait", job_id, "--timeout", backend.timeout).returncode == 0
    result = backend("delete", job_id)
    assert result.returncode == 0, result.stderr
    assert backend("status", job_id).returncode == 1
    assert backend("output", job_id).returncode == 1
    assert not os.path.exists(captured)
    assert backend.status() == []


def test_delete_finished_removes_only_ended_jobs(backend):
    ended = backend.submit("--", "true")
    failed = backend.submit("--", "false")
    running = backend.submit("--", "sleep", "30")  # queued or running: not ended either way
    assert backend("wait", ended, failed, "--timeout", backend.timeout).returncode == 1
    result = backend("delete", "--finished")
    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["state"] in ("Queued", "Running")) for r in backend.status()] == \
        [(running, True)]
    assert backend("status", ended).returncode == 1
    assert backend("status", failed).returncode == 1


# -- 9. the backends share a state directory, not their jobs ---------------------------

def test_each_backend_lists_only_its_own_jobs(backend, tmp_path):
    if backend.other == "slurm" and slurm_problem():
        pytest.skip(f"Slurm not reachable: {slurm_problem()} (needed for the other backend)")
    single = backend.submit("--", "true")
    array = backend.submit("--array", "1-2", "--", "true")
    result = backend("--backend", backend.other, "submit", "-C", tmp_path, "--",
                     "sh", "-c", "echo other > other.txt")
    assert result.returncode == 0, result.stderr
    other = result.stdout.strip()
    assert other not in (single, array)
    assert backend("wait", single, array, "--timeout", backend.timeout).returncode == 0
    result = backend("--backend", backend.other, "wait", other, "--timeout", SLURM_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / "other.txt") == "other\n"  # it ran, with the other backend

    assert sorted(record["id"] for record in backend.status()) == \
        sorted([single, f"{array}.1", f"{array}.2"])
    for command in (["info", other], ["status", other], ["wait", other]):
        result = backend(*command)
        assert result.returncode == 1, (command, result.stdout)
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert re.search(rf"\b{other}\b", message) and f"{backend.other} job" in message, message
    # nor does delete --finished of this backend touch the other one's ended job
    assert backend("delete", "--finished").returncode == 0
    assert backend.status() == []
    result = backend("--backend", backend.other, "info", other, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "Done"
