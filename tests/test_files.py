"""The state directory as files: modes under any umask, planted links, readers that create
nothing, a state dir moved under a running reaper, no inode or byte left, crash leftovers.

Real processes throughout: the real CLI, real reapers, a real tmpfs.  Nothing
sleeps to decide pass or fail: a job waits at a gate file that the test
creates, and conditions are polled with a timeout.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time

import pytest

from conftest import CLI, cleanup, lean_reaper, poll
from ostracker.core.errors import JobNotFound, StorageError

OSTRACKER = os.path.join(os.path.dirname(sys.executable), "ostracker")

# These tests plant, damage and read the records of ended jobs in their directories:
# those jobs keep them there, not compacted into the history (tests/test_history.py).
pytestmark = pytest.mark.usefixtures("keep_records")


# -- helpers ---------------------------------------------------------------------------

def cli(*args, state=None, umask=None, timeout=60):
    """The real CLI; ``state``: its OSTRACKER_STATE_DIR; ``umask``: set in the child only."""
    env = dict(os.environ)
    if state is not None:
        env["OSTRACKER_STATE_DIR"] = str(state)
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def submitted(result):
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout.strip()


def one_line(result):
    """The one line on stderr (and no traceback anywhere)."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    return lines[0]


def info_json(job_id, state=None):
    result = cli("info", job_id, "--json", state=state)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def listing(top):
    """Every entry under ``top`` (``top`` too), with what a change would alter: type and
    mode, owner, links, size, modification time (not the access time)."""
    found = {}
    if not os.path.lexists(top):
        return found
    for folder, dirs, files in os.walk(top):
        for path in [folder] if folder == str(top) else []:
            info = os.lstat(path)
            found[path] = (info.st_mode, info.st_uid, info.st_nlink, info.st_mtime_ns)
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[path] = (info.st_mode, info.st_uid, info.st_nlink, info.st_size,
                           info.st_mtime_ns)
    return found


def temp_files(root):
    return [os.path.join(folder, name) for folder, _, files in os.walk(root)
            for name in files if name.endswith(".tmp")]


def gated(gate, then="exit 0"):
    """A shell command that waits until the file ``gate`` exists, then runs ``then``."""
    return ["sh", "-c", f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.02; done; {then}"]


def holds(pid, path):
    """Whether process ``pid`` has ``path`` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def open_fds():
    return len(os.listdir("/proc/self/fd"))


# -- modes, whatever the umask ----------------------------------------------------------

@pytest.mark.parametrize("mask", [0o000, 0o277])
def test_under_any_umask_the_state_dir_its_made_parents_and_every_file_are_private(
        tmp_path, mask):
    """umask 000 (and 277) at submit: the parents ostracker creates, the state dir, jobs/ and
    every job directory are 0700, every file it writes 0600; the job keeps the umask, and a
    file it names with -o gets the mode the umask gives."""
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    state = home / "a" / "b" / "state"  # a/, b/ and state/ do not exist yet
    own = tmp_path / "own.log"
    gate = tmp_path / "go"
    try:
        array = submitted(cli("submit", "--array", "1-3", "--max-parallel", "1", "--",
                              "sleep", "1", state=state, umask=mask))
        # at once: task 3 starts 2 s after task 1 does
        assert cli("terminate", f"{array}.3", state=state, umask=mask).returncode == 0
        single = submitted(cli("submit", "-e", "TOKEN=secret", "--", "sh", "-c",
                               "umask; echo err >&2", state=state, umask=mask))
        named = submitted(cli("submit", "-o", own, "--", "echo", "mine", state=state,
                              umask=mask))
        running = submitted(cli("submit", "--", *gated(gate), state=state, umask=mask))
        done = cli("wait", "--timeout", "30", array, single, named, state=state, umask=mask)
        assert done.returncode == 1, done.stderr  # task 3 was terminated
        wrong, names = [], set()
        for folder, dirs, files in os.walk(home / "a"):
            for name in dirs + files:
                path = os.path.join(folder, name)
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                names.add(name)
                captured = name.endswith(("stdout", "stderr"))
                if name in dirs and mode != 0o700:
                    wrong.append((path, oct(mode)))
                elif name in files and (mode & 0o077 if captured and mask
                                        else mode != 0o600):
                    wrong.append((path, oct(mode)))
        for made in (home / "a", home / "a" / "b", state):
            if stat.S_IMODE(os.stat(made).st_mode) != 0o700:
                wrong.append((str(made), oct(stat.S_IMODE(os.stat(made).st_mode))))
        assert wrong == []
        assert {"lock", "last-id", "job.json", "state.json", "tasks.log", "summary.json",
                "reaper.lock", "stdout", "stderr"} <= names
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o755  # not ours to change
        assert info_json(running, state)["state"] == "Running"  # what a live job has, too
        # The job's own umask and its own file are the user's.
        assert cli("output", single, state=state).stdout == f"{mask:04o}\n"
        assert stat.S_IMODE(os.stat(own).st_mode) == 0o666 & ~mask
        assert own.read_text() == "mine\n"
    finally:
        gate.touch()
        cleanup(str(state))


# -- planted links ------------------------------------------------------------------------

def test_a_hard_link_planted_at_a_tasks_future_output_is_not_written_through(
        run, submit, state_dir, tmp_path):
    """jobs/N/4.stdout hard-linked to a file elsewhere before task 4 starts: the file keeps
    its content, task 4 could not start (named), the other tasks run."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    gate = tmp_path / "go"
    array = submit("--array", "1-5", "--max-parallel", "1", "--",
                   *gated(gate, 'echo "task $TASK_ID"'))
    link = os.path.join(state_dir, "jobs", array, "4.stdout")
    os.link(victim, link)
    gate.touch()
    result = run("wait", "--timeout", "30", array)
    assert result.returncode == 1, result.stderr
    assert victim.read_text() == "precious\n"
    assert os.stat(victim).st_nlink == 2  # the planted link is left as it was
    states = {job["id"]: job for job in json.loads(run("status", "--json", array).stdout)}
    assert states[f"{array}.4"]["state"] == "Failed"
    assert "4.stdout" in states[f"{array}.4"]["sub_state"]
    assert [states[f"{array}.{i}"]["state"] for i in (1, 2, 3, 5)] == ["Done"] * 4
    assert run("output", f"{array}.5").stdout == "task 5\n"


def test_a_hard_link_planted_at_the_next_temporary_name_is_not_written_through(
        tmp_path, monkeypatch):
    """The temporary file of a record is created exclusively: a link planted at the very
    name it draws is left alone, and another name is drawn."""
    from ostracker.core import store as store_module
    from ostracker.core.store import Store

    store = Store(str(tmp_path / "state"))
    job_id = store.allocate_id()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    drawn = [b"\x5a" * 6, b"\x5a" * 6]  # the same name twice: for the job's record, the counter
    real = os.urandom
    monkeypatch.setattr(store_module.os, "urandom", lambda n: drawn.pop(0) if drawn else real(n))
    planted = tmp_path / "state" / "jobs" / str(job_id) / f".state.json.{'5a' * 6}.tmp"
    os.link(victim, planted)
    store.write(job_id, "state.json", {"schema": 1, "planted": False})
    assert victim.read_text() == "precious\n" and os.path.samefile(victim, planted)
    assert store.read(job_id, "state.json") == {"schema": 1, "planted": False}
    counter_temp = tmp_path / "state" / f".last-id.{'5a' * 6}.tmp"
    os.link(victim, counter_temp)
    assert store.allocate_id() == job_id + 1
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "state" / "last-id").read_text() == f"{job_id + 1}\n"
    store.close()


def test_hard_links_planted_at_the_reapers_old_temporary_names_are_not_written_through(
        run, submit, state_dir, tmp_path):
    """Temp names were .NAME.PID.tmp: links planted there for the reaper's final record
    are never written through."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    gate = tmp_path / "go"
    job_id = submit("--", *gated(gate, "exit 5"))
    folder = os.path.join(state_dir, "jobs", job_id)
    reaper = poll(lambda: lean_reaper(state_dir, job_id), message="the reaper")
    for pid in (reaper, reaper - 1, reaper + 1):
        os.link(victim, os.path.join(folder, f".state.json.{pid}.tmp"))
    gate.touch()
    assert run("wait", "--timeout", "30", job_id).returncode == 5
    assert victim.read_text() == "precious\n"
    assert os.stat(victim).st_nlink == 4


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
@pytest.mark.parametrize("name", ["state.json", "job.json"])
def test_a_record_planted_as_a_link_is_named_and_not_read(run, submit, state_dir, tmp_path,
                                                         plant, name):
    """A record replaced by a hard link (or a symlink) to a believable file elsewhere: the
    job is reported as damaged, in one line naming the file; its content is not shown."""
    keep = submit("--", "true")
    job_id = submit("--", "true")
    assert run("wait", keep, job_id).returncode == 0
    path = os.path.join(state_dir, "jobs", job_id, name)
    with open(path) as handle:
        record = json.load(handle)
    record.update({"exit_status": 42} if name == "state.json" else
                  {"template": dict(record["template"], job_name="DECOY")})
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps(record))
    os.unlink(path)
    (os.link if plant == "hardlink" else os.symlink)(decoy, path)
    for args in (["info", job_id], ["status", job_id], ["wait", job_id]):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert path in one_line(result) and "DECOY" not in result.stdout
    result = run("status", "--json")
    assert path in one_line(result)
    assert [job["id"] for job in json.loads(result.stdout)] == [keep]
    assert json.loads(decoy.read_text()) == record


def test_a_file_planted_where_the_scheduling_board_goes_stops_no_reaper(run, submit,
                                                                        state_dir, tmp_path):
    """``schedule`` made a file while an array runs: each task's end, which tells the
    scheduler (if one listens) through the board, finds no board, and the reaper carries
    on: every task runs and is recorded."""
    from conftest import _reapers_naming

    gate = tmp_path / "go"
    array = submit("--array", "1-2", "--max-parallel", "1", "--", *gated(gate))
    board = os.path.join(state_dir, "schedule")
    with open(board, "w") as handle:
        handle.write("planted\n")
    gate.touch()
    poll(lambda: not _reapers_naming(state_dir), timeout=30, message="the reaper to finish")
    os.unlink(board)
    assert run("wait", "--timeout", "30", array).returncode == 0
    assert [job["state"] for job in json.loads(run("status", "--json", array).stdout)] == \
        ["Done", "Done"]


def test_a_job_directory_planted_as_a_symlink_is_named_and_not_read(run, submit, state_dir,
                                                                   tmp_path):
    keep = submit("--", "true")
    job_id = submit("--", "true")
    assert run("wait", keep, job_id).returncode == 0
    folder = os.path.join(state_dir, "jobs", job_id)
    elsewhere = tmp_path / "elsewhere"
    os.rename(folder, elsewhere)
    os.symlink(elsewhere, folder)
    result = run("status")
    assert folder in one_line(result)
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [keep]
    result = run("info", job_id)
    assert result.returncode == 1 and folder in one_line(result)


def _plant(path, plant, decoy):
    os.unlink(path)
    if plant == "symlink":
        os.symlink(decoy, path)
    elif plant == "dangling":
        os.symlink(str(decoy) + ".missing", path)
    elif plant == "hardlink":
        os.link(decoy, path)
    elif plant == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.mkdir(path, 0o700)


@pytest.mark.parametrize("plant", ["symlink", "dangling", "hardlink", "fifo", "directory"])
def test_a_reaper_lock_planted_as_a_link_is_one_line_for_its_job(run, submit, state_dir,
                                                                tmp_path, plant):
    """reaper.lock of a running job replaced by a symlink (to a file, or dangling), a hard
    link, a FIFO, a directory: status, info and wait report that job in one line naming the
    lock (no ELOOP traceback, no hang); the other jobs are listed as before.  Once the job
    has ended its lock is not asked any more."""
    keep = submit("--", "true")
    gate = tmp_path / "go"
    job_id = submit("--", *gated(gate))
    assert run("wait", keep).returncode == 0
    decoy = tmp_path / "decoy"
    decoy.write_text("")
    lock = os.path.join(state_dir, "jobs", job_id, "reaper.lock")
    _plant(lock, plant, decoy)
    result = run("status")
    assert lock in one_line(result)
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [keep]
    result = run("status", "--json")
    assert lock in one_line(result)
    assert [job["id"] for job in json.loads(result.stdout)] == [keep]
    for args in (["info", job_id], ["wait", job_id], ["wait", "--timeout", "0", job_id],
                 ["status", job_id]):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert lock in one_line(result), args
    assert run("info", keep).returncode == 0
    gate.touch()
    poll(lambda: json.load(open(os.path.join(state_dir, "jobs", job_id, "state.json")))
         ["state"] == "Done", message="the job to end")
    if plant == "fifo":
        os.unlink(lock)  # the fixture's teardown opens locks without O_NONBLOCK
    result = run("status", "-q")
    assert result.returncode == 0 and result.stderr == "" and result.stdout.split() == \
        [keep, job_id]


@pytest.mark.parametrize("plant", ["dangling", "hardlink", "fifo", "directory"])
def test_the_id_lock_planted_as_a_link_fails_submit_in_one_line(run, submit, state_dir,
                                                              tmp_path, plant):
    """The state dir's lock replaced: submit fails in one line naming it, writes nothing
    through it, leaves no job; reading commands go on."""
    first = submit("--", "true")
    assert run("wait", first).returncode == 0
    decoy = tmp_path / "decoy"
    decoy.write_text("500\n")
    lock = os.path.join(state_dir, "lock")
    _plant(lock, plant, decoy)
    result = run("submit", "--", "true")
    assert result.returncode == 1
    assert lock in one_line(result)
    assert decoy.read_text() == "500\n"
    assert sorted(os.listdir(os.path.join(state_dir, "jobs"))) == [first]
    assert run("status", "-q").stdout.split() == [first]


def test_the_reaper_lock_is_created_exclusively_and_never_through_a_link(tmp_path):
    """What is already at a fresh job's reaper.lock was planted: a StorageError naming it,
    nothing created or written through it."""
    from ostracker.core.store import Store

    store = Store(str(tmp_path / "state"))
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for plant in ("file", "symlink", "dangling", "hardlink"):
        job_id = store.allocate_id()
        lock = tmp_path / "state" / "jobs" / str(job_id) / "reaper.lock"
        if plant == "file":
            lock.write_text("")
        elif plant == "hardlink":
            os.link(victim, lock)
        else:
            os.symlink(victim if plant == "symlink" else tmp_path / "missing", lock)
        with pytest.raises(StorageError, match=str(lock)):
            store.open_reaper_lock(job_id)
        assert victim.read_text() == "precious\n" and not (tmp_path / "missing").exists()
    store.close()


def _captured_job(run, submit, state_dir):
    job_id = submit("--", "sh", "-c", "echo out; echo err >&2")
    assert run("wait", job_id).returncode == 0
    return job_id, os.path.join(state_dir, "jobs", job_id)


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_captured_output_planted_as_a_link_is_refused_by_open_output(run, submit, state_dir,
                                                                    tmp_path, plant):
    """The store's open of captured output (what ``output`` reads) refuses a link planted
    at jobs/N/stdout: StorageError naming it, never the target's content; no hang on a FIFO.
    A file the user named with -o is the user's, opened as it is."""
    from ostracker import JobTracker

    job_id, folder = _captured_job(run, submit, state_dir)
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    _plant(os.path.join(folder, "stdout"), plant, secret)
    tracker = JobTracker(state_dir)
    with pytest.raises(StorageError, match=os.path.join(folder, "stdout")):
        tracker.open_output(job_id)
    with tracker.open_output(job_id, "stderr") as handle:
        assert handle.read() == b"err\n"
    own = tmp_path / "own"
    named = submit("-o", own, "--", "echo", "mine")
    assert run("wait", named).returncode == 0
    os.rename(own, tmp_path / "moved")
    os.symlink(tmp_path / "moved", own)  # the user's own path: a link of theirs is fine
    with tracker.open_output(named) as handle:
        assert handle.read() == b"mine\n"
    os.unlink(os.path.join(folder, "stderr"))
    with pytest.raises(FileNotFoundError):
        tracker.open_output(job_id, "stderr")
    tracker.store.close()


def test_output_does_not_print_what_a_symlink_planted_at_the_captured_stdout_names(
        run, submit, state_dir, tmp_path):
    job_id, folder = _captured_job(run, submit, state_dir)
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    path = os.path.join(folder, "stdout")
    _plant(path, "symlink", secret)
    result = run("output", job_id)
    assert "top secret" not in result.stdout
    assert result.returncode == 1 and path in one_line(result)


# -- an ended task's empty output, reused -----------------------------------------------------

def captured(state_dir, job_id):
    folder = os.path.join(state_dir, "jobs", job_id)
    return {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)
            if name.endswith((".stdout", ".stderr"))}


def test_an_ended_tasks_empty_output_becomes_a_later_tasks_file(run, submit, state_dir):
    """One task at a time: each empty file of an ended task is the next task's, moved (no
    new inode); what a task wrote stays its own, and every task's output reads as written."""
    array = submit("--array", "1-6", "--max-parallel", "1", "--", "sh", "-c",
                   '[ "$TASK_ID" != 3 ] || echo three')
    assert run("wait", "--timeout", "30", array).returncode == 0
    assert captured(state_dir, array) == {"3.stdout": "three\n", "6.stdout": "", "6.stderr": ""}
    for index in range(1, 7):
        for stream in ([], ["--stderr"]):
            shown = run("output", f"{array}.{index}", *stream)
            assert (shown.returncode, shown.stderr) == (0, "")
            assert shown.stdout == ("three\n" if index == 3 and not stream else "")


def test_a_reader_of_a_file_that_became_a_later_tasks_reads_none_of_it(run, submit, tmp_path,
                                                                       state_dir):
    """``output -f`` of a task with nothing written, while its file becomes the next task's
    and that task writes: the first task's output stays empty."""
    gate = tmp_path / "go"
    array = submit("--array", "1-2", "--max-parallel", "1", "--",
                   *gated(gate, '[ "$TASK_ID" = 1 ] || { echo two; echo two >&2; sleep 60; }'))
    reader = subprocess.Popen([*CLI, "output", "-f", f"{array}.1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        stdout = os.path.join(state_dir, "jobs", array, "1.stdout")
        poll(lambda: holds(reader.pid, stdout), message="the reader holds task 1's stdout")
        gate.touch()
        out, err = reader.communicate(timeout=30)
    finally:
        reader.kill()
    assert (reader.returncode, out, err) == (0, "", "")
    assert run("output", f"{array}.2").stdout == "two\n"
    run("terminate", array)


def test_the_output_of_a_task_whose_process_outlives_it_is_never_reused(run, submit):
    """What a task leaves running may still write to its files: they stay its own."""
    array = submit("--array", "1-2", "--max-parallel", "1", "--", "sh", "-c",
                   '[ "$TASK_ID" = 2 ] && echo two || '
                   '{ (trap "" TERM; sleep 0.5; echo late) & }')
    assert run("wait", "--timeout", "30", array).returncode == 0
    poll(lambda: run("output", f"{array}.1").stdout == "late\n", message="the late line")
    assert run("output", f"{array}.2").stdout == "two\n"


# -- readers create nothing ---------------------------------------------------------------

READERS = [["status"], ["status", "--json"], ["status", "-q", "--state", "Running"],
           ["status", "1"], ["info", "1"], ["info", "1", "--json"], ["wait", "1"],
           ["wait", "--timeout", "0", "1"], ["output", "1"], ["output", "--stderr", "1"],
           ["terminate", "1"], ["suspend", "1"], ["delete", "1"], ["delete", "--finished"]]


def _complete(state, words):
    if not os.access(OSTRACKER, os.X_OK):
        return None
    result = subprocess.run([OSTRACKER], capture_output=True, text=True, timeout=30, env={
        **os.environ, "OSTRACKER_STATE_DIR": str(state), "_OSTRACKER_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(words), "COMP_CWORD": str(len(words) - 1)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


@pytest.mark.parametrize("kind", ["missing", "missing-parents", "existing-0755",
                                  "existing-0755-with-files"])
def test_reading_commands_create_and_change_nothing_where_there_is_no_state_dir_yet(
        tmp_path, kind):
    """A state dir that does not exist (nor its parents), or an existing 0755 directory that
    is not a state dir yet: every reading command (and TAB completion, and the API) sees an
    empty DB and creates, changes, chmods nothing; the first submit makes it a state dir."""
    from ostracker import JobTracker

    place = tmp_path / "place"
    place.mkdir()
    os.chmod(place, 0o755)
    target = {"missing": place / "state", "missing-parents": place / "x" / "y" / "state",
              "existing-0755": place / "dir", "existing-0755-with-files": place / "dir"}[kind]
    if kind.startswith("existing"):
        target.mkdir()
        os.chmod(target, 0o755)
        if kind.endswith("files"):
            (target / "notes.txt").write_text("mine\n")
            (target / "sub").mkdir()
    before = listing(place)
    for args in READERS:
        result = cli("--state-dir", target, *args)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        if args[0] == "status" or args == ["delete", "--finished"]:
            assert result.returncode == (1 if "1" in args else 0), (args, result.stderr)
        else:
            assert result.returncode == 1, (args, result.stderr)
            assert "no such job: 1" in one_line(result), args
        if args == ["status", "--json"]:
            assert json.loads(result.stdout) == []
    for words in (["ostracker", "info", ""], ["ostracker", "delete", ""]):
        assert (_complete(target, words) or "").strip() == ""
    tracker = JobTracker(str(target))
    assert tracker.job_infos() == [] and tracker.list_jobs() == []
    assert tracker.delete_finished() == []
    with pytest.raises(JobNotFound):
        tracker.job_info("1")
    tracker.store.close()
    assert listing(place) == before
    first = cli("--state-dir", target, "submit", "--", "true")
    assert submitted(first) == "1"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert os.path.isdir(target / "jobs")
    if kind.endswith("files"):
        assert (target / "notes.txt").read_text() == "mine\n"
    assert cli("--state-dir", target, "wait", "1").returncode == 0


def test_readers_never_chmod_an_existing_state_dir_that_others_may_read(run, submit,
                                                                       state_dir):
    """A state dir made 0755 (ours, only readable by others): status, info, wait, output and
    completion read it and leave every mode and file as it was; submit closes it."""
    job_id = submit("--", "echo", "hi")
    assert run("wait", job_id).returncode == 0
    os.chmod(state_dir, 0o755)
    os.chmod(os.path.join(state_dir, "jobs"), 0o755)
    before = listing(state_dir)
    for args in (["status"], ["status", "--json"], ["info", job_id], ["wait", job_id],
                 ["output", job_id]):
        result = run(*args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)
    completed = _complete(state_dir, ["ostracker", "info", ""])
    assert completed is None or job_id in completed
    assert listing(state_dir) == before
    assert run("submit", "--", "true").returncode == 0
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(state_dir, "jobs")).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another user")
@pytest.mark.parametrize("mode", [0o755, 0o777])
def test_an_existing_directory_of_another_user_is_refused_by_readers_too(tmp_path, mode):
    target = tmp_path / "theirs"
    target.mkdir()
    os.chmod(target, mode)
    os.chown(target, 65534, 65534)
    before = listing(tmp_path)
    for args in (["status"], ["info", "1"], ["submit", "--", "true"]):
        result = cli("--state-dir", target, *args)
        assert result.returncode == 1
        assert "another user" in one_line(result)
    assert listing(tmp_path) == before


def test_a_tracker_leaks_no_descriptor(run, submit, state_dir):
    """The API: listing, reading, waiting on many jobs holds a few descriptors at most, and
    a tracker that goes away closes them."""
    from ostracker import JobTemplate, JobTracker

    ids = [submit("--", "true") for _ in range(12)]
    assert run("wait", *ids).returncode == 0
    gc.collect()
    baseline = open_fds()
    tracker = JobTracker(state_dir)
    for _ in range(3):
        assert [info.id for info in tracker.job_infos()] == ids
        for job_id in ids:
            tracker.job_info(job_id)
            assert tracker.has_ended(job_id)
        tracker.wait_jobs(ids, timeout=10)
        with tracker.open_output(ids[0]) as handle:
            handle.read()
        assert open_fds() <= baseline + 3
    new = tracker.add_job(JobTemplate(remote_command="true"))
    tracker.wait(new, timeout=10)
    assert open_fds() <= baseline + 5  # and the pipe of the job submitted last (ended_as)
    assert tracker.ended_as(new) is not None
    assert open_fds() <= baseline + 4
    again = tracker.add_job(JobTemplate(remote_command="true"))
    assert tracker.add_job(JobTemplate(remote_command="true")) != again  # again's pipe closed
    assert open_fds() <= baseline + 5
    del tracker
    gc.collect()
    assert open_fds() == baseline


# -- the state dir moved under a running reaper ---------------------------------------------

def test_a_reaper_whose_state_dir_is_moved_writes_into_the_moved_dir(tmp_path):
    """Job 1 runs; its state dir is moved away, a new one is made at the old path and gets
    a job 1 of its own; when the first job 1 ends, its reaper records that in the moved
    directory, and the new job 1 is untouched."""
    state = tmp_path / "state"
    moved = tmp_path / "moved"
    gate = tmp_path / "go"
    try:
        first = submitted(cli("submit", "--", *gated(gate, "exit 3"), state=state))
        assert first == "1"
        folder = state / "jobs" / first
        reaper = poll(lambda: lean_reaper(str(state), first), message="the exec'd reaper")
        poll(lambda: holds(reaper, folder), message="the reaper holding its job directory")
        os.rename(state, moved)
        other = submitted(cli("submit", "--", "sleep", "60", state=state))
        assert other == "1"
        theirs = info_json(other, state)
        assert theirs["state"] == "Running"
        gate.touch()
        ended = poll(lambda: (lambda job: job["state"] != "Running" and job)(
            info_json(first, moved)), message="the moved job 1 to end")
        assert (ended["state"], ended["exit_status"]) == ("Failed", 3)
        poll(lambda: not os.path.exists(f"/proc/{reaper}/fd/0"), message="its reaper to end")
        with open(state / "jobs" / "1" / "state.json") as handle:
            record = json.load(handle)
        assert (record["state"], record["pid"]) == ("Running", theirs["pid"])
        assert info_json(other, state)["state"] == "Running"
        assert temp_files(state) == [] and not os.path.exists(state / "jobs" / "2")
    finally:
        gate.touch()
        cleanup(str(moved))
        cleanup(str(state))


# -- no inode, no byte left ------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A tmpfs of 1 MiB and 64 inodes (skipped where mounting is not permitted)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64,mode=0700",
                              "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    state = where / "state"
    yield where, state
    for name in ("fill", "filler"):  # room for the teardown's own writes
        subprocess.run(["rm", "-rf", str(where / name)], capture_output=True)
    cleanup(str(state))
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _job_dirs(state):
    return sorted(os.listdir(state / "jobs"))


def _failed_submit_leaves_nothing(result, state, before, marker):
    """A submit that failed for want of room: one line, exit 1, nothing on stdout; either no
    trace of the job, or (its task could not open its output) a job recorded as Failed."""
    line = one_line(result)
    assert result.returncode == 1 and result.stdout == ""
    assert "No space left on device" in line, line
    after = _job_dirs(state)
    if after != before:  # only a job that could not start, recorded whole, may stay
        new, = set(after) - set(before)
        assert "could not start" in line, line
        job = info_json(new, state)
        assert job["state"] == "Failed" and job["sub_state"].startswith("could not start"), \
            f"job {new} could not start ({line}) yet reads {job['state']}: {job['sub_state']}"
    assert temp_files(state) == []
    assert not marker.exists(), "the job ran"
    return line


def test_no_inode_left_submit_fails_in_one_line_leaves_no_job_and_runs_nothing(tmp_path,
                                                                             tiny_fs):
    """Every inode taken, then one more freed at a time: each submit fails in one line with
    exit 1, leaves no jobs/N and starts nothing, until there is room; then IDs go on."""
    where, state = tiny_fs
    first = submitted(cli("submit", "--", "true", state=state))
    assert cli("wait", first, state=state).returncode == 0
    fill = where / "fill"
    fill.mkdir()
    fillers = []
    while True:
        path = fill / str(len(fillers))
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        fillers.append(path)
    from ostracker import JobTemplate, JobTracker

    for free, step in ((0, "last-id"), (1, "reaper.lock"), (2, "job.json")):
        for path in fillers[len(fillers) - free:]:
            os.unlink(path)
        before = _job_dirs(state)
        tracker = JobTracker(str(state))  # the API: a StorageError, never a bare OSError
        with pytest.raises(StorageError, match=f"{step}: No space left on device"):
            tracker.add_job(JobTemplate(remote_command="true"))
        tracker.store.close()
        assert _job_dirs(state) == before and temp_files(state) == []
        for path in fillers[len(fillers) - free:]:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    failures, ran = [], None
    for free in range(12):
        if free:
            os.unlink(fillers.pop())
        before = _job_dirs(state)
        marker = tmp_path / f"ran-{free}"
        result = cli("submit", "--", "touch", marker, state=state)
        if result.returncode == 0:
            ran = (free, result.stdout.strip())
            break
        failures.append(_failed_submit_leaves_nothing(result, state, before, marker))
        status = cli("status", state=state)
        assert status.returncode == 0 and status.stderr == "", status.stderr
    assert ran is not None, failures
    steps = {re.sub(r"[0-9]+", "N", line) for line in failures}
    assert len(steps) >= 3, failures  # it failed at several different steps
    for path in fillers:
        os.unlink(path)
    assert cli("wait", ran[1], state=state).returncode == 0, \
        {k: v for k, v in info_json(ran[1], state).items() if "state" in k or "exit" in k}
    assert (tmp_path / f"ran-{ran[0]}").exists()
    again = submitted(cli("submit", "--", "true", state=state))
    assert int(again) > int(ran[1])
    assert not any((tmp_path / f"ran-{free}").exists() for free in range(ran[0]))


def test_no_byte_left_submit_fails_in_one_line_leaves_no_job_and_runs_nothing(tmp_path,
                                                                            tiny_fs):
    """The file system filled with head -c, then one more page freed at a time: each submit
    fails in one line, leaves no jobs/N and starts nothing, until there is room."""
    where, state = tiny_fs
    first = submitted(cli("submit", "--", "true", state=state))
    assert cli("wait", first, state=state).returncode == 0
    filler = where / "filler"
    subprocess.run(["sh", "-c", f"head -c 2000000 /dev/zero > {shlex.quote(str(filler))}"],
                   capture_output=True)
    size = os.path.getsize(filler)
    assert 0 < size < 2000000
    failures, ran = [], None
    for free in range(12):
        os.truncate(filler, max(0, size - free * 4096))
        before = _job_dirs(state)
        marker = tmp_path / f"ran-{free}"
        result = cli("submit", "--", "touch", marker, state=state)
        if result.returncode == 0:
            ran = (free, result.stdout.strip())
            break
        failures.append(_failed_submit_leaves_nothing(result, state, before, marker))
        status = cli("status", state=state)
        assert status.returncode == 0 and status.stderr == "", status.stderr
    assert ran is not None, failures
    assert len(failures) >= 2, failures
    os.unlink(filler)
    assert cli("wait", ran[1], state=state).returncode == 0, \
        {k: v for k, v in info_json(ran[1], state).items() if "state" in k or "exit" in k}
    again = submitted(cli("submit", "--", "true", state=state))
    assert int(again) > int(ran[1])
    assert not any((tmp_path / f"ran-{free}").exists() for free in range(ran[0]))


# -- damaged counters, crash leftovers ---------------------------------------------------------

@pytest.mark.parametrize("value", ["9" * 5000, "99999999999999999999", str(10 ** 15 + 1)])
@pytest.mark.parametrize("where", ["last-id", "lock", "both"])
def test_a_huge_counter_is_damage_and_inflates_no_id(run, submit, state_dir, where, value):
    """last-id (or its copy in lock) damaged into a huge number: the next ID follows the
    highest job, and the counter is set right again."""
    ids = [submit("--", "true") for _ in range(2)]
    assert run("wait", *ids).returncode == 0
    if where in ("last-id", "both"):
        with open(os.path.join(state_dir, "last-id"), "w") as handle:
            handle.write(value + "\n")
    if where in ("lock", "both"):
        with open(os.path.join(state_dir, "lock"), "r+") as handle:
            handle.write(value + "\n")
    assert submit("--", "true") == "3"
    assert submit("--", "true") == "4"
    with open(os.path.join(state_dir, "last-id")) as handle:
        assert handle.read() == "4\n"
    assert run("status", "-q").stdout.split() == ["1", "2", "3", "4"]


@pytest.mark.parametrize("name", ["99999999999999999999", str(10 ** 15 + 7), "0012"])
def test_a_job_directory_with_a_huge_or_odd_name_inflates_no_id(run, submit, state_dir, name):
    first = submit("--", "true")
    assert run("wait", first).returncode == 0
    os.mkdir(os.path.join(state_dir, "jobs", name), 0o700)
    os.unlink(os.path.join(state_dir, "last-id"))  # the counters disagree: the jobs are scanned
    assert submit("--", "true") == "2"
    result = run("status", "-q")
    assert result.returncode == 0 and result.stderr == "" and result.stdout.split() == ["1", "2"]


def test_crash_leftovers_break_no_listing_and_delete_finished_sweeps_the_old_ones(
        run, submit, state_dir, tmp_path):
    """Job directories without a header (submits killed before they wrote it: an old one, a
    fresh one), a half-deleted job, stray temp files of crashed writers: listings go on;
    delete --finished removes the half-deleted job and what is older than ten minutes,
    keeps the fresh one; no ID comes back."""
    from ostracker.core.store import Store

    gate = tmp_path / "go"
    running = submit("--", *gated(gate))
    ended = submit("--", "true")
    assert run("wait", ended).returncode == 0
    store = Store(state_dir)
    crashed = [str(store.allocate_id()) for _ in range(2)]  # as a submit killed right then
    store.close()
    jobs = os.path.join(state_dir, "jobs")
    old = time.time() - 3600
    for number in crashed:
        open(os.path.join(jobs, number, "reaper.lock"), "w").close()
        with open(os.path.join(jobs, number, f".job.json.{number}abc.tmp"), "w") as handle:
            handle.write('{"schema": 1, "id": "')  # half a header
    os.utime(os.path.join(jobs, crashed[0]), (old, old))
    os.mkdir(os.path.join(jobs, f".deleted-{ended}-12345"), 0o700)
    open(os.path.join(jobs, f".deleted-{ended}-12345", "state.json"), "w").close()
    strays = [os.path.join(jobs, running, ".state.json.0badc0ffee00.tmp"),
              os.path.join(state_dir, ".last-id.0badc0ffee00.tmp")]
    for stray in strays:
        with open(stray, "w") as handle:
            handle.write("{")
        os.utime(stray, (old, old))
    result = run("status")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [running, ended]
    assert [job["id"] for job in json.loads(run("status", "--json").stdout)] == [running, ended]
    for number in crashed:
        result = run("info", number)
        assert result.returncode == 1 and f"no such job: {number}" in one_line(result)
    assert run("wait", "--timeout", "0", running).returncode == 124
    result = run("delete", "--finished")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(os.listdir(jobs)) == sorted([running, crashed[1]])
    assert os.path.exists(strays[0])  # a job's own stray goes when the job is deleted
    assert not os.path.exists(strays[1])
    fresh = submit("--", "true")
    assert int(fresh) == int(crashed[1]) + 1
    gate.touch()
    assert run("wait", running, fresh).returncode == 0


def test_submit_removes_stale_counter_temp_files_under_its_lock(run, submit, state_dir):
    first = submit("--", "true")
    stray = os.path.join(state_dir, f".last-id.{os.getpid()}.tmp")
    with open(stray, "w") as handle:
        handle.write("9")
    assert submit("--", "true") == str(int(first) + 1)
    assert not os.path.exists(stray)
