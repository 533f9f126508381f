"""The scheduling board: ``schedule/`` in the state directory (README, "Scheduling").

Who waits, which queues exist, which of their slots are taken, and whether a
scheduler is alive, all as files, so that any process (a submit, a reaper,
the scheduler, a reader) can look and none has to ask another:

- ``wait.N``: job N waits to be started by the scheduler.  Written by submit
  once the job's header exists, removed by the scheduler once the job has a
  record (it started, could not start, or was cancelled): a scheduler that
  dies in between leaves the entry, and the next one starts the job.
- ``queue.NAME``: ``{"slots": N}``.
- ``slot.NAME.K``: slot K of queue NAME is taken; the file holds the ID of the
  task that holds it.  Created exclusively (``O_EXCL``) by the scheduler
  before it starts the task, removed once the task's tree has ended.
- ``lock``: held (flock) by the one scheduler, as long as it lives; it holds
  the scheduler's PID.
- ``socket``: where the scheduler hears "something changed".

Files are opened as the store opens records: relative to the held directory,
never through a link, created 0600 (the directory 0700).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os

from ..core.errors import StorageError
from ..core.records import SCHEMA_VERSION
from ..core.store import (_DIR_FLAGS, _READ_FLAGS, Store, _check_file, _describe, _lexists,
                          _make_dir, _open_error, _read_at, _write_at)

SCHEDULE = "schedule"
LOCK = "lock"
SOCKET = "socket"
_WAIT, _QUEUE, _SLOT = "wait.", "queue.", "slot."


class Board:
    """``schedule/`` of one state directory; nothing is created before the first write."""

    def __init__(self, store: Store):
        self.store = store
        self.path = os.path.join(store.root, SCHEDULE)
        self._fd: int | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _dir(self, create: bool = False) -> int | None:
        """The directory's descriptor (held), or None if it does not exist and not ``create``."""
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_nlink > 0:
                    return self._fd
            except OSError:
                pass
            self._fd = None  # closed behind our back (a forked reaper closes all), or removed
        root = self.store._root_fd(create)
        if root is None:
            return None
        try:
            self._fd = os.open(SCHEDULE, _DIR_FLAGS, dir_fd=root)
        except FileNotFoundError:
            if not create:
                return None
            self._fd = _make_dir(root, SCHEDULE, self.path)
        except OSError as exc:
            raise StorageError(f"cannot use {self.path}: {_describe(exc)}") from None
        return self._fd

    def _names(self) -> list[str]:
        fd = self._dir()
        if fd is None:
            return []
        try:
            return os.listdir(fd)
        except OSError as exc:
            raise StorageError(f"cannot list {self.path}: {_describe(exc)}") from None

    def _read(self, name: str) -> dict | None:
        fd = self._dir()
        data = None if fd is None else _read_at(fd, name, f"{self.path}/{name}")
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise StorageError(f"damaged record {self.path}/{name}")
        return record

    def _create(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` if it does not exist; False if it does."""
        fd = self._dir(create=True)
        try:
            file = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                           os.O_CLOEXEC, 0o600, dir_fd=fd)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot create {self.path}/{name}: {_describe(exc)}") from None
        try:
            os.fchmod(file, 0o600)
            os.write(file, data)
        except OSError as exc:
            os.close(file)
            self._unlink(name)
            raise StorageError(f"cannot write {self.path}/{name}: {_describe(exc)}") from None
        os.close(file)
        return True

    def _unlink(self, name: str) -> None:
        fd = self._dir()
        if fd is None:
            return
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {self.path}/{name}: {_describe(exc)}") from None

    def _exists(self, name: str) -> bool:
        fd = self._dir()
        return fd is not None and _lexists(name, fd)

    # -- who waits ---------------------------------------------------------------------

    def waiting(self) -> list[int]:
        """IDs of the jobs that wait for the scheduler, ascending."""
        return sorted(int(name[len(_WAIT):]) for name in self._names()
                      if name.startswith(_WAIT) and name[len(_WAIT):].isdigit())

    def add_waiting(self, job_id: int) -> None:
        self._create(f"{_WAIT}{job_id}", b"")

    def remove_waiting(self, job_id: int) -> None:
        self._unlink(f"{_WAIT}{job_id}")

    def is_waiting(self, job_id: int) -> bool:
        return self._exists(f"{_WAIT}{job_id}")

    # -- queues ------------------------------------------------------------------------

    def queues(self) -> dict[str, int]:
        """Every queue's name and size; a damaged queue file reads as a paused queue."""
        sizes = {}
        for name in self._names():
            if name.startswith(_QUEUE):
                sizes[name[len(_QUEUE):]] = self.queue_size(name[len(_QUEUE):]) or 0
        return sizes

    def queue_size(self, name: str) -> int | None:
        """The queue's number of slots; None if there is no such queue."""
        try:
            record = self._read(f"{_QUEUE}{name}")
        except StorageError:
            return 0  # damaged: nothing starts in it until it is resized
        if record is None:
            return None
        slots = record.get("slots")
        return slots if isinstance(slots, int) and not isinstance(slots, bool) and \
            0 <= slots < 1 << 31 else 0

    def set_queue(self, name: str, slots: int) -> None:
        fd = self._dir(create=True)
        _write_at(fd, f"{_QUEUE}{name}", [json.dumps({"schema": SCHEMA_VERSION,
                                                      "slots": slots}).encode()],
                  True, f"{self.path}/{_QUEUE}{name}")

    def delete_queue(self, name: str) -> None:
        self._unlink(f"{_QUEUE}{name}")

    # -- slots -------------------------------------------------------------------------

    def claims(self) -> dict[tuple[str, int], str]:
        """(queue, slot number) -> ID of the task that holds it, for every taken slot."""
        taken = {}
        for name in self._names():
            if not name.startswith(_SLOT):
                continue
            queue, _, number = name[len(_SLOT):].rpartition(".")
            if not (queue and number.isdigit() and len(number) < 10):
                continue
            try:
                holder = _read_at(self._dir(), name, f"{self.path}/{name}")
            except StorageError:
                holder = None
            taken[(queue, int(number))] = (holder or b"").decode(errors="replace").strip()
        return taken

    def claim(self, queue: str, slot: int, task_id: str) -> bool:
        """Take slot ``slot`` of ``queue`` for ``task_id``; False if it is taken."""
        return self._create(f"{_SLOT}{queue}.{slot}", task_id.encode())

    def free(self, queue: str, slot: int) -> None:
        self._unlink(f"{_SLOT}{queue}.{slot}")

    # -- the scheduler's lock and socket -----------------------------------------------

    def take_lock(self) -> int | None:
        """The scheduler's lock, taken (its descriptor); None if another scheduler holds it."""
        fd = self._dir(create=True)
        try:
            lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=fd)
        except OSError as exc:
            raise _open_error(exc, f"{self.path}/{LOCK}", "lock", "open") from None
        try:
            _check_file(lock, f"{self.path}/{LOCK}", "lock")
            os.fchmod(lock, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(lock, 0)
            os.pwrite(lock, b"%d\n" % os.getpid(), 0)  # who it is, for people and tests
        except BlockingIOError:
            os.close(lock)
            return None
        except BaseException:
            os.close(lock)
            raise
        return lock

    def scheduler_alive(self) -> bool:
        """Whether a scheduler holds the lock."""
        fd = self._dir()
        if fd is None:
            return False
        try:
            lock = os.open(LOCK, _READ_FLAGS, dir_fd=fd)
        except OSError:
            return False
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        finally:
            os.close(lock)

    def socket_path(self) -> str | None:
        """The socket's path through the held directory (any length of state dir path)."""
        fd = self._dir()
        return None if fd is None else f"/proc/self/fd/{fd}/{SOCKET}"
