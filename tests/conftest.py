"""Shared fixtures: an isolated state directory, the real CLI, and cleanup.

Every test gets its own OSTRACKER_STATE_DIR.  At teardown every job process
still alive in it is killed (by process group, identity checked) and every
reaper is waited for, so no test leaves a process behind.  Tests of the Slurm
backend ask ``slurm_problem()`` whether a cluster answers (``SLURM_CONF``, see
scripts/slurm-cluster) and cancel their jobs with ``cancel_slurm_jobs``.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ostracker.local import proc
from ostracker.core.records import REAPER_LOCK

CLI = [sys.executable, "-m", "ostracker"]

# The longest files first: each worker takes whole files, and a long file started last
# would be waited for alone at the end of the run.
LONGEST_FIRST = ("test_crash_points.py", "test_crash_scheduling.py", "test_damage.py",
                 "test_slurm.py", "test_slurm_fake.py", "test_faults.py", "test_bad_input.py",
                 "test_psij.py", "test_history.py", "test_scheduling.py", "test_listing.py")


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Tests press Ctrl-C (SIGINT) on the CLI as a terminal would.  A shell starts a background
# command (`./.ci/run &`) with SIGINT ignored, and every process after it would inherit
# that: the CLI would never see the signal.  Tests run as if started from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def poll(predicate, timeout=10.0, interval=0.01, message="condition"):
    """Call ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` in /proc/PID/stat, or None if it is gone."""
    current = proc.stat(pid)
    return None if current is None else current.state


def task_records(folder) -> dict:
    """The tasks' records of the job directory ``folder`` as they are on disk: index (None
    for a single job) -> the last record of each, from ``state.json``, an array's
    ``tasks.log`` or an earlier version's ``I.json`` files; damaged ones left out."""
    found = {}
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):  # compacted to ended/ meanwhile
        return found
    texts = []
    for name in names:
        try:
            if name == "tasks.log":
                with open(os.path.join(folder, name), "rb") as handle:
                    lines = handle.read().split(b"\n")[:-1]
                texts += [(int(index), body) for index, _, body in
                          (line.partition(b"\t") for line in lines) if index.isdigit()]
            elif name == "state.json" or (name.endswith(".json") and name[:-5].isdigit()):
                with open(os.path.join(folder, name), "rb") as handle:
                    texts.append((None if name == "state.json" else int(name[:-5]),
                                  handle.read()))
        except OSError:
            continue
    for index, text in texts:
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):  # a damaged record
            continue
        if isinstance(record, dict):
            found[index] = record
    return found


def damage_task_record(folder, index, damage) -> str:
    """Replace the record of task ``index`` (None: the single job's) in the job directory
    ``folder`` by ``damage(its bytes)``: its file, or its last line of the array's
    ``tasks.log``; return that file's path."""
    path = os.path.join(folder, "state.json" if index is None else "tasks.log")
    with open(path, "rb") as handle:
        data = handle.read()
    if index is None:
        data = damage(data)
    else:
        lines = data.split(b"\n")[:-1]
        last = max(at for at, line in enumerate(lines) if line.startswith(b"%d\t" % index))
        lines[last] = b"%d\t%s" % (index, damage(lines[last].partition(b"\t")[2]))
        data = b"\n".join(lines) + b"\n"
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _live_records(state_dir):
    jobs = os.path.join(state_dir, "jobs")
    if not os.path.isdir(jobs):
        return
    for job in os.listdir(jobs):
        folder = os.path.join(jobs, job)
        for record in task_records(folder).values():
            yield folder, record


def _reaper_alive(folder):
    return _lock_held(os.path.join(folder, REAPER_LOCK))


def stop_scheduler(state_dir):
    """Empty the scheduling board of ``state_dir`` (nothing waits any more) and kill its
    scheduler, if one lives: no job of a test starts after the test."""
    board = os.path.join(state_dir, "schedule")
    if not os.path.isdir(board):
        return
    for name in os.listdir(board):
        if name.startswith("wait."):
            os.unlink(os.path.join(board, name))
    try:
        with open(os.path.join(board, "lock")) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return
    if pid and _lock_held(os.path.join(board, "lock")):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poll(lambda: not _lock_held(os.path.join(board, "lock")), message="scheduler to die")


def _lock_held(path):
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def cleanup(state_dir):
    """Kill every job process of ``state_dir`` and wait for every reaper to end."""
    stop_scheduler(state_dir)
    jobs = os.path.join(state_dir, "jobs")
    if not os.path.isdir(jobs):
        return
    for _ in range(50):
        for folder, record in _live_records(state_dir):
            if record.get("pid") and record.get("start_ticks"):
                proc.signal_group(record["pid"], record["start_ticks"], signal.SIGKILL)
        # a queued array task would start after the kill: cancel the rest first
        for job in os.listdir(jobs):
            folder = os.path.join(jobs, job)
            if os.path.isdir(folder) and _reaper_alive(folder) and \
                    not os.path.exists(os.path.join(folder, "cancel.json")):
                try:
                    with open(os.path.join(folder, "cancel.json"), "w") as handle:
                        handle.write('{"schema": 1, "reason": "test teardown"}')
                except FileNotFoundError:  # its reaper compacted it to ended/ meanwhile
                    pass
        if not any(_reaper_alive(os.path.join(jobs, job)) for job in os.listdir(jobs)
                   if os.path.isdir(os.path.join(jobs, job))) and \
                not _reapers_naming(state_dir):
            return
        time.sleep(0.1)


def _reapers_naming(state_dir):
    """PIDs of the reapers (and schedulers, whose forks some reapers are) of ``state_dir``:
    a reaper compacting its ended job has moved its lock to ``ended/`` (and removes it
    there), yet still works.  A reaper forked by the API or the scheduler has the state
    dir in its arguments; one that ``submit`` started ahead (README, "Decisions") knows it
    from the environment it got, as the tests set it."""
    state_dir = os.path.abspath(state_dir)
    named = os.fsencode(state_dir)
    variable = b"OSTRACKER_STATE_DIR=" + named
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if len(argv) > 4 and b"from ostracker.local." in argv[4]:
                if named in argv[5:]:
                    found.append(int(name))
                    continue
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if variable in handle.read().split(b"\0"):
                        found.append(int(name))
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
    return found


def lean_reaper(state_dir, job_id):
    """PID of the reaper of ``job_id`` once it runs in its lean interpreter (its lock holds
    its PID; a reaper forked by the API writes it there before its exec)."""
    try:
        with open(os.path.join(state_dir, "jobs", str(job_id), "reaper.lock"), "rb") as handle:
            pid = int(handle.read())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            lean = b"-I" in handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if lean else None


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A fresh, private state directory, set for the CLI and the API alike."""
    path = tmp_path / "state"
    monkeypatch.setenv("OSTRACKER_STATE_DIR", str(path))
    yield str(path)
    cleanup(str(path))


@pytest.fixture
def keep_records(monkeypatch):
    """Ended jobs keep their records in ``jobs/N``, not compacted into the history (README,
    "History"): for tests of how those records are read, damaged or planted."""
    monkeypatch.setenv("OSTRACKER_KEEP_RECORDS", "1")


@pytest.fixture
def run(state_dir):
    """Run the real ``ostracker`` command; returns the CompletedProcess (text mode)."""
    def run_cli(*args, input=None, timeout=60, env=None, cwd=None):
        return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                              input=input, timeout=timeout, cwd=cwd,
                              env=None if env is None else {**os.environ, **env})
    return run_cli


@pytest.fixture
def submit(run):
    """Submit through the CLI and return the new job's ID (fails the test on error)."""
    def submit_job(*args, **kwargs):
        result = run("submit", *args, **kwargs)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()
    return submit_job


@pytest.fixture
def info(run):
    """``ostracker info ID --json`` parsed."""
    def job_info(job_id):
        result = run("info", job_id, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return job_info


@pytest.fixture
def tracker(state_dir):
    from ostracker import JobTracker

    return JobTracker(state_dir)


# -- the Slurm backend's tests ------------------------------------------------------------

SLURM_TIMEOUT = 90.0  # seconds a job may take to start or end on a shared 2-CPU test cluster
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}


@functools.cache
def slurm_problem() -> str | None:
    """Why no Slurm cluster can be used here (None when one can); asked once per run."""
    where = f"SLURM_CONF={os.environ.get('SLURM_CONF', '(unset)')}"
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=15, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return "sinfo is not on PATH"
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 15 s ({where})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"sinfo failed ({where}): {last}"
    states = [state.rstrip("*~#!%$@^-+") for state in done.stdout.split()]
    if not any(state in USABLE_NODE_STATES for state in states):
        return f"no usable node ({where}): sinfo says {states or 'nothing'}"
    return None


def cancel_slurm_jobs(state_dir) -> None:
    """scancel every Slurm job that ``state_dir`` records; wait until none holds a CPU."""
    ids = []
    for path in glob.glob(os.path.join(state_dir, "jobs", "*", "job.json")):
        try:
            with open(path) as handle:
                ids.append(str(json.load(handle)["slurm_job_id"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not ids:
        return
    subprocess.run(["scancel", *ids], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    def inactive():  # squeue's default states are the active ones
        done = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        return done.returncode != 0 or not done.stdout.strip()
    poll(inactive, timeout=SLURM_TIMEOUT, interval=0.2, message="cancelled Slurm jobs to end")


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (skipped where mounting is not permitted)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    state = str(where / "state")
    yield where, state
    cleanup(state)
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where):
    """Fill the file system to the last byte; returns the filler's path."""
    filler = os.path.join(where, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler
