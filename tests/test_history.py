"""History: status filters, delete --older-than, and ended jobs compacted into one file
(README, "History" and "Design", *Compacted ended jobs*)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import CLI


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


def test_delete_finished_older_than(run, submit, state_dir, tracker):
    old = submit("--wait", "--", "true", env={"OSTRACKER_KEEP_RECORDS": "1"})
    old_compacted = submit("--wait", "--", "true")
    new = submit("--wait", "--", "true")
    # an hour ago, as its record says it ended then
    path = os.path.join(state_dir, "jobs", old, "state.json")
    record = json.load(open(path))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))
    record["finish_time"] = f"{stamp}.000000+00:00"
    with open(path, "w") as handle:
        json.dump(record, handle)
    rewrite_line(state_dir, tracker, old_compacted, finish_time_text=f"{stamp}.000000+00:00")
    assert run("delete", "--finished", "--older-than", "30m").returncode == 0
    assert ids(run) == [new]
    assert [line.split(b"\t")[0].decode() for line in history_lines(state_dir)] == [new]
    assert run("delete", "--older-than", "1h", new).returncode == 2  # needs --finished
    assert run("delete", "--finished", "--older-than", "soon").returncode == 2
    refused = run("delete", "--finished", new)  # every ended job, or only this one?
    assert (refused.returncode, refused.stdout) == (2, "") and "no IDs" in refused.stderr
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


# -- compacted ended jobs --------------------------------------------------------------------

def files_under(directory):
    return sorted(os.path.relpath(os.path.join(top, name), directory)
                  for top, _, names in os.walk(directory) for name in names)


def history_lines(state_dir):
    with open(os.path.join(state_dir, "history"), "rb") as handle:
        return handle.read().split(b"\n")[:-1]


def rewrite_line(state_dir, tracker, job_id, **changes):
    """Write the compacted job's line anew, whole and checked, its JobInfo's fields
    changed as ``changes`` says: a job that ended otherwise than it did."""
    from ostracker.core.records import history_line

    entry = tracker.store.history.entry(int(job_id))
    header = entry.header()
    infos = entry.infos(header)
    for info in infos:
        for name, value in changes.items():
            setattr(info, name, value)
    lines = [history_line(header, infos) if line.split(b"\t")[0] == job_id.encode()
             else line + b"\n" for line in history_lines(state_dir)]
    with open(os.path.join(state_dir, "history"), "wb") as handle:
        handle.write(b"".join(lines))


def test_an_ended_job_leaves_one_line_and_its_non_empty_output(run, submit, state_dir):
    single = submit("--wait", "--", "sh", "-c", "echo out")
    array = submit("--wait", "--array", "1-50", "--", "sh", "-c",
                   'if [ "$TASK_ID" = 7 ]; then echo seven >&2; fi')
    assert files_under(state_dir) == sorted([
        "history", "history.lock", "last-id", "lock",
        f"ended/{single}/stdout", f"ended/{array}/7.stderr"])
    assert os.listdir(os.path.join(state_dir, "jobs")) == []
    assert [line.split(b"\t")[0] for line in history_lines(state_dir)] == [b"1", b"2"]
    assert run("output", single).stdout == "out\n"
    assert run("output", f"{array}.7", "--stderr").stdout == "seven\n"
    empty = run("output", f"{array}.8")
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    assert len(ids(run)) == 51


def test_a_compacted_job_reads_as_its_records_did(run, submit, state_dir):
    """The same job, kept in its directory and compacted: info --json says the same."""
    kept = run("submit", "--wait", "--array", "1-3", "--", "sh", "-c", "exit $TASK_ID",
               env={"OSTRACKER_KEEP_RECORDS": "1"}).stdout.strip()
    compacted = run("submit", "--wait", "--array", "1-3", "--", "sh", "-c",
                    "exit $TASK_ID").stdout.strip()
    assert os.path.isdir(os.path.join(state_dir, "jobs", kept))
    assert not os.path.exists(os.path.join(state_dir, "jobs", compacted))
    varying = ("id", "array_id", "pid", "submission_time", "dispatch_time", "finish_time",
               "wallclock_time", "extension_list")

    def steady(job_id):
        return [{k: v for k, v in info.items() if k not in varying}
                for info in json.loads(run("info", job_id, "--json").stdout)]
    assert steady(kept) == steady(compacted)
    assert [i["exit_status"] for i in json.loads(run("info", compacted, "--json").stdout)] \
        == [1, 2, 3]
    listed = json.loads(run("status", "--json").stdout)
    assert [job["id"] for job in listed] == [f"{n}.{i}" for n in (kept, compacted)
                                             for i in (1, 2, 3)]
    assert listed[3:] == json.loads(run("status", "--json", "--state", "Failed",
                                        compacted).stdout)


def opened_paths(state_dir, *args, env=None):
    """The paths the CLI given ``args`` opens (strace -f, so its children's too), and its
    CompletedProcess."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("needs strace (Debian package strace) to see what is opened")
    trace = os.path.join(os.path.dirname(state_dir), "opened.trace")
    done = subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o",
                           trace, *CLI, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    with open(trace) as handle:
        return re.findall(r'open(?:at2?)?\((?:[^,]*, )?"([^"]*)"', handle.read()), done


def test_active_listing_and_completion_never_open_the_history(run, submit, state_dir):
    ended = submit("--wait", "--", "true")
    running = submit("--", "sleep", "60")
    with open(os.path.join(state_dir, "history"), "ab") as handle:
        handle.write(b"9\tlocal\t1\tnot a record\n")  # damaged: reported by full reads
    assert ids(run, "--active") == [running]
    active = run("status", "--active")
    assert active.returncode == 0 and active.stderr == ""
    assert run("status", "-q", "--state", "Running").stderr == ""
    full = run("status", "-q")
    assert full.stdout.split() == [ended, running]
    assert "damaged record" in full.stderr and "job 9" in full.stderr
    completion = {"_OSTRACKER_COMPLETE": "bash_complete", "COMP_WORDS": "ostracker suspend ",
                  "COMP_CWORD": "2"}
    for args, env in ((["status", "--active"], None), (["status", "-q", "--state", "Running"],
                                                       None), ([], completion)):
        paths, done = opened_paths(state_dir, *args, env=env)
        assert done.returncode == 0 and done.stderr == ""
        assert not [path for path in paths if os.path.basename(path) == "history"], args
    assert [line.split(",")[1] for line in done.stdout.split()] == [running]
    paths, _ = opened_paths(state_dir, "status", "-q")  # (the check sees the history read)
    assert [path for path in paths if os.path.basename(path) == "history"]
    run("terminate", running)


def test_a_damaged_line_is_its_jobs_error_and_hides_no_other(run, submit, state_dir):
    first, second, third = (submit("--wait", "--", "true") for _ in range(3))
    path = os.path.join(state_dir, "history")
    lines = history_lines(state_dir)
    lines[1] = lines[1].replace(b'"exit_status": 0', b'"exit_status": 1')  # CRC now wrong
    with open(path, "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    for listing in (run("status", "-q"), run("status"), run("status", "--json")):
        assert listing.returncode == 0
        assert listing.stderr.count("damaged record") == 1 and f"job {second}" in \
            listing.stderr
    assert run("status", "-q").stdout.split() == [first, third]
    assert [job["id"] for job in json.loads(run("status", "--json").stdout)] == [first, third]
    assert run("info", second).returncode == 1
    assert run("info", third).returncode == 0
    swept = run("delete", "--finished")
    assert swept.returncode == 0 and f"job {second}" in swept.stderr
    assert [line.split(b"\t")[0].decode() for line in history_lines(state_dir)] == [second]
    assert run("delete", second).returncode == 0  # a damaged job can still be deleted
    assert run("status", "-q").stderr == ""


def test_a_line_cut_short_is_never_read_and_the_next_job_cuts_it_off(run, submit, state_dir):
    first = submit("--wait", "--", "true")
    path = os.path.join(state_dir, "history")
    whole = open(path, "rb").read()
    with open(path, "ab") as handle:  # as a writer killed half-way through its line
        handle.write(whole[:len(whole) // 2].replace(b"1\t", b"5\t", 1))
    listing = run("status", "-q")
    assert (listing.stdout.split(), listing.stderr) == ([first], "")
    second = submit("--wait", "--", "true")
    assert open(path, "rb").read().startswith(whole)
    assert [line.split(b"\t")[0] for line in history_lines(state_dir)] == [b"1", b"2"]
    assert ids(run) == [first, second]


def test_delete_rewrites_the_history_and_removes_what_jobs_kept(run, submit, state_dir):
    jobs = [submit("--wait", "--", "sh", "-c", f"echo {n}") for n in range(4)]
    kept = submit("--wait", "--", "true", env={"OSTRACKER_KEEP_RECORDS": "1"})
    running = submit("--", "sleep", "60")
    assert run("delete", jobs[1]).returncode == 0
    assert not os.path.exists(os.path.join(state_dir, "ended", jobs[1]))
    assert [line.split(b"\t")[0].decode() for line in history_lines(state_dir)] == \
        [jobs[0], jobs[2], jobs[3]]
    assert run("delete", jobs[1]).returncode == 1  # gone
    deleted = run("delete", "--finished")
    assert deleted.returncode == 0, deleted.stderr
    assert ids(run) == [running]
    assert history_lines(state_dir) == []
    assert os.listdir(os.path.join(state_dir, "ended")) == []
    assert not os.path.exists(os.path.join(state_dir, "jobs", kept))
    run("terminate", running)


def test_a_job_in_jobs_and_in_the_history_is_read_once_from_jobs(run, submit, state_dir,
                                                                 tracker):
    """A reaper killed between its line and the rename leaves both: jobs/N wins, and
    delete removes both."""
    from ostracker.core.records import Header, history_line

    job = run("submit", "--wait", "--", "sh", "-c", "exit 3",
              env={"OSTRACKER_KEEP_RECORDS": "1"}).stdout.strip()
    header = Header.from_dict(int(job), json.load(open(
        os.path.join(state_dir, "jobs", job, "job.json"))), "job.json")
    infos = tracker.job_infos([job])
    infos[0].exit_status = 4  # not what jobs/N says: the line must not be read
    tracker.store.history.append(history_line(header, infos))
    assert [info.exit_status for info in tracker.job_infos()] == [3]
    assert ids(run) == [job]
    assert [info["exit_status"] for info in json.loads(run("status", "--json").stdout)] == [3]
    assert json.loads(run("info", job, "--json").stdout)["exit_status"] == 3
    assert run("delete", job).returncode == 0
    assert ids(run) == [] and history_lines(state_dir) == []


def test_on_end_runs_before_the_job_is_compacted(run, submit, state_dir, tmp_path):
    job = run("submit", "--wait", "--on-end", f"echo $OSTRACKER_JOB_STATE > {tmp_path}/said",
              "--", "false").stdout.strip()
    from conftest import poll

    poll(lambda: files_under(os.path.join(state_dir, "ended")) == [f"{job}/on_end.json"],
         message="compacted, on_end.json kept")
    assert os.listdir(os.path.join(state_dir, "jobs")) == []
    assert (tmp_path / "said").read_text() == "Failed\n"
    assert "--on-end failed" not in run("info", job).stdout


def test_a_line_written_twice_reads_as_its_last_and_goes_whole(run, submit, state_dir,
                                                                tracker):
    """A compaction done again (its reaper killed after its line, a second one after it)
    writes the job's line twice: the job is listed once, as its last line says, and
    delete removes both."""
    job = run("submit", "--wait", "--", "sh", "-c", "exit 3").stdout.strip()
    other = submit("--wait", "--", "true")
    first = history_lines(state_dir)[0]
    rewrite_line(state_dir, tracker, job, exit_status=4)
    with open(os.path.join(state_dir, "history"), "r+b") as handle:
        lines = handle.read()
        handle.seek(0)
        handle.write(first + b"\n" + lines)  # the first line, then its later form
    assert ids(run) == [job, other]
    assert [info["exit_status"] for info in json.loads(run("status", "--json").stdout)] == \
        [4, 0]
    assert json.loads(run("info", job, "--json").stdout)["exit_status"] == 4
    assert run("delete", job).returncode == 0
    assert [line.split(b"\t")[0].decode() for line in history_lines(state_dir)] == [other]
