"""A job as sbatch takes it: the batch script and the command line that submit it.

Every word of the job is quoted into a generated sh script that sbatch reads
on its stdin; ostracker's ``%j``/``%a`` path patterns are spelled as Slurm's.
"""

from __future__ import annotations

import shlex

from ..core.errors import InvalidArgument
from ..core.models import ArraySpec, JobTemplate, expand_path, is_per_task, substitute_codes
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


def sbatch_args(store: Store, job_id: int, template: JobTemplate,
                array: ArraySpec | None) -> list[str]:
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
    return args
