"""A state directory written by an earlier version must stay readable, unchanged.

The state directory is ostracker's on-disk format (README, "Design": the layout
of ``lock``, ``last-id`` and ``jobs/N/...``): the records that jobs submitted
by one version leave behind are read by whatever version is installed next,
often months later and from cron. Readers never rewrite records (README,
"Decisions"), so a reader that no longer understands
an old record would show a wrong state for good. This test keeps a state
directory written by version 0.1.0 (commit 034f23b) and the exact output that
version printed for it, and checks that the version checked out now prints
the same.

``fixtures/v1-state`` was written by that version itself, run from a checkout
of 034f23b with the state directory elsewhere, cwd ``/`` and the CLI only:

- job 1, ``hello``: ``submit --wait -n hello -- sh -c 'echo hello'``, Done, exit 0,
  captured stdout ``hello``;
- job 2, ``fail3``: ``sh -c 'echo failing >&2; exit 3'``, Failed, exit status 3,
  captured stderr ``failing``;
- job 3, ``tasks``: ``--array 1-5:2 --max-parallel 2 -- sh -c 'echo task $TASK_ID'``,
  tasks 3.1, 3.3, 3.5 Done, ended, so its reaper wrote ``summary.json``;
- job 4, ``sleeper``: ``submit -- sleep 100`` then ``terminate``, Failed, killed by SIGKILL;
- job 5, ``cluster``: only the header ``jobs/5/job.json`` that the Slurm backend
  writes after sbatch (``"backend": "slurm"``, made-up ``"slurm_job_id": "4711"``),
  with ``last-id`` and ``lock`` bumped to 5 through that version's ID allocation.
  No cluster ran it, so only what needs no Slurm is checked.

``fixtures/v1-expected`` holds what that version printed for it with ``TZ=UTC``
(``status`` shows local times): ``status --json``, ``status -q``, ``status``
and ``info ID --json`` of each job and task. A path to the state directory
would be written there as ``@STATE_DIR@`` (none of these outputs holds one).
Every job has ended, so nothing in them depends on the clock or on this
machine's processes or boot.

Git keeps neither the modes (0700/0600) that ostracker requires of a state
directory nor the ownership, so each test works on a private copy.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "v1-state")
EXPECTED = os.path.join(HERE, "fixtures", "v1-expected")
STATE_DIR_SLOT = "@STATE_DIR@"

LOCAL_JOBS = ["1", "2", "3", "4"]
SLURM_JOB = "5"
UTC = {"TZ": "UTC"}

# expected file -> the command whose stdout it holds
RECORDED = {
    "status.json": ["status", "--json"],
    "status-q.txt": ["status", "-q"],
    "status.txt": ["status"],
    **{f"info-{job}.json": ["info", job, "--json"]
       for job in ["1", "2", "3", "3.1", "3.3", "3.5", "4"]},
}


def expected(name: str, state_dir: str) -> str:
    with open(os.path.join(EXPECTED, name), encoding="utf-8", newline="") as handle:
        return handle.read().replace(STATE_DIR_SLOT, state_dir)


@pytest.fixture
def v1_state(state_dir):
    """The fixture copied to the test's state directory, private as ostracker wants it."""
    shutil.copytree(FIXTURE, state_dir)
    for folder, _, files in os.walk(state_dir):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
    return state_dir


def test_fixture_is_what_the_old_version_left():
    """Guard against a careless edit of the fixture itself: its shape, as written."""
    with open(os.path.join(FIXTURE, "last-id"), "rb") as handle:
        assert handle.read() == b"5\n"
    with open(os.path.join(FIXTURE, "lock"), "rb") as handle:
        assert handle.read() == b"%-31d\n" % 5
    assert sorted(os.listdir(os.path.join(FIXTURE, "jobs"))) == ["1", "2", "3", "4", "5"]
    assert os.path.isfile(os.path.join(FIXTURE, "jobs", "3", "summary.json"))
    assert os.listdir(os.path.join(FIXTURE, "jobs", SLURM_JOB)) == ["job.json"]


# JobInfo keys added since that version, and what an old record reads as for each.
ADDED_KEYS = {"queue_name": None, "slots": None, "attempt": 1, "dependency": None}


def without_added_keys(text: str):
    """A JSON output of this version, each JobInfo with the keys added since checked (they
    hold what an old record reads as) and taken out: what the old version printed."""
    def strip(info):
        for key, value in ADDED_KEYS.items():
            assert info.pop(key) == value, key
        return info
    data = json.loads(text)
    return [strip(info) for info in data] if isinstance(data, list) else strip(data)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_output_as_the_old_version_printed_it(v1_state, run, name):
    """Text byte for byte; JSON the same, key for key and in order, but for added keys."""
    result = run(*RECORDED[name], env=UTC)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    if name.endswith(".json"):
        now, then = without_added_keys(result.stdout), json.loads(expected(name, v1_state))
        assert now == then
        assert json.dumps(now) == json.dumps(then)  # the keys in the same order
    else:
        assert result.stdout == expected(name, v1_state)


def test_info_of_each_job_agrees_with_the_listing(v1_state, run):
    """The recorded outputs say the same thing of each job: nothing was recorded twice wrong."""
    listing = json.loads(expected("status.json", v1_state))
    assert [info["id"] for info in listing] == ["1", "2", "3.1", "3.3", "3.5", "4"]
    for info in listing:
        assert json.loads(expected(f"info-{info['id']}.json", v1_state)) == info
    assert json.loads(expected("info-3.json", v1_state)) == listing[2:5]
    states = {info["id"]: (info["state"], info["exit_status"], info["terminating_signal"])
              for info in listing}
    assert states == {"1": ("Done", 0, None), "2": ("Failed", 3, None),
                      "3.1": ("Done", 0, None), "3.3": ("Done", 0, None),
                      "3.5": ("Done", 0, None), "4": ("Failed", None, "SIGKILL")}


@pytest.mark.parametrize("job, stream, text", [
    ("1", "stdout", "hello\n"),
    ("2", "stderr", "failing\n"),
    ("2", "stdout", ""),
    ("3.1", "stdout", "task 1\n"),
    ("3.3", "stdout", "task 3\n"),
    ("3.5", "stdout", "task 5\n"),
    ("4", "stdout", ""),
])
def test_output_prints_what_was_captured(v1_state, run, job, stream, text):
    result = run("output", job, *(["--stderr"] if stream == "stderr" else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout == text


def test_delete_an_ended_job(v1_state, run):
    result = run("delete", "1")
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(os.path.join(v1_state, "jobs", "1"))

    result = run("status", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(line for line in expected("status-q.txt", v1_state)
                                    .splitlines(keepends=True) if line != "1\n")
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    before = json.loads(expected("status.json", v1_state))
    assert without_added_keys(result.stdout) == [info for info in before if info["id"] != "1"]
    result = run("info", "1", "--json")
    assert result.returncode == 1
    assert run("output", "1").returncode == 1

    from ostracker import SlurmTracker

    assert SLURM_JOB in SlurmTracker(v1_state).list_jobs()  # not touched


def test_slurm_job_is_the_slurm_backends(v1_state, run):
    result = run("status", "-q")
    assert SLURM_JOB not in result.stdout.split()
    result = run("status", "--json")
    assert SLURM_JOB not in [info["id"] for info in json.loads(result.stdout)]

    for command in (["info", SLURM_JOB, "--json"], ["status", SLURM_JOB], ["output", SLURM_JOB],
                    ["delete", SLURM_JOB]):
        result = run(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "slurm job" in result.stderr, (command, result.stderr)
        assert result.stderr.count("\n") == 1  # every error is one line
    assert os.path.isfile(os.path.join(v1_state, "jobs", SLURM_JOB, "job.json"))

    from ostracker import JobTracker, SlurmTracker

    assert SLURM_JOB in SlurmTracker(v1_state).list_jobs()
    assert SlurmTracker(v1_state).list_jobs() == [SLURM_JOB]
    assert JobTracker(v1_state).list_jobs() == LOCAL_JOBS
