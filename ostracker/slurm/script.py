"""A job as sbatch takes it: the batch script and the command line that submit it.

Every word of the job is quoted into a generated sh script that sbatch reads
on its stdin; ostracker's ``%j``/``%a`` path patterns are spelled as Slurm's,
its scheduling fields as sbatch's options, and its limits (README, "Limits and
retries") as Slurm's own where Slurm has them (``--time``, ``--deadline``,
``--signal``) and as the script's where it has not (``ulimit``, the retries,
``--on-end``).  What Slurm cannot do is refused before sbatch runs
(``lifetime_args``), never dropped without a word.

The script ``exec``s the command, so that the batch shell Slurm signals (and
whose end it records) is the job's own process.  Only with ``--retries`` or
``--on-end`` does the shell stay, as the command's parent (``_supervised``).
"""

from __future__ import annotations

import shlex

from ..core.errors import InvalidArgument, UnsupportedOperation
from ..core.models import ArraySpec, JobTemplate, expand_path, is_per_task, parse_time, \
    substitute_codes
from ..core.records import captured_output_name
from ..core.store import Store


def slurm_path(pattern: str, job_id: int, is_array: bool) -> str:
    """An ostracker path pattern in sbatch's spelling.

    ``%j`` is ostracker's ID (``7``, or ``7.%a`` for a task), ``%a`` the task
    index, ``%%`` a percent sign; any other ``%`` is escaped so that Slurm
    leaves it alone.  In a path holding a backslash Slurm expands nothing and
    takes ``\\`` for one backslash, so such a path is expanded here, which works
    unless it must differ per task.
    """
    if "\\" in pattern:
        if is_array and is_per_task(pattern):
            raise InvalidArgument(f"Slurm cannot name each task's file in a path with a "
                                  f"backslash: {pattern}")
        return expand_path(pattern, str(job_id), None).replace("\\", "\\\\")
    return substitute_codes(pattern, {"j": f"{job_id}.%a" if is_array else str(job_id),
                                      "a": "%a" if is_array else "", "%": "%%"}, unknown="%%")


def shell_word(word: str) -> str:
    """``word`` quoted for sh, any character but NUL; a carriage return is spelled
    ``$(printf '\\r')``, since sbatch refuses a script holding CR LF.
    """
    return shlex.quote(word).replace("\r", "'\"$(printf '\\r')\"'")


def batch_script(job_id: int, template: JobTemplate, is_array: bool) -> bytes:
    """The job as a shell script: the exact words, quoted, and the job's environment.

    The environment is exported here, not through ``--export=ALL,K=V``, which
    cannot carry a comma in a value.  JOB_ID and TASK_ID come last, as locally,
    then the resource limits (``ulimit_lines``); the command is ``exec``'d, or,
    with retries or ``--on-end``, run by the shell (``_supervised``).
    """
    lines = ["#!/bin/sh", f"# ostracker job {job_id}, written for sbatch"]
    lines += [f"export {key}={shell_word(value)}"
              for key, value in template.job_environment.items()]
    if is_array:
        lines.append(f'export TASK_ID="$SLURM_ARRAY_TASK_ID" JOB_ID="{job_id}.'
                     '$SLURM_ARRAY_TASK_ID"')
    else:
        lines += [f"export JOB_ID={job_id}", "unset TASK_ID"]
    words = [template.remote_command, *template.args]
    # bash's exec takes a first word "-x" for an option, dash's knows no "--": env does.
    run = "exec env -- " if template.remote_command.startswith("-") else "exec "
    command = run + " ".join(shell_word(word) for word in words)
    limits = ulimit_lines(job_id, template.resource_limits)
    if template.retries or template.on_end is not None:
        lines += _supervised(job_id, template, limits, command)
    else:
        lines += ["export OSTRACKER_ATTEMPT=1", *limits, command]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


# DRMAA2 resource limit -> (ulimit's option, the bytes of its unit; None: taken as it is).
# The units are a POSIX sh's, which the script's ``#!/bin/sh`` is (dash, bash as sh,
# busybox, mksh): -c and -f in blocks of 512 bytes, -d, -s and -v in KiB.
ULIMIT_OPTIONS = {
    "CPU_TIME": ("-t", None),
    "CORE_FILE_SIZE": ("-c", 512),
    "DATA_SIZE": ("-d", 1024),
    "FILE_SIZE": ("-f", 512),
    "OPEN_FILES": ("-n", None),
    "STACK_SIZE": ("-s", 1024),
    "VIRTUAL_MEMORY": ("-v", 1024),
}
CANNOT_START = 126  # the shell's status for a command it cannot run: a limit it cannot set


def ulimit_lines(job_id: int, limits: dict[str, int] | None) -> list[str]:
    """One ``ulimit -S`` line per resource limit but the wall clock (that is ``--time``),
    in ``ULIMIT_OPTIONS``' order: the soft limit, as locally (the hard one stays the
    node's).  A size is rounded up to the shell's unit, so that the job may use at
    least what was asked.  A limit the node does not allow (above its hard limit)
    ends the job at once, exit status 126, saying so on its stderr.
    """
    lines = []
    for key, (option, unit) in ULIMIT_OPTIONS.items():
        if key not in (limits or {}):
            continue
        value = limits[key] if unit is None else -(-limits[key] // unit)
        words = f"ulimit -S {option} {value}"
        message = f"ostracker: job {job_id}: cannot set --limit {key}={limits[key]} ({words})"
        lines.append(f"{words} || {{ echo {shell_word(message)} >&2; exit {CANNOT_START}; }}")
    return lines


# The signals that end a process by default and that scancel can send by name (besides
# TERM, the one by which Slurm ends a job): the shell that supervises the command catches
# them, so that ``ostracker signal`` (``scancel --full``, to every process of the job)
# reaches the command without ending the shell that would retry it or run --on-end.
_CAUGHT = "HUP INT QUIT ABRT ALRM USR1 USR2 XCPU"


def _supervised(job_id: int, template: JobTemplate, limits: list[str], command: str
                ) -> list[str]:
    """The end of a script whose shell runs the command as its child, for ``--retries``
    and ``--on-end`` (README, "On a Slurm cluster": why these two are the script's).

    Retries: the command runs again while it fails, at most ``retries`` more times,
    ``retry_delay`` seconds apart, each attempt with ``OSTRACKER_ATTEMPT`` and its limits
    (set in a subshell: the shell itself runs unlimited), reading its stdin file anew
    (``/dev/stdin``, reopened).  A command ended by SIGTERM is not retried: that is
    how Slurm ends a job (``scancel``, its time limit, its deadline).  The attempt
    is told to ostracker through the job's Slurm comment (``scontrol update``,
    ``ostracker attempt=N restarts=R``, R Slurm's restart count, so that a requeued
    job's old note is known for old), which ``squeue`` shows anywhere: a node need
    not share the state dir.

    --on-end: ``/bin/sh -c CMD`` once the command has ended for good, with the
    variables the local backend gives it, stdin and outputs /dev/null; its failure
    goes into the comment too (``on_end=STATUS``).  Then the shell ends as the
    command did: with its exit status, or killed by its signal (a status above 128
    taken for a signal, as sh reports one).
    """
    retries = template.retries or 0
    lines = []
    if limits:
        lines += ["limits() {", *(f"    {line}" for line in limits), "}",
                  f"(limits) || exit {CANNOT_START}"]
    prefix = "limits && " if limits else ""
    stdin = " </dev/stdin" if retries and template.input_path is not None else ""
    note = ('scontrol update JobId="$SLURM_JOB_ID" Comment="ostracker attempt=$attempt '
            'restarts=${SLURM_RESTART_COUNT:-0}$1" >/dev/null 2>&1 || echo "ostracker: '
            f'job {job_id}: cannot note $2 in the Slurm job\'s comment (scontrol update '
            'failed)" >&2')
    lines += [f"note() {{ {note}; }}",
              "ended=", "trap 'ended=TERM' TERM", f"trap : {_CAUGHT}",
              "attempt=1",
              "while :; do",
              '    export OSTRACKER_ATTEMPT="$attempt"',
              f"    ({prefix}{command}){stdin}",
              "    status=$?",
              f'    if [ "$status" -eq 0 ] || [ -n "$ended" ] || [ "$attempt" -gt {retries} ]; '
              "then break; fi",
              "    attempt=$((attempt + 1))",
              '    note "" "attempt $attempt"']
    if template.retry_delay:
        lines += [f"    sleep {template.retry_delay:g}",
                  '    if [ -n "$ended" ]; then break; fi']
    lines += ["done",
              'code=$status signal=',
              'if [ "$status" -gt 128 ] && name=$(kill -l "$status" 2>/dev/null); then '
              'code= signal=$name; fi']
    if template.on_end is not None:
        lines += ['if [ "$status" -eq 0 ]; then state=Done; else state=Failed; fi',
                  f"OSTRACKER_JOB_ID={job_id} "
                  f"OSTRACKER_JOB_NAME={shell_word(template.job_name or '')} "
                  'OSTRACKER_JOB_STATE=$state OSTRACKER_EXIT_STATUS=$code '
                  'OSTRACKER_TERMINATING_SIGNAL=${signal:+SIG$signal} '
                  f"/bin/sh -c {shell_word(template.on_end)} </dev/null >/dev/null 2>&1",
                  "on_end=$?",
                  'if [ "$on_end" -ne 0 ]; then note " on_end=$on_end" "that --on-end failed"; '
                  "fi"]
    lines += ['if [ -n "$signal" ]; then trap - "$signal"; ulimit -c 0; kill -s "$signal" $$; '
              "fi",
              'exit "$status"']
    return lines


def scheduling_args(template: JobTemplate, dependency: str | None) -> list[str]:
    """sbatch's options for the template's scheduling fields; ``dependency`` is the
    template's, already in Slurm's job IDs.

    A queue is a partition (``-p``), slots are CPUs of the job (``--cpus-per-task``),
    a begin time is ``--begin`` in local time, as sbatch reads it.  Slurm lets a user
    lower a job's priority only (``--nice=N`` lowers it by N): a priority below 0 is
    that, one above 0 is refused rather than dropped without a word.
    """
    if template.priority is not None and template.priority > 0:
        raise UnsupportedOperation("the Slurm backend cannot raise --priority above 0 "
                                   "(Slurm lets only administrators raise priority)")
    args = []
    if template.queue_name is not None:
        args += ["-p", template.queue_name]
    if template.min_slots is not None:
        args.append(f"--cpus-per-task={template.min_slots}")
    if template.priority:
        args.append(f"--nice={-template.priority}")
    if template.start_time is not None:
        args.append(f"--begin={begin_time(template.start_time)}")
    if template.submit_as_hold:
        args.append("--hold")
    if dependency is not None:
        args.append(f"--dependency={dependency}")
    return args


# The signal names Slurm's commands take (sbatch --signal, scancel --signal); any
# other signal is given by its number.
SLURM_SIGNALS = frozenset({"HUP", "INT", "QUIT", "ABRT", "KILL", "ALRM", "TERM", "USR1",
                           "USR2", "URG", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "XCPU"})
MAX_WARNING = 0xFFFF  # the most seconds before its end at which Slurm can signal a job


def slurm_signal(sig: int | str) -> str:
    """A signal (a number, or a name such as ``SIGUSR1``) as Slurm's commands take it:
    its name without SIG where they know it (``USR1``), else its number (``30``)."""
    import signal

    number = int(sig) if isinstance(sig, int) else int(signal.Signals[sig])
    try:
        name = signal.Signals(number).name.removeprefix("SIG")
    except ValueError:  # a real-time signal
        return str(number)
    return name if name in SLURM_SIGNALS else str(number)


def lifetime_args(template: JobTemplate, is_array: bool) -> list[str]:
    """sbatch's options for the template's limits (README, "Limits and retries"); what
    Slurm cannot do is refused (UnsupportedOperation, exit 1), naming the option.

    - ``-t``: ``--time=D-HH:MM:SS``, rounded up to the minute (Slurm counts minutes):
      never less than asked.
    - ``--deadline``: ``--deadline=`` in local time, as ``--begin``.  Slurm starts a
      job only if its time limit ends by the deadline, and removes it otherwise:
      without ``-t`` (with no time limit, or the partition's) it would be removed at
      once, so ``--deadline`` needs ``-t``.
    - ``--signal SIG@SEC``: ``--signal=B:SIG@SEC``, to the batch shell, which is the
      command (the script ``exec``s it); without ``B:`` Slurm signals only job
      steps, of which the script starts none.  So it cannot go with ``--retries``
      or ``--on-end``, where the shell is the command's parent.
    - ``--kill-after``: refused; the time from SIGTERM to SIGKILL is Slurm's KillWait.
    - ``--on-end`` of an array: refused; a task's script cannot know that it is the
      array's last, and a job of its own after the array is what ``-d afterany:N``
      already submits.
    The resource limits, retries and ``--on-end`` are the script's (``batch_script``).
    """
    limits = template.resource_limits or {}
    if template.kill_after is not None:
        raise UnsupportedOperation(
            "the Slurm backend cannot honour --kill-after: the time from SIGTERM to SIGKILL "
            "is Slurm's KillWait, one setting for the whole cluster")
    if template.deadline_time is not None and "WALLCLOCK_TIME" not in limits:
        raise UnsupportedOperation(
            "the Slurm backend needs -t/--time with --deadline: Slurm starts a job only if "
            "its time limit ends by the deadline (and removes it otherwise)")
    if template.on_end is not None and is_array:
        raise UnsupportedOperation(
            "the Slurm backend cannot run --on-end once for a whole array (a task cannot "
            "know it is the last): submit CMD as a job of its own with -d afterany:ID")
    args = []
    if "WALLCLOCK_TIME" in limits:
        minutes = -(-limits["WALLCLOCK_TIME"] // 60)
        args.append(f"--time={minutes // 1440}-{minutes // 60 % 24:02d}:{minutes % 60:02d}:00")
    if template.deadline_time is not None:
        args.append(f"--deadline={begin_time(template.deadline_time)}")
    if template.warning_signal is not None:
        name, _, before = template.warning_signal.partition("@")
        if template.retries or template.on_end is not None:
            raise UnsupportedOperation(
                "the Slurm backend cannot send --signal to a job with --retries or --on-end: "
                "Slurm signals the batch shell, which then runs the command instead of being it")
        if int(before or 60) > MAX_WARNING:
            raise UnsupportedOperation(f"the Slurm backend can send --signal at most "
                                       f"{MAX_WARNING} s before the limit (Slurm's most)")
        args.append(f"--signal=B:{slurm_signal(name)}@{int(before or 60)}")
    return args


def begin_time(text: str) -> str:
    """A time with a UTC offset (the template's) as ``--begin`` takes it: local time,
    ``YYYY-MM-DDTHH:MM:SS``, a fraction of a second rounded up (no sooner than asked)."""
    from datetime import timedelta

    moment = parse_time(text).astimezone()
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def sbatch_args(store: Store, job_id: int, template: JobTemplate, array: ArraySpec | None,
                scheduling: list[str]) -> list[str]:
    """sbatch's command line: the job's name, directory, streams, array, and ``scheduling``
    (``scheduling_args``, ``lifetime_args``).  With ``--join`` there is no ``-e``: Slurm
    then writes stderr where ``-o`` goes."""
    is_array = array is not None
    job_dir = store.job_dir(job_id).replace("%", "%%")

    def output(pattern, stream):
        if pattern is None:  # captured in the job's directory, as locally; %a: the index
            pattern = f"{job_dir}/{captured_output_name('%a' if is_array else None, stream)}"
        return slurm_path(pattern, job_id, is_array)

    args = ["sbatch", "--parsable", "-J", template.job_name, "-D", template.working_directory,
            "--export=ALL", "-o", output(template.output_path, "stdout")]
    if not template.join_files:  # joined: Slurm's own default, stderr where -o goes
        args += ["-e", output(template.error_path, "stderr")]
    if template.input_path is not None:
        args += ["-i", slurm_path(template.input_path, job_id, is_array)]
    if is_array:
        spec = array.spec()  # a range, or a list of indices (``0,4,8-10``)
        args.append(f"--array={spec}%{array.max_parallel}" if array.max_parallel else
                    f"--array={spec}")
    return args + scheduling
