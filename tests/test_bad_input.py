"""Bad input through the real command: refused clearly, nothing changed.

Every case runs ``ostracker`` against one shared DB that holds a Done job, a
Running job and an ended array, and checks README, "Commands and exit statuses": the exact exit
status (2 usage error, 1 operation failed), exactly one line on stderr, nothing
on stdout, no traceback, and the DB unchanged byte for byte (every path, its
kind, mode and content).  A job that cannot start is kept by design as a Failed
record: for those the one new job directory is all that may change.

The other side of the line: words after ``--`` that look like ostracker's own
options reach the job untouched.
"""

from __future__ import annotations

import glob
import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import CLI, _lock_held, cleanup, poll, task_records
from ostracker.core.records import REAPER_LOCK

# -- the shared DB ---------------------------------------------------------------------


def _cli(state, *args, env=None, **kwargs):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OSTRACKER_STATE_DIR": state, **(env or {})},
                          **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One DB for every case: job 1 Done, job 2 Running, array 3 (tasks 1-3) Done."""
    base = tmp_path_factory.mktemp("bad-input")
    state = str(base / "state")
    files = base / "files"
    files.mkdir()
    (files / "plain").write_text("some input\n")
    ids = {}
    for key, args in (("done", ["--", "true"]), ("run", ["--", "sleep", "300"]),
                      ("arr", ["--array", "1-3", "--", "true"])):
        result = _cli(state, "submit", *args)
        assert result.returncode == 0, result.stderr
        ids[key] = result.stdout.strip()
    assert _cli(state, "wait", ids["done"], ids["arr"]).returncode == 0
    # wait returns once the jobs' lines are in the history; their reapers then clear
    # what they kept in ended/ (README, "Design", *Compacted ended jobs*): let them.
    poll(lambda: not glob.glob(os.path.join(state, "ended", "*", "job.json")),
         message="the ended jobs compacted")
    values = dict(ids, state=state, file=str(files / "plain"), dir=str(files),
                  missing=str(files / "no-such-thing"))
    yield values
    cleanup(state)


def snapshot(root: str) -> dict:
    """Every path under ``root`` with its kind, mode and content (a link: its target;
    a FIFO or other special file: its type and mode)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode))
            elif not stat.S_ISREG(info.st_mode):  # the reaper's control socket: never opened
                found[rel] = ("special", stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode))
            else:
                with open(path, "rb") as handle:
                    found[rel] = ("file", stat.S_IMODE(info.st_mode), handle.read())
    return found


# -- the table -------------------------------------------------------------------------

USAGE, FAILS, START = "usage", "fails", "start"
EXIT = {USAGE: 2, FAILS: 1, START: 1}

CASES = [
    # malformed and huge array specs
    (USAGE, ["submit", "--array", "1-", "--", "true"]),
    (USAGE, ["submit", "--array", "-3", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3:", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3:0", "--", "true"]),
    (USAGE, ["submit", "--array", "5-1", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3%0", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3%", "--", "true"]),
    (USAGE, ["submit", "--array", "a-b", "--", "true"]),
    (USAGE, ["submit", "--array", "", "--", "true"]),
    (USAGE, ["submit", "--array", "1,2,1", "--", "true"]),
    (USAGE, ["submit", "--array", " 1-3", "--", "true"]),
    (USAGE, ["submit", "--array", "\u0661-3", "--", "true"]),  # an Arabic-Indic digit
    (USAGE, ["submit", "--array", "0-1000000", "--", "true"]),  # 1,000,001 tasks
    (USAGE, ["submit", "--array", "1-99999999999999999999", "--", "true"]),
    (USAGE, ["submit", "--array", "0-99999999999999999999:1000", "--", "true"]),
    # --max-parallel
    (USAGE, ["submit", "--max-parallel", "2", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3", "--max-parallel", "0", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3", "--max-parallel", "-1", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3", "--max-parallel", "x", "--", "true"]),
    (USAGE, ["submit", "--array", "1-3%2", "--max-parallel", "3", "--", "true"]),
    # --env, names, commands, options
    (USAGE, ["submit", "-e", "OSTRACKER_TEST_NEVER_SET", "--", "true"]),  # -e KEY: not set
    (USAGE, ["submit", "--env", "=x", "--", "true"]),
    (USAGE, ["submit", "-e", "", "--", "true"]),
    (USAGE, ["submit", "-n", "", "--", "true"]),
    (USAGE, ["submit", "-n", "   ", "--", "true"]),
    (USAGE, ["submit", "--bogus", "--", "true"]),
    (USAGE, ["submit", "-Z", "--", "true"]),
    (USAGE, ["submit"]),
    (USAGE, ["submit", "--"]),
    (USAGE, ["submit", "--", ""]),
    # stdin equal to an output
    (USAGE, ["submit", "--stdin", "{file}", "-o", "{file}", "--", "true"]),
    (USAGE, ["submit", "--stdin", "{file}", "--stderr", "{file}", "--", "true"]),
    (USAGE, ["submit", "--array", "1-2", "--stdin", "{dir}/x.%a", "-o", "{dir}/x.%a",
             "--", "true"]),
    # timeouts
    (USAGE, ["wait", "{done}", "--timeout", "-1"]),
    (USAGE, ["wait", "{done}", "--timeout", "abc"]),
    (USAGE, ["wait", "{done}", "--timeout", "nan"]),
    (USAGE, ["wait", "{done}", "--timeout", ""]),
    (USAGE, ["wait", "{done}", "--timeout", "0x10"]),
    (USAGE, ["wait", "{done}", "--timeout"]),
    # states
    (USAGE, ["status", "--state", "Bogus"]),
    (USAGE, ["status", "--state", ""]),
    (USAGE, ["status", "{done}", "--state", "Runing"]),
    # malformed IDs, through every command that takes one
    (USAGE, ["info", "abc"]),
    (USAGE, ["info", "1."]),
    (USAGE, ["status", ".1"]),
    (USAGE, ["status", "1.2.3"]),
    (USAGE, ["wait", "0"]),
    (USAGE, ["wait", "1.-1"]),
    (USAGE, ["info", " 1"]),
    (USAGE, ["info", "1 "]),
    (USAGE, ["info", ""]),
    (USAGE, ["info", "+1"]),
    (USAGE, ["info", "1e3"]),
    (USAGE, ["info", "--", "-1"]),
    (USAGE, ["info", "\u0663"]),
    (USAGE, ["suspend", "abc"]),
    (USAGE, ["resume", "1.x"]),
    (USAGE, ["terminate", "0"]),
    (USAGE, ["delete", "1.2.3"]),
    (USAGE, ["output", "x"]),
    # missing arguments, unknown commands and options
    (USAGE, ["info"]),
    (USAGE, ["wait"]),
    (USAGE, ["suspend"]),
    (USAGE, ["delete"]),
    (USAGE, ["bogus"]),
    (USAGE, ["status", "--bogus"]),
    (USAGE, ["--state-dir"]),
    (USAGE, ["monitor", "abc"]),
    # well-formed but unknown jobs
    (FAILS, ["status", "999"]),
    (FAILS, ["status", "{done}", "999"]),
    (FAILS, ["info", "999"]),
    (FAILS, ["info", "99999999999999999999999"]),
    (FAILS, ["info", "{done}.7"]),   # not an array
    (FAILS, ["info", "{arr}.9"]),    # not one of its tasks
    (FAILS, ["wait", "999"]),
    (FAILS, ["wait", "{done}", "999"]),
    (FAILS, ["suspend", "999"]),
    (FAILS, ["resume", "999"]),
    (FAILS, ["terminate", "999"]),
    (FAILS, ["terminate", "{arr}.9"]),
    (FAILS, ["delete", "999"]),
    (FAILS, ["output", "999"]),
    # hold and release never work; control in the wrong state
    (FAILS, ["hold", "{done}"]),
    (FAILS, ["release", "{run}"]),
    (FAILS, ["hold", "999"]),
    (FAILS, ["suspend", "{done}"]),
    (FAILS, ["resume", "{run}"]),
    (FAILS, ["resume", "{arr}"]),
    (FAILS, ["terminate", "{done}"]),
    (FAILS, ["terminate", "{arr}.2"]),
    (FAILS, ["delete", "{run}"]),
    (FAILS, ["delete", "{arr}.1"]),
    # jobs that cannot start: submit fails, a Failed record is kept
    (START, ["submit", "--stdin", "{missing}", "--", "cat"]),
    (START, ["submit", "--stdin", "{dir}", "--", "cat"]),  # a directory cannot be read
    (START, ["submit", "-o", "{missing}/out", "--", "true"]),
    (START, ["submit", "--stderr", "{missing}/err", "--", "true"]),
    (START, ["submit", "-o", "{dir}", "--", "true"]),
    (START, ["submit", "-C", "{file}", "--", "true"]),
    (START, ["submit", "-C", "{missing}", "--", "true"]),
    (START, ["submit", "--", "{missing}"]),
    (START, ["submit", "--", "no-such-command-ostracker-test"]),
    (START, ["submit", "--", "{file}"]),
    (START, ["submit", "--", "{dir}"]),
    (START, ["submit", "--array", "1-3", "--", "{missing}"]),
]


def _case_id(case):
    kind, argv = case
    return f"{kind}:" + " ".join(repr(a) if (not a or " " in a) else a for a in argv)


# -- every option and argument of every command, against one battery of bad values -------
#
# Each slot is where a value goes (``V``); each takes every value of BATTERY, and
# what it must do with each is its kind: usage (2), fails (1: a well-formed job
# ID or PID that names nothing, a path that cannot be used), start (1: a job that
# could not start, kept as a Failed record).  A value a slot would take as good
# is left out of it and said why: a name, a --name pattern and an output path
# are any text (``-n inf`` is a fine name, ``-o nan`` a fine file).

BIG = "9" * 5000  # int() refuses more than 4,300 digits: checked before it is called
BATTERY = {
    "big": BIG, "inf": "inf", "nan": "nan", "1e309": "1e309", "negative": "-1",
    "empty": "", "word": "abc",
    "garbage": "x;$(y)|`z` \x01\x1b[2J\x7f\u202e'\"\\%",  # no NUL: argv cannot hold one
}
V = "\0V"  # the slot of a template, replaced by each value
ALL = {name: USAGE for name in BATTERY}


def only(default, **kinds):
    """Every battery value's kind: ``default``, except those named (None: left out)."""
    found = {name: default for name in BATTERY}
    found.update(kinds)
    return {name: kind for name, kind in found.items() if kind is not None}


ID = only(USAGE, big=FAILS)  # a well-formed ID names no job at any length: exit 1
# Beside an ID that can be acted on, a malformed one stops all (exit 2, nothing done);
# a well-formed one that names nothing is reported after the others were acted on
# (README, "Job control"), which is no bad input: left out here.
BESIDE = only(USAGE, big=None)
FLAG = {"inf": USAGE, "empty": USAGE, "big": USAGE}  # a flag given a value: --json=inf

SLOTS = [
    # the group's own options
    (["--backend", V, "status"], ALL),
    (["--state-dir", V, "status"], only(None, big=FAILS, empty=USAGE)),  # others: a new dir
    (["--version=" + V], FLAG),
    (["--help=" + V], FLAG),
    # submit: every option, and the command itself
    (["submit", "-n", V, "--", "true"], only(None, empty=USAGE)),  # any other text is a name
    (["submit", "-C", V, "--", "true"], only(START, empty=USAGE)),
    (["submit", "-e", V, "--", "true"], ALL),  # KEY alone, not set in the environment
    (["submit", "--stdin", V, "--", "cat"], only(START, empty=USAGE)),
    (["submit", "-o", V, "--", "true"], only(None, big=START, empty=USAGE)),
    (["submit", "--stderr", V, "--", "true"], only(None, big=START, empty=USAGE)),
    (["submit", "--array", V, "--", "true"], ALL),
    (["submit", "--array", "1-3", "--max-parallel", V, "--", "true"], ALL),
    (["submit", "--array", "1-3%" + V, "--", "true"], ALL),
    (["submit", "--array", V + "-3", "--", "true"], ALL),
    (["submit", "--array", "1-" + V, "--", "true"], ALL),
    (["submit", "--array", "1-3:" + V, "--", "true"], ALL),
    # no such queue (FAILS), or no name a queue can have (USAGE)
    (["submit", "-q", V, "--", "true"], only(FAILS, big=USAGE, negative=USAGE, empty=USAGE,
                                             garbage=USAGE)),
    (["submit", "-q", "q", "--slots", V, "--", "true"], ALL),
    (["submit", "--priority", V, "--", "true"], only(USAGE, negative=None)),  # -1 is one
    (["submit", "-d", V, "--", "true"], ALL),
    (["submit", "-d", "afterok:" + V, "--", "true"], ID),
    (["submit", "--begin", V, "--", "true"], ALL),
    (["submit", "--hold=" + V, "--", "true"], FLAG),
    (["submit", "--session", V, "--", "true"], only(None, big=USAGE, negative=USAGE,
                                                    empty=USAGE, garbage=USAGE)),
    (["status", "--session", V], only(None)),  # any text: a session without jobs lists none
    (["submit", "-t", V, "--", "true"], ALL),
    (["submit", "--kill-after", V, "--", "true"], ALL),
    (["submit", "--deadline", V, "--", "true"], ALL),
    (["submit", "-t", "1", "--signal", V, "--", "true"], ALL),
    (["submit", "--limit", V, "--", "true"], ALL),
    (["submit", "--limit", "CPU_TIME=" + V, "--", "true"], ALL),
    (["submit", "--limit", "OPEN_FILES=" + V, "--", "true"], ALL),
    (["submit", "--retries", V, "--", "true"], ALL),
    (["submit", "--retry-delay", V, "--", "true"], ALL),
    (["submit", "--on-end", V, "--", "true"], only(None, empty=USAGE)),  # any text is a command
    (["submit", "--join=" + V, "--", "true"], FLAG),
    (["submit", "--wait=" + V, "--", "true"], FLAG),
    (["submit", "--json=" + V, "--", "true"], FLAG),
    (["submit", "--", V], only(START, empty=USAGE)),
    # status, info, wait, output, delete and the controls: options and IDs
    (["status", "--state", V], ALL),
    (["status", "--json=" + V], FLAG),
    (["status", "--since", V], only(USAGE, negative=None)),  # -1: a second ago
    (["status", "--until", V], only(USAGE, negative=None)),
    (["status", "--name", V], only(None)),  # any text is a glob
    (["status", "--last", V], ALL),
    (["status", "--active=" + V], FLAG),
    (["status", "--queue", V], only(None)),  # any text: a queue that has no jobs lists none
    (["delete", "--finished", "--older-than", V], ALL),
    (["status", "--quiet=" + V], FLAG),
    (["status", "--", V], ID),
    (["status", "{done}", "--", V], ID),
    (["info", "--", V], ID),
    (["info", "--json=" + V, "{done}"], FLAG),
    (["wait", "{done}", "--timeout", V], ALL),
    (["wait", "--any=" + V, "{done}"], FLAG),
    (["wait", "--json=" + V, "{done}"], FLAG),
    (["wait", "--", V], ID),
    (["wait", "{done}", "--", V], ID),
    (["output", "--", V], ID),
    (["output", "--stderr=" + V, "{done}"], FLAG),
    (["output", "--follow=" + V, "{done}"], FLAG),
    (["delete", "--", V], ID),
    (["delete", "--finished=" + V], FLAG),
    (["delete", "--finished", "--", V], ALL),  # --finished takes no IDs, any ID refused
    (["suspend", "--", V], ID),
    (["suspend", "{run}", "--", V], BESIDE),  # checked before {run} is suspended
    (["resume", "--", V], ID),
    (["terminate", "--", V], ID),
    (["terminate", "{run}", "--", V], BESIDE),  # checked before {run} is terminated
    (["queue", "--", V], only(FAILS, big=USAGE, negative=USAGE, empty=USAGE,
                              garbage=USAGE)),
    (["queue", "q", "--slots", V], ALL),
    (["queue", "--delete=" + V, "q"], FLAG),
    (["queue", "--json=" + V], FLAG),
    (["resubmit", "--", V], ID),
    (["resubmit", "--failed=" + V, "{done}"], FLAG),
    (["submit", "--array", V + ",3", "--", "true"], ALL),
    (["terminate", "--grace", V, "{run}"], ALL),
    (["signal", "-s", V, "{run}"], ALL),
    (["signal", "-s", "TERM", "--", V], ID),
    (["hold", "--", V], ID),
    (["release", "--", V], ID),
    (["info", "--", V + ".1"], ID),
    (["info", "--", "{arr}." + V], only(USAGE, big=FAILS)),
    # monitor: every option and the PIDs (--name takes any text as a pattern)
    (["monitor", "--", V], ID),  # a PID too long to be one: not found, exit 1
    (["monitor", "1", "--", V], BESIDE),
    (["monitor", "--user", V], ALL),  # no such user (a UID past 2**32 - 2 is none)
    (["monitor", "--interval", V], ALL),
    (["monitor", "--jobs=" + V], FLAG),
    (["monitor", "--machine=" + V], FLAG),
    (["monitor", "--json=" + V], FLAG),
]

BATTERY_CASES = [(kind, template, BATTERY[name])
                 for template, kinds in SLOTS for name, kind in kinds.items()]
BATTERY_IDS = [f"{kind}:{' '.join(template).replace(V, '<' + name + '>')}"
               for template, kinds in SLOTS for name, kind in kinds.items()]

# a -e KEY of the battery must not be set where the tests run
UNSET = {name for name in BATTERY.values() if name in os.environ}


@pytest.mark.parametrize("kind,argv", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_refused_with_one_line_and_nothing_changed(world, kind, argv):
    """Exit 2 or 1 as README, "Commands and exit statuses" says, one line on stderr, empty stdout, DB unchanged."""
    check_refused(world, kind, argv)


@pytest.mark.parametrize("kind,template,value", BATTERY_CASES, ids=BATTERY_IDS)
def test_every_option_and_argument_refuses_the_battery(world, kind, template, value):
    """5,000 digits, inf, nan, 1e309, -1, '', a word, garbage: in every slot, as CASES."""
    assert not UNSET, f"set in this environment, cannot test -e KEY: {UNSET}"
    check_refused(world, kind, [arg.format(**world).replace(V, value) for arg in template],
                  formatted=True)


def test_the_battery_covers_every_command_and_option():
    """Each command's every option (but --name, any text) and argument has a slot."""
    from ostracker.cli import cli

    covered = {(template[0] if template[0] in cli.commands else "", word.split("=")[0])
               for template, _ in SLOTS for word in template if word.startswith("-")}
    commands = {template[0] for template, _ in SLOTS}
    for name, command in [("", cli), *cli.commands.items()]:
        if name:
            assert name in commands, name
        for param in command.params:
            if param.param_type_name != "option" or param.name == "pattern":
                continue
            assert any((name, opt) in covered for opt in param.opts + param.secondary_opts), \
                (name, param.opts)
    assert len(BATTERY_CASES) >= 300


def check_refused(world, kind, argv, formatted=False):
    args = argv if formatted else [arg.format(**world) for arg in argv]
    state = world["state"]
    before = snapshot(state)
    result = _cli(state, *args, stdin=subprocess.DEVNULL, cwd=world["dir"])
    # A job that could not start: its reaper reports that first, then writes the rest.
    lock = os.path.join(state, "jobs", str(int(before["last-id"][2]) + 1), REAPER_LOCK)
    poll(lambda: not _lock_held(lock), message="the reaper of a job that could not start")
    after = snapshot(state)
    if result.stdout.strip().isdigit():  # wrongly started: let it end, or it spoils the next case
        _cli(state, "wait", "--timeout", "10", result.stdout.strip())
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == EXIT[kind], (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert result.stdout == ""
    if kind != START:
        assert after == before
        return
    # One new job, Failed, in its own new directory; besides it only the ID bookkeeping
    # at the top of the state dir (the counter) may change, and nothing goes away.
    last = int(before["last-id"][2])
    job_id = str(last + 1)
    assert f"job {job_id} could not start" in lines[0]
    assert after["last-id"][2] == b"%d\n" % (last + 1)
    new_dir = os.path.join("jobs", job_id)
    changed = {path for path in set(before) | set(after)
               if before.get(path) != after.get(path)}
    bookkeeping = {path for path in changed if os.sep not in path and path in before
                   and path in after and before[path][0] == after[path][0] == "file"}
    assert changed - bookkeeping == {path for path in after
                                     if path == new_dir or path.startswith(new_dir + os.sep)}
    names = {os.path.basename(path) for path in changed if path.startswith(new_dir + os.sep)}
    is_array = "--array" in args
    records = {"tasks.log", "cancel.json", "summary.json"} if is_array else {"state.json"}
    allowed = {"job.json", "reaper.lock", *records, "stdout", "stderr", "1.stdout", "1.stderr"}
    assert {"job.json", *records} <= names <= allowed, names
    record = task_records(os.path.join(state, new_dir))[1 if is_array else None]
    assert record["state"] == "Failed" and record["sub_state"].startswith("could not start")
    shown = json.loads(_cli(state, "status", job_id, "--json").stdout)
    assert shown and all(job["state"] == "Failed" for job in shown)


def test_the_table_holds_at_least_forty_bad_inputs():
    assert len(CASES) >= 40


# -- the other side of the line --------------------------------------------------------

LOOKALIKES = ["--wait", "-n", "name", "--json", "--array", "1-3", "--max-parallel", "2",
              "-o", "/dev/full", "--state-dir", "/nonexistent", "-e", "A=B", "--", "-w",
              "--help", "-h", "--version", "--timeout", "-1", "", " spaced ", "%j %a %%"]


def test_option_lookalikes_after_double_dash_reach_the_job_untouched(run, state_dir, tmp_path):
    """`--wait`, `-n`, `--json`, `--array 1-3`... after `--` are the job's own arguments."""
    out = tmp_path / "argv.json"
    code = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    result = run("submit", "--", sys.executable, "-c", code, out, *LOOKALIKES)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.isdigit() and result.stderr == ""  # the ID alone: no --json, no --wait
    assert run("wait", job_id).returncode == 0
    assert json.loads(out.read_text()) == [str(out), *LOOKALIKES]
    job = json.loads(run("info", job_id, "--json").stdout)
    assert job["array_id"] is None and job["job_name"] == os.path.basename(sys.executable)
    assert job["job_template"]["args"] == ["-c", code, str(out), *LOOKALIKES]


def test_option_lookalike_as_the_command_itself_is_the_command(run, state_dir):
    """`submit -- --wait` runs a command named `--wait` (none exists): it cannot start."""
    result = run("submit", "--", "--wait")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "could not start" in result.stderr and "--wait" in result.stderr
    job_id = result.stderr.split("job ", 1)[1].split()[0]
    poll(lambda: json.loads(run("info", job_id, "--json").stdout)["state"] == "Failed",
         message="Failed record")


# -- what the environment gives ------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_relative_state_dir_in_a_deleted_directory_is_one_line(tmp_path, how):
    """cwd removed under a relative OSTRACKER_STATE_DIR (or --state-dir): exit 1, one line."""
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "OSTRACKER_STATE_DIR"}
    args = ["--state-dir", "rel"] if how == "option" else []
    if how == "env":
        env["OSTRACKER_STATE_DIR"] = "rel"
    script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    for command in (["status"], ["info", "1"], ["submit", "--", "true"], ["monitor", "--jobs"],
                    ["delete", "--finished"]):
        result = subprocess.run(["sh", "-c", script, "sh", str(gone), *CLI, *args, *command],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert result.stderr.splitlines() == [
            "ostracker: cannot use state directory rel: the current directory, which it is "
            "relative to, no longer exists"], result.stderr
        gone.mkdir()


def test_a_bad_backend_in_the_environment_is_a_usage_error(world):
    result = _cli(world["state"], "status", env={"OSTRACKER_BACKEND": "bogus\x1b[2J"})
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "\x1b" not in result.stderr


def test_an_id_too_long_to_name_anything_is_reported_after_the_others(world):
    """`monitor 1 <5,000 digits>` shows PID 1, then says the other is not found (exit 1)."""
    result = _cli(world["state"], "monitor", "1", BIG)
    assert result.returncode == 1
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["PID", "1"]
    assert result.stderr.splitlines() == [
        "ostracker: process not found: 999999999999999999999999...(5,000 characters)"]
    result = _cli(world["state"], "status", world["done"], "9" * 30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"ostracker: no such job: {'9' * 30}"]
    # leading zeros are no digits of a number, however many: job {done}, PID 1, UID 0
    for args in (["info", "0" * 5000 + world["done"]], ["monitor", "0" * 5000 + "1"],
                 ["monitor", "--user", "0" * 5000, "1"]):
        result = _cli(world["state"], *args)
        assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_api_refuses_what_no_id_could_name():
    """In-process: array indices past 18 digits, and IDs the parsers take apart by length."""
    from ostracker.core.errors import InvalidArgument, JobNotFound
    from ostracker.core.models import ArraySpec, parse_count, parse_job_id
    from ostracker.slurm.monitor import SlurmMonitoringSession

    for begin, end in ((0, 10 ** 18), (10 ** 5000, 10 ** 5000)):
        with pytest.raises(InvalidArgument, match="or less"):
            ArraySpec(begin, end)
    ArraySpec(10 ** 18 - 1, 10 ** 18 - 1)
    with pytest.raises(JobNotFound, match=r"\(5,000 characters\)"):
        parse_job_id(BIG)
    with pytest.raises(JobNotFound):
        parse_job_id("7." + "1" * 19)
    assert parse_job_id("0" * 5000 + "7") == (7, None)  # leading zeros are no digits of it
    with pytest.raises(InvalidArgument):
        parse_count(BIG)
    for bad in ("4711_\u0663", "4711_", "\u0663", "4711_1_2", ""):
        with pytest.raises(InvalidArgument):
            SlurmMonitoringSession.parse_id(bad)
    assert SlurmMonitoringSession.parse_id("4711_3") == "4711_3"
