"""A job as sbatch takes it: the batch script and the command line that submit it.

Every word of the job is quoted into a generated sh script that sbatch reads
on its stdin; ostracker's ``%j``/``%a`` path patterns are spelled as Slurm's,
and its scheduling fields as sbatch's options.
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
    cannot carry a comma in a value.  JOB_ID and TASK_ID come last, as locally.
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
    lines.append(run + " ".join(shell_word(word) for word in words))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


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
    (``scheduling_args``)."""
    is_array = array is not None
    job_dir = store.job_dir(job_id).replace("%", "%%")

    def output(pattern, stream):
        if pattern is None:  # captured in the job's directory, as locally; %a: the index
            pattern = f"{job_dir}/{captured_output_name('%a' if is_array else None, stream)}"
        return slurm_path(pattern, job_id, is_array)

    args = ["sbatch", "--parsable", "-J", template.job_name, "-D", template.working_directory,
            "--export=ALL", "-o", output(template.output_path, "stdout"),
            "-e", output(template.error_path, "stderr")]
    if template.input_path is not None:
        args += ["-i", slurm_path(template.input_path, job_id, is_array)]
    if is_array:
        spec = f"{array.begin}-{array.end}:{array.step}"
        args.append(f"--array={spec}%{array.max_parallel}" if array.max_parallel else
                    f"--array={spec}")
    return args + scheduling
