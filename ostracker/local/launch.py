"""The submit side of starting a job: fork a detached reaper and wait for its word.

``submit`` must return only once the job has really started, and must fail with
the real reason when it could not (no such file, permission denied, a missing
working directory...).  So the submitter forks, the child forks again and calls
``setsid`` (the grandchild is the reaper: no zombie is left with the submitter,
and no terminal or cron run can reach it), and the submitter blocks on a pipe
until the reaper writes one line: ``started PID`` or ``error REASON``.  Where
the ``ostracker`` command started a reaper ahead (``standby``), the job is
handed to it instead, and the rest is the same.  Asked to
(``tell_end``), the reaper keeps the pipe and says, once the job has ended and
its records are final, how it ended (``ended STATE EXIT SIGNAL``): a submitter
that waits for the job (``submit --wait``) needs nothing more, and reads no record.
"""

from __future__ import annotations

import io
import os

from ..core.errors import StartError
from ..core.models import STATE_BY_NAME, Ended
from ..core.records import Header
from ..core.store import Store
from . import reaper, standby


def launch(store: Store, header: Header, lock_fd: int, queue: str | None = None,
           slots: list[int] = (), lean: bool = False, first: int | None = None,
           tell_end: bool = False) -> tuple[int, io.BufferedReader | None]:
    """Start the reaper of the submission ``header``; return the PID of its first task
    and, with ``tell_end``, the pipe on which the reaper will say how the job ended
    (``hear_end`` reads it).

    ``lock_fd`` is the reaper lock, already taken by the caller so that no reader
    takes the job for reaper-less before the reaper exists; the reaper inherits it.
    ``queue`` and ``slots``: the slots of that queue the scheduler gave the job (an
    array: its task ``first``).
    ``lean``: the caller is a lean interpreter already (the scheduler), which the
    reaper can go on in, instead of executing a fresh one.
    """
    read_end, write_end = os.pipe()
    try:
        if not standby.hand_over(store, header.job_id, lock_fd, write_end,
                                 [queue, list(slots), first, tell_end]):
            child = os.fork()
            if child == 0:
                _become_reaper(store, header, read_end, write_end, lock_fd,
                               (queue, list(slots), lean, first, tell_end))
            os.waitpid(child, 0)  # the middle process exits at once
    except OSError as exc:
        os.close(read_end)
        raise StartError(f"cannot fork the reaper: {exc.strerror}") from None
    finally:
        os.close(write_end)
    pipe = os.fdopen(read_end, "rb")
    try:
        word = pipe.readline().decode(errors="replace").rstrip("\n")
    except OSError as exc:
        pipe.close()
        raise StartError(f"lost contact with the reaper: {exc.strerror}") from None
    except BaseException:  # Ctrl-C: the job goes on, and no pipe is left open to it
        pipe.close()
        raise
    kind, _, detail = word.partition(" ")
    if kind == "started" and tell_end:
        return int(detail), pipe
    pipe.close()
    if kind == "started":
        return int(detail), None
    if kind == "error":
        raise StartError(detail)
    raise StartError("the reaper ended before the job started")


def hear_end(pipe: io.BufferedReader) -> Ended | None:
    """Block until the reaper says how the job ended, or None if it ended without a word
    (its records are then to be read); closes ``pipe``."""
    try:
        word = pipe.readline().decode(errors="replace").split()
    finally:
        pipe.close()
    state = STATE_BY_NAME.get(word[1]) if len(word) == 4 and word[0] == "ended" else None
    if state is None or not state.ended or \
            not (word[2] == "-" or (word[2].isdigit() and len(word[2]) < 4)):
        return None
    return Ended(state, None if word[2] == "-" else int(word[2]),
                 None if word[3] == "-" else word[3])


def _become_reaper(store, header, read_end, write_end, lock_fd, how) -> None:
    """In the forked child: detach twice and run the reaper; never return."""
    status = 1
    try:
        os.close(read_end)
        os.setsid()
        if os.fork() == 0:
            reaper.begin(store, header, write_end, lock_fd, *how)
        status = 0
    except BaseException as exc:  # never let an error climb back into the submitter's code
        try:
            os.write(write_end, f"error {exc}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(status)
