"""The Slurm backend against fake Slurm commands: its logic, in every test run.

tests/fake_slurm/ holds fake ``sbatch``, ``squeue``, ``scontrol``, ``scancel``,
``sacct`` and ``sinfo`` that print what Slurm 22.05 prints (checked against a
real 22.05), keep their jobs in ``$FAKE_SLURM_DIR``, log each call, and let a
test move the jobs along with ``fake-slurm`` (after drmaa2os's fake sbatch and
squeue).  Every test drives the real ``ostracker`` CLI with
``--backend slurm`` through them: no cluster is needed, none is touched
(PATH puts the fakes first, SLURM_CONF is unset).  The suites that run a real
cluster are test_slurm.py and test_backends.py.

Slurm's IDs here start at 4711; ostracker's at 1.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import CLI, poll
from ostracker import (InvalidState, JobNotFound, JobState, JobTemplate, SlurmTracker,
                       TrackerError)

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_slurm")
SLURM_COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sacct", "sinfo")
SQUEUE = ["squeue", "--json", "--states=all", "--me"]
SACCT_FORMAT = ("--format=JobID,State,ExitCode,Start,End,NodeList,MaxRSS,UserCPU,SystemCPU,"
                "Reason")
ME = pwd.getpwuid(os.getuid()).pw_name


# -- the fake cluster --------------------------------------------------------------------

def fake_environment(folder: str, python_dir: str) -> dict[str, str]:
    """What a test's commands see: the fakes first on PATH, the Slurm backend, no SLURM_CONF.

    ``python_dir`` gets the ``python3`` of the fakes' ``#!/usr/bin/env python3``:
    this interpreter without site (they need only the standard library), which
    starts in a third of the time of a version manager's shim.
    """
    os.makedirs(python_dir, exist_ok=True)
    python3 = os.path.join(python_dir, "python3")
    if not os.path.exists(python3):
        with open(python3, "w") as handle:
            handle.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S \"$@\"\n")
        os.chmod(python3, 0o755)
    return {"PATH": os.pathsep.join([FAKES, python_dir, os.environ.get("PATH", "")]),
            "FAKE_SLURM_DIR": folder, "OSTRACKER_BACKEND": "slurm"}


@pytest.fixture(scope="session")
def bytecode_cache(tmp_path_factory) -> dict[str, str]:
    """Compiled modules kept for the whole run, outside the source tree: each of the
    hundreds of commands a run starts then need not compile ostracker or the fakes again.
    """
    return {"PYTHONPYCACHEPREFIX": str(tmp_path_factory.mktemp("pycache"))}


class FakeSlurm:
    """The fake cluster of one test: ``fake("start", "4711")`` runs ``fake-slurm start 4711``."""

    def __init__(self, folder: str, env: dict[str, str] | None = None):
        self.dir = folder
        self.env = env  # None: the process's own (the fixture set it)

    def __call__(self, *args) -> str:
        done = subprocess.run([os.path.join(FAKES, "fake-slurm"), *map(str, args)],
                              capture_output=True, text=True, timeout=30, env=self.env)
        assert done.returncode == 0, f"fake-slurm {args}: {done.stderr}"
        return done.stdout

    def slurm(self, *args, input: str | None = None) -> subprocess.CompletedProcess:
        """Run one of the fake Slurm commands itself, as a user at the shell would."""
        return subprocess.run([os.path.join(FAKES, args[0]), *map(str, args[1:])], input=input,
                              capture_output=True, text=True, timeout=30, env=self.env)

    def knob(self, name: str, text: str = "") -> None:
        with open(os.path.join(self.dir, name), "w") as handle:
            handle.write(text)

    def unknob(self, name: str) -> None:
        os.unlink(os.path.join(self.dir, name))

    def calls(self, command: str | None = None) -> list[list[str]]:
        """The Slurm commands run so far, each as its argv (of ``command`` only, if given)."""
        try:
            with open(os.path.join(self.dir, "calls.log")) as handle:
                calls = [json.loads(line) for line in handle]
        except FileNotFoundError:
            return []
        return [call for call in calls if command is None or call[0] == command]

    def clear_calls(self) -> None:
        try:
            os.unlink(os.path.join(self.dir, "calls.log"))
        except FileNotFoundError:
            pass

    def control_calls(self) -> list[list[str]]:
        """The calls that act on jobs (scontrol, scancel), in order."""
        return [call for call in self.calls() if call[0] in ("scontrol", "scancel")]

    def job(self, slurm_id: str) -> dict:
        """The fake's record of one job or task (a pending task: its array's record)."""
        records = json.loads(self("show", slurm_id))
        assert len(records) == 1, records
        return records[0]


@pytest.fixture
def fake(state_dir, tmp_path, monkeypatch, bytecode_cache):
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for key, value in {**fake_environment(str(folder), str(tmp_path / "python")),
                       **bytecode_cache}.items():
        monkeypatch.setenv(key, value)
    for variable in ("SLURM_CONF", "SLURM_BITSTR_LEN", "SLURM_TIME_FORMAT",
                     "PYTHONDONTWRITEBYTECODE"):
        monkeypatch.delenv(variable, raising=False)
    for command in (*SLURM_COMMANDS, "fake-slurm"):  # never a real cluster's
        assert shutil.which(command) == os.path.join(FAKES, command), command
    return FakeSlurm(str(folder))


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    return lines[0]


def ok(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def info(run, job_id: str):
    return json.loads(ok(run("info", job_id, "--json")))


def statuses(run, *job_ids) -> dict[str, dict]:
    return {job["id"]: job for job in json.loads(ok(run("status", "--json", *job_ids)))}


def state_of(run, job_id: str) -> str:
    return info(run, job_id)["state"]


def job_dirs(state_dir) -> list[str]:
    jobs = os.path.join(state_dir, "jobs")
    return sorted(name for name in os.listdir(jobs) if name.isdigit()) \
        if os.path.isdir(jobs) else []


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".000000+00:00"


PROBE = r"""#!{python}
import json, os, sys
with open(os.environ["PROBE_OUT"], "w") as handle:
    json.dump({{"argv": [os.fsencode(a).hex() for a in sys.argv[1:]],
               "env": {{k: os.environ.get(k) for k in ("K", "Q", "JOB_ID", "TASK_ID")}},
               "cwd": os.getcwd(), "stdin": sys.stdin.read()}}, handle)
"""


def write_probe(folder) -> str:
    """A command that writes its argv (as hex), some variables, cwd and stdin to $PROBE_OUT."""
    path = os.path.join(str(folder), "probe")
    with open(path, "w") as handle:
        handle.write(PROBE.format(python=sys.executable))
    os.chmod(path, 0o755)
    return path


# =========================================================================================
# Submitting: the batch script and sbatch's flags
# =========================================================================================

def test_submit_prints_the_id_and_gives_sbatch_the_script(fake, run, state_dir, tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    result = run("submit", "-n", "my job", "-C", workdir, "-e", "A=x y", "--",
                 "cmd", "two words", "it's", "", "$HOME", "a\rb")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n" and result.stderr == ""
    assert fake.calls() == [[
        "sbatch", "--parsable", "-J", "my job", "-D", str(workdir), "--export=ALL",
        "-o", f"{state_dir}/jobs/1/stdout", "-e", f"{state_dir}/jobs/1/stderr"]]
    assert fake.job("4711")["script"] == (
        "#!/bin/sh\n"
        "# ostracker job 1, written for sbatch\n"
        "export A='x y'\n"
        "export JOB_ID=1\n"
        "unset TASK_ID\n"
        "export OSTRACKER_ATTEMPT=1\n"
        "exec cmd 'two words' 'it'\"'\"'s' '' '$HOME' 'a'\"$(printf '\\r')\"'b'\n")
    assert info(run, "1")["extension_list"]["slurm_job_id"] == "4711"


def test_a_command_like_an_option_runs_through_env(fake, run):
    ok(run("submit", "--", "-x", "y"))
    assert fake.job("4711")["script"].endswith("\nexec env -- -x y\n")


TRICKY_ARGS = ["plain", "two words", "", " ", "it's", 'say "hi"', "line1\nline2", "$HOME",
               "${PATH}", "`id`", "$(id)", "back\\slash", "*", "?[a]", "-n", "--wait",
               "%j %a %%", "a;b|c&d>e", "tab\there", "#hash", "~", "!", "é ü",
               "dos\r\nline", "\r"]


def test_odd_words_and_environment_reach_the_job_exactly(fake, run, tmp_path):
    probe = write_probe(tmp_path)
    out = tmp_path / "probe.json"
    (tmp_path / "in.txt").write_text("from stdin\n")
    ok(run("submit", "-C", tmp_path, "--stdin", "in.txt", "-e", f"PROBE_OUT={out}",
           "-e", "K=a,b,,c=d", "-e", "Q=it's \"q\" $HOME `id` \\\nl2", "--", probe,
           *TRICKY_ARGS))
    fake("run", "4711")  # as slurmd would: sh runs the batch script
    seen = json.loads(out.read_text())
    assert [bytes.fromhex(word).decode() for word in seen["argv"]] == TRICKY_ARGS
    assert seen["env"] == {"K": "a,b,,c=d", "Q": "it's \"q\" $HOME `id` \\\nl2",
                           "JOB_ID": "1", "TASK_ID": None}
    assert seen["cwd"] == str(tmp_path) and seen["stdin"] == "from stdin\n"
    assert fake.calls("sbatch")[0][-2:] == ["-i", "in.txt"]
    assert info(run, "1")["state"] == "Done"


@pytest.mark.parametrize("options, array, expected", [
    (["-o", "out/%j.log", "--stderr", "err/%a-%%-%x.txt", "--stdin", "in-%j"], None,
     ["-o", "out/1.log", "-e", "err/-%%-%%x.txt", "-i", "in-1"]),
    (["-o", "out/%j.log", "--stderr", "e-%a.txt"], "1-2",
     ["-o", "out/1.%a.log", "-e", "e-%a.txt", "--array=1-2:1"]),
    (["--stdin", "in-%a"], "0-6:3%2",
     ["-o", "{state}/jobs/1/%a.stdout", "-e", "{state}/jobs/1/%a.stderr", "-i", "in-%a",
      "--array=0-6:3%2"]),
])
def test_paths_and_arrays_in_sbatchs_spelling(fake, run, state_dir, options, array, expected):
    args = [*options, *(["--array", array] if array else []), "--", "true"]
    ok(run("submit", *args))
    call = fake.calls("sbatch")[0]
    tail = call[call.index("--export=ALL") + 1:]
    if "-o" not in options:
        assert tail == [word.format(state=state_dir) for word in expected]
    else:
        assert tail == expected


def test_max_parallel_goes_to_the_array_spec(fake, run):
    ok(run("submit", "--array", "3", "--max-parallel", "2", "--", "true"))
    assert fake.calls("sbatch")[0][-1] == "--array=3-3:1%2"


def test_output_lands_where_ostracker_reads_it(fake, run, tmp_path):
    """Slurm's expansion of the translated -o/--stderr names the files ``output`` reads."""
    (tmp_path / "out").mkdir()  # (Slurm makes no directory)
    ok(run("submit", "-C", tmp_path, "--array", "1-2", "-o", "out/%j.log", "--",
           "sh", "-c", 'echo "task $TASK_ID of $JOB_ID"; echo oops >&2'))
    fake("run", "4711_2")
    assert (tmp_path / "out" / "1.2.log").read_text() == "task 2 of 1.2\n"
    assert ok(run("output", "1.2")) == "task 2 of 1.2\n"
    assert ok(run("output", "1.2", "--stderr")) == "oops\n"  # captured in the state dir
    ok(run("submit", "-C", tmp_path, "-o", "back\\slash-%j.log", "--", "echo", "hi"))
    fake("run", "4713")  # (4712 is task 2's own ID)
    assert (tmp_path / "back\\slash-2.log").read_text() == "hi\n"
    assert ok(run("output", "2")) == "hi\n"


def test_captured_output_under_a_state_dir_with_a_percent(fake, run, tmp_path):
    env = {"OSTRACKER_STATE_DIR": str(tmp_path / "50%j state")}
    ok(run("submit", "--", "echo", "captured", env=env))
    fake("run", "4711")
    assert ok(run("output", "1", env=env)) == "captured\n"


def test_submitting_concurrently_gives_distinct_ids(fake, run):
    results = [None] * 6

    def submit(slot):
        results[slot] = run("submit", "-n", f"job{slot}", "--", "true")
    threads = [threading.Thread(target=submit, args=(slot,)) for slot in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(ok(result)) for result in results) == [1, 2, 3, 4, 5, 6]
    jobs = statuses(run)
    assert sorted(job["extension_list"]["slurm_job_id"] for job in jobs.values()) == \
        [str(4711 + n) for n in range(6)]
    assert {job["job_name"] for job in jobs.values()} == {f"job{n}" for n in range(6)}


# =========================================================================================
# States: Slurm's, as DRMAA2's, in 22.05's squeue JSON and in 23.02's
# =========================================================================================

# name: (steps, state, sub_state, exit_status, terminating_signal, started, ended);
# in a step, "@" is the job's Slurm ID; "scancel"/"scontrol" steps run those fakes.
STATE_CASES = {
    "pending": ([], "Queued", "PENDING (Priority)", None, None, False, False),
    "held by the user": ([("scontrol", "hold", "@")],
                         "QueuedHeld", "PENDING (JobHeldUser)", None, None, False, False),
    "held by an operator": ([("hold-admin", "@")],
                            "QueuedHeld", "PENDING (JobHeldAdmin)", None, None, False, False),
    "priority 0": ([("set", "@", "PENDING", "None"), ("priority", "@", "0")],
                   "QueuedHeld", "PENDING", None, None, False, False),
    "running": ([("start", "@")], "Running", "RUNNING", None, None, True, False),
    "configuring": ([("start", "@"), ("flag", "@", "CONFIGURING")],
                    "Running", "CONFIGURING", None, None, True, False),
    "completing": ([("start", "@"), ("end", "@", "0"), ("flag", "@", "COMPLETING")],
                   "Running", "COMPLETING", None, None, True, False),
    "configuring and completing": ([("start", "@"), ("flag", "@", "CONFIGURING"),
                                    ("flag", "@", "COMPLETING")],
                                   "Running", "COMPLETING", None, None, True, False),
    "suspended": ([("start", "@"), ("scontrol", "suspend", "@")],
                  "Suspended", "SUSPENDED", None, None, True, False),
    "stopped": ([("start", "@"), ("flag", "@", "STOPPED")],
                "Suspended", "STOPPED", None, None, True, False),
    "completed": ([("start", "@"), ("end", "@", "0")], "Done", "COMPLETED", 0, None, True, True),
    "failed exit 3": ([("start", "@"), ("end", "@", "3")],
                      "Failed", "FAILED (NonZeroExitCode)", 3, None, True, True),
    "killed": ([("start", "@"), ("end", "@", "--signal", "KILL")],
               "Failed", "FAILED (NonZeroExitCode)", None, "SIGKILL", True, True),
    "cancelled before it started": ([("scancel", "@")], "Failed",
                                    "CANCELLED, before it started", None, None, False, True),
    "cancelled while held": ([("scontrol", "hold", "@"), ("scancel", "@")], "Failed",
                             "CANCELLED, before it started", None, None, False, True),
    "cancelled running": ([("start", "@"), ("scancel", "@")],
                          "Failed", "CANCELLED", None, "SIGTERM", True, True),
    "timeout": ([("start", "@"), ("end", "@", "--signal", "TERM", "--state", "TIMEOUT")],
                "Failed", "TIMEOUT", None, "SIGTERM", True, True),
    "out of memory": ([("start", "@"),
                       ("end", "@", "--signal", "125", "--state", "OUT_OF_MEMORY")],
                      "Failed", "OUT_OF_MEMORY", None, "SIGKILL", True, True),
    "node failure": ([("start", "@"), ("end", "@", "0", "--state", "NODE_FAIL")],
                     "Failed", "NODE_FAIL", None, None, True, True),
    "requeued flag": ([("start", "@"), ("flag", "@", "REQUEUED")],
                      "Requeued", "REQUEUED", None, None, False, False),
    "requeued": ([("start", "@"), ("requeue", "@")],
                 "Requeued", "PENDING (BeginTime)", None, None, False, False),
    "requeued and held": ([("start", "@"), ("requeue", "@"), ("scontrol", "hold", "@")],
                          "RequeuedHeld", "PENDING (JobHeldUser)", None, None, False, False),
    "requeue hold": ([("start", "@"), ("requeue", "@"), ("flag", "@", "REQUEUE_HOLD")],
                     "RequeuedHeld", "REQUEUE_HOLD (BeginTime)", None, None, False, False),
    "special exit": ([("start", "@"), ("requeue", "@"), ("flag", "@", "SPECIAL_EXIT")],
                     "RequeuedHeld", "SPECIAL_EXIT (BeginTime)", None, None, False, False),
    "reservation deleted": ([("flag", "@", "RESV_DEL_HOLD")],
                            "QueuedHeld", "RESV_DEL_HOLD (Priority)", None, None, False, False),
    "a state Slurm may add": ([("set", "@", "FROBNICATED")],
                              "Queued", "FROBNICATED (Priority)", None, None, False, False),
}


@pytest.fixture(scope="module")
def state_table(tmp_path_factory, bytecode_cache):
    """``status --json`` of one job per STATE_CASES entry, for each squeue shape (built once)."""
    built = {}

    def table(version: str) -> dict[str, tuple[dict, dict]]:
        if version not in built:
            root = tmp_path_factory.mktemp(f"states-{version}")
            folder, state = str(root / "fake-slurm"), str(root / "state")
            os.mkdir(folder)
            env = {key: value for key, value in os.environ.items() if key not in
                   ("SLURM_CONF", "SLURM_BITSTR_LEN", "SLURM_TIME_FORMAT",
                    "PYTHONDONTWRITEBYTECODE")}
            env.update(fake_environment(folder, str(root / "python")), **bytecode_cache,
                       OSTRACKER_STATE_DIR=state)
            fake = FakeSlurm(folder, env)
            fake.knob("version", version)
            slurm_ids = {}
            for number, (name, case) in enumerate(STATE_CASES.items(), start=1):
                done = subprocess.run([*CLI, "submit", "-n", name, "--", "true"],
                                      capture_output=True, text=True, env=env, timeout=60)
                assert done.stdout == f"{number}\n", done.stderr
                slurm_ids[name] = str(4710 + number)
                for step in case[0]:
                    step = [slurm_ids[name] if word == "@" else word for word in step]
                    if step[0] in ("scancel", "scontrol"):
                        assert fake.slurm(*step).returncode == 0, step
                    else:
                        fake(*step)
            done = subprocess.run([*CLI, "status", "--json"], capture_output=True, text=True,
                                  env=env, timeout=60)
            assert done.returncode == 0, done.stderr
            jobs = {job["job_name"]: job for job in json.loads(done.stdout)}
            built[version] = {name: (jobs[name], fake.job(slurm_ids[name]))
                              for name in STATE_CASES}
        return built[version]
    return table


@pytest.mark.parametrize("version", ["22.05", "23.02"])
@pytest.mark.parametrize("case", list(STATE_CASES))
def test_slurm_states_as_drmaa2_states(state_table, version, case):
    job, record = state_table(version)[case]
    _, state, sub_state, exit_status, sig, started, ended = STATE_CASES[case]
    assert (job["state"], job["sub_state"], job["exit_status"], job["terminating_signal"]) == \
        (state, sub_state, exit_status, sig)
    assert (job["dispatch_time"] is not None, job["finish_time"] is not None) == \
        (started, ended)
    assert job["dispatch_time"] == (iso(record["start_time"]) if started else None)
    assert job["finish_time"] == (iso(record["end_time"]) if ended else None)
    assert job["allocated_machines"] == (["fake1"] if started else None)
    assert job["pid"] is None and job["extension_list"]["slurm_job_id"] == str(record["job_id"])
    assert JobState(job["state"]).ended is ended


def test_node_lists_are_expanded(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711", "n[1-2,09-10],login")
    assert info(run, "1")["allocated_machines"] == ["n1", "n2", "n09", "n10", "login"]


def test_an_unknown_state_is_never_an_end(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake("set", "4711", "FROBNICATED")
    assert state_of(run, "1") == "Queued"
    waited = run("wait", "1", "--timeout", "0.3")
    assert waited.returncode == 124, waited.stderr
    deleted = run("delete", "1")
    assert deleted.returncode == 1 and "only ended jobs" in one_line(deleted.stderr)
    assert job_dirs(os.environ["OSTRACKER_STATE_DIR"]) == ["1"]


def test_status_filters_by_the_mapped_state(fake, run):
    for _ in range(3):
        ok(run("submit", "--", "true"))
    fake("start", "4712")
    assert fake.slurm("scontrol", "hold", "4713").returncode == 0
    assert ok(run("status", "-q", "--state", "Running")) == "2\n"
    assert ok(run("status", "-q", "--state", "QueuedHeld")) == "3\n"
    assert ok(run("status", "-q", "--state", "Queued")) == "1\n"


# =========================================================================================
# wait
# =========================================================================================

def later(fake, *steps):
    """Run ``(polls, fake-slurm args)`` steps from a thread, each once ostracker has
    asked squeue ``polls`` more times: the job moves while ``wait`` waits, not before.
    """
    errors = []

    def act():
        try:
            for polls, step in steps:
                seen = len(fake.calls("squeue"))
                poll(lambda: len(fake.calls("squeue")) >= seen + polls, timeout=20,
                     message="ostracker to poll squeue")
                fake(*step)
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)
    thread = threading.Thread(target=act)
    thread.start()
    return thread, errors


def test_wait_returns_with_the_exit_status_once_the_job_ends(fake, run):
    ok(run("submit", "--", "true"))
    thread, errors = later(fake, (1, ("start", "4711")), (1, ("end", "4711", "3")))
    started = time.monotonic()
    result = run("wait", "1", "--json")
    thread.join()
    assert not errors, errors
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["state"] == "Failed"
    assert len(fake.calls("squeue")) >= 3  # it polled until the end showed
    assert time.monotonic() - started < 15


def test_wait_goes_on_through_a_requeue(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    thread, errors = later(fake, (1, ("requeue", "4711")), (2, ("start", "4711")),
                           (1, ("end", "4711", "0")))
    result = run("wait", "1", "--timeout", "20")
    thread.join()
    assert not errors, errors
    assert result.returncode == 0, result.stderr
    assert fake.job("4711")["restart_cnt"] == 1 and state_of(run, "1") == "Done"


def test_wait_exits_128_plus_the_signal(fake, run):
    ok(run("submit", "--", "true"))
    thread, errors = later(fake, (1, ("start", "4711")), (0, ("end", "4711", "--signal", "KILL")))
    result = run("wait", "1")
    thread.join()
    assert not errors, errors
    assert result.returncode == 128 + 9


def test_wait_times_out_while_slurm_keeps_the_job_queued(fake, run):
    ok(run("submit", "--", "true"))
    started = time.monotonic()
    result = run("wait", "1", "--timeout", "0.5")
    assert result.returncode == 124 and "timed out" in one_line(result.stderr)
    assert 0.5 <= time.monotonic() - started < 5


def test_submit_wait_on_an_array(fake, run):
    thread, errors = later(fake, (1, ("start", "4711")), (0, ("end", "4711_1", "0")),
                           (1, ("end", "4711_2", "0")))
    result = run("submit", "--wait", "--array", "1-2", "--", "true")
    thread.join()
    assert not errors
    assert result.returncode == 0 and result.stdout == "1\n", result.stderr


def test_wait_on_an_array_with_a_failed_task_exits_1(fake, run):
    ok(run("submit", "--array", "1-2", "--", "true"))
    fake("start", "4711")
    fake("end", "4711_1", "0")
    fake("end", "4711_2", "2")
    result = run("wait", "1", "--json")
    assert result.returncode == 1
    assert [(job["id"], job["exit_status"]) for job in json.loads(result.stdout)] == \
        [("1.1", 0), ("1.2", 2)]
    assert ok(run("wait", "1.1")) == "" and run("wait", "1.2").returncode == 2


# =========================================================================================
# Control: the command each action runs, its effect awaited, wrong states refused
# =========================================================================================

def test_suspend_and_resume_run_scontrol(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.clear_calls()
    ok(run("suspend", "1"))
    assert fake.control_calls() == [["scontrol", "suspend", "4711"]]
    assert fake.job("4711")["state"] == "SUSPENDED"
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Suspended", "SUSPENDED")
    fake.clear_calls()
    ok(run("resume", "1"))
    assert fake.control_calls() == [["scontrol", "resume", "4711"]]
    assert fake.job("4711")["state"] == "RUNNING" and state_of(run, "1") == "Running"


def test_hold_and_release_run_scontrol(fake, run):
    ok(run("submit", "--", "true"))
    ok(run("hold", "1"))
    assert fake.control_calls() == [["scontrol", "hold", "4711"]]
    assert fake.job("4711")["priority"] == 0 and state_of(run, "1") == "QueuedHeld"
    ok(run("release", "1"))
    assert fake.control_calls()[1:] == [["scontrol", "release", "4711"]]
    assert fake.job("4711")["priority"] > 0 and state_of(run, "1") == "Queued"


@pytest.mark.parametrize("started", [False, True])
def test_terminate_runs_scancel(fake, run, started):
    ok(run("submit", "--", "true"))
    if started:
        fake("start", "4711")
    ok(run("terminate", "1"))
    assert fake.control_calls() == [["scancel", "4711"]]
    job = info(run, "1")
    assert (job["state"], job["terminating_signal"], job["sub_state"]) == \
        ("Failed", "SIGTERM", "CANCELLED") if started else \
        ("Failed", None, "CANCELLED, before it started")
    assert run("wait", "1").returncode == (128 + 15 if started else 1)


def test_terminate_returns_while_slurm_waits_for_the_processes(fake, run):
    """A job that ignores SIGTERM stays COMPLETING until KillWait: terminated all the same."""
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.knob("kill-wait")
    started = time.monotonic()
    ok(run("terminate", "1"))
    assert time.monotonic() - started < 5
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Running", "COMPLETING")
    fake("reap", "4711")
    job = info(run, "1")
    assert (job["state"], job["terminating_signal"]) == ("Failed", "SIGTERM")


# action: (steps before, the command expected, the fake's record after)
EFFECTS = {
    "suspend": ([("start", "4711")], ["scontrol", "suspend", "4711"], {"state": "SUSPENDED"}),
    "resume": ([("start", "4711"), ("set", "4711", "SUSPENDED")],
               ["scontrol", "resume", "4711"], {"state": "RUNNING"}),
    "hold": ([], ["scontrol", "hold", "4711"], {"priority": 0}),
    "release": ([("priority", "4711", "0")], ["scontrol", "release", "4711"],
                {"priority": 4294901759}),
    "terminate": ([("start", "4711")], ["scancel", "4711"], {"state": "CANCELLED"}),
}


@pytest.mark.parametrize("action", list(EFFECTS))
def test_control_returns_once_slurm_shows_the_effect(fake, run, action):
    steps, command, after = EFFECTS[action]
    ok(run("submit", "--", "true"))
    for step in steps:
        fake(*step)
    fake.knob("delay", "2")  # squeue shows what scontrol/scancel did from its third look
    fake.clear_calls()
    ok(run(action, "1"))
    calls = fake.calls()
    assert fake.control_calls() == [command]
    assert calls.index(command) > 0 and calls[0] == SQUEUE  # the state was read first
    # it looked until Slurm showed the effect: twice not yet, then once shown
    assert len([call for call in calls[calls.index(command):] if call[0] == "squeue"]) == 3
    fake.unknob("delay")
    record = fake.job("4711")
    assert {key: record[key] for key in after} == after


@pytest.mark.parametrize("steps, action, state", [
    ([], "suspend", "Queued"),
    ([], "resume", "Queued"),
    ([], "release", "Queued"),
    ([("start", "4711")], "hold", "Running"),
    ([("start", "4711")], "release", "Running"),
    ([("start", "4711")], "resume", "Running"),
    ([("start", "4711"), ("set", "4711", "SUSPENDED")], "suspend", "Suspended"),
    ([("start", "4711"), ("set", "4711", "SUSPENDED")], "hold", "Suspended"),
    ([("priority", "4711", "0")], "hold", "QueuedHeld"),
    ([("priority", "4711", "0")], "suspend", "QueuedHeld"),
    ([("start", "4711"), ("end", "4711", "0")], "terminate", "Done"),
    ([("start", "4711"), ("end", "4711", "0")], "suspend", "Done"),
    ([("start", "4711"), ("end", "4711", "1")], "release", "Failed"),
])
def test_control_refuses_a_job_in_the_wrong_state(fake, run, steps, action, state):
    ok(run("submit", "--", "true"))
    for step in steps:
        fake(*step)
    before = fake.job("4711")
    fake.clear_calls()
    result = run(action, "1")
    assert result.returncode == 1
    assert one_line(result.stderr) == f"ostracker: job 1 is {state}: cannot {action} it"
    assert fake.control_calls() == []  # Slurm was not asked
    assert fake.job("4711") == before


def test_control_of_unknown_jobs(fake, run):
    result = run("suspend", "7")
    assert result.returncode == 1 and "no such job: 7" in one_line(result.stderr)
    assert fake.calls() == []


def test_control_reports_slurms_refusal_in_one_line(fake, run):
    """The job ended between ostracker's look and scontrol's act: Slurm's words, exit 1."""
    ok(run("submit", "--", "true"))
    fake.knob("fail-scontrol-hold", "Job has already finished for job 4711\n"
              "slurm_suspend error: Job has already finished\n")
    result = run("hold", "1")
    assert result.returncode == 1
    assert one_line(result.stderr) == \
        "ostracker: scontrol: slurm_suspend error: Job has already finished"
    fake.knob("fail-scancel", "scancel: error: Kill job error on job id 4711: "
              "Invalid job id specified\n")
    result = run("terminate", "1")
    assert result.returncode == 1
    assert one_line(result.stderr) == \
        "ostracker: scancel: Kill job error on job id 4711: Invalid job id specified"


def test_slurms_refusals_as_errors_of_the_python_api(fake, state_dir):
    """22.05's words for a job in the wrong state and for a job it does not know."""
    tracker = SlurmTracker(state_dir)
    job_id = tracker.add_job(JobTemplate("true"))
    fake.knob("fail-scontrol-hold", "Job has already finished for job 4711\n"
              "slurm_suspend error: Job has already finished\n")
    with pytest.raises(InvalidState, match="^scontrol: slurm_suspend error: Job has already "
                       "finished$"):
        tracker.job_control(job_id, "hold")
    fake("start", "4711")
    fake.knob("fail-scontrol-suspend", "Unexpected message received for job 4711\n")
    with pytest.raises(JobNotFound, match="^scontrol: Unexpected message received for job "
                       "4711$"):
        tracker.job_control(job_id, "suspend")


def test_suspend_falls_back_to_sigtstp_for_users_who_are_no_operators(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.knob("deny-suspend")
    fake.clear_calls()
    ok(run("suspend", "1"))
    assert fake.control_calls() == [["scontrol", "suspend", "4711"],
                                    ["scancel", "--full", "--signal=TSTP", "4711"]]
    record = fake.job("4711")
    assert record["state"] == "RUNNING"
    assert record["signals"] == [{"signal": "TSTP", "full": True}]
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Suspended", "RUNNING; stopped by SIGTSTP")
    # suspended once is suspended: a second suspend is refused, and asks Slurm nothing
    fake.clear_calls()
    again = run("suspend", "1")
    assert again.returncode == 1 and "is Suspended" in one_line(again.stderr)
    assert fake.control_calls() == []
    ok(run("resume", "1"))
    assert fake.control_calls() == [["scontrol", "resume", "4711"],
                                    ["scancel", "--full", "--signal=CONT", "4711"]]
    assert fake.job("4711")["signals"][-1] == {"signal": "CONT", "full": True}
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Running", "RUNNING")


def test_a_job_stopped_by_sigtstp_then_requeued_runs_again(fake, run, state_dir):
    """The note in stopped.json is of one run: a job Slurm requeued and started again,
    with new processes, runs."""
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.knob("deny-suspend")
    ok(run("suspend", "1"))
    with open(os.path.join(state_dir, "jobs", "1", "stopped.json")) as handle:
        assert json.load(handle) == {
            "schema": 1, "slurm_ids": ["4711"],
            "runs": {"4711": {"start": fake.job("4711")["start_time"], "restarts": 0}}}
    fake("requeue", "4711")  # node failure, preemption: Slurm runs it again from the start
    assert state_of(run, "1") == "Requeued"
    fake("start", "4711")
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Running", "RUNNING")
    ok(run("suspend", "1"))  # and it can be stopped again
    assert state_of(run, "1") == "Suspended"
    ok(run("resume", "1"))
    assert state_of(run, "1") == "Running"


def test_a_sigtstp_note_written_without_its_run_still_holds(fake, run, state_dir):
    """stopped.json as the first release wrote it (no runs): the stop holds for any run."""
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    with open(os.path.join(state_dir, "jobs", "1", "stopped.json"), "w") as handle:
        json.dump({"schema": 1, "slurm_ids": ["4711"]}, handle)
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Suspended", "RUNNING; stopped by SIGTSTP")


def test_sigtstp_fallback_for_the_running_tasks_of_an_array(fake, run):
    ok(run("submit", "--array", "1-3", "--", "true"))
    fake("start", "4711_1")
    fake("start", "4711_2")
    fake.knob("deny-suspend")
    fake.clear_calls()
    ok(run("suspend", "1"))
    assert fake.control_calls() == [
        ["scontrol", "suspend", "4711_1,4711_2"],
        ["scancel", "--full", "--signal=TSTP", "4711_1,4711_2"]]
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Suspended", "1.2": "Suspended", "1.3": "Queued"}
    ok(run("resume", "1.2"))
    assert fake.control_calls()[-1] == ["scancel", "--full", "--signal=CONT", "4711_2"]
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Suspended", "1.2": "Running", "1.3": "Queued"}


def test_control_through_the_python_api(fake, state_dir):
    tracker = SlurmTracker(state_dir)
    job_id = tracker.add_job(JobTemplate("true", job_name="api"))
    assert tracker.job_state(job_id)[0] is JobState.QUEUED
    with pytest.raises(TrackerError, match="cannot suspend"):
        tracker.job_control(job_id, "suspend")
    tracker.job_control(job_id, "hold")
    assert tracker.job_state(job_id) == (JobState.QUEUED_HELD, "PENDING (JobHeldUser)")


# =========================================================================================
# Arrays
# =========================================================================================

def test_pending_tasks_are_expanded_and_listed_one_by_one(fake, run):
    ok(run("submit", "--array", "1-7:3%2", "--", "true"))
    record = fake.job("4711")
    assert record["pending"] == [1, 4, 7] and record["max_parallel"] == 2
    jobs = statuses(run, "1")
    assert list(jobs) == ["1.1", "1.4", "1.7"]
    assert {job["state"] for job in jobs.values()} == {"Queued"}
    assert [job["extension_list"]["slurm_job_id"] for job in jobs.values()] == \
        ["4711_1", "4711_4", "4711_7"]
    rows = ok(run("status", "1")).splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["1.1", "1.4", "1.7"]
    assert [row.split()[2] for row in rows[1:]] == ["Queued"] * 3


def test_tasks_as_slurm_runs_them(fake, run):
    ok(run("submit", "--array", "0-9", "--", "true"))
    fake("start", "4711_3")  # task 3 gets an ID of its own; 0-2,4-9 stay pending
    assert fake.job("4711_3")["job_id"] == 4712
    assert fake.job("4711_0")["pending"] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    jobs = statuses(run, "1")
    assert len(jobs) == 10
    assert [job_id for job_id, job in jobs.items() if job["state"] == "Running"] == ["1.3"]
    for index in range(9):  # all but 9: then task 9 is alone in the array's record
        if index != 3:
            fake("start", f"4711_{index}")
    assert fake.job("4711_9")["array_task_id"] == 9
    fake("end", "4711", "0")
    jobs = statuses(run, "1")
    assert [job_id for job_id, job in jobs.items() if job["state"] == "Queued"] == ["1.9"]
    assert {job["state"] for job_id, job in jobs.items() if job_id != "1.9"} == {"Done"}
    fake("start", "4711_9")
    fake("end", "4711_9", "4")
    job = info(run, "1.9")
    assert (job["state"], job["exit_status"]) == ("Failed", 4)
    assert run("wait", "1").returncode == 1


def test_a_long_list_of_pending_tasks_is_read_whole(fake, run):
    """squeue cuts an array's task string after 64 characters unless SLURM_BITSTR_LEN=0."""
    ok(run("submit", "--array", "1-60", "--", "true"))
    fake("start", ",".join(f"4711_{index}" for index in [*range(1, 60, 2), 4]))
    cut, = [job["array_task_string"] for job in json.loads(ok(fake.slurm("squeue", "--json")))
            ["jobs"] if job["array_task_string"]]
    assert cut.endswith("...") and len(cut) < 64  # (a user's squeue, without the variable)
    jobs = statuses(run, "1")
    assert len(jobs) == 60
    assert [job_id for job_id, job in jobs.items() if job["state"] == "Queued"] == \
        [f"1.{index}" for index in [2, *range(6, 61, 2)]]


def test_hold_and_release_a_whole_array_spare_its_running_tasks(fake, run):
    ok(run("submit", "--array", "1-3", "--", "true"))
    fake("start", "4711_1")
    ok(run("hold", "1"))
    assert fake.control_calls() == [["scontrol", "hold", "4711"]]
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Running", "1.2": "QueuedHeld", "1.3": "QueuedHeld"}
    ok(run("release", "1"))
    assert fake.control_calls()[-1] == ["scontrol", "release", "4711"]
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Running", "1.2": "Queued", "1.3": "Queued"}


def test_hold_one_queued_task(fake, run):
    ok(run("submit", "--array", "1-3", "--", "true"))
    ok(run("hold", "1.2"))
    assert fake.control_calls() == [["scontrol", "hold", "4711_2"]]
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Queued", "1.2": "QueuedHeld", "1.3": "Queued"}
    result = run("hold", "1.2")
    assert result.returncode == 1 and "1.2 is QueuedHeld" in one_line(result.stderr)


def test_an_array_with_no_task_to_act_on_is_refused(fake, run):
    ok(run("submit", "--array", "1-2", "--", "true"))
    result = run("suspend", "1")
    assert result.returncode == 1
    assert one_line(result.stderr) == "ostracker: array 1 has no task that can be suspended"
    assert fake.control_calls() == []


def test_terminate_a_whole_array(fake, run):
    ok(run("submit", "--array", "1-4", "--", "true"))
    fake("start", "4711_1")
    fake("start", "4711_2")
    fake("end", "4711_2", "0")
    ok(run("terminate", "1"))
    assert fake.control_calls() == [["scancel", "4711"]]
    jobs = statuses(run, "1")
    assert {job_id: (job["state"], job["sub_state"], job["terminating_signal"])
            for job_id, job in jobs.items()} == {
        "1.1": ("Failed", "CANCELLED", "SIGTERM"),
        "1.2": ("Done", "COMPLETED", None),
        "1.3": ("Failed", "CANCELLED, before it started", None),
        "1.4": ("Failed", "CANCELLED, before it started", None)}


@pytest.mark.parametrize("accounting", [True, False])
def test_terminate_one_queued_task_of_an_array(fake, run, state_dir, accounting):
    """Slurm 22.05 drops a queued task cancelled alone from its array's pending tasks,
    and neither squeue nor sacct knows it ever after: ostracker's note in
    dropped.json says what became of it."""
    if not accounting:
        fake.knob("no-accounting")
    ok(run("submit", "--array", "1-3", "--", "true"))
    started = int(time.time())
    ok(run("terminate", "1.2"))
    assert fake.control_calls() == [["scancel", "4711_2"]]
    assert "4711_2" not in ok(fake.slurm("squeue", "-h", "-o", "%i", "-t", "all"))
    jobs = statuses(run, "1")
    assert {job_id: (job["state"], job["sub_state"]) for job_id, job in jobs.items()} == {
        "1.1": ("Queued", "PENDING (Priority)"),
        "1.2": ("Failed", "CANCELLED, before it started"),
        "1.3": ("Queued", "PENDING (Priority)")}
    task = jobs["1.2"]
    assert (task["exit_status"], task["terminating_signal"], task["dispatch_time"]) == \
        (None, None, None)
    assert iso(started) <= task["finish_time"] <= iso(int(time.time()))
    assert run("wait", "1.2").returncode == 1
    with open(os.path.join(state_dir, "jobs", "1", "dropped.json")) as handle:
        assert list(json.load(handle)["cancelled"]) == ["4711_2"]
    fake("start", "4711")  # the others run and end; Slurm forgets the array
    fake("end", "4711", "0")
    fake("forget", "4711")
    jobs = statuses(run, "1")
    assert (jobs["1.2"]["state"], jobs["1.2"]["sub_state"]) == \
        ("Failed", "CANCELLED, before it started")
    assert {jobs[job_id]["state"] for job_id in ("1.1", "1.3")} == \
        {"Done" if accounting else "Undetermined"}


@pytest.mark.parametrize("name, record", [
    ("dropped.json", {"schema": 1, "cancelled": ["4711_2"]}),
    ("dropped.json", {"schema": 1, "cancelled": {"4711_2": "yesterday"}}),
    ("dropped.json", {"schema": 1}),
    ("stopped.json", {"schema": 1, "slurm_ids": ["4711_1"], "runs": ["4711_1"]}),
    ("stopped.json", {"schema": 1, "slurm_ids": ["4711_1"],
                      "runs": {"4711_1": {"start": "now", "restarts": 0}}}),
    ("stopped.json", {"schema": 1, "slurm_ids": ["4711_1"], "runs": {"4711_1": {"start": 1}}}),
])
def test_a_damaged_note_is_its_jobs_error(fake, run, state_dir, name, record):
    ok(run("submit", "--array", "1-3", "--", "true"))
    ok(run("submit", "--", "true"))
    with open(os.path.join(state_dir, "jobs", "1", name), "w") as handle:
        json.dump(record, handle)
    result = run("status", "--json")  # the others are listed; that one is reported
    assert result.returncode == 0
    assert one_line(result.stderr).endswith(f"damaged record {state_dir}/jobs/1/{name}")
    assert [job["id"] for job in json.loads(result.stdout)] == ["2"]
    result = run("info", "1.1")
    assert result.returncode == 1 and f"/jobs/1/{name}" in one_line(result.stderr)


def test_what_slurm_says_of_a_task_wins_over_the_dropped_note(fake, run, state_dir):
    """A task that Slurm started after all (between ostracker's look and scancel) is
    what Slurm says it is, not "CANCELLED, before it started"."""
    ok(run("submit", "--array", "1-3", "--", "true"))
    with open(os.path.join(state_dir, "jobs", "1", "dropped.json"), "w") as handle:
        json.dump({"schema": 1, "cancelled": {"4711_2": 1}}, handle)
    fake("start", "4711")
    fake("end", "4711", "0")
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Done", "1.2": "Done", "1.3": "Done"}
    fake("forget", "4711")
    assert {job_id: job["state"] for job_id, job in statuses(run, "1").items()} == \
        {"1.1": "Done", "1.2": "Done", "1.3": "Done"}


# =========================================================================================
# sacct: what only accounting keeps
# =========================================================================================

def test_sacct_gives_an_ended_jobs_memory_and_cpu_times(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    assert "ru_maxrss" not in info(run, "1")["extension_list"]
    assert fake.calls("sacct") == []  # nothing asked of accounting for a running job
    fake("end", "4711", "0")
    fake("account", "4711", "2048K", "01:02.500", "1-00:00:01")
    extension = info(run, "1")["extension_list"]
    assert fake.calls("sacct") == [["sacct", "-P", "-n", SACCT_FORMAT, "-j", "4711"]]
    assert extension == {"slurm_job_id": "4711", "ru_maxrss": 2048, "user_time_ms": 62500,
                         "system_time_ms": 86_401_000}


def test_sacct_for_the_tasks_of_an_array(fake, run):
    ok(run("submit", "--array", "1-2", "--", "true"))
    fake("start", "4711")
    fake("end", "4711_1", "0")
    fake("account", "4711_1", "1.5M", "00:01.000", "00:00.250")
    jobs = statuses(run, "1")
    assert fake.calls("sacct") == [["sacct", "-P", "-n", SACCT_FORMAT, "-j", "4711_1"]]
    assert {key: jobs["1.1"]["extension_list"].get(key) for key in
            ("ru_maxrss", "user_time_ms", "system_time_ms")} == \
        {"ru_maxrss": 1536, "user_time_ms": 1000, "system_time_ms": 250}
    assert "ru_maxrss" not in jobs["1.2"]["extension_list"]


@pytest.mark.parametrize("steps, state, sub_state, exit_status, sig, started", [
    ([("start", "4711"), ("end", "4711", "3")], "Failed", "FAILED", 3, None, True),
    ([("start", "4711"), ("end", "4711", "0")], "Done", "COMPLETED", 0, None, True),
    ([("start", "4711"), ("scancel", "4711")], "Failed", "CANCELLED", None, "SIGTERM", True),
    ([("scancel", "4711")], "Failed", "CANCELLED, before it started", None, None, False),
])
def test_a_job_slurmctld_forgot_is_read_from_sacct(fake, run, monkeypatch, steps, state,
                                                   sub_state, exit_status, sig, started):
    monkeypatch.setenv("TZ", "IST-5:30")  # sacct prints local time: not UTC here
    ok(run("submit", "--", "true"))
    for step in steps:
        if step[0] == "scancel":
            assert fake.slurm(*step).returncode == 0
        else:
            fake(*step)
    record = fake.job("4711")
    fake("forget", "4711")
    job = info(run, "1")
    assert fake.calls("sacct")[-1] == ["sacct", "-P", "-n", SACCT_FORMAT, "-j", "4711"]
    assert (job["state"], job["sub_state"], job["exit_status"], job["terminating_signal"]) == \
        (state, sub_state, exit_status, sig)
    assert job["dispatch_time"] == (iso(record["start_time"]) if started else None)
    assert job["finish_time"] == iso(record["end_time"])
    assert job["allocated_machines"] == (["fake1"] if started else None)
    if started:
        assert job["extension_list"]["ru_maxrss"] == 3200
    assert ok(run("delete", "1")) == ""


def test_a_users_own_slurm_settings_change_nothing(fake, run, monkeypatch):
    """ostracker runs Slurm's commands with SLURM_TIME_FORMAT=standard, SLURM_BITSTR_LEN=0."""
    monkeypatch.setenv("SLURM_TIME_FORMAT", "relative")
    monkeypatch.setenv("SLURM_BITSTR_LEN", "8")
    ok(run("submit", "--", "true"))
    ok(run("submit", "--array", "1-9", "--", "true"))
    fake("start", "4711,4712_1,4712_5")
    fake("end", "4711", "0")
    record = fake.job("4711")
    fake("forget", "4711")
    assert "-" not in fake.slurm("sacct", "-P", "-n", "--format=Start", "-j", "4711").stdout
    job = info(run, "1")
    assert (job["state"], job["dispatch_time"], job["finish_time"]) == \
        ("Done", iso(record["start_time"]), iso(record["end_time"]))
    assert [job_id for job_id, job in statuses(run, "2").items() if job["state"] == "Queued"] \
        == ["2.2", "2.3", "2.4", "2.6", "2.7", "2.8", "2.9"]


def test_without_accounting_a_forgotten_job_is_undetermined(fake, run):
    ok(run("submit", "--", "true"))
    ok(run("submit", "--", "true"))
    for slurm_id, code in (("4711", "3"), ("4712", "0")):
        fake("start", slurm_id)
        fake("end", slurm_id, code)
    fake.knob("no-accounting")
    fake("forget", "4712")
    result = run("status", "--json")
    assert result.returncode == 0 and result.stderr == ""  # no accounting: not an error
    jobs = {job["id"]: job for job in json.loads(result.stdout)}
    assert (jobs["1"]["state"], jobs["1"]["exit_status"]) == ("Failed", 3)
    extension = jobs["1"]["extension_list"]
    assert extension["slurm_job_id"] == "4711"
    assert [extension[key] for key in ("ru_maxrss", "user_time_ms", "system_time_ms")] == \
        [None, None, None]  # there, and null
    assert jobs["2"]["state"] == "Undetermined"
    assert jobs["2"]["sub_state"] == \
        "Slurm no longer knows job 4712 and keeps no accounting of it"
    assert run("wait", "2").returncode == 1
    assert ok(run("delete", "2")) == "" and job_dirs(os.environ["OSTRACKER_STATE_DIR"]) == ["1"]


def test_a_forgotten_arrays_tasks_that_ran_are_read_from_sacct(fake, run):
    ok(run("submit", "--array", "1-2", "--", "true"))
    fake("start", "4711")
    fake("end", "4711_1", "0")
    fake("end", "4711_2", "5")
    fake("forget", "4711")
    jobs = statuses(run, "1")
    assert {job_id: (job["state"], job["exit_status"]) for job_id, job in jobs.items()} == \
        {"1.1": ("Done", 0), "1.2": ("Failed", 5)}
    assert fake.calls("sacct")[-1][-1] == "4711"  # the array whole: see the next test


def test_a_forgotten_arrays_cancelled_pending_tasks_are_read_from_sacct(fake, run):
    """`sacct -j A_I` lists no task that never started while others were pending too:
    only `sacct -j A` has their `A_[..]` line, which may still list tasks that ran
    since (22.05's lags): their own lines win over it."""
    ok(run("submit", "--array", "1-3", "--", "true"))
    fake("start", "4711_1")
    fake("end", "4711_1", "0")
    ok(run("terminate", "1"))
    fake("forget", "4711")
    lines = ok(fake.slurm("sacct", "-P", "-n", "--format=JobID,State", "-j", "4711"))
    assert lines.splitlines()[-1] == "4711_[1-3]|CANCELLED by %d" % os.getuid()
    fake.clear_calls()
    jobs = statuses(run, "1")
    assert fake.calls("sacct") == [["sacct", "-P", "-n", SACCT_FORMAT, "-j", "4711"]]
    assert {job_id: (job["state"], job["sub_state"]) for job_id, job in jobs.items()} == {
        "1.1": ("Done", "COMPLETED"), "1.2": ("Failed", "CANCELLED, before it started"),
        "1.3": ("Failed", "CANCELLED, before it started")}


# =========================================================================================
# When Slurm fails
# =========================================================================================

def test_sbatch_failing_leaves_nothing_recorded(fake, run, state_dir):
    fake.knob("fail-sbatch", "sbatch: error: Batch job submission failed: Unable to contact "
              "slurm controller (connect failure)\n")
    result = run("submit", "--", "true")
    assert result.returncode == 1 and result.stdout == ""
    assert one_line(result.stderr) == (
        "ostracker: Slurm is not reachable: sbatch: Batch job submission failed: "
        "Unable to contact slurm controller (connect failure)")
    assert job_dirs(state_dir) == []
    assert ok(run("status")) == "" and ok(run("status", "--json")) == "[]\n"
    fake.unknob("fail-sbatch")
    assert ok(run("submit", "--", "true")) == "2\n"  # an ID is never given twice


def test_sbatch_refusing_the_job_is_its_own_line(fake, run, state_dir):
    fake.knob("fail-sbatch", "sbatch: error: Batch job submission failed: "
              "Invalid account or account/partition combination specified\n")
    result = run("submit", "--", "true")
    assert result.returncode == 1
    assert one_line(result.stderr) == ("ostracker: sbatch: Batch job submission failed: "
                                       "Invalid account or account/partition combination "
                                       "specified")
    assert job_dirs(state_dir) == []


def test_sbatch_printing_the_cluster_name_too(fake, run):
    fake.knob("sbatch-cluster", "fakecluster")
    ok(run("submit", "--", "true"))
    assert info(run, "1")["extension_list"]["slurm_job_id"] == "4711"
    assert ok(fake.slurm("sbatch", "--parsable", input="#!/bin/sh\n")) == "4712;fakecluster\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_while_sbatch_submits_is_held_until_the_job_is_recorded(
        fake, run, state_dir, tmp_path, signum):
    """Slurm took the job: ostracker records it before the signal may end it."""
    gate = tmp_path / "sbatch-go"
    fake.knob("sbatch-gate", str(gate))  # sbatch says the job's ID only once it exists
    submitting = subprocess.Popen([*CLI, "submit", "--", "true"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: fake.calls("sbatch"), timeout=20, message="sbatch to run")
        submitting.send_signal(signum)
        gate.touch()
        out, err = submitting.communicate(timeout=30)
    finally:
        if submitting.poll() is None:
            submitting.kill()
            submitting.wait()
    assert out == ""  # no ID printed
    if signum == signal.SIGINT:
        assert submitting.returncode == 130
        assert err.splitlines()[-1] == "ostracker: interrupted"
    else:
        assert submitting.returncode == -signum
    jobs = statuses(run)
    assert list(jobs) == ["1"] and jobs["1"]["extension_list"]["slurm_job_id"] == "4711"


def test_slurmctld_down(fake, run, state_dir):
    ok(run("submit", "--", "true"))
    fake.knob("down")
    for args in (["status"], ["info", "1"], ["wait", "1"], ["suspend", "1"],
                 ["submit", "--", "true"], ["monitor"], ["monitor", "--machine"]):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert one_line(result.stderr).startswith("ostracker: Slurm is not reachable: "), args
    assert job_dirs(state_dir) == ["1"]


def test_squeue_printing_no_json(fake, run):
    ok(run("submit", "--", "true"))
    fake.knob("fail-squeue", "")  # no words, exit 1
    result = run("status")
    assert result.returncode == 1 and one_line(result.stderr) == "ostracker: squeue: squeue failed"


# =========================================================================================
# Scheduling: queues are partitions; slots, priority, begin, hold, dependencies
# =========================================================================================

def scheduling_flags(fake) -> list[str]:
    """What the last sbatch got after ostracker's own options (those end with -e PATH)."""
    call = fake.calls("sbatch")[-1]
    return call[call.index("-e") + 2:]


@pytest.mark.parametrize("options, flags", [
    (["-q", "gpu"], ["-p", "gpu"]),
    (["-q", "gpu", "--slots", "2"], ["-p", "gpu", "--cpus-per-task=2"]),
    (["--priority", "-5"], ["--nice=5"]),
    (["--priority", "0"], []),
    (["--hold"], ["--hold"]),
    (["--begin", "2026-12-01T10:00:00+00:00"], ["--begin=2026-12-01T05:00:00"]),
    (["--begin", "2026-12-01T10:00:00.25Z"], ["--begin=2026-12-01T05:00:01"]),
    (["-q", "gpu", "--slots", "3", "--priority", "-1", "--hold"],
     ["-p", "gpu", "--cpus-per-task=3", "--nice=1", "--hold"]),
])
def test_scheduling_options_become_sbatch_options(fake, run, monkeypatch, options, flags):
    monkeypatch.setenv("TZ", "EST5")  # --begin is local time, as sbatch reads it
    fake("node", "idle", "debug*", "gpu")
    ok(run("submit", *options, "--", "true"))
    assert scheduling_flags(fake) == flags
    assert ok(run("submit", "--array", "1-2", *options, "--", "true")) == "2\n"
    assert scheduling_flags(fake) == ["--array=1-2:1", *flags]


@pytest.mark.parametrize("dependency, slurms", [
    ("afterok:1", "afterok:4711"),
    ("afterok:1:2.3,afterany:2", "afterok:4711:4712_3,afterany:4712"),
    ("afternotok:2.1?after:1", "afternotok:4712_1?after:4711"),
])
def test_a_dependency_names_slurms_jobs(fake, run, dependency, slurms):
    """Job N is its Slurm job, task N.I is A_I, array N is Slurm's array job (all its tasks)."""
    ok(run("submit", "--", "true"))
    ok(run("submit", "--array", "1-3", "--", "true"))
    ok(run("submit", "-d", dependency, "--", "true"))
    assert scheduling_flags(fake) == [f"--dependency={slurms}"]
    job = info(run, "3")
    assert (job["dependency"], job["job_template"]["dependency"]) == (dependency, dependency)
    assert (job["state"], job["sub_state"]) == ("Queued", "PENDING (Dependency)")


def test_scheduling_fields_of_a_slurm_jobinfo(fake, run):
    fake("node", "idle", "debug*", "gpu")
    ok(run("submit", "-q", "gpu", "--slots", "2", "--", "true"))
    job = info(run, "1")
    assert (job["queue_name"], job["slots"], job["attempt"], job["dependency"]) == \
        ("gpu", None, 1, None)
    assert job["job_template"]["queue_name"] == "gpu" and job["job_template"]["min_slots"] == 2
    assert fake.job("4711")["partition"] == "gpu"


def test_an_unknown_partition_is_sbatchs_refusal(fake, run, state_dir):
    result = run("submit", "-q", "nosuch", "--", "true")
    assert result.returncode == 1
    assert one_line(result.stderr) == "ostracker: sbatch: invalid partition specified: nosuch"
    assert job_dirs(state_dir) == []


def test_a_priority_above_0_is_refused_before_sbatch(fake, run, state_dir):
    result = run("submit", "--priority", "1", "--", "true")
    assert (result.returncode, result.stdout) == (1, "")
    assert one_line(result.stderr) == ("ostracker: the Slurm backend cannot raise --priority "
                                       "above 0 (Slurm lets only administrators raise priority)")
    assert fake.calls() == [] and job_dirs(state_dir) == []
    assert ok(run("submit", "--", "true")) == "1\n"


@pytest.mark.parametrize("dependency, message", [
    ("afterok:9", "dependency on 9: no such job: 9"),
    ("afterok:1:9", "dependency on 9: no such job: 9"),
    ("afterany:1.2", "dependency on 1.2: no such job: 1.2 (job 1 is not an array)"),
    ("afterok:2.7", "dependency on 2.7: no such job: 2.7 (not a task of array 2)"),
    ("afterok:3", "dependency on 3: no such job: 3 with the slurm backend (it is a local "
                  "job: give --backend local)"),
])
def test_a_dependency_on_no_slurm_job_of_this_state_dir_is_refused(fake, run, state_dir,
                                                                  dependency, message):
    ok(run("submit", "--", "true"))
    ok(run("submit", "--array", "1-3", "--", "true"))
    ok(run("--backend", "local", "submit", "--wait", "--", "true"))  # job 3, compacted
    fake.clear_calls()
    result = run("submit", "-d", dependency, "--", "true")
    assert (result.returncode, result.stdout) == (1, "")
    assert one_line(result.stderr) == f"ostracker: {message}"
    assert fake.calls("sbatch") == [] and job_dirs(state_dir) == ["1", "2"]


def test_a_dependency_never_met_on_a_job_slurm_forgot_is_refused(fake, run, state_dir):
    """Slurm takes a job it no longer knows for a dependency met, however it ended."""
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake("end", "4711", "3")
    ok(run("submit", "-d", "afterok:1", "--", "true"))  # Slurm knows 4711: it judges
    fake("forget", "4711")
    result = run("submit", "-d", "afterok:1", "--", "true")
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        "ostracker: dependency never satisfied: afterok:1 (1 Failed); not submitted, since "
        "Slurm, which no longer knows job 4711, would take it for satisfied")
    assert len(fake.calls("sbatch")) == 2 and job_dirs(state_dir) == ["1", "2"]
    ok(run("submit", "-d", "afternotok:1", "--", "true"))  # met: Slurm agrees
    assert scheduling_flags(fake) == ["--dependency=afternotok:4711"]
    ok(run("submit", "--", "true"))  # job 4, Slurm's 4714 (a refusal takes no ID)
    ok(run("submit", "-d", "afterok:1?afterok:4", "--", "true"))  # the other decides
    assert scheduling_flags(fake) == ["--dependency=afterok:4714"]
    ok(run("submit", "-d", "afterok:1?afterany:1", "--", "true"))  # met: Slurm agrees
    assert scheduling_flags(fake) == ["--dependency=afterany:4711"]
    result = run("submit", "-d", "afterok:1?afterok:1.0", "--", "true")
    assert one_line(result.stderr) == (
        "ostracker: dependency on 1.0: no such job: 1.0 (job 1 is not an array)")
    result = run("submit", "-d", "afterok:1?afterok:1", "--", "true")
    assert one_line(result.stderr) == (
        "ostracker: dependency never satisfied: afterok:1 (1 Failed); not submitted, since "
        "Slurm, which no longer knows job 4711, would take it for satisfied")
    assert job_dirs(state_dir) == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.parametrize("array", [False, True])
def test_a_dependency_never_satisfied_fails_the_job_and_cancels_it(fake, run, array):
    """Slurm leaves such a job pending (without kill_invalid_depend): ostracker reports it
    Failed, as locally, and the first read that sees it cancels it."""
    ok(run("submit", "--", "true"))
    ok(run("submit", *(["--array", "1-2"] if array else []), "-d", "afterok:1", "--", "true"))
    fake("start", "4711")
    fake("end", "4711", "3")
    fake("set", "4712", "PENDING", "DependencyNeverSatisfied")
    fake.clear_calls()
    never = "dependency never satisfied: afterok:1"
    jobs = json.loads(ok(run("status", "--json", "2")))
    assert [(job["state"], job["sub_state"], job["exit_status"]) for job in jobs] == \
        [("Failed", never, None)] * len(jobs)
    assert fake.control_calls() == [["scancel", "4712"]]  # an array whole
    assert fake.job("4712")["state"] == "CANCELLED"
    fake.clear_calls()
    waited = run("wait", "2", "--json", "--timeout", "5")
    assert waited.returncode == 1, waited.stderr
    printed = json.loads(waited.stdout)  # an array's tasks as a list
    assert {job["sub_state"] for job in (printed if array else [printed])} == {never}
    assert fake.control_calls() == []  # cancelled once
    fake("forget", "4712")  # slurmctld forgot it: sacct keeps the reason
    assert {job["sub_state"] for job in statuses(run, "2").values()} == {never}
    assert all(job["finish_time"] for job in statuses(run, "2").values())
    ok(run("delete", "2"))


def test_hold_at_submit_and_release(fake, run):
    ok(run("submit", "--hold", "--", "true"))
    assert (info(run, "1")["state"], info(run, "1")["sub_state"]) == \
        ("QueuedHeld", "PENDING (JobHeldUser)")
    ok(run("release", "1"))
    assert fake.control_calls() == [["scontrol", "release", "4711"]]
    assert state_of(run, "1") == "Queued"
    fake("start", "4711")
    fake("end", "4711", "0")
    assert ok(run("wait", "1")) == ""


def test_a_held_array_is_released_whole(fake, run):
    ok(run("submit", "--hold", "--array", "1-3", "--", "true"))
    assert {job["state"] for job in statuses(run, "1").values()} == {"QueuedHeld"}
    ok(run("release", "1"))
    assert {job["state"] for job in statuses(run, "1").values()} == {"Queued"}


def test_a_job_waiting_for_its_begin_time(fake, run):
    ok(run("submit", "--begin", "now+1h", "--", "true"))
    job = info(run, "1")
    assert (job["state"], job["sub_state"]) == ("Queued", "PENDING (BeginTime)")
    assert job["job_template"]["start_time"].endswith("+00:00")
    waited = run("wait", "1", "--timeout", "0.3")
    assert waited.returncode == 124, waited.stderr


# -- queue ---------------------------------------------------------------------------------

QUEUE_CALLS = [["sinfo", "-h", "-O", "PartitionName:|,CPUsState:|"],
               ["squeue", "--me", "-h", "-r", "-o", "%P|%T|%r|%Q"]]


@pytest.fixture
def partitions(fake, run):
    """debug (fake1, 4 CPUs) and gpu (fake1 and g1: 12), with jobs in both; calls cleared."""
    fake("node", "idle", "debug*", "gpu")
    fake("add-node", "g1", "8", "gpu")
    ok(run("submit", "-q", "gpu", "--slots", "3", "--", "true"))  # 4711: runs on g1
    fake("start", "4711", "g1")
    ok(run("submit", "--array", "1-3", "--", "true"))  # 4712: three queued in debug
    ok(run("submit", "--hold", "--", "true"))  # 4713: held in debug
    ok(run("submit", "-q", "gpu", "-d", "afterok:1", "--", "true"))  # 4714
    fake("set", "4714", "PENDING", "DependencyNeverSatisfied")  # Failed, to ostracker
    fake("foreign", "alices-job", "alice", "4242", "RUNNING")  # 4715 on fake1: in use only
    fake.clear_calls()
    return fake


def test_queue_lists_the_partitions(partitions, run):
    header, *rows = ok(run("queue")).splitlines()
    assert header.split() == ["QUEUE", "SLOTS", "IN", "USE", "RUNNING", "QUEUED", "HELD"]
    assert [row.split() for row in rows] == [["debug", "4", "1", "0", "3", "1"],
                                             ["gpu", "12", "4", "1", "0", "0"]]
    assert partitions.calls() == QUEUE_CALLS  # one sinfo, one squeue
    partitions.clear_calls()
    assert json.loads(ok(run("queue", "--json"))) == [
        {"name": "debug", "slots": 4, "in_use": 1, "running": 0, "queued": 3, "held": 1},
        {"name": "gpu", "slots": 12, "in_use": 4, "running": 1, "queued": 0, "held": 0}]
    assert partitions.calls() == QUEUE_CALLS


def test_queue_shows_one_partition(partitions, run):
    assert json.loads(ok(run("queue", "gpu", "--json"))) == \
        {"name": "gpu", "slots": 12, "in_use": 4, "running": 1, "queued": 0, "held": 0}
    assert ok(run("queue", "debug")).splitlines()[1].split() == \
        ["debug", "4", "1", "0", "3", "1"]
    result = run("queue", "nosuch")
    assert (result.returncode, result.stdout) == (1, "")
    assert one_line(result.stderr) == "ostracker: no such queue: nosuch"


def test_a_down_node_counts_in_slots_not_in_use(fake, run):
    fake("node", "down*", "debug*")
    assert json.loads(ok(run("queue", "debug", "--json")))["slots"] == 4
    assert json.loads(ok(run("queue", "debug", "--json")))["in_use"] == 0


@pytest.mark.parametrize("args, message", [
    (["gpu", "--slots", "2"], "cannot create or resize queues"),
    (["new", "--slots", "1"], "cannot create or resize queues"),
    (["gpu", "--delete"], "cannot delete queues"),
])
def test_queues_are_not_ostrackers_to_change(fake, run, args, message):
    result = run("queue", *args)
    assert (result.returncode, result.stdout) == (1, "")
    assert one_line(result.stderr) == (f"ostracker: the Slurm backend {message}: its queues "
                                       "are Slurm partitions, which an administrator "
                                       "configures")
    assert fake.calls() == []


def test_queue_names_for_completion(partitions, state_dir):
    assert SlurmTracker(state_dir).queue_names() == ["debug", "gpu"]
    assert partitions.calls() == QUEUE_CALLS[:1]


# =========================================================================================
# monitor: the cluster's jobs, everyone's, and its nodes
# =========================================================================================

def test_monitor_shows_every_job_of_the_cluster(fake, run):
    ok(run("submit", "-n", "mine", "--array", "1-2", "--", "true"))
    fake("start", "4711_2", "n[1-2]")  # Slurm's job 4712
    fake("foreign", "alices-job", "alice", "4242", "RUNNING")  # 4713
    jobs = {job["id"]: job for job in json.loads(ok(run("monitor", "--json")))}
    assert sorted(jobs) == ["4711_1", "4711_2", "4713"]
    assert (jobs["4711_1"]["state"], jobs["4711_1"]["job_owner"], jobs["4711_1"]["uid"]) == \
        ("Queued", ME, os.getuid())
    assert jobs["4711_2"]["state"] == "Running"
    assert jobs["4711_2"]["allocated_machines"] == ["n1", "n2"]
    assert (jobs["4713"]["job_name"], jobs["4713"]["job_owner"], jobs["4713"]["uid"]) == \
        ("alices-job", "alice", 4242)
    assert jobs["4713"]["extension_list"] == {"partition": "debug", "command": None,
                                              "working_directory": "/tmp"}
    assert ok(run("status", "-q")) == "1.1\n1.2\n"  # status: this state dir's jobs only
    header, *rows = ok(run("monitor")).splitlines()
    assert header.split() == ["SLURM", "ID", "USER", "NAME", "STATE", "SLURM", "STATE", "NODES",
                              "STARTED", "WALL"]
    assert sorted(row.split()[:3] for row in rows) == [
        ["4711_1", ME, "mine"], ["4711_2", ME, "mine"], ["4713", "alice", "alices-job"]]


@pytest.mark.parametrize("args, ids", [
    (["4712"], ["4712"]),
    (["4711"], ["4711_1", "4711_2"]),
    (["4711_2"], ["4711_2"]),
    (["--user", "alice"], ["4712"]),
    (["--user", "4242"], ["4712"]),
    (["--name", "ali*"], ["4712"]),
    (["--name", "ine"], ["4711_1", "4711_2"]),
])
def test_monitor_filters(fake, run, args, ids):
    ok(run("submit", "-n", "mine", "--array", "1-2", "--", "true"))
    fake("foreign", "alices-job", "alice", "4242")
    found = json.loads(ok(run("monitor", "--json", *args)))
    assert sorted(job["id"] for job in found) == ids


def test_monitor_an_unknown_slurm_job(fake, run):
    ok(run("submit", "--", "true"))
    result = run("monitor", "4711", "9999")
    assert result.returncode == 1
    assert one_line(result.stderr) == "ostracker: no such Slurm job: 9999"
    assert result.stdout.splitlines()[1].split()[0] == "4711"


def test_monitor_machine(fake, run):
    fake("node", "mixed", "debug*", "long")
    node, = json.loads(ok(run("monitor", "--machine", "--json")))
    assert fake.calls("sinfo") == [["sinfo", "-h", "-N", "-O",
                                    "NodeList:|,StateLong:|,CPUs:|,Sockets:|,Cores:|,"
                                    "Threads:|,Memory:|,CPUsLoad:|,FreeMem:|,Partition:|"]]
    assert {key: node[key] for key in ("name", "available", "sockets", "cores_per_socket",
                                       "threads_per_core", "load", "phys_memory",
                                       "virt_memory")} == \
        {"name": "fake1", "available": True, "sockets": 1, "cores_per_socket": 4,
         "threads_per_core": 1, "load": 0.05, "phys_memory": 7900 * 1024 * 1024,
         "virt_memory": None}
    extension = node["extension_list"]
    assert (extension["state"], extension["cpus"], extension["free_memory"]) == \
        ("mixed", 4, 6000 * 1024 * 1024)
    assert extension["partitions"] == ["debug", "long"]  # without the default's "*"
    header, row = ok(run("monitor", "--machine")).splitlines()
    assert header.split() == ["NODE", "STATE", "CPUS", "LOAD", "MEMORY", "FREE", "PARTITIONS"]
    assert row.split()[:8] == ["fake1", "mixed", "4", "0.05", "7.7", "GiB", "5.9", "GiB"]
    fake("node", "down*")
    assert json.loads(ok(run("monitor", "--machine", "--json")))[0]["available"] is False


def test_monitor_machine_arch_and_os(fake, run):
    """sinfo -O has no Arch or OS field in 22.05 (it warns, prints them empty and
    exits 0): they come from `scontrol -o show node`, whose OS holds spaces."""
    node, = json.loads(ok(run("monitor", "--machine", "--json")))
    assert fake.calls("scontrol") == [["scontrol", "-o", "show", "node"]]
    assert list(node) == ["name", "available", "sockets", "cores_per_socket",
                          "threads_per_core", "load", "phys_memory", "virt_memory",
                          "machine_os", "machine_os_version", "machine_arch", "extension_list"]
    assert (node["machine_os"], node["machine_os_version"], node["machine_arch"]) == \
        ("Linux", "6.1.0-18-amd64", "x86_64")
    fake("platform", "aarch64", "Linux 6.8.0-1004-raspi")
    node, = json.loads(ok(run("monitor", "--machine", "--json")))
    assert (node["machine_os"], node["machine_os_version"], node["machine_arch"]) == \
        ("Linux", "6.8.0-1004-raspi", "aarch64")
    fake("platform")  # a node that never registered: scontrol has neither
    node, = json.loads(ok(run("monitor", "--machine", "--json")))
    assert (node["machine_os"], node["machine_os_version"], node["machine_arch"]) == \
        (None, None, None)
    assert node["name"] == "fake1" and node["sockets"] == 1


def test_monitor_refuses_local_only_options(fake, run):
    for option in (["--jobs"], ["--interval", "1"]):
        result = run("monitor", *option)
        assert result.returncode == 2 and option[0] in one_line(result.stderr)
    assert fake.calls() == []


# =========================================================================================
# Limits and the job's lifetime: Slurm's own options, the script's ulimit, retries, --on-end
# =========================================================================================

def lifetime_flags(fake) -> list[str]:
    """What the last sbatch got after -o PATH (and -e PATH, unless joined)."""
    call = fake.calls("sbatch")[-1]
    after = call.index("-o") + 2
    return call[after + 2:] if call[after:after + 1] == ["-e"] else call[after:]


@pytest.mark.parametrize("options, flags", [
    (["-t", "1"], ["--time=0-00:01:00"]),
    (["-t", "90s"], ["--time=0-00:02:00"]),  # Slurm counts minutes: rounded up
    (["-t", "61m"], ["--time=0-01:01:00"]),
    (["-t", "2-03:04:05"], ["--time=2-03:05:00"]),
    (["--limit", "wallclock_time=1d"], ["--time=1-00:00:00"]),
    (["-t", "10", "--deadline", "2026-12-01T10:00:00+00:00"],
     ["--time=0-00:10:00", "--deadline=2026-12-01T05:00:00"]),
    (["-t", "10", "--deadline", "2026-12-01T10:00:00.5Z"],
     ["--time=0-00:10:00", "--deadline=2026-12-01T05:00:01"]),
    (["-t", "5", "--signal", "USR1"], ["--time=0-00:05:00", "--signal=B:USR1@60"]),
    (["-t", "5", "--signal", "sigusr2@30"], ["--time=0-00:05:00", "--signal=B:USR2@30"]),
    (["-t", "5", "--signal", "HUP@65535"], ["--time=0-00:05:00", "--signal=B:HUP@65535"]),
    # a signal Slurm has no name for goes by number
    (["-t", "5", "--signal", "PWR@10"],
     ["--time=0-00:05:00", f"--signal=B:{int(signal.SIGPWR)}@10"]),
    (["--limit", "OPEN_FILES=17", "--retries", "2", "--on-end", "true"], []),  # the script's
])
def test_limits_become_sbatch_options(fake, run, monkeypatch, options, flags):
    monkeypatch.setenv("TZ", "EST5")  # --deadline is local time, as sbatch reads it
    ok(run("submit", *options, "--", "true"))
    assert lifetime_flags(fake) == flags
    if "--on-end" not in options:
        ok(run("submit", "--array", "1-2", *options, "--", "true"))
        assert lifetime_flags(fake) == ["--array=1-2:1", *flags]


def test_limits_come_after_the_scheduling_options(fake, run):
    ok(run("submit", "--hold", "-t", "3", "--priority", "-2", "--", "true"))
    assert scheduling_flags(fake) == ["--nice=2", "--hold", "--time=0-00:03:00"]


def test_an_array_list_goes_to_sbatch_as_it_is(fake, run):
    ok(run("submit", "--array", "0,4,8-10%2", "--", "true"))
    assert fake.calls("sbatch")[0][-1] == "--array=0,4,8-10%2"
    assert sorted(statuses(run)) == ["1.0", "1.10", "1.4", "1.8", "1.9"]


def test_join_gives_sbatch_no_stderr_file(fake, run, state_dir, tmp_path):
    ok(run("submit", "--join", "-C", tmp_path, "--", "sh", "-c", "echo out; echo err >&2"))
    call = fake.calls("sbatch")[0]
    assert "-e" not in call and call[call.index("-o") + 1] == f"{state_dir}/jobs/1/stdout"
    fake("run", "4711")  # Slurm writes stderr where -o goes when there is no -e
    assert ok(run("output", "1")) == "out\nerr\n"
    ok(run("submit", "--join", "-C", tmp_path, "-o", "both.log", "--", "true"))
    assert fake.calls("sbatch")[1][-2:] == ["-o", "both.log"]


@pytest.mark.parametrize("options, message", [
    (["-t", "5", "--kill-after", "10"],
     "the Slurm backend cannot honour --kill-after: the time from SIGTERM to SIGKILL is "
     "Slurm's KillWait, one setting for the whole cluster"),
    (["--deadline", "now+1h"],
     "the Slurm backend needs -t/--time with --deadline: Slurm starts a job only if its time "
     "limit ends by the deadline (and removes it otherwise)"),
    (["--array", "1-2", "--on-end", "true"],
     "the Slurm backend cannot run --on-end once for a whole array (a task cannot know it is "
     "the last): submit CMD as a job of its own with -d afterany:ID"),
    (["-t", "5", "--signal", "USR1", "--retries", "1"],
     "the Slurm backend cannot send --signal to a job with --retries or --on-end: Slurm "
     "signals the batch shell, which then runs the command instead of being it"),
    (["--deadline", "now+1h", "-t", "5", "--signal", "USR1", "--on-end", "true"],
     "the Slurm backend cannot send --signal to a job with --retries or --on-end: Slurm "
     "signals the batch shell, which then runs the command instead of being it"),
    (["-t", "5", "--signal", "USR1@65536"],
     "the Slurm backend can send --signal at most 65535 s before the limit (Slurm's most)"),
])
def test_what_slurm_cannot_do_is_refused_before_sbatch(fake, run, state_dir, options,
                                                       message):
    result = run("submit", *options, "--", "true")
    assert (result.returncode, result.stdout) == (1, "")
    assert one_line(result.stderr) == f"ostracker: {message}"
    assert fake.calls() == [] and job_dirs(state_dir) == []


def test_retries_0_is_no_retry(fake, run):
    ok(run("submit", "--retries", "0", "--", "true"))
    assert fake.job("4711")["script"].endswith("\nexport OSTRACKER_ATTEMPT=1\nexec true\n")


ALL_LIMITS = ["--limit", "CPU_TIME=1h", "--limit", "CORE_FILE_SIZE=0", "--limit",
              "DATA_SIZE=1000", "--limit", "FILE_SIZE=1M", "--limit", "OPEN_FILES=17",
              "--limit", "STACK_SIZE=8M", "--limit", "VIRTUAL_MEMORY=4G"]


def test_resource_limits_are_ulimit_lines_before_the_exec(fake, run):
    ok(run("submit", *ALL_LIMITS, "--", "cmd"))
    script = fake.job("4711")["script"]
    lines = script.split("\nexport OSTRACKER_ATTEMPT=1\n")[1].splitlines()

    def line(key, words):
        return (f"{words} || {{ echo 'ostracker: job 1: cannot set --limit {key} ({words})' "
                ">&2; exit 126; }")
    # a POSIX sh's units: -c and -f in 512-byte blocks, -d, -s and -v in KiB, rounded up
    assert lines == [line("CPU_TIME=3600", "ulimit -S -t 3600"),
                     line("CORE_FILE_SIZE=0", "ulimit -S -c 0"),
                     line("DATA_SIZE=1000", "ulimit -S -d 1"),
                     line("FILE_SIZE=1048576", "ulimit -S -f 2048"),
                     line("OPEN_FILES=17", "ulimit -S -n 17"),
                     line("STACK_SIZE=8388608", "ulimit -S -s 8192"),
                     line("VIRTUAL_MEMORY=4294967296", "ulimit -S -v 4194304"),
                     "exec cmd"]


def test_the_job_runs_under_its_limits(fake, run, tmp_path):
    import resource

    ok(run("submit", "-C", tmp_path, "--limit", "OPEN_FILES=17", "--limit", "FILE_SIZE=1K",
           "--", "sh", "-c", "ulimit -n; ulimit -f; ulimit -Hn"))
    fake("run", "4711")  # (the fake runs the script with /bin/sh, as slurmd does)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert ok(run("output", "1")).split() == ["17", "2", str(hard)]  # the hard limit stays
    assert state_of(run, "1") == "Done"


def test_a_limit_the_node_cannot_set_fails_the_job_saying_so(fake, run):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    ok(run("submit", "--limit", f"OPEN_FILES={hard + 1}", "--", "touch", "ran"))
    fake("run", "4711")
    job = info(run, "1")
    assert (job["state"], job["exit_status"]) == ("Failed", 126)
    assert ok(run("output", "1", "--stderr")).splitlines()[-1] == (
        f"ostracker: job 1: cannot set --limit OPEN_FILES={hard + 1} "
        f"(ulimit -S -n {hard + 1})")


def scontrol_updates(fake) -> list[str]:
    return [call[-1] for call in fake.calls("scontrol") if call[1:2] == ["update"]]


def test_retries_run_the_command_again_in_the_batch_script(fake, run, tmp_path):
    ok(run("submit", "-C", tmp_path, "--retries", "2", "--retry-delay", "0.1", "--", "sh", "-c",
           'echo "attempt $OSTRACKER_ATTEMPT"; exit 3'))
    script = fake.job("4711")["script"]
    assert "\n    sleep 0.1\n" in script and '[ "$attempt" -gt 2 ]' in script
    fake.clear_calls()
    fake("run", "4711")
    assert ok(run("output", "1")) == "attempt 1\nattempt 2\nattempt 3\n"
    assert scontrol_updates(fake) == ["Comment=ostracker attempt=2 restarts=0",
                                      "Comment=ostracker attempt=3 restarts=0"]
    job = info(run, "1")
    assert (job["state"], job["exit_status"], job["attempt"], job["sub_state"]) == \
        ("Failed", 3, 3, "FAILED (NonZeroExitCode)")


def test_retries_end_with_the_first_success(fake, run, tmp_path):
    ok(run("submit", "-C", tmp_path, "--retries", "5", "--", "sh", "-c",
           '[ "$OSTRACKER_ATTEMPT" = 2 ]'))
    fake("run", "4711")
    job = info(run, "1")
    assert (job["state"], job["exit_status"], job["attempt"]) == ("Done", 0, 2)


def test_each_attempt_reads_its_stdin_file_from_the_start(fake, run, tmp_path):
    (tmp_path / "in.txt").write_text("line\n")
    ok(run("submit", "-C", tmp_path, "--stdin", "in.txt", "--retries", "1", "--", "sh", "-c",
           "cat; exit 1"))
    fake("run", "4711")
    assert ok(run("output", "1")) == "line\nline\n"


def test_a_command_ended_by_sigterm_is_not_retried(fake, run, tmp_path):
    """SIGTERM is how Slurm ends a job (scancel, its time limit): no attempt after it."""
    ok(run("submit", "-C", tmp_path, "--retries", "3", "--", "sh", "-c",
           'echo "attempt $OSTRACKER_ATTEMPT"; kill -TERM $PPID; exit 1'))
    fake("run", "4711")
    assert ok(run("output", "1")) == "attempt 1\n"
    job = info(run, "1")
    assert (job["state"], job["exit_status"], job["attempt"]) == ("Failed", 1, 1)


def test_a_command_killed_by_a_signal_ends_the_script_so(fake, run, tmp_path):
    ok(run("submit", "-C", tmp_path, "--retries", "1", "--", "sh", "-c", "kill -USR1 $$"))
    fake("run", "4711")
    job = info(run, "1")
    assert (job["state"], job["exit_status"], job["terminating_signal"], job["attempt"]) == \
        ("Failed", None, "SIGUSR1", 2)


def test_attempt_noted_for_an_earlier_run_counts_no_more(fake, run):
    ok(run("submit", "--retries", "3", "--", "true"))
    fake("start", "4711")
    assert fake.slurm("scontrol", "update", "JobId=4711",
                      "Comment=ostracker attempt=3 restarts=0").returncode == 0
    assert info(run, "1")["attempt"] == 3
    fake("requeue", "4711")  # the script starts again, from attempt 1
    fake("start", "4711")
    assert info(run, "1")["attempt"] == 1
    fake.slurm("scontrol", "update", "JobId=4711", "Comment=not ostracker's")
    assert info(run, "1")["attempt"] == 1


def test_an_attempt_that_cannot_be_noted_is_said_on_stderr(fake, run, tmp_path):
    fake.knob("fail-scontrol-update", "slurm_update error: Access/permission denied")
    ok(run("submit", "-C", tmp_path, "--retries", "1", "--", "false"))
    fake("run", "4711")
    assert ok(run("output", "1", "--stderr")) == \
        "ostracker: job 1: cannot note attempt 2 in the Slurm job's comment " \
        "(scontrol update failed)\n"
    assert info(run, "1")["attempt"] == 1  # what Slurm knows


ON_END = 'env | grep ^OSTRACKER_ | grep -v -e BACKEND -e STATE_DIR | sort > on_end.txt'


@pytest.mark.parametrize("command, variables", [
    ("exit 4", ["ATTEMPT=1", "EXIT_STATUS=4", "JOB_ID=1", "JOB_NAME=my job",
                "JOB_STATE=Failed", "TERMINATING_SIGNAL="]),
    ("true", ["ATTEMPT=1", "EXIT_STATUS=0", "JOB_ID=1", "JOB_NAME=my job", "JOB_STATE=Done",
              "TERMINATING_SIGNAL="]),
    ("kill -HUP $$", ["ATTEMPT=1", "EXIT_STATUS=", "JOB_ID=1", "JOB_NAME=my job",
                      "JOB_STATE=Failed", "TERMINATING_SIGNAL=SIGHUP"]),
])
def test_on_end_runs_at_the_end_of_the_batch_script(fake, run, tmp_path, command, variables):
    ok(run("submit", "-n", "my job", "-C", tmp_path, "--on-end", ON_END, "--", "sh", "-c",
           f"echo ran; {command}"))
    fake("run", "4711")
    assert (tmp_path / "on_end.txt").read_text().splitlines() == \
        [f"OSTRACKER_{variable}" for variable in variables]
    assert ok(run("output", "1")) == "ran\n"  # CMD's outputs are /dev/null
    job = info(run, "1")
    assert job["state"] == variables[4].partition("=")[2]
    assert "--on-end" not in (job["sub_state"] or "")


def test_on_end_after_the_last_attempt(fake, run, tmp_path):
    ok(run("submit", "-C", tmp_path, "--retries", "1", "--on-end",
           'echo "$OSTRACKER_ATTEMPT $OSTRACKER_JOB_STATE" >> on_end.txt', "--", "false"))
    fake("run", "4711")
    assert (tmp_path / "on_end.txt").read_text() == "2 Failed\n"


@pytest.mark.parametrize("on_end, note", [("exit 5", "exit status 5"),
                                          ("kill -KILL $$", "killed by SIGKILL")])
def test_a_failed_on_end_is_noted_never_changing_the_state(fake, run, tmp_path, on_end, note):
    ok(run("submit", "-C", tmp_path, "--on-end", on_end, "--", "true"))
    fake("run", "4711")
    assert scontrol_updates(fake)[-1].startswith("Comment=ostracker attempt=1 restarts=0 on_end=")
    job = info(run, "1")
    assert (job["state"], job["exit_status"], job["sub_state"]) == \
        ("Done", 0, f"COMPLETED; --on-end failed: {note}")


def test_a_limit_the_node_cannot_set_runs_no_attempt_and_no_on_end(fake, run, tmp_path):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    ok(run("submit", "-C", tmp_path, "--limit", f"OPEN_FILES={hard + 1}", "--retries", "2",
           "--on-end", "touch on_end", "--", "touch", "ran"))
    fake("run", "4711")
    job = info(run, "1")
    assert (job["state"], job["exit_status"], job["attempt"]) == ("Failed", 126, 1)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "on_end").exists()


def test_limits_apply_to_each_attempt_not_to_on_end(fake, run, tmp_path):
    ok(run("submit", "-C", tmp_path, "--limit", "OPEN_FILES=17", "--retries", "1",
           "--on-end", "ulimit -n > on_end.txt", "--", "sh", "-c", "ulimit -n; exit 1"))
    fake("run", "4711")
    assert ok(run("output", "1")) == "17\n17\n"
    assert (tmp_path / "on_end.txt").read_text() != "17\n"


# -- signal, terminate --grace -------------------------------------------------------------

@pytest.mark.parametrize("name, slurms", [("USR1", "USR1"), ("SIGHUP", "HUP"), ("2", "INT"),
                                          ("PWR", str(int(signal.SIGPWR)))])
def test_signal_runs_scancel_full(fake, run, name, slurms):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.clear_calls()
    started = time.monotonic()
    ok(run("signal", "-s", name, "1"))
    assert time.monotonic() - started < 5
    assert fake.control_calls() == [["scancel", "--full", f"--signal={slurms}", "4711"]]
    assert fake.job("4711")["signals"] == [{"signal": slurms, "full": True}]
    assert state_of(run, "1") == "Running"


def test_signal_reaches_the_running_tasks_of_an_array(fake, run):
    ok(run("submit", "--array", "1-4", "--", "true"))
    fake("start", "4711_2")
    fake("start", "4711_3")
    fake.clear_calls()
    ok(run("signal", "-s", "USR2", "1"))
    assert fake.control_calls() == [["scancel", "--full", "--signal=USR2", "4711_2,4711_3"]]


def test_signal_refuses_a_job_that_does_not_run(fake, run):
    ok(run("submit", "--", "true"))
    result = run("signal", "-s", "USR1", "1")
    assert result.returncode == 1
    assert one_line(result.stderr) == "ostracker: job 1 is Queued: cannot signal it"
    assert fake.control_calls() == []


def test_terminate_with_grace_ends_a_job_that_goes_by_sigterm(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.knob("term-ends")  # it ends by SIGTERM at once
    fake.clear_calls()
    started = time.monotonic()
    ok(run("terminate", "--grace", "20", "1"))
    assert time.monotonic() - started < 5  # no need to wait out the grace
    assert fake.control_calls() == [["scancel", "--full", "--signal=TERM", "4711"]]
    job = info(run, "1")
    assert (job["state"], job["terminating_signal"]) == ("Failed", "SIGTERM")


def test_terminate_with_grace_of_a_job_whose_trap_exits_0(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake.knob("term-ends", "0")
    ok(run("terminate", "--grace", "20", "1"))
    job = info(run, "1")  # as Slurm says: it ended by itself, in its grace
    assert (job["state"], job["exit_status"], job["sub_state"]) == ("Done", 0, "COMPLETED")


def test_terminate_with_grace_cancels_what_is_left_after_it(fake, run):
    ok(run("submit", "--", "true"))
    fake("start", "4711")  # (the fake's jobs ignore SIGTERM)
    fake.clear_calls()
    started = time.monotonic()
    ok(run("terminate", "--grace", "0.8", "1"))
    assert time.monotonic() - started >= 0.8
    assert fake.control_calls() == [["scancel", "--full", "--signal=TERM", "4711"],
                                    ["scancel", "4711"]]
    assert info(run, "1")["sub_state"] == "CANCELLED"


def test_terminate_with_grace_of_an_array(fake, run):
    """SIGTERM to the running tasks; then the array whole, its queued tasks included."""
    ok(run("submit", "--array", "1-3", "--", "true"))
    fake("start", "4711_1")
    fake.knob("term-ends")
    fake.clear_calls()
    ok(run("terminate", "--grace", "20", "1"))
    assert fake.control_calls() == [["scancel", "--full", "--signal=TERM", "4711_1"],
                                    ["scancel", "4711"]]
    assert [job["state"] for job in statuses(run).values()] == ["Failed"] * 3


def test_terminate_with_grace_of_a_queued_job_cancels_it(fake, run):
    ok(run("submit", "--", "true"))
    ok(run("terminate", "--grace", "20", "1"))
    assert fake.control_calls() == [["scancel", "4711"]]


# =========================================================================================
# delete
# =========================================================================================

def test_delete_only_ended_slurm_jobs(fake, run, state_dir):
    for _ in range(3):
        ok(run("submit", "--", "true"))
    fake("start", "4711")
    fake("end", "4711", "0")
    fake("start", "4712")
    result = run("delete", "1", "2")
    assert result.returncode == 1
    assert one_line(result.stderr) == \
        "ostracker: job 2 is Running: only ended jobs can be deleted"
    assert job_dirs(state_dir) == ["2", "3"]
    assert fake.slurm("scancel", "4713").returncode == 0
    fake.clear_calls()
    ok(run("delete", "--finished"))
    assert job_dirs(state_dir) == ["2"]
    assert fake.control_calls() == []  # delete cancels nothing
