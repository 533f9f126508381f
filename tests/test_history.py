"""History: status filters and delete --older-than (README, "History")."""

from __future__ import annotations

import json
import os
import time


def ids(run, *args):
    result = run("status", "-q", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_filters_combine_with_each_other_ids_and_states(run, submit, tmp_path):
    for name in ("backup", "nightly-a", "nightly-b"):
        submit("-n", name, "--wait", "--", "true")
    failing = run("submit", "-n", "nightly-c", "--wait", "--", "false").stdout.strip()
    assert run("queue", "q", "--slots", "1").returncode == 0
    flag = tmp_path / "go"
    queued = submit("-q", "q", "-n", "inq", "--", "sh", "-c",
                    f"while [ ! -e {flag} ]; do sleep 0.01; done")
    array = run("submit", "--array", "1-3", "--wait", "--", "sh", "-c",
                "exit $((TASK_ID == 2))").stdout.strip()
    assert ids(run, "--name", "nightly-*") == ["2", "3", failing]
    assert ids(run, "--name", "nightly-*", "--state", "Failed") == [failing]
    assert ids(run, "--queue", "q") == [queued]
    assert ids(run, "--active") == [queued]
    assert ids(run, "--last", "2") == [queued, f"{array}.1", f"{array}.2", f"{array}.3"]
    assert ids(run, "--last", "1", "1", "2") == ["2"]
    assert ids(run, "--state", "Failed", array) == [f"{array}.2"]
    assert len(ids(run, "--since", "-1h")) == 8 and ids(run, "--until", "-1h") == []
    listed = json.loads(run("status", "--json", "--name", "backup").stdout)
    assert [job["id"] for job in listed] == ["1"]
    table = run("status", "--active").stdout.splitlines()
    assert len(table) == 2 and table[1].split()[:3] == [queued, "inq", "Running"]
    flag.touch()
    assert run("status", "--since", "tomorrow").returncode == 2
    assert run("status", "--last", "0").returncode == 2


def test_delete_finished_older_than(run, submit, state_dir):
    old = submit("--wait", "--", "true")
    new = submit("--wait", "--", "true")
    # an hour ago, as its record says it ended then
    path = os.path.join(state_dir, "jobs", old, "state.json")
    record = json.load(open(path))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))
    record["finish_time"] = f"{stamp}.000000+00:00"
    with open(path, "w") as handle:
        json.dump(record, handle)
    assert run("delete", "--finished", "--older-than", "30m").returncode == 0
    assert ids(run) == [new]
    assert run("delete", "--older-than", "1h", new).returncode == 2  # needs --finished
    assert run("delete", "--finished", "--older-than", "soon").returncode == 2
    assert ids(run) == [new]


def test_jobs_of_a_session(run, submit):
    """submit --session (or $OSTRACKER_SESSION) names the job session; status --session."""
    nightly = submit("--session", "nightly", "--", "true")
    other = run("submit", "--", "true", env={"OSTRACKER_SESSION": "other"}).stdout.strip()
    none = run("submit", "--", "true", env={"OSTRACKER_SESSION": ""}).stdout.strip()
    assert ids(run, "--session", "nightly") == [nightly]
    assert ids(run, "--session", "other") == [other]
    assert none not in ids(run, "--session", "")
    info = json.loads(run("info", nightly, "--json").stdout)
    assert info["job_template"]["session_name"] == "nightly"
    assert run("submit", "--session", "", "--", "true").returncode == 2
