"""Dynamic shell completion: the job IDs and process IDs a command can take.

The completion scripts in ``completions/`` are Click's: on every TAB the shell
runs ``ostracker`` again with ``_OSTRACKER_COMPLETE`` set, and Click asks the
parameter being completed for candidates, which lands here.  Two rules follow:

- never fail: an exception would be printed into the user's command line, so
  every function returns an empty list on any error whatever;
- be quick: this runs while the user waits on a keystroke.  Only what the
  command needs is read (``status`` and friends take any ID, so nothing but
  the directory listing; ``suspend`` reads the state of jobs that have not
  ended, whose reapers are alive), newest jobs first, and the reading stops
  after ``BUDGET`` seconds with what it has.

An array's tasks (``7.1``, ``7.2``, ...) are offered only once the word being
completed names the array (``7`` or ``7.``): a large array would otherwise
flood the list.  The shell filters nothing itself, so candidates are filtered
by the prefix typed here.

Imported only while completing: the CLI's start-up never pays for it.
"""

from __future__ import annotations

import os
import time

BUDGET = 0.5  # seconds of reading, at most, before answering with what was found
MAX_TASKS = 1000  # task IDs offered at most for one array



def job_ids(state_dir: str | None, kind: str, incomplete: str, backend: str | None = None) -> list:
    """CompletionItems for the job IDs that a command of ``kind`` accepts.

    ``kind``: ``any`` (status, info, wait), ``task`` (output: a single job or one task,
    never a whole array), ``suspend``, ``resume``, ``terminate``, ``hold``, ``release``, ``ended``
    (delete: whole jobs that have ended).  ``backend``: whose jobs ("local",
    the default, or "slurm").
    """
    try:
        from click.shell_completion import CompletionItem

        return [CompletionItem(value, help=help_text)
                for value, help_text in _job_candidates(state_dir, kind, incomplete, backend)]
    except Exception:  # noqa: BLE001 - a completion must never fail, see the module doc
        return []


def _job_candidates(state_dir, kind, incomplete, backend):
    from .core import registry
    from .core.store import JOBS, default_state_dir

    if not os.path.isdir(os.path.join(state_dir or default_state_dir(), JOBS)):
        return []  # no DB yet: a TAB must not create one
    tracker = registry.open_tracker(backend, state_dir)
    array_named, _, _ = incomplete.partition(".")
    deadline = time.monotonic() + BUDGET
    found = []
    # Control takes jobs that have not ended: the history of those that have is not read.
    ended = kind in ("any", "task", "ended")
    for job_id in sorted(tracker.list_jobs(ended=ended), key=int, reverse=True):
        if time.monotonic() > deadline:
            break
        if not (job_id.startswith(incomplete) or job_id == array_named):
            continue
        try:
            found.extend(_candidates_of(tracker, job_id, kind, incomplete,
                                        expand=job_id == array_named))
        except Exception:  # noqa: BLE001 - deleted or damaged meanwhile: leave it out
            continue
    found = [(value, text) for value, text in found if value.startswith(incomplete)]
    return sorted(found, key=lambda item: tuple(int(part) for part in item[0].split(".")))


def _candidates_of(tracker, job_id, kind, incomplete, expand):
    """(ID, description) pairs for one job: itself, and its tasks when ``expand``."""
    if kind == "ended":
        return [(job_id, None)] if tracker.has_ended(job_id) else []
    if kind in ("any", "task"):  # no state to read, the IDs alone
        tasks = _task_ids(tracker, job_id, incomplete) if expand or kind == "task" else None
        if tasks is None:
            return [(job_id, None)]
        if kind == "task":  # ``output`` takes one task of an array, never the whole of it
            return [(t, None) for t in tasks]
        return [(job_id, None), *((t, None) for t in tasks)]
    if tracker.has_ended(job_id):  # cheap while the reaper lives: one lock probe
        return []
    infos = tracker.job_infos([job_id])
    fitting = [info for info in infos if info.state in tracker.ALLOWED.get(kind, ())]
    if not fitting:
        return []
    if infos[0].array_id is None:
        return [(job_id, _describe(infos[0]))]
    pairs = [(job_id, _describe_array(fitting))]
    if expand:
        tasks = [info for info in fitting if info.id.startswith(incomplete)]
        pairs += [(info.id, _describe(info)) for info in tasks[:MAX_TASKS]]
    return pairs


def _task_ids(tracker, job_id, incomplete):
    """The array's task IDs that start with ``incomplete`` (None if it is no array).

    From the array's spec alone: no task record is read.
    """
    from .core.errors import TrackerError

    try:
        tasks = tracker.list_array_jobs(job_id)
    except TrackerError:
        return None
    return [task for task in tasks if task.startswith(incomplete)][:MAX_TASKS]


def _describe(info) -> str:
    return f"{info.state.value}: {info.job_name}"


def _describe_array(infos) -> str:
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.state.value] = counts.get(info.state.value, 0) + 1
    states = ", ".join(f"{count} {state}" for state, count in counts.items())
    return f"array of {infos[0].job_name}: {states}"


def process_ids(incomplete: str) -> list:
    """CompletionItems for the PIDs on this machine that start with ``incomplete``.

    Read from /proc directly (names from /proc/PID/comm): psutil would cost
    more to import than the whole listing.
    """
    try:
        from click.shell_completion import CompletionItem

        items = []
        for name in sorted((n for n in os.listdir("/proc") if n.isdigit() and
                            n.startswith(incomplete)), key=int):
            try:
                with open(f"/proc/{name}/comm") as handle:
                    command = handle.read().strip()
            except OSError:
                continue  # ended meanwhile
            items.append(CompletionItem(name, help=command))
        return items
    except Exception:  # noqa: BLE001 - a completion must never fail, see the module doc
        return []


def queue_names(state_dir: str | None, incomplete: str, backend: str | None = None) -> list:
    """The names of the queues (Slurm: partitions) that start with ``incomplete``."""
    try:
        from .core import registry

        tracker = registry.open_tracker(backend, state_dir)
        return sorted(name for name in tracker.queue_names() if name.startswith(incomplete))
    except Exception:  # noqa: BLE001 - a completion must never fail, see the module doc
        return []


def command_names(prefix: str) -> list[str]:
    """The programs on $PATH whose names begin with ``prefix``, sorted, each once."""
    found = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        try:
            with os.scandir(directory or ".") as entries:
                for entry in entries:
                    if entry.name.startswith(prefix) and entry.name not in found and \
                            os.access(entry.path, os.X_OK) and not entry.is_dir():
                        found.add(entry.name)
        except OSError:
            continue
    return sorted(found)
