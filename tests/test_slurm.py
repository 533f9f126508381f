"""The Slurm backend: its pure helpers, and the real CLI against a real cluster.

The first part needs no cluster and always runs.  The rest drives the cluster
that ``SLURM_CONF`` names (``scripts/slurm-cluster`` starts a throw-away one)
through ``ostracker --backend slurm``; it is skipped, with the reason, when
``sbatch`` is missing or ``sinfo`` does not answer with a usable node.  Every
Slurm job a test's state directory records is cancelled at teardown.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import uuid

import pytest

from conftest import SLURM_TIMEOUT, cancel_slurm_jobs, poll, proc_state, slurm_problem
from ostracker.slurm import commands as slurm
from ostracker.core.errors import (InvalidArgument, InvalidState, JobNotFound, TrackerError,
                                   UnsupportedOperation)
from ostracker.core.models import JobState, JobTemplate
from ostracker.slurm.script import batch_script, scheduling_args, slurm_path


# Arguments no shell may touch on their way to the job; the last one is not UTF-8.
TRICKY_ARGS = [
    "plain", "two words", "", " ", "it's", 'say "hi"', "line1\nline2", "$HOME", "${PATH}",
    "`id`", "$(id)", "back\\slash", "*", "?[a]", "-n", "--wait", "%j %a %%", "a;b|c&d>e",
    "tab\there", "#hash", "~", "!", "é ü", os.fsdecode(b"\xff\xfe raw \x80"),
    "dos\r\nline", "\r",
]
TRICKY_ENV = {
    "OST_COMMA": "a,b,c=d,,e",
    "OST_QUOTES": "it's \"q\" $HOME `id` $(id) \\",
    "OST_NEWLINE": "l1\nl2\n",
    "OST_CRLF": "l1\r\nl2\r",
    "OST_EMPTY": "",
    "OST_RAW": os.fsdecode(b"\xff\x80-raw"),
}

# Writes its argv (after the output path), environment, cwd and stdin, as hex, to argv[1].
PROBE = r"""
import json, os, sys
with open(sys.argv[1], "w") as handle:
    json.dump({"argv": [os.fsencode(a).hex() for a in sys.argv[2:]],
               "env": {k.hex(): v.hex() for k, v in os.environb.items()},
               "cwd": os.getcwd(), "stdin": sys.stdin.buffer.read().hex()}, handle)
"""


def write_probe(directory) -> str:
    path = os.path.join(str(directory), "probe.py")
    with open(path, "w") as handle:
        handle.write(PROBE)
    return path


def read_probe(path) -> dict:
    """What the probe saw: argv as bytes, env as {bytes: bytes}, cwd, stdin bytes."""
    with open(path) as handle:
        data = json.load(handle)
    return {"argv": [bytes.fromhex(a) for a in data["argv"]],
            "env": {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["env"].items()},
            "cwd": data["cwd"], "stdin": bytes.fromhex(data["stdin"])}


def one_line(stderr: str) -> str:
    """The single line of an error; fails on tracebacks and multi-line noise."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr!r}"
    return lines[0]


def job_dirs(state_dir) -> list[str]:
    jobs = os.path.join(state_dir, "jobs")
    return sorted(os.listdir(jobs)) if os.path.isdir(jobs) else []


# =========================================================================================
# 1. Pure functions: no cluster needed, never skipped
# =========================================================================================

@pytest.mark.parametrize("text, indices", [
    ("1,3-9:2%4", [1, 3, 5, 7, 9]),
    ("0", [0]),
    ("0-3", [0, 1, 2, 3]),
    ("5-9%2", [5, 6, 7, 8, 9]),
    ("2,4,6", [2, 4, 6]),
    ("0-10:5", [0, 5, 10]),
    ("1-2,7,10-14:2%3", [1, 2, 7, 10, 12, 14]),
    ("", []),
])
def test_task_indices(text, indices):
    assert slurm.task_indices(text) == indices


@pytest.mark.parametrize("text, hosts", [
    ("n[1-3,07-08],login", ["n1", "n2", "n3", "n07", "n08", "login"]),
    ("vm", ["vm"]),
    ("a-[01-02],b", ["a-01", "a-02", "b"]),
    ("x[9-11]", ["x9", "x10", "x11"]),
    ("gpu[001-002],cpu[5]", ["gpu001", "gpu002", "cpu5"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("n[1-2]-ib,x", ["n1-ib", "n2-ib", "x"]),
    ("", None),
    (None, None),
])
def test_expand_hostlist(text, hosts):
    # (the expected names are what `scontrol show hostnames` prints for each)
    assert slurm.expand_hostlist(text) == hosts


# Every base state Slurm reports, as the DRMAA2 state ostracker documents for it.
DOCUMENTED_STATES = {
    "PENDING": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED,
    "COMPLETED": JobState.DONE,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "REQUEUED": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED_HELD,
    "SPECIAL_EXIT": JobState.REQUEUED_HELD,
    "REQUEUE_CRON": JobState.REQUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED_HELD,
    "POWER_UP_NODE": JobState.QUEUED,
}


def test_state_table_is_the_documented_one():
    assert set(slurm.STATE_OF) == set(DOCUMENTED_STATES)
    for name, state in DOCUMENTED_STATES.items():
        assert slurm.job_state(name, None, False, 0) == (state, name), name


@pytest.mark.parametrize("slurm_state, reason, held, restarts, state, sub_state", [
    ("PENDING", "Priority", False, 0, JobState.QUEUED, "PENDING (Priority)"),
    ("PENDING", "JobHeldUser", True, 0, JobState.QUEUED_HELD, "PENDING (JobHeldUser)"),
    ("PENDING", "JobHeldAdmin", True, 0, JobState.QUEUED_HELD, "PENDING (JobHeldAdmin)"),
    ("PENDING", "BeginTime", False, 2, JobState.REQUEUED, "PENDING (BeginTime)"),
    ("PENDING", "JobHeldUser", True, 1, JobState.REQUEUED_HELD, "PENDING (JobHeldUser)"),
    ("REQUEUED", None, False, 1, JobState.REQUEUED, "REQUEUED"),
    ("REQUEUED", "JobHeldAdmin", True, 1, JobState.REQUEUED_HELD, "REQUEUED (JobHeldAdmin)"),
    ("RUNNING", "None", False, 0, JobState.RUNNING, "RUNNING"),
    ("RUNNING", "", False, 3, JobState.RUNNING, "RUNNING"),
    ("SUSPENDED", "None", False, 0, JobState.SUSPENDED, "SUSPENDED"),
    ("FAILED", "NonZeroExitCode", False, 0, JobState.FAILED, "FAILED (NonZeroExitCode)"),
    ("TIMEOUT", "TimeLimit", False, 0, JobState.FAILED, "TIMEOUT (TimeLimit)"),
    ("COMPLETED", None, True, 0, JobState.DONE, "COMPLETED"),  # held only refines waiting
    # never taken for an end: wait would return and delete remove a live job
    ("NO_SUCH_STATE", None, False, 0, JobState.QUEUED, "NO_SUCH_STATE"),
])
def test_job_state_refinements_and_sub_state(slurm_state, reason, held, restarts, state,
                                             sub_state):
    assert slurm.job_state(slurm_state, reason, held, restarts) == (state, sub_state)


@pytest.mark.parametrize("value, expected", [
    (0, (0, None)),
    (768, (3, None)),              # 22.05: a wait status, exit 3
    (256 * 255, (255, None)),
    (9, (None, "SIGKILL")),        # 22.05: killed by signal 9
    (15, (None, "SIGTERM")),
    (125, (None, "SIGKILL")),      # Slurm's SIG_OOM: the out-of-memory killer's SIGKILL
    (None, (None, None)),
    ({"status": ["EXITED"], "return_code": 3, "signal": {"id": 0, "name": ""}}, (3, None)),
    ({"status": ["EXITED"], "return_code": {"set": True, "infinite": False, "number": 3},
      "signal": {"id": {"set": True, "infinite": False, "number": 0}, "name": ""}}, (3, None)),
    ({"status": ["SUCCESS"], "return_code": {"set": True, "infinite": False, "number": 0},
      "signal": {"id": {"set": True, "infinite": False, "number": 0}, "name": ""}}, (0, None)),
    ({"status": ["SIGNALED"], "return_code": {"set": True, "infinite": False, "number": 0},
      "signal": {"id": {"set": True, "infinite": False, "number": 9}, "name": "KILL"}},
     (None, "SIGKILL")),
    ({"status": ["PENDING"], "return_code": {"set": False, "infinite": False, "number": 0},
      "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""}},
     (None, None)),
])
def test_wait_status(value, expected):
    assert slurm._wait_status(value) == expected


def test_from_squeue_reads_22_05_and_23_02_records():
    old = {"job_id": 12, "job_state": "PENDING", "state_reason": "JobHeldUser", "priority": 0,
           "restart_cnt": 0, "array_job_id": 0, "array_task_id": None, "exit_code": 0,
           "submit_time": 1700000000, "start_time": 0, "end_time": 0, "nodes": "",
           "name": "n", "user_name": "u", "user_id": 5}
    job = slurm._from_squeue(old)
    assert (job.slurm_id, job.state, job.sub_state) == \
        ("12", JobState.QUEUED_HELD, "PENDING (JobHeldUser)")
    assert job.start_time is None and job.exit_status is None
    new = {"job_id": 14, "job_state": ["FAILED"], "state_reason": "NonZeroExitCode",
           "priority": {"set": True, "infinite": False, "number": 100},
           "restart_cnt": 0, "array_job_id": {"set": True, "infinite": False, "number": 13},
           "array_task_id": {"set": True, "infinite": False, "number": 3},
           "exit_code": {"status": ["EXITED"],
                         "return_code": {"set": True, "infinite": False, "number": 3},
                         "signal": {"id": {"set": True, "infinite": False, "number": 0},
                                    "name": ""}},
           "submit_time": {"set": True, "infinite": False, "number": 1700000000},
           "start_time": {"set": True, "infinite": False, "number": 1700000001},
           "end_time": {"set": True, "infinite": False, "number": 1700000004},
           "nodes": "n[1-2]", "name": "x", "user_name": "u",
           "user_id": {"set": True, "infinite": False, "number": 5}}
    job = slurm._from_squeue(new)
    assert (job.slurm_id, job.state, job.exit_status, job.terminating_signal) == \
        ("13_3", JobState.FAILED, 3, None)
    assert (job.start_time, job.end_time, job.uid) == (1700000001, 1700000004, 5)


@pytest.mark.parametrize("stderr, kind", [
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
     "(connect failure)\n", slurm.SlurmUnavailable),
    ("scontrol: error: Invalid job id specified\n", JobNotFound),
    ("scontrol: error: Access/permission denied for job 5\n", slurm.PermissionDenied),
    ("scontrol: error: Job is not pending\n", InvalidState),
    ("sbatch: error: Batch job submission failed: Invalid job array specification\n",
     TrackerError),
])
def test_classify_errors(stderr, kind):
    command = stderr.split(":")[0]
    error = slurm._classify(command, stderr)
    assert type(error) is kind
    assert "\n" not in str(error) and f"{command}: " in str(error)
    assert "error:" not in str(error)  # Slurm's own prefix is dropped


@pytest.mark.parametrize("pattern, is_array, expected", [
    ("out-%j.log", False, "out-7.log"),
    ("out-%j.log", True, "out-7.%a.log"),
    ("t%a.out", True, "t%a.out"),
    ("t%a.out", False, "t.out"),
    ("100%%.txt", False, "100%%.txt"),        # Slurm's own %% is a literal %
    ("%x-%u-%N.txt", False, "%%x-%%u-%%N.txt"),  # Slurm's other codes stay literal
    ("%A_%j.out", True, "%%A_7.%a.out"),
    ("trailing%", False, "trailing%%"),
    ("/abs/%j/%a/%%/f", True, "/abs/7.%a/%a/%%/f"),
    ("no codes", True, "no codes"),
    # With a backslash Slurm expands nothing, and takes each backslash as escaping the next
    # character: in a shell, sbatch -o 'a\b' writes the file ab and -o 'a\\b' the file a\b.
    # So ostracker expands the codes itself, then doubles each backslash.
    ("dir\\x-%j-%a-%%.out", False, "dir\\\\x-7--%.out"),
    ("dir\\x-%%.out", True, "dir\\\\x-%.out"),  # the same file for every task: fine
])
def test_slurm_path(pattern, is_array, expected):
    assert slurm_path(pattern, 7, is_array) == expected


@pytest.mark.parametrize("pattern", ["dir\\x-%j.out", "dir\\x-%a.out", "a\\b%%%a"])
def test_slurm_path_refuses_backslash_per_task_in_array(pattern):
    with pytest.raises(InvalidArgument, match="backslash"):
        slurm_path(pattern, 7, True)
    slurm_path(pattern, 7, False)  # a single job names one file: fine


def _run_batch_script(tmp_path, shell, job_id, template, is_array, env):
    script = batch_script(job_id, template, is_array)
    assert script.startswith(b"#!/bin/sh\n")  # sbatch wants an interpreter line
    path = tmp_path / "job.sh"
    path.write_bytes(script)
    done = subprocess.run([shell, str(path)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return read_probe(tmp_path / "probe.json")


def _shells():
    return [shell for shell in ("sh", "bash") if shutil.which(shell)]


@pytest.mark.parametrize("shell", _shells())
def test_batch_script_single_job_exact_argv_and_env(tmp_path, shell):
    probe = write_probe(tmp_path)
    out = str(tmp_path / "probe.json")
    template = JobTemplate(sys.executable, [probe, out, *TRICKY_ARGS],
                           job_environment={**TRICKY_ENV, "OST_OVERRIDE": "new"})
    env = {"PATH": os.environ["PATH"], "OST_OVERRIDE": "old", "OST_KEPT": "kept",
           "TASK_ID": "stale", "JOB_ID": "stale", "SLURM_ARRAY_TASK_ID": "3"}
    seen = _run_batch_script(tmp_path, shell, 7, template, False, env)
    assert seen["argv"] == [os.fsencode(arg) for arg in TRICKY_ARGS]
    for key, value in TRICKY_ENV.items():
        assert seen["env"][key.encode()] == os.fsencode(value), key
    assert seen["env"][b"OST_OVERRIDE"] == b"new"
    assert seen["env"][b"OST_KEPT"] == b"kept"
    assert seen["env"][b"JOB_ID"] == b"7"
    assert b"TASK_ID" not in seen["env"]


@pytest.mark.parametrize("shell", _shells())
@pytest.mark.parametrize("task", ["0", "12"])
def test_batch_script_array_task_ids(tmp_path, shell, task):
    probe = write_probe(tmp_path)
    out = str(tmp_path / "probe.json")
    template = JobTemplate(sys.executable, [probe, out, *TRICKY_ARGS],
                           job_environment={"OST_COMMA": "x,y"})
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_TASK_ID": task, "TASK_ID": "stale"}
    seen = _run_batch_script(tmp_path, shell, 7, template, True, env)
    assert seen["argv"] == [os.fsencode(arg) for arg in TRICKY_ARGS]
    assert seen["env"][b"JOB_ID"] == f"7.{task}".encode()
    assert seen["env"][b"TASK_ID"] == task.encode()
    assert seen["env"][b"OST_COMMA"] == b"x,y"


@pytest.mark.parametrize("shell", _shells())
def test_batch_script_command_that_looks_like_an_option(tmp_path, shell):
    """A command named ``-x`` runs as locally (execvp); bash's ``exec`` takes options."""
    tool = tmp_path / "bin" / "-x"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\necho ran \"$@\" > '{tmp_path}/ran'\n")
    tool.chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_bytes(batch_script(7, JobTemplate("-x", ["hi"]), False))
    done = subprocess.run([shell, str(script)], capture_output=True, timeout=30,
                          env={"PATH": f"{tool.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ran").read_text() == "ran hi\n"


def _run_supervised(tmp_path, shell, template):
    """Run a script that retries or runs --on-end with ``shell``, a stand-in ``scontrol``
    on PATH logging its arguments; (the script's wait status, the scontrol calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$*\" >> '{tmp_path}/scontrol.log'\n")
    scontrol.chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_bytes(batch_script(7, template, False))
    done = subprocess.run([shell, str(script)], cwd=tmp_path, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL,
                          env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "40"})
    log = tmp_path / "scontrol.log"
    return done.returncode, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("shell", _shells())
def test_batch_script_retries_then_runs_on_end(tmp_path, shell):
    template = JobTemplate("sh", ["-c", 'echo "$OSTRACKER_ATTEMPT $(ulimit -n)" >> attempts; '
                                        'exit 3'],
                           job_name="it's", retries=2, retry_delay=0.1,
                           resource_limits={"OPEN_FILES": 17},
                           on_end="env | grep ^OSTRACKER_ | sort > on_end; exit 2")
    status, calls = _run_supervised(tmp_path, shell, template)
    assert status == 3
    assert (tmp_path / "attempts").read_text() == "1 17\n2 17\n3 17\n"
    assert (tmp_path / "on_end").read_text().splitlines() == [
        "OSTRACKER_ATTEMPT=3", "OSTRACKER_EXIT_STATUS=3", "OSTRACKER_JOB_ID=7",
        "OSTRACKER_JOB_NAME=it's", "OSTRACKER_JOB_STATE=Failed",
        "OSTRACKER_TERMINATING_SIGNAL="]
    assert calls == ["update JobId=40 Comment=ostracker attempt=2 restarts=0",
                     "update JobId=40 Comment=ostracker attempt=3 restarts=0",
                     "update JobId=40 Comment=ostracker attempt=3 restarts=0 on_end=2"]


@pytest.mark.parametrize("shell", _shells())
def test_batch_script_ends_by_the_signal_that_ended_the_command(tmp_path, shell):
    template = JobTemplate("sh", ["-c", "echo ran >> ran; kill -USR1 $$"], retries=1,
                           on_end='echo "$OSTRACKER_TERMINATING_SIGNAL" > on_end')
    status, calls = _run_supervised(tmp_path, shell, template)
    assert status == -signal.SIGUSR1  # as if the shell were the command
    assert (tmp_path / "ran").read_text() == "ran\nran\n"  # a signal is a failure: retried
    assert (tmp_path / "on_end").read_text() == "SIGUSR1\n"
    assert calls == ["update JobId=40 Comment=ostracker attempt=2 restarts=0"]


@pytest.mark.parametrize("shell", _shells())
def test_batch_script_retries_no_command_ended_by_sigterm(tmp_path, shell):
    """SIGTERM to the script is how Slurm ends a job: the attempt is the last."""
    template = JobTemplate("sh", ["-c", "echo ran >> ran; kill -TERM $PPID; exit 1"],
                           retries=3)
    status, calls = _run_supervised(tmp_path, shell, template)
    assert (status, (tmp_path / "ran").read_text(), calls) == (1, "ran\n", [])


@pytest.mark.parametrize("shell", _shells())
def test_batch_script_ulimit_lines(tmp_path, shell):
    template = JobTemplate("sh", ["-c", "ulimit -Sn; ulimit -St"],
                           resource_limits={"OPEN_FILES": 17, "CPU_TIME": 3600})
    script = tmp_path / "job.sh"
    script.write_bytes(batch_script(7, template, False))
    done = subprocess.run([shell, str(script)], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "17\n3600\n"), done.stderr


@pytest.mark.parametrize("fields, dependency, expected", [
    ({}, None, []),
    ({"queue_name": "gpu"}, None, ["-p", "gpu"]),
    ({"queue_name": "gpu", "min_slots": 2}, None, ["-p", "gpu", "--cpus-per-task=2"]),
    ({"priority": -5}, None, ["--nice=5"]),
    ({"priority": 0}, None, []),
    ({"submit_as_hold": True}, None, ["--hold"]),
    ({"dependency": "afterok:7?afternotok:8.2"}, "afterok:40?afternotok:41_2",
     ["--dependency=afterok:40?afternotok:41_2"]),
    ({"queue_name": "q", "min_slots": 3, "priority": -1, "submit_as_hold": True,
      "dependency": "afterany:7"}, "afterany:40",
     ["-p", "q", "--cpus-per-task=3", "--nice=1", "--hold", "--dependency=afterany:40"]),
])
def test_scheduling_args(fields, dependency, expected):
    assert scheduling_args(JobTemplate("true", **fields), dependency) == expected


def test_a_priority_above_0_is_refused_by_name():
    with pytest.raises(UnsupportedOperation, match=r"^the Slurm backend cannot raise "
                       r"--priority above 0 \(Slurm lets only administrators raise priority\)$"):
        scheduling_args(JobTemplate("true", priority=1), None)


@pytest.mark.parametrize("start_time, local", [
    ("2026-12-01T10:00:00.000000+00:00", "2026-12-01T05:00:00"),
    ("2026-12-01T10:00:00.000001+00:00", "2026-12-01T05:00:01"),  # no sooner than asked
    ("2026-12-31T23:59:59.500000+01:00", "2026-12-31T18:00:00"),
])
def test_begin_time_is_sbatchs_local_time(monkeypatch, start_time, local):
    import time

    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    try:
        assert scheduling_args(JobTemplate("true", start_time=start_time), None) == \
            [f"--begin={local}"]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_partitions_sum_their_lines(monkeypatch):
    printed = "debug|1/1/0/2|\ngpu|4/0/4/8|\ndebug|2/0/0/2|\nodd|N/A|\n"
    monkeypatch.setattr(slurm, "run", lambda args: printed)
    assert slurm.partitions() == {"debug": (4, 3), "gpu": (8, 4), "odd": (None, None)}


def test_active_jobs_as_drmaa2_states(monkeypatch):
    printed = ("debug|RUNNING|None|100\ngpu,debug|PENDING|Resources|100\n"
               "debug|PENDING|JobHeldUser|0\ndebug|PENDING|None|0\n"
               "debug|PENDING|DependencyNeverSatisfied|100\n")
    monkeypatch.setattr(slurm, "run", lambda args: printed)
    assert slurm.active_jobs() == [
        (["debug"], JobState.RUNNING, "None"), (["gpu", "debug"], JobState.QUEUED, "Resources"),
        (["debug"], JobState.QUEUED_HELD, "JobHeldUser"),
        (["debug"], JobState.QUEUED_HELD, "None"),
        (["debug"], JobState.QUEUED, "DependencyNeverSatisfied")]


# =========================================================================================
# The cluster: skipped, with the reason, when there is none
# =========================================================================================

@pytest.fixture(scope="module")
def slurm_cluster():
    problem = slurm_problem()
    if problem:
        pytest.skip(f"no usable Slurm cluster: {problem}")


@pytest.fixture
def cluster(slurm_cluster, state_dir, monkeypatch):
    """The state dir of a test that uses the cluster; its Slurm jobs cancelled afterwards."""
    monkeypatch.setenv("OSTRACKER_BACKEND", "slurm")
    yield state_dir
    cancel_slurm_jobs(state_dir)


def slurm_id(info_of_job) -> str:
    return info_of_job["extension_list"]["slurm_job_id"]


def finish(run, job_id):
    """``ostracker wait`` for a Slurm job; returns the CompletedProcess."""
    result = run("wait", "--timeout", SLURM_TIMEOUT, job_id, timeout=SLURM_TIMEOUT + 30)
    assert result.returncode != 124, f"job {job_id} did not end within {SLURM_TIMEOUT} s"
    return result


def squeue_field(slurm_job, field) -> str:
    done = subprocess.run(["squeue", "-h", "--states=all", "-j", slurm_job, "-o", field],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# =========================================================================================
# 2. Submitting through the real CLI
# =========================================================================================

def test_job_gets_exact_argv_env_and_name(cluster, run, submit, info, tmp_path):
    probe = write_probe(tmp_path)
    out = str(tmp_path / "probe.json")
    name = f"ost probe {uuid.uuid4().hex[:6]}"
    env_args = [a for key, value in TRICKY_ENV.items() for a in ("-e", f"{key}={value}")]
    job_id = submit("-n", name, *env_args, "--", sys.executable, probe, out, *TRICKY_ARGS)
    assert re.fullmatch(r"\d+", job_id)
    sid = slurm_id(info(job_id))
    assert squeue_field(sid, "%j") == name
    assert finish(run, job_id).returncode == 0
    seen = read_probe(out)
    assert seen["argv"] == [os.fsencode(arg) for arg in TRICKY_ARGS]
    for key, value in TRICKY_ENV.items():  # the comma too: not through --export
        assert seen["env"][key.encode()] == os.fsencode(value), key
    assert seen["env"][b"JOB_ID"] == job_id.encode()
    assert b"TASK_ID" not in seen["env"]
    record = info(job_id)
    assert record["state"] == "Done" and record["exit_status"] == 0
    assert record["job_name"] == name
    assert record["job_template"]["args"][2:] == TRICKY_ARGS


def test_working_dir_stdin_and_captured_output(cluster, run, submit, info, tmp_path):
    probe = write_probe(tmp_path)
    work = tmp_path / "work dir"
    work.mkdir()
    (work / "in.txt").write_bytes(b"line one\n\xff two\n")
    job_id = submit("-C", work, "--stdin", "in.txt", "--", "sh", "-c",
                    'echo "hello from $JOB_ID"; echo oops >&2; exec "$0" "$@"',
                    sys.executable, probe, str(tmp_path / "probe.json"))
    assert finish(run, job_id).returncode == 0
    seen = read_probe(tmp_path / "probe.json")
    assert seen["cwd"] == str(work)
    assert seen["stdin"] == b"line one\n\xff two\n"
    assert info(job_id)["job_template"]["working_directory"] == str(work)
    assert run("output", job_id).stdout == f"hello from {job_id}\n"
    assert run("output", job_id, "--stderr").stdout == "oops\n"


def test_output_paths_of_a_single_job(cluster, run, submit, tmp_path):
    job_id = submit("-C", tmp_path, "-o", "o-%j-%a-%%.txt", "--stderr", "e-%j-%%-%x.txt",
                    "--", "sh", "-c", "echo out; echo err >&2")
    assert finish(run, job_id).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("[oe]-*")) == \
        sorted([f"o-{job_id}--%.txt", f"e-{job_id}-%-%x.txt"])
    assert (tmp_path / f"o-{job_id}--%.txt").read_text() == "out\n"
    assert (tmp_path / f"e-{job_id}-%-%x.txt").read_text() == "err\n"
    assert run("output", job_id).stdout == "out\n"
    assert run("output", job_id, "--stderr").stdout == "err\n"


def test_output_paths_of_array_tasks(cluster, run, submit, tmp_path):
    job_id = submit("-C", tmp_path, "--array", "0-1", "-o", "o-%j-%a.txt",
                    "--stderr", "%j.err", "--", "sh", "-c",
                    'echo "$JOB_ID $TASK_ID"; echo "e$TASK_ID" >&2')
    assert finish(run, job_id).returncode == 0
    for task in (0, 1):
        assert (tmp_path / f"o-{job_id}.{task}-{task}.txt").read_text() == \
            f"{job_id}.{task} {task}\n"
        assert (tmp_path / f"{job_id}.{task}.err").read_text() == f"e{task}\n"
        assert run("output", f"{job_id}.{task}").stdout == f"{job_id}.{task} {task}\n"


def test_output_path_with_a_backslash_names_that_file(cluster, run, submit, tmp_path):
    """``-o 'a\\b-%j.txt'`` writes the file ``a\\b-N.txt``, as the local backend does.

    Slurm does not expand a path that holds a backslash, and it takes each
    backslash as escaping the next character, so ``back\\slash`` becomes
    ``backslash`` (``back\\\\slash`` would keep it).  ostracker expands the path
    itself but hands the backslash over unescaped.
    """
    job_id = submit("-C", tmp_path, "-o", "back\\slash-%j.txt", "--", "echo", "out")
    assert finish(run, job_id).returncode == 0
    created = sorted(p.name for p in tmp_path.glob("back*"))
    assert created == [f"back\\slash-{job_id}.txt"], created
    assert run("output", job_id).stdout == "out\n"


def read_time(path) -> float:
    """The ``date +%s.%N`` a job wrote to ``path``."""
    with open(path) as handle:
        return float(handle.read())


def test_a_dependency_starts_the_job_after_the_first_ended_done(cluster, run, submit, info,
                                                                tmp_path):
    """afterok: the job starts once the first ended Done; after one that failed it never
    starts, reads Failed, and is no longer left pending in Slurm."""
    first = submit("--", "sh", "-c", f"sleep 1; date +%s.%N > {tmp_path}/first")
    second = submit("-d", f"afterok:{first}", "--", "sh", "-c",
                    f"date +%s.%N > {tmp_path}/second")
    failing = submit("--", "sh", "-c", "exit 3")
    never = submit("-d", f"afterok:{failing}", "--", "touch", str(tmp_path / "never"))
    assert info(second)["dependency"] == f"afterok:{first}"
    assert finish(run, second).returncode == 0
    assert info(first)["state"] == "Done"
    assert read_time(tmp_path / "second") >= read_time(tmp_path / "first")
    assert finish(run, never).returncode == 1
    job = info(never)
    assert (job["state"], job["sub_state"], job["exit_status"]) == \
        ("Failed", f"dependency never satisfied: afterok:{failing}", None)
    assert squeue_field(slurm_id(job), "%T") == "CANCELLED"
    assert not (tmp_path / "never").exists()


def test_hold_at_submit_then_release(cluster, run, submit, info, tmp_path):
    job_id = submit("--hold", "--", "touch", str(tmp_path / "ran"))
    job = info(job_id)
    assert job["state"] == "QueuedHeld" and job["sub_state"].startswith("PENDING (JobHeld")
    result = run("release", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    assert finish(run, job_id).returncode == 0
    assert (tmp_path / "ran").exists()


def test_begin_waits_for_its_time(cluster, run, submit, info, tmp_path):
    """--begin now+3: Queued (BeginTime) until then, and no sooner.

    Slurm starts a job whose time has come at its next scheduling pass, which
    may be 30 s away (bf_interval); a job submitted after the time makes one at once.
    """
    import time

    before = time.time()
    job_id = submit("--begin", "now+3", "--", "sh", "-c", f"date +%s.%N > {tmp_path}/began")
    job = info(job_id)
    assert (job["state"], job["sub_state"]) == ("Queued", "PENDING (BeginTime)")
    time.sleep(max(0.0, before + 3.5 - time.time()))
    submit("--", "true")
    assert finish(run, job_id).returncode == 0
    assert read_time(tmp_path / "began") >= before + 3


def test_queue_lists_the_partitions_and_q_submits_to_one(cluster, run, submit, info):
    listed = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                            timeout=60).stdout.split()
    queues = json.loads(run("queue", "--json").stdout)
    assert [queue["name"] for queue in queues] == list(dict.fromkeys(listed))
    queue = queues[0]
    assert queue["slots"] >= 1 and 0 <= queue["in_use"] <= queue["slots"]
    cpus = min(2, queue["slots"])
    job_id = submit("-q", queue["name"], "--slots", cpus, "--priority", "-5", "--", "true")
    assert squeue_field(slurm_id(info(job_id)), "%P|%C|%y") == f"{queue['name']}|{cpus}|5"
    assert finish(run, job_id).returncode == 0
    assert info(job_id)["queue_name"] == queue["name"]
    assert json.loads(run("queue", queue["name"], "--json").stdout)["name"] == queue["name"]
    refused = run("queue", queue["name"], "--slots", "1")
    assert refused.returncode == 1 and "cannot create or resize" in one_line(refused.stderr)


def test_cancelled_queued_tasks_never_ran(cluster, run, submit):
    """Tasks cancelled while queued: Failed, no exit status, no dispatch time (as locally).

    Slurm reports such a task CANCELLED with exit code 0 and start = end = the
    time of the cancel; taken as they are, `wait` on the task exits 0.
    """
    job_id = submit("--array", "1-3%1", "--", "sleep", "60")
    poll(lambda: json.loads(run("status", job_id, "--json").stdout)[0]["state"] == "Running",
         timeout=SLURM_TIMEOUT, interval=0.2, message=f"task {job_id}.1 to run")
    result = run("terminate", job_id)
    assert result.returncode == 0, result.stderr

    def all_failed():  # terminate returns while the running task is COMPLETING (KillWait)
        tasks = json.loads(run("status", job_id, "--json").stdout)
        return tasks if [t["state"] for t in tasks] == ["Failed"] * 3 else None

    tasks = poll(all_failed, timeout=SLURM_TIMEOUT, interval=0.2, message="all three Failed")
    assert tasks[0]["terminating_signal"] is not None and tasks[0]["exit_status"] is None
    waited = run("wait", f"{job_id}.2")
    assert waited.returncode != 0, f"wait {job_id}.2 (cancelled, never ran) exited 0"
    for task in tasks[1:]:
        never_ran = {key: task[key] for key in ("exit_status", "dispatch_time",
                                                 "allocated_machines", "wallclock_time")}
        assert never_ran == dict.fromkeys(never_ran), (task["id"], task["sub_state"], never_ran)


# =========================================================================================
# 3. Slurm unreachable: one clear line, nothing recorded
# =========================================================================================

def test_sbatch_not_on_path(cluster, run, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("sh"), bin_dir / "sh")
    result = run("--backend", "slurm", "submit", "--", "echo", "hi",
                 env={"PATH": str(bin_dir)})
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert "sbatch" in line and "not found" in line, line
    assert result.stdout == ""
    listed = run("status", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"
    assert job_dirs(cluster) == []


def test_controller_down(cluster, run, submit, tmp_path):
    recorded = submit("--", "true")
    before = job_dirs(cluster)
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    with open(conf) as handle:
        text = handle.read()
    with socket_on_free_port() as port:  # bound, never listening: connect is refused
        down = tmp_path / "down.conf"
        if re.search(r"(?mi)^\s*SlurmctldPort\s*=", text):
            text = re.sub(r"(?mi)^(\s*SlurmctldPort\s*=).*$", rf"\g<1>{port}", text)
        else:
            text += f"\nSlurmctldPort={port}\n"
        down.write_text(text)
        env = {"SLURM_CONF": str(down)}
        result = run("submit", "--", "true", env=env, timeout=120)
        assert result.returncode == 1, result.stderr
        line = one_line(result.stderr)
        assert "not reachable" in line, line
        assert job_dirs(cluster) == before
        result = run("status", recorded, env=env, timeout=120)
        assert result.returncode == 1, result.stderr
        assert "not reachable" in one_line(result.stderr)
    listed = json.loads(run("status", "--json").stdout)
    assert [job["id"] for job in listed] == [recorded]


class socket_on_free_port:
    """A TCP port of 127.0.0.1 held (bound, not listening) so that nothing answers on it."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


# =========================================================================================
# 4. monitor: the cluster's jobs and nodes
# =========================================================================================

@pytest.fixture
def foreign_job(slurm_cluster, tmp_path):
    """A job submitted with sbatch directly, not through ostracker."""
    name = f"ost-foreign-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["sbatch", "--parsable", "-J", name, "-o", "/dev/null",
                           "-D", str(tmp_path), "--wrap", "sleep 30"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip().split(";")[0]
    yield sid, name
    subprocess.run(["scancel", sid], capture_output=True, timeout=60)


def test_monitor_lists_a_job_ostracker_did_not_submit(cluster, run, foreign_job):
    sid, name = foreign_job
    result = run("monitor", "--json")
    assert result.returncode == 0, result.stderr
    mine = [job for job in json.loads(result.stdout) if job["id"] == sid]
    assert len(mine) == 1
    assert mine[0]["state"] in ("Running", "Queued")
    assert mine[0]["job_name"] == name
    assert mine[0]["job_owner"] == pwd.getpwuid(os.getuid()).pw_name
    only = run("monitor", sid, "--json")
    assert only.returncode == 0, only.stderr
    assert [job["id"] for job in json.loads(only.stdout)] == [sid]
    table = run("monitor", sid)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:2] == ["SLURM", "ID"] and "STATE" in header
    assert len(rows) == 1 and rows[0].split()[0] == sid and name in rows[0]


def test_monitor_names_one_array_task_by_slurms_id(cluster, run, tmp_path):
    done = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "-D", str(tmp_path),
                           "--array=1-2", "--wrap", "sleep 30"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    array = done.stdout.strip().split(";")[0]
    try:
        result = run("monitor", f"{array}_2", "--json")
        assert result.returncode == 0, result.stderr
        assert [job["id"] for job in json.loads(result.stdout)] == [f"{array}_2"]
        whole = run("monitor", array, "--json")
        assert sorted(job["id"] for job in json.loads(whole.stdout)) == \
            [f"{array}_1", f"{array}_2"]
        bad = run("monitor", f"{array}.2")
        assert bad.returncode == 2 and "not a Slurm job ID" in one_line(bad.stderr)
    finally:
        subprocess.run(["scancel", array], capture_output=True, timeout=60)


def test_monitor_unknown_slurm_job(cluster, run):
    result = run("monitor", "999999")
    assert result.returncode == 1
    assert "999999" in one_line(result.stderr)


def test_monitor_machine(cluster, run):
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = {name: int(cpus) for name, cpus in
                (line.split() for line in done.stdout.splitlines())}
    result = run("monitor", "--machine", "--json")
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)
    assert {node["name"]: node["extension_list"]["cpus"] for node in nodes} == expected
    assert any(node["available"] for node in nodes)
    table = run("monitor", "--machine")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NODE", "STATE", "CPUS", "LOAD", "MEMORY", "FREE", "PARTITIONS"]
    assert sorted(row.split()[0] for row in rows) == sorted(expected)


@pytest.mark.parametrize("option", [["--jobs"], ["--interval", "1"]])
def test_monitor_local_only_options_are_usage_errors(cluster, run, option):
    result = run("monitor", *option)
    assert result.returncode == 2
    assert option[0] in one_line(result.stderr)


# =========================================================================================
# 5-6. Refused submissions: one line, nothing recorded
# =========================================================================================

def test_environment_name_that_is_no_shell_identifier(cluster, run):
    result = run("submit", "-e", "A-B=1", "--", "true")
    assert result.returncode == 2
    assert "A-B" in one_line(result.stderr)
    assert job_dirs(cluster) == []


def _max_array_size() -> int:
    done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    found = re.search(r"(?m)^MaxArraySize\s*=\s*(\d+)", done.stdout)
    assert found, "scontrol show config has no MaxArraySize"
    return int(found.group(1))


def test_array_larger_than_the_cluster_allows(cluster, run):
    size = _max_array_size()
    if size > 1_000_000:
        pytest.skip(f"MaxArraySize {size} is above what ostracker itself accepts")
    result = run("submit", "--array", f"0-{size}", "--", "true")
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert "sbatch" in line and "array" in line.lower(), line
    assert run("status", "--json").stdout.strip() == "[]"
    assert job_dirs(cluster) == []


# =========================================================================================
# 7. suspend/resume as a user who may not `scontrol suspend`: SIGTSTP/SIGCONT instead
# =========================================================================================

TEST_USER = "ostracker-test"


def _ensure_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to run ostracker as another user")
    for tool in ("useradd", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing")
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    done = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                           "--shell", "/usr/sbin/nologin", TEST_USER],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"useradd {TEST_USER} failed: {done.stderr.strip()}")
    return pwd.getpwnam(TEST_USER)


class AsUser:
    """Runs commands as an unprivileged user, with SLURM_CONF and OSTRACKER_* set."""

    def __init__(self, user: pwd.struct_passwd, base: str):
        self.user = user
        self.base = base
        self.work = os.path.join(base, "work")
        self.state = os.path.join(base, "state")
        for path, mode in ((self.work, 0o755), (self.state, 0o700)):
            os.mkdir(path)
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(path, mode)
        import ostracker

        project = os.path.dirname(os.path.dirname(os.path.abspath(ostracker.__file__)))
        paths = sysconfig.get_paths()
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.work,
                    "LANG": os.environ.get("LANG", "C.UTF-8"), "OSTRACKER_BACKEND": "slurm",
                    "OSTRACKER_STATE_DIR": self.state,
                    "SLURM_CONF": os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"),
                    "PYTHONPATH": os.pathsep.join([project, paths["purelib"], paths["platlib"]]),
                    "PYTHONDONTWRITEBYTECODE": "1"}
        self.python = self._python()

    def run(self, *args, timeout=120):
        return subprocess.run(["setpriv", f"--reuid={self.user.pw_uid}",
                               f"--regid={self.user.pw_gid}", "--init-groups", *map(str, args)],
                              capture_output=True, text=True, env=self.env, cwd=self.work,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def cli(self, *args, timeout=120):
        return self.run(self.python, "-m", "ostracker", *args, timeout=timeout)

    def _python(self) -> str:
        """This interpreter if the user may run it (a venv under /root is not), else a twin."""
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [sys.executable] + [
            found for found in (shutil.which(version, path="/usr/local/bin:/usr/bin:/bin"),)
            if found]
        check = "import ostracker, click, psutil, platformdirs, tabulate"
        for python in candidates:
            if self.run(python, "-c", check, timeout=60).returncode == 0:
                return python
        pytest.skip(f"no {version} that user {TEST_USER} may run can import ostracker "
                    f"(tried {candidates})")


@pytest.fixture
def as_user(slurm_cluster):
    user = _ensure_user()
    base = tempfile.mkdtemp(prefix="ostracker-nonroot-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        yield AsUser(user, base)
    finally:
        cancel_slurm_jobs(os.path.join(base, "state"))
        shutil.rmtree(base, ignore_errors=True)


def _state_as(user: AsUser, job_id: str) -> dict:
    result = user.cli("info", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_suspend_resume_without_scontrol_rights(as_user):
    user = as_user
    check = user.run("sinfo", "-h", "-o", "%T", timeout=60)
    assert check.returncode == 0, f"user {TEST_USER} cannot talk to Slurm: {check.stderr}"
    pid_file = os.path.join(user.work, "pid")
    result = user.cli("submit", "--", "sh", "-c", f"echo $$ > {pid_file}; exec sleep 100")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    poll(lambda: os.path.exists(pid_file) and open(pid_file).read().strip(),
         timeout=SLURM_TIMEOUT, interval=0.2, message="the job to start")
    pid = int(open(pid_file).read())
    assert os.stat(f"/proc/{pid}").st_uid == user.user.pw_uid  # the job runs as the user
    poll(lambda: proc_state(pid) == "S", timeout=30, interval=0.1, message="sleep to sleep")

    result = user.cli("suspend", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    info_of_job = _state_as(user, job_id)
    assert info_of_job["state"] == "Suspended"
    assert "SIGTSTP" in info_of_job["sub_state"]  # the scancel --signal path, not scontrol
    poll(lambda: proc_state(pid) == "T", timeout=30, interval=0.1, message="the job to stop")

    result = user.cli("resume", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    assert _state_as(user, job_id)["state"] == "Running"
    poll(lambda: proc_state(pid) in ("S", "R"), timeout=30, interval=0.1,
         message="the job to run again")

    result = user.cli("terminate", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    poll(lambda: proc_state(pid) is None, timeout=30, interval=0.1, message="the job to go")
    assert _state_as(user, job_id)["state"] == "Failed"


def test_suspend_resume_as_operator(cluster, run, submit, info, tmp_path):
    """Root may ``scontrol suspend``: Slurm itself shows SUSPENDED."""
    if os.geteuid() != 0:
        pytest.skip("scontrol suspend needs an operator; this is not root")
    pid_file = tmp_path / "pid"
    job_id = submit("--", "sh", "-c", f"echo $$ > {pid_file}; exec sleep 100")
    poll(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=SLURM_TIMEOUT,
         interval=0.2, message="the job to start")
    pid = int(pid_file.read_text())
    result = run("suspend", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    assert (info(job_id)["state"], info(job_id)["sub_state"]) == ("Suspended", "SUSPENDED")
    poll(lambda: proc_state(pid) == "T", timeout=30, interval=0.1, message="the job to stop")
    result = run("resume", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    assert info(job_id)["state"] == "Running"
    poll(lambda: proc_state(pid) in ("S", "R"), timeout=30, interval=0.1,
         message="the job to run again")
    result = run("terminate", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    poll(lambda: proc_state(pid) is None, timeout=30, interval=0.1, message="the job to go")
    assert info(job_id)["state"] == "Failed"


# -- what a review of the backend found -----------------------------------------------------

@pytest.mark.parametrize("states, expected", [
    (["RUNNING", "STOPPED"], "STOPPED"),          # 23.02+: the flag says more than the base
    (["COMPLETED", "COMPLETING"], "COMPLETING"),  # as 22.05 prints it: not ended yet
    (["CANCELLED", "COMPLETING"], "COMPLETING"),
    (["PENDING", "REQUEUE_HOLD"], "REQUEUE_HOLD"),
    (["PENDING"], "PENDING"),
    ("RUNNING", "RUNNING"),
])
def test_base_state_reads_flags_as_22_05_prints_them(states, expected):
    assert slurm._base_state(states) == expected


def test_a_failed_job_never_reports_exit_status_0():
    record = {"job_id": 5, "job_state": "NODE_FAIL", "state_reason": "None", "priority": 1,
              "restart_cnt": 0, "array_job_id": 0, "array_task_id": None, "exit_code": 0,
              "submit_time": 1700000000, "start_time": 1700000001, "end_time": 1700000002,
              "nodes": "vm", "name": "n", "user_name": "u", "user_id": 5}
    job = slurm._from_squeue(record)
    assert (job.state, job.exit_status, job.terminating_signal) == (JobState.FAILED, None, None)
    account = slurm._sacct_job(dict(zip(slurm.SACCT_FIELDS, [
        "5", "NODE_FAIL", "0:0", "2026-11-24T04:37:48", "2026-11-24T04:37:49", "vm", "",
        "00:00.001", "00:00:00", "None"])))
    assert (account["state"], account["exit_status"]) == (JobState.FAILED, None)


@pytest.mark.parametrize("name, status", [("SIGKILL", 137), ("SIG40", 168), ("SIGWHAT", 1)])
def test_wait_exit_status_of_any_signal_name(name, status):
    from ostracker.cli import exit_status_of

    class Ended:
        exit_status, terminating_signal = None, name
    assert exit_status_of(Ended) == status


def test_an_array_of_held_tasks_is_held_not_done():
    from ostracker.core.base import array_state

    class Task:
        def __init__(self, state):
            self.state = state
    assert array_state([Task(JobState.QUEUED_HELD)] * 2) is JobState.QUEUED_HELD
    assert array_state([Task(JobState.DONE), Task(JobState.REQUEUED)]) is JobState.REQUEUED
    assert array_state([Task(JobState.QUEUED), Task(JobState.QUEUED_HELD)]) is JobState.QUEUED


def test_classify_takes_sbatchs_first_error_line():
    error = slurm._classify("sbatch", "sbatch: error: Batch script contains DOS line breaks "
                            "(\\r\\n)\nsbatch: error: instead of expected UNIX line breaks "
                            "(\\n).\n")
    assert str(error) == "sbatch: Batch script contains DOS line breaks (\\r\\n)"


def test_task_list_that_cannot_be_read_is_one_line_error():
    with pytest.raises(TrackerError, match="cannot read the array task list"):
        slurm._indices_of("1-5,7...", "squeue")


def test_users_slurm_time_format_and_bitstr_len_are_overridden(tmp_path, monkeypatch):
    """The commands see SLURM_TIME_FORMAT=standard and SLURM_BITSTR_LEN=0, whatever is set."""
    fake = tmp_path / "showenv"
    fake.write_text("#!/bin/sh\necho \"$SLURM_TIME_FORMAT $SLURM_BITSTR_LEN\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SLURM_TIME_FORMAT", "%s")
    monkeypatch.setenv("SLURM_BITSTR_LEN", "64")
    assert slurm.run([str(fake)]) == "standard 0\n"


def test_a_command_that_cannot_be_run_is_one_line_error(tmp_path):
    blocked = tmp_path / "sbatch"
    blocked.write_text("#!/bin/sh\n")
    blocked.chmod(0o644)  # not executable
    with pytest.raises(slurm.SlurmUnavailable, match="cannot run"):
        slurm.run([str(blocked)])


def test_terminate_returns_while_slurm_waits_out_killwait(cluster, run, submit, info, tmp_path):
    """A job that ignores SIGTERM stays COMPLETING until KillWait (30 s) ends in SIGKILL:
    terminate has done its part once Slurm is tearing the job down, and says so."""
    ready = tmp_path / "ready"
    job_id = submit("--", "sh", "-c",
                    f"trap '' TERM; touch {ready}; while :; do sleep 0.2; done")
    poll(ready.exists, timeout=SLURM_TIMEOUT, interval=0.2, message="the job to start")
    result = run("terminate", job_id)
    assert (result.returncode, result.stderr) == (0, "")
    current = info(job_id)
    assert current["state"] == "Failed" or current["sub_state"].startswith("COMPLETING"), current


def test_output_follow_waits_for_a_queued_task(cluster, run, submit):
    """``output -f`` of a task still queued waits for its file, then follows it to the end."""
    job_id = submit("--array", "1-2%1", "--", "sh", "-c", "sleep 1; echo done-$TASK_ID")
    result = run("output", "-f", f"{job_id}.2", timeout=SLURM_TIMEOUT)
    assert (result.returncode, result.stdout, result.stderr) == (0, "done-2\n", "")


def test_an_interrupt_during_submit_leaves_no_untracked_slurm_job(cluster, tmp_path):
    """Ctrl-C (SIGINT) while sbatch submits: the job Slurm took is recorded all the same.

    A wrapper around the real sbatch waits after submitting until the test has sent
    the signal, so that it lands between Slurm accepting the job and ostracker
    recording it, however loaded the machine.
    """
    import signal

    from conftest import CLI

    real = shutil.which("sbatch")
    wrapper = tmp_path / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\n{real} \"$@\"\nstatus=$?\ntouch {tmp_path}/submitted\n"
                       f"while [ ! -e {tmp_path}/go ]; do sleep 0.01; done\nexit $status\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    submitting = subprocess.Popen([*CLI, "submit", "--", "sleep", "30"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll((tmp_path / "submitted").exists, timeout=SLURM_TIMEOUT, message="sbatch to submit")
        submitting.send_signal(signal.SIGINT)
        (tmp_path / "go").touch()
        out, err = submitting.communicate(timeout=60)
    finally:
        if submitting.poll() is None:
            submitting.kill()
            submitting.wait()
    assert submitting.returncode == 130, err
    listed = subprocess.run([*CLI, "status", "--json"], capture_output=True, text=True,
                            timeout=60)
    jobs = json.loads(listed.stdout)
    assert len(jobs) == 1, (jobs, err)
    assert jobs[0]["extension_list"]["slurm_job_id"]
    assert jobs[0]["state"] in ("Queued", "Running")


# =========================================================================================
# 8. Limits and the job's lifetime
# =========================================================================================

def test_limits_and_lifetime_on_the_cluster(cluster, run, submit, info, tmp_path):
    """-t, --signal, --limit, terminate --grace, signal -s, --retries and --on-end on a real
    cluster, in one test: Slurm counts time limits in minutes and looks at them every 30 s,
    so the job that runs out of time takes 60 to 90 s, and the others run meanwhile.
    """
    import time

    def ready(name):
        poll((tmp_path / name).exists, timeout=SLURM_TIMEOUT, interval=0.2,
             message=f"{name} (the job to start)")

    # Out of time: warned by SIGUSR1 first (Slurm's --signal=B:, to the batch shell,
    # which is the command); its limit on open files is what ulimit says.
    limited = submit("-C", tmp_path, "-t", "1", "--signal", "USR1@50", "--limit",
                     "OPEN_FILES=17", "--", "sh", "-c",
                     'trap "date +%s > warned" USR1; ulimit -n; touch limited; '
                     'while :; do sleep 1; done')
    ready("limited")

    # terminate --grace: SIGTERM first, which a trap may use to clean up.
    graceful = submit("-C", tmp_path, "--", "sh", "-c",
                      'trap "echo cleaned > cleaned; exit 0" TERM; touch graceful; '
                      'while :; do sleep 1; done')
    ready("graceful")
    assert run("terminate", "--grace", "5", graceful).returncode == 0
    assert (tmp_path / "cleaned").read_text() == "cleaned\n"
    assert info(graceful)["state"] in ("Done", "Failed")

    # signal -s: to every process of the job.
    signalled = submit("-C", tmp_path, "--", "sh", "-c",
                       'trap "echo usr1 > usr1" USR1; touch signalled; '
                       'while :; do sleep 1; done')
    ready("signalled")
    assert run("signal", "-s", "USR1", signalled).returncode == 0
    ready("usr1")
    assert info(signalled)["state"] == "Running"
    assert run("terminate", signalled).returncode == 0

    # --retries and --on-end, in the batch script; the attempt through the job's comment.
    retried = submit("-C", tmp_path, "--retries", "2", "--on-end",
                     'echo "$OSTRACKER_JOB_STATE $OSTRACKER_ATTEMPT" > on_end', "--", "sh",
                     "-c", 'echo "attempt $OSTRACKER_ATTEMPT"; [ "$OSTRACKER_ATTEMPT" = 3 ]')
    assert finish(run, retried).returncode == 0
    job = info(retried)
    assert (job["state"], job["attempt"]) == ("Done", 3), job
    assert (tmp_path / "on_end").read_text() == "Done 3\n"
    assert run("output", retried).stdout == "attempt 1\nattempt 2\nattempt 3\n"

    result = run("wait", "--timeout", 150, limited, timeout=180)
    assert result.returncode != 124, "the job did not run out of time within 150 s"
    job = info(limited)
    assert job["state"] == "Failed" and "TIMEOUT" in job["sub_state"], job
    assert job["job_template"]["resource_limits"] == {"OPEN_FILES": 17, "WALLCLOCK_TIME": 60}
    warned = int((tmp_path / "warned").read_text())
    finished = time.mktime(time.strptime(job["finish_time"][:19], "%Y-%m-%dT%H:%M:%S")) - \
        time.timezone
    assert warned < finished, (warned, job["finish_time"])
    assert run("output", limited).stdout == "17\n"
