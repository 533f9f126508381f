"""An array's task records: one line per change, appended to ``tasks.log`` in its directory.

Why: a record per task, replaced through a temporary file and a rename, costs
an inode created and one freed at every change, three per task (about 0.1 ms
of kernel time each on ext4, and up to ten times that on a disk that discards
what is freed); an array of many short tasks spent more on its records than on
running its tasks.  An append to one file costs about a microsecond.

Format: ``INDEX TAB JSON NEWLINE``, the task's whole record (``records.new_record``)
on one line; the last line of an index is its record.  Writers append under
an flock on the log itself (the reaper, and control commands that cancel or
end a task whose reaper cannot), each line whole or not at all
(``store.append_line``).  A reader reads only what was added since its last
read, and never an unfinished last line (a writer at work).  A damaged line
is its task's StorageError when it is that task's last line; a line that names
no task is reported once (``damage``) and hides no other task.

An array's log is created with its header, before anything can write a
record, so an array without one is an earlier version's: its records are
``I.json`` files, read and written as before (``Store.read_task``).
"""

from __future__ import annotations

import fcntl
import json
import os

from .errors import JobNotFound, StorageError
from .models import MAX_DIGITS
from .records import TASK_LOG
from .store import (_CREATE_FLAGS, _READ_FLAGS, GrowingLines, _describe, _open_error,
                    append_line)

_APPEND_FLAGS = os.O_RDWR | os.O_APPEND


class TaskLog(GrowingLines):
    """One array's log, as one Store reads and writes it."""

    def __init__(self, store, job_id: int):
        super().__init__(store.path(job_id, TASK_LOG))
        self.store = store
        self.job_id = job_id
        self._lines: dict[int, bytes] = {}  # index -> the JSON of its last line
        self._damage: StorageError | None = None  # a line that names no task was read
        self._append_fd: int | None = None  # kept open by a writer (a reaper) that appends

    def create(self) -> None:
        """Create the empty log of a new array (its directory is the Store's own)."""
        try:
            os.close(self.store.open_file(self.job_id, TASK_LOG, _CREATE_FLAGS))
        except OSError as exc:
            raise _open_error(exc, self.path, "record", "write") from None

    # -- reading ------------------------------------------------------------------------

    def lines(self) -> dict[int, bytes] | None:
        """Each task's last line (its JSON) by index; None if the array has no log.
        A writer reads through the descriptor it appends through."""
        if self._append_fd is not None:
            self._read_new(self._append_fd)
            return self._lines
        try:
            fd = self.store.open_file(self.job_id, TASK_LOG, _READ_FLAGS)
        except (FileNotFoundError, JobNotFound):
            self._forget()
            return None
        except OSError as exc:
            raise _open_error(exc, self.path, "record") from None
        try:
            self._read_new(fd)
        finally:
            os.close(fd)
        return self._lines

    def _forget(self) -> None:
        super()._forget()
        self._lines, self._damage = {}, None

    def _take(self, lines: list[bytes]) -> None:
        taken = self._lines
        for line in lines:
            index, tab, body = line.partition(b"\t")
            if tab and index.isdigit() and len(index) <= MAX_DIGITS:
                taken[int(index)] = body
            else:
                self._damage = StorageError(
                    f"damaged record in {self.path}: a line that names no task is left out")

    def read(self, index: int) -> dict | None:
        """Task ``index``'s record; None if it has none.  Call ``lines`` first."""
        body = self._lines.get(index)
        if body is None:
            return None
        try:
            record = json.loads(body)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise StorageError(f"damaged record {self.path} (task {index})")
        return record

    def damage(self) -> StorageError | None:
        """What a line that names no task says, if one was read."""
        return self._damage

    # -- writing ------------------------------------------------------------------------

    def append(self, index: int, record: dict, durable: bool) -> bool:
        """Add the task's record (fsync'd if ``durable``); False if the array has no log.

        The log stays open for the next append: a reaper appends two or three lines a task,
        and the file is never replaced (``close`` closes it)."""
        line = b"%d\t%s\n" % (index, json.dumps(record).encode())
        fd = self._append_fd
        if fd is None:
            try:
                fd = self._append_fd = self.store.open_file(self.job_id, TASK_LOG,
                                                            _APPEND_FLAGS)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise _open_error(exc, self.path, "record", "write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {_describe(exc)}") from None
        try:
            append_line(fd, line, durable, self.path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return True

    def close(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None
