"""The ``ostracker`` command line: parse, call the JobTracker, render, map errors to exits.

Nothing here knows how jobs are run or stored, nor which backends exist: it
opens trackers and monitoring sessions through the registry.  Errors leave as
one line on stderr: usage errors with exit status 2, failed operations with 1,
a ``wait`` that timed out with 124 (README, "Exit statuses").
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from . import __version__
from .core import registry
from .core.errors import InvalidArgument, JobNotFound, TrackerError
from .core.models import JobState, brief

STATE_NAMES = [state.value for state in JobState]

MAX_SECONDS = 1_000_000_000  # about 31 years: more is a mistake (and overflows time.sleep)


class Seconds(click.ParamType):
    """A duration in seconds: a decimal number from 0 to MAX_SECONDS (``1.5``, ``2e3``).

    No sign, ``inf``, ``nan``, hex or ``_``: what float() takes beyond plain
    decimals is a mistake here.  1e309 is refused as too long, not taken as inf.
    """

    name = "SEC"

    def convert(self, value, param, ctx):
        import re

        text = str(value)
        if not re.fullmatch(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text):
            self.fail(f"{brief(text)!r} is not a number of seconds, 0 or more", param, ctx)
        seconds = float(text)
        if not seconds <= MAX_SECONDS:
            self.fail(f"{brief(text)!r} seconds is too long (at most {MAX_SECONDS:,})",
                      param, ctx)
        return seconds


class Count(click.ParamType):
    """A whole number of 1 or more, in decimal digits (``--max-parallel``)."""

    name = "N"

    def convert(self, value, param, ctx):
        from .core.models import parse_count

        if isinstance(value, int):
            return value
        try:
            return parse_count(str(value))
        except InvalidArgument as error:
            self.fail(str(error), param, ctx)


class Slots(click.ParamType):
    """A queue's size: a whole number of 0 or more (0 pauses the queue)."""

    name = "N"

    def convert(self, value, param, ctx):
        from .core.models import parse_count

        text = str(value)
        if text.isascii() and text.isdigit() and not text.strip("0"):
            return 0
        try:
            return parse_count(text)
        except InvalidArgument as error:
            self.fail(str(error).replace("1 or more", "0 or more"), param, ctx)


def not_empty(ctx, param, value):
    """A path option given as ``''``: a usage error, not the current directory or a default."""
    if value == "":
        raise click.BadParameter("cannot be empty", ctx, param)
    return value


def open_tracker():
    """The JobTracker of the backend and state directory chosen on the command line."""
    params = click.get_current_context().find_root().params
    return registry.open_tracker(params.get("backend"), params.get("state_dir"))


# -- writing: stdout may be full, closed or gone; what a command did stands --------------

class OutputError(click.ClickException):
    """stdout cannot be written (a full disk, a closed descriptor): one line, exit 1."""


class Interrupted(click.ClickException):
    """Ctrl-C while waiting: what goes on, said in one line; exit 130, as a shell would."""

    exit_code = 130


class BrokenOutput(Exception):
    """The reader of stdout went away (EPIPE): exit 141, as if killed by SIGPIPE, silently."""


@contextmanager
def writing():
    """Around a write to stdout: its failure as OutputError or BrokenOutput.

    Not OSError: click would turn an EPIPE inside a command into its own exit 1,
    and anything else into a traceback.
    """
    try:
        yield
    except BrokenPipeError:
        raise BrokenOutput() from None
    except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
        raise OutputError(f"cannot write output: {getattr(exc, 'strerror', None) or exc}") \
            from None


def write_out(data: bytes | list[bytes]) -> None:
    """``data`` (bytes, or pieces of it to be written one after the other) on stdout, all
    of it, now; OutputError or BrokenOutput if it cannot be.

    Straight to the descriptor, in a loop: Python's buffered stdout takes a
    write that the pipe's reader cut short (65,536 bytes of 200,000 written,
    then the reader left) as done, drops the rest and reports no error, so a
    broken pipe went unnoticed and the command exited 0.  Pieces go out by
    ``writev``, up to ``IOV_MAX`` a call, never joined into one copy.
    """
    import os

    pieces = [data] if isinstance(data, bytes) else list(data)
    with writing():
        stream = sys.stdout
        try:
            fd = stream.fileno()
        except (AttributeError, ValueError, OSError):  # not a file (a test's stand-in)
            stream.buffer.write(b"".join(pieces))
            stream.flush()
            return
        stream.flush()  # whatever was written before, first
        first, most = 0, os.sysconf("SC_IOV_MAX")
        while first < len(pieces):
            written = os.writev(fd, pieces[first:first + most])
            while first < len(pieces) and written >= len(pieces[first]):
                written -= len(pieces[first])
                first += 1
            if written:  # cut short inside a piece: the rest of it goes next
                pieces[first] = memoryview(pieces[first])[written:]


def echo(text: str) -> None:
    """``text`` and a newline on stdout (see ``write_out``), in stdout's encoding."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    write_out(f"{text}\n".encode(encoding, "backslashreplace"))


def warn(message: str) -> None:
    """``ostracker: message`` on stderr as one line, whatever the message holds."""
    from .output import one_line

    try:
        click.echo(f"ostracker: {one_line(message)}", err=True)
    except (OSError, ValueError):
        pass  # nowhere left to say it: the exit status tells


class SectionedGroup(click.Group):
    """A group whose ``--help`` lists its commands by what they are for."""

    SECTIONS = [
        ("Submit and watch", ["submit", "resubmit", "status", "info", "output", "wait"]),
        ("Control", ["suspend", "resume", "terminate", "signal", "hold", "release"]),
        ("Schedule", ["queue"]),
        ("Clean up", ["delete"]),
        ("Monitor", ["monitor"]),
    ]

    def list_commands(self, ctx):
        """In the order of the sections (which completion offers too), then any others."""
        ordered = [name for _, names in self.SECTIONS for name in names if name in self.commands]
        return ordered + sorted(set(self.commands) - set(ordered))

    def sections(self, ctx):
        """(title, [(name, command)]) for each section, as --help and the man page show them."""
        listed = self.list_commands(ctx)
        placed = {name for _, names in self.SECTIONS for name in names}
        sections = [(title, [name for name in names if name in listed])
                    for title, names in self.SECTIONS]
        sections.append(("Other commands", [name for name in listed if name not in placed]))
        return [(title, [(name, self.commands[name]) for name in names
                         if not self.commands[name].hidden])
                for title, names in sections if names]

    def format_commands(self, ctx, formatter):
        sections = self.sections(ctx)
        # every section's names padded alike, so that all summaries start in one column
        width = max(len(name) for _, commands in sections for name, _ in commands)
        limit = formatter.width - 6 - width
        for title, commands in sections:
            with formatter.section(title):
                formatter.write_dl([(name.ljust(width), command.get_short_help_str(limit))
                                    for name, command in commands])


def complete_path(kind: str):
    """Completion of a file (``kind`` "file") or directory ("dir") name, by the shell itself."""
    def complete(ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type=kind)]
    return complete


def complete_command(ctx, param, incomplete):
    """The command word of ``submit -- COMMAND``: the names of the programs on $PATH (as a
    shell completes a command), a path once it has a slash; then the shell's file names
    for its arguments."""
    from click.shell_completion import CompletionItem

    if ctx.params.get(param.name) or "/" in incomplete:
        return [CompletionItem(incomplete, type="file")]
    from .completion import command_names

    return [CompletionItem(name) for name in command_names(incomplete)]


def complete_jobs(kind: str):
    """Completion of the job IDs that a command takes (see ostracker.completion); not those
    already on the line (``resume 2 <TAB>`` does not offer 2 again)."""
    def complete(ctx, param, incomplete):
        from .completion import job_ids

        params = ctx.find_root().params
        given = ctx.params.get(param.name) or ()
        given = {given} if isinstance(given, str) else set(given)
        return [item for item in job_ids(params.get("state_dir"), kind, incomplete,
                                         params.get("backend"))
                if item.value not in given]
    return complete


def complete_queues(ctx, param, incomplete):
    from .completion import queue_names

    params = ctx.find_root().params
    return queue_names(params.get("state_dir"), incomplete, params.get("backend"))


def complete_pids(ctx, param, incomplete):
    from .completion import process_ids

    return process_ids(incomplete)


def complete_states(ctx, param, incomplete):
    """--state takes every DRMAA2 name; TAB offers those that the chosen backend produces."""
    produced = registry.tracker_class(ctx.find_root().params.get("backend")).STATES
    return [state.value for state in produced
            if state.value.lower().startswith(incomplete.lower())]


@click.group(cls=SectionedGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="'ostracker COMMAND --help' tells more; so does 'man ostracker'.")
@click.version_option(__version__, prog_name="ostracker")
@click.option("--state-dir", metavar="DIR", shell_complete=complete_path("dir"),
              callback=not_empty, help="Job DB directory [default: $OSTRACKER_STATE_DIR, "
              "else the per-user state dir].")
@click.option("--backend", type=click.Choice(registry.names()), envvar="OSTRACKER_BACKEND",
              help="Who runs the jobs: this machine (local), or a Slurm cluster "
              "[default: $OSTRACKER_BACKEND, else local].")
def cli(state_dir, backend):
    """Run OS processes as jobs and keep track of them (DRMAA2 OS process JobTracker)."""


def parse_environment(ctx, param, values):
    """``KEY=VALUE``; ``KEY`` alone takes its value from this environment (as Slurm's
    ``--export=KEY`` and docker's ``-e KEY``), so that a secret need not stand on a
    command line, where ps shows it.  A KEY that is not set there is a usage error."""
    import os

    environment = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key:
            raise click.BadParameter(f"{brief(item)!r} is not KEY=VALUE or KEY", ctx, param)
        if not sep:
            value = os.environ.get(key)
            if value is None:
                raise click.BadParameter(f"{brief(key)!r} is not set in this environment "
                                         "(give KEY=VALUE, or export KEY)", ctx, param)
        environment[key] = value
    return environment


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-n", "--name", help="Job name [default: the command's base name].")
@click.option("-C", "--cwd", metavar="DIR", shell_complete=complete_path("dir"),
              callback=not_empty, help="Working directory [default: here].")
@click.option("-e", "--env", "environment", multiple=True, metavar="KEY[=VALUE]",
              callback=parse_environment, help="Add KEY=VALUE to the job's environment; "
              "KEY alone takes the value KEY has here, so that it need not stand on the "
              "command line (repeatable).")
@click.option("--stdin", metavar="PATH", shell_complete=complete_path("file"),
              callback=not_empty, help="Read stdin from PATH [default: /dev/null].")
@click.option("-o", "--stdout", metavar="PATH", shell_complete=complete_path("file"),
              callback=not_empty, help="Write stdout to PATH (%j job ID, %a task index) "
              "[default: captured, see 'output'].")
@click.option("--stderr", metavar="PATH", shell_complete=complete_path("file"),
              callback=not_empty, help="Write stderr to PATH [default: captured].")
@click.option("--array", "array_spec", metavar="RANGES",
              help="Job array: BEGIN-END[:STEP] ranges and INDEXes joined by commas, then "
              "optionally %MAX (1-10:2, 0,4,8-10%2).")
@click.option("--max-parallel", type=Count(), metavar="N",
              help="Run at most N array tasks at once.")
@click.option("-q", "--queue", metavar="NAME", envvar="OSTRACKER_QUEUE",
              shell_complete=complete_queues, help="Wait for slots of queue NAME (see "
              "'queue') [default: $OSTRACKER_QUEUE].")
@click.option("--slots", type=Count(), metavar="K",
              help="Slots of the queue the job needs [default: 1].")
@click.option("--priority", metavar="P", help="Higher starts first in its queue "
              "[default: 0].")
@click.option("-d", "--dependency", metavar="LIST", help="Start after other jobs: "
              "TYPE:ID[:ID...] joined by , (all) or ? (any); TYPE after, afterany, afterok "
              "or afternotok.")
@click.option("--begin", metavar="TIME", help="Start no sooner than TIME: now+N[s|m|h|d], "
              "HH:MM[:SS], YYYY-MM-DD[THH:MM[:SS]].")
@click.option("--hold", is_flag=True, help="Hold the job: it starts once released.")
@click.option("--session", metavar="NAME", envvar="OSTRACKER_SESSION",
              help="The DRMAA2 job session it belongs to [default: $OSTRACKER_SESSION].")
@click.option("-t", "--time", "time_limit", metavar="DURATION", help="Time limit: SIGTERM "
              "then, --kill-after later, SIGKILL (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]], "
              "90s, 15m, 2h, 1d).")
@click.option("--kill-after", type=Seconds(), help="Seconds from SIGTERM at a limit to "
              "SIGKILL [default: 30].")
@click.option("--deadline", metavar="TIME", help="End the job at TIME (as --begin), or "
              "never start it after.")
@click.option("--signal", "warning", metavar="SIG[@SEC]", help="Send SIG SEC seconds "
              "[default: 60] before the time limit or deadline.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE", help="A resource "
              "limit (repeatable): CPU_TIME, VIRTUAL_MEMORY, OPEN_FILES, FILE_SIZE, DATA_SIZE, "
              "STACK_SIZE, CORE_FILE_SIZE, WALLCLOCK_TIME.")
@click.option("--retries", metavar="N", help="Run a failed job again, up to N more times.")
@click.option("--retry-delay", type=Seconds(), help="Seconds between attempts [default: 0].")
@click.option("--on-end", metavar="CMD", help="Run CMD with /bin/sh once the job (an array: "
              "all of it) has ended.")
@click.option("--join", is_flag=True, help="Send stderr where stdout goes.")
@click.option("-w", "--wait", "wait_for_end", is_flag=True,
              help="Wait for the job to end and exit like 'wait'.")
@click.option("--json", "as_json", is_flag=True, help="Print the job record, not the ID.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- COMMAND [ARG]...", shell_complete=complete_command)
def submit(name, cwd, environment, stdin, stdout, stderr, array_spec, max_parallel, queue,
           slots, priority, dependency, begin, hold, session, time_limit, kill_after, deadline,
           warning, limits, retries, retry_delay, on_end, join, wait_for_end, as_json, command):
    """Start a job (or a job array) and print its ID.

    Returns once the job (an array's first task) has started; fails with the
    reason when it cannot start.  A job that must wait (a queue, a dependency,
    a begin time, a hold: README, "Scheduling") returns once it is recorded.
    With --backend slurm it returns once Slurm has accepted the job, which may
    then wait in its queue.  Put the command after `--` so that its own options
    are never taken for ostracker's.  With --wait on an array, a terminal shows
    the tasks' progress on stderr.

    \b
    Example:
      ostracker submit -n nightly -o /tmp/%j.log -- ./backup.sh --full
      ostracker submit --array 1-10:2 --max-parallel 3 -- ./run.sh
      ostracker submit -q gpu --slots 2 -d afterok:7 --begin 02:00 -- ./train.sh
    """
    from .core.models import JobTemplate, parse_array_spec

    if max_parallel is not None and array_spec is None:
        raise click.BadParameter("only an array (--array) can have --max-parallel",
                                 param_hint="--max-parallel")
    spec = parse_array_spec(array_spec, max_parallel) if array_spec is not None else None
    template = JobTemplate(remote_command=command[0], args=list(command[1:]), job_name=name,
                           working_directory=cwd, job_environment=environment,
                           input_path=stdin, output_path=stdout, error_path=stderr,
                           **scheduling(queue, slots, priority, dependency, begin, hold),
                           **session_of(session),
                           **lifetime(time_limit, kill_after, deadline, warning, limits,
                                      retries, retry_delay, on_end, join))
    tracker = open_tracker()
    if spec is None:
        job_id = tracker.add_job(template)
    else:
        job_id = tracker.add_array_job(template, spec.begin, spec.end, spec.step,
                                       spec.max_parallel, spec.listed)
    if not as_json:
        try:
            echo(job_id)
        except OutputError as error:  # the job stands: say which it is, where it can be seen
            error.message += f" (job {job_id} was submitted)"
            raise
    if wait_for_end:
        try:
            # Its reaper says how it ended: no record to read (but to print them, or to
            # draw an array's progress on a terminal).
            ended = None if as_json or (spec is not None and sys.stderr is not None and
                                        sys.stderr.isatty()) else tracker.ended_as(job_id)
            if ended is not None:
                click.get_current_context().exit(
                    exit_status_of(ended) if spec is None else
                    0 if ended.state is JobState.DONE else 1)
            wait_exit([job_id], None, False, tracker, as_json)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; job {job_id} goes on ('ostracker wait {job_id}' "
                              f"waits again, 'ostracker terminate {job_id}' ends it)") from None
    elif as_json:
        _print_infos(tracker, [job_id], single=spec is None)


def scheduling(queue, slots, priority, dependency, begin, hold) -> dict:
    """The JobTemplate's scheduling fields from submit's options; bad ones are usage errors."""
    from .core import schedule

    fields = {"submit_as_hold": hold}
    if queue == "" and click.get_current_context().get_parameter_source("queue").name != \
            "ENVIRONMENT":
        raise click.BadParameter("cannot be empty", param_hint="-q/--queue")
    if queue:  # an empty $OSTRACKER_QUEUE is no queue
        fields["queue_name"] = schedule.parse_name(queue)
    if slots is not None:
        if not queue:
            raise click.BadParameter("--slots takes a queue (-q/--queue or $OSTRACKER_QUEUE)",
                                     param_hint="--slots")
        fields["min_slots"] = slots
    if priority is not None:
        fields["priority"] = schedule.parse_priority(priority)
    if dependency is not None:
        fields["dependency"] = str(schedule.parse_dependency(dependency))
    if begin is not None:
        fields["start_time"] = schedule.time_text(schedule.parse_time_spec(begin))
    return fields


def session_of(session) -> dict:
    """The template's session field: an empty $OSTRACKER_SESSION is none, ``--session ''``
    a usage error."""
    from .core.schedule import parse_name

    if session == "" and click.get_current_context().get_parameter_source(
            "session").name != "ENVIRONMENT":
        raise click.BadParameter("cannot be empty", param_hint="--session")
    return {"session_name": parse_name(session, "session")} if session else {}


def lifetime(time_limit, kill_after, deadline, warning, limits, retries, retry_delay, on_end,
             join) -> dict:
    """The JobTemplate's limit and lifetime fields from submit's options (README, "Limits
    and retries"); bad ones are usage errors."""
    from .core import limits as parse

    fields = {"join_files": join}
    resource_limits = dict(parse.parse_limit(text) for text in limits)
    if time_limit is not None:
        if "WALLCLOCK_TIME" in resource_limits:
            raise click.UsageError("give the time limit once: -t/--time or --limit "
                                   "WALLCLOCK_TIME")
        resource_limits["WALLCLOCK_TIME"] = parse.parse_duration(time_limit)
    if resource_limits:
        fields["resource_limits"] = resource_limits
    if deadline is not None:
        from .core import schedule

        fields["deadline_time"] = schedule.time_text(schedule.parse_time_spec(deadline))
    if kill_after is not None:
        fields["kill_after"] = kill_after
    if warning is not None:
        if "WALLCLOCK_TIME" not in resource_limits and deadline is None:
            raise click.UsageError("--signal warns before a time limit or a deadline: give "
                                   "-t/--time or --deadline")
        fields["warning_signal"] = parse.parse_warning(warning)
    if retries is not None:
        fields["retries"] = parse.parse_retries(retries)
    if retry_delay is not None:
        fields["retry_delay"] = retry_delay
    if on_end is not None:
        try:
            fields["on_end"] = parse.check_on_end(on_end)
        except InvalidArgument as error:
            raise click.BadParameter(str(error), param_hint="--on-end") from None
    return fields


def status_filter(states, name_glob, queue, session, since, until, active):
    """The test a JobInfo must pass to be listed (README, "History"); None: every one."""
    if not states and not active and (name_glob, queue, session, since, until) == (None,) * 5:
        return None
    from fnmatch import fnmatchcase

    from .core.schedule import parse_time_spec

    wanted = {JobState.parse(state) for state in states}
    earliest = None if since is None else parse_time_spec(since, past=True)
    latest = None if until is None else parse_time_spec(until, past=True)

    def keep(info) -> bool:
        return (not wanted or info.state in wanted) and \
            (not active or not info.state.ended) and \
            (name_glob is None or fnmatchcase(info.job_name or "", name_glob)) and \
            (queue is None or info.queue_name == queue) and \
            (session is None or info.job_template.session_name == session) and \
            (earliest is None or info.submission_time >= earliest) and \
            (latest is None or info.submission_time <= latest)
    return keep


def _last(tracker, job_ids, count: int) -> list[str]:
    """The ``count`` most recent jobs (by ID) of those named, or of all."""
    from .core.models import parse_job_id

    if not job_ids:
        return tracker.list_jobs(last=count)
    numbers = sorted({parse_job_id(job_id)[0] for job_id in job_ids})[-count:]
    return [job_id for job_id in job_ids if parse_job_id(job_id)[0] in numbers]


def _print_infos(tracker, job_ids, single):
    from .output import to_json

    infos = tracker.job_infos(job_ids)
    echo(to_json(infos[0].to_dict() if single else [i.to_dict() for i in infos], pretty=True))


@cli.command(short_help="Show jobs: a table, JSON, or the IDs alone.")
@click.option("--state", "states", multiple=True, metavar="STATE",
              type=click.Choice(STATE_NAMES, case_sensitive=False),
              shell_complete=complete_states, help="Only jobs in STATE (repeatable).")
@click.option("--name", "name_glob", metavar="GLOB", help="Only jobs whose name matches GLOB.")
@click.option("--queue", metavar="NAME", shell_complete=complete_queues,
              help="Only jobs of queue NAME.")
@click.option("--session", metavar="NAME", help="Only jobs of the job session NAME.")
@click.option("--since", metavar="TIME", help="Only jobs submitted at TIME or later "
              "(as --begin, or -N[s|m|h|d]: that long ago).")
@click.option("--until", metavar="TIME", help="Only jobs submitted at TIME or earlier.")
@click.option("--active", is_flag=True, help="Only jobs that have not ended.")
@click.option("--last", type=Count(), metavar="N", help="Only the N most recent jobs.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of job records.")
@click.option("-q", "--quiet", is_flag=True, help="Only the IDs, one per line.")
@click.argument("job_ids", nargs=-1, metavar="[ID]...", shell_complete=complete_jobs("any"))
@click.pass_context
def status(ctx, states, name_glob, queue, session, since, until, active, last, as_json, quiet,
           job_ids):
    """Show jobs: all of them, or those named (an array ID shows its tasks).

    One row per single job and per array task: ID, name, state, exit status
    (or the signal that ended it), PID, start time, wall clock, command.
    --quiet prints the IDs alone, for scripts (as squeue -h -o %i does).

    \b
    Example:
      ostracker status --state Running
      ostracker status 7 --json | jq '.[].exit_status'
      ostracker status -q --state Failed | xargs -n1 ostracker info
      ostracker status --state Failed --since -1d --name 'nightly*'
    """
    if quiet and as_json:
        raise click.UsageError("--quiet and --json exclude each other")
    keep = status_filter(states, name_glob, queue, session, since, until, active)
    # Only jobs that have not ended are asked for: the history of ended ones is not read.
    live = active or bool(states) and not any(JobState.parse(s).ended for s in states)
    tracker = open_tracker()
    errors = []
    if last is not None:
        job_ids = _last(tracker, job_ids, last)
    if as_json and keep is None:
        write_out(tracker.job_infos_json(job_ids or None, errors=errors))
        infos = []
    else:
        infos = tracker.job_infos(job_ids or None, errors=errors, active=live)
    for error in errors:
        warn(str(error))
    if keep is not None:
        infos = [info for info in infos if keep(info)]
    if as_json and keep is not None:
        from .output import jobs_json

        echo(jobs_json(infos))
    elif quiet:
        if infos:
            echo("\n".join(info.id for info in infos))
    elif infos:
        from .output import job_table

        echo(job_table(infos))
    elif sys.stdout.isatty():  # a person, who would otherwise see nothing at all
        click.echo("no jobs" if keep is None and not job_ids else "no job matches", err=True)
    if errors and job_ids:
        ctx.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON object (a list for an array).")
@click.argument("job_id", metavar="ID", shell_complete=complete_jobs("any"))
def info(as_json, job_id):
    """Show every JobInfo field of a job, or of each task of an array.

    One `key: value` line per field, nested fields joined with dots
    (job_template.args, extension_list.ru_maxrss); the exact values, as JSON
    has them.  An array prints a block per task, separated by blank lines.

    \b
    Example:
      ostracker info 7.3
      ostracker info 7 --json
    """
    from .core.models import parse_job_id
    from .output import key_values, to_json

    tracker = open_tracker()
    infos = tracker.job_infos([job_id])
    single = parse_job_id(job_id)[1] is not None or infos[0].array_id is None
    if as_json:
        echo(to_json(infos[0].to_dict() if single else [i.to_dict() for i in infos],
                     pretty=True))
    else:
        echo("\n\n".join(key_values(i) for i in infos))


def wait_exit(job_ids, timeout, any_job, tracker, as_json=False):
    """Wait, then exit as README, "Commands and exit statuses" says ``wait`` does.

    With --json, the records of the jobs that ended: an object for one single
    job or task, else a list (as ``info`` prints them).
    """
    from .core.models import parse_job_id

    if sys.stderr is not None and sys.stderr.isatty():
        timeout = show_progress(tracker, job_ids, timeout, any_job)
    infos = tracker.wait_jobs(job_ids, timeout=timeout, any_job=any_job)
    single = len(job_ids) == 1 and (parse_job_id(job_ids[0])[1] is not None
                                    or infos[0].array_id is None)
    if as_json:
        from .output import jobs_json, to_json

        echo(to_json(infos[0].to_dict(), pretty=True) if single else jobs_json(infos))
    ctx = click.get_current_context()
    if single:
        ctx.exit(exit_status_of(infos[0]))
    ctx.exit(0 if all(i.state is JobState.DONE for i in infos) else 1)


PROGRESS_INTERVAL = 0.2  # seconds between two redraws of the progress line


def show_progress(tracker, job_ids, timeout, any_job):
    """Draw the tasks' progress on stderr (a terminal) until the wait would end.

    Only for more than one task (an array, several IDs): a single job shows
    nothing.  Polls ``job_infos``, for at most a third of the time (a large
    running array costs a read per task), and clears its line before
    returning, also when interrupted.  Returns what is left of ``timeout``,
    for ``wait_jobs``, which then decides (at once) as it would have without.
    """
    import os
    import shutil
    import time

    from .output import progress_line

    deadline = None if timeout is None else time.monotonic() + timeout
    drawn, shown = 0, None
    try:
        while True:
            started = time.monotonic()
            groups = [tracker.job_infos([job_id]) for job_id in job_ids]
            infos = [info for group in groups for info in group]
            ended = [all(info.state.ended for info in group) for group in groups]
            if len(infos) < 2 or (any(ended) if any_job else all(ended)):
                break
            try:  # the width of stderr's terminal, which stdout (piped, say) need not be
                width = os.get_terminal_size(sys.stderr.fileno()).columns
            except OSError:
                width = 0
            line = progress_line([info.state.value for info in infos],
                                 (width or shutil.get_terminal_size().columns) - 1)
            if line != shown:
                sys.stderr.write("\r" + line.ljust(drawn))
                sys.stderr.flush()
                drawn, shown = max(drawn, len(line)), line
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            pause = max(PROGRESS_INTERVAL, 2 * (now - started))
            time.sleep(pause if deadline is None else min(pause, deadline - now))
    finally:
        if drawn:
            sys.stderr.write("\r" + " " * drawn + "\r")
            sys.stderr.flush()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def exit_status_of(info) -> int:
    """A single job's exit status as a shell sees it: the code, or 128 + signal number
    (``info``: its JobInfo, or what ``ended_as`` said).

    A job that ended Failed never gives 0: one that exited 0 after a time
    limit's SIGTERM, or after ``terminate --grace``, gives 1.
    """
    import signal

    if info.exit_status is not None:
        return 1 if info.exit_status == 0 and info.state is JobState.FAILED else info.exit_status
    if info.terminating_signal is not None:
        name = info.terminating_signal
        if name in signal.Signals.__members__:
            return 128 + signal.Signals[name].value
        if name[3:].isdigit():  # a number Python has no name for, as SIG40
            return 128 + int(name[3:])
    return 1


@cli.command()
@click.option("--timeout", type=Seconds(), help="Give up after SEC seconds (exit 124).")
@click.option("--any", "any_job", is_flag=True, help="Return when any one job has ended.")
@click.option("--json", "as_json", is_flag=True, help="Then print the ended jobs' records "
              "(an object for one single job, else a list).")
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...",
                shell_complete=complete_jobs("any"))
def wait(timeout, any_job, as_json, job_ids):
    """Wait until the jobs have ended, and exit with their status.

    One single job: its exit status, or 128+N if signal N ended it.  An array or
    several IDs: 0 if all ended Done, else 1.  124 when --timeout runs out.
    On a terminal, an array's progress (done, failed, running and queued
    tasks) is shown on stderr; piped or from cron, nothing is.

    \b
    Example:
      ostracker wait 7 --timeout 600 && echo "job 7 succeeded"
      ostracker wait 8 --json | jq -r '.[] | select(.state != "Done") | .id'
    """
    wait_exit(list(job_ids), timeout, any_job, open_tracker(), as_json)


def _control(action: str):
    @click.argument("job_ids", nargs=-1, required=True, metavar="ID...",
                    shell_complete=complete_jobs(action))
    @click.pass_context
    def command(ctx, job_ids, grace=None):
        tracker = open_tracker()
        for_each_job(ctx, job_ids, lambda job_id: tracker.job_control(job_id, action,
                                                                      grace=grace))
    command.__name__ = action
    if action == "terminate":
        command = click.option("--grace", type=Seconds(), help="SIGTERM first, and SIGKILL "
                               "SEC seconds later to what is left.")(command)
    return command


def check_ids(job_ids) -> None:
    """InvalidArgument (exit 2) for the first malformed ID, before anything is done."""
    from .core.models import parse_job_id

    for job_id in job_ids:
        try:
            parse_job_id(job_id)
        except JobNotFound:
            pass  # well-formed, too long to name a job: reported in its turn


def for_each_job(ctx, job_ids, act) -> None:
    """``act`` on every ID that allows it; report each one that does not; exit 1 if any.

    A malformed ID is a usage error and stops everything (exit 2): all are
    checked before any is acted on.
    """
    check_ids(job_ids)
    failed = False
    for job_id in job_ids:
        try:
            act(job_id)
        except InvalidArgument:
            raise
        except TrackerError as error:
            warn(str(error))
            failed = True
    if failed:
        ctx.exit(1)


_CONTROL_HELP = {
    "suspend": ("Suspend running jobs: SIGTSTP to each job's process group.",
                "Returns once the job has stopped; fails if it does not stop in time.  "
                "An array ID suspends every task of the array that runs.  With "
                "--backend slurm: scontrol suspend, or, for users Slurm does not allow "
                "that, SIGTSTP through scancel."),
    "resume": ("Resume suspended jobs: SIGCONT to each job's process group.",
               "Returns once the job runs again.  An array ID resumes every suspended "
               "task of the array.  With --backend slurm: scontrol resume, or SIGCONT "
               "through scancel."),
    "terminate": ("Terminate jobs: SIGKILL to every process of each job.",
                  "Returns once every process of the job is gone.  With --grace SEC: "
                  "SIGTERM first, so that a job can clean up, and SIGKILL SEC seconds later "
                  "to what is left.  A queued (or requeued) task "
                  "is cancelled and never starts; an array ID terminates every task of "
                  "the array that has not ended.  With --backend slurm: scancel; with --grace, "
                  "scancel --signal=TERM --full first."),
    "hold": ("Hold queued jobs: they do not start until released.",
             "A Queued job (or an array's queued tasks) becomes QueuedHeld; a job that "
             "is not queued is refused.  With --backend slurm: scontrol hold."),
    "release": ("Release held jobs: they start as soon as they may.",
                "A QueuedHeld job becomes Queued again; a job that is not held is refused.  "
                "With --backend slurm: scontrol release."),
}

for _action, (_summary, _paragraph) in _CONTROL_HELP.items():
    cli.command(_action, help=f"{_summary}\n\n{_paragraph}\n\n\b\nExample:\n"
                f"  ostracker {_action} 7 8.2", short_help=_summary)(
        _control(_action))


def complete_signals(ctx, param, incomplete):
    import signal

    names = [member.name[3:] for member in signal.Signals if not member.name.startswith("SIG_")]
    return [name for name in names if name.startswith(incomplete.upper().removeprefix("SIG"))]


@cli.command(short_help="Send a signal to every process of jobs.")
@click.option("-s", "--signal", "signal_name", required=True, metavar="SIG",
              shell_complete=complete_signals, help="The signal: TERM, SIGUSR1, 10...")
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...",
                shell_complete=complete_jobs("signal"))
@click.pass_context
def signal(ctx, signal_name, job_ids):
    """Send a signal to every process of running or suspended jobs.

    As Slurm's scancel --signal: the job's state follows what its processes
    do (a job that dies of it is Failed, one that stops is Suspended).

    \b
    Example:
      ostracker signal -s USR1 7
    """
    from .core.limits import signal_number

    number = signal_number(signal_name)
    tracker = open_tracker()
    for_each_job(ctx, job_ids, lambda job_id: tracker.job_control(job_id, "signal",
                                                                  signum=number))


@cli.command(short_help="Submit a job again, as a new job.")
@click.option("--failed", "failed_only", is_flag=True, help="Of an ended array, only the "
              "tasks that did not end Done.")
@click.argument("job_id", metavar="ID", shell_complete=complete_jobs("ended"))
def resubmit(failed_only, job_id):
    """Submit a job (or an array) again as a new job, and print its new ID.

    The same command, options and array; --failed takes only the tasks of an
    ended array that did not end Done, under their own indices.

    \b
    Example:
      ostracker resubmit 7 --failed
    """
    from .core.models import parse_job_id

    parse_job_id(job_id)
    echo(open_tracker().resubmit(job_id, failed_only))


@cli.command(short_help="Create, resize, pause, show, list or delete queues.")
@click.option("--slots", type=Slots(), metavar="N",
              help="Create queue NAME with N slots, or resize it (0 pauses it).")
@click.option("--delete", "remove", is_flag=True, help="Delete queue NAME (it must be empty).")
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of queues (an object "
              "for NAME).")
@click.argument("name", required=False, shell_complete=complete_queues)
def queue(slots, remove, as_json, name):
    """List queues, or show, create, resize or delete queue NAME.

    A queue runs at most N slots' worth of its jobs at once (submit -q NAME
    --slots K); the rest wait, higher --priority first, then in order of
    submission.  Growing a queue starts waiting jobs at once; shrinking it
    stops none; --slots 0 pauses it.  With --backend slurm, queues are
    partitions: listed, never created.

    \b
    Example:
      ostracker queue gpu --slots 2
      ostracker queue --json | jq '.[] | select(.queued > 0) | .name'
    """
    from .core.schedule import parse_name
    from .output import queue_table, to_json

    if name is None and (slots is not None or remove):
        raise click.UsageError("--slots and --delete need a queue NAME")
    if slots is not None and remove:
        raise click.UsageError("--slots and --delete exclude each other")
    tracker = open_tracker()
    if name is None:
        queues = tracker.queues()
        if as_json:
            echo(to_json(queues, pretty=True))
        elif queues:
            echo(queue_table(queues))
        return
    name = parse_name(name)
    if remove:
        tracker.delete_queue(name)
        return
    if slots is not None:
        tracker.set_queue(name, slots)
    shown = tracker.queue(name)
    echo(to_json(shown, pretty=True) if as_json else queue_table([shown]))


@cli.command(short_help="Remove ended jobs and the output ostracker captured.")
@click.option("--finished", is_flag=True, help="Delete every job that has ended.")
@click.option("--older-than", metavar="DURATION", help="With --finished: only jobs that "
              "ended longer ago than DURATION (as --time: 90s, 15m, 2h, 7d, HH:MM:SS).")
@click.argument("job_ids", nargs=-1, metavar="[ID]...", shell_complete=complete_jobs("ended"))
@click.pass_context
def delete(ctx, finished, older_than, job_ids):
    """Remove ended jobs from the DB, with the output ostracker captured for them.

    Refuses a job that has not ended.  Output written to paths you gave with
    -o/--stderr is yours and stays.

    \b
    Example:
      ostracker delete 7 8
      ostracker delete --finished --older-than 7d
    """
    if not finished and not job_ids:
        raise click.UsageError("name the jobs to delete, or give --finished")
    if finished and job_ids:  # never "all ended jobs" where a user meant only these
        raise click.UsageError("--finished deletes every ended job: give it no IDs")
    if older_than is not None and not finished:
        raise click.UsageError("--older-than goes with --finished")
    from .core.limits import parse_duration

    age = None if older_than is None else parse_duration(older_than)
    check_ids(job_ids)
    tracker = open_tracker()
    if finished:
        errors = []  # a job that cannot be read is left, and said (the others go: exit 0)
        tracker.delete_finished(errors, age)
        for error in errors:
            warn(str(error))
    for_each_job(ctx, job_ids, tracker.delete_job)


@cli.command()
@click.option("--stderr", "error_stream", is_flag=True, help="Print stderr instead of stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.argument("job_id", metavar="ID", shell_complete=complete_jobs("task"))
def output(error_stream, follow, job_id):
    """Print what a job wrote to its stdout (or stderr).

    Name a single job or one task of an array (7.3).  The bytes are copied
    as they are; with --follow, until the job ends, as tail -f would, and then
    it exits as `wait` does: with the job's exit status.  Where
    -o/--stdout sent the output elsewhere, that file is read.

    \b
    Example:
      ostracker output 7.3 --stderr
      ostracker output -f 7
    """
    import time

    tracker = open_tracker()
    check_every = tracker.POLL_INTERVAL
    stream = "stderr" if error_stream else "stdout"
    path = tracker.output_path(job_id, stream)
    while True:
        try:
            handle = tracker.open_output(job_id, stream)  # never through a planted link
            break
        except FileNotFoundError:
            # A job still queued (on Slurm) has written nothing yet: with --follow, wait.
            if not follow or tracker.has_ended(job_id):
                raise TrackerError(f"cannot read output of job {job_id}: {path}: "
                                   "No such file or directory") from None
            time.sleep(check_every)
        except OSError as exc:
            raise TrackerError(f"cannot read output of job {job_id}: {path}: {exc.strerror}") \
                from None
    checked = 0.0
    with handle:
        while True:
            ended = False
            if follow and time.monotonic() - checked >= check_every:
                ended, checked = tracker.has_ended(job_id), time.monotonic()
            while True:
                try:
                    chunk = handle.read(1 << 16)
                except OSError as exc:
                    raise TrackerError(f"cannot read output of job {job_id}: {path}: "
                                       f"{exc.strerror or exc}") from None
                if not chunk:
                    break
                write_out(chunk)
            if not follow:
                return
            if ended:  # it ended: exit as `wait` would, as the job did
                click.get_current_context().exit(exit_status_of(tracker.job_info(job_id)))
            time.sleep(0.1)


@cli.command(short_help="Show OS processes as jobs (DRMAA2 monitoring session).")
@click.option("--user", metavar="NAME", help="Only processes of user NAME (or UID).")
@click.option("--name", "pattern", metavar="PATTERN", help="Only processes whose name or "
              "command line holds PATTERN (a glob if it has * ? or [).")
@click.option("--jobs", "jobs_only", is_flag=True,
              help="Only processes of running ostracker jobs, with their job IDs.")
@click.option("--interval", type=Seconds(), help="CPU % measured over SEC seconds from now "
              "[default: the average since the process started].")
@click.option("--machine", is_flag=True,
              help="Show this machine (DRMAA2 MachineInfo) instead of processes.")
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of jobs, or the machine.")
@click.argument("pids", nargs=-1, metavar="[PID]...", shell_complete=complete_pids)
@click.pass_context
def monitor(ctx, user, pattern, jobs_only, interval, machine, as_json, pids):
    """Show OS processes as jobs: all of them, or those named (DRMAA2 monitoring session).

    Any process on the machine counts, not only ostracker's.  CPU% is the
    average since the process started unless --interval is given.  With
    --backend slurm: every job of the cluster, named by Slurm's IDs (4711,
    4711_3), and with --machine its nodes.  In a
    terminal, lines are cut to its width; piped, they are whole.

    \b
    Example:
      ostracker monitor --user "$USER" --name 'python*'
      ostracker monitor --jobs --interval 1
      ostracker monitor 1234 --json | jq '.[0].extension_list.cpu_usage'
      ostracker monitor --machine
    """
    session = registry.monitoring_session(ctx.find_root().params.get("backend"))
    ids, unknown = [], []
    for pid in pids:
        try:
            ids.append(session.parse_id(pid))
        except InvalidArgument as error:
            raise click.BadParameter(str(error), param_hint="[PID]...") from None
        except JobNotFound as error:  # well-formed, but too long to name any: not found
            unknown.append(str(error))
    if interval is not None and interval <= 0:
        raise click.BadParameter("must be more than 0 seconds", param_hint="--interval")
    options = {}
    if interval is not None:
        options["interval"] = interval
    if jobs_only:
        options["of_jobs"] = []  # filled below, once the options are known to be fine
    for option, name in (("--jobs", "of_jobs"), ("--interval", "interval")):
        if name in options and name not in session.OPTIONS:
            raise click.UsageError(f"{option} is for local processes: not with --backend "
                                   f"{ctx.find_root().params.get('backend')}")
    from .output import machine_view, monitor_table, to_json

    if machine:
        if pids or user is not None or pattern is not None or options:
            raise click.UsageError("--machine takes no ID, filter, --jobs or --interval")
        machines = session.machines()
        echo(to_json(machines, pretty=True) if as_json
             else machine_view(session.TABLE, machines))
        return
    if jobs_only:
        errors = []
        options["of_jobs"] = open_tracker().job_infos(errors=errors)
        for error in errors:
            warn(str(error))
    missing = []
    # PIDs named but none that can exist (all too long): none listed, not all of them
    infos = session.jobs(ids if pids else None, user=user, pattern=pattern, missing=missing,
                         **options)
    if as_json:
        echo(to_json([info if isinstance(info, dict) else info.to_dict() for info in infos]))
    elif infos:
        import shutil

        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        echo(monitor_table(session.TABLE, infos, width=width, with_jobs=jobs_only))
    for message in unknown:
        warn(message)
    for job_id in missing:
        warn(f"{session.NOT_FOUND}: {job_id}")
    if missing or unknown:
        ctx.exit(1)


def main(argv=None) -> None:
    """Run the CLI (``command.main`` is the entry point), turning every error into one
    line and an exit status."""
    try:
        status_code = cli.main(args=argv, prog_name="ostracker", standalone_mode=False)
    except BrokenOutput:
        status_code = 141  # the reader went away: nothing more to say, to anyone
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as error:  # click 8.2+
        _say(error.ctx.get_help())  # plain `ostracker`: the help, unadorned
        status_code = 2
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else "ostracker"
        _say(f"{where}: {_one_line(error.format_message())} (see '{where} --help')")
        status_code = 2
    except click.ClickException as error:
        warn(error.format_message())
        status_code = error.exit_code
    except TrackerError as error:
        warn(str(error))
        status_code = error.exit_status
    except click.Abort:
        warn("interrupted")
        status_code = 130
    except BrokenPipeError:
        status_code = 141
    except OSError as error:  # click's own output (--help, --version) to a full or closed stdout
        where = f"{error.filename}: " if error.filename else ""
        warn(f"{where}{error.strerror or error}")
        status_code = 1
    _exit(status_code or 0)


def _say(line: str) -> None:
    try:
        click.echo(line, err=True)
    except (OSError, ValueError):
        pass


def _one_line(message: str) -> str:
    from .output import one_line

    return one_line(message)


def _exit(status: int) -> None:
    """Flush and leave without the interpreter's teardown.

    Tearing down every module costs a command 5-10 ms, which scripts that call
    ostracker in a loop pay again and again; the OS frees it all anyway.  All
    that must survive is what sits in the stdout and stderr buffers; if stdout
    cannot take it, that is said (once: not again after an error said so).
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            status = status or 141
        except (OSError, ValueError) as exc:
            if stream is sys.stdout and not status:
                warn(f"cannot write output: {getattr(exc, 'strerror', None) or exc}")
                status = 1
    os._exit(status)
