#!/usr/bin/env python3
"""Write man/ostracker.1 from the Click app.

    python scripts/gen_man.py          # write it
    python scripts/gen_man.py --check  # exit 1 if the committed page is stale

The COMMANDS section is the Click app itself: every command in the order of
``ostracker --help``, its usage line, its help text (paragraphs, and the
``\\b`` example blocks kept as they are) and every option with its help.  The
FILES section is the layout in ``ostracker/core/records.py``'s docstring.  The rest
(DESCRIPTION, ENVIRONMENT, EXIT STATUS, EXAMPLES, SEE ALSO) is written below,
from the README.  tests/test_shell.py checks that the committed page
is what this script writes and that groff renders it without a warning.

Plain man(7) macros only (TH SH SS PP TP RS RE nf fi B I BR), so that any
man reader shows it; no dependency beyond Click.
"""

from __future__ import annotations

import inspect
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "man", "ostracker.1")


def escape(text: str) -> str:
    """Text safe inside a roff line: backslashes and hyphens escaped."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def line(text: str) -> str:
    """An input line of text: escaped, and never taken for a request."""
    text = escape(text)
    return "\\&" + text if text.startswith((".", "'")) else text


def paragraphs(help_text: str) -> list[tuple[bool, list[str]]]:
    """Click help text as (verbatim, lines) blocks: a ``\\b`` block keeps its lines."""
    blocks = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(help_text)):
        lines = block.split("\n")
        if lines[0].strip() == "\b":
            blocks.append((True, lines[1:]))
        else:
            blocks.append((False, [" ".join(part.strip() for part in lines)]))
    return blocks


def help_blocks(help_text: str) -> list[str]:
    """Roff for the help text after its first line (which the command's summary is)."""
    out = []
    for verbatim, lines in paragraphs(help_text)[1:]:
        if not verbatim:
            out += [".PP", *map(line, lines)]
            continue
        # "Example:" and the indented lines after it, kept line for line
        text = inspect.cleandoc("\n".join(lines)).split("\n")
        head = [] if text[0].startswith(" ") else [text.pop(0)]
        out += [".PP", *map(line, head), ".RS", ".nf",
                *(line(item.strip()) for item in text), ".fi", ".RE"]
    return out


def option_term(names: str) -> str:
    """``-n, --name TEXT`` as roff: the names bold, the value's metavar italic."""
    parts = []
    for item in names.split(", "):
        name, _, metavar = item.partition(" ")
        parts.append(f"\\fB{escape(name)}\\fR" + (f" \\fI{escape(metavar)}\\fR" if metavar else ""))
    return ", ".join(parts)


def usage_line(words: list[str]) -> str:
    """A usage line: literal words bold, placeholders (upper case) italic, brackets plain."""
    def style(word: str) -> str:
        match = re.fullmatch(r"(\[?)([^\[\].]+)(\]?)((?:\.\.\.)?)(\]?)", word)
        if not match:
            return escape(word)
        open_, core, close, dots, close2 = match.groups()
        font = "I" if core.isupper() or core == "OPTIONS" else "B"
        return f"{open_}\\f{font}{escape(core)}\\fR{close}{dots}{close2}"
    return " ".join(style(word) for word in words)


def option_items(command, ctx, skip_help=True) -> list[str]:
    """A tagged paragraph per option (arguments are in the usage line)."""
    import click

    out = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or \
                skip_help and set(param.opts) == set(ctx.help_option_names):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, text = record
        out += [".TP", option_term(names), line(" ".join(text.split()))]
    return out


def commands_section(cli, root) -> list[str]:
    import click

    out = [".SH COMMANDS", "Every command takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR.  "
           "By what they are for:"]
    sections = cli.sections(root)
    for title, commands in sections:
        out += [".TP", f"\\fI{escape(title)}\\fR",
                ", ".join(f"\\fB{escape(name)}\\fR" for name, _ in commands)]
    for title, commands in sections:
        for name, command in commands:
            ctx = click.Context(command, info_name=name, parent=root)
            words = ["ostracker", name, *command.collect_usage_pieces(ctx)]
            out += [f'.SS "{escape(name)}"', usage_line(words), ".PP",
                    line(paragraphs(command.help)[0][1][0])]
            out += help_blocks(command.help)
            options = option_items(command, ctx)
            if options:
                out += [".PP", "Options:", ".RS", *options, ".RE"]
    return out


def state_dir_layout() -> list[str]:
    """The layout block of ostracker/core/records.py's docstring, line for line."""
    from ostracker.core import records

    doc = inspect.getdoc(records)
    block = doc.split("::\n", 1)[1]
    lines = []
    for text in block.split("\n")[1:]:
        if text and not text.startswith(" "):
            break
        lines.append(text[4:])
    while lines and not lines[-1]:
        lines.pop()
    return [".RS", ".nf", *map(line, lines), ".fi", ".RE"]


DESCRIPTION = """\
.SH DESCRIPTION
.B ostracker
runs ordinary OS processes as \\fIjobs\\fR and keeps track of them, the way a
batch system (Slurm, Grid Engine) tracks jobs on a cluster, but on one machine
and with no daemon to set up.  It is the DRMAA2 \\fIJobTracker\\fR for OS
processes, with a command line for shells, scripts and cron.
.PP
Each submission gets a small detached \\fIreaper\\fR process (in its own
session, so neither closing the terminal nor the end of a cron run touches
it) that starts the job, waits for it, and writes down what happened in the
job DB, a directory of JSON files (see \\fBFILES\\fR).  Any number of
\\fBostracker\\fR processes may use one DB at once.
.PP
A single job's ID is a positive integer: 1, 2, ...  A job array has an ID
\\fIN\\fR of the same series and its tasks are \\fIN\\fB.\\fII\\fR, where
\\fII\\fR is the task index (7.1, 7.3, ...).  IDs are never reused.  Every
command that names jobs takes one or more IDs; an array ID stands for all of
its tasks.
.PP
States are DRMAA2's: \\fBQueued\\fR (an array task waiting for a free slot),
\\fBRunning\\fR, \\fBSuspended\\fR, \\fBDone\\fR (exited with status 0),
\\fBFailed\\fR (non\\-zero exit, killed by a signal, terminated, or could not
be started) and \\fBUndetermined\\fR (the tracker lost sight of the process;
the sub_state says why).  The state follows the process, whoever signals it.
.PP
In the paths of \\fB\\-o\\fR, \\fB\\-\\-stderr\\fR and \\fB\\-\\-stdin\\fR,
\\fB%j\\fR stands for the job ID, \\fB%a\\fR for the task index and \\fB%%\\fR
for \\fB%\\fR; relative paths are relative to the job's working directory.
.PP
Output for people is a table with human durations (1h02m) and sizes
(12.3 MiB); \\fB\\-\\-json\\fR gives the exact numbers, and
\\fBstatus \\-q\\fR the IDs alone.  Nothing but plain text is written when
the output is not a terminal; on a terminal, \\fBwait\\fR on an array shows
its progress on stderr.  Errors are one line on stderr."""

GLOBAL_OPTIONS_INTRO = """\
.SH OPTIONS
Before the command:"""

ENVIRONMENT = """\
.SH ENVIRONMENT
.TP
.B OSTRACKER_STATE_DIR
The job DB directory, unless \\fB\\-\\-state\\-dir\\fR is given.  Default: the
per\\-user state directory (see \\fBFILES\\fR).
.TP
.B JOB_ID
Set in the environment of every job: its own ID, e.g. 7 or 7.3.
.TP
.B TASK_ID
Set in the environment of every array task: its index, e.g. 3 (also when the
index is 0).  Not set for a single job.
.TP
.B XDG_STATE_HOME
Where the per\\-user state directory lies (default \\fI~/.local/state\\fR).
.TP
.B _OSTRACKER_COMPLETE
Set by the shell completion scripts when they call \\fBostracker\\fR back for
candidates; \\fB_OSTRACKER_COMPLETE=bash_source ostracker\\fR (zsh_source,
fish_source) prints the script for a shell."""

FILES_INTRO = """\
.SH FILES
.TP
.I $XDG_STATE_HOME/ostracker
The job DB, by default (\\fI~/.local/state/ostracker\\fR), mode 0700; every
file in it is 0600, since job records hold environments that may carry
secrets.  Its layout:
.PP"""

EXIT_STATUS = """\
.SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
The operation failed: unknown job, a job in a state that does not allow the
operation, a job that could not start, an unsupported operation
(\\fBhold\\fR, \\fBrelease\\fR).
.TP
.B 2
Usage error: a bad option, array spec, \\fIKEY\\fB=\\fIVALUE\\fR, job ID,
state name, or a negative or non\\-numeric \\fB\\-\\-timeout\\fR.
.TP
.B 124
\\fBwait \\-\\-timeout\\fR ran out.
.PP
\\fBwait\\fR and \\fBsubmit \\-\\-wait\\fR otherwise pass the job's own status
through: for one single job (or task), its exit status, or 128+\\fIN\\fR if
signal \\fIN\\fR ended it; for an array or several IDs, 0 if all ended
\\fBDone\\fR, else 1."""

EXAMPLES = r"""
.SH EXAMPLES
In a shell:
.PP
.RS
.nf
$ ostracker submit \-\- ./long\-task.sh \-\-input data.csv
1
$ ostracker status
$ ostracker output \-f 1
$ ostracker submit \-\-array 1\-10:2 \-\-max\-parallel 3 \-\- ./run.sh
2
$ ostracker wait 2 && echo all tasks succeeded
$ ostracker status 2 \-\-json | jq \-r \(aq.[] | "\e(.id) \e(.state)"\(aq
$ ostracker suspend 1; ostracker resume 1; ostracker terminate 1
$ ostracker delete \-\-finished
.fi
.RE
.PP
In a script: \fBsubmit\fR prints the ID alone and returns once the job runs
(or fails, exit 1, saying why it could not start):
.PP
.RS
.nf
id=$(ostracker submit \-n nightly \-o "$HOME/logs/%j.log" \-\- ./backup.sh) || exit 1
ostracker wait \-\-timeout 3600 "$id"
echo "backup ended with $?"
for job in $(ostracker status \-q \-\-state Failed); do
    ostracker info "$job"
done
.fi
.RE
.PP
In a crontab: the reaper detaches, so the end of the cron run does not
touch the job.  Cron mails what a command prints; here that is nothing,
unless the job could not start (one line on stderr saying why).  In a
crontab, a \fB%\fR must be written \fB\e%\fR.
.PP
.RS
.nf
0 2 * * *  ostracker submit \-n nightly \-\- /usr/local/bin/backup.sh >/dev/null
.fi
.RE
""".strip("\n")

SEE_ALSO = """\
.SH SEE ALSO
.BR nq (1),
.BR tsp (1),
.BR pueue (1),
.BR sbatch (1),
.BR squeue (1),
.BR crontab (5),
.BR kill (1)
.PP
The DRMAA2 specification (Open Grid Forum, GFD.231)."""


def render() -> str:
    """The whole page, as roff text."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import click

    from ostracker import __version__
    from ostracker.cli import cli

    root = click.Context(cli, info_name="ostracker", **cli.context_settings)
    synopsis = [".SH SYNOPSIS",
                usage_line(["ostracker", "[--state-dir", "DIR]", "COMMAND", "[OPTIONS]",
                            "[ARGS]..."])]
    for _, commands in cli.sections(root):
        for name, command in commands:
            ctx = click.Context(command, info_name=name, parent=root)
            synopsis += [".br", usage_line(["ostracker", name,
                                            *command.collect_usage_pieces(ctx)])]
    page = [
        '.\\" Generated by scripts/gen_man.py from the Click app: do not edit, run it again.',
        f'.TH OSTRACKER 1 "" "ostracker {__version__}" "User Commands"',
        ".SH NAME",
        "ostracker \\- run OS processes as jobs and keep track of them",
        *synopsis,
        DESCRIPTION,
        GLOBAL_OPTIONS_INTRO,
        *option_items(cli, root, skip_help=False),
        *commands_section(cli, root),
        ENVIRONMENT,
        FILES_INTRO,
        *state_dir_layout(),
        EXIT_STATUS,
        EXAMPLES,
        SEE_ALSO,
    ]
    return "\n".join(page) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    try:
        with open(PAGE) as handle:
            current = handle.read()
    except FileNotFoundError:
        current = None
    if current == text:
        return 0
    if "--check" in argv:
        print(f"out of date: {os.path.relpath(PAGE)} (run scripts/gen_man.py)", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(PAGE), exist_ok=True)
    with open(PAGE, "w") as handle:
        handle.write(text)
    print(f"wrote {os.path.relpath(PAGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
