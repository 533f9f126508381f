"""A reaper started before its job exists, so that ``submit`` never waits for one to load.

Most of what ``submit`` takes goes to loading its CLI (click alone: about 50
ms), and the reaper it forks then execs a lean interpreter (``detach``), which
takes 30 to 50 ms more before an array's second task can start.  So the
``ostracker`` command, asked to submit, first starts that lean interpreter
(``start``), detached; it loads the reaper while the CLI loads, and waits on a
socket.  ``launch`` hands it the job (``hand_over``: the state dir and the
job's ID, and by SCM_RIGHTS the reaper lock, already taken, the ready pipe and
the job's directory), and from then on it is the job's reaper, as
``reaper.begin`` makes one.  A submit that starts nothing (bad input, a job
that waits for its queue or its time) lets go of it (``release``, or by
exiting), and the standby, reading end of file, exits.  A standby that died
before it got the job costs nothing but time: ``launch`` forks a reaper.
"""

from __future__ import annotations

import os

from ..core.errors import JobNotFound
from . import detach

_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from ostracker.local.standby import main; main(sys.argv[2:])")
_ready = None  # this process's end of the standby's socket, until launch takes it


def start() -> None:
    """Start a standby reaper for the job this process is about to submit (if none can be
    started, ``launch`` forks a reaper as usual)."""
    global _ready
    import socket

    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return
    with theirs:
        if detach.start_lean(_BOOTSTRAP, [str(theirs.fileno())], frozenset({theirs.fileno()})):
            _ready = ours
        else:
            ours.close()


def release() -> None:
    """Let the standby go, unused (it exits)."""
    global _ready
    if _ready is not None:
        _ready.close()
        _ready = None


def hand_over(store, job_id: int, lock_fd: int, report_fd: int, how: list) -> bool:
    """Make the standby, if there is one, the reaper of job ``job_id`` of ``store``, which
    created it; ``how`` as ``reaper.begin`` takes it (queue, slots, first, tell_end).
    False if there is none, or it is gone (killed): then nothing of the job was handed.

    The job's directory goes with it, so that the reaper works in the one the job was
    created in, wherever the state dir is moved meanwhile."""
    global _ready
    import json
    import socket

    ready, _ready = _ready, None
    if ready is None:
        return False
    with ready:
        try:
            socket.send_fds(ready, [json.dumps([store.root, job_id, *how]).encode()],
                            [lock_fd, report_fd, store.job_dir_fd(job_id)])
        except (OSError, JobNotFound):  # (the job's directory gone: begin says so)
            return False
    return True


def main(argv: list[str]) -> None:
    """In the lean interpreter: load what a reaper needs, wait for the job, reap it."""
    import json
    import socket

    # All that ``begin`` and the reaper's loop load, loaded while nothing waits for it.
    import ctypes  # noqa: F401
    import select  # noqa: F401
    import threading  # noqa: F401

    from ..core import tasklog  # noqa: F401
    from ..core.records import HEADER, Header
    from ..core.store import Store
    from .reaper import begin

    with socket.socket(fileno=int(argv[0])) as ready:
        try:
            message, fds, _, _ = socket.recv_fds(ready, 1 << 16, 3)
        except OSError:
            os._exit(0)
    for fd in fds:  # (recv_fds takes, but does not pass, MSG_CMSG_CLOEXEC)
        os.set_inheritable(fd, False)  # else every task would inherit them
    if len(fds) != 3:  # the submitter let go of it (end of file): nothing to do
        for fd in fds:
            os.close(fd)
        os._exit(0)
    lock_fd, report_fd, directory = fds
    try:
        root, job_id, queue, slots, first, tell_end = json.loads(message)
        store = Store(root)
        store.hold_job_dir(job_id, directory)
        header = Header.from_dict(job_id, store.read(job_id, HEADER), store.path(job_id, HEADER))
        begin(store, header, report_fd, lock_fd, queue, slots, True, first, tell_end)
    except BaseException as exc:  # the submitter hears why, as from a forked reaper
        try:
            os.write(report_fd, f"error {exc}\n".encode())
        finally:
            os._exit(1)
