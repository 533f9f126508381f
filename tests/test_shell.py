"""At home in the shell: completions, the man page, output for scripts, progress, help.

The completion scripts are loaded in the real shells (bash, and zsh and fish
when installed; otherwise those tests are skipped, saying so) and driven
through the generated functions, which call the real ``ostracker`` back.
The generated files (completions, man page) must be what the generators in
scripts/ write from the Click app today.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from importlib.metadata import version

import pytest

from conftest import CLI, poll

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
OSTRACKER = os.path.join(BIN, "ostracker")
COMMANDS = ["submit", "resubmit", "status", "info", "output", "wait", "suspend", "resume",
            "terminate",
            "signal", "hold", "release", "queue", "delete", "monitor"]


def load_script(name):
    path = os.path.join(ROOT, "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need(program):
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package {program})")
    return path


@pytest.fixture
def shell_env(state_dir):
    """The environment for a shell: ``ostracker`` on PATH, the test's state dir."""
    if not os.access(OSTRACKER, os.X_OK):
        pytest.skip(f"no ostracker executable next to {sys.executable}")
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
            "OSTRACKER_STATE_DIR": state_dir}


@pytest.fixture
def jobs(submit, run):
    """A running job, a suspended one and an ended one: their IDs."""
    running = submit("--", "sleep", "60")
    suspended = submit("--", "sleep", "61")
    ended = submit("--", "true")
    assert run("suspend", suspended).returncode == 0
    assert run("wait", ended).returncode == 0
    return {"running": running, "suspended": suspended, "ended": ended}


def in_shell(argv, env, script=None):
    result = subprocess.run(argv, input=script, capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result.stdout


# -- completions ------------------------------------------------------------------------------

BASH_COMPLETE = """\
source completions/ostracker.bash || exit 1
complete -p ostracker >/dev/null || exit 1
for line in "suspend " "resume " "delete " "status --state R" "terminate "; do
    read -ra COMP_WORDS <<< "ostracker $line"
    [[ $line == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMPREPLY=()
    _ostracker_completion ostracker
    echo "$line: ${COMPREPLY[*]}"
done
"""


def completed(output):
    """{command line: [candidates]} from lines ``line: a b c``."""
    return {line.partition(":")[0]: line.partition(":")[2].split()
            for line in output.splitlines() if ":" in line}


def test_bash_completion_offers_the_jobs_that_fit(jobs, shell_env):
    """bash: suspend offers the running job only, resume the suspended, delete the ended."""
    got = completed(in_shell([need("bash"), "--norc", "--noprofile"], shell_env, BASH_COMPLETE))
    assert got["suspend "] == [jobs["running"]], got
    assert got["resume "] == [jobs["suspended"]], got
    assert got["delete "] == [jobs["ended"]], got
    assert got["terminate "] == [jobs["running"], jobs["suspended"]], got
    assert got["status --state R"] == ["Running", "Requeued"], got


ZSH_COMPLETE = """\
{load}
[[ -n $_comps[ostracker] ]] || {{ print "not registered"; exit 1 }}
# The completion builtins only work inside a completion widget: stand-ins that
# print what the script hands them (zsh's own words/CURRENT drive it).
compadd() {{ print -r -- "plain: ${{(P)${{@[-1]}}}}" }}
_describe() {{ print -r -- "described: ${{(@)${{(P)3}}%%:*}}" }}
for word in suspend delete; do
    words=(ostracker $word "") CURRENT=3
    print -n -- "$word "
    $_comps[ostracker]
done
"""


@pytest.mark.parametrize("load", [
    "autoload -U compinit && compinit -u -D\nsource completions/_ostracker",
    "fpath=($PWD/completions $fpath)\nautoload -U compinit && compinit -u -D",
], ids=["sourced", "autoloaded-from-fpath"])
def test_zsh_completion_offers_the_jobs_that_fit(jobs, shell_env, load):
    """zsh (-f): the script registers itself, offers the running job to suspend, not the ended.

    Autoloaded from $fpath, the second call (delete) is the one that Click's own
    function name would leave empty.
    """
    output = in_shell([need("zsh"), "-f"], shell_env, ZSH_COMPLETE.format(load=load))
    lines = dict(line.split(" ", 1) for line in output.splitlines())
    assert lines["suspend"] == f"described: {jobs['running']}", output
    assert lines["delete"].split(": ")[1].split() == [jobs["ended"]], output


def test_fish_completion_offers_the_jobs_that_fit(jobs, shell_env):
    """fish (--no-config): complete -C lists the running job for suspend, not the ended one."""
    script = ("source completions/ostracker.fish; or exit 1\n"
              "for line in 'suspend ' 'delete '\n"
              "    echo \"== $line\"; complete -C \"ostracker $line\"\n"
              "end\n")
    output = in_shell([need("fish"), "--no-config"], shell_env, script)
    sections = {}
    for line in output.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        else:
            current.append(line.split("\t")[0])
    assert sections["suspend"] == [jobs["running"]], output
    assert sections["delete"] == [jobs["ended"]], output
    assert "Running: sleep" in output  # fish shows the description


def complete(env, words):
    """(type, value) pairs that ``ostracker`` answers bash for ``words`` (the last incomplete)."""
    result = subprocess.run([OSTRACKER], capture_output=True, text=True, timeout=30, env={
        **env, "_OSTRACKER_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [tuple(line.split(",", 1)) for line in result.stdout.splitlines() if line]


def values(env, words):
    """The plain candidates for ``words``."""
    return [value for kind, value in complete(env, words) if kind == "plain"]


def test_completion_of_array_tasks_states_pids_and_paths(submit, run, shell_env):
    """Tasks once the array is named; PIDs for monitor; the shell's own file names for paths."""
    array = submit("--array", "1-3", "--", "sleep", "60")
    poll(lambda: len(run("status", "-q", "--state", "Running").stdout.split()) == 3,
         message="three running tasks")
    assert values(shell_env, ["ostracker", "suspend", ""]) == [array]
    assert values(shell_env, ["ostracker", "suspend", f"{array}."]) == \
        [f"{array}.{i}" for i in (1, 2, 3)]
    assert values(shell_env, ["ostracker", "output", f"{array}.2"]) == [f"{array}.2"]
    # output takes one task, never a whole array; an ID on the line is not offered again
    assert values(shell_env, ["ostracker", "output", ""]) == [f"{array}.{i}" for i in (1, 2, 3)]
    assert values(shell_env, ["ostracker", "suspend", f"{array}.1", f"{array}."]) == \
        [f"{array}.2", f"{array}.3"]
    pid = str(os.getpid())
    assert pid in values(shell_env, ["ostracker", "monitor", pid[:-1]])
    assert values(shell_env, ["ostracker", "status", "--state", "susp"]) == ["Suspended"]
    assert complete(shell_env, ["ostracker", "submit", "-C", ""]) == [("dir", "")]
    # the command: the programs on $PATH; a path, and its arguments: the shell's file names
    assert ("plain", "sleep") in complete(shell_env, ["ostracker", "submit", "--", "sle"])
    assert all(value.startswith("sle") for _, value in
               complete(shell_env, ["ostracker", "submit", "--", "sle"]))
    assert complete(shell_env, ["ostracker", "submit", "--", "./x"]) == [("file", "./x")]
    assert complete(shell_env, ["ostracker", "submit", "--", "sleep", ""]) == [("file", "")]


def test_bash_sorts_the_paths_it_completes_itself():
    """Job IDs come sorted by number (``complete -o nosort``); the directory and file names
    that bash finds for a path are sorted again (``+o nosort``)."""
    script = open(os.path.join(ROOT, "completions", "ostracker.bash")).read()
    assert "compopt -o dirnames +o nosort" in script
    assert "compopt -o default +o nosort" in script


def test_completion_of_queue_names_and_queued_jobs(submit, run, shell_env):
    """-q and `queue` offer the queues; hold offers queued jobs, release held ones."""
    for name in ("gpu", "cpu", "gpu-big"):
        assert run("queue", name, "--slots", "0").returncode == 0
    assert values(shell_env, ["ostracker", "queue", ""]) == ["cpu", "gpu", "gpu-big"]
    assert values(shell_env, ["ostracker", "submit", "-q", "gp"]) == ["gpu", "gpu-big"]
    assert values(shell_env, ["ostracker", "submit", "--queue", "x"]) == []
    queued = submit("-q", "gpu", "--", "true")
    held = submit("--hold", "--", "true")
    assert values(shell_env, ["ostracker", "hold", ""]) == [queued]
    assert values(shell_env, ["ostracker", "release", ""]) == [held]
    assert values(shell_env, ["ostracker", "terminate", ""]) == [queued, held]


def test_completion_of_signal_names(shell_env):
    assert values(shell_env, ["ostracker", "signal", "-s", "US"]) == ["USR1", "USR2"]
    assert values(shell_env, ["ostracker", "signal", "-s", "sigte"]) == ["TERM"]


def test_completion_never_fails(tmp_path, shell_env):
    """A state dir that cannot be read, or nonsense typed: no candidates, no traceback."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert complete(shell_env, ["ostracker", "--state-dir", str(not_a_dir), "suspend", ""]) == []
    assert complete(shell_env, ["ostracker", "delete", "x.y."]) == []
    assert complete(shell_env, ["ostracker", "monitor", "abc"]) == []
    from ostracker.completion import job_ids

    assert job_ids("\0", "suspend", "") == []  # in-process too: nothing escapes


def test_completion_files_are_current():
    """completions/ is what scripts/gen_completions.py writes (regenerate if not)."""
    generator = load_script("gen_completions")
    for shell, name in generator.FILES.items():
        with open(os.path.join(ROOT, "completions", name)) as handle:
            committed = handle.read()
        written_by = generator.recorded_click_version(committed)
        if written_by != version("click"):
            pytest.skip(f"completions/{name} was generated with click {written_by}, "
                        f"click {version('click')} is installed")
        assert committed == generator.render(shell), \
            f"completions/{name} is out of date: run scripts/gen_completions.py"


# -- the man page -------------------------------------------------------------------------------

PAGE = os.path.join(ROOT, "man", "ostracker.1")


def test_man_page_is_current():
    """man/ostracker.1 is what scripts/gen_man.py writes from the Click app today."""
    with open(PAGE) as handle:
        assert handle.read() == load_script("gen_man").render(), \
            "man/ostracker.1 is out of date: run scripts/gen_man.py"


def test_man_page_renders_without_warnings_and_names_everything():
    """groff -man -ww: no warning; every section, command and option is in the text."""
    groff = need("groff")
    check = subprocess.run([groff, "-man", "-ww", "-z", PAGE], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    rendered = subprocess.run([groff, "-man", "-ww", "-Tutf8", "-P-cbou", PAGE],
                              capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    text = rendered.stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "ENVIRONMENT", "FILES",
                    "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section
    for command in COMMANDS:
        assert re.search(rf"^ +{command}$", text, re.M), f"no subsection for {command}"
        assert f"ostracker {command} [OPTIONS]" in text
    from ostracker.cli import cli

    for name, command in cli.commands.items():
        for param in command.params:
            for option in getattr(param, "opts", []) if param.param_type_name == "option" else []:
                assert re.search(rf"(^|[ ,]){re.escape(option)}\b", text, re.M), \
                    f"{name} {option} not in the man page"
    for word in ("OSTRACKER_STATE_DIR", "JOB_ID", "TASK_ID", "summary.json", "124", "crontab"):
        assert word in text


# -- output for scripts -------------------------------------------------------------------------

def test_json_output_parses_for_every_command_that_has_it(run, submit):
    """submit, status, info, wait, monitor (and submit --wait): --json is JSON."""
    single = json.loads(run("submit", "--json", "--", "true").stdout)
    assert single["id"] and single["state"] in ("Running", "Done")
    array = submit("--array", "1-2", "--", "true")
    results = {
        "info": run("info", single["id"], "--json"),
        "wait": run("wait", single["id"], "--json"),
        "wait array": run("wait", array, "--json"),
        "wait several": run("wait", single["id"], array, "--json"),
        "submit --wait": run("submit", "--wait", "--json", "--array", "1-2", "--", "true"),
        "monitor": run("monitor", os.getpid(), "--json"),
        "monitor --machine": run("monitor", "--machine", "--json"),
        "status": run("status", "--json"),
    }
    parsed = {}
    for what, result in results.items():
        assert result.returncode == 0, (what, result.stderr)
        parsed[what] = json.loads(result.stdout)
    assert parsed["wait"]["id"] == single["id"] and parsed["wait"]["state"] == "Done"
    assert [r["id"] for r in parsed["wait array"]] == [f"{array}.1", f"{array}.2"]
    assert [r["id"] for r in parsed["wait several"]] == [single["id"], f"{array}.1", f"{array}.2"]
    assert {r["state"] for r in parsed["submit --wait"]} == {"Done"}
    assert len(parsed["status"]) == 5  # 1, 2.1, 2.2 and the two tasks of submit --wait
    assert parsed["monitor"][0]["id"] == str(os.getpid())


def test_status_quiet_prints_ids_only_and_honours_filters(run, submit):
    """status -q: one ID per line (tasks of arrays too), filtered like the table."""
    done = submit("--", "true")
    running = submit("--", "sleep", "60")
    array = submit("--array", "1-2", "--", "sleep", "60")
    assert run("wait", done).returncode == 0
    assert run("status", "-q").stdout.split() == [done, running, f"{array}.1", f"{array}.2"]
    assert run("status", "--quiet", "--state", "Running", running).stdout == f"{running}\n"
    assert run("status", "-q", "--state", "Done").stdout == f"{done}\n"
    assert run("status", "-q", "--state", "Failed").stdout == ""
    clash = run("status", "-q", "--json")
    assert clash.returncode == 2 and "exclude" in clash.stderr


def test_no_escape_codes_or_progress_when_piped(run, submit, state_dir):
    """Piped (as in cron): plain text only; wait and submit --wait on arrays add nothing."""
    array = submit("--array", "1-4", "--max-parallel", "2", "--", "sleep", "0.3")
    results = [run("wait", array), run("submit", "--wait", "--array", "1-3", "--", "true"),
               run("status"), run("info", array), run("monitor", os.getpid()), run("--help"),
               run("status", "--help"), run("status", "--state", "Nope")]
    for result in results:
        for stream in (result.stdout, result.stderr):
            assert "\x1b" not in stream and "\r" not in stream, result
    assert results[0].stdout == "" and results[0].stderr == ""
    assert results[1].stderr == "" and re.fullmatch(r"\d+\n", results[1].stdout)


def on_a_terminal(argv, env=None, columns=100):
    """Run ``argv`` with stderr on a pseudo-terminal, stdout and stdin not: (rc, stdout, tty)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
        out = process.communicate(timeout=30)[0]
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return process.returncode, out.decode(), seen.decode()


def test_progress_bar_on_a_terminal(submit, state_dir):
    """wait and submit --wait on an array draw a bar on a terminal, then clear it."""
    array = submit("--array", "1-4", "--max-parallel", "2", "--", "sh", "-c",
                   'sleep 0.5; [ "$TASK_ID" != 4 ]')
    code, out, tty = on_a_terminal([*CLI, "wait", array])
    assert code == 1 and out == ""
    drawn = [part for part in tty.split("\r") if part.strip()]
    assert drawn, repr(tty)
    assert all(re.fullmatch(r"\[[#.]+\] \d/4 ended: \d done, \d failed(; .*)?", part.rstrip())
               for part in drawn), drawn
    assert any("running" in part for part in drawn), drawn
    assert re.search(r"\r +\r$", tty), repr(tty[-40:])  # cleared at the end
    assert "\x1b" not in tty

    code, out, tty = on_a_terminal([*CLI, "submit", "--wait", "--array", "1-3",
                                    "--max-parallel", "1", "--", "sleep", "0.3"])
    assert code == 0 and re.fullmatch(r"\d+\n", out)
    assert "/3 ended" in tty and re.search(r"\r +\r$", tty), repr(tty)

    single = submit("--", "sleep", "0.3")  # a single job: nothing to count
    code, out, tty = on_a_terminal([*CLI, "wait", single])
    assert (code, out, tty) == (0, "", "")


# -- help ---------------------------------------------------------------------------------------

def test_every_command_has_summary_paragraph_and_example(run):
    """Each command's --help: a one-line summary, a paragraph, and an example."""
    for command in COMMANDS:
        result = run(command, "--help")
        assert result.returncode == 0, result.stderr
        body = result.stdout.split("\n\n")
        assert body[0].startswith(f"Usage: ostracker {command} ")
        assert body[1].strip() and body[2].strip(), f"{command}: no summary or paragraph"
        assert re.search(rf"Example:\n +ostracker {command}\b", result.stdout), command


def test_main_help_groups_the_commands_on_one_screen(run):
    """ostracker --help: the commands by section, every one listed, in 40 lines or fewer."""
    result = run("--help")
    sections = re.findall(r"^(\w[\w ]*):$", result.stdout, re.M)
    assert sections == ["Options", "Submit and watch", "Control", "Schedule", "Clean up",
                        "Monitor"]
    listed = re.findall(r"^  (\w+) +\S", result.stdout.split("Submit and watch:")[1], re.M)
    assert sorted(listed) == sorted(COMMANDS)
    assert len(result.stdout.splitlines()) <= 40
    assert "..." not in result.stdout.split("Submit and watch:")[1]  # no summary cut short
    bare = run()  # no command: the same help, on stderr, as a usage error
    assert (bare.returncode, bare.stdout, bare.stderr) == (2, "", result.stdout)


def test_the_cli_imports_nothing_for_completion_or_progress():
    """Start-up stays light: completion and output helpers load only when used."""
    result = subprocess.run([sys.executable, "-c", "import sys, ostracker.cli; "
                             "print(' '.join(sorted(sys.modules)))"],
                            capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    for module in ("ostracker.completion", "click.shell_completion", "ostracker.output",
                   "ostracker.local", "ostracker.slurm", "tabulate", "psutil", "platformdirs"):
        assert module not in loaded, module


def test_the_local_backend_never_loads_the_slurm_modules(state_dir, submit):
    """A local status, info or wait loads neither the Slurm modules nor subprocess."""
    job_id = submit("--wait", "--", "true")
    script = ("import sys\nfrom ostracker.cli import cli\n"
              f"for args in (['status'], ['info', '{job_id}'], ['wait', '{job_id}']):\n"
              "    try:\n        cli.main(args, standalone_mode=False)\n"
              "    except SystemExit:\n        pass\n"
              "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "OSTRACKER_BACKEND": "local"}, timeout=60)
    loaded = set(result.stderr.split())
    assert "ostracker.local.tracker" in loaded  # the commands did run
    for module in ("ostracker.slurm", "ostracker.slurm.tracker", "subprocess"):
        assert module not in loaded, module
