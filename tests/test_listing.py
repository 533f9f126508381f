"""``status --json`` through the history's listing: the same output as reading every line,
whatever happened to the history or the listing since (README, "Design", *The listing*)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import zlib

import pytest

import faultinject as fi
from conftest import CLI, fill
from ostracker.core.listing import REFRESH_JOBS, listing_name
from ostracker.core.records import history_line
from test_history import history_lines, rewrite_line

LISTING = listing_name("local")
MANY = REFRESH_JOBS + 36  # enough ended jobs for status --json to write a listing


def many_ended(submit, state_dir, tracker, count=MANY):
    """``count`` ended jobs, IDs 1 to ``count``: one run for real, the others its line
    written again with their IDs and names (what compacting them would have written)."""
    assert submit("--wait", "--name", "job-1", "--", "true") == "1"
    lines = [line_for(tracker, job_id) for job_id in range(1, count + 1)]
    with open(os.path.join(state_dir, "history"), "wb") as handle:
        handle.write(b"".join(lines))
    with open(os.path.join(state_dir, "last-id"), "w") as handle:
        handle.write(f"{count}\n")


def line_for(tracker, job_id):
    """Job 1's line as job ``job_id``'s, named ``job-ID``."""
    entry = tracker.store.history.entry(1)
    header = entry.header()
    infos = entry.infos(header)
    header.job_id = job_id
    header.template.job_name = f"job-{job_id}"
    for info in infos:
        info.id, info.job_name = str(job_id), f"job-{job_id}"
    return history_line(header, infos)


def listed(run):
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    return result


def names(result):
    return {job["id"]: job["job_name"] for job in json.loads(result.stdout)}


def line_of(tracker, job_id, **changes):
    """Job ``job_id``'s line written anew, its JobInfos' fields changed as ``changes`` says."""
    entry = tracker.store.history.entry(job_id)
    header = entry.header()
    infos = entry.infos(header)
    for info in infos:
        for name, value in changes.items():
            setattr(info, name, value)
    return history_line(header, infos)


def test_the_listing_prints_what_the_lines_say_and_what_came_after(run, submit, state_dir,
                                                                      tracker):
    many_ended(submit, state_dir, tracker)
    first = listed(run)  # reads every line, then writes the listing
    path = os.path.join(state_dir, LISTING)
    made = open(path, "rb").read()
    assert names(first) == {str(i): f"job-{i}" for i in range(1, MANY + 1)}
    assert listed(run).stdout == first.stdout  # through the listing
    # After the lines the listing covers: a job that ended since, a listed job's line
    # written again (a later line wins), another's damaged; and a job still running.
    late = run("submit", "--wait", "--name", "late", "--", "sh", "-c", "exit 3").stdout.strip()
    running = submit("--name", "running", "--", "sleep", "60")
    with open(os.path.join(state_dir, "history"), "ab") as handle:
        handle.write(line_of(tracker, 7, exit_status=2))
        handle.write(line_of(tracker, 5, exit_status=4).replace(b'"exit_status": 4',
                                                                 b'"exit_status": 6'))
    result = listed(run)
    assert open(path, "rb").read() == made  # used, not made again
    jobs = json.loads(result.stdout)
    assert [job["id"] for job in jobs] == [str(i) for i in range(1, MANY + 1) if i != 5] + \
        [late, running]
    assert result.stderr.strip() == f"ostracker: damaged record of job 5 in " \
        f"{os.path.join(state_dir, 'history')}"
    by_id = {job["id"]: job for job in jobs}
    assert by_id["7"]["exit_status"] == 2 and by_id[late]["exit_status"] == 3
    assert by_id[running]["state"] == "Running" and by_id["8"]["exit_status"] == 0
    assert run("terminate", running).returncode == 0


def test_a_history_changed_in_place_is_read_again(run, submit, state_dir, tracker):
    """The same file, the same size, one job's line written anew (its CRC right): what the
    listing says of it no longer holds."""
    many_ended(submit, state_dir, tracker)
    listed(run)
    size = os.path.getsize(os.path.join(state_dir, "history"))
    for letter in "QRSTUVWXYZ":  # a name whose line's CRC has as many digits as before
        rewrite_line(state_dir, tracker, "9", job_name=f"job-{letter}")
        if os.path.getsize(os.path.join(state_dir, "history")) == size:
            break
    assert os.path.getsize(os.path.join(state_dir, "history")) == size
    assert names(listed(run)) == {str(i): f"job-{letter}" if i == 9 else f"job-{i}"
                                  for i in range(1, MANY + 1)}


def test_a_damaged_listing_is_not_used_and_is_made_again(run, submit, state_dir, tracker):
    many_ended(submit, state_dir, tracker)
    expected = listed(run).stdout
    path = os.path.join(state_dir, LISTING)
    data = open(path, "rb").read()
    with open(path, "r+b") as handle:  # one job's name changed, nothing else
        handle.seek(data.rindex(b'"job-17"') + 5)
        handle.write(b"9")
    assert listed(run).stdout == expected
    assert listed(run).stdout == expected and open(path, "rb").read() == data


def test_damaged_lines_are_reported_through_the_listing(run, submit, state_dir, tracker):
    many_ended(submit, state_dir, tracker)
    lines = history_lines(state_dir)
    lines[10] = lines[10].replace(b'"exit_status": 0', b'"exit_status": 1')  # CRC now wrong
    lines.insert(20, b"no job here")
    with open(os.path.join(state_dir, "history"), "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    for _ in range(2):  # reading the lines (and writing the listing), then the listing
        result = listed(run)
        assert result.stderr.count("\n") == 2, result.stderr
        assert "damaged record of job 11" in result.stderr
        assert "a line that names no job" in result.stderr
        assert sorted(map(int, names(result))) == [i for i in range(1, MANY + 1) if i != 11]
    assert os.path.isfile(os.path.join(state_dir, LISTING))


def test_a_job_in_jobs_and_in_the_listing_is_read_from_jobs(run, submit, state_dir, tracker):
    """A running job whose line is in the listing too (as if compacted but for the move of
    its directory): ``jobs/N`` wins, the job is listed once."""
    many_ended(submit, state_dir, tracker)
    running = submit("--name", "running", "--", "sleep", "60")
    with open(os.path.join(state_dir, "history"), "ab") as handle:
        handle.write(line_for(tracker, int(running)))
    listed(run)
    for _ in range(2):
        jobs = json.loads(listed(run).stdout)
        assert [job["id"] for job in jobs].count(running) == 1
        assert [job["state"] for job in jobs if job["id"] == running] == ["Running"]
    assert run("terminate", running).returncode == 0


def test_delete_removes_the_listing(run, submit, state_dir, tracker):
    many_ended(submit, state_dir, tracker)
    listed(run)
    leftover = os.path.join(state_dir, f".{LISTING}.0123456789ab.tmp")
    with open(leftover, "wb") as handle:  # what a writer stopped half-way left
        handle.write(b"half a listing, with job 3 in it")
    assert run("delete", "3").returncode == 0
    assert not os.path.exists(os.path.join(state_dir, LISTING))
    assert not os.path.exists(leftover)
    assert "3" not in names(listed(run)) and len(names(listed(run))) == MANY - 1


def test_a_link_planted_at_the_listing_is_neither_read_nor_written_through(run, submit,
                                                                         state_dir, tracker,
                                                                         tmp_path):
    many_ended(submit, state_dir, tracker)
    expected = listed(run).stdout
    path = os.path.join(state_dir, LISTING)
    target = tmp_path / "target"
    os.rename(path, target)  # a whole listing, true of the history, behind a link
    os.symlink(target, path)
    before = target.read_bytes()
    assert listed(run).stdout == expected
    assert target.read_bytes() == before and not os.path.islink(path)


def test_a_full_disk_leaves_no_listing_and_no_error(run, submit, small_fs, tracker,
                                                     monkeypatch):
    where, state = small_fs
    monkeypatch.setenv("OSTRACKER_STATE_DIR", state)
    tracker = type(tracker)(state)
    many_ended(submit, state, tracker)
    expected = names(listed(run))
    os.unlink(os.path.join(state, LISTING))
    filler = fill(where)
    try:
        result = listed(run)
        assert (names(result), result.stderr) == (expected, "")
        assert [name for name in os.listdir(state) if "listing" in name] == []
    finally:
        os.unlink(filler)


def test_what_an_interrupted_writer_left_goes_with_the_next_listing(run, submit, state_dir,
                                                                     tracker):
    many_ended(submit, state_dir, tracker)
    leftover = os.path.join(state_dir, f".{LISTING}.0123456789ab.tmp")
    with open(leftover, "wb") as handle:
        handle.write(b"half a listing")
    listed(run)
    assert not os.path.exists(leftover) and os.path.isfile(os.path.join(state_dir, LISTING))


def rebuilt(data, errors):
    """The listing ``data`` with its errors section replaced, its first line made to match:
    whole by its CRC, whatever the section says."""
    from ostracker.core.listing import MAGIC

    head, _, body = data.partition(b"\n")
    fields = head[len(MAGIC) + 1:].split(b" ")
    count, errors_size = int(fields[5]), int(fields[6])
    index = 8 * count
    body = body[:2 * index + 8] + errors + body[2 * index + 8 + errors_size:]
    fields[6], fields[7] = b"%d" % len(errors), b"%d" % zlib.crc32(body)
    return MAGIC + b" " + b" ".join(fields) + b"\n" + body


def test_what_is_no_listing_is_not_used(run, submit, state_dir, tracker):
    """Whatever lies at the listing's name, ``status --json`` prints what the history says,
    in one piece, with no error: an empty file, a first line cut short, fields of 5,000
    digits, more jobs than bytes, errors nested 100,000 deep (its CRC right), a FIFO, a
    directory."""
    many_ended(submit, state_dir, tracker)
    expected = listed(run).stdout
    path = os.path.join(state_dir, LISTING)
    made = open(path, "rb").read()
    head = made.partition(b"\n")[0]
    fields = head.split(b" ")
    contents = [b"", head, b" ".join(fields[:-1]) + b"\n", b" ".join(
        [*fields[:3], b"9" * 5000, *fields[4:]]) + b"\n", b" ".join(
        [*fields[:8], b"%d" % (1 << 40), *fields[9:]]) + made[len(head):],
        rebuilt(made, b"[" * 100_000 + b"]" * 100_000)]
    for content in contents:
        with open(path, "wb") as handle:
            handle.write(content)
        result = listed(run)
        assert (result.stdout, result.stderr) == (expected, ""), content[:80]
    for make in (os.mkfifo, os.mkdir):  # (a new listing replaces the FIFO, not the directory)
        os.unlink(path)
        make(path)
        result = listed(run)
        assert (result.stdout, result.stderr) == (expected, "")
    assert os.path.isdir(path)


def listing_calls(trace: str) -> list[tuple[str, int]]:
    """(syscall, its ordinal among calls of that name) of each call a traced
    ``status --json`` made to write its listing (and to hold the history's lock meanwhile):
    what a kill can land before."""
    seen, points, fds = {}, [], set()
    with open(trace) as handle:
        for line in handle:
            name = line.split("(", 1)[0].strip()
            if not name or not line[0].isalpha():
                continue
            seen[name] = seen.get(name, 0) + 1
            result = line.rsplit("=", 1)[-1].split()[0] if "=" in line else ""
            fd = re.match(r"\w+\((\d+)[,)]", line)
            touches = LISTING in line or "history.lock" in line or \
                (fd is not None and fd.group(1) in fds)
            if name == "openat" and (f".{LISTING}." in line or "history.lock" in line) and \
                    result.isdigit():
                fds.add(result)
            elif name == "close" and fd is not None:
                fds.discard(fd.group(1))
            if touches:
                points.append((name, seen[name]))
    return points


@pytest.mark.skipif(fi.strace_problem() is not None, reason=str(fi.strace_problem()))
def test_status_killed_before_each_call_of_its_listing_leaves_it_whole_or_none(
        run, submit, state_dir, tracker, tmp_path):
    many_ended(submit, state_dir, tracker)
    expected = listed(run).stdout
    path = os.path.join(state_dir, LISTING)
    env = {**os.environ, "OSTRACKER_STATE_DIR": state_dir}

    def traced(*strace_args):
        os.unlink(path)
        return subprocess.run(["strace", "-qq", *strace_args, *CLI, "status", "--json"],
                              env=env, capture_output=True, timeout=60)

    trace = str(tmp_path / "trace")
    assert traced("-o", trace).returncode == 0
    points = listing_calls(trace)
    names = {name for name, _ in points}
    assert {"openat", "write", "rename"} <= names or {"openat", "write", "renameat"} <= names, \
        points
    for name, ordinal in points:
        killed = traced("-o", "/dev/null", "-e", f"inject={name}:signal=SIGKILL:when={ordinal}")
        assert killed.returncode == -signal.SIGKILL, (name, ordinal, killed.stderr)
        if os.path.exists(path):  # the kill came after the rename: it must be whole
            assert open(path, "rb").read().count(b"\n") >= 1
        result = listed(run)
        assert (result.stdout, result.stderr) == (expected, ""), (name, ordinal)
        assert [name for name in os.listdir(state_dir) if name.endswith(".tmp")] == []
    print(f"listing writer killed before {len(points)} calls: {points}")


def test_listings_read_and_made_while_jobs_end_are_never_wrong(run, submit, state_dir,
                                                                tracker):
    """Jobs ending one after another (each adds its line) while two readers list, each
    making a new listing now and then: every listing is whole JSON, in ID order, each
    job once, none of the first ones missing; at the end, the listing and the lines say
    the same."""
    import threading

    many_ended(submit, state_dir, tracker)
    path = os.path.join(state_dir, LISTING)
    stop, seen, problems = threading.Event(), [], []

    def reader(remove_first):
        while not stop.is_set():
            if remove_first:
                try:
                    os.unlink(path)  # so that this reader makes a listing again
                except FileNotFoundError:
                    pass
            result = run("status", "--json")
            try:
                ids = [int(job["id"]) for job in json.loads(result.stdout)]
            except ValueError:
                problems.append(f"not JSON: {result.stdout[:200]!r} {result.stderr!r}")
                continue
            if result.returncode or result.stderr:
                problems.append(f"exit {result.returncode}: {result.stderr!r}")
            if ids != sorted(set(ids)) or not set(range(1, MANY + 1)) <= set(ids):
                problems.append(f"IDs {ids[:5]}...{ids[-5:]} ({len(ids)})")
            seen.append(len(ids))

    readers = [threading.Thread(target=reader, args=(first,)) for first in (False, True)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(15):
            submit("--wait", "--", "true")
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert problems == [] and len(seen) >= 4, (problems[:3], seen)
    through_listing = listed(run).stdout
    os.unlink(path)
    assert listed(run).stdout == through_listing
    assert len(json.loads(through_listing)) == MANY + 15


def test_a_listing_covers_what_was_read_not_what_came_after(run, submit, state_dir, tracker):
    """A job that ends between a reader's read of the history and its writing of the
    listing is not in the listing, and not covered by it either: the next reader reads
    its line."""
    many_ended(submit, state_dir, tracker)
    history = tracker.store.history
    listing, entries, _, read = history.listed_entries("local")
    assert listing is None and len(entries) == MANY
    late = submit("--wait", "--name", "late", "--", "true")
    history.keep_listing("local", read, {job_id: entry.encoded_infos()
                                         for job_id, entry in entries.items()}, [])
    path = os.path.join(state_dir, LISTING)
    made = open(path, "rb").read()
    assert names(listed(run))[late] == "late"
    assert open(path, "rb").read() == made  # (it was used)


def same_without_listing(run, state_dir):
    """status --json through the listing, then with the listing gone: the same output,
    errors in the same order; returns it."""
    through = listed(run)
    os.unlink(os.path.join(state_dir, LISTING))
    read = listed(run)
    assert (through.stdout, through.stderr) == (read.stdout, read.stderr)
    return read


def test_errors_come_as_reading_every_line_gives_them(run, submit, state_dir, tracker):
    """Damaged lines inside the listing and after it, a line that names no job in both,
    a job damaged only in a later line: one error for the nameless lines, then one per
    damaged job by ID, with the listing and without; and again after new listings."""
    many_ended(submit, state_dir, tracker)
    lines = history_lines(state_dir)
    lines[89] = lines[89].replace(b'"exit_status": 0', b'"exit_status": 1')  # job 90
    lines.insert(20, b"no job here")
    with open(os.path.join(state_dir, "history"), "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    listed(run)  # the listing, with job 90's error and the nameless line's
    with open(os.path.join(state_dir, "history"), "ab") as handle:
        handle.write(b"nor here\n")
        handle.write(line_of(tracker, 3).replace(b'"exit_status": 0', b'"exit_status": 9'))
    result = same_without_listing(run, state_dir)
    history = os.path.join(state_dir, "history")
    assert result.stderr.splitlines() == [
        f"ostracker: damaged record in {history}: a line that names no job is left out",
        f"ostracker: damaged record of job 3 in {history}",
        f"ostracker: damaged record of job 90 in {history}"]
    for _ in range(2):  # new listings made with more jobs each time keep one nameless error
        with open(history, "ab") as handle:
            handle.write(b"still no job\n")
            last = max(map(int, names(listed(run))))
            for job_id in range(last + 1, last + REFRESH_JOBS + 1):
                handle.write(line_for(tracker, job_id))
        listed(run)
        assert same_without_listing(run, state_dir).stderr.count("names no job") == 1
    assert max(map(int, names(listed(run)))) == MANY + 2 * REFRESH_JOBS


def test_a_later_line_of_another_backend_takes_the_job_out_of_new_listings(run, submit,
                                                                          state_dir, tracker):
    """A job of the listing whose later line is another backend's is not this backend's
    job any more, in the listing made next as in every line."""
    many_ended(submit, state_dir, tracker)
    listed(run)
    entry = tracker.store.history.entry(5)
    header = entry.header()
    infos = entry.infos(header)
    header.backend = "slurm"
    with open(os.path.join(state_dir, "history"), "ab") as handle:
        handle.write(history_line(header, infos))
        for job_id in range(MANY + 1, MANY + REFRESH_JOBS + 1):
            handle.write(line_for(tracker, job_id))
    for _ in range(2):  # making the new listing, then through it
        assert "5" not in names(listed(run))
    assert "5" not in names(same_without_listing(run, state_dir))


def test_a_listing_is_checked_against_the_bytes_its_reader_read(run, submit, state_dir,
                                                                tracker):
    """A line read, then replaced (the same size) before the listing is written, as a
    history line whose fsync failed is cut off and another job's written in its place:
    the listing does not hold for the history as it is, and is not used."""
    many_ended(submit, state_dir, tracker)
    history = tracker.store.history
    listing, entries, _, read = history.listed_entries("local")
    size = os.path.getsize(os.path.join(state_dir, "history"))
    for letter in "QRSTUVWXYZ":  # a name whose line's CRC has as many digits as before
        rewrite_line(state_dir, tracker, str(MANY), job_name=f"job-{letter}")
        if os.path.getsize(os.path.join(state_dir, "history")) == size:
            break
    history.keep_listing("local", read, {job_id: entry.encoded_infos()
                                         for job_id, entry in entries.items()}, [])
    assert os.path.isfile(os.path.join(state_dir, LISTING))
    assert names(listed(run))[str(MANY)] == f"job-{letter}"


def test_a_listing_that_lies_within_its_crc_is_not_used(run, submit, state_dir, tracker):
    """Fields no writer writes, the listing's CRC right: errors that name a job by a list
    or a boolean, a negative number of bytes covered (whose CRC is 0)."""
    from ostracker.core.listing import MAGIC

    many_ended(submit, state_dir, tracker)
    expected = listed(run).stdout
    path = os.path.join(state_dir, LISTING)
    made = open(path, "rb").read()
    head, _, body = made.partition(b"\n")
    fields = head[len(MAGIC) + 1:].split(b" ")
    fields[2], fields[3] = b"-1", b"0"
    for content in (rebuilt(made, b'[[[1], "x"]]'), rebuilt(made, b'[[true, "x"]]'),
                    rebuilt(made, b'[[1, 2]]'), MAGIC + b" " + b" ".join(fields) + b"\n" + body):
        with open(path, "wb") as handle:
            handle.write(content)
        result = listed(run)
        assert (result.stdout, result.stderr) == (expected, ""), content[:100]


def test_no_listing_is_made_of_a_history_that_delete_replaced(run, submit, state_dir, tracker):
    """A reader that read the history before ``delete`` wrote it anew makes no listing
    after: it would keep the deleted job's record on the disk."""
    many_ended(submit, state_dir, tracker)
    history = tracker.store.history
    _, entries, _, read = history.listed_entries("local")
    assert run("delete", "3").returncode == 0
    history.keep_listing("local", read, {job_id: entry.encoded_infos()
                                         for job_id, entry in entries.items()}, [])
    assert not os.path.exists(os.path.join(state_dir, LISTING))
