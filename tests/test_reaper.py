"""The reaper: detached, lean, hands the job a clean process, and writes one summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import CLI, poll, proc_state
from ostracker.local import proc


def environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return handle.read().split(b"\0")


def field(pid: int, name: str) -> str:
    """A line of /proc/PID/status, e.g. field(pid, "SigIgn")."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    raise KeyError(name)


def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def running(run, submit, *command, **kwargs):
    job_id = submit("--", *command, **kwargs)
    job = poll(lambda: (lambda j: j if j["state"] == "Running" else None)(
        json.loads(run("info", job_id, "--json").stdout)), message="Running")
    return job_id, job["pid"]


def test_job_leads_its_own_group_inside_the_reapers_detached_session(run, submit):
    """pgid == job pid; session == the reaper's, which is not ours (setsid)."""
    _, pid = running(run, submit, "sleep", "30")
    fields = stat_fields(pid)
    reaper, pgid, session = int(fields[1]), int(fields[2]), int(fields[3])
    assert pgid == pid
    # The parent is in the same session but another group: the job's group is not
    # orphaned, so Linux delivers SIGTSTP to it.
    assert session == os.getsid(reaper) and os.getpgid(reaper) != pgid
    assert session != os.getsid(0)
    reaper_cmdline = open(f"/proc/{reaper}/cmdline", "rb").read().split(b"\0")
    assert b"-I" in reaper_cmdline and b"-S" in reaper_cmdline  # the lean interpreter


@pytest.mark.parametrize("load", [
    "import ostracker.local.reaper",
    # a standby reaper (what ``submit`` starts ahead) loads all it will need, then reads
    # its socket: here a descriptor that is not open
    "import ostracker.local.standby as s\ntry: s.main(['999'])\nexcept OSError: pass",
], ids=["reaper", "standby"])
def test_reaper_imports_neither_click_nor_tabulate_nor_psutil(load):
    """The reaper loads light: no click, tabulate or psutil, nor typing (5 ms, and memory
    kept for the job's whole life)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(proc.__file__))))
    code = (f"import sys; sys.path.insert(0, sys.argv[1])\n{load}\n"
            "print(sorted(m for m in ('click', 'tabulate', 'psutil', 'platformdirs', 'typing') "
            "if m in sys.modules), 'ostracker.local.reaper' in sys.modules)")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code, package_parent],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] True"


def test_job_gets_default_signal_dispositions_even_from_an_ignoring_submitter(run, state_dir):
    """The SIG_IGN trap: a submitter ignoring SIGINT/SIGHUP does not pass that on."""
    def ignore():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    result = subprocess.run([*CLI, "submit", "--", "sleep", "30"], capture_output=True,
                            text=True, preexec_fn=ignore, check=True)
    job_id = result.stdout.strip()
    pid = json.loads(run("info", job_id, "--json").stdout)["pid"]
    # Signals 1-31 (glibc's posix_spawn itself leaves its internal 32 and 33 ignored).
    standard = (1 << 31) - 1
    assert int(field(pid, "SigIgn"), 16) & standard == 0
    assert int(field(pid, "SigBlk"), 16) & standard == 0


def test_job_inherits_no_descriptor_but_stdin_stdout_stderr(submit, run, tmp_path):
    """Only 0, 1 and 2 reach the job: not the reaper's lock, pipe or DB files."""
    out = tmp_path / "fds"
    code = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    job_id = submit("-o", out, "--", sys.executable, "-c", code)
    assert run("wait", job_id).returncode == 0
    assert json.loads(out.read_text()) == [0, 1, 2, 3]  # 3: listdir's own handle


def test_submit_in_command_substitution_returns_at_once(state_dir):
    """$(ostracker submit ...) does not wait for the job: the reaper holds no pipe of ours."""
    script = f"id=$({' '.join(CLI)} submit -- sleep 30); echo $id"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert result.stdout.strip().isdigit()


def test_reaper_exits_when_the_job_ends_and_leaves_no_zombie(run, submit, tmp_path):
    """After the job, its reaper is gone, and the job's process is reaped."""
    gate = tmp_path / "go"  # (a job that ends by itself may end before it is seen Running)
    job_id, pid = running(run, submit, "sh", "-c", f"until [ -e {gate} ]; do sleep 0.01; done")
    reaper = int(stat_fields(pid)[1])
    gate.touch()
    assert run("wait", job_id).returncode == 0
    poll(lambda: proc_state(reaper) is None, message="reaper gone")
    assert proc_state(pid) is None


def test_terminal_hangup_of_the_submitter_does_not_reach_the_job(run, state_dir):
    """Killing the submitting shell's whole process group leaves the job running."""
    shell = subprocess.Popen(["sh", "-c", f"{' '.join(CLI)} submit -- sleep 30; sleep 30"],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    job_id = shell.stdout.readline().strip()
    os.killpg(shell.pid, signal.SIGHUP)
    shell.wait()
    shell.stdout.close()
    job = json.loads(run("info", job_id, "--json").stdout)
    assert job["state"] == "Running"
    assert proc_state(job["pid"]) in ("S", "R")


def test_ended_array_is_summarised_in_one_file_that_matches_the_task_records(
        run, submit, state_dir, keep_records):
    """summary.json holds every task's JobInfo; listing it equals reading each task alone
    (an array kept in its directory: README, "History")."""
    job_id = submit("--array", "1-7:3", "--", "sh", "-c", "exit $TASK_ID")
    assert run("wait", job_id).returncode == 1
    with open(os.path.join(state_dir, "jobs", job_id, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["schema"] == 1
    listed = json.loads(run("status", job_id, "--json").stdout)
    one_by_one = [json.loads(run("info", f"{job_id}.{i}", "--json").stdout) for i in (1, 4, 7)]
    assert listed == one_by_one
    assert [(j["id"], j["exit_status"]) for j in listed] == \
        [(f"{job_id}.1", 1), (f"{job_id}.4", 4), (f"{job_id}.7", 7)]
    assert [dict(j, job_template=None) for j in listed] == summary["infos"]


def test_ended_array_read_from_its_summary_filters_and_renders_like_its_records(
        run, submit):
    """--state, the table and info of an ended array (read from the summary) show each task."""
    job_id = submit("--array", "0-3", "--", "sh", "-c", "exit $((TASK_ID % 2))")
    assert run("wait", job_id).returncode == 1
    failed = run("status", job_id, "--state", "Failed", "--json")
    assert [j["id"] for j in json.loads(failed.stdout)] == [f"{job_id}.1", f"{job_id}.3"]
    assert run("status", job_id, "-q", "--state", "done").stdout.split() == \
        [f"{job_id}.0", f"{job_id}.2"]
    listed = json.loads(run("info", job_id, "--json").stdout)
    assert [j["job_template"]["args"] for j in listed] == [["-c", "exit $((TASK_ID % 2))"]] * 4
    table = run("status", job_id).stdout.splitlines()
    assert len(table) == 5 and all("sh -c" in row for row in table[1:])


def test_records_of_an_earlier_boot_are_undetermined_and_never_signalled(run, submit, state_dir):
    """A Running record from another boot reads Undetermined; terminate signals nothing."""
    job_id, pid = running(run, submit, "sleep", "30")
    folder = os.path.join(state_dir, "jobs", job_id)
    reaper = int(stat_fields(pid)[1])
    os.kill(reaper, signal.SIGKILL)  # so nobody rewrites the record we age
    poll(lambda: proc_state(reaper) is None, message="reaper gone")
    for name in ("job.json", "state.json"):
        with open(os.path.join(folder, name)) as handle:
            record = json.load(handle)
        record["boot_id"] = "00000000-0000-0000-0000-000000000000"
        with open(os.path.join(folder, name), "w") as handle:
            json.dump(record, handle)
    job = json.loads(run("info", job_id, "--json").stdout)
    assert (job["state"], job["sub_state"]) == ("Undetermined", "machine rebooted while it ran")
    assert run("terminate", job_id).returncode == 1
    assert proc_state(pid) in ("S", "R")  # the live process was not touched
    os.kill(pid, signal.SIGKILL)


# -- the whole tree, and what the reaper does when its job ends --------------------------

def processes_with(word: str) -> list[int]:
    """PIDs of live processes whose command line holds ``word`` as one argument."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if word.encode() in argv and proc_state(int(name)) not in (None, "Z"):
                found.append(int(name))
    return found


def info(run, job_id):
    result = run("info", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_what_a_job_leaves_running_ends_with_it_and_is_counted(run, submit):
    """`sh -c 'sleep & exit 0'`: Done, and the sleep (TERM, then KILL) ends with the job."""
    job_id = submit("--", "sh", "-c", "sleep 102.5 & exit 0")
    assert run("wait", job_id).returncode == 0
    job = info(run, job_id)
    assert (job["state"], job["sub_state"]) == ("Done", "1 leftover process ended"), job
    poll(lambda: not processes_with("102.5"), message="the leftover sleep gone")


def test_a_process_that_left_the_group_and_its_parent_is_still_reached(run, submit, state_dir):
    """A double fork into a new session (a daemon) is adopted by the reaper, and ended.

    The reaper is the job's subreaper: the daemon's parent is the reaper, not init.
    """
    job_id = submit("--", "sh", "-c", "(setsid sh -c 'sleep 101.5' &); sleep 60")
    daemon = poll(lambda: processes_with("101.5"), message="the daemon")[0]
    with open(os.path.join(state_dir, "jobs", job_id, "state.json")) as handle:
        record = json.load(handle)
    assert os.getsid(daemon) != os.getsid(record["pid"])  # it left the job's session

    def ancestors(pid):
        chain = []
        while pid > 1:
            pid = int(stat_fields(pid)[1])
            chain.append(pid)
        return chain
    poll(lambda: record["reaper_pid"] in ancestors(daemon),
         message="the daemon adopted by the reaper")
    result = run("terminate", job_id)
    assert result.returncode == 0, result.stderr
    assert not processes_with("101.5")  # terminate returns once no process of the job is left
    assert info(run, job_id)["sub_state"].startswith("terminated")


def test_terminate_and_a_kill_from_outside_are_told_apart(run, submit):
    """sub_state says "terminated" for `terminate`, "killed by SIGKILL" for someone else's kill."""
    ours, pid = running(run, submit, "sleep", "60")
    theirs, other = running(run, submit, "sleep", "61")
    assert run("terminate", ours).returncode == 0
    os.kill(other, signal.SIGKILL)
    assert run("wait", theirs).returncode == 128 + signal.SIGKILL
    assert info(run, ours)["sub_state"] == "terminated"
    assert info(run, theirs)["sub_state"] == "killed by SIGKILL"


def test_without_its_reaper_a_job_is_still_suspended_and_terminated(run, submit, state_dir):
    """kill -9 of the reaper: suspend falls back to SIGSTOP (Linux discards SIGTSTP sent to
    an orphaned group), and terminate records Failed "terminated", not Undetermined."""
    job_id, pid = running(run, submit, "sh", "-c", "sleep 100; true")
    with open(os.path.join(state_dir, "jobs", job_id, "state.json")) as handle:
        reaper = json.load(handle)["reaper_pid"]
    os.kill(reaper, signal.SIGKILL)
    poll(lambda: proc_state(reaper) in (None, "Z"), message="the reaper gone")
    result = run("suspend", job_id)
    assert result.returncode == 0, result.stderr
    assert proc_state(pid) == "T"
    assert info(run, job_id)["state"] == "Suspended"
    result = run("terminate", job_id)
    assert result.returncode == 0, result.stderr
    job = info(run, job_id)
    assert (job["state"], job["sub_state"], job["terminating_signal"]) == \
        ("Failed", "terminated", "SIGKILL"), job
    assert proc_state(pid) is None or proc_state(pid) == "Z"


def test_the_reaper_sleeps_while_its_job_runs(run, submit):
    """The event loop blocks in poll: no wakeups while nothing happens (voluntary switches)."""
    import time

    job_id, pid = running(run, submit, "sleep", "30")
    reaper = int(stat_fields(pid)[1])
    time.sleep(0.5)  # let the reaper's start-up (its flush of the header) pass
    first = int(field(reaper, "voluntary_ctxt_switches"))
    time.sleep(1.0)  # an interval in which nothing happens to the job: that is the measurement
    assert proc_state(pid) == "S"
    assert int(field(reaper, "voluntary_ctxt_switches")) - first <= 2


def test_a_job_terminated_before_its_first_record_never_runs(state_dir, tmp_path):
    """terminate that comes right after the header, before the first task's record: the job is
    cancelled for good (its process never runs), or it was already running and is killed."""
    import threading

    from ostracker import JobTemplate, JobTracker, TrackerError

    tracker = JobTracker(state_dir)
    jobs = os.path.join(state_dir, "jobs")
    for attempt in range(10):
        marker = tmp_path / f"ran-{attempt}"
        outcome = {}

        def terminate_at_once(job_id=str(attempt + 1)):
            header = os.path.join(jobs, job_id, "job.json")
            poll(lambda: os.path.exists(header), interval=0.0005, message="the header")
            try:
                tracker.job_control(job_id, "terminate")
                outcome["terminated"] = True
            except TrackerError as error:
                outcome["error"] = str(error)
        killer = threading.Thread(target=terminate_at_once)
        killer.start()
        try:
            tracker.add_job(JobTemplate("/bin/sh", ["-c", f"sleep 0.2; touch {marker}"]))
        except TrackerError as error:
            assert "cancelled before it started" in str(error)
        killer.join()
        assert outcome.get("terminated"), outcome
        info = tracker.job_info(str(attempt + 1))
        assert info.state.value == "Failed", info
        poll(lambda: all(proc_state(p) is None for p in ([info.pid] if info.pid else [])),
             message="no process of the job")
        assert not marker.exists()


def test_wait_sleeps_in_the_kernel_until_the_reaper_exits(run, submit):
    """`wait` on a running job does not poll: a handful of voluntary context switches over
    the job's life (it sleeps on a pidfd of the job's reaper), and --timeout still holds."""
    import resource

    job_id = submit("--", "sleep", "2")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    assert run("wait", job_id).returncode == 0
    # the CLI's own start-up and reads cost a few; a poll every 25 ms would cost ~80
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - before <= 20
    later = submit("--", "sleep", "30")
    assert run("wait", "--timeout", "0.3", later).returncode == 124


def test_wait_on_several_jobs_and_a_task_sleeps_too(run, submit):
    """Several whole jobs and a running task of an array: a pidfd each (reapers, the task's
    process); still a handful of voluntary context switches over two seconds."""
    import resource

    single = submit("--", "sleep", "2")
    array = submit("--array", "1-2", "--", "sleep", "1.5")
    other = submit("--array", "1-3", "--", "sleep", "2")
    poll(lambda: run("info", f"{other}.2", "--json").stdout.count('"Running"'),
         message="the task to run")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    assert run("wait", single, array, f"{other}.2").returncode == 0
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - before <= 20


def test_a_process_whose_reaper_died_before_recording_its_pid_is_found(run, submit, state_dir,
                                                                      keep_records):
    """The reaper writes "starting" (with a token), spawns, then writes the PID.  Killed in
    between, it leaves a process that readers find by the token in its environment: it reads
    Running with its PID, and terminate ends it."""
    job_id = submit("--wait", "--", "true")
    token = "f00dfeedf00dfeed"
    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, "OSTRACKER_TOKEN": token},
                              start_new_session=True)
    try:
        path = os.path.join(state_dir, "jobs", job_id, "state.json")
        with open(path) as handle:
            record = json.load(handle)
        record.update(state="Queued", sub_state="starting", token=token, pid=None,
                      start_ticks=None, reaper_pid=None, finish_time=None, exit_status=None)
        with open(path, "w") as handle:
            json.dump(record, handle)
        job = info(run, job_id)
        assert (job["state"], job["pid"]) == ("Running", orphan.pid), job
        assert "reaper lost" in job["sub_state"]
        result = run("terminate", job_id)
        assert result.returncode == 0, result.stderr
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert info(run, job_id)["state"] == "Failed"
    finally:
        orphan.kill()
        orphan.wait()
    token_gone = info(run, job_id)
    assert token_gone["state"] == "Failed" and token_gone["sub_state"] == "terminated"


def test_a_task_whose_running_record_is_not_written_yet_reads_running_with_its_pid(
        run, submit, state_dir):
    """The reaper writes a later task's "Running" record (its PID) once it has time
    (README, "Design"); until then the log's last line of the task is its "starting"
    one.  Readers find the process by the token among the live reaper's children: it
    reads Running with its PID, and suspend reaches it (/proc shows it stopped)."""
    job_id = submit("--array", "1-2", "--", "sleep", "60")
    try:
        poll(lambda: [task["state"] for task in json.loads(
            run("status", "--json", job_id).stdout)] == ["Running", "Running"],
            message="both tasks to run")
        log = os.path.join(state_dir, "jobs", job_id, "tasks.log")
        with open(log, "rb") as handle:
            lines = [line.split(b"\t", 1) for line in handle.read().splitlines()]
        running_record = json.loads([body for index, body in lines if index == b"2"][-1])
        pid = running_record["pid"]
        token = dict(entry.split(b"=", 1) for entry in environ(pid)
                     if b"=" in entry)[b"OSTRACKER_TOKEN"].decode()
        starting = dict(running_record, state="Queued", sub_state="starting", pid=None,
                        start_ticks=None, dispatch_time=None, dispatch_monotonic=None)
        assert starting["token"] == token and starting["reaper_pid"] == int(
            stat_fields(pid)[1])
        with open(log, "ab") as handle:
            handle.write(b"2\t" + json.dumps(starting).encode() + b"\n")
        task = json.loads(run("info", f"{job_id}.2", "--json").stdout)
        assert (task["state"], task["pid"]) == ("Running", pid), task
        assert "its reaper is starting it" in task["sub_state"]
        assert run("suspend", f"{job_id}.2").returncode == 0
        poll(lambda: proc_state(pid) == "T", message="the task stopped")
    finally:
        run("terminate", job_id)


def test_a_token_is_looked_for_among_the_parents_children_only():
    """``find_by_environment`` with a parent reads its children first: a process
    elsewhere with the same entry (started first, so a pass over /proc in PID order
    meets it first) is not taken for the child.  A parent without children (dead, its
    child adopted by another) leads to that pass."""
    entry = f"OSTRACKER_TOKEN=test{os.getpid()}"
    environment = {**os.environ, "OSTRACKER_TOKEN": entry.partition("=")[2]}
    # A grandchild, its parent (the shell) alive: never ours, even were we a subreaper.
    launcher = subprocess.Popen(["sh", "-c", f"{entry} sleep 60 & echo $!; wait"],
                                stdout=subprocess.PIPE, text=True)
    stranger = int(launcher.stdout.readline())
    child = subprocess.Popen(["sleep", "60"], env=environment)
    try:
        # Popen returns as the child execs (vfork): its new environment shows a moment later.
        poll(lambda: entry.encode() in environ(child.pid) and entry.encode() in environ(
            stranger), message="both environments")
        assert proc.find_by_environment(entry, os.getpid()).pid == child.pid
        assert proc.find_by_environment(entry).pid in (stranger, child.pid)
        assert proc.find_by_environment(entry, stranger).pid in (stranger, child.pid)
    finally:
        child.kill()
        child.wait()
        os.kill(stranger, signal.SIGKILL)
        launcher.wait()
        launcher.stdout.close()
