"""The history: every ended job of a state directory, one line each, in one file.

Why: a cron job that runs every few minutes leaves thousands of ended jobs,
and a directory of records per job costs a listing an open and a parse each,
makes ``status --active`` and TAB completion pay for the whole past, and
leaves two captured output files per array task on the disk, empty most
often.  So once a job has ended,
its reaper *compacts* it (``compact``):

1. it adds one line to ``history`` (``records.history_line``: the header and
   the JobInfo of every task) under ``history.lock``, and fsyncs it;
2. it renames ``jobs/N`` to ``ended/N``: from then on the job is read from
   its line, and ``jobs/`` holds only what has not ended (and what no reaper
   compacted: a job of an earlier version, one whose reaper was killed);
3. it removes from ``ended/N`` every file but what ``records.is_kept_when_ended``
   keeps (non-empty captured output, ``on_end.json``), and ``ended/N`` itself
   if nothing is left.

A kill between two steps loses nothing: before step 2 the job is read from
``jobs/N``, which wins over its line (and a line written twice reads as its
last); after it, from its line; what step 3 did not remove is never read.
A line that cannot be written whole (a full disk) is cut off again
(``ftruncate``) and the job stays in ``jobs/N``, read as before.  Readers
list ``jobs/`` and read those jobs *before* they read the history, so a job
compacted meanwhile (its line is written before its directory moves) is seen
in one place or the other.  A reader never writes the history: a damaged line is its
job's StorageError, an unfinished last line (a writer at work) is not read yet.
(``status --json`` keeps a listing of it beside it: ``core.listing``.)

Deleting ended jobs writes the file anew without their lines (a temporary
file, fsync, rename) under the same lock, removes the listings, then removes their
``ended/N``.
"""

from __future__ import annotations

import fcntl
import os

from .errors import StorageError
from .records import EndedEntry, history_line_id, is_kept_when_ended
from .store import (_DIR_FLAGS, _READ_FLAGS, ENDED, GrowingLines, Store, _check_file,
                    _describe, _open_error, _private, _remove_tree, _write_at, append_line)

# ``Listing`` and ``Reading`` (annotations) come from ``.listing``, imported where used:
# ``status --json`` alone needs it, and a reaper would otherwise load ``typing``.

HISTORY = "history"
HISTORY_LOCK = "history.lock"


class History(GrowingLines):
    """The history of one Store, read once and then only what was added since."""

    def __init__(self, store: Store):
        super().__init__(os.path.join(store.root, HISTORY))
        self.store = store
        self._entries: dict[int, EndedEntry] = {}
        self._nameless: StorageError | None = None  # a line that names no job was read

    # -- reading ------------------------------------------------------------------------

    def entries(self, errors: list | None = None) -> dict[int, EndedEntry]:
        """Every ended job's entry by ID (the last line of each); a line too damaged to
        name its job goes to ``errors``."""
        fd = self._open()
        if fd is None:
            self._forget()
            return {}
        try:
            self._read_new(fd)
        finally:
            os.close(fd)
        if errors is not None and self._nameless is not None:
            errors.append(self._nameless)
        return self._entries

    def listed_entries(self, backend: str) -> tuple[Listing | None, dict[int, EndedEntry],
                                                     StorageError | None, Reading | None]:
        """(listing, entries, nameless, read) for listing every job: the backend's listing
        of the history's first bytes if one holds (``core.listing``) and the entries of the
        lines after them, or None and every entry; the error of a line they hold that
        names no job; what was read, for a new listing (None without a history).  Read
        apart from ``entries``: what was read before stays as it was."""
        from .listing import Listing, Reading

        fd = self._open()
        if fd is None:
            return None, {}, None, None
        try:
            info = _check_file(fd, self.path, "record")
            listing = Listing.load(self.store._root_fd(), backend, fd)
            start, start_crc = (0, 0) if listing is None else \
                (listing.covered, listing.history_crc)
            data = os.pread(fd, max(0, info.st_size - start), start)
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {_describe(exc)}") from None
        finally:
            os.close(fd)
        data = data[:data.rfind(b"\n") + 1]  # an unfinished last line is not read yet
        entries = {}
        nameless = self._parse(data.split(b"\n")[:-1], entries)
        whole = start + len(data) == info.st_size
        return listing, entries, nameless, Reading(info.st_dev, info.st_ino,
                                                   info.st_ctime_ns if whole else 0,
                                                   start, start_crc, data)

    def keep_listing(self, backend: str, read: Reading, parts: dict, errors: list) -> None:
        """A new listing (``core.listing.write_listing``) of what ``read`` says was read,
        under the history's lock and only if the history is still that file: ``delete``
        replaces it and removes the listings under the same lock."""
        from .listing import write_listing

        try:
            lock = self._locked()
        except StorageError:
            return
        try:
            root = self.store._root_fd()
            info = None if root is None else \
                os.stat(HISTORY, dir_fd=root, follow_symlinks=False)
            if info is not None and (info.st_dev, info.st_ino) == (read.dev, read.ino):
                write_listing(root, backend, read, parts, errors)
        except OSError:
            pass
        finally:
            os.close(lock)

    def _open(self) -> int | None:
        """The history open for reading; None if there is none."""
        root = self.store._root_fd()
        try:
            return os.open(HISTORY, _READ_FLAGS, dir_fd=root) if root is not None else None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _open_error(exc, self.path, "record") from None

    def _forget(self) -> None:
        super()._forget()
        self._entries, self._nameless = {}, None

    def _take(self, lines: list[bytes]) -> None:
        self._nameless = self._parse(lines, self._entries) or self._nameless

    def _parse(self, lines: list[bytes], entries: dict[int, EndedEntry]) -> StorageError | None:
        """Each line's entry into ``entries`` (a job's last line counts); the error of a
        line that names no job, if one does."""
        nameless, path = None, self.path
        for line in lines:
            job_id = history_line_id(line)
            if job_id is None:
                nameless = StorageError(
                    f"damaged record in {path}: a line that names no job is left out")
            else:
                entries[job_id] = EndedEntry(job_id, line, path)
        return nameless

    def entry(self, job_id: int) -> EndedEntry | None:
        """The job's entry; None if it has none (its line may be damaged: it says so
        when used)."""
        return self.entries().get(job_id)

    # -- writing ------------------------------------------------------------------------

    def _locked(self):
        root = self.store._root_fd(create=True)
        path = os.path.join(self.store.root, HISTORY_LOCK)
        try:
            fd = os.open(HISTORY_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=root)
        except OSError as exc:
            raise _open_error(exc, path, "lock", "open") from None
        try:
            _check_file(fd, path, "lock")
            _private(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def append(self, line: bytes) -> None:
        """Add one line, durably, or nothing at all (StorageError says why)."""
        lock = self._locked()
        try:
            root = self.store._root_fd()
            try:
                fd = os.open(HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o600, dir_fd=root)
            except OSError as exc:
                raise _open_error(exc, self.path, "record", "open") from None
            try:
                _check_file(fd, self.path, "record")
                try:
                    _private(fd)
                except OSError as exc:
                    raise StorageError(f"cannot write {self.path}: {_describe(exc)}") \
                        from None
                append_line(fd, line, True, self.path)
            finally:
                os.close(fd)
        finally:
            os.close(lock)

    def remove(self, job_ids: set[int]) -> None:
        """Write the history anew without the lines of ``job_ids``, then remove what those
        jobs kept in ``ended/``."""
        lock = self._locked()
        try:
            root = self.store._root_fd()
            entries = self.entries()
            if job_ids & entries.keys():
                fd = os.open(HISTORY, _READ_FLAGS, dir_fd=root)
                try:
                    data = os.pread(fd, self._offset, 0)
                finally:
                    os.close(fd)
                kept = [line + b"\n" for line in data.split(b"\n")[:-1]
                        if history_line_id(line) not in job_ids]
                _write_at(root, HISTORY, kept, True, self.path)
                self._seen = None
                # a listing of the old history would keep the deleted jobs' records
                from .listing import remove_listings

                remove_listings(root)
        finally:
            os.close(lock)
        ended = self.store._area(ENDED)
        if ended is not None:
            try:
                for job_id in job_ids:
                    _remove_tree(ended, str(job_id))
            finally:
                os.close(ended)


def compact(store: Store, line: bytes, job_id: int) -> bool:
    """Steps 1 to 3 of the module doc for job ``job_id``, whose line is ``line``, by its
    reaper (which holds the job's directory); False if the job stays as it was."""
    try:
        store.history.append(line)
        jobs = store._jobs_fd()
        ended = store._area(ENDED, create=True)
    except StorageError:
        return False  # (with its line written) the job is read from jobs/N, which wins
    try:
        try:
            os.rename(str(job_id), str(job_id), src_dir_fd=jobs, dst_dir_fd=ended)
            directory = os.open(str(job_id), _DIR_FLAGS, dir_fd=ended)
        except (OSError, TypeError):  # TypeError: jobs/ is gone
            return False
        try:
            if not _remove_all_but_kept(directory):
                os.rmdir(str(job_id), dir_fd=ended)
        except OSError:
            pass  # what is left is never read
        finally:
            os.close(directory)
    finally:
        os.close(ended)
    return True


def _remove_all_but_kept(directory: int) -> int:
    """Step 3 of the module doc, but the directory's own removal; how many files are left."""
    left = 0
    for name in os.listdir(directory):
        try:
            if is_kept_when_ended(name) and \
                    os.stat(name, dir_fd=directory, follow_symlinks=False).st_size > 0:
                left += 1
                continue
            os.unlink(name, dir_fd=directory)
        except OSError:
            left += 1
    return left
